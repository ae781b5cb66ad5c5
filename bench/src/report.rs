//! The figures of one run as markdown (BENCHMARKS.md) and SVG (docs/bench-*.svg).

use std::fmt::Write;
use std::time::Duration;

use crate::cs_inproc::{ExchangeFigures, RawToken, Samples};
use crate::handshake::{Cell, Mode, ServerKind};
use crate::svg;
use crate::sys::{ms, us, Lat};

/// `openssl s_time` figures: (server, mode, connections/s, CPU per connection).
pub(crate) type STime = (ServerKind, Mode, f64, Duration);

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) quick: bool,
    pub(crate) machine: Vec<(String, String)>,
    pub(crate) raw: Vec<RawToken>,
    pub(crate) exchanges: Vec<ExchangeFigures>,
    pub(crate) mem_handshakes: Option<(Samples, Duration)>,
    pub(crate) abandoned: Option<(Samples, usize, Duration, usize)>,
    pub(crate) cells: Vec<Cell>,
    pub(crate) s_time: Vec<STime>,
    /// The PostgreSQL store and replica rows (issue 8).
    pub(crate) pg: Option<crate::pg_scale::Figures>,
    pub(crate) notes: Vec<String>,
    /// Markdown sections of further benchmark modules, in order (each starts with `### `).
    pub(crate) sections: Vec<String>,
    /// Issue 10 targets measured by the client-authentication and delaying-relay rows.
    pub(crate) more_targets: Vec<Target>,
    pub(crate) took: Duration,
}

/// A target, what was measured, and whether it is met (None: not measurable in this run).
pub(crate) type Target = (String, String, Option<bool>);

const RUSTLS: &str = "rustls client";

fn lat_ms(l: &Lat) -> String {
    format!("{:.3} / {:.3} / {:.3}", ms(l.p50), ms(l.p90), ms(l.p99))
}

fn lat_us(l: &Lat) -> String {
    format!("{:.0} / {:.0} / {:.0}", us(l.p50), us(l.p90), us(l.p99))
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "n/a",
    }
}

