//! `openssl s_server` / `s_client` harness for the interop tests (OpenSSL 3.0), following
//! `/work/shared/interop/openssl-recipes.md`:
//!
//! - [`certs`]: the test PKI of `scripts/make-certs.sh`, made once per test process;
//! - [`SServer`]: `openssl s_server -accept 127.0.0.1:PORT -tls1_3 …` on a free port below
//!   32768, ready when its `ACCEPT` line shows (never probed with a TCP connect: that would
//!   use up one of its `-naccept` connections), stdin kept open for the `k`/`K`/`c`
//!   commands, output captured, killed by PID on drop;
//! - [`s_client`] / [`SClient`]: the reference client, for the harness self-tests.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{random_port, Proc};

/// Default timeout for anything a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The test PKI (see the header of `scripts/make-certs.sh`).
#[derive(Debug)]
pub struct Certs {
    pub dir: PathBuf,
    /// External PSK identity and key (hex), from `psk.txt`.
    pub psk_identity: String,
    pub psk_key: String,
}

impl Certs {
    /// Path of a file of the PKI (`ca-all.pem`, `server-rsa.key`, …); panics if missing.
    pub fn path(&self, file: &str) -> PathBuf {
        let p = self.dir.join(file);
        assert!(p.exists(), "{} is not in the test PKI", p.display());
        p
    }

    /// `NAME.pem`.
    pub fn pem(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.pem"))
    }

    /// `NAME.key` (PKCS#8 PEM).
    pub fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.key"))
    }

    /// What the client under test trusts: ECDSA root + RSA root.
    pub fn ca_all(&self) -> PathBuf {
        self.path("ca-all.pem")
    }

    /// `-cert NAME.pem -key NAME.key` for s_server / s_client.
    pub fn cert_args(&self, name: &str) -> Vec<String> {
        vec![
            "-cert".into(),
            path_str(&self.pem(name)),
            "-key".into(),
            path_str(&self.key(name)),
        ]
    }

    /// Writes the PSK (hex) into a file of its own, for `lurk-cs psk import --key-file`.
    pub fn psk_key_file(&self) -> PathBuf {
        let p = self.dir.join("psk.hex");
        if !p.exists() {
            let tmp = self.dir.join(format!("psk.hex.{}", std::process::id()));
            std::fs::write(&tmp, format!("{}\n", self.psk_key)).unwrap();
            std::fs::rename(&tmp, &p).unwrap();
        }
        p
    }
}

/// Collapses every run of whitespace into one space.
pub fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// True if `haystack` contains `needle`, whitespace-normalized.
pub fn contains_norm(haystack: &str, needle: &str) -> bool {
    normalize_ws(haystack).contains(&normalize_ws(needle))
}

/// Occurrences of `needle` in `haystack`, whitespace-normalized.
pub fn count_norm(haystack: &str, needle: &str) -> usize {
    normalize_ws(haystack)
        .matches(&normalize_ws(needle))
        .count()
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_owned()
}

/// Path of `scripts/make-certs.sh` in this workspace.
pub fn make_certs_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh")
}

/// Runs `bash scripts/make-certs.sh DIR`; returns the script's output or panics.
pub fn make_certs(dir: &Path) -> String {
    let out = Command::new("bash")
        .arg(make_certs_script())
        .arg(dir)
        .output()
        .expect("run bash scripts/make-certs.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "make-certs.sh {} failed:\n{text}",
        dir.display()
    );
    text
}

fn read_psk(dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(dir.join("psk.txt")).expect("psk.txt");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("psk.txt has no {k}"))
            .trim()
            .to_owned()
    };
    (field("identity="), field("key="))
}

/// The test PKI, made once per test process in the scratch directory (target/tmp).
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = crate::scratch_dir("certs");
        make_certs(&dir);
        let (psk_identity, psk_key) = read_psk(&dir);
        Certs {
            dir,
            psk_identity,
            psk_key,
        }
    })
}

