//! Handshakes over loopback, side by side: the LURK engine with its CS (token or memory
//! ephemerals), a rustls client holding its key share in memory, and `openssl s_time`,
//! against the same servers (`openssl s_server -WWW` and an in-process-style rustls server
//! run as a child process) fetching the same small file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lurk_engine::config::{ClientConfig, Ephemeral};
use lurk_engine::cs_client::CsEndpoint;
use lurk_engine::tickets::MemoryTicketStore;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::Connector;
use lurk_proto::wire::{CipherSuite, NamedGroup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sys::{self, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The file every client fetches (`GET /index.txt`).
pub(crate) const PAYLOAD_LEN: usize = 256;
pub(crate) const REQUEST: &[u8] = b"GET /index.txt HTTP/1.0\r\n\r\n";

/// A child process killed by PID when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits (at most 60 s) for a stdout line containing `marker`, then drains stdout.
pub(crate) fn wait_for_line(child: &mut Child, marker: &'static str) -> Result<String, BoxError> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && line.contains(marker) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| format!("no {marker:?} line within 60 s").into())
}

/// Test PKI (scripts/make-certs.sh) and the served file.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(root: &Path, workspace: &Path) -> Result<Self, BoxError> {
        let dir = root.join("certs");
        let st = Command::new("bash")
            .arg(workspace.join("scripts/make-certs.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            return Err("scripts/make-certs.sh failed".into());
        }
        let www = root.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("index.txt"), payload())?;
        Ok(Self {
            dir: root.to_path_buf(),
        })
    }
    pub(crate) fn cert(&self) -> PathBuf {
        self.dir.join("certs/server-ecdsa-p256.pem")
    }
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.join("certs/server-ecdsa-p256.key")
    }
    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("certs/ca-all.pem")
    }
    pub(crate) fn www(&self) -> PathBuf {
        self.dir.join("www")
    }
}

pub(crate) fn payload() -> Vec<u8> {
    (0..PAYLOAD_LEN).map(|i| b'a' + (i % 26) as u8).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerKind {
    OpenSsl,
    Rustls,
}

impl ServerKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::OpenSsl => "openssl s_server",
            Self::Rustls => "rustls server",
        }
    }
}

/// Starts a TLS 1.3 server on a free loopback port.
pub(crate) fn start_server(kind: ServerKind, pki: &Pki) -> Result<(Proc, u16), BoxError> {
    let port = sys::free_port();
    let mut child = match kind {
        ServerKind::OpenSsl => Command::new("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-tls1_3", "-WWW", "-cert"])
            .arg(pki.cert())
            .arg("-key")
            .arg(pki.key())
            .current_dir(pki.www())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
        ServerKind::Rustls => Command::new(std::env::current_exe()?)
            .arg("rustls-server")
            .arg("--port")
            .arg(port.to_string())
            .arg("--cert")
            .arg(pki.cert())
            .arg("--key")
            .arg(pki.key())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    };
    let marker = match kind {
        ServerKind::OpenSsl => "ACCEPT",
        ServerKind::Rustls => "READY",
    };
    if let Err(e) = wait_for_line(&mut child, marker) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok((Proc { child }, port))
}

/// Starts `lurk-cs serve` on the init-dev set-up with the given ephemeral backend.
pub(crate) fn start_cs(dev: &Path, backend: &str) -> Result<(Proc, String), BoxError> {
    start_cs_with(dev, &dev.join("lurk-cs.toml"), backend, &[])
}

/// A copy of the init-dev configuration with `per_group` token key pairs made ahead of use
/// (`[ephemeral] token_pool`).
pub(crate) fn token_pool_config(dev: &Path, per_group: usize) -> Result<PathBuf, BoxError> {
    let cfg = std::fs::read_to_string(dev.join("lurk-cs.toml"))?;
    if !cfg.contains("[ephemeral]\n") {
        return Err("the init-dev configuration has no [ephemeral] section".into());
    }
    let path = dev.join("lurk-cs-token-pool.toml");
    std::fs::write(
        &path,
        cfg.replace(
            "[ephemeral]\n",
            &format!("[ephemeral]\ntoken_pool = {per_group}\n"),
        ),
    )?;
    Ok(path)
}

