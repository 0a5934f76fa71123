//! Frames: [`ClientFrame`] (client → server) and [`ServerFrame`]
//! (server → client). See `docs/PROTOCOL.md` for the byte layout.

use core::fmt;

use crate::PROTOCOL_VERSION;
use crate::codec::{Reader, Writer};
use crate::error::WireError;
use crate::types::{AttachmentId, CHALLENGE_LEN, EnvelopeId, PreKeyId, RequestId, RoomId, Username};

/// A client request. Each is sent in a [`ClientFrame`] with a request id the
/// server echoes in its [`ServerFrame::Response`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Creates an account. `signature` is a `HybridSignature` over
    /// [`crate::register_transcript`] with context [`crate::REGISTER_CONTEXT`].
    /// Success logs the connection in. → `Ok`.
    Register {
        /// Requested name.
        username: Username,
        /// `HybridVerifyingKey::to_bytes()`.
        identity_key: Vec<u8>,
        /// `HybridSignature::to_bytes()`.
        signature: Vec<u8>,
    },
    /// Logs in: `signature` over [`crate::login_transcript`] with context
    /// [`crate::LOGIN_CONTEXT`]. → `Ok`.
    Login {
        /// Account name.
        username: Username,
        /// `HybridSignature::to_bytes()`.
        signature: Vec<u8>,
    },
    /// Replaces the signed prekeys blob and adds one-time prekeys (an
    /// existing id is replaced). Blobs are opaque to the server. → `Ok`.
    UploadPrekeys {
        /// Opaque signed prekey blob (defined by pqc-proto).
        signed_prekeys: Vec<u8>,
        /// One-time classical prekeys.
        one_time: Vec<(PreKeyId, Vec<u8>)>,
        /// One-time KEM prekeys.
        one_time_kem: Vec<(PreKeyId, Vec<u8>)>,
    },
    /// Fetches (and consumes one-time keys of) a user's bundle. → `PrekeyBundle`.
    FetchPrekeys {
        /// Whose bundle.
        username: Username,
    },
    /// Fetches a user's directory entry: identity key and signed prekeys blob
    /// (which certifies the identity-DH key). Consumes nothing. → `Identity`.
    GetIdentity {
        /// Whose key.
        username: Username,
    },
    /// Queues an envelope. → `Ack` once it is durably stored.
    Send {
        /// Recipient.
        to: Username,
        /// Limited-view: the server deletes the envelope after this many fetches.
        max_views: Option<u32>,
        /// Opaque ciphertext.
        payload: Vec<u8>,
    },
    /// Fetches queued envelopes. → `Envelopes`.
    Fetch,
    /// Deletes envelopes from the mailbox. → `Deleted`.
    AckEnvelopes {
        /// Envelopes to delete.
        ids: Vec<EnvelopeId>,
    },
    /// Starts an attachment upload. → `AttachmentCreated`.
    AttachmentBegin {
        /// The only user allowed to download it.
        to: Username,
        /// Total size in bytes.
        total_len: u64,
    },
    /// Uploads a chunk; `offset` must equal the bytes received so far. → `AttachmentStatus`.
    AttachmentChunk {
        /// Attachment.
        id: AttachmentId,
        /// Position of `data`.
        offset: u64,
        /// Chunk bytes.
        data: Vec<u8>,
    },
    /// Asks how many bytes were received (to resume). → `AttachmentStatus`.
    AttachmentStatus {
        /// Attachment.
        id: AttachmentId,
    },
    /// Marks the upload complete (all bytes must be present). → `AttachmentStatus`.
    AttachmentFinish {
        /// Attachment.
        id: AttachmentId,
    },
    /// Downloads up to `max_len` bytes at `offset` (recipient only). → `AttachmentData`.
    AttachmentGet {
        /// Attachment.
        id: AttachmentId,
        /// Start.
        offset: u64,
        /// Maximum bytes to return (the server may return fewer).
        max_len: u32,
    },
    /// Deletes the attachment (recipient only). → `Deleted`.
    AttachmentAck {
        /// Attachment.
        id: AttachmentId,
    },
    /// Liveness check. → `Pong`.
    Ping,
    /// Creates a room; the caller becomes its first member. `max_participants`
    /// 0 means the server's default. → `Ok` (`RoomExists` if the id is taken).
    RoomCreate {
        /// Opaque room id.
        room_id: RoomId,
        /// Participant limit (0 = server default).
        max_participants: u32,
        /// The creator's sealed GroupInfo (opaque to the server).
        group_info: Vec<u8>,
    },
    /// Joins a room by external commit built on `epoch`; the server checks
    /// the participant limit, appends the commit to the room log and keeps
    /// the new GroupInfo. → `RoomSent` (`RoomFull`, `EpochConflict`).
    RoomJoin {
        /// Opaque room id.
        room_id: RoomId,
        /// The epoch of the GroupInfo the commit was built on.
        epoch: u64,
        /// The external commit (opaque).
        commit: Vec<u8>,
        /// The sealed GroupInfo after the join.
        group_info: Vec<u8>,
    },
    /// The room's sealed GroupInfo and epoch (for an external join). → `RoomInfo`.
    RoomGetInfo {
        /// Opaque room id.
        room_id: RoomId,
    },
    /// Appends a message to the room log (members only). Accepted only if
    /// `epoch` is the room's current epoch (a `Commit` then advances it), and
    /// an `Application` message only while no proposal waits for its commit;
    /// else `EpochConflict` (sync the room, send again). → `RoomSent` once
    /// durably stored.
    RoomSend {
        /// Opaque room id.
        room_id: RoomId,
        /// The sender's epoch when it built the message.
        epoch: u64,
        /// What it is.
        kind: RoomMessageKind,
        /// Opaque MLS message.
        payload: Vec<u8>,
        /// For a commit: the sealed GroupInfo of the new epoch.
        new_group_info: Option<Vec<u8>>,
    },
    /// Stops routing the room to the caller (after it sent its leave
    /// proposal). → `Ok`.
    RoomLeave {
        /// Opaque room id.
        room_id: RoomId,
    },
    /// Room messages after the caller's cursor, in order (one room, or all of
    /// the caller's rooms). → `RoomMessages`.
    RoomFetch {
        /// Only this room.
        room_id: Option<RoomId>,
    },
    /// Advances the caller's cursor in a room to `seq`; entries every member
    /// has read are deleted. → `Deleted`.
    RoomAck {
        /// Opaque room id.
        room_id: RoomId,
        /// Last sequence number processed.
        seq: u64,
    },
    /// Starts uploading an encrypted file for a room (members only); then
    /// `AttachmentChunk` / `AttachmentFinish` as for a 1:1 file. Every member
    /// at the time of `AttachmentFinish` but the sender may download it; it is
    /// deleted once each has sent `AttachmentAck` (or left). → `AttachmentCreated`.
    RoomAttachmentBegin {
        /// Opaque room id.
        room_id: RoomId,
        /// Encrypted size in bytes.
        total_len: u64,
    },
    /// Adds MLS key packages to the caller's directory entry (opaque to the
    /// server; each is used once). → `Ok`.
    UploadKeyPackages {
        /// Opaque key packages (defined by the client: key package and identity binding).
        packages: Vec<Vec<u8>>,
    },
    /// Fetches and consumes one of a user's key packages. → `KeyPackage`.
    FetchKeyPackage {
        /// Whose key package.
        username: Username,
    },
    /// Adds `member` to a room by a commit built on `epoch` (members only);
    /// the server checks the participant limit and that `member` has an
    /// account, appends the commit, and routes the room to `member` from the
    /// entry after it. The Welcome travels end to end, not through this
    /// request. → `RoomSent` (`RoomFull`, `EpochConflict`).
    RoomAdd {
        /// Opaque room id.
        room_id: RoomId,
        /// The epoch the commit was built on.
        epoch: u64,
        /// The new member.
        member: Username,
        /// The commit (opaque).
        commit: Vec<u8>,
        /// The sealed GroupInfo after the commit.
        group_info: Vec<u8>,
    },
}

