//! Real-OpenMLS tests of the room core: a simulated relay is just a loop
//! that hands each room the bytes in order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pqc_rooms::{Event, Member, Room, RoomAccessKey, RoomError, UserId, verify_identity_binding};

fn member(name: &str, seed: u8) -> Member {
    Member::new(name, [seed; 32]).unwrap()
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn key_package(m: &mut Member) -> Vec<u8> {
    m.generate_key_packages(1).unwrap().pop().unwrap()
}

fn message_of(events: &[Event]) -> (UserId, Vec<u8>) {
    match events {
        [Event::Message { sender, plaintext }] => (sender.clone(), plaintext.clone()),
        other => panic!("expected one message, got {other:?}"),
    }
}

/// alice creates, bob joins by Welcome, carol joins externally while alice
/// and bob are offline; they catch up in order.
fn three_member_room(max: u32) -> (Room, Room, Room) {
    let alice_id = member("alice", 1);
    let mut bob_id = member("bob", 2);
    let carol_id = member("carol", 3);

    let mut alice = alice_id.create_room("team", max).unwrap();
    assert_eq!(alice.members(), vec![user("alice")]);

    let kp = key_package(&mut bob_id);
    let (commit_bob, welcome) = alice.add_member(&kp).unwrap();
    let mut bob = Room::join_from_welcome(&mut bob_id, &welcome).unwrap();
    assert_eq!(bob.name(), "team");
    assert_eq!(bob.max_participants(), max);
    assert_eq!(bob.id(), alice.id());
    assert_eq!(bob.members(), vec![user("alice"), user("bob")]);
    assert_eq!(bob.epoch(), alice.epoch());
    // Nobody else is in the room yet, so the add commit has no other receivers.
    drop(commit_bob);

    // Everyone offline: the relay only has alice's sealed GroupInfo.
    let sealed = alice.group_info().unwrap();
    let (carol, external_commit) = Room::join_external(&carol_id, &sealed, &alice.access_key()).unwrap();
    assert_eq!(carol.name(), "team");
    assert_eq!(carol.members(), vec![user("alice"), user("bob"), user("carol")]);

    // alice and bob come back online and process the commit in order.
    for room in [&mut alice, &mut bob] {
        let events = room.process(&external_commit).unwrap();
        assert_eq!(events, vec![Event::MemberJoined(user("carol")), Event::EpochChanged { epoch: carol.epoch() }]);
        assert_eq!(room.members(), carol.members());
    }
    (alice, bob, carol)
}

#[test]
fn create_invite_external_join_messages_and_leave() {
    let (mut alice, mut bob, mut carol) = three_member_room(3);

    // Messages both ways.
    let m = alice.encrypt(b"hello room").unwrap();
    for r in [&mut bob, &mut carol] {
        assert_eq!(message_of(&r.process(&m).unwrap()), (user("alice"), b"hello room".to_vec()));
    }
    let m = carol.encrypt(b"hi from carol").unwrap();
    for r in [&mut alice, &mut bob] {
        assert_eq!(message_of(&r.process(&m).unwrap()), (user("carol"), b"hi from carol".to_vec()));
    }

    // Everyone derives the same exporter secret (media keys).
    let s = alice.export_secret("pqc-chat media", b"ctx", 32).unwrap();
    assert_eq!(*s, *bob.export_secret("pqc-chat media", b"ctx", 32).unwrap());
    assert_eq!(*s, *carol.export_secret("pqc-chat media", b"ctx", 32).unwrap());

    // bob leaves: a remove proposal that the next active member (alice) commits.
    let proposal = bob.leave().unwrap();
    for r in [&mut alice, &mut carol] {
        assert_eq!(r.process(&proposal).unwrap(), vec![Event::ProposalQueued { by: user("bob") }]);
    }
    // bob keeps a copy of his state from before the commit, as an attacker would.
    let mut bob_stale = Room::import_state(&bob.export_state().unwrap()).unwrap();
    let commit = alice.commit_pending().unwrap().expect("a pending proposal to commit");
    assert_eq!(alice.commit_pending().unwrap(), None);
    let events = carol.process(&commit).unwrap();
    assert_eq!(events, vec![Event::MemberLeft(user("bob")), Event::EpochChanged { epoch: alice.epoch() }]);
    assert_eq!(bob.process(&commit).unwrap(), vec![Event::Removed]);
    assert!(!bob.is_active());
    assert_eq!(carol.members(), vec![user("alice"), user("carol")]);

    // A message after the removal is unreadable to bob, whatever state he kept.
    let after = alice.encrypt(b"bob is gone").unwrap();
    assert_eq!(message_of(&carol.process(&after).unwrap()).1, b"bob is gone".to_vec());
    assert!(matches!(bob.process(&after), Err(RoomError::NotAMember)));
    assert!(bob_stale.process(&after).is_err());
    assert!(matches!(bob.encrypt(b"x"), Err(RoomError::NotAMember)));
}

#[test]
fn full_room_refuses_next_joiner() {
    let (mut alice, _bob, _carol) = three_member_room(3);
    let mut dave = member("dave", 4);
    let sealed = alice.group_info().unwrap();
    let err = Room::join_external(&dave, &sealed, &alice.access_key()).unwrap_err();
    assert!(matches!(err, RoomError::RoomFull { members: 4, max: 3 }), "{err}");
    assert!(err.to_string().contains("room is full"), "{err}");
    let kp = key_package(&mut dave);
    assert!(matches!(alice.add_member(&kp), Err(RoomError::RoomFull { members: 4, max: 3 })));
    assert_eq!(alice.members().len(), 3);
}

#[test]
fn remove_member() {
    let (mut alice, mut bob, mut carol) = three_member_room(5);
    let commit = alice.remove(&user("carol")).unwrap();
    assert_eq!(bob.process(&commit).unwrap()[0], Event::MemberLeft(user("carol")));
    assert_eq!(carol.process(&commit).unwrap(), vec![Event::Removed]);
    assert!(matches!(alice.remove(&user("zed")), Err(RoomError::UnknownMember(_))));
    let m = bob.encrypt(b"just us").unwrap();
    assert!(carol.process(&m).is_err());
    assert_eq!(message_of(&alice.process(&m).unwrap()).1, b"just us".to_vec());
}

#[test]
fn self_update_changes_epoch_and_locks_out_old_state() {
    let (mut alice, mut bob, mut carol) = three_member_room(3);
    let old_bob = bob.export_state().unwrap();
    let epoch = bob.epoch();
    let secret = bob.export_secret("media", b"", 32).unwrap();

    let commit = bob.self_update().unwrap();
    assert_eq!(bob.epoch(), epoch + 1);
    for r in [&mut alice, &mut carol] {
        assert_eq!(r.process(&commit).unwrap(), vec![Event::EpochChanged { epoch: epoch + 1 }]);
    }
    assert_ne!(*secret, *alice.export_secret("media", b"", 32).unwrap());

    let m = alice.encrypt(b"new epoch").unwrap();
    assert_eq!(message_of(&bob.process(&m).unwrap()).1, b"new epoch".to_vec());
    let mut stale = Room::import_state(&old_bob).unwrap();
    assert_eq!(stale.epoch(), epoch);
    assert!(stale.process(&m).is_err(), "old-epoch state must not decrypt new messages");
}

#[test]
fn export_import_round_trip() {
    let (mut alice, bob, mut carol) = three_member_room(3);
    let saved = bob.export_state().unwrap();
    drop(bob);
    let mut bob = Room::import_state(&saved).unwrap();
    assert_eq!(bob.name(), "team");
    assert_eq!(bob.members(), alice.members());
    assert_eq!(bob.epoch(), alice.epoch());
    assert_eq!(bob.suite(), alice.suite());
    assert_eq!(*bob.export_secret("l", b"c", 16).unwrap(), *alice.export_secret("l", b"c", 16).unwrap());

    let m = alice.encrypt(b"to restored bob").unwrap();
    assert_eq!(message_of(&bob.process(&m).unwrap()).1, b"to restored bob".to_vec());
    let m = bob.encrypt(b"from restored bob").unwrap();
    for r in [&mut alice, &mut carol] {
        assert_eq!(message_of(&r.process(&m).unwrap()), (user("bob"), b"from restored bob".to_vec()));
    }

    // Corrupt or foreign bytes give clean errors.
    assert!(Room::import_state(&saved[..saved.len() - 1]).is_err());
    let mut extra = saved.clone();
    extra.push(0);
    assert!(Room::import_state(&extra).is_err());
    // A state from another version (with an intact digest) is named as such.
    let mut wrong_version = saved[..saved.len() - 32].to_vec();
    wrong_version[5] = 9;
    let digest = pqc_crypto::kdf::sha256(&[&wrong_version]);
    wrong_version.extend_from_slice(&digest);
    assert!(matches!(Room::import_state(&wrong_version), Err(RoomError::UnsupportedStateVersion(9))));
    // A changed byte without a matching digest is a corrupt state.
    let mut flipped = saved.clone();
    flipped[40] ^= 1;
    assert!(matches!(Room::import_state(&flipped), Err(RoomError::CorruptState(_))));
}

#[test]
fn member_state_keeps_key_packages() {
    let alice_id = member("alice", 1);
    let mut bob_id = member("bob", 2);
    let kps = bob_id.generate_key_packages(3).unwrap();
    let mut bob_id = Member::import_state(&bob_id.export_state().unwrap()).unwrap();
    assert_eq!(bob_id.user(), &user("bob"));

    let mut alice = alice_id.create_room("kp", 10).unwrap();
    let (_, welcome) = alice.add_member(&kps[1]).unwrap();
    let bob = Room::join_from_welcome(&mut bob_id, &welcome).unwrap();
    assert_eq!(bob.members(), vec![user("alice"), user("bob")]);
    // A key package is single-use.
    assert!(matches!(Room::join_from_welcome(&mut bob_id, &welcome), Err(RoomError::NoMatchingKeyPackage)));
}

#[test]
fn group_info_needs_the_access_key_and_hides_metadata() {
    let alice_id = member("alice", 1);
    let carol = member("carol", 3);
    let alice = alice_id.create_room("secret-room-name", 4).unwrap();
    let sealed = alice.group_info().unwrap();
    // What the relay stores does not contain the room name or member names.
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(&sealed, b"secret-room-name"));
    assert!(!contains(&sealed, b"alice"));
    let wrong = RoomAccessKey::from_bytes([0u8; 32]);
    assert!(matches!(Room::join_external(&carol, &sealed, &wrong), Err(RoomError::GroupInfoSeal)));
    assert!(Room::join_external(&carol, &sealed[..10], &alice.access_key()).is_err());
}

