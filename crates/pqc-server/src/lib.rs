//! The pqc-chat relay server: an untrusted store-and-forward of opaque
//! ciphertext over QUIC.
//!
//! # Layout
//! - [`config`]: the TOML configuration ([`Config`], [`config::Limits`]).
//! - [`server`]: [`Server::start`] / [`ServerHandle`]: endpoint, accept loop,
//!   connection cap, graceful shutdown.
//! - `conn`: one task per connection: Hello, rate limit, request dispatch,
//!   live pushes.
//! - `push`: a connection's push queue, bounded in bytes.
//! - [`metrics`]: counters exported by [`status`].
//! - [`status`]: minimal HTTP/1.1 `GET /status` (JSON) and `GET /metrics`
//!   (Prometheus text) on localhost.

pub mod config;
mod conn;
pub mod metrics;
mod push;
mod quota;
pub mod server;
pub mod status;

pub use config::{Config, Limits};
pub use server::{Server, ServerHandle};

use thiserror::Error;

/// Server errors (startup and configuration).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Bad configuration.
    #[error("configuration error: {0}")]
    Config(String),
    /// File or socket I/O.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Transport setup.
    #[error(transparent)]
    Net(#[from] pqc_net::NetError),
    /// Database.
    #[error(transparent)]
    Store(#[from] pqc_store::StoreError),
    /// A port could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}{hint}", hint = bind_hint(source))]
    Bind {
        /// What the port is for.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            ". Is another pqc-server (or another program) using it? Choose another with --listen / --status or in config/server.toml"
        }
        std::io::ErrorKind::PermissionDenied => ". Ports below 1024 need privileges: choose a higher one",
        _ => "",
    }
}