impl fmt::Debug for Request {
    // Payloads, keys and signatures are never printed (logs carry no user content).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Register { username, .. } => write!(f, "Register({username})"),
            Self::Login { username, .. } => write!(f, "Login({username})"),
            Self::UploadPrekeys { one_time, one_time_kem, .. } => {
                write!(f, "UploadPrekeys(one_time={}, one_time_kem={})", one_time.len(), one_time_kem.len())
            }
            Self::FetchPrekeys { username } => write!(f, "FetchPrekeys({username})"),
            Self::GetIdentity { username } => write!(f, "GetIdentity({username})"),
            Self::Send { to, max_views, payload } => {
                write!(f, "Send(to={to}, max_views={max_views:?}, {} bytes)", payload.len())
            }
            Self::Fetch => f.write_str("Fetch"),
            Self::AckEnvelopes { ids } => write!(f, "AckEnvelopes({} ids)", ids.len()),
            Self::AttachmentBegin { to, total_len } => write!(f, "AttachmentBegin(to={to}, {total_len} bytes)"),
            Self::AttachmentChunk { id, offset, data } => {
                write!(f, "AttachmentChunk({id}, offset={offset}, {} bytes)", data.len())
            }
            Self::AttachmentStatus { id } => write!(f, "AttachmentStatus({id})"),
            Self::AttachmentFinish { id } => write!(f, "AttachmentFinish({id})"),
            Self::AttachmentGet { id, offset, max_len } => {
                write!(f, "AttachmentGet({id}, offset={offset}, max_len={max_len})")
            }
            Self::AttachmentAck { id } => write!(f, "AttachmentAck({id})"),
            Self::Ping => f.write_str("Ping"),
            Self::RoomCreate { room_id, max_participants, group_info } => {
                write!(f, "RoomCreate({room_id}, max={max_participants}, {} bytes)", group_info.len())
            }
            Self::RoomJoin { room_id, epoch, commit, .. } => {
                write!(f, "RoomJoin({room_id}, epoch={epoch}, {} bytes)", commit.len())
            }
            Self::RoomGetInfo { room_id } => write!(f, "RoomGetInfo({room_id})"),
            Self::RoomSend { room_id, epoch, kind, payload, new_group_info } => write!(
                f,
                "RoomSend({room_id}, epoch={epoch}, {kind:?}, {} bytes, group_info={})",
                payload.len(),
                new_group_info.is_some()
            ),
            Self::RoomLeave { room_id } => write!(f, "RoomLeave({room_id})"),
            Self::RoomFetch { room_id } => write!(f, "RoomFetch({room_id:?})"),
            Self::RoomAck { room_id, seq } => write!(f, "RoomAck({room_id}, {seq})"),
            Self::UploadKeyPackages { packages } => write!(f, "UploadKeyPackages({})", packages.len()),
            Self::FetchKeyPackage { username } => write!(f, "FetchKeyPackage({username})"),
            Self::RoomAdd { room_id, epoch, member, commit, .. } => {
                write!(f, "RoomAdd({room_id}, {member}, epoch={epoch}, {} bytes)", commit.len())
            }
            Self::RoomAttachmentBegin { room_id, total_len } => {
                write!(f, "RoomAttachmentBegin({room_id}, {total_len} bytes)")
            }
        }
    }
}

/// What a room log entry is. Only commits change the room's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomMessageKind {
    /// An MLS application message.
    Application,
    /// An MLS commit (external joins included).
    Commit,
    /// An MLS proposal (e.g. a member's leave).
    Proposal,
}

