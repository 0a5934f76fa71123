//! The message benchmark: N users in pairs, a real E2E handshake per pair,
//! then M messages each way while receiving.
//!
//! Phases, each bounded by the run's deadline:
//! 1. setup: every user connects (its own QUIC connection), registers a
//!    fresh hybrid identity and uploads prekeys (at most
//!    [`ChatConfig::setup_concurrency`] at a time);
//! 2. handshake: user `2k` fetches the bundle of `2k+1`, starts a session
//!    (`Session::initiate`) and sends a prekey message; `2k+1` accepts it
//!    (`Session::accept`, after looking `2k` up in the directory) and
//!    answers; `2k` decrypts the answer;
//! 3. messages: every user sends [`ChatConfig::messages`] messages to its
//!    partner (at most [`ChatConfig::window`] unacknowledged) and, at the same
//!    time, receives as the client does: each envelope pushed inline
//!    (`Push::Envelope`) is decrypted at once, and one `AckEnvelopes` covers
//!    all of them once no push is waiting (a `NewEnvelope` announcement, or
//!    250 ms without a push, fetches instead). Each plaintext carries its
//!    send time (taken before encryption); latency is measured when the
//!    receiver has decrypted it.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pqc_crypto::rng::SystemRng;
use pqc_proto::{PeerIdentity, PreKeyBundle, Session, WireMessage};
use pqc_wire::{ACK_DELAY, Envelope, ErrorCode, Push, Request, Response, Username};
use tokio::task::JoinSet;

use crate::user::{SimUser, expect_ok, register_many};
use crate::{Latencies, LoadError};

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Server address (loopback).
    pub server: SocketAddr,
    /// Number of simulated users (even).
    pub clients: usize,
    /// Messages each user sends to its partner.
    pub messages: usize,
    /// Plaintext size of each message in bytes (at least 12: timestamp and sequence number).
    pub payload: usize,
    /// Unacknowledged sends allowed per user.
    pub window: usize,
    /// Registrations in flight during setup.
    pub setup_concurrency: usize,
    /// Server process, for its CPU time over the message phase.
    pub server_pid: Option<u32>,
    /// Send the payloads as they are, without end-to-end encryption.
    pub opaque: bool,
}

/// Counted failures, by kind.
#[derive(Debug, Default)]
pub struct ErrorCounts(Mutex<BTreeMap<String, u64>>);

impl ErrorCounts {
    /// Counts one failure of `kind`.
    pub fn add(&self, kind: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner).entry(kind.into()).or_default() += 1;
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Results of a run.
#[derive(Debug)]
pub struct ChatReport {
    /// Users.
    pub clients: usize,
    /// Messages each user was to send.
    pub messages_per_client: usize,
    /// Time to connect, register and upload prekeys for all users.
    pub setup: Duration,
    /// Per pair: bundle fetch → initiator decrypted the responder's answer.
    pub handshakes: Latencies,
    /// Sends acknowledged by the server (durably queued).
    pub acked: u64,
    /// Messages decrypted by their recipient.
    pub delivered: u64,
    /// Start of the message phase → last message decrypted.
    pub elapsed: Duration,
    /// Send → decrypted latency of every delivered message.
    pub latency: Latencies,
    /// Failures by kind (rate-limited sends are retried and also counted).
    pub errors: BTreeMap<String, u64>,
    /// The deadline ended the message phase before every message arrived.
    pub timed_out: bool,
    /// Server CPU time (user + system, all threads) over the message phase.
    pub message_cpu: Option<Duration>,
    /// The load generator's own CPU time over the message phase: on one
    /// machine it shares the cores with the server.
    pub generator_cpu: Option<Duration>,
}

impl ChatReport {
    /// Delivered messages per second over the message phase.
    pub fn throughput(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.delivered as f64 / s } else { 0.0 }
    }

    /// Server CPU per relayed message (stored, pushed, acknowledged), in microseconds.
    pub fn cpu_per_message_us(&self) -> Option<f64> {
        self.per_message_us(self.message_cpu)
    }

    /// The load generator's CPU per relayed message (both clients' side), in microseconds.
    pub fn generator_cpu_per_message_us(&self) -> Option<f64> {
        self.per_message_us(self.generator_cpu)
    }

