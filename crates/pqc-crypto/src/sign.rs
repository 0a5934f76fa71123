//! Signatures: Ed25519 (aws-lc), ML-DSA-65 (libcrux-ml-dsa, FIPS 204, with
//! context strings and caller-supplied randomness), and the hybrid of both.
//!
//! A hybrid signature verifies only if **both** parts verify, over the same
//! domain-separated message:
//!
//! ```text
//! M' = "pqc-chat/hybrid-sig/v1" || len(ctx) (1 byte) || ctx || msg
//! sig = Ed25519.Sign(M') || ML-DSA-65.Sign(M', context = ctx)
//! ```
//!
//! # Encodings
//!
//! | item | layout |
//! |---|---|
//! | verifying key | `0x01` version, suite `0x01`, Ed25519 key (32), ML-DSA-65 key (1952) |
//! | signature | `0x01` version, suite `0x01`, Ed25519 signature (64), ML-DSA-65 signature (3309) |
//! | signing key | `0x01` version, suite `0x01`, Ed25519 seed (32), ML-DSA-65 seed (32) |

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use libcrux_ml_dsa::ml_dsa_65;
use zeroize::{Zeroize, Zeroizing};

use crate::CryptoError;
use crate::error::{check_len, to_array};
use crate::rng::{CryptoRng, random_array};

/// Encoding version of hybrid signature keys and signatures.
pub const HYBRID_SIG_VERSION: u8 = 1;
/// The one suite: Ed25519 + ML-DSA-65.
pub const SUITE_ED25519_MLDSA65: u8 = 0x01;
const LABEL: &[u8] = b"pqc-chat/hybrid-sig/v1";

/// Ed25519 public key length.
pub const ED25519_PUBLIC_LEN: usize = 32;
/// Ed25519 signature length.
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// ML-DSA-65 verification key length.
pub const MLDSA65_PUBLIC_LEN: usize = 1952;
/// ML-DSA-65 signature length.
pub const MLDSA65_SIGNATURE_LEN: usize = 3309;
/// Hybrid verifying key encoding length.
pub const HYBRID_PUBLIC_LEN: usize = 2 + ED25519_PUBLIC_LEN + MLDSA65_PUBLIC_LEN;
/// Hybrid signature encoding length.
pub const HYBRID_SIGNATURE_LEN: usize = 2 + ED25519_SIGNATURE_LEN + MLDSA65_SIGNATURE_LEN;
/// Hybrid signing key encoding length.
pub const HYBRID_SECRET_LEN: usize = 2 + 32 + 32;

// ---------------------------------------------------------------- Ed25519

/// An Ed25519 verifying key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ed25519VerifyingKey([u8; ED25519_PUBLIC_LEN]);

impl core::fmt::Debug for Ed25519VerifyingKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Ed25519VerifyingKey({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl Ed25519VerifyingKey {
    /// Wraps a 32-byte key (its point encoding is checked at verification).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        Ok(Self(to_array("Ed25519 public key", bytes)?))
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8; ED25519_PUBLIC_LEN] {
        &self.0
    }

    /// Verifies a signature over `msg` (RFC 8032, strict: non-canonical `S` and
    /// small-order keys are rejected by aws-lc).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        if sig.len() != ED25519_SIGNATURE_LEN {
            return Err(CryptoError::BadSignature);
        }
        UnparsedPublicKey::new(&signature::ED25519, &self.0).verify(msg, sig).map_err(|_| CryptoError::BadSignature)
    }
}

/// An Ed25519 signing key. No `Debug`; aws-lc wipes the key on drop, and the
/// seed copy here is zeroized.
pub struct Ed25519SigningKey {
    seed: Zeroizing<[u8; 32]>,
    pair: Ed25519KeyPair,
}

