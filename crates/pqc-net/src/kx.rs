//! Recording key-exchange groups: learn which TLS group a connection
//! negotiated.
//!
//! rustls keeps key-exchange groups as `&'static dyn SupportedKxGroup`, so
//! the recorders live in a process-wide pool: a connection checks out one set
//! ([`KxProbe::new`]), builds its rustls config from [`KxProbe::groups`], and
//! the set returns to the pool when the probe is dropped. Memory is bounded by
//! the peak number of concurrent handshakes.
//!
//! On the server only the selected group's `start_and_complete` (or
//! `start`) runs; on the client every offered group's `start` runs but only
//! the selected one `complete`s — both are recorded at the point where the
//! group is known to be the chosen one.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{NamedGroup, ProtocolVersion, SupportedProtocolVersion};

type Cell = Arc<OnceLock<NamedGroup>>;

struct Recorder {
    inner: &'static dyn SupportedKxGroup,
    target: Mutex<Option<Cell>>,
}

impl core::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Recording({:?})", self.inner.name())
    }
}

impl Recorder {
    fn record(&self, g: NamedGroup) {
        if let Some(cell) = self.target.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = cell.set(g);
        }
    }

    fn cell(&self) -> Option<Cell> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl SupportedKxGroup for Recorder {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let inner = self.inner.start()?;
        Ok(Box::new(RecordingActive { inner, cell: self.cell() }))
    }

    fn start_and_complete(&self, peer_pub_key: &[u8]) -> Result<CompletedKeyExchange, rustls::Error> {
        let out = self.inner.start_and_complete(peer_pub_key)?;
        self.record(self.inner.name());
        Ok(out)
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        self.inner.ffdhe_group()
    }

    fn name(&self) -> NamedGroup {
        self.inner.name()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}

struct RecordingActive {
    inner: Box<dyn ActiveKeyExchange>,
    cell: Option<Cell>,
}

impl RecordingActive {
    fn record(&self, g: NamedGroup) {
        if let Some(c) = &self.cell {
            let _ = c.set(g);
        }
    }
}

impl ActiveKeyExchange for RecordingActive {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let g = self.inner.group();
        let cell = self.cell.clone();
        let out = self.inner.complete(peer_pub_key)?;
        if let Some(c) = cell {
            let _ = c.set(g);
        }
        Ok(out)
    }

    fn complete_for_tls_version(
        self: Box<Self>,
        peer_pub_key: &[u8],
        tls_version: &SupportedProtocolVersion,
    ) -> Result<SharedSecret, rustls::Error> {
        let g = self.inner.group();
        let cell = self.cell.clone();
        let out = self.inner.complete_for_tls_version(peer_pub_key, tls_version)?;
        if let Some(c) = cell {
            let _ = c.set(g);
        }
        Ok(out)
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        self.inner.hybrid_component()
    }

    fn complete_hybrid_component(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let g = self.inner.hybrid_component().map(|(g, _)| g);
        if let Some(g) = g {
            self.record(g);
        }
        self.inner.complete_hybrid_component(peer_pub_key)
    }

    fn pub_key(&self) -> &[u8] {
        self.inner.pub_key()
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        self.inner.ffdhe_group()
    }

    fn group(&self) -> NamedGroup {
        self.inner.group()
    }
}

type RecorderSet = Vec<&'static Recorder>;

static POOL: Mutex<Vec<RecorderSet>> = Mutex::new(Vec::new());

/// Records the key-exchange group negotiated by one connection.
#[derive(Debug)]
pub struct KxProbe {
    set: RecorderSet,
    cell: Cell,
}

impl KxProbe {
    /// Checks out a recorder set wrapping the aws-lc-rs provider's default
    /// groups (X25519MLKEM768 first).
    pub fn new() -> Self {
        let base = rustls::crypto::aws_lc_rs::default_provider().kx_groups;
        let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let set = match pooled {
            Some(set) if set.len() == base.len() => set,
            _ => base.iter().map(|g| &*Box::leak(Box::new(Recorder { inner: *g, target: Mutex::new(None) }))).collect(),
        };
        let cell: Cell = Arc::new(OnceLock::new());
        for r in &set {
            *r.target.lock().unwrap_or_else(PoisonError::into_inner) = Some(cell.clone());
        }
        Self { set, cell }
    }

    /// The groups to put in the connection's `CryptoProvider::kx_groups`.
    pub fn groups(&self) -> Vec<&'static dyn SupportedKxGroup> {
        self.set.iter().map(|r| *r as &'static dyn SupportedKxGroup).collect()
    }

    /// The negotiated group, once the handshake selected one.
    pub fn get(&self) -> Option<NamedGroup> {
        self.cell.get().copied()
    }
}

impl Default for KxProbe {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KxProbe {
    fn drop(&mut self) {
        for r in &self.set {
            *r.target.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        POOL.lock().unwrap_or_else(PoisonError::into_inner).push(core::mem::take(&mut self.set));
    }
}
