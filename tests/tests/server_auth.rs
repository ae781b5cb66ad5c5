//! `[server_auth]` (issue 7, point 7): the CS authenticates the TLS server itself before it
//! releases application secrets, signs or registers tickets, and binds tickets to the
//! server name. Against real `lurk-cs` processes on SoftHSM: hand-made flights of an engine
//! that plays the server (its own key share, its own certificate), and full handshakes
//! through the engine against `openssl s_server`.

use lurk_e2e::engine::field_bool;
use lurk_e2e::lurk::Lurk;
use lurk_e2e::openssl::{certs, path_str, SServer};
use lurk_e2e::{CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_proto::key_schedule::finished_verify_data;
use lurk_proto::pb;
use lurk_proto::server_auth::server_signed_content;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    self, CipherSuite, ClientHelloBuilder, HandshakeType, HashAlg, NamedGroup, PskKeyExchangeMode,
    SignatureScheme,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

type Client = CsClient;

const SESSION_ID: [u8; 32] = [1; 32];

fn status_of(e: tonic::Status) -> LurkStatus {
    LurkStatus::from_grpc(&e).unwrap_or_else(|| panic!("no lurk-status in {e:?}"))
}

/// A refusal with its status and a fragment its reason must name.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, want: LurkStatus, why: &str) {
    let e = r.expect_err("refused");
    assert_eq!(status_of(e.clone()), want, "{e:?}");
    assert!(e.message().contains(why), "{why:?} not in {e:?}");
}

/// A TLS server's credentials, as the engine playing it holds them.
struct ServerCred {
    chain: Vec<Vec<u8>>,
    key: EcdsaKeyPair,
}

/// A self-signed P-256 certificate for `name` (the shape of RFC 8448's server certificate,
/// with a subjectAltName and a validity that covers today).
fn self_signed(name: &str) -> (ServerCred, String) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &kp.serialize_der(),
        &SystemRandom::new(),
    )
    .unwrap();
    (
        ServerCred {
            chain: vec![cert.der().to_vec()],
            key,
        },
        cert.pem(),
    )
}

/// The test PKI's `server-ecdsa-p256` (ca-ecdsa, DNS:localhost) with its key.
fn pki_server() -> ServerCred {
    let c = certs();
    let pem = std::fs::read(c.pem("server-ecdsa-p256")).unwrap();
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let key = std::fs::read(c.key("server-ecdsa-p256")).unwrap();
    let key = rustls_pemfile::private_key(&mut &key[..]).unwrap().unwrap();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_der(),
        &SystemRandom::new(),
    )
    .unwrap();
    ServerCred {
        chain: vec![der],
        key,
    }
}

fn client_hello(sni: Option<&str>, ticket: Option<&[u8]>) -> Vec<u8> {
    let mut b = ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&SESSION_ID)
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::EcdsaSecp256r1Sha256])
        .key_share(NamedGroup::X25519, &[]);
    if let Some(sni) = sni {
        b = b.server_name(sni);
    }
    if let Some(t) = ticket {
        b = b.psk_modes(&[PskKeyExchangeMode::PskDheKe]).psk(t, 0, 32);
    }
    b.build().unwrap()
}

async fn init(
    c: &mut Client,
    sni: Option<&str>,
    ticket: Option<&[u8]>,
) -> Result<pb::CInitClientHelloResponse, LurkStatus> {
    let psks = ticket
        .map(|_| pb::PskInfo {
            identity_index: 0,
            psk_type: pb::PskType::Resumption as i32,
            tls_hash: pb::TlsHash::Sha256 as i32,
        })
        .into_iter()
        .collect();
    c.c_init_client_hello(pb::CInitClientHelloRequest {
        client_hello: client_hello(sni, ticket),
        freshness: pb::Freshness::Sha256 as i32,
        psks,
        secret_request: None,
    })
    .await
    .map(tonic::Response::into_inner)
    .map_err(status_of)
}

/// What the engine playing the server sends for the session.
struct Played {
    session_id: Vec<u8>,
    flight: Vec<u8>,
}

