//! What the OS accounts for: CPU time of a process (`/proc/<pid>/stat` utime+stime, and
//! cutime+cstime for reaped children), resident memory (`/proc/<pid>/status` VmRSS), the
//! machine's description, free loopback ports and percentiles.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> u64 {
    static T: OnceLock<u64> = OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 = index 0).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(
        after
            .split_whitespace()
            .map(|f| f.parse::<i64>().unwrap_or(0).max(0) as u64)
            .collect(),
    )
}

fn ticks(t: u64) -> Duration {
    Duration::from_nanos(t * 1_000_000_000 / clk_tck())
}

/// User + system CPU time of a process (zero if it is gone).
pub(crate) fn cpu_of(pid: u32) -> Duration {
    stat_fields(&pid.to_string()).map_or(Duration::ZERO, |f| ticks(f[11] + f[12]))
}

/// User + system CPU time of this process (same accounting as getrusage(RUSAGE_SELF)).
pub(crate) fn cpu_self() -> Duration {
    stat_fields("self").map_or(Duration::ZERO, |f| ticks(f[11] + f[12]))
}

/// CPU time of this process's reaped children (getrusage(RUSAGE_CHILDREN)).
pub(crate) fn cpu_children() -> Duration {
    stat_fields("self").map_or(Duration::ZERO, |f| ticks(f[13] + f[14]))
}

/// Resident set size in KiB.
pub(crate) fn rss_kib(pid: Option<u32>) -> u64 {
    let p = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
    std::fs::read_to_string(format!("/proc/{p}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A free loopback TCP port below 32768 (above it the kernel hands out ephemeral ports).
pub(crate) fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 21000 + (std::process::id() % 4000) as u16 * 2;
    for _ in 0..10_000 {
        let off = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = start + off % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in 21000..32768");
}

/// The p-th percentile (0..=100) of `sorted` (nearest rank).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary of a sample.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lat {
    pub(crate) p50: Duration,
    pub(crate) p90: Duration,
    pub(crate) p99: Duration,
    pub(crate) n: usize,
}

impl Lat {
    pub(crate) fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Self {
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            n: v.len(),
        }
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            if s.trim().is_empty() {
                s = String::from_utf8_lossy(&o.stderr).into_owned();
            }
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The machine, as BENCHMARKS.md describes it.
pub(crate) fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let mhz = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or_else(|| "?".into(), |k| format!("{} MiB", k / 1024));
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("unknown")
        .trim_matches('"')
        .to_owned();
    vec![
        ("CPU".into(), format!("{model} ({mhz} MHz)")),
        ("cores".into(), cores.to_string()),
        ("memory".into(), mem),
        ("OS".into(), os),
        ("kernel".into(), kernel),
        (
            "SoftHSM".into(),
            first_line("softhsm2-util", &["--version"]),
        ),
        ("OpenSSL".into(), first_line("openssl", &["version"])),
        ("rustc".into(), first_line("rustc", &["--version"])),
        (
            "build".into(),
            if cfg!(debug_assertions) {
                "debug (dependencies at opt-level 2)".into()
            } else {
                "release".into()
            },
        ),
    ]
}

/// A binary of this workspace, next to the running one (`target/<profile>/NAME`).
pub(crate) fn sibling_bin(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join(name),
        dir.parent().map(Path::to_path_buf)?.join(name),
    ]
    .into_iter()
    .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_accounting_work() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Lat::of(v);
        assert_eq!(l.p50, Duration::from_millis(50));
        assert_eq!(l.p99, Duration::from_millis(99));
        assert!(rss_kib(None) > 0);
        let _ = cpu_self();
        assert!(free_port() < 32768);
    }
}
