//! The client engine: connects, authenticates, keeps prekeys stocked,
//! encrypts and sends, receives and decrypts. The CLI and the TUI are thin
//! layers over [`Client`].
//!
//! Delivery guarantees:
//! - `send_*` return only after the server acknowledged the envelope (which
//!   it does only once the envelope is on its disk); the ratchet state is
//!   saved before the envelope leaves.
//! - `receive` commits the decrypted message, the advanced session and the
//!   envelope id (as "seen") in one profile transaction before acknowledging
//!   it to the server; a redelivered envelope is recognised and not shown
//!   twice.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pqc_crypto::kdf::sha256;
use pqc_crypto::rng::{SystemRng, random_array};
use pqc_net::{Connection, ServerTrust};
use pqc_proto::prekey::PreKeyStore;
use pqc_proto::{
    IdentityKey, IdentityKeyPair, PeerIdentity, PreKeyBundle, PreKeyId, Session, SignedPreKeySecrets, WireMessage,
    generate_one_time_kem_prekeys, generate_one_time_prekeys, generate_signed_prekeys,
};
use pqc_wire::{AttachmentId, Push, Request, Response, Username};
use tokio::sync::mpsc::UnboundedReceiver;
use zeroize::Zeroizing;

use crate::content::{Body, Content, FileRef, sanitize_file_name};
use crate::error::{ClientError, Result};
use crate::files::{FileCipher, PendingUpload, chunk_count, chunk_for, cipher_len, open_chunks, seal_chunks};
use crate::profile::{MAX_SESSIONS_PER_PEER, Profile, ns};

/// One-time prekeys uploaded per batch.
pub const PREKEY_BATCH: u32 = 50;
/// Below this many unused one-time prekeys (as the server reports), a new batch is uploaded.
pub const PREKEY_LOW: u32 = 20;
/// Default server port.
pub const DEFAULT_PORT: u16 = 8443;
/// Attachment chunk requests kept in flight per transfer.
const PIPELINE: usize = 8;
/// How long a transfer waits for a lost connection to the server to come
/// back (a server restart, a network change) before it gives up.
const RECONNECT_WITHIN: Duration = Duration::from_secs(60);
/// Bound of one connection attempt while reconnecting (a server that is
/// down does not answer at all: QUIC would wait out its idle timeout).
const CONNECT_ATTEMPT: Duration = Duration::from_secs(5);
/// Reconnections one transfer makes before it gives up.
const MAX_RECONNECTS: u32 = 5;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `HOST:PORT` (port defaults to 8443).
    pub server: String,
    /// A CA file to verify the server with instead of pinning.
    pub ca: Option<PathBuf>,
}

/// What happened while receiving, for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A text message.
    Text {
        /// Sender.
        from: String,
        /// Text.
        text: String,
        /// `(this view, max views)` for a limited-view message.
        views: Option<(u32, u32)>,
    },
    /// A file, saved.
    File {
        /// Sender.
        from: String,
        /// Where it was saved.
        path: PathBuf,
        /// Size in bytes.
        size: u64,
    },
    /// Something the user should know (a dropped undecryptable message, a key change).
    Warning(String),
}

/// Splits `HOST[:PORT]` and resolves it.
pub async fn resolve(server: &str) -> Result<(String, SocketAddr)> {
    let with_port = if server.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !server.ends_with(']')
    {
        server.to_string()
    } else {
        format!("{server}:{DEFAULT_PORT}")
    };
    let host = with_port
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .unwrap_or_default();
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| ClientError::io(format!("cannot resolve server address {server:?}"), e))?
        .next()
        .ok_or_else(|| ClientError::Usage(format!("server address {server:?} resolves to nothing")))?;
    Ok((host, addr))
}

/// How long a connection attempt goes unanswered before the user is told.
const STILL_CONNECTING: std::time::Duration = std::time::Duration::from_secs(3);

/// Connects with trust on first use: the first connection to an address
/// pins the certificate's fingerprint (reported through `notice`), later
/// connections accept only that certificate.
pub async fn connect(profile: &Profile, opts: &ConnectOptions, notice: &mut dyn FnMut(String)) -> Result<Connection> {
    let (host, addr) = resolve(&opts.server).await?;
    let pin_key = opts.server.clone();
    let trust = match (&opts.ca, profile.server_pin(&pin_key)?) {
        (Some(ca), _) => ServerTrust::from_ca_file(ca)?,
        (None, Some(fp)) => ServerTrust::Pinned(fp.parse()?),
        (None, None) => ServerTrust::FirstUse,
    };
    let first_use = matches!(trust, ServerTrust::FirstUse);
    let attempt = Connection::connect(addr, &host, trust);
    tokio::pin!(attempt);
    // A host that does not answer at all is given the whole idle timeout;
    // say so instead of hanging silently.
    let connected = tokio::select! {
        r = &mut attempt => r,
        () = tokio::time::sleep(STILL_CONNECTING) => {
            notice(format!(
                "no answer from {} yet; still trying (up to {} s)...",
                opts.server,
                pqc_net::CLIENT_IDLE_TIMEOUT.as_secs()
            ));
            attempt.await
        }
    };
    let (conn, fingerprint, group) = connected.map_err(|e| match e {
        pqc_net::NetError::Connection(pqc_net::quinn::ConnectionError::TimedOut) => {
            ClientError::Unreachable(opts.server.clone())
        }
        pqc_net::NetError::PortClosed(_) => ClientError::NotListening(opts.server.clone()),
        e => e.into(),
    })?;
    if first_use {
        profile.set_server_pin(&pin_key, &fingerprint.to_hex())?;
        notice(format!(
            "Trusting the certificate of {} on first use (SHA-256 {fingerprint}); later connections accept only this certificate.",
            opts.server
        ));
    }
    tracing::debug!(?group, "connected");
    Ok(conn)
}

/// A logged-in client.
pub struct Client {
    profile: Profile,
    conn: Connection,
    opts: ConnectOptions,
    me: Username,
    identity: IdentityKeyPair,
    pushes: Option<UnboundedReceiver<Push>>,
    /// Where notices of a long operation go (a lost connection, a resumed
    /// upload); see [`Client::set_notices`].
    notices: Box<dyn FnMut(String) + Send>,
    /// Messages handled inline from pushes, acknowledged in one go by
    /// [`Client::flush_acks`] once no push is waiting.
    pub(crate) acks: PendingAcks,
    /// An invitation to a room was accepted and no room sync has shown its
    /// first line yet ([`Client::rooms_receive`] clears it).
    pub(crate) joined_room: bool,
}

use pqc_wire::{ACK_DELAY, ROOM_ACK_DELAY};
/// Pending acknowledgements that are sent without waiting for [`ACK_DELAY`].
const ACK_BATCH: usize = 256;

/// Acknowledgements not yet sent: envelope ids and, per room, the last
/// sequence number applied.
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    pub(crate) envelopes: Vec<pqc_wire::EnvelopeId>,
    pub(crate) rooms: std::collections::BTreeMap<pqc_wire::RoomId, u64>,
    /// When the oldest pending envelope acknowledgement was added.
    since: Option<Instant>,
    /// When the oldest pending room acknowledgement was added.
    rooms_since: Option<Instant>,
}

impl PendingAcks {
    fn len(&self) -> usize {
        self.envelopes.len() + self.rooms.len()
    }

    fn add_envelopes(&mut self, ids: Vec<pqc_wire::EnvelopeId>) {
        if !ids.is_empty() {
            self.since.get_or_insert_with(Instant::now);
        }
        self.envelopes.extend(ids);
    }

    /// The room's entries up to `seq` are applied.
    pub(crate) fn add_room(&mut self, room: pqc_wire::RoomId, seq: u64) {
        self.rooms_since.get_or_insert_with(Instant::now);
        self.rooms.insert(room, seq);
    }

