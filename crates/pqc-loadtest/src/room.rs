//! The room benchmark: one room of N members on the relay, members joining
//! one by one, then messages to everyone; reports the server's CPU time per
//! join and per message, and relay latencies.
//!
//! The relay never parses MLS: it stores and forwards opaque commits,
//! GroupInfos and application messages and checks only the epoch number.
//! Its cost therefore depends on the sizes, not on the contents, so the
//! simulated members send opaque blobs of the sizes a real OpenMLS X-Wing
//! room produces (measured by `cargo bench -p pqc-rooms --bench rooms`,
//! which prints them) and do not run MLS themselves; the members' MLS cost
//! is measured by that bench. Every request the real client makes is made
//! here in the same order: `RoomGetInfo` + `RoomJoin` to join; a send goes
//! at once, and a sync (`RoomFetch`, and `RoomAck` if it returned entries)
//! follows only when the relay refused it as made on a stale view
//! (`EpochConflict`); an entry pushed inline (`Push::RoomEntry`) right after the last
//! one applied is taken as it is, anything else (a proposal, a gap) syncs;
//! acknowledgements are sent as the client sends them ([`ROOM_ACK_DELAY`]).
//!
//! Phases, each bounded by the run's deadline:
//! 1. setup: every member connects and registers (its own QUIC connection);
//! 2. joins: member 0 creates the room; members 1..N join one at a time by
//!    external commit; after each join, the time until every earlier member
//!    has received and applied the commit is the join's relay latency;
//! 3. messages: [`RoomConfig::senders`] members each send
//!    [`RoomConfig::messages`] messages, one at a time (after
//!    [`RoomConfig::pause`] each: a room where messages are sparse), and every member
//!    receives every message it did not send. Latency is send → fetched.
//!
//! With a server pid, the server's CPU time (user + system, all threads)
//! is read from `/proc` around phases 2 and 3.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pqc_crypto::rng::{Rng, SystemRng};
use pqc_wire::{ErrorCode, Push, ROOM_ACK_DELAY, Request, Response, RoomId, RoomMessage, RoomMessageKind, Username};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::chat::ErrorCounts;
use crate::rss::{cpu_time, spent};
use crate::user::{SimUser, expect_ok, register_many};
use crate::{Latencies, LoadError};

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Server address (loopback).
    pub server: SocketAddr,
    /// Room size at the end of the join phase (≥ 2).
    pub members: usize,
    /// Members that send in the message phase (≤ members).
    pub senders: usize,
    /// Each sender's pause before each message (zero: back to back).
    pub pause: Duration,
    /// Messages each sender sends.
    pub messages: usize,
    /// Bytes of each application message (MLS ciphertext; ≥ 12).
    pub payload: usize,
    /// Bytes of each external commit.
    pub commit_bytes: usize,
    /// Bytes of the sealed GroupInfo kept per epoch.
    pub group_info_bytes: usize,
    /// Registrations in flight during setup.
    pub setup_concurrency: usize,
    /// Server process, for its CPU time.
    pub server_pid: Option<u32>,
}

/// Results of a run.
#[derive(Debug)]
pub struct RoomReport {
    /// Members at the end of the join phase.
    pub members: usize,
    /// Connect + register of every member.
    pub setup: Duration,
    /// Joins made (members − 1).
    pub joins: usize,
    /// Per join: `RoomJoin` sent → every earlier member applied the commit.
    pub join_latency: Latencies,
    /// The last join's latency (into a room of `members − 1`).
    pub last_join: Duration,
    /// Server CPU time over the join phase.
    pub join_cpu: Option<Duration>,
    /// Messages the server acknowledged (durably stored).
    pub sent: u64,
    /// Messages fetched by members (each message counts once per recipient).
    pub deliveries: u64,
    /// Deliveries expected: sent × (members − 1).
    pub expected_deliveries: u64,
    /// Start of the message phase → last delivery.
    pub elapsed: Duration,
    /// Send → fetched latency of every delivery.
    pub latency: Latencies,
    /// Server CPU time over the message phase.
    pub message_cpu: Option<Duration>,
    /// Failures by kind.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// The deadline ended the run before every message arrived.
    pub timed_out: bool,
}

impl RoomReport {
    /// Server CPU per relayed message (to every member), in microseconds.
    pub fn cpu_per_message_us(&self) -> Option<f64> {
        let cpu = self.message_cpu?;
        (self.sent > 0).then(|| cpu.as_secs_f64() * 1e6 / self.sent as f64)
    }

