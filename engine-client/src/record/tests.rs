use std::collections::HashMap;

use lurk_proto::wire::enums::AlertDescription;

use super::vectors::{self, opaque};
use super::*;

fn keys(suite: CipherSuite, key: &[u8], iv: &str) -> RecordKeys {
    RecordKeys::new(
        suite,
        Zeroizing::new(key.to_vec()),
        hex::decode(iv).unwrap().try_into().unwrap(),
    )
}

fn aes128() -> RecordKeys {
    keys(
        CipherSuite::TlsAes128GcmSha256,
        &[7; 16],
        "000102030405060708090a0b",
    )
}

/// Decrypts every protected record of every trace with a fresh decrypter per key, in wire
/// order (so sequence numbers must advance exactly as the trace says), then re-encrypts
/// each with a fresh encrypter per key and compares bytes.
#[test]
fn traces_decrypt_and_reencrypt_byte_identically() {
    let mut checked = 0;
    let mut suites = Vec::new();
    for trace in vectors::all() {
        let mut decrypters: HashMap<String, RecordDecrypter> = HashMap::new();
        let mut encrypters: HashMap<String, RecordEncrypter> = HashMap::new();
        for r in trace.records.iter().filter(|r| r.protection != "plaintext") {
            let k = trace.keys_for(r);
            let id = format!("{}_{}", r.sender, r.protection);
            let dec = decrypters
                .entry(id.clone())
                .or_insert_with(|| RecordDecrypter::new(k).unwrap());
            let seq = r.seq.expect("seq");
            assert_eq!(dec.seq(), seq, "{} {id}", trace.name);
            if let Some(nonce) = &r.nonce {
                assert_eq!(&make_nonce(&k.iv, seq)[..], &nonce[..], "{}", trace.name);
            }
            let msg = dec.decrypt(opaque(&r.record)).unwrap_or_else(|e| {
                panic!("{} {id} seq {seq}: {e}", trace.name);
            });
            assert_eq!(msg.typ.get(), r.inner_type.unwrap(), "{}", trace.name);
            assert_eq!(msg.payload, r.payload, "{} {id} seq {seq}", trace.name);

            let enc = encrypters
                .entry(id.clone())
                .or_insert_with(|| RecordEncrypter::new(k).unwrap());
            assert_eq!(enc.seq(), seq);
            assert_eq!(r.padding, 0, "vectors carry no padding");
            let again = enc.encrypt(msg.typ, &msg.payload).unwrap();
            assert_eq!(again, r.record, "{} {id} seq {seq}", trace.name);
            suites.push(k.suite);
            checked += 1;
        }
    }
    // 8448: 7+8+4+4+4 protected records; Illustrated: 9+5.
    assert_eq!(checked, 41);
    assert!(suites.contains(&CipherSuite::TlsAes256GcmSha384));
}

#[test]
fn early_data_and_end_of_early_data_use_client_early_keys() {
    let trace = vectors::rfc8448()
        .into_iter()
        .find(|t| t.name.ends_with("resumed_0rtt"))
        .unwrap();
    let early: Vec<_> = trace
        .records
        .iter()
        .filter(|r| r.protection == "early")
        .collect();
    assert_eq!(early.len(), 2);
    let mut dec = RecordDecrypter::new(&trace.keys["client_early_application"]).unwrap();
    let m = dec.decrypt(opaque(&early[0].record)).unwrap();
    assert_eq!(m.typ, ContentType::ApplicationData);
    assert_eq!(m.payload, b"ABCDEF");
    let m = dec.decrypt(opaque(&early[1].record)).unwrap();
    assert_eq!(m.typ, ContentType::Handshake);
    assert_eq!(m.payload, [5, 0, 0, 0], "EndOfEarlyData");
}

#[test]
fn plaintext_client_hello_matches_trace() {
    for trace in vectors::all() {
        for r in trace.records.iter().filter(|r| r.protection == "plaintext") {
            let version = u16::from_be_bytes([r.record[1], r.record[2]]);
            let typ = ContentType::from(r.record[0]);
            assert_eq!(encode_plaintext(typ, &r.payload, version), r.record);
        }
    }
}

