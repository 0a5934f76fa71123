//! Crash test with real processes: four senders each send their share of
//! the messages one by one with `pqc-client send` while the `pqc-server` is killed with SIGKILL at random
//! (seeded) moments and restarted on the same data folder and port.
//!
//! Checked: every message whose `send` exited 0 is delivered exactly once,
//! and in order per sender; a message whose `send` failed after queueing it is sent by
//! the client's outbox on a later command, never twice; nothing is delivered
//! that was not sent.
//!
//! `PQC_CRASH_MESSAGES` (default 1000), `PQC_CRASH_KILLS` (default 6) and
//! `PQC_CRASH_SEED` tune it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestServer, User};

/// The senders, each sending its share of the messages one by one, concurrently.
const SENDERS: [&str; 4] = ["alice", "carol", "dave", "erin"];

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Exit 0: the server acknowledged it.
    Sent,
    /// Exit non-zero after queueing it in the outbox.
    Queued,
    /// Exit non-zero before queueing (e.g. no connection): the caller retries.
    NotQueued,
    /// Did not finish in time and was killed: it may or may not be queued.
    Killed,
}

/// Runs `pqc-client send` with a deadline (a hung client is killed).
fn send(user: &User, to: &str, text: &str, deadline: Duration) -> (Outcome, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pqc-client"))
        .arg("--profile")
        .arg(&user.profile)
        .arg("--server")
        .arg(&user.server)
        .args(["send", to, text])
        .env("PQC_PASSPHRASE", format!("passphrase of {}", user.name))
        .env_remove("PQC_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = reader.join().unwrap();
    let outcome = match status {
        None => Outcome::Killed,
        Some(st) if st.success() => Outcome::Sent,
        Some(_) if err.contains("queued in the profile") => Outcome::Queued,
        Some(_) => Outcome::NotQueued,
    };
    (outcome, err)
}

#[test]
fn sigkill_server_while_sending_loses_and_duplicates_nothing() {
    let n = env_or("PQC_CRASH_MESSAGES", 1000) as usize;
    let kills = env_or("PQC_CRASH_KILLS", 6) as usize;
    let seed = env_or("PQC_CRASH_SEED", 0x00C0_FFEE_D00D_5EED);
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server-data");
    let server = Arc::new(Mutex::new(TestServer::start(&data)));
    let addr = server.lock().unwrap().addr();
    let bob = User::new(tmp.path(), "bob", &addr);
    bob.ok(&["register", "bob"]);

    // The killer: after a random pause, SIGKILL the server, wait a random
    // moment, restart it on the same folder and ports; `kills` times.
    let done = Arc::new(AtomicBool::new(false));
    let sends_done = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (server, done, sends_done) = (server.clone(), done.clone(), sends_done.clone());
        let mut rng = Rng(seed);
        // Spread the kills over the run: one kill per `n / (kills + 1)` sends on average.
        let every = (n / (kills + 1)).max(1) as u64;
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for k in 0..kills {
                let target = (k as u64 + 1) * every + rng.range(0, every / 2 + 1);
                // Then a random delay inside that send (0–60 ms) for a random point in its life.
                while (sends_done.load(Ordering::SeqCst) as u64) < target && !done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if done.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(rng.range(0, 60)));
                let mut s = server.lock().unwrap();
                s.kill();
                let at = sends_done.load(Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(rng.range(0, 500)));
                *s = TestServer::start_on(&s.data.clone(), s.port, s.status_port);
                log.push(at);
            }
            log
        })
    };

    // Several senders, each sending its share one by one, in order.
    let senders: Vec<User> = SENDERS.iter().map(|name| User::new(tmp.path(), name, &addr)).collect();
    for u in &senders {
        u.ok(&["register", &u.name]);
    }
    let per = n.div_ceil(senders.len());
    let results: Vec<(String, Vec<Outcome>, usize, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = senders
            .iter()
            .map(|u| {
                let sends_done = sends_done.clone();
                scope.spawn(move || {
                    let (mut outcomes, mut attempts, mut notes) = (Vec::with_capacity(per), 0usize, Vec::new());
                    for i in 0..per {
                        let text = format!("crash-test message {i:04}");
                        let mut tries = 0;
                        let outcome = loop {
                            tries += 1;
                            attempts += 1;
                            let (o, err) = send(u, "bob", &text, Duration::from_secs(60));
                            if o != Outcome::Sent && notes.len() < 10 {
                                notes.push(format!("{} #{i} try {tries}: {o:?}: {}", u.name, err.trim()));
                            }
                            // Never queued: nothing can reach bob, so sending it again cannot duplicate it.
                            if o == Outcome::NotQueued && tries < 10 {
                                std::thread::sleep(Duration::from_millis(200));
                                continue;
                            }
                            break o;
                        };
                        outcomes.push(outcome);
                        sends_done.fetch_add(1, Ordering::SeqCst);
                    }
                    (u.name.clone(), outcomes, attempts, notes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    done.store(true, Ordering::SeqCst);
    let kill_points = killer.join().unwrap();
    let attempts: usize = results.iter().map(|r| r.2).sum();
    eprintln!(
        "killed the server after sends {kill_points:?}; {attempts} send attempts for {} messages",
        per * senders.len()
    );
    for note in results.iter().flat_map(|r| &r.3) {
        eprintln!("{note}");
    }
    assert!(kill_points.len() >= kills.min(5), "only {} kills happened", kill_points.len());

    // A last command of each sender flushes anything still queued; then bob drains his mailbox.
    for u in &senders {
        let out = u.run(&["recv"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("still waiting"), "final flush of {}: {err}", u.name);
    }
    let mut received = String::new();
    for _ in 0..5 {
        let got = bob.ok(&["recv"]);
        if got.is_empty() {
            break;
        }
        received.push_str(&got);
    }
    server.lock().unwrap().stop();

    let mut seen: HashMap<(String, usize), usize> = HashMap::new();
    let mut order: HashMap<String, Vec<usize>> = HashMap::new();
    for line in received.lines() {
        let (from, rest) = line.split_once(": ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
        let idx: usize = rest
            .strip_prefix("crash-test message ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap();
        assert!(SENDERS.contains(&from), "unexpected sender in {line:?}");
        *seen.entry((from.to_string(), idx)).or_default() += 1;
        order.entry(from.to_string()).or_default().push(idx);
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    for (from, o) in &order {
        assert!(o.windows(2).all(|w| w[0] < w[1]), "{from}'s messages out of order: {o:?}");
    }
    let mut lost = Vec::new();
    for (name, outcomes, _, _) in &results {
        for (i, o) in outcomes.iter().enumerate() {
            match o {
                // Acknowledged, or queued and flushed later: exactly once.
                Outcome::Sent | Outcome::Queued => {
                    if !seen.contains_key(&(name.clone(), i)) {
                        lost.push((name.clone(), i, o));
                    }
                }
                // Unknown fate: at most once (checked above).
                Outcome::Killed | Outcome::NotQueued => {}
            }
        }
    }
    assert!(lost.is_empty(), "lost: {lost:?}");
    let count = |k: Outcome| results.iter().flat_map(|r| &r.1).filter(|o| **o == k).count();
    eprintln!(
        "{} messages from {} senders in {:?}: {} sent, {} queued and flushed later, {} killed, {} never queued; {} delivered",
        per * senders.len(),
        senders.len(),
        started.elapsed(),
        count(Outcome::Sent),
        count(Outcome::Queued),
        count(Outcome::Killed),
        count(Outcome::NotQueued),
        seen.len()
    );
}
