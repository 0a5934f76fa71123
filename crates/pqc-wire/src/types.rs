//! Typed identifiers.

use core::fmt;

use crate::codec::{Reader, Writer};
use crate::error::WireError;

/// Length of the server's login challenge.
pub const CHALLENGE_LEN: usize = 32;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $inner:ty, $read:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl $name {
            /// Decodes the ID.
            pub fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
                Ok(Self(r.$read()?))
            }
            /// Encodes the ID.
            pub fn write(&self, w: &mut Writer) {
                w.$read(self.0);
            }
        }
    };
}

id_type!(
    /// A queued envelope in a recipient's mailbox (assigned by the server).
    EnvelopeId, u64, u64
);
id_type!(
    /// An uploaded attachment (assigned by the server, random).
    AttachmentId, u64, u64
);
id_type!(
    /// A one-time prekey, chosen by its owner.
    PreKeyId, u32, u32
);
id_type!(
    /// A request, chosen by the client and echoed in the response.
    RequestId, u32, u32
);

/// Length of a [`RoomId`].
pub const ROOM_ID_LEN: usize = 16;

/// The opaque id the relay routes a room by (16 bytes; clients derive it from
/// the room name with HKDF, so the server never sees the name).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId(pub [u8; ROOM_ID_LEN]);

impl RoomId {
    /// Decodes the 16 raw bytes.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self(r.array()?))
    }
    /// Encodes the 16 raw bytes.
    pub fn write(&self, w: &mut Writer) {
        w.raw(&self.0);
    }
    /// Lower-case hex (for logs and storage keys).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", self.to_hex())
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A validated username: 1–32 characters from `[a-z0-9_.-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(String);

impl Username {
    /// Maximum length in bytes (and characters).
    pub const MAX_LEN: usize = 32;

    /// Validates `s`.
    pub fn new(s: &str) -> Result<Self, WireError> {
        if s.is_empty() {
            return Err(WireError::InvalidUsername("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(WireError::InvalidUsername("must be at most 32 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(WireError::InvalidUsername("only a-z, 0-9, '_', '.' and '-' are allowed"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Decodes `u8 length || ascii`.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = r.u8()? as usize;
        let b = r.take(n)?;
        let s = core::str::from_utf8(b).map_err(|_| WireError::InvalidUtf8)?;
        Self::new(s)
    }

    /// Encodes `u8 length || ascii`.
    pub fn write(&self, w: &mut Writer) {
        w.u8(self.0.len() as u8);
        w.raw(self.0.as_bytes());
    }
}

impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Username({:?})", self.0)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::str::FromStr for Username {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::new("alice").is_ok());
        assert!(Username::new("a.b-c_9").is_ok());
        assert!(Username::new("").is_err());
        assert!(Username::new("Alice").is_err());
        assert!(Username::new("a b").is_err());
        assert!(Username::new(&"a".repeat(33)).is_err());
        assert!(Username::new(&"a".repeat(32)).is_ok());
    }
}
