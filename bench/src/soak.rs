//! Load and soak through one real `lurk-cs serve` (mTLS gRPC, SoftHSM token, token
//! ephemerals) against the bench's rustls TLS server: (a) many handshakes at once from one
//! engine process, every error counted; (b) a long run of full and resumed handshakes with
//! the resident memory (VmRSS) of the engine (this process) and of the CS sampled at fixed
//! intervals.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lurk_proto::wire::NamedGroup;

use crate::handshake::{self, Client, Mode, Pki, Proc, ServerKind};
use crate::sys;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sizes of a run.
pub(crate) struct Params {
    /// Handshakes started at once in (a).
    pub(crate) concurrent: usize,
    /// Handshakes in (b), and the sampling interval.
    pub(crate) total: usize,
    pub(crate) every: usize,
    /// Connection loops running side by side in (b).
    pub(crate) workers: usize,
}

impl Params {
    /// The quick or full sizes; `LURK_BENCH_SOAK=concurrent,total,every` overrides them.
    pub(crate) fn new(quick: bool) -> Self {
        let mut p = Self::sizes(quick);
        let custom: Vec<usize> = std::env::var("LURK_BENCH_SOAK")
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        if let [concurrent, total, every] = custom[..] {
            p.concurrent = concurrent.max(1);
            p.total = total;
            p.every = every.max(1);
        }
        p
    }

    fn sizes(quick: bool) -> Self {
        if quick {
            Self {
                concurrent: 50,
                total: 300,
                every: 100,
                workers: 8,
            }
        } else {
            Self {
                concurrent: 1_000,
                total: 100_000,
                every: 10_000,
                workers: 32,
            }
        }
    }
}

