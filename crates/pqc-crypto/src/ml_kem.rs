//! ML-KEM (FIPS 203) behind a provider trait.
//!
//! Two providers implement [`MlKemProvider`]: [`AWS_LC`] (aws-lc-rs, the
//! default: the fastest measured on our hardware, see docs/BENCHMARKS.md) and
//! [`LIBCRUX`] (libcrux-ml-kem, formally verified). Both use the FIPS 203
//! encodings, so keys and ciphertexts move freely between them; the test suite
//! checks each against the other on every combination.
//!
//! Randomness: libcrux takes its randomness from the `rng` argument; aws-lc's
//! ML-KEM API draws from aws-lc's own DRBG (seeded by the OS) and cannot be
//! given a seed, so with the default provider ML-KEM key generation and
//! encapsulation are not reproducible from a seeded test RNG. Known-answer
//! tests use [`MlKemSecretKey::from_seed`] and
//! [`MlKemPublicKey::encapsulate_deterministic`] (libcrux), and
//! [`MlKemProvider`] lets a test pick [`LIBCRUX`] when it needs byte-for-byte
//! reproducibility.

use aws_lc_rs::kem;
use libcrux_ml_kem::{mlkem768, mlkem1024};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::error::{check_len, to_array};
use crate::rng::{CryptoRng, RngRef, random_array};

/// A 32-byte shared secret, wiped on drop.
pub type SharedSecret = Zeroizing<[u8; 32]>;

/// An ML-KEM parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MlKemLevel {
    /// ML-KEM-768 (NIST category 3).
    MlKem768,
    /// ML-KEM-1024 (NIST category 5).
    MlKem1024,
}

impl MlKemLevel {
    /// Encapsulation (public) key length.
    pub const fn public_key_len(self) -> usize {
        match self {
            Self::MlKem768 => 1184,
            Self::MlKem1024 => 1568,
        }
    }

    /// Expanded decapsulation (secret) key length.
    pub const fn secret_key_len(self) -> usize {
        match self {
            Self::MlKem768 => 2400,
            Self::MlKem1024 => 3168,
        }
    }

    /// Ciphertext length.
    pub const fn ciphertext_len(self) -> usize {
        match self {
            Self::MlKem768 => 1088,
            Self::MlKem1024 => 1568,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::MlKem768 => "ML-KEM-768",
            Self::MlKem1024 => "ML-KEM-1024",
        }
    }
}

/// A validated ML-KEM encapsulation key (it passed FIPS 203's modulus check).
#[derive(Clone, PartialEq, Eq)]
pub struct MlKemPublicKey {
    level: MlKemLevel,
    bytes: Box<[u8]>,
}

impl core::fmt::Debug for MlKemPublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MlKemPublicKey({}, {} bytes)", self.level.name(), self.bytes.len())
    }
}

impl MlKemPublicKey {
    /// Parses and validates an encapsulation key.
    pub fn from_bytes(level: MlKemLevel, bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("ML-KEM public key", bytes, level.public_key_len())?;
        let ok = match level {
            MlKemLevel::MlKem768 => mlkem768::MlKem768PublicKey::try_from(bytes)
                .map(|pk| mlkem768::validate_public_key(&pk))
                .unwrap_or(false),
            MlKemLevel::MlKem1024 => mlkem1024::MlKem1024PublicKey::try_from(bytes)
                .map(|pk| mlkem1024::validate_public_key(&pk))
                .unwrap_or(false),
        };
        if !ok {
            return Err(CryptoError::InvalidPublicKey(level.name()));
        }
        Ok(Self { level, bytes: bytes.into() })
    }

    /// The parameter set.
    pub fn level(&self) -> MlKemLevel {
        self.level
    }

    /// The FIPS 203 encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Encapsulates a fresh shared secret to this key with the default provider.
    pub fn encapsulate<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<(MlKemCiphertext, SharedSecret), CryptoError> {
        DEFAULT.encapsulate(self, &mut RngRef(rng))
    }

