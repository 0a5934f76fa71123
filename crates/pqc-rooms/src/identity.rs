//! Member identities: user names, MLS signature keys, key packages, and the
//! binding of the (classical) MLS signature key to the hybrid identity key.
//!
//! The room cipher suite gives post-quantum hybrid *confidentiality* (X-Wing)
//! but its MLS signatures are classical Ed25519: a quantum adversary could
//! forge MLS signatures, though not read messages. To tie each member's MLS
//! key to the user's 1:1 hybrid identity key (Ed25519 + ML-DSA-65, from
//! `pqc-crypto`), the identity key signs the MLS signature key
//! ([`Member::bind_to_identity`]) and peers check it with
//! [`verify_identity_binding`] against the identity key they verified by
//! safety number.

use std::fmt;

use openmls::prelude::{
    BasicCredential, Capabilities, CredentialWithKey, ExtensionType, KeyPackage, MlsMessageOut, SignatureScheme,
};
use openmls_traits::signatures::{Signer, SignerError};
use pqc_crypto::sign::{HybridSignature, HybridSigningKey, HybridVerifyingKey};
use rand_core::CryptoRng;
use tls_codec::Serialize as _;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::error::{RoomError, mls_err};
use crate::metadata::ROOM_METADATA_EXTENSION;
use crate::provider::RoomProvider;
use crate::suite::CIPHERSUITE;

/// Longest accepted user name in bytes.
pub const MAX_USER_NAME: usize = 255;

/// A user name as carried in the member's MLS basic credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Validates a user name: 1 to [`MAX_USER_NAME`] bytes.
    pub fn new(name: impl Into<String>) -> Result<Self, RoomError> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_USER_NAME {
            return Err(RoomError::InvalidName { what: "user name", max: MAX_USER_NAME });
        }
        Ok(Self(name))
    }

    /// The user name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads the user name from an MLS credential.
    pub(crate) fn from_credential(credential: &openmls::prelude::Credential) -> Result<Self, RoomError> {
        let basic = BasicCredential::try_from(credential.clone()).map_err(mls_err("read credential"))?;
        let name = std::str::from_utf8(basic.identity())
            .map_err(|_| RoomError::Malformed { what: "credential", reason: "user name is not UTF-8".into() })?;
        Self::new(name)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ed25519 MLS signature key. No `Debug`; the seed is zeroized on drop.
pub(crate) struct MlsSigner {
    seed: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl MlsSigner {
    pub(crate) fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        let mut public = [0u8; 32];
        libcrux_ed25519::secret_to_public(&mut public, &seed);
        Self { seed, public }
    }
    pub(crate) fn seed(&self) -> &[u8; 32] {
        &self.seed
    }
    pub(crate) fn public(&self) -> [u8; 32] {
        self.public
    }
    pub(crate) fn duplicate(&self) -> Self {
        Self::from_seed(*self.seed)
    }
}

impl Signer for MlsSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        libcrux_ed25519::sign(payload, &self.seed).map(|s| s.to_vec()).map_err(|_| SignerError::SigningError)
    }
    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The leaf capabilities every pqc-chat client advertises: the X-Wing suite and
/// the room metadata extension.
pub(crate) fn capabilities() -> Capabilities {
    Capabilities::builder()
        .ciphersuites(vec![CIPHERSUITE])
        .extensions(vec![ExtensionType::Unknown(ROOM_METADATA_EXTENSION)])
        .build()
}

pub(crate) fn credential_with_key(user: &UserId, signer: &MlsSigner) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(user.as_str().as_bytes().to_vec()).into(),
        signature_key: signer.public().to_vec().into(),
    }
}

const MEMBER_STATE_MAGIC: &[u8; 4] = b"PQMM";
const MEMBER_STATE_VERSION: u16 = 2;
const BINDING_CONTEXT: &[u8] = b"pqc-chat/mls-signature-key/v1";

