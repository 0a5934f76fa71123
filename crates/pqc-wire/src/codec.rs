//! Primitive encoders/decoders. Integers are big-endian. `bytes` fields are
//! `u32 length || data`, short strings are `u8 length || utf-8`, options are a
//! tag byte (0 = none, 1 = some) followed by the value, lists are
//! `u32 count || items`.

use crate::error::WireError;

/// A cursor over a frame body. Every read returns `Result`; nothing panics.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated { needed: n - self.buf.len() });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a boolean encoded as 0 or 1.
    pub fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(WireError::InvalidTag(t)),
        }
    }

    /// Reads `u32 length || data`.
    pub fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }

    /// Reads `u16 length || utf-8`.
    pub fn string(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError::InvalidUtf8)
    }

    /// Reads an option: tag byte then the value.
    pub fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, WireError>) -> Result<Option<T>, WireError> {
        if self.bool()? { Ok(Some(f(self)?)) } else { Ok(None) }
    }

    /// Reads `u32 count || items`. The count is checked against the bytes
    /// left (each item takes at least `min_item` bytes) before allocating.
    pub fn list<T>(
        &mut self,
        min_item: usize,
        mut f: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let n = self.u32()? as usize;
        let need = n.saturating_mul(min_item.max(1));
        if need > self.remaining() {
            return Err(WireError::Truncated { needed: need - self.remaining() });
        }
        // Reserve no more than the bytes left could hold as `T`s: a list of
        // many tiny items must not reserve many times the frame's size.
        let mut out = Vec::with_capacity(n.min(self.remaining() / std::mem::size_of::<T>().max(1)));
        for _ in 0..n {
            out.push(f(self)?);
        }
        Ok(out)
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::TrailingBytes(self.buf.len())) }
    }
}

/// What [`Writer::framed`] reserves: the prefix, version, type, request id
/// and a user name or two fit.
const FRAMED_CAPACITY: usize = 128;

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written so far.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// A writer for a whole frame: room for the `u32` length prefix that
    /// [`Self::into_frame`] fills in, so the body is never copied to add it.
    ///
    /// Starts with room for a small frame's header fields, so encoding one
    /// does not grow the buffer a few bytes at a time (each growth is a
    /// reallocation and a copy); a payload written by [`Self::bytes`]
    /// grows it at most once more.
    pub fn framed() -> Self {
        let mut buf = Vec::with_capacity(FRAMED_CAPACITY);
        buf.extend_from_slice(&[0; 4]);
        Self { buf }
    }

    /// The frame started by [`Self::framed`]: its length prefix, then the body.
    pub fn into_frame(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len().saturating_sub(4)).unwrap_or(u32::MAX);
        if let Some(prefix) = self.buf.get_mut(..4) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        self.buf
    }

    /// Raw bytes, no length prefix.
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A `u8`.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.raw(&v.to_be_bytes());
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }

    /// A boolean as 0/1.
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    /// `u32 length || data` (data longer than 4 GiB is truncated to the
    /// length field; frames are far smaller than that by construction).
    pub fn bytes(&mut self, b: &[u8]) {
        let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.buf.reserve(4 + n as usize);
        self.u32(n);
        self.raw(&b[..n as usize]);
    }

    /// `u16 length || utf-8` (truncated at 65535 bytes on a char boundary).
    pub fn string(&mut self, s: &str) {
        let mut n = s.len().min(u16::MAX as usize);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.u16(n as u16);
        self.raw(&s.as_bytes()[..n]);
    }

    /// An option.
    pub fn option<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.u8(0),
            Some(x) => {
                self.u8(1);
                f(self, x);
            }
        }
    }

    /// `u32 count || items`.
    pub fn list<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
        for it in items.iter().take(u32::MAX as usize) {
            f(self, it);
        }
    }
}
