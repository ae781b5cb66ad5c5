//! One engine, several `lurk-cs` replicas (real processes on one SoftHSM token set-up, real
//! `openssl s_server`): the engine's [`CsPool`] spreads new sessions, keeps each session on its
//! replica, steps around a dead replica, never retries a LURK refusal, and follows a DNS name.
//!
//! What each CS received is counted on the CS side: every replica logs the HTTP/2 frames it
//! reads (`RUST_LOG=h2::codec::framed_read=debug`); one request HEADERS frame is one RPC. The
//! replicas share the token and the SQLite store (full handshakes only: no resumption).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lurk_e2e::openssl::{certs, SServer};
use lurk_e2e::replica_load::{kill_under_load, plain_log, start_replica, status_at};
use lurk_e2e::{CsProcess, DevSetup};
use lurk_engine::config::{ClientConfig, ClientConfigBuilder};
use lurk_engine::cs_pool::{CsPool, CsPoolOptions, ReplicaStatus, Resolver};
use lurk_engine::verify::TrustAnchors;
use lurk_engine::{Connector, ExternalPsk};
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the replicas log: their refusals (info) and the HTTP/2 frames they read.
const LOG: &str = "info,h2::codec::framed_read=debug";

fn env() -> [(&'static str, &'static str); 1] {
    [("RUST_LOG", LOG)]
}

fn start_on(setup: &DevSetup, listen: &str) -> CsProcess {
    start_replica(setup, listen, &env())
}

fn start_replicas(setup: &DevSetup, n: usize) -> Vec<CsProcess> {
    (0..n).map(|_| start_on(setup, "127.0.0.1:0")).collect()
}

/// RPCs a replica received so far (request HEADERS frames).
fn rpcs(cs: &CsProcess) -> usize {
    plain_log(cs)
        .lines()
        .filter(|l| l.contains("h2::codec::framed_read: received frame=Headers"))
        .count()
}

/// LURK refusals a replica logged.
fn refusals(cs: &CsProcess) -> usize {
    plain_log(cs).matches("exchange refused").count()
}

fn opts() -> CsPoolOptions {
    CsPoolOptions {
        // No periodic health checks during a test: every RPC a replica receives is a LURK
        // exchange (a probe of a set-aside replica finds it dead and does not reach it).
        health_interval: Duration::from_secs(3600),
        ..CsPoolOptions::default()
    }
}

fn pool(replicas: &[&CsProcess], urls: &[String], opts: CsPoolOptions) -> CsPool {
    let ep = replicas[0].endpoint("engine");
    CsPool::new(&ep, urls, opts).expect("pool")
}

/// The standard exchanges only (no Capabilities call, no c_server_flight): the RPC counts
/// below are three per handshake.
fn config_builder() -> ClientConfigBuilder {
    ClientConfig::builder()
        .trust_anchors(TrustAnchors::from_pem_file(&certs().ca_all()).unwrap())
        .resume(false)
        .cs_server_flight(false)
}

fn config() -> Arc<ClientConfig> {
    Arc::new(config_builder().build().unwrap())
}

/// `openssl s_server` for full handshakes, no tickets.
fn tls_server() -> SServer {
    let mut a: Vec<String> = vec!["-num_tickets".into(), "0".into()];
    a.extend(certs().cert_args("server-ecdsa-p256"));
    SServer::start(&a)
}

/// A rustls server on a free loopback port (`server-ecdsa-p256`, no tickets), one task per
/// connection: the handshake, then reads until the client closes. It runs until the
/// runtime stops.
async fn concurrent_tls_server() -> u16 {
    let c = certs();
    let chain: Vec<_> =
        rustls_pemfile::certs(&mut &std::fs::read(c.pem("server-ecdsa-p256")).unwrap()[..])
            .collect::<Result<_, _>>()
            .unwrap();
    let key =
        rustls_pemfile::private_key(&mut &std::fs::read(c.key("server-ecdsa-p256")).unwrap()[..])
            .unwrap()
            .unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    cfg.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut sink).await;
                }
            });
        }
    });
    port
}

