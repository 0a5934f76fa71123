//! The 1:1 session: the asynchronous hybrid handshake ([`Session::initiate`],
//! [`Session::accept`]), the Double Ratchet with the sparse ML-KEM ratchet
//! ([`Session::encrypt`], [`Session::decrypt`]) and the encrypted saved form
//! ([`Session::pickle`], [`Session::from_pickle`]).
//!
//! # Call order
//!
//! Initiator: fetch the peer's blobs, [`crate::PreKeyBundle::from_parts`],
//! [`Session::initiate`], then [`Session::encrypt`] as often as needed (these
//! are prekey messages until a reply is decrypted) and [`Session::decrypt`].
//!
//! Responder: [`crate::WireMessage::decode`]; for a
//! [`crate::WireMessage::PreKey`] with no session yet, look up the sender's
//! [`PeerIdentity`] (contacts, else the server's directory) and call
//! [`Session::accept`] (returns the first plaintext); afterwards everything
//! goes through [`Session::decrypt`], including repeated prekey messages of
//! the same session.
//!
//! # Sparse post-quantum ratchet
//!
//! Every message carries at most one chunk of [`crate::message::PQ_CHUNK_LEN`]
//! bytes of post-quantum data: a piece of the sender's current ML-KEM-768
//! ratchet public key, or a piece of its ciphertext to the peer's newest
//! key. Pieces cycle until the peer shows it has the whole object (so loss
//! and reordering only delay an exchange). The party that reassembles a
//! ciphertext decapsulates and mixes the secret into its next sending
//! chain's root step, naming the key in that chain's headers; the
//! encapsulating party mixes the same secret when it receives that chain.

use std::collections::VecDeque;

use pqc_crypto::aead::{AeadAlgorithm, AeadKey, NONCE_LEN};
use pqc_crypto::kdf::{hkdf_sha256, hmac_sha256, sha256};
use pqc_crypto::ml_kem::{MlKemCiphertext, MlKemPublicKey, MlKemSecretKey};
use pqc_crypto::rng::{CryptoRng, random_array};
use pqc_crypto::x25519::{X25519KeyPair, X25519PublicKey, X25519Secret};
use pqc_crypto::{CryptoError, kdf::ct_eq};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{Reader, put_u16, put_u32, put_vec32};
use crate::error::{ProtoError, Result};
use crate::identity::{IDENTITY_KEY_LEN, IdentityKey, IdentityKeyPair, PeerIdentity};
use crate::message::{
    ChunkKind, KemPreKeyRef, MAX_MESSAGE_LEN, PqChunk, PreKeyFields, PreKeyMessage, RATCHET_KEM_LEVEL, RatchetMessage,
    WireMessage, encode_header, wrap_prekey,
};
use crate::prekey::{PreKeyBundle, PreKeyStore};

/// Most message keys skipped in one chain by one message.
pub const MAX_SKIP: u32 = 1000;
/// Most skipped message keys kept in total (the oldest are dropped first).
pub const MAX_SKIPPED_TOTAL: usize = 2000;
/// Most of our own unanswered ML-KEM ratchet keys kept (the oldest are dropped first).
pub const MAX_OWN_KEM_KEYS: usize = 32;
/// Most KEM secrets we encapsulated and the peer has not mixed in yet.
pub const MAX_ENCAPSULATED: usize = 8;
/// How many retired receiving ratchet keys are remembered (for clear duplicate errors).
pub const MAX_RETIRED: usize = 64;
/// Version byte of a pickled session.
pub const PICKLE_VERSION: u8 = 1;

/// Transcript hash label of the handshake.
pub const LABEL_TRANSCRIPT: &[u8] = b"pqc-chat/v1/pqxdh/transcript";
/// HKDF info of the handshake's session key.
pub const LABEL_PQXDH: &[u8] = b"pqc-chat/v1/pqxdh/root";
/// HKDF info of a root step without a KEM secret.
pub const LABEL_ROOT: &[u8] = b"pqc-chat/v1/ratchet/root";
/// HKDF info of a root step that mixes an ML-KEM secret.
pub const LABEL_ROOT_PQ: &[u8] = b"pqc-chat/v1/ratchet/root+ml-kem";
/// HKDF info of a message key's AEAD key and nonce.
pub const LABEL_MESSAGE: &[u8] = b"pqc-chat/v1/ratchet/message";
/// HKDF info of the pickle key.
pub const LABEL_PICKLE: &[u8] = b"pqc-chat/v1/session-pickle";

const STATE_VERSION: u8 = 2;
const AEAD: AeadAlgorithm = AeadAlgorithm::Aes256Gcm;

/// A 32-byte secret (root, chain or message key). No `Debug`; wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Key32([u8; 32]);

#[derive(Clone)]
struct Chain {
    ck: Key32,
    n: u32,
}

/// An ML-KEM public key or ciphertext we stream to the peer, one chunk per
/// message, cycling until the peer shows it has the whole object.
#[derive(Clone)]
struct Outgoing {
    /// Key id (of our key, or, for a ciphertext, of the peer's key).
    id: u32,
    bytes: Vec<u8>,
    /// The chunk the next message carries.
    next: usize,
}

impl Outgoing {
    fn next_chunk(&mut self, kind: ChunkKind) -> Option<PqChunk> {
        let count = kind.count().max(1);
        let index = self.next % count;
        self.next = (index + 1) % count;
        let data = self.bytes.get(kind.range(index)?)?.to_vec();
        Some(PqChunk { kind, id: self.id, index: u8::try_from(index).ok()?, data })
    }
}

/// An ML-KEM public key or ciphertext being reassembled from the peer's chunks.
#[derive(Clone)]
struct Incoming {
    id: u32,
    bytes: Vec<u8>,
    /// Bit `i` set: chunk `i` arrived.
    have: u64,
}

impl Incoming {
    fn new(id: u32, kind: ChunkKind) -> Self {
        Self { id, bytes: vec![0; kind.total_len()], have: 0 }
    }

