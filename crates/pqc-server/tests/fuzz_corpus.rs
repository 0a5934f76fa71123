//! Replays the `config_server` fuzz corpus (`fuzz/corpus/config_server/`)
//! through [`pqc_server::Config::fuzz_parse`], the entry point the fuzz
//! target calls, plus truncations and bit flips of each file; none may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use pqc_server::Config;

#[test]
fn replay_config_server() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config_server");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        Config::fuzz_parse(&data);
        for cut in [0, 1, data.len() / 2, data.len().saturating_sub(1)] {
            Config::fuzz_parse(&data[..cut.min(data.len())]);
        }
        for pos in (0..data.len()).step_by(31) {
            let mut d = data.clone();
            d[pos] ^= 0x20;
            Config::fuzz_parse(&d);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus files in {}", dir.display());
}

#[test]
fn committed_config_is_in_the_corpus() {
    // The shipped config is a seed, so the fuzzer starts from real syntax.
    let shipped = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/server.toml")).unwrap();
    Config::fuzz_parse(&shipped);
    assert!(Config::parse(std::str::from_utf8(&shipped).unwrap()).is_ok());
}
