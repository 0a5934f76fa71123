//! Fuzz the server's mailbox log replay (the records read back from disk at
//! start-up): `cargo fuzz run store_mailbox_log`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Never panics; the good part is a prefix of the input.
    assert!(pqc_store::mailbox::fuzz_replay(data) <= data.len());
});