/// The engine plays the server: its own X25519 share, `cred`'s Certificate and a
/// CertificateVerify it signs (one bit flipped if `bad_signature`), the server Finished
/// from the handshake secret the CS returned.
async fn play_server(
    c: &mut Client,
    sni: Option<&str>,
    cred: &ServerCred,
    bad_signature: bool,
) -> Played {
    let rng = SystemRandom::new();
    let hello = init(c, sni, None).await.expect("c_init_client_hello");
    let private =
        ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).unwrap();
    let public = private.compute_public_key().unwrap();
    let sh = lurk_e2e::server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        public.as_ref(),
        &SESSION_ID,
    );
    let shr = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: hello.session_id.clone(),
            server_hello: sh.clone(),
            ephemeral: None,
            secret_request: None,
        })
        .await
        .expect("c_server_hello")
        .into_inner();
    let server_hs = shr
        .secrets
        .iter()
        .find(|s| s.secret_type == pb::SecretType::ServerHandshakeTraffic as i32)
        .expect("server handshake secret")
        .value
        .clone();

    let mut t = Transcript::new();
    t.add(&hello.client_hello);
    t.add(&sh);
    let ee = wire::encode_handshake(HandshakeType::EncryptedExtensions, &[0, 0]).unwrap();
    t.add(&ee);
    let cert = wire::encode_certificate(&[], &cred.chain).unwrap();
    t.add(&cert);
    let content = server_signed_content(&t.hash(HashAlg::Sha256));
    let mut sig = cred.key.sign(&rng, &content).unwrap().as_ref().to_vec();
    if bad_signature {
        let last = sig.len() - 1;
        sig[last] ^= 1;
    }
    let cv = wire::encode_certificate_verify(SignatureScheme::EcdsaSecp256r1Sha256, &sig).unwrap();
    t.add(&cv);
    let fin = wire::encode_finished(&finished_verify_data(
        HashAlg::Sha256,
        &server_hs,
        &t.hash(HashAlg::Sha256),
    ))
    .unwrap();
    Played {
        session_id: hello.session_id,
        flight: [ee, cert, cv, fin].concat(),
    }
}

