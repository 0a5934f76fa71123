//! Round trips, cross-provider agreement and tamper detection through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pqc_crypto::CryptoError;
use pqc_crypto::aead::{AeadAlgorithm, AeadKey};
use pqc_crypto::kem::{HybridCiphertext, HybridKemSuite, HybridPublicKey, HybridSecretKey};
use pqc_crypto::ml_kem::{AWS_LC, LIBCRUX, MlKemLevel, MlKemProvider};
use pqc_crypto::rng::SystemRng;
use pqc_crypto::sign::{HybridSignature, HybridSigningKey, HybridVerifyingKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const SUITES: [HybridKemSuite; 2] = [HybridKemSuite::X25519MlKem768, HybridKemSuite::X25519MlKem1024];

#[test]
fn hybrid_kem_round_trip_and_encodings() {
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    for suite in SUITES {
        let sk = HybridSecretKey::generate(suite, &mut rng).unwrap();
        let pk = HybridPublicKey::from_bytes(&sk.public_key().to_bytes()).unwrap();
        assert_eq!(pk.to_bytes().len(), suite.public_key_len());
        let (ct, ss) = pk.encapsulate(&mut rng).unwrap();
        let ct = HybridCiphertext::from_bytes(&ct.to_bytes()).unwrap();
        assert_eq!(ct.to_bytes().len(), suite.ciphertext_len());
        assert_eq!(*sk.decapsulate(&ct).unwrap(), *ss);
        let restored = HybridSecretKey::from_bytes(&sk.to_bytes()).unwrap();
        assert_eq!(*restored.decapsulate(&ct).unwrap(), *ss);
    }
}

#[test]
fn hybrid_kem_with_libcrux_is_deterministic_given_the_rng() {
    let run = || {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        let sk = HybridSecretKey::generate_with(HybridKemSuite::X25519MlKem1024, &LIBCRUX, &mut rng).unwrap();
        let (ct, ss) = sk.public_key().encapsulate_with(&LIBCRUX, &mut rng).unwrap();
        (sk.public_key().to_bytes(), ct.to_bytes(), *ss)
    };
    assert_eq!(run(), run());
}

#[test]
fn hybrid_kem_tampering_changes_the_secret() {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let sk = HybridSecretKey::generate(HybridKemSuite::X25519MlKem1024, &mut rng).unwrap();
    let (ct, ss) = sk.public_key().encapsulate(&mut rng).unwrap();
    let bytes = ct.to_bytes();
    // Flip one bit in the X25519 part and one in the ML-KEM part: either way the
    // combiner must give a different secret (implicit rejection, no error oracle).
    for pos in [5, 40, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[pos] ^= 1;
        let ct2 = HybridCiphertext::from_bytes(&b).unwrap();
        match sk.decapsulate(&ct2) {
            Ok(ss2) => assert_ne!(*ss2, *ss, "bit {pos}"),
            Err(e) => assert_eq!(e, CryptoError::WeakKeyAgreement),
        }
    }
}

#[test]
fn hybrid_kem_rejects_malformed_encodings() {
    let mut rng = ChaCha20Rng::from_seed([2; 32]);
    let sk = HybridSecretKey::generate(HybridKemSuite::X25519MlKem768, &mut rng).unwrap();
    let pk = sk.public_key().to_bytes();
    assert!(matches!(HybridPublicKey::from_bytes(&pk[..pk.len() - 1]), Err(CryptoError::InvalidLength { .. })));
    let mut v = pk.clone();
    v[0] = 9;
    assert!(matches!(HybridPublicKey::from_bytes(&v), Err(CryptoError::UnsupportedVersion { got: 9, .. })));
    let mut s = pk.clone();
    s[1] = 0x7f;
    assert!(matches!(HybridPublicKey::from_bytes(&s), Err(CryptoError::UnknownSuite { id: 0x7f, .. })));
    // An ML-KEM key whose coefficients are not reduced fails the modulus check.
    let mut m = pk.clone();
    m[34] = 0xff;
    m[35] = 0xff;
    assert!(matches!(HybridPublicKey::from_bytes(&m), Err(CryptoError::InvalidPublicKey(_))));
    assert!(HybridPublicKey::from_bytes(&[]).is_err());
    // A secret key whose embedded public-key hash is wrong is refused.
    let mut skb = sk.to_bytes().to_vec();
    let last = skb.len() - 40;
    skb[last] ^= 1;
    assert!(HybridSecretKey::from_bytes(&skb).is_err());
}

#[test]
fn ml_kem_providers_interoperate() {
    let mut rng = ChaCha20Rng::from_seed([3; 32]);
    let providers: [&dyn MlKemProvider; 2] = [&LIBCRUX, &AWS_LC];
    for level in [MlKemLevel::MlKem768, MlKemLevel::MlKem1024] {
        for keygen in providers {
            for enc in providers {
                for dec in providers {
                    let (sk, pk) = keygen.generate(level, &mut rng).unwrap();
                    let (ct, ss) = enc.encapsulate(&pk, &mut rng).unwrap();
                    let ss2 = dec.decapsulate(&sk, &ct).unwrap();
                    assert_eq!(*ss, *ss2, "{level:?} keygen {} enc {} dec {}", keygen.name(), enc.name(), dec.name());
                }
            }
        }
    }
    for suite in SUITES {
        let sk = HybridSecretKey::generate_with(suite, &AWS_LC, &mut rng).unwrap();
        let (ct, ss) = sk.public_key().encapsulate_with(&LIBCRUX, &mut rng).unwrap();
        assert_eq!(*sk.decapsulate_with(&AWS_LC, &ct).unwrap(), *ss);
    }
}

#[test]
fn hybrid_signature_needs_both_halves() {
    let mut rng = ChaCha20Rng::from_seed([4; 32]);
    let sk = HybridSigningKey::generate(&mut rng).unwrap();
    let vk = HybridVerifyingKey::from_bytes(&sk.verifying_key().to_bytes()).unwrap();
    let sig = sk.sign(b"hello", b"test", &mut rng).unwrap();
    let sig = HybridSignature::from_bytes(&sig.to_bytes()).unwrap();
    vk.verify(b"hello", b"test", &sig).unwrap();
    assert_eq!(vk.verify(b"hellO", b"test", &sig), Err(CryptoError::BadSignature));
    assert_eq!(vk.verify(b"hello", b"other", &sig), Err(CryptoError::BadSignature));
    let bytes = sig.to_bytes();
    for pos in [2, 10, 66, 100, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[pos] ^= 0x20;
        let bad = HybridSignature::from_bytes(&b).unwrap();
        assert_eq!(vk.verify(b"hello", b"test", &bad), Err(CryptoError::BadSignature), "byte {pos}");
    }
    // A signature from another key under either half fails.
    let other = HybridSigningKey::generate(&mut rng).unwrap();
    let sig2 = other.sign(b"hello", b"test", &mut rng).unwrap();
    let mut mixed = bytes[..66].to_vec();
    mixed.extend_from_slice(&sig2.to_bytes()[66..]);
    assert_eq!(
        vk.verify(b"hello", b"test", &HybridSignature::from_bytes(&mixed).unwrap()),
        Err(CryptoError::BadSignature)
    );
    let restored = HybridSigningKey::from_bytes(&sk.to_bytes()).unwrap();
    assert_eq!(restored.verifying_key(), sk.verifying_key());
    assert!(sk.sign(b"x", &[0u8; 256], &mut rng).is_err());
}

#[test]
fn aead_round_trip_and_tamper() {
    let mut rng = SystemRng;
    for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305] {
        let key: [u8; 32] = pqc_crypto::rng::random_array(&mut rng);
        let k = AeadKey::new(alg, &key).unwrap();
        let nonce = [3u8; 12];
        let ct = k.seal(&nonce, b"aad", b"secret message").unwrap();
        assert_eq!(k.open(&nonce, b"aad", &ct).unwrap(), b"secret message");
        assert_eq!(k.open(&nonce, b"aaD", &ct), Err(CryptoError::DecryptionFailed));
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(k.open(&nonce, b"aad", &bad), Err(CryptoError::DecryptionFailed));
        assert_eq!(k.open(&nonce, b"aad", &ct[..10]), Err(CryptoError::DecryptionFailed));
        assert!(AeadKey::new(alg, &key[..31]).is_err());
    }
}

#[test]
fn errors_read_well() {
    let e = CryptoError::InvalidLength { what: "ML-KEM public key", expected: 1568, got: 3 };
    assert_eq!(e.to_string(), "ML-KEM public key has the wrong length: expected 1568 bytes, got 3");
    let e = CryptoError::UnknownSuite { what: "hybrid KEM", id: 0x7f };
    assert!(e.to_string().contains("0x7f"), "{e}");
}
