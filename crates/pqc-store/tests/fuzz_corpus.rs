//! Replays the `store_mailbox_log` fuzz corpus (`fuzz/corpus/store_mailbox_log/`)
//! through [`pqc_store::mailbox::fuzz_replay`], the entry point the fuzz
//! target calls, plus truncations and bit flips of each file; none may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use pqc_store::mailbox::fuzz_replay;

#[test]
fn replay_store_mailbox_log() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/store_mailbox_log");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let good = fuzz_replay(&data);
        assert!(good <= data.len());
        if path.file_name().is_some_and(|f| f == "sequence") {
            assert_eq!(good, data.len(), "the well-formed seed replays whole");
        }
        if path.file_name().is_some_and(|f| f == "zeros_ahead") {
            assert_eq!(good, data.len() - 64, "the records, not the zeros written ahead of them");
        }
        for cut in 0..data.len() {
            assert!(fuzz_replay(&data[..cut]) <= cut);
        }
        for pos in 0..data.len() {
            let mut d = data.clone();
            d[pos] ^= 0x80;
            fuzz_replay(&d);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}
