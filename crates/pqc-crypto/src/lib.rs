//! # pqc-crypto
//!
//! The typed cryptographic layer of pqc-chat. It implements no primitive:
//! everything is composed from aws-lc-rs (X25519, Ed25519, AES-GCM,
//! ChaCha20-Poly1305, HKDF, SHA-2/SHA-3, and a second ML-KEM) and libcrux
//! (formally verified ML-KEM; ML-DSA-65).
//!
//! What this crate adds is types: keys that cannot be confused, secrets that
//! wipe themselves and have no `Debug`, versioned byte encodings whose lengths
//! are checked, one error enum, and the hybrid constructions:
//!
//! - [`kem`] — X25519 + ML-KEM-768/1024 with a combiner binding both shared
//!   secrets, both ciphertexts and both public keys;
//! - [`sign`] — Ed25519 + ML-DSA-65, valid only when both verify.
//!
//! Randomness is always passed in (`&mut impl CryptoRng`); [`rng::SystemRng`]
//! is the production source.
//!
//! # Layout
//!
//! - [`error`] — [`CryptoError`].
//! - [`rng`] — the RNG traits and [`rng::SystemRng`].
//! - [`x25519`] — X25519 key pairs and agreement.
//! - [`ml_kem`] — ML-KEM keys and the [`ml_kem::MlKemProvider`] trait (libcrux, aws-lc).
//! - [`kem`] — the hybrid KEM.
//! - [`sign`] — Ed25519, ML-DSA-65 and the hybrid signature.
//! - [`aead`] — AES-256-GCM and ChaCha20-Poly1305.
//! - [`kdf`] — HKDF, HMAC, SHA-2, SHA3-256, constant-time comparison.

pub mod aead;
pub mod error;
pub mod kdf;
pub mod kem;
pub mod ml_kem;
pub mod rng;
pub mod sign;
pub mod x25519;

pub use error::CryptoError;
