//! `FrameReader` over real QUIC on 127.0.0.1: frames packed together and
//! split apart, the end of the stream, limits, the frame timeout, and
//! cancellation between pieces; and `Outbox`, the writing side: frames from
//! many callers whole and in order under flow control, callers dropped
//! while they wait, a stopped stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pqc_net::*;

/// A connected stream pair: the server's send side, the client's receive
/// side (and the client's connection and endpoint, to keep them open). The
/// server's task keeps its side open until the test's runtime ends.
async fn pair() -> (quinn::SendStream, quinn::RecvStream, quinn::Connection, quinn::Endpoint) {
    let ss = generate_self_signed(&["localhost".into()]).unwrap();
    let tls = ServerTls::from_pem(&ss.cert_pem, &ss.key_pem).unwrap();
    let server = tls.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let inc = server.accept().await.unwrap();
        let (cfg, _) = tls.connection_config().unwrap();
        let conn = inc.accept_with(cfg).unwrap().await.unwrap();
        let (send, _recv) = conn.open_bi().await.unwrap();
        tx.send(send).ok();
        std::future::pending::<()>().await;
        drop((conn, server));
    });
    let mut client = client_endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    let (cfg, _) = client_config(&ServerTrust::FirstUse).unwrap();
    client.set_default_client_config(cfg);
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    let mut send = rx.await.unwrap();
    // The stream exists for the peer once something is written on it: an
    // empty frame.
    send.write_all(&0u32.to_be_bytes()).await.unwrap();
    let (_, mut recv) = conn.accept_bi().await.unwrap();
    let mut r = FrameReader::new(1 << 20, None);
    assert_eq!(r.next(&mut recv).await.unwrap(), Some(Vec::new()));
    (send, recv, conn, client)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test]
