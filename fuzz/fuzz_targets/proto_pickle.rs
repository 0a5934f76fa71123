#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pqc_proto::fuzzing::fuzz_decode_pickle(data);
});
