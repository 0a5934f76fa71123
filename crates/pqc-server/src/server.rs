//! Endpoint, accept loop, shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pqc_net::{CertFingerprint, ServerTls};
use pqc_store::StoreError;
use pqc_store::server::SqliteServerStore;
use pqc_wire::{Push, RoomId, Username};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Config, Limits};
use crate::metrics::{Metrics, inc};
use crate::push::{PushFrame, PushTx};
use crate::{ServerError, conn, status};

type Online = HashMap<Username, Vec<(u64, PushTx)>>;

/// Most rooms whose member lists are cached; past it the cache starts over.
const MAX_CACHED_ROOMS: usize = 10_000;

/// Member lists of rooms, cached for pushes (the database stays the truth).
/// Read, filled and invalidated only from database jobs, which run one at a
/// time: every job that changes a room's membership invalidates its entry,
/// and a failed commit empties the cache.
#[derive(Default)]
struct RoomMembers {
    rooms: HashMap<RoomId, Arc<[Username]>>,
}

/// What a finished store operation does once its batch's fate is known: it
/// answers its caller with its result, or with the commit error.
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// A store operation queued for the database thread.
type Job = Box<dyn FnOnce(&mut SqliteServerStore) -> Completion + Send>;

/// Most operations committed together in one transaction.
const MAX_BATCH: usize = 256;

/// The database thread: owns the store and runs queued operations in group
/// commits. It takes every operation waiting at that moment (up to
/// [`MAX_BATCH`]), runs each as a savepoint inside one transaction, commits
/// once (an `fdatasync` of the mailbox log if envelopes came, an `fsync` of
/// the database, `synchronous=FULL`, if it changed), and only then answers
/// the callers. So an envelope is still on disk before its sender is
/// acknowledged, but a hundred concurrent senders share one disk flush
/// instead of queueing for a hundred. The commits, and those that flushed
/// the mailbox log, are counted in `metrics`.
///
/// A failed commit also empties the room member cache: jobs of that batch
/// may have cached a membership the rollback undid.
fn run_database(
    mut store: SqliteServerStore,
    jobs: std::sync::mpsc::Receiver<Job>,
    room_members: Arc<Mutex<RoomMembers>>,
    metrics: Arc<Metrics>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // A transaction left open (a ROLLBACK that failed) would make every
        // BEGIN fail, and operations run "on their own" would then run inside
        // it and never commit: roll back whatever is open and try once more.
        let begun = store.begin_batch().or_else(|e| {
            tracing::error!("storage error starting a batch: {e}; rolling back and trying again");
            let _ = store.rollback_batch();
            store.begin_batch()
        });
        if let Err(e) = begun {
            // Could not open a transaction: run each operation on its own.
            tracing::error!("storage error starting a batch: {e}");
            for job in batch {
                job(&mut store)(None);
            }
            continue;
        }
        let completions: Vec<Completion> = batch.into_iter().map(|job| job(&mut store)).collect();
        let syncs = store.batch_must_sync();
        let committed = store.commit_batch();
        if committed.is_ok() {
            inc(&metrics.store_commits);
            if syncs {
                inc(&metrics.mailbox_syncs);
            }
        }
        if let Err(e) = &committed {
            tracing::error!("storage error committing a batch of {}: {e}", completions.len());
            let _ = store.rollback_batch();
            room_members.lock().unwrap_or_else(PoisonError::into_inner).rooms.clear();
        }
        for done in completions {
            done(committed.as_ref().err());
        }
    }
}

/// A room entry to push to the room's connected members but its sender.
pub(crate) struct FanOut {
    pub(crate) members: Arc<[Username]>,
    pub(crate) sender: Username,
    pub(crate) push: Push,
}

