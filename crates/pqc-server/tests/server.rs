//! Real QUIC on 127.0.0.1 and real SQLite files in a temp dir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use pqc_crypto::rng::SystemRng;
use pqc_crypto::sign::HybridSigningKey;
use pqc_net::{Connection, NamedGroup, ServerTrust};
use pqc_server::{Config, Server, ServerHandle};
use pqc_wire::*;

async fn start(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut cfg = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    tweak(&mut cfg);
    Server::start(cfg, "127.0.0.1:0".parse().unwrap(), Some("127.0.0.1:0".parse().unwrap())).await.unwrap()
}

async fn connect(h: &ServerHandle) -> Connection {
    let (c, fp, group) = Connection::connect(h.addr, "localhost", ServerTrust::Pinned(h.fingerprint)).await.unwrap();
    assert_eq!(fp, h.fingerprint);
    assert_eq!(group, NamedGroup::X25519MLKEM768);
    c
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
        let ik = self.key.verifying_key().to_bytes();
        let t = register_transcript(&c.challenge(), &self.name, &ik);
        let sig = self.key.sign(&t, REGISTER_CONTEXT, &mut SystemRng).unwrap().to_bytes();
        Request::Register { username: self.name.clone(), identity_key: ik, signature: sig }
    }

    fn login_req(&self, c: &Connection) -> Request {
        let t = login_transcript(&c.challenge(), &self.name);
        let sig = self.key.sign(&t, LOGIN_CONTEXT, &mut SystemRng).unwrap().to_bytes();
        Request::Login { username: self.name.clone(), signature: sig }
    }

    async fn register(&self, h: &ServerHandle) -> Connection {
        let c = connect(h).await;
        assert_eq!(c.request(self.register_req(&c)).await.unwrap(), Response::Ok);
        c
    }

    async fn login(&self, h: &ServerHandle) -> Connection {
        let c = connect(h).await;
        assert_eq!(c.request(self.login_req(&c)).await.unwrap(), Response::Ok);
        c
    }
}

fn code(r: Response) -> ErrorCode {
    match r {
        Response::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn u(s: &str) -> Username {
    Username::new(s).unwrap()
}

/// The id of the attachment a begin request created.
fn created(r: Response) -> AttachmentId {
    match r {
        Response::AttachmentCreated { id } => id,
        other => panic!("expected AttachmentCreated, got {other:?}"),
    }
}

/// Sends `n` pings one after the other; how many were refused as over the rate limit.
async fn pings_refused(c: &Connection, n: usize) -> usize {
    let mut limited = 0;
    for _ in 0..n {
        if let Response::Error { code: ErrorCode::RateLimited, .. } = c.request(Request::Ping).await.unwrap() {
            limited += 1;
        }
    }
    limited
}

#[tokio::test]
async fn register_login_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |_| {}).await;
    let alice = User::new("alice");
    let c = alice.register(&h).await;
    // Already logged in on this connection.
    assert_eq!(code(c.request(alice.login_req(&c)).await.unwrap()), ErrorCode::AlreadyLoggedIn);
    // Duplicate username.
    let impostor = User { name: u("alice"), key: HybridSigningKey::generate(&mut SystemRng).unwrap() };
    let c2 = connect(&h).await;
    let r = c2.request(impostor.register_req(&c2)).await.unwrap();
    assert!(matches!(&r, Response::Error { code: ErrorCode::UsernameTaken, message } if message.contains("taken")));
    // Bad login signature (wrong key), then not logged in.
    assert_eq!(code(c2.request(impostor.login_req(&c2)).await.unwrap()), ErrorCode::BadSignature);
    assert_eq!(code(c2.request(Request::Fetch).await.unwrap()), ErrorCode::NotLoggedIn);
    // A signature over another connection's challenge is rejected.
    let c3 = connect(&h).await;
    assert_eq!(code(c3.request(alice.login_req(&c2)).await.unwrap()), ErrorCode::BadSignature);
    // Unknown user.
    let bob = User::new("bob");
    assert_eq!(code(c3.request(bob.login_req(&c3)).await.unwrap()), ErrorCode::UnknownUser);
    // Correct login.
    assert_eq!(c3.request(alice.login_req(&c3)).await.unwrap(), Response::Ok);
    let r = c3.request(Request::GetIdentity { username: u("alice") }).await.unwrap();
    // No prekeys uploaded yet: the directory entry has an empty signed blob.
    assert_eq!(r, Response::Identity { identity_key: alice.key.verifying_key().to_bytes(), signed_prekeys: vec![] });
    h.shutdown().await;
}

