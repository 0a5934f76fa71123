//! Baseline for the message benchmark: the same load through an MQTT broker
//! (mosquitto) over TLS with QoS 1, on loopback.
//!
//! N clients, each its own MQTT 3.1.1 connection over TLS 1.3 (tokio-rustls
//! with the workspace's rustls/aws-lc; the few MQTT packets needed are
//! encoded here), in pairs like `pqc-loadtest`: client `i`
//! subscribes to `lt/<run>/<i>` at QoS 1 and publishes M messages at QoS 1 to
//! its partner's topic, at most `--window` unacknowledged (PUBACK), while
//! receiving. Each payload carries its send time; latency is measured when
//! the subscriber receives it.
//!
//! `cargo run --release -p pqc-loadtest --example mqtt_bench -- --port 8883 --ca ca.pem`
//!
//! Prints `RESULT mode=mqtt …` like `pqc-loadtest`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pqc_loadtest::Latencies;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
struct Opts {
    host: String,
    port: u16,
    ca: String,
    clients: usize,
    messages: usize,
    payload: usize,
    window: u16,
    limit: u64,
    /// mosquitto's pid: its CPU time over the message phase.
    broker_pid: Option<u32>,
}

fn parse() -> Result<Opts, BoxError> {
    let mut o = Opts {
        host: "127.0.0.1".into(),
        port: 8883,
        ca: "ca.pem".into(),
        clients: 100,
        messages: 100,
        payload: 256,
        window: 1,
        limit: 120,
        broker_pid: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--host" => o.host = v,
            "--port" => o.port = v.parse()?,
            "--ca" => o.ca = v,
            "--clients" => o.clients = v.parse()?,
            "--messages" => o.messages = v.parse()?,
            "--payload" => o.payload = v.parse()?,
            "--window" => o.window = v.parse()?,
            "--duration-limit" => o.limit = v.parse()?,
            "--broker-pid" => o.broker_pid = Some(v.parse()?),
            _ => return Err(format!("unknown flag {a}").into()),
        }
    }
    if o.clients < 2 || !o.clients.is_multiple_of(2) || o.payload < 12 || o.window == 0 {
        return Err("--clients must be even ≥ 2, --payload ≥ 12, --window ≥ 1".into());
    }
    if o.host != "127.0.0.1" && o.host != "localhost" {
        return Err("--host must be loopback".into());
    }
    Ok(o)
}

#[derive(Debug, Default)]
struct ClientResult {
    acked: u64,
    received: u64,
    latencies: Latencies,
    last: Option<Instant>,
    errors: u64,
}

fn payload(epoch: Instant, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.resize(len, 0);
    p
}

/// MQTT 3.1.1 packet types (high nibble of the fixed header).
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBACK: u8 = 9;

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s);
}

/// Fixed header (type/flags byte, remaining length varint) + body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn connect(client_id: &str) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, b"MQTT");
    b.extend_from_slice(&[4, 0x02, 0, 30]); // level 4, clean session, keep-alive 30 s
    put_str(&mut b, client_id.as_bytes());
    packet(0x10, &b)
}

fn subscribe(topic: &str) -> Vec<u8> {
    let mut b = vec![0, 1];
    put_str(&mut b, topic.as_bytes());
    b.push(1); // QoS 1
    packet(0x82, &b)
}

