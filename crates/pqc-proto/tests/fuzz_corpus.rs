#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Replays every seed and crash file in `fuzz/corpus/proto_*/` through the
//! same entry points the cargo-fuzz targets call, plus truncations and bit
//! flips of each; none may panic.

use std::path::Path;

use pqc_proto::fuzzing;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        f(&data);
        for cut in [0, 1, 2, data.len() / 2, data.len().saturating_sub(1)] {
            f(&data[..cut.min(data.len())]);
        }
        for pos in (0..data.len()).step_by(97) {
            let mut d = data.clone();
            d[pos] ^= 0x5a;
            f(&d);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}

#[test]
fn replay_proto_message() {
    replay("proto_message", fuzzing::fuzz_decode_message);
}

#[test]
fn replay_proto_prekey_bundle() {
    replay("proto_prekey_bundle", fuzzing::fuzz_decode_prekey_bundle);
}

#[test]
fn replay_proto_pickle() {
    replay("proto_pickle", fuzzing::fuzz_decode_pickle);
}
