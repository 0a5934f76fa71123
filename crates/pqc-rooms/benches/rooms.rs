//! Room benchmarks (OpenMLS 0.9, libcrux, X-Wing).
//!
//! `cargo bench -p pqc-rooms --bench rooms -- --warm-up-time 1 --measurement-time 3`
//!
//! - `add_member`: one invite commit + Welcome into a two-member room.
//! - `commit`: a self-update commit (the commit every member sends periodically).
//! - `app_message/{encrypt,decrypt}_16B`.
//! - `join/{10,100}/external_join`: the joiner opens the sealed GroupInfo and
//!   builds the external commit; `join/{10,100}/process_external_commit`: one
//!   existing member processes it. Members process in parallel on their own
//!   devices, so join latency ≈ external_join + process_external_commit
//!   (+ relay time). The rooms are built once, outside the timed loops.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pqc_rooms::{Member, Room};

fn seed(i: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    s
}

fn pair() -> (Room, Room) {
    let alice = Member::new("alice", seed(1)).unwrap();
    let mut bob_id = Member::new("bob", seed(2)).unwrap();
    let mut room = alice.create_room("bench", 1000).unwrap();
    let kp = bob_id.generate_key_packages(1).unwrap().pop().unwrap();
    let (_, welcome) = room.add_member(&kp).unwrap();
    let bob = Room::join_from_welcome(&mut bob_id, &welcome).unwrap();
    (room, bob)
}

/// A room of `n` members: the owner adds everyone in one commit.
fn room_of(n: usize) -> (Room, Room) {
    let owner = Member::new("owner", seed(1)).unwrap();
    let mut room = owner.create_room("bench", 10_000).unwrap();
    let mut ids: Vec<Member> = (1..n).map(|i| Member::new(format!("user{i}"), seed(100 + i)).unwrap()).collect();
    let kps: Vec<Vec<u8>> = ids.iter_mut().map(|m| m.generate_key_packages(1).unwrap().pop().unwrap()).collect();
    let refs: Vec<&[u8]> = kps.iter().map(Vec::as_slice).collect();
    let (_, welcome) = room.add_members(&refs).unwrap();
    // One other member, to measure processing on a non-owner.
    let other = Room::join_from_welcome(&mut ids[n / 2], &welcome).unwrap();
    assert_eq!(room.members().len(), n);
    (room, other)
}

fn bench(c: &mut Criterion) {
    c.bench_function("add_member", |b| {
        b.iter_batched(
            || {
                let (room, _bob) = pair();
                let mut carol = Member::new("carol", seed(3)).unwrap();
                let kp = carol.generate_key_packages(1).unwrap().pop().unwrap();
                (room, kp)
            },
            |(mut room, kp)| room.add_member(&kp).unwrap(),
            BatchSize::SmallInput,
        )
    });

    let (mut room, _bob) = pair();
    c.bench_function("commit", |b| b.iter(|| room.self_update().unwrap()));

    let (mut alice_room, _) = pair();
    let msg = [0x42u8; 16];
    c.bench_function("app_message/encrypt_16B", |b| b.iter(|| alice_room.encrypt(&msg).unwrap()));
    // Decrypt on a fresh pair: the encrypt loop above moved alice's sender
    // ratchet too far ahead for bob to follow.
    let (mut alice_room, mut bob_room) = pair();
    c.bench_function("app_message/decrypt_16B", |b| {
        b.iter_batched(|| alice_room.encrypt(&msg).unwrap(), |ct| bob_room.process(&ct).unwrap(), BatchSize::SmallInput)
    });

    for n in [10usize, 100] {
        let (owner, other) = room_of(n);
        let joiner = Member::new("joiner", seed(9)).unwrap();
        let sealed = owner.group_info().unwrap();
        let key = owner.access_key();
        let mut g = c.benchmark_group(format!("join/{n}"));
        g.sample_size(20);
        g.bench_function("external_join", |b| b.iter(|| Room::join_external(&joiner, &sealed, &key).unwrap()));
        let (_, commit) = Room::join_external(&joiner, &sealed, &key).unwrap();
        let saved = other.export_state().unwrap();
        // Sizes the relay stores and forwards (pqc-loadtest --room uses them).
        let mut sender = Room::import_state(&saved).unwrap();
        let app_256 = sender.encrypt(&[0x42u8; 256]).unwrap();
        eprintln!(
            "sizes, room of {n}: sealed GroupInfo {} B, external commit {} B, application message of 256 B text {} B",
            sealed.len(),
            commit.len(),
            app_256.len()
        );
        g.bench_function("process_external_commit", |b| {
            b.iter_batched(
                || Room::import_state(&saved).unwrap(),
                |mut member| member.process(&commit).unwrap(),
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
