//! Wire encodings of the two session messages: the [`PreKeyMessage`] that
//! starts a session and the normal [`RatchetMessage`]. Both begin with the
//! version byte [`MESSAGE_VERSION`] and a type byte; [`WireMessage::decode`]
//! dispatches on them. Layouts are in `docs/PROTOCOL.md`, "1:1 sessions".

use pqc_crypto::aead::TAG_LEN;
use pqc_crypto::ml_kem::{MlKemCiphertext, MlKemLevel};
use pqc_crypto::x25519::X25519PublicKey;

use crate::codec::{Reader, put_u32, put_vec32};
use crate::error::{ProtoError, Result};
use crate::ids::PreKeyId;
use crate::prekey::PREKEY_KEM_LEVEL;

/// Version byte of session messages.
pub const MESSAGE_VERSION: u8 = 1;
/// Type byte of a [`PreKeyMessage`].
pub const TYPE_PREKEY_MESSAGE: u8 = 0x01;
/// Type byte of a [`RatchetMessage`].
pub const TYPE_MESSAGE: u8 = 0x02;
/// The ML-KEM parameter set of the sparse post-quantum ratchet.
pub const RATCHET_KEM_LEVEL: MlKemLevel = MlKemLevel::MlKem768;
/// Largest inner message a prekey message may carry (1 MiB + headers).
pub const MAX_MESSAGE_LEN: usize = (1 << 20) + 4096;

/// Bytes of post-quantum ratchet data one message carries at most.
pub const PQ_CHUNK_LEN: usize = 40;

const FLAG_CHUNK: u8 = 0x01;
const FLAG_CHUNK_CT: u8 = 0x02;
const FLAG_MIXED: u8 = 0x04;

/// What a chunk of the post-quantum ratchet carries a piece of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkKind {
    /// The sender's ML-KEM-768 ratchet public key.
    PublicKey,
    /// The sender's ML-KEM-768 ciphertext to the receiver's ratchet key.
    Ciphertext,
}

impl ChunkKind {
    /// Length of the whole object the chunks of this kind cut up.
    pub(crate) fn total_len(self) -> usize {
        match self {
            Self::PublicKey => RATCHET_KEM_LEVEL.public_key_len(),
            Self::Ciphertext => RATCHET_KEM_LEVEL.ciphertext_len(),
        }
    }

    /// How many chunks the object takes.
    pub(crate) fn count(self) -> usize {
        self.total_len().div_ceil(PQ_CHUNK_LEN)
    }

    /// The byte range of chunk `index` in the object, if it exists.
    pub(crate) fn range(self, index: usize) -> Option<std::ops::Range<usize>> {
        let start = index.checked_mul(PQ_CHUNK_LEN)?;
        (start < self.total_len()).then(|| start..(start + PQ_CHUNK_LEN).min(self.total_len()))
    }
}

/// One piece of an ML-KEM public key or ciphertext of the sparse ratchet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PqChunk {
    pub(crate) kind: ChunkKind,
    /// The ratchet key's id (for a ciphertext: the id of the key it was made for).
    pub(crate) id: u32,
    pub(crate) index: u8,
    pub(crate) data: Vec<u8>,
}

/// The authenticated (cleartext) header of a ratchet message.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub(crate) dh: X25519PublicKey,
    pub(crate) pn: u32,
    pub(crate) n: u32,
    /// The id of the sender's ratchet key whose KEM secret this chain's root step mixed in.
    pub(crate) mixed: Option<u32>,
    pub(crate) chunk: Option<PqChunk>,
}

/// Writes `version || type || header` (everything the AEAD authenticates besides the session's transcript hash).
pub(crate) fn encode_header(
    out: &mut Vec<u8>,
    dh: &X25519PublicKey,
    pn: u32,
    n: u32,
    mixed: Option<u32>,
    chunk: Option<&PqChunk>,
) {
    out.extend_from_slice(&[MESSAGE_VERSION, TYPE_MESSAGE]);
    out.extend_from_slice(dh.as_bytes());
    put_u32(out, pn);
    put_u32(out, n);
    let mut flags = if mixed.is_some() { FLAG_MIXED } else { 0 };
    if let Some(c) = chunk {
        flags |= FLAG_CHUNK | if c.kind == ChunkKind::Ciphertext { FLAG_CHUNK_CT } else { 0 };
    }
    out.push(flags);
    if let Some(id) = mixed {
        put_u32(out, id);
    }
    if let Some(c) = chunk {
        put_u32(out, c.id);
        out.push(c.index);
        out.extend_from_slice(&c.data);
    }
}

