//! Fuzz the frame reader both ends use on their QUIC stream (length-prefixed
//! frames arriving in arbitrary pieces), against a plain parse of the same
//! bytes: `cargo fuzz run net_frame_reader`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = pqc_net::framed::fuzz_frame_reader(data) {
        panic!("{e}");
    }
});