impl Ed25519SigningKey {
    /// The key of a 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(to_array("Ed25519 seed", seed)?);
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .map_err(|_| CryptoError::InvalidPrivateKey("Ed25519"))?;
        Ok(Self { seed, pair })
    }

    /// The verifying key.
    pub fn verifying_key(&self) -> Ed25519VerifyingKey {
        let mut pk = [0u8; ED25519_PUBLIC_LEN];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        Ed25519VerifyingKey(pk)
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; ED25519_SIGNATURE_LEN] {
        let mut out = [0u8; ED25519_SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

// ---------------------------------------------------------------- ML-DSA-65

/// An ML-DSA-65 verification key.
#[derive(Clone, PartialEq, Eq)]
pub struct MlDsa65VerifyingKey(Box<[u8; MLDSA65_PUBLIC_LEN]>);

impl core::fmt::Debug for MlDsa65VerifyingKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MlDsa65VerifyingKey({:02x}{:02x}{:02x}{:02x}..)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

impl MlDsa65VerifyingKey {
    /// Wraps a 1952-byte key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("ML-DSA-65 public key", bytes, MLDSA65_PUBLIC_LEN)?;
        let mut b = Box::new([0u8; MLDSA65_PUBLIC_LEN]);
        b.copy_from_slice(bytes);
        Ok(Self(b))
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8; MLDSA65_PUBLIC_LEN] {
        &self.0
    }

    /// Verifies `sig` over `msg` with FIPS 204 context string `ctx` (at most
    /// 255 bytes).
    pub fn verify(&self, msg: &[u8], ctx: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        if ctx.len() > 255 {
            return Err(CryptoError::UnsupportedParameter("ML-DSA context longer than 255 bytes"));
        }
        if sig.len() != MLDSA65_SIGNATURE_LEN {
            return Err(CryptoError::BadSignature);
        }
        let mut s = [0u8; MLDSA65_SIGNATURE_LEN];
        s.copy_from_slice(sig);
        let vk = ml_dsa_65::MLDSA65VerificationKey::new(*self.0);
        ml_dsa_65::verify(&vk, msg, ctx, &ml_dsa_65::MLDSA65Signature::new(s)).map_err(|_| CryptoError::BadSignature)
    }
}

/// An ML-DSA-65 signing key, kept with its seed. No `Debug`; wiped on drop.
pub struct MlDsa65SigningKey {
    seed: Zeroizing<[u8; 32]>,
    pair: ml_dsa_65::MLDSA65KeyPair,
}

impl Drop for MlDsa65SigningKey {
    fn drop(&mut self) {
        self.pair.signing_key.as_mut_slice().zeroize();
    }
}

impl MlDsa65SigningKey {
    /// The key pair of a 32-byte seed (FIPS 204 `ML-DSA.KeyGen_internal`).
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(to_array("ML-DSA-65 seed", seed)?);
        let pair = ml_dsa_65::generate_key_pair(*seed);
        Ok(Self { seed, pair })
    }

    /// The verification key.
    pub fn verifying_key(&self) -> MlDsa65VerifyingKey {
        MlDsa65VerifyingKey(Box::new(*self.pair.verification_key.as_ref()))
    }

    /// Signs `msg` under context `ctx` (hedged: `rng` supplies the per-signature
    /// randomness).
    pub fn sign<R: CryptoRng + ?Sized>(
        &self,
        msg: &[u8],
        ctx: &[u8],
        rng: &mut R,
    ) -> Result<Box<[u8; MLDSA65_SIGNATURE_LEN]>, CryptoError> {
        if ctx.len() > 255 {
            return Err(CryptoError::UnsupportedParameter("ML-DSA context longer than 255 bytes"));
        }
        let rnd: Zeroizing<[u8; 32]> = Zeroizing::new(random_array(rng));
        let sig = ml_dsa_65::sign(&self.pair.signing_key, msg, ctx, *rnd)
            .map_err(|_| CryptoError::Internal("ML-DSA sign"))?;
        Ok(Box::new(*sig.as_ref()))
    }
}

// ---------------------------------------------------------------- hybrid

/// A hybrid Ed25519 + ML-DSA-65 verifying key.
#[derive(Clone, PartialEq, Eq)]
pub struct HybridVerifyingKey {
    ed25519: Ed25519VerifyingKey,
    ml_dsa: MlDsa65VerifyingKey,
}

impl core::fmt::Debug for HybridVerifyingKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HybridVerifyingKey({:?})", self.ed25519)
    }
}

fn hybrid_header(what: &'static str, bytes: &[u8], len: usize) -> Result<(), CryptoError> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(CryptoError::InvalidLength { what, expected: len, got: 0 });
    };
    if version != HYBRID_SIG_VERSION {
        return Err(CryptoError::UnsupportedVersion { what, got: version, supported: HYBRID_SIG_VERSION });
    }
    match rest.first() {
        Some(&SUITE_ED25519_MLDSA65) => check_len(what, bytes, len),
        Some(&id) => Err(CryptoError::UnknownSuite { what: "hybrid signature", id }),
        None => Err(CryptoError::InvalidLength { what, expected: len, got: 1 }),
    }
}

fn domain_message(ctx: &[u8], msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let ctx_len = u8::try_from(ctx.len())
        .map_err(|_| CryptoError::UnsupportedParameter("signature context longer than 255 bytes"))?;
    let mut m = Vec::with_capacity(LABEL.len() + 1 + ctx.len() + msg.len());
    m.extend_from_slice(LABEL);
    m.push(ctx_len);
    m.extend_from_slice(ctx);
    m.extend_from_slice(msg);
    Ok(m)
}

