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
//! [`crate::WireMessage::PreKey`] with no session yet, [`Session::accept`]
//! (returns the first plaintext); afterwards everything goes through
//! [`Session::decrypt`], including repeated prekey messages of the same session.

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
use crate::identity::{IDENTITY_KEY_LEN, IdentityKey, IdentityKeyPair};
use crate::message::{
    KemPreKeyRef, MAX_MESSAGE_LEN, PreKeyFields, PreKeyMessage, RATCHET_KEM_LEVEL, RatchetMessage, WireMessage,
    encode_header, wrap_prekey,
};
use crate::prekey::{PreKeyBundle, PreKeyStore};

/// Most message keys skipped in one chain by one message.
pub const MAX_SKIP: u32 = 1000;
/// Most skipped message keys kept in total (the oldest are dropped first).
pub const MAX_SKIPPED_TOTAL: usize = 2000;
/// A fresh ML-KEM-768 ratchet key is attached at least every this many messages of a chain.
pub const PQ_INTERVAL: u32 = 50;
/// Most of our own unanswered ML-KEM ratchet keys kept (the oldest are dropped first).
pub const MAX_OWN_KEM_KEYS: usize = 32;
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

const STATE_VERSION: u8 = 1;
const AEAD: AeadAlgorithm = AeadAlgorithm::Aes256Gcm;

/// A 32-byte secret (root, chain or message key). No `Debug`; wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Key32([u8; 32]);

#[derive(Clone)]
struct Chain {
    ck: Key32,
    n: u32,
}

