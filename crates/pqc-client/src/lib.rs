//! # pqc-client
//!
//! The pqc-chat client engine and the `pqc-client` command-line tool. The
//! engine ([`engine::Client`]) connects over post-quantum QUIC/TLS, logs in
//! by signing the server's challenge with the hybrid identity key, keeps
//! one-time prekeys stocked, and sends and receives end-to-end encrypted
//! text and files with `pqc-proto` sessions. The CLI and the terminal UI
//! are thin layers over it.
//!
//! # Layout
//!
//! - [`error`] — [`error::ClientError`].
//! - [`profile`] — the sealed, passphrase-protected profile (keys, sessions,
//!   contacts, pinned servers, history).
//! - [`content`] — the plaintext format inside messages; file-name sanitising.
//! - [`files`] — chunked file encryption for attachments.
//! - [`engine`] — [`engine::Client`]: register, login, send, receive, verify.
//! - [`rooms`] — rooms: MLS groups over the relay's ordered room log
//!   (create, join by external commit, send, leave, audio/video state).
//! - [`config`] — `config/client.toml`.
//! - [`tui`] — `pqc-client chat`, the interactive terminal UI (ratatui).

pub mod config;
pub mod content;
pub mod engine;
pub mod error;
pub mod files;
pub mod profile;
pub mod rooms;
pub mod tui;

pub use engine::{Client, ConnectOptions, Event};
pub use error::{ClientError, Result};