    /// Adds `c` to the object being reassembled in `slot` (a newer id starts
    /// over, an older one is ignored); returns the object once complete.
    fn reassemble(slot: &mut Option<Self>, c: &PqChunk) -> Option<Self> {
        let assembly = match &mut *slot {
            Some(a) if a.id == c.id => a,
            Some(a) if a.id > c.id => return None,
            empty => empty.insert(Self::new(c.id, c.kind)),
        };
        if assembly.add(c) { slot.take() } else { None }
    }

    /// Stores a chunk; returns whether the object is complete.
    fn add(&mut self, c: &PqChunk) -> bool {
        let index = usize::from(c.index);
        if let Some(dst) = c.kind.range(index).and_then(|r| self.bytes.get_mut(r))
            && dst.len() == c.data.len()
        {
            dst.copy_from_slice(&c.data);
            self.have |= 1u64 << (index % 64);
        }
        let count = c.kind.count();
        let all = if count >= 64 { u64::MAX } else { (1u64 << count) - 1 };
        self.have & all == all
    }
}

#[derive(Clone)]
struct Skipped {
    dh: [u8; 32],
    n: u32,
    mk: Key32,
}

/// State of the sparse post-quantum ratchet (see the module docs).
struct PqRatchet {
    /// Our ratchet keys' secrets, oldest first, until answered.
    own_kem: VecDeque<(u32, MlKemSecretKey)>,
    next_kem_id: u32,
    /// Our newest ratchet public key, streamed until the peer answers it.
    kem_out: Option<Outgoing>,
    /// The peer's ratchet key being reassembled.
    pk_in: Option<Incoming>,
    /// The peer's newest complete ratchet key, not yet encapsulated to.
    peer_kem: Option<(u32, MlKemPublicKey)>,
    /// Highest peer key id completed (older chunks are ignored).
    peer_kem_max: u32,
    /// Our ciphertext to the peer's key, streamed until the peer mixes its secret in.
    ct_out: Option<Outgoing>,
    /// Secrets we encapsulated, by the peer's key id, until the peer mixes them in.
    encapsulated: VecDeque<(u32, Key32)>,
    /// The peer's ciphertext to one of our keys being reassembled.
    ct_in: Option<Incoming>,
    /// A decapsulated secret for our next sending chain's root step.
    pending_mix: Option<(u32, Key32)>,
    /// Highest own key id whose ciphertext was completed (older chunks are ignored).
    mixed_max: u32,
    /// Root steps that mixed in a post-quantum secret, both directions.
    pq_steps: u64,
}

impl PqRatchet {
    fn new() -> Self {
        Self {
            own_kem: VecDeque::new(),
            next_kem_id: 1,
            kem_out: None,
            pk_in: None,
            peer_kem: None,
            peer_kem_max: 0,
            ct_out: None,
            encapsulated: VecDeque::new(),
            ct_in: None,
            pending_mix: None,
            mixed_max: 0,
            pq_steps: 0,
        }
    }
}

/// An established (or half-established) 1:1 session with one peer device.
/// No `Debug`, no `Clone`: save it with [`Session::pickle`].
pub struct Session {
    /// Transcript hash of the handshake, bound into every message's AEAD.
    ad: [u8; 32],
    /// SHA-256 of the prekey message prefix that created this session.
    handshake_id: [u8; 32],
    remote: IdentityKey,
    root: Key32,
    dhs: X25519KeyPair,
    dhr: Option<X25519PublicKey>,
    send: Option<Chain>,
    /// Id of our ratchet key whose KEM secret the current sending chain mixed in.
    send_mixed: Option<u32>,
    pn: u32,
    recv: Option<Chain>,
    pending_prekey: Option<Vec<u8>>,
    /// The sparse post-quantum ratchet.
    pq: PqRatchet,
    skipped: VecDeque<Skipped>,
    retired: VecDeque<[u8; 32]>,
    /// Every root step's inputs, for the post-compromise test's attacker model.
    #[cfg(test)]
    root_log: Vec<tests::RootStep>,
}

fn kdf_rk(rk: &Key32, dh: &[u8; 32], kem: Option<&[u8; 32]>) -> Result<(Key32, Key32)> {
    let out: Zeroizing<[u8; 64]> = match kem {
        None => hkdf_sha256(&rk.0, dh, &[LABEL_ROOT])?,
        Some(ss) => {
            let mut ikm = Zeroizing::new([0u8; 64]);
            ikm[..32].copy_from_slice(dh);
            ikm[32..].copy_from_slice(ss);
            hkdf_sha256(&rk.0, ikm.as_ref(), &[LABEL_ROOT_PQ])?
        }
    };
    let mut a = Key32([0; 32]);
    let mut b = Key32([0; 32]);
    a.0.copy_from_slice(&out[..32]);
    b.0.copy_from_slice(&out[32..]);
    Ok((a, b))
}

/// `(message key, next chain key)`.
fn chain_step(ck: &Key32) -> (Key32, Key32) {
    (Key32(*hmac_sha256(&ck.0, &[&[0x01]])), Key32(*hmac_sha256(&ck.0, &[&[0x02]])))
}

fn message_cipher(mk: &Key32) -> Result<(AeadKey, [u8; NONCE_LEN])> {
    let okm: Zeroizing<[u8; 44]> = hkdf_sha256(&[], &mk.0, &[LABEL_MESSAGE])?;
    let key = AeadKey::new(AEAD, &okm[..32])?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&okm[32..]);
    Ok((key, nonce))
}

fn open(mk: &Key32, ad: &[u8; 32], msg: &RatchetMessage) -> Result<Vec<u8>> {
    let (key, nonce) = message_cipher(mk)?;
    let mut aad = Vec::with_capacity(32 + msg.header_bytes.len());
    aad.extend_from_slice(ad);
    aad.extend_from_slice(&msg.header_bytes);
    key.open(&nonce, &aad, &msg.ciphertext).map_err(|_| ProtoError::DecryptionFailed)
}

fn transcript(
    prefix: &[u8],
    initiator: &PeerIdentity,
    responder: &IdentityKey,
    responder_dh: &X25519PublicKey,
    spk: &X25519PublicKey,
    kem: &MlKemPublicKey,
    one_time: Option<&X25519PublicKey>,
) -> [u8; 32] {
    let (ik_a, ik_b) = (initiator.identity_key().to_bytes(), responder.to_bytes());
    let opk: &[u8] = one_time.map(|k| k.as_bytes().as_slice()).unwrap_or(&[]);
    sha256(&[
        LABEL_TRANSCRIPT,
        prefix,
        &ik_a,
        initiator.identity_dh().as_bytes(),
        &ik_b,
        responder_dh.as_bytes(),
        spk.as_bytes(),
        kem.as_bytes(),
        opk,
    ])
}

