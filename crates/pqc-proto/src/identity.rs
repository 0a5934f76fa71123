//! Device identities.
//!
//! An identity is a hybrid Ed25519 + ML-DSA-65 signing key. Because a signing
//! key cannot do Diffie-Hellman, each identity also holds a long-term X25519
//! *identity-DH* key. The identity-DH key is bound to the signing key by the
//! device's signed prekeys blob (which carries it, signed), and in the stored
//! identity by a certificate (context [`CTX_IDENTITY_DH`]).
//!
//! A peer's public identity is a [`PeerIdentity`]: both public keys, checked
//! against each other. A prekey message names its initiator only by
//! [`PeerIdentity::fingerprint`]; the responder gets the initiator's
//! identity key and signed prekeys blob from the server (or its contacts)
//! and builds the [`PeerIdentity`] with [`PeerIdentity::from_parts`].

use pqc_crypto::rng::CryptoRng;
use pqc_crypto::sign::{HYBRID_PUBLIC_LEN, HYBRID_SECRET_LEN, HYBRID_SIGNATURE_LEN, HybridSignature};
use pqc_crypto::sign::{HybridSigningKey, HybridVerifyingKey};
use pqc_crypto::x25519::{X25519KeyPair, X25519PublicKey, X25519Secret};
use zeroize::Zeroizing;

use pqc_crypto::kdf::sha256;

use crate::codec::Reader;
use crate::error::{ProtoError, Result};
use crate::prekey::{CTX_SIGNED_PREKEYS, decode_signed_prekeys};

/// Signature context of the identity-DH certificate.
pub const CTX_IDENTITY_DH: &[u8] = b"pqc-chat/v1/identity-dh";
/// Encoding version of a stored [`IdentityKeyPair`].
pub const IDENTITY_KEY_PAIR_VERSION: u8 = 1;
/// Length of an encoded [`IdentityKey`].
pub const IDENTITY_KEY_LEN: usize = HYBRID_PUBLIC_LEN;
/// Hash label of a [`PeerIdentity::fingerprint`].
pub const LABEL_IDENTITY_FINGERPRINT: &[u8] = b"pqc-chat/v1/identity-fingerprint";

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

/// A device's public identity as a peer sees it: the hybrid identity key
/// and the X25519 identity-DH key that identity signed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PeerIdentity {
    key: IdentityKey,
    dh: X25519PublicKey,
}

impl PeerIdentity {
    /// From what the server's directory returns for a user: the identity key
    /// (`HybridVerifyingKey::to_bytes()`) and the user's signed prekeys blob,
    /// whose signature is verified and which carries the identity-DH key.
    ///
    /// The caller still decides whether it trusts the identity key for this
    /// user (safety numbers).
    pub fn from_parts(identity_key: &[u8], signed_prekeys: &[u8]) -> Result<Self> {
        let key = IdentityKey::from_bytes(identity_key)?;
        let blob = decode_signed_prekeys(signed_prekeys)?;
        key.verify("signed prekeys blob", blob.signed, CTX_SIGNED_PREKEYS, blob.signature)?;
        Ok(Self { key, dh: blob.identity_dh })
    }

    /// The hybrid identity key (what safety numbers are computed from).
    pub fn identity_key(&self) -> &IdentityKey {
        &self.key
    }

    /// The identity-DH public key.
    pub fn identity_dh(&self) -> &X25519PublicKey {
        &self.dh
    }

    /// `SHA-256("pqc-chat/v1/identity-fingerprint" || identity key || identity-DH key)`:
    /// how a prekey message names its initiator.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256(&[LABEL_IDENTITY_FINGERPRINT, &self.key.to_bytes(), self.dh.as_bytes()])
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

    /// The public half, as peers see it.
    pub fn peer_identity(&self) -> PeerIdentity {
        PeerIdentity { key: self.public.clone(), dh: self.dh.public }
    }

    /// The hybrid signing key, to bind other keys of this device to the
    /// identity (the MLS signature key of rooms).
    pub fn signing_key(&self) -> &HybridSigningKey {
        &self.signing
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