#[test]
fn plaintext_is_fragmented_at_2_14() {
    let payload = vec![0xaa; MAX_FRAGMENT_LEN * 2 + 10];
    let out = encode_plaintext(ContentType::Handshake, &payload, 0x0301);
    assert_eq!(out.len(), payload.len() + 3 * HEADER_LEN);
    assert_eq!(&out[..5], &[22, 3, 1, 0x40, 0x00]);
    let second = HEADER_LEN + MAX_FRAGMENT_LEN;
    assert_eq!(&out[second..second + 5], &[22, 3, 1, 0x40, 0x00]);
    let third = 2 * second;
    assert_eq!(&out[third..third + 5], &[22, 3, 1, 0, 10]);
    assert!(encode_plaintext(ContentType::Handshake, &[], 0x0303).is_empty());
}

/// RFC 8439 §2.8.2 through our key setup and the nonce/AAD path of ring.
#[test]
fn chacha20_poly1305_rfc8439_known_answer() {
    let k = keys(
        CipherSuite::TlsChacha20Poly1305Sha256,
        &(0x80..0xa0).collect::<Vec<u8>>(),
        "070000004041424344454647",
    );
    let key = k.less_safe_key().unwrap();
    let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
    let mut data = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
tip for the future, sunscreen would be it."
        .to_vec();
    // seq 0: the nonce is the IV itself.
    let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&k.iv, 0));
    key.seal_in_place_append_tag(nonce, aead::Aad::from(&aad), &mut data)
        .unwrap();
    assert_eq!(
        hex::encode(&data),
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca967\
1282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324\
e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b61161ae10b594f09e26a7e902ecbd0\
600691"
    );
}

/// A TLS 1.3 ChaCha20-Poly1305 record computed independently (Python `cryptography` 48):
/// seq 7, 3 bytes of padding.
#[test]
fn chacha20_poly1305_record_known_answer_and_round_trip() {
    let k = keys(
        CipherSuite::TlsChacha20Poly1305Sha256,
        &(0x80..0xa0).collect::<Vec<u8>>(),
        "070000004041424344454647",
    );
    let record = hex::decode(
        "170303003cb2203442545a1c268ed91fd913d71296a79905fdae82d016ee7a249fa4d183e2e7850887\
2a9eafe9906c7f095700a0d9a5fca771d713351412ea78b0",
    )
    .unwrap();
    let mut dec = RecordDecrypter::new(&k).unwrap();
    dec.seq = 7;
    let m = dec.decrypt(opaque(&record)).unwrap();
    assert_eq!(m.typ, ContentType::ApplicationData);
    assert_eq!(m.payload, b"Ladies and Gentlemen of the class of '99");

    let mut enc = RecordEncrypter::new(&k).unwrap();
    enc.seq = 7;
    enc.set_padding(Padding::ToMultipleOf(4)); // 40 + 1 → 44: 3 bytes of padding
    assert_eq!(enc.encrypt(m.typ, &m.payload).unwrap(), record);

    let mut enc = RecordEncrypter::new(&k).unwrap();
    let mut dec = RecordDecrypter::new(&k).unwrap();
    for i in 0..5u8 {
        let rec = enc.encrypt(ContentType::Handshake, &[i; 100]).unwrap();
        let m = dec.decrypt(opaque(&rec)).unwrap();
        assert_eq!((m.typ, m.payload), (ContentType::Handshake, vec![i; 100]));
    }
}

#[test]
fn aes256_round_trip() {
    let k = keys(
        CipherSuite::TlsAes256GcmSha384,
        &[9; 32],
        "0a0b0c0d0e0f101112131415",
    );
    let mut enc = RecordEncrypter::new(&k).unwrap();
    let mut dec = RecordDecrypter::new(&k).unwrap();
    let rec = enc.encrypt(ContentType::Alert, &[2, 40]).unwrap();
    assert_eq!(dec.decrypt(opaque(&rec)).unwrap().payload, [2, 40]);
}

#[test]
fn bad_keys_refused() {
    let short = keys(
        CipherSuite::TlsAes256GcmSha384,
        &[1; 16],
        "000000000000000000000000",
    );
    assert!(matches!(
        RecordEncrypter::new(&short),
        Err(Error::General(_))
    ));
    let ccm = keys(
        CipherSuite::TlsAes128CcmSha256,
        &[1; 16],
        "000000000000000000000000",
    );
    assert!(matches!(RecordDecrypter::new(&ccm), Err(Error::General(_))));
}

#[test]
fn debug_shows_no_key_material() {
    let k = keys(
        CipherSuite::TlsAes128GcmSha256,
        &[0xab; 16],
        "cdcdcdcdcdcdcdcdcdcdcdcd",
    );
    let enc = RecordEncrypter::new(&k).unwrap();
    let dec = RecordDecrypter::new(&k).unwrap();
    for s in [format!("{k:?}"), format!("{enc:?}"), format!("{dec:?}")] {
        for leak in ["171", "205", "key:", "iv:", "[", "0x"] {
            assert!(!s.contains(leak), "{s}");
        }
        assert!(s.contains("TlsAes128GcmSha256"), "{s}");
    }
}

