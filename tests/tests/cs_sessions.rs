//! What a compromised engine can do to its own LURK sessions, against a real `lurk-cs` on a
//! real SoftHSM token and SQLite file: a refused exchange changes nothing, a ticket is
//! registered once and resumed once, and what a session holds is bounded per engine.

use lurk_e2e::{CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_proto::key_schedule::{finished_verify_data, KeyScheduleEarly};
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    encode_certificate, encode_certificate_verify, encode_finished, CipherSuite,
    ClientHelloBuilder, HashAlg, NamedGroup, PskKeyExchangeMode, SignatureScheme,
};
use ring::agreement;

type Client = CsClient;

fn status_of(e: tonic::Status) -> LurkStatus {
    LurkStatus::from_grpc(&e).unwrap_or_else(|| panic!("no lurk-status in {e:?}"))
}

/// A CS on the dev set-up, with `extra` TOML appended and the memory ephemeral backend if
/// `memory`.
fn start(memory: bool, extra: &str) -> (DevSetup, CsProcess) {
    let dev = DevSetup::new();
    if memory {
        dev.edit_config("backend = \"token\"", "backend = \"memory\"");
    }
    if !extra.is_empty() {
        dev.append_config(extra);
    }
    let cs = dev.start();
    (dev, cs)
}

fn builder() -> ClientHelloBuilder {
    ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
        .signature_algorithms(&[SignatureScheme::Ed25519])
        .key_share(NamedGroup::X25519, &[])
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
}

fn init_request(ch: Vec<u8>, psks: Vec<pb::PskInfo>) -> pb::CInitClientHelloRequest {
    pb::CInitClientHelloRequest {
        client_hello: ch,
        freshness: pb::Freshness::Sha256 as i32,
        psks,
        secret_request: None,
    }
}

fn resumption(index: u32) -> pb::PskInfo {
    pb::PskInfo {
        identity_index: index,
        psk_type: pb::PskType::Resumption as i32,
        tls_hash: pb::TlsHash::Sha256 as i32,
    }
}

/// The server's side of an x25519 exchange with the CS's key share.
struct ServerKey {
    public: Vec<u8>,
    private: agreement::EphemeralPrivateKey,
}

impl ServerKey {
    fn new() -> Self {
        let private = agreement::EphemeralPrivateKey::generate(
            &agreement::X25519,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let public = private.compute_public_key().unwrap().as_ref().to_vec();
        Self { public, private }
    }

    fn shared_with(self, cs_public: &[u8]) -> Vec<u8> {
        agreement::agree_ephemeral(
            self.private,
            &agreement::UnparsedPublicKey::new(&agreement::X25519, cs_public),
            |s| s.to_vec(),
        )
        .unwrap()
    }
}

fn server_hello(key_exchange: &[u8]) -> Vec<u8> {
    lurk_e2e::server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        key_exchange,
        &[1u8; 32],
    )
}

fn secret(secrets: &[pb::Secret], t: pb::SecretType) -> Vec<u8> {
    secrets
        .iter()
        .find(|s| s.secret_type == t as i32)
        .unwrap_or_else(|| panic!("no {t:?}"))
        .value
        .clone()
}

/// A full handshake (no PSK) through c_client_finished: the session is established and the
/// CS holds r. Returns the session id.
async fn handshake(c: &mut Client) -> Vec<u8> {
    let init = c
        .c_init_client_hello(init_request(builder().build().unwrap(), vec![]))
        .await
        .unwrap()
        .into_inner();
    let server = ServerKey::new();
    let sh = server_hello(&server.public);
    let shr = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: init.session_id.clone(),
            server_hello: sh.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let server_hs = secret(&shr.secrets, pb::SecretType::ServerHandshakeTraffic);
    let mut t = Transcript::new();
    t.add(&init.client_hello);
    t.add(&sh);
    let flight_head = [
        vec![8, 0, 0, 2, 0, 0],
        encode_certificate::<Vec<u8>>(&[], &[vec![0x30, 0x00]]).unwrap(),
        encode_certificate_verify(SignatureScheme::Ed25519, &[1; 64]).unwrap(),
    ]
    .concat();
    t.add(&flight_head);
    let fin = encode_finished(&finished_verify_data(
        HashAlg::Sha256,
        &server_hs,
        &t.hash(HashAlg::Sha256),
    ))
    .unwrap();
    c.c_client_finished(pb::CClientFinishedRequest {
        session_id: init.session_id.clone(),
        handshake_messages: [flight_head, fin].concat(),
        ..Default::default()
    })
    .await
    .unwrap();
    init.session_id
}

