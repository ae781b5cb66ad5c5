//! The CS on a Unix-domain socket (`[listen.unix]`) against the same CS over loopback TCP
//! with mTLS: one `lurk-cs` process serving both, the engine reaching it one way or the
//! other, against the rustls server. What a round trip costs without TCP and TLS.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::handshake::{self, Mode, Pki};
use crate::sys::{ms, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Row {
    transport: &'static str,
    mode: Mode,
    lat: Lat,
    cpu: handshake::CpuPer,
    critical: usize,
    errors: usize,
}

/// Starts a memory-ephemerals CS with a Unix socket mapping this process's uid to the dev
/// engine identity (the mTLS certificate's CN), and measures both transports.
pub(crate) async fn run(
    dev: &Path,
    pki: &Pki,
    server: (u16, u32),
    n: usize,
    budget: Duration,
) -> Result<(String, Vec<String>), BoxError> {
    let sock = dev.join("bench-cs.sock");
    let uid = std::fs::metadata("/proc/self")?.uid();
    let mut cfg = std::fs::read_to_string(dev.join("lurk-cs.toml"))?;
    let _ = write!(
        cfg,
        "\n[listen.unix]\npath = {:?}\n[[listen.unix.engines]]\nuid = {uid}\nengine = \"engine-dev\"\n",
        sock.to_str().ok_or("non-UTF-8 path")?
    );
    let config = dev.join("lurk-cs-unix.toml");
    std::fs::write(&config, cfg)?;
    let (cs, tcp_url) = handshake::start_cs_with(dev, &config, "memory", &[])?;
    let unix_url = format!("unix:{}", sock.display());
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for mode in [Mode::Full, Mode::Resumed] {
        for (transport, url) in [("TCP + mTLS", &tcp_url), ("Unix socket", &unix_url)] {
            crate::step(&format!("CS over {transport} · {}", mode.name()));
            let client = handshake::engine_client(dev, url, pki, mode)?;
            match handshake::latency(&client, server.0, server.1, Some(cs.pid()), n, budget).await {
                Ok((lat, cpu, _, _, errors, critical)) => rows.push(Row {
                    transport,
                    mode,
                    lat,
                    cpu,
                    critical,
                    errors,
                }),
                Err(e) => notes.push(format!("CS over {transport} ({}): {e}", mode.name())),
            }
        }
    }
    drop(cs);
    Ok((markdown(&rows), notes))
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "### The CS over a Unix-domain socket\n\n\
         One `lurk-cs` (memory ephemerals) listening on loopback TCP (mTLS) and on a Unix \
         socket (`[listen.unix]`, the engine named by its uid); the engine reaches it one way \
         or the other, against the rustls server, concurrency 1. Per CS round trip: the \
         difference of the p50s divided by the round trips.\n\n\
         | mode | CS transport | latency ms p50/p90/p99 | CPU ms engine | CS | CS round trips before the handshake ends | per round trip vs TCP ms | n | failed |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.mode == r.mode && b.transport == "TCP + mTLS");
        let gain = base
            .filter(|b| b.transport != r.transport && r.critical > 0)
            .map_or(String::new(), |b| {
                format!(
                    "{:+.3}",
                    (ms(r.lat.p50) - ms(b.lat.p50)) / r.critical as f64
                )
            });
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} / {:.3} / {:.3} | {:.3} | {} | {} | {} | {} | {} |",
            r.mode.name(),
            r.transport,
            ms(r.lat.p50),
            ms(r.lat.p90),
            ms(r.lat.p99),
            ms(r.cpu.client),
            r.cpu.cs.map_or(String::new(), |d| format!("{:.3}", ms(d))),
            r.critical,
            gain,
            r.lat.n,
            r.errors
        );
    }
    s
}
