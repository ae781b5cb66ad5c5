//! c_init_client_hello's refusals: none opens a session or consumes a ticket it should not.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::PskKeyExchangeMode;

use super::*;
use crate::ops::c_init_client_hello::handle;
use crate::store::ExternalPsk;

/// `req` is refused with `want`, no session is left open, and `ENGINE`'s tickets are as
/// they were; the right ClientHello then opens a session.
fn refused(f: &Fx, req: pb::CInitClientHelloRequest, want: LurkStatus) {
    let (sessions, tickets) = (f.sessions(), f.tickets(ENGINE));
    assert_eq!(status(handle(&f.cs, ENGINE, req)), want);
    assert_eq!(f.sessions(), sessions, "a refused request left a session");
    assert_eq!(
        f.tickets(ENGINE),
        tickets,
        "a refused request took a ticket"
    );
    f.hello();
    assert_eq!(f.sessions(), sessions + 1);
}

#[test]
fn the_fixture_runs_a_full_handshake_and_a_resumption() {
    let f = fx();
    let ticket = f.s3_ticket(ENGINE);
    assert_eq!(f.tickets(ENGINE), 1);
    let hs = f.resumed();
    assert_eq!(f.tickets(ENGINE), 0, "the ticket is used once");
    let fin =
        ops::c_client_finished::handle(&f.cs, ENGINE, Fx::client_finished_req(&hs, s4_flight(&hs)))
            .unwrap();
    assert!(!fin.client_finished.is_empty());
    assert!(!ticket.is_empty());
}

#[test]
fn asking_for_r_is_refused() {
    let f = fx();
    let mut req = init_req(hello().build().unwrap());
    req.secret_request = Some(pb::SecretRequest {
        r: true,
        ..Default::default()
    });
    refused(&f, req, LurkStatus::InvalidSecretRequest);
}

#[test]
fn a_client_hello_that_does_not_parse_is_invalid_format() {
    let f = fx();
    let mut ch = hello().build().unwrap();
    ch.truncate(ch.len() - 3);
    refused(&f, init_req(ch), LurkStatus::InvalidFormat);
    refused(&f, init_req(Vec::new()), LurkStatus::InvalidFormat);
}

#[test]
fn a_client_hello_without_tls13_is_invalid_handshake() {
    let f = fx();
    // supported_versions: [0x0304] becomes [0x0303].
    let ch = patched(
        hello().build().unwrap(),
        &[0, 0x2b, 0, 3, 2, 3, 4],
        &[0, 0x2b, 0, 3, 2, 3, 3],
    );
    refused(&f, init_req(ch), LurkStatus::InvalidHandshake);
}

#[test]
fn freshness_unknown_or_null_outside_test_vector_mode_is_refused() {
    let f = fx();
    let mut req = init_req(hello().build().unwrap());
    req.freshness = 99;
    refused(&f, req.clone(), LurkStatus::InvalidFreshness);
    req.freshness = pb::Freshness::Null as i32;
    refused(&f, req, LurkStatus::InvalidFreshness);
}

#[test]
fn more_than_eight_identities_is_too_many_identities() {
    let f = fx();
    f.s3_ticket(ENGINE);
    let ticket = &s3().new_session_ticket_fields.as_ref().unwrap().ticket;
    let mut b = hello().psk_modes(&[PskKeyExchangeMode::PskDheKe]);
    let mut psks = Vec::new();
    for i in 0..9u8 {
        b = if i == 0 {
            b.psk(ticket, 0, 32)
        } else {
            b.psk(&[i; 8], 0, 32)
        };
        psks.push(pb::PskInfo {
            identity_index: u32::from(i),
            ..resumption_info()
        });
    }
    let req = pb::CInitClientHelloRequest {
        psks,
        ..init_req(b.build().unwrap())
    };
    refused(&f, req, LurkStatus::TooManyIdentities);
    // The ticket was not consumed: it still resumes.
    f.resumed();
}

#[test]
fn psk_metadata_that_does_not_match_the_identities_is_invalid_psk_and_takes_no_ticket() {
    let f = fx();
    f.s3_ticket(ENGINE);
    // No PskInfo for the offered identity.
    let mut req = s4_init_req();
    req.psks.clear();
    refused(&f, req, LurkStatus::InvalidPsk);
    // An unknown tls_hash, an unknown psk_type, metadata for another index.
    for bad in [
        pb::PskInfo {
            tls_hash: 9,
            ..resumption_info()
        },
        pb::PskInfo {
            psk_type: 9,
            ..resumption_info()
        },
    ] {
        refused(
            &f,
            pb::CInitClientHelloRequest {
                psks: vec![bad],
                ..s4_init_req()
            },
            LurkStatus::InvalidPsk,
        );
    }
    assert_eq!(f.tickets(ENGINE), 1);
    f.resumed();
}

#[test]
fn early_data_without_a_psk_is_invalid_handshake() {
    let f = fx();
    // post_handshake_auth (0x31, empty) becomes early_data (0x2a, empty).
    let ch = patched(
        hello().post_handshake_auth(true).build().unwrap(),
        &[0, 0x31, 0, 0],
        &[0, 0x2a, 0, 0],
    );
    refused(&f, init_req(ch), LurkStatus::InvalidHandshake);
}

