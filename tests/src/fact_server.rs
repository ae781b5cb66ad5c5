//! A test TLS server process that reports what it saw: it prints `READY <port>` once
//! listening, then for connection n its `key=value` facts as `conn <n>: key=value` lines
//! followed by `conn <n>: END`, or `conn <n>: ERROR <what>`. Used for `tests/tlslite_server.py`
//! ([`crate::tlslite`]) and `tests/go_tls_server/main.go` ([`crate::go_tls`]).

use std::ffi::OsStr;

use crate::openssl::TIMEOUT;
use crate::process::Proc;

/// A running fact-reporting server, killed by PID on drop.
pub struct FactServer {
    pub proc: Proc,
    pub port: u16,
}

impl FactServer {
    /// Starts `program args…` and waits for its `READY <port>` line.
    pub fn spawn<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> FactServer {
        let proc =
            Proc::spawn(program, args, &[("PYTHONUNBUFFERED", "1")]).expect("run the test server");
        assert!(
            proc.stdout
                .wait_until(TIMEOUT, |t| t.lines().any(|l| l.starts_with("READY "))),
            "{} did not start:\n{}",
            proc.name(),
            proc.output()
        );
        let out = proc.stdout.text();
        let port = out
            .lines()
            .find_map(|l| l.strip_prefix("READY "))
            .and_then(|p| p.trim().parse().ok())
            .expect("READY <port>");
        FactServer { proc, port }
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
        assert!(finished, "{}:\n{}", self.proc.name(), self.proc.output());
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
                    "the server has no {key} for connection {i}:\n{}",
                    self.proc.output()
                )
            })
    }

    pub fn output(&self) -> String {
        self.proc.output()
    }
}
