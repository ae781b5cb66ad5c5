//! c_client_hello's refusals (after a HelloRetryRequest): the session keeps its first
//! ClientHello and key shares, and the right retry then succeeds and completes.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{CipherSuite, ClientHelloBuilder, NamedGroup};

use super::*;
use crate::ops::c_client_hello::handle;

const COOKIE: &[u8] = b"a cookie";

fn hrr() -> Sh {
    Sh::hrr(Some(NamedGroup::Secp256r1), Some(COOKIE))
}

/// The second ClientHello for `hrr()`: an empty P-256 share, the cookie.
fn second(first: &ClientHelloBuilder) -> Vec<u8> {
    first
        .retry(
            Some(COOKIE),
            Some((NamedGroup::Secp256r1, &[][..])),
            Vec::new(),
        )
        .build()
        .unwrap()
}

fn req(hs: &Hs, hrr: &Sh, ch: Vec<u8>) -> pb::CClientHelloRequest {
    pb::CClientHelloRequest {
        session_id: hs.id.clone(),
        hello_retry_request: hrr.encode(),
        client_hello: ch,
    }
}

/// The right retry on `hs`, then a P-256 ServerHello and the flight: the handshake
/// completes.
fn retry_and_complete(f: &Fx, mut hs: Hs, first: &ClientHelloBuilder) {
    let resp = handle(&f.cs, ENGINE, req(&hs, &hrr(), second(first))).unwrap();
    assert_eq!(resp.key_shares.len(), 1);
    let public = resp.key_shares[0].key_exchange.clone();
    hs.transcript
        .restart_for_hello_retry(HashAlg::Sha256)
        .unwrap();
    hs.transcript.add(&hrr().encode());
    hs.transcript.add(&resp.client_hello);
    // The server's P-256 share: the client's own public key is a valid point.
    let sh = Sh {
        share: Some((NamedGroup::Secp256r1, public)),
        ..Sh::new()
    };
    let r = Fx::server_hello_req(&hs, &sh.encode());
    f.server_hello_with(&mut hs, r);
    ops::c_client_finished::handle(
        &f.cs,
        ENGINE,
        Fx::client_finished_req(&hs, hs.full_flight()),
    )
    .unwrap();
}

/// `r` is refused with `want`; the session is as it was: the right retry completes it.
fn refused(
    f: &Fx,
    hs: Hs,
    first: &ClientHelloBuilder,
    r: pb::CClientHelloRequest,
    want: LurkStatus,
) {
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, r)), want);
    assert_eq!(f.sessions(), sessions);
    retry_and_complete(f, hs, first);
}

fn start(f: &Fx, first: &ClientHelloBuilder) -> Hs {
    f.init_as(ENGINE, init_req(first.build().unwrap()))
}

#[test]
fn the_right_retry_completes() {
    let f = fx();
    let first = hello();
    let hs = start(&f, &first);
    retry_and_complete(&f, hs, &first);
}

#[test]
fn an_unknown_or_another_engines_session_is_invalid_session_id() {
    let f = fx();
    let first = hello();
    let hs = start(&f, &first);
    let r = req(&hs, &hrr(), second(&first));
    assert_eq!(
        status(handle(&f.cs, OTHER, r.clone())),
        LurkStatus::InvalidSessionId
    );
    let mut unknown = r;
    unknown.session_id[0] ^= 1;
    refused(&f, hs, &first, unknown, LurkStatus::InvalidSessionId);
}

#[test]
fn after_the_server_hello_is_invalid_status() {
    let f = fx();
    let first = hello();
    let hs = f.handshake();
    let sessions = f.sessions();
    let r = req(&hs, &hrr(), second(&first));
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
fn a_second_hello_retry_request_is_invalid_status() {
    let f = fx();
    let first = hello();
    let hs = start(&f, &first);
    handle(&f.cs, ENGINE, req(&hs, &hrr(), second(&first))).unwrap();
    let sessions = f.sessions();
    let again = Sh::hrr(None, Some(&b"another cookie"[..]));
    let ch3 = first
        .retry(Some(&b"another cookie"[..]), None, Vec::new())
        .build()
        .unwrap();
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, &again, ch3))),
        LurkStatus::InvalidStatus
    );
    assert_eq!(f.sessions(), sessions);
}

#[test]
fn a_hello_retry_request_that_does_not_parse_is_invalid_format() {
    let f = fx();
    let first = hello();
    let hs = start(&f, &first);
    let mut r = req(&hs, &hrr(), second(&first));
    r.hello_retry_request.pop();
    refused(&f, hs, &first, r, LurkStatus::InvalidFormat);
}

