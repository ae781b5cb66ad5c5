//! The wire views, the flight splitter, the engine's record deframer and handshake joiner.
//! Where a view has an encoder, what parses must re-encode to the same bytes.

use std::path::Path;

use lurk_engine::internals::deframer::Deframer;
use lurk_engine::internals::joiner::HandshakeJoiner;
use lurk_proto::wire::{
    complete_client_hello, encode_certificate, encode_certificate_verify, encode_finished,
    set_binders, split_handshake_messages, truncated_for_binders, Certificate, CertificateRequest,
    CertificateVerify, ClientHello, EncryptedExtensions, EndOfEarlyData, Finished,
    HandshakeMessage, HashAlg, KeyUpdate, NamedGroup, NewSessionTicket, ServerHello,
};

pub const TARGETS: &[&str] = &[
    "client_hello",
    "server_hello",
    "encrypted_extensions",
    "certificate_request",
    "certificate",
    "certificate_verify",
    "finished",
    "new_session_ticket",
    "key_update",
    "flight",
    "deframer",
    "joiner",
];

/// The ClientHello path of the Crypto Service: parse, fill the empty key shares and the
/// random, recompute the binders' place, write binders. What it produces must parse.
fn client_hello(data: &[u8]) {
    let Ok(ch) = ClientHello::parse(data) else {
        return;
    };
    let fills: Vec<(NamedGroup, Vec<u8>)> = ch
        .placeholder_key_shares()
        .iter()
        .map(|e| (e.group, vec![0x42; e.group.public_key_len().unwrap_or(32)]))
        .collect();
    let _ = ch.ensure_complete();
    if let Ok(mut done) = complete_client_hello(data, Some(&[0x11; 32]), &fills) {
        let parsed = ClientHello::parse(&done).expect("a completed ClientHello parses");
        parsed
            .ensure_complete()
            .expect("a completed ClientHello has no empty share");
        if let Some(psk) = &parsed.pre_shared_key {
            let binders: Vec<Vec<u8>> = psk
                .binders
                .iter()
                .map(|b| vec![7; b.binder.len()])
                .collect();
            let truncated = truncated_for_binders(&done).expect("has binders").len();
            assert_eq!(truncated, psk.binders_offset);
            set_binders(&mut done, &binders).expect("same lengths");
            ClientHello::parse(&done).expect("still parses with binders");
        }
    }
}

/// Every view on one message (what the flight target and the joiner produce).
fn any_view(m: &HandshakeMessage<'_>) {
    let _ = ClientHello::from_message(m);
    let _ = ServerHello::from_message(m);
    let _ = EncryptedExtensions::from_message(m);
    let _ = CertificateRequest::from_message(m);
    let _ = Certificate::from_message(m);
    let _ = CertificateVerify::from_message(m);
    let _ = NewSessionTicket::from_message(m);
    let _ = KeyUpdate::from_message(m);
    let _ = EndOfEarlyData::from_message(m);
    let _ = Finished::from_message(m, HashAlg::Sha256);
    let _ = Finished::from_message(m, HashAlg::Sha384);
}

pub fn run(target: &str, data: &[u8]) {
    match target {
        "client_hello" => client_hello(data),
        "server_hello" => {
            let _ = ServerHello::parse(data);
        }
        "encrypted_extensions" => {
            let _ = EncryptedExtensions::parse(data);
        }
        "certificate_request" => {
            let _ = CertificateRequest::parse(data);
        }
        "certificate" => {
            if let Ok(c) = Certificate::parse(data) {
                if c.entries.iter().all(|e| e.extensions.is_empty()) {
                    let chain = c.chain();
                    assert_eq!(encode_certificate(c.context, &chain).unwrap(), data);
                }
            }
        }
        "certificate_verify" => {
            if let Ok(cv) = CertificateVerify::parse(data) {
                assert_eq!(
                    encode_certificate_verify(cv.scheme, cv.signature).unwrap(),
                    data
                );
            }
        }
        "finished" => {
            for hash in [HashAlg::Sha256, HashAlg::Sha384] {
                if let Ok(f) = Finished::parse(data, hash) {
                    assert_eq!(encode_finished(f.verify_data).unwrap(), data);
                }
            }
        }
        "new_session_ticket" => {
            let _ = NewSessionTicket::parse(data);
        }
        "key_update" => {
            let _ = KeyUpdate::parse(data);
            let _ = EndOfEarlyData::parse(data);
        }
        "flight" => {
            if let Ok(messages) = split_handshake_messages(data) {
                messages.iter().for_each(any_view);
            }
        }
        "deframer" => {
            let mut d = Deframer::new();
            d.push(data);
            while let Ok(Some(record)) = d.next_record() {
                let _ = record.encode();
            }
        }
        "joiner" => {
            // The first byte sets the fragment size: messages split across records anyhow.
            let Some((&size, rest)) = data.split_first() else {
                return;
            };
            let mut j = HandshakeJoiner::new();
            for fragment in rest.chunks(usize::from(size).max(1)) {
                if j.push(fragment).is_err() {
                    return;
                }
                while let Some(m) = j.next_message() {
                    let parsed = HandshakeMessage::parse(&m.encoded);
                    if let Ok(parsed) = parsed {
                        any_view(&parsed);
                    }
                }
            }
        }
        other => panic!("unknown target {other}"),
    }
}

/// The seed corpus: each RFC 8448 handshake message for the views, the flight target and
/// the joiner; each record for the deframer.
pub fn write_seeds(dir: &Path) -> std::io::Result<()> {
    // Sections in name order, values in key order: the corpus the JSON walk used to give.
    let mut sections = lurk_test_support::rfc8448().sections();
    sections.sort_by_key(|s| s.name);
    let messages: Vec<Vec<u8>> = sections
        .iter()
        .flat_map(|s| s.messages.iter().map(|(_, m)| m.to_vec()))
        .collect();
    let records: Vec<Vec<u8>> = sections
        .iter()
        .flat_map(|s| s.records.iter().map(|r| r.record.clone()))
        .collect();
    for target in TARGETS {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        let seeds: Vec<Vec<u8>> = match *target {
            "deframer" => records.clone(),
            "joiner" => messages.iter().map(|m| [&[5u8][..], m].concat()).collect(),
            _ => messages.clone(),
        };
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(d.join(format!("{i:03}")), s)?;
        }
    }
    Ok(())
}
