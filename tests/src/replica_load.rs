//! A steady load of concurrent handshakes through one engine's [`CsPool`] over several
//! `lurk-cs` replicas, one of which is SIGKILLed mid-load ([`kill_under_load`]), and the
//! check that the kill cost only the handshakes in flight on it ([`KillRun::check`]).
//! `engine_cs_pool.rs` runs it on SQLite, `cs_replicas_sigkill.rs` on PostgreSQL.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lurk_engine::cs_pool::{CsPool, ReplicaStatus};
use lurk_engine::Connector;

use crate::{CsProcess, DevSetup};

/// Starts a replica of `setup` on `listen` with `env`. SoftHSM's C_Login on a shared token
/// fails now and then when processes log in together (tests/src/lurk.rs), so starts are
/// retried (callers start replicas one after the other).
pub fn start_replica(setup: &DevSetup, listen: &str, env: &[(&str, &str)]) -> CsProcess {
    let mut errors = Vec::new();
    for _ in 0..3 {
        match setup.try_start_on(listen, env) {
            Ok(cs) => return cs,
            Err(e) => errors.push(e),
        }
    }
    panic!("{}", errors.join("\n--- retry ---\n"))
}

/// A replica's log without terminal colour codes.
pub fn plain_log(cs: &CsProcess) -> String {
    let mut out = String::new();
    let mut rest = cs.log();
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = match rest[i..].find('m') {
            Some(j) => rest[i + j + 1..].to_owned(),
            None => String::new(),
        };
    }
    out.push_str(&rest);
    out
}

/// The pool's view of the replica listening on `addr`.
pub fn status_at<'a>(p: &'a [ReplicaStatus], addr: &str) -> &'a ReplicaStatus {
    p.iter()
        .find(|r| r.url.contains(addr))
        .unwrap_or_else(|| panic!("no replica {addr} in {p:#?}"))
}

/// One handshake of the load: when it started and ended, and its error.
pub struct Record {
    pub started: Instant,
    pub ended: Instant,
    pub result: Result<(), String>,
}

/// What a [`kill_under_load`] run saw.
pub struct KillRun {
    pub records: Vec<Record>,
    /// Just before the SIGKILL, and once the process was gone.
    pub kill_at: Instant,
    pub killed: Instant,
    pub victim_addr: String,
    /// The victim's log up to just before the kill.
    pub victim_log: String,
}

/// `workers` tasks on `rt` run `handshake` through `c` in a loop. Once `before` handshakes
/// ended, the victim (one of `c`'s pool replicas) must have served sessions; it is then
/// SIGKILLed (at a moment it has calls out, if one comes within a second), the load runs `after` more handshakes, stops, and the engine's background CS
/// work (ticket registrations, session closes) is waited for.
pub fn kill_under_load<H, F>(
    rt: &tokio::runtime::Runtime,
    c: &Connector,
    pool: &CsPool,
    victim: CsProcess,
    (workers, before, after): (usize, usize, usize),
    handshake: H,
) -> KillRun
where
    H: Fn(Connector) -> F + Clone + Send + 'static,
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let victim_addr = victim.addr.clone();
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (c, records, stop, done) = (c.clone(), records.clone(), stop.clone(), done.clone());
        let handshake = handshake.clone();
        tasks.push(rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = handshake(c.clone()).await;
                records.lock().unwrap().push(Record {
                    started,
                    ended: Instant::now(),
                    result,
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let wait_done = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "load stalled at {n}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_done(before);
    let st = pool.replicas();
    assert!(
        status_at(&st, &victim_addr).sessions > 0,
        "the victim got no session before the kill: {st:#?}"
    );
    // Killed while it has calls out, when it does within a second.
    let busy = Instant::now() + Duration::from_secs(1);
    while status_at(&pool.replicas(), &victim_addr).outstanding == 0 && Instant::now() < busy {
        std::thread::sleep(Duration::from_micros(200));
    }
    let victim_log = plain_log(&victim);
    let kill_at = Instant::now();
    victim.kill(); // SIGKILL, then waits for the process to be gone
    let killed = Instant::now();
    let after_kill = done.load(Ordering::Relaxed);
    wait_done(after_kill + after);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
        c.wait_for_cs(Duration::from_secs(5)).await;
    });
    let records = std::mem::take(&mut *records.lock().unwrap());
    KillRun {
        records,
        kill_at,
        killed,
        victim_addr,
        victim_log,
    }
}

impl KillRun {
    /// Prints the failed handshakes, and asserts that each one started before the victim was
    /// gone and failed naming it as the lost replica, and that at least `min_later`
    /// handshakes started after the kill (all of which succeeded, then). Returns the number
    /// of failures.
    pub fn check(&self, min_later: usize) -> usize {
        let v = &self.victim_addr;
        let failed: Vec<&Record> = self.records.iter().filter(|r| r.result.is_err()).collect();
        println!(
            "{} handshakes, {} failed (in flight on {v} when it was killed):",
            self.records.len(),
            failed.len()
        );
        for r in &failed {
            println!(
                "  started {:?} before the kill, ended {:?} after it: {}",
                self.kill_at.saturating_duration_since(r.started),
                r.ended.saturating_duration_since(self.kill_at),
                r.result.as_ref().unwrap_err()
            );
        }
        for r in &failed {
            let e = r.result.as_ref().unwrap_err();
            assert!(
                r.started < self.killed,
                "a handshake started after the kill failed: {e}"
            );
            assert!(
                e.contains(v.as_str()) && e.contains("lost the CS replica"),
                "a failure that does not name the lost replica: {e}"
            );
        }
        let later = self
            .records
            .iter()
            .filter(|r| r.started >= self.killed)
            .count();
        assert!(
            later >= min_later,
            "only {later} handshakes started after the kill"
        );
        failed.len()
    }
}
