//! No-panic tests: 20,000 mutations of the RFC 8448 handshake messages go through every
//! view's `parse` and the ClientHello splicing functions. Errors are expected; a panic is a
//! bug. Where an encoder exists, a mutated message that parses must re-encode to the same
//! bytes (the views are exact: nothing is dropped or normalized).

use lurk_test_support::mutate::{mutate, XorShift};

use super::test_vectors::rfc8448;
use super::*;
use crate::wire::enums::HashAlg;

const ITERATIONS: usize = 20_000;

/// Every handshake message of every RFC 8448 section, and the payloads of its plaintext
/// handshake records.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in rfc8448().sections() {
        for (_, m) in s.messages.iter() {
            out.push(m.to_vec());
        }
        for r in &s.records {
            let rec = &r.record;
            if rec.first() == Some(&22) {
                out.push(rec[5..].to_vec());
            }
        }
    }
    out
}

/// Feeds `v` to every view and splicing function; checks the round trips.
fn exercise(v: &[u8]) {
    let _ = ServerHello::parse(v);
    let _ = EncryptedExtensions::parse(v);
    let _ = CertificateRequest::parse(v);
    let _ = NewSessionTicket::parse(v);
    if let Ok(c) = Certificate::parse(v) {
        let _ = c.chain();
        if c.entries.iter().all(|e| e.extensions.is_empty()) {
            let chain: Vec<&[u8]> = c.entries.iter().map(|e| e.cert_data).collect();
            assert_eq!(encode_certificate(c.context, &chain).unwrap(), v);
        }
    }
    if let Ok(cv) = CertificateVerify::parse(v) {
        assert_eq!(
            encode_certificate_verify(cv.scheme, cv.signature).unwrap(),
            v
        );
    }
    for hash in [HashAlg::Sha256, HashAlg::Sha384] {
        if let Ok(f) = Finished::parse(v, hash) {
            assert_eq!(encode_finished(f.verify_data).unwrap(), v);
        }
    }
    if let Ok(k) = KeyUpdate::parse(v) {
        assert_eq!(encode_key_update(k.request_update), v);
    }
    if EndOfEarlyData::parse(v).is_ok() {
        assert_eq!(encode_end_of_early_data(), v);
    }
    if let Ok(msgs) = split_handshake_messages(v) {
        let mut again = Vec::new();
        for m in &msgs {
            assert_eq!(encode_handshake(m.typ, m.body).unwrap(), m.raw);
            again.extend_from_slice(m.raw);
        }
        assert_eq!(again, v);
    }

    // The ClientHello splicing the CS does and the binder functions both sides use.
    if let Ok(ch) = ClientHello::parse(v) {
        let fills: Vec<(NamedGroup, Vec<u8>)> = ch
            .placeholder_key_shares()
            .iter()
            .map(|s| (s.group, vec![0x42; 32]))
            .collect();
        if let Ok(done) = complete_client_hello(v, Some(&[7; 32]), &fills) {
            let again = ClientHello::parse(&done).expect("a completed ClientHello parses");
            assert_eq!(again.random, &[7; 32]);
        }
        let binder_lens: Vec<usize> = ch
            .pre_shared_key
            .as_ref()
            .map(|p| p.binders.iter().map(|b| b.binder.len()).collect())
            .unwrap_or_default();
        if let Ok(t) = truncated_for_binders(v) {
            assert!(v.starts_with(t));
        }
        let mut w = v.to_vec();
        let binders: Vec<Vec<u8>> = binder_lens.iter().map(|n| vec![0x5b; *n]).collect();
        if set_binders(&mut w, &binders).is_ok() {
            let again = ClientHello::parse(&w).expect("binders set in place still parse");
            let got: Vec<&[u8]> = again
                .pre_shared_key
                .as_ref()
                .map(|p| p.binders.iter().map(|b| b.binder).collect())
                .unwrap_or_default();
            assert_eq!(got.len(), binders.len());
            assert!(got.iter().all(|b| b.iter().all(|x| *x == 0x5b)));
        }
    }
    // Binders on arbitrary bytes: wrong counts and lengths are errors, not panics.
    let mut w = v.to_vec();
    let _ = set_binders(&mut w, &[vec![0u8; 32]]);
    let _ = set_binders::<Vec<u8>>(&mut w, &[]);
    let _ = complete_client_hello(v, None, &[(NamedGroup::X25519, vec![1; 32])]);
    let _ = truncated_for_binders(v);
}

#[test]
fn mutated_messages_never_panic_and_round_trip() {
    let seeds = seeds();
    assert!(seeds.len() >= 30, "{} seeds", seeds.len());
    // The seeds themselves first: they parse, so every round trip above is exercised.
    for s in &seeds {
        exercise(s);
    }
    let mut rng = XorShift::new(0x8448_1303);
    for i in 0..ITERATIONS {
        let seed = &seeds[i % seeds.len()];
        let v = mutate(&mut rng, seed);
        let r = std::panic::catch_unwind(|| exercise(&v));
        assert!(r.is_ok(), "iteration {i}: input {}", hex::encode(&v));
    }
}