impl RoomMessageKind {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Application => 0,
            Self::Commit => 1,
            Self::Proposal => 2,
        }
    }

    /// From the wire value.
    pub fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(Self::Application),
            1 => Ok(Self::Commit),
            2 => Ok(Self::Proposal),
            t => Err(WireError::InvalidTag(t)),
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Self::from_u8(r.u8()?)
    }
}

/// One entry of a room log.
#[derive(Clone, PartialEq, Eq)]
pub struct RoomMessage {
    /// The room.
    pub room_id: RoomId,
    /// Position in the room's order (increasing, per room).
    pub seq: u64,
    /// Sender (authenticated by the server's login).
    pub sender: Username,
    /// What it is.
    pub kind: RoomMessageKind,
    /// Opaque MLS message.
    pub payload: Vec<u8>,
}

impl fmt::Debug for RoomMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RoomMessage({}, seq={}, from={}, {:?}, {} bytes)",
            self.room_id,
            self.seq,
            self.sender,
            self.kind,
            self.payload.len()
        )
    }
}

fn read_room_message(r: &mut Reader<'_>) -> Result<RoomMessage, WireError> {
    Ok(RoomMessage {
        room_id: RoomId::read(r)?,
        seq: r.u64()?,
        sender: Username::read(r)?,
        kind: RoomMessageKind::read(r)?,
        payload: r.bytes()?,
    })
}

fn write_room_message(w: &mut Writer, m: &RoomMessage) {
    m.room_id.write(w);
    w.u64(m.seq);
    m.sender.write(w);
    w.u8(m.kind.to_u8());
    w.bytes(&m.payload);
}

/// Error codes carried by [`Response::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Registration: the name is in use.
    UsernameTaken,
    /// No such account.
    UnknownUser,
    /// The signature (or identity key) did not verify.
    BadSignature,
    /// The request needs a logged-in connection.
    NotLoggedIn,
    /// Too many requests; slow down.
    RateLimited,
    /// A payload/attachment exceeds a server limit.
    TooLarge,
    /// The recipient's mailbox is full.
    MailboxFull,
    /// The request is malformed or inconsistent (details in the message).
    Invalid,
    /// No such envelope/attachment (or not visible to you).
    NotFound,
    /// Not allowed for this user.
    Forbidden,
    /// The connection is already logged in.
    AlreadyLoggedIn,
    /// Server-side failure (storage); retry later.
    Internal,
    /// The room has as many members as its limit allows.
    RoomFull,
    /// The room moved to another epoch meanwhile, or a proposal waits for
    /// its commit; sync and retry.
    EpochConflict,
    /// A room with this id exists already; join it instead.
    RoomExists,
    /// Room entries this member had not fetched expired on the relay: its
    /// group state cannot follow the room any more; join it again.
    HistoryExpired,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    /// Wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::UsernameTaken => 1,
            Self::UnknownUser => 2,
            Self::BadSignature => 3,
            Self::NotLoggedIn => 4,
            Self::RateLimited => 5,
            Self::TooLarge => 6,
            Self::MailboxFull => 7,
            Self::Invalid => 8,
            Self::NotFound => 9,
            Self::Forbidden => 10,
            Self::AlreadyLoggedIn => 11,
            Self::Internal => 12,
            Self::RoomFull => 13,
            Self::EpochConflict => 14,
            Self::RoomExists => 15,
            Self::HistoryExpired => 16,
            Self::Other(v) => v,
        }
    }

    /// From the wire value.
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::UsernameTaken,
            2 => Self::UnknownUser,
            3 => Self::BadSignature,
            4 => Self::NotLoggedIn,
            5 => Self::RateLimited,
            6 => Self::TooLarge,
            7 => Self::MailboxFull,
            8 => Self::Invalid,
            9 => Self::NotFound,
            10 => Self::Forbidden,
            11 => Self::AlreadyLoggedIn,
            12 => Self::Internal,
            13 => Self::RoomFull,
            14 => Self::EpochConflict,
            15 => Self::RoomExists,
            16 => Self::HistoryExpired,
            v => Self::Other(v),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UsernameTaken => f.write_str("username already taken; choose another name"),
            Self::UnknownUser => f.write_str("unknown user; check the name or register first"),
            Self::BadSignature => f.write_str("signature verification failed; wrong identity key for this account"),
            Self::NotLoggedIn => f.write_str("not logged in; register or log in first"),
            Self::RateLimited => f.write_str("rate limited; slow down and retry"),
            Self::TooLarge => f.write_str("too large for this server's limits"),
            Self::MailboxFull => f.write_str("recipient's mailbox is full; retry later"),
            Self::Invalid => f.write_str("invalid request"),
            Self::NotFound => f.write_str("not found"),
            Self::Forbidden => f.write_str("forbidden"),
            Self::AlreadyLoggedIn => f.write_str("this connection is already logged in"),
            Self::Internal => f.write_str("internal server error; retry later"),
            Self::RoomFull => f.write_str("the room is full"),
            Self::EpochConflict => f.write_str("the room changed meanwhile; sync and retry"),
            Self::RoomExists => f.write_str("a room with this name exists already; join it instead"),
            Self::HistoryExpired => {
                f.write_str("room messages you had not fetched expired on the server; join the room again")
            }
            Self::Other(v) => write!(f, "server error code {v}"),
        }
    }
}

/// A prekey bundle as stored by the server (blobs are opaque).
#[derive(Clone, PartialEq, Eq)]
pub struct PrekeyBundle {
    /// Owner's identity key.
    pub identity_key: Vec<u8>,
    /// Owner's signed prekeys blob.
    pub signed_prekeys: Vec<u8>,
    /// One consumed one-time prekey, if any were left.
    pub one_time: Option<(PreKeyId, Vec<u8>)>,
    /// One consumed one-time KEM prekey, if any were left.
    pub one_time_kem: Option<(PreKeyId, Vec<u8>)>,
}