/// Runs `openssl ARGS…` with line-buffered stdio (`stdbuf -oL -eL`, coreutils) when
/// available: s_client writes much of what the tests wait for (`Post-Handshake New Session
/// Ticket arrived`, `-msg` lines) through a stdio stream that is fully buffered on a pipe,
/// and it would show only at exit; line buffering (not none) keeps stdout and stderr lines
/// whole in the combined capture.
fn spawn_openssl(args: &[&OsStr]) -> std::io::Result<Proc> {
    static STDBUF: OnceLock<bool> = OnceLock::new();
    let stdbuf = *STDBUF.get_or_init(|| {
        Command::new("stdbuf")
            .args(["-oL", "-eL", "true"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if stdbuf {
        let mut full: Vec<&OsStr> =
            vec![OsStr::new("-oL"), OsStr::new("-eL"), OsStr::new("openssl")];
        full.extend_from_slice(args);
        Proc::spawn("stdbuf", &full, &[])
    } else {
        Proc::spawn("openssl", args, &[])
    }
}

/// Why a server did not start.
#[derive(Debug)]
pub enum StartError {
    /// The port was taken (`Address already in use`): try another.
    AddrInUse(String),
    /// Anything else (bad arguments, missing file…), with the server's output.
    Failed(String),
}

/// A running `openssl s_server`.
pub struct SServer {
    proc: Proc,
    port: u16,
}

impl SServer {
    /// Starts `openssl s_server -accept 127.0.0.1:PORT -tls1_3 ARGS…` on a random free port
    /// in 20000–32000 and waits for `ACCEPT`. Panics if it cannot start.
    pub fn start<S: AsRef<OsStr>>(args: &[S]) -> SServer {
        let mut last = String::new();
        let mut failures = Vec::new();
        for _ in 0..25 {
            let port = random_port(20000, 32000);
            match Self::try_start_on(port, args) {
                Ok(s) => return s,
                Err(StartError::AddrInUse(out)) => last = out,
                // A start that failed otherwise is retried on another port (a loaded CI
                // machine saw one); a server that cannot start at all fails three times.
                Err(StartError::Failed(out)) => {
                    failures.push(out);
                    if failures.len() == 3 {
                        panic!(
                            "openssl s_server did not start:\n{}",
                            failures.join("\n---\n")
                        );
                    }
                }
            }
        }
        panic!("openssl s_server: no free port after 25 tries; last output:\n{last}")
    }

    /// One attempt on a given port.
    pub fn try_start_on<S: AsRef<OsStr>>(port: u16, args: &[S]) -> Result<SServer, StartError> {
        let mut full: Vec<&OsStr> = vec![OsStr::new("s_server"), OsStr::new("-accept")];
        let accept = format!("127.0.0.1:{port}");
        full.push(OsStr::new(&accept));
        full.push(OsStr::new("-tls1_3"));
        full.extend(args.iter().map(AsRef::as_ref));
        let mut proc = spawn_openssl(&full)
            .map_err(|e| StartError::Failed(format!("cannot run openssl: {e}")))?;
        let ready = proc.wait_output(TIMEOUT, |t| {
            t.lines().any(|l| l.trim_end() == "ACCEPT") || t.contains("Address already in use")
        });
        let out = proc.output();
        if ready && out.lines().any(|l| l.trim_end() == "ACCEPT") {
            return Ok(SServer { proc, port });
        }
        proc.kill();
        let out = format!("$ {}\n{}", proc.name(), proc.output());
        if out.contains("Address already in use") {
            Err(StartError::AddrInUse(out))
        } else if ready {
            Err(StartError::Failed(out))
        } else {
            Err(StartError::Failed(format!(
                "{out}\n(no ACCEPT line within {TIMEOUT:?})"
            )))
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `127.0.0.1:PORT` (what s_client connects to).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `localhost:PORT`: the name the test certificates carry (SAN DNS:localhost).
    pub fn host_port(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// `https://localhost:PORT/`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }

    /// Sends a line to the server's stdin: `k`, `K`, `c`, or data for the client.
    pub fn send_command(&mut self, cmd: &str) {
        self.proc.write_line(cmd);
    }

    /// Waits until the server output (stdout, stderr, or both interleaved) contains `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        self.proc.wait_output(timeout, |t| t.contains(text))
    }

    /// Waits (default timeout) until the output, whitespace-normalized, contains `text`
    /// whitespace-normalized (so `KeyUpdate 18 00 00 01 00` matches the two lines of `-msg`);
    /// panics with the output.
    #[track_caller]
    pub fn expect(&self, text: &str) {
        let needle = normalize_ws(text);
        assert!(
            self.proc
                .wait_output(TIMEOUT, |t| normalize_ws(t).contains(&needle)),
            "s_server output has no {text:?}:\n{}",
            self.output()
        );
    }

    /// How often `text` shows in the output (whitespace-normalized on both sides; the most
    /// of stdout, stderr and both interleaved).
    pub fn count(&self, text: &str) -> usize {
        let p = &self.proc;
        [p.stdout.text(), p.stderr.text(), p.output()]
            .iter()
            .map(|t| count_norm(t, text))
            .max()
            .unwrap_or(0)
    }

    /// Waits until `text` shows at least `n` times (whitespace-normalized).
    pub fn wait_count(&self, text: &str, n: usize, timeout: Duration) -> bool {
        self.proc.wait_output(timeout, |t| count_norm(t, text) >= n)
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// Waits for the server to exit by itself (`-naccept N` after N connections) with all
    /// its output captured.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    /// Like [`wait_exit`](Self::wait_exit) with the default timeout; panics if it does not exit.
    pub fn finish(&mut self) -> String {
        let st = self.wait_exit(TIMEOUT);
        assert!(st.is_some(), "s_server did not exit:\n{}", self.output());
        self.output()
    }

    /// The underlying process (stdout / stderr captures).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// The reference client's usual options against `server`: TLS 1.3, SNI localhost, trust
/// ca-all.pem, fail on verification errors.
pub fn s_client_args(server: &SServer) -> Vec<String> {
    vec![
        "-connect".into(),
        server.addr(),
        "-tls1_3".into(),
        "-servername".into(),
        "localhost".into(),
        "-CAfile".into(),
        path_str(&certs().ca_all()),
        "-verify_return_error".into(),
    ]
}

/// Runs `openssl s_client ARGS…`, feeds `stdin` and closes it, waits for the exit; returns
/// the exit status and the combined output.
pub fn s_client<S: AsRef<OsStr>>(args: &[S], stdin: &[u8]) -> (ExitStatus, String) {
    let mut c = SClient::spawn(args);
    c.write_stdin(stdin).expect("s_client stdin");
    c.close_stdin();
    let st = c.wait_exit(TIMEOUT);
    let out = c.output();
    match st {
        Some(st) => (st, out),
        None => panic!("s_client did not exit:\n{out}"),
    }
}

/// An interactive `openssl s_client` (stdin lines go to the server; `k`/`K` alone update keys).
pub struct SClient;

impl SClient {
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Proc {
        let mut full: Vec<&OsStr> = vec![OsStr::new("s_client")];
        full.extend(args.iter().map(AsRef::as_ref));
        spawn_openssl(&full).expect("run openssl s_client")
    }
}
