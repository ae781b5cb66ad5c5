//! CS replicas on one PostgreSQL ticket store (a private cluster, real `lurk-cs`
//! processes, each with its own SoftHSM token holding the same sealing key, moved with
//! `sealing-key export-wrapped / import-wrapped`):
//! - a ticket registered through replica A resumes through replica B (§4's binder proves
//!   the PSK B unsealed);
//! - N engines racing for one ticket through both replicas: exactly one wins;
//! - the used ticket can never be registered again (tombstone, RFC 8446 §C.4);
//! - PostgreSQL restarted under the CS: health NOT_SERVING, store-bound exchanges fail with
//!   a clear status, and the CS recovers by itself;
//! - three replicas under a steady load of real handshakes, one SIGKILLed: only its
//!   handshakes in flight fail, and no acknowledged ticket is lost.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lurk_e2e::openssl::{certs, SServer};
use lurk_e2e::postgres::{PgCluster, PASSWORD};
use lurk_e2e::replica_load::{kill_under_load, start_replica, status_at};
use lurk_e2e::rfc8448::{ks, register_section3_ticket, resumption_request};
use lurk_e2e::{workspace_bin, CsProcess, DevSetup};
use lurk_engine::cs_pool::{CsPool, CsPoolOptions};
use lurk_engine::verify::TrustAnchors;
use lurk_engine::{ClientConfig, Connector, MemoryTicketStore, StoredTicket, TicketStore};
use lurk_proto::status::LurkStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::ServingStatus;

const PW_ENV: &str = "LURK_TEST_PG_PASSWORD";
const SERVING: i32 = ServingStatus::Serving as i32;
const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

fn lurk_cs(dev: &DevSetup, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("lurk-cs"))
        .args(args)
        .arg("--config")
        .arg(dev.config_path())
        .env(PW_ENV, PASSWORD)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lurk-cs {args:?}: {text}");
    text
}

/// Two dev set-ups (two tokens) on database `db`, sharing A's sealing key. The CSes run
/// in test-vector mode (RFC 8448 transcripts).
fn replicas(pg: &PgCluster, db: &str) -> (DevSetup, DevSetup) {
    pg.create_db(db);
    let (a, b) = (DevSetup::new(), DevSetup::new());
    let scratch = tempfile::tempdir().unwrap();
    let wrap_key = scratch.path().join("wrap.hex");
    std::fs::write(&wrap_key, hex::encode([0x42u8; 32])).unwrap();
    let wrapped = scratch.path().join("sealing.wrapped");
    for dev in [&a, &b] {
        // A new label: init-dev's own sealing key is not exportable.
        dev.edit_config(
            "sealing_key = \"lurk-ticket-seal\"",
            "sealing_key = \"replica-seal\"",
        );
        dev.edit_config("[store]\n", "[store]\nbackend = \"postgres\"\n");
        dev.append_config(&format!(
            "[store.postgres]\ndsn = \"{}\"\npassword_env = \"{PW_ENV}\"\nconnect_timeout_ms = 1000\n\
             [health]\nprobe_interval_ms = 100\nshutdown_delay_ms = 0\n\
             [freshness]\ntest_vectors = true\n",
            pg.dsn(db)
        ));
        lurk_cs(
            dev,
            &[
                "token",
                "wrapping-key",
                "import",
                "--label",
                "replica-wrap",
                "--key-file",
                wrap_key.to_str().unwrap(),
            ],
        );
    }
    lurk_cs(&a, &["token", "sealing-key", "--exportable"]);
    lurk_cs(
        &a,
        &[
            "token",
            "sealing-key",
            "export-wrapped",
            "--wrapping-key",
            "replica-wrap",
            "--out",
            wrapped.to_str().unwrap(),
        ],
    );
    lurk_cs(
        &b,
        &[
            "token",
            "sealing-key",
            "import-wrapped",
            "--wrapping-key",
            "replica-wrap",
            "--in",
            wrapped.to_str().unwrap(),
        ],
    );
    lurk_cs(&a, &["store", "migrate"]);
    (a, b)
}