impl fmt::Debug for PrekeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeyBundle")
            .field("one_time", &self.one_time.as_ref().map(|(id, _)| id))
            .field("one_time_kem", &self.one_time_kem.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

/// A queued envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Server-assigned id (increasing).
    pub id: EnvelopeId,
    /// Sender (authenticated by the server's login).
    pub from: Username,
    /// Limited-view limit set by the sender.
    pub max_views: Option<u32>,
    /// Fetches left after this one (0 = this was the last; the server deleted it).
    pub views_left: Option<u32>,
    /// Opaque ciphertext.
    pub payload: Vec<u8>,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Envelope(id={}, from={}, max_views={:?}, views_left={:?}, {} bytes)",
            self.id,
            self.from,
            self.max_views,
            self.views_left,
            self.payload.len()
        )
    }
}

/// A response to one request.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Success without data.
    Ok,
    /// Failure.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Answer to `FetchPrekeys`.
    PrekeyBundle(PrekeyBundle),
    /// Answer to `GetIdentity`.
    Identity {
        /// `HybridVerifyingKey` bytes.
        identity_key: Vec<u8>,
        /// The user's current signed prekeys blob (empty if none was uploaded).
        signed_prekeys: Vec<u8>,
    },
    /// Answer to `Send`: the envelope is durably stored.
    Ack {
        /// The new envelope id.
        id: EnvelopeId,
    },
    /// Answer to `Fetch`.
    Envelopes {
        /// Envelopes, oldest first.
        envelopes: Vec<Envelope>,
        /// More are queued than fit in this frame; fetch again.
        more: bool,
    },
    /// Answer to `AckEnvelopes` / `AttachmentAck`: how many were deleted.
    Deleted {
        /// Count.
        count: u32,
    },
    /// Answer to `AttachmentBegin`.
    AttachmentCreated {
        /// The new attachment id.
        id: AttachmentId,
    },
    /// Answer to `AttachmentChunk` / `AttachmentStatus` / `AttachmentFinish`.
    AttachmentStatus {
        /// Attachment.
        id: AttachmentId,
        /// Bytes received so far (resume from here).
        received: u64,
        /// Announced total.
        total_len: u64,
        /// `AttachmentFinish` succeeded.
        complete: bool,
    },
    /// Answer to `AttachmentGet`.
    AttachmentData {
        /// Attachment.
        id: AttachmentId,
        /// Offset of `data`.
        offset: u64,
        /// Total size.
        total_len: u64,
        /// Bytes (empty at the end).
        data: Vec<u8>,
    },
    /// Answer to `Ping`.
    Pong,
    /// Answer to `RoomGetInfo`.
    RoomInfo {
        /// The sealed GroupInfo (opaque).
        group_info: Vec<u8>,
        /// The room's current epoch.
        epoch: u64,
    },
    /// Answer to `RoomJoin` / `RoomSend`: the entry is durably stored.
    RoomSent {
        /// Its sequence number in the room.
        seq: u64,
    },
    /// Answer to `RoomFetch`.
    RoomMessages {
        /// Entries, in room order.
        messages: Vec<RoomMessage>,
        /// More are pending than fit in this frame; fetch again.
        more: bool,
    },
    /// Answer to `FetchKeyPackage`.
    KeyPackage {
        /// The opaque key package, as uploaded.
        package: Vec<u8>,
    },
}

impl Response {
    /// Shorthand for an error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("Ok"),
            Self::Error { code, message } => write!(f, "Error({code:?}: {message})"),
            Self::PrekeyBundle(b) => write!(f, "{b:?}"),
            Self::Identity { .. } => f.write_str("Identity(..)"),
            Self::Ack { id } => write!(f, "Ack({id})"),
            Self::Envelopes { envelopes, more } => write!(f, "Envelopes({envelopes:?}, more={more})"),
            Self::Deleted { count } => write!(f, "Deleted({count})"),
            Self::AttachmentCreated { id } => write!(f, "AttachmentCreated({id})"),
            Self::AttachmentStatus { id, received, total_len, complete } => {
                write!(f, "AttachmentStatus({id}, {received}/{total_len}, complete={complete})")
            }
            Self::AttachmentData { id, offset, total_len, data } => {
                write!(f, "AttachmentData({id}, offset={offset}/{total_len}, {} bytes)", data.len())
            }
            Self::Pong => f.write_str("Pong"),
            Self::RoomInfo { group_info, epoch } => write!(f, "RoomInfo(epoch={epoch}, {} bytes)", group_info.len()),
            Self::RoomSent { seq } => write!(f, "RoomSent({seq})"),
            Self::RoomMessages { messages, more } => write!(f, "RoomMessages({messages:?}, more={more})"),
            Self::KeyPackage { package } => write!(f, "KeyPackage({} bytes)", package.len()),
        }
    }
}

/// A server-initiated notification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Push {
    /// An envelope was queued for the logged-in user; `Fetch` to get it.
    NewEnvelope {
        /// Its id.
        id: EnvelopeId,
        /// Sender.
        from: Username,
    },
    /// Fewer one-time prekeys are left than the server's threshold; upload more.
    LowPrekeys {
        /// One-time classical prekeys left.
        remaining: u32,
        /// One-time KEM prekeys left.
        remaining_kem: u32,
    },
    /// A room the user belongs to has new entries; `RoomFetch` them.
    RoomMessage {
        /// The room.
        room_id: RoomId,
    },
    /// Fewer MLS key packages are left than the server's threshold; upload more.
    LowKeyPackages {
        /// Key packages left.
        remaining: u32,
    },
    /// An envelope just queued for the logged-in user, delivered inline (no
    /// `Fetch` needed; it stays queued until `AckEnvelopes`). Limited-view
    /// envelopes are announced with `NewEnvelope` instead, because each fetch
    /// of one counts as a view.
    Envelope(Envelope),
    /// A new entry of one of the user's rooms, delivered inline (no
    /// `RoomFetch` needed; the cursor moves only with `RoomAck`).
    RoomEntry(RoomMessage),
}