async fn client_finished(
    c: &mut Client,
    p: &Played,
) -> Result<pb::CClientFinishedResponse, tonic::Status> {
    c.c_client_finished(pb::CClientFinishedRequest {
        session_id: p.session_id.clone(),
        handshake_messages: p.flight.clone(),
        last_exchange: false,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

fn new_session_ticket(nonce: u8, ticket: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&3600u32.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    body.extend_from_slice(&[1, nonce]);
    body.extend_from_slice(&(ticket.len() as u16).to_be_bytes());
    body.extend_from_slice(ticket);
    body.extend_from_slice(&[0, 0]);
    wire::encode_handshake(HandshakeType::NewSessionTicket, &body).unwrap()
}

async fn register(c: &mut Client, p: &Played, tickets: &[(u8, &[u8])]) -> Result<u32, LurkStatus> {
    c.c_register_tickets(pb::CRegisterTicketsRequest {
        session_id: p.session_id.clone(),
        new_session_tickets: tickets
            .iter()
            .map(|(n, t)| new_session_ticket(*n, t))
            .collect(),
        last_exchange: false,
    })
    .await
    .map(|r| r.into_inner().registered)
    .map_err(status_of)
}

/// A CS with `[server_auth]` on, trusting the test PKI's roots and `extra_pem`.
fn start_with_policy(dev: &DevSetup, extra_pem: &str) -> CsProcess {
    let anchors = dev.path().join("server-anchors.pem");
    let mut pem = std::fs::read_to_string(certs().ca_all()).unwrap();
    pem.push_str(extra_pem);
    std::fs::write(&anchors, pem).unwrap();
    let anchors = path_str(&anchors);
    dev.start_with_env(&[
        ("LURK_SERVER_AUTH__ENABLED", "true"),
        ("LURK_SERVER_AUTH__TRUST_ANCHORS", &anchors),
    ])
}

#[tokio::test]
async fn under_the_policy_only_an_authenticated_server_gets_tickets_bound_to_its_name() {
    let (trusted, trusted_pem) = self_signed("a.example");
    let (untrusted, _) = self_signed("a.example");
    let dev = DevSetup::new();
    let cs = start_with_policy(&dev, &trusted_pem);
    let mut c = cs.client("engine");

    // The engine plays the server with a self-signed certificate the CS does not trust (same
    // subject as the trusted one, another key): no application secret, no ticket, and the
    // session is left as it was.
    let p = play_server(&mut c, Some("a.example"), &untrusted, false).await;
    assert_refused(
        client_finished(&mut c, &p).await,
        LurkStatus::InvalidCertificate,
        "chain: InvalidSignatureForPublicKey",
    );
    assert_eq!(
        register(&mut c, &p, &[(1, b"forged")]).await.unwrap_err(),
        LurkStatus::InvalidStatus,
        "the refused session is still waiting for the server's flight"
    );
    // A retry meets the same session, refused for the same reason.
    assert_refused(
        client_finished(&mut c, &p).await,
        LurkStatus::InvalidCertificate,
        "chain: InvalidSignatureForPublicKey",
    );
    assert_eq!(
        init(&mut c, Some("a.example"), Some(b"forged"))
            .await
            .unwrap_err(),
        LurkStatus::InvalidPsk,
        "no ticket was registered"
    );

    // A bad CertificateVerify under a trusted certificate.
    let p = play_server(&mut c, Some("a.example"), &trusted, true).await;
    assert_refused(
        client_finished(&mut c, &p).await,
        LurkStatus::InvalidCertificateVerify,
        "does not verify",
    );

    // A CA-issued certificate for another name than the SNI, and no SNI at all.
    let pki = pki_server();
    let p = play_server(&mut c, Some("other.example"), &pki, false).await;
    assert_refused(
        client_finished(&mut c, &p).await,
        LurkStatus::InvalidCertificate,
        "not valid for this name",
    );
    let p = play_server(&mut c, None, &pki, false).await;
    assert_refused(
        client_finished(&mut c, &p).await,
        LurkStatus::InvalidCertificate,
        "no server_name",
    );
    let p = play_server(&mut c, Some("localhost"), &pki, false).await;
    let fin = client_finished(&mut c, &p)
        .await
        .expect("CA-issued, right name");
    assert!(!fin.client_finished.is_empty());

    // The self-signed certificate, once in the anchors, authenticates its server: the
    // tickets are stored bound to a.example.
    let p = play_server(&mut c, Some("a.example"), &trusted, false).await;
    client_finished(&mut c, &p).await.expect("trusted server");
    assert_eq!(
        register(&mut c, &p, &[(1, b"ticket-1"), (2, b"ticket-2")])
            .await
            .unwrap(),
        2
    );
    // A ticket of a.example cannot be offered for b.example (or without SNI) ...
    assert_eq!(
        init(&mut c, Some("b.example"), Some(b"ticket-1"))
            .await
            .unwrap_err(),
        LurkStatus::InvalidPsk
    );
    // ... and is offered for a.example.
    let resumed = init(&mut c, Some("a.example"), Some(b"ticket-2"))
        .await
        .expect("the ticket's own server name");
    assert_eq!(resumed.binders.len(), 1);
}

/// A ticket offered for another server name (or without one) is refused without being used:
/// it still resumes for its own server afterwards, once. (Before: the refused offer took it
/// out of the store, and the right server's resumption then failed.)
#[tokio::test]
async fn a_ticket_offered_for_another_name_stays_usable_for_its_own() {
    let (trusted, trusted_pem) = self_signed("a.example");
    let dev = DevSetup::new();
    let cs = start_with_policy(&dev, &trusted_pem);
    let mut c = cs.client("engine");
    let p = play_server(&mut c, Some("a.example"), &trusted, false).await;
    client_finished(&mut c, &p).await.expect("trusted server");
    assert_eq!(register(&mut c, &p, &[(1, b"ticket-1")]).await.unwrap(), 1);
    for sni in [Some("b.example"), None] {
        assert_eq!(
            init(&mut c, sni, Some(b"ticket-1")).await.unwrap_err(),
            LurkStatus::InvalidPsk,
            "offered for {sni:?}"
        );
    }
    let resumed = init(&mut c, Some("a.example"), Some(b"ticket-1"))
        .await
        .expect("still usable for its own server");
    assert_eq!(resumed.binders.len(), 1);
    assert_eq!(
        init(&mut c, Some("a.example"), Some(b"ticket-1"))
            .await
            .unwrap_err(),
        LurkStatus::InvalidPsk,
        "used once"
    );
}

#[tokio::test]
async fn under_the_policy_sequence_c_signs_only_for_an_authenticated_server() {
    let (untrusted, _) = self_signed("localhost");
    let dev = DevSetup::new();
    let cs = start_with_policy(&dev, "");
    let mut c = cs.client("engine");
    let rng = SystemRandom::new();
    let private =
        ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng).unwrap();
    let public = private.compute_public_key().unwrap();
    let ch = ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&SESSION_ID)
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::EcdsaSecp256r1Sha256])
        .key_share(NamedGroup::X25519, public.as_ref())
        .build()
        .unwrap();
    let sh = lurk_e2e::server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        public.as_ref(),
        &SESSION_ID,
    );
    let ee = wire::encode_handshake(HandshakeType::EncryptedExtensions, &[0, 0]).unwrap();
    // CertificateRequest: empty context, signature_algorithms = ecdsa_secp256r1_sha256.
    let cr = wire::encode_handshake(
        HandshakeType::CertificateRequest,
        &[0, 0, 8, 0, 13, 0, 4, 0, 2, 4, 3],
    )
    .unwrap();
    let cert = wire::encode_certificate(&[], &untrusted.chain).unwrap();
    let cv = wire::encode_certificate_verify(SignatureScheme::EcdsaSecp256r1Sha256, &[0x30; 70])
        .unwrap();
    let fin = wire::encode_finished(&[0; 32]).unwrap();
    let r = c
        .c_init_client_finished(pb::CInitClientFinishedRequest {
            handshake_messages: [ch, sh, ee, cr, cert, cv, fin].concat(),
            freshness: pb::Freshness::Sha256 as i32,
            key_id: "p256".into(),
            client_certificate: Vec::new(),
            last_exchange: true,
        })
        .await;
    assert_refused(r, LurkStatus::InvalidCertificate, "issuer unknown");
    assert!(cs.log().contains("server_auth on"), "{}", cs.log());
}

