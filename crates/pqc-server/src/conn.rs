//! One task per connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pqc_crypto::rng::{Rng, SystemRng};
use pqc_crypto::sign::{HybridSignature, HybridVerifyingKey};
use pqc_net::{FrameReader, NetError, ServerTls, write_encoded};
use pqc_store::StoreError;
use pqc_store::server::{AttachmentMeta, Audience, ServerStore, SqliteServerStore};
use pqc_wire::{
    AttachmentId, CHALLENGE_LEN, ClientFrame, Envelope, ErrorCode, LOGIN_CONTEXT, PROTOCOL_VERSION, Push,
    REGISTER_CONTEXT, Request, RequestId, Response, RoomId, RoomMessage, RoomMessageKind, ServerFrame, Username,
    WireError, login_transcript, register_transcript,
};
use tokio::sync::watch;

use crate::metrics::inc;
use crate::push::{PushRx, PushTx, push_queue};
use crate::quota::{Bucket, PendingLogin};
use crate::server::{FanOut, Shared};

/// QUIC application close codes.
const CLOSE_OK: u32 = 0;
const CLOSE_PROTOCOL: u32 = 1;
const CLOSE_TOO_LARGE: u32 = 2;
/// Closed by a defence: login timeout, slow frame, too many failed logins.
const CLOSE_POLICY: u32 = 3;

/// Queued pushes are written together up to about this many bytes.
const PUSH_COALESCE_BYTES: usize = 64 * 1024;

/// Most requests of one connection (envelopes sent, file chunks) queued for
/// the database at once; past it the connection reads no further frames
/// until the oldest is answered. With the frame being read, a connection
/// holds at most nine frames (`max_frame` each) in memory, and an upload
/// keeps that many chunks in flight (reading them frees QUIC flow-control
/// credit for the next).
const MAX_QUEUED: usize = 8;

/// The response to come of a request whose store operation is queued.
type Queued = Pin<Box<dyn Future<Output = Response> + Send>>;

/// A connection's request limit: `rate` tokens per second, capacity
/// `2 * rate`.
struct RequestLimit {
    bucket: Bucket,
    rate: f64,
}

impl RequestLimit {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self { bucket: Bucket::full(rate * 2.0, Instant::now()), rate }
    }

    /// Takes `cost` tokens if there are that many.
    fn take(&mut self, cost: f64) -> bool {
        self.bucket.take(Instant::now(), self.rate, self.rate * 2.0, cost)
    }

    /// A discounted file request that was refused (an attachment that does
    /// not exist or is someone else's, a chunk refused) costs a whole
    /// request after all: the rest is charged, down to an empty bucket.
    fn charge_refused(&mut self, discounted: bool, response: &Response) {
        if discounted && matches!(response, Response::Error { .. }) {
            self.bucket.charge(Instant::now(), self.rate, self.rate * 2.0, 1.0 - BULK_COST);
        }
    }
}

/// What a request costs against the rate limit: one token, but a file chunk
/// of at least [`BULK_CHUNK`] bytes (uploaded, or asked for) only
/// [`BULK_COST`] of one, so a file of `max_attachment` goes through at the
/// default rate (100 MiB is 200 chunks of 512 KiB, or 400 of 256 KiB) while
/// small requests of any kind stay limited as before. A discounted request
/// that is refused is charged the rest ([`RequestLimit::charge_refused`]):
/// asking for files that are not there is not cheaper than any other request.
fn request_cost(request: &Request) -> f64 {
    let bulk = match request {
        Request::AttachmentChunk { data, .. } => data.len() >= BULK_CHUNK,
        Request::AttachmentGet { max_len, .. } => usize::try_from(*max_len).is_ok_and(|n| n >= BULK_CHUNK),
        _ => false,
    };
    if bulk { BULK_COST } else { 1.0 }
}

/// What a file request of at least [`BULK_CHUNK`] bytes costs.
const BULK_COST: f64 = 1.0 / 16.0;

/// File chunks at least this large count as 1/16 of a request.
const BULK_CHUNK: usize = 64 * 1024;

/// Bytes of pushes a connection may leave unread before it is closed
/// (see [`crate::push`]): four of the largest frames, at least 8 MiB.
fn push_backlog(max_frame: usize) -> usize {
    max_frame.saturating_mul(4).max(8 << 20)
}

struct Session {
    conn_id: u64,
    user: Option<Username>,
    /// Failed Register/Login requests on this connection.
    auth_failures: u32,
    /// The peer's address (as the connection began).
    remote: std::net::IpAddr,
    challenge: [u8; CHALLENGE_LEN],
    push_tx: PushTx,
    /// Counted against `max_pending_logins_per_address` until login.
    pending_login: PendingLogin,
}

