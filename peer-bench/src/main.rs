//! Same-machine timings of vodozemac's Olm (the Matrix 1:1 double ratchet, Olm v1 as deployed,
//! classical X25519 only) to put beside `cargo bench -p pqc-proto`:
//! session set-up on each side, encrypt / decrypt of 1 KiB inside a chain,
//! an alternating conversation, and message sizes.
//!
//! `cargo run --release --manifest-path peer-bench/Cargo.toml`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use vodozemac::olm::{Account, OlmMessage, SessionConfig};

/// Median of `rounds` timings of `f`, each over `per` calls.
fn time(name: &str, rounds: usize, per: usize, mut f: impl FnMut()) -> Duration {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per {
            f();
        }
        samples.push(t.elapsed() / per as u32);
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    println!("{name:<58} {:>9.2} µs", median.as_secs_f64() * 1e6);
    median
}

/// An established session pair (the first message answered).
fn pair(alice: &Account, config: SessionConfig) -> (vodozemac::olm::Session, vodozemac::olm::Session) {
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    let mut a = alice.create_outbound_session(config, bob.curve25519_key(), otk).unwrap();
    let first = match a.encrypt(b"hi").unwrap() {
        OlmMessage::PreKey(m) => m,
        OlmMessage::Normal(_) => panic!("expected a prekey message"),
    };
    let mut b = bob.create_inbound_session(config, alice.curve25519_key(), &first).unwrap().session;
    let reply = b.encrypt(b"ok").unwrap();
    a.decrypt(&reply).unwrap();
    (a, b)
}

fn main() {
    let config = SessionConfig::version_1();
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(10_000);
    let otks: Vec<_> = bob.one_time_keys().into_values().collect();
    bob.mark_keys_as_published();
    let bob_key = bob.curve25519_key();
    let pt = vec![0x61u8; 1024];

    let mut i = 0;
    time("vodozemac initiator set-up (outbound session + first encrypt)", 31, 50, || {
        let mut s = alice.create_outbound_session(config, bob_key, otks[i % otks.len()]).unwrap();
        i += 1;
        black_box(s.encrypt(b"hi").unwrap());
    });

    // Responder: fresh prekey messages, each to its own one-time key.
    let msgs: Vec<_> = otks
        .iter()
        .take(31 * 50)
        .map(|otk| {
            let mut s = alice.create_outbound_session(config, bob_key, *otk).unwrap();
            match s.encrypt(b"hi").unwrap() {
                OlmMessage::PreKey(m) => m,
                OlmMessage::Normal(_) => panic!("expected a prekey message"),
            }
        })
        .collect();
    let mut j = 0;
    time("vodozemac responder set-up (inbound session + first decrypt)", 31, 50, || {
        let r = bob.create_inbound_session(config, alice.curve25519_key(), &msgs[j]).unwrap();
        j += 1;
        black_box(r.plaintext);
    });

    let (mut a, _) = pair(&alice, config);
    time("vodozemac encrypt 1 KiB (inside a chain)", 31, 200, || {
        black_box(a.encrypt(&pt).unwrap());
    });
    // Decrypt: messages made outside the timing, in order, on a fresh pair
    // (Olm bounds how far a receiver may skip ahead).
    let (mut a, mut b) = pair(&alice, config);
    let batch: Vec<_> = (0..31 * 200).map(|_| a.encrypt(&pt).unwrap()).collect();
    let mut k = 0;
    time("vodozemac decrypt 1 KiB (inside a chain)", 31, 200, || {
        black_box(b.decrypt(&batch[k]).unwrap());
        k += 1;
    });
    let mut turn = 0u64;
    time("vodozemac alternating 1 KiB (encrypt + decrypt, new chain each)", 31, 50, || {
        let (from, to) = if turn % 2 == 0 { (&mut b, &mut a) } else { (&mut a, &mut b) };
        let m = from.encrypt(&pt).unwrap();
        black_box(to.decrypt(&m).unwrap());
        turn += 1;
    });

    let m = a.encrypt(&pt).unwrap();
    let (_, bytes) = m.to_parts();
    println!("vodozemac normal message overhead (1 KiB plaintext): {} bytes", bytes.len() - 1024);
    let mut fresh = alice.create_outbound_session(config, bob_key, otks[0]).unwrap();
    let (_, pre) = fresh.encrypt(&pt).unwrap().to_parts();
    println!("vodozemac prekey message overhead (1 KiB plaintext): {} bytes", pre.len() - 1024);
}
