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
//! style: `[exchanges] server_flight = false`), when that CS starts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lurk_engine::config::{ClientConfig, Ephemeral};
use lurk_engine::cs_client::CsEndpoint;
use lurk_engine::tickets::MemoryTicketStore;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::Connector;
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

fn connector(
    dev: &std::path::Path,
    url: &str,
    pki: &Pki,
    resume: bool,
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
    Ok(Client::Engine(Arc::new(Connector::new(
        Arc::new(cfg),
        Some(ep.connect_lazy()?),
    ))))
}

struct Row {
    case: &'static str,
    cs: &'static str,
    lat: Lat,
    exchanges: Vec<&'static str>,
    resumed: usize,
}

/// `n` sequential connections after a warm-up.
async fn run_row(
    client: &Client,
    port: u16,
    n: usize,
) -> Result<(Lat, Vec<&'static str>, usize), BoxError> {
    let mut exchanges = Vec::new();
    for _ in 0..20 {
        exchanges = handshake::get_once(client, port).await?.1;
    }
    let mut v = Vec::with_capacity(n);
    let mut resumed = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (r, ex) = handshake::get_once(client, port).await?;
        v.push(t.elapsed());
        resumed += usize::from(r);
        exchanges = ex;
    }
    Ok((Lat::of(v), exchanges, resumed))
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
    for (cs_name, (_proc, url)) in &css {
        for (case, port, resume) in [
            ("no tickets, resumption asked", port_none, true),
            ("full, no resumption", port, false),
            ("resumed", port, true),
        ] {
            let client = connector(&fx.dev, url, &pki, resume)?;
            let (lat, exchanges, resumed) = rt.block_on(run_row(&client, port, n))?;
            rows.push(Row {
                case,
                cs: cs_name,
                lat,
                exchanges,
                resumed,
            });
            if let Client::Engine(c) = &client {
                rt.block_on(c.wait_for_cs(Duration::from_secs(5)));
            }
        }
    }
    println!(
        "| case | CS | p50 ms | p90 ms | p99 ms | n | resumed | LURK exchanges of the connection |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            r.case,
            r.cs,
            ms(r.lat.p50),
            ms(r.lat.p90),
            ms(r.lat.p99),
            r.lat.n,
            r.resumed,
            r.exchanges.join(", ")
        );
    }
    Ok(())
}