pub(crate) async fn handle(
    conn_id: u64,
    incoming: quinn::Incoming,
    tls: ServerTls,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    pending_login: PendingLogin,
) {
    let m = shared.metrics.clone();
    let login_timeout = Duration::from_secs(shared.limits.login_timeout_secs);
    // `checked_add`: the timeout comes from the config and may be huge.
    let now = tokio::time::Instant::now();
    let login_deadline = now.checked_add(login_timeout).unwrap_or(now + Duration::from_secs(u64::from(u32::MAX)));
    let remote = incoming.remote_address();
    let Ok((cfg, probe)) = tls.connection_config() else { return };
    let conn = match incoming.accept_with(cfg) {
        // The handshake counts against the login deadline: a peer that
        // starts one and stalls holds a connection slot only that long.
        Ok(connecting) => match tokio::time::timeout_at(login_deadline, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                inc(&m.handshakes_failed);
                tracing::debug!(conn_id, "handshake failed: {e}");
                return;
            }
            Err(_) => {
                inc(&m.handshakes_failed);
                inc(&m.refused_login_timeout);
                tracing::warn!(conn_id, %remote, "refused: QUIC handshake not finished within {login_timeout:?}");
                return;
            }
        },
        Err(e) => {
            inc(&m.handshakes_failed);
            tracing::debug!(conn_id, "handshake failed: {e}");
            return;
        }
    };
    inc(&m.handshakes_ok);
    inc(&m.connections_total);
    m.connections_current.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let group = probe.get().map(|g| format!("{g:?}")).unwrap_or_else(|| "unknown".into());
    m.record_group(group.clone());
    drop(probe);
    tracing::info!(conn_id, remote = %conn.remote_address(), group, "connection established");

    let backlog = push_backlog(shared.limits.max_frame);
    let (push_tx, mut push_rx) = push_queue(conn.clone(), backlog, shared.metrics.clone());
    let mut session = Session {
        conn_id,
        user: None,
        auth_failures: 0,
        remote: remote.ip(),
        challenge: [0; CHALLENGE_LEN],
        push_tx,
        pending_login,
    };
    SystemRng.fill_bytes(&mut session.challenge);
    run(&conn, &shared, &mut session, &mut push_rx, &mut shutdown, login_deadline).await;
    if let Some(u) = &session.user {
        shared.set_offline(u, conn_id);
    }
    m.connections_current.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(conn_id, "connection closed");
}

