//! A small length-prefixed codec for this crate's own records (saved state,
//! room metadata, sealed group info). The reader never panics and the callers
//! reject trailing bytes.

use crate::error::RoomError;

/// Appends big-endian integers and length-prefixed byte strings.
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A byte string with a u32 length prefix.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        // Lengths above u32::MAX cannot occur for the records written here
        // (storage values and names are far smaller); saturate defensively.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.0.extend_from_slice(b);
    }
}

/// Reads what [`Writer`] wrote; every method fails cleanly on short input.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    fn short(&self) -> RoomError {
        RoomError::Malformed { what: self.what, reason: "truncated".into() }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], RoomError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], RoomError> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, RoomError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, RoomError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, RoomError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], RoomError> {
        let len = usize::try_from(self.u32()?).map_err(|_| self.short())?;
        self.take(len)
    }
    pub(crate) fn string(&mut self) -> Result<String, RoomError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| RoomError::Malformed { what: self.what, reason: "invalid UTF-8".into() })
    }
    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }
    /// Fails unless all input was consumed.
    pub(crate) fn finish(self) -> Result<(), RoomError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(RoomError::Malformed { what: self.what, reason: "trailing bytes".into() })
        }
    }
}

/// Appends a SHA-256 digest of `bytes` (integrity of saved states).
pub(crate) fn append_digest(mut bytes: Vec<u8>) -> Vec<u8> {
    let d = pqc_crypto::kdf::sha256(&[&bytes]);
    bytes.extend_from_slice(&d);
    bytes
}

/// Checks and strips the digest added by [`append_digest`].
pub(crate) fn check_digest<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a [u8], RoomError> {
    if bytes.len() < 32 {
        return Err(RoomError::CorruptState(what));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if !pqc_crypto::kdf::ct_eq(&pqc_crypto::kdf::sha256(&[body]), digest) {
        return Err(RoomError::CorruptState(what));
    }
    Ok(body)
}
