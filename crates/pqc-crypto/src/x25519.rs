//! X25519 Diffie-Hellman (RFC 7748) from aws-lc, with secrets the caller can
//! store (the ratchets keep them in their pickled state).

use std::sync::Arc;

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::error::to_array;
use crate::rng::{CryptoRng, random_array};

/// Length of an X25519 public key, secret key and shared secret.
pub const X25519_LEN: usize = 32;

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct X25519PublicKey([u8; X25519_LEN]);

impl X25519PublicKey {
    /// Wraps 32 bytes. Any 32 bytes are a syntactically valid X25519 key;
    /// low-order keys are caught at agreement time.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self(to_array("X25519 public key", bytes)?))
    }

    /// The 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; X25519_LEN] {
        &self.0
    }
}

impl core::fmt::Debug for X25519PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "X25519PublicKey({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// An X25519 secret key. No `Debug`; the byte copy is zeroized on drop and
/// aws-lc wipes its own copy when the key is freed.
///
/// The aws-lc key object is built once (which costs one base-point
/// multiplication inside aws-lc) and reused for every agreement.
#[derive(Clone)]
pub struct X25519Secret {
    bytes: Zeroizing<[u8; X25519_LEN]>,
    key: Arc<PrivateKey>,
}

impl X25519Secret {
    /// Draws a fresh secret from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Result<Self, CryptoError> {
        let bytes: Zeroizing<[u8; X25519_LEN]> = Zeroizing::new(random_array(rng));
        Self::from_bytes(bytes.as_ref())
    }

    /// Restores a secret from its 32 bytes (as stored by [`Self::to_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let bytes: Zeroizing<[u8; X25519_LEN]> = Zeroizing::new(to_array("X25519 secret key", bytes)?);
        let key = PrivateKey::from_private_key(&X25519, bytes.as_ref())
            .map_err(|_| CryptoError::InvalidPrivateKey("X25519"))?;
        Ok(Self { bytes, key: Arc::new(key) })
    }

    /// The 32 secret bytes, for encrypted storage only.
    pub fn to_bytes(&self) -> Zeroizing<[u8; X25519_LEN]> {
        self.bytes.clone()
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<X25519PublicKey, CryptoError> {
        let pk = self.key.compute_public_key().map_err(|_| CryptoError::Internal("X25519 public key"))?;
        X25519PublicKey::from_bytes(pk.as_ref())
    }

    /// X25519(self, peer). Fails with [`CryptoError::WeakKeyAgreement`] when the
    /// result is all zeros (a low-order peer key), so no session is ever keyed
    /// by a value the peer chose.
    pub fn diffie_hellman(&self, peer: &X25519PublicKey) -> Result<Zeroizing<[u8; X25519_LEN]>, CryptoError> {
        let peer = UnparsedPublicKey::new(&X25519, peer.0);
        agreement::agree(&self.key, peer, CryptoError::WeakKeyAgreement, |ss| {
            let mut out = Zeroizing::new([0u8; X25519_LEN]);
            if ss.len() != X25519_LEN {
                return Err(CryptoError::Internal("X25519 output length"));
            }
            out.copy_from_slice(ss);
            if out.iter().all(|b| *b == 0) {
                return Err(CryptoError::WeakKeyAgreement);
            }
            Ok(out)
        })
    }
}

/// An X25519 key pair.
#[derive(Clone)]
pub struct X25519KeyPair {
    /// The secret half.
    pub secret: X25519Secret,
    /// The public half.
    pub public: X25519PublicKey,
}

impl X25519KeyPair {
    /// A fresh key pair from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Result<Self, CryptoError> {
        Self::from_secret(X25519Secret::generate(rng)?)
    }

    /// The key pair of a stored secret.
    pub fn from_secret(secret: X25519Secret) -> Result<Self, CryptoError> {
        let public = secret.public_key()?;
        Ok(Self { secret, public })
    }
}