async fn run(
    conn: &quinn::Connection,
    shared: &Arc<Shared>,
    s: &mut Session,
    push_rx: &mut PushRx,
    shutdown: &mut watch::Receiver<bool>,
    login_deadline: tokio::time::Instant,
) {
    let m = &shared.metrics;
    let max_frame = shared.limits.max_frame;
    let frame_timeout = Duration::from_secs(shared.limits.frame_timeout_secs);
    let login_timer = tokio::time::sleep_until(login_deadline);
    tokio::pin!(login_timer);
    let Ok((mut send, mut recv)) = conn.open_bi().await else { return };
    let hello = ServerFrame::Hello {
        version: PROTOCOL_VERSION,
        challenge: s.challenge,
        max_frame: u32::try_from(max_frame).unwrap_or(u32::MAX),
    };
    if write_encoded(&mut send, hello.encode()).await.is_err() {
        return;
    }
    // Read in the select loop below: the reader keeps a partly received
    // frame across the loop's other branches (no task and channel per
    // connection for it).
    let mut reader = FrameReader::new(max_frame, Some(frame_timeout));
    let mut bucket = RequestLimit::new(shared.limits.requests_per_second);
    // Requests whose store operations are queued (envelopes, file chunks), oldest first.
    // With each: whether it was charged at the file chunks' discount.
    let mut queued: VecDeque<(RequestId, Queued, bool)> = VecDeque::new();
    // Made once, not at every turn of the loop: each `changed()` future
    // registers with the shutdown channel, which every connection shares
    // (a lock taken and released twice per turn, under load).
    let stopping = shutdown.changed();
    tokio::pin!(stopping);
    'conn: loop {
        tokio::select! {
            Some((id, response)) = next_answer(&mut queued, &mut bucket), if !queued.is_empty() => {
                if write_encoded(&mut send, ServerFrame::Response { id, response }.encode()).await.is_err() {
                    break;
                }
            }
            f = reader.next(&mut recv), if queued.len() < MAX_QUEUED => match f
                .and_then(|body| body.map(|b| ClientFrame::decode(&b)).transpose().map_err(NetError::from))
                .transpose()
            {
                Some(Ok(frame)) => {
                    let is_auth = matches!(frame.request, Request::Register { .. } | Request::Login { .. });
                    let cost = request_cost(&frame.request);
                    let discounted = cost < 1.0;
                    let allowed = bucket.take(cost);
                    let request = match (&s.user, allowed) {
                        (Some(user), true) => match queue(shared, user.clone(), frame.request) {
                            Ok(response) => {
                                queued.push_back((frame.id, response, discounted));
                                continue;
                            }
                            Err(request) => request,
                        },
                        _ => frame.request,
                    };
                    // Any other request is answered after the queued ones, so
                    // a connection's responses keep the order of its requests.
                    while let Some((id, response)) = next_answer(&mut queued, &mut bucket).await {
                        if write_encoded(&mut send, ServerFrame::Response { id, response }.encode()).await.is_err() {
                            break 'conn;
                        }
                    }
                    let response = if allowed {
                        let response = dispatch(shared, s, request).await;
                        bucket.charge_refused(discounted, &response);
                        response
                    } else {
                        inc(&m.refused_rate_limited);
                        tracing::debug!(conn_id = s.conn_id, "refused: request over the rate limit");
                        Response::error(ErrorCode::RateLimited, "too many requests; slow down")
                    };
                    let failed_auth = is_auth && s.user.is_none() && matches!(response, Response::Error { .. });
                    let out = ServerFrame::Response { id: frame.id, response };
                    // One write per frame (prefix and body together).
                    if write_encoded(&mut send, out.encode()).await.is_err() {
                        break;
                    }
                    if failed_auth {
                        inc(&m.auth_failed);
                        s.auth_failures += 1;
                        if s.auth_failures >= shared.limits.max_auth_attempts {
                            inc(&m.refused_auth_attempts);
                            tracing::warn!(
                                conn_id = s.conn_id,
                                remote = %conn.remote_address(),
                                "refused: {} failed register/login attempts; closing the connection",
                                s.auth_failures
                            );
                            // Let the last error response reach the peer first (bounded).
                            let _ = send.finish();
                            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                            conn.close(CLOSE_POLICY.into(), b"too many failed register/login attempts");
                            break;
                        }
                    }
                }
                Some(Err(e)) => {
                    let (code, reason): (u32, &[u8]) = match e {
                        NetError::Wire(WireError::TooLarge { .. }) => {
                            inc(&m.refused_too_large);
                            (CLOSE_TOO_LARGE, b"frame too large")
                        }
                        NetError::Wire(_) => {
                            inc(&m.malformed_frames);
                            (CLOSE_PROTOCOL, b"malformed frame")
                        }
                        NetError::Timeout => {
                            inc(&m.refused_frame_timeout);
                            (CLOSE_POLICY, b"frame too slow")
                        }
                        _ => break,
                    };
                    let what = match e {
                        NetError::Timeout => {
                            format!("a frame did not arrive within {}s of its length prefix", frame_timeout.as_secs())
                        }
                        other => other.to_string(),
                    };
                    tracing::warn!(conn_id = s.conn_id, remote = %conn.remote_address(), "refused: closing connection: {what}");
                    conn.close(code.into(), reason);
                    break;
                }
                None => break,
            },
            Some(p) = push_rx.recv() => {
                // Pushes queued meanwhile go out in the same write: under load
                // a member gets many room entries or envelopes per packet.
                let mut out = Vec::with_capacity(p.len());
                out.extend_from_slice(&p);
                while out.len() < PUSH_COALESCE_BYTES {
                    let Some(next) = push_rx.try_recv() else { break };
                    out.extend_from_slice(&next);
                }
                if write_encoded(&mut send, out).await.is_err() {
                    break;
                }
            }
            () = &mut login_timer, if s.user.is_none() => {
                inc(&m.refused_login_timeout);
                tracing::warn!(
                    conn_id = s.conn_id,
                    remote = %conn.remote_address(),
                    "refused: no register/login within {}s; closing the connection",
                    shared.limits.login_timeout_secs
                );
                conn.close(CLOSE_POLICY.into(), b"login timeout");
                break;
            }
            _ = &mut stopping => {
                conn.close(CLOSE_OK.into(), b"server shutting down");
                break;
            }
        }
    }
    let _ = send.finish();
}

fn store_err(e: StoreError) -> Response {
    match e {
        StoreError::UsernameTaken => {
            Response::error(ErrorCode::UsernameTaken, "username already taken; choose another")
        }
        StoreError::UnknownUser => Response::error(ErrorCode::UnknownUser, "no such user"),
        StoreError::MailboxFull => Response::error(ErrorCode::MailboxFull, "recipient's mailbox is full"),
        StoreError::NotFound => Response::error(ErrorCode::NotFound, "not found"),
        StoreError::Invalid(m) => Response::error(ErrorCode::Invalid, m),
        e @ StoreError::RoomFull { .. } => Response::error(ErrorCode::RoomFull, e.to_string()),
        // Both mean "your view of the room is stale: sync and send again".
        e @ (StoreError::EpochConflict { .. } | StoreError::ProposalPending) => {
            Response::error(ErrorCode::EpochConflict, e.to_string())
        }
        e @ StoreError::RoomExists => Response::error(ErrorCode::RoomExists, e.to_string()),
        e @ StoreError::NotAMember => Response::error(ErrorCode::Forbidden, e.to_string()),
        e @ StoreError::HistoryExpired => Response::error(ErrorCode::HistoryExpired, e.to_string()),
        other => {
            tracing::error!("storage error: {other}");
            Response::error(ErrorCode::Internal, "storage error; retry later")
        }
    }
}