fn session_key(th: &[u8; 32], dhs: &[&[u8; 32]], kem_ss: &[u8; 32]) -> Result<Key32> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (dhs.len() + 2)));
    ikm.extend_from_slice(&[0xff; 32]);
    for dh in dhs {
        ikm.extend_from_slice(dh.as_slice());
    }
    ikm.extend_from_slice(kem_ss);
    let sk: Zeroizing<[u8; 32]> = hkdf_sha256(th, &ikm, &[LABEL_PQXDH])?;
    Ok(Key32(*sk))
}

impl Session {
    /// Starts a session as initiator with a verified bundle. Encapsulates to
    /// the one-time ML-KEM prekey if the bundle has one, else to the
    /// last-resort one; uses the one-time X25519 prekey if present.
    pub fn initiate<R: CryptoRng + ?Sized>(
        identity: &IdentityKeyPair,
        bundle: &PreKeyBundle,
        rng: &mut R,
    ) -> Result<Self> {
        let ek = X25519KeyPair::generate(rng)?;
        let (kem_ref, kem_pk) = match &bundle.one_time_kem {
            Some((id, pk)) => (KemPreKeyRef::OneTime(*id), pk),
            None => (KemPreKeyRef::LastResort(bundle.kem_id), &bundle.kem),
        };
        let (kem_ct, kem_ss) = kem_pk.encapsulate(rng)?;
        let dh1 = identity.identity_dh_secret().diffie_hellman(&bundle.spk)?;
        let dh2 = ek.secret.diffie_hellman(&bundle.identity_dh)?;
        let dh3 = ek.secret.diffie_hellman(&bundle.spk)?;
        let dh4 = match &bundle.one_time {
            Some((_, opk)) => Some(ek.secret.diffie_hellman(opk)?),
            None => None,
        };
        let me = identity.peer_identity();
        let prefix = PreKeyFields {
            initiator: me.fingerprint(),
            ek: &ek.public,
            spk_id: bundle.spk_id,
            kem: kem_ref,
            one_time: bundle.one_time.as_ref().map(|(id, _)| *id),
            kem_ct: &kem_ct,
        }
        .encode();
        let th = transcript(
            &prefix,
            &me,
            &bundle.identity,
            &bundle.identity_dh,
            &bundle.spk,
            kem_pk,
            bundle.one_time.as_ref().map(|(_, k)| k),
        );
        let mut dhs: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
        if let Some(dh4) = &dh4 {
            dhs.push(dh4);
        }
        let sk = session_key(&th, &dhs, &kem_ss)?;
        let ratchet = X25519KeyPair::generate(rng)?;
        let dh = ratchet.secret.diffie_hellman(&bundle.spk)?;
        let (root, ck) = kdf_rk(&sk, &dh, None)?;
        Ok(Self {
            ad: th,
            handshake_id: sha256(&[&prefix]),
            remote: bundle.identity.clone(),
            root,
            dhs: ratchet,
            dhr: Some(bundle.spk),
            send: Some(Chain { ck, n: 0 }),
            send_mixed: None,
            pn: 0,
            recv: None,
            pending_prekey: Some(prefix),
            pq: PqRatchet::new(),
            skipped: VecDeque::new(),
            retired: VecDeque::new(),
            #[cfg(test)]
            root_log: Vec::new(),
        })
    }

    /// Accepts a prekey message as responder. `initiator` is the identity the
    /// caller trusts for the message's sender (pinned in its contacts, or
    /// fetched from the server's directory with [`PeerIdentity::from_parts`]);
    /// the message must name it ([`PreKeyMessage::initiator_fingerprint`]),
    /// else [`ProtoError::WrongInitiator`]. Finds the prekey secrets in
    /// `store`, derives the session and decrypts the first message. Only when
    /// that message authenticates are the one-time prekeys removed from
    /// `store`, so each starts exactly one session; a second prekey message
    /// naming them fails with [`ProtoError::OneTimePreKeyUnavailable`].
    pub fn accept<S: PreKeyStore + ?Sized>(
        identity: &IdentityKeyPair,
        store: &mut S,
        msg: &PreKeyMessage,
        initiator: &PeerIdentity,
    ) -> Result<(Self, Vec<u8>)> {
        if !ct_eq(&initiator.fingerprint(), &msg.initiator) {
            return Err(ProtoError::WrongInitiator);
        }
        let secrets = store
            .signed_prekeys(msg.spk_id)
            .ok_or(ProtoError::UnknownPreKey { kind: "signed prekey", id: msg.spk_id })?;
        let (kem_sk, one_time_kem) = match msg.kem {
            KemPreKeyRef::OneTime(id) => (
                store
                    .one_time_kem_prekey(id)
                    .ok_or(ProtoError::OneTimePreKeyUnavailable { kind: "ML-KEM prekey", id })?,
                Some(id),
            ),
            KemPreKeyRef::LastResort(id) => {
                if id != secrets.kem_id {
                    return Err(ProtoError::UnknownPreKey { kind: "last-resort ML-KEM prekey", id });
                }
                (secrets.kem.clone(), None)
            }
        };
        let opk = match msg.one_time {
            Some(id) => Some((
                id,
                store.one_time_prekey(id).ok_or(ProtoError::OneTimePreKeyUnavailable { kind: "X25519 prekey", id })?,
            )),
            None => None,
        };
        let kem_ss = kem_sk.decapsulate(&msg.kem_ct)?;
        let dh1 = secrets.spk.diffie_hellman(initiator.identity_dh())?;
        let dh2 = identity.identity_dh_secret().diffie_hellman(&msg.ek)?;
        let dh3 = secrets.spk.diffie_hellman(&msg.ek)?;
        let (dh4, opk_pub) = match &opk {
            Some((_, sk)) => (Some(sk.diffie_hellman(&msg.ek)?), Some(sk.public_key()?)),
            None => (None, None),
        };
        let spk = X25519KeyPair::from_secret(secrets.spk.clone())?;
        let th = transcript(
            &msg.prefix,
            initiator,
            identity.identity_key(),
            identity.identity_dh_public(),
            &spk.public,
            &kem_sk.public_key()?,
            opk_pub.as_ref(),
        );
        let mut dhs: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
        if let Some(dh4) = &dh4 {
            dhs.push(dh4);
        }
        let root = session_key(&th, &dhs, &kem_ss)?;
        let mut session = Self {
            ad: th,
            handshake_id: sha256(&[&msg.prefix]),
            remote: initiator.identity_key().clone(),
            root,
            dhs: spk,
            dhr: None,
            send: None,
            send_mixed: None,
            pn: 0,
            recv: None,
            pending_prekey: None,
            pq: PqRatchet::new(),
            skipped: VecDeque::new(),
            retired: VecDeque::new(),
            #[cfg(test)]
            root_log: Vec::new(),
        };
        let plaintext = session.decrypt_message(&msg.message)?;
        if let Some((id, _)) = opk {
            store.remove_one_time_prekey(id);
        }
        if let Some(id) = one_time_kem {
            store.remove_one_time_kem_prekey(id);
        }
        Ok((session, plaintext))
    }