    /// Encapsulates with the message `m` given explicitly (FIPS 203
    /// `ML-KEM.Encaps_internal`): for known-answer tests only. Reusing `m` is
    /// catastrophic.
    pub fn encapsulate_deterministic(&self, m: &[u8; 32]) -> Result<(MlKemCiphertext, SharedSecret), CryptoError> {
        LIBCRUX.encapsulate_deterministic(self, m)
    }
}

/// An ML-KEM ciphertext of a known parameter set (length checked).
#[derive(Clone, PartialEq, Eq)]
pub struct MlKemCiphertext {
    level: MlKemLevel,
    bytes: Box<[u8]>,
}

impl core::fmt::Debug for MlKemCiphertext {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MlKemCiphertext({}, {} bytes)", self.level.name(), self.bytes.len())
    }
}

impl MlKemCiphertext {
    /// Wraps a ciphertext, checking its length.
    pub fn from_bytes(level: MlKemLevel, bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("ML-KEM ciphertext", bytes, level.ciphertext_len())?;
        Ok(Self { level, bytes: bytes.into() })
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// An ML-KEM decapsulation key in the FIPS 203 expanded form (which embeds the
/// encapsulation key). No `Debug`; wiped on drop.
#[derive(Clone)]
pub struct MlKemSecretKey {
    level: MlKemLevel,
    bytes: Zeroizing<Vec<u8>>,
}

impl MlKemSecretKey {
    /// Derives the key pair from the 64-byte seed `d || z` (FIPS 203
    /// `ML-KEM.KeyGen_internal`).
    pub fn from_seed(level: MlKemLevel, seed: &[u8]) -> Result<(Self, MlKemPublicKey), CryptoError> {
        let seed: Zeroizing<[u8; 64]> = Zeroizing::new(to_array("ML-KEM key generation seed", seed)?);
        let (sk, pk): (Zeroizing<Vec<u8>>, Box<[u8]>) = match level {
            MlKemLevel::MlKem768 => {
                let kp = mlkem768::generate_key_pair(*seed);
                (Zeroizing::new(kp.sk().to_vec()), kp.pk().as_slice().into())
            }
            MlKemLevel::MlKem1024 => {
                let kp = mlkem1024::generate_key_pair(*seed);
                (Zeroizing::new(kp.sk().to_vec()), kp.pk().as_slice().into())
            }
        };
        Ok((Self { level, bytes: sk }, MlKemPublicKey { level, bytes: pk }))
    }

    /// A fresh key pair with the default provider.
    pub fn generate<R: CryptoRng + ?Sized>(
        level: MlKemLevel,
        rng: &mut R,
    ) -> Result<(Self, MlKemPublicKey), CryptoError> {
        DEFAULT.generate(level, &mut RngRef(rng))
    }

    /// Restores a stored decapsulation key, checking its length and the hash
    /// of the embedded encapsulation key (FIPS 203 section 7.3).
    pub fn from_bytes(level: MlKemLevel, bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("ML-KEM secret key", bytes, level.secret_key_len())?;
        let k = level.public_key_len() - 32;
        let ek = &bytes[k..k + level.public_key_len()];
        let h = &bytes[k + level.public_key_len()..k + level.public_key_len() + 32];
        if !crate::kdf::ct_eq(&crate::kdf::sha3_256(&[ek]), h) {
            return Err(CryptoError::InvalidPrivateKey(level.name()));
        }
        Ok(Self { level, bytes: Zeroizing::new(bytes.to_vec()) })
    }

    /// The expanded secret key bytes, for encrypted storage only.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The parameter set.
    pub fn level(&self) -> MlKemLevel {
        self.level
    }

    /// The encapsulation key embedded in this secret key.
    pub fn public_key(&self) -> Result<MlKemPublicKey, CryptoError> {
        let k = self.level.public_key_len() - 32;
        MlKemPublicKey::from_bytes(self.level, &self.bytes[k..k + self.level.public_key_len()])
    }

    /// Decapsulates with the default provider. A ciphertext of the right length
    /// always yields a secret (implicit rejection): a wrong one yields a
    /// pseudorandom value that fails later authentication.
    pub fn decapsulate(&self, ct: &MlKemCiphertext) -> Result<SharedSecret, CryptoError> {
        DEFAULT.decapsulate(self, ct)
    }
}

/// An ML-KEM implementation.
pub trait MlKemProvider: Send + Sync {
    /// A short name for diagnostics and benchmarks.
    fn name(&self) -> &'static str;
    /// Generates a key pair.
    fn generate(
        &self,
        level: MlKemLevel,
        rng: &mut dyn CryptoRng,
    ) -> Result<(MlKemSecretKey, MlKemPublicKey), CryptoError>;
    /// Encapsulates to `pk`.
    fn encapsulate(
        &self,
        pk: &MlKemPublicKey,
        rng: &mut dyn CryptoRng,
    ) -> Result<(MlKemCiphertext, SharedSecret), CryptoError>;
    /// Decapsulates `ct` with `sk`.
    fn decapsulate(&self, sk: &MlKemSecretKey, ct: &MlKemCiphertext) -> Result<SharedSecret, CryptoError>;
}

/// The provider used where none is named: aws-lc (fastest here).
pub static DEFAULT: &dyn MlKemProvider = &AWS_LC;

/// libcrux-ml-kem: formally verified, randomness from the caller.
#[derive(Debug, Clone, Copy)]
pub struct LibcruxMlKem;

/// The libcrux provider.
pub static LIBCRUX: LibcruxMlKem = LibcruxMlKem;

impl LibcruxMlKem {
    fn encapsulate_deterministic(
        &self,
        pk: &MlKemPublicKey,
        m: &[u8; 32],
    ) -> Result<(MlKemCiphertext, SharedSecret), CryptoError> {
        let (ct, ss): (Box<[u8]>, [u8; 32]) = match pk.level {
            MlKemLevel::MlKem768 => {
                let pk = mlkem768::MlKem768PublicKey::try_from(pk.as_bytes())
                    .map_err(|_| CryptoError::InvalidPublicKey("ML-KEM-768"))?;
                let (ct, ss) = mlkem768::encapsulate(&pk, *m);
                (ct.as_slice().as_slice().into(), ss)
            }
            MlKemLevel::MlKem1024 => {
                let pk = mlkem1024::MlKem1024PublicKey::try_from(pk.as_bytes())
                    .map_err(|_| CryptoError::InvalidPublicKey("ML-KEM-1024"))?;
                let (ct, ss) = mlkem1024::encapsulate(&pk, *m);
                (ct.as_slice().as_slice().into(), ss)
            }
        };
        Ok((MlKemCiphertext { level: pk.level, bytes: ct }, Zeroizing::new(ss)))
    }
}

impl MlKemProvider for LibcruxMlKem {
    fn name(&self) -> &'static str {
        "libcrux"
    }

    fn generate(
        &self,
        level: MlKemLevel,
        rng: &mut dyn CryptoRng,
    ) -> Result<(MlKemSecretKey, MlKemPublicKey), CryptoError> {
        let seed: Zeroizing<[u8; 64]> = Zeroizing::new(random_array(rng));
        MlKemSecretKey::from_seed(level, seed.as_ref())
    }

    fn encapsulate(
        &self,
        pk: &MlKemPublicKey,
        rng: &mut dyn CryptoRng,
    ) -> Result<(MlKemCiphertext, SharedSecret), CryptoError> {
        let m: Zeroizing<[u8; 32]> = Zeroizing::new(random_array(rng));
        self.encapsulate_deterministic(pk, &m)
    }

    fn decapsulate(&self, sk: &MlKemSecretKey, ct: &MlKemCiphertext) -> Result<SharedSecret, CryptoError> {
        if sk.level != ct.level {
            return Err(CryptoError::UnsupportedParameter("ciphertext and key are of different ML-KEM levels"));
        }
        let ss = match sk.level {
            MlKemLevel::MlKem768 => {
                let key = mlkem768::MlKem768PrivateKey::try_from(sk.as_bytes())
                    .map_err(|_| CryptoError::InvalidPrivateKey("ML-KEM-768"))?;
                let ct = mlkem768::MlKem768Ciphertext::try_from(ct.as_bytes()).map_err(|_| {
                    CryptoError::InvalidLength { what: "ML-KEM ciphertext", expected: 1088, got: ct.bytes.len() }
                })?;
                mlkem768::decapsulate(&key, &ct)
            }
            MlKemLevel::MlKem1024 => {
                let key = mlkem1024::MlKem1024PrivateKey::try_from(sk.as_bytes())
                    .map_err(|_| CryptoError::InvalidPrivateKey("ML-KEM-1024"))?;
                let ct = mlkem1024::MlKem1024Ciphertext::try_from(ct.as_bytes()).map_err(|_| {
                    CryptoError::InvalidLength { what: "ML-KEM ciphertext", expected: 1568, got: ct.bytes.len() }
                })?;
                mlkem1024::decapsulate(&key, &ct)
            }
        };
        Ok(Zeroizing::new(ss))
    }
}

/// aws-lc-rs ML-KEM: randomness from aws-lc's own DRBG (the `rng` argument is
/// not used). Kept as a second, independently written implementation.
#[derive(Debug, Clone, Copy)]
pub struct AwsLcMlKem;

/// The aws-lc provider.
pub static AWS_LC: AwsLcMlKem = AwsLcMlKem;

fn aws_alg(level: MlKemLevel) -> &'static kem::Algorithm<kem::AlgorithmId> {
    match level {
        MlKemLevel::MlKem768 => &kem::ML_KEM_768,
        MlKemLevel::MlKem1024 => &kem::ML_KEM_1024,
    }
}

