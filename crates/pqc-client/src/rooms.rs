//! Rooms: MLS groups (`pqc-rooms`) driven through the relay's room log.
//!
//! A room is addressed by its **name**, which works like an invitation link:
//! the relay's opaque room id is `HKDF-SHA-256(ikm = name, info =
//! "pqc-chat/room-id/v1")[..16]` and the key sealing the room's GroupInfo on
//! the relay is `HKDF-SHA-256(ikm = name, info = "pqc-chat/room-access/v1")`.
//! Whoever knows the name can join by external commit while every other
//! member is offline (within the participant limit; members see the join).
//! See `docs/ROOMS.md` ("Rooms end to end").
//!
//! # Call order (per room)
//! Every operation first **syncs**: fetches the room's pending log entries,
//! processes them in relay order, saves the room state, acknowledges them,
//! and — as the "next active member" — commits any queued proposal (a
//! member's leave). Only then does it send. A commit is accepted by the relay
//! only for the room's current epoch; on `EpochConflict` the client reloads
//! its saved state (which never contains an unaccepted commit), syncs and
//! retries. Application messages are saved (ratchet advanced) before they
//! leave. Lines to show (`[NAME] SENDER: TEXT`, `[NAME] * SENDER joined`…)
//! are kept sealed with the room state until `recv` prints them.
//!
//! Self-updates (post-compromise security): before sending, a member whose
//! last self-update is [`SELF_UPDATE_EVERY`] messages or
//! [`SELF_UPDATE_AFTER_MS`] old commits one first.

use std::collections::BTreeSet;
use std::path::Path;

use pqc_crypto::kdf::hkdf_sha256;
use pqc_crypto::rng::{SystemRng, random_array};
use pqc_rooms::{Event as MlsEvent, Member, Room, RoomAccessKey, RoomError};
use pqc_wire::{AttachmentId, ErrorCode, Request, Response, RoomId, RoomMessage, RoomMessageKind, Username};

use crate::content::{Body, Content};
use crate::engine::{Client, call, now_ms, server_error};
use crate::error::{ClientError, Result};
use crate::profile::ns;