fn publish_qos1(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(topic.len() + 4 + payload.len());
    put_str(&mut b, topic.as_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(payload);
    packet(0x32, &b)
}

fn puback(id: [u8; 2]) -> Vec<u8> {
    packet(0x40, &id)
}

/// Reads one packet: (type, flags, body).
async fn read_packet<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<(u8, u8, Vec<u8>), BoxError> {
    let first = r.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0u32);
    loop {
        let b = r.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err("bad remaining length".into());
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((first >> 4, first & 0x0f, body))
}

async fn client(
    o: Opts,
    tls: Arc<rustls::ClientConfig>,
    run: String,
    i: usize,
    ready: Arc<tokio::sync::Barrier>,
    go: tokio::sync::watch::Receiver<Option<Instant>>,
) -> Result<ClientResult, BoxError> {
    let tcp = TcpStream::connect((o.host.as_str(), o.port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    wr.write_all(&connect(&format!("lt-{run}-{i}"))).await?;
    wr.write_all(&subscribe(&format!("lt/{run}/{i}"))).await?;
    wr.flush().await?;
    let partner = format!("lt/{run}/{}", i ^ 1);
    loop {
        let (t, _, body) = read_packet(&mut rd).await?;
        match t {
            CONNACK if body.get(1) != Some(&0) => return Err("connection refused by the broker".into()),
            SUBACK if body.get(2).is_none_or(|rc| *rc > 2) => return Err("subscription refused".into()),
            SUBACK => break,
            _ => {}
        }
    }
    ready.wait().await;
    let mut go = go;
    let epoch = loop {
        if let Some(e) = *go.borrow() {
            break e;
        }
        go.changed().await?;
    };
    let mut r = ClientResult::default();
    let mut next = 0usize;
    let first = o.messages.min(usize::from(o.window));
    for _ in 0..first {
        let id = (next % 65_535 + 1) as u16;
        wr.write_all(&publish_qos1(&partner, id, &payload(epoch, next as u32, o.payload))).await?;
        next += 1;
    }
    wr.flush().await?;
    while (r.acked as usize) < o.messages || (r.received as usize) < o.messages {
        let (t, flags, body) = read_packet(&mut rd).await?;
        match t {
            PUBACK => {
                r.acked += 1;
                if next < o.messages {
                    let id = (next % 65_535 + 1) as u16;
                    wr.write_all(&publish_qos1(&partner, id, &payload(epoch, next as u32, o.payload))).await?;
                    wr.flush().await?;
                    next += 1;
                }
            }
            PUBLISH => {
                let now = epoch.elapsed();
                let tlen = body.get(..2).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                let qos = (flags >> 1) & 3;
                let id_at = 2 + tlen;
                let data_at = if qos > 0 { id_at + 2 } else { id_at };
                if qos > 0 {
                    let id = body.get(id_at..id_at + 2).ok_or("short PUBLISH")?;
                    wr.write_all(&puback([id[0], id[1]])).await?;
                    wr.flush().await?;
                }
                let sent =
                    body.get(data_at..data_at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes);
                match sent {
                    Some(ns) => {
                        r.latencies.record(now.saturating_sub(Duration::from_nanos(ns)));
                        r.received += 1;
                        r.last = Some(Instant::now());
                    }
                    None => r.errors += 1,
                }
            }
            _ => {}
        }
    }
    wr.write_all(&packet(0xe0, &[])).await?;
    wr.flush().await?;
    Ok(r)
}

async fn run(o: Opts) -> Result<(), BoxError> {
    let ca_pem = std::fs::read(&o.ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let run = format!("{:x}", std::process::id());
    let ready = Arc::new(tokio::sync::Barrier::new(o.clients + 1));
    let (go_tx, go_rx) = tokio::sync::watch::channel(None);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..o.clients {
        set.spawn(client(o.clone(), tls.clone(), run.clone(), i, ready.clone(), go_rx.clone()));
    }
    ready.wait().await;
    let cpu = |pid: Option<u32>| pid.map(pqc_loadtest::rss::cpu_time).transpose();
    let cpu_start = cpu(o.broker_pid)?;
    let own_start = pqc_loadtest::rss::cpu_time(std::process::id()).ok();
    let epoch = Instant::now();
    go_tx.send(Some(epoch))?;
    let mut lat = Latencies::new();
    let (mut acked, mut received, mut errors, mut last) = (0u64, 0u64, 0u64, epoch);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(r)) => {
                acked += r.acked;
                received += r.received;
                errors += r.errors;
                lat.merge(r.latencies);
                if let Some(t) = r.last {
                    last = last.max(t);
                }
            }
            Ok(Err(e)) => {
                eprintln!("mqtt client failed: {e}");
                errors += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    // CPU per received message over the run, in microseconds ("-" if unknown).
    let per_message = |start: Option<Duration>, end: Option<Duration>| match (start, end) {
        (Some(a), Some(b)) if received > 0 => {
            format!("{:.1}", b.saturating_sub(a).as_secs_f64() * 1e6 / received as f64)
        }
        _ => "-".into(),
    };
    let cpu_us = per_message(cpu_start, cpu(o.broker_pid)?);
    let gen_us = per_message(own_start, pqc_loadtest::rss::cpu_time(std::process::id()).ok());
    let secs = last.duration_since(epoch).as_secs_f64();
    let rate = if secs > 0.0 { received as f64 / secs } else { 0.0 };
    let expected = (o.clients * o.messages) as u64;
    println!(
        "mosquitto QoS 1 over TLS: clients {}, {} messages each, payload {} B, window {}",
        o.clients, o.messages, o.payload, o.window
    );
    println!("messages: {acked} acked, {received} delivered of {expected} in {secs:.2} s");
    println!("throughput: {rate:.0} messages relayed/s");
    println!("delivery latency (publish → received): {}", lat.summary_ms());
    println!("broker CPU per message: {cpu_us} us");
    println!("load generator CPU per message (its TLS/TCP clients, both ends): {gen_us} us");
    println!("errors: {errors}");
    println!(
        "RESULT mode=mqtt clients={} messages={} delivered={received} msgs_per_s={rate:.0} p50_ms={} p99_ms={} max_ms={} cpu_per_msg_us={cpu_us} gen_cpu_per_msg_us={gen_us} errors={errors}",
        o.clients,
        o.messages,
        lat.quantile_ms(0.5),
        lat.quantile_ms(0.99),
        lat.quantile_ms(1.0),
    );
    if received != expected || errors > 0 {
        return Err("not every message was delivered".into());
    }
    Ok(())
}

/// mimalloc, as in every binary of the workspace (the workspace manifest says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("mqtt_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    pqc_loadtest::run_example("mqtt_bench", Duration::from_secs(o.limit), run(o))
}