fn start(dev: &DevSetup) -> CsProcess {
    dev.start_with_env(&[(PW_ENV, PASSWORD)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_tickets_used_once_and_survive_a_database_restart() {
    let pg = PgCluster::start();
    let (dev_a, dev_b) = replicas(&pg, "replicas");
    let (cs_a, cs_b) = (start(&dev_a), start(&dev_b));
    for cs in [&cs_a, &cs_b] {
        assert!(
            cs.wait_health("", SERVING, Duration::from_secs(10)).await,
            "{}",
            cs.log()
        );
    }

    // Registered through A ...
    let mut a = cs_a.client("engine");
    assert_eq!(register_section3_ticket(&mut a).await.unwrap(), 1);
    // ... resumed through B, the binder proving the PSK B unsealed; N engines (engine
    // processes would each open their own connection) race for it through both replicas.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let mut c = if i % 2 == 0 { &cs_b } else { &cs_a }.client("engine");
            tokio::spawn(async move { c.c_init_client_hello(resumption_request()).await })
        })
        .collect();
    let mut winners = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(resp) => {
                winners += 1;
                assert_eq!(
                    resp.into_inner().binders,
                    vec![ks("resumed_0rtt", "binder")]
                );
            }
            Err(e) => assert_eq!(
                LurkStatus::from_grpc(&e),
                Some(LurkStatus::InvalidPsk),
                "{e}"
            ),
        }
    }
    eprintln!("8 racers through 2 replicas: {winners} winner(s)");
    assert_eq!(winners, 1);

    // The same NewSessionTicket registered again (a new session, through B): refused, the
    // ticket stays used (tombstone until its expiry).
    let mut b = cs_b.client("engine");
    let e = register_section3_ticket(&mut b).await.unwrap_err();
    assert_eq!(
        LurkStatus::from_grpc(&e),
        Some(LurkStatus::InvalidPsk),
        "{e}"
    );
    let e = b
        .c_init_client_hello(resumption_request())
        .await
        .unwrap_err();
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::InvalidPsk));

    // PostgreSQL goes down under the replicas.
    pg.stop();
    for cs in [&cs_a, &cs_b] {
        assert!(
            cs.wait_health("", NOT_SERVING, Duration::from_secs(10))
                .await,
            "health still SERVING without the database: {}",
            cs.log()
        );
    }
    // A store-bound exchange fails with a clear status; a store-free one still works.
    let e = a
        .c_init_client_hello(resumption_request())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::UndefinedError));
    assert!(e.message().contains("ticket store is unavailable"), "{e}");
    let e = register_section3_ticket(&mut a).await.unwrap_err();
    assert!(e.message().contains("ticket store is unavailable"), "{e}");

    // Back: both replicas recover by themselves (same processes).
    pg.start_server();
    for cs in [&cs_a, &cs_b] {
        assert!(
            cs.wait_health("", SERVING, Duration::from_secs(10)).await,
            "{}",
            cs.log()
        );
    }
    let e = b
        .c_init_client_hello(resumption_request())
        .await
        .unwrap_err();
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::InvalidPsk));
}

/// A replica whose token holds another sealing key refuses to start against the store.
#[test]
fn a_replica_with_another_sealing_key_refuses_to_start() {
    let pg = PgCluster::start();
    let (dev_a, _dev_b) = replicas(&pg, "kcv");
    let other = DevSetup::new();
    other.edit_config("[store]\n", "[store]\nbackend = \"postgres\"\n");
    other.append_config(&format!(
        "[store.postgres]\ndsn = \"{}\"\npassword_env = \"{PW_ENV}\"\n",
        pg.dsn("kcv")
    ));
    let err = match other.try_start_with_env(&[(PW_ENV, PASSWORD)]) {
        Ok(_) => panic!("a CS with another sealing key started"),
        Err(log) => log,
    };
    assert!(err.contains("sealed by another sealing key"), "{err}");
    // The right key still starts.
    drop(start(&dev_a));
}

/// The engine's ticket store in the SIGKILL test: it keeps every ticket the engine stored,
/// which it does only once a `c_register_tickets` carrying the ticket was answered with
/// success (`conn/traffic.rs`, `CsEpilogue`): the acknowledged tickets. It never gives one
/// back (the load makes full handshakes only).
#[derive(Default)]
struct Acknowledged(Mutex<Vec<StoredTicket>>);

impl TicketStore for Acknowledged {
    fn insert(&self, _server: &str, ticket: StoredTicket) {
        self.0.lock().unwrap().push(ticket);
    }
    fn take(
        &self,
        _: &str,
        _: SystemTime,
        _: &dyn Fn(&StoredTicket) -> bool,
    ) -> Option<StoredTicket> {
        None
    }
    fn count(&self, _: &str) -> usize {
        0
    }
}

fn engine_config(store: Arc<dyn TicketStore>, resume: bool) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder()
            .trust_anchors(TrustAnchors::from_pem_file(&certs().ca_all()).unwrap())
            .ticket_store(store)
            .resume(resume)
            .build()
            .unwrap(),
    )
}

/// One connection to `openssl s_server -www`: handshake, `GET /`, the page read to EOF (the
/// server's NewSessionTicket comes before it), close_notify. Returns whether it resumed.
async fn get(c: &Connector, port: u16) -> Result<bool, lurk_engine::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| lurk_engine::Error::io(&e))?;
    // No Nagle delay between the client Finished and the request.
    let _ = tcp.set_nodelay(true);
    let name = lurk_engine::ServerName::try_from("localhost").expect("a DNS name");
    let mut s = c.connect(tcp, &name, port).await?;
    let resumed = s.summary().resumed;
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut page = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut page)).await;
    let _ = s.shutdown().await;
    Ok(resumed)
}

/// SHA-256 of a ticket identity, in hex: the store's key for it.
fn id_hash(t: &StoredTicket) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &t.identity))
}

