//! Helpers shared by the end-to-end tests: real `lurk-cs` processes on a real SoftHSM token
//! (made by `lurk-cs token init-dev` in a temp dir, private SOFTHSM2_CONF), on free ports,
//! killed by PID when the test ends.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cs_relay;
pub mod engine;
pub mod fact_server;
pub mod go_tls;
pub mod lurk;
pub mod openssl;
pub mod postgres;
pub mod process;
pub mod raw_h2;
pub mod replica_load;
pub mod rfc8448;
pub mod sequence_c;
pub mod tlslite;
pub mod token_calls;

use lurk_engine::cs_channel::CsClient;
use lurk_engine::cs_client::CsEndpoint;
use tonic::transport::Channel;

/// Path of a binary built from this workspace (`cargo build --bins` must have run; the
/// test script does it).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// `target/tmp/lurk-e2e`: scratch space that outlives one test (fixtures shared by the tests
/// of one process live here; Rust statics are never dropped). Entries older than two hours
/// (left by earlier runs) are removed the first time it is used in a process.
pub fn scratch_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test-binary>
        let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
        let root = target.join("tmp").join("lurk-e2e");
        std::fs::create_dir_all(&root).expect("create target/tmp/lurk-e2e");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(2 * 3600));
                if old {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        root
    })
    .clone()
}

/// A fresh directory `scratch_root()/TAG-XXXXXX`, kept after the process ends.
pub fn scratch_dir(tag: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("{tag}-"))
        .tempdir_in(scratch_root())
        .expect("scratch dir")
        .keep()
}

/// A development CS set-up: a temp dir holding the SoftHSM token, keys, certificates and
/// config, made by `lurk-cs token init-dev`.
pub struct DevSetup {
    pub dir: tempfile::TempDir,
}

