//! c_server_hello's refusals: the session stays in its hello stage, and the right
//! ServerHello then succeeds on it.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{CipherSuite, NamedGroup};

use super::*;
use crate::ops::c_server_hello::handle;

/// `req` (on `hs`'s session) is refused with `want`; the session then takes [`Sh::new`]
/// and the handshake completes.
fn refused(f: &Fx, mut hs: Hs, req: pb::CServerHelloRequest, want: LurkStatus) {
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, req)), want);
    assert_eq!(f.sessions(), sessions);
    f.server_hello(&mut hs);
    let fin = Fx::client_finished_req(&hs, hs.full_flight());
    ops::c_client_finished::handle(&f.cs, ENGINE, fin).unwrap();
}

fn req(hs: &Hs, sh: &Sh) -> pb::CServerHelloRequest {
    Fx::server_hello_req(hs, &sh.encode())
}

#[test]
fn asking_for_r_is_refused() {
    let f = fx();
    let hs = f.hello();
    let mut r = req(&hs, &Sh::new());
    r.secret_request = Some(pb::SecretRequest {
        r: true,
        ..Default::default()
    });
    refused(&f, hs, r, LurkStatus::InvalidSecretRequest);
}

#[test]
fn an_unknown_or_another_engines_session_is_invalid_session_id() {
    let f = fx();
    let hs = f.hello();
    let mut r = req(&hs, &Sh::new());
    assert_eq!(
        status(handle(&f.cs, OTHER, r.clone())),
        LurkStatus::InvalidSessionId
    );
    r.session_id[0] ^= 1;
    assert_eq!(
        status(handle(&f.cs, ENGINE, r.clone())),
        LurkStatus::InvalidSessionId
    );
    r.session_id.truncate(8);
    refused(&f, hs, r, LurkStatus::InvalidSessionId);
}

#[test]
fn a_second_server_hello_is_invalid_status() {
    let f = fx();
    let hs = f.handshake();
    let sessions = f.sessions();
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, &Sh::new()))),
        LurkStatus::InvalidStatus
    );
    assert_eq!(f.sessions(), sessions);
    // Still in the handshake stage: the flight completes it.
    let fin = Fx::client_finished_req(&hs, hs.full_flight());
    ops::c_client_finished::handle(&f.cs, ENGINE, fin).unwrap();
}

#[test]
fn a_server_hello_that_does_not_parse_is_invalid_format() {
    let f = fx();
    let hs = f.hello();
    let mut sh = Sh::new().encode();
    sh.pop();
    let r = Fx::server_hello_req(&hs, &sh);
    refused(&f, hs, r, LurkStatus::InvalidFormat);
}

#[test]
fn a_hello_retry_request_is_invalid_handshake() {
    let f = fx();
    let hs = f.hello();
    let r = req(&hs, &Sh::hrr(Some(NamedGroup::Secp256r1), None));
    refused(&f, hs, r, LurkStatus::InvalidHandshake);
}

#[test]
fn a_legacy_session_id_not_echoed_is_invalid_handshake() {
    let f = fx();
    let hs = f.hello();
    let sh = Sh {
        session_id: vec![1; 32],
        ..Sh::new()
    };
    let r = req(&hs, &sh);
    refused(&f, hs, r, LurkStatus::InvalidHandshake);
}

#[test]
fn a_suite_not_offered_is_invalid_handshake() {
    let f = fx();
    let ch = hello()
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .build()
        .unwrap();
    let hs = f.init_as(ENGINE, init_req(ch));
    let sh = Sh {
        suite: CipherSuite::TlsAes256GcmSha384,
        ..Sh::new()
    };
    let r = req(&hs, &sh);
    refused(&f, hs, r, LurkStatus::InvalidHandshake);
}

#[test]
fn a_psk_not_offered_is_invalid_psk() {
    let f = fx();
    let hs = f.hello();
    let sh = Sh {
        psk: Some(0),
        ..Sh::new()
    };
    let r = req(&hs, &sh);
    refused(&f, hs, r, LurkStatus::InvalidPsk);
}

#[test]
fn a_server_share_for_a_group_without_a_client_share_is_invalid_ephemeral() {
    let f = fx();
    let hs = f.hello();
    let sh = Sh {
        share: Some((NamedGroup::Secp256r1, vec![4; 65])),
        ..Sh::new()
    };
    let r = req(&hs, &sh);
    refused(&f, hs, r, LurkStatus::InvalidEphemeral);
}