/// The weakness the policy removes: with it off, the CS takes the engine's word.
#[tokio::test]
async fn without_the_policy_an_engine_playing_the_server_registers_tickets() {
    let (untrusted, _) = self_signed("a.example");
    let dev = DevSetup::new();
    let cs = dev.start();
    let mut c = cs.client("engine");
    let p = play_server(&mut c, Some("a.example"), &untrusted, false).await;
    client_finished(&mut c, &p).await.expect("policy off");
    assert_eq!(register(&mut c, &p, &[(1, b"forged")]).await.unwrap(), 1);
    init(&mut c, Some("b.example"), Some(b"forged"))
        .await
        .expect("policy off: an unbound ticket, for any name");
}

// ---------------------------------------------------------------------------------------
// Through the engine, against openssl s_server

fn server(naccept: u32, extra: &[&str]) -> SServer {
    let mut a: Vec<String> = vec!["-naccept".into(), naccept.to_string()];
    a.extend(certs().cert_args("server-ecdsa-p256"));
    a.extend(extra.iter().map(|s| s.to_string()));
    SServer::start(&a)
}

fn lurk_with_anchors(file: &str) -> Lurk {
    let anchors = path_str(&certs().path(file));
    Lurk::start_with_env(&[
        ("LURK_SERVER_AUTH__ENABLED", "true"),
        ("LURK_SERVER_AUTH__TRUST_ANCHORS", &anchors),
    ])
}

#[test]
fn with_the_policy_and_the_right_ca_handshakes_client_auth_and_resumption_work() {
    let lurk = lurk_with_anchors("ca-all.pem");
    let ca = path_str(&certs().path("ca-ecdsa.pem"));
    let verify = [
        "-Verify",
        "1",
        "-CAfile",
        &ca,
        "-verify_return_error",
        "-www",
    ];
    // Full handshake with client authentication, then resumption with the ticket.
    let srv = server(2, &verify);
    let out = lurk.get(&srv, &["--client-key", "pki-ecdsa-p256", "--resume", "1"]);
    out.assert_success().assert_connections(2);
    assert!(
        field_bool(out.summary(0), "client_authenticated"),
        "{}",
        out.describe()
    );
    assert!(!field_bool(out.summary(0), "resumed"));
    assert!(field_bool(out.summary(1), "resumed"), "{}", out.describe());
    // Sequence C (the engine runs the key schedule): the CS checks the server before signing.
    let srv = server(1, &verify);
    let out = lurk.get(
        &srv,
        &["--client-key", "pki-ecdsa-p256", "--ephemeral", "engine"],
    );
    out.assert_success();
    assert!(
        field_bool(out.summary(0), "client_authenticated"),
        "{}",
        out.describe()
    );
}

#[test]
fn with_the_policy_and_a_wrong_ca_the_cs_refuses_the_server() {
    // server-ecdsa-p256 is issued by ca-ecdsa; the CS trusts ca-rsa only (the engine
    // trusts both: the CS does not take its word).
    let lurk = lurk_with_anchors("ca-rsa.pem");
    let srv = server(1, &["-www"]);
    let out = lurk.get(&srv, &["--resume", "1"]);
    out.assert_failure_naming(&["invalid_certificate"]);
}
