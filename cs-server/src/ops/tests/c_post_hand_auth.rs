//! c_post_hand_auth's refusals. Without a token the CS answers only with an empty client
//! Certificate (no key: no CertificateVerify, RFC 8446 §4.4.2), which is enough to move the
//! session on; the signature itself is covered by the e2e suites.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;

use super::c_init_client_finished::engine_keyed_session;
use super::*;
use crate::ops::c_post_hand_auth::handle;

/// The client Finished the engine made (sequence C): any 32-byte verify_data.
fn client_finished() -> Vec<u8> {
    msgs::encode(HandshakeType::Finished, &[0x33; 32])
}

fn req(id: &[u8], messages: Vec<u8>, context: &[u8]) -> pb::CPostHandAuthRequest {
    pb::CPostHandAuthRequest {
        session_id: id.to_vec(),
        handshake_messages: messages,
        certificate_request: certificate_request(context),
        client_certificate: certificate(context, &[]),
        ..Default::default()
    }
}

/// `r` is refused with `want`; nothing changed: the session count is the same and the
/// right request (`then`) succeeds on the session.
fn refused(f: &Fx, r: pb::CPostHandAuthRequest, want: LurkStatus, then: pb::CPostHandAuthRequest) {
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, r)), want);
    assert_eq!(f.sessions(), sessions);
    let ok = handle(&f.cs, ENGINE, then).unwrap();
    assert!(ok.certificate_verify.is_empty());
}

#[test]
fn an_unknown_or_another_engines_session_is_invalid_session_id() {
    let f = fx();
    let id = engine_keyed_session(&f);
    let good = req(&id, client_finished(), b"c1");
    assert_eq!(
        status(handle(&f.cs, OTHER, good.clone())),
        LurkStatus::InvalidSessionId
    );
    refused(
        &f,
        req(b"nope", Vec::new(), b"c1"),
        LurkStatus::InvalidSessionId,
        good,
    );
}

#[test]
fn during_the_handshake_is_invalid_status() {
    let f = fx();
    let hs = f.handshake();
    let sessions = f.sessions();
    let r = req(&hs.id, Vec::new(), b"c1");
    assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::InvalidStatus);
    assert_eq!(f.sessions(), sessions);
    ops::c_client_finished::handle(
        &f.cs,
        ENGINE,
        Fx::client_finished_req(&hs, hs.full_flight()),
    )
    .unwrap();
}

#[test]
fn without_post_handshake_auth_offered_is_invalid_handshake() {
    let f = fx();
    let hs = f.established();
    let sessions = f.sessions();
    let r = req(&hs.id, Vec::new(), b"c1");
    assert_eq!(
        status(handle(&f.cs, ENGINE, r)),
        LurkStatus::InvalidHandshake
    );
    assert_eq!(f.sessions(), sessions);
    // The session still registers tickets.
    ops::c_register_tickets::handle(
        &f.cs,
        ENGINE,
        pb::CRegisterTicketsRequest {
            session_id: hs.id,
            new_session_tickets: vec![nst(60, b"n", b"t")],
            last_exchange: false,
        },
    )
    .unwrap();
}

#[test]
fn the_first_request_of_sequence_c_must_carry_the_client_finished() {
    let f = fx();
    let id = engine_keyed_session(&f);
    let good = req(&id, client_finished(), b"c1");
    refused(
        &f,
        req(&id, Vec::new(), b"c1"),
        LurkStatus::InvalidHandshake,
        good.clone(),
    );
    // Once received, no handshake message is expected any more.
    refused(
        &f,
        req(&id, client_finished(), b"c2"),
        LurkStatus::InvalidHandshake,
        req(&id, Vec::new(), b"c2"),
    );
}

#[test]
fn a_client_finished_of_the_wrong_length_is_refused() {
    let f = fx();
    let id = engine_keyed_session(&f);
    let short = msgs::encode(HandshakeType::Finished, &[0x33; 20]);
    refused(
        &f,
        req(&id, short, b"c1"),
        LurkStatus::InvalidHandshake,
        req(&id, client_finished(), b"c1"),
    );
}

#[test]
fn a_certificate_request_that_does_not_parse_is_invalid_format() {
    let f = fx();
    let id = engine_keyed_session(&f);
    let mut bad = req(&id, client_finished(), b"c1");
    bad.certificate_request.pop();
    refused(
        &f,
        bad,
        LurkStatus::InvalidFormat,
        req(&id, client_finished(), b"c1"),
    );
}

#[test]
fn an_empty_or_repeated_context_is_invalid_handshake() {
    let f = fx();
    let id = engine_keyed_session(&f);
    refused(
        &f,
        req(&id, client_finished(), b""),
        LurkStatus::InvalidHandshake,
        req(&id, client_finished(), b"c1"),
    );
    refused(
        &f,
        req(&id, Vec::new(), b"c1"),
        LurkStatus::InvalidHandshake,
        req(&id, Vec::new(), b"c2"),
    );
}

#[test]
fn a_certificate_not_echoing_the_context_or_of_no_key_is_invalid_certificate() {
    let f = fx();
    let id = engine_keyed_session(&f);
    let mut other_context = req(&id, client_finished(), b"c1");
    other_context.client_certificate = certificate(b"c2", &[]);
    refused(
        &f,
        other_context,
        LurkStatus::InvalidCertificate,
        req(&id, client_finished(), b"c1"),
    );
    let mut no_key = req(&id, Vec::new(), b"c2");
    no_key.client_certificate = certificate(b"c2", &[b"a certificate of no key"]);
    no_key.key_id = "k1".into();
    refused(
        &f,
        no_key,
        LurkStatus::InvalidCertificate,
        req(&id, Vec::new(), b"c2"),
    );
}

#[test]
fn past_the_per_session_cap_is_invalid_status() {
    let f = fx_with(|c| c.sessions.max_post_handshake_auths = 2);
    let id = engine_keyed_session(&f);
    handle(&f.cs, ENGINE, req(&id, client_finished(), b"c1")).unwrap();
    handle(&f.cs, ENGINE, req(&id, Vec::new(), b"c2")).unwrap();
    let sessions = f.sessions();
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&id, Vec::new(), b"c3"))),
        LurkStatus::InvalidStatus
    );
    assert_eq!(f.sessions(), sessions);
}

#[test]
fn last_exchange_closes_the_session() {
    let f = fx();
    let id = engine_keyed_session(&f);
    let r = pb::CPostHandAuthRequest {
        last_exchange: true,
        ..req(&id, client_finished(), b"c1")
    };
    assert!(handle(&f.cs, ENGINE, r).unwrap().last_exchange);
    assert_eq!(f.sessions(), 0);
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&id, Vec::new(), b"c2"))),
        LurkStatus::InvalidSessionId
    );
}
