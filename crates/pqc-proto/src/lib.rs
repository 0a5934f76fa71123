//! # pqc-proto
//!
//! The sans-IO 1:1 session protocol of pqc-chat. It takes bytes, randomness
//! (`&mut R: CryptoRng`) and stores as arguments and returns bytes: no
//! sockets, clocks, global RNG or threads.
//!
//! - Identities: a hybrid Ed25519 + ML-DSA-65 signing key per device plus a
//!   certified X25519 identity-DH key ([`IdentityKeyPair`], [`IdentityKey`]).
//! - Prekeys: a signed X25519 prekey and a signed last-resort ML-KEM-1024
//!   prekey in one blob; one-time X25519 and one-time ML-KEM-1024 prekeys in
//!   individually signed blobs. The server stores the blobs opaquely; a
//!   fetcher verifies them with [`PreKeyBundle::from_parts`].
//! - Handshake: PQXDH-style, from `DH(IKdh_A, SPK_B)`, `DH(EK_A, IKdh_B)`,
//!   `DH(EK_A, SPK_B)`, optionally `DH(EK_A, OPK_B)`, and an ML-KEM-1024
//!   encapsulation, keyed over a transcript hash of both full identities.
//!   The prekey message names its initiator by a 32-byte fingerprint
//!   ([`PeerIdentity::fingerprint`]); the responder supplies the identity.
//! - Double Ratchet (AES-256-GCM, header as associated data) with a sparse
//!   ML-KEM-768 ratchet whose keys and ciphertexts travel in 40-byte chunks,
//!   one per message, and whose secrets are mixed into the root key at the
//!   next direction change (see [`session`]).
//! - Encrypted, versioned saved sessions ([`Session::pickle`]).
//!
//! The byte layouts, labels and security claims are in `docs/PROTOCOL.md`,
//! section "1:1 sessions".
//!
//! # Layout
//!
//! - [`error`] holds [`ProtoError`], the one error type.
//! - [`ids`] has typed ids ([`UserId`], [`DeviceId`], [`PreKeyId`]).
//! - `codec` (private) has the never-panicking reader and the writer helpers.
//! - [`identity`] has [`IdentityKeyPair`] and [`IdentityKey`].
//! - [`prekey`] has prekey generation, blobs, [`PreKeyBundle`], [`PreKeyStore`], [`InMemoryPreKeyStore`].
//! - [`message`] has the wire encodings of [`PreKeyMessage`], [`RatchetMessage`], [`WireMessage`].
//! - [`session`] has the handshake, Double Ratchet, PQ ratchet, pickling: [`Session`].
//! - [`fuzzing`] has the decoder entry points shared by the fuzz targets and the corpus replay test.

pub mod error;
pub mod fuzzing;
pub mod identity;
pub mod ids;
pub mod message;
pub mod prekey;
pub mod session;

mod codec;

pub use error::{ProtoError, Result};
pub use identity::{IdentityKey, IdentityKeyPair, PeerIdentity};
pub use ids::{DeviceId, PreKeyId, UserId};
pub use message::{KemPreKeyRef, PreKeyMessage, RatchetMessage, WireMessage};
pub use prekey::{
    InMemoryPreKeyStore, PreKeyBundle, PreKeyStore, SignedPreKeySecrets, generate_one_time_kem_prekeys,
    generate_one_time_prekeys, generate_signed_prekeys,
};
pub use session::Session;