/// The `tickets` (or `consumed_tickets`) rows' identity hashes.
fn stored_ids(pg: &PgCluster, db: &str, table: &str) -> HashSet<String> {
    pg.psql(db, &format!("SELECT encode(id_hash, 'hex') FROM {table}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Three replicas (one token, so one sealing key) on one PostgreSQL store behind one engine's
/// `CsPool`, a steady load of concurrent full handshakes with `openssl s_server`, which issues
/// a ticket on each; one replica is SIGKILLed mid-load. The only failed handshakes are those
/// in flight on it (tests/src/replica_load.rs); every ticket whose registration was
/// acknowledged, through any replica and the killed one included, is in the store, resumes
/// once through the survivors, and is refused the second time (RFC 8446 §C.4).
#[test]
fn sigkill_under_load_loses_no_acknowledged_ticket() {
    let pg = PgCluster::start();
    let db = "sigkill";
    pg.create_db(db);
    let setup = DevSetup::new();
    setup.edit_config("[store]\n", "[store]\nbackend = \"postgres\"\n");
    setup.append_config(&format!(
        "[store.postgres]\ndsn = \"{}\"\npassword_env = \"{PW_ENV}\"\nconnect_timeout_ms = 1000\n",
        pg.dsn(db)
    ));
    let env = [(PW_ENV, PASSWORD)];
    let mut cs: Vec<CsProcess> = (0..3)
        .map(|_| start_replica(&setup, "127.0.0.1:0", &env))
        .collect();
    let victim = cs.remove(1);
    let victim_addr = victim.addr.clone();
    let mut s_args: Vec<String> = vec!["-www".into(), "-num_tickets".into(), "1".into()];
    s_args.extend(certs().cert_args("server-ecdsa-p256"));
    let server = SServer::start(&s_args);
    let port = server.port();
    let urls: Vec<String> = std::iter::once(&victim)
        .chain(cs.iter())
        .map(CsProcess::url)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = CsPoolOptions {
        // No periodic health checks: only the calls decide.
        health_interval: Duration::from_secs(3600),
        ..CsPoolOptions::default()
    };
    let pool = rt
        .block_on(async { CsPool::new(&victim.endpoint("engine"), &urls, opts) })
        .expect("pool");
    let acked = Arc::new(Acknowledged::default());
    let c = Connector::with_cs_pool(engine_config(acked.clone(), false), pool.clone());
    let run = kill_under_load(&rt, &c, &pool, victim, (6, 24, 30), move |c| async move {
        match get(&c, port).await {
            Ok(false) => Ok(()),
            Ok(true) => Err("a full handshake resumed".into()),
            Err(e) => Err(e.to_string()),
        }
    });
    let failed = run.check(24);
    // Registrations the victim acknowledged before it died (its access log: one line per
    // exchange): their tickets must outlive it.
    let victim_acks = run
        .victim_log
        .lines()
        .filter(|l| l.contains("c_register_tickets") && l.contains("success"))
        .count();
    println!("the killed replica acknowledged {victim_acks} registrations");
    assert!(victim_acks > 0, "{}", run.victim_log);

    let tickets = std::mem::take(&mut *acked.0.lock().unwrap());
    let in_store = stored_ids(&pg, db, "tickets");
    println!(
        "{} tickets acknowledged by the replicas, {} in the store, {failed} handshakes failed",
        tickets.len(),
        in_store.len()
    );
    // One ticket per handshake, but for those whose registration was out on the victim when
    // it died (a few): at least half of them, whatever the timing.
    let ok = run.records.len() - failed;
    assert!(
        tickets.len() * 2 >= ok,
        "{} tickets acknowledged for {ok} handshakes",
        tickets.len()
    );
    for t in &tickets {
        assert!(
            in_store.contains(&id_hash(t)),
            "an acknowledged ticket is not in the store"
        );
    }

    // Each one resumes once through the surviving replicas (6 at a time), then is refused.
    let tickets = Arc::new(Mutex::new(tickets));
    let ids: Vec<String> = tickets.lock().unwrap().iter().map(id_hash).collect();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (pool, tickets) = (pool.clone(), tickets.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(t) = tickets.lock().unwrap().pop() else {
                        return;
                    };
                    let offer = |t: &StoredTicket| {
                        let store = Arc::new(MemoryTicketStore::default());
                        store.insert(&format!("localhost:{port}"), t.clone());
                        Connector::with_cs_pool(engine_config(store, true), pool.clone())
                    };
                    let resumed = get(&offer(&t), port).await;
                    assert!(matches!(resumed, Ok(true)), "first use: {resumed:?}");
                    match get(&offer(&t), port).await {
                        Err(lurk_engine::Error::CryptoService {
                            exchange: "c_init_client_hello",
                            status: Some(LurkStatus::InvalidPsk),
                            ..
                        }) => {}
                        other => panic!("second use of a ticket: {other:?}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (left, consumed) = (
        stored_ids(&pg, db, "tickets"),
        stored_ids(&pg, db, "consumed_tickets"),
    );
    for id in &ids {
        assert!(
            !left.contains(id) && consumed.contains(id),
            "ticket {id} not consumed"
        );
    }
    let st = pool.replicas();
    println!("{st:#?}");
    let v = status_at(&st, &victim_addr);
    assert!(!v.healthy && v.failures >= 1, "{v:?}");
    for r in &cs {
        assert!(status_at(&st, &r.addr).sessions > 0, "{st:#?}");
    }
}