/// A NewSessionTicket (RFC 8446 §4.6.1) without extensions.
fn new_session_ticket(lifetime: u32, nonce: &[u8], ticket: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&lifetime.to_be_bytes());
    body.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    body.push(nonce.len() as u8);
    body.extend_from_slice(nonce);
    body.extend_from_slice(&(ticket.len() as u16).to_be_bytes());
    body.extend_from_slice(ticket);
    body.extend_from_slice(&[0, 0]);
    let mut m = vec![4];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(&body);
    m
}

async fn register(c: &mut Client, id: &[u8], nsts: Vec<Vec<u8>>) -> Result<u32, LurkStatus> {
    c.c_register_tickets(pb::CRegisterTicketsRequest {
        session_id: id.to_vec(),
        new_session_tickets: nsts,
        last_exchange: false,
    })
    .await
    .map(|r| r.into_inner().registered)
    .map_err(status_of)
}

/// c_init_client_hello offering the resumption ticket `identity`.
async fn resume(
    c: &mut Client,
    identity: &[u8],
) -> Result<pb::CInitClientHelloResponse, LurkStatus> {
    let ch = builder().psk(identity, 0, 32).build().unwrap();
    c.c_init_client_hello(init_request(ch, vec![resumption(0)]))
        .await
        .map(|r| r.into_inner())
        .map_err(status_of)
}

/// A ServerHello with a bad key share is refused and leaves the session as it was: the
/// retry with a valid one derives from the CS's own key pair, never from a shared secret the
/// engine sends along (e_generated), whatever the ephemeral backend.
async fn refused_server_hello_keeps_the_cs_key_share(memory: bool) {
    let (_dev, cs) = start(memory, "");
    let mut c = cs.client("engine");
    let init = c
        .c_init_client_hello(init_request(builder().build().unwrap(), vec![]))
        .await
        .unwrap()
        .into_inner();
    let cs_public = init.key_shares[0].key_exchange.clone();
    let engine_chosen = pb::Ephemeral {
        method: pb::EphemeralMethod::EGenerated as i32,
        shared_secret: vec![0x11; 32],
    };

    // x25519 small-order points: u = 0 and u = 1 (RFC 8446 §7.4.2).
    let mut one = [0u8; 32];
    one[0] = 1;
    for bad in [[0u8; 32], one] {
        let e = c
            .c_server_hello(pb::CServerHelloRequest {
                session_id: init.session_id.clone(),
                server_hello: server_hello(&bad),
                ephemeral: Some(engine_chosen.clone()),
                secret_request: None,
            })
            .await
            .unwrap_err();
        assert_eq!(status_of(e), LurkStatus::InvalidEphemeral);
    }

    let server = ServerKey::new();
    let sh = server_hello(&server.public);
    let resp = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: init.session_id.clone(),
            server_hello: sh.clone(),
            ephemeral: Some(engine_chosen),
            secret_request: None,
        })
        .await
        .expect("the retry is served as if the refused ones never happened")
        .into_inner();
    let ecdhe = server.shared_with(&cs_public);
    let mut t = Transcript::new();
    t.add(&init.client_hello);
    t.add(&sh);
    let hs = KeyScheduleEarly::new(HashAlg::Sha256, None).into_handshake(Some(&ecdhe));
    assert_eq!(
        secret(&resp.secrets, pb::SecretType::ClientHandshakeTraffic),
        hs.client_handshake_traffic_secret(&t.hash(HashAlg::Sha256))
            .as_bytes(),
        "derived from the CS's own key share"
    );
}