    /// Server CPU per join, in microseconds.
    pub fn cpu_per_join_us(&self) -> Option<f64> {
        let cpu = self.join_cpu?;
        (self.joins > 0).then(|| cpu.as_secs_f64() * 1e6 / self.joins as f64)
    }

    /// Messages relayed per second (to every member).
    pub fn messages_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.sent as f64 / s } else { 0.0 }
    }
}

/// What one member's receive loop has seen.
#[derive(Debug, Default)]
struct Seen {
    deliveries: u64,
    latencies: Latencies,
    last_delivery: Option<Instant>,
    /// Last room entry applied (as the client's room record keeps it).
    applied: u64,
    /// Applied from pushes, not acknowledged yet: (last entry, since when).
    unacked: Option<(u64, Instant)>,
    /// The room's epoch as of the last entry applied (each commit advances it).
    room_epoch: u64,
}

impl Seen {
    /// Applies one entry (skipping one applied already): counts the
    /// application messages of others.
    fn apply(&mut self, i: usize, m: &RoomMessage, me: &Username, shared: &Shared) {
        if m.seq <= self.applied {
            return;
        }
        self.applied = m.seq;
        if m.kind == RoomMessageKind::Commit {
            self.room_epoch += 1;
        }
        if let Some(a) = shared.applied.get(i) {
            a.fetch_max(m.seq, Ordering::Relaxed);
        }
        if m.kind != RoomMessageKind::Application || &m.sender == me {
            return;
        }
        if let Some(t) = crate::chat::sent_at(&m.payload) {
            self.deliveries += 1;
            self.latencies.record(shared.epoch.elapsed().saturating_sub(t));
            self.last_delivery = Some(Instant::now());
            shared.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// State shared by the receive loops and the driver.
struct Shared {
    room: RoomId,
    epoch: Instant,
    errors: ErrorCounts,
    /// Per member: highest sequence number applied.
    applied: Vec<AtomicU64>,
    /// Deliveries so far, all members.
    delivered: AtomicU64,
}

/// One member's receiving state; held across a whole drain, so the
/// receive loop and the sender's sync never fetch the same entries twice.
type SeenLock = tokio::sync::Mutex<Seen>;

/// Runs the benchmark; every phase ends by `deadline`.
pub async fn run(cfg: &RoomConfig, deadline: tokio::time::Instant) -> Result<RoomReport, LoadError> {
    if cfg.members < 2 || cfg.senders == 0 || cfg.senders > cfg.members {
        return Err(LoadError::Usage("need --room ≥ 2 and 1 ≤ --senders ≤ --room".into()));
    }
    if cfg.payload < 12 {
        return Err(LoadError::Usage("--payload must be at least 12 bytes (timestamp and sequence number)".into()));
    }
    let limit = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs();
    let cpu = |pid: Option<u32>| pid.map(cpu_time).transpose();

    // 1. Setup.
    let t_setup = Instant::now();
    let users = tokio::time::timeout_at(deadline, register_many(cfg.server, cfg.members, cfg.setup_concurrency, 0))
        .await
        .map_err(|_| LoadError::TimeLimit(limit))??;
    let setup = t_setup.elapsed();

    let mut id = [0u8; pqc_wire::ROOM_ID_LEN];
    SystemRng.fill_bytes(&mut id);
    let shared = Arc::new(Shared {
        room: RoomId(id),
        epoch: Instant::now(),
        errors: ErrorCounts::default(),
        applied: (0..cfg.members).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let seen: Vec<Arc<SeenLock>> = (0..cfg.members).map(|_| Arc::default()).collect();
    let mut loops = JoinSet::new();
    let mut senders = Vec::with_capacity(cfg.senders);

    // 2. Joins.
    let cpu_join_start = cpu(cfg.server_pid)?;
    let mut join_latency = Latencies::new();
    let mut last_join = Duration::ZERO;
    for (i, mut user) in users.into_iter().enumerate() {
        let t0 = Instant::now();
        let (seq, room_epoch) = if i == 0 {
            let create = Request::RoomCreate {
                room_id: shared.room,
                max_participants: u32::try_from(cfg.members).unwrap_or(u32::MAX),
                group_info: vec![0xA5; cfg.group_info_bytes],
            };
            expect_ok("room create", user.conn.request(create).await?)?;
            (0, 0)
        } else {
            join(&user, &shared.room, cfg).await?
        };
        if let Some(a) = shared.applied.get(i) {
            a.store(seq, Ordering::Relaxed);
        }
        if i > 0 {
            // Every earlier member has the commit (pushed or fetched) and applied it.
            let wait = async {
                while shared.applied.iter().take(i).any(|a| a.load(Ordering::Relaxed) < seq) {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            };
            tokio::time::timeout_at(deadline, wait).await.map_err(|_| LoadError::TimeLimit(limit))?;
            last_join = t0.elapsed();
            join_latency.record(last_join);
        }
        let pushes = std::mem::replace(&mut user.pushes, tokio::sync::mpsc::unbounded_channel().1);
        let user = Arc::new(user);
        let seen = seen.get(i).cloned().unwrap_or_default();
        seen.lock().await.room_epoch = room_epoch;
        if i < cfg.senders {
            senders.push((i, user.clone(), seen.clone()));
        }
        loops.spawn(receive_loop(i, user, pushes, shared.clone(), stop_rx.clone(), seen));
    }
    let join_cpu = spent(cpu_join_start, cpu(cfg.server_pid)?);

    // 3. Messages.
    let expected = (cfg.senders * cfg.messages * (cfg.members - 1)) as u64;
    let cpu_msg_start = cpu(cfg.server_pid)?;
    let t_msgs = Instant::now();
    let mut sending = JoinSet::new();
    for (i, user, seen) in senders {
        let (shared, cfg) = (shared.clone(), cfg.clone());
        sending.spawn(async move { send_all(i, &user, &shared, &seen, &cfg).await });
    }
    let mut sent = 0u64;
    let all_sent = async {
        while let Some(r) = sending.join_next().await {
            sent += r.unwrap_or(0);
        }
    };
    let timed_out_sending = tokio::time::timeout_at(deadline, all_sent).await.is_err();
    let all_delivered = async {
        while shared.delivered.load(Ordering::Relaxed) < expected {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let timed_out = tokio::time::timeout_at(deadline, all_delivered).await.is_err() || timed_out_sending;
    // Members send the acknowledgements they still hold (a client sends
    // them within ROOM_ACK_DELAY, or when it stops), counted in the phase.
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    let message_cpu = spent(cpu_msg_start, cpu(cfg.server_pid)?);

    let mut latency = Latencies::new();
    let mut deliveries = 0;
    let mut last = t_msgs;
    for s in seen {
        let s = std::mem::take(&mut *s.lock().await);
        deliveries += s.deliveries;
        latency.merge(s.latencies);
        if let Some(t) = s.last_delivery {
            last = last.max(t);
        }
    }
    Ok(RoomReport {
        members: cfg.members,
        setup,
        joins: cfg.members - 1,
        join_latency,
        last_join,
        join_cpu,
        sent,
        deliveries,
        expected_deliveries: expected,
        elapsed: last.saturating_duration_since(t_msgs),
        latency,
        message_cpu,
        errors: shared.errors.snapshot(),
        timed_out,
    })
}

/// External join as the client does it: current epoch, then the commit.
/// Returns the commit's sequence number and the epoch it starts.
async fn join(user: &SimUser, room: &RoomId, cfg: &RoomConfig) -> Result<(u64, u64), LoadError> {
    loop {
        let epoch = match expect_ok("room info", user.conn.request(Request::RoomGetInfo { room_id: *room }).await?)? {
            Response::RoomInfo { epoch, .. } => epoch,
            _ => return Err(LoadError::Unexpected("room info")),
        };
        let req = Request::RoomJoin {
            room_id: *room,
            epoch,
            commit: vec![0x5A; cfg.commit_bytes],
            group_info: vec![0xA5; cfg.group_info_bytes],
        };
        match user.conn.request(req).await? {
            Response::RoomSent { seq } => return Ok((seq, epoch + 1)),
            // Someone committed in between: rebuild on the new epoch.
            Response::Error { code: ErrorCode::EpochConflict, .. } => continue,
            other => {
                expect_ok("room join", other)?;
                return Err(LoadError::Unexpected("room join"));
            }
        }
    }
}

/// Fetches the room until drained, acknowledging each batch, and records
/// the application messages of others.
async fn drain(i: usize, user: &SimUser, shared: &Shared, seen: &SeenLock) -> Result<(), LoadError> {
    let mut s = seen.lock().await;
    // As the client: what was applied from pushes is acknowledged first.
    if let Some((seq, _)) = s.unacked.take() {
        ack(user, shared, seq).await?;
    }
    loop {
        let req = Request::RoomFetch { room_id: Some(shared.room) };
        let (messages, more) = match expect_ok("room fetch", user.conn.request(req).await?)? {
            Response::RoomMessages { messages, more } => (messages, more),
            _ => return Err(LoadError::Unexpected("room fetch")),
        };
        let Some(last) = messages.last().map(|m| m.seq) else { return Ok(()) };
        for m in &messages {
            s.apply(i, m, &user.name, shared);
        }
        ack(user, shared, last).await?;
        if !more {
            return Ok(());
        }
    }
}

async fn ack(user: &SimUser, shared: &Shared, seq: u64) -> Result<(), LoadError> {
    let ack = Request::RoomAck { room_id: shared.room, seq };
    match expect_ok("room ack", user.conn.request(ack).await?)? {
        Response::Deleted { .. } => Ok(()),
        _ => Err(LoadError::Unexpected("room ack")),
    }
}

/// Sends the acknowledgement a member holds back, if any (under its lock,
/// so a sync running meanwhile does not send it too).
async fn ack_held(user: &SimUser, shared: &Shared, seen: &SeenLock) {
    let mut s = seen.lock().await;
    if let Some((seq, _)) = s.unacked.take()
        && let Err(e) = ack(user, shared, seq).await
    {
        shared.errors.add(format!("receive: {e}"));
    }
}

/// One member's receiving side, as the client does it: the next entry
/// pushed inline is applied at once, anything else syncs; the
/// acknowledgement goes once the oldest unacknowledged entry waited
/// [`ROOM_ACK_DELAY`] (or before the next sync).
async fn receive_loop(
    i: usize,
    user: Arc<SimUser>,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<Push>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    seen: Arc<SeenLock>,
) {
    loop {
        let unacked = seen.lock().await.unacked;
        let due = unacked.map(|(_, t)| t + ROOM_ACK_DELAY);
        if due.is_some_and(|t| t <= Instant::now()) {
            ack_held(&user, &shared, &seen).await;
            continue;
        }
        let timer = async {
            match unacked {
                Some((_, t)) => tokio::time::sleep_until((t + ROOM_ACK_DELAY).into()).await,
                None => std::future::pending().await,
            }
        };
        let entry = tokio::select! {
            () = timer => continue,
            p = pushes.recv() => match p {
                Some(Push::RoomEntry(m)) => Some(m),
                Some(Push::RoomMessage { .. }) => None,
                Some(_) => continue,
                None => {
                    shared.errors.add("connection closed");
                    return;
                }
            },
            _ = stop.changed() => {
                ack_held(&user, &shared, &seen).await;
                return;
            }
        };
        let mut s = seen.lock().await;
        match entry {
            Some(m) if m.seq <= s.applied => {}
            Some(m) if m.kind != RoomMessageKind::Proposal && m.seq == s.applied + 1 => {
                s.apply(i, &m, &user.name, &shared);
                s.unacked = Some((m.seq, s.unacked.map_or_else(Instant::now, |(_, t)| t)));
            }
            _ => {
                drop(s);
                if let Err(e) = drain(i, &user, &shared, &seen).await {
                    shared.errors.add(format!("receive: {e}"));
                }
            }
        }
    }
}

/// One sender: send, wait for the server's ack (sync and send again when
/// it was refused as stale); `messages` times.
async fn send_all(i: usize, user: &SimUser, shared: &Shared, seen: &SeenLock, cfg: &RoomConfig) -> u64 {
    let mut sent = 0;
    for seq in 0..cfg.messages {
        if !cfg.pause.is_zero() {
            tokio::time::sleep(cfg.pause).await;
        }
        for attempt in 0..5 {
            if attempt > 0
                && let Err(e) = drain(i, user, shared, seen).await
            {
                shared.errors.add(format!("sync: {e}"));
            }
            let payload =
                crate::chat::plaintext(shared.epoch.elapsed(), u32::try_from(seq).unwrap_or(u32::MAX), cfg.payload);
            let req = Request::RoomSend {
                room_id: shared.room,
                epoch: seen.lock().await.room_epoch,
                kind: RoomMessageKind::Application,
                payload,
                new_group_info: None,
            };
            match user.conn.request(req).await {
                Ok(Response::RoomSent { seq }) => {
                    sent += 1;
                    // As the client: our own entry is not pushed back to us; it
                    // counts as applied when it follows the last one applied.
                    let mut s = seen.lock().await;
                    if seq == s.applied + 1 {
                        s.applied = seq;
                    }
                }
                // Made on a stale view: sync, then make it again.
                Ok(Response::Error { code: ErrorCode::EpochConflict, .. }) => continue,
                Ok(other) => shared.errors.add(format!("room send: {other:?}")),
                Err(e) => shared.errors.add(format!("room send: {e}")),
            }
            break;
        }
    }
    sent
}
