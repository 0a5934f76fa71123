//! Prekeys: generation by their owner, the opaque signed blobs the server
//! stores, the verified [`PreKeyBundle`] a fetcher builds from them, and the
//! [`PreKeyStore`] trait through which a responder finds (and consumes) its
//! secrets.
//!
//! # Choice of KEM
//!
//! KEM prekeys (the last-resort one inside the signed blob and the one-time
//! ones) are **plain ML-KEM-1024**. The X25519 half of a hybrid KEM would add
//! nothing here: the handshake already mixes three or four X25519 agreements,
//! so the session key stays secret while either X25519 or ML-KEM holds.
//!
//! Every blob is signed by the owner's identity key with its own context
//! string, so a signature over one kind of blob can never pass as another.

use std::collections::HashMap;

use pqc_crypto::ml_kem::{MlKemLevel, MlKemPublicKey, MlKemSecretKey};
use pqc_crypto::rng::CryptoRng;
use pqc_crypto::sign::HYBRID_SIGNATURE_LEN;
use pqc_crypto::x25519::{X25519KeyPair, X25519PublicKey, X25519Secret};
use zeroize::Zeroizing;

use crate::codec::{Reader, put_u32};
use crate::error::{ProtoError, Result};
use crate::identity::{IdentityKey, IdentityKeyPair};
use crate::ids::PreKeyId;

/// Version byte of every prekey blob.
pub const PREKEY_BLOB_VERSION: u8 = 1;
/// Type byte of the signed prekeys blob.
pub const TYPE_SIGNED_PREKEYS: u8 = 0x10;
/// Type byte of a one-time X25519 prekey blob.
pub const TYPE_ONE_TIME_PREKEY: u8 = 0x11;
/// Type byte of a one-time ML-KEM prekey blob.
pub const TYPE_ONE_TIME_KEM_PREKEY: u8 = 0x12;
/// Signature context of the signed prekeys blob.
pub const CTX_SIGNED_PREKEYS: &[u8] = b"pqc-chat/v1/signed-prekeys";
/// Signature context of a one-time X25519 prekey blob.
pub const CTX_ONE_TIME_PREKEY: &[u8] = b"pqc-chat/v1/one-time-prekey";
/// Signature context of a one-time ML-KEM prekey blob.
pub const CTX_ONE_TIME_KEM_PREKEY: &[u8] = b"pqc-chat/v1/one-time-kem-prekey";
/// The ML-KEM parameter set of all KEM prekeys.
pub const PREKEY_KEM_LEVEL: MlKemLevel = MlKemLevel::MlKem1024;
/// Version byte of [`SignedPreKeySecrets::to_bytes`].
pub const SIGNED_PREKEY_SECRETS_VERSION: u8 = 1;

/// The secrets behind one signed prekeys blob: the signed X25519 prekey and
/// the last-resort ML-KEM-1024 prekey. Kept by the owner until the blob is
/// replaced (and a while after, for messages in flight). No `Debug`; wiped on drop.
#[derive(Clone)]
pub struct SignedPreKeySecrets {
    /// Id of the signed X25519 prekey.
    pub spk_id: PreKeyId,
    /// The signed X25519 prekey.
    pub spk: X25519Secret,
    /// Id of the last-resort ML-KEM prekey.
    pub kem_id: PreKeyId,
    /// The last-resort ML-KEM-1024 decapsulation key.
    pub kem: MlKemSecretKey,
}

