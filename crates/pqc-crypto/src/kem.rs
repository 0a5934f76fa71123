//! The hybrid KEM: X25519 + ML-KEM, combined so that the shared secret stays
//! secret while either component holds.
//!
//! # Combiner
//!
//! In the style of X-Wing, but binding every public input, as our ML-KEM keys
//! and ciphertexts travel through an untrusted server:
//!
//! ```text
//! ss = SHA3-256( ss_M || ss_X || ct_X || pk_X || SHA3-256(ct_M) || SHA3-256(ek_M)
//!                || suite_id || "pqc-chat/hybrid-kem/v1" )
//! ```
//!
//! where `ss_X = X25519(eph, pk_X)`, `ct_X` is the ephemeral X25519 public key,
//! and `(ct_M, ss_M) = ML-KEM.Encaps(ek_M)`.
//!
//! # Encodings (all fixed length per suite)
//!
//! | item | layout |
//! |---|---|
//! | public key | `0x01` version, suite id, X25519 key (32), ML-KEM encapsulation key |
//! | ciphertext | `0x01` version, suite id, X25519 ephemeral key (32), ML-KEM ciphertext |
//! | secret key | `0x01` version, suite id, X25519 secret (32), ML-KEM expanded decapsulation key |

use zeroize::Zeroizing;

use crate::CryptoError;
use crate::ml_kem::{
    DEFAULT, MlKemCiphertext, MlKemLevel, MlKemProvider, MlKemPublicKey, MlKemSecretKey, SharedSecret,
};
use crate::rng::CryptoRng;
use crate::x25519::{X25519KeyPair, X25519PublicKey, X25519Secret};

/// Encoding version of hybrid KEM keys and ciphertexts.
pub const HYBRID_KEM_VERSION: u8 = 1;
const LABEL: &[u8] = b"pqc-chat/hybrid-kem/v1";

/// A hybrid KEM suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HybridKemSuite {
    /// X25519 + ML-KEM-768: the lighter suite (the sparse PQ ratchet uses it).
    X25519MlKem768,
    /// X25519 + ML-KEM-1024: the default for long-term prekeys.
    X25519MlKem1024,
}

impl HybridKemSuite {
    /// The one-byte identifier in encodings.
    pub const fn id(self) -> u8 {
        match self {
            Self::X25519MlKem768 => 0x01,
            Self::X25519MlKem1024 => 0x02,
        }
    }

    /// Parses the identifier.
    pub fn from_id(id: u8) -> Result<Self, CryptoError> {
        match id {
            0x01 => Ok(Self::X25519MlKem768),
            0x02 => Ok(Self::X25519MlKem1024),
            id => Err(CryptoError::UnknownSuite { what: "hybrid KEM", id }),
        }
    }

    /// The ML-KEM parameter set inside.
    pub const fn ml_kem(self) -> MlKemLevel {
        match self {
            Self::X25519MlKem768 => MlKemLevel::MlKem768,
            Self::X25519MlKem1024 => MlKemLevel::MlKem1024,
        }
    }

    /// Encoded public key length.
    pub const fn public_key_len(self) -> usize {
        2 + 32 + self.ml_kem().public_key_len()
    }

    /// Encoded ciphertext length.
    pub const fn ciphertext_len(self) -> usize {
        2 + 32 + self.ml_kem().ciphertext_len()
    }

    /// Encoded secret key length.
    pub const fn secret_key_len(self) -> usize {
        2 + 32 + self.ml_kem().secret_key_len()
    }
}

fn header(
    what: &'static str,
    bytes: &[u8],
    len_of: fn(HybridKemSuite) -> usize,
) -> Result<HybridKemSuite, CryptoError> {
    let (&version, rest) = bytes.split_first().ok_or(CryptoError::InvalidLength { what, expected: 2, got: 0 })?;
    if version != HYBRID_KEM_VERSION {
        return Err(CryptoError::UnsupportedVersion { what, got: version, supported: HYBRID_KEM_VERSION });
    }
    let &id = rest.first().ok_or(CryptoError::InvalidLength { what, expected: 2, got: 1 })?;
    let suite = HybridKemSuite::from_id(id)?;
    crate::error::check_len(what, bytes, len_of(suite))?;
    Ok(suite)
}

