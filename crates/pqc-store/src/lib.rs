//! Storage for pqc-chat: traits plus SQLite implementations.
//!
//! # Layout
//! - [`server`]: [`server::ServerStore`] (accounts, prekeys, one-time
//!   prekeys, mailboxes, attachments) and its SQLite implementation
//!   [`server::SqliteServerStore`]; rooms (opaque ids, members with their
//!   read cursors, the ordered log of MLS messages, the sealed GroupInfo).
//! - [`client`]: [`client::ClientDb`], the client profile database (sealed blobs, history, delivered envelope ids).
//!
//! - [`mailbox`]: the server's mailboxes, the envelopes waiting for their
//!   recipients, in an append-only log (`mailbox.log`) and in memory.
//!
//! The server store keeps accounts, prekeys, rooms and attachment metadata
//! in one SQLite file (`server.db` in the data directory), WAL mode with
//! `synchronous=FULL`, and envelopes in `mailbox.log` beside it, written and
//! `fdatasync`ed in the same group commit, so a committed envelope
//! (acknowledged to its sender) survives a crash or SIGKILL. Attachment bytes
//! are SQLite blobs (one row per uploaded chunk) so an attachment and its
//! metadata are created, resumed and deleted transactionally.

pub mod client;
pub mod lock;
pub mod mailbox;
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
    /// The room id is taken.
    #[error("a room with this name exists already; join it instead")]
    RoomExists,
    /// The room has as many members as its limit allows.
    #[error("room is full ({members} of {max} participants)")]
    RoomFull {
        /// Current members.
        members: u32,
        /// The limit.
        max: u32,
    },
    /// A commit (or external join) was built on another epoch than the room's.
    #[error("the room is at epoch {current} (you sent one for epoch {sent}); sync and retry")]
    EpochConflict {
        /// The room's epoch.
        current: u64,
        /// The sender's epoch.
        sent: u64,
    },
    /// An application message while a proposal (a member's leave) waits for
    /// its commit: the sender must sync the room, which commits it, first.
    #[error("a member's leave is waiting to be committed; sync the room and send again")]
    ProposalPending,
    /// The user is not a member of the room (or the room does not exist).
    #[error("not a member of this room")]
    NotAMember,
    /// Entries of the room the member had not fetched were older than the
    /// relay keeps them and were deleted: the member's group state cannot
    /// catch up; it joins again by external commit (a resync).
    #[error(
        "room messages you had not fetched were older than the relay keeps them and were deleted; join the room again"
    )]
    HistoryExpired,
    /// Another process holds the data folder (a second server started on it).
    #[error("{0}")]
    InUse(String),
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
    /// Reading or writing an attachment file failed.
    #[error("attachment file error: {0}")]
    Io(#[from] std::io::Error),
}
