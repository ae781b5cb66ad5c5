//! The Crypto Service as engines see it: a real `lurk-cs` process on a real SoftHSM token
//! and SQLite file, reached over mTLS. Every refusal carries its LURK status, and the
//! service keeps serving after each.

use lurk_e2e::{CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{
    CipherSuite, ClientHelloBuilder, NamedGroup, PskKeyExchangeMode, SignatureScheme,
};

fn status_of(e: tonic::Status) -> LurkStatus {
    LurkStatus::from_grpc(&e).unwrap_or_else(|| panic!("no lurk-status in {e:?}"))
}

/// A ClientHello as an engine sends it with cs_generated ephemerals: empty shares.
fn client_hello(groups: &[NamedGroup], shares: &[NamedGroup]) -> Vec<u8> {
    let mut b = ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(groups)
        .signature_algorithms(&[
            SignatureScheme::EcdsaSecp256r1Sha256,
            SignatureScheme::Ed25519,
        ]);
    for g in shares {
        b = b.key_share(*g, &[]);
    }
    b.build().unwrap()
}

fn init_request(ch: Vec<u8>) -> pb::CInitClientHelloRequest {
    pb::CInitClientHelloRequest {
        client_hello: ch,
        freshness: pb::Freshness::Sha256 as i32,
        psks: vec![],
        secret_request: None,
    }
}

async fn ping_ok(client: &mut CsClient) {
    let p = client
        .ping(pb::PingRequest {})
        .await
        .expect("the CS still serves")
        .into_inner();
    assert_eq!(p.engine_identity, "engine-dev");
}

fn start() -> (DevSetup, CsProcess) {
    let dev = DevSetup::new();
    let cs = dev.start();
    (dev, cs)
}

#[tokio::test]
async fn engines_are_named_by_their_certificate_and_capabilities_list_the_dev_keys() {
    let (_dev, cs) = start();
    let mut c = cs.client("engine");
    ping_ok(&mut c).await;
    let mut c2 = cs.client("engine2");
    let p = c2.ping(pb::PingRequest {}).await.unwrap().into_inner();
    assert_eq!(p.engine_identity, "engine-other");
    let caps = c
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = caps.keys.iter().map(|k| k.key_id.as_str()).collect();
    assert!(ids.contains(&"ed25519") && ids.contains(&"p256"), "{ids:?}");
    assert!(caps.keys.iter().all(|k| !k.certificate_chain.is_empty()));
    assert_eq!(caps.ephemeral_backend, "token");
}

#[tokio::test]
async fn an_engine_without_a_client_certificate_is_refused() {
    let (_dev, cs) = start();
    let mut ep = cs.endpoint("engine");
    ep.identity_pem = None;
    let mut c = ep.connect_lazy().unwrap();
    assert!(
        c.ping(pb::PingRequest {}).await.is_err(),
        "mTLS must refuse an anonymous engine"
    );
    // A certificate from another CA (the CS's own server certificate is not a client CA).
    let mut ep = cs.endpoint("engine");
    let dir = _dev.path().join("tls");
    ep.identity_pem = Some((
        std::fs::read(dir.join("cs.pem")).unwrap(),
        std::fs::read(dir.join("cs.key")).unwrap(),
    ));
    let mut c = ep.connect_lazy().unwrap();
    let r = c.ping(pb::PingRequest {}).await;
    if let Ok(p) = &r {
        // Same CA, but then its identity is the CS's name, never an engine's.
        assert_ne!(p.get_ref().engine_identity, "engine-dev");
    }
    ping_ok(&mut cs.client("engine")).await;
}

#[tokio::test]
async fn refusals_carry_their_lurk_status_and_the_service_keeps_serving() {
    let (_dev, cs) = start();
    let mut c = cs.client("engine");

    // Malformed handshake bytes (a ClientHello cut short): invalid_format.
    let e = c
        .c_init_client_hello(init_request(vec![1, 0, 0, 3, 9, 9]))
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidFormat);
    ping_ok(&mut c).await;

    // Well-formed bytes that break a rule (RFC 8446 §4.1.2: legacy_version is 0x0303):
    // invalid_handshake (docs/protocol.md, "Malformed and invalid messages").
    let mut ch = client_hello(&[NamedGroup::X25519], &[NamedGroup::X25519]);
    ch[4..6].copy_from_slice(&[3, 1]);
    let e = c.c_init_client_hello(init_request(ch)).await.unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidHandshake);
    ping_ok(&mut c).await;

    // null freshness outside test-vector mode.
    let mut req = init_request(client_hello(&[NamedGroup::X25519], &[NamedGroup::X25519]));
    req.freshness = pb::Freshness::Null as i32;
    assert_eq!(
        status_of(c.c_init_client_hello(req).await.unwrap_err()),
        LurkStatus::InvalidFreshness
    );

    // A request for r.
    let mut req = init_request(client_hello(&[NamedGroup::X25519], &[NamedGroup::X25519]));
    req.secret_request = Some(pb::SecretRequest {
        r: true,
        ..Default::default()
    });
    assert_eq!(
        status_of(c.c_init_client_hello(req).await.unwrap_err()),
        LurkStatus::InvalidSecretRequest
    );

    // An unknown PSK identity.
    let ch = ClientHelloBuilder::new([7u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::Ed25519])
        .key_share(NamedGroup::X25519, &[])
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .psk(b"no-such-ticket", 0, 32)
        .build()
        .unwrap();
    let mut req = init_request(ch);
    req.psks = vec![pb::PskInfo {
        identity_index: 0,
        psk_type: pb::PskType::Resumption as i32,
        tls_hash: pb::TlsHash::Sha256 as i32,
    }];
    assert_eq!(
        status_of(c.c_init_client_hello(req).await.unwrap_err()),
        LurkStatus::InvalidPsk
    );

    // Unknown session.
    let e = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: vec![0u8; 16],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidSessionId);

    // A real session, with two CS-generated shares (x25519 and secp256r1).
    let resp = c
        .c_init_client_hello(init_request(client_hello(
            &[
                NamedGroup::X25519,
                NamedGroup::Secp256r1,
                NamedGroup::Secp384r1,
            ],
            &[NamedGroup::X25519, NamedGroup::Secp256r1],
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.key_shares.len(), 2);
    assert_eq!(resp.key_shares[0].key_exchange.len(), 32);
    assert_eq!(resp.key_shares[1].key_exchange.len(), 65);
    let completed = lurk_proto::wire::ClientHello::parse(&resp.client_hello).unwrap();
    // Freshness: the random is not the engine's.
    assert_ne!(completed.random, &[7u8; 32]);
    let id = resp.session_id.clone();
    assert_eq!(id.len(), 16);

    // Another engine's session looks unknown.
    let mut other = cs.client("engine2");
    let e = other
        .c_client_finished(pb::CClientFinishedRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidSessionId);

    // Out of order: c_client_finished before c_server_hello.
    let e = c
        .c_client_finished(pb::CClientFinishedRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidStatus);

    // The server's share is for a group the client did not offer a share for.
    let server_hello = lurk_e2e::server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::Secp384r1,
        &[4u8; 97],
        &[1u8; 32],
    );
    let e = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: id.clone(),
            server_hello,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidEphemeral);

    // The session survived every refusal: a valid ServerHello for x25519 now works.
    let peer = ring::agreement::EphemeralPrivateKey::generate(
        &ring::agreement::X25519,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let peer_pub = peer.compute_public_key().unwrap();
    let server_hello = lurk_e2e::server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        peer_pub.as_ref(),
        &[1u8; 32],
    );
    let sh = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: id.clone(),
            server_hello,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = sh.secrets.iter().map(|s| s.secret_type).collect();
    assert_eq!(
        kinds,
        vec![
            pb::SecretType::ClientHandshakeTraffic as i32,
            pb::SecretType::ServerHandshakeTraffic as i32
        ]
    );
    // Replaying the same exchange is out of order now.
    let e = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidStatus);
    ping_ok(&mut c).await;
}

