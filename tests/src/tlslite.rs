//! `tests/tlslite_server.py`: a strict TLS 1.3 server on tlslite-ng (pure Python), the third
//! peer of the interop tests besides `openssl s_server`. tlslite-ng is installed by
//! `scripts/install-deps.sh --test` (a venv in the user's cache, unless `python3` imports it).

use std::path::{Path, PathBuf};

use crate::fact_server::FactServer;
use crate::openssl::path_str;

/// The tlslite-ng version `scripts/install-deps.sh --test` installs.
pub const TLSLITE_VERSION: &str = "0.8.2";

/// The venv `scripts/install-deps.sh --test` makes when `python3` cannot import tlslite.
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
            panic!(
                "no Python with tlslite-ng {TLSLITE_VERSION}: run scripts/install-deps.sh --test"
            )
        })
}

/// Starts `tests/tlslite_server.py ARGS…` (it binds a free loopback port itself).
pub fn start<S: AsRef<str>>(args: &[S]) -> FactServer {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tlslite_server.py");
    let mut full = vec![path_str(&script)];
    full.extend(args.iter().map(|a| a.as_ref().to_owned()));
    FactServer::spawn(python(), &full)
}
