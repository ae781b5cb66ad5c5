//! The Crypto Service measured without the network: `lurk_cs::ops::*::handle` driven
//! in-process on a `lurk_cs::cs::Cs` built from an `init-dev` set-up (a real SoftHSM
//! token, a real SQLite store), with a small server simulator that answers each completed
//! ClientHello with valid ServerHello / EncryptedExtensions / Certificate / CertificateVerify
//! / Finished bytes (the CS checks the server Finished, not the certificate or signature).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lurk_cs::config::{Config, EphemeralBackendKind};
use lurk_cs::cs::Cs;
use lurk_cs::keyring::KeyRing;
use lurk_cs::store::{SqliteStore, TicketStore};
use lurk_cs::token::Token;
use lurk_proto::key_schedule::{finished_verify_data, KeyScheduleEarly};
use lurk_proto::pb;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    encode_certificate, encode_certificate_verify, encode_finished, encode_handshake, CipherSuite,
    ClientHello, ClientHelloBuilder, HandshakeType, HashAlg, NamedGroup, SignatureScheme,
};
use ring::agreement;
use ring::rand::{SecureRandom, SystemRandom};

use crate::sys::{self, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) const ENGINE: &str = "engine-bench";

/// One init-dev set-up, its token opened once (C_Initialize is once per process).
pub(crate) struct Fixture {
    pub(crate) dev: PathBuf,
    pub(crate) cfg: Config,
    pub(crate) token: Token,
    store: Arc<dyn TicketStore>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Result<Self, BoxError> {
        let dir = tempfile::Builder::new().prefix("lurk-bench-").tempdir()?;
        let dev = dir.path().join("dev");
        lurk_cs::init_dev::init_dev(&dev)?;
        let cfg = Config::load(&dev.join("lurk-cs.toml"))?;
        let token = Token::open(&cfg.token)?;
        let store = SqliteStore::open(&cfg.store.path, Arc::new(token.clone()), &cfg.store)?;
        Ok(Self {
            dev,
            cfg,
            token,
            store: Arc::new(store),
            _dir: dir,
        })
    }

    /// A CS with this ephemeral backend and at most `max_sessions` sessions.
    pub(crate) fn cs(
        &self,
        backend: EphemeralBackendKind,
        max_sessions: usize,
    ) -> Result<Cs, BoxError> {
        let mut cfg = self.cfg.clone();
        cfg.ephemeral.backend = backend;
        cfg.sessions.max = max_sessions;
        cfg.sessions.max_per_engine = max_sessions;
        // The bench counts sessions; bytes are not what it measures.
        cfg.sessions.max_bytes = usize::MAX;
        cfg.sessions.max_bytes_per_engine = usize::MAX;
        let keys = KeyRing::load(&self.token, &cfg.keys)?;
        Ok(Cs::new(
            &cfg,
            Some(self.token.clone()),
            keys,
            self.store.clone(),
        ))
    }
}

/// The ClientHello an engine sends with cs_generated ephemerals (one empty x25519 share).
pub(crate) fn engine_client_hello(group: NamedGroup) -> Vec<u8> {
    ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(&[group])
        .signature_algorithms(&[
            SignatureScheme::EcdsaSecp256r1Sha256,
            SignatureScheme::Ed25519,
            SignatureScheme::RsaPssRsaeSha256,
        ])
        .key_share(group, &[])
        .build()
        .expect("a valid ClientHello")
}

/// A TLS 1.3 server reduced to what the CS checks.
pub(crate) struct ServerSim {
    cert: Vec<u8>,
    rng: SystemRandom,
}

