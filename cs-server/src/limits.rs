//! Fairness limits that do not belong to the transport: the exchanges one engine may have on
//! the blocking pool (token, store) at once, and the descriptor budget the connection cap is
//! derived from. The transport limits themselves live in `transport.rs`; all of them are
//! configured in `[limits]` (`config.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;
use crate::error::ServiceError;

/// Per-engine cap on blocking exchanges running at once, with a bounded queue behind it:
/// one engine cannot take every blocking thread or token session from the others. Beyond
/// the queue an exchange is refused at once ([`ServiceError::Overloaded`]).
#[derive(Debug)]
pub struct ExchangeLimiter {
    running: usize,
    queued: usize,
    engines: Mutex<HashMap<String, Arc<EngineSlots>>>,
}

#[derive(Debug)]
struct EngineSlots {
    running: Arc<Semaphore>,
    /// Exchanges waiting for a running slot (guarded by the `engines` lock).
    waiting: Mutex<usize>,
}

/// A running (or queued) exchange's slot; released on drop.
#[derive(Debug)]
pub struct ExchangeSlot {
    limiter: Arc<ExchangeLimiter>,
    engine: String,
    slots: Option<Arc<EngineSlots>>,
    permit: Option<OwnedSemaphorePermit>,
    queued: bool,
}

impl ExchangeLimiter {
    /// At most `running` exchanges of one engine at once (at least 1) and `queued` more
    /// waiting; past that an exchange is refused with `too_many_requests`.
    pub fn new(running: usize, queued: usize) -> Arc<Self> {
        Arc::new(Self {
            running: running.max(1),
            queued,
            engines: Mutex::new(HashMap::new()),
        })
    }

    /// From `[limits] max_exchanges_per_engine` and `max_queued_exchanges_per_engine`.
    pub fn from_config(limits: &LimitsConfig) -> Arc<Self> {
        Self::new(
            limits.max_exchanges_per_engine,
            limits.max_queued_exchanges_per_engine,
        )
    }