    fn per_message_us(&self, cpu: Option<Duration>) -> Option<f64> {
        let cpu = cpu?;
        (self.delivered > 0).then(|| cpu.as_secs_f64() * 1e6 / self.delivered as f64)
    }
}

#[derive(Debug, Default)]
struct PeerResult {
    acked: u64,
    delivered: u64,
    latencies: Latencies,
    last_delivery: Option<Instant>,
}

struct Peer {
    user: SimUser,
    partner: Username,
    session: Session,
}

/// Runs the benchmark; every phase ends by `deadline`.
pub async fn run(cfg: &ChatConfig, deadline: tokio::time::Instant) -> Result<ChatReport, LoadError> {
    if cfg.clients < 2 || !cfg.clients.is_multiple_of(2) {
        return Err(LoadError::Usage("--clients must be an even number ≥ 2 (users talk in pairs)".into()));
    }
    if cfg.payload < 12 {
        return Err(LoadError::Usage("--payload must be at least 12 bytes (timestamp and sequence number)".into()));
    }
    let limit = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs();
    let errors = Arc::new(ErrorCounts::default());

    // 1. Setup.
    let t_setup = Instant::now();
    let users = tokio::time::timeout_at(deadline, register_many(cfg.server, cfg.clients, cfg.setup_concurrency, 1))
        .await
        .map_err(|_| LoadError::TimeLimit(limit))??;
    let setup = t_setup.elapsed();

    // 2. Handshakes, all pairs at once.
    let mut hs = JoinSet::new();
    let mut it = users.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        hs.spawn(handshake(a, b, deadline));
    }
    let mut handshakes = Latencies::new();
    let mut peers = Vec::with_capacity(cfg.clients);
    let joined = tokio::time::timeout_at(deadline, async {
        while let Some(r) = hs.join_next().await {
            match r {
                Ok(Ok((a, b, took))) => {
                    handshakes.record(took);
                    peers.push(a);
                    peers.push(b);
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(LoadError::Usage(format!("handshake task failed: {e}"))),
            }
        }
        Ok(())
    })
    .await;
    match joined {
        Ok(r) => r?,
        Err(_) => return Err(LoadError::TimeLimit(limit)),
    }

    // 3. Messages.
    let cpu = |pid: Option<u32>| pid.map(crate::rss::cpu_time).transpose();
    let own = || crate::rss::cpu_time(std::process::id()).ok();
    let cpu_start = cpu(cfg.server_pid)?;
    let own_start = own();
    let epoch = Instant::now();
    let mut tasks = JoinSet::new();
    let mut results = Vec::with_capacity(peers.len());
    for peer in peers {
        let result = Arc::new(Mutex::new(PeerResult::default()));
        results.push(result.clone());
        let (cfg, errors) = (cfg.clone(), errors.clone());
        tasks.spawn(async move {
            let finished =
                tokio::time::timeout_at(deadline, converse(peer, &cfg, epoch, deadline, &result, &errors)).await;
            finished.is_err()
        });
    }
    let mut timed_out = false;
    while let Some(r) = tasks.join_next().await {
        timed_out |= r.unwrap_or(true);
    }
    let message_cpu = crate::rss::spent(cpu_start, cpu(cfg.server_pid)?);
    let generator_cpu = crate::rss::spent(own_start, own());
    let mut report = ChatReport {
        clients: cfg.clients,
        messages_per_client: cfg.messages,
        setup,
        handshakes,
        acked: 0,
        delivered: 0,
        elapsed: Duration::ZERO,
        latency: Latencies::new(),
        errors: BTreeMap::new(),
        timed_out,
        message_cpu,
        generator_cpu,
    };
    let mut last = epoch;
    for r in results {
        let r = std::mem::take(&mut *r.lock().unwrap_or_else(PoisonError::into_inner));
        report.acked += r.acked;
        report.delivered += r.delivered;
        report.latency.merge(r.latencies);
        if let Some(t) = r.last_delivery {
            last = last.max(t);
        }
    }
    report.elapsed = last.duration_since(epoch);
    report.errors = errors.snapshot();
    Ok(report)
}