impl ServerSim {
    pub(crate) fn new() -> Result<Self, BoxError> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        Ok(Self {
            cert: ck.cert.der().to_vec(),
            rng: SystemRandom::new(),
        })
    }

    /// ServerHello and the server's encrypted flight (EE, Certificate, CertificateVerify,
    /// Finished) answering the completed ClientHello `ch` whose x25519 share is `client_share`.
    pub(crate) fn respond(
        &self,
        ch: &[u8],
        client_share: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), BoxError> {
        let sid = ClientHello::parse(ch)?.legacy_session_id.to_vec();
        let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &self.rng)
            .map_err(|_| "x25519 keygen")?;
        let public = private.compute_public_key().map_err(|_| "x25519 public")?;
        let shared = agreement::agree_ephemeral(
            private,
            &agreement::UnparsedPublicKey::new(&agreement::X25519, client_share),
            |s| s.to_vec(),
        )
        .map_err(|_| "x25519 agreement")?;
        let mut random = [0u8; 32];
        self.rng.fill(&mut random).map_err(|_| "rng")?;
        let sh = server_hello(&random, &sid, public.as_ref());
        let mut t = Transcript::new();
        t.add(ch);
        t.add(&sh);
        let hs = KeyScheduleEarly::new(HashAlg::Sha256, None).into_handshake(Some(&shared));
        let shts = hs.server_handshake_traffic_secret(&t.hash(HashAlg::Sha256));
        let ee = encode_handshake(HandshakeType::EncryptedExtensions, &[0, 0])?;
        let cert = encode_certificate::<&[u8]>(&[], &[&self.cert])?;
        let cv = encode_certificate_verify(SignatureScheme::EcdsaSecp256r1Sha256, &[0x30; 71])?;
        let mut flight = [ee, cert, cv].concat();
        t.add(&flight);
        let fin = encode_finished(&finished_verify_data(
            HashAlg::Sha256,
            shts.as_bytes(),
            &t.hash(HashAlg::Sha256),
        ))?;
        flight.extend_from_slice(&fin);
        Ok((sh, flight))
    }
}

/// A ServerHello selecting TLS_AES_128_GCM_SHA256 and x25519.
fn server_hello(random: &[u8; 32], session_id: &[u8], key_exchange: &[u8]) -> Vec<u8> {
    lurk_proto::wire::encode_server_hello(
        random,
        session_id,
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        key_exchange,
    )
    .expect("a ServerHello fits")
}

fn init_request(template: &[u8], rng: &SystemRandom) -> pb::CInitClientHelloRequest {
    let mut ch = template.to_vec();
    let at = lurk_proto::wire::hello::RANDOM_OFFSET;
    let _ = rng.fill(&mut ch[at..at + 32]);
    pb::CInitClientHelloRequest {
        client_hello: ch,
        freshness: pb::Freshness::Sha256 as i32,
        psks: vec![],
        secret_request: None,
    }
}

/// Time spent inside each exchange of one full handshake.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SetTimes {
    pub(crate) init: Duration,
    pub(crate) server_hello: Duration,
    pub(crate) finished: Duration,
}

/// One full handshake through the three exchanges (sequence A): c_init_client_hello,
/// c_server_hello, c_client_finished with last_exchange. Only the time inside `handle` counts.
pub(crate) fn one_set(
    cs: &Cs,
    engine: &str,
    sim: &ServerSim,
    template: &[u8],
    rng: &SystemRandom,
) -> Result<SetTimes, BoxError> {
    let req = init_request(template, rng);
    let t = Instant::now();
    let r = lurk_cs::ops::c_init_client_hello::handle(cs, engine, req)?;
    let init = t.elapsed();
    let share = &r.key_shares.first().ok_or("no key share")?.key_exchange;
    let (sh, flight) = sim.respond(&r.client_hello, share)?;
    let req = pb::CServerHelloRequest {
        session_id: r.session_id.clone(),
        server_hello: sh,
        ephemeral: None,
        secret_request: Some(pb::SecretRequest {
            h_c: true,
            h_s: true,
            ..Default::default()
        }),
    };
    let t = Instant::now();
    lurk_cs::ops::c_server_hello::handle(cs, engine, req)?;
    let server_hello = t.elapsed();
    let req = pb::CClientFinishedRequest {
        session_id: r.session_id,
        handshake_messages: flight,
        secret_request: Some(pb::SecretRequest {
            a_c: true,
            a_s: true,
            ..Default::default()
        }),
        last_exchange: true,
        ..Default::default()
    };
    let t = Instant::now();
    let fin = lurk_cs::ops::c_client_finished::handle(cs, engine, req)?;
    let finished = t.elapsed();
    if fin.client_finished.is_empty() {
        return Err("no client Finished".into());
    }
    Ok(SetTimes {
        init,
        server_hello,
        finished,
    })
}