#[derive(Clone)]
struct Skipped {
    dh: [u8; 32],
    n: u32,
    mk: Key32,
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
    send_ct: Option<(u32, MlKemCiphertext)>,
    pn: u32,
    recv: Option<Chain>,
    pending_prekey: Option<Vec<u8>>,
    own_kem: VecDeque<(u32, MlKemSecretKey)>,
    next_kem_id: u32,
    peer_kem: Option<(u32, MlKemPublicKey)>,
    peer_kem_max: u32,
    skipped: VecDeque<Skipped>,
    retired: VecDeque<[u8; 32]>,
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
    responder: &IdentityKey,
    responder_dh: &X25519PublicKey,
    spk: &X25519PublicKey,
    kem: &MlKemPublicKey,
    one_time: Option<&X25519PublicKey>,
) -> [u8; 32] {
    let ik = responder.to_bytes();
    let opk: &[u8] = one_time.map(|k| k.as_bytes().as_slice()).unwrap_or(&[]);
    sha256(&[LABEL_TRANSCRIPT, prefix, &ik, responder_dh.as_bytes(), spk.as_bytes(), kem.as_bytes(), opk])
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
        let prefix = PreKeyFields {
            identity: identity.identity_key(),
            identity_dh: identity.identity_dh_public(),
            certificate: identity.identity_dh_certificate(),
            ek: &ek.public,
            spk_id: bundle.spk_id,
            kem: kem_ref,
            one_time: bundle.one_time.as_ref().map(|(id, _)| *id),
            kem_ct: &kem_ct,
        }
        .encode();
        let th = transcript(
            &prefix,
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
            send_ct: None,
            pn: 0,
            recv: None,
            pending_prekey: Some(prefix),
            own_kem: VecDeque::new(),
            next_kem_id: 1,
            peer_kem: None,
            peer_kem_max: 0,
            skipped: VecDeque::new(),
            retired: VecDeque::new(),
        })
    }

    /// Accepts a prekey message as responder: checks the initiator's
    /// identity-DH certificate, finds the prekey secrets in `store`, derives
    /// the session and decrypts the first message. Only when that message
    /// authenticates are the one-time prekeys removed from `store`, so each
    /// starts exactly one session; a second prekey message naming them fails
    /// with [`ProtoError::OneTimePreKeyUnavailable`].
    ///
    /// The caller must check [`Session::remote_identity`] against the identity
    /// it expects for the sender.
    pub fn accept<S: PreKeyStore + ?Sized>(
        identity: &IdentityKeyPair,
        store: &mut S,
        msg: &PreKeyMessage,
    ) -> Result<(Self, Vec<u8>)> {
        msg.identity.verify_identity_dh(&msg.identity_dh, &msg.certificate)?;
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
        let dh1 = secrets.spk.diffie_hellman(&msg.identity_dh)?;
        let dh2 = identity.identity_dh_secret().diffie_hellman(&msg.ek)?;
        let dh3 = secrets.spk.diffie_hellman(&msg.ek)?;
        let (dh4, opk_pub) = match &opk {
            Some((_, sk)) => (Some(sk.diffie_hellman(&msg.ek)?), Some(sk.public_key()?)),
            None => (None, None),
        };
        let spk = X25519KeyPair::from_secret(secrets.spk.clone())?;
        let th = transcript(
            &msg.prefix,
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
            remote: msg.identity.clone(),
            root,
            dhs: spk,
            dhr: None,
            send: None,
            send_ct: None,
            pn: 0,
            recv: None,
            pending_prekey: None,
            own_kem: VecDeque::new(),
            next_kem_id: 1,
            peer_kem: None,
            peer_kem_max: 0,
            skipped: VecDeque::new(),
            retired: VecDeque::new(),
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

    /// A 32-byte value both sides of this session share (the handshake
    /// transcript hash); not secret, useful to tell sessions apart.
    pub fn session_id(&self) -> [u8; 32] {
        self.ad
    }

    fn start_sending_chain<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<()> {
        let dhr = self.dhr.ok_or(ProtoError::malformed("session", "no peer ratchet key yet"))?;
        let next = X25519KeyPair::generate(rng)?;
        let dh = next.secret.diffie_hellman(&dhr)?;
        let enc = match &self.peer_kem {
            Some((id, pk)) => Some((*id, pk.encapsulate(rng)?)),
            None => None,
        };
        let (root, ck) = kdf_rk(&self.root, &dh, enc.as_ref().map(|(_, (_, ss))| &**ss))?;
        self.peer_kem = None;
        self.root = root;
        self.dhs = next;
        self.send = Some(Chain { ck, n: 0 });
        self.send_ct = enc.map(|(id, (ct, _))| (id, ct));
        Ok(())
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
        let kem_pk = if n % PQ_INTERVAL == 0 {
            let (sk, pk) = MlKemSecretKey::generate(RATCHET_KEM_LEVEL, rng)?;
            let id = self.next_kem_id;
            self.next_kem_id = id.checked_add(1).ok_or(ProtoError::CounterExhausted)?;
            self.own_kem.push_back((id, sk));
            while self.own_kem.len() > MAX_OWN_KEM_KEYS {
                self.own_kem.pop_front();
            }
            Some((id, pk))
        } else {
            None
        };
        let mut out = Vec::with_capacity(64 + plaintext.len());
        encode_header(
            &mut out,
            &self.dhs.public,
            self.pn,
            n,
            kem_pk.as_ref().map(|(id, pk)| (*id, pk)),
            self.send_ct.as_ref().map(|(id, ct)| (*id, ct)),
        );
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

    fn after_receive(&mut self, msg: &RatchetMessage) {
        self.pending_prekey = None;
        if let Some((id, pk)) = &msg.header.kem_pk
            && *id > self.peer_kem_max
        {
            self.peer_kem_max = *id;
            self.peer_kem = Some((*id, pk.clone()));
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
        let kem_ss = match &h.kem_ct {
            Some((id, ct)) => {
                let sk = self
                    .own_kem
                    .iter()
                    .find(|(k, _)| k == id)
                    .map(|(_, sk)| sk)
                    .ok_or(ProtoError::UnknownRatchetKemKey(*id))?;
                Some((*id, sk.decapsulate(ct)?))
            }
            None => None,
        };
        let dh_out = self.dhs.secret.diffie_hellman(&h.dh).map_err(|e| match e {
            CryptoError::WeakKeyAgreement => ProtoError::DecryptionFailed,
            e => e.into(),
        })?;
        let (root, mut ck) = kdf_rk(&self.root, &dh_out, kem_ss.as_ref().map(|(_, ss)| &**ss))?;
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
        self.root = root;
        self.recv = Some(Chain { ck: next, n: next_n });
        if let Some(c) = self.send.take() {
            self.pn = c.n;
        }
        self.send_ct = None;
        if let Some((id, _)) = kem_ss {
            self.own_kem.retain(|(k, _)| *k > id);
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
        put_opt(&mut o, self.send_ct.as_ref(), |o, (id, ct)| {
            put_u32(o, *id);
            o.extend_from_slice(ct.as_bytes());
        });
        put_u32(&mut o, self.pn);
        put_opt(&mut o, self.recv.as_ref(), put_chain);
        o.push(u8::from(self.pending_prekey.is_some()));
        if let Some(p) = &self.pending_prekey {
            put_vec32(&mut o, p)?;
        }
        put_u32(&mut o, self.next_kem_id);
        put_len(&mut o, self.own_kem.len())?;
        for (id, sk) in &self.own_kem {
            put_u32(&mut o, *id);
            o.extend_from_slice(sk.as_bytes());
        }
        put_opt(&mut o, self.peer_kem.as_ref(), |o, (id, pk)| {
            put_u32(o, *id);
            o.extend_from_slice(pk.as_bytes());
        });
        put_u32(&mut o, self.peer_kem_max);
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
        let send_ct = if r.flag()? {
            let id = r.u32()?;
            Some((id, MlKemCiphertext::from_bytes(RATCHET_KEM_LEVEL, r.bytes(RATCHET_KEM_LEVEL.ciphertext_len())?)?))
        } else {
            None
        };
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
        let peer_kem = if r.flag()? {
            let id = r.u32()?;
            Some((id, MlKemPublicKey::from_bytes(RATCHET_KEM_LEVEL, r.bytes(RATCHET_KEM_LEVEL.public_key_len())?)?))
        } else {
            None
        };
        let peer_kem_max = r.u32()?;
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
            send_ct,
            pn,
            recv,
            pending_prekey,
            own_kem,
            next_kem_id,
            peer_kem,
            peer_kem_max,
            skipped,
            retired,
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