#[test]
fn a_psk_without_psk_key_exchange_modes_is_invalid_handshake_and_takes_no_ticket() {
    let f = fx();
    f.s3_ticket(ENGINE);
    let ticket = &s3().new_session_ticket_fields.as_ref().unwrap().ticket;
    // psk_key_exchange_modes (0x2d) becomes an unknown (GREASE) extension.
    let ch = patched(
        resumption_hello(ticket).build().unwrap(),
        &[0, 0x2d, 0, 2, 1, 1],
        &[0x0a, 0x0a, 0, 2, 1, 1],
    );
    let req = pb::CInitClientHelloRequest {
        psks: vec![resumption_info()],
        ..init_req(ch)
    };
    refused(&f, req, LurkStatus::InvalidHandshake);
    f.resumed();
}

/// RFC 8446 §4.2.8. The parser refuses it as a broken rule (invalid_handshake) before the
/// operation's own check (invalid_ephemeral) is reached.
#[test]
fn a_key_share_outside_supported_groups_is_invalid_handshake() {
    let f = fx();
    // supported_groups [x25519, P-256] becomes [P-384, P-256]; the share stays x25519.
    let ch = patched(
        hello().build().unwrap(),
        &[0, 0x0a, 0, 6, 0, 4, 0, 0x1d, 0, 0x17],
        &[0, 0x0a, 0, 6, 0, 4, 0, 0x18, 0, 0x17],
    );
    refused(&f, init_req(ch), LurkStatus::InvalidHandshake);
}

#[test]
fn an_unknown_ticket_is_invalid_psk() {
    let f = fx();
    let ch = resumption_hello(b"no such ticket").build().unwrap();
    let req = pb::CInitClientHelloRequest {
        psks: vec![resumption_info()],
        ..init_req(ch)
    };
    refused(&f, req, LurkStatus::InvalidPsk);
}

#[test]
fn another_engines_ticket_is_invalid_psk_and_stays_its_owners() {
    let f = fx();
    f.s3_ticket(OTHER);
    refused(&f, s4_init_req(), LurkStatus::InvalidPsk);
    assert_eq!(
        f.tickets(OTHER),
        1,
        "another engine's offer took the ticket"
    );
    let hs = f.init_as(OTHER, s4_init_req());
    assert_eq!(hs.id.len(), 16);
    assert_eq!(f.tickets(OTHER), 0);
}

#[test]
fn a_ticket_is_used_once() {
    let f = fx();
    f.s3_ticket(ENGINE);
    f.resumed_hello();
    refused(&f, s4_init_req(), LurkStatus::InvalidPsk);
}

#[test]
fn a_ticket_offered_with_another_hash_is_invalid_psk() {
    let f = fx();
    f.s3_ticket(ENGINE);
    let req = pb::CInitClientHelloRequest {
        psks: vec![pb::PskInfo {
            tls_hash: pb::TlsHash::Sha384 as i32,
            ..resumption_info()
        }],
        ..s4_init_req()
    };
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, req)), LurkStatus::InvalidPsk);
    assert_eq!(f.sessions(), sessions);
}

#[test]
fn an_external_psk_of_another_engine_is_invalid_psk() {
    let f = fx();
    f.cs.store
        .put_external_psk(ExternalPsk {
            identity: b"ext".to_vec(),
            psk: zeroize::Zeroizing::new(vec![7; 32]),
            hash: HashAlg::Sha256,
            allowed_engines: vec![OTHER.to_owned()],
        })
        .unwrap();
    let ch = resumption_hello(b"ext").build().unwrap();
    let req = pb::CInitClientHelloRequest {
        psks: vec![pb::PskInfo {
            psk_type: pb::PskType::External as i32,
            ..resumption_info()
        }],
        ..init_req(ch)
    };
    refused(&f, req.clone(), LurkStatus::InvalidPsk);
    // Its engine may use it.
    f.init_as(OTHER, req);
}

#[test]
fn past_the_engines_session_cap_is_too_many_sessions() {
    let f = fx_with(|c| c.sessions.max_per_engine = 2);
    f.hello();
    f.hello();
    let sessions = f.sessions();
    let req = init_req(hello().build().unwrap());
    assert_eq!(
        status(handle(&f.cs, ENGINE, req.clone())),
        LurkStatus::TooManySessions
    );
    assert_eq!(f.sessions(), sessions);
    // Another engine is not affected.
    f.init_as(OTHER, req);
}

/// The bytes reserved before the key pairs are made cover what the session then holds,
/// which the table charges without a check (c_init_client_hello also asserts it in debug
/// builds): here a server_name of 20,000 bytes that are not UTF-8 (each decoded as U+FFFD,
/// three bytes) and a P-384 share the CS makes.
#[test]
fn the_reservation_covers_the_session_it_opens() {
    let f = fx();
    let sni = "a".repeat(20_000);
    let ch = hello()
        .server_name(&sni)
        .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp384r1])
        .key_share(NamedGroup::Secp384r1, &[])
        .build()
        .unwrap();
    let ch = patched(ch, sni.as_bytes(), &[0x80; 20_000]);
    let before = f.cs.sessions.bytes_held(ENGINE).0;
    let id = handle(&f.cs, ENGINE, init_req(ch.clone()))
        .unwrap()
        .session_id;
    let held = f.cs.sessions.bytes_held(ENGINE).0 - before;
    assert!(held >= 4 * 20_000, "{held}");
    let id = crate::session::SessionId::parse(&id).unwrap();
    let session = f.cs.sessions.get(ENGINE, &id).unwrap();
    let stage_bytes = crate::session::lock_session(&session)
        .unwrap()
        .stage
        .held_bytes();
    let info = msgs::client_hello(&ch).unwrap();
    let bound = ops::state::HelloState::reserve_bound(ch.len(), &info);
    assert!(stage_bytes <= bound, "{stage_bytes} > {bound}");
}
