//! `lurk-engine`: the LURK engine's command line.
//!
//! - `cs-info`: what the CS offers this engine;
//! - `get URL`: `GET path HTTP/1.0`, prints the response body (read until EOF);
//! - `connect HOST:PORT`: like `openssl s_client`: stdin to the server (a line `k` / `K` alone
//!   sends a KeyUpdate, not requesting / requesting the server's), server to stdout.
//!
//! `--cs` takes one or more CS URLs (repeated flag or comma list); a host name stands for all
//! its addresses, re-resolved every `--cs-resolve-interval` seconds. The replicas are a
//! [`lurk_engine::cs_pool::CsPool`]: sessions pinned to their replica, new ones to the least
//! loaded healthy replica, unreachable replicas set aside (`--cs-health-interval`,
//! `--cs-backoff-max`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lurk_engine::config::{ClientConfig, ClientKey, Ephemeral, ExternalPsk};
use lurk_engine::cs_client::{CsEndpoint, CsError};
use lurk_engine::cs_pool::{CsPool, CsPoolOptions};
use lurk_engine::tickets::MemoryTicketStore;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::{Connector, ServerName, TlsStream};
use lurk_proto::pb;
use lurk_proto::wire::{CipherSuite, HashAlg, NamedGroup, PskKeyExchangeMode, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(
    name = "lurk-engine",
    version,
    about = "TLS 1.3 client whose secrets stay in the LURK Crypto Service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach the Crypto Service.
#[derive(Args, Clone)]
struct CsArgs {
    /// CS URL: https://host:port (mTLS), http://host:port (plaintext development CS) or
    /// unix:/path (a CS on this host that names the engine by its uid).
    /// Several replicas: repeat the flag or separate URLs with commas; a host name stands for
    /// every address it resolves to (re-resolved every --cs-resolve-interval).
    #[arg(long, env = "LURK_CS", value_delimiter = ',', required = true)]
    cs: Vec<String>,
    /// PEM CA of the CS certificate.
    #[arg(long)]
    cs_ca: Option<PathBuf>,
    /// PEM client certificate of this engine (its identity at the CS).
    #[arg(long)]
    cs_cert: Option<PathBuf>,
    /// PEM key of that certificate.
    #[arg(long)]
    cs_key: Option<PathBuf>,
    #[command(flatten)]
    pool: PoolArgs,
}

/// How the engine follows several CS replicas.
#[derive(Args, Clone)]
struct PoolArgs {
    /// Seconds between two resolutions of a CS host name.
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    cs_resolve_interval: f64,
    /// Seconds between two health checks (grpc.health.v1, else Ping) of a healthy replica.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    cs_health_interval: f64,
    /// Largest wait, in seconds, before a replica set aside is probed again (the wait starts at
    /// 0.25 s and doubles).
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    cs_backoff_max: f64,
    /// Seconds one CS call may wait for its turn (`--cs-max-calls`; past it the call is not
    /// sent), then take once sent; a call sent that runs out counts as unanswered (its replica
    /// is set aside; a connection's first call goes to another replica).
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    cs_call_timeout: f64,
    /// Calls in flight on one CS replica at most; the others wait their turn (keep it under the
    /// CS's `[limits] max_requests_per_engine`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    cs_max_calls: u32,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: seconds between 0.01 and 86400")),
    }
}

impl PoolArgs {
    fn options(&self) -> CsPoolOptions {
        let d = CsPoolOptions::default();
        CsPoolOptions {
            resolve_interval: Duration::from_secs_f64(self.cs_resolve_interval),
            health_interval: Duration::from_secs_f64(self.cs_health_interval),
            backoff_max: Duration::from_secs_f64(self.cs_backoff_max).max(d.backoff_min),
            call_timeout: Duration::from_secs_f64(self.cs_call_timeout),
            max_calls_in_flight: self.cs_max_calls as usize,
            ..d
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EphemeralArg {
    Cs,
    Engine,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PskKeArg {
    Dhe,
    Ke,
    Both,
}

/// TLS and CS options shared by `get` and `connect`.
#[derive(Args, Clone)]
struct TlsArgs {
    /// CS URL (https:// mTLS, http:// plaintext, unix:/path); not needed for --ephemeral engine without
    /// client key or external PSK. Several replicas: repeat the flag or separate URLs with
    /// commas; a host name stands for every address it resolves to.
    #[arg(long, env = "LURK_CS", value_delimiter = ',')]
    cs: Vec<String>,
    /// PEM CA of the CS certificate.
    #[arg(long)]
    cs_ca: Option<PathBuf>,
    /// PEM client certificate of this engine at the CS.
    #[arg(long)]
    cs_cert: Option<PathBuf>,
    /// PEM key of that certificate.
    #[arg(long)]
    cs_key: Option<PathBuf>,
    #[command(flatten)]
    pool: PoolArgs,
    /// PEM trust anchors for the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Key id at the CS to authenticate with when the server asks.
    #[arg(long)]
    client_key: Option<String>,
    /// supported_groups in preference order: x25519, secp256r1 / P-256, secp384r1 / P-384.
    #[arg(long, default_value = "x25519,secp256r1,secp384r1")]
    groups: String,
    /// How many of the first groups get a key share (the others are listed only).
    #[arg(long, default_value_t = 1)]
    key_shares: usize,
    /// Cipher suites (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
    /// TLS_CHACHA20_POLY1305_SHA256), comma-separated.
    #[arg(long)]
    ciphersuites: Option<String>,
    /// Who makes the (EC)DHE key pairs.
    #[arg(long, value_enum, default_value = "cs")]
    ephemeral: EphemeralArg,
    /// PSK key exchange modes offered.
    #[arg(long, value_enum, default_value = "dhe")]
    psk_ke: PskKeArg,
    /// External PSK identity held by the CS (offers only suites of its hash).
    #[arg(long)]
    external_psk: Option<String>,
    /// Make N more connections resuming with the tickets received.
    #[arg(long, default_value_t = 0)]
    resume: usize,
    /// Send this file as 0-RTT early data when a ticket allows it.
    #[arg(long)]
    early_data: Option<PathBuf>,
    /// ALPN protocols, comma-separated.
    #[arg(long)]
    alpn: Option<String>,
    /// Offer post-handshake client authentication.
    #[arg(long)]
    post_handshake_auth: bool,
    /// Offer record_size_limit N (RFC 8449): the largest protected record the engine accepts
    /// once the server echoes it (content type byte included).
    #[arg(long, value_parser = clap::value_parser!(u16).range(64..=16385))]
    record_size_limit: Option<u16>,
    /// After each connection, print one JSON line with the handshake summary on stderr.
    #[arg(long)]
    json: bool,
    /// Server name for SNI and certificate checks (default: the host).
    #[arg(long)]
    server_name: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print what the CS offers this engine (keys, groups, schemes).
    CsInfo {
        #[command(flatten)]
        cs: CsArgs,
    },
    /// GET a URL over HTTP/1.0 and print the response body.
    Get {
        /// https://host[:port]/path
        url: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Connect like `openssl s_client`: stdin to the server, the server to stdout.
    Connect {
        /// host:port
        address: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lurk-engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lurk-engine: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The CS replicas of `urls`, reached with the credentials in the files.
fn cs_pool(
    urls: &[String],
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    pool: &PoolArgs,
) -> Result<CsPool, BoxError> {
    let urls: Vec<String> = urls
        .iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let ep = CsEndpoint::from_files(urls.first().map_or("", String::as_str), ca, cert, key)
        .map_err(|e| format!("reading the CS credentials: {e}"))?;
    Ok(CsPool::new(&ep, &urls, pool.options())?)
}

async fn capabilities(pool: &CsPool) -> Result<pb::CapabilitiesResponse, CsError> {
    Ok(pool
        .call_any(|mut c| async move { c.capabilities(pb::CapabilitiesRequest {}).await })
        .await?
        .into_inner())
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::CsInfo { cs } => {
            let pool = cs_pool(
                &cs.cs,
                cs.cs_ca.as_deref(),
                cs.cs_cert.as_deref(),
                cs.cs_key.as_deref(),
                &cs.pool,
            )?;
            let ping = pool
                .call_any(|mut c| async move { c.ping(pb::PingRequest {}).await })
                .await?
                .into_inner();
            let caps = capabilities(&pool).await?;
            println!(
                "CS version {} sees this engine as {:?}",
                ping.version, ping.engine_identity
            );
            println!("ephemeral backend: {}", caps.ephemeral_backend);
            let groups: Vec<String> = caps
                .groups
                .iter()
                .map(|g| NamedGroup::from(*g as u16).name().to_owned())
                .collect();
            println!("groups: {}", groups.join(", "));
            for k in &caps.keys {
                let schemes: Vec<&str> = k
                    .signature_schemes
                    .iter()
                    .map(|s| SignatureScheme::from(*s as u16).name())
                    .collect();
                println!(
                    "key {:?}: {} ({}), chain of {} certificate(s)",
                    k.key_id,
                    k.key_type,
                    schemes.join(", "),
                    k.certificate_chain.len()
                );
            }
            for p in &caps.external_psks {
                println!(
                    "external PSK {:?} ({})",
                    String::from_utf8_lossy(&p.identity),
                    if p.tls_hash == pb::TlsHash::Sha384 as i32 {
                        "SHA-384"
                    } else {
                        "SHA-256"
                    }
                );
            }
            println!(
                "tickets: at most {} per engine, lifetime cap {} s",
                caps.max_tickets_per_engine, caps.ticket_lifetime_seconds
            );
            let replicas: Vec<String> = pool.replicas().into_iter().map(|r| r.url).collect();
            println!("replicas: {}", replicas.join(", "));
            Ok(())
        }
        Command::Get { url, tls } => get(&url, &tls).await,
        Command::Connect { address, tls } => connect(&address, &tls).await,
    }
}

/// Builds the connector: configuration from the flags, the CS channel, and what the CS says
/// about the client key and the external PSK.
async fn connector(tls: &TlsArgs) -> Result<Connector, BoxError> {
    let mut cfg = ClientConfig::builder();
    if let Some(ca) = &tls.ca {
        cfg = cfg.trust_anchors(TrustAnchors::from_pem_file(ca)?);
    }
    let groups = tls
        .groups
        .split([',', ':'])
        .filter(|s| !s.is_empty())
        .map(|g| NamedGroup::from_name(g).ok_or_else(|| format!("unknown group {g:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    cfg = cfg.groups(groups).key_shares(tls.key_shares);
    if let Some(list) = &tls.ciphersuites {
        let suites = list
            .split([',', ':'])
            .filter(|s| !s.is_empty())
            .map(|n| {
                CipherSuite::SUPPORTED
                    .into_iter()
                    .find(|s| s.name().eq_ignore_ascii_case(n))
                    .ok_or_else(|| format!("unknown cipher suite {n:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        cfg = cfg.cipher_suites(suites);
    }
    cfg = cfg.ephemeral(match tls.ephemeral {
        EphemeralArg::Cs => Ephemeral::Cs,
        EphemeralArg::Engine => Ephemeral::Engine,
    });
    cfg = cfg.psk_modes(match tls.psk_ke {
        PskKeArg::Dhe => vec![PskKeyExchangeMode::PskDheKe],
        PskKeArg::Ke => vec![PskKeyExchangeMode::PskKe],
        PskKeArg::Both => vec![PskKeyExchangeMode::PskDheKe, PskKeyExchangeMode::PskKe],
    });
    if let Some(list) = &tls.alpn {
        cfg = cfg.alpn_protocols(list.split(',').filter(|s| !s.is_empty()));
    }
    cfg = cfg.post_handshake_auth(tls.post_handshake_auth);
    if let Some(n) = tls.record_size_limit {
        cfg = cfg.record_size_limit(n);
    }
    if let Some(f) = &tls.early_data {
        cfg = cfg.early_data(
            std::fs::read(f).map_err(|e| format!("reading early data {}: {e}", f.display()))?,
        );
    }
    cfg = cfg.ticket_store(Arc::new(MemoryTicketStore::default()));

    let cs = if tls.cs.is_empty() {
        None
    } else {
        Some(cs_pool(
            &tls.cs,
            tls.cs_ca.as_deref(),
            tls.cs_cert.as_deref(),
            tls.cs_key.as_deref(),
            &tls.pool,
        )?)
    };
    if tls.client_key.is_some() || tls.external_psk.is_some() {
        let pool = cs
            .as_ref()
            .ok_or("--client-key and --external-psk need the Crypto Service (--cs)")?;
        let caps = capabilities(pool).await?;
        if let Some(id) = &tls.client_key {
            let key = ClientKey::from_capabilities(&caps, id)
                .ok_or_else(|| format!("the CS has no key {id:?} for this engine"))?;
            cfg = cfg.client_key(key);
        }
        if let Some(id) = &tls.external_psk {
            // A PSK the CS does not list is still offered (SHA-256): the CS refuses it.
            let psk = ExternalPsk::from_capabilities(&caps, id.as_bytes()).unwrap_or(ExternalPsk {
                identity: id.as_bytes().to_vec(),
                hash: HashAlg::Sha256,
            });
            cfg = cfg.external_psk(psk);
        }
    }
    let cfg = Arc::new(cfg.build()?);
    Ok(match cs {
        Some(pool) => Connector::with_cs_pool(cfg, pool),
        None => Connector::new(cfg, None),
    })
}

/// host, port, path of `https://host[:port]/path` (or `host:port/path`).
fn parse_url(url: &str) -> Result<(String, u16, String), BoxError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("tls://"))
        .unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = split_host_port(authority, 443)?;
    Ok((host, port, path))
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(String, u16), BoxError> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, rest) = v6.split_once(']').ok_or("unterminated [IPv6] address")?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None => default_port,
        };
        return Ok((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_owned(),
            p.parse().map_err(|_| format!("bad port {p:?}"))?,
        )),
        None => Ok((authority.to_owned(), default_port)),
    }
}

async fn open(
    connector: &Connector,
    host: &str,
    port: u16,
    server_name: &str,
) -> Result<TlsStream<TcpStream>, BoxError> {
    let name = ServerName::try_from(server_name)?;
    // The first CS exchange runs while the TCP connection is made.
    let tcp = async {
        let tcp = TcpStream::connect((host, port)).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("connecting to {host}:{port}: {e}"))
        })?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    };
    Ok(connector.connect_with(&name, port, tcp).await?)
}

fn report(tls: &TlsArgs, stream: &TlsStream<TcpStream>) {
    if tls.json {
        eprintln!("{}", stream.summary().to_json());
    }
}

async fn get(url: &str, tls: &TlsArgs) -> Result<(), BoxError> {
    let (host, port, path) = parse_url(url)?;
    let server_name = tls.server_name.clone().unwrap_or_else(|| host.clone());
    let connector = connector(tls).await?;
    for _ in 0..=tls.resume {
        let mut stream = open(&connector, &host, port, &server_name).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {server_name}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut response = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                // HTTP/1.0 ends at EOF; a server closing TCP without close_notify (OpenSSL
                // s_server -www does) ends it too, with a warning.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    eprintln!("lurk-engine: warning: {e}");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Ignore a peer that already went away when we say goodbye.
        let _ = stream.shutdown().await;
        report(tls, &stream);
        let body = match find_subslice(&response, b"\r\n\r\n") {
            Some(i) if response.starts_with(b"HTTP/") => &response[i + 4..],
            _ => &response[..],
        };
        let mut stdout = tokio::io::stdout();
        stdout.write_all(body).await?;
        stdout.flush().await?;
    }
    // Ticket registrations and session closes left at the CS by the connections.
    connector.wait_for_cs(Duration::from_secs(5)).await;
    Ok(())
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn connect(address: &str, tls: &TlsArgs) -> Result<(), BoxError> {
    let (host, port) = split_host_port(address, 443)?;
    let server_name = tls.server_name.clone().unwrap_or_else(|| host.clone());
    let connector = connector(tls).await?;
    // --resume N: N connections first, to collect tickets; the interactive one resumes.
    for _ in 0..tls.resume {
        let mut s = open(&connector, &host, port, &server_name).await?;
        s.wait_for_tickets(Duration::from_secs(2)).await?;
        let _ = s.shutdown().await;
        report(tls, &s);
    }
    let mut stream = open(&connector, &host, port, &server_name).await?;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None).await;
                    return;
                }
                Ok(_) => {
                    if tx.send(Some(line)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            line = rx.recv() => match line.flatten() {
                Some(line) => {
                    let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
                    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                    match trimmed {
                        b"k" => stream.key_update(false).await?,
                        b"K" => stream.key_update(true).await?,
                        _ => {
                            stream.write_all(&line).await?;
                            stream.flush().await?;
                        }
                    }
                }
                None => {
                    stream.shutdown().await?;
                    break;
                }
            },
            r = stream.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => {
                    stdout.write_all(&buf[..n]).await?;
                    stdout.flush().await?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    eprintln!("lurk-engine: warning: {e}");
                    break;
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    if tls.json {
        eprintln!("{}", stream.summary().to_json());
    }
    drop(stream);
    connector.wait_for_cs(Duration::from_secs(5)).await;
    Ok(())
}
