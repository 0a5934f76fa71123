//! Sans-IO codec for the frames exchanged between a pqc-chat client and the
//! relay server. The byte layout of every frame is documented in
//! `docs/PROTOCOL.md` ("Client–server frames").
//!
//! A frame on the wire is `u32 BE length || body`, and the body is
//! `version u8 (= 1) || type u8 || fields`. Decoding goes through a
//! [`codec::Reader`] that returns [`WireError`] and never panics; trailing
//! bytes after the last field are rejected.
//!
//! # Layout
//! - [`codec`]: `Reader` / `Writer` primitives (integers, length-prefixed bytes).
//! - [`types`]: typed IDs ([`EnvelopeId`], [`AttachmentId`], [`PreKeyId`],
//!   [`RequestId`], [`RoomId`]) and the validated [`Username`].
//! - [`frame`]: [`ClientFrame`] (requests), [`ServerFrame`] (hello, responses,
//!   pushes), the room log entry [`RoomMessage`] and the framing helpers
//!   [`split_frame`] / [`FrameDecoder`].
//! - [`auth`]: the signed transcripts for registration and login.
//! - [`error`]: the [`WireError`] type.
//!
//! # Usage
//! ```
//! use pqc_wire::{ClientFrame, Request, RequestId, FrameDecoder, DEFAULT_MAX_FRAME};
//! let frame = ClientFrame { id: RequestId(7), request: Request::Ping };
//! let bytes = frame.encode();
//! let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
//! dec.push(&bytes);
//! let body = dec.next_body().unwrap().unwrap();
//! assert_eq!(ClientFrame::decode(&body).unwrap(), frame);
//! ```

pub mod auth;
pub mod codec;
pub mod error;
pub mod frame;
pub mod types;

pub use auth::{LOGIN_CONTEXT, REGISTER_CONTEXT, login_transcript, register_transcript};
pub use error::WireError;
pub use frame::{
    ClientFrame, Envelope, ErrorCode, FrameDecoder, PrekeyBundle, Push, Request, Response, RoomMessage,
    RoomMessageKind, ServerFrame, encode_frame, split_frame,
};
pub use types::{AttachmentId, CHALLENGE_LEN, EnvelopeId, PreKeyId, ROOM_ID_LEN, RequestId, RoomId, Username};

/// Version byte carried by every frame body.
pub const PROTOCOL_VERSION: u8 = 1;
/// Default cap on a frame body (1 MiB). Servers may configure another value;
/// both sides reject larger frames before allocating.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// How long a client may hold back the acknowledgement of an envelope or a
/// room entry it took from a push (and saved), so that one `AckEnvelopes` or
/// `RoomAck` covers many: until then the relay keeps it, and a client that
/// crashed gets it again and skips it.
pub const ACK_DELAY: core::time::Duration = core::time::Duration::from_millis(100);
/// The same for room entries. Longer, because in a room every member
/// acknowledges every entry: with 100 members and sparse messages, 100 ms
/// meant a `RoomAck` (a request, a response and a store operation) per
/// member and message, about a third of the relay's work per message. What
/// it holds back is bounded the same way (entries a crashed client gets
/// again skip by their sequence number).
pub const ROOM_ACK_DELAY: core::time::Duration = core::time::Duration::from_secs(2);
/// Size of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Fuzzing entry point (also replayed by `tests/fuzz_corpus.rs`): decodes
/// `data` as a stream of frames in both directions and checks that every
/// frame that decodes re-encodes to the same bytes. Never panics on any input
/// except on a codec round-trip bug, which is what the fuzzer looks for.
pub fn fuzz_decode(data: &[u8]) -> bool {
    let mut ok = true;
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
    dec.push(data);
    while let Ok(Some(body)) = dec.next_body() {
        if let Ok(f) = ClientFrame::decode(&body) {
            ok &= f.encode_body() == body;
        }
        if let Ok(f) = ServerFrame::decode(&body) {
            ok &= f.encode_body() == body;
        }
    }
    // Also try the whole input as one body.
    if let Ok(f) = ClientFrame::decode(data) {
        ok &= f.encode_body() == data;
    }
    if let Ok(f) = ServerFrame::decode(data) {
        ok &= f.encode_body() == data;
    }
    ok
}