impl SignedPreKeySecrets {
    /// Storage encoding: `0x01 || spk_id u32 || spk (32) || kem_id u32 || ML-KEM-1024 secret (3168)`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(1 + 4 + 32 + 4 + PREKEY_KEM_LEVEL.secret_key_len()));
        out.push(SIGNED_PREKEY_SECRETS_VERSION);
        put_u32(&mut out, self.spk_id.0);
        out.extend_from_slice(self.spk.to_bytes().as_ref());
        put_u32(&mut out, self.kem_id.0);
        out.extend_from_slice(self.kem.as_bytes());
        out
    }

    /// Restores from [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new("signed prekey secrets", bytes);
        r.version(SIGNED_PREKEY_SECRETS_VERSION)?;
        let spk_id = PreKeyId(r.u32()?);
        let spk = X25519Secret::from_bytes(r.bytes(32)?)?;
        let kem_id = PreKeyId(r.u32()?);
        let kem = MlKemSecretKey::from_bytes(PREKEY_KEM_LEVEL, r.bytes(PREKEY_KEM_LEVEL.secret_key_len())?)?;
        r.finish()?;
        Ok(Self { spk_id, spk, kem_id, kem })
    }
}

/// Generates a signed X25519 prekey and a last-resort ML-KEM-1024 prekey,
/// and the blob to upload (see `docs/PROTOCOL.md`, "Signed prekeys blob").
pub fn generate_signed_prekeys<R: CryptoRng + ?Sized>(
    identity: &IdentityKeyPair,
    spk_id: PreKeyId,
    kem_id: PreKeyId,
    rng: &mut R,
) -> Result<(SignedPreKeySecrets, Vec<u8>)> {
    let spk = X25519KeyPair::generate(rng)?;
    let (kem, kem_pk) = MlKemSecretKey::generate(PREKEY_KEM_LEVEL, rng)?;
    let mut blob = Vec::with_capacity(2 + 32 + 4 + 32 + 4 + kem_pk.as_bytes().len() + HYBRID_SIGNATURE_LEN);
    blob.extend_from_slice(&[PREKEY_BLOB_VERSION, TYPE_SIGNED_PREKEYS]);
    blob.extend_from_slice(identity.identity_dh_public().as_bytes());
    put_u32(&mut blob, spk_id.0);
    blob.extend_from_slice(spk.public.as_bytes());
    put_u32(&mut blob, kem_id.0);
    blob.extend_from_slice(kem_pk.as_bytes());
    let sig = identity.sign(&blob, CTX_SIGNED_PREKEYS, rng)?;
    blob.extend_from_slice(&sig);
    Ok((SignedPreKeySecrets { spk_id, spk: spk.secret, kem_id, kem }, blob))
}

fn id_range(first_id: PreKeyId, n: u32) -> Result<impl Iterator<Item = PreKeyId>> {
    first_id.0.checked_add(n).ok_or(ProtoError::malformed("prekey id range", "ids would overflow u32"))?;
    Ok((0..n).map(move |i| PreKeyId(first_id.0.wrapping_add(i))))
}

/// Secrets to keep and `(id, blob)` pairs to upload, as returned by the
/// one-time prekey generators.
pub type Generated<S> = (Vec<(PreKeyId, S)>, Vec<(PreKeyId, Vec<u8>)>);

/// Generates `n` one-time X25519 prekeys with ids `first_id, first_id + 1, …`.
pub fn generate_one_time_prekeys<R: CryptoRng + ?Sized>(
    identity: &IdentityKeyPair,
    first_id: PreKeyId,
    n: u32,
    rng: &mut R,
) -> Result<Generated<X25519Secret>> {
    let mut secrets = Vec::new();
    let mut blobs = Vec::new();
    for id in id_range(first_id, n)? {
        let kp = X25519KeyPair::generate(rng)?;
        let mut blob = Vec::with_capacity(2 + 4 + 32 + HYBRID_SIGNATURE_LEN);
        blob.extend_from_slice(&[PREKEY_BLOB_VERSION, TYPE_ONE_TIME_PREKEY]);
        put_u32(&mut blob, id.0);
        blob.extend_from_slice(kp.public.as_bytes());
        let sig = identity.sign(&blob, CTX_ONE_TIME_PREKEY, rng)?;
        blob.extend_from_slice(&sig);
        secrets.push((id, kp.secret));
        blobs.push((id, blob));
    }
    Ok((secrets, blobs))
}

