//! Wire encodings of the two session messages: the [`PreKeyMessage`] that
//! starts a session and the normal [`RatchetMessage`]. Both begin with the
//! version byte [`MESSAGE_VERSION`] and a type byte; [`WireMessage::decode`]
//! dispatches on them. Layouts are in `docs/PROTOCOL.md`, "1:1 sessions".

use pqc_crypto::aead::TAG_LEN;
use pqc_crypto::ml_kem::{MlKemCiphertext, MlKemLevel, MlKemPublicKey};
use pqc_crypto::sign::HYBRID_SIGNATURE_LEN;
use pqc_crypto::x25519::X25519PublicKey;

use crate::codec::{Reader, put_u32, put_vec32};
use crate::error::{ProtoError, Result};
use crate::identity::{IDENTITY_KEY_LEN, IdentityKey};
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

const FLAG_KEM_PK: u8 = 0x01;
const FLAG_KEM_CT: u8 = 0x02;

/// The authenticated (cleartext) header of a ratchet message.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    pub(crate) dh: X25519PublicKey,
    pub(crate) pn: u32,
    pub(crate) n: u32,
    pub(crate) kem_pk: Option<(u32, MlKemPublicKey)>,
    pub(crate) kem_ct: Option<(u32, MlKemCiphertext)>,
}

/// Writes `version || type || header` (everything the AEAD authenticates besides the session's transcript hash).
pub(crate) fn encode_header(
    out: &mut Vec<u8>,
    dh: &X25519PublicKey,
    pn: u32,
    n: u32,
    kem_pk: Option<(u32, &MlKemPublicKey)>,
    kem_ct: Option<(u32, &MlKemCiphertext)>,
) {
    out.extend_from_slice(&[MESSAGE_VERSION, TYPE_MESSAGE]);
    out.extend_from_slice(dh.as_bytes());
    put_u32(out, pn);
    put_u32(out, n);
    let flags = if kem_pk.is_some() { FLAG_KEM_PK } else { 0 } | if kem_ct.is_some() { FLAG_KEM_CT } else { 0 };
    out.push(flags);
    if let Some((id, pk)) = kem_pk {
        put_u32(out, id);
        out.extend_from_slice(pk.as_bytes());
    }
    if let Some((id, ct)) = kem_ct {
        put_u32(out, id);
        out.extend_from_slice(ct.as_bytes());
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
        if flags & !(FLAG_KEM_PK | FLAG_KEM_CT) != 0 {
            return Err(ProtoError::malformed(WHAT, "unknown header flags"));
        }
        let kem_pk = if flags & FLAG_KEM_PK != 0 {
            let id = r.u32()?;
            Some((id, MlKemPublicKey::from_bytes(RATCHET_KEM_LEVEL, r.bytes(RATCHET_KEM_LEVEL.public_key_len())?)?))
        } else {
            None
        };
        let kem_ct = if flags & FLAG_KEM_CT != 0 {
            let id = r.u32()?;
            Some((id, MlKemCiphertext::from_bytes(RATCHET_KEM_LEVEL, r.bytes(RATCHET_KEM_LEVEL.ciphertext_len())?)?))
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
        Ok(Self { header: Header { dh, pn, n, kem_pk, kem_ct }, header_bytes, ciphertext: ciphertext.to_vec() })
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
    pub(crate) identity: IdentityKey,
    pub(crate) identity_dh: X25519PublicKey,
    pub(crate) certificate: Vec<u8>,
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
    pub(crate) identity: &'a IdentityKey,
    pub(crate) identity_dh: &'a X25519PublicKey,
    pub(crate) certificate: &'a [u8],
    pub(crate) ek: &'a X25519PublicKey,
    pub(crate) spk_id: PreKeyId,
    pub(crate) kem: KemPreKeyRef,
    pub(crate) one_time: Option<PreKeyId>,
    pub(crate) kem_ct: &'a MlKemCiphertext,
}

impl PreKeyFields<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + IDENTITY_KEY_LEN + 32 + HYBRID_SIGNATURE_LEN + 32 + 14 + 1568);
        out.extend_from_slice(&[MESSAGE_VERSION, TYPE_PREKEY_MESSAGE]);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(self.identity_dh.as_bytes());
        out.extend_from_slice(self.certificate);
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
    /// Signatures are checked later, by [`crate::Session::accept`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "prekey message";
        let mut r = Reader::new(WHAT, bytes);
        r.version(MESSAGE_VERSION)?;
        r.expect_type(TYPE_PREKEY_MESSAGE)?;
        let identity = IdentityKey::from_bytes(r.bytes(IDENTITY_KEY_LEN)?)?;
        let identity_dh = X25519PublicKey::from_bytes(r.bytes(32)?)?;
        let certificate = r.bytes(HYBRID_SIGNATURE_LEN)?.to_vec();
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
        Ok(Self { identity, identity_dh, certificate, ek, spk_id, kem, one_time, kem_ct, prefix, message })
    }

    /// Re-encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>> {
        wrap_prekey(&self.prefix, &self.message.encode())
    }

    /// The initiator's identity key: check that you trust it for the sender.
    pub fn initiator_identity(&self) -> &IdentityKey {
        &self.identity
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
