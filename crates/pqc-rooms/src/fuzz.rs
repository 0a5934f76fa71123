//! Entry point for the `rooms_message` fuzz target.

use std::cell::RefCell;

use pqc_crypto::rng::SystemRng;
use pqc_crypto::sign::{HybridSigningKey, HybridVerifyingKey};

use crate::{Member, Room, RoomAccessKey, UserId};

thread_local! {
    static TARGET: RefCell<Option<(Member, Room, HybridVerifyingKey)>> = const { RefCell::new(None) };
}

/// Feeds arbitrary bytes to every decoder of this crate. The first byte picks
/// the path: 0 `Room::process` on a live one-member room, 1
/// `Room::join_from_welcome`, 2 `Room::join_external`, 3 `Room::add_member`,
/// 4 `Room::import_state` and `Member::import_state`, 5 `Room::add_published`
/// (a published key package with its identity binding). Must never panic.
pub fn fuzz_process(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    TARGET.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let Ok(mut member) = Member::new("fuzz", [7u8; 32]) else { return };
            let Ok(room) = Room::create(&member, "fuzz room", 8) else { return };
            let _ = member.generate_key_packages(1);
            let Ok(identity) = HybridSigningKey::generate(&mut SystemRng) else { return };
            *slot = Some((member, room, identity.verifying_key().clone()));
        }
        let Some((member, room, identity)) = slot.as_mut() else { return };
        match selector % 6 {
            0 => {
                let _ = room.process(rest);
            }
            1 => {
                let _ = Room::join_from_welcome(member, rest);
            }
            2 => {
                let _ = Room::join_external(member, rest, &RoomAccessKey::from_bytes([1u8; 32]));
                let _ = Room::join_external(member, rest, &room.access_key());
            }
            3 => {
                let _ = room.add_member(rest);
            }
            4 => {
                let _ = Room::import_state(rest);
                let _ = Member::import_state(rest);
            }
            _ => {
                if let Ok(user) = UserId::new("fuzz peer") {
                    let _ = room.add_published(rest, &user, identity);
                }
            }
        }
    });
}
