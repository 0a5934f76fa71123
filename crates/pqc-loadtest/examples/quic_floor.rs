//! The transport's floor: the message and room benchmarks' traffic through a
//! relay that does nothing but forward, over the same QUIC/TLS set-up as
//! pqc-server (pqc-net's server endpoint and client config: TLS 1.3,
//! aws-lc-rs, X25519MLKEM768, the same transport parameters and ACK
//! frequency), with no storage, no accounts, no request parsing beyond a
//! type byte. What pqc-server spends above this is ours; what this spends
//! is what any relay with one QUIC connection per client pays here.
//!
//! The pattern is MQTT QoS 1's, the one `mqtt_bench` drives mosquitto with:
//! a client publishes to a partner, the relay forwards the message and
//! acknowledges it to the publisher at once (no disk), and the receiver
//! acknowledges it to the relay, which drops the acknowledgement.
//!
//! ```text
//! quic_floor serve                      # prints "LISTEN 127.0.0.1:PORT", forwards until killed
//! quic_floor relay  --port PORT --server-pid PID [--clients 100 --messages 200 --payload 256 --window 1]
//! quic_floor fanout --port PORT --server-pid PID [--clients 100 --senders 10 --messages 100 --payload 402]
//! ```
//!
//! `relay`: clients in pairs, each publishes `--messages` to its partner
//! with at most `--window` unacknowledged; server CPU per delivered message.
//! `fanout`: a room of `--clients`; `--senders` of them publish to all the
//! others, one message at a time (the next once the relay acknowledged the
//! last); receivers do not acknowledge (the room client acknowledges a
//! batch at most every 50 ms); server CPU per message to all.
//!
//! Prints `RESULT mode=quic-floor-relay|quic-floor-fanout …` like `pqc-loadtest`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pqc_loadtest::Latencies;
use pqc_loadtest::rss::cpu_time;
use pqc_net::ServerTrust;
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Frame types (first body byte); frames are `u32 BE length || body`.
const HELLO: u8 = 1; // client → relay: u32 index; relay → client: empty (registered)
const PUBLISH: u8 = 2; // client → relay: u32 to (EVERYONE: all others), u32 id, payload
const PUBACK: u8 = 3; // relay → publisher: u32 id
const DELIVER: u8 = 4; // relay → receiver: u32 from, u32 id, payload
const ACK: u8 = 5; // receiver → relay: u32 from, u32 id (dropped)
const EVERYONE: u32 = u32::MAX;
const MAX_FRAME: usize = 64 * 1024;
/// Pushes queued for one connection go out in one write up to this size, as
/// pqc-server coalesces them.
const COALESCE: usize = 64 * 1024;

fn frame(kind: u8, fields: &[u32], payload: &[u8]) -> Vec<u8> {
    let body_len = 1 + 4 * fields.len() + payload.len();
    let mut f = Vec::with_capacity(4 + body_len);
    f.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_be_bytes());
    f.push(kind);
    for v in fields {
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(payload);
    f
}

fn field(body: &[u8], i: usize) -> Result<u32, BoxError> {
    let at = 1 + 4 * i;
    let b = body.get(at..at + 4).ok_or("short frame")?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

// ---------------------------------------------------------------- relay side

type Peers = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Bytes>>>>;

async fn serve(limit: Duration) -> Result<(), BoxError> {
    let ss = pqc_net::generate_self_signed(&["localhost".to_string()])?;
    let tls = pqc_net::ServerTls::from_pem(&ss.cert_pem, &ss.key_pem)?;
    let endpoint = tls.endpoint(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    println!("LISTEN {}", endpoint.local_addr()?);
    let peers: Peers = Arc::default();
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let peers = peers.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    let _ = connection(conn, peers).await;
                }
            });
        }
    };
    let _ = tokio::time::timeout(limit, accept).await;
    Ok(())
}