/// Fetches until at least one envelope is there (push-driven, 250 ms poll as a safety net).
async fn fetch_some(user: &mut SimUser, deadline: tokio::time::Instant) -> Result<(Vec<Envelope>, bool), LoadError> {
    loop {
        match user.conn.request(Request::Fetch).await? {
            Response::Envelopes { envelopes, more } if !envelopes.is_empty() => return Ok((envelopes, more)),
            Response::Envelopes { .. } => {}
            other => {
                expect_ok("fetch", other)?;
                return Err(LoadError::Unexpected("fetch"));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LoadError::TimeLimit(0));
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), user.pushes.recv()).await;
    }
}

async fn send(user: &SimUser, to: &Username, payload: Vec<u8>) -> Result<(), LoadError> {
    match expect_ok("send", user.conn.request(Request::Send { to: to.clone(), max_views: None, payload }).await?)? {
        Response::Ack { .. } => Ok(()),
        _ => Err(LoadError::Unexpected("send")),
    }
}

/// Submits one `Send` of `payload` to `to` without waiting for its answer.
async fn submit_send<'c>(
    conn: &'c pqc_net::Connection,
    to: &Username,
    payload: &[u8],
) -> Result<pqc_net::PendingResponse<'c>, pqc_net::NetError> {
    conn.submit(Request::Send { to: to.clone(), max_views: None, payload: payload.to_vec() }).await
}

async fn ack(user: &SimUser, ids: Vec<pqc_wire::EnvelopeId>) -> Result<(), LoadError> {
    match expect_ok("ack", user.conn.request(Request::AckEnvelopes { ids }).await?)? {
        Response::Deleted { .. } => Ok(()),
        _ => Err(LoadError::Unexpected("ack")),
    }
}

/// One pair's handshake: `a` initiates, `b` accepts and answers.
async fn handshake(
    mut a: SimUser,
    mut b: SimUser,
    deadline: tokio::time::Instant,
) -> Result<(Peer, Peer, Duration), LoadError> {
    let mut rng = SystemRng;
    let t0 = Instant::now();
    let bundle =
        match expect_ok("prekey fetch", a.conn.request(Request::FetchPrekeys { username: b.name.clone() }).await?)? {
            Response::PrekeyBundle(bb) => PreKeyBundle::from_parts(
                &bb.identity_key,
                &bb.signed_prekeys,
                bb.one_time.as_ref().map(|(_, v)| v.as_slice()),
                bb.one_time_kem.as_ref().map(|(_, v)| v.as_slice()),
            )?,
            _ => return Err(LoadError::Unexpected("prekey fetch")),
        };
    let mut sa = Session::initiate(&a.identity, &bundle, &mut rng)?;
    send(&a, &b.name, sa.encrypt(b"hello", &mut rng)?).await?;

    let (envs, _) = fetch_some(&mut b, deadline).await?;
    let first = envs.first().ok_or(LoadError::Unexpected("fetch"))?;
    let WireMessage::PreKey(msg) = WireMessage::decode(&first.payload)? else {
        return Err(LoadError::Unexpected("first message is not a prekey message"));
    };
    // The prekey message names its initiator by fingerprint: b looks a up in
    // the directory, as the client does.
    let initiator = match expect_ok(
        "directory lookup",
        b.conn.request(Request::GetIdentity { username: a.name.clone() }).await?,
    )? {
        Response::Identity { identity_key, signed_prekeys } => {
            PeerIdentity::from_parts(&identity_key, &signed_prekeys)?
        }
        _ => return Err(LoadError::Unexpected("directory lookup")),
    };
    let (mut sb, pt) = Session::accept(&b.identity, &mut b.prekeys, &msg, &initiator)?;
    if pt != b"hello" || sb.remote_identity().to_bytes() != a.identity.identity_key().to_bytes() {
        return Err(LoadError::Unexpected("handshake message content or identity"));
    }
    ack(&b, envs.iter().map(|e| e.id).collect()).await?;
    send(&b, &a.name, sb.encrypt(b"hello back", &mut rng)?).await?;

    let (envs, _) = fetch_some(&mut a, deadline).await?;
    let first = envs.first().ok_or(LoadError::Unexpected("fetch"))?;
    if sa.decrypt(&first.payload)? != b"hello back" {
        return Err(LoadError::Unexpected("handshake answer content"));
    }
    ack(&a, envs.iter().map(|e| e.id).collect()).await?;
    let took = t0.elapsed();
    // Drop the pushes of the handshake so the message phase starts clean.
    while a.pushes.try_recv().is_ok() {}
    while b.pushes.try_recv().is_ok() {}
    let (an, bn) = (a.name.clone(), b.name.clone());
    Ok((Peer { user: a, partner: bn, session: sa }, Peer { user: b, partner: an, session: sb }, took))
}

