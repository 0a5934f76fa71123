//! The room's cipher suite, recorded in the room metadata so it can be upgraded.

use openmls::prelude::Ciphersuite;

use crate::error::RoomError;

/// The MLS cipher suite a room uses, as recorded in its metadata.
///
/// The code point is the 16-bit MLS cipher suite identifier; the version
/// string names the draft the code point comes from. **The X-Wing code points
/// are drafts** (draft-ietf-mls-pq-ciphersuites, X-Wing draft 06 inside
/// OpenMLS 0.9): a later OpenMLS may change the wire format behind the same
/// number, which is why the version string is stored with it. A room created
/// under one suite is upgraded by creating a successor room (MLS ReInit) and
/// comparing this record, never by silently reinterpreting the code point.
///
/// Confidentiality of the suite below is post-quantum hybrid (X-Wing =
/// ML-KEM-768 + X25519); its MLS signatures are classical Ed25519. See
/// [`crate::identity`] for binding the Ed25519 key to the hybrid identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSuite {
    /// MLS cipher suite code point.
    pub code_point: u16,
    /// Which (draft) specification the code point refers to.
    pub version: String,
}

/// Code point of `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519` (draft, provisional).
pub const XWING_CODE_POINT: u16 = 0x004D;
/// Version tag stored with [`XWING_CODE_POINT`].
pub const XWING_VERSION: &str = "draft-ietf-mls-pq-ciphersuites/xwing-06/openmls-0.9";

impl RoomSuite {
    /// The suite new rooms use: X-Wing KEM, ChaCha20-Poly1305, SHA-256, Ed25519.
    pub fn xwing() -> Self {
        Self { code_point: XWING_CODE_POINT, version: XWING_VERSION.to_owned() }
    }

    /// The OpenMLS cipher suite for this record, if this build supports it.
    pub fn ciphersuite(&self) -> Result<Ciphersuite, RoomError> {
        match self.code_point {
            XWING_CODE_POINT => Ok(Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519),
            other => Err(RoomError::UnsupportedSuite(other)),
        }
    }
}

impl Default for RoomSuite {
    fn default() -> Self {
        Self::xwing()
    }
}

/// The one cipher suite this build creates rooms and key packages with.
pub(crate) const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519;
