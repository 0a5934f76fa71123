//! Rooms end to end with real processes: a `pqc-server` and `pqc-client`
//! processes with separate profiles (create, join while others are offline,
//! ordered catch-up, leave, participant limit, audio/video events, a file).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestServer, User, tree_contains};

#[test]
fn three_users_create_join_send_leave_limit_media() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let mut server = TestServer::start(&data);
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());
    let carol = User::new(tmp.path(), "carol", &server.addr());
    let dave = User::new(tmp.path(), "dave", &server.addr());
    for u in [&alice, &bob, &carol, &dave] {
        u.ok(&["register", &u.name]);
    }
    let room = "quantum-lounge-7f3a";

    // alice creates the room; bob joins while alice is offline (no process).
    assert_eq!(alice.ok(&["rooms", "create", room, "--max", "3"]), format!("created room {room}\n"));
    let err = bob.fails(&["rooms", "create", room]);
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(bob.ok(&["rooms", "join", room]), format!("joined room {room}\n"));
    bob.ok(&["rooms", "send", room, "hi from bob"]);
    bob.ok(&["rooms", "send", room, "bob again"]);
    // carol joins; alice is still offline.
    carol.ok(&["rooms", "join", room]);
    carol.ok(&["rooms", "send", room, "carol here"]);
    // bob's saved state is from before carol's join: the relay refuses a
    // message made in that epoch, bob's client syncs and sends it again
    // (carol, who was not there in the old epoch, can read it).
    bob.ok(&["rooms", "send", room, "bob after carol"]);
    assert_eq!(bob.ok(&["recv"]), format!("[{room}] * carol joined\n[{room}] carol: carol here\n"));

    // alice catches up in order.
    assert_eq!(
        alice.ok(&["recv"]),
        format!(
            "[{room}] * bob joined\n[{room}] bob: hi from bob\n[{room}] bob: bob again\n[{room}] * carol joined\n[{room}] carol: carol here\n[{room}] bob: bob after carol\n"
        )
    );
    assert_eq!(alice.ok(&["rooms", "members", room]), "alice\nbob\ncarol\n");

    // A fourth joiner is refused with a clear error.
    let err = dave.fails(&["rooms", "join", room]);
    assert!(err.contains("full"), "{err}");

    // Audio/video toggles show as events and in the list.
    alice.ok(&["rooms", "audio", room, "on"]);
    carol.ok(&["rooms", "video", room, "on"]);
    assert_eq!(bob.ok(&["recv"]), format!("[{room}] * alice audio on\n[{room}] * carol video on\n"));
    let list = bob.ok(&["rooms", "list"]);
    assert!(list.contains(room) && list.contains("3 member(s)"), "{list}");
    assert!(list.contains("audio on: alice") && list.contains("video on: carol"), "{list}");

    // bob leaves; the next active member (alice, when she sends) commits it.
    bob.ok(&["rooms", "send", room, "bye from bob"]);
    assert_eq!(bob.ok(&["rooms", "leave", room]), format!("left room {room}\n"));
    alice.ok(&["rooms", "send", room, "after bob left"]);
    assert_eq!(
        alice.ok(&["recv"]),
        format!("[{room}] * carol video on\n[{room}] bob: bye from bob\n[{room}] * bob left\n")
    );
    assert_eq!(
        carol.ok(&["recv"]),
        format!(
            "[{room}] bob: bob after carol\n[{room}] * alice audio on\n[{room}] bob: bye from bob\n[{room}] * bob left\n[{room}] alice: after bob left\n"
        )
    );
    assert_eq!(alice.ok(&["rooms", "members", room]), "alice\ncarol\n");
    // bob sees nothing from after his leave, and cannot send any more.
    assert_eq!(bob.ok(&["recv"]), "");
    assert!(!bob.ok(&["rooms", "list"]).contains(room));
    assert!(bob.fails(&["rooms", "send", room, "still here?"]).contains("not in a room"));
    // With bob gone there is room for dave.
    dave.ok(&["rooms", "join", room]);
    dave.ok(&["rooms", "send", room, "dave arrives"]);
    assert_eq!(alice.ok(&["recv"]), format!("[{room}] * dave joined\n[{room}] dave: dave arrives\n"));
    assert_eq!(bob.ok(&["recv"]), "");

    // A file to the room, encrypted once: the members download it.
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, b"room file secret contents").unwrap();
    alice.ok(&["rooms", "send-file", room, file.to_str().unwrap()]);
    for u in [&carol, &dave] {
        let out = tmp.path().join(format!("{}-downloads", u.name));
        let got = u.ok(&["recv", "--out", out.to_str().unwrap()]);
        let saved = out.join("notes.txt");
        assert!(got.ends_with(&format!("[{room}] file from alice: {}\n", saved.display())), "{got}");
        assert_eq!(std::fs::read(&saved).unwrap(), b"room file secret contents");
    }
    // bob, who left before it was sent, gets nothing.
    assert_eq!(bob.ok(&["recv"]), "");

    // The server's data folder holds neither the room name nor any message or file.
    server.stop();
    for needle in [
        room.as_bytes(),
        b"hi from bob",
        b"carol here",
        b"bob after carol",
        b"after bob left",
        b"dave arrives",
        b"room file secret contents",
    ] {
        assert_eq!(tree_contains(&data, needle), None, "plaintext {:?} on the server", String::from_utf8_lossy(needle));
    }
}

