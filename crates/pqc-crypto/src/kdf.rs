//! Key derivation: HKDF-SHA-256 / HKDF-SHA-512 (RFC 5869) and SHA3-256, from aws-lc.

use aws_lc_rs::{digest, hkdf};
use zeroize::Zeroizing;

use crate::CryptoError;

/// The hash under an HKDF instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HkdfHash {
    /// HKDF-SHA-256: output at most 255 * 32 = 8160 bytes.
    Sha256,
    /// HKDF-SHA-512: output at most 255 * 64 = 16320 bytes.
    Sha512,
}

impl HkdfHash {
    fn algorithm(self) -> hkdf::Algorithm {
        match self {
            Self::Sha256 => hkdf::HKDF_SHA256,
            Self::Sha512 => hkdf::HKDF_SHA512,
        }
    }

    /// The largest output HKDF-Expand can produce with this hash.
    pub fn max_output(self) -> usize {
        match self {
            Self::Sha256 => 255 * 32,
            Self::Sha512 => 255 * 64,
        }
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF (extract then expand) into `out`. An empty salt means a salt of
/// hash-length zero bytes, as RFC 5869 says.
pub fn hkdf(hash: HkdfHash, salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), CryptoError> {
    if out.len() > hash.max_output() {
        return Err(CryptoError::UnsupportedParameter("HKDF output longer than 255 hash blocks"));
    }
    let prk = hkdf::Salt::new(hash.algorithm(), salt).extract(ikm);
    let okm = prk.expand(info, Len(out.len())).map_err(|_| CryptoError::UnsupportedParameter("HKDF output length"))?;
    okm.fill(out).map_err(|_| CryptoError::Internal("HKDF expand"))
}

/// HKDF-SHA-256 into a fixed-size, zeroizing array.
pub fn hkdf_sha256<const N: usize>(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Result<Zeroizing<[u8; N]>, CryptoError> {
    let mut out = Zeroizing::new([0u8; N]);
    hkdf(HkdfHash::Sha256, salt, ikm, info, out.as_mut())?;
    Ok(out)
}

/// HMAC-SHA-256 (used for the ratchets' chain-key step).
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let tag = ctx.sign();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

fn digest_parts<const N: usize>(alg: &'static digest::Algorithm, parts: &[&[u8]]) -> [u8; N] {
    let mut ctx = digest::Context::new(alg);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; N];
    out.copy_from_slice(&d.as_ref()[..N]);
    out
}

/// SHA3-256 over the concatenation of `parts`.
pub fn sha3_256(parts: &[&[u8]]) -> [u8; 32] {
    digest_parts(&digest::SHA3_256, parts)
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    digest_parts(&digest::SHA256, parts)
}

/// SHA-512 over the concatenation of `parts`.
pub fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    digest_parts(&digest::SHA512, parts)
}

/// Constant-time equality of two byte strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// Incremental SHA-256 (for files hashed while they stream).
pub struct Sha256Hasher(digest::Context);

impl Default for Sha256Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }

    /// Absorbs `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}