impl HybridVerifyingKey {
    /// Parses the encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        hybrid_header("hybrid verifying key", bytes, HYBRID_PUBLIC_LEN)?;
        Ok(Self {
            ed25519: Ed25519VerifyingKey::from_bytes(&bytes[2..34])?,
            ml_dsa: MlDsa65VerifyingKey::from_bytes(&bytes[34..])?,
        })
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HYBRID_PUBLIC_LEN);
        out.extend_from_slice(&[HYBRID_SIG_VERSION, SUITE_ED25519_MLDSA65]);
        out.extend_from_slice(self.ed25519.as_bytes());
        out.extend_from_slice(self.ml_dsa.as_bytes());
        out
    }

    /// The Ed25519 half.
    pub fn ed25519(&self) -> &Ed25519VerifyingKey {
        &self.ed25519
    }

    /// The ML-DSA-65 half.
    pub fn ml_dsa(&self) -> &MlDsa65VerifyingKey {
        &self.ml_dsa
    }

    /// Verifies a hybrid signature: both halves must verify.
    pub fn verify(&self, msg: &[u8], ctx: &[u8], sig: &HybridSignature) -> Result<(), CryptoError> {
        let m = domain_message(ctx, msg)?;
        let ed_ok = self.ed25519.verify(&m, &sig.ed25519).is_ok();
        let ml_ok = self.ml_dsa.verify(&m, ctx, sig.ml_dsa.as_ref()).is_ok();
        if ed_ok && ml_ok { Ok(()) } else { Err(CryptoError::BadSignature) }
    }
}

/// A hybrid signature.
#[derive(Clone, PartialEq, Eq)]
pub struct HybridSignature {
    ed25519: [u8; ED25519_SIGNATURE_LEN],
    ml_dsa: Box<[u8; MLDSA65_SIGNATURE_LEN]>,
}

impl core::fmt::Debug for HybridSignature {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("HybridSignature(..)")
    }
}

impl HybridSignature {
    /// Parses the encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        hybrid_header("hybrid signature", bytes, HYBRID_SIGNATURE_LEN)?;
        let ed25519 = to_array("Ed25519 signature", &bytes[2..66])?;
        let mut ml_dsa = Box::new([0u8; MLDSA65_SIGNATURE_LEN]);
        ml_dsa.copy_from_slice(&bytes[66..]);
        Ok(Self { ed25519, ml_dsa })
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HYBRID_SIGNATURE_LEN);
        out.extend_from_slice(&[HYBRID_SIG_VERSION, SUITE_ED25519_MLDSA65]);
        out.extend_from_slice(&self.ed25519);
        out.extend_from_slice(self.ml_dsa.as_ref());
        out
    }
}

/// A hybrid Ed25519 + ML-DSA-65 signing key (a device's identity). No `Debug`;
/// wiped on drop.
pub struct HybridSigningKey {
    ed25519: Ed25519SigningKey,
    ml_dsa: MlDsa65SigningKey,
    public: HybridVerifyingKey,
}

impl HybridSigningKey {
    /// A fresh identity key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Result<Self, CryptoError> {
        let seeds: Zeroizing<[u8; 64]> = Zeroizing::new(random_array(rng));
        Self::from_seeds(&seeds[..32], &seeds[32..])
    }

    fn from_seeds(ed_seed: &[u8], ml_seed: &[u8]) -> Result<Self, CryptoError> {
        let ed25519 = Ed25519SigningKey::from_seed(ed_seed)?;
        let ml_dsa = MlDsa65SigningKey::from_seed(ml_seed)?;
        let public = HybridVerifyingKey { ed25519: ed25519.verifying_key(), ml_dsa: ml_dsa.verifying_key() };
        Ok(Self { ed25519, ml_dsa, public })
    }

    /// Restores a key from [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        hybrid_header("hybrid signing key", bytes, HYBRID_SECRET_LEN)?;
        Self::from_seeds(&bytes[2..34], &bytes[34..66])
    }

    /// The secret encoding (two seeds), for encrypted storage only.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(HYBRID_SECRET_LEN));
        out.extend_from_slice(&[HYBRID_SIG_VERSION, SUITE_ED25519_MLDSA65]);
        out.extend_from_slice(self.ed25519.seed.as_ref());
        out.extend_from_slice(self.ml_dsa.seed.as_ref());
        out
    }

    /// The verifying key.
    pub fn verifying_key(&self) -> &HybridVerifyingKey {
        &self.public
    }

    /// Signs `msg` under context `ctx` (at most 255 bytes; use a distinct
    /// context per purpose so a signature can never be replayed as another).
    pub fn sign<R: CryptoRng + ?Sized>(
        &self,
        msg: &[u8],
        ctx: &[u8],
        rng: &mut R,
    ) -> Result<HybridSignature, CryptoError> {
        let m = domain_message(ctx, msg)?;
        Ok(HybridSignature { ed25519: self.ed25519.sign(&m), ml_dsa: self.ml_dsa.sign(&m, ctx, rng)? })
    }
}
