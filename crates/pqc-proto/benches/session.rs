#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `cargo bench -p pqc-proto --bench session -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use pqc_proto::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let alice = IdentityKeyPair::generate(&mut rng).unwrap();
    let bob = IdentityKeyPair::generate(&mut rng).unwrap();
    let (secrets, signed) = generate_signed_prekeys(&bob, PreKeyId(1), PreKeyId(1), &mut rng).unwrap();
    let mut store = InMemoryPreKeyStore::new();
    store.add_signed_prekeys(secrets);
    let ik = bob.identity_key().to_bytes();
    let (_, alice_signed) = generate_signed_prekeys(&alice, PreKeyId(1), PreKeyId(1), &mut rng).unwrap();
    let alice_ik = alice.identity_key().to_bytes();
    let alice_peer = PeerIdentity::from_parts(&alice_ik, &alice_signed).unwrap();
    // Bundle without one-time prekeys so the responder bench can repeat.
    let bundle = PreKeyBundle::from_parts(&ik, &signed, None, None).unwrap();

    c.bench_function("initiator set-up (initiate + first encrypt)", |b| {
        b.iter(|| {
            let mut s = Session::initiate(&alice, &bundle, &mut rng).unwrap();
            black_box(s.encrypt(b"hi", &mut rng).unwrap())
        })
    });
    c.bench_function("bundle verification (from_parts)", |b| {
        b.iter(|| black_box(PreKeyBundle::from_parts(&ik, &signed, None, None).unwrap()))
    });
    let mut s = Session::initiate(&alice, &bundle, &mut rng).unwrap();
    let first = s.encrypt(b"hi", &mut rng).unwrap();
    let WireMessage::PreKey(pm) = WireMessage::decode(&first).unwrap() else { panic!() };
    // Includes verifying the initiator's directory entry (its signed prekeys
    // blob, which certifies its identity-DH key), as a client does for a new peer.
    c.bench_function("responder set-up (accept + first decrypt)", |b| {
        b.iter(|| {
            let peer = PeerIdentity::from_parts(&alice_ik, &alice_signed).unwrap();
            black_box(Session::accept(&bob, &mut store, &pm, &peer).unwrap())
        })
    });

    // Established session, steady state inside a chain.
    let (mut a, _b) = {
        let mut a = Session::initiate(&alice, &bundle, &mut rng).unwrap();
        let w = a.encrypt(b"hi", &mut rng).unwrap();
        let WireMessage::PreKey(pm) = WireMessage::decode(&w).unwrap() else { panic!() };
        let (mut b, _) = Session::accept(&bob, &mut store, &pm, &alice_peer).unwrap();
        let w = b.encrypt(b"ok", &mut rng).unwrap();
        a.decrypt(&w).unwrap();
        (a, b)
    };
    let pt = vec![0x61u8; 1024];
    c.bench_function("encrypt 1 KiB", |b| b.iter(|| black_box(a.encrypt(&pt, &mut rng).unwrap())));
    // Fresh messages to decrypt, in order, encrypted outside the timing.
    let mut bsess;
    let mut a2 = {
        let mut x = Session::initiate(&alice, &bundle, &mut rng).unwrap();
        let w = x.encrypt(b"hi", &mut rng).unwrap();
        let WireMessage::PreKey(pm) = WireMessage::decode(&w).unwrap() else { panic!() };
        let (mut y, _) = Session::accept(&bob, &mut store, &pm, &alice_peer).unwrap();
        let w = y.encrypt(b"ok", &mut rng).unwrap();
        x.decrypt(&w).unwrap();
        bsess = y;
        x
    };
    c.bench_function("decrypt 1 KiB", |b| {
        b.iter_custom(|iters| {
            let msgs: Vec<Vec<u8>> = (0..iters).map(|_| a2.encrypt(&pt, &mut rng).unwrap()).collect();
            let start = Instant::now();
            for m in &msgs {
                black_box(bsess.decrypt(m).unwrap());
            }
            start.elapsed()
        })
    });

    // A conversation that changes direction on every message: each message
    // starts a new chain (X25519 ratchet step) and carries a PQ chunk; the
    // ML-KEM-768 keygen / encapsulation / decapsulation happen about once
    // per 30 messages and are included, amortised.
    let (mut p, mut q) = {
        let mut x = Session::initiate(&alice, &bundle, &mut rng).unwrap();
        let w = x.encrypt(b"hi", &mut rng).unwrap();
        let WireMessage::PreKey(pm) = WireMessage::decode(&w).unwrap() else { panic!() };
        let (y, _) = Session::accept(&bob, &mut store, &pm, &alice_peer).unwrap();
        (x, y)
    };
    c.bench_function("alternating 1 KiB (encrypt + decrypt, new chain each message)", |b| {
        b.iter(|| {
            let w = q.encrypt(&pt, &mut rng).unwrap();
            black_box(p.decrypt(&w).unwrap());
            std::mem::swap(&mut p, &mut q);
        })
    });

    // Sizes.
    let mut x = Session::initiate(&alice, &bundle, &mut rng).unwrap();
    let w = x.encrypt(&pt, &mut rng).unwrap();
    println!("prekey message with 1 KiB plaintext: {} bytes ({} overhead)", w.len(), w.len() - 1024);
    let m = a.encrypt(&pt, &mut rng).unwrap();
    println!("ratchet message with 1 KiB plaintext, mid-chain: {} bytes ({} overhead)", m.len(), m.len() - 1024);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