#[tokio::test]
async fn sessions_expire() {
    let dev = DevSetup::new();
    dev.append_config("[sessions]\nttl_secs = 1\n");
    let cs = dev.start();
    let mut c = cs.client("engine");
    let resp = c
        .c_init_client_hello(init_request(client_hello(
            &[NamedGroup::X25519],
            &[NamedGroup::X25519],
        )))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let e = c
        .c_server_hello(pb::CServerHelloRequest {
            session_id: resp.session_id,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidSessionId);
}

#[tokio::test]
async fn too_many_sessions_are_refused_with_their_status() {
    let dev = DevSetup::new();
    dev.append_config("[sessions]\nmax = 3\nmax_per_engine = 2\n");
    dev.edit_config("backend = \"token\"", "backend = \"memory\"");
    let cs = dev.start();
    let mut c = cs.client("engine");
    for _ in 0..2 {
        c.c_init_client_hello(init_request(client_hello(
            &[NamedGroup::X25519],
            &[NamedGroup::X25519],
        )))
        .await
        .unwrap();
    }
    let e = c
        .c_init_client_hello(init_request(client_hello(
            &[NamedGroup::X25519],
            &[NamedGroup::X25519],
        )))
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::TooManySessions);
    // Another engine still has room: limits are per engine too.
    let mut c2 = cs.client("engine2");
    c2.c_init_client_hello(init_request(client_hello(
        &[NamedGroup::X25519],
        &[NamedGroup::X25519],
    )))
    .await
    .unwrap();
    ping_ok(&mut c).await;
}

