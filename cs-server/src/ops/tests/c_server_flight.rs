//! c_server_flight's refusals: the session stays in its hello stage (the handshake secrets
//! derived to open the records are dropped), and the right flight then completes it.
//!
//! To seal the records before the exchange the test must know server_handshake_traffic
//! secret first: the ClientHello carries the engine's x25519 share (RFC 8448 §3's client
//! key) and the engine sends §3's (EC)DHE secret (e_generated), so the test derives the
//! secret as the server does.

use lurk_proto::key_schedule::KeyScheduleEarly;
use lurk_proto::pb;
use lurk_proto::record::MAX_INNER_PLAINTEXT_LEN;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{CipherSuite, ContentType};

use super::*;
use crate::ops::c_server_flight::{handle, MAX_RECORDS};

/// A session after c_init_client_hello on a ClientHello with §3's client share; the
/// transcript holds the ServerHello too and `server_hs` is the secret [`Sh::new`] gives.
pub(super) fn hello_with_engine_share(f: &Fx) -> Hs {
    let client = &s3().ephemeral_keys.client[0];
    let ch = ClientHelloBuilder::new([0x44; 32])
        .server_name(SNI)
        .supported_groups(&[NamedGroup::X25519])
        .key_share(NamedGroup::X25519, &client.public_key)
        .build()
        .unwrap();
    let mut hs = f.init_as(ENGINE, init_req(ch));
    hs.transcript.add(&Sh::new().encode());
    let th = hs.transcript.hash(HashAlg::Sha256);
    let ecdhe = &s3().key_schedule.ecdhe_shared_secret;
    let ks = KeyScheduleEarly::new(HashAlg::Sha256, None).into_handshake(Some(ecdhe));
    hs.server_hs = ks.server_handshake_traffic_secret(&th).as_bytes().to_vec();
    hs
}

pub(super) fn req(hs: &Hs, records: Vec<Vec<u8>>) -> pb::CServerFlightRequest {
    pb::CServerFlightRequest {
        session_id: hs.id.clone(),
        server_hello: Sh::new().encode(),
        ephemeral: Some(pb::Ephemeral {
            method: pb::EphemeralMethod::EGenerated as i32,
            shared_secret: s3().key_schedule.ecdhe_shared_secret.clone(),
        }),
        records,
        ..Default::default()
    }
}

/// §3's flight in one record, as the server sends it.
pub(super) fn good_records(hs: &Hs) -> Vec<Vec<u8>> {
    vec![hs.record(0, &hs.full_flight(), ContentType::Handshake)]
}

/// `r` is refused with `want`; the session is still in its hello stage: the right
/// records then complete the handshake in the same exchange.
fn refused(f: &Fx, hs: &Hs, r: pb::CServerFlightRequest, want: LurkStatus) {
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, r)), want);
    assert_eq!(f.sessions(), sessions);
    let ok = handle(&f.cs, ENGINE, req(hs, good_records(hs))).unwrap();
    assert!(ok.flight_complete);
    assert_eq!(ok.client_finished.len(), 36);
}

#[test]
fn the_flight_in_one_exchange_or_in_two() {
    let f = fx();
    let hs = hello_with_engine_share(&f);
    assert!(
        handle(&f.cs, ENGINE, req(&hs, good_records(&hs)))
            .unwrap()
            .flight_complete
    );
    // No record: the handshake secrets only, then c_client_finished as after c_server_hello.
    let hs = hello_with_engine_share(&f);
    let resp = handle(&f.cs, ENGINE, req(&hs, Vec::new())).unwrap();
    assert!(!resp.flight_complete);
    assert_eq!(server_hs_of(&resp.secrets), hs.server_hs);
    ops::c_client_finished::handle(
        &f.cs,
        ENGINE,
        Fx::client_finished_req(&hs, hs.full_flight()),
    )
    .unwrap();
}