/// [`start_cs`] with another configuration file and more environment (`LURK_*` overrides).
pub(crate) fn start_cs_with(
    dev: &Path,
    config: &Path,
    backend: &str,
    env: &[(&str, &str)],
) -> Result<(Proc, String), BoxError> {
    let bin = sys::sibling_bin("lurk-cs").ok_or("lurk-cs binary not found next to lurk-bench: build the workspace binaries (cargo build --bins) with the same profile")?;
    let port = sys::free_port();
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("LURK_EPHEMERAL__BACKEND", backend)
        // Its own ticket store, and room for the tickets a run leaves behind: servers send
        // two per connection and a resumption consumes one (the default cap is 64).
        .env(
            "LURK_STORE__PATH",
            dev.join(format!("bench-tickets-{backend}-{port}.sqlite")),
        )
        .env("LURK_STORE__MAX_TICKETS_PER_ENGINE", "10000000")
        .env("LURK_LOG__LEVEL", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    match wait_for_line(&mut child, "READY ") {
        Ok(line) => Ok((
            Proc { child },
            format!("https://{}", line.trim_start_matches("READY ").trim()),
        )),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// A client under test.
#[derive(Clone)]
pub(crate) enum Client {
    Engine(Arc<Connector>),
    Rustls(tokio_rustls::TlsConnector),
}

/// Full handshakes only, or resumption from a ticket of an earlier connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Full,
    Resumed,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Resumed => "resumed",
        }
    }
}

pub(crate) fn engine_client(
    dev: &Path,
    cs_url: &str,
    pki: &Pki,
    mode: Mode,
) -> Result<Client, BoxError> {
    let cs = engine_endpoint(dev, cs_url)?.connect_lazy()?;
    Ok(Client::Engine(Arc::new(Connector::new(
        Arc::new(engine_config(pki, mode)?),
        Some(cs),
    ))))
}

/// The engine's mTLS endpoint for the CS at `cs_url` (init-dev's `engine` identity).
pub(crate) fn engine_endpoint(dev: &Path, cs_url: &str) -> Result<CsEndpoint, BoxError> {
    let tls = dev.join("tls");
    let mut ep = CsEndpoint::from_files(
        cs_url,
        Some(&tls.join("ca.pem")),
        Some(&tls.join("engine.pem")),
        Some(&tls.join("engine.key")),
    )?;
    ep.domain = Some("localhost".into());
    Ok(ep)
}

/// The engine configuration of every engine client: CS ephemerals, x25519, AES-128-GCM.
pub(crate) fn engine_config(pki: &Pki, mode: Mode) -> Result<ClientConfig, BoxError> {
    engine_config_in(pki, mode, NamedGroup::X25519)
}

/// [`engine_client`] offering `group` only.
pub(crate) fn engine_client_in(
    dev: &Path,
    cs_url: &str,
    pki: &Pki,
    mode: Mode,
    group: NamedGroup,
) -> Result<Client, BoxError> {
    let cs = engine_endpoint(dev, cs_url)?.connect_lazy()?;
    Ok(Client::Engine(Arc::new(Connector::new(
        Arc::new(engine_config_in(pki, mode, group)?),
        Some(cs),
    ))))
}

/// [`engine_config`] offering `group` only.
fn engine_config_in(pki: &Pki, mode: Mode, group: NamedGroup) -> Result<ClientConfig, BoxError> {
    let mut cfg = ClientConfig::builder()
        .trust_anchors(TrustAnchors::from_pem_file(&pki.ca())?)
        .cipher_suites([CipherSuite::TlsAes128GcmSha256])
        .groups([group])
        .ephemeral(Ephemeral::Cs)
        .resume(mode == Mode::Resumed);
    if mode == Mode::Resumed {
        cfg = cfg.ticket_store(Arc::new(MemoryTicketStore::new(64)));
    }
    Ok(cfg.build()?)
}

pub(crate) fn rustls_client(pki: &Pki, mode: Mode) -> Result<Client, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pki.ca())?;
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = match mode {
        Mode::Full => rustls::client::Resumption::disabled(),
        Mode::Resumed => rustls::client::Resumption::in_memory_sessions(1024),
    };
    Ok(Client::Rustls(tokio_rustls::TlsConnector::from(Arc::new(
        cfg,
    ))))
}

