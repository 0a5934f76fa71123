//! End to end with real processes: a `pqc-server` on a loopback port with a
//! temporary data folder, and `pqc-client` processes with separate profiles.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, tree_contains};

#[test]
fn text_files_limited_views_offline_delivery_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let mut server = TestServer::start(&data);
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());

    let out = alice.ok(&["register", "alice"]);
    assert!(out.contains("registered alice"), "{out}");
    bob.ok(&["register", "bob"]);
    // A taken name is refused with a clear error.
    let carol = User::new(tmp.path(), "carol", &server.addr());
    let err = carol.fails(&["register", "alice"]);
    assert!(err.contains("taken"), "{err}");

    // Text both ways; bob is offline (no process) while alice sends.
    alice.ok(&["send", "bob", "hello bob, this is alice"]);
    alice.ok(&["send", "bob", "second message"]);
    let got = bob.ok(&["recv"]);
    assert_eq!(got, "alice: hello bob, this is alice\nalice: second message\n");
    bob.run_with_stdin(&["send", "alice", "-"], Some("reply from stdin\n"));
    assert_eq!(alice.ok(&["recv"]), "bob: reply from stdin\n");
    // Delivered messages are gone from the server.
    assert_eq!(bob.ok(&["recv"]), "");
    assert_eq!(alice.ok(&["recv"]), "");

    // A 10 MiB file.
    let file = tmp.path().join("payload.bin");
    let mut bytes = vec![0u8; 10 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&file, &bytes).unwrap();
    alice.ok(&["send-file", "bob", file.to_str().unwrap()]);
    let downloads = tmp.path().join("downloads");
    let got = bob.ok(&["recv", "--out", downloads.to_str().unwrap()]);
    let saved = downloads.join("payload.bin");
    assert_eq!(got.trim(), format!("file from alice: {}", saved.display()));
    assert!(std::fs::read(&saved).unwrap() == bytes, "file differs");

    // Limited views: shown as view 1/2, then once more from the profile, then gone.
    alice.ok(&["send", "bob", "for your eyes twice", "--max-views", "2"]);
    assert_eq!(bob.ok(&["recv"]), "alice: for your eyes twice [view 1/2]\n");
    assert!(bob.ok(&["history", "alice"]).contains("for your eyes twice [view 2/2]"));
    assert!(!bob.ok(&["history", "alice"]).contains("for your eyes twice"));

    // The server restarts between send and receive: nothing acknowledged is lost.
    alice.ok(&["send", "bob", "sent before the restart"]);
    server.restart();
    assert_eq!(bob.ok(&["recv"]), "alice: sent before the restart\n");

    // Unknown user: clear error, non-zero exit.
    let err = alice.fails(&["send", "nobody", "hi"]);
    assert!(err.contains("no such") || err.contains("unknown"), "{err}");
    assert!(err.contains("not sent"), "{err}");
    // The undeliverable message is not left queued in front of later ones.
    alice.ok(&["send", "bob", "after a failed send"]);
    assert_eq!(bob.ok(&["recv"]), "alice: after a failed send\n");

    // Safety numbers agree on both sides.
    let a = alice.ok(&["verify", "bob"]);
    let b = bob.ok(&["verify", "alice"]);
    assert_eq!(a.lines().nth(1), b.lines().nth(1));

    // The server's folder holds no plaintext of any message or file.
    server.stop();
    for needle in
        [&b"hello bob, this is alice"[..], b"reply from stdin", b"for your eyes twice", b"sent before the restart"]
    {
        assert_eq!(
            tree_contains(&data, needle),
            None,
            "plaintext {:?} found on the server",
            String::from_utf8_lossy(needle)
        );
    }
    assert_eq!(tree_contains(&data, &bytes[1 << 20..(1 << 20) + 64]), None, "file plaintext found on the server");
    // Nor does either profile hold message text in the clear.
    for p in [&alice.profile, &bob.profile] {
        assert_eq!(tree_contains(p, b"hello bob, this is alice"), None);
    }
}

#[test]
fn hostile_file_names_stay_inside_the_download_folder() {
    use pqc_client::profile::Profile;
    use pqc_client::{Client, ConnectOptions};
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"));
    let bob = User::new(tmp.path(), "bob", &server.addr());
    bob.ok(&["register", "bob"]);
    let src = tmp.path().join("evil.txt");
    std::fs::write(&src, b"not where you think").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let opts = ConnectOptions { server: server.addr(), ca: None };
        let profile = Profile::open(&tmp.path().join("profile-mallory"), "pw", true).unwrap();
        let mut m = Client::register(profile, &opts, "mallory", &mut |_| {}).await.unwrap();
        m.send_file_named("bob", &src, "../../escaped.txt", &mut |_, _| {}).await.unwrap();
        m.send_file_named("bob", &src, "/etc/passwd", &mut |_, _| {}).await.unwrap();
        m.close().await;
    });
    let out = tmp.path().join("inbox");
    let got = bob.ok(&["recv", "--out", out.to_str().unwrap()]);
    assert!(got.contains(&format!("{}", out.join("escaped.txt").display())), "{got}");
    assert!(got.contains(&format!("{}", out.join("passwd").display())), "{got}");
    assert!(!tmp.path().join("escaped.txt").exists());
    assert_eq!(std::fs::read(out.join("escaped.txt")).unwrap(), b"not where you think");
}

