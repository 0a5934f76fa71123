//! Load and benchmark tools for pqc-chat.
//!
//! Everything here is a client of a running `pqc-server` on loopback (or a
//! baseline on loopback); nothing runs unbounded: every mode has a client
//! count, a message count and a hard time limit.
//!
//! # Layout
//! - [`error`]: the error type, [`LoadError`].
//! - [`stats`]: latency samples and percentiles ([`Latencies`]).
//! - [`user`]: one simulated user ([`SimUser`]): connect, register a fresh
//!   hybrid identity, upload signed and one-time prekeys.
//! - [`chat`]: the message benchmark ([`chat::run`]): pairs of users do a real
//!   PQXDH-style handshake (pqc-proto `Session`), then send messages to each
//!   other while receiving through push-driven fetch + ack; reports
//!   throughput and send→decrypt latency.
//! - [`room`]: the room benchmark ([`room::run`]): N members join one room
//!   on the relay one by one, then senders send to everyone; reports the
//!   server's CPU time per join and per message and relay latencies.
//! - [`idle`]: idle logged-in connections and the server's resident memory
//!   ([`idle::run`]).
//! - [`rss`]: reading `VmRSS` and CPU time of a process from `/proc`.
//!
//! The plain-quinn file transfer baseline is `examples/quinn_transfer.rs`; the
//! mosquitto (MQTT over TLS, QoS 1) driver is `examples/mqtt_bench.rs`; the
//! transport's floor (the message and room loads through a relay that only
//! forwards, over pqc-net's QUIC set-up) is `examples/quic_floor.rs`.

pub mod chat;
pub mod error;
pub mod idle;
pub mod room;
pub mod rss;
pub mod stats;
pub mod user;

pub use error::LoadError;
pub use stats::Latencies;
pub use user::SimUser;

/// Runs a baseline tool's `work` (the examples) on tokio's multi-thread
/// runtime, as pqc-server runs, for at most `limit`; a failure or the time
/// limit is printed as `NAME: …`. Returns the process's exit code.
pub fn run_example<E: std::fmt::Display>(
    name: &str,
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async { tokio::time::timeout(limit, work).await });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match r {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{name}: time limit reached");
            ExitCode::FAILURE
        }
    }
}