#[test]
fn application_messages_do_not_leak_plaintext_and_reject_garbage() {
    let (mut alice, mut bob, _carol) = three_member_room(3);
    let m = alice.encrypt(b"plaintext-marker").unwrap();
    assert!(!m.windows(16).any(|w| w == b"plaintext-marker"));
    assert!(matches!(bob.process(&[]), Err(RoomError::Malformed { .. })));
    let mut tampered = m.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(bob.process(&tampered).is_err());
    // A message for another room.
    let other_owner = member("zoe", 9);
    let mut other = other_owner.create_room("other", 2).unwrap();
    let foreign = other.encrypt(b"x").unwrap();
    assert!(matches!(bob.process(&foreign), Err(RoomError::WrongRoom)));
    // The original still decrypts after the failures.
    assert_eq!(message_of(&bob.process(&m).unwrap()).1, b"plaintext-marker".to_vec());
}

#[test]
fn invalid_inputs() {
    let alice = member("alice", 1);
    assert!(matches!(alice.create_room("", 3), Err(RoomError::InvalidName { .. })));
    assert!(matches!(alice.create_room("x", 0), Err(RoomError::InvalidLimit(0))));
    assert!(Member::new("", [0; 32]).is_err());
}

#[test]
fn identity_binding() {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    let mut rng = ChaCha20Rng::from_seed([5; 32]);
    let identity = pqc_crypto::sign::HybridSigningKey::generate(&mut rng).unwrap();
    let bob = member("bob", 2);
    let binding = bob.bind_to_identity(&identity, &mut rng).unwrap();
    let vk = identity.verifying_key();
    verify_identity_binding(vk, &user("bob"), &bob.signature_public_key(), &binding).unwrap();
    assert!(matches!(
        verify_identity_binding(vk, &user("mallory"), &bob.signature_public_key(), &binding),
        Err(RoomError::BadBinding)
    ));
    let other = member("bob", 3);
    assert!(verify_identity_binding(vk, &user("bob"), &other.signature_public_key(), &binding).is_err());
}