impl DevSetup {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lurk-e2e-")
            .tempdir()
            .expect("tempdir");
        Self::init(dir)
    }

    /// Like [`new`](Self::new), in a temp dir under `parent`.
    pub fn new_in(parent: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lurk-e2e-")
            .tempdir_in(parent)
            .expect("tempdir");
        Self::init(dir)
    }

    fn init(dir: tempfile::TempDir) -> Self {
        let out = Command::new(workspace_bin("lurk-cs"))
            .args(["token", "init-dev"])
            .arg(dir.path().join("dev"))
            .output()
            .expect("run lurk-cs token init-dev");
        assert!(
            out.status.success(),
            "init-dev failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("dev")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("lurk-cs.toml")
    }

    /// Appends TOML to the config (tests switch backends or limits this way).
    pub fn append_config(&self, toml: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.config_path())
            .unwrap();
        writeln!(f, "{toml}").unwrap();
    }

    /// Replaces text in the config.
    pub fn edit_config(&self, from: &str, to: &str) {
        let p = self.config_path();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "config has no {from:?}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    }

    /// Starts `lurk-cs serve` on a free port.
    pub fn start(&self) -> CsProcess {
        self.start_with_env(&[])
    }

    pub fn start_with_env(&self, env: &[(&str, &str)]) -> CsProcess {
        self.try_start_with_env(env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start_with_env`](Self::start_with_env); `Err` holds the CS's log.
    pub fn try_start_with_env(&self, env: &[(&str, &str)]) -> Result<CsProcess, String> {
        self.try_start_on("127.0.0.1:0", env)
    }

    /// Like [`try_start_with_env`](Self::try_start_with_env), listening on `listen`
    /// (`127.0.0.2:PORT`: several replicas on one port, as behind one DNS name).
    pub fn try_start_on(&self, listen: &str, env: &[(&str, &str)]) -> Result<CsProcess, String> {
        self.try_start_cmd(Command::new(workspace_bin("lurk-cs")), listen, env)
    }

    /// Starts `lurk-cs serve` with its descriptor limit (RLIMIT_NOFILE) set to `nofile`
    /// (through `sh -c 'ulimit -n N; exec lurk-cs …'`: the PID is the CS's).
    pub fn start_with_nofile(&self, nofile: u64) -> CsProcess {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(workspace_bin("lurk-cs"));
        self.try_start_cmd(cmd, "127.0.0.1:0", &[])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_cmd(
        &self,
        mut cmd: Command,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Result<CsProcess, String> {
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .args(["--listen", listen])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn lurk-cs serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut metrics = None;
            while let Some(Ok(line)) = lines.next() {
                // `METRICS <addr>` (with `[metrics] addr`) comes before `READY <addr>`.
                if let Some(addr) = line.strip_prefix("METRICS ") {
                    metrics = Some(addr.to_owned());
                }
                if let Some(addr) = line.strip_prefix("READY ") {
                    let _ = tx.send((addr.to_owned(), metrics.take()));
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
            }
        });
        let (addr, metrics_addr) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "lurk-cs did not start; its log:\n{}",
                    log.lock().unwrap()
                ));
            }
        };
        Ok(CsProcess {
            child,
            addr,
            metrics_addr,
            dir: self.path(),
            log,
        })
    }
}

impl Default for DevSetup {
    fn default() -> Self {
        Self::new()
    }
}

/// A `grpc.health.v1` client (tonic-health's) for the CS at `url`, over mTLS with the
/// files of `tls_dir` (`ca.pem`, `IDENTITY.pem`, `IDENTITY.key`).
pub fn health_client(
    url: &str,
    tls_dir: &Path,
    identity: &str,
) -> tonic_health::pb::health_client::HealthClient<Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |name: String| std::fs::read(tls_dir.join(name)).unwrap();
    let cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
        .identity(Identity::from_pem(
            read(format!("{identity}.pem")),
            read(format!("{identity}.key")),
        ))
        .domain_name("localhost");
    let ch = Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tls_config(cfg)
        .unwrap()
        .connect_lazy();
    tonic_health::pb::health_client::HealthClient::new(ch)
}

/// A running `lurk-cs serve`, killed by PID on drop.
pub struct CsProcess {
    child: Child,
    pub addr: String,
    /// The metrics listener's address (`METRICS <addr>` on stdout), with `[metrics] addr`.
    pub metrics_addr: Option<String>,
    dir: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl CsProcess {
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Directory of the CS's transport PKI (`ca.pem`, `IDENTITY.pem`, `IDENTITY.key`).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// `--cs URL --cs-ca … --cs-cert … --cs-key …` for `lurk-engine`, as `identity`.
    pub fn engine_args(&self, identity: &str) -> Vec<String> {
        let tls = self.tls_dir();
        let s = |p: PathBuf| p.to_str().expect("UTF-8 path").to_owned();
        vec![
            "--cs".into(),
            self.url(),
            "--cs-ca".into(),
            s(tls.join("ca.pem")),
            "--cs-cert".into(),
            s(tls.join(format!("{identity}.pem"))),
            "--cs-key".into(),
            s(tls.join(format!("{identity}.key"))),
        ]
    }

    /// mTLS endpoint for one of the dev engine identities (`engine` or `engine2`).
    pub fn endpoint(&self, identity: &str) -> CsEndpoint {
        let tls = self.dir.join("tls");
        let mut ep = CsEndpoint::from_files(
            &self.url(),
            Some(&tls.join("ca.pem")),
            Some(&tls.join(format!("{identity}.pem"))),
            Some(&tls.join(format!("{identity}.key"))),
        )
        .unwrap();
        ep.domain = Some("localhost".into());
        ep
    }

    /// A `grpc.health.v1` client (tonic-health's) over mTLS as `identity`.
    pub fn health_client(
        &self,
        identity: &str,
    ) -> tonic_health::pb::health_client::HealthClient<Channel> {
        health_client(&self.url(), &self.dir.join("tls"), identity)
    }

    /// The health status of `service` (`""`: the whole server), or the gRPC error.
    pub async fn health(&self, service: &str) -> Result<i32, tonic::Status> {
        let mut c = self.health_client("engine");
        c.check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
    }

    /// Waits up to `timeout` for `service`'s health to be `status`.
    pub async fn wait_health(&self, service: &str, status: i32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.health(service).await.ok() == Some(status) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A lazy mTLS gRPC channel as `identity`, for any service the CS serves.
    pub fn channel(&self, identity: &str) -> Channel {
        let tls = self.tls_dir();
        let read = |name: String| std::fs::read(tls.join(name)).unwrap();
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                "ca.pem".into(),
            )))
            .identity(tonic::transport::Identity::from_pem(
                read(format!("{identity}.pem")),
                read(format!("{identity}.key")),
            ))
            .domain_name("localhost");
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(config)
            .unwrap()
            .connect_lazy()
    }

    /// `GET path` on the metrics listener (plain HTTP/1.1): the status code and the body.
    pub fn scrape(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = self.metrics_addr.as_deref().expect("[metrics] addr is set");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, body.to_owned())
    }

    pub fn client(&self, identity: &str) -> CsClient {
        self.endpoint(identity).connect_lazy().unwrap()
    }

    /// The CS's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM (graceful shutdown) and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Descriptors the CS process has open now (`/proc/PID/fd`).
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time the CS process has used, in clock ticks (user + system, `/proc/PID/stat`).
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        f.iter().sum()
    }

    /// Resident memory of the CS process in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CsProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The test-only PKCS#11 module that makes SoftHSM fail or slow down on command
/// (tests/p11-fault-shim): `target/<profile>/liblurk_p11_fault_shim.so`, built by
/// `cargo build --workspace` (or `-p lurk-p11-fault-shim`; scripts/test.sh does).
pub fn p11_fault_shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("liblurk_p11_fault_shim.so");
    assert!(
        so.exists(),
        "{} not found: run `cargo build -p lurk-p11-fault-shim` first (scripts/test.sh does)",
        so.display()
    );
    so
}

/// A ServerHello (RFC 8446 §4.1.3) selecting `suite` with a key share for `group`, echoing
/// `session_id`; tests use it to drive the CS without a TLS server.
pub fn server_hello(
    suite: lurk_proto::wire::CipherSuite,
    group: lurk_proto::wire::NamedGroup,
    key_exchange: &[u8],
    session_id: &[u8],
) -> Vec<u8> {
    lurk_proto::wire::encode_server_hello(&[0x42; 32], session_id, suite, group, key_exchange)
        .expect("a ServerHello fits")
}
