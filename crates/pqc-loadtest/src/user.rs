//! One simulated user: its own QUIC connection, a fresh hybrid identity,
//! signed and one-time prekeys uploaded, the secrets kept in memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pqc_crypto::rng::SystemRng;
use pqc_net::{Connection, ServerTrust};
use pqc_proto::{
    IdentityKeyPair, InMemoryPreKeyStore, PreKeyId, generate_one_time_kem_prekeys, generate_one_time_prekeys,
    generate_signed_prekeys,
};
use pqc_wire::{Push, Request, Response, Username};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

use crate::LoadError;

/// A registered, logged-in simulated user.
pub struct SimUser {
    /// Account name.
    pub name: Username,
    /// The connection (shared by the sending and receiving halves).
    pub conn: Arc<Connection>,
    /// Server pushes (new envelope, low prekeys).
    pub pushes: UnboundedReceiver<Push>,
    /// Hybrid identity (Ed25519 + ML-DSA-65, certified X25519).
    pub identity: IdentityKeyPair,
    /// Prekey secrets, for accepting a session.
    pub prekeys: InMemoryPreKeyStore,
}

impl std::fmt::Debug for SimUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimUser({})", self.name)
    }
}

/// Turns a server answer into `Ok(response)` or a [`LoadError::Server`].
pub fn expect_ok(what: &'static str, r: Response) -> Result<Response, LoadError> {
    match r {
        Response::Error { code, message } => Err(LoadError::Server { what, code, message }),
        other => Ok(other),
    }
}

impl SimUser {
    /// Connects to `server`, registers `name` with a fresh identity and, if
    /// `one_time` > 0, uploads signed prekeys plus `one_time` one-time X25519
    /// and ML-KEM prekeys.
    pub async fn register(server: SocketAddr, name: &str, one_time: u32) -> Result<Self, LoadError> {
        let mut rng = SystemRng;
        let name = Username::new(name)?;
        let identity = IdentityKeyPair::generate(&mut rng)?;
        let (mut conn, _fingerprint, _group) = Connection::connect(server, "localhost", ServerTrust::FirstUse).await?;
        conn.set_timeout(Duration::from_secs(60));
        let pushes = conn.take_pushes().ok_or(LoadError::Unexpected("push receiver already taken"))?;
        let ik = identity.identity_key().to_bytes();
        let transcript = pqc_wire::register_transcript(&conn.challenge(), &name, &ik);
        let signature = identity.sign(&transcript, pqc_wire::REGISTER_CONTEXT, &mut rng)?;
        expect_ok(
            "register",
            conn.request(Request::Register { username: name.clone(), identity_key: ik, signature }).await?,
        )?;
        let mut prekeys = InMemoryPreKeyStore::new();
        if one_time > 0 {
            let (secrets, blob) = generate_signed_prekeys(&identity, PreKeyId(1), PreKeyId(2), &mut rng)?;
            prekeys.add_signed_prekeys(secrets);
            let (x_secrets, x_blobs) = generate_one_time_prekeys(&identity, PreKeyId(100), one_time, &mut rng)?;
            prekeys.add_one_time_prekeys(x_secrets);
            let (k_secrets, k_blobs) = generate_one_time_kem_prekeys(&identity, PreKeyId(10_000), one_time, &mut rng)?;
            prekeys.add_one_time_kem_prekeys(k_secrets);
            let wire =
                |v: Vec<(PreKeyId, Vec<u8>)>| v.into_iter().map(|(id, b)| (pqc_wire::PreKeyId(id.0), b)).collect();
            let upload =
                Request::UploadPrekeys { signed_prekeys: blob, one_time: wire(x_blobs), one_time_kem: wire(k_blobs) };
            expect_ok("prekey upload", conn.request(upload).await?)?;
        }
        Ok(Self { name, conn: Arc::new(conn), pushes, identity, prekeys })
    }
}

/// Registers `n` fresh users named `lt<run id>-<i>` (see [`SimUser::register`]),
/// `concurrency` at a time; returned in index order.
pub async fn register_many(
    server: SocketAddr,
    n: usize,
    concurrency: usize,
    one_time: u32,
) -> Result<Vec<SimUser>, LoadError> {
    let rid = run_id();
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let (sem, name) = (sem.clone(), format!("lt{rid}-{i}"));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            (i, SimUser::register(server, &name, one_time).await)
        });
    }
    let mut slots: Vec<Option<SimUser>> = (0..n).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, user) = r.map_err(|e| LoadError::Usage(format!("registration task failed: {e}")))?;
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(user?);
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

/// A short random run id (hex), so each run registers fresh usernames.
pub fn run_id() -> String {
    use pqc_crypto::rng::Rng;
    let mut b = [0u8; 4];
    SystemRng.fill_bytes(&mut b);
    hex::encode(b)
}
