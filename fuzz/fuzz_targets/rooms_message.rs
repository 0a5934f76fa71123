//! Fuzz the MLS room decoders (messages, Welcome, sealed GroupInfo, key
//! packages, saved state): `cargo fuzz run rooms_message`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Must never panic; errors are the expected outcome for random input.
    pqc_rooms::fuzz_process(data);
});