/// `version || suite || X25519 part || ML-KEM part`: the layout of public keys and ciphertexts.
fn encode(suite: HybridKemSuite, x25519: &X25519PublicKey, ml_kem: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 32 + ml_kem.len());
    out.extend_from_slice(&[HYBRID_KEM_VERSION, suite.id()]);
    out.extend_from_slice(x25519.as_bytes());
    out.extend_from_slice(ml_kem);
    out
}

/// A hybrid KEM public key.
#[derive(Clone, PartialEq, Eq)]
pub struct HybridPublicKey {
    suite: HybridKemSuite,
    x25519: X25519PublicKey,
    ml_kem: MlKemPublicKey,
    ek_digest: [u8; 32],
}

impl core::fmt::Debug for HybridPublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HybridPublicKey({:?}, {:?})", self.suite, self.x25519)
    }
}

impl HybridPublicKey {
    fn new(suite: HybridKemSuite, x25519: X25519PublicKey, ml_kem: MlKemPublicKey) -> Self {
        let ek_digest = crate::kdf::sha3_256(&[ml_kem.as_bytes()]);
        Self { suite, x25519, ml_kem, ek_digest }
    }

    /// Parses a public key, validating the ML-KEM part.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let suite = header("hybrid KEM public key", bytes, HybridKemSuite::public_key_len)?;
        let x25519 = X25519PublicKey::from_bytes(&bytes[2..34])?;
        let ml_kem = MlKemPublicKey::from_bytes(suite.ml_kem(), &bytes[34..])?;
        Ok(Self::new(suite, x25519, ml_kem))
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.suite, &self.x25519, self.ml_kem.as_bytes())
    }

    /// The suite.
    pub fn suite(&self) -> HybridKemSuite {
        self.suite
    }

    /// Encapsulates a fresh shared secret to this key (default ML-KEM provider).
    pub fn encapsulate<R: CryptoRng>(&self, rng: &mut R) -> Result<(HybridCiphertext, SharedSecret), CryptoError> {
        self.encapsulate_with(DEFAULT, rng)
    }

    /// Encapsulates with a chosen ML-KEM provider.
    pub fn encapsulate_with(
        &self,
        provider: &dyn MlKemProvider,
        rng: &mut dyn CryptoRng,
    ) -> Result<(HybridCiphertext, SharedSecret), CryptoError> {
        let eph = X25519KeyPair::generate(rng)?;
        let ss_x = eph.secret.diffie_hellman(&self.x25519)?;
        let (ct_m, ss_m) = provider.encapsulate(&self.ml_kem, rng)?;
        let ct = HybridCiphertext { suite: self.suite, x25519: eph.public, ml_kem: ct_m };
        let ss = combine(self.suite, &ss_m, &ss_x, &ct, &self.x25519, &self.ek_digest);
        Ok((ct, ss))
    }
}

/// A hybrid KEM ciphertext.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HybridCiphertext {
    suite: HybridKemSuite,
    x25519: X25519PublicKey,
    ml_kem: MlKemCiphertext,
}

impl HybridCiphertext {
    /// Parses a ciphertext.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let suite = header("hybrid KEM ciphertext", bytes, HybridKemSuite::ciphertext_len)?;
        Ok(Self {
            suite,
            x25519: X25519PublicKey::from_bytes(&bytes[2..34])?,
            ml_kem: MlKemCiphertext::from_bytes(suite.ml_kem(), &bytes[34..])?,
        })
    }

    /// The encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self.suite, &self.x25519, self.ml_kem.as_bytes())
    }

    /// The suite.
    pub fn suite(&self) -> HybridKemSuite {
        self.suite
    }
}

