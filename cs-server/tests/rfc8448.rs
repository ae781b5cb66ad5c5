//! RFC 8448 traces reproduced byte for byte through the CS operations, on a real SoftHSM
//! token and a real SQLite store, in test-vector mode (null freshness, injected ephemeral
//! private keys). The engine's side is played by the test: it sends the RFC's ClientHello
//! with its key shares left empty (and binders zeroed) and must get the RFC's exact bytes
//! back, then the RFC's secrets at each step.
//!
//! §6's client certificate key is not published: the CS signs with a token RSA key
//! configured, in test-vector mode, with the RFC's client certificate; the test checks the
//! scheme the CS chose from the CertificateRequest and verifies the signature over the RFC's
//! transcript with that key, and every secret against the RFC.

use std::sync::{Arc, Mutex, OnceLock};

use lurk_cs::config::Config;
use lurk_cs::cs::Cs;
use lurk_cs::keyring::KeyRing;
use lurk_cs::server_auth::ServerAuth;
use lurk_cs::store::SqliteStore;
use lurk_cs::token::Token;
use lurk_proto::pb;
use lurk_proto::server_auth::TrustAnchors;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{self, NamedGroup};
use lurk_test_support::rfc8448::{rfc8448, Section};

const ENGINE: &str = "engine-rfc8448";

/// The RFC's client ephemeral private key for `group` in section `s`.
fn client_private(s: &Section, group: &str) -> Vec<u8> {
    let k = s.ephemeral_keys.client.iter().find(|k| k.group == group);
    k.unwrap().private_key.clone()
}

struct Fixture {
    cs: Cs,
    token: Token,
    cfg: Config,
    store: Arc<SqliteStore>,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Another CS on the same token and store, with `[server_auth]` on.
    fn cs_with_server_auth(&self, policy: ServerAuth) -> Cs {
        let keys = KeyRing::load(&self.token, &self.cfg.keys).unwrap();
        Cs::new(
            &self.cfg,
            Some(self.token.clone()),
            keys,
            self.store.clone(),
        )
        .with_server_auth(Some(policy))
    }
}

/// One token, one store, one CS for the whole file (C_Initialize happens once per process);
/// the tests take turns because the injected keys are a shared queue.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        lurk_cs::init_dev::init_dev(&dev).expect("init-dev");
        let mut cfg = Config::load(&dev.join("lurk-cs.toml")).unwrap();
        cfg.freshness.test_vectors = true;
        let token = Token::open(&cfg.token).unwrap();
        let mut keys = KeyRing::load(&token, &cfg.keys).unwrap();
        // §6: an RSA key in the token stands in for the RFC's unpublished client key.
        lurk_cs::token::keys::generate_signing_key(
            &token,
            "rfc8448-client",
            b"\x68",
            lurk_cs::token::keys::KeyKind::Rsa2048,
        )
        .unwrap();
        let rsa = token.find_signing_key("rfc8448-client").unwrap();
        let cert = rfc8448()
            .client_authentication
            .messages
            .client_certificate
            .clone()
            .expect("client_certificate");
        let rfc_client_cert = wire::Certificate::parse(&cert).unwrap().entries[0]
            .cert_data
            .to_vec();
        keys.insert_test_vector_key("rfc8448-client", rsa, vec![rfc_client_cert]);
        let store = Arc::new(
            SqliteStore::open(&cfg.store.path, Arc::new(token.clone()), &cfg.store).unwrap(),
        );
        let cs = Cs::new(&cfg, Some(token.clone()), keys, store.clone());
        Fixture {
            cs,
            token,
            cfg,
            store,
            dir,
        }
    })
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|p| p.into_inner())
}

