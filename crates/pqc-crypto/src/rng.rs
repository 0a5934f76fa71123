//! Randomness is always an argument: every function that needs it takes
//! `&mut R where R: CryptoRng`. [`SystemRng`] is the one the shells pass in
//! production; tests pass a seeded ChaCha20 generator for reproducibility.

use core::convert::Infallible;

pub use rand_core::{CryptoRng, Rng, TryCryptoRng, TryRng};

/// The operating system's CSPRNG, reached through aws-lc's DRBG (built
/// without aws-lc's CPU jitter entropy source, see `.cargo/config.toml`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRng;

impl TryRng for SystemRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        if aws_lc_rs::rand::fill(dst).is_err() {
            // aws-lc itself aborts when its entropy source fails; there is no
            // safe way to continue without randomness, and no panic is allowed
            // to unwind through protocol state.
            std::process::abort();
        }
        Ok(())
    }
}

impl TryCryptoRng for SystemRng {}

/// Draws a fixed-size array from `rng`.
pub fn random_array<const N: usize, R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; N] {
    let mut out = [0u8; N];
    rng.fill_bytes(&mut out);
    out
}

/// Lends any (possibly unsized) CSPRNG as a sized one, so generic callers can
/// pass it on as `&mut dyn CryptoRng`.
pub(crate) struct RngRef<'a, R: ?Sized>(pub(crate) &'a mut R);

impl<R: CryptoRng + ?Sized> TryRng for RngRef<'_, R> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl<R: CryptoRng + ?Sized> TryCryptoRng for RngRef<'_, R> {}