    /// The peer's identity key.
    pub fn remote_identity(&self) -> &IdentityKey {
        &self.remote
    }

    /// True while this (initiating) session still wraps its messages in
    /// prekey messages, i.e. until it has decrypted a reply.
    pub fn awaiting_reply(&self) -> bool {
        self.pending_prekey.is_some()
    }

    /// How many root-key steps of this session mixed in a fresh post-quantum
    /// (ML-KEM-768) secret so far, both directions counted: each one heals
    /// the session against an attacker who had copied its state before.
    pub fn pq_ratchet_steps(&self) -> u64 {
        self.pq.pq_steps
    }

    /// A 32-byte value both sides of this session share (the handshake
    /// transcript hash); not secret, useful to tell sessions apart.
    pub fn session_id(&self) -> [u8; 32] {
        self.ad
    }

    fn start_sending_chain<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<()> {
        let dhr = self.dhr.ok_or(ProtoError::malformed("session", "no peer ratchet key yet"))?;
        let next = X25519KeyPair::generate(rng)?;
        let dh = next.secret.diffie_hellman(&dhr)?;
        let (root, ck) = kdf_rk(&self.root, &dh, self.pq.pending_mix.as_ref().map(|(_, ss)| &ss.0))?;
        #[cfg(test)]
        self.root_log
            .push(tests::RootStep { dh: *dh, kem: self.pq.pending_mix.as_ref().map(|(id, ss)| (*id, ss.0, true)) });
        self.send_mixed = self.pq.pending_mix.take().map(|(id, _)| id);
        self.pq.pq_steps += u64::from(self.send_mixed.is_some());
        self.root = root;
        self.dhs = next;
        self.send = Some(Chain { ck, n: 0 });
        Ok(())
    }

    /// The post-quantum chunk the next message carries: a piece of our
    /// ciphertext to the peer's newest key while the peer has not mixed its
    /// secret in, else a piece of our newest ratchet key (a fresh key once
    /// the peer has answered the previous one).
    fn next_pq_chunk<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<Option<PqChunk>> {
        if self.pq.ct_out.is_none()
            && let Some((id, pk)) = self.pq.peer_kem.take()
        {
            let (ct, ss) = pk.encapsulate(rng)?;
            self.pq.encapsulated.push_back((id, Key32(*ss)));
            while self.pq.encapsulated.len() > MAX_ENCAPSULATED {
                self.pq.encapsulated.pop_front();
            }
            self.pq.ct_out = Some(Outgoing { id, bytes: ct.as_bytes().to_vec(), next: 0 });
        }
        if let Some(out) = &mut self.pq.ct_out {
            return Ok(out.next_chunk(ChunkKind::Ciphertext));
        }
        if self.pq.kem_out.is_none() {
            let (sk, pk) = MlKemSecretKey::generate(RATCHET_KEM_LEVEL, rng)?;
            let id = self.pq.next_kem_id;
            self.pq.next_kem_id = id.checked_add(1).ok_or(ProtoError::CounterExhausted)?;
            self.pq.own_kem.push_back((id, sk));
            while self.pq.own_kem.len() > MAX_OWN_KEM_KEYS {
                self.pq.own_kem.pop_front();
            }
            self.pq.kem_out = Some(Outgoing { id, bytes: pk.as_bytes().to_vec(), next: 0 });
        }
        Ok(self.pq.kem_out.as_mut().and_then(|o| o.next_chunk(ChunkKind::PublicKey)))
    }

    /// Encrypts `plaintext` into wire bytes (a prekey message while
    /// [`Self::awaiting_reply`], else a ratchet message).
    pub fn encrypt<R: CryptoRng + ?Sized>(&mut self, plaintext: &[u8], rng: &mut R) -> Result<Vec<u8>> {
        if self.send.is_none() {
            self.start_sending_chain(rng)?;
        }
        let (n, ck) = match &self.send {
            Some(c) => (c.n, c.ck.clone()),
            None => return Err(ProtoError::malformed("session", "no sending chain")),
        };
        let next_n = n.checked_add(1).ok_or(ProtoError::CounterExhausted)?;
        let chunk = self.next_pq_chunk(rng)?;
        let mut out = Vec::with_capacity(112 + plaintext.len());
        encode_header(&mut out, &self.dhs.public, self.pn, n, self.send_mixed, chunk.as_ref());
        let (mk, next_ck) = chain_step(&ck);
        let (key, nonce) = message_cipher(&mk)?;
        let mut aad = Vec::with_capacity(32 + out.len());
        aad.extend_from_slice(&self.ad);
        aad.extend_from_slice(&out);
        let ct = key.seal(&nonce, &aad, plaintext)?;
        out.extend_from_slice(&ct);
        self.send = Some(Chain { ck: next_ck, n: next_n });
        match &self.pending_prekey {
            Some(prefix) => wrap_prekey(prefix, &out),
            None => Ok(out),
        }
    }