/// One connection: TCP connect, handshake, GET, response read to EOF. Returns whether the
/// handshake resumed and the LURK exchanges made.
pub(crate) async fn get_once(
    client: &Client,
    port: u16,
) -> Result<(bool, Vec<&'static str>), BoxError> {
    get_once_rt(client, port).await.map(|(r, e, _)| (r, e))
}

/// [`get_once`], also returning how many LURK exchanges the handshake waited for (those made
/// before `connect` returned: the CS round trips on its critical path).
pub(crate) async fn get_once_rt(
    client: &Client,
    port: u16,
) -> Result<(bool, Vec<&'static str>, usize), BoxError> {
    get_once_connect(client, port, None).await
}

/// [`get_once_rt`] with the TCP handshake taking `connect_rtt` more (`Some`): the connect
/// future waits that long after the loopback connect, as a TCP handshake with a server that
/// far would; the engine then connects with `Connector::connect_with`, which runs its first
/// CS exchange meanwhile, and the rustls client waits for the connect before its ClientHello.
pub(crate) async fn get_once_connect(
    client: &Client,
    port: u16,
    connect_rtt: Option<Duration>,
) -> Result<(bool, Vec<&'static str>, usize), BoxError> {
    let connect = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        if let Some(d) = connect_rtt {
            tokio::time::sleep(d).await;
        }
        Ok::<_, std::io::Error>(tcp)
    };
    let mut body = Vec::with_capacity(1024);
    let mut critical = 0;
    let (resumed, exchanges) = match client {
        Client::Engine(c) => {
            let name = lurk_engine::ServerName::try_from("localhost")?;
            let mut s = match connect_rtt {
                Some(_) => c.connect_with(&name, port, connect).await?,
                None => c.connect(connect.await?, &name, port).await?,
            };
            critical = s.summary().lurk_exchanges.len();
            s.write_all(REQUEST).await?;
            s.flush().await?;
            read_body(&mut s, &mut body).await;
            let sum = s.summary().clone();
            let _ = s.shutdown().await;
            (sum.resumed, sum.lurk_exchanges)
        }
        Client::Rustls(c) => {
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let mut s = c.connect(name, connect.await?).await?;
            s.write_all(REQUEST).await?;
            s.flush().await?;
            read_body(&mut s, &mut body).await;
            let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let _ = s.shutdown().await;
            (resumed, Vec::new())
        }
    };
    if body.len() < PAYLOAD_LEN || !body.ends_with(&payload()) {
        return Err(format!("short response ({} bytes)", body.len()).into());
    }
    Ok((resumed, exchanges, critical))
}

/// Reads to EOF (a server that closes without close_notify after the body is tolerated).
async fn read_body<S: tokio::io::AsyncRead + Unpin>(s: &mut S, body: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => body.extend_from_slice(&buf[..n]),
        }
    }
}

/// CPU time per connection of each process involved.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuPer {
    pub(crate) client: Duration,
    pub(crate) cs: Option<Duration>,
    pub(crate) server: Duration,
}

/// Figures of one (client, server, mode) cell.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    pub(crate) client: String,
    pub(crate) server: ServerKind,
    pub(crate) mode: Mode,
    pub(crate) lat: Lat,
    pub(crate) cpu: CpuPer,
    pub(crate) resumed_share: f64,
    pub(crate) exchanges: Vec<&'static str>,
    /// LURK exchanges made before the handshake completed (CS round trips it waited for).
    pub(crate) critical: usize,
    /// (concurrency, connections per second, share resumed)
    pub(crate) throughput: Vec<(usize, f64)>,
    pub(crate) errors: usize,
}