#[tokio::test]
async fn key_packages_consumed_once_and_low_notice() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| {
        c.limits.low_prekeys_threshold = 2;
        c.limits.max_key_packages = 4;
    })
    .await;
    let bob = User::new("bob");
    let mut cb = bob.register(&h).await;
    let mut bob_push = cb.take_pushes().unwrap();
    let packages: Vec<Vec<u8>> = (1..=4u8).map(|i| vec![i; 10]).collect();
    assert_eq!(cb.request(Request::UploadKeyPackages { packages }).await.unwrap(), Response::Ok);
    let r = cb.request(Request::UploadKeyPackages { packages: vec![vec![5; 10]] }).await.unwrap();
    assert!(matches!(r, Response::Error { code: ErrorCode::Invalid, .. }), "{r:?}");
    let ca = User::new("alice").register(&h).await;
    for i in 1..=4u8 {
        let r = ca.request(Request::FetchKeyPackage { username: u("bob") }).await.unwrap();
        assert_eq!(r, Response::KeyPackage { package: vec![i; 10] });
    }
    let r = ca.request(Request::FetchKeyPackage { username: u("bob") }).await.unwrap();
    assert!(matches!(r, Response::Error { code: ErrorCode::NotFound, .. }), "{r:?}");
    let r = ca.request(Request::FetchKeyPackage { username: u("nobody") }).await.unwrap();
    assert!(matches!(r, Response::Error { code: ErrorCode::UnknownUser, .. }), "{r:?}");
    let p = tokio::time::timeout(Duration::from_secs(5), bob_push.recv()).await.unwrap().unwrap();
    assert_eq!(p, Push::LowKeyPackages { remaining: 1 });
    h.shutdown().await;
}

#[tokio::test]
async fn prekeys_consumed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.low_prekeys_threshold = 3).await;
    let bob = User::new("bob");
    let mut cb = bob.register(&h).await;
    let mut bob_push = cb.take_pushes().unwrap();
    let n = 20u32;
    let one_time: Vec<_> = (0..n).map(|i| (PreKeyId(i), vec![i as u8; 32])).collect();
    let one_time_kem: Vec<_> = (0..n).map(|i| (PreKeyId(1000 + i), vec![i as u8; 64])).collect();
    let r = cb
        .request(Request::UploadPrekeys { signed_prekeys: b"signed".to_vec(), one_time, one_time_kem })
        .await
        .unwrap();
    assert_eq!(r, Response::Ok);
    let alice = User::new("alice");
    let ca = Arc::new(alice.register(&h).await);
    let carol = User::new("carol");
    let cc = Arc::new(carol.register(&h).await);
    // Concurrent fetches from two connections, n + 4 in total.
    let mut tasks = Vec::new();
    for i in 0..(n + 4) {
        let c = if i % 2 == 0 { ca.clone() } else { cc.clone() };
        tasks.push(tokio::spawn(async move { c.request(Request::FetchPrekeys { username: u("bob") }).await.unwrap() }));
    }
    let mut seen = std::collections::HashSet::new();
    let mut seen_kem = std::collections::HashSet::new();
    let mut empty = 0;
    for t in tasks {
        let Response::PrekeyBundle(b) = t.await.unwrap() else { panic!("expected a bundle") };
        assert_eq!(b.signed_prekeys, b"signed");
        assert_eq!(b.identity_key, bob.key.verifying_key().to_bytes());
        match (b.one_time, b.one_time_kem) {
            (Some((id, _)), Some((kid, _))) => {
                assert!(seen.insert(id), "one-time key {id} handed out twice");
                assert!(seen_kem.insert(kid), "KEM key {kid} handed out twice");
            }
            (None, None) => empty += 1,
            other => panic!("unbalanced {other:?}"),
        }
    }
    assert_eq!(seen.len(), n as usize);
    assert_eq!(empty, 4);
    // Bob was told his prekeys run low.
    let p = tokio::time::timeout(Duration::from_secs(5), bob_push.recv()).await.unwrap().unwrap();
    assert!(matches!(p, Push::LowPrekeys { .. }));
    // Unknown user / no prekeys.
    assert_eq!(
        code(ca.request(Request::FetchPrekeys { username: u("nobody") }).await.unwrap()),
        ErrorCode::UnknownUser
    );
    assert_eq!(code(ca.request(Request::FetchPrekeys { username: u("carol") }).await.unwrap()), ErrorCode::NotFound);
    h.shutdown().await;
}