/// The ClientHello as the engine sends it to the CS: every key_share entry emptied (the CS
/// fills it) and the binders zeroed (the CS computes them).
fn as_engine_sends(ch: &[u8]) -> Vec<u8> {
    let parsed = wire::ClientHello::parse(ch).unwrap();
    let mut out = ch.to_vec();
    let shares = parsed.key_shares.clone().unwrap_or_default();
    let ks_ext = parsed.extension(wire::ExtensionType::KeyShare).unwrap();
    let ks_body = ks_ext.body_offset();
    let removed: usize = shares.iter().map(|s| s.key_exchange.len()).sum();
    for s in shares.iter().rev() {
        out.drain(s.key_exchange_range());
        let o = s.key_exchange_len_offset();
        out[o..o + 2].copy_from_slice(&0u16.to_be_bytes());
    }
    let dec16 = |out: &mut Vec<u8>, at: usize| {
        let v = u16::from_be_bytes([out[at], out[at + 1]]) as usize - removed;
        out[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes());
    };
    dec16(&mut out, ks_body); // client_shares
    dec16(&mut out, ks_body - 2); // extension length
    dec16(&mut out, parsed.extensions_len_offset);
    let hs_len = (u32::from_be_bytes([0, out[1], out[2], out[3]]) as usize - removed) as u32;
    out[1..4].copy_from_slice(&hs_len.to_be_bytes()[1..]);
    if let Some(psk) = wire::ClientHello::parse(&out).unwrap().pre_shared_key {
        let zeros: Vec<Vec<u8>> = psk
            .binders
            .iter()
            .map(|b| vec![0u8; b.binder.len()])
            .collect();
        wire::set_binders(&mut out, &zeros).unwrap();
    }
    out
}

fn secret(secrets: &[pb::Secret], t: pb::SecretType) -> String {
    hex::encode(
        &secrets
            .iter()
            .find(|s| s.secret_type == t as i32)
            .unwrap_or_else(|| panic!("no {t:?}"))
            .value,
    )
}

fn all_secrets() -> pb::SecretRequest {
    pb::SecretRequest {
        h_c: true,
        h_s: true,
        a_c: true,
        a_s: true,
        e_s: true,
        ..Default::default()
    }
}

fn resumption_psk() -> pb::PskInfo {
    pb::PskInfo {
        identity_index: 0,
        psk_type: pb::PskType::Resumption as i32,
        tls_hash: pb::TlsHash::Sha256 as i32,
    }
}

/// c_init_client_hello with section `s`'s ClientHello as the engine sends it.
fn init_hello(cs: &Cs, s: &Section, psks: Vec<pb::PskInfo>) -> pb::CInitClientHelloResponse {
    lurk_cs::ops::c_init_client_hello::handle(
        cs,
        ENGINE,
        pb::CInitClientHelloRequest {
            client_hello: as_engine_sends(&s.messages.client_hello.clone()),
            freshness: pb::Freshness::Null as i32,
            psks,
            secret_request: Some(all_secrets()),
        },
    )
    .unwrap()
}

/// c_server_hello with section `s`'s ServerHello.
fn server_hello(cs: &Cs, id: &[u8], s: &Section) -> pb::CServerHelloResponse {
    lurk_cs::ops::c_server_hello::handle(
        cs,
        ENGINE,
        pb::CServerHelloRequest {
            session_id: id.to_vec(),
            server_hello: s.messages.server_hello.clone(),
            ephemeral: None,
            secret_request: Some(all_secrets()),
        },
    )
    .unwrap()
}

/// The RFC's client and server handshake traffic secrets for section `s`.
fn assert_handshake_secrets(sh: &pb::CServerHelloResponse, s: &Section) {
    assert_eq!(
        secret(&sh.secrets, pb::SecretType::ClientHandshakeTraffic),
        hex::encode(&s.key_schedule.client_handshake_traffic_secret)
    );
    assert_eq!(
        secret(&sh.secrets, pb::SecretType::ServerHandshakeTraffic),
        hex::encode(&s.key_schedule.server_handshake_traffic_secret)
    );
}