/// A frame sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFrame {
    /// Echoed in the response.
    pub id: RequestId,
    /// The request.
    pub request: Request,
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// First frame on a connection.
    Hello {
        /// Protocol version the server speaks.
        version: u8,
        /// Fresh random challenge for `Register` / `Login`.
        challenge: [u8; CHALLENGE_LEN],
        /// Largest frame body the server accepts.
        max_frame: u32,
    },
    /// Response to the request with this id.
    Response {
        /// Echoed request id.
        id: RequestId,
        /// The response.
        response: Response,
    },
    /// Notification.
    Push(Push),
}

// Frame type bytes.
const T_REGISTER: u8 = 0x01;
const T_LOGIN: u8 = 0x02;
const T_UPLOAD_PREKEYS: u8 = 0x03;
const T_FETCH_PREKEYS: u8 = 0x04;
const T_GET_IDENTITY: u8 = 0x05;
const T_SEND: u8 = 0x06;
const T_FETCH: u8 = 0x07;
const T_ACK_ENVELOPES: u8 = 0x08;
const T_ATT_BEGIN: u8 = 0x09;
const T_ATT_CHUNK: u8 = 0x0A;
const T_ATT_STATUS: u8 = 0x0B;
const T_ATT_FINISH: u8 = 0x0C;
const T_ATT_GET: u8 = 0x0D;
const T_ATT_ACK: u8 = 0x0E;
const T_PING: u8 = 0x0F;
const T_ROOM_CREATE: u8 = 0x10;
const T_ROOM_JOIN: u8 = 0x11;
const T_ROOM_GET_INFO: u8 = 0x12;
const T_ROOM_SEND: u8 = 0x13;
const T_ROOM_LEAVE: u8 = 0x14;
const T_ROOM_FETCH: u8 = 0x15;
const T_ROOM_ACK: u8 = 0x16;
const T_ROOM_ATT_BEGIN: u8 = 0x17;
const T_UPLOAD_KEY_PACKAGES: u8 = 0x18;
const T_FETCH_KEY_PACKAGE: u8 = 0x19;
const T_ROOM_ADD: u8 = 0x1A;

const T_HELLO: u8 = 0x40;

const T_R_OK: u8 = 0x80;
const T_R_ERROR: u8 = 0x81;
const T_R_BUNDLE: u8 = 0x82;
const T_R_IDENTITY: u8 = 0x83;
const T_R_ACK: u8 = 0x84;
const T_R_ENVELOPES: u8 = 0x85;
const T_R_DELETED: u8 = 0x86;
const T_R_ATT_CREATED: u8 = 0x87;
const T_R_ATT_STATUS: u8 = 0x88;
const T_R_ATT_DATA: u8 = 0x89;
const T_R_PONG: u8 = 0x8A;
const T_R_ROOM_INFO: u8 = 0x8B;
const T_R_ROOM_SENT: u8 = 0x8C;
const T_R_ROOM_MESSAGES: u8 = 0x8D;
const T_R_KEY_PACKAGE: u8 = 0x8E;

const T_P_NEW_ENVELOPE: u8 = 0xC0;
const T_P_LOW_PREKEYS: u8 = 0xC1;
const T_P_ROOM_MESSAGE: u8 = 0xC2;
const T_P_LOW_KEY_PACKAGES: u8 = 0xC3;
const T_P_ENVELOPE: u8 = 0xC4;
const T_P_ROOM_ENTRY: u8 = 0xC5;

fn read_prekey(r: &mut Reader<'_>) -> Result<(PreKeyId, Vec<u8>), WireError> {
    Ok((PreKeyId::read(r)?, r.bytes()?))
}

fn write_prekey(w: &mut Writer, (id, b): &(PreKeyId, Vec<u8>)) {
    id.write(w);
    w.bytes(b);
}

/// Reads the version byte and the type byte of a body.
fn header<'a>(body: &'a [u8]) -> Result<(u8, Reader<'a>), WireError> {
    let mut r = Reader::new(body);
    let v = r.u8().map_err(|_| WireError::Empty)?;
    if v != PROTOCOL_VERSION {
        return Err(WireError::UnknownVersion(v));
    }
    let t = r.u8()?;
    Ok((t, r))
}

/// Starts a frame of type `t` (with room for its length prefix).
fn start(t: u8) -> Writer {
    let mut w = Writer::framed();
    w.u8(PROTOCOL_VERSION);
    w.u8(t);
    w
}