impl MlKemProvider for AwsLcMlKem {
    fn name(&self) -> &'static str {
        "aws-lc"
    }

    fn generate(
        &self,
        level: MlKemLevel,
        _rng: &mut dyn CryptoRng,
    ) -> Result<(MlKemSecretKey, MlKemPublicKey), CryptoError> {
        let dk = kem::DecapsulationKey::generate(aws_alg(level)).map_err(|_| CryptoError::Internal("ML-KEM keygen"))?;
        let ek = dk.encapsulation_key().map_err(|_| CryptoError::Internal("ML-KEM keygen"))?;
        let ek = ek.key_bytes().map_err(|_| CryptoError::Internal("ML-KEM keygen"))?;
        let sk = dk.key_bytes().map_err(|_| CryptoError::Internal("ML-KEM keygen"))?;
        let sk = MlKemSecretKey { level, bytes: Zeroizing::new(sk.as_ref().to_vec()) };
        let pk = MlKemPublicKey { level, bytes: ek.as_ref().into() };
        Ok((sk, pk))
    }

    fn encapsulate(
        &self,
        pk: &MlKemPublicKey,
        _rng: &mut dyn CryptoRng,
    ) -> Result<(MlKemCiphertext, SharedSecret), CryptoError> {
        let ek = kem::EncapsulationKey::new(aws_alg(pk.level), pk.as_bytes())
            .map_err(|_| CryptoError::InvalidPublicKey(pk.level.name()))?;
        let (ct, ss) = ek.encapsulate().map_err(|_| CryptoError::Internal("ML-KEM encapsulate"))?;
        let ct = MlKemCiphertext::from_bytes(pk.level, ct.as_ref())?;
        let ss = Zeroizing::new(to_array::<32>("ML-KEM shared secret", ss.as_ref())?);
        Ok((ct, ss))
    }

    fn decapsulate(&self, sk: &MlKemSecretKey, ct: &MlKemCiphertext) -> Result<SharedSecret, CryptoError> {
        if sk.level != ct.level {
            return Err(CryptoError::UnsupportedParameter("ciphertext and key are of different ML-KEM levels"));
        }
        let dk = kem::DecapsulationKey::new(aws_alg(sk.level), sk.as_bytes())
            .map_err(|_| CryptoError::InvalidPrivateKey(sk.level.name()))?;
        let ss = dk
            .decapsulate(kem::Ciphertext::from(ct.as_bytes()))
            .map_err(|_| CryptoError::Internal("ML-KEM decapsulate"))?;
        Ok(Zeroizing::new(to_array::<32>("ML-KEM shared secret", ss.as_ref())?))
    }
}