/// Sends room entries to their members' connections, in the order the
/// database thread committed them (it queues them from there). Done on the
/// runtime rather than on the database thread: waking a hundred connection
/// tasks from a worker puts them on its run queue, from another thread each
/// wake-up goes through the scheduler's shared queue and may wake a parked
/// worker.
async fn fan_out(shared: std::sync::Weak<Shared>, mut entries: mpsc::UnboundedReceiver<FanOut>) {
    while let Some(FanOut { members, sender, push }) = entries.recv().await {
        let Some(sh) = shared.upgrade() else { break };
        let n = sh.push_many(&members, Some(&sender), &push);
        sh.metrics.messages_delivered.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// State shared by all connection tasks.
pub(crate) struct Shared {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Room entries to push, to [`fan_out`].
    pub(crate) fanout: mpsc::UnboundedSender<FanOut>,
    online: Mutex<Online>,
    room_members: Arc<Mutex<RoomMembers>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    /// Participant limit of a room created with limit 0.
    pub(crate) default_max_participants: u32,
    /// New accounts per source address and hour.
    pub(crate) registrations: crate::quota::RegistrationQuota,
    /// Connections not logged in yet, per source address.
    pub(crate) pending_logins: Arc<crate::quota::PendingLogins>,
}

impl Shared {
    /// Runs a store operation on the database thread, in the next group
    /// commit; the returned future resolves once that commit is on disk.
    /// The operation is queued when this is called, not when the future is
    /// first polled: operations queued one after the other run in that
    /// order even if their results are awaited later (pipelining).
    pub(crate) fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SqliteServerStore) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        self.db_then(f, |_| {})
    }

    /// [`Self::db`], and once the operation succeeded and its commit is on
    /// disk, `after_commit` runs on the database thread, before the caller
    /// is answered. Operations' `after_commit`s run in commit order: pushes
    /// sent from there reach each connection in the order of the store.
    pub(crate) fn db_then<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SqliteServerStore) -> Result<T, StoreError> + Send + 'static,
        after_commit: impl FnOnce(&T) + Send + 'static,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |store| {
            let result = f(store);
            Box::new(move |commit_error: Option<&StoreError>| {
                let result = match commit_error {
                    Some(e) => Err(StoreError::Invalid(format!("commit failed: {e}"))),
                    None => result,
                };
                if let Ok(v) = &result {
                    after_commit(v);
                }
                let _ = tx.send(result);
            })
        });
        let queued = self.jobs.send(job);
        async move {
            let stopped = || StoreError::Invalid("the database thread has stopped".into());
            queued.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())?
        }
    }

    pub(crate) async fn queued_now(&self) -> u64 {
        use pqc_store::server::ServerStore;
        self.db(|s| s.queued_total()).await.unwrap_or(0)
    }

    /// Records connection `conn_id` as `user`'s (pushes reach it), unless
    /// the user has `max` connections already; whether it was recorded.
    pub(crate) fn try_online(&self, user: &Username, conn_id: u64, tx: &PushTx, max: u32) -> bool {
        let mut online = self.online.lock().unwrap_or_else(PoisonError::into_inner);
        let conns = online.entry(user.clone()).or_default();
        if max != 0 && conns.len() >= max as usize {
            if conns.is_empty() {
                online.remove(user);
            }
            return false;
        }
        conns.push((conn_id, tx.clone()));
        true
    }

    pub(crate) fn set_offline(&self, user: &Username, conn_id: u64) {
        let mut online = self.online.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = online.get_mut(user) {
            v.retain(|(id, _)| *id != conn_id);
            if v.is_empty() {
                online.remove(user);
            }
        }
    }

    /// Pushes to every connection of `user`; returns how many.
    pub(crate) fn push(&self, user: &Username, p: &Push) -> u64 {
        self.push_many(std::slice::from_ref(user), None, p)
    }

    /// Pushes to every connection of each of `users` but `except`, under one
    /// lock; the push is encoded once. Returns to how many connections.
    pub(crate) fn push_many(&self, users: &[Username], except: Option<&Username>, p: &Push) -> u64 {
        let frame: PushFrame = p.encode_frame().into();
        let online = self.online.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        for user in users.iter().filter(|u| Some(*u) != except) {
            for (_, tx) in online.get(user).into_iter().flatten() {
                if tx.send(&frame) {
                    n += 1;
                }
            }
        }
        n
    }

    /// The members of `room` as of the operation running now: for use inside
    /// a database job, where the cache is current because every change of
    /// membership invalidates it from inside its own job.
    pub(crate) fn members_in_job(
        &self,
        st: &mut SqliteServerStore,
        room: &RoomId,
    ) -> Result<Arc<[Username]>, StoreError> {
        use pqc_store::server::ServerStore;
        if let Some(m) = self.room_members.lock().unwrap_or_else(PoisonError::into_inner).rooms.get(room) {
            return Ok(m.clone());
        }
        let members: Arc<[Username]> = st.room_members(room)?.into();
        let mut cache = self.room_members.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.rooms.len() >= MAX_CACHED_ROOMS {
            cache.rooms.clear();
        }
        cache.rooms.insert(*room, members.clone());
        Ok(members)
    }

    /// Forgets the cached members of `room`: call from inside the database
    /// job that changed its membership.
    pub(crate) fn room_membership_changed(&self, room: &RoomId) {
        self.room_members.lock().unwrap_or_else(PoisonError::into_inner).rooms.remove(room);
    }
}

/// The server.
#[derive(Debug)]
pub struct Server;

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// QUIC (UDP) address bound.
    pub addr: SocketAddr,
    /// Status HTTP address bound, if enabled.
    pub status_addr: Option<SocketAddr>,
    /// SHA-256 fingerprint of the certificate (clients pin it).
    pub fingerprint: CertFingerprint,
    /// Counters.
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    status_task: Option<tokio::task::JoinHandle<()>>,
    db_thread: std::thread::JoinHandle<()>,
}