#[tokio::test]
async fn send_fetch_ack_push_views_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |_| {}).await;
    let alice = User::new("alice");
    let bob = User::new("bob");
    let ca = alice.register(&h).await;
    let mut cb = bob.register(&h).await;
    let mut pushes = cb.take_pushes().unwrap();

    let Response::Ack { id: id1 } =
        ca.request(Request::Send { to: u("bob"), max_views: None, payload: b"hello".to_vec() }).await.unwrap()
    else {
        panic!()
    };
    // Delivered inline to the connected recipient (still queued until acknowledged).
    let p = tokio::time::timeout(Duration::from_secs(5), pushes.recv()).await.unwrap().unwrap();
    let inline = Envelope { id: id1, from: u("alice"), max_views: None, views_left: None, payload: b"hello".to_vec() };
    assert_eq!(p, Push::Envelope(inline));

    let Response::Ack { id: id2 } =
        ca.request(Request::Send { to: u("bob"), max_views: Some(2), payload: b"twice".to_vec() }).await.unwrap()
    else {
        panic!()
    };
    // A limited-view envelope is only announced: each fetch of it is a view.
    let p = tokio::time::timeout(Duration::from_secs(5), pushes.recv()).await.unwrap().unwrap();
    assert_eq!(p, Push::NewEnvelope { id: id2, from: u("alice") });
    assert_eq!(
        code(ca.request(Request::Send { to: u("nobody"), max_views: None, payload: vec![1] }).await.unwrap()),
        ErrorCode::UnknownUser
    );

    let Response::Envelopes { envelopes, more } = cb.request(Request::Fetch).await.unwrap() else { panic!() };
    assert!(!more);
    assert_eq!(envelopes.len(), 2);
    assert_eq!(envelopes[0].payload, b"hello");
    assert_eq!(envelopes[0].from, u("alice"));
    assert_eq!(envelopes[1].views_left, Some(1));
    // Second fetch: last allowed view of the limited envelope.
    let Response::Envelopes { envelopes, .. } = cb.request(Request::Fetch).await.unwrap() else { panic!() };
    assert_eq!(envelopes[1].id, id2);
    assert_eq!(envelopes[1].views_left, Some(0));
    // Third fetch: the limited envelope is gone, the other remains until acked.
    let Response::Envelopes { envelopes, .. } = cb.request(Request::Fetch).await.unwrap() else { panic!() };
    assert_eq!(envelopes.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id1]);

    // Queue one more, then restart the server on the same data dir.
    let Response::Ack { id: id3 } =
        ca.request(Request::Send { to: u("bob"), max_views: None, payload: b"durable".to_vec() }).await.unwrap()
    else {
        panic!()
    };
    // Every batch with an envelope or a view flushed the mailbox log.
    let body = http_get(h.status_addr.unwrap(), "/metrics").await;
    let (syncs, commits) = (metric(&body, "pqc_mailbox_syncs_total"), metric(&body, "pqc_store_commits_total"));
    assert!((4..=commits).contains(&syncs), "{body}");
    drop((ca, cb));
    h.shutdown().await;
    let h = start(dir.path(), |_| {}).await;
    let cb = bob.login(&h).await;
    let Response::Envelopes { envelopes, .. } = cb.request(Request::Fetch).await.unwrap() else { panic!() };
    assert_eq!(envelopes.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id1, id3]);
    assert_eq!(
        cb.request(Request::AckEnvelopes { ids: vec![id1, id3] }).await.unwrap(),
        Response::Deleted { count: 2 }
    );
    let Response::Envelopes { envelopes, .. } = cb.request(Request::Fetch).await.unwrap() else { panic!() };
    assert!(envelopes.is_empty());

    // Status endpoint.
    let body = http_get(h.status_addr.unwrap(), "/metrics").await;
    assert!(body.contains("pqc_tls_group_total{group=\"X25519MLKEM768\"}"), "{body}");
    // Fetches without views and acknowledgements were committed without
    // a flush of the mailbox log.
    assert_eq!(metric(&body, "pqc_mailbox_syncs_total"), 0, "{body}");
    assert!(metric(&body, "pqc_store_commits_total") >= 3, "{body}");
    let body = http_get(h.status_addr.unwrap(), "/status").await;
    assert!(body.contains("\"connections_current\""), "{body}");
    h.shutdown().await;
}

/// The value of an unlabelled counter in Prometheus text.
fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing: {body}"))
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out
}

