//! Authenticated encryption: AES-256-GCM and ChaCha20-Poly1305 (and AES-128-GCM
//! for interoperability tests), from aws-lc.
//!
//! The API takes 96-bit nonces only; callers derive nonces deterministically
//! (a counter or a per-message key), never at random per key.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::CryptoError;

/// Length of the authentication tag every supported algorithm appends.
pub const TAG_LEN: usize = 16;
/// Length of the nonce every supported algorithm takes.
pub const NONCE_LEN: usize = 12;

/// An AEAD algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AeadAlgorithm {
    /// AES-256 in Galois/Counter mode: the default (hardware AES on x86-64 and ARMv8).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439): for CPUs without AES instructions.
    ChaCha20Poly1305,
    /// AES-128-GCM: not used by the protocol; present for known-answer tests and interop.
    Aes128Gcm,
}

impl AeadAlgorithm {
    fn ring(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Self::Aes128Gcm => &aead::AES_128_GCM,
        }
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        self.ring().key_len()
    }

    /// The one-byte identifier used in encodings.
    pub fn id(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::ChaCha20Poly1305 => 2,
            Self::Aes128Gcm => 3,
        }
    }

    /// Parses the one-byte identifier.
    pub fn from_id(id: u8) -> Result<Self, CryptoError> {
        match id {
            1 => Ok(Self::Aes256Gcm),
            2 => Ok(Self::ChaCha20Poly1305),
            3 => Ok(Self::Aes128Gcm),
            id => Err(CryptoError::UnknownSuite { what: "AEAD", id }),
        }
    }
}

/// An AEAD key, ready to seal and open. The key schedule lives inside aws-lc,
/// which wipes it when the key is dropped.
pub struct AeadKey {
    alg: AeadAlgorithm,
    key: LessSafeKey,
}

impl AeadKey {
    /// Builds a key; the length must match the algorithm.
    pub fn new(alg: AeadAlgorithm, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != alg.key_len() {
            return Err(CryptoError::InvalidLength { what: "AEAD key", expected: alg.key_len(), got: key.len() });
        }
        let unbound = UnboundKey::new(alg.ring(), key).map_err(|_| CryptoError::Internal("AEAD key setup"))?;
        Ok(Self { alg, key: LessSafeKey::new(unbound) })
    }

    /// The algorithm of this key.
    pub fn algorithm(&self) -> AeadAlgorithm {
        self.alg
    }

    fn nonce(nonce: &[u8]) -> Result<Nonce, CryptoError> {
        Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| CryptoError::UnsupportedParameter("AEAD nonce must be 12 bytes"))
    }

    /// Encrypts `plaintext`, returning ciphertext followed by the 16-byte tag.
    pub fn seal(&self, nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(nonce, aad, &mut buf)?;
        Ok(buf)
    }

    /// Encrypts `buf` in place and appends the tag.
    pub fn seal_in_place(&self, nonce: &[u8], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce = Self::nonce(nonce)?;
        self.key.seal_in_place_append_tag(nonce, Aad::from(aad), buf).map_err(|_| CryptoError::Internal("AEAD seal"))
    }

    /// Decrypts ciphertext-with-tag, returning the plaintext.
    pub fn open(&self, nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = ciphertext.to_vec();
        let len = self.open_in_place(nonce, aad, &mut buf)?.len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Decrypts in place; returns the plaintext prefix of `buf`.
    pub fn open_in_place<'a>(&self, nonce: &[u8], aad: &[u8], buf: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
        let nonce = Self::nonce(nonce)?;
        if buf.len() < TAG_LEN {
            return Err(CryptoError::DecryptionFailed);
        }
        self.key.open_in_place(nonce, Aad::from(aad), buf).map_err(|_| CryptoError::DecryptionFailed)
    }
}
