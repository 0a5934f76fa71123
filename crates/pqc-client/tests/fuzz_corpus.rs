//! Replays the `client_content` fuzz corpus (`fuzz/corpus/client_content/`)
//! through [`pqc_client::content::fuzz_decode`], the entry point the fuzz
//! target calls, plus truncations and bit flips of each file; none may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use pqc_client::content::fuzz_decode;

#[test]
fn replay_client_content() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/client_content");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        fuzz_decode(&data);
        for cut in 0..data.len() {
            fuzz_decode(&data[..cut]);
        }
        for pos in 0..data.len() {
            let mut d = data.clone();
            d[pos] ^= 0x80;
            fuzz_decode(&d);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}