#[tokio::test]
async fn attachments_resume_download_ack_and_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.max_attachment = 1 << 20).await;
    let alice = User::new("alice");
    let bob = User::new("bob");
    let ca = alice.register(&h).await;
    let cb = bob.register(&h).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(
        code(ca.request(Request::AttachmentBegin { to: u("bob"), total_len: 2 << 20 }).await.unwrap()),
        ErrorCode::TooLarge
    );
    let id =
        created(ca.request(Request::AttachmentBegin { to: u("bob"), total_len: data.len() as u64 }).await.unwrap());
    // Upload the first 3 chunks, then "lose" the connection.
    for off in (0..30_000).step_by(10_000) {
        let r = ca
            .request(Request::AttachmentChunk { id, offset: off as u64, data: data[off..off + 10_000].to_vec() })
            .await
            .unwrap();
        assert!(matches!(r, Response::AttachmentStatus { received, .. } if received == off as u64 + 10_000));
    }
    // Only the sender may upload.
    assert_eq!(
        code(cb.request(Request::AttachmentChunk { id, offset: 30_000, data: vec![0; 10] }).await.unwrap()),
        ErrorCode::Forbidden
    );
    ca.close().await;
    // Resume after reconnect.
    let ca = alice.login(&h).await;
    let Response::AttachmentStatus { received, total_len, complete, .. } =
        ca.request(Request::AttachmentStatus { id }).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((received, total_len, complete), (30_000, data.len() as u64, false));
    // Wrong offset is refused with a hint.
    assert_eq!(
        code(ca.request(Request::AttachmentChunk { id, offset: 0, data: vec![1] }).await.unwrap()),
        ErrorCode::Invalid
    );
    let mut off = received as usize;
    while off < data.len() {
        let end = (off + 32_768).min(data.len());
        ca.request(Request::AttachmentChunk { id, offset: off as u64, data: data[off..end].to_vec() }).await.unwrap();
        off = end;
    }
    let r = ca.request(Request::AttachmentFinish { id }).await.unwrap();
    assert!(matches!(r, Response::AttachmentStatus { complete: true, .. }));
    // The sender may not download.
    assert_eq!(
        code(ca.request(Request::AttachmentGet { id, offset: 0, max_len: 1000 }).await.unwrap()),
        ErrorCode::Forbidden
    );
    // A third user may not either.
    let carol = User::new("carol");
    let cc = carol.register(&h).await;
    assert_eq!(
        code(cc.request(Request::AttachmentGet { id, offset: 0, max_len: 1000 }).await.unwrap()),
        ErrorCode::Forbidden
    );
    // Neither the sender nor a third user may delete a finished file.
    assert_eq!(code(ca.request(Request::AttachmentAck { id }).await.unwrap()), ErrorCode::Forbidden);
    assert_eq!(code(cc.request(Request::AttachmentAck { id }).await.unwrap()), ErrorCode::Forbidden);
    // The recipient downloads in pieces.
    let mut got = Vec::new();
    loop {
        let Response::AttachmentData { data: d, .. } =
            cb.request(Request::AttachmentGet { id, offset: got.len() as u64, max_len: 40_000 }).await.unwrap()
        else {
            panic!()
        };
        if d.is_empty() {
            break;
        }
        got.extend_from_slice(&d);
    }
    assert_eq!(got, data);
    assert_eq!(cb.request(Request::AttachmentAck { id }).await.unwrap(), Response::Deleted { count: 1 });
    assert_eq!(code(cb.request(Request::AttachmentStatus { id }).await.unwrap()), ErrorCode::NotFound);
    h.shutdown().await;
}

