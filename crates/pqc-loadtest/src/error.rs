//! Errors of the load tools.

use thiserror::Error;

/// What went wrong in a load run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Transport failure (connect, stream, timeout).
    #[error("transport: {0}")]
    Net(#[from] pqc_net::NetError),
    /// Protocol (pqc-proto) failure: key generation, handshake, decryption.
    #[error("E2E protocol: {0}")]
    Proto(#[from] pqc_proto::ProtoError),
    /// Frame codec / username validation.
    #[error("wire: {0}")]
    Wire(#[from] pqc_wire::WireError),
    /// The server answered a request with an error.
    #[error("server refused {what}: {code}: {message}")]
    Server {
        /// The request.
        what: &'static str,
        /// Error code.
        code: pqc_wire::ErrorCode,
        /// Server's message.
        message: String,
    },
    /// The server answered with an unexpected response type.
    #[error("unexpected response to {0}")]
    Unexpected(&'static str),
    /// Bad arguments.
    #[error("usage: {0}")]
    Usage(String),
    /// The run hit its time limit.
    #[error("time limit of {0} s reached")]
    TimeLimit(u64),
    /// File or /proc I/O.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
