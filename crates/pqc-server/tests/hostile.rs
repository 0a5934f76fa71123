//! Hostile clients against a real `pqc-server` process on 127.0.0.1:
//! slowloris (idle QUIC connections, a dribbled frame), oversize and
//! malformed frames, a request flood from one connection, registration
//! spam, and garbage UDP datagrams. In each test a well-behaved client keeps
//! registering, sending and receiving, and the server's `/metrics` and log
//! must say what was refused. Every test is bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pqc_crypto::rng::SystemRng;
use pqc_crypto::sign::HybridSigningKey;
use pqc_net::{CertFingerprint, Connection, ServerTrust, quinn};
use pqc_wire::*;

/// A `pqc-server` child process with its own data dir and ports.
struct ServerProc {
    child: Child,
    addr: SocketAddr,
    status: SocketAddr,
    fingerprint: CertFingerprint,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl ServerProc {
    /// Starts the server binary with `limits` appended to its config's `[limits]` table.
    fn start(limits: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("server.toml");
        std::fs::write(&cfg, format!("log_level = \"info\"\n[limits]\n{limits}\n")).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let status: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let (child, fingerprint, log) = Self::spawn(dir.path(), addr, status);
        Self { child, addr, status, fingerprint, log, _dir: dir }
    }

    /// SIGKILL, then start again on the same data folder and ports.
    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, fingerprint, log) = Self::spawn(self._dir.path(), self.addr, self.status);
        assert_eq!(fingerprint, self.fingerprint);
        (self.child, self.log) = (child, log);
    }

    fn spawn(
        dir: &std::path::Path,
        addr: SocketAddr,
        status: SocketAddr,
    ) -> (Child, CertFingerprint, Arc<Mutex<Vec<String>>>) {
        let cfg = dir.join("server.toml");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pqc-server"))
            .arg("--config")
            .arg(&cfg)
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--status")
            .arg(status.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(fp) = line.strip_prefix("certificate SHA-256 fingerprint: ") {
                    let _ = tx.send(fp.parse::<CertFingerprint>().unwrap());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let fingerprint = rx.recv_timeout(Duration::from_secs(30)).expect("server printed its fingerprint");
        (child, fingerprint, log)
    }

    fn metrics(&self) -> HashMap<String, u64> {
        let mut s = TcpStream::connect(self.status).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| l.starts_with("pqc_") && !l.contains('{'))
            .filter_map(|l| l.split_once(' ').map(|(k, v)| (k.to_string(), v.trim().parse().unwrap())))
            .collect()
    }

    fn metric(&self, name: &str) -> u64 {
        *self.metrics().get(name).unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Waits (bounded) until the server's log has a line containing `needle`.
    fn wait_log(&self, needle: &str) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server log has no line containing {needle:?}");
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "pqc-server exited");
    }

    async fn connect(&self) -> Result<Connection, pqc_net::NetError> {
        let fut = Connection::connect(self.addr, "localhost", ServerTrust::Pinned(self.fingerprint));
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(r) => r.map(|(c, _, _)| c),
            Err(_) => Err(pqc_net::NetError::Timeout),
        }
    }

    /// A QUIC connection that completes the handshake and then sends nothing.
    async fn raw_quinn(&self, endpoint: &quinn::Endpoint) -> quinn::Connection {
        let (cfg, _probe) = pqc_net::client_config(&ServerTrust::Pinned(self.fingerprint)).unwrap();
        endpoint.connect_with(cfg, self.addr, "localhost").unwrap().await.unwrap()
    }

    /// A raw QUIC connection past the server's Hello: its control stream and
    /// the login challenge, for tests that write frame bytes themselves.
    async fn raw_hello(
        &self,
        endpoint: &quinn::Endpoint,
    ) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream, [u8; CHALLENGE_LEN]) {
        let conn = self.raw_quinn(endpoint).await;
        let (send, mut recv) = conn.accept_bi().await.unwrap();
        let hello = pqc_net::read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
        let ServerFrame::Hello { challenge, .. } = ServerFrame::decode(&hello).unwrap() else { panic!("no hello") };
        (conn, send, recv, challenge)
    }
}

struct User {
    name: Username,
    key: HybridSigningKey,
}

impl User {
    fn new(name: &str) -> Self {
        Self { name: Username::new(name).unwrap(), key: HybridSigningKey::generate(&mut SystemRng).unwrap() }
    }

    fn register_req(&self, c: &Connection) -> Request {
        self.register_req_for(&c.challenge())
    }

