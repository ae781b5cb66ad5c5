//! The planned recycle of a PKCS#11 module that keeps destroyed session objects
//! (token/pool/recycle.rs), against the real SoftHSM 2.6 of an init-dev setup and a `Cs` in
//! process: concurrent handshakes across recycles all succeed with the right secrets, a key
//! pair still in use when the drain ends is refused cleanly, and nothing recycles with the
//! threshold 0.
//!
//! In a test binary of its own: re-initialising the module would disturb the tokens of the
//! other tests of a process. The tests of this binary run one at a time (`ONE`), each with
//! its own `Token` on the one init-dev token (SoftHSM reads its configuration once per
//! process).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use lurk_cs::config::Config;
use lurk_cs::cs::Cs;
use lurk_cs::keyring::KeyRing;
use lurk_cs::ops;
use lurk_cs::store::SqliteStore;
use lurk_cs::token::Token;
use lurk_e2e::sequence_c::{ed25519_leaf, ed25519_public_key, Handshake, ENGINE_RANDOM};
use lurk_proto::freshness::{client_random, FreshnessMode};
use lurk_proto::key_schedule::KeyScheduleEarly;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{
    encode_certificate, encode_handshake, CipherSuite, ClientHelloBuilder, HandshakeType, HashAlg,
    NamedGroup, SignatureScheme, HELLO_RETRY_REQUEST_RANDOM,
};
use ring::agreement;
use ring::rand::SystemRandom;

const ENGINE: &str = "engine-recycle";

/// One test at a time in this process (a recycle finalises the module under every token).
fn one() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The init-dev setup of this process: its directory and configuration.
fn dev() -> &'static (PathBuf, Config) {
    static DEV: OnceLock<(PathBuf, Config)> = OnceLock::new();
    DEV.get_or_init(|| {
        // Kept for the process (a static): the token must outlive every test of it. The
        // next run removes those older than an hour (a concurrent run keeps its own).
        for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if old
                && e.file_name()
                    .to_string_lossy()
                    .starts_with("lurk-recycle-test-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("lurk-recycle-test-")
            .tempdir()
            .unwrap()
            .keep();
        let dev = dir.join("dev");
        lurk_cs::init_dev::init_dev(&dev).expect("init-dev");
        let cfg = Config::load(&dev.join("lurk-cs.toml")).unwrap();
        (dev, cfg)
    })
}

/// A `Cs` on the init-dev token, its `[token]` recycle settings changed by `edit`.
fn cs(edit: impl FnOnce(&mut Config)) -> Cs {
    let mut cfg = dev().1.clone();
    // Each test its own store file, in the setup's directory.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    cfg.store.path = dev().0.join(format!("tickets-{n}.sqlite"));
    edit(&mut cfg);
    let token = Token::open(&cfg.token).unwrap();
    assert!(
        token.keeps_destroyed_objects(),
        "this machine's SoftHSM is expected to be 2.6 (keeps destroyed objects)"
    );
    let keys = KeyRing::load(&token, &cfg.keys).unwrap();
    let store = SqliteStore::open(&cfg.store.path, Arc::new(token.clone()), &cfg.store).unwrap();
    Cs::new(&cfg, Some(token), keys, Arc::new(store))
}

fn token(cs: &Cs) -> &Token {
    cs.token.as_ref().unwrap()
}

/// The session id, the completed ClientHello and the CS's x25519 share.
type Hello = (Vec<u8>, Vec<u8>, Vec<u8>);

/// c_init_client_hello with empty shares for `groups` (the CS makes them in the token).
fn hello(cs: &Cs, groups: &[NamedGroup]) -> Result<Hello, LurkStatus> {
    let mut b = ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(groups)
        .signature_algorithms(&[SignatureScheme::Ed25519]);
    for g in groups {
        b = b.key_share(*g, &[]);
    }
    let r = ops::c_init_client_hello::handle(
        cs,
        ENGINE,
        pb::CInitClientHelloRequest {
            client_hello: b.build().unwrap(),
            freshness: pb::Freshness::Sha256 as i32,
            psks: vec![],
            secret_request: None,
        },
    )
    .map_err(|e| e.lurk_status())?;
    let share = r
        .key_shares
        .iter()
        .find(|k| k.group == u32::from(groups[0].get()))
        .expect("a share of the first group")
        .key_exchange
        .clone();
    Ok((r.session_id, r.client_hello, share))
}

/// c_server_hello selecting x25519: Ok only with the server handshake traffic secret the
/// server side computes from its own key (RFC 8446 §7.1), never a wrong one.
fn server_hello(cs: &Cs, session: &[u8], ch: &[u8], share: &[u8]) -> Result<(), LurkStatus> {
    server_hello_in(NamedGroup::X25519, cs, session, ch, share)
}

