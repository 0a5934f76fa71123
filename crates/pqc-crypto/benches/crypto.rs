//! `cargo bench -p pqc-crypto --bench crypto`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pqc_crypto::aead::{AeadAlgorithm, AeadKey};
use pqc_crypto::kem::{HybridKemSuite, HybridSecretKey};
use pqc_crypto::ml_kem::{AWS_LC, LIBCRUX, MlKemLevel, MlKemProvider};
use pqc_crypto::rng::SystemRng;
use pqc_crypto::sign::HybridSigningKey;
use std::hint::black_box;

fn hybrid_kem(c: &mut Criterion) {
    let mut g = c.benchmark_group("hybrid_kem");
    let mut rng = SystemRng;
    for suite in [HybridKemSuite::X25519MlKem768, HybridKemSuite::X25519MlKem1024] {
        for provider in [&LIBCRUX as &dyn MlKemProvider, &AWS_LC] {
            let name = format!("{suite:?}/{}", provider.name());
            g.bench_function(BenchmarkId::new("keygen", &name), |b| {
                b.iter(|| HybridSecretKey::generate_with(suite, provider, &mut rng).unwrap())
            });
            let sk = HybridSecretKey::generate_with(suite, provider, &mut rng).unwrap();
            let pk = sk.public_key().clone();
            g.bench_function(BenchmarkId::new("encaps", &name), |b| {
                b.iter(|| pk.encapsulate_with(provider, &mut rng).unwrap())
            });
            let (ct, _) = pk.encapsulate_with(provider, &mut rng).unwrap();
            g.bench_function(BenchmarkId::new("decaps", &name), |b| {
                b.iter(|| sk.decapsulate_with(provider, &ct).unwrap())
            });
            g.bench_function(BenchmarkId::new("encaps+decaps", &name), |b| {
                b.iter(|| {
                    let (ct, _) = pk.encapsulate_with(provider, &mut rng).unwrap();
                    sk.decapsulate_with(provider, &ct).unwrap()
                })
            });
        }
    }
    g.finish();
}

fn ml_kem_alone(c: &mut Criterion) {
    let mut g = c.benchmark_group("ml_kem_1024");
    let mut rng = SystemRng;
    for provider in [&LIBCRUX as &dyn MlKemProvider, &AWS_LC] {
        g.bench_function(BenchmarkId::new("keygen", provider.name()), |b| {
            b.iter(|| provider.generate(MlKemLevel::MlKem1024, &mut rng).unwrap())
        });
        let (sk, pk) = provider.generate(MlKemLevel::MlKem1024, &mut rng).unwrap();
        g.bench_function(BenchmarkId::new("encaps", provider.name()), |b| {
            b.iter(|| provider.encapsulate(&pk, &mut rng).unwrap())
        });
        let (ct, _) = provider.encapsulate(&pk, &mut rng).unwrap();
        g.bench_function(BenchmarkId::new("decaps", provider.name()), |b| {
            b.iter(|| provider.decapsulate(&sk, &ct).unwrap())
        });
    }
    g.finish();
}

fn hybrid_sig(c: &mut Criterion) {
    let mut g = c.benchmark_group("hybrid_sig");
    let mut rng = SystemRng;
    g.bench_function("keygen", |b| b.iter(|| HybridSigningKey::generate(&mut rng).unwrap()));
    let sk = HybridSigningKey::generate(&mut rng).unwrap();
    let msg = [0x42u8; 256];
    g.bench_function("sign_256B", |b| b.iter(|| sk.sign(black_box(&msg), b"bench", &mut rng).unwrap()));
    let sig = sk.sign(&msg, b"bench", &mut rng).unwrap();
    g.bench_function("verify_256B", |b| b.iter(|| sk.verifying_key().verify(black_box(&msg), b"bench", &sig).unwrap()));
    g.finish();
}

fn aead(c: &mut Criterion) {
    let mut g = c.benchmark_group("aead");
    for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305] {
        let key = AeadKey::new(alg, &[7u8; 32]).unwrap();
        for size in [1024usize, 1 << 20] {
            g.throughput(Throughput::Bytes(size as u64));
            let mut buf = vec![0u8; size];
            g.bench_function(BenchmarkId::new(format!("{alg:?}/seal"), size), |b| {
                b.iter(|| {
                    buf.truncate(size);
                    key.seal_in_place(&[1u8; 12], b"", &mut buf).unwrap();
                })
            });
            let mut sealed = vec![0u8; size];
            key.seal_in_place(&[1u8; 12], b"", &mut sealed).unwrap();
            let mut work = sealed.clone();
            g.bench_function(BenchmarkId::new(format!("{alg:?}/open"), size), |b| {
                b.iter(|| {
                    work.copy_from_slice(&sealed);
                    key.open_in_place(&[1u8; 12], b"", &mut work).unwrap().len()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, hybrid_kem, ml_kem_alone, hybrid_sig, aead);
criterion_main!(benches);