    /// When they must go: [`ACK_DELAY`] after the oldest envelope's,
    /// [`ROOM_ACK_DELAY`] after the oldest room entry's.
    fn due(&self) -> Option<Instant> {
        let envelopes = self.since.map(|t| t + ACK_DELAY);
        let rooms = self.rooms_since.map(|t| t + ROOM_ACK_DELAY);
        match (envelopes, rooms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a push asks the caller to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Nothing: it was handled (or did not concern the caller).
    Nothing,
    /// Fetch the mailbox (a limited-view message was announced).
    Mailbox,
    /// Sync the rooms.
    Rooms,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Client({})", self.me)
    }
}

/// Whether sending again can never succeed, so a queued message is dropped.
fn is_permanent(e: &ClientError) -> bool {
    use pqc_wire::ErrorCode as C;
    match e {
        ClientError::Refused { code, .. } => {
            matches!(code, C::UnknownUser | C::Invalid | C::TooLarge | C::Forbidden | C::NotFound | C::BadSignature)
        }
        ClientError::IdentityChanged(_) | ClientError::Proto(_) | ClientError::Crypto(_) | ClientError::Wire(_) => true,
        _ => false,
    }
}

/// Outbox messages sent before waiting for their Acks.
const OUTBOX_IN_FLIGHT: usize = 8;

/// An outbox record: `u8 name length || recipient || encoded content`.
fn outbox_record(rec: &[u8]) -> Result<(Username, &[u8])> {
    let Some((&n, rest)) = rec.split_first() else { return Err(ClientError::Malformed("outbox record")) };
    let n = usize::from(n);
    if rest.len() < n {
        return Err(ClientError::Malformed("outbox record"));
    }
    let to = Username::new(std::str::from_utf8(&rest[..n]).map_err(|_| ClientError::Malformed("outbox record"))?)?;
    Ok((to, &rest[n..]))
}

pub(crate) fn server_error(resp: Response) -> ClientError {
    match resp {
        Response::Error { code, message } => ClientError::Refused { code, message },
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

/// Whether `e` means the connection to the server was lost (so a new one
/// may get further), rather than a refusal or a local failure.
pub(crate) fn is_connection_lost(e: &ClientError) -> bool {
    use pqc_net::NetError as N;
    matches!(e, ClientError::Net(N::Connection(_) | N::Closed | N::Timeout | N::Write(_) | N::Read(_) | N::Io(_)))
        || matches!(e, ClientError::Unreachable(_) | ClientError::NotListening(_))
}

/// Connects and logs in as `me`.
async fn log_in(
    profile: &Profile,
    opts: &ConnectOptions,
    me: &Username,
    identity: &IdentityKeyPair,
    notice: &mut dyn FnMut(String),
) -> Result<Connection> {
    let conn = connect(profile, opts, notice).await?;
    let transcript = pqc_wire::auth::login_transcript(&conn.challenge(), me);
    let signature = identity.sign(&transcript, pqc_wire::auth::LOGIN_CONTEXT, &mut SystemRng)?;
    if let Err(e) = call(&conn, Request::Login { username: me.clone(), signature }).await {
        // Closed, not dropped: the server frees the connection at once.
        conn.close().await;
        return Err(e);
    }
    Ok(conn)
}

/// The notice sink of a client nobody set one for: the log, at info level
/// (notices name no user content).
fn log_notice(msg: String) {
    tracing::info!("{msg}");
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn expect_ok(resp: Response) -> Result<()> {
    match resp {
        Response::Ok | Response::AttachmentStatus { .. } => Ok(()),
        other => Err(server_error(other)),
    }
}

pub(crate) async fn call(conn: &Connection, req: Request) -> Result<Response> {
    match conn.request(req).await? {
        r @ Response::Error { .. } => Err(server_error(r)),
        r => Ok(r),
    }
}

impl Client {
    /// Creates an identity, registers `name` on the server and uploads prekeys.
    pub async fn register(
        profile: Profile,
        opts: &ConnectOptions,
        name: &str,
        notice: &mut dyn FnMut(String),
    ) -> Result<Self> {
        if let Some(existing) = profile.username()? {
            return Err(ClientError::AlreadyRegistered(existing));
        }
        let me = Username::new(name)?;
        let identity = match profile.get_sealed(ns::IDENTITY, "self")? {
            Some(b) => IdentityKeyPair::from_bytes(&b)?,
            None => {
                let id = IdentityKeyPair::generate(&mut SystemRng)?;
                profile.set_identity(&id)?;
                id
            }
        };
        let conn = connect(&profile, opts, notice).await?;
        let ik = identity.identity_key().to_bytes();
        let transcript = pqc_wire::auth::register_transcript(&conn.challenge(), &me, &ik);
        let signature = identity.sign(&transcript, pqc_wire::auth::REGISTER_CONTEXT, &mut SystemRng)?;
        if let Err(e) = call(&conn, Request::Register { username: me.clone(), identity_key: ik, signature }).await {
            // Closed, not dropped: the server frees the connection at once.
            conn.close().await;
            return Err(e);
        }
        profile.set_meta("username", me.as_str())?;
        profile.set_meta("server", &opts.server)?;
        let mut client = Self::new(profile, conn, opts, me, identity);
        client.pushes = client.conn.take_pushes();
        let set_up = match client.ensure_prekeys(None).await {
            Ok(()) => client.publish_key_packages().await,
            Err(e) => Err(e),
        };
        if let Err(e) = set_up {
            client.close().await;
            return Err(e);
        }
        Ok(client)
    }

    /// Logs in with the profile's identity and tops up prekeys if needed.
    pub async fn login(profile: Profile, opts: &ConnectOptions, notice: &mut dyn FnMut(String)) -> Result<Self> {
        let name = profile.username()?.ok_or(ClientError::NotRegistered)?;
        let me = Username::new(&name)?;
        let identity = profile.identity()?;
        let conn = log_in(&profile, opts, &me, &identity, notice).await?;
        let mut client = Self::new(profile, conn, opts, me, identity);
        if let Err(e) = client.top_up_once().await {
            client.close().await;
            return Err(e);
        }
        if client.outbox_len()? > 0 {
            match client.flush_outbox().await {
                Ok(n) => notice(format!("sent {n} queued message(s)")),
                Err(e) => notice(format!("queued messages are still waiting: {e}")),
            }
        }
        Ok(client)
    }

    /// At login: the prekeys and key packages a profile has never uploaded
    /// (a registration interrupted before it finished).
    async fn top_up_once(&mut self) -> Result<()> {
        if self.profile.meta("signed_prekeys_blob")?.is_none() {
            self.ensure_prekeys(None).await?;
        }
        if self.profile.meta("key_packages_published")?.is_none() {
            self.publish_key_packages().await?;
        }
        Ok(())
    }

    fn new(
        profile: Profile,
        mut conn: Connection,
        opts: &ConnectOptions,
        me: Username,
        identity: IdentityKeyPair,
    ) -> Self {
        let pushes = conn.take_pushes();
        Self {
            profile,
            conn,
            opts: opts.clone(),
            me,
            identity,
            pushes,
            notices: Box::new(log_notice),
            acks: PendingAcks::default(),
            joined_room: false,
        }
    }

    /// Sends the notices of long operations (a lost connection being
    /// re-established, an upload resumed) to `sink` instead of the log.
    pub fn set_notices(&mut self, sink: impl FnMut(String) + Send + 'static) {
        self.notices = Box::new(sink);
    }

    /// Replaces a lost connection with a new one (logged in), trying for up
    /// to [`RECONNECT_WITHIN`] with growing pauses. Pushes come from the new
    /// connection afterwards ([`Self::take_pushes`]). With `lost`, the
    /// notices say what was lost and that it is back; without, the caller
    /// tells the user itself.
    pub(crate) async fn reconnect(&mut self, lost: Option<&ClientError>) -> Result<()> {
        if let Some(lost) = lost {
            (self.notices)(format!("{lost}; reconnecting to {}", self.opts.server));
        }
        let deadline = Instant::now() + RECONNECT_WITHIN;
        let mut pause = Duration::from_millis(200);
        loop {
            let mut quiet = |_| {};
            let attempt = log_in(&self.profile, &self.opts, &self.me, &self.identity, &mut quiet);
            let failed = match tokio::time::timeout(CONNECT_ATTEMPT, attempt).await {
                Ok(Ok(mut conn)) => {
                    self.pushes = conn.take_pushes();
                    self.conn = conn;
                    if lost.is_some() {
                        (self.notices)(format!("reconnected to {}", self.opts.server));
                    }
                    return Ok(());
                }
                Ok(Err(e)) if !is_connection_lost(&e) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => ClientError::Net(pqc_net::NetError::Timeout),
            };
            if Instant::now() + pause >= deadline {
                return Err(ClientError::Usage(format!(
                    "lost the connection to {} and could not reconnect within {} s (last attempt: {failed})",
                    self.opts.server,
                    RECONNECT_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// This user's name.
    pub fn username(&self) -> &str {
        self.me.as_str()
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The connection (negotiated group, fingerprint).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Takes the stream of server pushes (once).
    pub fn take_pushes(&mut self) -> Option<UnboundedReceiver<Push>> {
        self.pushes.take()
    }

    /// Uploads the signed prekeys (first time) and a batch of one-time
    /// prekeys. `remaining` is the server's count when it said we run low.
    pub async fn ensure_prekeys(&mut self, remaining: Option<(u32, u32)>) -> Result<()> {
        let mut rng = SystemRng;
        let signed_blob = match self.profile.meta("signed_prekeys_blob")? {
            Some(hexblob) => hex::decode(hexblob).map_err(|_| ClientError::Malformed("stored prekey blob"))?,
            None => {
                let first = self.profile.allocate_prekey_ids(2)?;
                let (secrets, blob) = generate_signed_prekeys(
                    &self.identity,
                    PreKeyId(first),
                    PreKeyId(first.wrapping_add(1)),
                    &mut rng,
                )?;
                self.profile.put_sealed(ns::SIGNED_PREKEY, &first.to_string(), &secrets.to_bytes())?;
                self.profile.set_meta("signed_prekeys_blob", &hex::encode(&blob))?;
                blob
            }
        };
        let (need_x, need_kem) = match remaining {
            Some((x, k)) => (x < PREKEY_LOW, k < PREKEY_LOW),
            None => (true, true),
        };
        let mut one_time = Vec::new();
        let mut one_time_kem = Vec::new();
        if need_x {
            let first = self.profile.allocate_prekey_ids(PREKEY_BATCH)?;
            let (secrets, blobs) = generate_one_time_prekeys(&self.identity, PreKeyId(first), PREKEY_BATCH, &mut rng)?;
            for (id, s) in secrets {
                self.profile.put_sealed(ns::ONE_TIME, &id.0.to_string(), s.to_bytes().as_ref())?;
            }
            one_time = blobs.into_iter().map(|(id, b)| (pqc_wire::PreKeyId(id.0), b)).collect();
        }
        if need_kem {
            let first = self.profile.allocate_prekey_ids(PREKEY_BATCH)?;
            let (secrets, blobs) =
                generate_one_time_kem_prekeys(&self.identity, PreKeyId(first), PREKEY_BATCH, &mut rng)?;
            for (id, s) in secrets {
                self.profile.put_sealed(ns::ONE_TIME_KEM, &id.0.to_string(), s.as_bytes())?;
            }
            one_time_kem = blobs.into_iter().map(|(id, b)| (pqc_wire::PreKeyId(id.0), b)).collect();
        }
        call(&self.conn, Request::UploadPrekeys { signed_prekeys: signed_blob, one_time, one_time_kem }).await?;
        Ok(())
    }

    /// The identity key of `peer`: the pinned one, else fetched from the server and pinned.
    pub async fn peer_identity(&mut self, peer: &str) -> Result<Vec<u8>> {
        if let Some(k) = self.profile.contact_key(peer)? {
            return Ok(k);
        }
        let username = Username::new(peer)?;
        match call(&self.conn, Request::GetIdentity { username }).await? {
            Response::Identity { identity_key, .. } => {
                IdentityKey::from_bytes(&identity_key)?;
                self.profile.check_contact(peer, &identity_key)?;
                Ok(identity_key)
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// `peer`'s identity and identity-DH key from the server's directory,
    /// its signed prekeys blob verified, its identity key checked against
    /// the pinned one (pinned now if this is the first contact).
    async fn peer_directory(&mut self, peer: &str) -> Result<PeerIdentity> {
        let username = Username::new(peer)?;
        match call(&self.conn, Request::GetIdentity { username }).await? {
            Response::Identity { identity_key, signed_prekeys } => {
                let identity = PeerIdentity::from_parts(&identity_key, &signed_prekeys)?;
                self.profile.check_contact(peer, &identity_key)?;
                Ok(identity)
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Replaces the pinned identity key of `peer` with the one the server has now.
    pub async fn trust_new_key(&mut self, peer: &str) -> Result<()> {
        let username = Username::new(peer)?;
        match call(&self.conn, Request::GetIdentity { username }).await? {
            Response::Identity { identity_key, .. } => {
                IdentityKey::from_bytes(&identity_key)?;
                self.profile.set_contact_key(peer, &identity_key)?;
                self.profile.save_sessions(peer, &[])?;
                Ok(())
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The safety number shared with `peer`.
    pub async fn safety_number(&mut self, peer: &str) -> Result<String> {
        let theirs = self.peer_identity(peer).await?;
        Ok(safety_number(self.me.as_str(), &self.identity.identity_key().to_bytes(), peer, &theirs))
    }

    async fn encrypt_for(&mut self, to: &Username, plaintext: &[u8]) -> Result<Vec<u8>> {
        let peer = to.as_str();
        let mut sessions = self.profile.sessions(peer)?;
        if sessions.is_empty() {
            let bundle = match call(&self.conn, Request::FetchPrekeys { username: to.clone() }).await? {
                Response::PrekeyBundle(b) => b,
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            };
            let bundle = PreKeyBundle::from_parts(
                &bundle.identity_key,
                &bundle.signed_prekeys,
                bundle.one_time.as_ref().map(|(_, b)| b.as_slice()),
                bundle.one_time_kem.as_ref().map(|(_, b)| b.as_slice()),
            )?;
            self.profile.check_contact(peer, &bundle.identity_key().to_bytes())?;
            sessions.push(Session::initiate(&self.identity, &bundle, &mut SystemRng)?);
        }
        let Some(active) = sessions.first_mut() else { return Err(ClientError::Malformed("session list")) };
        let payload = active.encrypt(plaintext, &mut SystemRng)?;
        self.profile.save_sessions(peer, &sessions)?;
        Ok(payload)
    }

    /// Queues `content` for `to` in the profile's outbox (durably) and then
    /// flushes the outbox. If the flush fails, the message stays queued and
    /// the next command (`send`, `recv`, ...) retries it with the same message
    /// id, so the recipient never sees it twice.
    async fn queue_and_flush(&mut self, to: &Username, content: &Content) -> Result<()> {
        self.queue(to, content)?;
        self.flush_queued().await
    }

    /// Flushes the outbox once a message was queued: a failure says whether
    /// the message was dropped ([`ClientError::NotSent`]) or stays queued
    /// ([`ClientError::Queued`]).
    async fn flush_queued(&mut self) -> Result<()> {
        match self.flush_outbox().await {
            Ok(_) => Ok(()),
            Err(e @ ClientError::NotSent { .. }) => Err(e),
            Err(e) => Err(ClientError::Queued(Box::new(e))),
        }
    }

    /// Queues `content` for `to` in the outbox (durably), without sending.
    pub(crate) fn queue(&self, to: &Username, content: &Content) -> Result<()> {
        let seq = self.next_outbox_seq()?;
        let mut rec = Vec::new();
        let to_bytes = to.as_str().as_bytes();
        rec.push(u8::try_from(to_bytes.len()).map_err(|_| ClientError::Malformed("user name"))?);
        rec.extend_from_slice(to_bytes);
        rec.extend_from_slice(&content.encode());
        self.profile.put_sealed(ns::OUTBOX, &format!("{seq:020}"), &rec)
    }

    /// The identity's signing key (binds the MLS signature key of rooms).
    pub(crate) fn identity_signing_key(&self) -> &pqc_crypto::sign::HybridSigningKey {
        self.identity.signing_key()
    }

    fn next_outbox_seq(&self) -> Result<u64> {
        let next = self.profile.meta("next_outbox_seq")?.and_then(|s| s.parse::<u64>().ok()).unwrap_or(1);
        self.profile.set_meta("next_outbox_seq", &next.saturating_add(1).to_string())?;
        Ok(next)
    }

    /// Number of queued, unacknowledged outgoing messages.
    pub fn outbox_len(&self) -> Result<usize> {
        Ok(self.profile.db().list(ns::OUTBOX)?.len())
    }

    /// Sends every queued message, oldest first, up to eight before waiting
    /// for their Acks; stops at the first failure, keeping that message and
    /// the ones not acknowledged queued (one refused for good is dropped and
    /// reported as [`ClientError::NotSent`]). Returns how many were sent.
    pub async fn flush_outbox(&mut self) -> Result<usize> {
        let mut sent = 0;
        let mut queued = self.profile.list_sealed(ns::OUTBOX)?.into_iter().peekable();
        while queued.peek().is_some() {
            // Up to OUTBOX_IN_FLIGHT messages are encrypted in order, then
            // sent without waiting for each Ack: the relay commits them
            // together and answers in order.
            let mut batch = Vec::with_capacity(OUTBOX_IN_FLIGHT);
            let mut stopped = None;
            for (key, rec) in queued.by_ref().take(OUTBOX_IN_FLIGHT) {
                let (to, content) = outbox_record(&rec)?;
                let max_views = Content::decode(content)?.max_views;
                match self.encrypt_for(&to, content).await {
                    Ok(payload) => {
                        let request = Request::Send { to: to.clone(), max_views, payload };
                        batch.push((key, to, request));
                    }
                    Err(e) => {
                        stopped = Some((key, to, e));
                        break;
                    }
                }
            }
            let mut pending = Vec::with_capacity(batch.len());
            for (key, to, request) in batch {
                match self.conn.submit(request).await {
                    Ok(p) => pending.push((key, to, p)),
                    Err(e) => {
                        stopped = Some((key, to, e.into()));
                        break;
                    }
                }
            }
            let mut outcomes = Vec::with_capacity(pending.len() + 1);
            for (key, to, p) in pending {
                let outcome = match p.response().await {
                    Ok(Response::Ack { .. }) => Ok(()),
                    Ok(r @ Response::Error { .. }) => Err(server_error(r)),
                    Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
                    Err(e) => Err(e.into()),
                };
                outcomes.push((key, to, outcome));
            }
            outcomes.extend(stopped.map(|(key, to, e)| (key, to, Err(e))));
            // Every Ack counts, even after a failure in the same batch; the
            // first failure ends the flush (what was not sent stays queued).
            let mut failed = None;
            for (key, to, outcome) in outcomes {
                match outcome {
                    Ok(()) => {
                        self.profile.db().delete(ns::OUTBOX, &key)?;
                        sent += 1;
                    }
                    Err(e) if failed.is_some() => tracing::debug!("queued message not sent yet: {e}"),
                    Err(e) if is_permanent(&e) => {
                        // Retrying cannot help (no such user, a changed
                        // identity key, a refused message): drop it so it does
                        // not hold up the messages queued after it, and say so.
                        self.profile.db().delete(ns::OUTBOX, &key)?;
                        failed = Some(ClientError::NotSent { to: to.as_str().to_string(), source: Box::new(e) });
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(sent)
    }

    /// Sends a text message; returns once the server has it on disk.
    pub async fn send_text(&mut self, to: &str, text: &str, max_views: Option<u32>) -> Result<()> {
        let to_name = Username::new(to)?;
        if to_name == self.me {
            return Err(ClientError::Usage("sending to yourself is not supported".into()));
        }
        if max_views == Some(0) {
            return Err(ClientError::Usage("--max-views must be at least 1".into()));
        }
        if text.is_empty() {
            return Err(ClientError::Usage("the message is empty; nothing was sent".into()));
        }
        let content = Content { id: random_array(&mut SystemRng), max_views, body: Body::Text(text.to_string()) };
        self.record_history(to, &format!("{}: {text}", self.me))?;
        self.queue_and_flush(&to_name, &content).await
    }

    /// Encrypts and uploads a file, then sends its key in an end-to-end
    /// message. `progress(done, total)` is called after each chunk.
    pub async fn send_file(&mut self, to: &str, path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "file".into());
        self.send_file_named(to, path, &name, progress).await
    }

    /// As [`Self::send_file`], announcing the file under `name` (the
    /// recipient sanitises whatever name it is given).
    pub async fn send_file_named(
        &mut self,
        to: &str,
        path: &Path,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let to_name = Username::new(to)?;
        let begin = |total_len| Request::AttachmentBegin { to: to_name.clone(), total_len };
        let file = self.upload_file(&format!("user {to}"), &begin, path, name, progress).await?;
        let (plain_len, attachment) = (file.plain_len, file.attachment);
        let content = Content { id: random_array(&mut SystemRng), max_views: None, body: Body::File(file) };
        self.record_history(to, &format!("{} sent file {name} ({plain_len} bytes)", self.me))?;
        // Queued and no longer pending in one transaction: a crash leaves
        // either a resumable upload or an announcement to send, never both.
        self.profile.atomically(|p| {
            self.queue(&to_name, &content)?;
            p.db().delete(ns::UPLOAD, &attachment.to_string())?;
            Ok(())
        })?;
        self.flush_queued().await
    }

    /// Encrypts the file at `path` in chunks and uploads it; returns the
    /// reference to send end to end. `audience` names the recipients (`user
    /// NAME`, `room ID`): an unfinished upload of the same unchanged file to
    /// them (a crashed or interrupted earlier command) is resumed where the
    /// server's copy ends; otherwise the file gets a fresh key and a new
    /// attachment (`begin(encrypted length)` is the request that creates
    /// it). A connection lost meanwhile is re-established and the upload
    /// resumed. The upload stays recorded in the profile until the caller
    /// announces it ([`ns::UPLOAD`]).
    pub(crate) async fn upload_file(
        &mut self,
        audience: &str,
        begin: &dyn Fn(u64) -> Request,
        path: &Path,
        name: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<FileRef> {
        let (abs, plain_len, modified_ns) = file_identity(path)?;
        let (record, mut received, mut complete) =
            match self.unfinished_upload(audience, &abs, plain_len, modified_ns).await? {
                Some((record, received, complete)) => {
                    let total = cipher_len(plain_len, record.chunk);
                    (self.notices)(format!(
                        "resuming an unfinished upload of this file: {:.1} of {:.1} MiB are on the server",
                        mib(received),
                        mib(total)
                    ));
                    (record, received, complete)
                }
                None => {
                    let chunk = chunk_for(self.conn.info().max_frame);
                    let id = match call(&self.conn, begin(cipher_len(plain_len, chunk))).await? {
                        Response::AttachmentCreated { id } => id,
                        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
                    };
                    let key = Zeroizing::new(random_array(&mut SystemRng));
                    let record = PendingUpload {
                        attachment: id.0,
                        audience: audience.to_string(),
                        path: abs,
                        plain_len,
                        modified_ns,
                        chunk,
                        key,
                    };
                    if let Some(rec) = record.encode() {
                        self.profile.put_sealed(ns::UPLOAD, &id.0.to_string(), &rec)?;
                    }
                    (record, 0, false)
                }
            };
        let id = AttachmentId(record.attachment);
        let total = cipher_len(plain_len, record.chunk);
        progress(received, total);
        let mut reconnects = 0;
        let sha256 = loop {
            let sent = self.upload_from(path, &record, received, progress).await;
            let finished = match sent {
                Ok(sha256) if complete => Ok(sha256),
                Ok(sha256) => call(&self.conn, Request::AttachmentFinish { id }).await.map(|_| sha256),
                Err(e) => Err(e),
            };
            match finished {
                Ok(sha256) => break sha256,
                Err(e) if is_connection_lost(&e) && reconnects < MAX_RECONNECTS => {
                    reconnects += 1;
                    self.reconnect(Some(&e)).await?;
                    (received, complete) = self.upload_status(id).await?;
                    (self.notices)(format!("resuming the upload at {:.1} of {:.1} MiB", mib(received), mib(total)));
                }
                Err(e) => return Err(e),
            }
        };
        let PendingUpload { chunk, key, .. } = record;
        Ok(FileRef { attachment: id.0, cipher_len: total, plain_len, chunk, key, sha256, name: name.to_string() })
    }

    /// The recorded unfinished upload of this file to `audience`, if the
    /// file is unchanged and the server still has the attachment, with the
    /// bytes the server holds and whether it was finished (its announcement
    /// is all that is missing). Records the server no longer knows, or of a
    /// changed file, are dropped.
    async fn unfinished_upload(
        &mut self,
        audience: &str,
        abs: &str,
        plain_len: u64,
        modified_ns: u64,
    ) -> Result<Option<(PendingUpload, u64, bool)>> {
        for (key, rec) in self.profile.list_sealed(ns::UPLOAD)? {
            let Ok(record) = PendingUpload::decode(&rec) else {
                self.profile.db().delete(ns::UPLOAD, &key)?;
                continue;
            };
            if record.audience != audience || record.path != abs {
                continue;
            }
            let unchanged = record.plain_len == plain_len && record.modified_ns == modified_ns;
            let status = if unchanged { Some(self.upload_status(AttachmentId(record.attachment)).await) } else { None };
            match status {
                Some(Ok((received, complete))) => return Ok(Some((record, received, complete))),
                Some(Err(e)) if is_connection_lost(&e) => return Err(e),
                // Gone from the server (expired, another account's id after
                // a server reset): start over.
                Some(Err(_)) => {
                    self.profile.db().delete(ns::UPLOAD, &key)?;
                }
                // Changed since: start over, and the server deletes what it
                // has of the old upload rather than keep it until it expires
                // (a finished one it keeps: it is refused, and left alone).
                None => {
                    let abandoned =
                        call(&self.conn, Request::AttachmentAck { id: AttachmentId(record.attachment) }).await;
                    if let Err(e) = abandoned
                        && is_connection_lost(&e)
                    {
                        return Err(e);
                    }
                    self.profile.db().delete(ns::UPLOAD, &key)?;
                }
            }
        }
        Ok(None)
    }

    /// How many bytes of an attachment the server has, and whether it is finished.
    async fn upload_status(&self, id: AttachmentId) -> Result<(u64, bool)> {
        match call(&self.conn, Request::AttachmentStatus { id }).await? {
            Response::AttachmentStatus { received, complete, .. } => Ok((received, complete)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Uploads `record`'s file from byte `from` of its encryption (what the
    /// server has) to the end; returns the file's SHA-256 (the whole file is
    /// read and hashed, the part on the server already is not sent again).
    async fn upload_from(
        &mut self,
        path: &Path,
        record: &PendingUpload,
        from: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<[u8; 32]> {
        let changed = || ClientError::Usage(format!("{} changed while it was being sent", path.display()));
        let file =
            std::fs::File::open(path).map_err(|e| ClientError::io(format!("cannot open {}", path.display()), e))?;
        let plain_len = file.metadata().map_err(|e| ClientError::io("cannot stat the file", e))?.len();
        if plain_len != record.plain_len {
            return Err(changed());
        }
        let cipher = FileCipher::new(&record.key, plain_len, record.chunk)?;
        let (total, step) = (cipher_len(plain_len, record.chunk), cipher.sealed_chunk_len());
        let id = AttachmentId(record.attachment);
        let first = from / step;
        // Bytes of the first sealed chunk the server has already.
        let mut skip = usize::try_from(from - first * step).map_err(|_| ClientError::Malformed("upload offset"))?;
        // Reading, hashing and sealing run on a blocking thread a few chunks
        // ahead, while this task keeps up to PIPELINE uploads in flight, so
        // the transfer is bound neither by one round trip (and one server
        // store operation) per chunk nor by the file's encryption.
        let (tx, mut sealed) = tokio::sync::mpsc::channel(PIPELINE);
        let sealer = tokio::task::spawn_blocking(move || seal_chunks(file, plain_len, &cipher, first, &tx));
        let mut offset = from;
        let mut inflight = std::collections::VecDeque::new();
        while let Some(mut buf) = sealed.recv().await {
            if skip > 0 {
                buf.drain(..skip.min(buf.len()));
                skip = 0;
                // The server has the whole chunk (the whole file, if finished).
                if buf.is_empty() {
                    continue;
                }
            }
            let len = buf.len() as u64;
            inflight
                .push_back((self.conn.submit(Request::AttachmentChunk { id, offset, data: buf }).await?, offset + len));
            offset += len;
            if inflight.len() >= PIPELINE
                && let Some((pending, done)) = inflight.pop_front()
            {
                expect_ok(pending.response().await?)?;
                progress(done, total);
            }
        }
        let sha256 = sealer.await.map_err(|e| ClientError::Unexpected(format!("file reader: {e}")))??;
        while let Some((pending, done)) = inflight.pop_front() {
            expect_ok(pending.response().await?)?;
            progress(done, total);
        }
        if offset != total.max(from) {
            return Err(changed());
        }
        Ok(sha256)
    }

    fn record_history(&self, conv: &str, line: &str) -> Result<()> {
        let ts = now_ms();
        let sealed = self.profile.seal("history", conv, line.as_bytes())?;
        self.profile.db().add_history(conv, ts, &sealed)?;
        Ok(())
    }

    /// The last `limit` history lines with `peer`, oldest first.
    pub fn history(&self, peer: &str, limit: usize) -> Result<Vec<String>> {
        let rows = self.profile.db().history(peer, limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let pt = self
                .profile
                .open_sealed("history", peer, &r.body)
                .map_err(|_| ClientError::Malformed("history line"))?;
            out.push(String::from_utf8_lossy(&pt).to_string());
        }
        Ok(out)
    }

    /// Drains the mailbox, calling `on_event` for each message; saves files
    /// into `out_dir`. With `wait`, keeps listening for new messages until
    /// none arrived for that long.
    pub async fn receive(
        &mut self,
        out_dir: &Path,
        wait: Option<Duration>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<usize> {
        self.receive_with_rooms(out_dir, wait, on_event, None).await
    }

    /// [`Self::receive`], and with `on_room_line` the rooms too: after the
    /// mailbox, every room is synced and its lines go to `on_room_line`
    /// (through [`Self::rooms_receive`]). With `wait`, messages and room
    /// entries pushed by the relay are handled as they come
    /// ([`Self::handle_push`]) until none arrived for that long. Returns how
    /// many events and room lines were shown.
    pub async fn receive_with_rooms(
        &mut self,
        out_dir: &Path,
        wait: Option<Duration>,
        on_event: &mut dyn FnMut(Event),
        mut on_room_line: Option<&mut dyn FnMut(String)>,
    ) -> Result<usize> {
        let mut count = 0;
        let mut pushes = self.pushes.take();
        let result = async {
            // What to fetch next: the mailbox, the rooms.
            let (mut mailbox, mut rooms) = (true, on_room_line.is_some());
            loop {
                if mailbox {
                    count += self.drain_mailbox(out_dir, on_event).await?;
                }
                if rooms && let Some(on_line) = on_room_line.as_deref_mut() {
                    count += self.rooms_receive(out_dir, on_line).await?;
                }
                let Some(wait) = wait else { return Ok(()) };
                let Some(rx) = pushes.as_mut() else { return Ok(()) };
                let mut deadline = Instant::now() + wait;
                let next = loop {
                    if rx.is_empty() {
                        self.flush_acks_if_due().await?;
                    }
                    let until = self.ack_due().map_or(deadline, |t| t.min(deadline));
                    let p = match tokio::time::timeout_at(until.into(), rx.recv()).await {
                        Ok(Some(p)) => p,
                        Err(_) if Instant::now() < deadline => continue,
                        Err(_) => return self.flush_acks().await,
                        Ok(None) => break None,
                    };
                    let (n, wake) = self.handle_push(p, out_dir, on_event, on_room_line.as_deref_mut()).await?;
                    count += n;
                    match wake {
                        Wake::Mailbox => break Some((true, false)),
                        Wake::Rooms => break Some((false, true)),
                        Wake::Nothing if n > 0 => deadline = Instant::now() + wait,
                        Wake::Nothing => {}
                    }
                };
                (mailbox, rooms) = match next {
                    Some(what) => what,
                    // The connection ended (a server restart, a network
                    // change; or a download reconnected already): go on with
                    // a new one and fetch what arrived meanwhile.
                    None => {
                        if self.pushes.is_none() {
                            let lost = self.conn.close_reason().map_or(pqc_net::NetError::Closed, Into::into);
                            self.reconnect(Some(&lost.into())).await?;
                        }
                        pushes = self.pushes.take();
                        (true, on_room_line.is_some())
                    }
                };
            }
        }
        .await;
        self.pushes = pushes;
        result.map(|()| count)
    }

    /// Handles one push from the relay: an envelope or (with `on_room_line`)
    /// a room entry delivered inline is opened, shown and saved now and
    /// acknowledged later by [`Self::flush_acks`] (call it once no push is
    /// waiting: under load one acknowledgement covers many messages); low
    /// prekeys or key packages are topped up. Returns how many events and
    /// lines were shown and what to fetch.
    pub async fn handle_push<'f>(
        &mut self,
        p: Push,
        out_dir: &Path,
        on_event: &mut dyn FnMut(Event),
        on_room_line: Option<&mut (dyn FnMut(String) + 'f)>,
    ) -> Result<(usize, Wake)> {
        match p {
            Push::Envelope(env) => {
                let mut acks = Vec::new();
                let n = self.take_envelope(env, out_dir, on_event, &mut acks).await;
                self.acks.add_envelopes(acks);
                // Joined a room: its "added you" line shows with a room sync.
                let wake = if std::mem::take(&mut self.joined_room) { Wake::Rooms } else { Wake::Nothing };
                Ok((n?, wake))
            }
            Push::RoomEntry(entry) => match on_room_line {
                Some(on_line) => Ok((self.room_entry_pushed(entry, out_dir, on_line).await?, Wake::Nothing)),
                // Not showing rooms now: the entry waits on the relay.
                None => Ok((0, Wake::Nothing)),
            },
            Push::NewEnvelope { .. } => Ok((0, Wake::Mailbox)),
            Push::RoomMessage { .. } if on_room_line.is_some() => Ok((0, Wake::Rooms)),
            Push::LowPrekeys { remaining, remaining_kem } => {
                self.ensure_prekeys(Some((remaining, remaining_kem))).await?;
                Ok((0, Wake::Nothing))
            }
            Push::LowKeyPackages { .. } => {
                self.publish_key_packages().await?;
                Ok((0, Wake::Nothing))
            }
            _ => Ok((0, Wake::Nothing)),
        }
    }

    /// When the pending acknowledgements must go ([`ACK_DELAY`] after the
    /// oldest envelope's, [`ROOM_ACK_DELAY`] after the oldest room entry's);
    /// `None` if there are none.
    pub fn ack_due(&self) -> Option<Instant> {
        self.acks.due()
    }

    /// [`Self::flush_acks`] if the oldest pending one waited [`ACK_DELAY`]
    /// or many are pending; call it when no push is waiting.
    pub async fn flush_acks_if_due(&mut self) -> Result<()> {
        let due = self.ack_due().is_some_and(|t| t <= Instant::now());
        if due || self.acks.len() >= ACK_BATCH { self.flush_acks().await } else { Ok(()) }
    }

    /// Sends the acknowledgements of what [`Self::handle_push`] handled.
    pub async fn flush_acks(&mut self) -> Result<()> {
        self.acks.since = None;
        self.acks.rooms_since = None;
        let ids = std::mem::take(&mut self.acks.envelopes);
        if !ids.is_empty() {
            call(&self.conn, Request::AckEnvelopes { ids }).await?;
        }
        let rooms = std::mem::take(&mut self.acks.rooms);
        for (room_id, seq) in rooms {
            call(&self.conn, Request::RoomAck { room_id, seq }).await?;
        }
        Ok(())
    }

    /// Fetches, handles and acknowledges envelopes until the server has no
    /// more; returns how many events went to `on_event`.
    async fn drain_mailbox(&mut self, out_dir: &Path, on_event: &mut dyn FnMut(Event)) -> Result<usize> {
        let mut count = 0;
        loop {
            let (envelopes, more) = match call(&self.conn, Request::Fetch).await? {
                Response::Envelopes { envelopes, more } => (envelopes, more),
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            };
            let mut acks = Vec::new();
            for env in envelopes {
                match self.take_envelope(env, out_dir, on_event, &mut acks).await {
                    Ok(n) => count += n,
                    Err(e) => {
                        if !acks.is_empty() {
                            let _ = call(&self.conn, Request::AckEnvelopes { ids: acks }).await;
                        }
                        return Err(e);
                    }
                }
            }
            if !acks.is_empty() {
                call(&self.conn, Request::AckEnvelopes { ids: acks }).await?;
            }
            if !more {
                return Ok(count);
            }
        }
    }

    /// Handles one envelope and adds its id to `acks` if the server may
    /// delete it; returns how many events went to `on_event`. Local or
    /// transport trouble is an error and leaves the envelope on the server
    /// (to retry later); a message that cannot be opened is reported and dropped.
    async fn take_envelope(
        &mut self,
        env: pqc_wire::Envelope,
        out_dir: &Path,
        on_event: &mut dyn FnMut(Event),
        acks: &mut Vec<pqc_wire::EnvelopeId>,
    ) -> Result<usize> {
        let id = env.id;
        match self.handle_envelope(env, out_dir).await {
            Ok(Some(ev)) => {
                on_event(ev);
                acks.push(id);
                Ok(1)
            }
            Ok(None) => {
                acks.push(id);
                Ok(0)
            }
            Err(e @ (ClientError::Store(_) | ClientError::Net(_) | ClientError::Io { .. })) => Err(e),
            Err(e) => {
                on_event(Event::Warning(format!("dropped a message that could not be opened: {e}")));
                acks.push(id);
                Ok(0)
            }
        }
    }

    /// Handles one envelope; `Ok(None)` for one already delivered before.
    async fn handle_envelope(&mut self, env: pqc_wire::Envelope, out_dir: &Path) -> Result<Option<Event>> {
        if self.profile.db().is_seen(env.id.0)? {
            return Ok(None);
        }
        let from = env.from.as_str().to_string();
        let (plaintext, sessions) = self.decrypt_from(&from, &env.payload).await?;
        let content = Content::decode(&plaintext)?;
        let msg_key = format!("{from}/{}", hex::encode(content.id));
        if self.profile.db().get(ns::DELIVERED, &msg_key)?.is_some() {
            // A retried copy of a message already shown: keep the session advanced, show nothing.
            self.profile.atomically(|p| {
                p.save_sessions(&from, &sessions)?;
                Ok(p.db().mark_seen(env.id.0, now_ms())?)
            })?;
            return Ok(None);
        }
        // Commit the advanced sessions, the history line and the "seen" mark together.
        let now = now_ms();
        let event = match &content.body {
            Body::Text(text) => {
                let line = format!("{from}: {text}");
                self.profile.atomically(|p| {
                    p.save_sessions(&from, &sessions)?;
                    match content.max_views {
                        // A limited-view message is kept sealed apart from the
                        // history, with its views left, and deleted when they run out.
                        Some(n) if n > 1 => {
                            let mut rec = (n - 1).to_be_bytes().to_vec();
                            rec.extend_from_slice(&n.to_be_bytes());
                            rec.extend_from_slice(line.as_bytes());
                            p.put_sealed(ns::LIMITED, &format!("{from}/{:020}", env.id.0), &rec)?;
                        }
                        Some(_) => {}
                        None => {
                            let sealed = p.seal("history", &from, line.as_bytes())?;
                            p.db().add_history(&from, now, &sealed)?;
                        }
                    }
                    p.db().put(ns::DELIVERED, &msg_key, &[])?;
                    Ok(p.db().mark_seen(env.id.0, now)?)
                })?;
                Event::Text { from, text: text.clone(), views: content.max_views.map(|n| (1, n)) }
            }
            Body::RoomWelcome(w) => {
                // Joined and saved with the session and the "seen" mark in one
                // transaction; the line "[ROOM] * FROM added you" is shown with the room's lines.
                match self.open_room_welcome(&from, w) {
                    Ok((id, record, member)) => {
                        self.profile.atomically(|p| {
                            p.save_sessions(&from, &sessions)?;
                            p.put_sealed(ns::ROOM_MEMBER, "self", &member)?;
                            p.put_sealed(ns::ROOM, &id.to_hex(), &record)?;
                            p.db().put(ns::DELIVERED, &msg_key, &[])?;
                            Ok(p.db().mark_seen(env.id.0, now)?)
                        })?;
                        self.joined_room = true;
                    }
                    Err(e) => {
                        self.profile.atomically(|p| {
                            p.save_sessions(&from, &sessions)?;
                            p.db().put(ns::DELIVERED, &msg_key, &[])?;
                            Ok(p.db().mark_seen(env.id.0, now)?)
                        })?;
                        return Ok(Some(Event::Warning(format!(
                            "an invitation to a room from {from} was refused: {e}"
                        ))));
                    }
                }
                return Ok(None);
            }
            Body::File(f) => {
                // The file is fetched first; only once it is saved are the
                // session, history and "seen" mark committed together.
                let path = self.download(&from, f, out_dir).await?;
                let line = format!("{from} sent file {} ({} bytes)", path.display(), f.plain_len);
                self.profile.atomically(|p| {
                    p.save_sessions(&from, &sessions)?;
                    let sealed = p.seal("history", &from, line.as_bytes())?;
                    p.db().add_history(&from, now, &sealed)?;
                    p.db().put(ns::DELIVERED, &msg_key, &[])?;
                    Ok(p.db().mark_seen(env.id.0, now)?)
                })?;
                self.ack_attachment(AttachmentId(f.attachment)).await?;
                Event::File { from, path, size: f.plain_len }
            }
        };
        Ok(Some(event))
    }

    /// Decrypts a payload from `from`, trying the active session first, then
    /// older ones, then (for a prekey message) a new responder session.
    /// Returns the plaintext and the updated session list, active first.
    async fn decrypt_from(&mut self, from: &str, payload: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Vec<Session>)> {
        let mut sessions = self.profile.sessions(from)?;
        let mut last_err = None;
        for i in 0..sessions.len() {
            match sessions[i].decrypt(payload) {
                Ok(pt) => {
                    let s = sessions.remove(i);
                    sessions.insert(0, s);
                    return Ok((Zeroizing::new(pt), sessions));
                }
                Err(e) => last_err = Some(e),
            }
        }
        if let WireMessage::PreKey(msg) = WireMessage::decode(payload)? {
            // The message names its initiator by fingerprint only: the
            // identity comes from the directory, checked against the pinned key.
            let initiator = self.peer_directory(from).await?;
            let mut store = ProfilePreKeys { profile: &self.profile };
            let (session, pt) = Session::accept(&self.identity, &mut store, &msg, &initiator)?;
            sessions.insert(0, session);
            sessions.truncate(MAX_SESSIONS_PER_PEER);
            return Ok((Zeroizing::new(pt), sessions));
        }
        Err(last_err.map(ClientError::from).unwrap_or(ClientError::Usage(format!(
            "a message from {from} belongs to no session; ask them to send again"
        ))))
    }

    /// Downloads, decrypts and checks an announced file into `out_dir` (under
    /// its sanitised name); returns where it was saved.
    pub(crate) async fn download(&mut self, from: &str, f: &FileRef, out_dir: &Path) -> Result<PathBuf> {
        let started = Instant::now();
        tokio::fs::create_dir_all(out_dir)
            .await
            .map_err(|e| ClientError::io(format!("cannot create {}", out_dir.display()), e))?;
        let id = AttachmentId(f.attachment);
        let cipher = FileCipher::new(&f.key, f.plain_len, f.chunk)?;
        if cipher_len(f.plain_len, f.chunk) != f.cipher_len {
            return Err(ClientError::Malformed("file announcement (length)"));
        }
        let tmp = out_dir.join(format!(".pqc-download-{}.part", f.attachment));
        let out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| ClientError::io(format!("cannot create {}", tmp.display()), e))?
            .into_std()
            .await;
        let step = cipher.sealed_chunk_len();
        // Opening, hashing and writing run on a blocking thread beside the
        // downloads, which keep up to PIPELINE chunk requests in flight.
        let (tx, rx) = tokio::sync::mpsc::channel(PIPELINE);
        let sender = from.to_string();
        let writer = tokio::task::spawn_blocking(move || open_chunks(out, &cipher, rx, &sender));
        let (mut offset, mut index, mut reconnects) = (0u64, 0u64, 0u32);
        let fetched = loop {
            match self.download_from(id, f, step, &tx, &mut offset, &mut index).await {
                Ok(()) => break Ok(()),
                // Reconnect and go on from the next chunk the writer needs.
                Err(e) if is_connection_lost(&e) && reconnects < MAX_RECONNECTS => {
                    reconnects += 1;
                    if let Err(e) = self.reconnect(Some(&e)).await {
                        break Err(e);
                    }
                    let (at, of) = (mib(offset), mib(f.cipher_len));
                    (self.notices)(format!("resuming the download at {at:.1} of {of:.1} MiB"));
                }
                Err(e) => break Err(e),
            }
        };
        drop(tx);
        let written = writer.await.map_err(|e| ClientError::Unexpected(format!("file writer: {e}")));
        // A failed download ends the writer early (with a short file): report
        // the download's error. A failed writer ends the download early:
        // report the writer's.
        let sha256 = match (fetched, written) {
            (Ok(()), Ok(Ok(sha256))) => sha256,
            (Err(e), _) | (Ok(()), Ok(Err(e)) | Err(e)) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if sha256 != f.sha256 {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ClientError::FileCorrupt(from.to_string()));
        }
        tracing::info!(
            bytes = f.cipher_len,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "file downloaded, decrypted, checked and on disk"
        );
        let path = unique_path(out_dir, &sanitize_file_name(&f.name));
        tokio::fs::rename(&tmp, &path).await.map_err(|e| ClientError::io("cannot save the file", e))?;
        Ok(path)
    }

    /// Downloads the chunks of `f` from chunk `index` (at `offset`) on,
    /// with up to PIPELINE requests in flight, handing each whole sealed
    /// chunk to `tx` and advancing `index` and `offset` past it. Returns
    /// once every chunk is handed over, or the writer stopped taking them.
    async fn download_from(
        &self,
        id: AttachmentId,
        f: &FileRef,
        step: u64,
        tx: &tokio::sync::mpsc::Sender<Vec<u8>>,
        offset: &mut u64,
        index: &mut u64,
    ) -> Result<()> {
        let chunks = chunk_count(f.plain_len, f.chunk);
        let window = u64::try_from(PIPELINE).unwrap_or(1);
        let mut requested = *index;
        let mut inflight = std::collections::VecDeque::new();
        while *offset < f.cipher_len {
            while requested < chunks && requested < *index + window {
                let at = requested * step;
                let max_len = u32::try_from((f.cipher_len - at).min(step)).unwrap_or(u32::MAX);
                inflight.push_back(self.conn.submit(Request::AttachmentGet { id, offset: at, max_len }).await?);
                requested += 1;
            }
            let want = (f.cipher_len - *offset).min(step);
            let mut got = match inflight.pop_front() {
                Some(p) => match p.response().await? {
                    Response::AttachmentData { data, .. } if !data.is_empty() => data,
                    other => return Err(server_error(other)),
                },
                None => Vec::new(),
            };
            while (got.len() as u64) < want {
                let max_len = u32::try_from(want - got.len() as u64).unwrap_or(u32::MAX);
                let at = *offset + got.len() as u64;
                match call(&self.conn, Request::AttachmentGet { id, offset: at, max_len }).await? {
                    Response::AttachmentData { data, .. } if !data.is_empty() => got.extend_from_slice(&data),
                    other => return Err(ClientError::Unexpected(format!("{other:?}"))),
                }
            }
            // A closed channel: the writer failed; its error is the one to report.
            if tx.send(got).await.is_err() {
                return Ok(());
            }
            *offset += want;
            *index += 1;
        }
        Ok(())
    }

    pub(crate) async fn ack_attachment(&mut self, id: AttachmentId) -> Result<()> {
        call(&self.conn, Request::AttachmentAck { id }).await.map(|_| ())
    }

    /// Shows the limited-view messages from `peer` once more, counting a view
    /// each; a message whose last view this was is deleted from the profile.
    pub fn view_limited(&self, peer: &str) -> Result<Vec<(String, u32, u32)>> {
        let mut out = Vec::new();
        for (key, rec) in self.profile.list_sealed(ns::LIMITED)? {
            if !key.starts_with(&format!("{peer}/")) || rec.len() < 8 {
                continue;
            }
            let left = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let max = u32::from_be_bytes([rec[4], rec[5], rec[6], rec[7]]);
            let line = String::from_utf8_lossy(&rec[8..]).to_string();
            let this_view = max.saturating_sub(left).saturating_add(1);
            if left <= 1 {
                self.profile.db().delete(ns::LIMITED, &key)?;
            } else {
                let mut next = (left - 1).to_be_bytes().to_vec();
                next.extend_from_slice(&rec[4..]);
                self.profile.put_sealed(ns::LIMITED, &key, &next)?;
            }
            out.push((line, this_view, max));
        }
        Ok(out)
    }

    /// Closes the connection, then hands back `result`: a command closes
    /// its connection whether it succeeded or was refused, so the server
    /// frees it at once.
    pub async fn close_with<T>(self, result: Result<T>) -> Result<T> {
        self.close().await;
        result
    }

    /// Closes the connection cleanly.
    pub async fn close(mut self) {
        // Whatever is not acknowledged comes again next time (and is skipped).
        let _ = self.flush_acks().await;
        self.conn.close().await;
    }
}

/// A file's absolute path, length and modification time (nanoseconds since
/// the epoch; 0 where the system does not tell), which identify it for
/// resuming an upload.
fn file_identity(path: &Path) -> Result<(String, u64, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| ClientError::io(format!("cannot open {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(ClientError::Usage(format!("{} is not a file", path.display())));
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Ok((abs.to_string_lossy().into_owned(), meta.len(), modified))
}

fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
        _ => (name.to_string(), String::new()),
    };
    (1..).map(|i| dir.join(format!("{stem} ({i}){ext}"))).find(|p| !p.exists()).unwrap_or(first)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The safety number of two users: 12 groups of 5 digits, the same on both
/// sides. Each half is derived from one user's name and identity key
/// (iterated SHA-512), and the halves are ordered so both see the same string.
pub fn safety_number(me: &str, my_key: &[u8], peer: &str, peer_key: &[u8]) -> String {
    fn half(name: &str, key: &[u8]) -> String {
        let mut d = pqc_crypto::kdf::sha512(&[b"pqc-chat/safety-number/v1", key, name.as_bytes()]);
        for _ in 0..1024 {
            d = pqc_crypto::kdf::sha512(&[&d, key]);
        }
        (0..6)
            .map(|i| {
                let c = &d[i * 5..i * 5 + 5];
                let v = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                format!("{:05}", v % 100_000)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
    let (a, b) = (half(me, my_key), half(peer, peer_key));
    if a <= b { format!("{a} {b}") } else { format!("{b} {a}") }
}

/// The fingerprint of an identity key (for display).
pub fn key_fingerprint(key: &[u8]) -> String {
    hex::encode(&sha256(&[key])[..16])
}

struct ProfilePreKeys<'a> {
    profile: &'a Profile,
}

impl PreKeyStore for ProfilePreKeys<'_> {
    fn signed_prekeys(&self, spk_id: PreKeyId) -> Option<SignedPreKeySecrets> {
        let b = self.profile.get_sealed(ns::SIGNED_PREKEY, &spk_id.0.to_string()).ok()??;
        SignedPreKeySecrets::from_bytes(&b).ok()
    }

    fn one_time_prekey(&self, id: PreKeyId) -> Option<pqc_crypto::x25519::X25519Secret> {
        let b = self.profile.get_sealed(ns::ONE_TIME, &id.0.to_string()).ok()??;
        pqc_crypto::x25519::X25519Secret::from_bytes(&b).ok()
    }

    fn one_time_kem_prekey(&self, id: PreKeyId) -> Option<pqc_crypto::ml_kem::MlKemSecretKey> {
        let b = self.profile.get_sealed(ns::ONE_TIME_KEM, &id.0.to_string()).ok()??;
        pqc_crypto::ml_kem::MlKemSecretKey::from_bytes(pqc_proto::prekey::PREKEY_KEM_LEVEL, &b).ok()
    }

    fn remove_one_time_prekey(&mut self, id: PreKeyId) {
        if let Err(e) = self.profile.db().delete(ns::ONE_TIME, &id.0.to_string()) {
            tracing::warn!("could not delete a used one-time prekey: {e}");
        }
    }

    fn remove_one_time_kem_prekey(&mut self, id: PreKeyId) {
        if let Err(e) = self.profile.db().delete(ns::ONE_TIME_KEM, &id.0.to_string()) {
            tracing::warn!("could not delete a used one-time prekey: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_acknowledgements_wait_longer_than_envelope_ones() {
        let mut acks = PendingAcks::default();
        assert_eq!(acks.due(), None);
        let room = pqc_wire::RoomId([1; pqc_wire::ROOM_ID_LEN]);
        let before = Instant::now();
        acks.add_room(room, 7);
        let due = acks.due().unwrap();
        assert!(due >= before + ROOM_ACK_DELAY && due <= Instant::now() + ROOM_ACK_DELAY);
        // An envelope's acknowledgement brings the moment forward; the room's goes with it.
        acks.add_envelopes(vec![pqc_wire::EnvelopeId(3)]);
        assert!(acks.due().unwrap() <= Instant::now() + ACK_DELAY);
        assert_eq!(acks.len(), 2);
    }
}
