//! Coverage-guided fuzzing with AFL++ on the stable toolchain (FUZZING.md). One binary for
//! every target:
//!
//! - `lurk-fuzz TARGET` — the fuzzed program (AFL++ feeds it); TARGET is one of [`targets`]:
//!   each wire view, the flight splitter, the deframer and the joiner (`wire`); the engine
//!   connection in each state (`conn`); each CS operation (`csops`);
//! - `lurk-fuzz seeds DIR` — writes the seed corpus, `DIR/TARGET/*`;
//! - `lurk-fuzz replay TARGET FILE...` — runs inputs once;
//! - `lurk-fuzz list` — the targets, one per line;
//! - `lurk-fuzz setup DIR` — the CS set-up (init-dev; run by the targets themselves).
//!
//! Errors are expected; a panic (including an overflow: the lurk crates are built with
//! overflow checks and debug assertions) or a broken invariant is a crash.
#![forbid(unsafe_code)]

mod conn;
mod csops;
mod fixture;
mod scenario;
mod seeds;
mod server;
mod wire;

use std::path::Path;

/// Every target: the wire ones, then the connection and CS ones.
pub fn targets() -> Vec<&'static str> {
    let mut t = wire::TARGETS.to_vec();
    t.extend([
        "conn_server_hello",
        "conn_server_flight",
        "conn_established",
    ]);
    t.extend(seeds::OPS.iter().map(|(name, _)| *name));
    t.push("cs_capabilities");
    t
}

/// Whether the target uses the CS (its set-up must exist before the fuzz loop).
fn needs_cs(target: &str) -> bool {
    target.starts_with("conn_") || target.starts_with("cs_")
}

pub fn run(target: &str, data: &[u8]) {
    match target {
        "conn_server_hello" => conn::server_hello(data),
        "conn_server_flight" => conn::server_flight(data),
        "conn_established" => conn::established(data),
        "cs_capabilities" => csops::capabilities(data),
        t if t.starts_with("cs_") => {
            let op = seeds::OPS
                .iter()
                .find(|(name, _)| *name == t)
                .map(|(_, op)| *op)
                .unwrap_or_else(|| panic!("unknown target {t}"));
            csops::run(op, data)
        }
        t => wire::run(t, data),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let all = targets();
    match args.get(1).map(String::as_str) {
        Some("list") => all.iter().for_each(|t| println!("{t}")),
        Some("setup") if args.len() == 3 => fixture::setup(Path::new(&args[2])),
        Some("seeds") if args.len() == 3 => {
            let dir = Path::new(&args[2]);
            wire::write_seeds(dir).expect("write the seeds");
            seeds::write_seeds(dir).expect("write the seeds");
        }
        Some("replay") if args.len() >= 3 && all.contains(&args[2].as_str()) => {
            for f in &args[3..] {
                let data = std::fs::read(f).expect("read an input");
                run(&args[2], &data);
                println!("{f}: ok");
            }
        }
        Some(t) if all.contains(&t) => {
            let target = t.to_owned();
            // afl-fuzz starts its target in a session of its own (setsid), hence in a
            // scheduler autogroup of its own, which `nice` on the campaign does not reach:
            // `scripts/fuzz.sh long` sets this group's nice through this variable.
            if let Ok(nice) = std::env::var("LURK_FUZZ_AUTOGROUP_NICE") {
                // Best effort: without autogroups (or /proc) the file is absent.
                let _ = std::fs::write("/proc/self/autogroup", nice);
            }
            if needs_cs(&target) {
                // Before AFL++ forks: the set-up, made by a child process.
                fixture::ensure_setup();
            }
            afl::fuzz!(|data: &[u8]| {
                run(&target, data);
            });
        }
        _ => {
            eprintln!(
                "usage: lurk-fuzz TARGET | list | seeds DIR | replay TARGET FILE... | setup DIR\ntargets: {}",
                all.join(" ")
            );
            std::process::exit(2);
        }
    }
}
