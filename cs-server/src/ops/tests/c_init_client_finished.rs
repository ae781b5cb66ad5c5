//! c_init_client_finished's refusals (sequence C: the engine ran the key schedule). The
//! exchange opens a session only for post-handshake authentication: a refusal opens none.
//! Signing the client CertificateVerify needs the token (e2e: cs_service.rs).

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{CipherSuite, ClientHelloBuilder, NamedGroup};

use super::*;
use crate::ops::c_init_client_finished::handle;

/// The engine's ClientHello with its own x25519 share (§3's) and post_handshake_auth.
fn engine_hello() -> ClientHelloBuilder {
    let client = &s3().ephemeral_keys.client[0];
    ClientHelloBuilder::new([0x22; 32])
        .server_name(SNI)
        .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
        .signature_algorithms(&[SignatureScheme::RsaPssRsaeSha256])
        .key_share(NamedGroup::X25519, &client.public_key)
        .post_handshake_auth(true)
}

/// §3's messages from the ServerHello on (the server Finished is not checked here: the
/// engine holds the keys).
fn after_hello() -> Vec<Vec<u8>> {
    let m = &s3().messages;
    let [cert, cv] = s3_certificate();
    vec![
        Sh::new().encode(),
        m.encrypted_extensions.clone(),
        cert.to_vec(),
        cv.to_vec(),
        m.server_finished.clone(),
    ]
}

fn req(messages: &[Vec<u8>]) -> pb::CInitClientFinishedRequest {
    pb::CInitClientFinishedRequest {
        handshake_messages: messages.concat(),
        freshness: pb::Freshness::Sha256 as i32,
        ..Default::default()
    }
}

fn good() -> Vec<Vec<u8>> {
    let mut v = vec![engine_hello().build().unwrap()];
    v.extend(after_hello());
    v
}

/// A session opened by c_init_client_finished (post_handshake_auth offered), awaiting the
/// client Finished.
pub(super) fn engine_keyed_session(f: &Fx) -> Vec<u8> {
    let resp = handle(&f.cs, ENGINE, req(&good())).unwrap();
    assert!(!resp.last_exchange);
    assert_eq!(resp.session_id.len(), 16);
    resp.session_id
}

/// `r` is refused with `want` and opens no session; the right handshake then opens one.
fn refused(f: &Fx, r: pb::CInitClientFinishedRequest, want: LurkStatus) {
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, r)), want);
    assert_eq!(f.sessions(), sessions);
    engine_keyed_session(f);
    assert_eq!(f.sessions(), sessions + 1);
}

/// `good()` with message `at` replaced by `with` (none: removed).
fn edited(at: usize, with: Option<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut v = good();
    match with {
        Some(m) => v[at] = m,
        None => {
            v.remove(at);
        }
    }
    v
}

#[test]
fn the_handshake_without_post_handshake_auth_opens_no_session() {
    let f = fx();
    let mut v = good();
    v[0] = engine_hello().post_handshake_auth(false).build().unwrap();
    let resp = handle(&f.cs, ENGINE, req(&v)).unwrap();
    assert!(resp.last_exchange && resp.session_id.is_empty());
    assert_eq!(f.sessions(), 0);
}

#[test]
fn messages_that_do_not_parse_are_invalid_format() {
    let f = fx();
    let mut r = req(&good());
    r.handshake_messages.pop();
    refused(&f, r, LurkStatus::InvalidFormat);
}

#[test]
fn an_empty_key_share_is_invalid_format() {
    let f = fx();
    let ch = engine_hello()
        .key_share(NamedGroup::Secp256r1, &[])
        .build()
        .unwrap();
    refused(&f, req(&edited(0, Some(ch))), LurkStatus::InvalidFormat);
}

#[test]
fn an_unknown_freshness_is_invalid_freshness() {
    let f = fx();
    let mut r = req(&good());
    r.freshness = 77;
    refused(&f, r.clone(), LurkStatus::InvalidFreshness);
    r.freshness = pb::Freshness::Null as i32;
    refused(&f, r, LurkStatus::InvalidFreshness);
}