/// A member identity: a user name (MLS basic credential), an Ed25519 MLS
/// signature key, and the private halves of the key packages it published.
///
/// One `Member` per user and device. Key packages are one-time (like
/// one-time prekeys): publish a batch with [`Member::generate_key_packages`],
/// and persist the member with [`Member::export_state`] afterwards, because the
/// private keys needed to accept a Welcome live here.
pub struct Member {
    user: UserId,
    signer: MlsSigner,
    provider: RoomProvider,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Member {
    /// Creates a member from a user name and a 32-byte Ed25519 seed for the
    /// MLS signature key (the caller supplies the randomness, or derives the
    /// seed from its own key store).
    pub fn new(user: impl Into<String>, signature_seed: [u8; 32]) -> Result<Self, RoomError> {
        Ok(Self {
            user: UserId::new(user)?,
            signer: MlsSigner::from_seed(signature_seed),
            provider: RoomProvider::new()?,
        })
    }

    /// The user name.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The Ed25519 MLS signature public key.
    pub fn signature_public_key(&self) -> [u8; 32] {
        self.signer.public()
    }

    /// Generates `n` one-time key packages, each serialized as an MLS message
    /// (`MLSMessage` with a `KeyPackage` body), to publish to the server.
    pub fn generate_key_packages(&mut self, n: usize) -> Result<Vec<Vec<u8>>, RoomError> {
        let cwk = credential_with_key(&self.user, &self.signer);
        (0..n)
            .map(|_| {
                let bundle = KeyPackage::builder()
                    .leaf_node_capabilities(capabilities())
                    .build(CIPHERSUITE, &self.provider, &self.signer, cwk.clone())
                    .map_err(mls_err("key package"))?;
                MlsMessageOut::from(bundle.key_package().clone())
                    .tls_serialize_detached()
                    .map_err(mls_err("encode key package"))
            })
            .collect()
    }

    /// Generates `n` one-time key packages ready to publish, each carrying the
    /// identity binding ([`Member::bind_to_identity`]) that an inviter checks
    /// with [`crate::Room::add_published`]: `u32 len | key package | u32 len | binding`.
    pub fn publishable_key_packages<R: CryptoRng + ?Sized>(
        &mut self,
        n: usize,
        identity: &HybridSigningKey,
        rng: &mut R,
    ) -> Result<Vec<Vec<u8>>, RoomError> {
        let binding = self.bind_to_identity(identity, rng)?;
        Ok(self
            .generate_key_packages(n)?
            .into_iter()
            .map(|kp| {
                let mut w = Writer::default();
                w.bytes(&kp);
                w.bytes(&binding);
                w.0
            })
            .collect())
    }

    /// Signs this member's MLS signature key and user name with the user's
    /// hybrid identity key. The result travels with (or beside) key packages;
    /// peers check it with [`verify_identity_binding`].
    pub fn bind_to_identity<R: CryptoRng + ?Sized>(
        &self,
        identity: &HybridSigningKey,
        rng: &mut R,
    ) -> Result<Vec<u8>, RoomError> {
        let msg = binding_message(&self.user, &self.signer.public());
        Ok(identity.sign(&msg, BINDING_CONTEXT, rng)?.to_bytes())
    }

    /// Saves the member (user name, signature seed, unused key packages) as a
    /// versioned byte string. It contains secrets: encrypt it at rest.
    pub fn export_state(&self) -> Result<Vec<u8>, RoomError> {
        let mut w = Writer::default();
        w.raw(MEMBER_STATE_MAGIC);
        w.u16(MEMBER_STATE_VERSION);
        w.bytes(self.user.as_str().as_bytes());
        w.raw(self.signer.seed());
        self.provider.write_storage(&mut w)?;
        Ok(crate::codec::append_digest(w.0))
    }

    /// Restores a member saved by [`Member::export_state`] (digest-checked
    /// like [`crate::Room::import_state`]).
    pub fn import_state(bytes: &[u8]) -> Result<Self, RoomError> {
        let bytes = crate::codec::check_digest(bytes, "member state")?;
        let mut r = Reader::new(bytes, "member state");
        if r.take(4)? != MEMBER_STATE_MAGIC {
            return Err(RoomError::CorruptState("not a member state"));
        }
        let version = r.u16()?;
        if version != MEMBER_STATE_VERSION {
            return Err(RoomError::UnsupportedStateVersion(version));
        }
        let user = UserId::new(r.string()?)?;
        let signer = MlsSigner::from_seed(r.array()?);
        let provider = RoomProvider::read_storage(&mut r)?;
        r.finish()?;
        Ok(Self { user, signer, provider })
    }

    pub(crate) fn signer(&self) -> &MlsSigner {
        &self.signer
    }
    pub(crate) fn provider(&self) -> &RoomProvider {
        &self.provider
    }
}

fn binding_message(user: &UserId, mls_key: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(user.as_str().as_bytes());
    w.raw(mls_key);
    w.0
}

/// Checks that `identity` signed `mls_signature_key` for `user` (see
/// [`Member::bind_to_identity`]).
pub fn verify_identity_binding(
    identity: &HybridVerifyingKey,
    user: &UserId,
    mls_signature_key: &[u8; 32],
    binding: &[u8],
) -> Result<(), RoomError> {
    let sig = HybridSignature::from_bytes(binding).map_err(|_| RoomError::BadBinding)?;
    identity.verify(&binding_message(user, mls_signature_key), BINDING_CONTEXT, &sig).map_err(|_| RoomError::BadBinding)
}