fn verify(identity_key: &[u8], signature: &[u8], msg: &[u8], ctx: &[u8]) -> Result<(), Response> {
    let vk = HybridVerifyingKey::from_bytes(identity_key)
        .map_err(|_| Response::error(ErrorCode::Invalid, "identity key is not a valid hybrid verifying key"))?;
    let sig = HybridSignature::from_bytes(signature)
        .map_err(|_| Response::error(ErrorCode::BadSignature, "signature is malformed"))?;
    vk.verify(msg, ctx, &sig).map_err(|_| Response::error(ErrorCode::BadSignature, "signature does not verify"))
}

fn random_attachment_id() -> AttachmentId {
    // 63 bits: fits SQLite's signed INTEGER; unguessable.
    AttachmentId(SystemRng.next_u64() >> 1)
}

async fn dispatch(shared: &Arc<Shared>, s: &mut Session, req: Request) -> Response {
    tracing::debug!(conn_id = s.conn_id, request = ?req, "request");
    let user = match (&req, &s.user) {
        (Request::Ping, _) => return Response::Pong,
        (Request::Register { .. } | Request::Login { .. }, Some(_)) => {
            return Response::error(ErrorCode::AlreadyLoggedIn, "this connection is already logged in");
        }
        (Request::Register { username, identity_key, signature }, None) => {
            let t = register_transcript(&s.challenge, username, identity_key);
            if let Err(r) = verify(identity_key, signature, &t, REGISTER_CONTEXT) {
                return r;
            }
            if let Err(wait) = shared.registrations.take(s.remote, std::time::Instant::now()) {
                inc(&shared.metrics.refused_registration_quota);
                tracing::warn!(conn_id = s.conn_id, remote = %s.remote, "refused: registration quota of the address");
                let minutes = wait.as_secs().div_ceil(60).max(1);
                return Response::error(
                    ErrorCode::RateLimited,
                    format!(
                        "too many new accounts from your network address in the last hour (at most {}); \
                         try again in {minutes} minute{}",
                        shared.limits.registrations_per_hour,
                        if minutes == 1 { "" } else { "s" }
                    ),
                );
            }
            let (u, k) = (username.clone(), identity_key.clone());
            if let Err(e) = shared.db(move |st| st.create_account(&u, &k)).await {
                shared.registrations.refund(s.remote);
                return store_err(e);
            }
            inc(&shared.metrics.registrations);
            tracing::info!(conn_id = s.conn_id, "account registered");
            // A new account has no other connection.
            shared.try_online(username, s.conn_id, &s.push_tx, u32::MAX);
            logged_in(s, username.clone());
            return Response::Ok;
        }
        (Request::Login { username, signature }, None) => {
            let u = username.clone();
            let key = match shared.db(move |st| st.identity_key(&u)).await {
                Ok(Some(k)) => k,
                Ok(None) => return Response::error(ErrorCode::UnknownUser, "no such user; register first"),
                Err(e) => return store_err(e),
            };
            let t = login_transcript(&s.challenge, username);
            if let Err(r) = verify(&key, signature, &t, LOGIN_CONTEXT) {
                return r;
            }
            if !shared.try_online(username, s.conn_id, &s.push_tx, shared.limits.max_connections_per_user) {
                inc(&shared.metrics.refused_connections_per_user);
                tracing::warn!(
                    conn_id = s.conn_id,
                    "refused: a login past max_connections_per_user ({})",
                    shared.limits.max_connections_per_user
                );
                return Response::error(
                    ErrorCode::Forbidden,
                    format!(
                        "this account is logged in on {} connections, the most this server allows; close one",
                        shared.limits.max_connections_per_user
                    ),
                );
            }
            logged_in(s, username.clone());
            return Response::Ok;
        }
        (_, None) => return Response::error(ErrorCode::NotLoggedIn, "register or log in first"),
        (_, Some(u)) => u.clone(),
    };
    let limits = &shared.limits;
    match req {
        Request::UploadPrekeys { signed_prekeys, one_time, one_time_kem } => {
            let u = user.clone();
            match shared.db(move |st| st.upload_prekeys(&u, &signed_prekeys, &one_time, &one_time_kem)).await {
                Ok(_) => Response::Ok,
                Err(e) => store_err(e),
            }
        }
        Request::FetchPrekeys { username } => {
            let u = username.clone();
            match shared.db(move |st| st.take_prekey_bundle(&u)).await {
                Ok(Some((bundle, counts))) => {
                    let t = limits.low_prekeys_threshold;
                    if counts.one_time < t || counts.one_time_kem < t {
                        shared.push(
                            &username,
                            &Push::LowPrekeys { remaining: counts.one_time, remaining_kem: counts.one_time_kem },
                        );
                    }
                    Response::PrekeyBundle(bundle)
                }
                Ok(None) => Response::error(ErrorCode::NotFound, "this user has not uploaded prekeys"),
                Err(e) => store_err(e),
            }
        }
        Request::GetIdentity { username } => match shared.db(move |st| st.directory_entry(&username)).await {
            Ok(Some(e)) => Response::Identity { identity_key: e.identity_key, signed_prekeys: e.signed_prekeys },
            Ok(None) => Response::error(ErrorCode::UnknownUser, "no such user"),
            Err(e) => store_err(e),
        },
        Request::Send { to, max_views, payload } => send_envelope(shared, user, to, max_views, payload).await,
        Request::Fetch => {
            let max = limits.max_frame.saturating_sub(4096).max(1024);
            match shared.db(move |st| st.fetch(&user, max)).await {
                Ok((envelopes, more)) => {
                    shared
                        .metrics
                        .messages_delivered
                        .fetch_add(envelopes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Response::Envelopes { envelopes, more }
                }
                Err(e) => store_err(e),
            }
        }
        Request::AckEnvelopes { ids } => match shared.db(move |st| st.ack(&user, &ids)).await {
            Ok(count) => Response::Deleted { count },
            Err(e) => store_err(e),
        },
        Request::AttachmentBegin { to, total_len } => {
            if let Err(r) = check_attachment_size(shared, total_len) {
                return r;
            }
            begin_attachment(shared, user, Audience::User(to), total_len).await
        }
        Request::RoomAttachmentBegin { room_id, total_len } => {
            if let Err(r) = check_attachment_size(shared, total_len) {
                return r;
            }
            begin_attachment(shared, user, Audience::Room(room_id), total_len).await
        }
        // Each attachment request is one store operation (permission check,
        // work and status together): one group commit per chunk, not three.
        Request::AttachmentChunk { id, offset, data } => upload_chunk(shared, user, id, offset, data).await,
        Request::AttachmentGet { id, offset, max_len } => download_chunk(shared, user, id, offset, max_len).await,
        Request::AttachmentStatus { id } => {
            on_attachment(shared, id, user, Role::Either, |_, meta, _, _| status_of(&meta)).await
        }
        Request::AttachmentFinish { id } => {
            on_attachment(shared, id, user, Role::Sender, move |st, meta, _, _| match st.attachment_finish(id) {
                Ok(()) => status_of(&AttachmentMeta { complete: true, ..meta }),
                Err(e) => store_err(e),
            })
            .await
        }
        Request::AttachmentAck { id } => {
            on_attachment(shared, id, user, Role::Either, move |st, meta, user, reader| {
                let done = match meta.to {
                    Audience::User(_) if reader => st.attachment_delete(id),
                    // A room file goes once its last reader is done with it.
                    Audience::Room(_) if reader => st.attachment_reader_done(id, user),
                    // Its sender abandons an upload it will not finish (the
                    // file changed since): nobody can have it yet.
                    _ if !meta.complete => st.attachment_delete(id),
                    _ => {
                        return Response::error(
                            ErrorCode::Forbidden,
                            "a finished file is deleted by its recipients once they have it, not by its sender",
                        );
                    }
                };
                match done {
                    Ok(d) => Response::Deleted { count: u32::from(d) },
                    Err(e) => store_err(e),
                }
            })
            .await
        }
        Request::RoomCreate { room_id, max_participants, group_info } => {
            if group_info.is_empty() {
                return Response::error(ErrorCode::Invalid, "a room needs its sealed GroupInfo");
            }
            let max = if max_participants == 0 { shared.default_max_participants.max(1) } else { max_participants };
            if max > shared.limits.max_room_participants {
                return Response::error(
                    ErrorCode::Invalid,
                    format!("rooms on this server have at most {} participants", shared.limits.max_room_participants),
                );
            }
            let sh = shared.clone();
            let created = shared.db(move |st| {
                st.room_create(&room_id, &user, max, &group_info)?;
                sh.room_membership_changed(&room_id);
                Ok(())
            });
            match created.await {
                Ok(()) => {
                    tracing::info!(conn_id = s.conn_id, room = %room_id, max, "room created");
                    Response::Ok
                }
                Err(e) => store_err(e),
            }
        }
        Request::RoomGetInfo { room_id } => match shared.db(move |st| st.room_info(&room_id)).await {
            Ok((group_info, epoch)) => Response::RoomInfo { group_info, epoch },
            Err(StoreError::NotFound) => {
                Response::error(ErrorCode::NotFound, "no such room; check the name or create it")
            }
            Err(e) => store_err(e),
        },
        Request::RoomJoin { room_id, epoch, commit, group_info } => {
            let u = user.clone();
            let op = move |st: &mut SqliteServerStore, c: &[u8]| st.room_join(&room_id, &u, epoch, c, &group_info);
            match store_room_entry(shared, room_id, user, RoomMessageKind::Commit, commit, Change::Join, op).await {
                Ok(seq) => Response::RoomSent { seq },
                Err(StoreError::NotFound) => {
                    Response::error(ErrorCode::NotFound, "no such room; check the name or create it")
                }
                Err(e) => store_err(e),
            }
        }
        Request::RoomAdd { room_id, epoch, member, commit, group_info } => {
            let (u, m) = (user.clone(), member.clone());
            let op = move |st: &mut SqliteServerStore, c: &[u8]| st.room_add(&room_id, &u, &m, epoch, c, &group_info);
            let add = Change::Add(member);
            match store_room_entry(shared, room_id, user, RoomMessageKind::Commit, commit, add, op).await {
                Ok(seq) => {
                    tracing::info!(conn_id = s.conn_id, room = %room_id, "member added to a room");
                    Response::RoomSent { seq }
                }
                Err(StoreError::NotFound) => {
                    Response::error(ErrorCode::NotFound, "no such room; check the name or create it")
                }
                Err(StoreError::UnknownUser) => Response::error(ErrorCode::UnknownUser, "no such user to add"),
                Err(e) => store_err(e),
            }
        }
        Request::UploadKeyPackages { packages } => {
            let max = limits.max_key_packages;
            match shared.db(move |st| st.upload_key_packages(&user, &packages, max)).await {
                Ok(_) => Response::Ok,
                Err(e) => store_err(e),
            }
        }
        Request::FetchKeyPackage { username } => {
            let u = username.clone();
            match shared.db(move |st| st.take_key_package(&u)).await {
                Ok(Some((package, left))) => {
                    if left < limits.low_prekeys_threshold {
                        shared.push(&username, &Push::LowKeyPackages { remaining: left });
                    }
                    Response::KeyPackage { package }
                }
                Ok(None) => Response::error(
                    ErrorCode::NotFound,
                    "this user has no key package left; they must come online (run `recv`) to publish more",
                ),
                Err(e) => store_err(e),
            }
        }
        Request::RoomSend { room_id, epoch, kind, payload, new_group_info } => {
            if kind == RoomMessageKind::Commit && new_group_info.is_none() {
                return Response::error(ErrorCode::Invalid, "a commit must carry the new epoch's sealed GroupInfo");
            }
            let u = user.clone();
            // Stored (synchronous=FULL) before the answer, like envelopes.
            let op = move |st: &mut SqliteServerStore, p: &[u8]| {
                st.room_append(&room_id, &u, epoch, kind, p, new_group_info.as_deref())
            };
            match store_room_entry(shared, room_id, user, kind, payload, Change::None, op).await {
                Ok(seq) => {
                    inc(&shared.metrics.messages_queued);
                    Response::RoomSent { seq }
                }
                Err(e) => store_err(e),
            }
        }
        Request::RoomLeave { room_id } => {
            let sh = shared.clone();
            let left = shared.db(move |st| {
                st.room_leave(&room_id, &user)?;
                sh.room_membership_changed(&room_id);
                Ok(())
            });
            match left.await {
                Ok(()) => Response::Ok,
                Err(e) => store_err(e),
            }
        }
        Request::RoomFetch { room_id } => {
            let max = limits.max_frame.saturating_sub(4096).max(1024);
            match shared.db(move |st| st.room_fetch(&user, room_id.as_ref(), max)).await {
                Ok((messages, more)) => {
                    shared
                        .metrics
                        .messages_delivered
                        .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Response::RoomMessages { messages, more }
                }
                Err(e) => store_err(e),
            }
        }
        Request::RoomAck { room_id, seq } => match shared.db(move |st| st.room_ack(&room_id, &user, seq)).await {
            Ok(count) => Response::Deleted { count },
            Err(e) => store_err(e),
        },
        _ => Response::error(ErrorCode::Invalid, "unsupported request"),
    }
}

/// Refuses an attachment over the size limit.
fn check_attachment_size(shared: &Shared, total_len: u64) -> Result<(), Response> {
    if total_len > shared.limits.max_attachment {
        inc(&shared.metrics.refused_too_large);
        return Err(Response::error(
            ErrorCode::TooLarge,
            format!("attachment of {total_len} bytes exceeds the limit of {} bytes", shared.limits.max_attachment),
        ));
    }
    Ok(())
}

/// Creates an attachment for a user who exists, or for a room the sender is
/// a member of: the check and the creation are one store operation.
async fn begin_attachment(shared: &Arc<Shared>, from: Username, to: Audience, total_len: u64) -> Response {
    let meta = AttachmentMeta { id: random_attachment_id(), from, to, total_len, received: 0, complete: false };
    let (id, sh) = (meta.id, shared.clone());
    let keep = shared.limits.max_unfinished_uploads.max(1);
    let quota = shared.limits.max_attachment_bytes_per_sender;
    let created = shared.db(move |st| {
        // What one sender may keep waiting on the relay (files are deleted
        // once their recipients took them, or after `envelope_days`).
        let held = st.attachment_bytes_of(&meta.from)?;
        if held.saturating_add(meta.total_len) > quota {
            inc(&sh.metrics.refused_too_large);
            return Ok(Response::error(
                ErrorCode::TooLarge,
                format!(
                    "your files not yet downloaded by their recipients take {} MiB on the server, and at most {} MiB \
                     may wait per sender; send this one once they have been downloaded",
                    held.div_ceil(1 << 20),
                    quota >> 20
                ),
            ));
        }
        match &meta.to {
            Audience::User(to) if st.identity_key(to)?.is_none() => {
                return Ok(Response::error(ErrorCode::UnknownUser, "no such recipient"));
            }
            Audience::Room(room) if !sh.members_in_job(st, room)?.contains(&meta.from) => {
                return Ok(store_err(StoreError::NotAMember));
            }
            _ => {}
        }
        st.attachment_begin(&meta)?;
        let dropped = st.attachments_keep_unfinished(&meta.from, keep)?;
        if dropped > 0 {
            tracing::info!(dropped, "deleted a sender's oldest unfinished uploads (max_unfinished_uploads)");
        }
        Ok(Response::AttachmentCreated { id })
    });
    created.await.unwrap_or_else(store_err)
}

/// How a room entry changes who is in the room.
enum Change {
    None,
    /// The sender joined.
    Join,
    /// The sender added this user, whose Welcome already holds the commit.
    Add(Username),
}

/// Stores a room entry with `op` (given the payload; returns the entry's
/// sequence number) and, once it is committed, pushes it inline to the
/// room's other connected members: queued from the database thread for the
/// fan-out task ([`crate::server::FanOut`]), so every member gets a room's
/// entries in the room's order.
async fn store_room_entry(
    shared: &Arc<Shared>,
    room_id: RoomId,
    sender: Username,
    kind: RoomMessageKind,
    payload: Vec<u8>,
    change: Change,
    op: impl FnOnce(&mut SqliteServerStore, &[u8]) -> Result<u64, StoreError> + Send + 'static,
) -> Result<u64, StoreError> {
    let (sh, after) = (shared.clone(), shared.clone());
    let stored = shared.db_then(
        move |st| {
            let seq = op(st, &payload)?;
            if !matches!(change, Change::None) {
                sh.room_membership_changed(&room_id);
            }
            let mut members = sh.members_in_job(st, &room_id)?;
            if let Change::Add(added) = &change {
                members = members.iter().filter(|u| *u != added).cloned().collect();
            }
            let push = Push::RoomEntry(RoomMessage { room_id, seq, sender: sender.clone(), kind, payload });
            Ok((seq, members, sender, push))
        },
        move |(_, members, sender, push)| {
            let entry = FanOut { members: members.clone(), sender: sender.clone(), push: push.clone() };
            let _ = after.fanout.send(entry);
        },
    );
    Ok(stored.await?.0)
}

/// The connection is `user`'s (already in the table of who is online).
fn logged_in(s: &mut Session, user: Username) {
    s.pending_login.logged_in();
    s.user = Some(user);
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Sender,
    Recipient,
    Either,
}

/// Queues the store operation of a request that is nothing else (an
/// envelope sent, a file chunk uploaded or downloaded) and returns its
/// response to come; any other request is handed back. Queued operations
/// run in order, so a connection may send the next message or chunk before
/// the previous one is answered: a client that pipelines its messages has
/// them committed together instead of one `fdatasync` after another.
fn queue(shared: &Arc<Shared>, user: Username, req: Request) -> Result<Queued, Request> {
    match req {
        Request::Send { to, max_views, payload } => Ok(Box::pin(send_envelope(shared, user, to, max_views, payload))),
        Request::AttachmentChunk { id, offset, data } => Ok(Box::pin(upload_chunk(shared, user, id, offset, data))),
        Request::AttachmentGet { id, offset, max_len } => {
            Ok(Box::pin(download_chunk(shared, user, id, offset, max_len)))
        }
        other => Err(other),
    }
}

/// `Send`: queues an envelope from `user` to `to`. Queued when called (see
/// [`Shared::db`]); the response is the `Ack` once the envelope is
/// committed (the mailbox log fdatasynced), or the refusal.
///
/// A connected recipient gets the envelope inline (it stays queued until
/// acknowledged), pushed from the database thread after the commit, so in
/// mailbox order; a limited-view one is only announced, since each fetch of
/// it counts as a view.
fn send_envelope(
    shared: &Arc<Shared>,
    user: Username,
    to: Username,
    max_views: Option<u32>,
    payload: Vec<u8>,
) -> impl Future<Output = Response> + Send + 'static {
    let queued = (max_views != Some(0)).then(|| {
        let (t, max, sh) = (to.clone(), shared.limits.max_mailbox, shared.clone());
        shared.db_then(
            move |st| {
                let id = st.enqueue(&t, &user, max_views, &payload, max)?;
                let push = match max_views {
                    None => Push::Envelope(Envelope { id, from: user, max_views: None, views_left: None, payload }),
                    Some(_) => Push::NewEnvelope { id, from: user },
                };
                Ok((id, push))
            },
            move |(_, push)| {
                let n = sh.push(&to, push);
                if matches!(push, Push::Envelope(_)) {
                    sh.metrics.messages_delivered.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            },
        )
    });
    let metrics = shared.metrics.clone();
    async move {
        let Some(stored) = queued else {
            return Response::error(ErrorCode::Invalid, "max_views must be at least 1");
        };
        match stored.await {
            Ok((id, _)) => {
                inc(&metrics.messages_queued);
                Response::Ack { id }
            }
            Err(e) => store_err(e),
        }
    }
}

/// One store operation on attachment `id`: checks that `user` may act on it
/// as `role`, then runs `op` with its metadata, the user and whether the user
/// is one of its recipients. Queued when called (see [`Shared::db`]); a
/// refusal or a store error is the response.
fn on_attachment(
    shared: &Shared,
    id: AttachmentId,
    user: Username,
    role: Role,
    op: impl FnOnce(&mut SqliteServerStore, AttachmentMeta, &Username, bool) -> Response + Send + 'static,
) -> impl Future<Output = Response> + Send + 'static {
    let done = shared.db(move |st| {
        Ok(match check_attachment(st, id, &user, role)? {
            Ok((meta, recipient)) => op(st, meta, &user, recipient),
            Err(refused) => refused,
        })
    });
    async move { done.await.unwrap_or_else(store_err) }
}