async fn connection(conn: quinn::Connection, peers: Peers) -> Result<(), BoxError> {
    // As pqc-server: the relay opens the one bidirectional stream.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&frame(HELLO, &[], &[])).await?;
    let first = pqc_net::read_frame(&mut recv, MAX_FRAME).await?.ok_or("closed before hello")?;
    if first.first() != Some(&HELLO) {
        return Err("expected hello".into());
    }
    let me = field(&first, 0)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    peers.lock().unwrap_or_else(PoisonError::into_inner).insert(me, tx.clone());
    tx.send(Bytes::from(frame(HELLO, &[], &[])))?;
    // Writer: everything for this connection, coalesced like pqc-server's pushes.
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut out = Vec::with_capacity(first.len());
            out.extend_from_slice(&first);
            while out.len() < COALESCE {
                let Ok(next) = rx.try_recv() else { break };
                out.extend_from_slice(&next);
            }
            if send.write_chunk(Bytes::from(out)).await.is_err() {
                break;
            }
        }
    });
    let mut frames = pqc_net::FrameReader::new(MAX_FRAME, None);
    while let Some(body) = frames.next(&mut recv).await? {
        match body.first() {
            Some(&PUBLISH) => {
                let (to, id) = (field(&body, 0)?, field(&body, 1)?);
                let payload = body.get(9..).ok_or("short publish")?;
                let out = Bytes::from(frame(DELIVER, &[me, id], payload));
                {
                    let peers = peers.lock().unwrap_or_else(PoisonError::into_inner);
                    if to == EVERYONE {
                        for (_, p) in peers.iter().filter(|(i, _)| **i != me) {
                            let _ = p.send(out.clone());
                        }
                    } else if let Some(p) = peers.get(&to) {
                        let _ = p.send(out);
                    }
                }
                let _ = tx.send(Bytes::from(frame(PUBACK, &[id], &[])));
            }
            Some(&ACK) => {}
            _ => return Err("unexpected frame".into()),
        }
    }
    peers.lock().unwrap_or_else(PoisonError::into_inner).remove(&me);
    drop(tx);
    let _ = writer.await;
    Ok(())
}

// ---------------------------------------------------------------- load side

#[derive(Debug, Clone)]
struct Opts {
    fanout: bool,
    port: u16,
    server_pid: Option<u32>,
    clients: usize,
    senders: usize,
    messages: usize,
    payload: usize,
    window: usize,
    limit: u64,
}

#[derive(Debug, Default)]
struct ClientResult {
    received: u64,
    latencies: Latencies,
    last: Option<Instant>,
}

fn payload(epoch: Instant, len: usize) -> Vec<u8> {
    let mut p = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).to_le_bytes().to_vec();
    p.resize(len.max(8), 0);
    p
}

async fn client(
    o: Opts,
    i: usize,
    ready: Arc<tokio::sync::Barrier>,
    mut go: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Result<ClientResult, BoxError> {
    // One endpoint (UDP socket) per client, as pqc-loadtest's simulated users.
    let mut endpoint = pqc_net::client_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let (cfg, _probe) = pqc_net::client_config(&ServerTrust::FirstUse)?;
    endpoint.set_default_client_config(cfg);
    let conn = endpoint.connect(SocketAddr::from(([127, 0, 0, 1], o.port)), "localhost")?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    pqc_net::read_frame(&mut recv, MAX_FRAME).await?.ok_or("closed")?;
    let index = u32::try_from(i)?;
    send.write_all(&frame(HELLO, &[index], &[])).await?;
    let hello = pqc_net::read_frame(&mut recv, MAX_FRAME).await?.ok_or("closed")?;
    if hello.first() != Some(&HELLO) {
        return Err("expected the relay's hello".into());
    }
    ready.wait().await;
    let epoch = loop {
        if let Some(e) = *go.borrow() {
            break e;
        }
        go.changed().await?;
    };
    let (to, sends, expect) = if o.fanout {
        let sends = if i < o.senders { o.messages } else { 0 };
        let others = if i < o.senders { o.senders - 1 } else { o.senders };
        (EVERYONE, sends, others * o.messages)
    } else {
        (index ^ 1, o.messages, o.messages)
    };
    let window = if o.fanout { 1 } else { o.window };
    let mut r = ClientResult::default();
    let (mut next, mut acked) = (0usize, 0usize);
    while next < sends.min(window) {
        send.write_all(&frame(PUBLISH, &[to, next as u32], &payload(epoch, o.payload))).await?;
        next += 1;
    }
    let mut frames = pqc_net::FrameReader::new(MAX_FRAME, None);
    while acked < sends || (r.received as usize) < expect {
        let body = frames.next(&mut recv).await?.ok_or("relay closed the stream")?;
        match body.first() {
            Some(&PUBACK) => {
                acked += 1;
                if next < sends {
                    send.write_all(&frame(PUBLISH, &[to, next as u32], &payload(epoch, o.payload))).await?;
                    next += 1;
                }
            }
            Some(&DELIVER) => {
                let now = epoch.elapsed();
                let sent = body.get(9..17).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes);
                r.latencies.record(now.saturating_sub(Duration::from_nanos(sent.ok_or("short deliver")?)));
                r.received += 1;
                r.last = Some(Instant::now());
                if !o.fanout {
                    send.write_all(&frame(ACK, &[field(&body, 0)?, field(&body, 1)?], &[])).await?;
                }
            }
            _ => return Err("unexpected frame from the relay".into()),
        }
    }
    // Every client holds its connection until all are done (a fan-out
    // receiver that left early would not be sent to any more).
    ready.wait().await;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(r)
}

