//! Transport errors.

use thiserror::Error;

use crate::tls::CertFingerprint;

/// Errors from the transport layer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetError {
    /// Socket or file I/O.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration error.
    #[error("TLS error: {0}")]
    Tls(#[from] rustls::Error),
    /// Certificate or key could not be loaded or generated.
    #[error("certificate error: {0}")]
    Cert(String),
    /// Could not start connecting.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to the stream failed.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from the stream failed.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The server's certificate does not match the pinned fingerprint.
    #[error(
        "server certificate fingerprint {got} does not match the pinned {expected}; \
         if the server was reinstalled, verify the new fingerprint out of band and re-pin"
    )]
    FingerprintMismatch {
        /// Pinned value.
        expected: CertFingerprint,
        /// Presented value.
        got: CertFingerprint,
    },
    /// A frame could not be decoded (or was too large).
    #[error("protocol error: {0}")]
    Wire(#[from] pqc_wire::WireError),
    /// The peer violated the protocol (unexpected frame, etc.).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The stream ended.
    #[error("connection closed")]
    Closed,
    /// The server's host answered that nothing listens on its UDP port
    /// (an ICMP port unreachable): no pqc-server runs there.
    #[error("nothing listens on UDP port {} at {}: the host refused the connection", .0.port(), .0.ip())]
    PortClosed(std::net::SocketAddr),
    /// No response within the timeout.
    #[error("request timed out")]
    Timeout,
}