/// One full handshake with the server, then close_notify.
async fn handshake(c: &Connector, port: u16) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("TCP: {e}"))?;
    let mut s = c
        .connect(
            tcp,
            &lurk_engine::ServerName::try_from("localhost").unwrap(),
            port,
        )
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.shutdown().await;
    Ok(())
}

fn status_of<'a>(p: &'a [ReplicaStatus], cs: &CsProcess) -> &'a ReplicaStatus {
    status_at(p, &cs.addr)
}

/// Waits until the replicas' logs show `want` RPCs in all (the logs are read by threads).
fn wait_rpcs(replicas: &[&CsProcess], want: u64) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts: Vec<usize> = replicas.iter().map(|c| rpcs(c)).collect();
        if counts.iter().sum::<usize>() as u64 >= want || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A replica whose `[limits]` has one value changed (`LURK_LIMITS__…`).
fn start_limited(setup: &DevSetup, limit: (&str, &str)) -> CsProcess {
    start_replica(setup, "127.0.0.1:0", &[("RUST_LOG", LOG), limit])
}

/// The calls that got no answer from the CS (an error without a LURK status).
fn unanswered<T>(results: &[Result<T, lurk_engine::cs_client::CsError>]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| match r {
            Err(e) if e.lurk_status().is_none() => Some(e.to_string()),
            _ => None,
        })
        .collect()
}

/// A burst of calls on a fresh connection opens more HTTP/2 streams than the CS allows
/// (`max_concurrent_streams` = 2) before the CS's SETTINGS reach the engine: the CS refuses
/// the extra streams before processing them (REFUSED_STREAM, RFC 9113 §8.7) and the engine
/// makes those calls again: every call gets the CS's own answer (here a LURK refusal of an
/// empty request), none fails for want of a stream. (Before: each refused stream was an
/// "unreachable" error, which also set the replica aside in a `CsPool`.)
#[test]
fn a_burst_beyond_the_cs_stream_limit_is_answered() {
    let setup = DevSetup::new();
    let cs = start_limited(&setup, ("LURK_LIMITS__MAX_CONCURRENT_STREAMS", "2"));
    rt().block_on(async {
        let client = cs.endpoint("engine").connect_lazy().unwrap();
        // All 64 are queued while the lazy connection is made, then sent at once.
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..64 {
            calls.spawn(lurk_engine::cs_client::perform(
                client.clone(),
                lurk_engine::cs_client::CsCall::InitClientHello(Default::default()),
            ));
        }
        let results = calls.join_all().await;
        let unanswered = unanswered(&results);
        assert!(
            unanswered.is_empty(),
            "{} unanswered: {unanswered:#?}",
            unanswered.len()
        );
        let headers = wait_rpcs(&[&cs], 64)[0];
        println!("request HEADERS read by the CS: {headers} for 64 calls");
    });
}

/// A burst of 64 calls through a pool against a CS that takes at most 4 requests in flight
/// from one engine (`max_requests_per_engine`): with the pool's `max_calls_in_flight` at 4 the
/// calls wait their turn in the engine and every one gets the CS's answer (a LURK refusal of
/// its empty request); with no bound in the engine (as before) the CS refuses some of them
/// with TOO_MANY_REQUESTS.
#[test]
fn a_burst_beyond_the_cs_request_limit_waits_in_the_engine() {
    let setup = DevSetup::new();
    let cs = start_limited(&setup, ("LURK_LIMITS__MAX_REQUESTS_PER_ENGINE", "4"));
    let burst = |max_calls_in_flight: usize| {
        rt().block_on(async {
            let pool = pool(
                &[&cs],
                &[cs.url()],
                CsPoolOptions {
                    max_calls_in_flight,
                    ..opts()
                },
            );
            // Connected before the burst: the calls overlap at the CS.
            pool.call_any(|mut c| async move { c.ping(pb::PingRequest {}).await })
                .await
                .expect("ping");
            let mut calls = tokio::task::JoinSet::new();
            for _ in 0..64 {
                let pool = pool.clone();
                calls.spawn(async move {
                    pool.call_any(|mut c| async move {
                        c.c_init_client_hello(pb::CInitClientHelloRequest::default())
                            .await
                    })
                    .await
                });
            }
            let results = calls.join_all().await;
            let too_many = results
                .iter()
                .filter(
                    |r| matches!(r, Err(e) if e.lurk_status() == Some(LurkStatus::TooManyRequests)),
                )
                .count();
            let unanswered = unanswered(&results);
            assert!(unanswered.is_empty(), "unanswered: {unanswered:#?}");
            too_many
        })
    };
    assert_eq!(
        burst(4),
        0,
        "refused as too many although the engine bounds its calls"
    );
    let unbounded = burst(1_000);
    assert!(
        unbounded > 0,
        "the CS never refused an unbounded burst: the test shows nothing"
    );
    println!("refused as too many without the engine's bound: {unbounded} of 64");
}

