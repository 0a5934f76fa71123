//! Fuzz the server's TOML configuration parser: `cargo fuzz run config_server`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Never panics, whatever the file holds.
    pqc_server::Config::fuzz_parse(data);
});