/// Runs §3 (1-RTT) and returns the session id after c_client_finished.
fn run_simple_1rtt(cs: &Cs) -> Vec<u8> {
    let s = &rfc8448().simple_1rtt;
    cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
        .unwrap();
    let resp = init_hello(cs, s, vec![]);
    assert_eq!(
        hex::encode(&resp.client_hello),
        hex::encode(s.messages.client_hello.clone()),
        "§3 ClientHello"
    );
    assert_eq!(resp.key_shares.len(), 1);
    let id = resp.session_id.clone();

    let sh = server_hello(cs, &id, s);
    assert_handshake_secrets(&sh, s);

    let flight = [
        s.messages.encrypted_extensions.clone(),
        s.messages
            .server_certificate
            .clone()
            .expect("server_certificate"),
        s.messages
            .server_certificate_verify
            .clone()
            .expect("server_certificate_verify"),
        s.messages.server_finished.clone(),
    ]
    .concat();
    let fin = lurk_cs::ops::c_client_finished::handle(
        cs,
        ENGINE,
        pb::CClientFinishedRequest {
            session_id: id.clone(),
            handshake_messages: flight,
            secret_request: Some(all_secrets()),
            last_exchange: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(fin.certificate_verify.is_empty());
    assert_eq!(
        hex::encode(&fin.client_finished),
        hex::encode(s.messages.client_finished.clone())
    );
    assert_eq!(
        secret(&fin.secrets, pb::SecretType::ClientApplicationTraffic),
        hex::encode(&s.key_schedule.client_application_traffic_secret_0)
    );
    assert_eq!(
        secret(&fin.secrets, pb::SecretType::ServerApplicationTraffic),
        hex::encode(&s.key_schedule.server_application_traffic_secret_0)
    );
    assert!(!fin
        .secrets
        .iter()
        .any(|x| x.secret_type == pb::SecretType::ResumptionMaster as i32));
    id
}

#[test]
fn rfc8448_section3_full_handshake_then_section4_resumption_with_binder_and_early_secrets() {
    let _g = serial();
    let cs = &fixture().cs;
    let id = run_simple_1rtt(cs);

    // §3's NewSessionTicket: the CS derives and stores the PSK §4 resumes with.
    let reg = lurk_cs::ops::c_register_tickets::handle(
        cs,
        ENGINE,
        pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: vec![rfc8448()
                .simple_1rtt
                .messages
                .new_session_ticket
                .clone()
                .expect("new_session_ticket")],
            last_exchange: true,
        },
    )
    .unwrap();
    assert_eq!(reg.registered, 1);
    assert!(reg.last_exchange);

    // §4: the ClientHello offers that ticket, with early data.
    let s = &rfc8448().resumed_0rtt;
    cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
        .unwrap();
    let resp = init_hello(cs, s, vec![resumption_psk()]);
    assert_eq!(
        hex::encode(&resp.binders[0]),
        hex::encode(s.key_schedule.binder.as_deref().expect("binder")),
        "§4 binder"
    );
    assert_eq!(
        hex::encode(&resp.client_hello),
        hex::encode(s.messages.client_hello.clone()),
        "§4 ClientHello"
    );
    assert_eq!(
        secret(&resp.secrets, pb::SecretType::ClientEarlyTraffic),
        hex::encode(
            s.key_schedule
                .client_early_traffic_secret
                .as_deref()
                .expect("client_early_traffic_secret")
        )
    );
    let id = resp.session_id.clone();

    let sh = server_hello(cs, &id, s);
    assert_handshake_secrets(&sh, s);

    let flight = [
        s.messages.encrypted_extensions.clone(),
        s.messages.server_finished.clone(),
        s.messages
            .end_of_early_data
            .clone()
            .expect("end_of_early_data"),
    ]
    .concat();
    let fin = lurk_cs::ops::c_client_finished::handle(
        cs,
        ENGINE,
        pb::CClientFinishedRequest {
            session_id: id.clone(),
            handshake_messages: flight,
            secret_request: Some(all_secrets()),
            last_exchange: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        hex::encode(&fin.client_finished),
        hex::encode(s.messages.client_finished.clone())
    );
    assert_eq!(
        secret(&fin.secrets, pb::SecretType::ClientApplicationTraffic),
        hex::encode(&s.key_schedule.client_application_traffic_secret_0)
    );
    assert_eq!(
        secret(&fin.secrets, pb::SecretType::ServerApplicationTraffic),
        hex::encode(&s.key_schedule.server_application_traffic_secret_0)
    );
    assert!(fin.last_exchange);
    // last_exchange closed the session.
    let err = lurk_cs::ops::c_register_tickets::handle(
        cs,
        ENGINE,
        pb::CRegisterTicketsRequest {
            session_id: id,
            new_session_tickets: vec![],
            last_exchange: true,
        },
    )
    .unwrap_err();
    assert_eq!(err.lurk_status(), LurkStatus::InvalidSessionId);
}

#[test]
fn rfc8448_section5_hello_retry_request_keeps_the_random_and_echoes_the_cookie() {
    let _g = serial();
    let cs = &fixture().cs;
    let s = &rfc8448().hello_retry_request;
    cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
        .unwrap();
    cs.inject_ephemeral(NamedGroup::Secp256r1, &client_private(s, "secp256r1"))
        .unwrap();
    let resp = init_hello(cs, s, vec![]);
    assert_eq!(
        hex::encode(&resp.client_hello),
        hex::encode(s.messages.client_hello.clone())
    );
    let id = resp.session_id.clone();

    // The engine puts a different random in the second ClientHello: the CS keeps the first.
    let mut ch2 = as_engine_sends(&s.messages.client_hello_2.clone().expect("client_hello_2"));
    ch2[6..38].copy_from_slice(&[0x55; 32]);
    let retry = lurk_cs::ops::c_client_hello::handle(
        cs,
        ENGINE,
        pb::CClientHelloRequest {
            session_id: id.clone(),
            hello_retry_request: s
                .messages
                .hello_retry_request
                .clone()
                .expect("hello_retry_request"),
            client_hello: ch2,
        },
    )
    .unwrap();
    assert_eq!(
        hex::encode(&retry.client_hello),
        hex::encode(s.messages.client_hello_2.clone().expect("client_hello_2")),
        "§5 ClientHello2"
    );

    let sh = server_hello(cs, &id, s);
    assert_handshake_secrets(&sh, s);

    let flight = [
        s.messages.encrypted_extensions.clone(),
        s.messages
            .server_certificate
            .clone()
            .expect("server_certificate"),
        s.messages
            .server_certificate_verify
            .clone()
            .expect("server_certificate_verify"),
        s.messages.server_finished.clone(),
    ]
    .concat();
    let fin = lurk_cs::ops::c_client_finished::handle(
        cs,
        ENGINE,
        pb::CClientFinishedRequest {
            session_id: id,
            handshake_messages: flight,
            secret_request: Some(all_secrets()),
            last_exchange: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        hex::encode(&fin.client_finished),
        hex::encode(s.messages.client_finished.clone())
    );
    assert_eq!(
        secret(&fin.secrets, pb::SecretType::ClientApplicationTraffic),
        hex::encode(&s.key_schedule.client_application_traffic_secret_0)
    );
}

#[test]
fn rfc8448_section6_client_authentication_signs_the_rfc_transcript_with_the_scheme_the_server_asked(
) {
    let _g = serial();
    let f = fixture();
    let cs = &f.cs;
    let s = &rfc8448().client_authentication;
    cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
        .unwrap();
    let resp = init_hello(cs, s, vec![]);
    assert_eq!(
        hex::encode(&resp.client_hello),
        hex::encode(s.messages.client_hello.clone())
    );
    let id = resp.session_id.clone();
    let sh = server_hello(cs, &id, s);
    assert_eq!(
        secret(&sh.secrets, pb::SecretType::ClientHandshakeTraffic),
        hex::encode(&s.key_schedule.client_handshake_traffic_secret)
    );

    let flight = [
        s.messages.encrypted_extensions.clone(),
        s.messages
            .certificate_request
            .clone()
            .expect("certificate_request"),
        s.messages
            .server_certificate
            .clone()
            .expect("server_certificate"),
        s.messages
            .server_certificate_verify
            .clone()
            .expect("server_certificate_verify"),
        s.messages.server_finished.clone(),
    ]
    .concat();
    let fin = lurk_cs::ops::c_client_finished::handle(
        cs,
        ENGINE,
        pb::CClientFinishedRequest {
            session_id: id,
            handshake_messages: flight,
            key_id: "rfc8448-client".into(),
            client_certificate: s
                .messages
                .client_certificate
                .clone()
                .expect("client_certificate"),
            secret_request: Some(all_secrets()),
            last_exchange: true,
        },
    )
    .unwrap();
    assert_eq!(
        secret(&fin.secrets, pb::SecretType::ClientApplicationTraffic),
        hex::encode(&s.key_schedule.client_application_traffic_secret_0)
    );
    assert_eq!(
        secret(&fin.secrets, pb::SecretType::ServerApplicationTraffic),
        hex::encode(&s.key_schedule.server_application_traffic_secret_0)
    );

    // The CertificateVerify: the RFC's scheme (rsa_pss_rsae_sha256, picked from the
    // CertificateRequest for an RSA key), signed over the RFC's transcript.
    let cv = wire::CertificateVerify::parse(&fin.certificate_verify).unwrap();
    assert_eq!(cv.scheme, wire::SignatureScheme::RsaPssRsaeSha256);
    let th = s
        .verification_derived
        .transcript_hash_for_client_certificate_verify
        .clone()
        .expect("§6 transcript hash");
    let mut content = vec![0x20u8; 64];
    content.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
    content.extend_from_slice(&th);
    let key = f.token.find_signing_key("rfc8448-client").unwrap();
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PSS_2048_8192_SHA256,
        key.public_key_raw(),
    )
    .verify(&content, cv.signature)
    .expect("the CS signed the RFC transcript");
    // The client Finished covers our CertificateVerify, so it is checked against a local
    // computation rather than the RFC's bytes.
    let mut transcript = lurk_proto::transcript::Transcript::new();
    let m = &s.messages;
    for m in [
        Some(&m.client_hello),
        Some(&m.server_hello),
        Some(&m.encrypted_extensions),
        m.certificate_request.as_ref(),
        m.server_certificate.as_ref(),
        m.server_certificate_verify.as_ref(),
        Some(&m.server_finished),
        m.client_certificate.as_ref(),
    ] {
        transcript.add(m.expect("a §6 message"));
    }
    transcript.add(&fin.certificate_verify);
    let expected = lurk_proto::key_schedule::finished_verify_data(
        wire::HashAlg::Sha256,
        &s.key_schedule.client_handshake_traffic_secret.clone(),
        &transcript.hash(wire::HashAlg::Sha256),
    );
    assert_eq!(
        wire::Finished::parse(&fin.client_finished, wire::HashAlg::Sha256)
            .unwrap()
            .verify_data,
        expected
    );
}

#[test]
fn rfc8448_section7_compatibility_mode_session_id_is_kept() {
    let _g = serial();
    let cs = &fixture().cs;
    let s = &rfc8448().compatibility_mode;
    cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
        .unwrap();
    let resp = init_hello(cs, s, vec![]);
    assert_eq!(
        hex::encode(&resp.client_hello),
        hex::encode(s.messages.client_hello.clone())
    );
    let sh = server_hello(cs, &resp.session_id, s);
    assert_eq!(
        secret(&sh.secrets, pb::SecretType::ServerHandshakeTraffic),
        hex::encode(&s.key_schedule.server_handshake_traffic_secret)
    );
}

/// `[server_auth]` on: §3's server (a self-signed certificate, CN=rsa, no subjectAltName,
/// valid 2016-07-30 to 2026-07-30) is refused in c_client_finished whether the anchors hold
/// another CA or its own certificate (expired by the CS's clock since 2026-07-30, and not
/// valid for the SNI "server" either); nothing is released, the session keeps its stage and
/// no ticket can be registered.
#[test]
fn rfc8448_section3_under_server_auth_the_rfc_server_is_refused_and_gets_no_ticket() {
    let _g = serial();
    let f = fixture();
    let s = &rfc8448().simple_1rtt;
    let rfc_cert = wire::Certificate::parse(
        &s.messages
            .server_certificate
            .clone()
            .expect("server_certificate"),
    )
    .unwrap()
    .entries[0]
        .cert_data
        .to_vec();
    let other_ca = f.dir.path().join("dev").join("tls").join("ca.pem");
    let policies = [
        ServerAuth::from_pem_file(&other_ca).unwrap(),
        ServerAuth::from_anchors(TrustAnchors::from_der(&[rfc_cert]).unwrap()),
    ];
    for policy in policies {
        let cs = f.cs_with_server_auth(policy);
        cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
            .unwrap();
        let id = init_hello(&cs, s, vec![]).session_id;
        assert_handshake_secrets(&server_hello(&cs, &id, s), s);
        let flight = [
            s.messages.encrypted_extensions.clone(),
            s.messages
                .server_certificate
                .clone()
                .expect("server_certificate"),
            s.messages
                .server_certificate_verify
                .clone()
                .expect("server_certificate_verify"),
            s.messages.server_finished.clone(),
        ]
        .concat();
        let err = lurk_cs::ops::c_client_finished::handle(
            &cs,
            ENGINE,
            pb::CClientFinishedRequest {
                session_id: id.clone(),
                handshake_messages: flight,
                secret_request: Some(all_secrets()),
                last_exchange: false,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::InvalidCertificate, "{err:?}");
        let err = lurk_cs::ops::c_register_tickets::handle(
            &cs,
            ENGINE,
            pb::CRegisterTicketsRequest {
                session_id: id,
                new_session_tickets: vec![s
                    .messages
                    .new_session_ticket
                    .clone()
                    .expect("new_session_ticket")],
                last_exchange: false,
            },
        )
        .unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::InvalidStatus, "{err:?}");
    }
}

/// A record of section `s` sent by `sender` under `protection` (`handshake`, `application`).
fn record(s: &Section, sender: &str, protection: &str) -> Vec<u8> {
    let r = s
        .records
        .iter()
        .find(|r| r.sender == sender && r.derived.protection == protection)
        .unwrap_or_else(|| panic!("{}: no {sender} {protection} record", s.name));
    r.record.clone()
}

fn server_flight(
    cs: &Cs,
    id: &[u8],
    records: Vec<Vec<u8>>,
) -> Result<pb::CServerFlightResponse, lurk_cs::error::ServiceError> {
    lurk_cs::ops::c_server_flight::handle(
        cs,
        ENGINE,
        pb::CServerFlightRequest {
            session_id: id.to_vec(),
            server_hello: rfc8448().simple_1rtt.messages.server_hello.clone(),
            records,
            client_certificate: wire::encode_certificate::<Vec<u8>>(&[], &[]).unwrap(),
            secret_request: Some(all_secrets()),
            ..Default::default()
        },
    )
}

/// c_server_flight on §3's ServerHello and the server's protected record (EncryptedExtensions
/// .. Finished, RFC 8448 §3): the CS opens the record itself and gives the RFC's handshake
/// secrets, client Finished and application secrets byte for byte, in one exchange. Before
/// that, a record that does not authenticate is refused and leaves the session as it was
/// (the same request with the right record then succeeds); after it, the session is
/// established (c_client_finished is out of order).
#[test]
fn rfc8448_section3_server_flight_in_one_exchange() {
    let _g = serial();
    let cs = &fixture().cs;
    let s = &rfc8448().simple_1rtt;
    cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
        .unwrap();
    let id = init_hello(cs, s, vec![]).session_id;
    let good = record(s, "server", "handshake");

    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let e = server_flight(cs, &id, vec![bad]).unwrap_err();
    assert_eq!(e.lurk_status(), LurkStatus::InvalidHandshake, "{e}");

    let r = server_flight(cs, &id, vec![good]).unwrap();
    assert!(r.flight_complete);
    assert!(r.certificate_verify.is_empty());
    assert_eq!(
        hex::encode(&r.client_finished),
        hex::encode(&s.messages.client_finished)
    );
    let k = &s.key_schedule;
    for (t, want) in [
        (
            pb::SecretType::ClientHandshakeTraffic,
            &k.client_handshake_traffic_secret,
        ),
        (
            pb::SecretType::ServerHandshakeTraffic,
            &k.server_handshake_traffic_secret,
        ),
        (
            pb::SecretType::ClientApplicationTraffic,
            &k.client_application_traffic_secret_0,
        ),
        (
            pb::SecretType::ServerApplicationTraffic,
            &k.server_application_traffic_secret_0,
        ),
    ] {
        assert_eq!(secret(&r.secrets, t), hex::encode(want), "{t:?}");
    }
    assert!(!r
        .secrets
        .iter()
        .any(|x| x.secret_type == pb::SecretType::ResumptionMaster as i32));
    // Established: the handshake is done at the CS, a c_client_finished is out of order.
    let e = lurk_cs::ops::c_client_finished::handle(
        cs,
        ENGINE,
        pb::CClientFinishedRequest {
            session_id: id,
            handshake_messages: s.messages.server_finished.clone(),
            last_exchange: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.lurk_status(), LurkStatus::InvalidStatus, "{e}");
}

/// Without the whole flight (here no record at all) c_server_flight answers what
/// c_server_hello does and the session waits for c_client_finished, which then gives the
/// RFC's client Finished.
#[test]
fn rfc8448_section3_server_flight_incomplete_then_client_finished() {
    let _g = serial();
    let cs = &fixture().cs;
    let s = &rfc8448().simple_1rtt;
    cs.inject_ephemeral(NamedGroup::X25519, &client_private(s, "x25519"))
        .unwrap();
    let id = init_hello(cs, s, vec![]).session_id;
    let r = server_flight(cs, &id, Vec::new()).unwrap();
    assert!(!r.flight_complete);
    assert!(r.client_finished.is_empty());
    assert_eq!(
        secret(&r.secrets, pb::SecretType::ServerHandshakeTraffic),
        hex::encode(&s.key_schedule.server_handshake_traffic_secret)
    );
    assert!(!r
        .secrets
        .iter()
        .any(|x| x.secret_type == pb::SecretType::ClientApplicationTraffic as i32));
    let fin = lurk_cs::ops::c_client_finished::handle(
        cs,
        ENGINE,
        pb::CClientFinishedRequest {
            session_id: id,
            handshake_messages: [
                s.messages.encrypted_extensions.clone(),
                s.messages
                    .server_certificate
                    .clone()
                    .expect("server_certificate"),
                s.messages
                    .server_certificate_verify
                    .clone()
                    .expect("server_certificate_verify"),
                s.messages.server_finished.clone(),
            ]
            .concat(),
            last_exchange: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fin.client_finished, s.messages.client_finished);
}