/// Room entries reach the other connected members inline, each member
/// getting them in the room's order even when several members send at once;
/// a member who joined sees from its own join on, one who left nothing more.
#[tokio::test]
async fn room_entries_are_pushed_inline_in_room_order() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.requests_per_second = 10_000).await;
    let users: Vec<User> = ["alice", "bob", "carol", "dave"].into_iter().map(User::new).collect();
    let (mut conns, mut pushes) = (Vec::new(), Vec::new());
    for u in &users {
        let mut c = u.register(&h).await;
        pushes.push(c.take_pushes().unwrap());
        conns.push(Arc::new(c));
    }
    let room = RoomId([8; 16]);
    let create = Request::RoomCreate { room_id: room, max_participants: 10, group_info: vec![1; 10] };
    assert_eq!(conns[0].request(create).await.unwrap(), Response::Ok);
    let join = Request::RoomJoin { room_id: room, epoch: 0, commit: vec![2; 10], group_info: vec![3; 10] };
    assert_eq!(conns[1].request(join).await.unwrap(), Response::RoomSent { seq: 1 });
    // alice gets bob's join commit inline.
    let p = tokio::time::timeout(Duration::from_secs(5), pushes[0].recv()).await.unwrap().unwrap();
    assert!(
        matches!(&p, Push::RoomEntry(m) if m.seq == 1 && m.kind == RoomMessageKind::Commit && m.sender == u("bob"))
    );
    let join = Request::RoomJoin { room_id: room, epoch: 1, commit: vec![2; 10], group_info: vec![3; 10] };
    assert_eq!(conns[2].request(join).await.unwrap(), Response::RoomSent { seq: 2 });
    // alice and bob send 50 each, concurrently.
    let mut tasks = Vec::new();
    for (i, c) in conns.iter().take(2).enumerate() {
        for k in 0..50u8 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::RoomSend {
                    room_id: room,
                    epoch: 2,
                    kind: RoomMessageKind::Application,
                    payload: vec![i as u8, k],
                    new_group_info: None,
                };
                c.request(req).await.unwrap()
            }));
        }
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Response::RoomSent { .. }));
    }
    // carol (who sent nothing) gets all 100 in strictly increasing order,
    // from after her join; the senders get each other's only.
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Push>| {
        let p = rx.try_recv().unwrap_or_else(|e| panic!("missing push: {e}"));
        match p {
            Push::RoomEntry(m) => m,
            other => panic!("{other:?}"),
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let carol: Vec<_> = (0..100).map(|_| next(&mut pushes[2])).collect();
    assert!(carol.windows(2).all(|w| w[1].seq == w[0].seq + 1), "out of order");
    assert_eq!(carol[0].seq, 3);
    let bob: Vec<_> = (0..51).map(|_| next(&mut pushes[1])).collect();
    assert_eq!(bob[0].seq, 2, "carol's join");
    assert!(bob[1..].iter().all(|m| m.sender == u("alice")) && bob.windows(2).all(|w| w[1].seq > w[0].seq));
    assert!(pushes[1].try_recv().is_err());
    // carol adds dave: the others get the commit; dave, whose Welcome holds
    // it, gets only what follows.
    let add =
        Request::RoomAdd { room_id: room, epoch: 2, member: u("dave"), commit: vec![4; 10], group_info: vec![5; 10] };
    let Response::RoomSent { seq } = conns[2].request(add).await.unwrap() else { panic!("add refused") };
    let hi = Request::RoomSend {
        room_id: room,
        epoch: 3,
        kind: RoomMessageKind::Application,
        payload: b"hi dave".to_vec(),
        new_group_info: None,
    };
    assert!(matches!(conns[0].request(hi).await.unwrap(), Response::RoomSent { .. }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = next(&mut pushes[1]);
    assert_eq!((m.seq, m.kind, m.sender), (seq, RoomMessageKind::Commit, u("carol")));
    let m = next(&mut pushes[3]);
    assert_eq!((m.seq, m.payload), (seq + 1, b"hi dave".to_vec()));
    assert!(pushes[3].try_recv().is_err());
    // An entry made on a stale view is refused, so senders need not sync
    // first: one from an old epoch, and a message while bob's leave waits
    // for its commit (bob could still read it).
    let send = |epoch, kind, payload: &[u8]| Request::RoomSend {
        room_id: room,
        epoch,
        kind,
        payload: payload.to_vec(),
        new_group_info: None,
    };
    let refused = conns[0].request(send(2, RoomMessageKind::Application, b"stale")).await.unwrap();
    assert_eq!(code(refused), ErrorCode::EpochConflict);
    let leave = send(3, RoomMessageKind::Proposal, b"bob leaves");
    assert!(matches!(conns[1].request(leave).await.unwrap(), Response::RoomSent { .. }));
    let refused = conns[0].request(send(3, RoomMessageKind::Application, b"not for bob")).await.unwrap();
    assert!(
        matches!(&refused, Response::Error { code: ErrorCode::EpochConflict, message } if message.contains("leave"))
    );
    h.shutdown().await;
}

#[tokio::test]
async fn room_files_are_for_the_members_at_upload_and_go_after_the_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |_| {}).await;
    let (alice, bob, carol, dave) = (User::new("alice"), User::new("bob"), User::new("carol"), User::new("dave"));
    let (ca, cb, cc, cd) =
        (alice.register(&h).await, bob.register(&h).await, carol.register(&h).await, dave.register(&h).await);
    let room = RoomId([5; 16]);
    let create = Request::RoomCreate { room_id: room, max_participants: 10, group_info: vec![1; 10] };
    assert_eq!(ca.request(create).await.unwrap(), Response::Ok);
    for (epoch, c) in [(0, &cb), (1, &cc)] {
        let join = Request::RoomJoin { room_id: room, epoch, commit: vec![2; 10], group_info: vec![3; 10] };
        assert!(matches!(c.request(join).await.unwrap(), Response::RoomSent { .. }));
    }
    // dave is no member: no room file from him.
    let begin = Request::RoomAttachmentBegin { room_id: room, total_len: 4 };
    assert_eq!(code(cd.request(begin.clone()).await.unwrap()), ErrorCode::Forbidden);
    let id = created(ca.request(begin).await.unwrap());
    ca.request(Request::AttachmentChunk { id, offset: 0, data: b"blob".to_vec() }).await.unwrap();
    assert!(matches!(ca.request(Request::AttachmentFinish { id }).await.unwrap(), Response::AttachmentStatus { .. }));
    // dave joins after the upload: he may not read it; bob and carol may.
    let join = Request::RoomJoin { room_id: room, epoch: 2, commit: vec![2; 10], group_info: vec![3; 10] };
    assert!(matches!(cd.request(join).await.unwrap(), Response::RoomSent { .. }));
    let get = Request::AttachmentGet { id, offset: 0, max_len: 100 };
    assert_eq!(code(cd.request(get.clone()).await.unwrap()), ErrorCode::Forbidden);
    for c in [&cb, &cc] {
        assert!(
            matches!(c.request(get.clone()).await.unwrap(), Response::AttachmentData { data, .. } if data == b"blob")
        );
    }
    assert_eq!(cb.request(Request::AttachmentAck { id }).await.unwrap(), Response::Deleted { count: 0 });
    assert_eq!(code(cb.request(get.clone()).await.unwrap()), ErrorCode::Forbidden, "bob is done with it");
    assert_eq!(cc.request(Request::AttachmentAck { id }).await.unwrap(), Response::Deleted { count: 1 });
    assert_eq!(code(cc.request(get).await.unwrap()), ErrorCode::NotFound);
    h.shutdown().await;
}

#[tokio::test]
async fn bad_frames_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.max_frame = 64 * 1024).await;
    let good = connect(&h).await;
    assert_eq!(good.request(Request::Ping).await.unwrap(), Response::Pong);

    // Garbage bytes (unknown version).
    let bad = connect(&h).await;
    bad.send_raw_frame_body(vec![0xFF, 0x00, 1, 2, 3]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), bad.quinn().closed()).await.unwrap();
    assert!(bad.request(Request::Ping).await.is_err());

    // Oversized frame: bypass the client-side check by writing a raw body.
    let big = connect(&h).await;
    let body = ClientFrame {
        id: RequestId(1),
        request: Request::Send { to: u("x"), max_views: None, payload: vec![0; 100 * 1024] },
    }
    .encode_body();
    big.send_raw_frame_body(body).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), big.quinn().closed()).await.unwrap();
    // And the client refuses to send it itself.
    let c = connect(&h).await;
    assert!(c.request(Request::Send { to: u("x"), max_views: None, payload: vec![0; 100 * 1024] }).await.is_err());

    // The first client is unaffected.
    assert_eq!(good.request(Request::Ping).await.unwrap(), Response::Pong);
    use std::sync::atomic::Ordering;
    assert_eq!(h.metrics.malformed_frames.load(Ordering::Relaxed), 1);
    assert_eq!(h.metrics.refused_too_large.load(Ordering::Relaxed), 1);
    h.shutdown().await;
}

