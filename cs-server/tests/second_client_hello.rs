//! c_client_hello refuses (invalid_handshake) a second ClientHello that changes anything RFC
//! 8446 §4.1.2 does not allow, and a refused request leaves the session as it was: the
//! correct second ClientHello is still accepted afterwards, with the key pair the CS had
//! not generated yet. Real SoftHSM token and SQLite store, in test-vector mode (the P-256
//! key the CS makes after the HRR is injected: a refusal that generated a key would use
//! it up).

use std::sync::{Arc, OnceLock};

use lurk_cs::config::Config;
use lurk_cs::cs::Cs;
use lurk_cs::keyring::KeyRing;
use lurk_cs::store::SqliteStore;
use lurk_cs::token::Token;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::hello::RANDOM_OFFSET;
use lurk_proto::wire::{
    check_second_client_hello, encode_handshake, CipherSuite, ClientHello, ClientHelloBuilder,
    HandshakeType, NamedGroup, PskKeyExchangeMode, SignatureScheme, HELLO_RETRY_REQUEST_RANDOM,
};

const ENGINE: &str = "engine-hrr";
/// RFC 8448 §5's client P-256 key pair, injected as the CS's next P-256 key.
const P256_PRIVATE: &str = "ab5473467e19346ceb0a0414e41da21d4d2445bc3025afe97c4e8dc8d513da39";
const P256_PUBLIC: &str = "04a6da7392ec591e17abfd535964b99894d13befb221b3def2ebe3830eac8f0151812677c4d6d2237e85cf01d6910cfb83954e76ba7352830534159897e8065780";

struct Fixture {
    cs: Cs,
    _token: Token,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        lurk_cs::init_dev::init_dev(&dev).expect("init-dev");
        let mut cfg = Config::load(&dev.join("lurk-cs.toml")).unwrap();
        cfg.freshness.test_vectors = true;
        let token = Token::open(&cfg.token).unwrap();
        let keys = KeyRing::load(&token, &cfg.keys).unwrap();
        let store =
            SqliteStore::open(&cfg.store.path, Arc::new(token.clone()), &cfg.store).unwrap();
        let cs = Cs::new(&cfg, Some(token.clone()), keys, Arc::new(store));
        Fixture {
            cs,
            _token: token,
            _dir: dir,
        }
    })
}

/// The engine's first ClientHello: its random, an empty x25519 share for the CS.
fn first() -> ClientHelloBuilder {
    ClientHelloBuilder::new([0x11; 32])
        .legacy_session_id(&[0x5e; 32])
        .cipher_suites(&[
            CipherSuite::TlsAes256GcmSha384,
            CipherSuite::TlsAes128GcmSha256,
            CipherSuite::TlsChacha20Poly1305Sha256,
        ])
        .server_name("example.com")
        .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
        .signature_algorithms(&[
            SignatureScheme::EcdsaSecp256r1Sha256,
            SignatureScheme::Ed25519,
        ])
        .key_share(NamedGroup::X25519, &[])
        .alpn_protocols(&[b"h2", b"http/1.1"])
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .post_handshake_auth(true)
        .record_size_limit(16385)
}

fn hrr(group: Option<NamedGroup>, cookie: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&HELLO_RETRY_REQUEST_RANDOM);
    body.push(32);
    body.extend_from_slice(&[0x5e; 32]);
    body.extend_from_slice(&CipherSuite::TlsAes128GcmSha256.get().to_be_bytes());
    body.push(0);
    let mut exts = vec![0, 0x2b, 0, 2, 3, 4];
    if let Some(g) = group {
        exts.extend_from_slice(&[0, 0x33, 0, 2]);
        exts.extend_from_slice(&g.get().to_be_bytes());
    }
    if let Some(c) = cookie {
        exts.extend_from_slice(&[0, 0x2c]);
        exts.extend_from_slice(&(c.len() as u16 + 2).to_be_bytes());
        exts.extend_from_slice(&(c.len() as u16).to_be_bytes());
        exts.extend_from_slice(c);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    encode_handshake(HandshakeType::ServerHello, &body).unwrap()
}