#[test]
fn tampered_record_is_decrypt_error() {
    let mut enc = RecordEncrypter::new(&aes128()).unwrap();
    let rec = enc.encrypt(ContentType::ApplicationData, b"hello").unwrap();
    for i in [0, 2, HEADER_LEN, rec.len() - 1] {
        // Header bytes are AAD: a changed type is refused before decryption, a changed
        // version by the tag.
        let mut bad = rec.clone();
        bad[i] ^= 1;
        if i == 0 {
            // 0x16: outer type must be application_data.
            let e = RecordDecrypter::new(&aes128())
                .unwrap()
                .decrypt(opaque(&bad))
                .unwrap_err();
            assert!(matches!(e, Error::InappropriateMessage { .. }));
            continue;
        }
        let mut dec = RecordDecrypter::new(&aes128()).unwrap();
        assert_eq!(
            dec.decrypt(opaque(&bad)).unwrap_err(),
            Error::DecryptError,
            "byte {i}"
        );
        assert_eq!(
            dec.seq(),
            0,
            "a failed record does not advance the sequence"
        );
    }
}

#[test]
fn sequence_numbers_increment_and_nonce_follows() {
    let k = aes128();
    assert_eq!(make_nonce(&k.iv, 0), k.iv);
    assert_eq!(
        hex::encode(make_nonce(&k.iv, 0x0102_0304_0506_0708)),
        "00010203050705030d0f0d03"
    );
    assert_eq!(
        hex::encode(make_nonce(&[0xff; 12], 1)),
        "fffffffffffffffffffffffe"
    );
    let mut enc = RecordEncrypter::new(&k).unwrap();
    let mut dec = RecordDecrypter::new(&k).unwrap();
    let r0 = enc.encrypt(ContentType::ApplicationData, b"x").unwrap();
    let r1 = enc.encrypt(ContentType::ApplicationData, b"x").unwrap();
    assert_ne!(r0, r1, "same content, different nonce");
    assert_eq!(enc.seq(), 2);
    // Out of order: r1 cannot open at seq 0.
    assert_eq!(
        RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&r1))
            .unwrap_err(),
        Error::DecryptError
    );
    dec.decrypt(opaque(&r0)).unwrap();
    dec.decrypt(opaque(&r1)).unwrap();
    assert_eq!(dec.seq(), 2);
}

#[test]
fn rekey_resets_sequence_and_keeps_limits() {
    let mut enc = RecordEncrypter::new(&aes128()).unwrap();
    enc.set_record_size_limit(100).unwrap();
    enc.encrypt(ContentType::ApplicationData, b"a").unwrap();
    let k2 = keys(
        CipherSuite::TlsAes128GcmSha256,
        &[8; 16],
        "0f0e0d0c0b0a090807060504",
    );
    enc.rekey(&k2).unwrap();
    assert_eq!(enc.seq(), 0);
    assert_eq!(enc.max_fragment_len(), 99);
    let rec = enc.encrypt(ContentType::ApplicationData, b"b").unwrap();
    let mut dec = RecordDecrypter::new(&aes128()).unwrap();
    dec.rekey(&k2).unwrap();
    assert_eq!(dec.decrypt(opaque(&rec)).unwrap().payload, b"b");
}

#[test]
fn sequence_never_wraps() {
    let mut enc = RecordEncrypter::new(&aes128()).unwrap();
    enc.seq = u64::MAX - 1;
    let rec = enc.encrypt(ContentType::ApplicationData, b"last").unwrap();
    assert_eq!(
        enc.encrypt(ContentType::ApplicationData, b"wrap")
            .unwrap_err(),
        Error::SequenceExhausted
    );
    let mut dec = RecordDecrypter::new(&aes128()).unwrap();
    dec.seq = u64::MAX - 1;
    dec.decrypt(opaque(&rec)).unwrap();
    assert_eq!(
        dec.decrypt(opaque(&rec)).unwrap_err(),
        Error::SequenceExhausted
    );
}

