//! Baseline for the file-transfer benchmark: the same number of bytes over a
//! plain quinn connection on loopback (one bidirectional stream, no
//! application framing, no end-to-end encryption, no storage), with the same
//! quinn/rustls versions and TLS settings family as pqc-net (TLS 1.3,
//! aws-lc-rs, X25519MLKEM768 preferred).
//!
//! `cargo run --release -p pqc-loadtest --example quinn_transfer -- --bytes 104857600`
//!
//! Prints `RESULT mode=quinn bytes=… secs=… mib_per_s=…`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pqc_net::ServerTrust;
use pqc_net::rustls::pki_types::pem::PemObject;
use pqc_net::rustls::pki_types::{CertificateDer, PrivateKeyDer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn server_endpoint() -> Result<quinn::Endpoint, BoxError> {
    let ss = pqc_net::generate_self_signed(&["localhost".to_string()])?;
    let chain = CertificateDer::pem_slice_iter(ss.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(ss.key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![pqc_net::ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)?;
    let sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
    Ok(quinn::Endpoint::server(sc, SocketAddr::from(([127, 0, 0, 1], 0)))?)
}

async fn receive(endpoint: quinn::Endpoint) -> Result<u64, BoxError> {
    let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
    let conn = incoming.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    while let Some(n) = recv.read(&mut buf).await? {
        total += n as u64;
    }
    send.write_all(&total.to_be_bytes()).await?;
    send.finish()?;
    conn.closed().await;
    Ok(total)
}

async fn run(bytes: u64) -> Result<(u64, Duration), BoxError> {
    let server = server_endpoint()?;
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(receive(server));
    let mut client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let (cfg, _probe) = pqc_net::client_config(&ServerTrust::FirstUse)?;
    client.set_default_client_config(cfg);
    let conn = client.connect(addr, "localhost")?.await?;
    let chunk = vec![0x5au8; 64 << 10];
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64))?;
        send.write_all(chunk.get(..n).ok_or("chunk")?).await?;
        left -= n as u64;
    }
    send.finish()?;
    let mut reply = [0u8; 8];
    recv.read_exact(&mut reply).await?;
    let took = t.elapsed();
    conn.close(0u32.into(), b"done");
    let got = receiver.await??;
    if got != bytes || u64::from_be_bytes(reply) != bytes {
        return Err(format!("sent {bytes} bytes, receiver counted {got}").into());
    }
    Ok((got, took))
}

/// mimalloc, as in every binary of the workspace (the workspace manifest says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut bytes: u64 = 100 << 20;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--bytes", Some(v)) => bytes = v,
            _ => {
                eprintln!("usage: quinn_transfer [--bytes N]");
                return ExitCode::FAILURE;
            }
        }
    }
    let transfer = async move {
        let (n, took) = run(bytes).await?;
        let mib_s = n as f64 / (1 << 20) as f64 / took.as_secs_f64();
        println!("plain quinn: {n} bytes in {:.3} s = {mib_s:.1} MiB/s", took.as_secs_f64());
        println!("RESULT mode=quinn bytes={n} secs={:.3} mib_per_s={mib_s:.1}", took.as_secs_f64());
        Ok::<(), BoxError>(())
    };
    pqc_loadtest::run_example("quinn_transfer", Duration::from_secs(120), transfer)
}
