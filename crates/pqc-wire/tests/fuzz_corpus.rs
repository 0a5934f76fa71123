//! Replays the fuzz corpus (`fuzz/corpus/wire_frame/`) through the same
//! entry point as the fuzz target, plus round-trip tests of every frame.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pqc_wire::*;

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/wire_frame")
}

#[test]
fn replay_corpus() {
    let dir = corpus_dir();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.unwrap().path();
        if path.is_file() {
            let data = std::fs::read(&path).unwrap();
            assert!(fuzz_decode(&data), "round-trip mismatch on {}", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "empty corpus at {}", dir.display());
}

pub fn sample_frames() -> (Vec<ClientFrame>, Vec<ServerFrame>) {
    let alice = Username::new("alice").unwrap();
    let reqs = vec![
        Request::Register { username: alice.clone(), identity_key: vec![1, 2, 3], signature: vec![4; 10] },
        Request::Login { username: alice.clone(), signature: vec![9; 5] },
        Request::UploadPrekeys {
            signed_prekeys: vec![7; 20],
            one_time: vec![(PreKeyId(1), vec![1; 32]), (PreKeyId(2), vec![2; 32])],
            one_time_kem: vec![(PreKeyId(3), vec![3; 40])],
        },
        Request::FetchPrekeys { username: alice.clone() },
        Request::GetIdentity { username: alice.clone() },
        Request::Send { to: alice.clone(), max_views: Some(2), payload: b"ct".to_vec() },
        Request::Send { to: alice.clone(), max_views: None, payload: vec![] },
        Request::Fetch,
        Request::AckEnvelopes { ids: vec![EnvelopeId(1), EnvelopeId(u64::MAX)] },
        Request::AttachmentBegin { to: alice.clone(), total_len: 1 << 33 },
        Request::AttachmentChunk { id: AttachmentId(5), offset: 10, data: vec![0; 100] },
        Request::AttachmentStatus { id: AttachmentId(5) },
        Request::AttachmentFinish { id: AttachmentId(5) },
        Request::AttachmentGet { id: AttachmentId(5), offset: 3, max_len: 65536 },
        Request::AttachmentAck { id: AttachmentId(5) },
        Request::Ping,
        Request::RoomCreate { room_id: RoomId([1; 16]), max_participants: 3, group_info: vec![7; 40] },
        Request::RoomJoin { room_id: RoomId([1; 16]), epoch: 2, commit: vec![8; 30], group_info: vec![9; 20] },
        Request::RoomGetInfo { room_id: RoomId([1; 16]) },
        Request::RoomAttachmentBegin { room_id: RoomId([3; 16]), total_len: 1 << 20 },
        Request::RoomSend {
            room_id: RoomId([1; 16]),
            epoch: 3,
            kind: RoomMessageKind::Commit,
            payload: vec![4; 12],
            new_group_info: Some(vec![5; 6]),
        },
        Request::RoomSend {
            room_id: RoomId([2; 16]),
            epoch: 0,
            kind: RoomMessageKind::Application,
            payload: vec![],
            new_group_info: None,
        },
        Request::RoomLeave { room_id: RoomId([1; 16]) },
        Request::RoomFetch { room_id: None },
        Request::RoomFetch { room_id: Some(RoomId([3; 16])) },
        Request::RoomAck { room_id: RoomId([1; 16]), seq: 42 },
        Request::UploadKeyPackages { packages: vec![vec![1; 30], vec![]] },
        Request::FetchKeyPackage { username: alice.clone() },
        Request::RoomAdd {
            room_id: RoomId([4; 16]),
            epoch: 5,
            member: Username::new("bob").unwrap(),
            commit: vec![6; 25],
            group_info: vec![7; 9],
        },
    ];
    let client =
        reqs.into_iter().enumerate().map(|(i, r)| ClientFrame { id: RequestId(i as u32), request: r }).collect();
    let env = Envelope {
        id: EnvelopeId(9),
        from: alice.clone(),
        max_views: Some(1),
        views_left: Some(0),
        payload: vec![5; 9],
    };
    let resps = vec![
        Response::Ok,
        Response::error(ErrorCode::UsernameTaken, "username already taken"),
        Response::error(ErrorCode::Other(999), "é"),
        Response::PrekeyBundle(PrekeyBundle {
            identity_key: vec![1; 8],
            signed_prekeys: vec![2; 8],
            one_time: Some((PreKeyId(4), vec![3; 4])),
            one_time_kem: None,
        }),
        Response::Identity { identity_key: vec![1; 3], signed_prekeys: vec![2; 5] },
        Response::Ack { id: EnvelopeId(77) },
        Response::Envelopes { envelopes: vec![env.clone(), env], more: true },
        Response::Deleted { count: 2 },
        Response::AttachmentCreated { id: AttachmentId(1) },
        Response::AttachmentStatus { id: AttachmentId(1), received: 5, total_len: 10, complete: false },
        Response::AttachmentData { id: AttachmentId(1), offset: 5, total_len: 10, data: vec![1; 5] },
        Response::Pong,
        Response::error(ErrorCode::RoomFull, "room is full (3 of 3 participants)"),
        Response::error(ErrorCode::EpochConflict, "sync and retry"),
        Response::RoomInfo { group_info: vec![1; 30], epoch: 7 },
        Response::RoomSent { seq: 11 },
        Response::RoomMessages {
            messages: vec![
                RoomMessage {
                    room_id: RoomId([1; 16]),
                    seq: 1,
                    sender: alice.clone(),
                    kind: RoomMessageKind::Proposal,
                    payload: vec![2; 5],
                },
                RoomMessage {
                    room_id: RoomId([1; 16]),
                    seq: 2,
                    sender: Username::new("b").unwrap(),
                    kind: RoomMessageKind::Application,
                    payload: vec![],
                },
            ],
            more: false,
        },
        Response::KeyPackage { package: vec![8; 33] },
    ];
    let mut server: Vec<ServerFrame> = resps
        .into_iter()
        .enumerate()
        .map(|(i, r)| ServerFrame::Response { id: RequestId(i as u32), response: r })
        .collect();
    server.push(ServerFrame::Hello { version: 1, challenge: [7; 32], max_frame: 1 << 20 });
    server.push(ServerFrame::Push(Push::NewEnvelope { id: EnvelopeId(3), from: alice }));
    server.push(ServerFrame::Push(Push::LowPrekeys { remaining: 2, remaining_kem: 0 }));
    server.push(ServerFrame::Push(Push::RoomMessage { room_id: RoomId([6; 16]) }));
    server.push(ServerFrame::Push(Push::LowKeyPackages { remaining: 1 }));
    server.push(ServerFrame::Push(Push::Envelope(Envelope {
        id: EnvelopeId(12),
        from: Username::new("carol").unwrap(),
        max_views: None,
        views_left: None,
        payload: vec![3; 40],
    })));
    server.push(ServerFrame::Push(Push::RoomEntry(RoomMessage {
        room_id: RoomId([2; 16]),
        seq: 9,
        sender: Username::new("dave").unwrap(),
        kind: RoomMessageKind::Application,
        payload: vec![4; 30],
    })));
    (client, server)
}

#[test]
fn round_trip_all_frames() {
    let (client, server) = sample_frames();
    for f in client {
        let body = f.encode_body();
        assert_eq!(ClientFrame::decode(&body).unwrap(), f);
        assert_eq!(f.encode(), encode_frame(&body), "the frame is its length prefix and the body");
        assert!(ServerFrame::decode(&body).is_err());
        // Every strict prefix fails cleanly; one trailing byte is rejected.
        for cut in 0..body.len() {
            assert!(ClientFrame::decode(&body[..cut]).is_err());
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(ClientFrame::decode(&long), Err(WireError::TrailingBytes(1)));
    }
    for f in server {
        let body = f.encode_body();
        assert_eq!(ServerFrame::decode(&body).unwrap(), f);
        assert_eq!(f.encode(), encode_frame(&body), "the frame is its length prefix and the body");
        if let ServerFrame::Push(p) = &f {
            assert_eq!(p.encode_frame(), f.encode(), "a push encodes alike either way");
        }
        for cut in 0..body.len() {
            assert!(ServerFrame::decode(&body[..cut]).is_err());
        }
        let mut long = body.clone();
        long.push(0);
        assert_eq!(ServerFrame::decode(&long), Err(WireError::TrailingBytes(1)));
    }
}

#[test]
fn clear_errors() {
    assert_eq!(ClientFrame::decode(&[2, 0x0F, 0, 0, 0, 1]), Err(WireError::UnknownVersion(2)));
    assert_eq!(ClientFrame::decode(&[1, 0x3F, 0, 0, 0, 1]), Err(WireError::UnknownType(0x3F)));
    assert_eq!(ClientFrame::decode(&[]), Err(WireError::Empty));
    let e = ClientFrame::decode(&[9, 1]).unwrap_err().to_string();
    assert!(e.contains("unsupported protocol version 9"), "{e}");
    // Invalid username inside a frame.
    let mut body = vec![1, 0x04, 0, 0, 0, 1, 5];
    body.extend_from_slice(b"ALICE");
    assert!(matches!(ClientFrame::decode(&body), Err(WireError::InvalidUsername(_))));
    // A huge list count does not allocate.
    let body = [1, 0x08, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF];
    assert!(matches!(ClientFrame::decode(&body), Err(WireError::Truncated { .. })));
}

#[test]
fn framing() {
    let f = ClientFrame { id: RequestId(1), request: Request::Ping };
    let bytes = f.encode();
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for b in &bytes[..bytes.len() - 1] {
        dec.push(std::slice::from_ref(b));
        assert_eq!(dec.next_body().unwrap(), None);
    }
    dec.push(&bytes[bytes.len() - 1..]);
    assert_eq!(ClientFrame::decode(&dec.next_body().unwrap().unwrap()).unwrap(), f);
    let too_big = (DEFAULT_MAX_FRAME as u32 + 1).to_be_bytes();
    assert!(matches!(split_frame(&too_big, DEFAULT_MAX_FRAME), Err(WireError::TooLarge { .. })));
}

/// Regenerates the seed corpus: `PQC_WRITE_CORPUS=1 cargo test -p pqc-wire write_seed_corpus`.
#[test]
fn write_seed_corpus() {
    if std::env::var_os("PQC_WRITE_CORPUS").is_none() {
        return;
    }
    let (client, server) = sample_frames();
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (i, f) in client.iter().enumerate() {
        std::fs::write(dir.join(format!("client_{i:02}")), f.encode()).unwrap();
    }
    for (i, f) in server.iter().enumerate() {
        std::fs::write(dir.join(format!("server_{i:02}")), f.encode()).unwrap();
    }
    std::fs::write(dir.join("garbage"), b"\x00\x00\x00\x05\x02\xff\x00\x00").unwrap();
}
