//! Decoding errors.

use thiserror::Error;

/// Why a frame could not be decoded. Every variant means "close this
/// connection": a peer that sends a malformed frame is not trusted further.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame ended before a field was complete.
    #[error("frame truncated: needed {needed} more byte(s)")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes were left after the last field of the frame.
    #[error("frame has {0} trailing byte(s) after its last field")]
    TrailingBytes(usize),
    /// The announced frame length exceeds the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this build speaks version 1); upgrade the older side")]
    UnknownVersion(u8),
    /// The frame type byte is not one this version knows.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// An option/boolean tag was neither 0 nor 1.
    #[error("invalid tag byte {0} (expected 0 or 1)")]
    InvalidTag(u8),
    /// A string was not valid UTF-8.
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
    /// A username did not match `[a-z0-9_.-]{1,32}`.
    #[error("invalid username: {0}")]
    InvalidUsername(&'static str),
    /// A field had the wrong fixed length.
    #[error("field {field} has length {len}, expected {expected}")]
    BadLength {
        /// Field name.
        field: &'static str,
        /// Received length.
        len: usize,
        /// Expected length.
        expected: usize,
    },
    /// A frame body was empty.
    #[error("empty frame body")]
    Empty,
}