/// How long [`ServerHandle::shutdown`] waits for the database thread.
const DB_CLOSE_WAIT: Duration = Duration::from_secs(10);

impl ServerHandle {
    /// Graceful shutdown: stop accepting, close connections, wait for their
    /// tasks, close the endpoint and the database. Returns once the
    /// database is closed and the data folder free for the next server
    /// (or after [`DB_CLOSE_WAIT`], with a warning).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        if let Some(status) = self.status_task {
            let _ = status.await;
        }
        // The thread ends once the last holder of the shared state is gone
        // (a status answer in flight holds it a few seconds at most): it
        // runs what was queued, and the store closes with it.
        let db = self.db_thread;
        if tokio::time::timeout(DB_CLOSE_WAIT, tokio::task::spawn_blocking(move || db.join())).await.is_err() {
            tracing::warn!("the database did not close within {} s of the shutdown", DB_CLOSE_WAIT.as_secs());
        }
    }
}

/// Loads the certificate, or creates a self-signed one on first start.
pub fn ensure_certificate(cfg: &Config) -> Result<ServerTls, ServerError> {
    let (cert, key) = (cfg.cert_path(), cfg.key_path());
    if !cert.exists() && !key.exists() {
        let mut names = vec!["localhost".to_string()];
        if cfg.signaling_host != "0.0.0.0" && cfg.signaling_host != "::" {
            names.push(cfg.signaling_host.clone());
        }
        let ss = pqc_net::generate_self_signed(&names)?;
        if let Some(dir) = key.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_private(&key, ss.key_pem.as_bytes())?;
        std::fs::write(&cert, ss.cert_pem.as_bytes())?;
        tracing::info!(cert = %cert.display(), "generated a self-signed certificate");
    }
    Ok(ServerTls::from_pem_files(&cert, &key)?)
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

impl Server {
    /// Creates the data directory, certificate and database if needed, binds
    /// `listen` (UDP) and `status` (TCP, optional) and starts serving.
    pub async fn start(
        cfg: Config,
        listen: SocketAddr,
        status_addr: Option<SocketAddr>,
    ) -> Result<ServerHandle, ServerError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let tls = ensure_certificate(&cfg)?;
        // The sockets first: a start that fails on them leaves the data
        // folder untouched, free for the next attempt at once.
        let endpoint = tls.endpoint(listen).map_err(|e| match e {
            pqc_net::NetError::Io(source) => ServerError::Bind { what: "QUIC, UDP", addr: listen, source },
            e => e.into(),
        })?;
        let addr = endpoint.local_addr()?;
        let status_listener = match status_addr {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|source| ServerError::Bind {
                what: "status and metrics, TCP",
                addr: a,
                source,
            })?),
            None => None,
        };
        let status_bound = status_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let db_path = cfg.data_dir.join("server.db");
        let mut store = tokio::task::spawn_blocking(move || SqliteServerStore::open(&db_path))
            .await
            .map_err(|e| ServerError::Config(format!("database open task failed: {e}")))??;
        store.set_max_mailbox_bytes(cfg.limits.max_mailbox_bytes);
        store.set_max_room_log_bytes(cfg.limits.max_room_log_bytes);
        store.set_max_rooms_per_user(cfg.limits.max_rooms_per_user);
        let room_members = Arc::new(Mutex::new(RoomMembers::default()));
        let db_members = room_members.clone();
        let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
        let metrics = Arc::new(Metrics::default());
        let db_metrics = metrics.clone();
        let db_thread = std::thread::Builder::new()
            .name("pqc-db".into())
            .spawn(move || run_database(store, job_rx, db_members, db_metrics))
            .map_err(ServerError::Io)?;
        let (fanout, fanout_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            jobs,
            fanout,
            online: Mutex::new(HashMap::new()),
            room_members,
            metrics: metrics.clone(),
            limits: cfg.limits.clone(),
            default_max_participants: cfg.default_max_participants,
            registrations: crate::quota::RegistrationQuota::new(cfg.limits.registrations_per_hour),
            pending_logins: Arc::new(crate::quota::PendingLogins::new(cfg.limits.max_pending_logins_per_address)),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let status_task = status_listener.map(|l| tokio::spawn(status::serve(l, shared.clone(), shutdown_rx.clone())));
        let fingerprint = tls.fingerprint();
        tokio::spawn(fan_out(Arc::downgrade(&shared), fanout_rx));
        tokio::spawn(expire_abandoned(Arc::downgrade(&shared), cfg.limits.clone(), shutdown_rx.clone()));
        let task = tokio::spawn(accept_loop(endpoint, tls, shared, shutdown_rx));
        Ok(ServerHandle {
            addr,
            status_addr: status_bound,
            fingerprint,
            metrics,
            shutdown,
            task,
            status_task,
            db_thread,
        })
    }
}