/// `AttachmentChunk`: appends `data` at `offset` (the sender only).
fn upload_chunk(
    shared: &Shared,
    user: Username,
    id: AttachmentId,
    offset: u64,
    data: Vec<u8>,
) -> impl Future<Output = Response> + Send + 'static {
    on_attachment(shared, id, user, Role::Sender, move |st, meta, _, _| match st.attachment_append(id, offset, &data) {
        Ok(received) => Response::AttachmentStatus { id, received, total_len: meta.total_len, complete: false },
        Err(e) => store_err(e),
    })
}

/// `AttachmentGet`: up to `max_len` bytes (and about `max_frame`) of a
/// finished attachment from `offset` (its recipients only).
fn download_chunk(
    shared: &Shared,
    user: Username,
    id: AttachmentId,
    offset: u64,
    max_len: u32,
) -> impl Future<Output = Response> + Send + 'static {
    let cap = u32::try_from(shared.limits.max_frame.saturating_sub(1024)).unwrap_or(u32::MAX);
    let n = max_len.min(cap);
    on_attachment(shared, id, user, Role::Recipient, move |st, meta, _, _| {
        if !meta.complete {
            return Response::error(ErrorCode::Invalid, "attachment upload is not finished yet");
        }
        match st.attachment_read(id, offset, n) {
            Ok(data) => Response::AttachmentData { id, offset, total_len: meta.total_len, data },
            Err(e) => store_err(e),
        }
    })
}