#[test]
fn the_exchange_off_is_invalid_type() {
    let f = fx_with(|c| c.exchanges.server_flight = false);
    let mut hs = f.hello();
    let sessions = f.sessions();
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, Vec::new()))),
        LurkStatus::InvalidType
    );
    assert_eq!(f.sessions(), sessions);
    // The standard pair serves the session.
    f.server_hello(&mut hs);
}

#[test]
fn asking_for_r_is_refused() {
    let f = fx();
    let hs = hello_with_engine_share(&f);
    let mut r = req(&hs, good_records(&hs));
    r.secret_request = Some(pb::SecretRequest {
        r: true,
        ..Default::default()
    });
    refused(&f, &hs, r, LurkStatus::InvalidSecretRequest);
}

#[test]
fn more_records_than_the_cap_is_invalid_format() {
    let f = fx();
    let hs = hello_with_engine_share(&f);
    let r = req(&hs, vec![vec![23, 3, 3, 0, 1, 0]; MAX_RECORDS + 1]);
    refused(&f, &hs, r, LurkStatus::InvalidFormat);
}

#[test]
fn an_unknown_or_another_engines_session_is_invalid_session_id() {
    let f = fx();
    let hs = hello_with_engine_share(&f);
    let r = req(&hs, good_records(&hs));
    assert_eq!(
        status(handle(&f.cs, OTHER, r.clone())),
        LurkStatus::InvalidSessionId
    );
    let mut unknown = r;
    unknown.session_id[3] ^= 1;
    refused(&f, &hs, unknown, LurkStatus::InvalidSessionId);
}

#[test]
fn after_the_server_hello_is_invalid_status() {
    let f = fx();
    let hs = f.handshake();
    let sessions = f.sessions();
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, Vec::new()))),
        LurkStatus::InvalidStatus
    );
    assert_eq!(f.sessions(), sessions);
    ops::c_client_finished::handle(
        &f.cs,
        ENGINE,
        Fx::client_finished_req(&hs, hs.full_flight()),
    )
    .unwrap();
}

#[test]
fn a_server_hello_refusal_is_c_server_hellos() {
    let f = fx();
    let hs = hello_with_engine_share(&f);
    let mut r = req(&hs, good_records(&hs));
    r.ephemeral = None;
    refused(&f, &hs, r, LurkStatus::InvalidEphemeral);
    let hs = hello_with_engine_share(&f);
    let mut r = req(&hs, good_records(&hs));
    r.server_hello = Sh {
        session_id: vec![1; 32],
        ..Sh::new()
    }
    .encode();
    refused(&f, &hs, r, LurkStatus::InvalidHandshake);
}

