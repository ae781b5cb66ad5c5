//! CS replicas on one PostgreSQL ticket store (a private cluster, real `lurk-cs`
//! processes, each with its own SoftHSM token holding the same sealing key, moved with
//! `sealing-key export-wrapped / import-wrapped`):
//! - a ticket registered through replica A resumes through replica B (§4's binder proves
//!   the PSK B unsealed);
//! - N engines racing for one ticket through both replicas: exactly one wins;
//! - the used ticket can never be registered again (tombstone, RFC 8446 §C.4);
//! - PostgreSQL restarted under the CS: health NOT_SERVING, store-bound exchanges fail with
//!   a clear status, and the CS recovers by itself.

use std::process::Command;
use std::time::Duration;

use lurk_e2e::postgres::{PgCluster, PASSWORD};
use lurk_e2e::rfc8448::{ks, register_section3_ticket, resumption_request};
use lurk_e2e::{workspace_bin, CsProcess, DevSetup};
use lurk_proto::status::LurkStatus;
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
