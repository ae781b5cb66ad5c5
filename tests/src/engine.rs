//! Runner for the engine CLI, `lurk-engine` (contract: issue 3).
//!
//! - [`EngineRun::get`]: `lurk-engine get URL ARGS… --json`, waited for; the response
//!   body is on stdout, one JSON summary per connection on stderr ([`Output::summaries`]).
//! - [`EngineRun::spawn_get`]: the same, running, for tests that must drive the server
//!   while the engine runs (plain-mode s_server answering through its stdin).
//! - [`EngineConnect`]: `lurk-engine connect HOST:PORT ARGS…`: stdin lines go to the
//!   server, the server's data comes out on stdout, `k` / `K` alone on a line send a
//!   KeyUpdate (update_not_requested / update_requested).

use std::ffi::OsStr;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;

use crate::openssl::TIMEOUT;
use crate::process::Proc;
use crate::workspace_bin;

/// What one engine run left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The `--json` lines of stderr, one object per TLS connection, in order.
    pub summaries: Vec<Value>,
    /// The command line (for messages).
    pub command: String,
}

/// Parses the JSON objects among `stderr`'s lines (other lines are logs).
pub fn parse_summaries(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

impl Output {
    fn from_proc(p: &Proc, status: ExitStatus) -> Output {
        let stderr = p.stderr.text();
        Output {
            status,
            stdout: p.stdout.text(),
            summaries: parse_summaries(&stderr),
            stderr,
            command: p.name().to_owned(),
        }
    }

    /// Everything, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "$ {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }

    /// Panics (with everything) unless the engine exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "lurk-engine failed:\n{}",
            self.describe()
        );
        self
    }

    /// Panics unless the engine exited non-zero with `needle` (case-insensitive) on stderr.
    #[track_caller]
    pub fn assert_failure_naming(&self, needles: &[&str]) -> &Self {
        assert!(
            !self.status.success(),
            "lurk-engine should have failed:\n{}",
            self.describe()
        );
        let err = self.stderr.to_lowercase();
        assert!(
            needles.iter().any(|n| err.contains(&n.to_lowercase())),
            "lurk-engine's error names none of {needles:?}:\n{}",
            self.describe()
        );
        self
    }

    /// Panics unless there are exactly `n` summaries.
    #[track_caller]
    pub fn assert_connections(&self, n: usize) -> &Self {
        assert_eq!(
            self.summaries.len(),
            n,
            "expected {n} JSON summaries (one per connection):\n{}",
            self.describe()
        );
        self
    }

    /// Summary of connection `i` (0-based); panics with everything if missing.
    #[track_caller]
    pub fn summary(&self, i: usize) -> &Value {
        self.summaries
            .get(i)
            .unwrap_or_else(|| panic!("no JSON summary #{i}:\n{}", self.describe()))
    }

    /// `lurk_exchanges` of connection `i`, with `c_server_flight` written as the standard
    /// pair it stands for ([`standard_pair`]).
    #[track_caller]
    pub fn exchanges(&self, i: usize) -> Vec<String> {
        standard_pair(&exchanges_made(self.summary(i)))
    }

    /// `lurk_exchanges` of connection `i`, as made.
    #[track_caller]
    pub fn exchanges_made(&self, i: usize) -> Vec<String> {
        exchanges_made(self.summary(i))
    }
}

/// `exchanges` with each `c_server_flight` (and the `c_client_finished` that follows it
/// when the flight was incomplete) written as `c_server_hello`, `c_client_finished`: the
/// standard pair it replaces (docs/protocol.md). Tests of the LURK sequence hold either way.
pub fn standard_pair(exchanges: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(exchanges.len() + 1);
    let mut it = exchanges.iter().peekable();
    while let Some(e) = it.next() {
        if e == "c_server_flight" {
            if it.peek().is_some_and(|n| *n == "c_server_hello") {
                // Refused: the standard pair follows.
                continue;
            }
            out.push("c_server_hello".to_owned());
            out.push("c_client_finished".to_owned());
            if it.peek().is_some_and(|n| *n == "c_client_finished") {
                it.next();
            }
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// The `lurk_exchanges` names of a summary, with `c_server_flight` written as the standard
/// pair ([`standard_pair`]).
pub fn exchanges(summary: &Value) -> Vec<String> {
    standard_pair(&exchanges_made(summary))
}

/// The `lurk_exchanges` names of a summary, as made.
pub fn exchanges_made(summary: &Value) -> Vec<String> {
    summary
        .get("lurk_exchanges")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("summary has no lurk_exchanges array: {summary}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("exchange name not a string: {v}"))
                .to_owned()
        })
        .collect()
}

/// A string field of a summary (None if absent or null).
pub fn field_str<'a>(summary: &'a Value, key: &str) -> Option<&'a str> {
    summary.get(key).and_then(Value::as_str)
}

