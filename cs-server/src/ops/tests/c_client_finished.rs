//! c_client_finished's refusals: the session stays in its handshake stage (nothing is
//! derived, signed or released), and the right flight then completes it.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;

use super::*;
use crate::ops::c_client_finished::handle;

/// `req` is refused with `want`; the session count is unchanged and §3's flight (with a
/// Finished that verifies) then completes the same session.
fn refused(f: &Fx, hs: &Hs, req: pb::CClientFinishedRequest, want: LurkStatus) {
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, req)), want);
    assert_eq!(f.sessions(), sessions);
    let ok = handle(&f.cs, ENGINE, Fx::client_finished_req(hs, hs.full_flight())).unwrap();
    assert_eq!(ok.client_finished.len(), 4 + 32);
}

fn ee() -> &'static [u8] {
    &s3().messages.encrypted_extensions
}

#[test]
fn asking_for_r_is_refused() {
    let f = fx();
    let hs = f.handshake();
    let mut req = Fx::client_finished_req(&hs, hs.full_flight());
    req.secret_request = Some(pb::SecretRequest {
        r: true,
        ..Default::default()
    });
    refused(&f, &hs, req, LurkStatus::InvalidSecretRequest);
}

#[test]
fn before_the_server_hello_is_invalid_status() {
    let f = fx();
    let mut hs = f.hello();
    let sessions = f.sessions();
    let req = Fx::client_finished_req(&hs, ee().to_vec());
    assert_eq!(
        status(handle(&f.cs, ENGINE, req)),
        LurkStatus::InvalidStatus
    );
    assert_eq!(f.sessions(), sessions);
    f.server_hello(&mut hs);
    handle(
        &f.cs,
        ENGINE,
        Fx::client_finished_req(&hs, hs.full_flight()),
    )
    .unwrap();
}

#[test]
fn another_engines_session_is_invalid_session_id() {
    let f = fx();
    let hs = f.handshake();
    let sessions = f.sessions();
    let req = Fx::client_finished_req(&hs, hs.full_flight());
    assert_eq!(
        status(handle(&f.cs, OTHER, req)),
        LurkStatus::InvalidSessionId
    );
    assert_eq!(f.sessions(), sessions);
    handle(
        &f.cs,
        ENGINE,
        Fx::client_finished_req(&hs, hs.full_flight()),
    )
    .unwrap();
}

#[test]
fn messages_that_do_not_parse_are_invalid_format() {
    let f = fx();
    let hs = f.handshake();
    let mut flight = hs.full_flight();
    flight.pop();
    refused(
        &f,
        &hs,
        Fx::client_finished_req(&hs, flight),
        LurkStatus::InvalidFormat,
    );
}

#[test]
fn a_flight_not_starting_with_encrypted_extensions_is_invalid_handshake() {
    let f = fx();
    let hs = f.handshake();
    let [cert, cv] = s3_certificate();
    let fin = hs.server_finished(&[cert, cv].concat());
    let flight = [cert, cv, fin.as_slice()].concat();
    refused(
        &f,
        &hs,
        Fx::client_finished_req(&hs, flight),
        LurkStatus::InvalidHandshake,
    );
}

#[test]
fn early_data_accepted_but_not_offered_is_invalid_handshake() {
    let f = fx();
    let hs = f.handshake();
    let flight = hs.flight(&s4().messages.encrypted_extensions, &s3_certificate());
    refused(
        &f,
        &hs,
        Fx::client_finished_req(&hs, flight),
        LurkStatus::InvalidHandshake,
    );
}

#[test]
fn a_certificate_request_with_a_context_is_invalid_handshake() {
    let f = fx();
    let hs = f.handshake();
    let [cert, cv] = s3_certificate();
    let flight = hs.flight(ee(), &[&certificate_request(b"ctx"), cert, cv]);
    refused(
        &f,
        &hs,
        Fx::client_finished_req(&hs, flight),
        LurkStatus::InvalidHandshake,
    );
}

#[test]
fn a_flight_without_the_servers_certificate_is_invalid_handshake() {
    let f = fx();
    let [_, cv] = s3_certificate();
    for middle in [&[][..], &[cv][..]] {
        let hs = f.handshake();
        let flight = hs.flight(ee(), middle);
        refused(
            &f,
            &hs,
            Fx::client_finished_req(&hs, flight),
            LurkStatus::InvalidHandshake,
        );
    }
}