/// A file request for 64 KiB or more costs 1/16 of a request against the
/// rate limit, but only when served: asking for attachments that do not
/// exist costs a whole request each, so it cannot be used to make the
/// relay look up ids sixteen times faster than any other request allows.
#[tokio::test]
async fn refused_file_requests_cost_a_whole_request() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.requests_per_second = 5).await;
    let c = User::new("alice").register(&h).await;
    // A full bucket holds 10 requests (two seconds' worth) and refills 5 a
    // second; 100 at 1/16 would be 6.25.
    let (mut not_found, mut limited) = (0, 0);
    let started = std::time::Instant::now();
    for i in 0..100u64 {
        let get = Request::AttachmentGet { id: AttachmentId(0x5eed_0000 + i), offset: 0, max_len: 512 * 1024 };
        match code(c.request(get).await.unwrap()) {
            ErrorCode::NotFound => not_found += 1,
            ErrorCode::RateLimited => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(limited > 0, "100 refused file requests in a row were all served ({not_found})");
    // Served: the bucket plus what refilled meanwhile, at a whole request each.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(not_found <= 10 + refilled + 1, "served {not_found}, refused {limited}, refilled {refilled}");
    h.shutdown().await;
}

#[tokio::test]
async fn rate_limit_and_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| {
        c.limits.requests_per_second = 5;
        c.limits.max_connections = 1;
    })
    .await;
    let c = connect(&h).await;
    assert!(pings_refused(&c, 30).await > 0);
    // Second connection is refused at the cap.
    let r = Connection::connect(h.addr, "localhost", ServerTrust::Pinned(h.fingerprint)).await;
    assert!(r.is_err());
    h.shutdown().await;
}

/// Messages a client sends without waiting for each Ack are committed
/// together and answered in the order they were sent, refusals in their
/// place; a request of another kind in between is answered after them; the
/// connected recipient gets them pushed in that order too.
#[tokio::test]
async fn pipelined_sends_are_answered_and_pushed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |_| {}).await;
    let ca = User::new("alice").register(&h).await;
    let mut cb = User::new("bob").register(&h).await;
    let mut bob_push = cb.take_pushes().unwrap();
    // More than a connection may have queued (8): the rest wait to be read.
    let mut pending = std::collections::VecDeque::new();
    for i in 0..24u8 {
        let request = match i {
            5 => Request::Send { to: u("bob"), max_views: Some(0), payload: vec![i] },
            11 => Request::Send { to: u("nobody"), max_views: None, payload: vec![i] },
            17 => Request::Send { to: u("bob"), max_views: Some(2), payload: vec![i] },
            20 => Request::Ping,
            _ => Request::Send { to: u("bob"), max_views: None, payload: vec![i] },
        };
        pending.push_back((i, ca.submit(request).await.unwrap()));
    }
    let mut acked = Vec::new();
    for (i, p) in pending {
        let r = p.response().await.unwrap();
        match i {
            5 => assert!(matches!(r, Response::Error { code: ErrorCode::Invalid, .. }), "{i}: {r:?}"),
            11 => assert!(matches!(r, Response::Error { code: ErrorCode::UnknownUser, .. }), "{i}: {r:?}"),
            20 => assert_eq!(r, Response::Pong),
            _ => match r {
                Response::Ack { id } => acked.push((i, id)),
                other => panic!("{i}: {other:?}"),
            },
        }
    }
    assert_eq!(acked.len(), 21);
    assert!(acked.windows(2).all(|w| w[0].1 < w[1].1), "ids follow the order of sending: {acked:?}");
    for (i, id) in acked {
        match tokio::time::timeout(Duration::from_secs(5), bob_push.recv()).await.unwrap().unwrap() {
            Push::Envelope(e) => assert_eq!((e.id, e.payload), (id, vec![i])),
            Push::NewEnvelope { id: announced, .. } => assert_eq!((i, announced), (17, id)),
            other => panic!("{i}: {other:?}"),
        }
    }
    assert!(bob_push.try_recv().is_err());
    h.shutdown().await;
}

