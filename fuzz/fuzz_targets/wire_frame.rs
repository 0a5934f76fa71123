//! Fuzz the client–server frame decoder: `cargo fuzz run wire_frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Decoding never panics; a frame that decodes re-encodes identically.
    assert!(pqc_wire::fuzz_decode(data));
});