/// A normal message of an established session.
#[derive(Clone, Debug)]
pub struct RatchetMessage {
    pub(crate) header: Header,
    /// `version || type || header`, authenticated as associated data.
    pub(crate) header_bytes: Vec<u8>,
    /// AEAD ciphertext and tag.
    pub(crate) ciphertext: Vec<u8>,
}

impl RatchetMessage {
    /// Decodes a message; rejects unknown versions, types and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "ratchet message";
        let mut r = Reader::new(WHAT, bytes);
        r.version(MESSAGE_VERSION)?;
        r.expect_type(TYPE_MESSAGE)?;
        let dh = X25519PublicKey::from_bytes(r.bytes(32)?)?;
        let pn = r.u32()?;
        let n = r.u32()?;
        let flags = r.u8()?;
        if flags & !(FLAG_CHUNK | FLAG_CHUNK_CT | FLAG_MIXED) != 0 {
            return Err(ProtoError::malformed(WHAT, "unknown header flags"));
        }
        if flags & FLAG_CHUNK_CT != 0 && flags & FLAG_CHUNK == 0 {
            return Err(ProtoError::malformed(WHAT, "chunk kind without a chunk"));
        }
        let mixed = if flags & FLAG_MIXED != 0 { Some(r.u32()?) } else { None };
        let chunk = if flags & FLAG_CHUNK != 0 {
            let kind = if flags & FLAG_CHUNK_CT != 0 { ChunkKind::Ciphertext } else { ChunkKind::PublicKey };
            let id = r.u32()?;
            let index = r.u8()?;
            let range =
                kind.range(usize::from(index)).ok_or(ProtoError::malformed(WHAT, "chunk index out of range"))?;
            Some(PqChunk { kind, id, index, data: r.bytes(range.len())?.to_vec() })
        } else {
            None
        };
        let header_len = bytes.len().saturating_sub(r.remaining());
        let ciphertext = r.rest();
        if ciphertext.len() < TAG_LEN {
            return Err(ProtoError::Truncated { what: WHAT });
        }
        let header_bytes = bytes.get(..header_len).ok_or(ProtoError::Truncated { what: WHAT })?.to_vec();
        r.finish()?;
        Ok(Self { header: Header { dh, pn, n, mixed, chunk }, header_bytes, ciphertext: ciphertext.to_vec() })
    }

    /// Re-encodes the message (identical to the bytes it was decoded from).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_bytes.len() + self.ciphertext.len());
        out.extend_from_slice(&self.header_bytes);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// The message number in its sending chain (visible to the server).
    pub fn counter(&self) -> u32 {
        self.header.n
    }
}

/// Which KEM prekey an initiator encapsulated to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KemPreKeyRef {
    /// A one-time ML-KEM-1024 prekey (consumed by the responder).
    OneTime(PreKeyId),
    /// The last-resort ML-KEM-1024 prekey of the signed blob.
    LastResort(PreKeyId),
}

/// The first message of a session: the initiator's handshake fields and the
/// first ratchet message. An initiator sends every message as a prekey
/// message until it has received a reply.
#[derive(Clone, Debug)]
pub struct PreKeyMessage {
    /// [`crate::PeerIdentity::fingerprint`] of the initiator.
    pub(crate) initiator: [u8; 32],
    pub(crate) ek: X25519PublicKey,
    pub(crate) spk_id: PreKeyId,
    pub(crate) kem: KemPreKeyRef,
    pub(crate) one_time: Option<PreKeyId>,
    pub(crate) kem_ct: MlKemCiphertext,
    /// The encoding of every field above, with version and type bytes.
    pub(crate) prefix: Vec<u8>,
    pub(crate) message: RatchetMessage,
}

/// Fields an initiator writes into the prefix of its prekey messages.
pub(crate) struct PreKeyFields<'a> {
    pub(crate) initiator: [u8; 32],
    pub(crate) ek: &'a X25519PublicKey,
    pub(crate) spk_id: PreKeyId,
    pub(crate) kem: KemPreKeyRef,
    pub(crate) one_time: Option<PreKeyId>,
    pub(crate) kem_ct: &'a MlKemCiphertext,
}