#[tokio::test]
async fn a_refused_server_hello_keeps_the_cs_key_share_token_backend() {
    refused_server_hello_keeps_the_cs_key_share(false).await;
}

#[tokio::test]
async fn a_refused_server_hello_keeps_the_cs_key_share_memory_backend() {
    refused_server_hello_keeps_the_cs_key_share(true).await;
}

/// A HelloRetryRequest exchange refused at the binders keeps the PSKs the session holds:
/// the retry with a well-formed second ClientHello gets its binders.
#[tokio::test]
async fn a_refused_client_hello_keeps_the_offered_psks() {
    let (_dev, cs) = start(true, "");
    let mut c = cs.client("engine");
    let id = handshake(&mut c).await;
    assert_eq!(
        register(
            &mut c,
            &id,
            vec![new_session_ticket(600, b"n1", b"ticket-1")]
        )
        .await,
        Ok(1)
    );
    let first = resume(&mut c, b"ticket-1").await.unwrap();

    // HRR for secp256r1 (no share in the first ClientHello).
    let hrr = {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM);
        body.push(32);
        body.extend_from_slice(&[1u8; 32]);
        body.extend_from_slice(&[0x13, 0x01, 0x00]);
        let ext = [
            0x00, 0x2b, 0x00, 0x02, 0x03, 0x04, 0x00, 0x33, 0x00, 0x02, 0x00, 0x17,
        ];
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut m = vec![2, 0, 0, body.len() as u8];
        m.extend_from_slice(&body);
        m
    };
    let ch2 = |binder_len: usize| {
        ClientHelloBuilder::new([7u8; 32])
            .legacy_session_id(&[1u8; 32])
            .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
            .server_name("localhost")
            .supported_versions(&[0x0304])
            .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
            .signature_algorithms(&[SignatureScheme::Ed25519])
            .key_share(NamedGroup::Secp256r1, &[])
            .psk_modes(&[PskKeyExchangeMode::PskDheKe])
            .psk(b"ticket-1", 0, binder_len)
            .build()
            .unwrap()
    };
    // A binder slot of the wrong length: refused (RFC 8446 §4.1.2 lets the second
    // ClientHello update the binders, not their length).
    let e = c
        .c_client_hello(pb::CClientHelloRequest {
            session_id: first.session_id.clone(),
            hello_retry_request: hrr.clone(),
            client_hello: ch2(48),
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidHandshake);
    let retry = c
        .c_client_hello(pb::CClientHelloRequest {
            session_id: first.session_id.clone(),
            hello_retry_request: hrr,
            client_hello: ch2(32),
        })
        .await
        .expect("the PSK is still in the session")
        .into_inner();
    assert_eq!(retry.binders.len(), 1);
    assert_eq!(retry.binders[0].len(), 32);
}

/// A ticket is used once (RFC 8446 §C.4): registering the same NewSessionTicket again after
/// resuming with it is refused, and so is a second resumption with its identity.
#[tokio::test]
async fn a_resumed_ticket_cannot_be_registered_again() {
    let (_dev, cs) = start(true, "");
    let mut c = cs.client("engine");
    let id = handshake(&mut c).await;
    let nst = new_session_ticket(600, b"nonce-1", b"ticket-1");
    assert_eq!(register(&mut c, &id, vec![nst.clone()]).await, Ok(1));
    resume(&mut c, b"ticket-1")
        .await
        .expect("the first resumption");

    assert_eq!(
        register(&mut c, &id, vec![nst]).await,
        Err(LurkStatus::InvalidHandshake),
        "the same NewSessionTicket again"
    );
    assert_eq!(
        resume(&mut c, b"ticket-1").await.unwrap_err(),
        LurkStatus::InvalidPsk,
        "a second resumption with the identity"
    );
    // Same nonce under another identity, same identity under another nonce, or one nonce
    // twice in a request: refused, and nothing of the request is stored.
    for nsts in [
        vec![new_session_ticket(600, b"nonce-1", b"ticket-2")],
        vec![new_session_ticket(600, b"nonce-2", b"ticket-1")],
        vec![
            new_session_ticket(600, b"nonce-3", b"ticket-3"),
            new_session_ticket(600, b"nonce-3", b"ticket-4"),
        ],
    ] {
        assert_eq!(
            register(&mut c, &id, nsts).await,
            Err(LurkStatus::InvalidHandshake)
        );
    }
    for identity in [&b"ticket-2"[..], b"ticket-3", b"ticket-4"] {
        assert_eq!(
            resume(&mut c, identity).await.unwrap_err(),
            LurkStatus::InvalidPsk
        );
    }
    // A new ticket of the session is still welcome.
    assert_eq!(
        register(
            &mut c,
            &id,
            vec![new_session_ticket(600, b"nonce-5", b"ticket-5")]
        )
        .await,
        Ok(1)
    );
    resume(&mut c, b"ticket-5").await.expect("a new ticket");
}