/// A client that dies after the relay accepted its commit but before it saved
/// the new state recovers on its next sync (it finds its commit in the log).
#[test]
fn crash_after_commit_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server-data"));
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());
    let carol = User::new(tmp.path(), "carol", &server.addr());
    for u in [&alice, &bob, &carol] {
        u.ok(&["register", &u.name]);
    }
    let room = "crash-room-51d0";
    alice.ok(&["rooms", "create", room]);
    bob.ok(&["rooms", "join", room]);
    carol.ok(&["rooms", "join", room]);
    bob.ok(&["rooms", "leave", room]);
    // alice commits bob's removal; the relay accepts it; alice dies before saving.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pqc-client"))
        .arg("--profile")
        .arg(&alice.profile)
        .arg("--server")
        .arg(&alice.server)
        .args(["rooms", "send", room, "lost in the crash"])
        .env("PQC_PASSPHRASE", "passphrase of alice")
        .env("PQC_TEST_EXIT_AFTER_COMMIT", "1")
        .env_remove("PQC_PROFILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // The next command recovers the state after the accepted commit.
    alice.ok(&["rooms", "send", room, "after the crash"]);
    assert_eq!(alice.ok(&["rooms", "members", room]), "alice\ncarol\n");
    let got = carol.ok(&["recv"]);
    assert!(got.ends_with(&format!("[{room}] * bob left\n[{room}] alice: after the crash\n")), "{got}");
    assert!(alice.ok(&["recv"]).contains("* bob left"));
}

/// `recv --wait` wakes on room pushes: room lines show up live, next to
/// one-to-one messages, without another `recv`.
#[test]
fn recv_wait_shows_room_messages_live() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server-data"));
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());
    for u in [&alice, &bob] {
        u.ok(&["register", &u.name]);
    }
    let room = "live-room-92c4";
    alice.ok(&["rooms", "create", room]);
    bob.ok(&["rooms", "join", room]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_pqc-client"))
        .arg("--profile")
        .arg(&alice.profile)
        .arg("--server")
        .arg(&alice.server)
        .args(["recv", "--wait", "20"])
        .env("PQC_PASSPHRASE", "passphrase of alice")
        .env_remove("PQC_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().map(|l| l.unwrap()).unwrap_or_else(|| panic!("recv --wait ended early"));
    // The catch-up after login: bob's join. alice is now waiting for pushes.
    assert_eq!(next(), format!("[{room}] * bob joined"));
    bob.ok(&["rooms", "send", room, "live in the room"]);
    assert_eq!(next(), format!("[{room}] bob: live in the room"));
    bob.ok(&["rooms", "video", room, "on"]);
    assert_eq!(next(), format!("[{room}] * bob video on"));
    // One-to-one messages still wake it too.
    bob.ok(&["send", "alice", "direct line"]);
    assert_eq!(next(), "bob: direct line");
    // An invitation shows at once, and the new room's messages follow.
    bob.ok(&["rooms", "create", "second-room-0b1e"]);
    bob.ok(&["rooms", "invite", "second-room-0b1e", "alice"]);
    assert_eq!(next(), "[second-room-0b1e] * bob added you");
    bob.ok(&["rooms", "send", "second-room-0b1e", "in the second room"]);
    assert_eq!(next(), "[second-room-0b1e] bob: in the second room");
    let _ = child.kill();
    let _ = child.wait();
}

/// Invited join (MLS commit + Welcome): the invitee is offline and never
/// learns the room name out of band; the Welcome reaches them through the
/// 1:1 channel, the relay routes the room to them from the add on.
#[test]
fn invited_join_by_commit_and_welcome() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server-data"));
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| User::new(tmp.path(), n, &server.addr()));
    for u in [&alice, &bob, &carol, &dave] {
        u.ok(&["register", &u.name]);
    }
    let room = "invite-only-5e21";
    alice.ok(&["rooms", "create", room, "--max", "3"]);
    // bob is offline while alice adds him and writes.
    assert_eq!(alice.ok(&["rooms", "invite", room, "bob"]), format!("added bob to room {room}\n"));
    alice.ok(&["rooms", "send", room, "welcome bob"]);
    assert_eq!(bob.ok(&["recv"]), format!("[{room}] * alice added you\n[{room}] alice: welcome bob\n"));
    assert_eq!(bob.ok(&["rooms", "members", room]), "alice\nbob\n");
    let err = alice.fails(&["rooms", "invite", room, "bob"]);
    assert!(err.contains("already"), "{err}");
    // A member added by invitation invites the next one.
    bob.ok(&["rooms", "invite", room, "carol"]);
    bob.ok(&["rooms", "send", room, "hi carol"]);
    assert_eq!(carol.ok(&["recv"]), format!("[{room}] * bob added you\n[{room}] bob: hi carol\n"));
    assert_eq!(alice.ok(&["recv"]), format!("[{room}] * carol joined\n[{room}] bob: hi carol\n"));
    // The participant limit holds for invitations too.
    let err = carol.fails(&["rooms", "invite", room, "dave"]);
    assert!(err.contains("full"), "{err}");
    let err = alice.fails(&["rooms", "invite", room, "nobody-here"]);
    assert!(err.contains("no such user") || err.contains("unknown user"), "{err}");
    carol.ok(&["rooms", "send", room, "thanks"]);
    assert_eq!(alice.ok(&["recv"]), format!("[{room}] carol: thanks\n"));
    assert_eq!(dave.ok(&["recv"]), "");
}

