//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus
//! replay test (`tests/fuzz_corpus.rs`), so both run identical code. Each
//! takes arbitrary bytes and must never panic.

use crate::codec::Reader;
use crate::message::{PreKeyMessage, RatchetMessage, WireMessage};
use crate::prekey::{PreKeyBundle, decode_one_time_kem_prekey, decode_one_time_prekey, decode_signed_prekeys};
use crate::session::Session;

/// The storage key `fuzz_decode_pickle` tries (seed pickles use it).
pub const FUZZ_PICKLE_KEY: [u8; 32] = [0x42; 32];

/// Session messages: [`WireMessage::decode`] and both typed decoders; a
/// decoded message must re-encode to the same bytes.
pub fn fuzz_decode_message(data: &[u8]) {
    let _ = WireMessage::decode(data);
    if let Ok(m) = RatchetMessage::decode(data) {
        assert_eq!(m.encode(), data, "ratchet message re-encoding differs");
    }
    if let Ok(m) = PreKeyMessage::decode(data)
        && let Ok(e) = m.encode()
    {
        assert_eq!(e, data, "prekey message re-encoding differs");
    }
}

/// Prekey blobs: each blob decoder on the whole input, then
/// [`crate::PeerIdentity::from_parts`] and [`PreKeyBundle::from_parts`] on the input split as
/// `u16 len || identity key || u16 len || signed blob || (flag || u16 len || blob)?` twice.
pub fn fuzz_decode_prekey_bundle(data: &[u8]) {
    let _ = decode_signed_prekeys(data);
    let _ = decode_one_time_prekey(data);
    let _ = decode_one_time_kem_prekey(data);
    let mut r = Reader::new("fuzz input", data);
    let part = |r: &mut Reader<'_>| -> Option<Vec<u8>> {
        let len = usize::from(r.u16().ok()?);
        r.bytes(len).ok().map(<[u8]>::to_vec)
    };
    let Some(ik) = part(&mut r) else { return };
    let Some(signed) = part(&mut r) else { return };
    let otk = if r.u8().ok() == Some(1) { part(&mut r) } else { None };
    let otkem = if r.u8().ok() == Some(1) { part(&mut r) } else { None };
    let _ = crate::PeerIdentity::from_parts(&ik, &signed);
    let _ = PreKeyBundle::from_parts(&ik, &signed, otk.as_deref(), otkem.as_deref());
}

/// Saved sessions: [`Session::from_pickle`] under [`FUZZ_PICKLE_KEY`], and the
/// plaintext state decoder directly (a fuzzer cannot forge the AEAD).
pub fn fuzz_decode_pickle(data: &[u8]) {
    let _ = Session::from_pickle(data, &FUZZ_PICKLE_KEY);
    let _ = Session::decode_state(data);
}

