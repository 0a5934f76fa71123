//! Transcripts signed by a client's hybrid identity key to register and to
//! log in. Both bind the server's per-connection challenge so a signature
//! cannot be replayed on another connection.

use crate::types::{CHALLENGE_LEN, Username};

/// Signature context for [`register_transcript`].
pub const REGISTER_CONTEXT: &[u8] = b"pqc-chat/register/v1";
/// Signature context for [`login_transcript`].
pub const LOGIN_CONTEXT: &[u8] = b"pqc-chat/login/v1";

/// `challenge (32) || u8 len(username) || username || identity_key`.
pub fn register_transcript(challenge: &[u8; CHALLENGE_LEN], username: &Username, identity_key: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(CHALLENGE_LEN + 1 + username.as_str().len() + identity_key.len());
    t.extend_from_slice(challenge);
    t.push(username.as_str().len() as u8);
    t.extend_from_slice(username.as_str().as_bytes());
    t.extend_from_slice(identity_key);
    t
}

/// `challenge (32) || u8 len(username) || username`.
pub fn login_transcript(challenge: &[u8; CHALLENGE_LEN], username: &Username) -> Vec<u8> {
    let mut t = Vec::with_capacity(CHALLENGE_LEN + 1 + username.as_str().len());
    t.extend_from_slice(challenge);
    t.push(username.as_str().len() as u8);
    t.extend_from_slice(username.as_str().as_bytes());
    t
}
