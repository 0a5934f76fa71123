//! The client's error type. Every variant's message tells the user what
//! happened and, where there is one, what to do.

use std::path::PathBuf;

/// Errors of the client engine and CLI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The profile folder has no account yet.
    #[error("this profile has no account yet: run `pqc-client register NAME` first")]
    NotRegistered,
    /// `register` on a profile that already has one.
    #[error("this profile is already registered as {0:?}; use another --profile for a second account")]
    AlreadyRegistered(String),
    /// Another process has the profile open.
    #[error(
        "the profile at {dir} is in use by another pqc-client{holder}: one command at a time uses a profile \
         (two would advance the same session keys); wait for it to end, or use `pqc-client chat` to send and \
         receive at once"
    )]
    ProfileInUse {
        /// The profile folder.
        dir: PathBuf,
        /// " (process N)" when the holder wrote its id.
        holder: String,
    },
    /// Wrong passphrase for the profile.
    #[error("wrong passphrase for the profile at {0} (set PQC_PASSPHRASE or type it at the prompt)")]
    WrongPassphrase(PathBuf),
    /// No passphrase available.
    #[error("the profile needs a passphrase: set PQC_PASSPHRASE or run in a terminal to be prompted")]
    NoPassphrase,
    /// A contact's identity key differs from the one pinned earlier.
    #[error(
        "the identity key of {0} has changed since you last talked: this can mean a new device or an attack by the server. Nothing was sent or accepted. Compare safety numbers with `pqc-client verify {0}` out of band; if they match, run `pqc-client trust {0}` to accept the new key"
    )]
    IdentityChanged(String),
    /// The server's answer to a request was an error.
    #[error("server refused: {0}")]
    Server(String),
    /// The server answered something unexpected.
    #[error("unexpected answer from the server: {0}")]
    Unexpected(String),
    /// The server did not answer the connection attempt at all.
    #[error(
        "cannot reach the server at {0}: no answer within {secs} s. Is pqc-server running there, and is its UDP port open (pqc-chat uses QUIC over UDP)?",
        secs = pqc_net::CLIENT_IDLE_TIMEOUT.as_secs()
    )]
    Unreachable(String),
    /// The server's host answered that nothing listens on the port.
    #[error(
        "cannot reach the server at {0}: its host answered that nothing listens on that UDP port. Is pqc-server running there, on that port (pqc-chat uses QUIC over UDP)?"
    )]
    NotListening(String),
    /// Transport failure.
    #[error("{0}")]
    Net(#[from] pqc_net::NetError),
    /// Frame or name encoding failure.
    #[error("{0}")]
    Wire(#[from] pqc_wire::WireError),
    /// Protocol (session) failure.
    #[error("{0}")]
    Proto(#[from] pqc_proto::ProtoError),
    /// Cryptographic failure.
    #[error("{0}")]
    Crypto(#[from] pqc_crypto::CryptoError),
    /// Profile database failure.
    #[error("{0}")]
    Store(#[from] pqc_store::client::ClientStoreError),
    /// A decoded message or record was malformed.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Local file trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A bad argument or setting.
    #[error("{0}")]
    Usage(String),
    /// The server answered a request with an error.
    #[error("server refused: {message}")]
    Refused {
        /// The error code.
        code: pqc_wire::ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// A queued message could not be sent and never will be; it was dropped.
    #[error("{source}; the message to {to} was not sent")]
    NotSent {
        /// The recipient.
        to: String,
        /// Why.
        #[source]
        source: Box<ClientError>,
    },
    /// Sending failed; the message is kept in the outbox.
    #[error("{0}; the message is queued in the profile and will be sent by the next pqc-client command")]
    Queued(Box<ClientError>),
    /// Room (MLS group) failure.
    #[error("{0}")]
    Room(#[from] pqc_rooms::RoomError),
    /// A received file did not match its announced digest.
    #[error("the file from {0} failed its integrity check and was discarded")]
    FileCorrupt(String),
}

impl ClientError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Result alias.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