/// `raw` re-encoded with its extension list changed by `f`.
fn with_exts(raw: &[u8], f: impl FnOnce(&mut Vec<(u16, Vec<u8>)>)) -> Vec<u8> {
    let ch = ClientHello::parse(raw).unwrap();
    let mut list: Vec<(u16, Vec<u8>)> = ch
        .extensions
        .iter()
        .map(|e| (e.typ.get(), e.body.to_vec()))
        .collect();
    f(&mut list);
    let mut body = raw[4..ch.extensions_len_offset].to_vec();
    let mut block = Vec::new();
    for (t, b) in &list {
        block.extend_from_slice(&t.to_be_bytes());
        block.extend_from_slice(&(b.len() as u16).to_be_bytes());
        block.extend_from_slice(b);
    }
    body.extend_from_slice(&(block.len() as u16).to_be_bytes());
    body.extend_from_slice(&block);
    encode_handshake(HandshakeType::ClientHello, &body).unwrap()
}

fn init(cs: &Cs) -> pb::CInitClientHelloResponse {
    lurk_cs::ops::c_init_client_hello::handle(
        cs,
        ENGINE,
        pb::CInitClientHelloRequest {
            client_hello: first().build().unwrap(),
            freshness: pb::Freshness::Null as i32,
            psks: vec![],
            secret_request: None,
        },
    )
    .unwrap()
}

fn retry(
    cs: &Cs,
    session: &[u8],
    hrr: &[u8],
    ch2: Vec<u8>,
) -> Result<pb::CClientHelloResponse, LurkStatus> {
    lurk_cs::ops::c_client_hello::handle(
        cs,
        ENGINE,
        pb::CClientHelloRequest {
            session_id: session.to_vec(),
            hello_retry_request: hrr.to_vec(),
            client_hello: ch2,
        },
    )
    .map_err(|e| e.lurk_status())
}

#[test]
fn a_mutated_second_client_hello_is_refused_and_the_session_still_takes_the_right_one() {
    let cs = &fixture().cs;
    let p256 = NamedGroup::Secp256r1;
    let cookie: &[u8] = b"the server's cookie";
    let h = hrr(Some(p256), Some(cookie));
    let good = || first().retry(Some(cookie), Some((p256, &[])), vec![]);

    let done1 = init(cs);
    let ch1 = done1.client_hello.clone();
    cs.inject_ephemeral(p256, &hex::decode(P256_PRIVATE).unwrap())
        .unwrap();

    let right = good().build().unwrap();
    let mutations: Vec<(&str, Vec<u8>)> = vec![
        (
            "cipher_suites narrowed to the HRR's",
            good()
                .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
                .build()
                .unwrap(),
        ),
        (
            "cipher_suites reordered",
            good()
                .cipher_suites(&[
                    CipherSuite::TlsAes128GcmSha256,
                    CipherSuite::TlsAes256GcmSha384,
                    CipherSuite::TlsChacha20Poly1305Sha256,
                ])
                .build()
                .unwrap(),
        ),
        (
            "legacy_session_id",
            good().legacy_session_id(&[0x5f; 32]).build().unwrap(),
        ),
        (
            "server_name",
            good().server_name("example.org").build().unwrap(),
        ),
        ("ALPN", good().alpn_protocols(&[b"h2"]).build().unwrap()),
        (
            "signature_algorithms",
            good()
                .signature_algorithms(&[SignatureScheme::Ed25519])
                .build()
                .unwrap(),
        ),
        (
            "psk_key_exchange_modes",
            good()
                .psk_modes(&[PskKeyExchangeMode::PskKe])
                .build()
                .unwrap(),
        ),
        (
            "post_handshake_auth removed",
            good().post_handshake_auth(false).build().unwrap(),
        ),
        (
            "record_size_limit",
            good().record_size_limit(1024).build().unwrap(),
        ),
        ("extensions reordered", with_exts(&right, |l| l.swap(0, 1))),
        (
            "an unknown extension added",
            with_exts(&right, |l| l.insert(3, (0x7a7a, vec![1, 2, 3]))),
        ),
        (
            "server_name removed",
            with_exts(&right, |l| l.retain(|e| e.0 != 0)),
        ),
        (
            "no cookie",
            first()
                .retry(None, Some((p256, &[])), vec![])
                .build()
                .unwrap(),
        ),
        (
            "another cookie",
            first()
                .retry(Some(b"another cookie"), Some((p256, &[])), vec![])
                .build()
                .unwrap(),
        ),
        (
            "a share for the old group",
            first().retry(Some(cookie), None, vec![]).build().unwrap(),
        ),
        (
            "a PSK added",
            good().psk(b"a new identity", 0, 32).build().unwrap(),
        ),
    ];
    for (what, ch2) in mutations {
        ClientHello::parse(&ch2).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            retry(cs, &done1.session_id, &h, ch2).err(),
            Some(LurkStatus::InvalidHandshake),
            "{what}"
        );
    }

    // The session is as it was: the right second ClientHello goes through, with the injected
    // P-256 key (no refused request generated one), the first random and the cookie.
    let done2 = retry(cs, &done1.session_id, &h, right).unwrap();
    let ch2 = ClientHello::parse(&done2.client_hello).unwrap();
    assert_eq!(
        hex::encode(ch2.key_shares.as_ref().unwrap()[0].key_exchange),
        P256_PUBLIC
    );
    assert_eq!(ch2.random, ClientHello::parse(&ch1).unwrap().random);
    check_second_client_hello(&ch1, &h, &done2.client_hello).unwrap();
}

