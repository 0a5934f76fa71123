//! Device identities.
//!
//! An identity is a hybrid Ed25519 + ML-DSA-65 signing key. Because a signing
//! key cannot do Diffie-Hellman, each identity also holds a long-term X25519
//! *identity-DH* key, certified once by the signing key (context
//! [`CTX_IDENTITY_DH`]). The certificate travels in every prekey message so a
//! responder can check that the initiator's DH key belongs to its identity.

use pqc_crypto::rng::CryptoRng;
use pqc_crypto::sign::{HYBRID_PUBLIC_LEN, HYBRID_SECRET_LEN, HYBRID_SIGNATURE_LEN, HybridSignature};
use pqc_crypto::sign::{HybridSigningKey, HybridVerifyingKey};
use pqc_crypto::x25519::{X25519KeyPair, X25519PublicKey, X25519Secret};
use zeroize::Zeroizing;

use crate::codec::Reader;
use crate::error::{ProtoError, Result};

/// Signature context of the identity-DH certificate.
pub const CTX_IDENTITY_DH: &[u8] = b"pqc-chat/v1/identity-dh";
/// Encoding version of a stored [`IdentityKeyPair`].
pub const IDENTITY_KEY_PAIR_VERSION: u8 = 1;
/// Length of an encoded [`IdentityKey`].
pub const IDENTITY_KEY_LEN: usize = HYBRID_PUBLIC_LEN;

/// A device's public identity key (Ed25519 + ML-DSA-65). This is what users
/// compare as a safety number.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IdentityKey(HybridVerifyingKey);

impl IdentityKey {
    /// Parses `HybridVerifyingKey::to_bytes()` output.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Self(HybridVerifyingKey::from_bytes(bytes)?))
    }

    /// The encoding ([`IDENTITY_KEY_LEN`] bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// The underlying hybrid verifying key.
    pub fn verifying_key(&self) -> &HybridVerifyingKey {
        &self.0
    }

    /// Verifies a signature made by this identity, naming `what` in the error.
    pub(crate) fn verify(&self, what: &'static str, msg: &[u8], ctx: &[u8], sig: &[u8]) -> Result<()> {
        let sig = HybridSignature::from_bytes(sig).map_err(|_| ProtoError::BadSignature { what })?;
        self.0.verify(msg, ctx, &sig).map_err(|_| ProtoError::BadSignature { what })
    }

    /// Checks an identity-DH certificate.
    pub(crate) fn verify_identity_dh(&self, dh: &X25519PublicKey, certificate: &[u8]) -> Result<()> {
        self.verify("identity-DH certificate", dh.as_bytes(), CTX_IDENTITY_DH, certificate)
    }
}

/// A device's identity: the signing key, the identity-DH key and its
/// certificate. No `Debug`; the secret parts wipe themselves on drop.
pub struct IdentityKeyPair {
    signing: HybridSigningKey,
    dh: X25519KeyPair,
    dh_certificate: Vec<u8>,
    public: IdentityKey,
}

impl IdentityKeyPair {
    /// A fresh identity.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Result<Self> {
        let signing = HybridSigningKey::generate(rng)?;
        let dh = X25519KeyPair::generate(rng)?;
        let dh_certificate = signing.sign(dh.public.as_bytes(), CTX_IDENTITY_DH, rng)?.to_bytes();
        let public = IdentityKey(signing.verifying_key().clone());
        Ok(Self { signing, dh, dh_certificate, public })
    }

    /// The public identity key.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.public
    }

    /// The public identity-DH key.
    pub fn identity_dh_public(&self) -> &X25519PublicKey {
        &self.dh.public
    }

    pub(crate) fn identity_dh_secret(&self) -> &X25519Secret {
        &self.dh.secret
    }

    pub(crate) fn identity_dh_certificate(&self) -> &[u8] {
        &self.dh_certificate
    }

    pub fn sign<R: CryptoRng + ?Sized>(&self, msg: &[u8], ctx: &[u8], rng: &mut R) -> Result<Vec<u8>> {
        Ok(self.signing.sign(msg, ctx, rng)?.to_bytes())
    }

    /// The secret encoding, for encrypted storage only:
    /// `0x01 || signing key (66) || identity-DH secret (32) || certificate (3375)`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(1 + HYBRID_SECRET_LEN + 32 + HYBRID_SIGNATURE_LEN));
        out.push(IDENTITY_KEY_PAIR_VERSION);
        out.extend_from_slice(&self.signing.to_bytes());
        out.extend_from_slice(self.dh.secret.to_bytes().as_ref());
        out.extend_from_slice(&self.dh_certificate);
        out
    }

    /// Restores an identity from [`Self::to_bytes`], re-checking the certificate.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new("identity key pair", bytes);
        r.version(IDENTITY_KEY_PAIR_VERSION)?;
        let signing = HybridSigningKey::from_bytes(r.bytes(HYBRID_SECRET_LEN)?)?;
        let dh = X25519KeyPair::from_secret(X25519Secret::from_bytes(r.bytes(32)?)?)?;
        let dh_certificate = r.bytes(HYBRID_SIGNATURE_LEN)?.to_vec();
        r.finish()?;
        let public = IdentityKey(signing.verifying_key().clone());
        public.verify_identity_dh(&dh.public, &dh_certificate)?;
        Ok(Self { signing, dh, dh_certificate, public })
    }
}
