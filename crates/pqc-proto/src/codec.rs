//! A tiny binary codec: a [`Reader`] that returns errors instead of panicking
//! and rejects trailing bytes, and a few writer helpers. All integers are
//! big-endian.

use crate::error::{ProtoError, Result};

/// Reads a byte string front to back.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Self { buf, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(ProtoError::Truncated { what: self.what })?;
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A presence flag: 0 or 1, anything else is malformed.
    pub(crate) fn flag(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ProtoError::malformed(self.what, "presence flag is neither 0 nor 1")),
        }
    }

    /// A byte string with a u32 length prefix, at most `max` bytes.
    pub(crate) fn vec32(&mut self, max: usize) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(ProtoError::malformed(self.what, "length field exceeds the limit"));
        }
        self.bytes(len)
    }

    /// Checks the leading version byte.
    pub(crate) fn version(&mut self, supported: u8) -> Result<()> {
        let got = self.u8()?;
        if got != supported {
            return Err(ProtoError::UnknownVersion { what: self.what, got, supported });
        }
        Ok(())
    }

    /// Checks a type byte.
    pub(crate) fn expect_type(&mut self, expected: u8) -> Result<()> {
        let got = self.u8()?;
        if got != expected {
            return Err(ProtoError::UnknownType { what: self.what, got });
        }
        Ok(())
    }

    /// Everything not yet read.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// How many bytes are left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Succeeds only if every byte was read.
    pub(crate) fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes { what: self.what, extra: self.buf.len() })
        }
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_vec32(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| ProtoError::malformed("encoding", "field longer than 4 GiB"))?;
    put_u32(out, len);
    out.extend_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reader_never_panics_and_rejects_trailing() {
        let mut r = Reader::new("t", &[1, 0, 2, 0, 0, 0, 3, 9]);
        r.version(1).unwrap();
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.u32().unwrap(), 3);
        assert!(matches!(r.finish(), Err(ProtoError::TrailingBytes { extra: 1, .. })));
        let mut r = Reader::new("t", &[0, 0, 0, 9, 1]);
        assert!(matches!(r.vec32(100), Err(ProtoError::Truncated { .. })));
        let mut r = Reader::new("t", &[2]);
        assert!(matches!(r.version(1), Err(ProtoError::UnknownVersion { got: 2, .. })));
        let mut r = Reader::new("t", &[0xff, 0xff, 0xff, 0xff]);
        assert!(r.vec32(10).is_err());
    }
}