/// In-process exchange figures for one backend.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExchangeFigures {
    pub(crate) backend: &'static str,
    pub(crate) sets: usize,
    pub(crate) init: Lat,
    pub(crate) server_hello: Lat,
    pub(crate) finished: Lat,
    pub(crate) set: Lat,
    /// Sets per second of time inside the CS on one thread (= per core).
    pub(crate) sets_per_core_s: f64,
    /// Sets per second with two threads, wall clock (simulator included).
    pub(crate) sets_two_threads_wall_s: f64,
}

/// Runs `n` exchange sets on one thread (at most `budget`), then `n` on two threads.
pub(crate) fn exchange_sets(
    cs: &Cs,
    backend: &'static str,
    n: usize,
    budget: Duration,
) -> Result<ExchangeFigures, BoxError> {
    let sim = ServerSim::new()?;
    let rng = SystemRandom::new();
    let template = engine_client_hello(NamedGroup::X25519);
    // Warm-up (token routes, allocator, caches).
    for _ in 0..n.min(50) {
        one_set(cs, ENGINE, &sim, &template, &rng)?;
    }
    let (mut a, mut b, mut c, mut s) = (vec![], vec![], vec![], vec![]);
    let start = Instant::now();
    for _ in 0..n {
        let t = one_set(cs, ENGINE, &sim, &template, &rng)?;
        a.push(t.init);
        b.push(t.server_hello);
        c.push(t.finished);
        s.push(t.init + t.server_hello + t.finished);
        if start.elapsed() > budget {
            break;
        }
    }
    let inside: Duration = s.iter().sum();
    let sets = s.len();
    // Two threads, wall clock.
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let sim = ServerSim::new().expect("simulator");
                let rng = SystemRandom::new();
                while done.fetch_add(1, Ordering::Relaxed) < sets && start.elapsed() < budget {
                    if let Err(e) = one_set(cs, ENGINE, &sim, &template, &rng) {
                        eprintln!("exchange set failed: {e}");
                        break;
                    }
                }
            });
        }
    });
    let two = done.load(Ordering::Relaxed).min(sets) as f64 / start.elapsed().as_secs_f64();
    Ok(ExchangeFigures {
        backend,
        sets,
        init: Lat::of(a),
        server_hello: Lat::of(b),
        finished: Lat::of(c),
        set: Lat::of(s),
        sets_per_core_s: sets as f64 / inside.as_secs_f64().max(1e-9),
        sets_two_threads_wall_s: two,
    })
}

/// The token's own speed for what a handshake asks of it: generate, derive, destroy.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawToken {
    pub(crate) group: &'static str,
    pub(crate) n: usize,
    pub(crate) keygen: Lat,
    pub(crate) derive_destroy: Lat,
    pub(crate) per_s: f64,
    /// This process's RSS growth over the timed loops, bytes per loop: each loop creates
    /// three session objects and destroys them.
    pub(crate) rss_per_loop: f64,
}