/// Encodes a bundle's parts in the layout [`fuzz_decode_prekey_bundle`] reads
/// (for seed corpora). Parts longer than 65535 bytes are truncated.
pub fn encode_bundle_parts(ik: &[u8], signed: &[u8], otk: Option<&[u8]>, otkem: Option<&[u8]>) -> Vec<u8> {
    fn part(out: &mut Vec<u8>, b: &[u8]) {
        let b = b.get(..b.len().min(usize::from(u16::MAX))).unwrap_or(&[]);
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut out = Vec::new();
    part(&mut out, ik);
    part(&mut out, signed);
    for o in [otk, otkem] {
        match o {
            Some(b) => {
                out.push(1);
                part(&mut out, b);
            }
            None => out.push(0),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::*;

    /// Regenerates the seed corpora in `fuzz/corpus/proto_*/`:
    /// `cargo test -p pqc-proto --lib -- --ignored write_fuzz_corpus`.
    #[test]
    #[ignore]
    fn write_fuzz_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let write = |target: &str, name: &str, data: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), data).unwrap();
        };
        let mut rng = ChaCha20Rng::from_seed([99; 32]);
        let alice = IdentityKeyPair::generate(&mut rng).unwrap();
        let bob = IdentityKeyPair::generate(&mut rng).unwrap();
        let (secrets, signed) = generate_signed_prekeys(&bob, PreKeyId(1), PreKeyId(2), &mut rng).unwrap();
        let (otk, otk_blobs) = generate_one_time_prekeys(&bob, PreKeyId(10), 1, &mut rng).unwrap();
        let (otkem, otkem_blobs) = generate_one_time_kem_prekeys(&bob, PreKeyId(20), 1, &mut rng).unwrap();
        let (_, alice_signed) = generate_signed_prekeys(&alice, PreKeyId(1), PreKeyId(2), &mut rng).unwrap();
        let alice_peer = crate::PeerIdentity::from_parts(&alice.identity_key().to_bytes(), &alice_signed).unwrap();
        let ik = bob.identity_key().to_bytes();
        write("proto_prekey_bundle", "signed_blob", &signed);
        write("proto_prekey_bundle", "one_time_blob", &otk_blobs[0].1);
        write("proto_prekey_bundle", "one_time_kem_blob", &otkem_blobs[0].1);
        write(
            "proto_prekey_bundle",
            "bundle_full",
            &encode_bundle_parts(&ik, &signed, Some(&otk_blobs[0].1), Some(&otkem_blobs[0].1)),
        );
        write("proto_prekey_bundle", "bundle_minimal", &encode_bundle_parts(&ik, &signed, None, None));

        let bundle = PreKeyBundle::from_parts(&ik, &signed, Some(&otk_blobs[0].1), Some(&otkem_blobs[0].1)).unwrap();
        let mut store = InMemoryPreKeyStore::new();
        store.add_signed_prekeys(secrets);
        store.add_one_time_prekeys(otk);
        store.add_one_time_kem_prekeys(otkem);
        let mut a = Session::initiate(&alice, &bundle, &mut rng).unwrap();
        let first = a.encrypt(b"hi", &mut rng).unwrap();
        write("proto_message", "prekey_message", &first);
        let WireMessage::PreKey(pm) = WireMessage::decode(&first).unwrap() else { panic!() };
        let (mut b, _) = Session::accept(&bob, &mut store, &pm, &alice_peer).unwrap();
        let b0 = b.encrypt(b"first of chain", &mut rng).unwrap();
        let b1 = b.encrypt(b"second", &mut rng).unwrap();
        a.decrypt(&b0).unwrap();
        a.decrypt(&b1).unwrap();
        write("proto_message", "chain_start", &b0);
        write("proto_message", "chain_key_chunk", &b1);
        // Converse until messages carry ciphertext chunks and a mixed-secret id.
        let (mut ct_chunk, mut mixed) = (None, None);
        for i in 0..200 {
            let (from, to) = if i % 2 == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
            let w = from.encrypt(b"m", &mut rng).unwrap();
            to.decrypt(&w).unwrap();
            let flags = w.get(2 + 32 + 4 + 4).copied().unwrap_or(0);
            if flags & 0x02 != 0 && ct_chunk.is_none() {
                ct_chunk = Some(w.clone());
            }
            if flags & 0x04 != 0 && mixed.is_none() {
                mixed = Some(w.clone());
            }
        }
        write("proto_message", "chain_ct_chunk", &ct_chunk.unwrap());
        write("proto_message", "chain_mixed", &mixed.unwrap());
        let mut small = b1.clone();
        // A header without PQ fields: rebuild by hand (dh, pn, n, flags = 0) + a 16-byte tag.
        small.truncate(2 + 32 + 4 + 4);
        small.push(0);
        small.extend_from_slice(&[0u8; 20]);
        write("proto_message", "no_kem_fields", &small);
        write("proto_pickle", "pickle", &a.pickle(&FUZZ_PICKLE_KEY, &mut rng).unwrap());
        write("proto_pickle", "state_initiator", &a.encode_state().unwrap());
        write("proto_pickle", "state_responder", &b.encode_state().unwrap());
    }
}
