//! The one error type of this crate.

use pqc_crypto::CryptoError;

use crate::ids::PreKeyId;

/// Everything that can go wrong in the 1:1 session protocol.
///
/// Messages are written for a person: they say what happened and, where it
/// helps, what to do. They never contain key material or message content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The input ended before the structure was complete.
    #[error("{what} is truncated: the data ended before the structure was complete")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
    },
    /// The structure was complete but more bytes followed.
    #[error("{what} has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The version byte names an encoding this build does not know.
    #[error("{what} uses encoding version {got}, this build understands version {supported}; upgrade pqc-chat")]
    UnknownVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version found.
        got: u8,
        /// The version this build reads and writes.
        supported: u8,
    },
    /// The type byte names a structure this build does not know.
    #[error("{what} has unknown type {got:#04x}; the sender may run a newer pqc-chat")]
    UnknownType {
        /// What was being decoded.
        what: &'static str,
        /// The type found.
        got: u8,
    },
    /// A field had an impossible value.
    #[error("{what} is malformed: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A signature by an identity key did not verify.
    #[error(
        "the signature on the {what} does not verify: it was not made by this identity key or the data was altered \
         (possibly by the server); do not use these prekeys"
    )]
    BadSignature {
        /// What carried the signature.
        what: &'static str,
    },
    /// A primitive failed (for example a low-order X25519 key or a malformed ML-KEM key).
    #[error("cryptographic failure: {0}")]
    Crypto(#[from] CryptoError),
    /// A prekey message named a signed or last-resort prekey this device does not have.
    #[error("unknown {kind} {id}: the sender used a prekey this device never issued or has already retired")]
    UnknownPreKey {
        /// Which kind of prekey.
        kind: &'static str,
        /// Its id.
        id: PreKeyId,
    },
    /// A prekey message named a one-time prekey that is unknown or already consumed.
    #[error(
        "one-time {kind} {id} is unknown or was already used: a prekey message can start a session only once \
         (this may be a replay)"
    )]
    OneTimePreKeyUnavailable {
        /// Which kind of one-time prekey.
        kind: &'static str,
        /// Its id.
        id: PreKeyId,
    },
    /// The message was already decrypted once (or is too old to be decrypted).
    #[error("message already received (a duplicate or a replay), or too old to decrypt")]
    DuplicateMessage,
    /// Decrypting would need more skipped message keys than the limit allows.
    #[error("message would require skipping {requested} message keys, more than the limit of {limit}")]
    TooManySkipped {
        /// How many keys would have to be skipped.
        requested: u64,
        /// The limit.
        limit: u32,
    },
    /// The message did not authenticate.
    #[error("message could not be decrypted: it was altered, truncated, or does not belong to this session")]
    DecryptionFailed,
    /// The peer encapsulated to a post-quantum ratchet key this session no longer holds.
    #[error("the peer answered post-quantum ratchet key {0}, which this session no longer holds")]
    UnknownRatchetKemKey(u32),
    /// A prekey message names another initiator than the identity given for its sender.
    #[error(
        "this prekey message was made by another identity than the one known for its sender: the sender's key \
         changed or the server substituted it; compare safety numbers before trusting the new key"
    )]
    WrongInitiator,
    /// A ratchet message used a post-quantum secret this session never made.
    #[error("the peer mixed post-quantum ratchet secret {0} into its keys, which this session never sent")]
    UnknownRatchetSecret(u32),
    /// A prekey message arrived for a session that was set up by another prekey message.
    #[error("this prekey message belongs to a different session with this peer")]
    WrongSession,
    /// The sending counter of a chain is exhausted.
    #[error("the message counter of this session is exhausted; start a new session")]
    CounterExhausted,
    /// A saved session did not decrypt under the given key.
    #[error("the saved session could not be opened: wrong storage key or corrupted data")]
    PickleDecryptionFailed,
}

impl ProtoError {
    pub(crate) fn malformed(what: &'static str, reason: &'static str) -> Self {
        Self::Malformed { what, reason }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ProtoError> = core::result::Result<T, E>;