/// Generates `n` one-time ML-KEM-1024 prekeys with ids `first_id, first_id + 1, …`.
pub fn generate_one_time_kem_prekeys<R: CryptoRng + ?Sized>(
    identity: &IdentityKeyPair,
    first_id: PreKeyId,
    n: u32,
    rng: &mut R,
) -> Result<Generated<MlKemSecretKey>> {
    let mut secrets = Vec::new();
    let mut blobs = Vec::new();
    for id in id_range(first_id, n)? {
        let (sk, pk) = MlKemSecretKey::generate(PREKEY_KEM_LEVEL, rng)?;
        let mut blob = Vec::with_capacity(2 + 4 + pk.as_bytes().len() + HYBRID_SIGNATURE_LEN);
        blob.extend_from_slice(&[PREKEY_BLOB_VERSION, TYPE_ONE_TIME_KEM_PREKEY]);
        put_u32(&mut blob, id.0);
        blob.extend_from_slice(pk.as_bytes());
        let sig = identity.sign(&blob, CTX_ONE_TIME_KEM_PREKEY, rng)?;
        blob.extend_from_slice(&sig);
        secrets.push((id, sk));
        blobs.push((id, blob));
    }
    Ok((secrets, blobs))
}

/// The public content of a signed prekeys blob, before its signature is checked.
pub(crate) struct SignedPreKeysBlob<'a> {
    pub(crate) identity_dh: X25519PublicKey,
    pub(crate) spk_id: PreKeyId,
    pub(crate) spk: X25519PublicKey,
    pub(crate) kem_id: PreKeyId,
    pub(crate) kem: MlKemPublicKey,
    pub(crate) signed: &'a [u8],
    pub(crate) signature: &'a [u8],
}

/// Decodes a signed prekeys blob without checking its signature.
pub(crate) fn decode_signed_prekeys(bytes: &[u8]) -> Result<SignedPreKeysBlob<'_>> {
    let mut r = Reader::new("signed prekeys blob", bytes);
    r.version(PREKEY_BLOB_VERSION)?;
    r.expect_type(TYPE_SIGNED_PREKEYS)?;
    let identity_dh = X25519PublicKey::from_bytes(r.bytes(32)?)?;
    let spk_id = PreKeyId(r.u32()?);
    let spk = X25519PublicKey::from_bytes(r.bytes(32)?)?;
    let kem_id = PreKeyId(r.u32()?);
    let kem = MlKemPublicKey::from_bytes(PREKEY_KEM_LEVEL, r.bytes(PREKEY_KEM_LEVEL.public_key_len())?)?;
    let signed_len = bytes.len().saturating_sub(r.remaining());
    let signature = r.bytes(HYBRID_SIGNATURE_LEN)?;
    r.finish()?;
    let signed = bytes.get(..signed_len).ok_or(ProtoError::Truncated { what: "signed prekeys blob" })?;
    Ok(SignedPreKeysBlob { identity_dh, spk_id, spk, kem_id, kem, signed, signature })
}

/// A decoded one-time blob: `(id, key bytes, signed part, signature)`.
type OneTimeBlob<'a> = (PreKeyId, &'a [u8], &'a [u8], &'a [u8]);

fn decode_one_time<'a>(what: &'static str, ty: u8, key_len: usize, bytes: &'a [u8]) -> Result<OneTimeBlob<'a>> {
    let mut r = Reader::new(what, bytes);
    r.version(PREKEY_BLOB_VERSION)?;
    r.expect_type(ty)?;
    let id = PreKeyId(r.u32()?);
    let key = r.bytes(key_len)?;
    let signed_len = bytes.len().saturating_sub(r.remaining());
    let signature = r.bytes(HYBRID_SIGNATURE_LEN)?;
    r.finish()?;
    let signed = bytes.get(..signed_len).ok_or(ProtoError::Truncated { what })?;
    Ok((id, key, signed, signature))
}