/// [`server_hello`] selecting `group` (x25519 or P-256).
fn server_hello_in(
    group: NamedGroup,
    cs: &Cs,
    session: &[u8],
    ch: &[u8],
    share: &[u8],
) -> Result<(), LurkStatus> {
    let alg = match group {
        NamedGroup::Secp256r1 => &agreement::ECDH_P256,
        _ => &agreement::X25519,
    };
    let rng = SystemRandom::new();
    let key = agreement::EphemeralPrivateKey::generate(alg, &rng).unwrap();
    let public = key.compute_public_key().unwrap();
    let sh = lurk_e2e::server_hello(
        CipherSuite::TlsAes128GcmSha256,
        group,
        public.as_ref(),
        &[1u8; 32],
    );
    let r = ops::c_server_hello::handle(
        cs,
        ENGINE,
        pb::CServerHelloRequest {
            session_id: session.to_vec(),
            server_hello: sh.clone(),
            ephemeral: None,
            secret_request: None,
        },
    )
    .map_err(|e| e.lurk_status())?;
    let ecdhe =
        agreement::agree_ephemeral(key, &agreement::UnparsedPublicKey::new(alg, share), |s| {
            s.to_vec()
        })
        .unwrap();
    let hash = ring::digest::digest(&ring::digest::SHA256, &[ch, &sh[..]].concat());
    let expected = KeyScheduleEarly::new(HashAlg::Sha256, None)
        .into_handshake(Some(&ecdhe))
        .server_handshake_traffic_secret(hash.as_ref());
    let got = r
        .secrets
        .iter()
        .find(|s| s.secret_type == pb::SecretType::ServerHandshakeTraffic as i32)
        .expect("server_handshake_traffic_secret");
    assert_eq!(got.value, expected.as_bytes(), "a wrong handshake secret");
    Ok(())
}

/// One exchange set: c_init_client_hello then c_server_hello.
fn exchange(cs: &Cs, groups: &[NamedGroup]) -> Result<(), LurkStatus> {
    let (session, ch, share) = hello(cs, groups)?;
    server_hello_in(groups[0], cs, &session, &ch, &share)
}

/// c_init_client_finished with the ed25519 key: the signature verifies.
fn sign(cs: &Cs) {
    let hs = Handshake::new();
    let leaf = ed25519_leaf(&dev().0);
    let cert = encode_certificate(&[], std::slice::from_ref(&leaf)).unwrap();
    let r = ops::c_init_client_finished::handle(
        cs,
        ENGINE,
        pb::CInitClientFinishedRequest {
            handshake_messages: hs.messages(),
            freshness: pb::Freshness::Sha256 as i32,
            key_id: "ed25519".into(),
            client_certificate: cert.clone(),
            last_exchange: true,
        },
    )
    .unwrap();
    let cv = lurk_proto::wire::CertificateVerify::parse(&r.certificate_verify).unwrap();
    let fresh = client_random(pb::Freshness::Sha256, FreshnessMode::Draft, &ENGINE_RANDOM);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, ed25519_public_key(&leaf))
        .verify(&hs.signed_content(&fresh, &cert), cv.signature)
        .expect("the signature verifies");
}

#[test]
fn concurrent_handshakes_across_recycles_all_succeed() {
    let _one = one();
    let cs = cs(|c| {
        c.token.recycle_after_objects = Some(10);
        c.token.recycle_drain_ms = 3000;
    });
    let t = token(&cs);
    t.ensure_sealing_key().unwrap();
    let sealed = t.seal(b"aad", b"a stored psk").unwrap();
    sign(&cs);
    let before = t.recycle_stats();
    assert_eq!(before.after_objects, 10);
    std::thread::scope(|s| {
        for n in 0..4 {
            let cs = &cs;
            s.spawn(move || {
                // One thread asks for two shares per ClientHello: both are made under one
                // admission, so a recycle never waits for the first while the second waits.
                let groups: &[NamedGroup] = if n == 0 {
                    &[NamedGroup::X25519, NamedGroup::Secp256r1]
                } else {
                    &[NamedGroup::X25519]
                };
                for i in 0..12 {
                    exchange(cs, groups).unwrap_or_else(|e| panic!("thread {n}, set {i}: {e:?}"));
                }
            });
        }
    });
    let after = t.recycle_stats();
    assert!(
        after.generation >= before.generation + 2,
        "{before:?} → {after:?}"
    );
    assert_eq!(
        after.recycles - before.recycles,
        after.generation - before.generation
    );
    assert_eq!(after.given_up, 0, "{after:?}");
    assert_eq!(after.in_use, 0, "{after:?}");
    // Keys and sealed data of the token survive: signing and unsealing still work.
    sign(&cs);
    assert_eq!(&t.unseal(b"aad", &sealed).unwrap()[..], b"a stored psk");
    exchange(&cs, &[NamedGroup::X25519]).unwrap();
}