/// New handshakes that wait at the CS (here for a planned recycle of its token, which waits
/// in turn for the key pairs of the handshakes in flight) must not take every call permit
/// of the replica: with `max_calls_in_flight` at 4 and 32 handshakes at once, the calls of
/// handshakes in flight keep a permit, every handshake succeeds and the CS gives up no key
/// pair. (Before: the four permits went to new handshakes waiting for the drain, which
/// then gave up the key pairs of the others.)
#[test]
fn handshakes_in_flight_keep_a_call_permit_while_new_ones_wait() {
    let setup = DevSetup::new();
    let cs = start_replica(
        &setup,
        "127.0.0.1:0",
        &[
            ("RUST_LOG", "info"),
            // 30 session objects: a recycle every 10 handshakes, 2 s drain at most.
            ("LURK_TOKEN__RECYCLE_AFTER_OBJECTS", "30"),
            ("LURK_TOKEN__RECYCLE_DRAIN_MS", "2000"),
        ],
    );
    let rt = rt();
    // A server that serves its connections at once (`openssl s_server` serves one at a
    // time: it would wait for a connection whose first CS call waits for the drain).
    let port = rt.block_on(concurrent_tls_server());
    rt.block_on(async {
        let pool = pool(
            &[&cs],
            &[cs.url()],
            CsPoolOptions {
                max_calls_in_flight: 4,
                ..opts()
            },
        );
        let c = Connector::with_cs_pool(config(), pool.clone());
        let mut tasks = Vec::new();
        for w in 0..32 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..4 {
                    handshake(&c, port)
                        .await
                        .map_err(|e| format!("worker {w} handshake {i}: {e}"))?;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                let log = plain_log(&cs);
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("recycled") || l.contains("refused"))
                    .collect();
                panic!("{e}; the CS's log:\n{}", lines.join("\n"));
            }
        }
    });
    let log = plain_log(&cs);
    let recycles: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("PKCS#11 module recycled"))
        .collect();
    assert!(recycles.len() >= 2, "{log}");
    for line in recycles {
        assert!(line.contains("given_up=0"), "{line}");
    }
}