/// Decodes a one-time X25519 prekey blob without checking its signature.
pub(crate) fn decode_one_time_prekey(bytes: &[u8]) -> Result<(PreKeyId, X25519PublicKey, &[u8], &[u8])> {
    let (id, key, signed, sig) = decode_one_time("one-time prekey blob", TYPE_ONE_TIME_PREKEY, 32, bytes)?;
    Ok((id, X25519PublicKey::from_bytes(key)?, signed, sig))
}

/// Decodes a one-time ML-KEM prekey blob without checking its signature.
pub(crate) fn decode_one_time_kem_prekey(bytes: &[u8]) -> Result<(PreKeyId, MlKemPublicKey, &[u8], &[u8])> {
    let (id, key, signed, sig) = decode_one_time(
        "one-time KEM prekey blob",
        TYPE_ONE_TIME_KEM_PREKEY,
        PREKEY_KEM_LEVEL.public_key_len(),
        bytes,
    )?;
    Ok((id, MlKemPublicKey::from_bytes(PREKEY_KEM_LEVEL, key)?, signed, sig))
}

/// A peer's prekeys, every signature verified: what an initiator needs to
/// start a session.
#[derive(Clone, Debug)]
pub struct PreKeyBundle {
    pub(crate) identity: IdentityKey,
    pub(crate) identity_dh: X25519PublicKey,
    pub(crate) spk_id: PreKeyId,
    pub(crate) spk: X25519PublicKey,
    pub(crate) kem_id: PreKeyId,
    pub(crate) kem: MlKemPublicKey,
    pub(crate) one_time: Option<(PreKeyId, X25519PublicKey)>,
    pub(crate) one_time_kem: Option<(PreKeyId, MlKemPublicKey)>,
}

impl PreKeyBundle {
    /// Builds a bundle from what the server hands out: the owner's identity key
    /// (`HybridVerifyingKey::to_bytes()`), its signed prekeys blob, and
    /// optionally one one-time X25519 prekey blob and one one-time ML-KEM
    /// prekey blob. Every signature is verified against the identity key.
    ///
    /// The caller must still decide whether it trusts `identity` for this user
    /// (safety numbers); the server could substitute a whole bundle.
    pub fn from_parts(
        identity_key: &[u8],
        signed_prekeys: &[u8],
        one_time_prekey: Option<&[u8]>,
        one_time_kem_prekey: Option<&[u8]>,
    ) -> Result<Self> {
        let identity = IdentityKey::from_bytes(identity_key)?;
        let s = decode_signed_prekeys(signed_prekeys)?;
        identity.verify("signed prekeys blob", s.signed, CTX_SIGNED_PREKEYS, s.signature)?;
        let one_time = match one_time_prekey {
            Some(b) => {
                let (id, key, signed, sig) = decode_one_time_prekey(b)?;
                identity.verify("one-time prekey blob", signed, CTX_ONE_TIME_PREKEY, sig)?;
                Some((id, key))
            }
            None => None,
        };
        let one_time_kem = match one_time_kem_prekey {
            Some(b) => {
                let (id, key, signed, sig) = decode_one_time_kem_prekey(b)?;
                identity.verify("one-time KEM prekey blob", signed, CTX_ONE_TIME_KEM_PREKEY, sig)?;
                Some((id, key))
            }
            None => None,
        };
        Ok(Self {
            identity,
            identity_dh: s.identity_dh,
            spk_id: s.spk_id,
            spk: s.spk,
            kem_id: s.kem_id,
            kem: s.kem,
            one_time,
            one_time_kem,
        })
    }

