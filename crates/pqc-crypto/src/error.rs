//! The one error type of this crate.

/// Everything that can go wrong in a cryptographic operation.
///
/// Messages are meant for a person: they say what was wrong, never which secret
/// was involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// An encoded key, ciphertext or signature had the wrong length.
    #[error("{what} has the wrong length: expected {expected} bytes, got {got}")]
    InvalidLength {
        /// What was being decoded.
        what: &'static str,
        /// The length the encoding requires.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// An encoding carried a version this build does not understand.
    #[error("{what} uses encoding version {got}, this build understands version {supported}; upgrade pqc-chat")]
    UnsupportedVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version found.
        got: u8,
        /// The version this build writes and reads.
        supported: u8,
    },
    /// An encoding named an algorithm suite this build does not know.
    #[error("unknown {what} suite identifier {id:#04x}; upgrade pqc-chat or check the sender's version")]
    UnknownSuite {
        /// What was being decoded.
        what: &'static str,
        /// The identifier found.
        id: u8,
    },
    /// A public key was malformed (for example an ML-KEM key failing the modulus check).
    #[error("invalid {0} public key")]
    InvalidPublicKey(&'static str),
    /// A private key was malformed or inconsistent with its public key.
    #[error("invalid {0} private key")]
    InvalidPrivateKey(&'static str),
    /// A signature did not verify.
    #[error("signature verification failed: the data was not signed by this key or was altered")]
    BadSignature,
    /// An AEAD ciphertext did not authenticate.
    #[error("decryption failed: the ciphertext was altered, truncated or encrypted under another key")]
    DecryptionFailed,
    /// A Diffie-Hellman exchange gave the all-zero value (a low-order peer key).
    #[error("key agreement failed: the peer's X25519 key is of low order")]
    WeakKeyAgreement,
    /// A parameter (key size, nonce size, context length, output length) is not supported.
    #[error("unsupported parameter: {0}")]
    UnsupportedParameter(&'static str),
    /// The underlying library reported an internal failure.
    #[error("internal cryptographic failure in {0}")]
    Internal(&'static str),
}

/// Checks a slice length, naming the item in the error.
pub(crate) fn check_len(what: &'static str, bytes: &[u8], expected: usize) -> Result<(), CryptoError> {
    if bytes.len() == expected { Ok(()) } else { Err(CryptoError::InvalidLength { what, expected, got: bytes.len() }) }
}

/// Copies a slice into a fixed-size array, or says why it cannot.
pub(crate) fn to_array<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    check_len(what, bytes, N)?;
    out.copy_from_slice(bytes);
    Ok(out)
}
