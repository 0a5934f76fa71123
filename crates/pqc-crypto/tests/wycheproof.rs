//! Wycheproof known-answer tests, run through pqc-crypto's own API.
//!
//! Every test group of every file is run; a test passes when our API gives
//! the expected result (`valid` → same output, `invalid` → an error,
//! `acceptable` → either). Parameters our API deliberately does not offer
//! (AES-192, non-96-bit nonces) must be refused with
//! `CryptoError::UnsupportedParameter` / `InvalidLength`, never accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use pqc_crypto::CryptoError;
use pqc_crypto::aead::{AeadAlgorithm, AeadKey};
use pqc_crypto::kdf::{HkdfHash, hkdf};
use pqc_crypto::ml_kem::{AWS_LC, MlKemCiphertext, MlKemLevel, MlKemProvider, MlKemPublicKey, MlKemSecretKey};
use pqc_crypto::sign::{Ed25519VerifyingKey, MlDsa65VerifyingKey};
use pqc_crypto::x25519::{X25519PublicKey, X25519Secret};
use serde_json::Value;

fn vectors_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors/wycheproof");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: Wycheproof vectors not found at {} (../shared is absent)", dir.display());
        None
    }
}

fn load(name: &str) -> Option<Value> {
    let dir = vectors_dir()?;
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"));
    Some(serde_json::from_str(&text).unwrap())
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[derive(Default, Debug)]
struct Tally {
    groups: usize,
    passed: usize,
    refused_unsupported: usize,
}

fn each_test(file: &Value, mut f: impl FnMut(&Value, &Value, &str)) -> usize {
    let groups = file["testGroups"].as_array().unwrap();
    let mut n = 0;
    for g in groups {
        for t in g["tests"].as_array().unwrap() {
            f(g, t, t["result"].as_str().unwrap());
            n += 1;
        }
    }
    assert_eq!(n as u64, file["numberOfTests"].as_u64().unwrap_or(n as u64), "test count");
    n
}

#[test]
fn aead_aes_gcm_and_chacha20_poly1305() {
    for (file, family) in [("aes_gcm_test.json", "aes"), ("chacha20_poly1305_test.json", "chacha")] {
        let Some(v) = load(file) else { return };
        let mut tally = Tally { groups: v["testGroups"].as_array().unwrap().len(), ..Default::default() };
        each_test(&v, |g, t, result| {
            let key = h(&t["key"]);
            let iv = h(&t["iv"]);
            let (aad, msg, ct, tag) = (h(&t["aad"]), h(&t["msg"]), h(&t["ct"]), h(&t["tag"]));
            let id = t["tcId"].as_u64().unwrap();
            let alg = match (family, key.len()) {
                ("aes", 16) => Some(AeadAlgorithm::Aes128Gcm),
                ("aes", 32) => Some(AeadAlgorithm::Aes256Gcm),
                ("chacha", 32) => Some(AeadAlgorithm::ChaCha20Poly1305),
                _ => None,
            };
            let tag_ok = g["tagSize"].as_u64() == Some(128);
            let Some(alg) = alg.filter(|_| tag_ok) else {
                // AES-192 and truncated tags are not offered: the key must be refused.
                let err = AeadKey::new(AeadAlgorithm::Aes256Gcm, &key).err();
                assert!(key.len() == 32 || err.is_some(), "tc {id}: unsupported key accepted");
                tally.refused_unsupported += 1;
                return;
            };
            let aead = AeadKey::new(alg, &key).unwrap();
            let mut sealed = ct.clone();
            sealed.extend_from_slice(&tag);
            if iv.len() != 12 {
                // Only 96-bit nonces are offered; other sizes must be refused on both paths.
                assert!(matches!(aead.seal(&iv, &aad, &msg), Err(CryptoError::UnsupportedParameter(_))), "tc {id}");
                assert!(matches!(aead.open(&iv, &aad, &sealed), Err(CryptoError::UnsupportedParameter(_))), "tc {id}");
                tally.refused_unsupported += 1;
                return;
            }
            let opened = aead.open(&iv, &aad, &sealed);
            match result {
                "valid" => {
                    assert_eq!(opened.unwrap(), msg, "tc {id}: decrypt");
                    assert_eq!(aead.seal(&iv, &aad, &msg).unwrap(), sealed, "tc {id}: encrypt");
                }
                "invalid" => assert!(opened.is_err(), "tc {id}: invalid ciphertext accepted"),
                other => panic!("tc {id}: unexpected result {other}"),
            }
            tally.passed += 1;
        });
        eprintln!("{file}: {tally:?}");
        assert!(tally.groups > 0 && tally.passed > 100, "{file}: too few vectors exercised: {tally:?}");
    }
}

#[test]
fn hkdf_sha256() {
    let Some(v) = load("hkdf_sha256_test.json") else { return };
    let mut passed = 0;
    each_test(&v, |_, t, result| {
        let size = t["size"].as_u64().unwrap() as usize;
        let mut out = vec![0u8; size];
        let r = hkdf(HkdfHash::Sha256, &h(&t["salt"]), &h(&t["ikm"]), &[&h(&t["info"])], &mut out);
        match result {
            "valid" => {
                r.unwrap();
                assert_eq!(out, h(&t["okm"]), "tc {}", t["tcId"]);
            }
            _ => assert!(r.is_err(), "tc {}: oversize output accepted", t["tcId"]),
        }
        passed += 1;
    });
    assert_eq!(passed, 86);
}

#[test]
fn x25519() {
    let Some(v) = load("x25519_test.json") else { return };
    let (mut matched, mut refused) = (0, 0);
    each_test(&v, |_, t, result| {
        let sk = X25519Secret::from_bytes(&h(&t["private"])).unwrap();
        let pk = X25519PublicKey::from_bytes(&h(&t["public"])).unwrap();
        let shared = h(&t["shared"]);
        match sk.diffie_hellman(&pk) {
            Ok(ss) => {
                assert_eq!(ss.as_ref(), shared.as_slice(), "tc {}", t["tcId"]);
                matched += 1;
            }
            Err(CryptoError::WeakKeyAgreement) => {
                // Refusing is right only where the shared value is all zero.
                assert!(shared.iter().all(|b| *b == 0), "tc {} ({result}): refused a non-zero result", t["tcId"]);
                refused += 1;
            }
            Err(e) => panic!("tc {}: {e}", t["tcId"]),
        }
    });
    eprintln!("x25519: {matched} matched, {refused} all-zero results refused");
    assert!(refused > 0 && matched > 400);
}

#[test]
fn ed25519() {
    let Some(v) = load("ed25519_test.json") else { return };
    let mut n = 0;
    each_test(&v, |g, t, result| {
        let pk = Ed25519VerifyingKey::from_bytes(&h(&g["publicKey"]["pk"])).unwrap();
        let r = pk.verify(&h(&t["msg"]), &h(&t["sig"]));
        match result {
            "valid" => r.unwrap_or_else(|e| panic!("tc {}: {e}", t["tcId"])),
            _ => assert!(r.is_err(), "tc {}: invalid signature accepted", t["tcId"]),
        }
        n += 1;
    });
    assert_eq!(n, 151);
}

#[test]
fn ml_dsa_65_verify() {
    let Some(v) = load("mldsa_65_verify_test.json") else { return };
    let mut n = 0;
    each_test(&v, |g, t, result| {
        let ctx = t.get("ctx").map(h).unwrap_or_default();
        let r = MlDsa65VerifyingKey::from_bytes(&h(&g["publicKey"]))
            .and_then(|pk| pk.verify(&h(&t["msg"]), &ctx, &h(&t["sig"])));
        match result {
            "valid" => r.unwrap_or_else(|e| panic!("tc {}: {e}", t["tcId"])),
            _ => assert!(r.is_err(), "tc {} ({}): invalid signature accepted", t["tcId"], t["comment"]),
        }
        n += 1;
    });
    assert_eq!(n, 210);
}

fn level_of(v: &Value) -> MlKemLevel {
    match v["testGroups"][0]["parameterSet"].as_str().unwrap() {
        "ML-KEM-768" => MlKemLevel::MlKem768,
        "ML-KEM-1024" => MlKemLevel::MlKem1024,
        other => panic!("unknown parameter set {other}"),
    }
}

#[test]
fn ml_kem_keygen_and_decaps() {
    for file in ["mlkem_768_test.json", "mlkem_1024_test.json"] {
        let Some(v) = load(file) else { return };
        let level = level_of(&v);
        let mut n = 0;
        each_test(&v, |_, t, result| {
            let id = t["tcId"].as_u64().unwrap();
            let outcome = (|| {
                let (sk, pk) = MlKemSecretKey::from_seed(level, &h(&t["seed"]))?;
                assert_eq!(pk.as_bytes(), h(&t["ek"]).as_slice(), "tc {id}: ek");
                let ct = MlKemCiphertext::from_bytes(level, &h(&t["c"]))?;
                let ss = sk.decapsulate(&ct)?;
                // The second provider must agree on every decapsulation.
                let ss2 = AWS_LC.decapsulate(&sk, &ct)?;
                assert_eq!(ss.as_ref(), ss2.as_ref(), "tc {id}: providers disagree");
                Ok::<_, CryptoError>(ss)
            })();
            match result {
                "valid" => assert_eq!(outcome.unwrap().as_slice(), h(&t["K"]).as_slice(), "tc {id}"),
                _ => assert!(outcome.is_err(), "tc {id} ({}): accepted", t["comment"]),
            }
            n += 1;
        });
        assert_eq!(n, 193, "{file}");
    }
}

#[test]
fn ml_kem_1024_encaps() {
    let Some(v) = load("mlkem_1024_encaps_test.json") else { return };
    let level = level_of(&v);
    let mut n = 0;
    each_test(&v, |_, t, result| {
        let id = t["tcId"].as_u64().unwrap();
        let m: [u8; 32] = h(&t["m"]).try_into().unwrap();
        let outcome = MlKemPublicKey::from_bytes(level, &h(&t["ek"])).and_then(|pk| pk.encapsulate_deterministic(&m));
        match result {
            "valid" => {
                let (ct, ss) = outcome.unwrap();
                assert_eq!(ct.as_bytes(), h(&t["c"]).as_slice(), "tc {id}: ct");
                assert_eq!(ss.as_slice(), h(&t["K"]).as_slice(), "tc {id}: K");
            }
            _ => assert!(outcome.is_err(), "tc {id}: invalid key accepted"),
        }
        n += 1;
    });
    assert_eq!(n, 269);
}