/// What [`latency`] measured: latency, CPU per connection, share resumed, LURK exchanges of
/// the last connection, failed connections, CS round trips on the critical path (the most
/// seen).
pub(crate) type LatencyFigures = (Lat, CpuPer, f64, Vec<&'static str>, usize, usize);

/// Sequential connections (concurrency 1): latency and CPU per connection.
pub(crate) async fn latency(
    client: &Client,
    port: u16,
    server_pid: u32,
    cs_pid: Option<u32>,
    n: usize,
    budget: Duration,
) -> Result<LatencyFigures, BoxError> {
    latency_connect(client, port, (server_pid, cs_pid), n, budget, None).await
}

/// [`latency`] with each connection's TCP handshake taking `connect_rtt` more
/// ([`get_once_connect`]).
pub(crate) async fn latency_connect(
    client: &Client,
    port: u16,
    (server_pid, cs_pid): (u32, Option<u32>),
    n: usize,
    budget: Duration,
    connect_rtt: Option<Duration>,
) -> Result<LatencyFigures, BoxError> {
    // Warm-up, and the first ticket for resumption.
    let (_, exchanges) = get_once(client, port).await?;
    for _ in 0..3 {
        get_once(client, port).await?;
    }
    let cpu0 = (
        sys::cpu_self(),
        cs_pid.map(sys::cpu_of),
        sys::cpu_of(server_pid),
    );
    let mut v = Vec::with_capacity(n);
    let mut resumed = 0;
    let mut errors = 0;
    let start = Instant::now();
    let mut last_exchanges = exchanges;
    let mut critical = 0;
    for _ in 0..n {
        let t = Instant::now();
        match get_once_connect(client, port, connect_rtt).await {
            Ok((r, ex, crit)) => {
                v.push(t.elapsed());
                resumed += usize::from(r);
                critical = critical.max(crit);
                if !ex.is_empty() {
                    last_exchanges = ex;
                }
            }
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("  connection failed: {e}");
                }
                if errors > n / 10 + 5 {
                    return Err(format!("too many failures, last: {e}").into());
                }
            }
        }
        if start.elapsed() > budget {
            break;
        }
    }
    let done = v.len().max(1) as u32;
    let cpu = CpuPer {
        client: (sys::cpu_self() - cpu0.0) / done,
        cs: cs_pid.map(|p| sys::cpu_of(p).saturating_sub(cpu0.1.unwrap_or_default()) / done),
        server: sys::cpu_of(server_pid).saturating_sub(cpu0.2) / done,
    };
    let share = resumed as f64 / f64::from(done);
    Ok((Lat::of(v), cpu, share, last_exchanges, errors, critical))
}

/// `conc` concurrent connection loops for `dur` (each at most `max_each` connections):
/// connections per second.
pub(crate) async fn throughput(
    client: &Client,
    port: u16,
    conc: usize,
    dur: Duration,
    max_each: usize,
) -> (f64, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, ok, failed, stop) = (client.clone(), ok.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..max_each {
                if stop.load(Ordering::Relaxed) || start.elapsed() > dur {
                    break;
                }
                match get_once(&client, port).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(dur + Duration::from_secs(20), t).await;
    }
    stop.store(true, Ordering::Relaxed);
    let n = ok.load(Ordering::Relaxed);
    (
        n as f64 / start.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

/// `openssl s_time` against a server: (connections per second, CPU of s_time per connection).
pub(crate) fn s_time(
    pki: &Pki,
    port: u16,
    mode: Mode,
    secs: u32,
) -> Result<(f64, Duration), BoxError> {
    let cpu0 = sys::cpu_children();
    let out = Command::new("openssl")
        .arg("s_time")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg(match mode {
            Mode::Full => "-new",
            Mode::Resumed => "-reuse",
        })
        .args(["-time", &secs.to_string(), "-www", "/index.txt", "-CAfile"])
        .arg(pki.ca())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let cpu = sys::cpu_children().saturating_sub(cpu0);
    let text = String::from_utf8_lossy(&out.stdout);
    // "N connections in T real seconds, B bytes read per connection"
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("real seconds"))
        .ok_or("s_time printed no result")?;
    let mut w = line.split_whitespace();
    let n: f64 = w.next().ok_or("s_time")?.parse()?;
    let secs: f64 = line
        .split("connections in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .ok_or("s_time")?
        .parse()?;
    if n <= 0.0 {
        return Err("s_time made no connection".into());
    }
    Ok((n / secs, cpu / n as u32))
}