#[test]
fn changed_server_certificate_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"));
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let first = alice.run(&["register", "alice"]);
    assert!(first.status.success());
    // The first connection pinned the certificate and said so, like ssh.
    assert!(String::from_utf8_lossy(&first.stderr).contains(&server.fingerprint), "fingerprint shown on first use");
    let port = server.port;
    drop(server);
    // A different server (new certificate) on the same address is refused.
    let _other = TestServer::start_on(&tmp.path().join("other-data"), port, common::free_tcp_port());
    let err = alice.fails(&["recv"]);
    assert!(err.to_lowercase().contains("fingerprint") || err.contains("certificate"), "{err}");
}

/// A command that fails on a refusal (an unknown recipient, a name already
/// taken) still closes its connection, so the server frees it at once instead of after
/// the idle timeout.
#[test]
fn a_refused_command_closes_its_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"));
    let alice = User::new(tmp.path(), "alice", &server.addr());
    alice.ok(&["register", "alice"]);
    let err = alice.fails(&["send", "nobody", "hello?"]);
    assert!(err.contains("no such user"), "{err}");
    let err = alice.fails(&["verify", "nobody"]);
    assert!(err.contains("no such user"), "{err}");
    let other = User::new(tmp.path(), "other", &server.addr());
    let err = other.fails(&["register", "alice"]);
    assert!(err.contains("already taken"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.connections_open() > 0 {
        assert!(Instant::now() < deadline, "connections still open 3 s after the commands: {}", server.status());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn wrong_passphrase_is_refused_without_touching_the_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"));
    let alice = User::new(tmp.path(), "alice", &server.addr());
    alice.ok(&["register", "alice"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pqc-client"))
        .arg("--profile")
        .arg(&alice.profile)
        .args(["recv"])
        .env("PQC_PASSPHRASE", "not the passphrase")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
}

/// A second command on a profile in use waits for the first to end (the
/// two would advance the same session keys), then runs; one that would
/// wait too long is refused with a clear message.
#[test]
fn a_profile_serves_one_command_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("data"));
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    alice.ok(&["send", "bob", "are you there?"]);
    // bob listens for 3 s; his send meanwhile waits for the profile.
    let mut recv = bob.command(&["recv", "--wait", "3"]).spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(recv.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first.trim(), "alice: are you there?");
    let started = std::time::Instant::now();
    let out = bob.run(&["send", "alice", "yes, one moment"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("waiting for the other pqc-client (process {})", recv.id())), "{stderr}");
    assert!(recv.wait().unwrap().success());
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "the send waited for the recv to end");
    assert_eq!(alice.ok(&["recv"]).trim(), "bob: yes, one moment");
    // A listener for longer than a command waits (10 s): refused, nothing sent.
    let mut recv = bob.command(&["recv", "--wait", "30"]).spawn().unwrap();
    let holder = || std::fs::read_to_string(bob.profile.join("profile.lock")).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while holder().trim() != recv.id().to_string() {
        assert!(std::time::Instant::now() < deadline, "recv never opened the profile");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stderr = bob.fails(&["send", "alice", "never sent"]);
    assert!(stderr.contains("in use by another pqc-client") && stderr.contains("pqc-client chat"), "{stderr}");
    let _ = recv.kill();
    let _ = recv.wait();
    assert_eq!(alice.ok(&["recv"]).trim(), "");
}

/// Messages the relay refused for a while (the recipient's mailbox full)
/// wait in the sender's outbox; the next command sends them all, several at
/// a time, and they arrive complete and in order.
#[test]
fn queued_messages_go_out_together_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_configured(&tmp.path().join("server-data"), "[limits]\nmax_mailbox = 10\n");
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    for i in 1..=10 {
        alice.ok(&["send", "bob", &format!("m{i}")]);
    }
    for i in 11..=20 {
        let err = alice.fails(&["send", "bob", &format!("m{i}")]);
        assert!(err.contains("queued"), "{err}");
    }
    let first: String = (1..=10).map(|i| format!("alice: m{i}\n")).collect();
    assert_eq!(bob.ok(&["recv"]), first);
    // Any command sends what waits (ten: more than go out at once).
    alice.ok(&["recv"]);
    let second: String = (11..=20).map(|i| format!("alice: m{i}\n")).collect();
    assert_eq!(bob.ok(&["recv"]), second);
    alice.ok(&["send", "bob", "m21"]);
    assert_eq!(bob.ok(&["recv"]), "alice: m21\n");
}