/// A hybrid KEM secret key. No `Debug`; its parts are wiped on drop.
#[derive(Clone)]
pub struct HybridSecretKey {
    x25519: X25519Secret,
    ml_kem: MlKemSecretKey,
    public: HybridPublicKey,
}

impl HybridSecretKey {
    /// Generates a key pair (default ML-KEM provider).
    pub fn generate<R: CryptoRng>(suite: HybridKemSuite, rng: &mut R) -> Result<Self, CryptoError> {
        Self::generate_with(suite, DEFAULT, rng)
    }

    /// Generates a key pair with a chosen ML-KEM provider.
    pub fn generate_with(
        suite: HybridKemSuite,
        provider: &dyn MlKemProvider,
        rng: &mut dyn CryptoRng,
    ) -> Result<Self, CryptoError> {
        let x = X25519KeyPair::generate(rng)?;
        let (sk_m, pk_m) = provider.generate(suite.ml_kem(), rng)?;
        Ok(Self { x25519: x.secret, ml_kem: sk_m, public: HybridPublicKey::new(suite, x.public, pk_m) })
    }

    /// The public key.
    pub fn public_key(&self) -> &HybridPublicKey {
        &self.public
    }

    /// Decapsulates (default ML-KEM provider).
    pub fn decapsulate(&self, ct: &HybridCiphertext) -> Result<SharedSecret, CryptoError> {
        self.decapsulate_with(DEFAULT, ct)
    }

    /// Decapsulates with a chosen ML-KEM provider.
    pub fn decapsulate_with(
        &self,
        provider: &dyn MlKemProvider,
        ct: &HybridCiphertext,
    ) -> Result<SharedSecret, CryptoError> {
        if ct.suite != self.public.suite {
            return Err(CryptoError::UnsupportedParameter("ciphertext suite differs from the key's suite"));
        }
        let ss_x = self.x25519.diffie_hellman(&ct.x25519)?;
        let ss_m = provider.decapsulate(&self.ml_kem, &ct.ml_kem)?;
        Ok(combine(self.public.suite, &ss_m, &ss_x, ct, &self.public.x25519, &self.public.ek_digest))
    }

    /// The secret encoding, for encrypted storage only.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let suite = self.public.suite;
        let mut out = Zeroizing::new(Vec::with_capacity(suite.secret_key_len()));
        out.extend_from_slice(&[HYBRID_KEM_VERSION, suite.id()]);
        out.extend_from_slice(self.x25519.to_bytes().as_ref());
        out.extend_from_slice(self.ml_kem.as_bytes());
        out
    }

    /// Restores a secret key from [`Self::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let suite = header("hybrid KEM secret key", bytes, HybridKemSuite::secret_key_len)?;
        let x = X25519KeyPair::from_secret(X25519Secret::from_bytes(&bytes[2..34])?)?;
        let ml_kem = MlKemSecretKey::from_bytes(suite.ml_kem(), &bytes[34..])?;
        let pk_m = ml_kem.public_key()?;
        Ok(Self { x25519: x.secret, ml_kem, public: HybridPublicKey::new(suite, x.public, pk_m) })
    }
}

fn combine(
    suite: HybridKemSuite,
    ss_m: &[u8; 32],
    ss_x: &[u8; 32],
    ct: &HybridCiphertext,
    pk_x: &X25519PublicKey,
    ek_digest: &[u8; 32],
) -> SharedSecret {
    let ct_digest = crate::kdf::sha3_256(&[ct.ml_kem.as_bytes()]);
    Zeroizing::new(crate::kdf::sha3_256(&[
        ss_m,
        ss_x,
        ct.x25519.as_bytes(),
        pk_x.as_bytes(),
        &ct_digest,
        ek_digest,
        &[suite.id()],
        LABEL,
    ]))
}
