//! Resumable uploads, with real processes: a `send-file` whose server
//! crashes (SIGKILL) and comes back mid-upload finishes by itself, and a
//! `send-file` that is itself killed mid-upload is resumed by the next
//! `send-file` of the same file. In both cases the recipient gets the file
//! once and intact, and the upload continued from the bytes the server kept
//! instead of starting over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{TestServer, User};

/// 48 MiB: several of the server's 8 MiB checkpoints, and enough bytes left
/// after the interruption to see that they were not all sent again.
const FILE_LEN: usize = 48 << 20;

/// A server in `root` and two registered users, alice and bob.
fn alice_and_bob(root: &Path) -> (TestServer, User, User) {
    let server = TestServer::start(&root.join("server"));
    let alice = User::new(root, "alice", &server.addr());
    let bob = User::new(root, "bob", &server.addr());
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    (server, alice, bob)
}

fn random_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..FILE_LEN / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let path = dir.join("big.bin");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// Size of the largest file in `dir` whose name ends with `suffix`.
fn largest(dir: &Path, suffix: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Waits until the file `largest(dir, suffix)` measures holds at least
/// `bytes`, while `child` (doing the transfer) still runs.
fn wait_for(child: &mut Child, dir: &Path, suffix: &str, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while largest(dir, suffix) < bytes {
        assert!(child.try_wait().unwrap().is_none(), "the transfer ended before the interruption");
        assert!(Instant::now() < deadline, "the transfer did not reach {bytes} bytes");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the server holds at least `bytes` of the upload.
fn wait_for_upload(server: &TestServer, child: &mut Child, bytes: u64) {
    wait_for(child, &server.data.join("attachments"), "", bytes);
}

/// Bob receives exactly one file, identical to `data`.
fn bob_gets_it_once(bob: &User, root: &Path, data: &[u8]) {
    let out = root.join("bob-out");
    let listing = bob.ok(&["recv", "--out", out.to_str().unwrap()]);
    let files: Vec<_> = listing.lines().filter(|l| l.starts_with("file from alice: ")).collect();
    assert_eq!(files.len(), 1, "{listing}");
    let got = std::fs::read(out.join("big.bin")).unwrap();
    assert!(got == data, "the received file differs");
    assert_eq!(bob.ok(&["recv"]).trim(), "", "delivered twice");
}

/// "… are on the server" / "resuming the upload at X of Y MiB": X.
fn resumed_at_mib(stderr: &str) -> f64 {
    let line =
        stderr.lines().find(|l| l.contains("resuming")).unwrap_or_else(|| panic!("no resume notice in: {stderr}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let of = words.iter().rposition(|w| *w == "of").unwrap_or_else(|| panic!("{line}"));
    words[of - 1].parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn an_upload_goes_on_after_the_server_crashed_and_came_back() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, alice, bob) = alice_and_bob(root.path());
    let (path, data) = random_file(root.path());

    let mut send = alice.command(&["send-file", "bob", path.to_str().unwrap()]).spawn().unwrap();
    // Past two checkpoints, so at least the first is recorded as durable.
    wait_for_upload(&server, &mut send, 20 << 20);
    server.crash_and_restart();

    let out = send.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "send-file failed: {stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
    assert!(resumed_at_mib(&stderr) >= 8.0, "the upload started over: {stderr}");
    bob_gets_it_once(&bob, root.path(), &data);
    drop(server);
}

#[test]
fn a_killed_send_file_is_resumed_by_the_next_one() {
    let root = tempfile::tempdir().unwrap();
    let (server, alice, bob) = alice_and_bob(root.path());
    let (path, data) = random_file(root.path());

    let mut send = alice.command(&["send-file", "bob", path.to_str().unwrap()]).spawn().unwrap();
    wait_for_upload(&server, &mut send, 20 << 20);
    send.kill().unwrap();
    send.wait().unwrap();
    // Nothing was announced: bob has nothing yet.
    assert_eq!(bob.ok(&["recv"]).trim(), "");

    let out = alice.run(&["send-file", "bob", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "send-file failed: {stderr}");
    let at = resumed_at_mib(&stderr);
    // The server keeps what it received; without a server crash that is
    // everything up to the kill.
    assert!(at >= 20.0, "the upload started over: {stderr}");
    bob_gets_it_once(&bob, root.path(), &data);

    // A changed file is not resumed: it is sent whole under a new key.
    let mut changed = data.clone();
    changed[0] ^= 1;
    std::fs::write(&path, &changed).unwrap();
    let out = alice.run(&["send-file", "bob", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("resuming"), "{stderr}");
}

/// A file changed since its upload was interrupted is sent whole under a
/// new key, and the server deletes what it had of the old upload instead of
/// keeping it until it expires.
#[test]
fn a_changed_file_starts_over_and_its_old_upload_is_deleted() {
    let root = tempfile::tempdir().unwrap();
    let (server, alice, bob) = alice_and_bob(root.path());
    let (path, data) = random_file(root.path());
    let uploads = server.data.join("attachments");

    let mut send = alice.command(&["send-file", "bob", path.to_str().unwrap()]).spawn().unwrap();
    wait_for_upload(&server, &mut send, 20 << 20);
    send.kill().unwrap();
    send.wait().unwrap();

    let mut changed = data.clone();
    changed[FILE_LEN / 2] ^= 1;
    std::fs::write(&path, &changed).unwrap();
    let out = alice.run(&["send-file", "bob", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("resuming"), "{stderr}");
    bob_gets_it_once(&bob, root.path(), &changed);
    // Bob acknowledged the new file and the old upload was abandoned: the
    // server keeps no file (deletions run just after their commits).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&uploads).unwrap().count() > 0 {
        assert!(
            Instant::now() < deadline,
            "left on the server: {:?}",
            std::fs::read_dir(&uploads).unwrap().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
}

#[test]
fn a_download_goes_on_after_the_server_crashed_and_came_back() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, alice, bob) = alice_and_bob(root.path());
    let (path, data) = random_file(root.path());
    alice.ok(&["send-file", "bob", path.to_str().unwrap()]);

    let out = root.path().join("bob-out");
    std::fs::create_dir_all(&out).unwrap();
    let mut recv = bob.command(&["recv", "--out", out.to_str().unwrap()]).spawn().unwrap();
    wait_for(&mut recv, &out, ".part", 16 << 20);
    server.crash_and_restart();

    let done = recv.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "recv failed: {stderr}");
    assert!(stderr.contains("resuming the download at"), "{stderr}");
    assert!(resumed_at_mib(&stderr) >= 16.0, "the download started over: {stderr}");
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("file from alice: ")).count(), 1, "{stdout}");
    assert!(std::fs::read(out.join("big.bin")).unwrap() == data, "the received file differs");
    assert_eq!(bob.ok(&["recv"]).trim(), "", "delivered twice");
    drop(server);
}

#[test]
fn recv_wait_goes_on_after_the_server_restarted() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, alice, bob) = alice_and_bob(root.path());
    alice.ok(&["send", "bob", "before the crash"]);

    let recv = bob.command(&["recv", "--wait", "8"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    server.crash_and_restart();
    alice.ok(&["send", "bob", "after the restart"]);

    let done = recv.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    assert!(done.status.success(), "recv failed: {stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["alice: before the crash", "alice: after the restart"], "{stderr}");
    assert_eq!(bob.ok(&["recv"]).trim(), "");
    drop(server);
}

#[test]
fn a_send_file_killed_at_the_last_chunk_is_announced_once() {
    let root = tempfile::tempdir().unwrap();
    let (server, alice, bob) = alice_and_bob(root.path());
    // A short last chunk: 4 MiB + 1000 bytes in 512 KiB chunks.
    let data: Vec<u8> = (0..(4 << 20) + 1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let path = root.path().join("big.bin");
    std::fs::write(&path, &data).unwrap();
    let total = data.len() as u64 + 9 * 16;

    // Stopped once the server has every byte: before or after the upload
    // was finished or announced, whichever the moment hits.
    let mut send = alice.command(&["send-file", "bob", path.to_str().unwrap()]).spawn().unwrap();
    wait_for_upload(&server, &mut send, total);
    send.kill().unwrap();
    send.wait().unwrap();

    let out = alice.run(&["send-file", "bob", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "send-file failed: {stderr}");
    let out_dir = root.path().join("bob-out");
    let listing = bob.ok(&["recv", "--out", out_dir.to_str().unwrap()]);
    let files: Vec<&str> = listing.lines().filter(|l| l.starts_with("file from alice: ")).collect();
    eprintln!("second send-file: {}", stderr.lines().next().unwrap_or("(no notice)"));
    if stderr.contains("resuming") {
        // The killed command had not announced it: the second one did, once.
        assert!(resumed_at_mib(&stderr) >= 4.0, "{stderr}");
        assert_eq!(files.len(), 1, "{listing}");
    } else {
        // It had: the second command sent the file again, as a new one.
        assert_eq!(files.len(), 2, "{listing}");
    }
    for f in files {
        let saved = f.trim_start_matches("file from alice: ");
        assert!(std::fs::read(saved).unwrap() == data, "{saved} differs");
    }
}

#[test]
fn an_unreachable_server_gets_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let (mut server, alice, _bob) = alice_and_bob(root.path());
    server.kill();
    // Its host answers that nothing listens there: the command says so at
    // once instead of waiting out QUIC's 15 s.
    let started = std::time::Instant::now();
    let err = alice.fails(&["send", "bob", "hello?"]);
    assert!(err.contains(&format!("cannot reach the server at {}", server.addr())), "{err}");
    assert!(err.contains("nothing listens on that UDP port"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}