/// With key pairs made ahead of use (`[ephemeral] token_pool`): the ready ones are not waited
/// for, and none made under an earlier module generation is handed out.
#[test]
fn with_a_token_key_pair_pool_handshakes_go_on_across_recycles() {
    let _one = one();
    let cs = cs(|c| {
        c.token.recycle_after_objects = Some(20);
        c.token.recycle_drain_ms = 3000;
        c.ephemeral.token_pool = 4;
    });
    let t = token(&cs);
    let before = t.recycle_stats();
    std::thread::scope(|s| {
        for n in 0..3 {
            let cs = &cs;
            s.spawn(move || {
                for i in 0..12 {
                    exchange(cs, &[NamedGroup::X25519])
                        .unwrap_or_else(|e| panic!("thread {n}, set {i}: {e:?}"));
                }
            });
        }
    });
    let after = t.recycle_stats();
    assert!(after.recycles >= before.recycles + 2, "{after:?}");
    assert_eq!(after.given_up, 0, "{after:?}");
    sign(&cs);
}

#[test]
fn a_key_pair_alive_when_the_drain_ends_is_given_up_and_its_handshake_refused() {
    let _one = one();
    let cs = cs(|c| {
        c.token.recycle_after_objects = Some(10);
        c.token.recycle_drain_ms = 300;
    });
    let t = token(&cs);
    let (session, ch, share) = hello(&cs, &[NamedGroup::X25519]).unwrap();
    let generation = t.recycle_stats().generation;
    // Other handshakes go on until one finds the recycle due: it waits for the key pair
    // above (never consumed) until the drain ends, then recycles without it.
    let start = Instant::now();
    while t.recycle_stats().generation == generation {
        exchange(&cs, &[NamedGroup::X25519]).unwrap();
        assert!(start.elapsed() < Duration::from_secs(30), "no recycle");
    }
    let stats = t.recycle_stats();
    assert_eq!((stats.recycles, stats.given_up), (1, 1), "{stats:?}");
    assert!(start.elapsed() >= Duration::from_millis(300));
    // The given-up handshake is refused with token_unavailable, again on a retry; it never
    // derives from a handle of the old module.
    for _ in 0..2 {
        assert_eq!(
            server_hello(&cs, &session, &ch, &share),
            Err(LurkStatus::TokenUnavailable)
        );
    }
    // The others are served.
    exchange(&cs, &[NamedGroup::X25519]).unwrap();
    sign(&cs);
}

/// A HelloRetryRequest for P-256 (RFC 8446 §4.1.4) echoing the legacy_session_id `[1; 32]`.
fn hrr_p256() -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&HELLO_RETRY_REQUEST_RANDOM);
    body.push(32);
    body.extend_from_slice(&[1u8; 32]);
    body.extend_from_slice(&CipherSuite::TlsAes128GcmSha256.get().to_be_bytes());
    body.push(0);
    let mut exts = vec![0, 0x2b, 0, 2, 3, 4, 0, 0x33, 0, 2];
    exts.extend_from_slice(&NamedGroup::Secp256r1.get().to_be_bytes());
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    encode_handshake(HandshakeType::ServerHello, &body).unwrap()
}

/// A HelloRetryRequest arriving when a recycle is due: its generation runs the recycle,
/// which does not wait for the first ClientHello's key pair (of no use after the retry), so
/// nothing is given up, and the handshake completes on the new module.
#[test]
fn a_hello_retry_request_does_not_wait_for_its_first_key_pair() {
    let _one = one();
    let cs = cs(|c| {
        c.token.recycle_after_objects = Some(10);
        c.token.recycle_drain_ms = 2000;
    });
    let t = token(&cs);
    let first = ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
        .signature_algorithms(&[SignatureScheme::Ed25519])
        .key_share(NamedGroup::X25519, &[]);
    let session = ops::c_init_client_hello::handle(
        &cs,
        ENGINE,
        pb::CInitClientHelloRequest {
            client_hello: first.build().unwrap(),
            freshness: pb::Freshness::Sha256 as i32,
            psks: vec![],
            secret_request: None,
        },
    )
    .unwrap()
    .session_id;
    // Other handshakes until the recycle is due; the next key generation runs it.
    while t.recycle_stats().objects < 10 {
        exchange(&cs, &[NamedGroup::X25519]).unwrap();
    }
    assert_eq!(t.recycle_stats().recycles, 0);
    let second = first
        .retry(None, Some((NamedGroup::Secp256r1, &[])), vec![])
        .build()
        .unwrap();
    let r = ops::c_client_hello::handle(
        &cs,
        ENGINE,
        pb::CClientHelloRequest {
            session_id: session.clone(),
            hello_retry_request: hrr_p256(),
            client_hello: second,
        },
    )
    .unwrap();
    let stats = t.recycle_stats();
    assert_eq!((stats.recycles, stats.given_up), (1, 0), "{stats:?}");
    assert_eq!(r.key_shares.len(), 1);
    // As the service runs it: on the blocking pool, without the async admission, which
    // would wait out the recycle's drain for the first key pair.
    assert_eq!(
        ops::c_client_hello::place(&cs, &pb::CClientHelloRequest::default()),
        ops::Where::Blocking
    );
    // The handshake goes on with the P-256 key pair of the new module.
    let rng = SystemRandom::new();
    let key = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
    let sh = lurk_e2e::server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::Secp256r1,
        key.compute_public_key().unwrap().as_ref(),
        &[1u8; 32],
    );
    ops::c_server_hello::handle(
        &cs,
        ENGINE,
        pb::CServerHelloRequest {
            session_id: session,
            server_hello: sh,
            ephemeral: None,
            secret_request: None,
        },
    )
    .unwrap();
    assert_eq!(t.recycle_stats().in_use, 0);
}

