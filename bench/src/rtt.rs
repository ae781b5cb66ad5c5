//! `lurk-bench rtt`: the CS round trips on a connection's critical path (issue 10), measured
//! as the engine's users see them: sequential connections (connect, handshake, `GET`, close)
//! from one `Connector` to `openssl s_server`, the engine with a local `lurk-cs` (memory
//! ephemerals). Prints a markdown table; BENCHMARKS.md keeps the figures of the runs made
//! before and after each change.
//!
//! Rows: a server that sends no ticket while the client asks for resumption (the CLI's
//! configuration: each connection ends with a session close that the next one must not wait
//! for); full handshakes without resumption; resumed handshakes. Each row once with the CS's
//! default exchanges and once with a CS that offers only the standard ones (`LURK_EXTRA_ENV`
//! style: `[exchanges] server_flight = false`), when that CS starts. With the default CS each
//! row is also run over a tonic `Channel` (every call through tonic's buffer task) beside the
//! engine's own channel (the call driven by the caller's future), in alternating blocks, with
//! the CPU each process spent per connection.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lurk_engine::config::{ClientConfig, Ephemeral};
use lurk_engine::cs_channel::{CsChannel, CsClient};
use lurk_engine::cs_client::CsEndpoint;
use lurk_engine::tickets::MemoryTicketStore;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::Connector;
use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
use lurk_proto::wire::{CipherSuite, NamedGroup};

use crate::handshake::{self, Client, Pki, Proc};
use crate::sys::{self, ms, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `openssl s_server -WWW` with `extra` arguments, on a free loopback port.
fn start_openssl(pki: &Pki, extra: &[&str]) -> Result<(Proc, u16), BoxError> {
    let port = sys::free_port();
    let mut child = Command::new("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-tls1_3", "-WWW", "-cert"])
        .arg(pki.cert())
        .arg("-key")
        .arg(pki.key())
        .args(extra)
        .current_dir(pki.www())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc { child };
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("ACCEPT") => break,
            Some(Ok(_)) => {}
            _ => return Err("openssl s_server did not start".into()),
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((proc, port))
}

/// A `lurk-cs` (memory ephemerals) with extra environment (configuration overrides).
fn start_cs(dev: &std::path::Path, env: &[(&str, &str)]) -> Result<(Proc, String), BoxError> {
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let r = handshake::start_cs(dev, "memory");
    for (k, _) in env {
        std::env::remove_var(k);
    }
    r
}

/// The engine's gRPC channel to the CS.
#[derive(Clone, Copy, PartialEq)]
enum Chan {
    /// `CsEndpoint::connect_lazy`: the engine's own HTTP/2 channel.
    Direct,
    /// A tonic `Channel` with the same TLS settings, through `CsChannel::from`.
    Tonic,
}

impl Chan {
    fn name(self) -> &'static str {
        match self {
            Chan::Direct => "engine's",
            Chan::Tonic => "tonic Channel",
        }
    }
}

/// A tonic `Channel` to the CS at `url` as the engine identity.
fn tonic_client(tls: &std::path::Path, url: &str) -> Result<CsClient, BoxError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |name: &str| std::fs::read(tls.join(name));
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("engine.pem")?, read("engine.key")?))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .tls_config(config)?
        .connect_lazy();
    Ok(CryptoServiceClient::new(CsChannel::from(channel)))
}

fn connector(
    dev: &std::path::Path,
    url: &str,
    pki: &Pki,
    resume: bool,
    chan: Chan,
) -> Result<Client, BoxError> {
    let tls = dev.join("tls");
    let mut ep = CsEndpoint::from_files(
        url,
        Some(&tls.join("ca.pem")),
        Some(&tls.join("engine.pem")),
        Some(&tls.join("engine.key")),
    )?;
    ep.domain = Some("localhost".into());
    let mut cfg = ClientConfig::builder()
        .trust_anchors(TrustAnchors::from_pem_file(&pki.ca())?)
        .cipher_suites([CipherSuite::TlsAes128GcmSha256])
        .groups([NamedGroup::X25519])
        .ephemeral(Ephemeral::Cs)
        .resume(resume);
    if resume {
        cfg = cfg.ticket_store(Arc::new(MemoryTicketStore::new(64)));
    }
    let cfg = cfg.build()?;
    let cs = match chan {
        Chan::Direct => ep.connect_lazy()?,
        Chan::Tonic => tonic_client(&tls, url)?,
    };
    Ok(Client::Engine(Arc::new(Connector::new(
        Arc::new(cfg),
        Some(cs),
    ))))
}