/// A file of hundreds of chunks goes through at the default request rate
/// (large chunks count as 1/16 of a request), pipelined, answered in
/// order; small requests stay limited.
#[tokio::test]
async fn a_large_file_goes_through_at_the_default_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |_| {}).await;
    let alice = User::new("alice");
    let bob = User::new("bob");
    let ca = alice.register(&h).await;
    let cb = bob.register(&h).await;
    const CHUNK: usize = 64 << 10;
    const CHUNKS: usize = 400;
    let total = (CHUNK * CHUNKS) as u64;
    let id = created(ca.request(Request::AttachmentBegin { to: u("bob"), total_len: total }).await.unwrap());
    let mut inflight = std::collections::VecDeque::new();
    for i in 0..CHUNKS {
        let offset = (i * CHUNK) as u64;
        let data = vec![(i % 251) as u8; CHUNK];
        inflight.push_back((offset, ca.submit(Request::AttachmentChunk { id, offset, data }).await.unwrap()));
        if inflight.len() == 8 || i + 1 == CHUNKS {
            while let Some((offset, p)) = inflight.pop_front() {
                let r = p.response().await.unwrap();
                assert!(
                    matches!(r, Response::AttachmentStatus { received, .. } if received == offset + CHUNK as u64),
                    "chunk at {offset}: {r:?}"
                );
            }
        }
    }
    let r = ca.request(Request::AttachmentFinish { id }).await.unwrap();
    assert!(matches!(r, Response::AttachmentStatus { complete: true, .. }), "{r:?}");
    // Downloaded the same way, pipelined, in order.
    let mut pending = std::collections::VecDeque::new();
    for i in 0..CHUNKS {
        let offset = (i * CHUNK) as u64;
        pending.push_back(cb.submit(Request::AttachmentGet { id, offset, max_len: CHUNK as u32 }).await.unwrap());
        if pending.len() == 8 || i + 1 == CHUNKS {
            let first = i + 1 - pending.len();
            for (k, p) in pending.drain(..).enumerate() {
                match p.response().await.unwrap() {
                    Response::AttachmentData { data, .. } => assert_eq!(data, vec![((first + k) % 251) as u8; CHUNK]),
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    // Small requests are still limited to about 100/s (bursts of 200).
    assert!(pings_refused(&ca, 400).await > 0);
    h.shutdown().await;
}

#[tokio::test]
async fn abandoned_uploads_are_bounded_per_sender_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.max_unfinished_uploads = 2).await;
    let alice = User::new("alice");
    let bob = User::new("bob");
    let ca = alice.register(&h).await;
    bob.register(&h).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = created(ca.request(Request::AttachmentBegin { to: u("bob"), total_len: 10 }).await.unwrap());
        let r = ca.request(Request::AttachmentChunk { id, offset: 0, data: b"12345".to_vec() }).await.unwrap();
        assert!(matches!(r, Response::AttachmentStatus { received: 5, .. }), "{r:?}");
        ids.push(id);
    }
    // The third upload took the place of the oldest.
    assert_eq!(code(ca.request(Request::AttachmentStatus { id: ids[0] }).await.unwrap()), ErrorCode::NotFound);
    for id in &ids[1..] {
        let r = ca.request(Request::AttachmentStatus { id: *id }).await.unwrap();
        assert!(matches!(r, Response::AttachmentStatus { received: 5, complete: false, .. }), "{r:?}");
    }
    // Its sender may delete an unfinished upload (its recipient and others may not).
    let id = created(ca.request(Request::AttachmentBegin { to: u("bob"), total_len: 10 }).await.unwrap());
    let cb = bob.login(&h).await;
    let carol = User::new("carol");
    let cc = carol.register(&h).await;
    assert_eq!(code(cc.request(Request::AttachmentAck { id }).await.unwrap()), ErrorCode::Forbidden);
    assert_eq!(ca.request(Request::AttachmentAck { id }).await.unwrap(), Response::Deleted { count: 1 });
    assert_eq!(code(ca.request(Request::AttachmentStatus { id }).await.unwrap()), ErrorCode::NotFound);
    assert_eq!(code(cb.request(Request::AttachmentAck { id }).await.unwrap()), ErrorCode::NotFound);
    ca.close().await;
    h.shutdown().await;

    // Restarted with a zero-hour window: the unfinished uploads are now
    // older than it and go at start.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let h = start(dir.path(), |c| c.limits.unfinished_upload_hours = 0).await;
    let ca = alice.login(&h).await;
    let mut gone = false;
    for _ in 0..50 {
        gone = code(ca.request(Request::AttachmentStatus { id: ids[2] }).await.unwrap()) == ErrorCode::NotFound;
        if gone {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "an expired upload is still there");
    h.shutdown().await;
}

/// One sender's files waiting on the relay are capped in bytes, finished
/// or not; once the recipient took one (and acknowledged it), the room it
/// held is free again.
#[tokio::test]
async fn a_senders_waiting_files_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.max_attachment_bytes_per_sender = 3 << 20).await;
    let alice = User::new("alice");
    let bob = User::new("bob");
    let ca = alice.register(&h).await;
    let cb = bob.register(&h).await;
    let first = created(ca.request(Request::AttachmentBegin { to: u("bob"), total_len: 2 << 20 }).await.unwrap());
    let r = ca.request(Request::AttachmentBegin { to: u("bob"), total_len: 2 << 20 }).await.unwrap();
    let Response::Error { code: ErrorCode::TooLarge, message } = r else { panic!("{r:?}") };
    assert!(message.contains("take 2 MiB") && message.contains("at most 3 MiB"), "{message}");
    // Another sender is not affected.
    let carol = User::new("carol");
    let cc = carol.register(&h).await;
    created(cc.request(Request::AttachmentBegin { to: u("bob"), total_len: 2 << 20 }).await.unwrap());
    // alice's first file, uploaded, then taken by bob: gone, and she may send again.
    let chunk = vec![1u8; 512 << 10];
    for i in 0..4u64 {
        let r = ca.request(Request::AttachmentChunk { id: first, offset: i * (512 << 10), data: chunk.clone() }).await;
        assert!(matches!(r.unwrap(), Response::AttachmentStatus { .. }));
    }
    assert_eq!(cb.request(Request::AttachmentAck { id: first }).await.unwrap(), Response::Deleted { count: 1 });
    created(ca.request(Request::AttachmentBegin { to: u("bob"), total_len: 2 << 20 }).await.unwrap());
    h.shutdown().await;
}

