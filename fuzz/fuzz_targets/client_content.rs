//! Fuzz the client's decoder of decrypted message content (text and file
//! announcements from a peer): `cargo fuzz run client_content`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Never panics; content that decodes re-encodes to something that decodes.
    pqc_client::content::fuzz_decode(data);
});