/// Three replicas, sequential then concurrent full handshakes: every replica serves a fair
/// share of the sessions, and what the pool counts is what the replicas received.
#[test]
fn load_is_spread_over_three_replicas() {
    let setup = DevSetup::new();
    let cs = start_replicas(&setup, 3);
    let refs: Vec<&CsProcess> = cs.iter().collect();
    let server = tls_server();
    let port = server.port();
    let urls: Vec<String> = cs.iter().map(CsProcess::url).collect();
    rt().block_on(async {
        let pool = pool(&refs, &urls, opts());
        let c = Connector::with_cs_pool(config(), pool.clone());
        for i in 0..9 {
            handshake(&c, port)
                .await
                .unwrap_or_else(|e| panic!("sequential handshake {i}: {e}"));
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..6 {
                    handshake(&c, port)
                        .await
                        .unwrap_or_else(|e| panic!("worker {w} handshake {i}: {e}"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        c.wait_for_cs(Duration::from_secs(5)).await;
        let st = pool.replicas();
        let answered: u64 = st.iter().map(|r| r.answered).sum();
        let counts = wait_rpcs(&refs, answered);
        println!(
            "sessions per replica (pool): {:?}",
            st.iter().map(|r| r.sessions).collect::<Vec<_>>()
        );
        println!("RPCs per replica (CS logs): {counts:?}, calls answered (pool): {answered}");
        assert_eq!(st.len(), 3);
        assert_eq!(st.iter().map(|r| r.sessions).sum::<u64>(), 33);
        assert_eq!(counts.iter().sum::<usize>() as u64, answered, "{st:#?}");
        for (r, n) in cs.iter().zip(&counts) {
            let s = status_of(&st, r);
            assert!(s.healthy && s.failures == 0, "{s:?}");
            // 33 sessions of 3+ calls each: a fair share is 11 sessions; ask for 6.
            assert!(
                s.sessions >= 6,
                "replica {} got {} sessions: {st:#?}",
                r.addr,
                s.sessions
            );
            assert!(*n >= 18, "replica {} received {n} RPCs: {counts:?}", r.addr);
        }
    });
}

/// Steady concurrent load over three replicas; one replica is SIGKILLed mid-load. Only the
/// handshakes in flight on it fail, with an error naming it; every handshake started after
/// the kill succeeds (first calls that find it dead go to another replica).
#[test]
fn sigkill_of_a_replica_costs_only_its_handshakes_in_flight() {
    let setup = DevSetup::new();
    let mut cs = start_replicas(&setup, 3);
    let victim = cs.remove(1);
    let victim_addr = victim.addr.clone();
    let server = tls_server();
    let port = server.port();
    let urls: Vec<String> = std::iter::once(&victim)
        .chain(cs.iter())
        .map(CsProcess::url)
        .collect();
    let rt = rt();
    let pool = rt.block_on(async { pool(&[&victim], &urls, opts()) });
    let c = Connector::with_cs_pool(config(), pool.clone());
    let run = kill_under_load(&rt, &c, &pool, victim, (6, 30, 40), move |c| async move {
        handshake(&c, port).await
    });
    run.check(30);
    let st = pool.replicas();
    println!("{st:#?}");
    let v = status_at(&st, &victim_addr);
    assert!(!v.healthy && v.failures >= 1, "{v:?}");
    for r in &cs {
        let s = status_of(&st, r);
        assert!(s.healthy && s.failures == 0, "{s:?}");
    }
}

/// A replica that is down when a handshake's first call reaches it: the call goes to another
/// replica and the handshake succeeds; with every replica down the error names them all.
#[test]
fn first_call_to_a_dead_replica_is_retried_on_another() {
    let setup = DevSetup::new();
    let mut cs = start_replicas(&setup, 2);
    let live = cs.pop().unwrap();
    let dead = cs.pop().unwrap();
    let dead_addr = dead.addr.clone();
    let dead_url = dead.url();
    let server = tls_server();
    rt().block_on(async {
        // The pool tries its replicas in order first: the dead one comes first.
        let pool = pool(&[&live], &[dead_url.clone(), live.url()], opts());
        dead.kill();
        let c = Connector::with_cs_pool(config(), pool.clone());
        handshake(&c, server.port()).await.expect("handshake");
        c.wait_for_cs(Duration::from_secs(5)).await;
        let st = pool.replicas();
        println!("{st:#?}");
        let d = st.iter().find(|r| r.url.contains(&dead_addr)).unwrap();
        assert!(!d.healthy && d.failures == 1 && d.sessions == 0, "{d:?}");
        let l = status_of(&st, &live);
        assert!(l.healthy && l.sessions == 1 && l.answered >= 3, "{l:?}");
        assert_eq!(wait_rpcs(&[&live], l.answered), vec![l.answered as usize]);

        let all_dead = CsPool::new(
            &live.endpoint("engine"),
            &[dead_url.clone(), format!("https://{}", free_addr())],
            opts(),
        )
        .unwrap();
        let c = Connector::with_cs_pool(config(), all_dead);
        let e = handshake(&c, server.port()).await.unwrap_err();
        println!("all replicas down: {e}");
        assert!(
            e.contains("no CS replica reachable") && e.contains(&dead_addr),
            "{e}"
        );
    });
}

/// A loopback address nothing listens on.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A LURK refusal is an answer: the handshake fails at once, no other replica is asked.
#[test]
fn lurk_refusal_is_not_retried() {
    let setup = DevSetup::new();
    let cs = start_replicas(&setup, 2);
    let refs: Vec<&CsProcess> = cs.iter().collect();
    let server = tls_server();
    rt().block_on(async {
        let urls: Vec<String> = cs.iter().map(CsProcess::url).collect();
        let pool = pool(&refs, &urls, opts());
        let cfg = config_builder()
            .external_psk(ExternalPsk {
                identity: b"no-such-psk".to_vec(),
                hash: lurk_proto::wire::HashAlg::Sha256,
            })
            .build()
            .unwrap();
        let c = Connector::with_cs_pool(Arc::new(cfg), pool.clone());
        let e = handshake(&c, server.port()).await.unwrap_err();
        println!("refused: {e}");
        let st = pool.replicas();
        assert_eq!(st.iter().map(|r| r.answered).sum::<u64>(), 1, "{st:#?}");
        assert!(st.iter().all(|r| r.healthy && r.failures == 0), "{st:#?}");
        let counts = wait_rpcs(&refs, 1);
        // The refusal's log line may reach the test after the engine got the refusal.
        let deadline = Instant::now() + Duration::from_secs(5);
        let refused = loop {
            let refused: Vec<usize> = cs.iter().map(refusals).collect();
            if refused.iter().sum::<usize>() >= 1 || Instant::now() > deadline {
                break refused;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(counts.iter().sum::<usize>(), 1, "RPCs {counts:?}");
        assert_eq!(refused.iter().sum::<usize>(), 1, "refusals {refused:?}");
    });
}

/// A DNS name stands for all its addresses and is re-resolved: three replicas listen on one
/// port of 127.0.0.1, 127.0.0.2 and 127.0.0.3 (one name, several A records, like a headless
/// Service); the name resolves first to the first two, then to the last two. The system
/// resolver has no such name (/etc/hosts is not ours to edit): the pool's resolver hook
/// answers for it. The TLS server name stays `localhost`, which the CS certificate carries.
#[test]
fn a_name_is_resolved_to_its_replicas_and_followed() {
    let setup = DevSetup::new();
    let server = tls_server();
    // A port free on the three addresses.
    let (cs, port) = (0..20)
        .find_map(|_| {
            let port = free_addr().port();
            let mut v = Vec::new();
            for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
                match setup.try_start_on(&format!("{ip}:{port}"), &env()) {
                    Ok(c) => v.push(c),
                    Err(_) => return None,
                }
            }
            Some((v, port))
        })
        .expect("three replicas on one port");
    let addrs: Vec<SocketAddr> = cs.iter().map(|c| c.addr.parse().unwrap()).collect();
    let answer = Arc::new(Mutex::new(vec![addrs[0], addrs[1]]));
    let a2 = answer.clone();
    let resolver: Resolver = Arc::new(move |q: String| {
        assert_eq!(q, format!("localhost:{port}"));
        let a = a2.lock().unwrap().clone();
        Box::pin(async move { Ok(a) })
    });
    rt().block_on(async {
        let opts = CsPoolOptions {
            resolve_interval: Duration::from_millis(100),
            resolver: Some(resolver),
            ..opts()
        };
        let refs: Vec<&CsProcess> = cs.iter().collect();
        let pool = pool(&refs, &[format!("https://localhost:{port}")], opts);
        let c = Connector::with_cs_pool(config(), pool.clone());
        for _ in 0..6 {
            handshake(&c, server.port()).await.expect("handshake");
        }
        c.wait_for_cs(Duration::from_secs(5)).await;
        let first = wait_rpcs(&refs, 18);
        println!("RPCs with {{.1, .2}}: {first:?}");
        assert!(first[0] >= 3 && first[1] >= 3 && first[2] == 0, "{first:?}");

        *answer.lock().unwrap() = vec![addrs[1], addrs[2]];
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.replicas().iter().any(|r| r.url.contains("127.0.0.1:")) {
            assert!(Instant::now() < deadline, "{:#?}", pool.replicas());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let urls: Vec<String> = pool.replicas().into_iter().map(|r| r.url).collect();
        println!("after re-resolution: {urls:?}");
        assert_eq!(urls.len(), 2);
        assert!(urls.iter().all(|u| u.ends_with("(localhost)")), "{urls:?}");
        for _ in 0..6 {
            handshake(&c, server.port()).await.expect("handshake");
        }
        c.wait_for_cs(Duration::from_secs(5)).await;
        let then = wait_rpcs(&refs, first.iter().sum::<usize>() as u64 + 18);
        println!("RPCs with {{.2, .3}}: {then:?}");
        assert_eq!(
            then[0], first[0],
            "the replica gone from the name got calls"
        );
        assert!(then[1] > first[1] && then[2] >= 3, "{then:?}");
    });
}

/// The system resolver: `https://localhost:PORT` is reached at the addresses `localhost`
/// has, with `localhost` as TLS server name (the CS certificate's name, not its address).
#[test]
fn system_resolver_and_tls_name() {
    let setup = DevSetup::new();
    let cs = start_on(&setup, "127.0.0.1:0");
    let port: u16 = cs.addr.rsplit(':').next().unwrap().parse().unwrap();
    let server = tls_server();
    rt().block_on(async {
        let mut ep = cs.endpoint("engine");
        ep.domain = None;
        let pool = CsPool::new(&ep, &[format!("https://localhost:{port}")], opts()).unwrap();
        let c = Connector::with_cs_pool(config(), pool.clone());
        handshake(&c, server.port()).await.expect("handshake");
        let st = pool.replicas();
        println!("{st:#?}");
        assert!(
            st.iter().any(
                |r| r.url == format!("https://127.0.0.1:{port} (localhost)") && r.sessions == 1
            ),
            "{st:#?}"
        );
    });
}

/// A replica set aside is probed with backoff (grpc.health.v1 Check; this CS has no health
/// service yet and answers UNIMPLEMENTED, so its `Ping` decides) and comes back by the probe
/// alone, with no LURK call routed to it; new sessions then reach it again.
#[test]
fn a_replica_set_aside_comes_back_by_its_health_probe() {
    let setup = DevSetup::new();
    let mut cs = start_replicas(&setup, 2);
    let b = cs.pop().unwrap();
    let a = cs.pop().unwrap();
    let a_addr = a.addr.clone();
    let server = tls_server();
    rt().block_on(async {
        let opts = CsPoolOptions {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            ..opts()
        };
        let pool = pool(&[&b], &[a.url(), b.url()], opts);
        let c = Connector::with_cs_pool(config(), pool.clone());
        a.kill();
        for _ in 0..4 {
            handshake(&c, server.port()).await.expect("handshake");
        }
        let st = pool.replicas();
        let down = status_at(&st, &a_addr).clone();
        assert!(!down.healthy && down.failures >= 1, "{down:?}");
        // Probes fail while nothing listens: the backoff grows.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let still = status_at(&pool.replicas(), &a_addr).clone();
        assert!(
            !still.healthy && still.failures > down.failures,
            "{still:?}"
        );

        let a2 = start_on(&setup, &a_addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !status_at(&pool.replicas(), &a_addr).healthy {
            assert!(Instant::now() < deadline, "{:#?}", pool.replicas());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let back = status_at(&pool.replicas(), &a_addr).clone();
        println!("set aside: {down:?}\nback: {back:?}");
        assert_eq!(
            back.answered, down.answered,
            "a call, not the probe, brought it back"
        );
        let probes = wait_rpcs(&[&a2], 1)[0];
        assert!(probes >= 1, "the probe did not reach the restarted replica");
        for _ in 0..4 {
            handshake(&c, server.port()).await.expect("handshake");
        }
        let after = status_at(&pool.replicas(), &a_addr).clone();
        assert!(after.sessions > back.sessions, "{after:?}");
    });
}

/// The command line: `--cs` repeated and comma-separated, the first URL dead. `cs-info`
/// lists every replica, and `get` (three connections) succeeds through the live ones.
#[test]
fn cli_takes_several_cs_urls() {
    let setup = DevSetup::new();
    let cs = start_replicas(&setup, 2);
    let dead = free_addr();
    let mut s_args: Vec<String> = vec!["-www".into(), "-num_tickets".into(), "0".into()];
    s_args.extend(certs().cert_args("server-ecdsa-p256"));
    let server = SServer::start(&s_args);
    // `--cs URL --cs-ca … --cs-cert … --cs-key …` of the first replica, URL replaced.
    let mut args = cs[0].engine_args("engine");
    args[1] = format!("https://{dead},{}", cs[0].url());
    args.extend(["--cs".into(), cs[1].url()]);
    let mut info = vec!["cs-info".to_owned()];
    info.extend(args.iter().cloned());
    let out = lurk_e2e::engine::EngineProc::spawn(&info).finish();
    out.assert_success();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("replicas: "))
        .unwrap_or_else(|| panic!("no replica list:\n{}", out.describe()));
    for a in [dead.to_string(), cs[0].addr.clone(), cs[1].addr.clone()] {
        assert!(line.contains(&a), "{a} missing from {line:?}");
    }
    args.extend([
        "--ca".into(),
        lurk_e2e::openssl::path_str(&certs().ca_all()),
        "--resume".into(),
        "2".into(),
    ]);
    let out = lurk_e2e::engine::EngineRun::get(&server.url(), &args);
    out.assert_success().assert_connections(3);
    let logs: Vec<usize> = cs.iter().map(rpcs).collect();
    println!("RPCs per live replica: {logs:?}");
    assert!(logs.iter().all(|n| *n > 0), "{logs:?}");
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

/// A replica that hangs (SIGSTOP: its port still accepts TCP, nothing answers): a first call
/// there runs out after the call timeout and goes to another replica; the handshake succeeds
/// and the hung replica is set aside.
#[test]
fn a_hung_replica_is_stepped_around_after_the_call_timeout() {
    let setup = DevSetup::new();
    let mut cs = start_replicas(&setup, 2);
    let live = cs.pop().unwrap();
    let hung = cs.pop().unwrap();
    let server = tls_server();
    rt().block_on(async {
        let opts = CsPoolOptions {
            call_timeout: Duration::from_millis(500),
            ..opts()
        };
        let pool = pool(&[&live], &[hung.url(), live.url()], opts);
        signal(hung.pid(), "-STOP");
        let c = Connector::with_cs_pool(config(), pool.clone());
        let t = Instant::now();
        let r = handshake(&c, server.port()).await;
        let took = t.elapsed();
        signal(hung.pid(), "-CONT");
        r.expect("handshake");
        let st = pool.replicas();
        println!("handshake in {took:?}; {st:#?}");
        let h = status_of(&st, &hung);
        assert!(!h.healthy && h.failures >= 1 && h.sessions == 0, "{h:?}");
        assert!(status_of(&st, &live).sessions == 1);
        assert!(took >= Duration::from_millis(500), "{took:?}");
    });
}

/// A replica slower than its request timeout is alive: the CS's own timeout
/// (`[limits] request_timeout_ms`, 8 s by default) runs out before the engine's call timeout
/// (10 s), and it answers DEADLINE_EXCEEDED with a LURK status, so the engine sees a refusal
/// and keeps the replica in use. Here both defaults are halved (4 s and 5 s), and the
/// token takes 10 s to make a key pair (c_init_client_hello's first token call).
#[test]
fn a_replica_slower_than_its_request_timeout_answers_and_stays_in_use() {
    let cs_default = lurk_cs::config::LimitsConfig::default().request_timeout_ms;
    let engine_default = CsPoolOptions::default().call_timeout;
    assert!(
        Duration::from_millis(cs_default) + Duration::from_secs(1) < engine_default,
        "the CS's request timeout ({cs_default} ms) must run out well before the engine's \
         call timeout ({engine_default:?})"
    );
    let setup = DevSetup::new();
    setup.edit_config(
        "module = \"/usr/lib/softhsm/libsofthsm2.so\"",
        &format!(
            "module = {:?}",
            lurk_e2e::p11_fault_shim().display().to_string()
        ),
    );
    let control = setup.path().join("p11-faults");
    std::fs::write(&control, "").unwrap();
    let timeout = (cs_default / 2).to_string();
    let cs = start_replica(
        &setup,
        "127.0.0.1:0",
        &[
            ("RUST_LOG", LOG),
            ("LURK_P11_FAULT_FILE", control.to_str().unwrap()),
            ("LURK_LIMITS__REQUEST_TIMEOUT_MS", &timeout),
        ],
    );
    let server = tls_server();
    rt().block_on(async {
        let opts = CsPoolOptions {
            call_timeout: engine_default / 2,
            ..opts()
        };
        let pool = pool(&[&cs], &[cs.url()], opts);
        std::fs::write(&control, "delay 10000 C_GenerateKeyPair\n").unwrap();
        let c = Connector::with_cs_pool(config(), pool.clone());
        let e = handshake(&c, server.port()).await.unwrap_err();
        std::fs::write(&control, "").unwrap();
        println!("{e}");
        let st = pool.replicas();
        let r = status_of(&st, &cs);
        assert!(r.healthy && r.failures == 0 && r.answered >= 1, "{r:?}");
    });
}

/// The CS behind the `CryptoService` trait: a connector given a decorated pool (it records
/// the exchanges, then calls the real pool) makes every LURK exchange of the handshake
/// through it, one session per connection.
#[test]
fn a_connector_calls_any_crypto_service_implementation() {
    use lurk_engine::crypto_service::{CsFuture, CsSession};
    use lurk_engine::cs_client::CsCall;
    use lurk_engine::CryptoService;
    use std::sync::Mutex;

    struct Recording {
        pool: CsPool,
        sessions: Mutex<usize>,
        calls: Arc<Mutex<Vec<&'static str>>>,
    }
    struct RecordingSession {
        inner: Arc<dyn CsSession>,
        calls: Arc<Mutex<Vec<&'static str>>>,
    }
    impl CryptoService for Recording {
        fn session(&self) -> Arc<dyn CsSession> {
            *self.sessions.lock().unwrap() += 1;
            Arc::new(RecordingSession {
                inner: self.pool.session(),
                calls: self.calls.clone(),
            })
        }
    }
    impl CsSession for RecordingSession {
        fn perform(&self, call: CsCall) -> CsFuture {
            self.calls.lock().unwrap().push(call.exchange());
            self.inner.perform(call)
        }
    }

    let setup = DevSetup::new();
    let cs = start_replicas(&setup, 1);
    let server = tls_server();
    rt().block_on(async {
        let cs_ref: Vec<&CsProcess> = cs.iter().collect();
        let rec = Arc::new(Recording {
            pool: pool(&cs_ref, &[cs[0].url()], opts()),
            sessions: Mutex::new(0),
            calls: Arc::new(Mutex::new(Vec::new())),
        });
        let c = Connector::with_cs(config(), rec.clone());
        handshake(&c, server.port()).await.expect("handshake");
        handshake(&c, server.port()).await.expect("handshake");
        c.wait_for_cs(Duration::from_secs(5)).await;
        assert_eq!(*rec.sessions.lock().unwrap(), 2);
        let calls = rec.calls.lock().unwrap().clone();
        assert_eq!(
            calls
                .iter()
                .filter(|c| **c == "c_init_client_hello")
                .count(),
            2,
            "{calls:?}"
        );
        assert!(calls.contains(&"c_server_hello"), "{calls:?}");
        // The real CS answered each of them.
        assert_eq!(wait_rpcs(&cs_ref, calls.len() as u64), vec![calls.len()]);
    });
}
