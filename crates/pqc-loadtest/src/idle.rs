//! Idle logged-in connections and the server's resident memory.
//!
//! Reads the server's `VmRSS` before, opens N connections that each register
//! a fresh user (so they are logged in) and then send nothing, waits, reads
//! `VmRSS` again, and reports the growth per connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::LoadError;
use crate::rss::vm_rss_kib;
use crate::user::register_many;

/// Results of an idle run.
#[derive(Debug)]
pub struct IdleReport {
    /// Connections opened and logged in.
    pub connections: usize,
    /// Time to open and register them.
    pub setup: Duration,
    /// Server RSS before (KiB), if a pid was given.
    pub rss_before_kib: Option<u64>,
    /// Server RSS with every connection open and idle (KiB).
    pub rss_after_kib: Option<u64>,
}

impl IdleReport {
    /// RSS growth per connection in KiB.
    pub fn per_connection_kib(&self) -> Option<f64> {
        match (self.rss_before_kib, self.rss_after_kib) {
            (Some(b), Some(a)) if self.connections > 0 => Some((a as f64 - b as f64) / self.connections as f64),
            _ => None,
        }
    }
}

/// Opens `n` idle logged-in connections to `server`, `concurrency` at a
/// time, holds them for `hold`, and measures `server_pid`'s RSS.
pub async fn run(
    server: SocketAddr,
    n: usize,
    concurrency: usize,
    hold: Duration,
    server_pid: Option<u32>,
    deadline: tokio::time::Instant,
) -> Result<IdleReport, LoadError> {
    let limit = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs();
    let rss_before_kib = server_pid.map(vm_rss_kib).transpose()?;
    let t = Instant::now();
    let users = tokio::time::timeout_at(deadline, register_many(server, n, concurrency, 0))
        .await
        .map_err(|_| LoadError::TimeLimit(limit))??;
    let setup = t.elapsed();
    let hold_until = (tokio::time::Instant::now() + hold).min(deadline);
    tokio::time::sleep_until(hold_until).await;
    let rss_after_kib = server_pid.map(vm_rss_kib).transpose()?;
    let connections = users.iter().filter(|u| u.conn.close_reason().is_none()).count();
    // Close politely so the server frees them now rather than at idle timeout.
    for u in users {
        u.conn.quinn().close(0u32.into(), b"bye");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(IdleReport { connections, setup, rss_before_kib, rss_after_kib })
}
