//! `tests/tlslite_server.py`: a strict TLS 1.3 server on tlslite-ng (pure Python), the third
//! peer of the interop tests besides `openssl s_server`. tlslite-ng is installed by
//! `scripts/install-deps.sh` (a venv in the user's cache, unless `python3` imports it).

use std::path::{Path, PathBuf};

use crate::openssl::{path_str, TIMEOUT};
use crate::process::Proc;

/// The tlslite-ng version `scripts/install-deps.sh` installs.
pub const TLSLITE_VERSION: &str = "0.8.2";

/// The venv `scripts/install-deps.sh` makes when `python3` cannot import tlslite.
fn venv_python() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(cache.join("lurk/tlslite-venv/bin/python"))
}

fn imports_tlslite(python: &Path) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import tlslite"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A Python that imports tlslite: `LURK_TLSLITE_PYTHON`, the install-deps venv, or
/// `python3`. Panics (naming the fix) when there is none.
pub fn python() -> PathBuf {
    let candidates = [
        std::env::var_os("LURK_TLSLITE_PYTHON").map(PathBuf::from),
        venv_python(),
        Some(PathBuf::from("python3")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| imports_tlslite(p))
        .unwrap_or_else(|| {
            panic!("no Python with tlslite-ng {TLSLITE_VERSION}: run scripts/install-deps.sh")
        })
}

/// A running `tlslite_server.py`, killed by PID on drop.
pub struct TlsliteServer {
    pub proc: Proc,
    pub port: u16,
}

impl TlsliteServer {
    /// Starts the server (it binds a free loopback port itself and prints it) with `args`.
    pub fn start<S: AsRef<str>>(args: &[S]) -> TlsliteServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tlslite_server.py");
        let mut full = vec![path_str(&script)];
        full.extend(args.iter().map(|a| a.as_ref().to_owned()));
        let proc = Proc::spawn(python(), &full, &[("PYTHONUNBUFFERED", "1")])
            .expect("run tlslite_server.py");
        assert!(
            proc.stdout
                .wait_until(TIMEOUT, |t| t.lines().any(|l| l.starts_with("READY "))),
            "tlslite_server.py did not start:\n{}",
            proc.output()
        );
        let out = proc.stdout.text();
        let port = out
            .lines()
            .find_map(|l| l.strip_prefix("READY "))
            .and_then(|p| p.trim().parse().ok())
            .expect("READY <port>");
        TlsliteServer { proc, port }
    }

    /// `https://localhost:PORT/`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }

    /// Waits until the server has logged `n` connections (answered or failed) and returns
    /// what it said about connection `i`: its `key=value` lines, or `ERROR …`.
    pub fn connection(&self, i: usize, n: usize) -> Vec<String> {
        let finished = self.proc.stdout.wait_until(TIMEOUT, |t| {
            (0..n).all(|c| {
                t.contains(&format!("conn {c}: END")) || t.contains(&format!("conn {c}: ERROR"))
            })
        });
        assert!(finished, "tlslite_server.py:\n{}", self.proc.output());
        let prefix = format!("conn {i}: ");
        self.proc
            .stdout
            .text()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// The value of `key` for connection `i` of `n`; panics with the server's output if the
    /// connection failed or the key is missing.
    #[track_caller]
    pub fn fact(&self, i: usize, n: usize, key: &str) -> String {
        let lines = self.connection(i, n);
        let want = format!("{key}=");
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&want).map(str::to_owned))
            .unwrap_or_else(|| {
                panic!(
                    "tlslite_server.py has no {key} for connection {i}:\n{}",
                    self.proc.output()
                )
            })
    }

    pub fn output(&self) -> String {
        self.proc.output()
    }
}