#[test]
fn after_a_cookie_only_hrr_the_shares_stay_the_ones_the_cs_holds() {
    let cs = &fixture().cs;
    let cookie: &[u8] = b"cookie";
    let h = hrr(None, Some(cookie));
    let done1 = init(cs);
    let x25519 = done1.key_shares[0].key_exchange.clone();

    // The engine's own key in place of the CS's, a share added, the random changed (the CS
    // puts the first random back: not a refusal, but not the engine's choice either).
    let own_key = first()
        .retry(Some(cookie), Some((NamedGroup::X25519, &[9; 32])), vec![])
        .build()
        .unwrap();
    assert_eq!(
        retry(cs, &done1.session_id, &h, own_key).err(),
        Some(LurkStatus::InvalidHandshake),
        "the engine's key share"
    );
    let two = first()
        .key_share(NamedGroup::Secp256r1, &[])
        .retry(Some(cookie), None, vec![])
        .build()
        .unwrap();
    assert!(retry(cs, &done1.session_id, &h, two).is_err(), "two shares");

    let mut ch2 = first().retry(Some(cookie), None, vec![]).build().unwrap();
    ch2[RANDOM_OFFSET..RANDOM_OFFSET + 32].fill(0x77);
    let done2 = retry(cs, &done1.session_id, &h, ch2).unwrap();
    assert_eq!(done2.key_shares[0].key_exchange, x25519);
    check_second_client_hello(&done1.client_hello, &h, &done2.client_hello).unwrap();
    let with_first_random = {
        let mut v = done2.client_hello.clone();
        v[RANDOM_OFFSET..RANDOM_OFFSET + 32]
            .copy_from_slice(&done1.client_hello[RANDOM_OFFSET..RANDOM_OFFSET + 32]);
        v
    };
    assert_eq!(done2.client_hello, with_first_random);
}

/// Sequence C (c_init_client_finished): the engine sends the whole handshake; a second
/// ClientHello in it that breaks RFC 8446 §4.1.2 is refused before anything is signed.
#[test]
fn c_init_client_finished_refuses_a_mutated_second_client_hello() {
    let cs = &fixture().cs;
    let p256 = NamedGroup::Secp256r1;
    let h = hrr(Some(p256), None);
    // The engine made its shares itself: both ClientHellos carry them.
    let first = || {
        ClientHelloBuilder::new([0x11; 32])
            .legacy_session_id(&[0x5e; 32])
            .cipher_suites(&[
                CipherSuite::TlsAes256GcmSha384,
                CipherSuite::TlsAes128GcmSha256,
            ])
            .server_name("example.com")
            .supported_groups(&[NamedGroup::X25519, p256])
            .signature_algorithms(&[SignatureScheme::Ed25519])
            .key_share(NamedGroup::X25519, &[9; 32])
    };
    let ch1 = first().build().unwrap();
    let run = |ch2: Vec<u8>| {
        lurk_cs::ops::c_init_client_finished::handle(
            cs,
            ENGINE,
            pb::CInitClientFinishedRequest {
                handshake_messages: [ch1.clone(), h.clone(), ch2].concat(),
                freshness: pb::Freshness::Null as i32,
                ..Default::default()
            },
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let good = first()
        .retry(None, Some((p256, &[4; 65])), vec![])
        .build()
        .unwrap();
    // The right second ClientHello gets past the rule (the log then lacks the ServerHello).
    let e = run(good);
    assert!(e.contains("expected the ServerHello"), "{e}");
    let narrowed = first()
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .retry(None, Some((p256, &[4; 65])), vec![])
        .build()
        .unwrap();
    let e = run(narrowed);
    assert!(
        e.contains("invalid_handshake") && e.contains("§4.1.2"),
        "{e}"
    );
}