    /// A running slot for `engine`: at once if one is free, after waiting if the queue has
    /// room, else refused. The wait is bounded by the request timeout (the caller's future
    /// is dropped then, and its place in the queue with it).
    pub async fn acquire(self: &Arc<Self>, engine: &str) -> Result<ExchangeSlot, ServiceError> {
        let slots = {
            let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
            engines
                .entry(engine.to_owned())
                .or_insert_with(|| {
                    Arc::new(EngineSlots {
                        running: Arc::new(Semaphore::new(self.running)),
                        waiting: Mutex::new(0),
                    })
                })
                .clone()
        };
        // Only the slot holds this engine's `EngineSlots` (besides the map): its drop can
        // tell whether the engine is still in use.
        let running = slots.running.clone();
        let mut slot = ExchangeSlot {
            limiter: self.clone(),
            engine: engine.to_owned(),
            slots: Some(slots),
            permit: None,
            queued: false,
        };
        if let Ok(p) = running.clone().try_acquire_owned() {
            slot.permit = Some(p);
            return Ok(slot);
        }
        if let Some(s) = &slot.slots {
            let mut waiting = s.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if *waiting >= self.queued {
                drop(waiting);
                return Err(ServiceError::Overloaded {
                    limit: "exchanges per engine (running + queued)",
                    cap: self.running + self.queued,
                });
            }
            *waiting += 1;
            slot.queued = true;
        }
        let permit = running
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Internal("exchange limiter closed".into()))?;
        slot.leave_queue();
        slot.permit = Some(permit);
        Ok(slot)
    }

    /// Engines with a running or queued exchange (tests).
    pub fn engines_tracked(&self) -> usize {
        self.engines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    fn waiting(&self, engine: &str) -> usize {
        let engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        engines
            .get(engine)
            .map_or(0, |s| *s.waiting.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ExchangeSlot {
    fn leave_queue(&mut self) {
        if std::mem::take(&mut self.queued) {
            if let Some(s) = &self.slots {
                let mut waiting = s.waiting.lock().unwrap_or_else(|e| e.into_inner());
                *waiting = waiting.saturating_sub(1);
            }
        }
    }
}

impl Drop for ExchangeSlot {
    fn drop(&mut self) {
        self.leave_queue();
        self.permit.take();
        // Forget an engine once nothing of it is running or queued (the map would otherwise
        // grow with every name a plaintext listener's header makes up).
        let mut engines = self
            .limiter
            .engines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let slots = self.slots.take();
        if let Some(s) = slots {
            // The map's reference and ours: nobody else holds this engine's slots.
            if Arc::strong_count(&s) == 2 {
                engines.remove(&self.engine);
            }
        }
    }
}

/// Descriptors kept for everything that is not an engine connection: stdio, the runtime,
/// the listener, SQLite and its journal, the PKCS#11 module's files.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Connection cap when `[limits] max_connections = 0` and the descriptor limit is high.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Assumed descriptor limit when `/proc/self/limits` cannot be read (the usual soft limit).
const ASSUMED_NOFILE: u64 = 1024;

/// The soft RLIMIT_NOFILE of this process, from `/proc/self/limits` (Linux); `None` if
/// unlimited or unreadable.
pub fn descriptor_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_nofile(&text)
}

fn parse_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// The connections the descriptor budget allows: the soft limit less the reserve (at most
/// half of it), at least 1.
pub fn connection_budget(nofile: Option<u64>) -> usize {
    let n = nofile.unwrap_or(ASSUMED_NOFILE);
    let budget = n.saturating_sub(RESERVED_DESCRIPTORS.min(n / 2)).max(1);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// The connection cap: `configured` (0 = [`DEFAULT_MAX_CONNECTIONS`]), never above the
/// descriptor budget: past it, accept() would fail with EMFILE.
pub fn connection_cap(configured: usize, nofile: Option<u64>) -> usize {
    let budget = connection_budget(nofile);
    let wanted = if configured == 0 {
        DEFAULT_MAX_CONNECTIONS
    } else {
        configured
    };
    if wanted > budget && configured != 0 {
        tracing::warn!(
            configured,
            budget,
            "limits.max_connections exceeds the descriptor budget (RLIMIT_NOFILE): capped; \
             raise LimitNOFILE="
        );
    }
    wanted.min(budget)
}

/// A warning that is logged at most once per period, with the number of events since the
/// last line: a flood of refusals does not become a flood of log lines.
#[derive(Debug)]
pub struct RateLimitedWarn {
    period: Duration,
    start: Instant,
    /// Milliseconds since `start` of the next allowed line.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarn {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events since the last line)` if a line may be logged now.
    pub fn check(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(period),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed) + 1)
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_engine_beyond_its_running_and_queued_exchanges_is_refused() {
        let limiter = ExchangeLimiter::new(2, 1);
        let a1 = limiter.acquire("a").await.unwrap();
        let _a2 = limiter.acquire("a").await.unwrap();
        // The third waits in the queue; the fourth is refused at once.
        let l = limiter.clone();
        let queued = tokio::spawn(async move { l.acquire("a").await.map(|_| ()) });
        tokio::task::yield_now().await;
        while limiter.waiting("a") == 0 {
            tokio::task::yield_now().await;
        }
        let err = limiter.acquire("a").await.unwrap_err();
        assert!(
            matches!(err, ServiceError::Overloaded { cap: 3, .. }),
            "{err}"
        );
        // Another engine has its own slots.
        let _b = limiter.acquire("b").await.unwrap();
        // A slot freed lets the queued one run.
        drop(a1);
        queued.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn engines_are_forgotten_when_idle() {
        let limiter = ExchangeLimiter::new(1, 0);
        for i in 0..100 {
            let s = limiter.acquire(&format!("engine-{i}")).await.unwrap();
            drop(s);
        }
        assert_eq!(limiter.engines_tracked(), 0);
        // A cancelled wait leaves nothing behind either.
        let held = limiter.acquire("x").await.unwrap();
        let l = ExchangeLimiter::new(1, 1);
        let h = l.acquire("y").await.unwrap();
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire("y").await.map(|_| ()) });
        while l.waiting("y") == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        drop(h);
        drop(held);
        assert_eq!(l.engines_tracked(), 0);
        assert_eq!(limiter.engines_tracked(), 0);
    }

    #[test]
    fn the_connection_cap_stays_within_the_descriptor_budget() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_nofile(limits), Some(1024));
        assert_eq!(
            parse_nofile("Max open files  unlimited unlimited files"),
            None
        );
        assert_eq!(connection_budget(Some(1024)), 960);
        assert_eq!(connection_budget(Some(128)), 64);
        assert_eq!(connection_budget(Some(2)), 1);
        assert_eq!(connection_cap(0, Some(1024)), 960);
        assert_eq!(connection_cap(0, Some(1 << 20)), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(connection_cap(100_000, Some(65_536)), 65_472);
        assert_eq!(connection_cap(10, Some(65_536)), 10);
        assert!(descriptor_limit().is_some());
    }

    #[test]
    fn rate_limited_warnings_count_what_they_suppress() {
        let w = RateLimitedWarn::new(Duration::from_secs(3600));
        assert_eq!(w.check(), Some(1));
        assert_eq!(w.check(), None);
        assert_eq!(w.check(), None);
        let w = RateLimitedWarn::new(Duration::ZERO);
        assert_eq!(w.check(), Some(1));
    }
}