/// Seals an arbitrary inner plaintext (for malformed-record tests).
fn seal_raw(k: &RecordKeys, seq: u64, inner: &[u8]) -> Vec<u8> {
    let header = protected_header(inner.len() + TAG_LEN);
    let mut buf = inner.to_vec();
    let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&k.iv, seq));
    k.less_safe_key()
        .unwrap()
        .seal_in_place_append_tag(nonce, aead::Aad::from(header), &mut buf)
        .unwrap();
    [&header[..], &buf].concat()
}

#[test]
fn padding_is_stripped() {
    let k = aes128();
    let rec = seal_raw(&k, 0, &[b'h', b'i', 22, 0, 0, 0, 0, 0, 0, 0]);
    let m = RecordDecrypter::new(&k)
        .unwrap()
        .decrypt(opaque(&rec))
        .unwrap();
    assert_eq!(
        (m.typ, &m.payload[..]),
        (ContentType::Handshake, &b"hi"[..])
    );
    // A zero inside the content is content, not padding.
    let rec = seal_raw(&k, 0, &[0, 0, 23, 0]);
    let m = RecordDecrypter::new(&k)
        .unwrap()
        .decrypt(opaque(&rec))
        .unwrap();
    assert_eq!(m.payload, [0, 0]);
}

#[test]
fn padding_policy_pads_and_respects_limit() {
    let k = aes128();
    let mut enc = RecordEncrypter::new(&k).unwrap();
    enc.set_padding(Padding::ToMultipleOf(256));
    let rec = enc.encrypt(ContentType::ApplicationData, b"abc").unwrap();
    assert_eq!(rec.len(), HEADER_LEN + 256 + TAG_LEN);
    let big = vec![1; MAX_FRAGMENT_LEN];
    let rec = enc.encrypt(ContentType::ApplicationData, &big).unwrap();
    assert_eq!(rec.len(), HEADER_LEN + MAX_INNER_PLAINTEXT_LEN + TAG_LEN);
    let mut dec = RecordDecrypter::new(&k).unwrap();
    let mut out = Vec::new();
    enc.seq = 0;
    enc.encrypt_all(ContentType::ApplicationData, b"abc", &mut out)
        .unwrap();
    assert_eq!(dec.decrypt(opaque(&out)).unwrap().payload, b"abc");
}

#[test]
fn all_zero_inner_plaintext_refused() {
    let k = aes128();
    for inner in [&[0u8; 9][..], &[][..]] {
        let rec = seal_raw(&k, 0, inner);
        assert_eq!(
            RecordDecrypter::new(&k)
                .unwrap()
                .decrypt(opaque(&rec))
                .unwrap_err(),
            Error::PeerMisbehaved(PeerMisbehaved::IllegalTlsInnerPlaintext)
        );
    }
}

#[test]
fn protected_ccs_and_unknown_inner_type_refused() {
    let k = aes128();
    let e = RecordDecrypter::new(&k)
        .unwrap()
        .decrypt(opaque(&seal_raw(&k, 0, &[1, 20])))
        .unwrap_err();
    assert_eq!(e, PeerMisbehaved::ProtectedChangeCipherSpec.into());
    assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
    let e = RecordDecrypter::new(&k)
        .unwrap()
        .decrypt(opaque(&seal_raw(&k, 0, &[1, 99, 0])))
        .unwrap_err();
    assert_eq!(e, InvalidMessage::InvalidInnerContentType(99).into());
    assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
}

#[test]
fn oversize_inner_plaintext_is_record_overflow() {
    let k = aes128();
    // 2^14 content + type + 1 padding byte = 2^14 + 2 > 2^14 + 1.
    let mut inner = vec![1u8; MAX_FRAGMENT_LEN];
    inner.extend_from_slice(&[23, 0]);
    let rec = seal_raw(&k, 0, &inner);
    assert_eq!(
        RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&rec))
            .unwrap_err(),
        Error::RecordOverflow
    );
    // Exactly 2^14 + 1 is fine.
    inner.pop();
    let rec = seal_raw(&k, 0, &inner);
    RecordDecrypter::new(&k)
        .unwrap()
        .decrypt(opaque(&rec))
        .unwrap();
    // Our advertised record_size_limit is enforced.
    let mut dec = RecordDecrypter::new(&k).unwrap();
    dec.set_record_size_limit(1000).unwrap();
    assert_eq!(
        dec.decrypt(opaque(&rec)).unwrap_err(),
        Error::RecordOverflow
    );
    assert!(dec.set_record_size_limit(63).is_err());

    // A limit learnt after a longer record was opened under the same key: overflow.
    let mut dec = RecordDecrypter::new(&k).unwrap();
    dec.decrypt(opaque(&rec)).unwrap();
    assert_eq!(dec.largest_inner_plaintext(), MAX_INNER_PLAINTEXT_LEN);
    assert_eq!(
        dec.set_record_size_limit(1000).unwrap_err(),
        Error::RecordOverflow
    );
    dec.set_record_size_limit(16385).unwrap();
}