#[test]
fn with_the_threshold_zero_the_module_is_never_recycled() {
    let _one = one();
    let cs = cs(|c| c.token.recycle_after_objects = Some(0));
    let t = token(&cs);
    let before = t.recycle_stats();
    assert_eq!(before.after_objects, 0);
    for _ in 0..10 {
        exchange(&cs, &[NamedGroup::X25519]).unwrap();
    }
    let after = t.recycle_stats();
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.recycles, before.recycles);
    // Three session objects per handshake: key pair and derived secret.
    assert_eq!(after.objects - before.objects, 30, "{after:?}");
}

/// With token key pairs, closing a session may destroy token objects (a session closed in
/// its hello stage): it runs on the blocking pool, like every exchange that calls the token.
/// A session that expires is dropped by the purge, off the async workers, not by a lookup.
#[test]
fn closing_a_session_with_token_key_pairs_is_not_placed_on_the_async_workers() {
    let _one = one();
    let cs = cs(|_| {});
    let close = pb::CRegisterTicketsRequest {
        last_exchange: true,
        ..Default::default()
    };
    assert_eq!(
        ops::c_register_tickets::place(&cs, &close),
        ops::Where::Blocking
    );
    let touch = pb::CRegisterTicketsRequest::default();
    assert_eq!(
        ops::c_register_tickets::place(&cs, &touch),
        ops::Where::Inline
    );
    // And the close works in the hello stage.
    let (session, _, _) = hello(&cs, &[NamedGroup::X25519]).unwrap();
    let r = ops::c_register_tickets::handle(
        &cs,
        ENGINE,
        pb::CRegisterTicketsRequest {
            session_id: session,
            last_exchange: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.registered, 0);
    assert_eq!(cs.sessions.len(), 0);
}

/// This process's resident set in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A figure, not a check: `LURK_RECYCLE_RSS=N,THRESHOLD[,p256] cargo test -p lurk-cs --test
/// token_recycle -- --ignored --nocapture rss` runs N exchange sets with token ephemerals
/// (threshold 0: no recycle) and prints the growth of this process's RSS.
#[test]
#[ignore]
fn rss() {
    let _one = one();
    let spec = std::env::var("LURK_RECYCLE_RSS").unwrap_or_else(|_| "20000,0".into());
    let mut spec = spec.split(',');
    let (n, threshold): (u64, u64) = (
        spec.next().unwrap().parse().unwrap(),
        spec.next().unwrap().parse().unwrap(),
    );
    // A third field, `p256`, makes the key pairs on P-256 instead of X25519.
    let group = match spec.next() {
        Some("p256") => NamedGroup::Secp256r1,
        _ => NamedGroup::X25519,
    };
    let cs = cs(|c| {
        c.token.recycle_after_objects = Some(threshold);
        // The LURK sessions these exchange sets leave open go soon: the figure is the token's.
        c.sessions.ttl_secs = 1;
    });
    for _ in 0..200 {
        exchange(&cs, &[group]).unwrap();
    }
    let start = (rss_kib(), Instant::now());
    for i in 1..=n {
        exchange(&cs, &[group]).unwrap();
        if i % 100 == 0 {
            // What the server's periodic purge does.
            cs.sessions.purge_expired();
        }
        if i % (n / 4).max(1) == 0 {
            println!(
                "{group:?}, recycle_after_objects={threshold}: {i} exchange sets, {:.1} s, RSS +{} KiB, {:?}",
                start.1.elapsed().as_secs_f64(),
                rss_kib().saturating_sub(start.0),
                token(&cs).recycle_stats()
            );
        }
    }
    println!(
        "{group:?}, recycle_after_objects={threshold}: {n} exchange sets in {:.1} s, RSS {} → {} KiB",
        start.1.elapsed().as_secs_f64(),
        start.0,
        rss_kib()
    );
}