    /// Decrypts wire bytes from the peer. Accepts ratchet messages and, on the
    /// responder, repeated prekey messages of this same session. Out-of-order
    /// messages are decrypted with skipped keys (bounded by [`MAX_SKIP`] and
    /// [`MAX_SKIPPED_TOTAL`]); duplicates fail with
    /// [`ProtoError::DuplicateMessage`], altered messages with
    /// [`ProtoError::DecryptionFailed`]. A failed call leaves the session unchanged.
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        match WireMessage::decode(bytes)? {
            WireMessage::Normal(m) => self.decrypt_message(&m),
            WireMessage::PreKey(p) => {
                if !ct_eq(&sha256(&[&p.prefix]), &self.handshake_id) || self.pending_prekey.is_some() {
                    return Err(ProtoError::WrongSession);
                }
                self.decrypt_message(&p.message)
            }
        }
    }

    /// Bookkeeping after a message authenticated: the post-quantum chunk it
    /// carries is taken in only now, so forged chunks are never stored.
    fn after_receive(&mut self, msg: &RatchetMessage) {
        self.pending_prekey = None;
        match &msg.header.chunk {
            Some(c) if c.kind == ChunkKind::PublicKey => self.receive_key_chunk(c),
            Some(c) => self.receive_ciphertext_chunk(c),
            None => {}
        }
    }

    fn receive_key_chunk(&mut self, c: &PqChunk) {
        if c.id <= self.pq.peer_kem_max {
            return;
        }
        let Some(done) = Incoming::reassemble(&mut self.pq.pk_in, c) else { return };
        self.pq.peer_kem_max = c.id;
        // A key that does not parse came from a broken peer (it authenticated): skip it.
        if let Ok(pk) = MlKemPublicKey::from_bytes(RATCHET_KEM_LEVEL, &done.bytes) {
            self.pq.peer_kem = Some((c.id, pk));
        }
    }

    fn receive_ciphertext_chunk(&mut self, c: &PqChunk) {
        // The peer answers our key: it has all of it, the next message may carry a fresh one.
        if self.pq.kem_out.as_ref().is_some_and(|o| o.id <= c.id) {
            self.pq.kem_out = None;
        }
        if c.id <= self.pq.mixed_max || !self.pq.own_kem.iter().any(|(id, _)| *id == c.id) {
            return;
        }
        let Some(done) = Incoming::reassemble(&mut self.pq.ct_in, c) else { return };
        self.pq.mixed_max = c.id;
        let ct = MlKemCiphertext::from_bytes(RATCHET_KEM_LEVEL, &done.bytes).ok();
        let sk = self.pq.own_kem.iter().find(|(id, _)| *id == c.id).map(|(_, sk)| sk);
        // A ciphertext that does not parse or decapsulate came from a broken peer: skip it.
        let ss = match (ct, sk) {
            (Some(ct), Some(sk)) => sk.decapsulate(&ct).ok(),
            _ => None,
        };
        self.pq.own_kem.retain(|(id, _)| *id > c.id);
        if let Some(ss) = ss {
            self.pq.pending_mix = Some((c.id, Key32(*ss)));
        }
    }

    fn push_skipped(&mut self, new: Vec<Skipped>) {
        self.skipped.extend(new);
        while self.skipped.len() > MAX_SKIPPED_TOTAL {
            self.skipped.pop_front();
        }
    }

    fn decrypt_message(&mut self, msg: &RatchetMessage) -> Result<Vec<u8>> {
        let h = &msg.header;
        let dh = *h.dh.as_bytes();
        if let Some(pos) = self.skipped.iter().position(|s| s.n == h.n && ct_eq(&s.dh, &dh)) {
            let mk = self.skipped.get(pos).map(|s| s.mk.clone()).ok_or(ProtoError::DecryptionFailed)?;
            let pt = open(&mk, &self.ad, msg)?;
            self.skipped.remove(pos);
            self.after_receive(msg);
            return Ok(pt);
        }
        let same_chain = self.dhr.as_ref().is_some_and(|r| r.as_bytes() == &dh);
        if same_chain && let Some(recv) = &self.recv {
            if h.n < recv.n {
                return Err(ProtoError::DuplicateMessage);
            }
            let gap = h.n - recv.n;
            if gap > MAX_SKIP {
                return Err(ProtoError::TooManySkipped { requested: gap.into(), limit: MAX_SKIP });
            }
            let mut skipped = Vec::new();
            let mut ck = recv.ck.clone();
            for i in recv.n..h.n {
                let (mk, next) = chain_step(&ck);
                skipped.push(Skipped { dh, n: i, mk });
                ck = next;
            }
            let (mk, next) = chain_step(&ck);
            let pt = open(&mk, &self.ad, msg)?;
            let next_n = h.n.checked_add(1).ok_or(ProtoError::CounterExhausted)?;
            self.recv = Some(Chain { ck: next, n: next_n });
            self.push_skipped(skipped);
            self.after_receive(msg);
            return Ok(pt);
        }
        if same_chain || self.retired.iter().any(|r| ct_eq(r, &dh)) {
            // A chain we already left (or our own initial prekey, echoed back).
            return Err(ProtoError::DuplicateMessage);
        }
        // A new ratchet key: finish the current receiving chain up to `pn`,
        // then step the root (mixing the KEM secret if the header carries one).
        let mut skipped = Vec::new();
        if let (Some(old), Some(recv)) = (&self.dhr, &self.recv)
            && h.pn > recv.n
        {
            {
                let gap = h.pn - recv.n;
                if gap > MAX_SKIP {
                    return Err(ProtoError::TooManySkipped { requested: gap.into(), limit: MAX_SKIP });
                }
                let mut ck = recv.ck.clone();
                for i in recv.n..h.pn {
                    let (mk, next) = chain_step(&ck);
                    skipped.push(Skipped { dh: *old.as_bytes(), n: i, mk });
                    ck = next;
                }
            }
        }
        if h.n > MAX_SKIP {
            return Err(ProtoError::TooManySkipped { requested: h.n.into(), limit: MAX_SKIP });
        }
        let kem_ss = match h.mixed {
            Some(id) => {
                let ss = self
                    .pq
                    .encapsulated
                    .iter()
                    .find(|(k, _)| *k == id)
                    .map(|(_, ss)| ss.clone())
                    .ok_or(ProtoError::UnknownRatchetSecret(id))?;
                Some((id, ss))
            }
            None => None,
        };
        let dh_out = self.dhs.secret.diffie_hellman(&h.dh).map_err(|e| match e {
            CryptoError::WeakKeyAgreement => ProtoError::DecryptionFailed,
            e => e.into(),
        })?;
        let (root, mut ck) = kdf_rk(&self.root, &dh_out, kem_ss.as_ref().map(|(_, ss)| &ss.0))?;
        for i in 0..h.n {
            let (mk, next) = chain_step(&ck);
            skipped.push(Skipped { dh, n: i, mk });
            ck = next;
        }
        let (mk, next) = chain_step(&ck);
        let pt = open(&mk, &self.ad, msg)?;
        // Commit.
        let next_n = h.n.checked_add(1).ok_or(ProtoError::CounterExhausted)?;
        if let Some(old) = self.dhr.replace(h.dh) {
            self.retired.push_back(*old.as_bytes());
            while self.retired.len() > MAX_RETIRED {
                self.retired.pop_front();
            }
        }
        #[cfg(test)]
        self.root_log.push(tests::RootStep { dh: *dh_out, kem: kem_ss.as_ref().map(|(id, ss)| (*id, ss.0, false)) });
        self.pq.pq_steps += u64::from(kem_ss.is_some());
        self.root = root;
        self.recv = Some(Chain { ck: next, n: next_n });
        if let Some(c) = self.send.take() {
            self.pn = c.n;
        }
        if let Some((id, _)) = kem_ss {
            // The peer has this secret: stop streaming its ciphertext, forget it.
            self.pq.encapsulated.retain(|(k, _)| *k > id);
            if self.pq.ct_out.as_ref().is_some_and(|o| o.id <= id) {
                self.pq.ct_out = None;
            }
        }
        self.push_skipped(skipped);
        self.after_receive(msg);
        Ok(pt)
    }

    /// Saves the session, encrypted with AES-256-GCM under a key derived from
    /// `key` (see `docs/PROTOCOL.md`, "Pickled session").
    pub fn pickle<R: CryptoRng + ?Sized>(&self, key: &[u8; 32], rng: &mut R) -> Result<Vec<u8>> {
        let state = self.encode_state()?;
        let nonce: [u8; NONCE_LEN] = random_array(rng);
        let k = pickle_key(key)?;
        let ct = k.seal(&nonce, &pickle_aad(), &state)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(PICKLE_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Restores a session saved by [`Self::pickle`].
    pub fn from_pickle(bytes: &[u8], key: &[u8; 32]) -> Result<Self> {
        let mut r = Reader::new("pickled session", bytes);
        r.version(PICKLE_VERSION)?;
        let nonce = r.bytes(NONCE_LEN)?;
        let ct = r.rest();
        let k = pickle_key(key)?;
        let state = Zeroizing::new(k.open(nonce, &pickle_aad(), ct).map_err(|_| ProtoError::PickleDecryptionFailed)?);
        Self::decode_state(&state)
    }

    pub(crate) fn encode_state(&self) -> Result<Zeroizing<Vec<u8>>> {
        let mut o = Zeroizing::new(Vec::with_capacity(4096));
        o.push(STATE_VERSION);
        o.extend_from_slice(&self.ad);
        o.extend_from_slice(&self.handshake_id);
        o.extend_from_slice(&self.remote.to_bytes());
        o.extend_from_slice(&self.root.0);
        o.extend_from_slice(self.dhs.secret.to_bytes().as_ref());
        put_opt(&mut o, self.dhr.as_ref(), |o, k| o.extend_from_slice(k.as_bytes()));
        put_opt(&mut o, self.send.as_ref(), put_chain);
        put_opt(&mut o, self.send_mixed.as_ref(), |o, id| put_u32(o, *id));
        put_u32(&mut o, self.pn);
        put_opt(&mut o, self.recv.as_ref(), put_chain);
        o.push(u8::from(self.pending_prekey.is_some()));
        if let Some(p) = &self.pending_prekey {
            put_vec32(&mut o, p)?;
        }
        put_u32(&mut o, self.pq.next_kem_id);
        put_len(&mut o, self.pq.own_kem.len())?;
        for (id, sk) in &self.pq.own_kem {
            put_u32(&mut o, *id);
            o.extend_from_slice(sk.as_bytes());
        }
        put_opt(&mut o, self.pq.kem_out.as_ref(), put_outgoing);
        put_opt(&mut o, self.pq.pk_in.as_ref(), put_incoming);
        put_opt(&mut o, self.pq.peer_kem.as_ref(), |o, (id, pk)| {
            put_u32(o, *id);
            o.extend_from_slice(pk.as_bytes());
        });
        put_u32(&mut o, self.pq.peer_kem_max);
        put_opt(&mut o, self.pq.ct_out.as_ref(), put_outgoing);
        put_len(&mut o, self.pq.encapsulated.len())?;
        for (id, ss) in &self.pq.encapsulated {
            put_u32(&mut o, *id);
            o.extend_from_slice(&ss.0);
        }
        put_opt(&mut o, self.pq.ct_in.as_ref(), put_incoming);
        put_opt(&mut o, self.pq.pending_mix.as_ref(), |o, (id, ss)| {
            put_u32(o, *id);
            o.extend_from_slice(&ss.0);
        });
        put_u32(&mut o, self.pq.mixed_max);
        o.extend_from_slice(&self.pq.pq_steps.to_be_bytes());
        put_len(&mut o, self.skipped.len())?;
        for s in &self.skipped {
            o.extend_from_slice(&s.dh);
            put_u32(&mut o, s.n);
            o.extend_from_slice(&s.mk.0);
        }
        put_len(&mut o, self.retired.len())?;
        for r in &self.retired {
            o.extend_from_slice(r);
        }
        Ok(o)
    }

    /// Decodes the plaintext state inside a pickle (exposed for fuzzing).
    pub(crate) fn decode_state(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new("session state", bytes);
        r.version(STATE_VERSION)?;
        let ad = r.array()?;
        let handshake_id = r.array()?;
        let remote = IdentityKey::from_bytes(r.bytes(IDENTITY_KEY_LEN)?)?;
        let root = Key32(r.array()?);
        let dhs = X25519KeyPair::from_secret(X25519Secret::from_bytes(r.bytes(32)?)?)?;
        let dhr = if r.flag()? { Some(X25519PublicKey::from_bytes(r.bytes(32)?)?) } else { None };
        let send = if r.flag()? { Some(get_chain(&mut r)?) } else { None };
        let send_mixed = if r.flag()? { Some(r.u32()?) } else { None };
        let pn = r.u32()?;
        let recv = if r.flag()? { Some(get_chain(&mut r)?) } else { None };
        let pending_prekey = if r.flag()? { Some(r.vec32(MAX_MESSAGE_LEN)?.to_vec()) } else { None };
        let next_kem_id = r.u32()?;
        let n_own = get_len(&mut r, MAX_OWN_KEM_KEYS)?;
        let mut own_kem = VecDeque::with_capacity(n_own);
        for _ in 0..n_own {
            let id = r.u32()?;
            own_kem.push_back((
                id,
                MlKemSecretKey::from_bytes(RATCHET_KEM_LEVEL, r.bytes(RATCHET_KEM_LEVEL.secret_key_len())?)?,
            ));
        }
        let kem_out = if r.flag()? { Some(get_outgoing(&mut r, ChunkKind::PublicKey)?) } else { None };
        let pk_in = if r.flag()? { Some(get_incoming(&mut r, ChunkKind::PublicKey)?) } else { None };
        let peer_kem = if r.flag()? {
            let id = r.u32()?;
            Some((id, MlKemPublicKey::from_bytes(RATCHET_KEM_LEVEL, r.bytes(RATCHET_KEM_LEVEL.public_key_len())?)?))
        } else {
            None
        };
        let peer_kem_max = r.u32()?;
        let ct_out = if r.flag()? { Some(get_outgoing(&mut r, ChunkKind::Ciphertext)?) } else { None };
        let n_enc = get_len(&mut r, MAX_ENCAPSULATED)?;
        let mut encapsulated = VecDeque::with_capacity(n_enc);
        for _ in 0..n_enc {
            encapsulated.push_back((r.u32()?, Key32(r.array()?)));
        }
        let ct_in = if r.flag()? { Some(get_incoming(&mut r, ChunkKind::Ciphertext)?) } else { None };
        let pending_mix = if r.flag()? { Some((r.u32()?, Key32(r.array()?))) } else { None };
        let mixed_max = r.u32()?;
        let pq_steps = u64::from_be_bytes(r.array()?);
        let n_skipped = get_len(&mut r, MAX_SKIPPED_TOTAL)?;
        let mut skipped = VecDeque::with_capacity(n_skipped);
        for _ in 0..n_skipped {
            skipped.push_back(Skipped { dh: r.array()?, n: r.u32()?, mk: Key32(r.array()?) });
        }
        let n_retired = get_len(&mut r, MAX_RETIRED)?;
        let mut retired = VecDeque::with_capacity(n_retired);
        for _ in 0..n_retired {
            retired.push_back(r.array()?);
        }
        r.finish()?;
        Ok(Self {
            ad,
            handshake_id,
            remote,
            root,
            dhs,
            dhr,
            send,
            send_mixed,
            pn,
            recv,
            pending_prekey,
            pq: PqRatchet {
                own_kem,
                next_kem_id,
                kem_out,
                pk_in,
                peer_kem,
                peer_kem_max,
                ct_out,
                encapsulated,
                ct_in,
                pending_mix,
                mixed_max,
                pq_steps,
            },
            skipped,
            retired,
            #[cfg(test)]
            root_log: Vec::new(),
        })
    }
}

fn pickle_key(key: &[u8; 32]) -> Result<AeadKey> {
    let k: Zeroizing<[u8; 32]> = hkdf_sha256(&[], key, &[LABEL_PICKLE])?;
    Ok(AeadKey::new(AEAD, k.as_ref())?)
}

fn pickle_aad() -> Vec<u8> {
    let mut aad = vec![PICKLE_VERSION];
    aad.extend_from_slice(LABEL_PICKLE);
    aad
}

fn put_opt<T>(o: &mut Vec<u8>, v: Option<&T>, f: impl FnOnce(&mut Vec<u8>, &T)) {
    match v {
        Some(v) => {
            o.push(1);
            f(o, v);
        }
        None => o.push(0),
    }
}

fn put_chain(o: &mut Vec<u8>, c: &Chain) {
    o.extend_from_slice(&c.ck.0);
    put_u32(o, c.n);
}

fn get_chain(r: &mut Reader<'_>) -> Result<Chain> {
    Ok(Chain { ck: Key32(r.array()?), n: r.u32()? })
}

/// `id || next chunk (u8) || object`, the object's length fixed by its kind.
fn put_outgoing(o: &mut Vec<u8>, out: &Outgoing) {
    put_u32(o, out.id);
    o.push(u8::try_from(out.next).unwrap_or(0));
    o.extend_from_slice(&out.bytes);
}

fn get_outgoing(r: &mut Reader<'_>, kind: ChunkKind) -> Result<Outgoing> {
    let id = r.u32()?;
    let next = usize::from(r.u8()?);
    if next >= kind.count() {
        return Err(ProtoError::malformed("session state", "chunk index out of range"));
    }
    Ok(Outgoing { id, next, bytes: r.bytes(kind.total_len())?.to_vec() })
}

/// `id || received-chunks bitmap (u64) || object so far`.
fn put_incoming(o: &mut Vec<u8>, inc: &Incoming) {
    put_u32(o, inc.id);
    o.extend_from_slice(&inc.have.to_be_bytes());
    o.extend_from_slice(&inc.bytes);
}

fn get_incoming(r: &mut Reader<'_>, kind: ChunkKind) -> Result<Incoming> {
    let id = r.u32()?;
    let have = u64::from_be_bytes(r.array()?);
    Ok(Incoming { id, have, bytes: r.bytes(kind.total_len())?.to_vec() })
}

fn put_len(o: &mut Vec<u8>, len: usize) -> Result<()> {
    put_u16(o, u16::try_from(len).map_err(|_| ProtoError::malformed("session state", "list too long"))?);
    Ok(())
}

fn get_len(r: &mut Reader<'_>, max: usize) -> Result<usize> {
    let n = usize::from(r.u16()?);
    if n > max {
        return Err(ProtoError::malformed("session state", "list longer than its limit"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::prekey::{InMemoryPreKeyStore, generate_signed_prekeys};
    use crate::{PeerIdentity, PreKeyId};

    /// The inputs of one root step: the DH output and, if mixed, the KEM
    /// secret with its key id and whether it came from our own key.
    #[derive(Clone)]
    pub(super) struct RootStep {
        pub(super) dh: [u8; 32],
        pub(super) kem: Option<(u32, [u8; 32], bool)>,
    }

    fn pair(seed: u8) -> (Session, Session, ChaCha20Rng) {
        let mut r = ChaCha20Rng::from_seed([seed; 32]);
        let alice = IdentityKeyPair::generate(&mut r).unwrap();
        let bob = IdentityKeyPair::generate(&mut r).unwrap();
        let (secrets, blob) = generate_signed_prekeys(&bob, PreKeyId(1), PreKeyId(2), &mut r).unwrap();
        let (_, alice_blob) = generate_signed_prekeys(&alice, PreKeyId(1), PreKeyId(2), &mut r).unwrap();
        let mut store = InMemoryPreKeyStore::new();
        store.add_signed_prekeys(secrets);
        let bundle = PreKeyBundle::from_parts(&bob.identity_key().to_bytes(), &blob, None, None).unwrap();
        let mut a = Session::initiate(&alice, &bundle, &mut r).unwrap();
        let w = a.encrypt(b"hi", &mut r).unwrap();
        let WireMessage::PreKey(pm) = WireMessage::decode(&w).unwrap() else { panic!() };
        let peer = PeerIdentity::from_parts(&alice.identity_key().to_bytes(), &alice_blob).unwrap();
        let (b, _) = Session::accept(&bob, &mut store, &pm, &peer).unwrap();
        (a, b, r)
    }

    fn exchange(a: &mut Session, b: &mut Session, r: &mut ChaCha20Rng) {
        let w = a.encrypt(b"a", r).unwrap();
        b.decrypt(&w).unwrap();
        let w = b.encrypt(b"b", r).unwrap();
        a.decrypt(&w).unwrap();
    }

    /// Replays Alice's root steps since the compromise as an attacker who
    /// copied her whole state then and can break X25519 (so knows every DH
    /// output) would: it knows a mixed KEM secret only if it came from one of
    /// Alice's keys whose secret was in the copy, or from an encapsulation
    /// Alice had made before the copy. Returns whether its root equals Alice's.
    fn attacker_follows(stolen: &Session, alice: &Session, from_step: usize) -> bool {
        let known_own: Vec<u32> = stolen.pq.own_kem.iter().map(|(id, _)| *id).collect();
        let known_enc: Vec<u32> = stolen.pq.encapsulated.iter().map(|(id, _)| *id).collect();
        let pending = stolen.pq.pending_mix.as_ref().map(|(id, _)| *id);
        let mut root = stolen.root.clone();
        for step in &alice.root_log[from_step..] {
            let kem = match step.kem {
                None => None,
                Some((id, ss, true)) if known_own.contains(&id) || pending == Some(id) => Some(ss),
                Some((id, ss, false)) if known_enc.contains(&id) => Some(ss),
                // Unknown to the attacker: its best guess is wrong.
                Some(_) => Some([0u8; 32]),
            };
            root = kdf_rk(&root, &step.dh, kem.as_ref()).unwrap().0;
        }
        ct_eq(&root.0, &alice.root.0)
    }

    #[test]
    fn post_compromise_security_against_an_attacker_who_breaks_x25519() {
        let (mut alice, mut bob, mut r) = pair(1);
        for _ in 0..70 {
            exchange(&mut alice, &mut bob, &mut r);
        }
        assert!(alice.pq_ratchet_steps() > 0, "no PQ step before the compromise");
        // The attacker copies Alice's entire state.
        let stolen = Session::decode_state(&alice.encode_state().unwrap()).unwrap();
        let from = alice.root_log.len();
        let steps_at_copy = alice.pq_ratchet_steps();
        // Classical ratchet steps alone do not shake it off: after a few
        // exchanges with no PQ secret mixed it still knows the root.
        let mut healed_after = None;
        for i in 0..200 {
            exchange(&mut alice, &mut bob, &mut r);
            let follows = attacker_follows(&stolen, &alice, from);
            if alice.pq_ratchet_steps() == steps_at_copy {
                assert!(follows, "the attacker model lost track without a PQ step (exchange {i})");
            }
            if !follows && healed_after.is_none() {
                healed_after = Some(i);
            }
            if let Some(h) = healed_after {
                assert!(!follows, "the attacker caught up again after healing at exchange {h}");
            }
        }
        let healed = healed_after.expect("the session never healed against the X25519-breaking attacker");
        // The exchanges in flight at the copy use keys the attacker has, so
        // healing needs the next one: at most the rest of the current key and
        // ciphertext plus a whole fresh key (30 chunks) and ciphertext (28
        // chunks), one chunk per message (seed 1: 73 exchanges).
        assert!(healed <= 120, "healing took {healed} exchanges");
    }

    #[test]
    fn chunked_objects_reassemble_in_any_order() {
        let bytes: Vec<u8> = (0..ChunkKind::PublicKey.total_len()).map(|i| i as u8).collect();
        let mut out = Outgoing { id: 7, bytes: bytes.clone(), next: 0 };
        let chunks: Vec<PqChunk> =
            (0..ChunkKind::PublicKey.count()).map(|_| out.next_chunk(ChunkKind::PublicKey).unwrap()).collect();
        // Cycles back to the first chunk.
        assert_eq!(out.next_chunk(ChunkKind::PublicKey).unwrap().index, 0);
        let mut inc = Incoming::new(7, ChunkKind::PublicKey);
        for c in chunks.iter().rev().skip(1) {
            assert!(!inc.add(c));
            assert!(!inc.add(c), "a repeated chunk must not complete the object");
        }
        assert!(inc.add(&chunks[chunks.len() - 1]));
        assert_eq!(inc.bytes, bytes);
    }
}