impl PreKeyFields<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 32 + 32 + 14 + PREKEY_KEM_LEVEL.ciphertext_len());
        out.extend_from_slice(&[MESSAGE_VERSION, TYPE_PREKEY_MESSAGE]);
        out.extend_from_slice(&self.initiator);
        out.extend_from_slice(self.ek.as_bytes());
        put_u32(&mut out, self.spk_id.0);
        match self.kem {
            KemPreKeyRef::OneTime(id) => {
                out.push(1);
                put_u32(&mut out, id.0);
            }
            KemPreKeyRef::LastResort(id) => {
                out.push(2);
                put_u32(&mut out, id.0);
            }
        }
        match self.one_time {
            Some(id) => {
                out.push(1);
                put_u32(&mut out, id.0);
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.kem_ct.as_bytes());
        out
    }
}

/// Appends the inner message to a prekey-message prefix.
pub(crate) fn wrap_prekey(prefix: &[u8], inner: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(prefix.len() + 4 + inner.len());
    out.extend_from_slice(prefix);
    put_vec32(&mut out, inner)?;
    Ok(out)
}

impl PreKeyMessage {
    /// Decodes a prekey message; rejects unknown versions, types and trailing bytes.
    /// The initiator is checked later, by [`crate::Session::accept`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "prekey message";
        let mut r = Reader::new(WHAT, bytes);
        r.version(MESSAGE_VERSION)?;
        r.expect_type(TYPE_PREKEY_MESSAGE)?;
        let initiator = r.array()?;
        let ek = X25519PublicKey::from_bytes(r.bytes(32)?)?;
        let spk_id = PreKeyId(r.u32()?);
        let kem = match r.u8()? {
            1 => KemPreKeyRef::OneTime(PreKeyId(r.u32()?)),
            2 => KemPreKeyRef::LastResort(PreKeyId(r.u32()?)),
            _ => return Err(ProtoError::malformed(WHAT, "unknown KEM prekey kind")),
        };
        let one_time = if r.flag()? { Some(PreKeyId(r.u32()?)) } else { None };
        let kem_ct = MlKemCiphertext::from_bytes(PREKEY_KEM_LEVEL, r.bytes(PREKEY_KEM_LEVEL.ciphertext_len())?)?;
        let prefix_len = bytes.len().saturating_sub(r.remaining());
        let inner = r.vec32(MAX_MESSAGE_LEN)?;
        r.finish()?;
        let message = RatchetMessage::decode(inner)?;
        let prefix = bytes.get(..prefix_len).ok_or(ProtoError::Truncated { what: WHAT })?.to_vec();
        Ok(Self { initiator, ek, spk_id, kem, one_time, kem_ct, prefix, message })
    }

    /// Re-encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>> {
        wrap_prekey(&self.prefix, &self.message.encode())
    }

    /// The initiator's [`crate::PeerIdentity::fingerprint`]: look up (or
    /// fetch) the sender's identity and pass it to [`crate::Session::accept`],
    /// which checks that it matches.
    pub fn initiator_fingerprint(&self) -> &[u8; 32] {
        &self.initiator
    }

    /// Id of the responder's signed X25519 prekey that was used.
    pub fn signed_prekey_id(&self) -> PreKeyId {
        self.spk_id
    }

    /// The KEM prekey that was used.
    pub fn kem_prekey(&self) -> KemPreKeyRef {
        self.kem
    }

    /// Id of the responder's one-time X25519 prekey, if one was used.
    pub fn one_time_prekey_id(&self) -> Option<PreKeyId> {
        self.one_time
    }
}

/// Either session message, as found on the wire.
#[derive(Clone, Debug)]
pub enum WireMessage {
    /// Starts a session (or repeats the handshake until the initiator gets a reply).
    PreKey(Box<PreKeyMessage>),
    /// A message of an established session.
    Normal(RatchetMessage),
}

impl WireMessage {
    /// Decodes either message type.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "session message";
        let mut r = Reader::new(WHAT, bytes);
        r.version(MESSAGE_VERSION)?;
        match r.u8()? {
            TYPE_PREKEY_MESSAGE => Ok(Self::PreKey(Box::new(PreKeyMessage::decode(bytes)?))),
            TYPE_MESSAGE => Ok(Self::Normal(RatchetMessage::decode(bytes)?)),
            got => Err(ProtoError::UnknownType { what: WHAT, got }),
        }
    }
}