async fn drive(o: Opts) -> Result<(), BoxError> {
    let ready = Arc::new(tokio::sync::Barrier::new(o.clients + 1));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..o.clients {
        set.spawn(client(o.clone(), i, ready.clone(), go_rx.clone()));
    }
    ready.wait().await;
    let server_start = o.server_pid.map(cpu_time).transpose()?;
    let own_start = cpu_time(std::process::id())?;
    let epoch = Instant::now();
    go_tx.send(Some(epoch))?;
    let done = {
        let ready = ready.clone();
        tokio::spawn(async move { ready.wait().await })
    };
    done.await?;
    let server_cpu = pqc_loadtest::rss::spent(server_start, o.server_pid.map(cpu_time).transpose()?);
    let own_cpu = cpu_time(std::process::id())?.saturating_sub(own_start);
    let (mut lat, mut received, mut last) = (Latencies::new(), 0u64, epoch);
    while let Some(r) = set.join_next().await {
        let r = r??;
        received += r.received;
        lat.merge(r.latencies);
        last = r.last.map_or(last, |t| last.max(t));
    }
    let secs = last.duration_since(epoch).as_secs_f64();
    // Per unit: a delivered message (relay), a message to everyone (fan-out).
    let (mode, units) = if o.fanout {
        ("quic-floor-fanout", (o.senders * o.messages) as f64)
    } else {
        ("quic-floor-relay", received as f64)
    };
    let per = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6 / units.max(1.0));
    let cpu_us = server_cpu.map_or("-".into(), per);
    let gen_us = per(own_cpu);
    let rate = if secs > 0.0 { units / secs } else { 0.0 };
    if o.fanout {
        println!(
            "bare QUIC relay, fan-out: room of {}, {} senders x {} messages of {} B",
            o.clients, o.senders, o.messages, o.payload
        );
        println!("messages to everyone: {units:.0} ({received} deliveries) in {secs:.2} s: {rate:.0}/s");
    } else {
        println!(
            "bare QUIC relay: clients {}, {} messages each, payload {} B, window {}",
            o.clients, o.messages, o.payload, o.window
        );
        println!("throughput: {rate:.0} messages relayed/s ({received} in {secs:.2} s)");
    }
    println!("delivery latency (publish → received): {}", lat.summary_ms());
    println!("relay CPU per message: {cpu_us} us; load generator: {gen_us} us");
    println!(
        "RESULT mode={mode} clients={} messages={} delivered={received} msgs_per_s={rate:.0} p50_ms={} p99_ms={} max_ms={} cpu_per_msg_us={cpu_us} gen_cpu_per_msg_us={gen_us}",
        o.clients,
        o.messages,
        lat.quantile_ms(0.5),
        lat.quantile_ms(0.99),
        lat.quantile_ms(1.0),
    );
    Ok(())
}

fn parse() -> Result<(String, Opts), BoxError> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("usage: quic_floor serve | relay | fanout [flags]; see the file's header")?;
    let fanout = mode == "fanout";
    let mut o = Opts {
        fanout,
        port: 0,
        server_pid: None,
        clients: 100,
        senders: 10,
        messages: if fanout { 100 } else { 200 },
        payload: if fanout { 402 } else { 256 },
        window: 1,
        limit: 240,
    };
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--port" => o.port = v.parse()?,
            "--server-pid" => o.server_pid = Some(v.parse()?),
            "--clients" => o.clients = v.parse()?,
            "--senders" => o.senders = v.parse()?,
            "--messages" => o.messages = v.parse()?,
            "--payload" => o.payload = v.parse()?,
            "--window" => o.window = v.parse()?,
            "--duration-limit" => o.limit = v.parse()?,
            _ => return Err(format!("unknown flag {a}").into()),
        }
    }
    let ok = match mode.as_str() {
        "serve" => true,
        "relay" => o.port != 0 && o.clients >= 2 && o.clients.is_multiple_of(2) && o.window > 0,
        "fanout" => o.port != 0 && o.clients >= 2 && (1..=o.clients).contains(&o.senders),
        _ => return Err(format!("unknown mode {mode}: serve, relay or fanout").into()),
    };
    if !ok || o.payload < 8 {
        return Err("relay needs --port and an even --clients ≥ 2; fanout needs --port and 1 ≤ --senders ≤ --clients; --payload ≥ 8".into());
    }
    Ok((mode, o))
}

/// mimalloc, as in every binary of the workspace (the workspace manifest says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (mode, o) = match parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("quic_floor: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The relay runs on tokio's default multi-thread runtime, as pqc-server
    // does; it stops by itself after 600 s (a success), the load at its limit.
    if mode == "serve" {
        pqc_loadtest::run_example("quic_floor", Duration::MAX, serve(Duration::from_secs(600)))
    } else {
        pqc_loadtest::run_example("quic_floor", Duration::from_secs(o.limit), drive(o))
    }
}
