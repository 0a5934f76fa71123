//! Async QUIC transport shared by the pqc-chat server and clients.
//!
//! - TLS 1.3 through rustls with the aws-lc-rs provider, X25519MLKEM768
//!   preferred; the group actually negotiated is recorded per connection
//!   ([`kx::KxProbe`]).
//! - ALPN [`ALPN`]. The server opens one bidirectional stream per connection
//!   and sends `Hello` on it; every request, response and push then travels
//!   on that stream as length-prefixed `pqc-wire` frames.
//! - Clients trust the server by a pinned SHA-256 certificate fingerprint
//!   (TOFU), in "first use" mode (accept and report), or through a CA file.
//!
//! # Layout
//! - [`kx`]: recording key-exchange groups (negotiated group per connection).
//! - [`tls`]: [`CertFingerprint`], [`ServerTrust`], [`ServerTls`], self-signed
//!   certificate generation, client configs and the pinning verifier.
//! - [`framed`]: [`FrameReader`], [`read_frame`] / [`write_frame`] over quinn streams.
//! - [`client`]: [`Connection`], the async request/response/push client.
//! - [`error`]: the [`NetError`] type.
//! - [`socket`]: the UDP sockets under the endpoints (receive buffer).

pub mod client;
pub mod error;
pub mod framed;
pub mod kx;
pub mod outbox;
pub mod socket;
pub mod tls;

pub use client::{ConnectInfo, Connection, PendingResponse};
pub use error::NetError;
pub use framed::{FrameReader, read_frame, write_encoded, write_frame};
pub use kx::KxProbe;
pub use outbox::{OUTBOX_LIMIT, Outbox};
pub use rustls::NamedGroup;
pub use socket::client_endpoint;
pub use tls::{
    CLIENT_IDLE_TIMEOUT, CertFingerprint, SelfSigned, ServerTls, ServerTrust, client_config, generate_self_signed,
};
pub use {quinn, rustls};

/// ALPN protocol id.
pub const ALPN: &[u8] = b"pqc-chat/1";
