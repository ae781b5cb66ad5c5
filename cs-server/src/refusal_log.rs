//! Refusals are logged at info, but an engine that sends refused requests in a loop must not
//! flood the log (nor the disk under it): each engine gets at most [`BURST`] lines per
//! [`INTERVAL`]; the refusals beyond are counted, and the count is logged with the engine's
//! next logged refusal. Memory is bounded: at most [`MAX_ENGINES`] engines are tracked,
//! the others share one entry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refusal lines logged per engine per interval.
pub const BURST: u32 = 10;
/// The interval.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Engines tracked at once.
pub const MAX_ENGINES: usize = 1024;
/// The entry engines share once [`MAX_ENGINES`] are tracked.
const OTHERS: &str = "(other engines)";

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` refusals of this engine were not logged before it; `last`: the
    /// next ones of this interval are only counted.
    Log {
        /// Refusals of this engine counted but not logged since its last line.
        suppressed: u64,
        /// This is the interval's last logged line for the engine.
        last: bool,
    },
    /// Count it only.
    Suppress,
}

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Per-engine refusal log limiter.
pub struct RefusalLog {
    burst: u32,
    interval: Duration,
    engines: Mutex<HashMap<String, Window>>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new(BURST, INTERVAL)
    }
}

impl RefusalLog {
    /// Logs at most `burst` refusals per engine per `interval` (at least 1); the others are
    /// counted.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst: burst.max(1),
            interval,
            engines: Mutex::new(HashMap::new()),
        }
    }

    /// Notes one refusal of `engine` now.
    pub fn note(&self, engine: &str) -> Verdict {
        self.note_at(engine, Instant::now())
    }

    fn note_at(&self, engine: &str, now: Instant) -> Verdict {
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if !engines.contains_key(engine) && engines.len() >= MAX_ENGINES {
            let interval = self.interval;
            engines.retain(|_, w| now.duration_since(w.start) < interval || w.suppressed > 0);
        }
        let key = if engines.contains_key(engine) || engines.len() < MAX_ENGINES {
            engine
        } else {
            OTHERS
        };
        let w = engines.entry(key.to_owned()).or_insert(Window {
            start: now,
            logged: 0,
            suppressed: 0,
        });
        let mut suppressed = 0;
        if now.duration_since(w.start) >= self.interval {
            suppressed = std::mem::take(&mut w.suppressed);
            w.start = now;
            w.logged = 0;
        }
        if w.logged >= self.burst {
            w.suppressed += 1;
            return Verdict::Suppress;
        }
        w.logged += 1;
        Verdict::Log {
            suppressed,
            last: w.logged == self.burst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_engine_per_interval_then_a_count() {
        let log = RefusalLog::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let log_line = |suppressed, last| Verdict::Log { suppressed, last };
        assert_eq!(log.note_at("a", t0), log_line(0, false));
        assert_eq!(log.note_at("a", t0), log_line(0, false));
        assert_eq!(log.note_at("a", t0), log_line(0, true));
        for _ in 0..100 {
            assert_eq!(log.note_at("a", t0), Verdict::Suppress);
        }
        // Another engine is logged meanwhile.
        assert_eq!(log.note_at("b", t0), log_line(0, false));
        // Next interval: the count comes with the first line.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(log.note_at("a", t1), log_line(100, false));
        assert_eq!(log.note_at("a", t1), log_line(0, false));
    }

    #[test]
    fn memory_is_bounded_in_engines() {
        let log = RefusalLog::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..MAX_ENGINES + 50 {
            log.note_at(&format!("engine-{i}"), t0);
        }
        assert!(log.engines.lock().unwrap().len() <= MAX_ENGINES + 1);
        // Past the interval, finished windows make room again.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(
            log.note_at("new", t1),
            Verdict::Log {
                suppressed: 0,
                last: true
            }
        );
        assert!(log.engines.lock().unwrap().contains_key("new"));
    }
}