/// `t_ns u64 LE || seq u32 LE || zero padding` up to `len` bytes.
pub(crate) fn plaintext(t: Duration, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&u64::try_from(t.as_nanos()).unwrap_or(u64::MAX).to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.resize(len.max(12), 0);
    p
}

pub(crate) fn sent_at(pt: &[u8]) -> Option<Duration> {
    let b: [u8; 8] = pt.get(..8)?.try_into().ok()?;
    Some(Duration::from_nanos(u64::from_le_bytes(b)))
}

/// Acknowledges `ids` (retrying when rate-limited); false if the connection failed.
async fn ack_all(conn: &pqc_net::Connection, ids: Vec<pqc_wire::EnvelopeId>, errors: &ErrorCounts) -> bool {
    while !ids.is_empty() {
        match conn.request(Request::AckEnvelopes { ids: ids.clone() }).await {
            Ok(Response::Deleted { .. }) => return true,
            Ok(Response::Error { code: ErrorCode::RateLimited, .. }) => {
                errors.add("ack rate-limited (retried)");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(other) => {
                errors.add(format!("ack: {other:?}"));
                return true;
            }
            Err(e) => {
                errors.add(format!("ack: {e}"));
                return false;
            }
        }
    }
    true
}

/// Sends and receives for one user until its messages are out and its
/// partner's are in.
async fn converse(
    peer: Peer,
    cfg: &ChatConfig,
    epoch: Instant,
    deadline: tokio::time::Instant,
    result: &Mutex<PeerResult>,
    errors: &Arc<ErrorCounts>,
) {
    let Peer { user, partner, session } = peer;
    let SimUser { conn, mut pushes, .. } = user;
    let session = Arc::new(Mutex::new(session));
    let retry = Duration::from_millis(5);

    // As a client pipelines (`Connection::submit`): up to `window` sends in
    // flight on the connection, answered in order; no task per message.
    let sender = async {
        let window = cfg.window.max(1);
        let mut inflight = VecDeque::with_capacity(window);
        let mut seq = 0usize;
        let mut acked = 0u64;
        'send: loop {
            while inflight.len() < window && seq < cfg.messages {
                let pt = plaintext(epoch.elapsed(), u32::try_from(seq).unwrap_or(u32::MAX), cfg.payload);
                seq += 1;
                let sealed = if cfg.opaque {
                    Ok(pt)
                } else {
                    session.lock().unwrap_or_else(PoisonError::into_inner).encrypt(&pt, &mut SystemRng)
                };
                match sealed {
                    Ok(ct) => match submit_send(&conn, &partner, &ct).await {
                        Ok(pending) => inflight.push_back((ct, pending)),
                        Err(e) => {
                            errors.add(format!("send: {e}"));
                            break 'send;
                        }
                    },
                    Err(e) => errors.add(format!("encrypt: {e}")),
                }
            }
            let Some((ct, pending)) = inflight.pop_front() else { break };
            match pending.response().await {
                Ok(Response::Ack { .. }) => acked += 1,
                Ok(Response::Error { code: ErrorCode::RateLimited, .. }) => {
                    errors.add("send rate-limited (retried)");
                    tokio::time::sleep(retry).await;
                    match submit_send(&conn, &partner, &ct).await {
                        Ok(again) => inflight.push_front((ct, again)),
                        Err(e) => {
                            errors.add(format!("send: {e}"));
                            break;
                        }
                    }
                }
                Ok(Response::Error { code, .. }) => errors.add(format!("send refused: {code}")),
                Ok(_) => errors.add("send: unexpected response"),
                Err(e) => {
                    errors.add(format!("send: {e}"));
                    break;
                }
            }
        }
        result.lock().unwrap_or_else(PoisonError::into_inner).acked += acked;
    };

    let receiver = async {
        let mut got = 0usize;
        let mut unacked = Vec::new();
        // When the oldest unacknowledged envelope arrived.
        let mut since: Option<Instant> = None;
        let open = |env: &Envelope, got: &mut usize| {
            let pt = if cfg.opaque {
                Ok(env.payload.clone())
            } else {
                session.lock().unwrap_or_else(PoisonError::into_inner).decrypt(&env.payload)
            };
            match pt.ok().as_deref().and_then(sent_at) {
                Some(t) => {
                    let latency = epoch.elapsed().saturating_sub(t);
                    let mut r = result.lock().unwrap_or_else(PoisonError::into_inner);
                    r.delivered += 1;
                    r.latencies.record(latency);
                    r.last_delivery = Some(Instant::now());
                    *got += 1;
                }
                None => errors.add("decrypt failed"),
            }
        };
        // One timer for the loop, moved only when its target changes (an
        // acknowledgement falls due, or the 250 ms fetch fallback restarts),
        // not one per push.
        let poll = Duration::from_millis(250);
        let mut idle_at = tokio::time::Instant::now() + poll;
        let timer = tokio::time::sleep_until(idle_at);
        tokio::pin!(timer);
        while got < cfg.messages && tokio::time::Instant::now() < deadline {
            let due = since.map(|t| t + ACK_DELAY);
            if pushes.is_empty() && due.is_some_and(|t| t <= Instant::now()) {
                since = None;
                idle_at = tokio::time::Instant::now() + poll;
                if !ack_all(&conn, std::mem::take(&mut unacked), errors).await {
                    return;
                }
            }
            let target = since.map_or(idle_at, |t| tokio::time::Instant::from_std(t + ACK_DELAY));
            if timer.deadline() != target {
                timer.as_mut().reset(target);
            }
            let next = tokio::select! {
                biased;
                p = pushes.recv() => Some(p),
                () = &mut timer => None,
            };
            match next {
                Some(None) => {
                    errors.add("connection closed");
                    return;
                }
                Some(Some(Push::Envelope(env))) => {
                    open(&env, &mut got);
                    unacked.push(env.id);
                    since.get_or_insert_with(Instant::now);
                    continue;
                }
                // The acknowledgement is due.
                None if since.is_some() => continue,
                Some(Some(Push::NewEnvelope { .. })) | None => {}
                Some(Some(_)) => continue,
            }
            idle_at = tokio::time::Instant::now() + poll;
            loop {
                let (envelopes, more) = match conn.request(Request::Fetch).await {
                    Ok(Response::Envelopes { envelopes, more }) => (envelopes, more),
                    Ok(Response::Error { code: ErrorCode::RateLimited, .. }) => {
                        errors.add("fetch rate-limited (retried)");
                        tokio::time::sleep(retry).await;
                        continue;
                    }
                    Ok(other) => {
                        errors.add(format!("fetch: {other:?}"));
                        break;
                    }
                    Err(e) => {
                        errors.add(format!("fetch: {e}"));
                        return;
                    }
                };
                let mut ids = Vec::with_capacity(envelopes.len());
                for env in envelopes {
                    // One pushed inline and not acknowledged yet comes again: skip it.
                    if !unacked.contains(&env.id) {
                        open(&env, &mut got);
                    }
                    ids.push(env.id);
                }
                unacked.retain(|id| !ids.contains(id));
                if unacked.is_empty() {
                    since = None;
                }
                if !ack_all(&conn, ids, errors).await {
                    return;
                }
                if !more {
                    break;
                }
            }
        }
        if !unacked.is_empty() {
            ack_all(&conn, unacked, errors).await;
        }
    };
    tokio::join!(sender, receiver);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_carries_time() {
        let p = plaintext(Duration::from_nanos(123_456_789), 7, 256);
        assert_eq!(p.len(), 256);
        assert_eq!(sent_at(&p), Some(Duration::from_nanos(123_456_789)));
        assert_eq!(sent_at(&[1, 2]), None);
    }
}