/// Deletes what was abandoned, at start and then hourly, until shutdown:
/// uploads left unfinished for `unfinished_upload_hours` (their sender no
/// longer resumes them), and envelopes, room entries and finished files
/// older than `envelope_days` (their recipient did not come back, or the
/// sender never announced the file; a room member who was away longer
/// joins the room again). Holds the shared state only while it
/// works, so it never keeps the database open past the server's end.
async fn expire_abandoned(shared: std::sync::Weak<Shared>, limits: Limits, mut shutdown: watch::Receiver<bool>) {
    use pqc_store::server::ServerStore;
    let hours = limits.unfinished_upload_hours;
    let max_age = i64::try_from(hours.saturating_mul(3600)).unwrap_or(i64::MAX);
    let days = limits.envelope_days;
    loop {
        let Some(sh) = shared.upgrade() else { return };
        let now = pqc_store::mailbox::unix_now();
        let before = i64::try_from(now).unwrap_or(i64::MAX).saturating_sub(max_age);
        match sh.db(move |st| st.attachments_expire_unfinished(before)).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(n, hours, "deleted uploads left unfinished for longer than unfinished_upload_hours")
            }
            Err(e) => tracing::error!("storage error expiring unfinished uploads: {e}"),
        }
        if days > 0 {
            let before = now.saturating_sub(days.saturating_mul(86_400));
            match sh.db(move |st| st.expire_envelopes(before)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, days, "deleted messages older than envelope_days that were never fetched"),
                Err(e) => tracing::error!("storage error expiring old messages: {e}"),
            }
            match sh.db(move |st| st.expire_room_entries(before)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, days, "deleted room messages older than envelope_days"),
                Err(e) => tracing::error!("storage error expiring old room messages: {e}"),
            }
            let before = i64::try_from(before).unwrap_or(i64::MAX);
            match sh.db(move |st| st.attachments_expire_finished(before)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(n, days, "deleted files older than envelope_days that were never downloaded"),
                Err(e) => tracing::error!("storage error expiring old files: {e}"),
            }
        }
        drop(sh);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Asks a peer that has not proven its address yet to do so (a QUIC Retry,
/// counted); the connection back when it has, or may not be asked again.
fn retry_unproven(incoming: quinn::Incoming, shared: &Shared) -> Option<quinn::Incoming> {
    if incoming.remote_address_validated() || !incoming.may_retry() {
        return Some(incoming);
    }
    inc(&shared.metrics.address_validations);
    if let Err(e) = incoming.retry() {
        e.into_incoming().ignore();
    }
    None
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    tls: ServerTls,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cap = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            inc_opt = endpoint.accept() => {
                let Some(incoming) = inc_opt else { break };
                // A connection takes its slot at its first packet, whose
                // source address may be forged: once three quarters of the
                // slots are taken, a new peer first proves it receives at
                // its address (a QUIC Retry, one more round trip), so forged
                // packets cannot hold the remaining slots.
                let incoming = if cap.available_permits() <= shared.limits.max_connections / 4 {
                    let Some(incoming) = retry_unproven(incoming, &shared) else { continue };
                    incoming
                } else {
                    incoming
                };
                let Ok(permit) = cap.clone().try_acquire_owned() else {
                    inc(&shared.metrics.refused_connection_cap);
                    tracing::warn!("connection cap reached; refusing a connection");
                    incoming.refuse();
                    continue;
                };
                let ip = incoming.remote_address().ip();
                let Some(pending) = crate::quota::PendingLogins::admit(&shared.pending_logins, ip) else {
                    // Its source may be forged (to lock a victim out): only
                    // an address that proved itself with a Retry is refused.
                    let Some(incoming) = retry_unproven(incoming, &shared) else { continue };
                    inc(&shared.metrics.refused_pending_logins);
                    tracing::warn!(
                        remote = %ip,
                        "refused: {} connections from this address are waiting to log in; refusing another",
                        shared.limits.max_pending_logins_per_address
                    );
                    incoming.refuse();
                    continue;
                };
                next_id += 1;
                let (shared, tls, shutdown) = (shared.clone(), tls.clone(), shutdown.clone());
                let id = next_id;
                tasks.spawn(async move {
                    conn::handle(id, incoming, tls, shared, shutdown, pending).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    tracing::info!("shutting down: closing {} connection(s)", tasks.len());
    endpoint.set_server_config(None);
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    endpoint.close(0u32.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    // `shared` (and with it the database) is dropped here.
}