async fn frames_packed_together_and_split_apart_come_out_whole() {
    let (mut send, mut recv, _c, _e) = pair().await;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn(async move {
        // Three frames in one write.
        let mut packed = framed(b"one");
        packed.extend(framed(b""));
        packed.extend(framed(b"three"));
        send.write_all(&packed).await.unwrap();
        // A large frame in uneven pieces, the prefix itself split, with pauses.
        let f = framed(&(0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        for piece in [&f[..2], &f[2..7], &f[7..70_000], &f[70_000..]] {
            send.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        send.write_all(&framed(b"last")).await.unwrap();
        send.finish().unwrap();
        send
    });
    let mut r = FrameReader::new(1 << 20, Some(Duration::from_secs(5)));
    assert_eq!(r.next(&mut recv).await.unwrap().unwrap(), b"one");
    assert_eq!(r.next(&mut recv).await.unwrap().unwrap(), b"");
    assert_eq!(r.next(&mut recv).await.unwrap().unwrap(), b"three");
    assert_eq!(r.next(&mut recv).await.unwrap().unwrap(), big);
    assert_eq!(r.next(&mut recv).await.unwrap().unwrap(), b"last");
    assert_eq!(r.next(&mut recv).await.unwrap(), None, "finished between frames");
    let _send = writer.await.unwrap();
}

#[tokio::test]
async fn a_frame_cut_short_or_too_large_is_an_error() {
    let (mut send, mut recv, _c, _e) = pair().await;
    let mut f = framed(b"0123456789");
    f.truncate(9);
    send.write_all(&f).await.unwrap();
    send.finish().unwrap();
    let mut r = FrameReader::new(1 << 20, None);
    let e = r.next(&mut recv).await.unwrap_err();
    assert!(matches!(e, NetError::Wire(pqc_wire::WireError::Truncated { needed: 5 })), "{e:?}");

    let (mut send, mut recv, _c, _e) = pair().await;
    send.write_all(&framed(&[7; 101])).await.unwrap();
    let mut r = FrameReader::new(100, None);
    let e = r.next(&mut recv).await.unwrap_err();
    assert!(matches!(e, NetError::Wire(pqc_wire::WireError::TooLarge { len: 101, max: 100 })), "{e:?}");
}

#[tokio::test]
async fn a_body_slower_than_the_timeout_fails_but_an_idle_stream_does_not() {
    let (mut send, mut recv, _c, _e) = pair().await;
    let mut r = FrameReader::new(1 << 20, Some(Duration::from_millis(200)));
    // Nothing sent: waiting between frames has no deadline.
    assert!(tokio::time::timeout(Duration::from_millis(400), r.next(&mut recv)).await.is_err());
    send.write_all(&framed(b"hello")[..6]).await.unwrap();
    let started = std::time::Instant::now();
    let e = r.next(&mut recv).await.unwrap_err();
    assert!(matches!(e, NetError::Timeout), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Dropping `next` between pieces (as a `select!` does when another branch
/// wins) loses nothing of the frame.
#[tokio::test]
async fn next_is_cancel_safe() {
    let (mut send, mut recv, _c, _e) = pair().await;
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
    let f = framed(&body);
    let pieces: Vec<Vec<u8>> = f.chunks(997).map(<[u8]>::to_vec).collect();
    let writer = tokio::spawn(async move {
        for p in pieces {
            send.write_all(&p).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        send.write_all(&framed(b"after")).await.unwrap();
        send
    });
    let mut r = FrameReader::new(1 << 20, Some(Duration::from_secs(5)));
    let mut cancelled = 0;
    let got = loop {
        tokio::select! {
            f = r.next(&mut recv) => break f.unwrap().unwrap(),
            () = tokio::time::sleep(Duration::from_micros(300)) => cancelled += 1,
        }
    };
    assert!(cancelled > 0, "the read was never interrupted");
    assert_eq!(got, body);
    assert_eq!(r.next(&mut recv).await.unwrap().unwrap(), b"after");
    let _send = writer.await.unwrap();
}

/// `task u32 || seq u32 || pattern` of `len` bytes (at least 8).
fn numbered(task: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut b = task.to_be_bytes().to_vec();
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend((8..len.max(8)).map(|i| (i as u32 ^ task ^ seq) as u8));
    b
}

fn check_numbered(body: &[u8]) -> (u32, u32) {
    let task = u32::from_be_bytes(body[..4].try_into().unwrap());
    let seq = u32::from_be_bytes(body[4..8].try_into().unwrap());
    assert_eq!(body, numbered(task, seq, body.len()), "frame {task}/{seq} damaged");
    (task, seq)
}

/// Eight callers at once, frames from 1 byte to 600 KB, the reader late (so
/// quinn's flow control blocks and the queue passes `OUTBOX_LIMIT`): every
/// frame arrives whole, each caller's in its order.
#[tokio::test]
async fn an_outbox_keeps_many_callers_frames_whole_and_in_order() {
    let (send, mut recv, _c, _e) = pair().await;
    let (out, _flusher) = Outbox::start(send);
    let sizes = [8usize, 300, 600_000, 1, 70_000, 1_200, 250_000];
    let mut callers = Vec::new();
    for task in 0..8u32 {
        let out = out.clone();
        callers.push(tokio::spawn(async move {
            for seq in 0..20u32 {
                let len = sizes[(task + seq) as usize % sizes.len()].max(8);
                out.send(framed(&numbered(task, seq, len))).await.unwrap();
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut r = FrameReader::new(1 << 20, Some(Duration::from_secs(10)));
    let mut next = [0u32; 8];
    for _ in 0..160 {
        let (task, seq) = check_numbered(&r.next(&mut recv).await.unwrap().unwrap());
        assert_eq!(seq, next[task as usize], "caller {task}'s frames out of order");
        next[task as usize] += 1;
    }
    for c in callers {
        c.await.unwrap();
    }
}

/// A caller dropped while it waits for room (as a timeout or a `select!`
/// drops it) has already handed its whole frame over: the stream never
/// carries half a frame, and every frame goes out.
#[tokio::test]
async fn an_outbox_caller_dropped_while_waiting_leaves_no_half_frame() {
    let (send, mut recv, _c, _e) = pair().await;
    let (out, _flusher) = Outbox::start(send);
    let mut dropped = 0;
    for seq in 0..30u32 {
        let f = framed(&numbered(0, seq, 500_000));
        if tokio::time::timeout(Duration::from_millis(1), out.send(f)).await.is_err() {
            dropped += 1;
        }
    }
    assert!(dropped > 0, "no send ever waited: the test did not test cancellation");
    let mut r = FrameReader::new(1 << 20, Some(Duration::from_secs(10)));
    for seq in 0..30u32 {
        assert_eq!(check_numbered(&r.next(&mut recv).await.unwrap().unwrap()), (0, seq));
    }
}

/// Once the peer stops reading the stream, sends fail (`Closed`) instead of
/// queueing for ever.
#[tokio::test]
async fn an_outbox_on_a_stopped_stream_refuses() {
    let (send, mut recv, _c, _e) = pair().await;
    let (out, flushing) = Outbox::start(send);
    recv.stop(0u32.into()).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = out.send(framed(&[1; 1000])).await {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("sends on a stopped stream kept succeeding");
    assert!(matches!(refused, NetError::Closed), "{refused:?}");
    tokio::time::timeout(Duration::from_secs(5), flushing).await.unwrap().unwrap();
}

/// Replays the `net_frame_reader` fuzz corpus (`fuzz/corpus/net_frame_reader/`)
/// through [`pqc_net::framed::fuzz_frame_reader`], the entry point the fuzz
/// target calls, plus truncations and bit flips of each file: the reader
/// must agree with a plain parse on every one.
#[test]
fn replay_net_frame_reader_corpus() {
    use pqc_net::framed::fuzz_frame_reader;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/net_frame_reader");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let frames = fuzz_frame_reader(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if path.file_name().is_some_and(|f| f == "frames") {
            assert_eq!(frames, 4);
        }
        for cut in 0..data.len().min(600) {
            fuzz_frame_reader(&data[..cut]).unwrap_or_else(|e| panic!("{} cut at {cut}: {e}", path.display()));
        }
        for pos in 0..data.len().min(600) {
            let mut d = data.clone();
            d[pos] ^= 0x80;
            fuzz_frame_reader(&d).unwrap_or_else(|e| panic!("{} flipped at {pos}: {e}", path.display()));
        }
        n += 1;
    }
    assert!(n >= 6, "corpus files in {}: {n}", dir.display());
}