impl Results {
    fn baseline(&self, server: ServerKind, mode: Mode) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.client == RUSTLS && c.server == server && c.mode == mode)
    }

    fn cell(&self, client_prefix: &str, server: ServerKind, mode: Mode) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.client.starts_with(client_prefix) && c.server == server && c.mode == mode)
    }

    fn tput(c: &Cell, conc: usize) -> Option<f64> {
        c.throughput.iter().find(|t| t.0 == conc).map(|t| t.1)
    }

    fn cpu_lurk(c: &Cell) -> Duration {
        c.cpu.client + c.cpu.cs.unwrap_or_default()
    }

    /// Issue 10's loopback targets (wall time against the rustls client, rustls server) and
    /// those the client-authentication and relay rows measured.
    fn targets_10(&self) -> Vec<Target> {
        let mut t = Vec::new();
        let server = ServerKind::Rustls;
        for (client, mode, label, bound) in [
            (
                "engine + CS (memory",
                Mode::Full,
                "full handshake, memory ephemerals",
                1.3,
            ),
            (
                "engine + CS (memory",
                Mode::Resumed,
                "resumed handshake, memory ephemerals",
                1.5,
            ),
            (
                "engine + CS (token",
                Mode::Full,
                "full handshake, token ephemerals",
                1.6,
            ),
        ] {
            if let (Some(c), Some(b)) =
                (self.cell(client, server, mode), self.baseline(server, mode))
            {
                let r = ms(c.lat.p50) / ms(b.lat.p50).max(1e-9);
                t.push((
                    format!("{label}, loopback: wall (p50) ≤ {bound}× rustls"),
                    format!(
                        "{:.3} ms vs {:.3} ms = {r:.2}×",
                        ms(c.lat.p50),
                        ms(b.lat.p50)
                    ),
                    Some(r <= bound),
                ));
            }
        }
        if let (Some(c), Some(b)) = (
            self.cell("engine + CS (memory", server, Mode::Full),
            self.baseline(server, Mode::Full),
        ) {
            let r = ms(Self::cpu_lurk(c)) / ms(b.cpu.client).max(1e-9);
            t.push((
                "full handshake, memory ephemerals: CPU (engine + CS) ≤ 2× rustls".into(),
                format!(
                    "{:.3} ms vs {:.3} ms = {r:.2}×",
                    ms(Self::cpu_lurk(c)),
                    ms(b.cpu.client)
                ),
                (!b.cpu.client.is_zero()).then_some(r <= 2.0),
            ));
        }
        t.extend(self.more_targets.iter().cloned());
        t
    }

    /// The targets with the measured figures.
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let mut t = Vec::new();
        let server = ServerKind::Rustls;
        for (client, label) in [
            ("engine + CS (memory", "memory"),
            ("engine + CS (token", "token"),
        ] {
            for mode in [Mode::Full, Mode::Resumed] {
                if let (Some(c), Some(b)) =
                    (self.cell(client, server, mode), self.baseline(server, mode))
                {
                    let r = ms(c.lat.p50) / ms(b.lat.p50).max(1e-9);
                    t.push((
                        format!(
                            "{} handshake wall (p50) ≤ 1.3× rustls, {label} ephemerals",
                            mode.name()
                        ),
                        format!(
                            "{:.3} ms vs {:.3} ms = {r:.2}×",
                            ms(c.lat.p50),
                            ms(b.lat.p50)
                        ),
                        Some(r <= 1.3),
                    ));
                }
            }
            if let (Some(c), Some(b)) = (
                self.cell(client, server, Mode::Full),
                self.baseline(server, Mode::Full),
            ) {
                let r = ms(Self::cpu_lurk(c)) / ms(b.cpu.client).max(1e-9);
                let ok = (!b.cpu.client.is_zero()).then_some(r <= 2.0);
                t.push((
                    format!("CPU per full handshake (engine + CS) ≤ 2× rustls, {label} ephemerals"),
                    format!(
                        "{:.3} ms vs {:.3} ms = {r:.2}×",
                        ms(Self::cpu_lurk(c)),
                        ms(b.cpu.client)
                    ),
                    ok,
                ));
                if let (Some(one), Some(many)) = (Self::tput(c, 1), Self::tput(c, 64)) {
                    let r = many / one.max(1e-9);
                    t.push((
                        format!("throughput at 64 concurrent ≥ 1.8× one stream, {label} ephemerals (full)"),
                        format!("{many:.0}/s vs {one:.0}/s = {r:.2}×"),
                        Some(r >= 1.8),
                    ));
                }
            }
        }
        if let Some(m) = self.exchanges.iter().find(|e| e.backend == "memory") {
            t.push((
                "CS full-handshake exchange sets per second per core, memory ephemerals ≥ 5,000"
                    .into(),
                format!("{:.0}/s", m.sets_per_core_s),
                Some(m.sets_per_core_s >= 5000.0),
            ));
        }
        if let (Some(tk), Some(raw)) = (
            self.exchanges.iter().find(|e| e.backend == "token"),
            self.raw.iter().find(|r| r.group == "x25519"),
        ) {
            let r = tk.sets_per_core_s / raw.per_s.max(1e-9);
            t.push((
                "CS exchange sets with token ephemerals ≥ 80% of SoftHSM's own keygen+derive+destroy rate (x25519)".into(),
                format!("{:.0}/s vs {:.0}/s = {:.0}%", tk.sets_per_core_s, raw.per_s, r * 100.0),
                Some(r >= 0.8),
            ));
        }
        if let Some((s, _)) = &self.mem_handshakes {
            if let Some(g) = growth_after_warmup(s) {
                t.push((
                    "CS memory flat over 100k handshakes".into(),
                    format!(
                        "{:+.1} MiB from 10% to the end of the run ({} handshakes)",
                        g,
                        s.last().map_or(0, |x| x.0)
                    ),
                    Some(g.abs() < 8.0),
                ));
            }
        }
        if let Some((s, _, _, max)) = &self.abandoned {
            if let Some(g) = plateau_growth(s, *max) {
                t.push((
                    "CS memory bounded under abandoned sessions".into(),
                    format!(
                        "{:+.1} MiB after the table filled ({} sessions max, {} requests)",
                        g,
                        max,
                        s.last().map_or(0, |x| x.0)
                    ),
                    Some(g.abs() < 8.0),
                ));
            }
        }
        t
    }

    pub(crate) fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Figures from one run of `lurk-bench{}` ({:.0} s), {}.\n",
            if self.quick { " --quick" } else { "" },
            self.took.as_secs_f64(),
            if self.quick {
                "quick mode: small counts, figures indicative only"
            } else {
                "all on this machine, in this run"
            }
        );
        s.push_str("### Machine\n\n| | |\n|---|---|\n");
        for (k, v) in &self.machine {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s.push_str("\n### Targets (issue 10)\n\n| target | measured | |\n|---|---|---|\n");
        for (what, got, ok) in self.targets_10() {
            let _ = writeln!(s, "| {what} | {got} | {} |", verdict(ok));
        }
        s.push_str("\n### Targets (issue 4)\n\n| target | measured | |\n|---|---|---|\n");
        for (what, got, ok) in self.targets() {
            let _ = writeln!(s, "| {what} | {got} | {} |", verdict(ok));
        }
        s.push_str(
            "\n### Handshakes over loopback\n\n\
             Each connection: TCP connect (TCP_NODELAY), TLS 1.3 handshake (TLS_AES_128_GCM_SHA256, \
             x25519, server ECDSA P-256 certificate verified), `GET /index.txt` (256-byte body), \
             response read to EOF. Latency at concurrency 1 (p50 / p90 / p99); connections per \
             second at 1, 8 and 64 concurrent connections (one client process, two tokio workers); \
             CPU per connection of each process from /proc/<pid>/stat (utime+stime; the client is \
             this process). Ratios are to the rustls client against the same server in the same \
             mode. Resumed: each connection offers a ticket from an earlier one.\n\n",
        );
        s.push_str("| server | client | mode | latency ms p50/p90/p99 | ×rustls p50 | conn/s @1 | @8 | @64 | @64/@1 | CPU ms client | CS | server | (client+CS) ×rustls | resumed | n | failed | LURK exchanges | CS round trips before the handshake ends |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for c in &self.cells {
            let b = self.baseline(c.server, c.mode);
            let ratio = b.map_or("".into(), |b| {
                format!("{:.2}×", ms(c.lat.p50) / ms(b.lat.p50).max(1e-9))
            });
            let cpu_ratio = b
                .filter(|b| !b.cpu.client.is_zero())
                .map_or("".into(), |b| {
                    format!("{:.2}×", ms(Self::cpu_lurk(c)) / ms(b.cpu.client))
                });
            let tp = |n| Self::tput(c, n).map_or("".into(), |v| format!("{v:.0}"));
            let scale = match (Self::tput(c, 1), Self::tput(c, 64)) {
                (Some(a), Some(b)) => format!("{:.2}×", b / a.max(1e-9)),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {} | {:.3} | {} | {:.0}% | {} | {} | {} | {} |",
                c.server.name(),
                c.client,
                c.mode.name(),
                lat_ms(&c.lat),
                ratio,
                tp(1),
                tp(8),
                tp(64),
                scale,
                ms(c.cpu.client),
                c.cpu.cs.map_or("".into(), |d| format!("{:.3}", ms(d))),
                ms(c.cpu.server),
                cpu_ratio,
                c.resumed_share * 100.0,
                c.lat.n,
                c.errors,
                if c.exchanges.is_empty() { "—".into() } else { c.exchanges.join(", ") },
                if c.client == RUSTLS { "—".into() } else { c.critical.to_string() }
            );
        }
        if !self.s_time.is_empty() {
            s.push_str("\n`openssl s_time` (one connection at a time, `-new` = full, `-reuse` = resumed; its own GET of the same file):\n\n| server | mode | conn/s | ms per connection | CPU ms per connection (s_time) |\n|---|---|---|---|---|\n");
            for (server, mode, rate, cpu) in &self.s_time {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.3} | {:.3} |",
                    server.name(),
                    mode.name(),
                    rate,
                    1000.0 / rate.max(1e-9),
                    ms(*cpu)
                );
            }
        }
        s.push_str(
            "\n### Crypto Service in-process (no network)\n\n\
             `lurk_cs::ops::*::handle` called directly on a `Cs` built from an `init-dev` set-up \
             (SoftHSM token, SQLite store); a server simulator answers each completed ClientHello \
             with valid ServerHello / EncryptedExtensions / Certificate / CertificateVerify / \
             Finished bytes. One exchange set = c_init_client_hello + c_server_hello + \
             c_client_finished (last_exchange). Only time inside `handle` counts for the per-core \
             rate (one thread); the two-thread rate is wall clock and includes the simulator.\n\n\
             | ephemerals | sets | c_init_client_hello µs p50/p90/p99 | c_server_hello | c_client_finished | set | sets/s per core | sets/s, 2 threads (wall) |\n|---|---|---|---|---|---|---|---|\n",
        );
        for e in &self.exchanges {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
                e.backend,
                e.sets,
                lat_us(&e.init),
                lat_us(&e.server_hello),
                lat_us(&e.finished),
                lat_us(&e.set),
                e.sets_per_core_s,
                e.sets_two_threads_wall_s
            );
        }
        s.push_str("\nSoftHSM alone, through `lurk_cs::token::Token` (generate_ephemeral, then derive_ephemeral which derives, reads the secret and destroys the three objects), one thread. RSS growth: this process's VmRSS after the loops minus before, per loop (SoftHSM 2.6 keeps every destroyed session object's shell until `C_Finalize`):\n\n| group | loops | keygen µs p50/p90/p99 | derive+destroy µs p50/p90/p99 | loops/s | RSS growth, bytes per loop |\n|---|---|---|---|---|---|\n");
        for r in &self.raw {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.0} |",
                r.group,
                r.n,
                lat_us(&r.keygen),
                lat_us(&r.derive_destroy),
                r.per_s,
                r.rss_per_loop
            );
        }
        s.push_str("\n### Crypto Service memory\n\nRun in-process (the CS's code in this process, so RSS is this process's, CS and simulator together), memory ephemerals, two threads.\n\n");
        if let Some((samples, took)) = &self.mem_handshakes {
            let _ = writeln!(
                s,
                "Full handshakes ({:.1} s): {}\n",
                took.as_secs_f64(),
                samples_line(samples)
            );
        }
        if let Some((samples, refused, took, max)) = &self.abandoned {
            let _ = writeln!(
                s,
                "Abandoned `c_init_client_hello` sessions (never followed up; `[sessions] max` = {max}, four engine identities; {refused} refused with too_many_sessions; {:.1} s; {:.0} requests/s once the table was full): {}\n",
                took.as_secs_f64(),
                full_rate(samples, *max),
                samples_line(samples)
            );
        }
        if let Some(pg) = &self.pg {
            s.push_str(&pg.markdown());
            s.push('\n');
        }
        for section in &self.sections {
            s.push_str(section);
            s.push('\n');
        }
        if !self.notes.is_empty() {
            s.push_str("### Run notes\n\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
            s.push('\n');
        }
        s.push_str("Plots: `docs/bench-handshake.svg`, `docs/bench-cs.svg`, `docs/bench-memory.svg`.\n\n![handshakes](docs/bench-handshake.svg)\n\n![CS](docs/bench-cs.svg)\n\n![memory](docs/bench-memory.svg)\n");
        s
    }

    pub(crate) fn svgs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut items = Vec::new();
        for c in &self.cells {
            let colour = if c.client == RUSTLS {
                0
            } else if c.client.contains("memory") {
                2
            } else {
                3
            };
            let b = self.baseline(c.server, c.mode);
            let note = b.map_or(String::new(), |b| {
                format!("({:.2}× rustls)", ms(c.lat.p50) / ms(b.lat.p50).max(1e-9))
            });
            items.push((
                format!("{} · {} · {}", c.server.name(), c.mode.name(), c.client),
                ms(c.lat.p50),
                colour,
                note,
            ));
        }
        out.push((
            "bench-handshake.svg",
            svg::bars(
                "Connection latency p50 (handshake + GET), concurrency 1",
                "ms",
                &items,
            ),
        ));
        let mut items = Vec::new();
        for e in &self.exchanges {
            items.push((
                format!("CS exchange sets, {} ephemerals", e.backend),
                e.sets_per_core_s,
                if e.backend == "memory" { 2 } else { 3 },
                String::new(),
            ));
        }
        for r in &self.raw {
            items.push((
                format!("SoftHSM keygen+derive+destroy, {}", r.group),
                r.per_s,
                1,
                String::new(),
            ));
        }
        out.push((
            "bench-cs.svg",
            svg::bars("Crypto Service, in-process, one core", "/s", &items),
        ));
        let mut series = Vec::new();
        if let Some((s, _)) = &self.mem_handshakes {
            series.push((
                "full handshakes".to_owned(),
                s.iter()
                    .map(|x| (x.0 as f64, x.1 as f64 / 1024.0))
                    .collect(),
            ));
        }
        if let Some((s, _, _, _)) = &self.abandoned {
            series.push((
                "abandoned c_init_client_hello".to_owned(),
                s.iter()
                    .map(|x| (x.0 as f64, x.1 as f64 / 1024.0))
                    .collect(),
            ));
        }
        out.push((
            "bench-memory.svg",
            svg::lines(
                "CS process RSS (in-process run)",
                "requests",
                "RSS (MiB)",
                &series,
            ),
        ));
        out
    }
}

fn samples_line(s: &Samples) -> String {
    s.iter()
        .map(|(n, rss, sessions, t)| {
            format!(
                "{n}: {:.1} MiB ({sessions} sessions, {t:.1} s)",
                *rss as f64 / 1024.0
            )
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// Requests per second after the table filled.
fn full_rate(s: &Samples, max: usize) -> f64 {
    match (s.iter().find(|x| x.2 >= max), s.last()) {
        (Some(a), Some(b)) if b.3 > a.3 => (b.0 - a.0) as f64 / (b.3 - a.3),
        _ => 0.0,
    }
}

/// RSS growth (MiB) from the sample at 10% of the run to the last one.
fn growth_after_warmup(s: &Samples) -> Option<f64> {
    let last = s.last()?;
    let from = s.iter().find(|x| x.0 * 10 >= last.0 && x.0 > 0)?;
    Some((last.1 as f64 - from.1 as f64) / 1024.0)
}

/// RSS growth (MiB) from the first sample where the table was full to the last one.
fn plateau_growth(s: &Samples, max: usize) -> Option<f64> {
    let last = s.last()?;
    let from = s.iter().find(|x| x.2 >= max)?;
    Some((last.1 as f64 - from.1 as f64) / 1024.0)
}
