//! The OpenMLS provider: libcrux crypto plus an in-memory store that can be
//! written out as bytes (the client keeps those bytes encrypted in SQLite).

use std::collections::HashMap;

use openmls_libcrux_crypto::CryptoProvider;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;

use crate::codec::{Reader, Writer};
use crate::error::{RoomError, mls_err};

/// libcrux crypto (X-Wing, ChaCha20-Poly1305, Ed25519, HMAC-DRBG seeded by
/// the OS) and OpenMLS's memory storage.
///
/// Randomness: the libcrux provider draws from its own HMAC-DRBG, seeded from
/// the operating system, and HPKE encapsulation uses it internally, so the
/// randomness of MLS operations cannot be injected from outside with
/// `openmls_libcrux_crypto` 0.4. Signature keys, which we *can* control, are
/// derived from caller-supplied seeds (see [`crate::Member::new`]).
pub(crate) struct RoomProvider {
    crypto: CryptoProvider,
    storage: MemoryStorage,
}

impl RoomProvider {
    pub(crate) fn new() -> Result<Self, RoomError> {
        Ok(Self {
            crypto: CryptoProvider::new().map_err(mls_err("crypto provider"))?,
            storage: MemoryStorage::default(),
        })
    }

    /// Writes every stored key/value pair, sorted by key so equal states give equal bytes.
    pub(crate) fn write_storage(&self, w: &mut Writer) -> Result<(), RoomError> {
        let values = self.storage.values.read().map_err(|_| RoomError::Poisoned)?;
        let mut entries: Vec<_> = values.iter().collect();
        entries.sort();
        w.u32(u32::try_from(entries.len()).map_err(|_| RoomError::CorruptState("too many entries"))?);
        for (k, v) in entries {
            w.bytes(k);
            w.bytes(v);
        }
        Ok(())
    }

    /// Reads what [`Self::write_storage`] wrote into a fresh provider.
    pub(crate) fn read_storage(r: &mut Reader<'_>) -> Result<Self, RoomError> {
        let provider = Self::new()?;
        let count = r.u32()?;
        let mut map = HashMap::new();
        for _ in 0..count {
            let k = r.bytes()?.to_vec();
            let v = r.bytes()?.to_vec();
            map.insert(k, v);
        }
        *provider.storage.values.write().map_err(|_| RoomError::Poisoned)? = map;
        Ok(provider)
    }
}

impl OpenMlsProvider for RoomProvider {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