#[test]
fn invite_by_published_key_package_checks_owner_and_binding() {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    let mut rng = ChaCha20Rng::from_seed([6; 32]);
    let bob_identity = pqc_crypto::sign::HybridSigningKey::generate(&mut rng).unwrap();
    let relay_identity = pqc_crypto::sign::HybridSigningKey::generate(&mut rng).unwrap();
    let alice_id = member("alice", 1);
    let mut alice = alice_id.create_room("lobby", 10).unwrap();
    let mut bob_id = member("bob", 2);
    let published = bob_id.publishable_key_packages(2, &bob_identity, &mut rng).unwrap();
    assert_eq!(published.len(), 2);

    // A key package the relay made up for "bob" and bound to its own key is refused.
    let mut fake_bob = member("bob", 9);
    let fake = fake_bob.publishable_key_packages(1, &relay_identity, &mut rng).unwrap();
    let bob_vk = bob_identity.verifying_key();
    assert!(matches!(alice.add_published(&fake[0], &user("bob"), bob_vk), Err(RoomError::BadBinding)));
    // Bob's real key package offered as somebody else's is refused.
    assert!(alice.add_published(&published[0], &user("carol"), bob_vk).is_err());
    // Truncated or trailing bytes are refused.
    assert!(alice.add_published(&published[0][..10], &user("bob"), bob_vk).is_err());
    let mut long = published[0].clone();
    long.push(0);
    assert!(alice.add_published(&long, &user("bob"), bob_vk).is_err());
    assert_eq!(alice.epoch(), 0, "refused invitations change nothing");

    let (_commit, welcome) = alice.add_published(&published[0], &user("bob"), bob_vk).unwrap();
    let mut bob = Room::join_from_welcome(&mut bob_id, &welcome).unwrap();
    assert_eq!(bob.name(), "lobby");
    assert_eq!(bob.members(), vec![user("alice"), user("bob")]);
    let ct = alice.encrypt(b"hi bob").unwrap();
    assert_eq!(message_of(&bob.process(&ct).unwrap()), (user("alice"), b"hi bob".to_vec()));
}