#[test]
fn oversize_ciphertext_refused() {
    let mut dec = RecordDecrypter::new(&aes128()).unwrap();
    let o = OpaqueRecord {
        typ: ContentType::ApplicationData,
        version: 0x0303,
        payload: vec![0; MAX_CIPHERTEXT_LEN + 1],
    };
    assert_eq!(dec.decrypt(o).unwrap_err(), Error::RecordOverflow);
}

#[test]
fn large_application_data_is_fragmented() {
    let k = aes128();
    let mut enc = RecordEncrypter::new(&k).unwrap();
    let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    assert!(enc.encrypt(ContentType::ApplicationData, &data).is_err());
    let mut out = Vec::new();
    let n = enc
        .encrypt_all(ContentType::ApplicationData, &data, &mut out)
        .unwrap();
    assert_eq!(n, 3);
    let mut dec = RecordDecrypter::new(&k).unwrap();
    let mut got = Vec::new();
    let mut rest = &out[..];
    let mut lens = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        assert!(len <= MAX_CIPHERTEXT_LEN);
        let m = dec.decrypt(opaque(&rest[..HEADER_LEN + len])).unwrap();
        lens.push(m.payload.len());
        got.extend(m.payload);
        rest = &rest[HEADER_LEN + len..];
    }
    assert_eq!(
        lens,
        [
            MAX_FRAGMENT_LEN,
            MAX_FRAGMENT_LEN,
            40_000 - 2 * MAX_FRAGMENT_LEN
        ]
    );
    assert_eq!(got, data);
}

#[test]
fn record_size_limit_applies_when_writing() {
    let k = aes128();
    let mut enc = RecordEncrypter::new(&k).unwrap();
    assert_eq!(
        enc.set_record_size_limit(63).unwrap_err(),
        PeerMisbehaved::IllegalRecordSizeLimit.into()
    );
    enc.set_record_size_limit(64).unwrap();
    assert_eq!(enc.max_fragment_len(), 63);
    let mut out = Vec::new();
    assert_eq!(
        enc.encrypt_all(ContentType::ApplicationData, &[5; 200], &mut out)
            .unwrap(),
        4
    );
    // A limit above 2^14 + 1 is capped (RFC 8449 §4).
    enc.set_record_size_limit(u16::MAX).unwrap();
    assert_eq!(enc.max_fragment_len(), MAX_FRAGMENT_LEN);
}

#[test]
fn handshake_messages_written_together_share_one_record() {
    let k = aes128();
    let mut enc = RecordEncrypter::new(&k).unwrap();
    let cert = [11u8; 700];
    let cv = [15u8; 80];
    let fin = [20u8; 36];
    let mut out = Vec::new();
    let n = enc
        .encrypt_parts(ContentType::Handshake, &[&cert, &cv, &fin], &mut out)
        .unwrap();
    assert_eq!(n, 1);
    let m = RecordDecrypter::new(&k)
        .unwrap()
        .decrypt(opaque(&out))
        .unwrap();
    assert_eq!(m.payload, [&cert[..], &cv, &fin].concat());

    // Across the limit, parts straddle record boundaries without gaps.
    enc.set_record_size_limit(500).unwrap();
    out.clear();
    let n = enc
        .encrypt_parts(ContentType::Handshake, &[&cert, &cv, &fin], &mut out)
        .unwrap();
    assert_eq!(n, 2); // 816 bytes in 499 + 317
}

#[test]
fn empty_records() {
    let mut enc = RecordEncrypter::new(&aes128()).unwrap();
    assert!(enc.encrypt(ContentType::Handshake, &[]).is_err());
    assert!(enc.encrypt(ContentType::Alert, &[]).is_err());
    let rec = enc.encrypt(ContentType::ApplicationData, &[]).unwrap();
    let m = RecordDecrypter::new(&aes128())
        .unwrap()
        .decrypt(opaque(&rec))
        .unwrap();
    assert!(m.payload.is_empty());
    let mut out = Vec::new();
    assert_eq!(
        enc.encrypt_all(ContentType::Handshake, &[], &mut out)
            .unwrap(),
        0
    );
    assert!(out.is_empty());
}
