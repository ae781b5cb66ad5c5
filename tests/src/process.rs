//! Child processes with captured output: stdout and stderr are read by threads into
//! shared buffers that tests can wait on (condition variable, no polling), stdin is a pipe
//! kept open until [`Proc::close_stdin`], and the process is killed by PID on drop.

use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct CaptureState {
    text: String,
    /// Writers (reader threads) still attached; 0 = every pipe reached EOF.
    open: usize,
}

/// A text buffer filled by reader threads; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Capture(Arc<(Mutex<CaptureState>, Condvar)>);

impl Capture {
    fn attach(&self) {
        self.0 .0.lock().unwrap().open += 1;
    }

    fn append(&self, s: &str) {
        let (m, cv) = &*self.0;
        m.lock().unwrap().text.push_str(s);
        cv.notify_all();
    }

    fn detach(&self) {
        let (m, cv) = &*self.0;
        let mut st = m.lock().unwrap();
        st.open = st.open.saturating_sub(1);
        cv.notify_all();
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.0 .0.lock().unwrap().text.clone()
    }

    /// True once every pipe feeding this buffer reached EOF.
    pub fn closed(&self) -> bool {
        self.0 .0.lock().unwrap().open == 0
    }

    /// Waits until `pred(text)` holds. Returns false on timeout, or as soon as the pipes are
    /// closed without the predicate holding (nothing more can arrive).
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.0;
        let mut st = m.lock().unwrap();
        loop {
            if pred(&st.text) {
                return true;
            }
            if st.open == 0 {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// Waits until the text contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |t| t.contains(needle))
    }

    /// Waits until the text contains `needle` at least `n` times.
    pub fn wait_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |t| t.matches(needle).count() >= n)
    }

    /// Waits until every pipe feeding this buffer is closed.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.0;
        let mut st = m.lock().unwrap();
        while st.open != 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }
}

/// A running child process: stdin piped (kept open), stdout and stderr captured separately
/// and together (`combined`, in arrival order). Killed by PID (SIGKILL) on drop.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Capture,
    pub stderr: Capture,
    pub combined: Capture,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn pump(mut src: impl Read + Send + 'static, sinks: [Capture; 2]) -> JoinHandle<()> {
    for s in &sinks {
        s.attach();
    }
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            match src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    // Hand over only complete UTF-8 (a character may straddle two reads).
                    let valid = match std::str::from_utf8(&pending) {
                        Ok(_) => pending.len(),
                        Err(e) if e.error_len().is_none() => e.valid_up_to(),
                        Err(_) => pending.len(), // invalid bytes: lossy
                    };
                    let text = String::from_utf8_lossy(&pending[..valid]).into_owned();
                    pending.drain(..valid);
                    for s in &sinks {
                        s.append(&text);
                    }
                }
            }
        }
        if !pending.is_empty() {
            let text = String::from_utf8_lossy(&pending).into_owned();
            for s in &sinks {
                s.append(&text);
            }
        }
        for s in &sinks {
            s.detach();
        }
    })
}

impl Proc {
    /// Spawns `program args…` with piped stdio.
    pub fn spawn<S: AsRef<OsStr>>(
        program: impl AsRef<OsStr>,
        args: &[S],
        env: &[(&str, &str)],
    ) -> std::io::Result<Proc> {
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn_command(cmd)
    }

    /// Spawns a prepared command (its stdio is replaced by pipes).
    pub fn spawn_command(mut cmd: Command) -> std::io::Result<Proc> {
        let name = format!(
            "{} {}",
            cmd.get_program().to_string_lossy(),
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdout = Capture::default();
        let stderr = Capture::default();
        let combined = Capture::default();
        let readers = vec![
            pump(
                child.stdout.take().unwrap(),
                [stdout.clone(), combined.clone()],
            ),
            pump(
                child.stderr.take().unwrap(),
                [stderr.clone(), combined.clone()],
            ),
        ];
        let stdin = child.stdin.take();
        Ok(Proc {
            name,
            child,
            stdin,
            stdout,
            stderr,
            combined,
            readers,
            status: None,
        })
    }

    /// The command line (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes raw bytes to the child's stdin.
    pub fn write_stdin(&mut self, data: &[u8]) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stdin already closed")
        })?;
        stdin.write_all(data)?;
        stdin.flush()
    }

    /// Writes `line` and a newline to the child's stdin; panics if the pipe is gone.
    pub fn write_line(&mut self, line: &str) {
        let mut data = line.as_bytes().to_vec();
        data.push(b'\n');
        if let Err(e) = self.write_stdin(&data) {
            panic!(
                "{}: cannot write {line:?} to stdin: {e}\noutput:\n{}",
                self.name,
                self.output()
            );
        }
    }

    /// Closes stdin (EOF for the child).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits until `pred` holds for stdout, stderr or the combined output (a line may be
    /// interleaved with the other stream's in the combined capture). On success,
    /// [`Proc::output`] holds everything the match saw.
    pub fn wait_output(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        // The reader threads append to stdout/stderr before `combined`, so each wake-up on
        // `combined` sees the separate captures up to date.
        let (out, err) = (self.stdout.clone(), self.stderr.clone());
        let matched = self.combined.wait_until(timeout, |all| {
            pred(all) || pred(&out.text()) || pred(&err.text())
        });
        if !matched {
            return false;
        }
        // A match on stdout or stderr may be ahead of `combined` by the one append its reader
        // thread has not made yet: wait for it, so that a caller reading `output()` finds
        // the line it waited for. Each reader appends the same text to both of its sinks.
        let seen = out.text().len() + err.text().len();
        self.combined
            .wait_until(Duration::from_secs(5), |all| all.len() >= seen)
    }

    /// Combined stdout + stderr so far.
    pub fn output(&self) -> String {
        self.combined.text()
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the process to exit and for its output pipes to reach EOF (so that all
    /// output is captured). Returns None on timeout (the process is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        // EOF on both pipes is the readiness signal; the exit follows at once.
        if !self.combined.wait_closed(timeout) {
            return None;
        }
        loop {
            if let Some(st) = self.try_status() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // The pipes are closed: the process is exiting, reaping is a matter of moments.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the process by PID (SIGKILL) and reaps it; output pipes are drained.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.stdin = None;
        // The pipes close with the process (unless it left children holding them).
        self.combined.wait_closed(Duration::from_secs(5));
        for r in self.readers.drain(..) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        self.status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A random port in `lo..hi` (std's randomly keyed hasher as the source; no dependency).
pub fn random_port(lo: u16, hi: u16) -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    lo + (h.finish() % u64::from(hi - lo)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A match that `wait_output` finds on stdout is in `output()` when it returns, even
    /// though the reader thread appends to `stdout` before `combined` (a CI run read
    /// `output()` one append too early and missed the `LISTEN` line it had waited for).
    #[test]
    fn output_holds_the_line_wait_output_matched() {
        let script = "i=0; while [ $i -lt 40 ]; do echo \"line $i\"; echo \"err $i\" >&2; \
                      i=$((i+1)); done; echo 'LISTEN 127.0.0.1:1'";
        for round in 0..200 {
            let p = Proc::spawn("sh", &["-c", script], &[]).expect("spawn sh");
            assert!(p.wait_output(Duration::from_secs(20), |t| t.contains("LISTEN ")));
            let out = p.output();
            assert!(
                out.contains("LISTEN 127.0.0.1:1"),
                "round {round}: output() lacks the matched line:\n{out}"
            );
        }
    }
}
