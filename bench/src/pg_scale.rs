//! Issue 8's rows: the CS's ticket store on PostgreSQL beside SQLite (resumed handshakes),
//! and one CS beside three replicas behind the engine's [`CsPool`] (full handshakes).
//!
//! Everything runs on this machine over loopback: the engine is this process, each CS a
//! `lurk-cs serve` on the bench's init-dev set-up (memory ephemerals, so the store and the
//! RPCs are what differ, not the token), the TLS server the bench's rustls server, and
//! PostgreSQL a private cluster (`initdb` in a temp dir, its own port, stopped by PID; the
//! e2e tests' `PgCluster`) with PostgreSQL's default durability (`fsync=on`; off in
//! `--quick`, which only checks that the rows run).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lurk_e2e::postgres::{self, PgCluster, PASSWORD};
use lurk_engine::cs_pool::{CsPool, CsPoolOptions};
use lurk_engine::Connector;

use crate::handshake::{self, Client, Mode, Pki, Proc, ServerKind};
use crate::sys::{self, ms, Lat};
use crate::{step, BoxError, Params};

/// Concurrent connections of the replica rows.
const REPLICA_CONCURRENCY: usize = 64;
/// Concurrencies of the store rows' throughput.
const STORE_CONCURRENCY: [usize; 2] = [1, 8];
const PW_ENV: &str = "LURK_BENCH_PG_PASSWORD";

/// Resumed handshakes with one CS whose ticket store is `store`.
pub(crate) struct StoreRow {
    pub(crate) store: String,
    pub(crate) lat: Lat,
    pub(crate) resumed_share: f64,
    /// CPU per connection of the CS process.
    pub(crate) cs_cpu: Duration,
    /// (concurrency, connections per second)
    pub(crate) throughput: Vec<(usize, f64)>,
    pub(crate) errors: usize,
}

/// Full handshakes at [`REPLICA_CONCURRENCY`] through one engine, one way of reaching the CS.
pub(crate) struct ReplicaRow {
    pub(crate) setup: &'static str,
    /// Connections per second of each round.
    pub(crate) rates: Vec<f64>,
    /// CPU per connection: this process (the engine), all CS processes together, the
    /// TLS server.
    pub(crate) engine_cpu: Duration,
    pub(crate) cs_cpu: Duration,
    pub(crate) server_cpu: Duration,
    /// Wall time of all rounds.
    pub(crate) wall: Duration,
    /// Cores the three kinds of process kept busy on average (CPU time / wall time).
    pub(crate) busy: f64,
    /// Sessions each replica opened (the pool's count), all rounds.
    pub(crate) sessions: Vec<u64>,
    pub(crate) errors: usize,
}

pub(crate) struct Figures {
    pub(crate) fsync: bool,
    pub(crate) stores: Vec<StoreRow>,
    pub(crate) replicas: Vec<ReplicaRow>,
    pub(crate) replica_dur: Duration,
}