pub(crate) fn raw_token(
    token: &Token,
    group: NamedGroup,
    n: usize,
    budget: Duration,
) -> Result<RawToken, BoxError> {
    let rng = SystemRandom::new();
    let alg = match group {
        NamedGroup::X25519 => &agreement::X25519,
        NamedGroup::Secp256r1 => &agreement::ECDH_P256,
        _ => return Err("raw token loop: x25519 or secp256r1".into()),
    };
    let peer = agreement::EphemeralPrivateKey::generate(alg, &rng)
        .and_then(|k| k.compute_public_key())
        .map_err(|_| "peer key")?;
    let peer = peer.as_ref().to_vec();
    for _ in 0..n.min(20) {
        let e = token.generate_ephemeral(group)?;
        token.derive_ephemeral(e, &peer)?;
    }
    let (mut g, mut d) = (vec![], vec![]);
    let rss_before = sys::rss_kib(None);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let e = token.generate_ephemeral(group)?;
        g.push(t.elapsed());
        let t = Instant::now();
        token.derive_ephemeral(e, &peer)?;
        d.push(t.elapsed());
        if start.elapsed() > budget {
            break;
        }
    }
    let total: Duration = g.iter().chain(d.iter()).sum();
    let count = g.len();
    let rss_growth = sys::rss_kib(None).saturating_sub(rss_before) as f64 * 1024.0;
    Ok(RawToken {
        rss_per_loop: rss_growth / count.max(1) as f64,
        group: group.name(),
        n: count,
        keygen: Lat::of(g),
        derive_destroy: Lat::of(d),
        per_s: count as f64 / total.as_secs_f64().max(1e-9),
    })
}

/// RSS of this process (KiB) as a run goes: (operations so far, RSS, sessions held).
pub(crate) type Samples = Vec<(usize, u64, usize, f64)>;

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// `n` full handshakes on two threads (memory ephemerals), sampling RSS every `every`.
pub(crate) fn memory_over_handshakes(
    cs: &Cs,
    n: usize,
    every: usize,
    budget: Duration,
) -> Result<(Samples, Duration), BoxError> {
    let template = engine_client_hello(NamedGroup::X25519);
    let start = Instant::now();
    let mut samples = vec![(0, sys::rss_kib(None), cs.sessions.len(), 0.0)];
    let mut done = 0;
    while done < n && start.elapsed() < budget {
        let chunk = every.min(n - done);
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let sim = ServerSim::new().expect("simulator");
                    let rng = SystemRandom::new();
                    while next.fetch_add(1, Ordering::Relaxed) < chunk {
                        if let Err(e) = one_set(cs, ENGINE, &sim, &template, &rng) {
                            eprintln!("handshake failed: {e}");
                            break;
                        }
                    }
                });
            }
        });
        done += chunk;
        samples.push((done, sys::rss_kib(None), cs.sessions.len(), secs(start)));
    }
    Ok((samples, start.elapsed()))
}

/// Abandoned sessions: `n` c_init_client_hello never followed up, from `engines` engine
/// identities on two threads; RSS sampled every `every`. Returns the samples, how many were
/// refused (too_many_sessions) and the time taken.
pub(crate) fn abandoned_sessions(
    cs: &Cs,
    n: usize,
    every: usize,
    engines: usize,
    budget: Duration,
) -> Result<(Samples, usize, Duration), BoxError> {
    let template = engine_client_hello(NamedGroup::X25519);
    let names: Vec<String> = (0..engines).map(|i| format!("{ENGINE}-{i}")).collect();
    let start = Instant::now();
    let mut samples = vec![(0, sys::rss_kib(None), cs.sessions.len(), 0.0)];
    let refused = AtomicUsize::new(0);
    let mut done = 0;
    while done < n && start.elapsed() < budget {
        let chunk = every.min(n - done);
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    let rng = SystemRandom::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= chunk || start.elapsed() > budget {
                            break;
                        }
                        let engine = &names[(done + i) % names.len()];
                        let req = init_request(&template, &rng);
                        if lurk_cs::ops::c_init_client_hello::handle(cs, engine, req).is_err() {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        done += next.load(Ordering::Relaxed).min(chunk);
        samples.push((done, sys::rss_kib(None), cs.sessions.len(), secs(start)));
    }
    Ok((samples, refused.load(Ordering::Relaxed), start.elapsed()))
}