/// A boolean field of a summary; panics if it is absent or not a boolean.
#[track_caller]
pub fn field_bool(summary: &Value, key: &str) -> bool {
    summary
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("summary field {key:?} is not a boolean: {summary}"))
}

/// Canonical (IANA, lowercase) name of a group as the engine or OpenSSL may spell it.
pub fn canonical_group(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase().replace(['-', '_'], "");
    match n.as_str() {
        "x25519" | "ecdhx25519" => "x25519".into(),
        "secp256r1" | "p256" | "prime256v1" => "secp256r1".into(),
        "secp384r1" | "p384" => "secp384r1".into(),
        "secp521r1" | "p521" => "secp521r1".into(),
        _ => n,
    }
}

/// The negotiated group of a summary, canonical; None if absent/null (psk_ke).
pub fn group(summary: &Value) -> Option<String> {
    field_str(summary, "group").map(canonical_group)
}

/// Runs `lurk-engine get`.
pub struct EngineRun;

impl EngineRun {
    /// `lurk-engine get URL ARGS… --json`, waited for (killed after the default timeout).
    pub fn get<S: AsRef<OsStr>>(url: &str, args: &[S]) -> Output {
        Self::spawn_get(url, args).finish()
    }

    /// `lurk-engine get URL ARGS… --json`, left running.
    pub fn spawn_get<S: AsRef<OsStr>>(url: &str, args: &[S]) -> EngineProc {
        let mut full: Vec<&OsStr> = vec![OsStr::new("get"), OsStr::new(url)];
        full.extend(args.iter().map(AsRef::as_ref));
        if !full.iter().any(|a| *a == "--json") {
            full.push(OsStr::new("--json"));
        }
        EngineProc::spawn(&full)
    }
}

/// A running `lurk-engine`, killed by PID on drop.
pub struct EngineProc {
    pub proc: Proc,
}

impl EngineProc {
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> EngineProc {
        let proc = Proc::spawn(
            workspace_bin("lurk-engine"),
            args,
            &[("RUST_BACKTRACE", "1")],
        )
        .expect("run lurk-engine");
        EngineProc { proc }
    }

    /// Closes stdin and waits for the exit (killed after `TIMEOUT`, which fails the test).
    pub fn finish(mut self) -> Output {
        self.proc.close_stdin();
        match self.proc.wait_exit(TIMEOUT) {
            Some(st) => Output::from_proc(&self.proc, st),
            None => {
                let st = self.proc.kill();
                panic!(
                    "lurk-engine did not exit within {TIMEOUT:?} (killed, {st:?}):\n$ {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.proc.name(),
                    self.proc.stdout.text(),
                    self.proc.stderr.text()
                );
            }
        }
    }
}

/// An interactive `lurk-engine connect HOST:PORT`.
pub struct EngineConnect {
    inner: EngineProc,
}

impl EngineConnect {
    /// `lurk-engine connect HOST_PORT ARGS…`.
    pub fn spawn<S: AsRef<OsStr>>(host_port: &str, args: &[S]) -> EngineConnect {
        let mut full: Vec<&OsStr> = vec![OsStr::new("connect"), OsStr::new(host_port)];
        full.extend(args.iter().map(AsRef::as_ref));
        EngineConnect {
            inner: EngineProc::spawn(&full),
        }
    }

    /// Sends a line to the server (`k` / `K` alone send a KeyUpdate).
    pub fn send_line(&mut self, line: &str) {
        self.inner.proc.write_line(line);
    }

    /// Sends KeyUpdate(update_requested) (`K`) or KeyUpdate(update_not_requested) (`k`).
    pub fn key_update(&mut self, request_peer_update: bool) {
        self.send_line(if request_peer_update { "K" } else { "k" });
    }

    pub fn stdout(&self) -> String {
        self.inner.proc.stdout.text()
    }

    pub fn stderr(&self) -> String {
        self.inner.proc.stderr.text()
    }

    /// Waits until the engine's stdout (the server's data) contains `text`.
    pub fn wait_stdout(&self, text: &str, timeout: Duration) -> bool {
        self.inner.proc.stdout.wait_for(text, timeout)
    }

    /// [`wait_stdout`](Self::wait_stdout) with the default timeout; panics with the output.
    #[track_caller]
    pub fn expect_stdout(&self, text: &str) {
        assert!(
            self.wait_stdout(text, TIMEOUT),
            "lurk-engine connect: stdout has no {text:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    /// True if the engine has exited already (e.g. on an error).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.inner.proc.try_status()
    }

    /// Closes stdin (the engine then closes the connection) and waits for the exit.
    pub fn finish(self) -> Output {
        self.inner.finish()
    }

    pub fn pid(&self) -> u32 {
        self.inner.proc.pid()
    }
}