impl ClientFrame {
    /// Decodes a frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let (t, mut r) = header(body)?;
        let id = RequestId::read(&mut r)?;
        let request = match t {
            T_REGISTER => {
                Request::Register { username: Username::read(&mut r)?, identity_key: r.bytes()?, signature: r.bytes()? }
            }
            T_LOGIN => Request::Login { username: Username::read(&mut r)?, signature: r.bytes()? },
            T_UPLOAD_PREKEYS => Request::UploadPrekeys {
                signed_prekeys: r.bytes()?,
                one_time: r.list(8, read_prekey)?,
                one_time_kem: r.list(8, read_prekey)?,
            },
            T_FETCH_PREKEYS => Request::FetchPrekeys { username: Username::read(&mut r)? },
            T_GET_IDENTITY => Request::GetIdentity { username: Username::read(&mut r)? },
            T_SEND => {
                Request::Send { to: Username::read(&mut r)?, max_views: r.option(Reader::u32)?, payload: r.bytes()? }
            }
            T_FETCH => Request::Fetch,
            T_ACK_ENVELOPES => Request::AckEnvelopes { ids: r.list(8, EnvelopeId::read)? },
            T_ATT_BEGIN => Request::AttachmentBegin { to: Username::read(&mut r)?, total_len: r.u64()? },
            T_ATT_CHUNK => {
                Request::AttachmentChunk { id: AttachmentId::read(&mut r)?, offset: r.u64()?, data: r.bytes()? }
            }
            T_ATT_STATUS => Request::AttachmentStatus { id: AttachmentId::read(&mut r)? },
            T_ATT_FINISH => Request::AttachmentFinish { id: AttachmentId::read(&mut r)? },
            T_ATT_GET => {
                Request::AttachmentGet { id: AttachmentId::read(&mut r)?, offset: r.u64()?, max_len: r.u32()? }
            }
            T_ATT_ACK => Request::AttachmentAck { id: AttachmentId::read(&mut r)? },
            T_PING => Request::Ping,
            T_ROOM_CREATE => Request::RoomCreate {
                room_id: RoomId::read(&mut r)?,
                max_participants: r.u32()?,
                group_info: r.bytes()?,
            },
            T_ROOM_JOIN => Request::RoomJoin {
                room_id: RoomId::read(&mut r)?,
                epoch: r.u64()?,
                commit: r.bytes()?,
                group_info: r.bytes()?,
            },
            T_ROOM_GET_INFO => Request::RoomGetInfo { room_id: RoomId::read(&mut r)? },
            T_ROOM_SEND => Request::RoomSend {
                room_id: RoomId::read(&mut r)?,
                epoch: r.u64()?,
                kind: RoomMessageKind::read(&mut r)?,
                payload: r.bytes()?,
                new_group_info: r.option(Reader::bytes)?,
            },
            T_ROOM_LEAVE => Request::RoomLeave { room_id: RoomId::read(&mut r)? },
            T_ROOM_FETCH => Request::RoomFetch { room_id: r.option(RoomId::read)? },
            T_ROOM_ACK => Request::RoomAck { room_id: RoomId::read(&mut r)?, seq: r.u64()? },
            T_ROOM_ATT_BEGIN => Request::RoomAttachmentBegin { room_id: RoomId::read(&mut r)?, total_len: r.u64()? },
            T_UPLOAD_KEY_PACKAGES => Request::UploadKeyPackages { packages: r.list(4, Reader::bytes)? },
            T_FETCH_KEY_PACKAGE => Request::FetchKeyPackage { username: Username::read(&mut r)? },
            T_ROOM_ADD => Request::RoomAdd {
                room_id: RoomId::read(&mut r)?,
                epoch: r.u64()?,
                member: Username::read(&mut r)?,
                commit: r.bytes()?,
                group_info: r.bytes()?,
            },
            other => return Err(WireError::UnknownType(other)),
        };
        r.finish()?;
        Ok(Self { id, request })
    }

    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let t = match &self.request {
            Request::Register { .. } => T_REGISTER,
            Request::Login { .. } => T_LOGIN,
            Request::UploadPrekeys { .. } => T_UPLOAD_PREKEYS,
            Request::FetchPrekeys { .. } => T_FETCH_PREKEYS,
            Request::GetIdentity { .. } => T_GET_IDENTITY,
            Request::Send { .. } => T_SEND,
            Request::Fetch => T_FETCH,
            Request::AckEnvelopes { .. } => T_ACK_ENVELOPES,
            Request::AttachmentBegin { .. } => T_ATT_BEGIN,
            Request::AttachmentChunk { .. } => T_ATT_CHUNK,
            Request::AttachmentStatus { .. } => T_ATT_STATUS,
            Request::AttachmentFinish { .. } => T_ATT_FINISH,
            Request::AttachmentGet { .. } => T_ATT_GET,
            Request::AttachmentAck { .. } => T_ATT_ACK,
            Request::Ping => T_PING,
            Request::RoomCreate { .. } => T_ROOM_CREATE,
            Request::RoomJoin { .. } => T_ROOM_JOIN,
            Request::RoomGetInfo { .. } => T_ROOM_GET_INFO,
            Request::RoomSend { .. } => T_ROOM_SEND,
            Request::RoomLeave { .. } => T_ROOM_LEAVE,
            Request::RoomFetch { .. } => T_ROOM_FETCH,
            Request::RoomAck { .. } => T_ROOM_ACK,
            Request::RoomAttachmentBegin { .. } => T_ROOM_ATT_BEGIN,
            Request::UploadKeyPackages { .. } => T_UPLOAD_KEY_PACKAGES,
            Request::FetchKeyPackage { .. } => T_FETCH_KEY_PACKAGE,
            Request::RoomAdd { .. } => T_ROOM_ADD,
        };
        let mut w = start(t);
        self.id.write(&mut w);
        match &self.request {
            Request::Register { username, identity_key, signature } => {
                username.write(&mut w);
                w.bytes(identity_key);
                w.bytes(signature);
            }
            Request::Login { username, signature } => {
                username.write(&mut w);
                w.bytes(signature);
            }
            Request::UploadPrekeys { signed_prekeys, one_time, one_time_kem } => {
                w.bytes(signed_prekeys);
                w.list(one_time, write_prekey);
                w.list(one_time_kem, write_prekey);
            }
            Request::FetchPrekeys { username }
            | Request::GetIdentity { username }
            | Request::FetchKeyPackage { username } => username.write(&mut w),
            Request::Send { to, max_views, payload } => {
                to.write(&mut w);
                w.option(max_views.as_ref(), |w, v| w.u32(*v));
                w.bytes(payload);
            }
            Request::Fetch | Request::Ping => {}
            Request::AckEnvelopes { ids } => w.list(ids, |w, id| id.write(w)),
            Request::AttachmentBegin { to, total_len } => {
                to.write(&mut w);
                w.u64(*total_len);
            }
            Request::AttachmentChunk { id, offset, data } => {
                id.write(&mut w);
                w.u64(*offset);
                w.bytes(data);
            }
            Request::AttachmentStatus { id } | Request::AttachmentFinish { id } | Request::AttachmentAck { id } => {
                id.write(&mut w)
            }
            Request::AttachmentGet { id, offset, max_len } => {
                id.write(&mut w);
                w.u64(*offset);
                w.u32(*max_len);
            }
            Request::RoomCreate { room_id, max_participants, group_info } => {
                room_id.write(&mut w);
                w.u32(*max_participants);
                w.bytes(group_info);
            }
            Request::RoomJoin { room_id, epoch, commit, group_info } => {
                room_id.write(&mut w);
                w.u64(*epoch);
                w.bytes(commit);
                w.bytes(group_info);
            }
            Request::RoomGetInfo { room_id } | Request::RoomLeave { room_id } => room_id.write(&mut w),
            Request::RoomSend { room_id, epoch, kind, payload, new_group_info } => {
                room_id.write(&mut w);
                w.u64(*epoch);
                w.u8(kind.to_u8());
                w.bytes(payload);
                w.option(new_group_info.as_ref(), |w, g| w.bytes(g));
            }
            Request::RoomFetch { room_id } => w.option(room_id.as_ref(), |w, id| id.write(w)),
            Request::RoomAck { room_id, seq } => {
                room_id.write(&mut w);
                w.u64(*seq);
            }
            Request::RoomAttachmentBegin { room_id, total_len } => {
                room_id.write(&mut w);
                w.u64(*total_len);
            }
            Request::UploadKeyPackages { packages } => w.list(packages, |w, p| w.bytes(p)),
            Request::RoomAdd { room_id, epoch, member, commit, group_info } => {
                room_id.write(&mut w);
                w.u64(*epoch);
                member.write(&mut w);
                w.bytes(commit);
                w.bytes(group_info);
            }
        }
        w.into_frame()
    }

    /// Encodes the body (without the length prefix).
    pub fn encode_body(&self) -> Vec<u8> {
        body_of(self.encode())
    }
}

