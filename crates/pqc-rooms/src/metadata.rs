//! The room's end-to-end metadata record (name, participant limit, cipher
//! suite, access key), carried in an MLS group-context extension so every
//! member agrees on it and only members can read it; and the sealing of the
//! GroupInfo the server keeps for external joins.

use std::fmt;

use openmls::prelude::{Extension, Extensions, GroupContext, UnknownExtension};
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{AeadType, HashType};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::codec::{Reader, Writer};
use crate::error::{RoomError, mls_err};
use crate::provider::RoomProvider;
use crate::suite::RoomSuite;

/// Extension type of the metadata record (MLS private-use range 0xF000..).
pub const ROOM_METADATA_EXTENSION: u16 = 0xF0C1;
const METADATA_VERSION: u8 = 1;
/// Longest accepted room name in bytes.
pub const MAX_ROOM_NAME: usize = 255;

/// Key that seals the room's GroupInfo for the server. Members share it with
/// people they invite to join externally (for instance inside a 1:1 message).
/// No `Debug`; zeroized on drop.
#[derive(Clone, ZeroizeOnDrop)]
pub struct RoomAccessKey([u8; 32]);

impl RoomAccessKey {
    /// Wraps 32 bytes received from an inviter.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The raw key, to hand to an invitee over an end-to-end channel.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }
}

impl fmt::Debug for RoomAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomAccessKey(<redacted>)")
    }
}

/// The metadata every member holds about a room.
#[derive(Clone, Debug)]
pub(crate) struct RoomMetadata {
    pub(crate) name: String,
    pub(crate) max_participants: u32,
    pub(crate) suite: RoomSuite,
    pub(crate) access_key: RoomAccessKey,
}

impl RoomMetadata {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(METADATA_VERSION);
        w.bytes(self.name.as_bytes());
        w.u32(self.max_participants);
        w.u16(self.suite.code_point);
        w.bytes(self.suite.version.as_bytes());
        w.raw(&self.access_key.0);
        w.0
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, RoomError> {
        let mut r = Reader::new(bytes, "room metadata");
        if r.u8()? != METADATA_VERSION {
            return Err(RoomError::Metadata("unknown metadata version; upgrade the client"));
        }
        let name = r.string()?;
        let max_participants = r.u32()?;
        let code_point = r.u16()?;
        let version = r.string()?;
        let access_key = RoomAccessKey(r.array()?);
        r.finish()?;
        Ok(Self { name, max_participants, suite: RoomSuite { code_point, version }, access_key })
    }

    pub(crate) fn to_extension(&self) -> Extension {
        Extension::Unknown(ROOM_METADATA_EXTENSION, UnknownExtension(self.encode()))
    }

    pub(crate) fn from_extensions(ext: &Extensions<GroupContext>) -> Result<Self, RoomError> {
        let raw = ext.unknown(ROOM_METADATA_EXTENSION).ok_or(RoomError::Metadata("not a pqc-chat room"))?;
        Self::decode(&raw.0)
    }
}

pub(crate) fn validate_room_name(name: &str) -> Result<(), RoomError> {
    if name.is_empty() || name.len() > MAX_ROOM_NAME {
        return Err(RoomError::InvalidName { what: "room name", max: MAX_ROOM_NAME });
    }
    Ok(())
}

const SEAL_MAGIC: &[u8; 4] = b"PQGI";
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

fn seal_key(provider: &RoomProvider, key: &RoomAccessKey, room_id: &[u8]) -> Result<Zeroizing<Vec<u8>>, RoomError> {
    let crypto = provider.crypto();
    let prk =
        crypto.hkdf_extract(HashType::Sha2_256, b"pqc-chat/room-group-info/v1", &key.0).map_err(mls_err("hkdf"))?;
    let okm = crypto.hkdf_expand(HashType::Sha2_256, prk.as_slice(), room_id, 32).map_err(mls_err("hkdf"))?;
    Ok(Zeroizing::new(okm.as_slice().to_vec()))
}

fn seal_header(room_id: &[u8]) -> Writer {
    let mut w = Writer::default();
    w.raw(SEAL_MAGIC);
    w.u8(SEAL_VERSION);
    w.bytes(room_id);
    w
}

/// `"PQGI" | 1 | len32 room_id | nonce(12) | ChaCha20-Poly1305(GroupInfo)`,
/// the header being the associated data.
pub(crate) fn seal_group_info(
    provider: &RoomProvider,
    key: &RoomAccessKey,
    room_id: &[u8],
    group_info: &[u8],
) -> Result<Vec<u8>, RoomError> {
    let k = seal_key(provider, key, room_id)?;
    let nonce: [u8; NONCE_LEN] = provider.rand().random_array().map_err(mls_err("random"))?;
    let mut w = seal_header(room_id);
    let ct = provider
        .crypto()
        .aead_encrypt(AeadType::ChaCha20Poly1305, &k, group_info, &nonce, &w.0)
        .map_err(mls_err("seal group info"))?;
    w.raw(&nonce);
    w.raw(&ct);
    Ok(w.0)
}

/// Opens what [`seal_group_info`] produced; returns `(room_id, group_info)`.
pub(crate) fn open_group_info(
    provider: &RoomProvider,
    key: &RoomAccessKey,
    sealed: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), RoomError> {
    let mut r = Reader::new(sealed, "sealed group info");
    if r.take(4)? != SEAL_MAGIC {
        return Err(RoomError::Malformed { what: "sealed group info", reason: "bad magic".into() });
    }
    let version = r.u8()?;
    if version != SEAL_VERSION {
        return Err(RoomError::Malformed { what: "sealed group info", reason: format!("unknown version {version}") });
    }
    let room_id = r.bytes()?.to_vec();
    let nonce: [u8; NONCE_LEN] = r.array()?;
    let ct = r.remaining();
    let k = seal_key(provider, key, &room_id)?;
    let aad = seal_header(&room_id).0;
    let pt = provider
        .crypto()
        .aead_decrypt(AeadType::ChaCha20Poly1305, &k, ct, &nonce, &aad)
        .map_err(|_| RoomError::GroupInfoSeal)?;
    Ok((room_id, pt))
}