/// A member whose state fell behind for good (the relay deleted commits it
/// never fetched) joins again by external commit with the same identity:
/// the commit also removes its old leaf (a resync), so the room keeps its
/// size (a full room takes it) and the same members, and messages flow
/// both ways again; its old state stays locked out.
#[test]
fn a_member_left_behind_joins_again_in_its_own_seat() {
    let (mut alice, mut bob, mut carol_old) = three_member_room(3);
    let commit = alice.self_update().unwrap();
    bob.process(&commit).unwrap();
    // carol never gets that commit. Her device's identity is the same.
    let carol_id = member("carol", 3);
    let (mut carol, resync) =
        Room::join_external(&carol_id, &alice.group_info().unwrap(), &alice.access_key()).unwrap();
    assert_eq!(carol.members(), vec![user("alice"), user("bob"), user("carol")]);
    for r in [&mut alice, &mut bob] {
        // The same people before and after; the others learn carol came
        // back (she may have missed what was sent meanwhile).
        assert_eq!(
            r.process(&resync).unwrap(),
            vec![Event::MemberRejoined(user("carol")), Event::EpochChanged { epoch: carol.epoch() }]
        );
        assert_eq!(r.members(), carol.members());
        assert_eq!(r.epoch(), carol.epoch());
    }
    let m = bob.encrypt(b"welcome back").unwrap();
    assert_eq!(message_of(&carol.process(&m).unwrap()), (user("bob"), b"welcome back".to_vec()));
    let m = carol.encrypt(b"thanks").unwrap();
    assert_eq!(message_of(&alice.process(&m).unwrap()), (user("carol"), b"thanks".to_vec()));
    assert!(carol_old.process(&m).is_err(), "the stale state must not read the new epoch");
}
