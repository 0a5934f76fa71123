//! Storage for pqc-chat: traits plus SQLite implementations.
//!
//! # Layout
//! - [`server`]: [`server::ServerStore`] (accounts, prekeys, one-time
//!   prekeys, mailboxes, attachments) and its SQLite implementation
//!   [`server::SqliteServerStore`].
//! - [`client`]: [`client::ClientDb`], the client profile database (sealed blobs, history, delivered envelope ids).
//!
//! The server store keeps everything in one SQLite file (`server.db` in the
//! data directory), WAL mode with `synchronous=FULL`, so a committed envelope
//! (acknowledged to its sender) survives a crash or SIGKILL. Attachment bytes
//! are SQLite blobs (one row per uploaded chunk) so an attachment and its
//! metadata are created, resumed and deleted transactionally.

pub mod client;
pub mod server;

use thiserror::Error;

/// Storage errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The username is registered already.
    #[error("username already taken")]
    UsernameTaken,
    /// No such account.
    #[error("unknown user")]
    UnknownUser,
    /// The recipient's mailbox holds the maximum number of envelopes.
    #[error("mailbox full")]
    MailboxFull,
    /// No such envelope / attachment.
    #[error("not found")]
    NotFound,
    /// An inconsistent request (e.g. a chunk at the wrong offset).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database was written by a newer version of this program.
    #[error("database schema version {found} is newer than supported {supported}; upgrade pqc-server")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest known.
        supported: i64,
    },
    /// SQLite failure.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}