fn read_envelope(r: &mut Reader<'_>) -> Result<Envelope, WireError> {
    Ok(Envelope {
        id: EnvelopeId::read(r)?,
        from: Username::read(r)?,
        max_views: r.option(Reader::u32)?,
        views_left: r.option(Reader::u32)?,
        payload: r.bytes()?,
    })
}

fn write_envelope(w: &mut Writer, e: &Envelope) {
    e.id.write(w);
    e.from.write(w);
    w.option(e.max_views.as_ref(), |w, v| w.u32(*v));
    w.option(e.views_left.as_ref(), |w, v| w.u32(*v));
    w.bytes(&e.payload);
}

impl ServerFrame {
    /// Decodes a frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let (t, mut r) = header(body)?;
        let frame = match t {
            T_HELLO => ServerFrame::Hello { version: r.u8()?, challenge: r.array()?, max_frame: r.u32()? },
            T_P_NEW_ENVELOPE => {
                ServerFrame::Push(Push::NewEnvelope { id: EnvelopeId::read(&mut r)?, from: Username::read(&mut r)? })
            }
            T_P_LOW_PREKEYS => ServerFrame::Push(Push::LowPrekeys { remaining: r.u32()?, remaining_kem: r.u32()? }),
            T_P_ROOM_MESSAGE => ServerFrame::Push(Push::RoomMessage { room_id: RoomId::read(&mut r)? }),
            T_P_LOW_KEY_PACKAGES => ServerFrame::Push(Push::LowKeyPackages { remaining: r.u32()? }),
            T_P_ENVELOPE => ServerFrame::Push(Push::Envelope(read_envelope(&mut r)?)),
            T_P_ROOM_ENTRY => ServerFrame::Push(Push::RoomEntry(read_room_message(&mut r)?)),
            T_R_OK..=T_R_KEY_PACKAGE => {
                let id = RequestId::read(&mut r)?;
                let response = match t {
                    T_R_OK => Response::Ok,
                    T_R_ERROR => Response::Error { code: ErrorCode::from_u16(r.u16()?), message: r.string()? },
                    T_R_BUNDLE => Response::PrekeyBundle(PrekeyBundle {
                        identity_key: r.bytes()?,
                        signed_prekeys: r.bytes()?,
                        one_time: r.option(read_prekey)?,
                        one_time_kem: r.option(read_prekey)?,
                    }),
                    T_R_IDENTITY => Response::Identity { identity_key: r.bytes()?, signed_prekeys: r.bytes()? },
                    T_R_ACK => Response::Ack { id: EnvelopeId::read(&mut r)? },
                    T_R_ENVELOPES => Response::Envelopes { envelopes: r.list(16, read_envelope)?, more: r.bool()? },
                    T_R_DELETED => Response::Deleted { count: r.u32()? },
                    T_R_ATT_CREATED => Response::AttachmentCreated { id: AttachmentId::read(&mut r)? },
                    T_R_ATT_STATUS => Response::AttachmentStatus {
                        id: AttachmentId::read(&mut r)?,
                        received: r.u64()?,
                        total_len: r.u64()?,
                        complete: r.bool()?,
                    },
                    T_R_ATT_DATA => Response::AttachmentData {
                        id: AttachmentId::read(&mut r)?,
                        offset: r.u64()?,
                        total_len: r.u64()?,
                        data: r.bytes()?,
                    },
                    T_R_ROOM_INFO => Response::RoomInfo { group_info: r.bytes()?, epoch: r.u64()? },
                    T_R_ROOM_SENT => Response::RoomSent { seq: r.u64()? },
                    T_R_ROOM_MESSAGES => {
                        Response::RoomMessages { messages: r.list(31, read_room_message)?, more: r.bool()? }
                    }
                    T_R_KEY_PACKAGE => Response::KeyPackage { package: r.bytes()? },
                    _ => Response::Pong,
                };
                ServerFrame::Response { id, response }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        r.finish()?;
        Ok(frame)
    }

    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerFrame::Hello { version, challenge, max_frame } => {
                let mut w = start(T_HELLO);
                w.u8(*version);
                w.raw(challenge);
                w.u32(*max_frame);
                w.into_frame()
            }
            ServerFrame::Push(p) => push_frame(p),
            ServerFrame::Response { id, response } => {
                let t = match response {
                    Response::Ok => T_R_OK,
                    Response::Error { .. } => T_R_ERROR,
                    Response::PrekeyBundle(_) => T_R_BUNDLE,
                    Response::Identity { .. } => T_R_IDENTITY,
                    Response::Ack { .. } => T_R_ACK,
                    Response::Envelopes { .. } => T_R_ENVELOPES,
                    Response::Deleted { .. } => T_R_DELETED,
                    Response::AttachmentCreated { .. } => T_R_ATT_CREATED,
                    Response::AttachmentStatus { .. } => T_R_ATT_STATUS,
                    Response::AttachmentData { .. } => T_R_ATT_DATA,
                    Response::Pong => T_R_PONG,
                    Response::RoomInfo { .. } => T_R_ROOM_INFO,
                    Response::RoomSent { .. } => T_R_ROOM_SENT,
                    Response::RoomMessages { .. } => T_R_ROOM_MESSAGES,
                    Response::KeyPackage { .. } => T_R_KEY_PACKAGE,
                };
                let mut w = start(t);
                id.write(&mut w);
                match response {
                    Response::Ok | Response::Pong => {}
                    Response::Error { code, message } => {
                        w.u16(code.to_u16());
                        w.string(message);
                    }
                    Response::PrekeyBundle(b) => {
                        w.bytes(&b.identity_key);
                        w.bytes(&b.signed_prekeys);
                        w.option(b.one_time.as_ref(), write_prekey);
                        w.option(b.one_time_kem.as_ref(), write_prekey);
                    }
                    Response::Identity { identity_key, signed_prekeys } => {
                        w.bytes(identity_key);
                        w.bytes(signed_prekeys);
                    }
                    Response::Ack { id } => id.write(&mut w),
                    Response::Envelopes { envelopes, more } => {
                        w.list(envelopes, write_envelope);
                        w.bool(*more);
                    }
                    Response::Deleted { count } => w.u32(*count),
                    Response::AttachmentCreated { id } => id.write(&mut w),
                    Response::AttachmentStatus { id, received, total_len, complete } => {
                        id.write(&mut w);
                        w.u64(*received);
                        w.u64(*total_len);
                        w.bool(*complete);
                    }
                    Response::AttachmentData { id, offset, total_len, data } => {
                        id.write(&mut w);
                        w.u64(*offset);
                        w.u64(*total_len);
                        w.bytes(data);
                    }
                    Response::RoomInfo { group_info, epoch } => {
                        w.bytes(group_info);
                        w.u64(*epoch);
                    }
                    Response::RoomSent { seq } => w.u64(*seq),
                    Response::RoomMessages { messages, more } => {
                        w.list(messages, write_room_message);
                        w.bool(*more);
                    }
                    Response::KeyPackage { package } => w.bytes(package),
                }
                w.into_frame()
            }
        }
    }

    /// Encodes the body (without the length prefix).
    pub fn encode_body(&self) -> Vec<u8> {
        body_of(self.encode())
    }
}