/// HKDF label of the room id.
pub const ROOM_ID_LABEL: &[u8] = b"pqc-chat/room-id/v1";
/// HKDF label of the room access key.
pub const ROOM_ACCESS_LABEL: &[u8] = b"pqc-chat/room-access/v1";
/// A member self-updates after sending this many messages…
pub const SELF_UPDATE_EVERY: u32 = 50;
/// …or when its last self-update is older than this (24 h).
pub const SELF_UPDATE_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Key packages published per batch (again when the relay says fewer than
/// its threshold are left).
pub const KEY_PACKAGE_BATCH: usize = 20;
/// How often an operation resyncs and retries after an epoch conflict.
const MAX_ATTEMPTS: usize = 5;

/// The relay's opaque id for the room called `name`.
pub fn room_id_for(name: &str) -> Result<RoomId> {
    let okm = hkdf_sha256::<32>(&[], name.as_bytes(), &[ROOM_ID_LABEL])?;
    let mut id = [0u8; pqc_wire::ROOM_ID_LEN];
    id.copy_from_slice(&okm[..pqc_wire::ROOM_ID_LEN]);
    Ok(RoomId(id))
}

/// The key that seals the GroupInfo of the room called `name`.
pub fn access_key_for(name: &str) -> Result<RoomAccessKey> {
    let okm = hkdf_sha256::<32>(&[], name.as_bytes(), &[ROOM_ACCESS_LABEL])?;
    Ok(RoomAccessKey::from_bytes(*okm))
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// Microphone.
    Audio,
    /// Camera.
    Video,
}

impl Media {
    fn label(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

/// One room as `rooms list` shows it (all from the end-to-end group state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    /// Room name.
    pub name: String,
    /// Members, in leaf order.
    pub members: Vec<String>,
    /// MLS epoch.
    pub epoch: u64,
    /// Members with audio on.
    pub audio: Vec<String>,
    /// Members with video on.
    pub video: Vec<String>,
    /// Still a member (false once removed).
    pub active: bool,
}

// Content of a room application message: `version (1) | type | fields`.
const CONTENT_VERSION: u8 = 1;
const C_TEXT: u8 = 1;
const C_AUDIO: u8 = 2;
const C_VIDEO: u8 = 3;
const C_FILE: u8 = 4;

enum RoomContent {
    Text(String),
    Toggle(Media, bool),
    /// A file announcement: an encoded [`Content`] whose body is a file
    /// (the 1:1 codec: attachment id, key, size, hash, name).
    File(Vec<u8>),
}

impl RoomContent {
    fn encode(&self) -> Vec<u8> {
        match self {
            Self::Text(t) => {
                let mut v = vec![CONTENT_VERSION, C_TEXT];
                v.extend_from_slice(t.as_bytes());
                v
            }
            Self::Toggle(m, on) => {
                let t = if *m == Media::Audio { C_AUDIO } else { C_VIDEO };
                vec![CONTENT_VERSION, t, u8::from(*on)]
            }
            Self::File(c) => {
                let mut v = vec![CONTENT_VERSION, C_FILE];
                v.extend_from_slice(c);
                v
            }
        }
    }

    fn decode(b: &[u8]) -> Result<Self> {
        match b {
            [CONTENT_VERSION, C_TEXT, rest @ ..] => Ok(Self::Text(
                String::from_utf8(rest.to_vec()).map_err(|_| ClientError::Malformed("room text (UTF-8)"))?,
            )),
            [CONTENT_VERSION, C_AUDIO, on @ (0 | 1)] => Ok(Self::Toggle(Media::Audio, *on == 1)),
            [CONTENT_VERSION, C_VIDEO, on @ (0 | 1)] => Ok(Self::Toggle(Media::Video, *on == 1)),
            [CONTENT_VERSION, C_FILE, rest @ ..] => match Content::decode(rest)?.body {
                Body::File(_) => Ok(Self::File(rest.to_vec())),
                Body::Text(_) | Body::RoomWelcome(_) => Err(ClientError::Malformed("room file announcement")),
            },
            _ => Err(ClientError::Malformed("room message content (newer client?)")),
        }
    }
}

/// Fuzzing entry (through `content::fuzz_decode`): decodes a room
/// message's content; a decoded one must re-encode to the same bytes.
pub(crate) fn fuzz_room_content(bytes: &[u8]) {
    if let Ok(c) = RoomContent::decode(bytes) {
        debug_assert_eq!(c.encode(), bytes);
    }
    // And as a saved room record (sealed in the profile).
    let _ = decode_record(bytes);
}

/// What the client keeps next to a room's MLS state (sealed together).
#[derive(Debug, Default)]
struct RoomLocal {
    audio: BTreeSet<String>,
    video: BTreeSet<String>,
    sent_since_update: u32,
    last_update_ms: i64,
    /// Lines not yet shown by `recv`.
    unshown: Vec<String>,
    /// Files announced in the room, not downloaded yet: `(sender, encoded Content)`.
    files: Vec<(String, Vec<u8>)>,
    /// Welcomes of accepted invitations not yet queued for the invitee:
    /// `(invitee, Welcome)`. Saved with the state after the commit, so a
    /// crash right after the relay accepted it still delivers the Welcome.
    welcomes: Vec<(String, Vec<u8>)>,
    /// Sequence number of the last relay entry applied (0: unknown). An
    /// entry pushed inline right after it is applied at once; anything else
    /// (a gap, a commit or proposal) goes through a full sync.
    last_seq: u64,
    /// Members whose leave proposal was seen and who are still in the group:
    /// a commit that did not carry the proposal (an external join in the
    /// same epoch cannot) made it void, so the next sync removes them.
    leaving: BTreeSet<String>,
}

impl RoomLocal {
    /// A member whose leave was seen and who is still among `members`.
    fn leaver_in(&self, members: &BTreeSet<String>) -> Option<&String> {
        self.leaving.iter().find(|u| members.contains(*u))
    }
}

const LOCAL_VERSION: u8 = 4;

fn put_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(ClientError::Malformed("saved room record"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| ClientError::Malformed("saved room record"))
    }
    fn strings(&mut self) -> Result<Vec<String>> {
        let n = self.u32()?;
        (0..n).map(|_| self.string()).collect()
    }
    fn pairs(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        let n = self.u32()?;
        (0..n).map(|_| Ok((self.string()?, self.bytes()?.to_vec()))).collect()
    }
}

fn put_pairs(v: &mut Vec<u8>, items: &[(String, Vec<u8>)]) {
    v.extend_from_slice(&u32::try_from(items.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (name, bytes) in items {
        put_str(v, name);
        v.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        v.extend_from_slice(bytes);
    }
}

fn put_strings<'a>(v: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a String>) {
    v.extend_from_slice(&u32::try_from(items.len()).unwrap_or(u32::MAX).to_be_bytes());
    for s in items {
        put_str(v, s);
    }
}

/// Saved record: `version | len32 room state | audio | video | sent | last | unshown | files | welcomes | last_seq`
/// (`files` since version 2: `u32 count || (sender || len32 content)*`;
/// since version 3 `welcomes`, the same shape: `(invitee || len32 welcome)*`,
/// and `last_seq: u64`).
fn encode_record(state: &[u8], l: &RoomLocal) -> Vec<u8> {
    let mut v = vec![LOCAL_VERSION];
    v.extend_from_slice(&u32::try_from(state.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(state);
    put_strings(&mut v, l.audio.iter());
    put_strings(&mut v, l.video.iter());
    v.extend_from_slice(&l.sent_since_update.to_be_bytes());
    v.extend_from_slice(&l.last_update_ms.to_be_bytes());
    put_strings(&mut v, l.unshown.iter());
    put_pairs(&mut v, &l.files);
    put_pairs(&mut v, &l.welcomes);
    v.extend_from_slice(&l.last_seq.to_be_bytes());
    put_strings(&mut v, l.leaving.iter());
    v
}

fn decode_record(b: &[u8]) -> Result<(Room, RoomLocal)> {
    let mut r = Rd(b);
    let version = r.take(1)?;
    let version = version.first().copied().unwrap_or(0);
    if !(1..=LOCAL_VERSION).contains(&version) {
        return Err(ClientError::Malformed("saved room record (unknown version; upgrade the client)"));
    }
    let room = Room::import_state(r.bytes()?)?;
    let mut local = RoomLocal {
        audio: r.strings()?.into_iter().collect(),
        video: r.strings()?.into_iter().collect(),
        sent_since_update: r.u32()?,
        last_update_ms: r.i64()?,
        unshown: r.strings()?,
        files: Vec::new(),
        welcomes: Vec::new(),
        last_seq: 0,
        leaving: BTreeSet::new(),
    };
    if version >= 2 {
        local.files = r.pairs()?;
    }
    if version >= 3 {
        local.welcomes = r.pairs()?;
        local.last_seq = u64::try_from(r.i64()?).unwrap_or(0);
    }
    if version >= 4 {
        local.leaving = r.strings()?.into_iter().collect();
    }
    if !r.0.is_empty() {
        return Err(ClientError::Malformed("saved room record (trailing bytes)"));
    }
    Ok((room, local))
}

fn member_names(room: &Room) -> BTreeSet<String> {
    room.members().iter().map(|u| u.as_str().to_string()).collect()
}

/// Outcome of sending a commit.
enum Commit {
    Accepted,
    Conflict,
}

impl Client {
    /// This user's MLS member state (created on first use).
    fn mls_member(&self) -> Result<Member> {
        if let Some(b) = self.profile().get_sealed(ns::ROOM_MEMBER, "self")? {
            return Ok(Member::import_state(&b)?);
        }
        let member = Member::new(self.username(), random_array(&mut SystemRng))?;
        self.profile().put_sealed(ns::ROOM_MEMBER, "self", &member.export_state()?)?;
        Ok(member)
    }

    fn load_room(&self, id: &RoomId) -> Result<Option<(Room, RoomLocal)>> {
        match self.profile().get_sealed(ns::ROOM, &id.to_hex())? {
            Some(b) => Ok(Some(decode_record(&b)?)),
            None => Ok(None),
        }
    }

    fn load_room_named(&self, name: &str) -> Result<(RoomId, Room, RoomLocal)> {
        let id = room_id_for(name)?;
        match self.load_room(&id)? {
            Some((room, local)) => Ok((id, room, local)),
            None => Err(ClientError::Usage(format!(
                "you are not in a room named {name:?}; `pqc-client rooms join NAME` or `rooms create NAME`"
            ))),
        }
    }

    fn save_room(&self, id: &RoomId, room: &Room, local: &RoomLocal) -> Result<()> {
        self.profile().put_sealed(ns::ROOM, &id.to_hex(), &encode_record(&room.export_state()?, local))
    }

    /// Creates the room `name` with this user as its only member. Without
    /// `max`, the server's default limit applies (enforced by the server).
    pub async fn room_create(&mut self, name: &str, max: Option<u32>) -> Result<()> {
        let id = room_id_for(name)?;
        if self.load_room(&id)?.is_some_and(|(r, _)| r.is_active()) {
            return Err(ClientError::Usage(format!("you are already in room {name:?}")));
        }
        if max == Some(0) {
            return Err(ClientError::Usage("--max must be at least 1".into()));
        }
        let member = self.mls_member()?;
        let room = Room::create_with(&member, name, max.unwrap_or(u32::MAX), id.0, access_key_for(name)?)?;
        let group_info = room.group_info()?;
        match self
            .conn_request(Request::RoomCreate { room_id: id, max_participants: max.unwrap_or(0), group_info })
            .await?
        {
            Response::Ok => {}
            Response::Error { code: ErrorCode::RoomExists, .. } => {
                return Err(ClientError::Usage(format!(
                    "a room named {name:?} exists already; join it with `pqc-client rooms join {name}`"
                )));
            }
            other => return Err(server_error(other)),
        }
        let local = RoomLocal { last_update_ms: now_ms(), ..RoomLocal::default() };
        self.save_room(&id, &room, &local)
    }

    /// Joins the room `name` by external commit (works with every other member offline).
    pub async fn room_join(&mut self, name: &str) -> Result<()> {
        let id = room_id_for(name)?;
        if self.load_room(&id)?.is_some_and(|(r, _)| r.is_active()) {
            return Err(ClientError::Usage(format!("you are already in room {name:?}")));
        }
        let (room, seq) = self.join_external(id, name, &access_key_for(name)?).await?;
        // The relay routes the room here from this commit on.
        let local = RoomLocal { last_update_ms: now_ms(), last_seq: seq, ..RoomLocal::default() };
        self.save_room(&id, &room, &local)
    }

    /// Joins room `id` (`name`, opened with `key`) by external commit from
    /// the GroupInfo the relay keeps, again while another commit wins the
    /// epoch. Returns the room and the sequence number of the join commit.
    /// A member that is in the group already (a resync) leaves its old place
    /// in the same commit (OpenMLS matches its signature key).
    async fn join_external(&mut self, id: RoomId, name: &str, key: &RoomAccessKey) -> Result<(Room, u64)> {
        let member = self.mls_member()?;
        for _ in 0..MAX_ATTEMPTS {
            let (sealed, epoch) = match self.conn_request(Request::RoomGetInfo { room_id: id }).await? {
                Response::RoomInfo { group_info, epoch } => (group_info, epoch),
                Response::Error { code: ErrorCode::NotFound, .. } => {
                    return Err(ClientError::Usage(format!(
                        "there is no room named {name:?}; create it with `pqc-client rooms create {name}`"
                    )));
                }
                other => return Err(server_error(other)),
            };
            let (room, commit) = match Room::join_external(&member, &sealed, key) {
                Ok(x) => x,
                Err(e @ RoomError::RoomFull { .. }) => return Err(ClientError::Server(e.to_string())),
                Err(e) => return Err(e.into()),
            };
            let group_info = room.group_info()?;
            match self.conn_request(Request::RoomJoin { room_id: id, epoch, commit, group_info }).await? {
                Response::RoomSent { seq } => return Ok((room, seq)),
                Response::Error { code: ErrorCode::EpochConflict, .. } => continue,
                other => return Err(server_error(other)),
            }
        }
        Err(ClientError::Server("the room keeps changing while joining; retry".into()))
    }

    /// After the relay deleted entries of the room this member had not
    /// fetched (it was away longer than the relay keeps them), its group
    /// state can no longer follow the room: it joins again by external
    /// commit, which also removes its old place in the group (a resync:
    /// same seat), and says what happened. What the old state had not shown
    /// yet (lines, files, invitations to send) is kept.
    async fn room_rejoin(&mut self, id: RoomId, old: &Room, local: RoomLocal) -> Result<()> {
        let name = old.name().to_string();
        let (room, seq) = self.join_external(id, &name, &old.access_key()).await?;
        tracing::info!(seq, "joined a room again after its unread history expired on the server");
        let mut unshown = local.unshown;
        unshown.push(format!(
            "[{name}] * room messages you had not fetched expired on the server while you were away; you joined \
             the room again (what was sent meanwhile is lost)"
        ));
        let fresh = RoomLocal {
            last_update_ms: now_ms(),
            last_seq: seq,
            unshown,
            files: local.files,
            welcomes: local.welcomes,
            ..RoomLocal::default()
        };
        // A commit of the old state that never made it is void now.
        self.profile().db().delete(ns::ROOM_PENDING, &id.to_hex())?;
        self.save_room(&id, &room, &fresh)
    }

    async fn conn_request(&self, req: Request) -> Result<Response> {
        Ok(self.connection().request(req).await?)
    }

    /// Sends a commit built on `epoch` with the new epoch's GroupInfo; with
    /// `adding`, the commit adds that user (`RoomAdd`, so the relay routes
    /// the room to them too).
    ///
    /// Before it leaves, the commit and the state after it are saved as the
    /// room's *pending* record, so a crash after the relay accepted it but
    /// before the new state was saved is recovered by the next sync (which
    /// finds the commit in the log: [`Self::room_sync`]).
    async fn send_commit(
        &self,
        id: RoomId,
        room: &Room,
        local: &RoomLocal,
        epoch: u64,
        commit: Vec<u8>,
        adding: Option<Username>,
    ) -> Result<Commit> {
        let group_info = room.group_info()?;
        let mut pending = u32::try_from(commit.len()).unwrap_or(u32::MAX).to_be_bytes().to_vec();
        pending.extend_from_slice(&commit);
        pending.extend_from_slice(&encode_record(&room.export_state()?, local));
        self.profile().put_sealed(ns::ROOM_PENDING, &id.to_hex(), &pending)?;
        let req = match adding {
            Some(member) => Request::RoomAdd { room_id: id, epoch, member, commit, group_info },
            None => Request::RoomSend {
                room_id: id,
                epoch,
                kind: RoomMessageKind::Commit,
                payload: commit,
                new_group_info: Some(group_info),
            },
        };
        let outcome = match self.conn_request(req).await? {
            Response::RoomSent { .. } => {
                // Fault injection for the end-to-end test of this recovery.
                if std::env::var_os("PQC_TEST_EXIT_AFTER_COMMIT").is_some() {
                    std::process::exit(3);
                }
                Commit::Accepted
            }
            Response::Error { code: ErrorCode::EpochConflict, .. } => Commit::Conflict,
            other => return Err(server_error(other)),
        };
        if let Commit::Accepted = outcome {
            self.save_room(&id, room, local)?;
        }
        // Accepted: saved above; rejected: the state after it never existed.
        self.profile().db().delete(ns::ROOM_PENDING, &id.to_hex())?;
        Ok(outcome)
    }

    /// A commit sent before a crash, with the state after it: `(commit, room, local)`.
    fn pending_commit(&self, id: &RoomId) -> Result<Option<(Vec<u8>, Room, RoomLocal)>> {
        let Some(b) = self.profile().get_sealed(ns::ROOM_PENDING, &id.to_hex())? else { return Ok(None) };
        let mut r = Rd(&b);
        let commit = r.bytes()?.to_vec();
        let (room, local) = decode_record(r.0)?;
        Ok(Some((commit, room, local)))
    }

    /// Applies one relayed entry to the room; lines to show go to `local.unshown`.
    fn apply_entry(&self, room: &mut Room, local: &mut RoomLocal, m: &RoomMessage) {
        let name = room.name().to_string();
        let events = match room.process(&m.payload) {
            Ok(ev) => ev,
            Err(e) => {
                // No content in logs: the sender and the error kind only.
                tracing::warn!(sender = %m.sender, seq = m.seq, "dropped a room message that could not be processed: {e}");
                return;
            }
        };
        for ev in events {
            match ev {
                MlsEvent::Message { sender, plaintext } => match RoomContent::decode(&plaintext) {
                    Ok(RoomContent::Text(t)) => local.unshown.push(format!("[{name}] {}: {t}", sender.as_str())),
                    Ok(RoomContent::Toggle(media, on)) => {
                        let set = if media == Media::Audio { &mut local.audio } else { &mut local.video };
                        if on {
                            set.insert(sender.as_str().to_string());
                        } else {
                            set.remove(sender.as_str());
                        }
                        let state = if on { "on" } else { "off" };
                        local.unshown.push(format!("[{name}] * {} {} {state}", sender.as_str(), media.label()));
                    }
                    Ok(RoomContent::File(c)) => local.files.push((sender.as_str().to_string(), c)),
                    Err(e) => tracing::warn!(sender = %m.sender, "room message content: {e}"),
                },
                MlsEvent::MemberJoined(u) => local.unshown.push(format!("[{name}] * {} joined", u.as_str())),
                MlsEvent::MemberRejoined(u) => local.unshown.push(format!(
                    "[{name}] * {u} joined again after being away; room messages sent meanwhile may not have reached {u}",
                    u = u.as_str()
                )),
                MlsEvent::MemberLeft(u) => {
                    local.audio.remove(u.as_str());
                    local.video.remove(u.as_str());
                    local.leaving.remove(u.as_str());
                    local.unshown.push(format!("[{name}] * {} left", u.as_str()));
                }
                // A member's leave (the only proposal clients make).
                MlsEvent::ProposalQueued { by } if by.as_str() != self.username() => {
                    local.leaving.insert(by.as_str().to_string());
                }
                MlsEvent::Removed => local.unshown.push(format!("[{name}] * you were removed from the room")),
                _ => {}
            }
        }
    }

    /// Syncs a room: processes its pending entries in order, saves, acks,
    /// then commits queued proposals. Returns the up-to-date state.
    async fn room_sync(&mut self, id: RoomId) -> Result<(Room, RoomLocal)> {
        'attempt: for _ in 0..MAX_ATTEMPTS {
            let Some((mut room, mut local)) = self.load_room(&id)? else {
                return Err(ClientError::Usage("you are not in this room".into()));
            };
            if !room.is_active() {
                return Ok((room, local));
            }
            let mut pending = self.pending_commit(&id)?;
            let had_pending = pending.is_some();
            // Entries applied from pushes are acknowledged first, so the
            // fetch returns only what is new.
            if let Some(seq) = self.acks.rooms.remove(&id) {
                call(self.connection(), Request::RoomAck { room_id: id, seq }).await?;
            }
            loop {
                let (messages, more) = match self.conn_request(Request::RoomFetch { room_id: Some(id) }).await? {
                    Response::RoomMessages { messages, more } => (messages, more),
                    Response::Error { code: ErrorCode::HistoryExpired, .. } => {
                        self.room_rejoin(id, &room, local).await?;
                        continue 'attempt;
                    }
                    other => return Err(server_error(other)),
                };
                let Some(last) = messages.last().map(|m| m.seq) else { break };
                // Entries applied from pushes but not acknowledged yet come again: skip them.
                let applied = local.last_seq;
                for m in messages.iter().filter(|m| m.seq > applied) {
                    if m.sender.as_str() != self.username() {
                        if room.is_active() {
                            self.apply_entry(&mut room, &mut local, m);
                        }
                    } else if m.kind == RoomMessageKind::Commit
                        && let Some((commit, new_room, mut new_local)) = pending.take()
                    {
                        if commit == m.payload {
                            // Our commit was accepted before a crash: continue from its state.
                            let before = member_names(&room);
                            let after = member_names(&new_room);
                            new_local.unshown = std::mem::take(&mut local.unshown);
                            for u in before.difference(&after) {
                                new_local.audio.remove(u);
                                new_local.video.remove(u);
                                new_local.unshown.push(format!("[{}] * {u} left", new_room.name()));
                            }
                            room = new_room;
                            local = new_local;
                        } else {
                            pending = Some((commit, new_room, new_local));
                        }
                    }
                }
                // Saved before the ack: a crash in between replays entries the
                // state already has, which are skipped by their sequence number.
                local.last_seq = local.last_seq.max(last);
                self.save_room(&id, &room, &local)?;
                call(self.connection(), Request::RoomAck { room_id: id, seq: last }).await?;
                if !more {
                    break;
                }
            }
            if had_pending {
                // Adopted above, or never accepted (not in the log): either way done.
                self.profile().db().delete(ns::ROOM_PENDING, &id.to_hex())?;
            }
            self.queue_welcomes(&id, &room, &mut local).await?;
            if !room.is_active() {
                return Ok((room, local));
            }
            // The next active member commits queued proposals (a member's
            // leave), or removes a member whose leave a commit made void.
            let epoch = room.epoch();
            let before = member_names(&room);
            let commit = match room.commit_pending()? {
                Some(commit) => commit,
                None => {
                    let Some(u) = local.leaver_in(&before).cloned() else {
                        return Ok((room, local));
                    };
                    match pqc_rooms::UserId::new(u.as_str()).and_then(|uid| room.remove(&uid)) {
                        Ok(commit) => commit,
                        Err(e) => {
                            // Never a reason to refuse the sync: forget it,
                            // from the state saved before the attempt.
                            tracing::warn!("could not remove a member whose leave was void: {e}");
                            let Some((room, mut local)) = self.load_room(&id)? else {
                                return Err(ClientError::Usage("you are not in this room".into()));
                            };
                            local.leaving.remove(&u);
                            self.save_room(&id, &room, &local)?;
                            return Ok((room, local));
                        }
                    }
                }
            };
            match self.send_commit(id, &room, &local, epoch, commit, None).await? {
                Commit::Accepted => {
                    let after = member_names(&room);
                    for u in before.difference(&after) {
                        local.audio.remove(u);
                        local.video.remove(u);
                        local.unshown.push(format!("[{}] * {u} left", room.name()));
                    }
                    local.leaving.retain(|u| after.contains(u));
                    self.save_room(&id, &room, &local)?;
                    return Ok((room, local));
                }
                // Someone else committed first: start over from the saved state.
                Commit::Conflict => continue,
            }
        }
        Err(ClientError::Server("the room keeps changing; retry".into()))
    }

    async fn room_send_content(&mut self, name: &str, content: RoomContent) -> Result<()> {
        let id = room_id_for(name)?;
        self.load_room_named(name)?;
        for attempt in 0..MAX_ATTEMPTS {
            // The relay refuses an entry made on a stale view of the room (an
            // epoch that moved on, a leave not committed yet) with
            // `EpochConflict`, so the first attempt sends from the saved
            // state without a round trip to sync, unless work of ours waits
            // (a commit in flight at a crash, invitations to send); a refused
            // attempt syncs and tries again.
            let (mut room, mut local) = match self.load_room(&id)? {
                Some((room, local))
                    if attempt == 0
                        && room.is_active()
                        && local.welcomes.is_empty()
                        && self.pending_commit(&id)?.is_none() =>
                {
                    (room, local)
                }
                _ => self.room_sync(id).await?,
            };
            if !room.is_active() {
                return Err(ClientError::Usage(format!("you are no longer a member of room {name:?}")));
            }
            let now = now_ms();
            if local.sent_since_update >= SELF_UPDATE_EVERY
                || now.saturating_sub(local.last_update_ms) > SELF_UPDATE_AFTER_MS
            {
                let epoch = room.epoch();
                let commit = room.self_update()?;
                match self.send_commit(id, &room, &local, epoch, commit, None).await? {
                    Commit::Accepted => {
                        local.sent_since_update = 0;
                        local.last_update_ms = now;
                        self.save_room(&id, &room, &local)?;
                    }
                    Commit::Conflict => continue,
                }
            }
            if let RoomContent::Toggle(media, on) = &content {
                let set = if *media == Media::Audio { &mut local.audio } else { &mut local.video };
                if *on {
                    set.insert(self.username().to_string());
                } else {
                    set.remove(self.username());
                }
            }
            let payload = room.encrypt(&content.encode())?;
            local.sent_since_update = local.sent_since_update.saturating_add(1);
            // The advanced ratchet is saved before the message leaves.
            self.save_room(&id, &room, &local)?;
            let req = Request::RoomSend {
                room_id: id,
                epoch: room.epoch(),
                kind: RoomMessageKind::Application,
                payload,
                new_group_info: None,
            };
            return match self.conn_request(req).await? {
                Response::RoomSent { seq } => {
                    // Our own entry is not pushed back to us: it follows the
                    // ones applied (unless someone else's came in between).
                    if seq == local.last_seq.saturating_add(1) {
                        local.last_seq = seq;
                        self.save_room(&id, &room, &local)?;
                    }
                    Ok(())
                }
                // Made on a stale view: sync and make it again.
                Response::Error { code: ErrorCode::EpochConflict, .. } => continue,
                other => Err(server_error(other)),
            };
        }
        Err(ClientError::Server("the room keeps changing; retry".into()))
    }

    /// Sends a text message to the room (after syncing it).
    pub async fn room_send_text(&mut self, name: &str, text: &str) -> Result<()> {
        if text.is_empty() {
            return Err(ClientError::Usage("the message is empty; nothing was sent".into()));
        }
        self.room_send_content(name, RoomContent::Text(text.to_string())).await
    }

    /// Encrypts the file once with a fresh key, uploads it as a room file
    /// (readable by the current members only) and sends its key and name to
    /// the room end to end. `progress(done, total)` follows the upload.
    pub async fn room_send_file(&mut self, name: &str, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let id = room_id_for(name)?;
        self.load_room_named(name)?;
        // Sync first, so the file goes to the members as they are now.
        self.room_sync(id).await?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
        let begin = |total_len| Request::RoomAttachmentBegin { room_id: id, total_len };
        let file = self.upload_file(&format!("room {}", id.to_hex()), &begin, path, &file_name, progress).await?;
        let attachment = file.attachment;
        let content = Content { id: random_array(&mut SystemRng), max_views: None, body: Body::File(file) };
        self.room_send_content(name, RoomContent::File(content.encode().to_vec())).await?;
        // Announced: no longer an upload to resume. (A crash just before this
        // would announce it again on the next `rooms send-file` of the file.)
        self.profile().db().delete(ns::UPLOAD, &attachment.to_string())?;
        Ok(())
    }

    /// Invites `user` to the room: takes one of their published key packages
    /// from the relay, checks it is theirs (bound to the identity key pinned
    /// for them, the one `verify` shows), commits the add (`RoomAdd`) and
    /// sends them the Welcome end to end through the 1:1 channel. Works while
    /// `user` is offline; they join on their next `recv`.
    pub async fn room_invite(&mut self, name: &str, user: &str) -> Result<()> {
        let id = room_id_for(name)?;
        self.load_room_named(name)?;
        let invitee = Username::new(user)?;
        if user == self.username() {
            return Err(ClientError::Usage("you are in this room already".into()));
        }
        let identity = pqc_proto::IdentityKey::from_bytes(&self.peer_identity(user).await?)?;
        let uid = pqc_rooms::UserId::new(user)?;
        let mut package = None;
        for _ in 0..MAX_ATTEMPTS {
            let (mut room, mut local) = self.room_sync(id).await?;
            if !room.is_active() {
                return Err(ClientError::Usage(format!("you are no longer a member of room {name:?}")));
            }
            if member_names(&room).contains(user) {
                return Err(ClientError::Usage(format!("{user} is in room {name:?} already")));
            }
            // One key package for all attempts: an unaccepted commit used none of it.
            let kp = match &package {
                Some(kp) => kp,
                None => package.insert(self.fetch_key_package(&invitee).await?),
            };
            let epoch = room.epoch();
            let (commit, welcome) = match room.add_published(kp, &uid, identity.verifying_key()) {
                Ok(x) => x,
                Err(e @ RoomError::RoomFull { .. }) => return Err(ClientError::Server(e.to_string())),
                Err(e) => return Err(e.into()),
            };
            local.welcomes.push((user.to_string(), welcome));
            match self.send_commit(id, &room, &local, epoch, commit, Some(invitee.clone())).await? {
                Commit::Accepted => return self.queue_welcomes(&id, &room, &mut local).await,
                Commit::Conflict => continue,
            }
        }
        Err(ClientError::Server("the room keeps changing; retry".into()))
    }

    async fn fetch_key_package(&self, user: &Username) -> Result<Vec<u8>> {
        match self.conn_request(Request::FetchKeyPackage { username: user.clone() }).await? {
            Response::KeyPackage { package } => Ok(package),
            Response::Error { code: ErrorCode::NotFound, .. } => Err(ClientError::Usage(format!(
                "{user} has no key package on the server (not registered with a client that supports rooms, or \
                 all used); ask them to run `pqc-client recv`, or share the room name so they can `rooms join` it"
            ))),
            other => Err(server_error(other)),
        }
    }

    /// Queues the room's pending Welcomes in the 1:1 outbox (durably) and
    /// forgets them; sending follows with the outbox.
    async fn queue_welcomes(&mut self, id: &RoomId, room: &Room, local: &mut RoomLocal) -> Result<()> {
        if local.welcomes.is_empty() {
            return Ok(());
        }
        let welcomes = std::mem::take(&mut local.welcomes);
        for (user, welcome) in &welcomes {
            let content =
                Content { id: random_array(&mut SystemRng), max_views: None, body: Body::RoomWelcome(welcome.clone()) };
            self.queue(&Username::new(user)?, &content)?;
        }
        self.save_room(id, room, local)?;
        match self.flush_outbox().await {
            Ok(_) => Ok(()),
            // Queued: the next command sends it.
            Err(e) => Err(ClientError::Queued(Box::new(e))),
        }
    }

    /// Joins a room from a Welcome that `from` sent end to end; returns what
    /// to save (the room, and the member state without the used key package).
    pub(crate) fn open_room_welcome(&self, from: &str, welcome: &[u8]) -> Result<(RoomId, Vec<u8>, Vec<u8>)> {
        let mut member = self.mls_member()?;
        let room = Room::join_from_welcome(&mut member, welcome)?;
        let name = room.name().to_string();
        let id = room_id_for(&name)?;
        if room.id().as_bytes() != id.0 {
            return Err(ClientError::Malformed("invitation (the room's id does not match its name)"));
        }
        if !member_names(&room).contains(from) {
            return Err(ClientError::Malformed("invitation (its sender is not in the room)"));
        }
        if self.load_room(&id)?.is_some_and(|(r, _)| r.is_active()) {
            return Err(ClientError::Usage(format!("an invitation to room {name:?}, where you are already")));
        }
        let local = RoomLocal {
            last_update_ms: now_ms(),
            unshown: vec![format!("[{name}] * {from} added you")],
            ..RoomLocal::default()
        };
        Ok((id, encode_record(&room.export_state()?, &local), member.export_state()?))
    }

    /// Publishes a batch of MLS key packages (bound to the identity key) so
    /// others can invite this user while they are offline.
    pub async fn publish_key_packages(&mut self) -> Result<()> {
        let mut member = self.mls_member()?;
        let packages =
            member.publishable_key_packages(KEY_PACKAGE_BATCH, self.identity_signing_key(), &mut SystemRng)?;
        // The private halves are saved before the public ones leave.
        self.profile().put_sealed(ns::ROOM_MEMBER, "self", &member.export_state()?)?;
        call(self.connection(), Request::UploadKeyPackages { packages }).await?;
        self.profile().set_meta("key_packages_published", "1")?;
        Ok(())
    }

    /// Announces this user's audio or video state to the room.
    pub async fn room_toggle(&mut self, name: &str, media: Media, on: bool) -> Result<()> {
        self.room_send_content(name, RoomContent::Toggle(media, on)).await
    }

    /// Leaves the room: sends a remove proposal for oneself (the next active
    /// member commits it), asks the relay to stop routing the room here, and
    /// deletes the local room state.
    pub async fn room_leave(&mut self, name: &str) -> Result<()> {
        let id = room_id_for(name)?;
        self.load_room_named(name)?;
        for _ in 0..MAX_ATTEMPTS {
            let (mut room, _) = self.room_sync(id).await?;
            if room.is_active() {
                let epoch = room.epoch();
                let proposal = room.leave()?;
                let req = Request::RoomSend {
                    room_id: id,
                    epoch,
                    kind: RoomMessageKind::Proposal,
                    payload: proposal,
                    new_group_info: None,
                };
                match self.conn_request(req).await? {
                    Response::RoomSent { .. } => {}
                    // Someone committed meanwhile: propose again in the new epoch.
                    Response::Error { code: ErrorCode::EpochConflict, .. } => continue,
                    other => return Err(server_error(other)),
                }
                call(self.connection(), Request::RoomLeave { room_id: id }).await?;
            }
            self.profile().db().delete(ns::ROOM, &id.to_hex())?;
            return Ok(());
        }
        Err(ClientError::Server("the room keeps changing; retry".into()))
    }

    /// The room's members (after syncing it).
    pub async fn room_members(&mut self, name: &str) -> Result<Vec<String>> {
        let id = room_id_for(name)?;
        self.load_room_named(name)?;
        let (room, _) = self.room_sync(id).await?;
        Ok(room.members().iter().map(|u| u.as_str().to_string()).collect())
    }

    /// The rooms this profile belongs to, from the local group states (no
    /// server request: there is no public room directory).
    pub fn rooms_list(&self) -> Result<Vec<RoomSummary>> {
        let mut out = Vec::new();
        for (_, rec) in self.profile().list_sealed(ns::ROOM)? {
            let (room, local) = decode_record(&rec)?;
            out.push(RoomSummary {
                name: room.name().to_string(),
                members: room.members().iter().map(|u| u.as_str().to_string()).collect(),
                epoch: room.epoch(),
                audio: local.audio.into_iter().collect(),
                video: local.video.into_iter().collect(),
                active: room.is_active(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Syncs every room and hands the lines to show (`[NAME] SENDER: TEXT`,
    /// `[NAME] * SENDER joined`…) to `on_line`, in room order; files sent to
    /// a room are downloaded into `out_dir` (`[NAME] file from SENDER: PATH`).
    /// Returns how many lines.
    pub async fn rooms_receive(&mut self, out_dir: &Path, on_line: &mut dyn FnMut(String)) -> Result<usize> {
        self.joined_room = false;
        let mut n = 0;
        let records = self.profile().list_sealed(ns::ROOM)?;
        for (_, rec) in records {
            let (room, _) = decode_record(&rec)?;
            let id = room_id_for(room.name())?;
            let (room, local) = match self.room_sync(id).await {
                Ok(x) => x,
                Err(e) => {
                    on_line(format!("[{}] ! cannot sync: {e}", room.name()));
                    continue;
                }
            };
            n += self.show_room(&id, &room, local, out_dir, on_line).await?;
        }
        Ok(n)
    }

    /// Hands a room's lines not yet shown to `on_line` and downloads its
    /// announced files into `out_dir`; returns how many lines.
    async fn show_room(
        &mut self,
        id: &RoomId,
        room: &Room,
        mut local: RoomLocal,
        out_dir: &Path,
        on_line: &mut dyn FnMut(String),
    ) -> Result<usize> {
        let mut n = 0;
        if local.unshown.is_empty() && local.files.is_empty() {
            return Ok(0);
        }
        let lines = std::mem::take(&mut local.unshown);
        self.save_room(id, room, &local)?;
        for l in lines {
            n += 1;
            on_line(l);
        }
        while let Some((sender, content)) = local.files.first().cloned() {
            let line = self.receive_room_file(room.name(), &sender, &content, out_dir).await;
            // Saved as handled before the server is told, so a crash
            // never downloads it twice; a failed download is reported, not retried.
            local.files.remove(0);
            self.save_room(id, room, &local)?;
            if let Ok(Body::File(f)) = Content::decode(&content).map(|c| c.body) {
                let _ = self.ack_attachment(AttachmentId(f.attachment)).await;
            }
            n += 1;
            on_line(line);
        }
        Ok(n)
    }

    /// A room entry the relay pushed inline ([`Client::handle_push`]): the
    /// entry right after the last one applied is applied now (its
    /// acknowledgement waits for [`Client::flush_acks`]); after a proposal
    /// (someone leaving) the room is synced, which commits it; a gap syncs
    /// instead. Then the room's new lines go to `on_line`; returns how many.
    pub(crate) async fn room_entry_pushed(
        &mut self,
        m: RoomMessage,
        out_dir: &Path,
        on_line: &mut dyn FnMut(String),
    ) -> Result<usize> {
        let id = m.room_id;
        // Not (yet) ours here, e.g. a Welcome still on its way: it waits on the relay.
        let Some((mut room, mut local)) = self.load_room(&id)? else { return Ok(0) };
        if !room.is_active() || m.seq <= local.last_seq {
            return Ok(0);
        }
        let next = m.seq == local.last_seq.saturating_add(1) && self.pending_commit(&id)?.is_none();
        if next {
            if m.sender.as_str() != self.username() {
                self.apply_entry(&mut room, &mut local, &m);
            }
            local.last_seq = m.seq;
            self.save_room(&id, &room, &local)?;
            self.acks.add_room(id, m.seq);
        }
        // A proposal, or a commit that left a leaver in the group, syncs (to commit it).
        let leaver_stays = || local.leaver_in(&member_names(&room)).is_some();
        let (room, local) = if next && m.kind != RoomMessageKind::Proposal && !leaver_stays() {
            (room, local)
        } else {
            match self.room_sync(id).await {
                Ok(x) => x,
                Err(e) => {
                    on_line(format!("[{}] ! cannot sync: {e}", room.name()));
                    return Ok(1);
                }
            }
        };
        self.show_room(&id, &room, local, out_dir, on_line).await
    }

    /// Downloads one room file; the line to show.
    async fn receive_room_file(&mut self, room: &str, sender: &str, content: &[u8], out_dir: &Path) -> String {
        let result = match Content::decode(content).map(|c| c.body) {
            Ok(Body::File(f)) => self.download(sender, &f, out_dir).await,
            Ok(Body::Text(_) | Body::RoomWelcome(_)) => Err(ClientError::Malformed("room file announcement")),
            Err(e) => Err(e),
        };
        match result {
            Ok(path) => format!("[{room}] file from {sender}: {}", path.display()),
            Err(e) => format!("[{room}] ! a file from {sender} could not be downloaded: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ids_are_name_derived_and_distinct() {
        let a = room_id_for("team").unwrap();
        assert_eq!(a, room_id_for("team").unwrap());
        assert_ne!(a, room_id_for("team2").unwrap());
        assert_ne!(&a.0[..], &access_key_for("team").unwrap().to_bytes()[..16]);
    }

    #[test]
    fn content_round_trip_and_record() {
        let file = Content {
            id: [3; 16],
            max_views: None,
            body: Body::File(crate::content::FileRef {
                attachment: 9,
                cipher_len: 32,
                plain_len: 16,
                chunk: 16,
                key: zeroize::Zeroizing::new([4; 32]),
                sha256: [5; 32],
                name: "a.txt".into(),
            }),
        };
        for c in [
            RoomContent::Text("hé".into()),
            RoomContent::Toggle(Media::Video, true),
            RoomContent::File(file.encode().to_vec()),
        ] {
            let b = c.encode();
            assert_eq!(RoomContent::decode(&b).unwrap().encode(), b);
        }
        // A room file announcement must carry a file.
        let text = Content { id: [3; 16], max_views: None, body: Body::Text("x".into()) };
        let mut b = vec![CONTENT_VERSION, C_FILE];
        b.extend_from_slice(&text.encode());
        assert!(RoomContent::decode(&b).is_err());
        assert!(RoomContent::decode(&[1, 2, 7]).is_err());
        assert!(RoomContent::decode(&[]).is_err());
        let member = Member::new("alice", [1; 32]).unwrap();
        let room = Room::create_with(&member, "r", 3, [2; 16], access_key_for("r").unwrap()).unwrap();
        let local = RoomLocal {
            unshown: vec!["x".into()],
            last_update_ms: 5,
            files: vec![("bob".into(), vec![1, 2])],
            welcomes: vec![("carol".into(), vec![3])],
            last_seq: 41,
            leaving: ["dave".to_string()].into(),
            ..RoomLocal::default()
        };
        let rec = encode_record(&room.export_state().unwrap(), &local);
        let (room2, local2) = decode_record(&rec).unwrap();
        assert_eq!(room2.name(), "r");
        assert_eq!(local2.unshown, vec!["x".to_string()]);
        assert_eq!(local2.last_update_ms, 5);
        assert_eq!((local2.files, local2.welcomes, local2.last_seq), (local.files, local.welcomes, 41));
        assert_eq!(local2.leaving, local.leaving);
        assert!(decode_record(&rec[..rec.len() - 1]).is_err());
        // A version-3 record (before `leaving`) still reads, with nobody leaving.
        let mut v3 = encode_record(&room.export_state().unwrap(), &RoomLocal { last_seq: 7, ..RoomLocal::default() });
        v3.truncate(v3.len() - 4);
        v3[0] = 3;
        let (_, old) = decode_record(&v3).unwrap();
        assert_eq!((old.last_seq, old.leaving.len()), (7, 0));
    }
}