/// Records the server cannot have sent, or a flight c_client_finished would refuse.
#[test]
fn records_that_are_not_the_servers_flight_are_refused() {
    let f = fx();
    type Case = (&'static str, fn(&Hs) -> Vec<Vec<u8>>, LurkStatus);
    let cases: [Case; 10] = [
        (
            "two records in one entry",
            |hs| {
                let flight = hs.full_flight();
                let (a, b) = flight.split_at(10);
                vec![[
                    hs.record(0, a, ContentType::Handshake),
                    hs.record(1, b, ContentType::Handshake),
                ]
                .concat()]
            },
            LurkStatus::InvalidFormat,
        ),
        (
            "a truncated record",
            |_| vec![vec![23, 3, 3, 0, 40, 1, 2]],
            LurkStatus::InvalidFormat,
        ),
        (
            "a plaintext handshake record",
            |hs| {
                let flight = hs.full_flight();
                let len = (flight.len() as u16).to_be_bytes();
                vec![[&[22u8, 3, 3, len[0], len[1]][..], &flight].concat()]
            },
            LurkStatus::InvalidHandshake,
        ),
        (
            "a record under another key",
            |hs| {
                vec![seal(
                    CipherSuite::TlsAes128GcmSha256,
                    &[7u8; 32],
                    0,
                    &hs.full_flight(),
                    ContentType::Handshake,
                )]
            },
            LurkStatus::InvalidHandshake,
        ),
        (
            "a record out of sequence",
            |hs| vec![hs.record(1, &hs.full_flight(), ContentType::Handshake)],
            LurkStatus::InvalidHandshake,
        ),
        (
            "application data",
            |hs| vec![hs.record(0, &hs.full_flight(), ContentType::ApplicationData)],
            LurkStatus::InvalidHandshake,
        ),
        (
            "an inner plaintext over 2^14 + 1 bytes",
            |hs| {
                let mut content = hs.full_flight();
                content.resize(MAX_INNER_PLAINTEXT_LEN + 1, 0);
                vec![hs.record(0, &content, ContentType::Handshake)]
            },
            LurkStatus::InvalidHandshake,
        ),
        (
            "the Finished not ending its record (RFC 8446 §5.1)",
            |hs| {
                let mut content = hs.full_flight();
                content.extend_from_slice(&nst(60, b"n", b"t"));
                vec![hs.record(0, &content, ContentType::Handshake)]
            },
            LurkStatus::InvalidHandshake,
        ),
        (
            "the Finished followed by part of a message in its record",
            |hs| {
                let mut content = hs.full_flight();
                content.extend_from_slice(&[4, 0]);
                vec![hs.record(0, &content, ContentType::Handshake)]
            },
            LurkStatus::InvalidHandshake,
        ),
        (
            "a server Finished that does not verify",
            |hs| {
                let mut content = hs.full_flight();
                let last = content.len() - 1;
                content[last] ^= 1;
                vec![hs.record(0, &content, ContentType::Handshake)]
            },
            LurkStatus::InvalidHandshake,
        ),
    ];
    for (why, records, want) in cases {
        let hs = hello_with_engine_share(&f);
        let sessions = f.sessions();
        let r = req(&hs, records(&hs));
        assert_eq!(status(handle(&f.cs, ENGINE, r)), want, "{why}");
        assert_eq!(f.sessions(), sessions, "{why}");
        let ok = handle(&f.cs, ENGINE, req(&hs, good_records(&hs))).unwrap();
        assert!(ok.flight_complete, "{why}");
    }
}

#[test]
fn the_flight_split_over_records_completes() {
    let f = fx();
    let hs = hello_with_engine_share(&f);
    let flight = hs.full_flight();
    let (a, b) = flight.split_at(7);
    let r = req(
        &hs,
        vec![
            hs.record(0, a, ContentType::Handshake),
            hs.record(1, b, ContentType::Handshake),
        ],
    );
    assert!(handle(&f.cs, ENGINE, r).unwrap().flight_complete);
}

/// With a share the CS made in memory (single-use ring key), a flight refused after the
/// agreement leaves the session as it was: c_server_hello with the same ServerHello then
/// succeeds (the documented fallback), and another server share is refused as such.
#[test]
fn a_refused_flight_keeps_the_cs_made_memory_share_for_its_server_hello() {
    let f = fx();
    let mut hs = f.hello();
    let garbage = [&[23u8, 3, 3, 0, 40][..], &[0x5a; 40]].concat();
    let flight = pb::CServerFlightRequest {
        session_id: hs.id.clone(),
        server_hello: Sh::new().encode(),
        records: vec![garbage],
        ..Default::default()
    };
    let sessions = f.sessions();
    assert_eq!(
        status(handle(&f.cs, ENGINE, flight.clone())),
        LurkStatus::InvalidHandshake
    );
    // The same request again: refused the same way, not for a spent key.
    assert_eq!(
        status(handle(&f.cs, ENGINE, flight)),
        LurkStatus::InvalidHandshake
    );
    assert_eq!(f.sessions(), sessions);
    let other_share = Sh {
        share: Some((NamedGroup::X25519, vec![9; 32])),
        ..Sh::new()
    };
    let r = Fx::server_hello_req(&hs, &other_share.encode());
    assert_eq!(
        status(ops::c_server_hello::handle(&f.cs, ENGINE, r)),
        LurkStatus::InvalidEphemeral
    );
    f.server_hello(&mut hs);
    let r = Fx::client_finished_req(&hs, hs.full_flight());
    ops::c_client_finished::handle(&f.cs, ENGINE, r).unwrap();
}