struct Row {
    case: &'static str,
    cs: &'static str,
    chan: Chan,
    times: Vec<Duration>,
    /// CPU of this process (the engine) and of the CS over `times`.
    cpu_engine: Duration,
    cpu_cs: Duration,
    exchanges: Vec<&'static str>,
    resumed: usize,
}

/// Blocks of sequential connections each row is run in, alternating between the rows of a case.
const BLOCKS: usize = 5;

/// `n` more sequential connections of `row` (after a warm-up on the first block).
async fn run_block(
    row: &mut Row,
    client: &Client,
    port: u16,
    cs_pid: u32,
    n: usize,
) -> Result<(), BoxError> {
    if row.times.is_empty() {
        for _ in 0..20 {
            row.exchanges = handshake::get_once(client, port).await?.1;
        }
    }
    let (engine0, cs0) = (sys::cpu_self(), sys::cpu_of(cs_pid));
    for _ in 0..n {
        let t = Instant::now();
        let (r, ex) = handshake::get_once(client, port).await?;
        row.times.push(t.elapsed());
        row.resumed += usize::from(r);
        row.exchanges = ex;
    }
    row.cpu_engine += sys::cpu_self() - engine0;
    row.cpu_cs += sys::cpu_of(cs_pid) - cs0;
    Ok(())
}

pub(crate) fn run(n: usize) -> Result<(), BoxError> {
    let fx = crate::cs_inproc::Fixture::new()?;
    let dir = tempfile::Builder::new()
        .prefix("lurk-bench-rtt-")
        .tempdir()?;
    let pki = Pki::new(dir.path(), &crate::workspace_root())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _rt = rt.enter();
    let mut css = vec![("default", start_cs(&fx.dev, &[])?)];
    match start_cs(&fx.dev, &[("LURK_EXCHANGES__SERVER_FLIGHT", "false")]) {
        Ok(cs) => css.push(("standard exchanges only", cs)),
        Err(e) => eprintln!("[lurk-bench] no CS with the standard exchanges only: {e}"),
    }
    let (_srv_none, port_none) = start_openssl(&pki, &["-num_tickets", "0"])?;
    let (_srv, port) = start_openssl(&pki, &[])?;
    let mut rows = Vec::new();
    for (cs_name, (proc, url)) in &css {
        let chans: &[Chan] = if *cs_name == "default" {
            &[Chan::Direct, Chan::Tonic]
        } else {
            &[Chan::Direct]
        };
        for (case, port, resume) in [
            ("no tickets, resumption asked", port_none, true),
            ("full, no resumption", port, false),
            ("resumed", port, true),
        ] {
            let mut case_rows = Vec::new();
            for &chan in chans {
                let client = connector(&fx.dev, url, &pki, resume, chan)?;
                let row = Row {
                    case,
                    cs: cs_name,
                    chan,
                    times: Vec::with_capacity(n),
                    cpu_engine: Duration::ZERO,
                    cpu_cs: Duration::ZERO,
                    exchanges: Vec::new(),
                    resumed: 0,
                };
                case_rows.push((client, row));
            }
            for b in 0..BLOCKS {
                let count = n / BLOCKS + usize::from(b < n % BLOCKS);
                for (client, row) in &mut case_rows {
                    rt.block_on(run_block(row, client, port, proc.pid(), count))?;
                }
            }
            for (client, row) in case_rows {
                if let Client::Engine(c) = &client {
                    rt.block_on(c.wait_for_cs(Duration::from_secs(5)));
                }
                rows.push(row);
            }
        }
    }
    println!(
        "| case | CS | gRPC channel | p50 ms | p90 ms | p99 ms | CPU engine ms | CPU CS ms | n | resumed | LURK exchanges of the connection |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let per = |d: Duration| ms(d) / r.times.len().max(1) as f64;
        let (cpu_engine, cpu_cs) = (per(r.cpu_engine), per(r.cpu_cs));
        let lat = Lat::of(r.times);
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            r.case,
            r.cs,
            r.chan.name(),
            ms(lat.p50),
            ms(lat.p90),
            ms(lat.p99),
            cpu_engine,
            cpu_cs,
            lat.n,
            r.resumed,
            r.exchanges.join(", ")
        );
    }
    Ok(())
}
