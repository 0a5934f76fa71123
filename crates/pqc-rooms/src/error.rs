//! The one error type of this crate.

use crate::identity::UserId;

/// Everything that can go wrong in a room operation.
///
/// Messages are written for the person reading a log or a CLI error: they say
/// what happened and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// Input bytes could not be decoded as the expected MLS structure.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What we tried to decode.
        what: &'static str,
        /// Why the decoder refused it.
        reason: String,
    },
    /// A well-formed MLS message of the wrong kind was given.
    #[error("unexpected message: expected {expected}")]
    UnexpectedMessage {
        /// What the operation expected.
        expected: &'static str,
    },
    /// The message belongs to another room.
    #[error("message is for another room")]
    WrongRoom,
    /// The room is at its participant limit.
    #[error("room is full ({members} members, limit {max}); ask a member to raise the limit or remove someone")]
    RoomFull {
        /// Members the room would have after the operation.
        members: usize,
        /// The room's participant limit.
        max: u32,
    },
    /// The participant limit is out of range (must be at least 1).
    #[error("invalid participant limit {0}: must be at least 1")]
    InvalidLimit(u32),
    /// The room name or user name is empty or too long.
    #[error("invalid {what}: must be 1 to {max} bytes of UTF-8")]
    InvalidName {
        /// Which name.
        what: &'static str,
        /// Maximum length in bytes.
        max: usize,
    },
    /// This client is no longer a member of the room.
    #[error("you are no longer a member of this room")]
    NotAMember,
    /// No member with this user name is in the room.
    #[error("no member named {0} in this room")]
    UnknownMember(UserId),
    /// The room (or key package) uses a cipher suite this build does not support.
    #[error("unsupported room cipher suite 0x{0:04x}; upgrade the client")]
    UnsupportedSuite(u16),
    /// The room carries no (or an unreadable) pqc-chat metadata record.
    #[error("room metadata missing or invalid: {0}")]
    Metadata(&'static str),
    /// A sealed group info could not be opened: wrong access key or tampered.
    #[error("cannot open the room's group info: wrong access key or corrupted data")]
    GroupInfoSeal,
    /// A Welcome names none of this member's key packages.
    #[error("the welcome is not addressed to any of our key packages (already used or never published)")]
    NoMatchingKeyPackage,
    /// Saved state has an unknown format version.
    #[error("saved state version {0} is not supported by this build")]
    UnsupportedStateVersion(u16),
    /// Saved state is corrupt.
    #[error("saved state is corrupt: {0}")]
    CorruptState(&'static str),
    /// The in-memory store was poisoned by a panic elsewhere.
    #[error("internal storage lock poisoned")]
    Poisoned,
    /// The binding between a hybrid identity key and an MLS signature key is invalid.
    #[error("identity binding signature invalid")]
    BadBinding,
    /// A primitive of the hybrid identity failed.
    #[error("crypto error: {0}")]
    Crypto(#[from] pqc_crypto::CryptoError),
    /// An OpenMLS operation failed.
    #[error("MLS {op} failed: {reason}")]
    Mls {
        /// Which operation.
        op: &'static str,
        /// OpenMLS's description of the failure.
        reason: String,
    },
}

/// Shorthand used throughout the crate.
pub(crate) fn mls_err<E: std::fmt::Debug>(op: &'static str) -> impl FnOnce(E) -> RoomError {
    move |e| RoomError::Mls { op, reason: format!("{e:?}") }
}

pub(crate) fn malformed<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> RoomError {
    move |e| RoomError::Malformed { what, reason: e.to_string() }
}