#[tokio::test]
async fn sigterm_stops_the_cs_even_with_an_engine_connected() {
    let (_dev, mut cs) = start();
    // The engine keeps its HTTP/2 connection open (and this test's runtime is blocked while
    // it waits): the CS still stops, after its grace period.
    let mut client = cs.client("engine");
    ping_ok(&mut client).await;
    let status = cs
        .terminate(std::time::Duration::from_secs(15))
        .expect("lurk-cs exits on SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(cs.log().contains("lurk-cs stopped"), "{}", cs.log());
}

/// A HelloRetryRequest carrying only a cookie (RFC 8446 §4.1.4): the second ClientHello
/// keeps the first one's shares, and the CS refills them with the key it already holds.
#[tokio::test]
async fn a_cookie_only_hello_retry_request_keeps_the_cs_key_share_and_the_random() {
    let (_dev, cs) = start();
    let mut c = cs.client("engine");
    let groups = [NamedGroup::X25519, NamedGroup::Secp256r1];
    let first = c
        .c_init_client_hello(init_request(client_hello(&groups, &[NamedGroup::X25519])))
        .await
        .unwrap()
        .into_inner();
    let ch1 = lurk_proto::wire::ClientHello::parse(&first.client_hello).unwrap();

    // HRR: the special random, the session id echoed, supported_versions and a cookie.
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM);
    body.push(32);
    body.extend_from_slice(&[1u8; 32]);
    body.extend_from_slice(&[0x13, 0x01, 0x00]);
    let ext = [
        0x00, 0x2b, 0x00, 0x02, 0x03, 0x04, 0x00, 0x2c, 0x00, 0x05, 0x00, 0x03, 0xc0, 0x0c, 0x1e,
    ];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hrr = vec![2, 0, 0, body.len() as u8];
    hrr.extend_from_slice(&body);

    let ch2 = ClientHelloBuilder::new([0x55u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(&groups)
        .signature_algorithms(&[
            SignatureScheme::EcdsaSecp256r1Sha256,
            SignatureScheme::Ed25519,
        ])
        .key_share(NamedGroup::X25519, &[])
        .cookie(&[0xc0, 0x0c, 0x1e])
        .build()
        .unwrap();
    let second = c
        .c_client_hello(pb::CClientHelloRequest {
            session_id: first.session_id.clone(),
            hello_retry_request: hrr.clone(),
            client_hello: ch2,
        })
        .await
        .unwrap()
        .into_inner();
    let ch2 = lurk_proto::wire::ClientHello::parse(&second.client_hello).unwrap();
    assert_eq!(
        ch2.random, ch1.random,
        "both ClientHellos carry the same random"
    );
    assert_eq!(ch2.cookie, Some(&[0xc0, 0x0c, 0x1e][..]));
    assert_eq!(
        ch2.key_shares.unwrap()[0].key_exchange,
        first.key_shares[0].key_exchange.as_slice(),
        "the same x25519 key the CS holds"
    );
    // A second HRR is refused (RFC 8446 §4.1.4).
    let e = c
        .c_client_hello(pb::CClientHelloRequest {
            session_id: first.session_id,
            hello_retry_request: hrr,
            client_hello: second.client_hello,
        })
        .await
        .unwrap_err();
    assert_eq!(status_of(e), LurkStatus::InvalidStatus);
}

/// Sequence C (c_init_client_finished): only the signing key is protected, and the engine
/// cannot use the CS as a signing oracle for a transcript of its choosing. The CS signs over
/// the ClientHello with the random derived from the engine's (freshness, docs/design.md §3), not
/// over the bytes the engine sent: the signature verifies for the derived random and fails
/// for the engine's.
#[tokio::test]
async fn c_init_client_finished_signs_over_the_fresh_random_only() {
    use lurk_e2e::sequence_c::{ed25519_leaf, ed25519_public_key, Handshake, ENGINE_RANDOM};
    use lurk_proto::freshness::{client_random, FreshnessMode};
    use lurk_proto::wire::encode_certificate;

    let (dev, cs) = start();
    let mut c = cs.client("engine");
    let hs = Handshake::new();
    let leaf = ed25519_leaf(&dev.path());
    let client_cert = encode_certificate(&[], std::slice::from_ref(&leaf)).unwrap();
    let resp = c
        .c_init_client_finished(pb::CInitClientFinishedRequest {
            handshake_messages: hs.messages(),
            freshness: pb::Freshness::Sha256 as i32,
            key_id: "ed25519".into(),
            client_certificate: client_cert.clone(),
            last_exchange: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.last_exchange && resp.session_id.is_empty());
    let cv = lurk_proto::wire::CertificateVerify::parse(&resp.certificate_verify).unwrap();
    assert_eq!(cv.scheme, SignatureScheme::Ed25519);

    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ED25519,
        ed25519_public_key(&leaf),
    );
    let fresh = client_random(pb::Freshness::Sha256, FreshnessMode::Draft, &ENGINE_RANDOM);
    assert!(
        public
            .verify(&hs.signed_content(&fresh, &client_cert), cv.signature)
            .is_ok(),
        "signed over the fresh random"
    );
    assert!(
        public
            .verify(
                &hs.signed_content(&ENGINE_RANDOM, &client_cert),
                cv.signature
            )
            .is_err(),
        "never over the engine's"
    );
}