/// Runs the rows; `Ok(None)` when PostgreSQL is not installed and `quick` (said in `notes`).
pub(crate) async fn run(
    dev: &Path,
    workspace: &Path,
    p: &Params,
    quick: bool,
    notes: &mut Vec<String>,
) -> Result<Option<Figures>, BoxError> {
    if postgres::find_bin_dir().is_none() {
        let msg = "PostgreSQL rows skipped: PostgreSQL is not installed \
                   (scripts/install-deps.sh --postgres installs it)";
        if !quick {
            return Err(msg.into());
        }
        step(msg);
        notes.push(msg.into());
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("lurk-bench-pg-")
        .tempdir()?;
    let pki = Pki::new(dir.path(), workspace)?;
    let (srv, port) = handshake::start_server(ServerKind::Rustls, &pki)?;
    // --quick checks that the rows run: no fsync (a shutdown checkpoint of seconds less).
    let fsync = !quick;
    step(&format!(
        "PostgreSQL: a private cluster (initdb, fsync {})",
        if fsync { "on" } else { "off" }
    ));
    let pg = if fsync {
        PgCluster::start_with_fsync()
    } else {
        PgCluster::start()
    };
    pg.create_db("bench_sync");
    pg.create_db("bench_async");
    // synchronous_commit off: a commit does not wait for its WAL flush, the durability of the
    // SQLite store's synchronous=NORMAL (a crash may lose the last tickets, nothing else).
    pg.psql(
        "postgres",
        "ALTER DATABASE bench_async SET synchronous_commit = off",
    );
    let dsn_sync = pg.dsn("bench_sync");
    let dsn_async = pg.dsn("bench_async");
    let pg_env = |dsn: &str| -> Vec<(String, String)> {
        [
            ("LURK_STORE__BACKEND", "postgres"),
            ("LURK_STORE__POSTGRES__DSN", dsn),
            ("LURK_STORE__POSTGRES__PASSWORD_ENV", PW_ENV),
            (PW_ENV, PASSWORD),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    };

    let mut stores = Vec::new();
    let mut store_setups = vec![
        ("SQLite (WAL, synchronous=NORMAL)", Vec::new()),
        ("PostgreSQL (synchronous_commit=on)", pg_env(&dsn_sync)),
    ];
    if !quick {
        store_setups.push(("PostgreSQL (synchronous_commit=off)", pg_env(&dsn_async)));
    }
    for (name, env) in store_setups {
        step(&format!("resumed handshakes, CS store: {name}"));
        let (cs, url) = start(dev, &env)?;
        let client = handshake::engine_client(dev, &url, &pki, Mode::Resumed)?;
        let (lat, cpu, resumed_share, _, mut errors, _) = handshake::latency(
            &client,
            port,
            srv.pid(),
            Some(cs.pid()),
            p.latency_n,
            p.latency_budget,
        )
        .await?;
        let mut throughput = Vec::new();
        for conc in STORE_CONCURRENCY {
            let (rate, failed) =
                handshake::throughput(&client, port, conc, p.tput_dur, p.tput_max_each).await;
            errors += failed;
            throughput.push((conc, rate));
        }
        stores.push(StoreRow {
            store: name.into(),
            lat,
            resumed_share,
            cs_cpu: cpu.cs.unwrap_or_default(),
            throughput,
            errors,
        });
    }

    step("three lurk-cs replicas on PostgreSQL (synchronous_commit=on)");
    let env = pg_env(&dsn_sync);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start(dev, &env)?);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.1.clone()).collect();
    let pids: Vec<u32> = replicas.iter().map(|r| r.0.pid()).collect();
    let ep = handshake::engine_endpoint(dev, &urls[0])?;
    let pool_client = |urls: &[String]| -> Result<(Client, CsPool), BoxError> {
        let pool = CsPool::new(&ep, urls, CsPoolOptions::default())?;
        let cfg = Arc::new(handshake::engine_config(&pki, Mode::Full)?);
        let c = Connector::with_cs_pool(cfg, pool.clone());
        Ok((Client::Engine(Arc::new(c)), pool))
    };
    let direct = handshake::engine_client(dev, &urls[0], &pki, Mode::Full)?;
    let (one, one_pool) = pool_client(&urls[..1])?;
    let (three, three_pool) = pool_client(&urls)?;
    let setups: [(&'static str, &Client, Option<&CsPool>); 3] = [
        ("one CS, one channel (no pool)", &direct, None),
        ("one CS through a CsPool", &one, Some(&one_pool)),
        ("three replicas through a CsPool", &three, Some(&three_pool)),
    ];
    let mut rows: Vec<ReplicaRow> = setups
        .iter()
        .map(|(setup, _, _)| ReplicaRow {
            setup,
            rates: Vec::new(),
            engine_cpu: Duration::ZERO,
            cs_cpu: Duration::ZERO,
            server_cpu: Duration::ZERO,
            wall: Duration::ZERO,
            busy: 0.0,
            sessions: Vec::new(),
            errors: 0,
        })
        .collect();
    let mut done = vec![0usize; rows.len()];
    for (_, client, _) in &setups {
        for _ in 0..3 {
            handshake::get_once(client, port).await?;
        }
    }
    // Interleaved rounds: the machine is shared, its load drifts.
    let rounds = if quick { 1 } else { 3 };
    let replica_dur = p.tput_dur * 2;
    for round in 0..rounds {
        for (i, (name, client, _)) in setups.iter().enumerate() {
            step(&format!(
                "full handshakes at {REPLICA_CONCURRENCY} concurrent, {name} (round {})",
                round + 1
            ));
            let engine0 = sys::cpu_self();
            let cs0: Duration = pids.iter().map(|p| sys::cpu_of(*p)).sum();
            let server0 = sys::cpu_of(srv.pid());
            let t = Instant::now();
            let (rate, failed) = handshake::throughput(
                client,
                port,
                REPLICA_CONCURRENCY,
                replica_dur,
                p.tput_max_each,
            )
            .await;
            let n = (rate * t.elapsed().as_secs_f64()).round() as usize;
            rows[i].engine_cpu += sys::cpu_self().saturating_sub(engine0);
            let cs1: Duration = pids.iter().map(|p| sys::cpu_of(*p)).sum();
            rows[i].cs_cpu += cs1.saturating_sub(cs0);
            rows[i].server_cpu += sys::cpu_of(srv.pid()).saturating_sub(server0);
            rows[i].wall += t.elapsed();
            rows[i].rates.push(rate);
            rows[i].errors += failed;
            done[i] += n.max(1);
        }
    }
    for (i, row) in rows.iter_mut().enumerate() {
        row.busy = (row.engine_cpu + row.cs_cpu + row.server_cpu).as_secs_f64()
            / row.wall.as_secs_f64().max(1e-9);
        row.engine_cpu /= done[i] as u32;
        row.cs_cpu /= done[i] as u32;
        row.server_cpu /= done[i] as u32;
        if let Some(pool) = setups[i].2 {
            row.sessions = pool.replicas().iter().map(|r| r.sessions).collect();
        }
    }
    step("stopping the replicas and PostgreSQL");
    drop(replicas);
    drop(srv);
    Ok(Some(Figures {
        fsync,
        stores,
        replicas: rows,
        replica_dur,
    }))
}

/// A `lurk-cs serve` (memory ephemerals) with `env`; three tries, as processes logging in
/// to one SoftHSM token now and then fail (tests/src/lurk.rs).
fn start(dev: &Path, env: &[(String, String)]) -> Result<(Proc, String), BoxError> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut last = None;
    for _ in 0..3 {
        match handshake::start_cs_with(dev, &dev.join("lurk-cs.toml"), "memory", &env) {
            Ok(cs) => return Ok(cs),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| "lurk-cs did not start".into()))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

impl Figures {
    pub(crate) fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "\n### PostgreSQL ticket store and CS replicas (issue 8)\n\n\
             Engine + `lurk-cs serve` (memory ephemerals) over loopback against the rustls \
             server, as above; PostgreSQL is a private cluster on this machine (fsync {}). \
             Resumed: each connection offers a ticket of an earlier one, which the CS reads \
             from its store, unseals, then takes (one transaction: the row deleted, its \
             tombstone written); \
             the connection's new ticket is registered in the background (a second transaction).\n\n\
             | CS ticket store | resumed latency ms p50/p90/p99 | conn/s @1 | @8 | CS CPU ms per connection | resumed | n | failed |\n|---|---|---|---|---|---|---|---|\n",
            if self.fsync { "on" } else { "off" }
        );
        for r in &self.stores {
            let tp = |c| {
                r.throughput
                    .iter()
                    .find(|t| t.0 == c)
                    .map_or(String::new(), |t| format!("{:.0}", t.1))
            };
            let _ = writeln!(
                s,
                "| {} | {:.3} / {:.3} / {:.3} | {} | {} | {:.3} | {:.0}% | {} | {} |",
                r.store,
                ms(r.lat.p50),
                ms(r.lat.p90),
                ms(r.lat.p99),
                tp(1),
                tp(8),
                ms(r.cs_cpu),
                r.resumed_share * 100.0,
                r.lat.n,
                r.errors
            );
        }
        let _ = write!(
            s,
            "\nFull handshakes, {REPLICA_CONCURRENCY} concurrent connections for {:.1} s per \
             round, rounds interleaved; the replicas are three `lurk-cs serve` on one token and \
             one PostgreSQL database (synchronous_commit=on), all on the same cores as the engine \
             and the server. CPU per connection summed over the CS processes; cores busy = CPU \
             time of engine + CS + server over wall time (PostgreSQL is not touched by full \
             handshakes).\n\n\
             | how the engine reaches the CS | conn/s (median) | rounds | CPU ms engine | CS | server | cores busy | sessions per replica | failed |\n|---|---|---|---|---|---|---|---|---|\n",
            self.replica_dur.as_secs_f64()
        );
        for r in &self.replicas {
            let rounds: Vec<String> = r.rates.iter().map(|x| format!("{x:.0}")).collect();
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {} | {} |",
                r.setup,
                median(&r.rates),
                rounds.join(", "),
                ms(r.engine_cpu),
                ms(r.cs_cpu),
                ms(r.server_cpu),
                r.busy,
                if r.sessions.is_empty() {
                    "—".into()
                } else {
                    format!("{:?}", r.sessions)
                },
                r.errors
            );
        }
        s
    }
}