    fn register_req_for(&self, challenge: &[u8; CHALLENGE_LEN]) -> Request {
        let ik = self.key.verifying_key().to_bytes();
        let t = register_transcript(challenge, &self.name, &ik);
        let sig = self.key.sign(&t, REGISTER_CONTEXT, &mut SystemRng).unwrap().to_bytes();
        Request::Register { username: self.name.clone(), identity_key: ik, signature: sig }
    }

    /// Registers on a raw stream from [`ServerProc::raw_hello`] (request id 1).
    async fn register_raw(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        challenge: &[u8; CHALLENGE_LEN],
    ) {
        let frame = ClientFrame { id: RequestId(1), request: self.register_req_for(challenge) };
        send.write_all(&frame.encode()).await.unwrap();
        let answer = pqc_net::read_frame(recv, 1 << 20).await.unwrap().unwrap();
        let ServerFrame::Response { response, .. } = ServerFrame::decode(&answer).unwrap() else {
            panic!("no response")
        };
        assert_eq!(response, Response::Ok);
    }

    async fn register(&self, srv: &ServerProc) -> Connection {
        let c = srv.connect().await.unwrap();
        assert_eq!(c.request(self.register_req(&c)).await.unwrap(), Response::Ok);
        c
    }
}

/// A well-behaved pair of users: both register, one sends `n` messages, the
/// other receives exactly those, in order, and acknowledges them.
async fn well_behaved(srv: &ServerProc, tag: &str, n: usize) {
    let alice = User::new(&format!("alice-{tag}"));
    let bob = User::new(&format!("bob-{tag}"));
    let ca = alice.register(srv).await;
    let cb = bob.register(srv).await;
    for i in 0..n {
        let r = ca
            .request(Request::Send {
                to: bob.name.clone(),
                max_views: None,
                payload: format!("{tag} {i}").into_bytes(),
            })
            .await
            .unwrap();
        assert!(matches!(r, Response::Ack { .. }), "send {i}: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let Response::Envelopes { envelopes, .. } = cb.request(Request::Fetch).await.unwrap() else {
        panic!("fetch failed")
    };
    let got: Vec<String> = envelopes.iter().map(|e| String::from_utf8(e.payload.clone()).unwrap()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("{tag} {i}")).collect();
    assert_eq!(got, want);
    let ids = envelopes.iter().map(|e| e.id).collect();
    assert_eq!(cb.request(Request::AckEnvelopes { ids }).await.unwrap(), Response::Deleted { count: n as u32 });
    ca.close().await;
    cb.close().await;
}

fn closed_with(e: &quinn::ConnectionError, code: u32) -> bool {
    matches!(e, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_idle_connections_are_closed_and_counted() {
    let srv = ServerProc::start("max_connections = 10\nlogin_timeout_secs = 3");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let try_connect = || async {
        let (cfg, _probe) = pqc_net::client_config(&ServerTrust::Pinned(srv.fingerprint)).unwrap();
        let connecting = endpoint.connect_with(cfg, srv.addr, "localhost").unwrap();
        tokio::time::timeout(Duration::from_secs(5), connecting).await.ok().and_then(Result::ok)
    };
    let wait_closed = |conns: Vec<quinn::Connection>| async move {
        for c in &conns {
            let e = tokio::time::timeout(Duration::from_secs(8), c.closed()).await.expect("idle connection closed");
            assert!(closed_with(&e, 3), "{e:?}");
        }
    };
    // Phase 1: silent connections fill the cap; the next one is refused...
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(try_connect().await.expect("below the cap"));
    }
    assert!(try_connect().await.is_none(), "the connection cap let an 11th connection in");
    assert_eq!(srv.metric("pqc_refused_connection_cap_total"), 1);
    // ...but only until the login timeout closes them.
    wait_closed(std::mem::take(&mut idle)).await;
    srv.wait_log("no register/login within 3s");
    // Phase 2: silent connections below the cap while a well-behaved client works.
    for _ in 0..7 {
        idle.push(try_connect().await.expect("slots were freed"));
    }
    well_behaved(&srv, "slowloris", 5).await;
    wait_closed(idle).await;
    assert_eq!(srv.metric("pqc_refused_login_timeout_total"), 17);
    assert_eq!(srv.metric("pqc_registrations_total"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_frame_is_cut_off() {
    let srv = ServerProc::start("frame_timeout_secs = 2\nlogin_timeout_secs = 30");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let (conn, mut send, _recv, _) = srv.raw_hello(&endpoint).await;
    // Announce a 1000-byte frame, then send one byte every 300 ms.
    let dribble = async {
        send.write_all(&1000u32.to_be_bytes()).await.unwrap();
        for _ in 0..40 {
            if send.write_all(&[0]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let started = Instant::now();
    let (_, ()) = tokio::join!(well_behaved(&srv, "dribble", 5), dribble);
    let e = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("server cut the dribbler off");
    assert!(closed_with(&e, 3), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_eq!(srv.metric("pqc_refused_frame_timeout_total"), 1);
    srv.wait_log("refused: closing connection: a frame did not arrive within 2s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_frames_close_only_their_connection() {
    let mut srv = ServerProc::start("max_frame = 65536\nmax_attachment = 1000");
    let attacker = User::new("mallory");
    let cm = attacker.register(&srv).await;
    // An oversize frame: the connection is closed as soon as the prefix is read.
    cm.send_raw_frame_body(vec![0; 100_000]).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), cm.quinn().closed()).await.unwrap();
    assert!(closed_with(&e, 2), "{e:?}");
    // A length prefix of 4 GiB on a raw stream, before logging in.
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let raw = srv.raw_quinn(&endpoint).await;
    let (mut send, mut recv) = raw.accept_bi().await.unwrap();
    pqc_net::read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), raw.closed()).await.unwrap();
    assert!(closed_with(&e, 2), "{e:?}");
    // A malformed frame body.
    let c = srv.connect().await.unwrap();
    c.send_raw_frame_body(vec![1, 0x7e, 0, 0, 0, 1, 0xff]).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), c.quinn().closed()).await.unwrap();
    assert!(closed_with(&e, 1), "{e:?}");
    // An oversize attachment is refused by an error, not a closed connection.
    let cm = srv.connect().await.unwrap();
    let login = {
        let t = login_transcript(&cm.challenge(), &attacker.name);
        let sig = attacker.key.sign(&t, LOGIN_CONTEXT, &mut SystemRng).unwrap().to_bytes();
        Request::Login { username: attacker.name.clone(), signature: sig }
    };
    assert_eq!(cm.request(login).await.unwrap(), Response::Ok);
    let r = cm.request(Request::AttachmentBegin { to: attacker.name.clone(), total_len: 1 << 40 }).await.unwrap();
    assert!(matches!(r, Response::Error { code: ErrorCode::TooLarge, .. }), "{r:?}");
    well_behaved(&srv, "oversize", 5).await;
    let m = srv.metrics();
    assert_eq!(m["pqc_refused_too_large_total"], 3, "{m:?}");
    assert_eq!(m["pqc_malformed_frames_total"], 1, "{m:?}");
    srv.wait_log("frame of 100000 bytes");
    srv.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_flood_from_one_connection_is_rate_limited() {
    let srv = ServerProc::start("requests_per_second = 20");
    let flooder = Arc::new(User::new("flooder").register(&srv).await);
    let flood = {
        let flooder = flooder.clone();
        tokio::spawn(async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..400 {
                let f = flooder.clone();
                set.spawn(async move { f.request(Request::Fetch).await });
            }
            let (mut ok, mut limited) = (0u64, 0u64);
            while let Some(r) = set.join_next().await {
                match r.unwrap().unwrap() {
                    Response::Envelopes { .. } => ok += 1,
                    Response::Error { code: ErrorCode::RateLimited, .. } => limited += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            (ok, limited)
        })
    };
    // The well-behaved client has its own budget and is served meanwhile.
    well_behaved(&srv, "flood", 10).await;
    let (ok, limited) = flood.await.unwrap();
    assert_eq!(ok + limited, 400);
    assert!(limited >= 200, "only {limited} of 400 flood requests were refused");
    assert_eq!(srv.metric("pqc_refused_rate_limited_total"), limited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_spam_is_capped_per_connection() {
    let srv = ServerProc::start("max_auth_attempts = 3");
    let victim = User::new("victim");
    victim.register(&srv).await.close().await;
    let spam = async {
        // One connection trying to take a name, then garbage signatures: closed after 3 failures.
        let c = srv.connect().await.unwrap();
        let squatter = User { name: victim.name.clone(), key: HybridSigningKey::generate(&mut SystemRng).unwrap() };
        let mut refusals = 0;
        for i in 0..10 {
            let req = if i == 0 {
                squatter.register_req(&c)
            } else {
                let u = User::new(&format!("spam{i}"));
                let Request::Register { username, identity_key, .. } = u.register_req(&c) else { unreachable!() };
                Request::Register { username, identity_key, signature: vec![0; 64] }
            };
            match c.request(req).await {
                Ok(Response::Error { .. }) => refusals += 1,
                Ok(other) => panic!("spam accepted: {other:?}"),
                Err(_) => break,
            }
        }
        assert_eq!(refusals, 3);
        let e = tokio::time::timeout(Duration::from_secs(5), c.quinn().closed()).await.unwrap();
        assert!(closed_with(&e, 3), "{e:?}");
        // Valid registrations, one per connection: each connection gets one account at most.
        for i in 0..5 {
            let u = User::new(&format!("bulk{i}"));
            let c = u.register(&srv).await;
            let again = User::new(&format!("bulk{i}-again"));
            let r = c.request(again.register_req(&c)).await.unwrap();
            assert!(matches!(r, Response::Error { code: ErrorCode::AlreadyLoggedIn, .. }), "{r:?}");
            c.close().await;
        }
    };
    tokio::join!(spam, well_behaved(&srv, "spam", 5));
    let m = srv.metrics();
    assert_eq!(m["pqc_refused_auth_attempts_total"], 1, "{m:?}");
    assert_eq!(m["pqc_auth_failed_total"], 3, "{m:?}");
    assert_eq!(m["pqc_registrations_total"], 1 + 5 + 2, "{m:?}");
    srv.wait_log("refused: 3 failed register/login attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_udp_datagrams_are_ignored() {
    let mut srv = ServerProc::start("");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Deterministic xorshift garbage: random bytes, and QUIC-looking long
    // headers (Initial, version 1) padded to 1200 bytes.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..2000 {
        let len = if i % 2 == 0 { (next() % 1400) as usize + 1 } else { 1200 };
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 1 {
            d[0] = 0xC0 | (d[0] & 0x0F);
            d[1..5].copy_from_slice(&1u32.to_be_bytes());
            d[5] = 8;
        }
        let _ = sock.send_to(&d, srv.addr);
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    well_behaved(&srv, "udp", 5).await;
    srv.assert_alive();
    assert_eq!(srv.metric("pqc_handshakes_ok_total"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_a_crashed_server_are_reset_after_restart() {
    let mut srv = ServerProc::start("");
    let alice = User::new("alice");
    let mut c = alice.register(&srv).await;
    c.set_timeout(Duration::from_secs(30));
    srv.kill_and_restart();
    // The restarted process knows the persisted stateless-reset key, so the
    // old connection fails at once instead of waiting out the 30 s timeout.
    let t = Instant::now();
    let r = c.request(Request::Ping).await;
    assert!(r.is_err(), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}: {r:?}", t.elapsed());
    assert!(matches!(c.close_reason(), Some(quinn::ConnectionError::Reset)), "{:?}", c.close_reason());
    // And a new connection is served.
    well_behaved(&srv, "restart", 3).await;
}

/// The server reads a connection's frames in the same loop that pushes to
/// it: a frame that arrives in pieces, with pushes going out between them,
/// is read whole (nothing of it is lost when the loop turns to a push).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_arriving_in_pieces_between_pushes_is_read_whole() {
    let srv = ServerProc::start("");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let (conn, mut send, mut recv, challenge) = srv.raw_hello(&endpoint).await;
    let bob = User::new("bob");
    bob.register_raw(&mut send, &mut recv, &challenge).await;

    // A Send of 3 000 bytes to alice, written in three pieces: part of the
    // length prefix, part of the body, the rest.
    let alice = User::new("alice");
    let ca = alice.register(&srv).await;
    let payload = vec![7u8; 3000];
    let frame =
        ClientFrame { id: RequestId(2), request: Request::Send { to: alice.name.clone(), max_views: None, payload } }
            .encode();
    for piece in [&frame[..2], &frame[2..1000]] {
        send.write_all(piece).await.unwrap();
        // Meanwhile alice sends bob a message: the server pushes it to bob's
        // stream while bob's frame is half read.
        let r =
            ca.request(Request::Send { to: bob.name.clone(), max_views: None, payload: b"hi".to_vec() }).await.unwrap();
        assert!(matches!(r, Response::Ack { .. }), "{r:?}");
        let pushed = tokio::time::timeout(Duration::from_secs(5), pqc_net::read_frame(&mut recv, 1 << 20))
            .await
            .expect("push arrives")
            .unwrap()
            .unwrap();
        let pushed = ServerFrame::decode(&pushed).unwrap();
        assert!(matches!(pushed, ServerFrame::Push(_)), "{pushed:?}");
    }
    send.write_all(&frame[1000..]).await.unwrap();
    let answer = pqc_net::read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
    let ServerFrame::Response { id, response } = ServerFrame::decode(&answer).unwrap() else { panic!("no response") };
    assert_eq!(id, RequestId(2));
    assert!(matches!(response, Response::Ack { .. }), "{response:?}");
    // alice got the 3 000 bytes intact.
    let Response::Envelopes { envelopes, .. } = ca.request(Request::Fetch).await.unwrap() else { panic!("fetch") };
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0].payload, vec![7u8; 3000]);
    assert!(conn.close_reason().is_none());
}

/// A logged-in client that stops reading its stream while messages keep
/// coming for it: the server's queue of pushes for that connection grows
/// only to its limit (8 MiB), then the connection is closed (code 4) and
/// counted; nothing is lost: the messages stay queued, and the same user,
/// connecting again, fetches every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_loses_nothing() {
    let srv = ServerProc::start("requests_per_second = 100000");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let (conn, mut send, mut recv, challenge) = srv.raw_hello(&endpoint).await;
    let bob = User::new("bob");
    bob.register_raw(&mut send, &mut recv, &challenge).await;
    // bob reads nothing from here on.

    let alice = User::new("alice");
    let ca = alice.register(&srv).await;
    let n = 256; // 16 MiB in all
    let mut sent = 0;
    for i in 0..n {
        let payload = vec![u8::try_from(i % 251).unwrap(); 64 << 10];
        let r = ca.request(Request::Send { to: bob.name.clone(), max_views: None, payload }).await.unwrap();
        assert!(matches!(r, Response::Ack { .. }), "send {i}: {r:?}");
        sent += 1;
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("bob's connection closed");
    assert!(closed_with(&closed, 4), "{closed:?}");
    srv.wait_log("refused: more than 8192 KiB of pushes unread");
    assert_eq!(srv.metric("pqc_refused_push_backlog_total"), 1);

    // bob again, on a connection that reads: every message is there.
    let cb = srv.connect().await.unwrap();
    let t = login_transcript(&cb.challenge(), &bob.name);
    let signature = bob.key.sign(&t, LOGIN_CONTEXT, &mut SystemRng).unwrap().to_bytes();
    assert_eq!(cb.request(Request::Login { username: bob.name.clone(), signature }).await.unwrap(), Response::Ok);
    let mut got = 0;
    loop {
        let Response::Envelopes { envelopes, more } = cb.request(Request::Fetch).await.unwrap() else {
            panic!("fetch failed")
        };
        for e in &envelopes {
            assert_eq!(e.payload, vec![u8::try_from(got % 251).unwrap(); 64 << 10], "envelope {got} in order");
            got += 1;
        }
        let ids = envelopes.iter().map(|e| e.id).collect();
        cb.request(Request::AckEnvelopes { ids }).await.unwrap();
        if !more {
            break;
        }
    }
    assert_eq!(got, sent);
    well_behaved(&srv, "after-backlog", 3).await;
}

/// Once three quarters of the connection slots are taken, a new peer must
/// first prove its address (QUIC Retry): a real client does so by itself
/// and is served, and the server counts the validations; before that, no
/// Retry is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_connection_cap_new_peers_prove_their_address() {
    let srv = ServerProc::start("max_connections = 4");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(srv.raw_quinn(&endpoint).await);
    }
    assert_eq!(srv.metric("pqc_address_validations_total"), 0);
    // One slot left: this client is asked for a Retry, and gets in.
    let alice = User::new("alice");
    let ca = alice.register(&srv).await;
    assert_eq!(ca.request(Request::Ping).await.unwrap(), Response::Pong);
    assert_eq!(srv.metric("pqc_address_validations_total"), 1);
    assert_eq!(srv.metric("pqc_refused_connection_cap_total"), 0);
    drop(held);
}

/// One address may have only so many connections waiting to log in
/// (`max_pending_logins_per_address`): the next is asked to prove its
/// address (a forged one could lock its owner out), then refused and
/// counted; once one of them logs in, a new connection is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_to_log_in_are_capped_per_address() {
    let mut srv = ServerProc::start("max_pending_logins_per_address = 3");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let idle = [srv.raw_quinn(&endpoint).await, srv.raw_quinn(&endpoint).await];
    let (_conn, mut send, mut recv, challenge) = srv.raw_hello(&endpoint).await;
    assert!(srv.connect().await.is_err(), "a fourth connection waiting to log in is refused");
    srv.wait_log("refused: 3 connections from this address are waiting to log in");
    assert_eq!(srv.metric("pqc_refused_pending_logins_total"), 1);
    assert_eq!(srv.metric("pqc_address_validations_total"), 1);
    // The third logs in (registers): it no longer counts.
    let bob = User::new("bob");
    bob.register_raw(&mut send, &mut recv, &challenge).await;
    let alice = User::new("alice");
    let ca = alice.register(&srv).await;
    assert_eq!(ca.request(Request::Ping).await.unwrap(), Response::Pong);
    srv.assert_alive();
    drop(idle);
}
