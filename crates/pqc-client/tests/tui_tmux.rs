//! `pqc-client chat` driven in a real pseudo-terminal (tmux, 80x24) against
//! a real `pqc-server`: typing a message, receiving one live without a key
//! press, a room (created in the UI, joined from the command line, lines
//! live both ways), quitting with the terminal restored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestServer, User};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("run tmux");
    assert!(out.status.success(), "tmux {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A tmux session on its own server socket, killed on drop.
struct Session {
    socket: String,
    name: String,
}

impl Session {
    fn cmd<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["-L", self.socket.as_str()];
        v.extend_from_slice(args);
        v
    }

    fn capture(&self) -> String {
        tmux(&self.cmd(&["capture-pane", "-p", "-t", &self.name]))
    }

    fn display(&self, fmt: &str) -> String {
        tmux(&self.cmd(&["display-message", "-p", "-t", &self.name, fmt])).trim().to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.name.as_str()];
        args.extend_from_slice(keys);
        tmux(&self.cmd(&args));
    }

    /// Types `text` literally, then Enter.
    fn line(&self, text: &str) {
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }

    /// Polls the screen until `pred` holds; panics with the screen after `secs`.
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).output();
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn chat_in_a_terminal_sends_receives_live_and_restores_the_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!(
            "SKIPPED: tmux is not installed (apt-get install -y tmux); the terminal UI end-to-end test did not run"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tmp.path().join("server-data"));
    let alice = User::new(tmp.path(), "alice", &server.addr());
    let bob = User::new(tmp.path(), "bob", &server.addr());
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);

    let session = Session { socket: format!("pqc-tui-test-{}", std::process::id()), name: "chat".into() };
    let marker = tmp.path().join("exited");
    // The shell records the exit status and the terminal modes after the client exits.
    let script = format!(
        "PQC_PASSPHRASE={} {} --profile {} --server {} chat --out {}; echo $? > {}.tmp; stty -a >> {}.tmp; mv {}.tmp {}; sleep 600",
        sh_quote(&format!("passphrase of {}", alice.name)),
        sh_quote(env!("CARGO_BIN_EXE_pqc-client")),
        sh_quote(alice.profile.to_str().unwrap()),
        sh_quote(&alice.server),
        sh_quote(tmp.path().join("downloads").to_str().unwrap()),
        sh_quote(marker.to_str().unwrap()),
        sh_quote(marker.to_str().unwrap()),
        sh_quote(marker.to_str().unwrap()),
        sh_quote(marker.to_str().unwrap()),
    );
    tmux(&session.cmd(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        &session.name,
        "-x",
        "80",
        "-y",
        "24",
        "sh",
        "-c",
        &script,
    ]));
    // Logged in: the status bar shows the server, the state and the post-quantum group.
    let screen = session.wait_for("the status bar", 30, |s| s.contains("X25519MLKEM768"));
    assert!(screen.contains(&format!("alice@{}", server.addr())), "{screen}");
    assert!(screen.contains("connected"), "{screen}");
    assert_eq!(session.display("#{window_width}x#{window_height}"), "80x24");
    assert_eq!(session.display("#{alternate_on}"), "1", "the chat runs on the alternate screen");

    session.line("/msg bob hello from the terminal");
    session.wait_for("the sent line", 20, |s| s.contains("alice: hello from the terminal"));
    let got = bob.ok(&["recv"]);
    assert_eq!(got, "alice: hello from the terminal\n");

    // Bob answers; it appears on alice's screen with no key pressed.
    bob.ok(&["send", "alice", "hi alice, live from bob"]);
    let screen = session.wait_for("bob's live message", 10, |s| s.contains("bob: hi alice, live from bob"));
    assert!(screen.contains("bob: unverified"), "{screen}");
    eprintln!("80x24 screen:\n{screen}");

    // Rooms: alice creates one in the UI; bob joins and writes from the
    // command line; the join and the message appear live in alice's room.
    session.line("/create lounge-x");
    session.wait_for("the created room", 20, |s| s.contains("created room lounge-x") && s.contains("#lounge-x"));
    bob.ok(&["rooms", "join", "lounge-x"]);
    bob.ok(&["rooms", "send", "lounge-x", "hello room from bob"]);
    let screen = session
        .wait_for("bob's room message", 20, |s| s.contains("* bob joined") && s.contains("bob: hello room from bob"));
    eprintln!("80x24 room screen:\n{screen}");
    session.line("hi room");
    session.wait_for("alice's room line", 20, |s| s.contains("alice: hi room"));
    assert_eq!(bob.ok(&["recv"]), "[lounge-x] alice: hi room\n");

    // Help, then quit: the exit status is 0 and the terminal is back to normal.
    session.keys(&["?"]);
    session.wait_for("the help", 10, |s| s.contains("Help") && s.contains("/views N TEXT"));
    session.keys(&["Escape"]);
    session.line("/quit");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "chat did not exit; screen:\n{}", session.capture());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(after.lines().next(), Some("0"), "exit status and stty:\n{after}");
    let modes: Vec<&str> = after.split(|c: char| c.is_whitespace() || c == ';').collect();
    assert!(modes.contains(&"icanon") && modes.contains(&"echo"), "the terminal is still raw:\n{after}");
    assert_eq!(session.display("#{alternate_on}"), "0", "the alternate screen was left");
    let screen = session.capture();
    assert!(!screen.contains("Chats"), "the chat screen is gone:\n{screen}");
    assert!(!screen.contains("hello from the terminal"), "no message text is left on the normal screen:\n{screen}");
}
