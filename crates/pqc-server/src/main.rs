//! `pqc-server` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pqc_server::{Config, Server};

/// pqc-chat relay server.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Args {
    /// TOML config file (default: config/server.toml if present): limits,
    /// certificate files, log level, message retention.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (database, mailbox log, attachments, certificate; one
    /// server at a time). Default: ./pqc-data
    #[arg(long)]
    data: Option<PathBuf>,
    /// QUIC listen address (UDP). Default: 0.0.0.0:8443
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Status/metrics HTTP address (TCP). Default: 127.0.0.1:8444
    #[arg(long)]
    status: Option<SocketAddr>,
}

const AFTER_HELP: &str = "\
The first start creates the data directory with a self-signed certificate
and prints its SHA-256 fingerprint: clients pin it on first use, so give it
to your users to compare. The server stores and forwards only ciphertext
and deletes each message and file once its recipient has acknowledged it.
A message is acknowledged to its sender only once it is on disk.
Ctrl-C or SIGTERM stops it cleanly, and a crash loses nothing that was
acknowledged. Log level: log_level in the config, or RUST_LOG (keys and
message contents are never logged).";

/// mimalloc, as in every binary of the workspace (the workspace manifest says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pqc-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => {
            let p = PathBuf::from("config/server.toml");
            if p.exists() { Config::load(&p)? } else { Config::default() }
        }
    };
    if let Some(d) = args.data {
        cfg.data_dir = d;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))?;
    // Colour codes only on a terminal, not in a journal or a redirected log.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    let listen = match args.listen {
        Some(a) => a,
        None => format!("{}:{}", cfg.signaling_host, cfg.signaling_port).parse()?,
    };
    let status = match args.status {
        Some(a) => a,
        None => cfg.status_addr.parse()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let handle = Server::start(cfg, listen, Some(status)).await?;
        println!("pqc-server listening on {} (UDP/QUIC)", handle.addr);
        if let Some(s) = handle.status_addr {
            println!("status: http://{s}/status  metrics: http://{s}/metrics");
        }
        println!("certificate SHA-256 fingerprint: {}", handle.fingerprint);
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        handle.shutdown().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