#[test]
fn hello_retry_requests_breaking_a_rule_are_invalid_handshake() {
    let f = fx();
    let first = hello().cipher_suites(&[CipherSuite::TlsAes128GcmSha256]);
    for bad in [
        // A ServerHello, not an HRR.
        Sh::new(),
        // Not echoing legacy_session_id.
        Sh {
            session_id: vec![9; 32],
            ..hrr()
        },
        // A suite not offered.
        Sh {
            suite: CipherSuite::TlsAes256GcmSha384,
            ..hrr()
        },
        // A group that already had a share, or that was not offered.
        Sh::hrr(Some(NamedGroup::X25519), Some(COOKIE)),
        Sh::hrr(Some(NamedGroup::Secp384r1), Some(COOKIE)),
        // Neither a group nor a cookie.
        Sh::hrr(None, None),
    ] {
        let hs = start(&f, &first);
        let r = req(&hs, &bad, second(&first));
        refused(&f, hs, &first, r, LurkStatus::InvalidHandshake);
    }
}

#[test]
fn second_client_hellos_breaking_a_rule_are_invalid_handshake() {
    let f = fx();
    let first = hello();
    for (why, ch2) in [
        (
            "the HRR's group share filled by the engine",
            first
                .retry(
                    Some(COOKIE),
                    Some((NamedGroup::Secp256r1, &[4u8; 65][..])),
                    Vec::new(),
                )
                .build()
                .unwrap(),
        ),
        (
            "no share for the HRR's group",
            first.retry(Some(COOKIE), None, Vec::new()).build().unwrap(),
        ),
        (
            "another server_name (RFC 8446 §4.1.2)",
            first
                .clone()
                .server_name("other.example")
                .retry(
                    Some(COOKIE),
                    Some((NamedGroup::Secp256r1, &[][..])),
                    Vec::new(),
                )
                .build()
                .unwrap(),
        ),
        (
            "without the cookie",
            first
                .retry(None, Some((NamedGroup::Secp256r1, &[][..])), Vec::new())
                .build()
                .unwrap(),
        ),
    ] {
        let hs = start(&f, &first);
        let sessions = f.sessions();
        assert_eq!(
            status(handle(&f.cs, ENGINE, req(&hs, &hrr(), ch2))),
            LurkStatus::InvalidHandshake,
            "{why}"
        );
        assert_eq!(f.sessions(), sessions);
        retry_and_complete(&f, hs, &first);
    }
}

#[test]
fn a_second_client_hello_that_does_not_parse_is_invalid_format() {
    let f = fx();
    let first = hello();
    let hs = start(&f, &first);
    let mut ch2 = second(&first);
    ch2.truncate(10);
    let r = req(&hs, &hrr(), ch2);
    refused(&f, hs, &first, r, LurkStatus::InvalidFormat);
}

/// RFC 8446 §4.1.2: the second ClientHello may only drop PSKs; the retry rule
/// (`wire::check_second_client_hello`) refuses a new identity before the operation's own
/// check (invalid_psk) is reached.
#[test]
fn a_new_psk_in_the_second_client_hello_is_invalid_handshake() {
    let f = fx();
    f.s3_ticket(ENGINE);
    let ticket = s3()
        .new_session_ticket_fields
        .as_ref()
        .unwrap()
        .ticket
        .clone();
    let first = resumption_hello(&ticket);
    let hs = f.init_as(
        ENGINE,
        pb::CInitClientHelloRequest {
            psks: vec![resumption_info()],
            ..init_req(first.build().unwrap())
        },
    );
    let new_psk = lurk_proto::wire::hello::OfferedPsk {
        identity: b"a new identity".to_vec(),
        obfuscated_ticket_age: 0,
        binder_len: 32,
    };
    let ch2 = first
        .retry(
            Some(COOKIE),
            Some((NamedGroup::Secp256r1, &[][..])),
            vec![new_psk],
        )
        .build()
        .unwrap();
    let sessions = f.sessions();
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, &hrr(), ch2))),
        LurkStatus::InvalidHandshake
    );
    assert_eq!(f.sessions(), sessions);
    // The PSK the first ClientHello offered is still in the session.
    let keep = first.psks().to_vec();
    let ch2 = first
        .retry(Some(COOKIE), Some((NamedGroup::Secp256r1, &[][..])), keep)
        .build()
        .unwrap();
    let resp = handle(&f.cs, ENGINE, req(&hs, &hrr(), ch2)).unwrap();
    assert_eq!(resp.binders.len(), 1);
}
