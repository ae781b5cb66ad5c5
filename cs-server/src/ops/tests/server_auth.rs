//! The `[server_auth]` refusals reachable without a token: the server's certificate (RFC
//! 8448's, which the policy refuses), tickets bound to the name a PSK authenticated, and
//! c_init_client_finished's certificate-only rule.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::PskKeyExchangeMode;

use super::*;
use crate::store::ExternalPsk;

const EXTERNAL: &[u8] = b"an external psk";

/// An external PSK for `ENGINE`: under the policy it authenticates the server the SNI names.
fn provision(f: &Fx) {
    f.cs.store
        .put_external_psk(ExternalPsk {
            identity: EXTERNAL.to_vec(),
            psk: zeroize::Zeroizing::new(vec![5; 32]),
            hash: HashAlg::Sha256,
            allowed_engines: vec![ENGINE.to_owned()],
        })
        .unwrap();
}

fn psk_hello(sni: &str, identity: &[u8], kind: pb::PskType) -> pb::CInitClientHelloRequest {
    let ch = hello()
        .server_name(sni)
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .psk(identity, 0, 32)
        .build()
        .unwrap();
    pb::CInitClientHelloRequest {
        psks: vec![pb::PskInfo {
            psk_type: kind as i32,
            ..resumption_info()
        }],
        ..init_req(ch)
    }
}

/// A PSK handshake on `req` through c_client_finished: the PSK authenticates the server.
fn psk_handshake(f: &Fx, req: pb::CInitClientHelloRequest) -> Hs {
    let mut hs = f.init_as(ENGINE, req);
    let sh = Sh {
        psk: Some(0),
        ..Sh::new()
    };
    let r = Fx::server_hello_req(&hs, &sh.encode());
    f.server_hello_with(&mut hs, r);
    let flight = hs.flight(&s3().messages.encrypted_extensions, &[]);
    ops::c_client_finished::handle(&f.cs, ENGINE, Fx::client_finished_req(&hs, flight)).unwrap();
    hs
}

#[test]
fn a_server_certificate_the_policy_refuses_releases_nothing_and_gets_no_ticket() {
    let f = fx().with_rfc_anchor();
    let hs = f.handshake();
    let sessions = f.sessions();
    for _ in 0..2 {
        let r = Fx::client_finished_req(&hs, hs.full_flight());
        assert_eq!(
            status(ops::c_client_finished::handle(&f.cs, ENGINE, r)),
            LurkStatus::InvalidCertificate
        );
    }
    assert_eq!(f.sessions(), sessions);
    // Still in the handshake stage: no ticket can be registered.
    let reg = pb::CRegisterTicketsRequest {
        session_id: hs.id.clone(),
        new_session_tickets: vec![nst(60, b"n", b"t")],
        last_exchange: false,
    };
    assert_eq!(
        status(ops::c_register_tickets::handle(&f.cs, ENGINE, reg)),
        LurkStatus::InvalidStatus
    );
    assert_eq!(f.tickets(ENGINE), 0);
}

#[test]
fn c_server_flight_checks_the_certificate_too_and_keeps_the_hello_stage() {
    let f = fx().with_rfc_anchor();
    let hs = c_server_flight::hello_with_engine_share(&f);
    let sessions = f.sessions();
    let r = c_server_flight::req(&hs, c_server_flight::good_records(&hs));
    assert_eq!(
        status(ops::c_server_flight::handle(&f.cs, ENGINE, r)),
        LurkStatus::InvalidCertificate
    );
    assert_eq!(f.sessions(), sessions);
    // Still in the hello stage: c_server_hello is accepted.
    let r = c_server_flight::req(&hs, Vec::new());
    let sh = Fx::server_hello_req(&hs, &r.server_hello);
    ops::c_server_hello::handle(
        &f.cs,
        ENGINE,
        pb::CServerHelloRequest {
            ephemeral: r.ephemeral,
            ..sh
        },
    )
    .unwrap();
}