/// A ClientHello of about 30 KiB (padding, under the 32 KiB ClientHello cap of
/// `lurk_proto::wire::limits`), empty x25519 share.
fn big_client_hello() -> Vec<u8> {
    builder().padding(Some(30 * 1024)).build().unwrap()
}

/// What sessions hold is bounded per engine by bytes, not only by count: one engine opening
/// sessions on big ClientHellos is refused past its byte share, and another engine is still
/// served.
#[tokio::test]
async fn sessions_are_bounded_per_engine_by_the_bytes_they_hold() {
    let (_dev, cs) = start(
        true,
        "[sessions]\nmax_bytes = 2097152\nmax_bytes_per_engine = 409600\n",
    );
    let mut c = cs.client("engine");
    let ch = big_client_hello();
    assert!(ch.len() > 30_000, "{}", ch.len());
    let mut opened = 0;
    let refusal = loop {
        match c
            .c_init_client_hello(init_request(ch.clone(), vec![]))
            .await
        {
            Ok(_) => opened += 1,
            Err(e) => break status_of(e),
        }
        assert!(opened < 40, "no byte bound: {opened} sessions of 30 KiB");
    };
    assert_eq!(refusal, LurkStatus::TooManySessions);
    assert!((10..=17).contains(&opened), "{opened} sessions admitted");
    let mut other = cs.client("engine2");
    for _ in 0..3 {
        other
            .c_init_client_hello(init_request(ch.clone(), vec![]))
            .await
            .expect("another engine has its own share");
    }
}

/// The dev set-up's ed25519 client certificate as a Certificate message with `context`.
fn client_certificate(dev: &DevSetup, context: &[u8]) -> Vec<u8> {
    let pem = std::fs::read(dev.path().join("client-ed25519.pem")).unwrap();
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    encode_certificate(context, std::slice::from_ref(&leaf)).unwrap()
}

/// A CertificateRequest (RFC 8446 §4.3.2) with `context`, signature_algorithms = [ed25519].
fn certificate_request(context: &[u8]) -> Vec<u8> {
    let mut body = vec![context.len() as u8];
    body.extend_from_slice(context);
    body.extend_from_slice(&[0, 8, 0, 13, 0, 4, 0, 2, 8, 7]);
    let mut m = vec![13, 0, 0, body.len() as u8];
    m.extend_from_slice(&body);
    m
}

