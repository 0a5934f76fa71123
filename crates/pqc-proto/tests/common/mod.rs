#![allow(dead_code)]

use pqc_proto::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub fn rng(seed: u8) -> ChaCha20Rng {
    ChaCha20Rng::from_seed([seed; 32])
}

/// A device with its identity, its prekey store, and the blobs it uploaded.
pub struct Device {
    pub identity: IdentityKeyPair,
    pub store: InMemoryPreKeyStore,
    pub signed_blob: Vec<u8>,
    pub otk_blobs: Vec<(PreKeyId, Vec<u8>)>,
    pub otkem_blobs: Vec<(PreKeyId, Vec<u8>)>,
}

impl Device {
    pub fn new(rng: &mut ChaCha20Rng, n_one_time: u32) -> Self {
        let identity = IdentityKeyPair::generate(rng).unwrap();
        let (secrets, signed_blob) = generate_signed_prekeys(&identity, PreKeyId(1), PreKeyId(1), rng).unwrap();
        let (otk, otk_blobs) = generate_one_time_prekeys(&identity, PreKeyId(100), n_one_time, rng).unwrap();
        let (otkem, otkem_blobs) = generate_one_time_kem_prekeys(&identity, PreKeyId(200), n_one_time, rng).unwrap();
        let mut store = InMemoryPreKeyStore::new();
        store.add_signed_prekeys(secrets);
        store.add_one_time_prekeys(otk);
        store.add_one_time_kem_prekeys(otkem);
        Self { identity, store, signed_blob, otk_blobs, otkem_blobs }
    }

    /// The identity a peer gets from the server's directory for this device.
    pub fn peer(&self) -> PeerIdentity {
        PeerIdentity::from_parts(&self.identity.identity_key().to_bytes(), &self.signed_blob).unwrap()
    }

    /// What the server would hand out, with the `i`-th one-time blobs if asked.
    pub fn bundle(&self, one_time: Option<usize>) -> PreKeyBundle {
        let ik = self.identity.identity_key().to_bytes();
        let otk = one_time.map(|i| self.otk_blobs[i].1.as_slice());
        let otkem = one_time.map(|i| self.otkem_blobs[i].1.as_slice());
        PreKeyBundle::from_parts(&ik, &self.signed_blob, otk, otkem).unwrap()
    }
}

/// Alice initiates to Bob with one-time prekeys; Bob accepts the first message.
pub fn pair(seed: u8) -> (Session, Session, Device, Device, ChaCha20Rng) {
    let mut r = rng(seed);
    let alice_dev = Device::new(&mut r, 2);
    let mut bob_dev = Device::new(&mut r, 2);
    let bundle = bob_dev.bundle(Some(0));
    let mut alice = Session::initiate(&alice_dev.identity, &bundle, &mut r).unwrap();
    let first = alice.encrypt(b"hello bob", &mut r).unwrap();
    let WireMessage::PreKey(pm) = WireMessage::decode(&first).unwrap() else { panic!("expected a prekey message") };
    let (bob, pt) = Session::accept(&bob_dev.identity, &mut bob_dev.store, &pm, &alice_dev.peer()).unwrap();
    assert_eq!(pt, b"hello bob");
    (alice, bob, alice_dev, bob_dev, r)
}