#[test]
fn a_server_finished_that_does_not_verify_is_invalid_handshake() {
    let f = fx();
    let hs = f.handshake();
    let mut flight = hs.full_flight();
    let last = flight.len() - 1;
    flight[last] ^= 1;
    refused(
        &f,
        &hs,
        Fx::client_finished_req(&hs, flight),
        LurkStatus::InvalidHandshake,
    );
}

#[test]
fn messages_after_the_server_finished_are_invalid_handshake() {
    let f = fx();
    let hs = f.handshake();
    let mut flight = hs.full_flight();
    flight.extend_from_slice(s4().messages.end_of_early_data.as_deref().unwrap());
    refused(
        &f,
        &hs,
        Fx::client_finished_req(&hs, flight),
        LurkStatus::InvalidHandshake,
    );
}

/// The server asked for a certificate: the answers the CS can give without a token.
#[test]
fn a_certificate_request_needs_the_client_certificate_of_a_known_key() {
    let f = fx();
    let hs = f.handshake();
    let [cert, cv] = s3_certificate();
    let cr = certificate_request(b"");
    let flight = hs.flight(ee(), &[&cr, cert, cv]);
    let with = |client_certificate: Vec<u8>, key_id: &str| pb::CClientFinishedRequest {
        client_certificate,
        key_id: key_id.to_owned(),
        ..Fx::client_finished_req(&hs, flight.clone())
    };
    let sessions = f.sessions();
    for (req, want) in [
        // No client Certificate at all.
        (with(Vec::new(), ""), LurkStatus::InvalidCertificate),
        // A Certificate that does not echo the (empty) context.
        (
            with(certificate(b"x", &[]), ""),
            LurkStatus::InvalidCertificate,
        ),
        // A certificate for a key this CS does not have.
        (
            with(certificate(b"", &[b"not a key's certificate"]), "k1"),
            LurkStatus::InvalidCertificate,
        ),
    ] {
        assert_eq!(status(handle(&f.cs, ENGINE, req)), want);
        assert_eq!(f.sessions(), sessions);
    }
    // An empty Certificate (no suitable key): no CertificateVerify, the handshake goes on.
    let ok = handle(&f.cs, ENGINE, with(certificate(b"", &[]), "")).unwrap();
    assert!(ok.certificate_verify.is_empty());
    assert_eq!(ok.client_finished.len(), 36);
}

/// §4's resumption: the PSK-mode rules.
#[test]
fn psk_handshake_refusals() {
    let f = fx();
    f.s3_ticket(ENGINE);
    let hs = f.resumed();
    let ee4 = &s4().messages.encrypted_extensions;
    let eoed = s4().messages.end_of_early_data.as_deref().unwrap();
    let sessions = f.sessions();
    for (flight, want) in [
        // RFC 8446 §4.3.2: no CertificateRequest in a PSK handshake.
        (
            [hs.flight(ee4, &[&certificate_request(b"")]), eoed.to_vec()].concat(),
            LurkStatus::InvalidHandshake,
        ),
        // Early data accepted: EndOfEarlyData must follow the server Finished.
        (hs.flight(ee4, &[]), LurkStatus::InvalidHandshake),
        // Nothing after it.
        (
            [s4_flight(&hs), eoed.to_vec()].concat(),
            LurkStatus::InvalidHandshake,
        ),
    ] {
        let req = Fx::client_finished_req(&hs, flight);
        assert_eq!(status(handle(&f.cs, ENGINE, req)), want);
        assert_eq!(f.sessions(), sessions);
    }
    handle(&f.cs, ENGINE, Fx::client_finished_req(&hs, s4_flight(&hs))).unwrap();
}

#[test]
fn last_exchange_closes_the_session_and_a_second_flight_is_refused() {
    let f = fx();
    let hs = f.handshake();
    let sessions = f.sessions();
    let req = pb::CClientFinishedRequest {
        last_exchange: true,
        ..Fx::client_finished_req(&hs, hs.full_flight())
    };
    handle(&f.cs, ENGINE, req.clone()).unwrap();
    assert_eq!(f.sessions(), sessions - 1);
    assert_eq!(
        status(handle(&f.cs, ENGINE, req)),
        LurkStatus::InvalidSessionId
    );
}