/// Figures of a run.
pub(crate) struct Soak {
    /// The CS's `[ephemeral] backend`: `token` or `memory`.
    pub(crate) backend: String,
    pub(crate) concurrent: usize,
    pub(crate) concurrent_errors: usize,
    pub(crate) concurrent_took: Duration,
    pub(crate) total: usize,
    pub(crate) errors: usize,
    pub(crate) resumed: usize,
    pub(crate) took: Duration,
    /// (handshakes done, engine VmRSS KiB, CS VmRSS KiB).
    pub(crate) samples: Vec<(usize, u64, u64)>,
    /// The first few errors, for the notes.
    pub(crate) first_errors: Vec<String>,
    pub(crate) nofile: u64,
    /// The one group the engine offers.
    pub(crate) group: NamedGroup,
    /// (module recycles, key pairs they gave up), from the CS's log.
    pub(crate) recycles: (usize, u64),
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (prlimit(1): the crate forbids
/// unsafe code); the CS and the TLS server started afterwards inherit it. Returns the limit.
fn raise_nofile() -> u64 {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        })
        .and_then(|h| h.parse::<u64>().ok())
        .unwrap_or(1024);
    let _ = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `lurk-cs serve` on the init-dev set-up with `backend` ephemerals and its default
/// `[limits]`: the engine keeps its calls in flight under the CS's per-engine request limit
/// (`CsPoolOptions::max_calls_in_flight`, 64, against 128), so its `concurrent` handshakes
/// wait their turn in the engine instead of being refused (`too_many_requests`).
fn start_cs(dev: &Path, backend: &str, run: &str) -> Result<(Proc, String), BoxError> {
    let bin = sys::sibling_bin("lurk-cs").ok_or("lurk-cs binary not found next to lurk-bench")?;
    let port = sys::free_port();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(dev.join("lurk-cs.toml"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("LURK_EPHEMERAL__BACKEND", backend)
        .env(
            "LURK_STORE__PATH",
            dev.join(format!("soak-tickets-{port}.sqlite")),
        )
        .env(
            "LURK_STORE__MAX_TICKETS_PER_ENGINE",
            std::env::var("LURK_BENCH_SOAK_TICKET_CAP").unwrap_or_else(|_| "10000000".into()),
        )
        // SoftHSM 2.6 keeps destroyed session objects until C_Finalize: the module is
        // recycled every RECYCLE objects (3 per handshake with token ephemerals).
        .env("LURK_TOKEN__RECYCLE_AFTER_OBJECTS", recycle_after_objects())
        // As deploy/ runs it: glibc's per-thread arenas would keep freed token memory.
        .env("MALLOC_ARENA_MAX", "2")
        // Warnings, and the recycle's line with its figures (read back by `recycles`).
        .env("LURK_LOG__LEVEL", "warn,lurk_cs::token::pool::recycle=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(cs_log(dev, run))?)
        .spawn()?;
    match handshake::wait_for_line(&mut child, "READY ") {
        Ok(line) => Ok((
            Proc { child },
            format!("https://{}", line.trim_start_matches("READY ").trim()),
        )),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// The runs, in order: `LURK_BENCH_SOAK_EPHEMERAL` (a comma list of CS ephemeral backends,
/// `/p256` after one for an engine offering P-256 instead of x25519), else token, token
/// with P-256 (SoftHSM 2.6 leaks a little memory at each x25519 derive, not at a P-256
/// one: BENCHMARKS.md), then memory.
pub(crate) fn backends() -> Vec<String> {
    std::env::var("LURK_BENCH_SOAK_EPHEMERAL")
        .unwrap_or_else(|_| "token,token/p256,memory".into())
        .split(',')
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect()
}

pub(crate) async fn run(
    dev: &Path,
    pki: &Pki,
    p: &Params,
    backend: &str,
) -> Result<Soak, BoxError> {
    let nofile = raise_nofile();
    let run = backend;
    // `token/p256`: token ephemerals, the engine offering P-256 only.
    let (backend, group) = match run.split_once('/') {
        Some((b, "p256")) => (b, NamedGroup::Secp256r1),
        _ => (run, NamedGroup::X25519),
    };
    let (cs, url) = start_cs(dev, backend, run)?;
    let (_srv, port) = handshake::start_server(ServerKind::Rustls, pki)?;
    let full = handshake::engine_client_in(dev, &url, pki, Mode::Full, group)?;
    let resumed = handshake::engine_client_in(dev, &url, pki, Mode::Resumed, group)?;
    let first_errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let note = |e: String, errs: &Arc<std::sync::Mutex<Vec<String>>>| {
        let mut v = errs.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 5 {
            v.push(e);
        }
    };

    // (a) All at once: one engine process, one CS channel.
    crate::step(&format!(
        "soak ({backend} ephemerals): {} concurrent handshakes",
        p.concurrent
    ));
    let barrier = Arc::new(tokio::sync::Barrier::new(p.concurrent));
    let start = Instant::now();
    let tasks: Vec<_> = (0..p.concurrent)
        .map(|_| {
            let (c, b) = (full.clone(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                handshake::get_once(&c, port)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut concurrent_errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                concurrent_errors += 1;
                note(format!("concurrent: {e}"), &first_errors);
            }
            Err(e) => {
                concurrent_errors += 1;
                note(format!("concurrent: task: {e}"), &first_errors);
            }
        }
    }
    let concurrent_took = start.elapsed();
    crate::step(&format!(
        "soak: {} concurrent handshakes: {concurrent_errors} errors in {:.2} s {:?}",
        p.concurrent,
        concurrent_took.as_secs_f64(),
        first_errors.lock().unwrap_or_else(|p| p.into_inner())
    ));

    // (b) The long run: workers alternate full and resumed handshakes.
    crate::step(&format!(
        "soak: {} handshakes (full and resumed), RSS every {}",
        p.total, p.every
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let resumed_n = Arc::new(AtomicUsize::new(0));
    let mut samples = vec![(0, sys::rss_kib(None), sys::rss_kib(Some(cs.pid())))];
    let start = Instant::now();
    let workers: Vec<_> = (0..p.workers)
        .map(|w| {
            let clients: [Client; 2] = [full.clone(), resumed.clone()];
            let (done, errors, resumed_n, errs) = (
                done.clone(),
                errors.clone(),
                resumed_n.clone(),
                first_errors.clone(),
            );
            let total = p.total;
            tokio::spawn(async move {
                let mut i = w;
                loop {
                    if done.fetch_add(1, Ordering::Relaxed) >= total {
                        done.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    match handshake::get_once(&clients[i % 2], port).await {
                        Ok((true, _)) => {
                            resumed_n.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((false, _)) => {}
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut v = errs.lock().unwrap_or_else(|p| p.into_inner());
                            if v.len() < 5 {
                                v.push(format!("soak: {e}"));
                            }
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let cs_pid = cs.pid();
    let mut next = p.every;
    while workers.iter().any(|w| !w.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if done.load(Ordering::Relaxed) >= next {
            samples.push((next, sys::rss_kib(None), sys::rss_kib(Some(cs_pid))));
            next += p.every;
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let took = start.elapsed();
    if samples.last().map(|s| s.0) != Some(p.total) {
        samples.push((p.total, sys::rss_kib(None), sys::rss_kib(Some(cs_pid))));
    }
    drop(cs);
    let recycles = recycles(&cs_log(dev, run));
    let first_errors = first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Soak {
        backend: backend.to_owned(),
        group,
        concurrent: p.concurrent,
        concurrent_errors,
        concurrent_took,
        total: p.total,
        errors: errors.load(Ordering::Relaxed),
        resumed: resumed_n.load(Ordering::Relaxed),
        took,
        samples,
        first_errors,
        nofile,
        recycles,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Where the soak's CS writes its log.
fn cs_log(dev: &Path, run: &str) -> std::path::PathBuf {
    dev.join(format!("soak-cs-{}.log", run.replace('/', "-")))
}

/// The module recycles the CS logged, and the key pairs they gave up in all.
fn recycles(log: &Path) -> (usize, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("PKCS#11 module recycled"))
        .collect();
    let given_up = lines
        .iter()
        .filter_map(|l| l.split("given_up=").nth(1))
        .filter_map(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    (lines.len(), given_up)
}

/// `[token] recycle_after_objects` of the soak's CS: `LURK_BENCH_SOAK_RECYCLE`, else 30,000
/// (about 10,000 handshakes with token ephemerals; the CS's default, 300,000, would first
/// recycle near the end of a 100,000-handshake run).
fn recycle_after_objects() -> String {
    std::env::var("LURK_BENCH_SOAK_RECYCLE").unwrap_or_else(|_| "30000".into())
}

/// The section's introduction, once for all runs.
pub(crate) fn intro(quick: bool, nofile: u64) -> String {
    format!(
        "## Load and soak (one engine process, one `lurk-cs serve`)\n\n\
         Generated by `lurk-bench --only soak`{} ({} build): a real `lurk-cs serve` (mTLS \
         gRPC, SoftHSM token, SQLite store) and the bench's rustls TLS 1.3 server on \
         loopback; the engine is this process (one `Connector`, one CS channel); runs with the \
         CS's ephemerals in the token (the engine offering x25519, then P-256) and in memory. \
         RLIMIT_NOFILE {} (raised to the hard limit; the CS and server inherit it). The CS \
         runs with its default `[limits]` (one engine's requests past 128 in flight are \
         refused; the engine keeps at most {} calls in flight per replica and queues the \
         others), `[store] max_tickets_per_engine` raised so that the store keeps every \
         ticket, `[token] recycle_after_objects` = {} (SoftHSM 2.6 keeps every destroyed \
         session object until the module is re-initialised: deploy/README.md §6), and \
         `MALLOC_ARENA_MAX=2` as in deploy/.\n\n",
        if quick { " --quick" } else { "" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        nofile,
        lurk_engine::cs_pool::CsPoolOptions::default().max_calls_in_flight,
        recycle_after_objects(),
    )
}

impl Soak {
    /// This run's markdown subsection.
    pub(crate) fn markdown(&self, quick: bool) -> String {
        let mut md = format!(
            "### CS with {} ephemerals, {}\n\n",
            self.backend,
            self.group.name()
        );
        md.push_str(&format!(
            "- **{} handshakes started at once** (full, GET of 256 bytes each): **{} errors**, \
             all done in {:.2} s.\n",
            self.concurrent,
            self.concurrent_errors,
            self.concurrent_took.as_secs_f64()
        ));
        md.push_str(&format!(
            "- **{} handshakes**, full and resumed alternately, by {} side-by-side loops: \
             **{} errors**, {} resumed, {:.0} s ({:.0} handshakes/s).\n\n",
            self.total,
            Params::new(quick).workers,
            self.errors,
            self.resumed,
            self.took.as_secs_f64(),
            self.total as f64 / self.took.as_secs_f64().max(1e-9)
        ));
        if self.backend == "token" {
            md.push_str(&format!(
                "PKCS#11 module recycles during the run: {}, token key pairs they gave up: {}.\n\n",
                self.recycles.0, self.recycles.1
            ));
        }
        md.push_str("| handshakes | engine VmRSS (MiB) | CS VmRSS (MiB) |\n|---:|---:|---:|\n");
        for (n, e, c) in &self.samples {
            md.push_str(&format!("| {n} | {:.1} | {:.1} |\n", mib(*e), mib(*c)));
        }
        if let (Some(first), Some(last)) = (self.samples.get(1), self.samples.last()) {
            md.push_str(&format!(
                "\nFrom the first sample after start ({} handshakes) to the end: engine {:+.1} \
                 MiB, CS {:+.1} MiB.\n",
                first.0,
                mib(last.1) - mib(first.1),
                mib(last.2) - mib(first.2)
            ));
        }
        if !self.first_errors.is_empty() {
            md.push_str("\nFirst errors:\n");
            for e in &self.first_errors {
                md.push_str(&format!("- {e}\n"));
            }
        }
        md
    }
}