/// Sequence C with post_handshake_auth offered and no CertificateRequest in the handshake:
/// the CS opens a session for post-handshake authentication. `hrr_suite`: a
/// HelloRetryRequest selecting that suite comes first, then a ServerHello selecting
/// `suite`. Returns the response (session id) or the refusal.
async fn init_client_finished(
    c: &mut Client,
    hrr_suite: Option<CipherSuite>,
    suite: CipherSuite,
) -> Result<pb::CInitClientFinishedResponse, LurkStatus> {
    let suites = [
        CipherSuite::TlsAes128GcmSha256,
        CipherSuite::TlsAes256GcmSha384,
    ];
    let ch = |share: &[u8]| {
        ClientHelloBuilder::new([0x61u8; 32])
            .legacy_session_id(&[1u8; 32])
            .cipher_suites(&suites)
            .supported_versions(&[0x0304])
            .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
            .signature_algorithms(&[SignatureScheme::Ed25519])
            .key_share(NamedGroup::X25519, share)
            .post_handshake_auth(true)
            .build()
            .unwrap()
    };
    let mut messages = vec![ch(&[9u8; 32])];
    if let Some(hrr_suite) = hrr_suite {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM);
        body.push(32);
        body.extend_from_slice(&[1u8; 32]);
        body.extend_from_slice(&hrr_suite.get().to_be_bytes());
        body.push(0);
        let ext = [
            0x00, 0x2b, 0x00, 0x02, 0x03, 0x04, 0x00, 0x2c, 0x00, 0x03, 0x00, 0x01, 0x7a,
        ];
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hrr = vec![2, 0, 0, body.len() as u8];
        hrr.extend_from_slice(&body);
        messages.push(hrr);
        messages.push(
            ClientHelloBuilder::new([0x61u8; 32])
                .legacy_session_id(&[1u8; 32])
                .cipher_suites(&suites)
                .supported_versions(&[0x0304])
                .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
                .signature_algorithms(&[SignatureScheme::Ed25519])
                .key_share(NamedGroup::X25519, &[9u8; 32])
                .post_handshake_auth(true)
                .cookie(&[0x7a])
                .build()
                .unwrap(),
        );
    }
    messages.push(
        lurk_proto::wire::encode_server_hello(
            &[0x42; 32],
            &[1u8; 32],
            suite,
            NamedGroup::X25519,
            &[8u8; 32],
        )
        .unwrap(),
    );
    messages.push(vec![8, 0, 0, 2, 0, 0]);
    messages.push(encode_certificate::<Vec<u8>>(&[], &[vec![0x30, 0x00]]).unwrap());
    messages.push(encode_certificate_verify(SignatureScheme::Ed25519, &[1; 64]).unwrap());
    let fin_len = if suite == CipherSuite::TlsAes256GcmSha384 {
        48
    } else {
        32
    };
    messages.push(encode_finished(&vec![5u8; fin_len]).unwrap());
    c.c_init_client_finished(pb::CInitClientFinishedRequest {
        handshake_messages: messages.concat(),
        freshness: pb::Freshness::Sha256 as i32,
        key_id: String::new(),
        client_certificate: Vec::new(),
        last_exchange: false,
    })
    .await
    .map(|r| r.into_inner())
    .map_err(status_of)
}

async fn post_hand_auth(
    c: &mut Client,
    dev: &DevSetup,
    id: &[u8],
    first: bool,
    context: &[u8],
) -> Result<pb::CPostHandAuthResponse, LurkStatus> {
    c.c_post_hand_auth(pb::CPostHandAuthRequest {
        session_id: id.to_vec(),
        handshake_messages: if first {
            encode_finished(&[3u8; 32]).unwrap()
        } else {
            Vec::new()
        },
        certificate_request: certificate_request(context),
        key_id: "ed25519".into(),
        client_certificate: client_certificate(dev, context),
        last_exchange: false,
    })
    .await
    .map(|r| r.into_inner())
    .map_err(status_of)
}

/// A session opened by c_init_client_finished (no server seen by the CS) lives
/// `engine_keyed_ttl_secs`, not `established_ttl_secs`.
#[tokio::test]
async fn a_sequence_c_session_has_its_own_shorter_life() {
    let (dev, cs) = start(true, "[sessions]\nengine_keyed_ttl_secs = 1\n");
    let mut c = cs.client("engine");
    let resp = init_client_finished(&mut c, None, CipherSuite::TlsAes128GcmSha256)
        .await
        .unwrap();
    assert_eq!(resp.session_id.len(), 16);
    let fresh = init_client_finished(&mut c, None, CipherSuite::TlsAes128GcmSha256)
        .await
        .unwrap();
    let cv = post_hand_auth(&mut c, &dev, &fresh.session_id, true, b"ctx-1")
        .await
        .expect("served within its life");
    assert!(!cv.certificate_verify.is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        post_hand_auth(&mut c, &dev, &resp.session_id, true, b"ctx-1")
            .await
            .unwrap_err(),
        LurkStatus::InvalidSessionId
    );
}

