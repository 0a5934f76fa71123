//! `config/client.toml`: defaults for the command-line flags.
//!
//! ```toml
//! server = "127.0.0.1:8443"   # HOST:PORT of the pqc-server
//! ca = "/path/to/ca.pem"      # optional: verify the server with a CA instead of pinning
//! profile = "/path/to/profile" # optional: profile folder
//! download_dir = "."          # where `recv` saves files
//! log_level = "warn"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ClientError, Result};

/// The client configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Server `HOST:PORT`.
    #[serde(default)]
    pub server: Option<String>,
    /// CA file.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Profile folder.
    #[serde(default)]
    pub profile: Option<PathBuf>,
    /// Where `recv` saves files.
    #[serde(default)]
    pub download_dir: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`).
    #[serde(default)]
    pub log_level: Option<String>,
}

impl ClientConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| ClientError::Usage(format!("bad client config: {e}")))
    }

    /// Loads `path`; a missing default file is an empty config.
    pub fn load(path: &Path, explicit: bool) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(t) => Self::parse(&t),
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ClientError::io(format!("cannot read {}", path.display()), e)),
        }
    }
}
