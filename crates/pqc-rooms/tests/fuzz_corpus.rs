//! Replays the `rooms_message` fuzz corpus through [`pqc_rooms::fuzz_process`]
//! (no input may panic). `-- --ignored regenerate_corpus` rewrites the seeds
//! from a live room.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use pqc_rooms::{Member, Room};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/rooms_message")
}

#[test]
fn replay_corpus() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).expect("fuzz/corpus/rooms_message exists") {
        let path = entry.unwrap().path();
        if path.is_file() {
            pqc_rooms::fuzz_process(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 5, "expected the seed corpus, found {n} files");
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn regenerate_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, selector: u8, body: &[u8]| {
        let mut data = vec![selector];
        data.extend_from_slice(body);
        std::fs::write(dir.join(name), data).unwrap();
    };
    let alice_id = Member::new("alice", [1; 32]).unwrap();
    let mut bob_id = Member::new("bob", [2; 32]).unwrap();
    let carol_id = Member::new("carol", [3; 32]).unwrap();
    let mut alice = alice_id.create_room("seed", 4).unwrap();
    let kp = bob_id.generate_key_packages(1).unwrap().pop().unwrap();
    write("key_package", 3, &kp);
    let identity = pqc_crypto::sign::HybridSigningKey::generate(&mut pqc_crypto::rng::SystemRng).unwrap();
    let published = bob_id.publishable_key_packages(1, &identity, &mut pqc_crypto::rng::SystemRng).unwrap();
    write("published_key_package", 5, &published[0]);
    let (commit, welcome) = alice.add_member(&kp).unwrap();
    write("commit_add", 0, &commit);
    write("welcome", 1, &welcome);
    let mut bob = Room::join_from_welcome(&mut bob_id, &welcome).unwrap();
    let sealed = alice.group_info().unwrap();
    write("group_info_sealed", 2, &sealed);
    let (_carol, ext) = Room::join_external(&carol_id, &sealed, &alice.access_key()).unwrap();
    write("external_commit", 0, &ext);
    bob.process(&ext).unwrap();
    write("application", 0, &alice.encrypt(b"seed message").unwrap());
    write("leave_proposal", 0, &bob.leave().unwrap());
    write("member_state", 4, &bob_id.export_state().unwrap());
    write("room_state", 4, &alice.export_state().unwrap());
}