/// After a HelloRetryRequest, the ServerHello must select the HRR's suite (RFC 8446 §4.1.4).
#[tokio::test]
async fn c_init_client_finished_checks_the_server_hello_suite_against_the_hrr() {
    let (_dev, cs) = start(true, "");
    let mut c = cs.client("engine");
    init_client_finished(
        &mut c,
        Some(CipherSuite::TlsAes128GcmSha256),
        CipherSuite::TlsAes128GcmSha256,
    )
    .await
    .expect("the same suite");
    assert_eq!(
        init_client_finished(
            &mut c,
            Some(CipherSuite::TlsAes128GcmSha256),
            CipherSuite::TlsAes256GcmSha384,
        )
        .await
        .unwrap_err(),
        LurkStatus::InvalidHandshake
    );
}

/// Each post-handshake authentication is a token signature: a session gets at most
/// `max_post_handshake_auths`.
#[tokio::test]
async fn post_handshake_authentications_are_capped_per_session() {
    let (dev, cs) = start(true, "[sessions]\nmax_post_handshake_auths = 2\n");
    let mut c = cs.client("engine");
    let id = init_client_finished(&mut c, None, CipherSuite::TlsAes128GcmSha256)
        .await
        .unwrap()
        .session_id;
    post_hand_auth(&mut c, &dev, &id, true, b"ctx-1")
        .await
        .unwrap();
    post_hand_auth(&mut c, &dev, &id, false, b"ctx-2")
        .await
        .unwrap();
    assert_eq!(
        post_hand_auth(&mut c, &dev, &id, false, b"ctx-3")
            .await
            .unwrap_err(),
        LurkStatus::InvalidStatus
    );
}

/// An engine looping on refused requests does not flood the CS's log: at most a burst of
/// refusal lines per engine per interval; another engine's refusals are still logged.
#[tokio::test]
async fn refusal_log_lines_are_bounded_per_engine() {
    let (_dev, cs) = start(true, "");
    let mut c = cs.client("engine");
    for _ in 0..40 {
        let e = c
            .c_server_hello(pb::CServerHelloRequest {
                session_id: vec![0u8; 16],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status_of(e), LurkStatus::InvalidSessionId);
    }
    let mut c2 = cs.client("engine2");
    c2.c_server_hello(pb::CServerHelloRequest {
        session_id: vec![0u8; 16],
        ..Default::default()
    })
    .await
    .unwrap_err();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = cs.log();
    let refused = |engine: &str| {
        log.lines()
            .filter(|l| l.contains("exchange refused") && l.contains(engine))
            .count()
    };
    assert_eq!(refused("engine-dev"), 10, "{log}");
    assert!(
        log.contains("further refusals of this engine are counted"),
        "{log}"
    );
    assert_eq!(refused("engine-other"), 1, "{log}");
}

/// A ticket's lifetime counts from the handshake, not from its registration: registered
/// late, a ticket whose lifetime is over is not stored (RFC 8446 §4.6.1), and registering
/// never extends a lifetime.
#[tokio::test]
async fn a_ticket_lifetime_counts_from_the_handshake() {
    let (_dev, cs) = start(true, "");
    let mut c = cs.client("engine");
    let id = handshake(&mut c).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        register(
            &mut c,
            &id,
            vec![
                new_session_ticket(1, b"nonce-1", b"short-lived"),
                new_session_ticket(600, b"nonce-2", b"long-lived"),
            ]
        )
        .await,
        Ok(1),
        "the 1 s ticket was over before it was registered"
    );
    assert_eq!(
        resume(&mut c, b"short-lived").await.unwrap_err(),
        LurkStatus::InvalidPsk
    );
    resume(&mut c, b"long-lived")
        .await
        .expect("within its lifetime");
}