/// Waits for the oldest queued request's response and takes it off the
/// queue; a refused file request is charged in full ([`RequestLimit::charge_refused`]).
async fn next_answer(
    queued: &mut VecDeque<(RequestId, Queued, bool)>,
    bucket: &mut RequestLimit,
) -> Option<(RequestId, Response)> {
    let (_, response, _) = queued.front_mut()?;
    let response = response.await;
    let (id, _, discounted) = queued.pop_front()?;
    bucket.charge_refused(discounted, &response);
    Some((id, response))
}

/// Checks that `user` may act on attachment `id` as `role`; inside a store
/// operation. `Ok(Ok((meta, recipient)))`: allowed, and whether `user` is
/// one of its recipients; `Ok(Err(response))` is a refusal to send back.
fn check_attachment(
    st: &mut SqliteServerStore,
    id: AttachmentId,
    user: &Username,
    role: Role,
) -> Result<Result<(AttachmentMeta, bool), Response>, StoreError> {
    // Same answer for "absent" and "someone else's" would leak less, but a
    // clear Forbidden helps users; ids are random 63-bit values anyway.
    let Some(meta) = st.attachment(id)? else {
        return Ok(Err(Response::error(ErrorCode::NotFound, "no such attachment")));
    };
    let is_recipient = match &meta.to {
        Audience::User(to) => to == user,
        Audience::Room(_) => st.attachment_is_reader(id, user)?,
    };
    let ok = match role {
        Role::Sender => &meta.from == user,
        Role::Recipient => is_recipient,
        Role::Either => &meta.from == user || is_recipient,
    };
    if ok {
        Ok(Ok((meta, is_recipient)))
    } else {
        Ok(Err(Response::error(
            ErrorCode::Forbidden,
            match role {
                Role::Sender => "only the sender may upload this attachment",
                _ => "only its recipient (for a room file: a member when it was sent) may download this attachment",
            },
        )))
    }
}

fn status_of(m: &AttachmentMeta) -> Response {
    Response::AttachmentStatus { id: m.id, received: m.received, total_len: m.total_len, complete: m.complete }
}