#[test]
fn messages_out_of_order_or_missing_are_invalid_handshake() {
    let f = fx();
    for v in [
        // Not starting with the ClientHello.
        edited(0, None),
        // No ServerHello, no EncryptedExtensions.
        edited(1, None),
        edited(2, None),
        // No server Certificate in a certificate handshake.
        edited(3, None),
        // No server Finished.
        edited(5, None),
        // Something else than EndOfEarlyData after it.
        [good(), vec![s3().messages.client_finished.clone()]].concat(),
    ] {
        refused(&f, req(&v), LurkStatus::InvalidHandshake);
    }
}

#[test]
fn a_suite_not_offered_is_invalid_handshake() {
    let f = fx();
    let ch = engine_hello()
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .build()
        .unwrap();
    let mut v = edited(0, Some(ch));
    v[1] = Sh {
        suite: CipherSuite::TlsAes256GcmSha384,
        ..Sh::new()
    }
    .encode();
    refused(&f, req(&v), LurkStatus::InvalidHandshake);
}

#[test]
fn a_certificate_request_with_a_context_is_invalid_handshake() {
    let f = fx();
    let mut v = good();
    v.insert(3, certificate_request(b"ctx"));
    refused(&f, req(&v), LurkStatus::InvalidHandshake);
}

#[test]
fn a_certificate_request_needs_the_client_certificate() {
    let f = fx();
    let mut v = good();
    v.insert(3, certificate_request(b""));
    refused(&f, req(&v), LurkStatus::InvalidCertificate);
    let r = pb::CInitClientFinishedRequest {
        client_certificate: certificate(b"", &[b"a certificate of no key"]),
        key_id: "k1".into(),
        ..req(&v)
    };
    refused(&f, r, LurkStatus::InvalidCertificate);
    // An empty client Certificate: no CertificateVerify, and the session opens.
    let r = pb::CInitClientFinishedRequest {
        client_certificate: certificate(b"", &[]),
        ..req(&v)
    };
    let ok = handle(&f.cs, ENGINE, r).unwrap();
    assert!(ok.certificate_verify.is_empty() && !ok.last_exchange);
}

/// After a HelloRetryRequest: the second ServerHello must not be another HRR and must
/// select the HRR's suite.
#[test]
fn hello_retry_refusals() {
    let f = fx();
    let first = engine_hello();
    let hrr = Sh::hrr(Some(NamedGroup::Secp256r1), Some(&b"cookie"[..]));
    let second = first
        .retry(
            Some(&b"cookie"[..]),
            Some((NamedGroup::Secp256r1, &[4u8; 65][..])),
            Vec::new(),
        )
        .build()
        .unwrap();
    let with_hrr = |sh: Vec<u8>| {
        let mut v = vec![first.build().unwrap(), hrr.encode(), second.clone()];
        let mut rest = after_hello();
        rest[0] = sh;
        v.extend(rest);
        v
    };
    // The retried handshake is accepted (the server's share is not checked here).
    let p256 = Sh {
        share: Some((NamedGroup::Secp256r1, vec![4; 65])),
        ..Sh::new()
    };
    handle(&f.cs, ENGINE, req(&with_hrr(p256.encode()))).unwrap();
    let sessions = f.sessions();
    refused(
        &f,
        req(&with_hrr(hrr.encode())),
        LurkStatus::InvalidHandshake,
    );
    let other_suite = Sh {
        suite: CipherSuite::TlsAes256GcmSha384,
        ..p256
    };
    refused(
        &f,
        req(&with_hrr(other_suite.encode())),
        LurkStatus::InvalidHandshake,
    );
    // A second ClientHello that changes what RFC 8446 §4.1.2 does not allow.
    let mut v = with_hrr(Sh::new().encode());
    v[2] = first
        .clone()
        .server_name("other.example")
        .retry(
            Some(&b"cookie"[..]),
            Some((NamedGroup::Secp256r1, &[4u8; 65][..])),
            Vec::new(),
        )
        .build()
        .unwrap();
    refused(&f, req(&v), LurkStatus::InvalidHandshake);
    assert_eq!(f.sessions(), sessions + 3);
}

#[test]
fn past_the_engines_session_cap_is_too_many_sessions() {
    let f = fx_with(|c| c.sessions.max_per_engine = 1);
    engine_keyed_session(&f);
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&good()))),
        LurkStatus::TooManySessions
    );
    assert_eq!(f.sessions(), 1);
    // The handshake that needs no session is still served.
    let mut v = good();
    v[0] = engine_hello().post_handshake_auth(false).build().unwrap();
    handle(&f.cs, ENGINE, req(&v)).unwrap();
}