#[test]
fn a_ticket_is_offered_only_for_the_name_it_was_registered_for_and_not_used_up_otherwise() {
    let f = fx().with_rfc_anchor();
    provision(&f);
    let hs = psk_handshake(&f, psk_hello(SNI, EXTERNAL, pb::PskType::External));
    let reg = pb::CRegisterTicketsRequest {
        session_id: hs.id,
        new_session_tickets: vec![nst(60, b"n", b"bound ticket")],
        last_exchange: true,
    };
    ops::c_register_tickets::handle(&f.cs, ENGINE, reg).unwrap();
    assert_eq!(f.tickets(ENGINE), 1);
    let sessions = f.sessions();
    for sni in ["other.example", "server.example.evil"] {
        let r = psk_hello(sni, b"bound ticket", pb::PskType::Resumption);
        assert_eq!(
            status(ops::c_init_client_hello::handle(&f.cs, ENGINE, r)),
            LurkStatus::InvalidPsk,
            "{sni}"
        );
        assert_eq!(f.sessions(), sessions);
        assert_eq!(
            f.tickets(ENGINE),
            1,
            "offering it for {sni} used the ticket up"
        );
    }
    // For its own name it resumes, and authenticates the server again.
    psk_handshake(&f, psk_hello(SNI, b"bound ticket", pb::PskType::Resumption));
    assert_eq!(f.tickets(ENGINE), 0);
}

#[test]
fn a_ticket_registered_with_the_policy_off_is_refused_under_it() {
    let f = fx();
    let ticket = f.s3_ticket(ENGINE);
    let f = f.with_rfc_anchor();
    let sessions = f.sessions();
    let r = psk_hello(SNI, &ticket, pb::PskType::Resumption);
    assert_eq!(
        status(ops::c_init_client_hello::handle(&f.cs, ENGINE, r)),
        LurkStatus::InvalidPsk
    );
    assert_eq!(f.sessions(), sessions);
}

#[test]
fn c_init_client_finished_needs_a_certificate_the_policy_accepts() {
    let f = fx().with_rfc_anchor();
    let client = &s3().ephemeral_keys.client[0];
    let ch = ClientHelloBuilder::new([0x66; 32])
        .server_name(SNI)
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::RsaPssRsaeSha256])
        .key_share(NamedGroup::X25519, &client.public_key)
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .psk(EXTERNAL, 0, 32)
        .build()
        .unwrap();
    let m = &s3().messages;
    let [cert, cv] = s3_certificate();
    let psk_sh = Sh {
        psk: Some(0),
        ..Sh::new()
    }
    .encode();
    let cases = [
        // A PSK-only handshake: the CS cannot tell the server holds the PSK.
        vec![
            ch.clone(),
            psk_sh,
            m.encrypted_extensions.clone(),
            m.server_finished.clone(),
        ],
        // RFC 8448's certificate, which the policy refuses.
        vec![
            ch,
            Sh::new().encode(),
            m.encrypted_extensions.clone(),
            cert.to_vec(),
            cv.to_vec(),
            m.server_finished.clone(),
        ],
    ];
    for messages in cases {
        let r = pb::CInitClientFinishedRequest {
            handshake_messages: messages.concat(),
            freshness: pb::Freshness::Sha256 as i32,
            ..Default::default()
        };
        assert_eq!(
            status(ops::c_init_client_finished::handle(&f.cs, ENGINE, r)),
            LurkStatus::InvalidCertificate
        );
        assert_eq!(f.sessions(), 0);
    }
}

/// The policy's chain and signature checks run on the blocking pool, under the engine's
/// exchange slots: never on the async workers, whatever the request names.
#[test]
fn server_checks_never_run_on_the_async_workers() {
    let flight = pb::CServerFlightRequest::default();
    let finished = pb::CClientFinishedRequest::default();
    let f = fx();
    assert_eq!(
        ops::c_server_flight::place(&f.cs, &flight),
        ops::Where::Inline
    );
    assert_eq!(
        ops::c_client_finished::place(&f.cs, &finished),
        ops::Where::Inline
    );
    let f = f.with_rfc_anchor();
    assert_eq!(
        ops::c_server_flight::place(&f.cs, &flight),
        ops::Where::Blocking
    );
    assert_eq!(
        ops::c_client_finished::place(&f.cs, &finished),
        ops::Where::Blocking
    );
}
