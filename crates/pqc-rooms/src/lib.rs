//! Sans-IO MLS (RFC 9420) group core for pqc-chat rooms.
//!
//! Rooms are MLS groups run by OpenMLS 0.9 with the libcrux crypto provider
//! and the post-quantum hybrid cipher suite
//! `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519` (X-Wing = ML-KEM-768 +
//! X25519; **draft code point**, recorded with a version tag in
//! [`RoomSuite`] so rooms can be upgraded). Confidentiality is post-quantum
//! hybrid; MLS signatures are classical Ed25519, bound to the user's hybrid
//! identity key with [`Member::bind_to_identity`].
//!
//! This crate does no I/O: every operation takes bytes and returns bytes and
//! [`Event`]s; the client shell moves the bytes through the relay and stores
//! [`Room::export_state`] / [`Member::export_state`] encrypted in SQLite.
//! Two inputs are not injectable in OpenMLS 0.9: randomness for MLS
//! operations comes from the libcrux provider's OS-seeded HMAC-DRBG, and key
//! package lifetimes are checked against the system clock.
//!
//! # Flow
//! ```text
//! alice: Member::new -> create_room(name, max)          -> room.group_info() -> relay keeps it
//! bob:   Member::new -> generate_key_packages(n)        -> relay (like prekeys)
//! alice: room.add_member(bob_kp) -> (commit -> room, welcome -> bob)
//! bob:   Room::join_from_welcome(&mut bob, welcome)
//! carol: Room::join_external(&carol, sealed_group_info, &access_key) -> (room, commit -> room)
//! all:   room.encrypt(text) -> room; room.process(bytes) -> [Event]
//! bob:   room.leave() -> proposal; next active member: room.commit_pending() -> commit
//! ```
//!
//! # Layout
//! - [`room`]: [`Room`], [`Event`], [`RoomId`] — create, join (Welcome and
//!   external commit), add/remove/leave, self-update, messages, exporter,
//!   saved state; the call-order contract is on the module.
//! - [`identity`]: [`Member`] (user name, MLS signature key, key packages),
//!   [`UserId`], the hybrid-identity binding helpers.
//! - [`metadata`]: the end-to-end room record (name, limit, suite, access key)
//!   in a group-context extension, and the sealing of the GroupInfo the relay
//!   stores.
//! - [`suite`]: [`RoomSuite`], the versioned cipher-suite record.
//! - [`error`]: the one error type, [`RoomError`].
//! - `provider` (private): libcrux crypto + OpenMLS memory storage, with a
//!   byte form for saved state; `codec` (private): the length-prefixed
//!   reader/writer for this crate's own records.
//! - [`fuzz_process`]: entry point of the `rooms_message` fuzz target.

mod codec;
pub mod error;
mod fuzz;
pub mod identity;
pub mod metadata;
mod provider;
pub mod room;
pub mod suite;

pub use error::RoomError;
pub use fuzz::fuzz_process;
pub use identity::{Member, UserId, verify_identity_binding};
pub use metadata::RoomAccessKey;
pub use room::{Event, Room, RoomId};
pub use suite::RoomSuite;