#[test]
fn a_server_share_that_is_not_a_point_is_invalid_ephemeral() {
    let f = fx();
    let ch = hello()
        .key_share(NamedGroup::Secp256r1, &[])
        .build()
        .unwrap();
    let hs = f.init_as(ENGINE, init_req(ch));
    let sh = Sh {
        share: Some((NamedGroup::Secp256r1, vec![4; 65])),
        ..Sh::new()
    };
    let r = req(&hs, &sh);
    refused(&f, hs, r, LurkStatus::InvalidEphemeral);
}

#[test]
fn neither_a_share_nor_a_psk_is_invalid_handshake() {
    let f = fx();
    let hs = f.hello();
    let sh = Sh {
        share: None,
        ..Sh::new()
    };
    let r = req(&hs, &sh);
    refused(&f, hs, r, LurkStatus::InvalidHandshake);
}

/// §4's session with §4's ServerHello edited.
fn resumed_refused(edit: impl FnOnce(&mut pb::CServerHelloRequest), want: LurkStatus) {
    let f = fx();
    f.s3_ticket(ENGINE);
    let mut hs = f.resumed_hello();
    let mut r = s4_server_hello_req(&hs);
    edit(&mut r);
    let sessions = f.sessions();
    assert_eq!(status(handle(&f.cs, ENGINE, r)), want);
    assert_eq!(f.sessions(), sessions);
    // The PSK is still in the session: §4's ServerHello resumes with it.
    let r = s4_server_hello_req(&hs);
    f.server_hello_with(&mut hs, r);
    let fin = Fx::client_finished_req(&hs, s4_flight(&hs));
    ops::c_client_finished::handle(&f.cs, ENGINE, fin).unwrap();
}

#[test]
fn an_engine_made_share_without_its_secret_is_invalid_ephemeral() {
    resumed_refused(|r| r.ephemeral = None, LurkStatus::InvalidEphemeral);
    resumed_refused(
        |r| {
            r.ephemeral = Some(pb::Ephemeral {
                method: pb::EphemeralMethod::EGenerated as i32,
                shared_secret: vec![1; 31],
            })
        },
        LurkStatus::InvalidEphemeral,
    );
}

#[test]
fn psk_ke_not_offered_is_invalid_handshake() {
    // §4 offers psk_dhe_ke only.
    resumed_refused(
        |r| {
            r.server_hello = Sh {
                share: None,
                psk: Some(0),
                ..Sh::new()
            }
            .encode()
        },
        LurkStatus::InvalidHandshake,
    );
}

#[test]
fn psk_dhe_ke_not_offered_is_invalid_handshake() {
    let f = fx();
    f.s3_ticket(ENGINE);
    let ticket = &s3().new_session_ticket_fields.as_ref().unwrap().ticket;
    let ch = hello()
        .psk_modes(&[PskKeyExchangeMode::PskKe])
        .psk(ticket, 0, 32)
        .build()
        .unwrap();
    let mut hs = f.init_as(
        ENGINE,
        pb::CInitClientHelloRequest {
            psks: vec![resumption_info()],
            ..init_req(ch)
        },
    );
    let dhe = Sh {
        psk: Some(0),
        ..Sh::new()
    };
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, &dhe))),
        LurkStatus::InvalidHandshake
    );
    // psk_ke, as offered, succeeds on the same session.
    let ke = Sh {
        share: None,
        psk: Some(0),
        ..Sh::new()
    };
    let r = req(&hs, &ke);
    f.server_hello_with(&mut hs, r);
    let fin = Fx::client_finished_req(&hs, hs.flight(&s3().messages.encrypted_extensions, &[]));
    ops::c_client_finished::handle(&f.cs, ENGINE, fin).unwrap();
}

#[test]
fn a_psk_whose_hash_is_not_the_suites_is_invalid_psk() {
    resumed_refused(
        |r| {
            r.server_hello = Sh {
                suite: CipherSuite::TlsAes256GcmSha384,
                psk: Some(0),
                ..Sh::new()
            }
            .encode()
        },
        LurkStatus::InvalidPsk,
    );
}