    /// The owner's identity key.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity
    }

    /// Id of the signed X25519 prekey.
    pub fn signed_prekey_id(&self) -> PreKeyId {
        self.spk_id
    }

    /// Id of the one-time X25519 prekey, if the bundle has one.
    pub fn one_time_prekey_id(&self) -> Option<PreKeyId> {
        self.one_time.as_ref().map(|(id, _)| *id)
    }

    /// Id of the one-time ML-KEM prekey, if the bundle has one.
    pub fn one_time_kem_prekey_id(&self) -> Option<PreKeyId> {
        self.one_time_kem.as_ref().map(|(id, _)| *id)
    }
}

/// Where a responder keeps its prekey secrets.
///
/// One-time prekeys are consumed exactly once: [`crate::Session::accept`]
/// looks them up, completes the handshake, and only when the first message
/// has authenticated calls the `remove_*` method. A second prekey message
/// naming the same one-time id then finds nothing and is rejected with
/// [`ProtoError::OneTimePreKeyUnavailable`]. Implementations backed by a
/// database should make the removal durable before the session is used.
pub trait PreKeyStore {
    /// The secrets of the signed prekeys blob whose signed X25519 prekey has id `spk_id`.
    fn signed_prekeys(&self, spk_id: PreKeyId) -> Option<SignedPreKeySecrets>;
    /// The one-time X25519 prekey `id`, if still unused.
    fn one_time_prekey(&self, id: PreKeyId) -> Option<X25519Secret>;
    /// The one-time ML-KEM prekey `id`, if still unused.
    fn one_time_kem_prekey(&self, id: PreKeyId) -> Option<MlKemSecretKey>;
    /// Deletes the one-time X25519 prekey `id`.
    fn remove_one_time_prekey(&mut self, id: PreKeyId);
    /// Deletes the one-time ML-KEM prekey `id`.
    fn remove_one_time_kem_prekey(&mut self, id: PreKeyId);
}

/// A [`PreKeyStore`] in memory, for tests, fuzzers and benches.
#[derive(Default)]
pub struct InMemoryPreKeyStore {
    signed: HashMap<PreKeyId, SignedPreKeySecrets>,
    one_time: HashMap<PreKeyId, X25519Secret>,
    one_time_kem: HashMap<PreKeyId, MlKemSecretKey>,
}

impl InMemoryPreKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps signed prekey secrets (indexed by their `spk_id`).
    pub fn add_signed_prekeys(&mut self, secrets: SignedPreKeySecrets) {
        self.signed.insert(secrets.spk_id, secrets);
    }

    /// Keeps one-time X25519 prekeys.
    pub fn add_one_time_prekeys(&mut self, keys: impl IntoIterator<Item = (PreKeyId, X25519Secret)>) {
        self.one_time.extend(keys);
    }

    /// Keeps one-time ML-KEM prekeys.
    pub fn add_one_time_kem_prekeys(&mut self, keys: impl IntoIterator<Item = (PreKeyId, MlKemSecretKey)>) {
        self.one_time_kem.extend(keys);
    }

    /// How many one-time X25519 and ML-KEM prekeys are left.
    pub fn one_time_counts(&self) -> (usize, usize) {
        (self.one_time.len(), self.one_time_kem.len())
    }
}

impl PreKeyStore for InMemoryPreKeyStore {
    fn signed_prekeys(&self, spk_id: PreKeyId) -> Option<SignedPreKeySecrets> {
        self.signed.get(&spk_id).cloned()
    }

    fn one_time_prekey(&self, id: PreKeyId) -> Option<X25519Secret> {
        self.one_time.get(&id).cloned()
    }

    fn one_time_kem_prekey(&self, id: PreKeyId) -> Option<MlKemSecretKey> {
        self.one_time_kem.get(&id).cloned()
    }

    fn remove_one_time_prekey(&mut self, id: PreKeyId) {
        self.one_time.remove(&id);
    }

    fn remove_one_time_kem_prekey(&mut self, id: PreKeyId) {
        self.one_time_kem.remove(&id);
    }
}