/// A push frame (length prefix and body).
fn push_frame(p: &Push) -> Vec<u8> {
    let w = match p {
        Push::NewEnvelope { id, from } => {
            let mut w = start(T_P_NEW_ENVELOPE);
            id.write(&mut w);
            from.write(&mut w);
            w
        }
        Push::LowPrekeys { remaining, remaining_kem } => {
            let mut w = start(T_P_LOW_PREKEYS);
            w.u32(*remaining);
            w.u32(*remaining_kem);
            w
        }
        Push::RoomMessage { room_id } => {
            let mut w = start(T_P_ROOM_MESSAGE);
            room_id.write(&mut w);
            w
        }
        Push::LowKeyPackages { remaining } => {
            let mut w = start(T_P_LOW_KEY_PACKAGES);
            w.u32(*remaining);
            w
        }
        Push::Envelope(e) => {
            let mut w = start(T_P_ENVELOPE);
            write_envelope(&mut w, e);
            w
        }
        Push::RoomEntry(m) => {
            let mut w = start(T_P_ROOM_ENTRY);
            write_room_message(&mut w, m);
            w
        }
    };
    w.into_frame()
}

impl Push {
    /// The whole frame (length prefix and body) of this push: the server
    /// encodes a push once and sends the same bytes to every recipient.
    pub fn encode_frame(&self) -> Vec<u8> {
        push_frame(self)
    }
}

/// The body of a frame encoded with its length prefix.
fn body_of(mut frame: Vec<u8>) -> Vec<u8> {
    frame.drain(..4.min(frame.len()));
    frame
}

/// Prefixes `body` with its `u32` big-endian length.
pub fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits one frame off the front of `buf`: `Ok(Some((body, consumed)))`,
/// `Ok(None)` if more bytes are needed, or `TooLarge` as soon as the length
/// prefix announces more than `max` bytes.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(prefix) = buf.get(..4) else { return Ok(None) };
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    match buf.get(4..4 + len) {
        Some(body) => Ok(Some((body, 4 + len))),
        None => Ok(None),
    }
}

/// Incremental decoder for a byte stream of frames (sans-IO): `push` bytes
/// as they arrive, then call `next_body` until it returns `Ok(None)`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    /// A decoder rejecting bodies larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame body, if any.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let (body, used) = match split_frame(&self.buf, self.max)? {
            Some((body, used)) => (body.to_vec(), used),
            None => return Ok(None),
        };
        self.buf.drain(..used);
        Ok(Some(body))
    }
}