/// A leave proposal that a join in the same epoch made void (an external
/// commit cannot carry it) is still carried out: the next member to sync
/// removes the leaver, so later messages are not made with keys it has.
#[test]
fn a_leave_made_void_by_a_join_is_still_carried_out() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let server = TestServer::start(&data);
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| User::new(tmp.path(), n, &server.addr()));
    for u in [&alice, &bob, &carol, &dave] {
        u.ok(&["register", &u.name]);
    }
    let room = "void-leave-5c1e";
    alice.ok(&["rooms", "create", room, "--max", "4"]);
    bob.ok(&["rooms", "join", room]);
    carol.ok(&["rooms", "join", room]);
    // bob leaves; before anyone commits his proposal, dave joins in the same
    // epoch: the join commit does not carry the proposal, which is void.
    bob.ok(&["rooms", "leave", room]);
    dave.ok(&["rooms", "join", room]);
    // alice syncs, sees bob still in the group, and removes him.
    assert_eq!(alice.ok(&["rooms", "members", room]), "alice\ncarol\ndave\n");
    assert_eq!(dave.ok(&["rooms", "members", room]), "alice\ncarol\ndave\n");
    alice.ok(&["rooms", "send", room, "without bob"]);
    let got = carol.ok(&["recv"]);
    assert!(got.contains(&format!("[{room}] * bob left\n")), "{got}");
    assert!(got.ends_with(&format!("[{room}] alice: without bob\n")), "{got}");
    assert_eq!(bob.ok(&["recv"]), "");
}

/// A member away longer than the relay keeps room messages (`envelope_days`;
/// the relay's hourly sweep is played here on the stopped server's store)
/// finds them gone: its next `recv` says so and joins the room again in its
/// own seat (the room of 2 is full and still takes it), and the room goes on
/// both ways; what expired is not shown.
#[test]
fn a_member_whose_room_history_expired_joins_again() {
    use pqc_store::server::ServerStore;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let mut server = TestServer::start(&data);
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());
    for u in [&alice, &bob] {
        u.ok(&["register", &u.name]);
    }
    let room = "long-absence-4b1c";
    alice.ok(&["rooms", "create", room, "--max", "2"]);
    bob.ok(&["rooms", "join", room]);
    bob.ok(&["rooms", "send", room, "see you in a month"]);
    assert_eq!(alice.ok(&["recv"]), format!("[{room}] * bob joined\n[{room}] bob: see you in a month\n"));
    alice.ok(&["rooms", "send", room, "sent while bob is away"]);
    // alice's own sync reads her entry; bob never fetches it.
    assert_eq!(alice.ok(&["recv"]), "");

    server.stop();
    {
        let mut store = pqc_store::server::SqliteServerStore::open(&data.join("server.db")).unwrap();
        // bob's own message and alice's: he has read neither back.
        assert_eq!(store.expire_room_entries(pqc_store::mailbox::unix_now() + 1).unwrap(), 2);
    }
    let (port, status_port) = (server.port, server.status_port);
    server = TestServer::start_on(&data, port, status_port);

    let out = bob.ok(&["recv"]);
    assert_eq!(
        out,
        format!(
            "[{room}] * room messages you had not fetched expired on the server while you were away; you joined the room again (what was sent meanwhile is lost)\n"
        )
    );
    assert_eq!(bob.ok(&["rooms", "members", room]), "alice\nbob\n");
    alice.ok(&["rooms", "send", room, "welcome back"]);
    assert_eq!(bob.ok(&["recv"]), format!("[{room}] alice: welcome back\n"));
    bob.ok(&["rooms", "send", room, "thanks"]);
    // alice's own send synced past bob's join; her next recv shows it first.
    assert_eq!(
        alice.ok(&["recv"]),
        format!(
            "[{room}] * bob joined again after being away; room messages sent meanwhile may not have reached bob\n\
             [{room}] bob: thanks\n"
        )
    );
    drop(server);
}