/// An account is logged in on at most `max_connections_per_user`
/// connections: one more login is refused with a clear error, and works
/// again once one of them closed.
#[tokio::test]
async fn an_account_has_at_most_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.max_connections_per_user = 2).await;
    let alice = User::new("alice");
    let c1 = alice.register(&h).await;
    let c2 = alice.login(&h).await;
    let c3 = connect(&h).await;
    let r = c3.request(alice.login_req(&c3)).await.unwrap();
    let Response::Error { code: ErrorCode::Forbidden, message } = r else { panic!("{r:?}") };
    assert!(message.contains("logged in on 2 connections"), "{message}");
    c1.close().await;
    let mut ok = false;
    for _ in 0..50 {
        let c = connect(&h).await;
        if c.request(alice.login_req(&c)).await.unwrap() == Response::Ok {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a login after one connection closed");
    drop((c2, c3));
    h.shutdown().await;
}

#[tokio::test]
async fn a_data_folder_in_use_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |_| {}).await;
    let cfg = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let Err(err) = Server::start(cfg, "127.0.0.1:0".parse().unwrap(), None).await else {
        panic!("a second server started on a data folder in use")
    };
    let err = err.to_string();
    assert!(err.contains("in use by another pqc-server"), "{err}");
    // The first one still serves.
    let c = User::new("alice").register(&h).await;
    assert_eq!(c.request(Request::Ping).await.unwrap(), Response::Pong);
    h.shutdown().await;
    // Once it has stopped, the folder is free.
    let h = start(dir.path(), |_| {}).await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_port_in_use_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |_| {}).await;
    let other = tempfile::tempdir().unwrap();
    let cfg = Config { data_dir: other.path().to_path_buf(), ..Config::default() };
    let err = Server::start(cfg.clone(), h.addr, None).await.unwrap_err().to_string();
    assert!(err.contains(&format!("cannot listen on {} (QUIC, UDP)", h.addr)), "{err}");
    assert!(err.contains("another pqc-server"), "{err}");
    let status = h.status_addr.unwrap();
    let err = Server::start(cfg, "127.0.0.1:0".parse().unwrap(), Some(status)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("cannot listen on {status} (status and metrics, TCP)")), "{err}");
    h.shutdown().await;
}

/// New accounts per source address and hour: the quota's worth, then a
/// clear refusal on any connection from that address; a registration that
/// fails (a name taken) does not use it up; logging in is not limited.
#[tokio::test]
async fn registrations_per_address_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(dir.path(), |c| c.limits.registrations_per_hour = 3).await;
    let alice = User::new("alice");
    let _ca = alice.register(&h).await;
    let _cb = User::new("bob").register(&h).await;
    // The name is taken: refused, and the quota is given back.
    let again = User::new("alice");
    let c = connect(&h).await;
    assert_eq!(code(c.request(again.register_req(&c)).await.unwrap()), ErrorCode::UsernameTaken);
    let _cc = User::new("carol").register(&h).await;
    // The fourth from 127.0.0.1 within the hour is refused, on a new connection too.
    for _ in 0..2 {
        let dave = User::new("dave");
        let c = connect(&h).await;
        match c.request(dave.register_req(&c)).await.unwrap() {
            Response::Error { code: ErrorCode::RateLimited, message } => {
                assert!(message.contains("too many new accounts from your network address"), "{message}");
                assert!(message.contains("at most 3"), "{message}");
                assert!(message.contains("try again in 20 minutes"), "{message}");
            }
            other => panic!("expected the registration quota's refusal, got {other:?}"),
        }
    }
    // Existing accounts log in as before.
    let _again = alice.login(&h).await;
    let body = http_get(h.status_addr.unwrap(), "/metrics").await;
    assert_eq!(metric(&body, "pqc_refused_registration_quota_total"), 2);
    assert_eq!(metric(&body, "pqc_registrations_total"), 3);
    h.shutdown().await;
}
