//! `config/server.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ServerError;

/// Server configuration. Every field has a default; flags override.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Host/IP the QUIC endpoint binds (`--listen` overrides host and port).
    pub signaling_host: String,
    /// UDP port of the QUIC endpoint.
    pub signaling_port: u16,
    /// Certificate PEM; relative paths are under `data_dir`. Created on first start if absent.
    pub certfile: PathBuf,
    /// Private key PEM; relative paths are under `data_dir`.
    pub keyfile: PathBuf,
    /// Default room size cap (used by rooms).
    pub default_max_participants: u32,
    /// `error`, `warn`, `info`, `debug` or `trace` (`RUST_LOG` overrides).
    pub log_level: String,
    /// Where the database and certificate live.
    pub data_dir: PathBuf,
    /// TCP address of the status/metrics HTTP endpoint (`--status` overrides).
    pub status_addr: String,
    /// Resource limits.
    pub limits: Limits,
}

/// Resource limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame body accepted (bytes); bigger frames close the connection.
    pub max_frame: usize,
    /// Envelopes queued per recipient.
    pub max_mailbox: u32,
    /// Ciphertext bytes queued per recipient.
    pub max_mailbox_bytes: u64,
    /// Rooms a user may be a member of.
    pub max_rooms_per_user: u32,
    /// Largest participant limit a room may be created with.
    pub max_room_participants: u32,
    /// Ciphertext bytes of a room's log; an entry past it pushes out the
    /// oldest ones, and members that had not read them join the room again.
    pub max_room_log_bytes: u64,
    /// Largest attachment as stored, i.e. encrypted (bytes). The default lets
    /// a 100 MiB file through: clients add a 16-byte tag per chunk (512 KiB
    /// with the default `max_frame`).
    pub max_attachment: u64,
    /// Sustained requests per second per connection (burst: twice that). A
    /// file chunk of 64 KiB or more counts as 1/16 of a request.
    pub requests_per_second: u32,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Connections from one address (an IPv6 address by its /64) that may
    /// wait to log in at once; 0: no limit.
    pub max_pending_logins_per_address: u32,
    /// Connections one account may be logged in on at once (its devices
    /// and commands); a login past it is refused (`Forbidden`). 0: no
    /// limit.
    pub max_connections_per_user: u32,
    /// Push `LowPrekeys` (`LowKeyPackages`) to the owner when fewer one-time
    /// prekeys (MLS key packages) remain.
    pub low_prekeys_threshold: u32,
    /// MLS key packages kept per user.
    pub max_key_packages: u32,
    /// Seconds a new connection has to finish the QUIC handshake and then
    /// register or log in; after that it is closed (slowloris defence).
    pub login_timeout_secs: u64,
    /// Seconds a frame may take to arrive once its length prefix has been
    /// read; a slower frame closes the connection (dribbling defence).
    pub frame_timeout_secs: u64,
    /// Failed Register/Login attempts allowed per connection; one more
    /// closes it (registration spam and password-spray defence).
    pub max_auth_attempts: u32,
    /// New accounts per source address (an IPv6 address by its /64) and
    /// hour: that many at once, then one more every `3600 / n` seconds.
    /// 0: no limit.
    pub registrations_per_hour: u32,
    /// Bytes of attachments (as stored, encrypted) one sender may have on
    /// the relay at once, unfinished or waiting for their recipients; one
    /// more is refused (`TooLarge`) until some are downloaded.
    pub max_attachment_bytes_per_sender: u64,
    /// Unfinished uploads kept per sender: beginning one more deletes the
    /// sender's oldest (bounds the disk abandoned uploads can hold).
    pub max_unfinished_uploads: u32,
    /// Hours an upload may stay unfinished (resumable); older ones are
    /// deleted (checked at start and every hour).
    pub unfinished_upload_hours: u64,
    /// Days an envelope, a room entry or a finished file waits for its
    /// recipient (every member, for a room's entry or file); older ones are
    /// deleted (checked at start and every hour; a member who missed room
    /// entries joins the room again). 0: kept until delivered.
    pub envelope_days: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            signaling_host: "0.0.0.0".into(),
            signaling_port: 8443,
            certfile: "cert.pem".into(),
            keyfile: "key.pem".into(),
            default_max_participants: 16,
            log_level: "info".into(),
            data_dir: "./pqc-data".into(),
            status_addr: "127.0.0.1:8444".into(),
            limits: Limits::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            max_mailbox: 10_000,
            max_mailbox_bytes: pqc_store::server::MAX_MAILBOX_BYTES,
            max_room_log_bytes: pqc_store::server::MAX_ROOM_LOG_BYTES,
            max_rooms_per_user: pqc_store::server::MAX_ROOMS_PER_USER,
            max_room_participants: 1000,
            max_attachment: (100 << 20) + 64 * 1024,
            requests_per_second: 100,
            max_connections: 1000,
            max_pending_logins_per_address: 64,
            max_connections_per_user: 16,
            low_prekeys_threshold: 10,
            max_key_packages: 100,
            login_timeout_secs: 10,
            frame_timeout_secs: 30,
            max_auth_attempts: 5,
            registrations_per_hour: 20,
            max_unfinished_uploads: 16,
            max_attachment_bytes_per_sender: 2 << 30,
            unfinished_upload_hours: 72,
            envelope_days: 30,
        }
    }
}

impl Config {
    /// Parses TOML text (the fuzzed entry point).
    pub fn parse(text: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    /// Entry point shared by the `config_server` fuzz target and the corpus
    /// replay test: any bytes, never panics. Text that parses must also be
    /// usable (paths resolve, limits are read).
    pub fn fuzz_parse(bytes: &[u8]) {
        let Ok(text) = std::str::from_utf8(bytes) else { return };
        if let Ok(cfg) = Self::parse(text) {
            let _ = (cfg.cert_path(), cfg.key_path());
            let _ = format!("{}:{}", cfg.signaling_host, cfg.signaling_port).parse::<std::net::SocketAddr>();
            let _ = cfg.status_addr.parse::<std::net::SocketAddr>();
        }
    }

    /// `certfile` resolved against `data_dir`.
    pub fn cert_path(&self) -> PathBuf {
        self.data_dir.join(&self.certfile)
    }

    /// `keyfile` resolved against `data_dir`.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join(&self.keyfile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_config_parses_to_defaults() {
        let text = include_str!("../../../config/server.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
        assert!(Config::parse("bogus = 1").is_err());
        assert!(Config::parse("[limits]\nmax_frame = \"x\"").is_err());
    }
}
