//! `lurk-cs`: the LURK Crypto Service.
//!
//! - `lurk-cs serve --config FILE`: serve the gRPC API (mTLS unless configured otherwise);
//! - `lurk-cs token init-dev DIR`: a private SoftHSM token with client keys, certificates,
//!   sealing key, transport PKI and a config file, in one step;
//! - `lurk-cs keys import|list|generate`: manage the signing keys in the token;
//! - `lurk-cs psk import`: store an external PSK, sealed by the token;
//! - `lurk-cs health`: ask a running CS's `grpc.health.v1.Health` over mTLS (exec probes).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use lurk_cs::config::{Config, LogFormat};
use lurk_cs::cs::Cs;
use lurk_cs::service::CryptoServiceImpl;

#[derive(Parser)]
#[command(
    name = "lurk-cs",
    version,
    about = "LURK-T Crypto Service for TLS 1.3 clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CryptoService gRPC API.
    Serve {
        #[arg(long, short, env = "LURK_CONFIG")]
        config: PathBuf,
        /// Override listen.addr (e.g. 127.0.0.1:0 to pick a free port; the bound address
        /// is printed as `READY <addr>` on stdout).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Token set-up.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Signing keys in the token.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// External PSKs (sealed in the store).
    Psk {
        #[command(subcommand)]
        command: PskCommand,
    },
    /// The ticket store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Ask a running CS's grpc.health.v1.Health/Check over mTLS, as an engine does; exit 0
    /// only when it answers SERVING (a container exec probe: Kubernetes' own `grpc:` probe
    /// cannot present a client certificate).
    Health {
        /// URL of the CS.
        #[arg(long, default_value = "https://127.0.0.1:7443")]
        url: String,
        /// Name the CS certificate must carry (default: the URL's host).
        #[arg(long)]
        server_name: Option<String>,
        /// PEM CA that issued the CS certificate.
        #[arg(long)]
        ca: PathBuf,
        /// PEM client certificate issued by the CS's `client_ca` (an engine identity).
        #[arg(long)]
        cert: PathBuf,
        /// Its PEM private key.
        #[arg(long)]
        key: PathBuf,
        /// Service asked about ("" = the whole server).
        #[arg(long, default_value = "lurk.tls13.v1.CryptoService")]
        service: String,
        /// Milliseconds the connection and the check may take in all.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Exit 0 whatever the status, as long as the CS answers (a liveness probe:
        /// NOT_SERVING while the store or the token is away heals without a restart).
        #[arg(long)]
        any_status: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Apply the pending schema migrations (`serve` applies them at start too) and check
    /// that the token's sealing key is the store's.
    Migrate {
        #[arg(long, short, env = "LURK_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a development setup under DIR: SoftHSM config and token, Ed25519 and P-256
    /// client keys with self-signed certificates, sealing key, mTLS files, lurk-cs.toml.
    InitDev { dir: PathBuf },
    /// Create the AES key that seals stored PSKs (`[token] sealing_key`), unless it exists;
    /// or move it between replicas' tokens, wrapped.
    SealingKey {
        #[arg(long, short, env = "LURK_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Create it extractable, so that it can be exported wrapped to other replicas
        /// (it never leaves the token in clear).
        #[arg(long)]
        exportable: bool,
        #[command(subcommand)]
        action: Option<SealingKeyAction>,
    },
    /// AES key-wrapping keys (shared by replicas' tokens, from a key ceremony).
    WrappingKey {
        #[command(subcommand)]
        command: WrappingKeyCommand,
    },
}

#[derive(Subcommand)]
enum SealingKeyAction {
    /// Write the sealing key wrapped (C_WrapKey, CKM_AES_KEY_WRAP) under a wrapping key.
    ExportWrapped {
        /// Label of the wrapping key in the token.
        #[arg(long)]
        wrapping_key: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Unwrap (C_UnwrapKey) a file from `export-wrapped` into this token as its sealing key.
    ImportWrapped {
        #[arg(long)]
        wrapping_key: String,
        #[arg(long = "in")]
        input: PathBuf,
        /// Keep the imported key exportable.
        #[arg(long)]
        exportable: bool,
    },
}

#[derive(Subcommand)]
enum WrappingKeyCommand {
    /// Import an AES key (hex in a file, 16/24/32 bytes) as a wrap/unwrap-only key.
    Import {
        #[arg(long, short, env = "LURK_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        label: String,
        /// File holding the key in hex (never on the command line).
        #[arg(long)]
        key_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Import a PKCS#8 PEM private key (sensitive, non-extractable) and its chain.
    Import {
        #[arg(long, short, env = "LURK_CONFIG")]
        config: PathBuf,
        /// Object label in the token.
        #[arg(long)]
        label: String,
        /// Object id in the token (hex).
        #[arg(long)]
        id: String,
        /// PKCS#8 PEM private key file.
        #[arg(long)]
        key: PathBuf,
        /// PEM certificate chain, leaf first; copied next to the config as certs/<label>.pem.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
    /// List the keys in the token.
    List {
        #[arg(long, short, env = "LURK_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PskCommand {
    /// Store an external PSK (hex in a file), sealed by the token's key.
    Import {
        #[arg(long, short, env = "LURK_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        identity: String,
        /// File holding the PSK in hex (never on the command line).
        #[arg(long)]
        key_file: PathBuf,
        /// sha256 or sha384.
        #[arg(long, default_value = "sha256")]
        hash: String,
        /// An engine identity allowed to use this PSK (repeat for several).
        #[arg(long = "allowed-engine", value_name = "ID")]
        allowed_engines: Vec<String>,
        /// Every authenticated engine may use this PSK (required without --allowed-engine).
        #[arg(long, conflicts_with = "allowed_engines")]
        all_engines: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lurk-cs: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long RPCs in flight may take to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn load(config: &Path) -> Result<Config, BoxError> {
    // The token module's environment (`[token] module_env`, e.g. SOFTHSM2_CONF) is set when
    // the token is opened, which happens before any worker thread starts.
    Ok(Config::load(config)?)
}

/// The configuration and its token, for the commands that work on the token.
fn open_token(config: &Path) -> Result<(Config, lurk_cs::token::Token), BoxError> {
    let cfg = load(config)?;
    let token = lurk_cs::token::Token::open(&cfg.token)?;
    Ok((cfg, token))
}

/// A secret kept in a file as hex (`token wrapping-key import`, `psk import`), read into
/// zeroizing buffers.
fn read_hex_secret(path: &Path, what: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, BoxError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    let bytes = hex::decode(text.trim())
        .map_err(|_| format!("the key file must hold the {what} in hex"))?;
    Ok(zeroize::Zeroizing::new(bytes))
}

fn need_config(config: Option<PathBuf>) -> Result<PathBuf, BoxError> {
    config.ok_or_else(|| "--config FILE (or LURK_CONFIG) is required".into())
}

fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Serve { config, listen } => {
            let mut cfg = load(&config)?;
            if let Some(addr) = listen {
                cfg.listen.addr = addr;
            }
            init_logging(&cfg);
            serve(cfg)
        }
        Command::Token {
            command: TokenCommand::InitDev { dir },
        } => {
            let setup = lurk_cs::init_dev::init_dev(&dir)?;
            println!("development setup in {}", setup.dir.display());
            println!(
                "  token {:?} (SoftHSM config {})",
                setup.token_label,
                setup.softhsm_conf.display()
            );
            println!("  PIN file {} (mode 0600)", setup.pin_file.display());
            for (id, cert) in &setup.client_certs {
                println!("  client key {id:?}: certificate {}", cert.display());
            }
            println!("  mTLS files in {}", setup.tls_dir.display());
            println!(
                "start the CS with: lurk-cs serve --config {}",
                setup.config.display()
            );
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::SealingKey {
                    config,
                    action: Some(action),
                    ..
                },
        } => {
            let (cfg, token) = open_token(&need_config(config)?)?;
            use lurk_cs::token::wrap::WRAPPED_HEADER;
            match action {
                SealingKeyAction::ExportWrapped { wrapping_key, out } => {
                    let wrapped = token.export_sealing_key_wrapped(&wrapping_key)?;
                    std::fs::write(
                        &out,
                        format!("{WRAPPED_HEADER}\n{}\n", hex::encode(wrapped)),
                    )?;
                    println!(
                        "sealing key {:?} wrapped under {wrapping_key:?} in {}",
                        cfg.token.sealing_key,
                        out.display()
                    );
                }
                SealingKeyAction::ImportWrapped {
                    wrapping_key,
                    input,
                    exportable,
                } => {
                    let text = std::fs::read_to_string(&input)?;
                    let mut lines = text.lines();
                    if lines.next() != Some(WRAPPED_HEADER) {
                        return Err(format!(
                            "{}: not a file from `sealing-key export-wrapped`",
                            input.display()
                        )
                        .into());
                    }
                    let wrapped = hex::decode(lines.next().unwrap_or("").trim())
                        .map_err(|e| format!("{}: {e}", input.display()))?;
                    token.import_sealing_key_wrapped(&wrapping_key, &wrapped, exportable)?;
                    println!("sealing key {:?} imported", cfg.token.sealing_key);
                }
            }
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::WrappingKey {
                    command:
                        WrappingKeyCommand::Import {
                            config,
                            label,
                            key_file,
                        },
                },
        } => {
            let (_, token) = open_token(&config)?;
            let key = read_hex_secret(&key_file, "key")?;
            token.import_wrapping_key(&label, &key)?;
            println!("wrapping key {label:?} imported");
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::SealingKey {
                    config,
                    exportable,
                    action: None,
                },
        } => {
            let (cfg, token) = open_token(&need_config(config)?)?;
            if token.ensure_sealing_key_exportable(exportable)? {
                println!("created the sealing key {:?}", cfg.token.sealing_key);
            } else {
                println!("the sealing key {:?} already exists", cfg.token.sealing_key);
            }
            Ok(())
        }
        Command::Keys { command } => match command {
            KeysCommand::Import {
                config,
                label,
                id,
                key,
                cert,
            } => {
                let (_, token) = open_token(&config)?;
                let id = hex::decode(&id).map_err(|e| format!("--id: {e}"))?;
                let pem = zeroize::Zeroizing::new(std::fs::read_to_string(&key)?);
                // The certificate is checked against the key before the key enters the token.
                let leaf_spki = match &cert {
                    Some(cert) => Some(lurk_cs::keyring::leaf_spki(
                        &lurk_cs::keyring::read_chain(cert)?[0],
                    )?),
                    None => None,
                };
                let imported = lurk_cs::token::keys::import_pkcs8_pem(
                    &token,
                    &label,
                    &id,
                    &pem,
                    leaf_spki.as_deref(),
                )?;
                println!("imported {imported:?}");
                if let Some(cert) = cert {
                    let dir = config.parent().unwrap_or(Path::new(".")).join("certs");
                    std::fs::create_dir_all(&dir)?;
                    let dest = dir.join(format!("{label}.pem"));
                    std::fs::copy(&cert, &dest)?;
                    println!(
                        "add to the configuration:\n[[keys]]\nid = \"{label}\"\nobject = \"pkcs11:object={label};type=private\"\ncertificate_chain = \"{}\"",
                        dest.display()
                    );
                }
                Ok(())
            }
            KeysCommand::List { config } => {
                let (_, token) = open_token(&config)?;
                for k in lurk_cs::token::keys::list_keys(&token)? {
                    println!("{k}");
                }
                Ok(())
            }
        },
        Command::Psk {
            command:
                PskCommand::Import {
                    config,
                    identity,
                    key_file,
                    hash,
                    allowed_engines,
                    all_engines,
                },
        } => {
            if allowed_engines.is_empty() && !all_engines {
                return Err(
                    "say which engines may use this PSK: --allowed-engine ID (repeatable), or --all-engines"
                        .into(),
                );
            }
            if allowed_engines.iter().any(|e| e.is_empty()) {
                return Err("--allowed-engine: an engine identity is not empty".into());
            }
            let cfg = load(&config)?;
            let hash = match hash.as_str() {
                "sha256" => lurk_proto::wire::HashAlg::Sha256,
                "sha384" => lurk_proto::wire::HashAlg::Sha384,
                other => return Err(format!("--hash: {other:?} is not sha256 or sha384").into()),
            };
            let psk = read_hex_secret(&key_file, "PSK")?;
            let token = lurk_cs::token::Token::open(&cfg.token)?;
            let store = lurk_cs::store::open(&cfg.store, Arc::new(token))?;
            store.put_external_psk(lurk_cs::store::ExternalPsk {
                identity: identity.as_bytes().to_vec(),
                psk,
                hash,
                allowed_engines: allowed_engines.clone(),
            })?;
            if allowed_engines.is_empty() {
                println!("stored external PSK {identity:?} ({hash:?}) for every engine");
            } else {
                println!(
                    "stored external PSK {identity:?} ({hash:?}) for engines {allowed_engines:?}"
                );
            }
            Ok(())
        }
        Command::Health {
            url,
            server_name,
            ca,
            cert,
            key,
            service,
            timeout_ms,
            any_status,
        } => health_check(HealthCheck {
            url,
            server_name,
            ca,
            cert,
            key,
            service,
            timeout: std::time::Duration::from_millis(timeout_ms),
            any_status,
        }),
        Command::Store {
            command: StoreCommand::Migrate { config },
        } => {
            let (cfg, token) = open_token(&config)?;
            // Opening applies the migrations and checks the key check value.
            let _store = lurk_cs::store::open(&cfg.store, Arc::new(token))?;
            println!(
                "ticket store ({:?}) is at the latest schema and opens with this sealing key",
                cfg.store.backend
            );
            Ok(())
        }
    }
}

struct HealthCheck {
    url: String,
    server_name: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    service: String,
    timeout: std::time::Duration,
    any_status: bool,
}

/// One grpc.health.v1 Check over mTLS; Ok for SERVING (any answer with `any_status`).
fn health_check(h: HealthCheck) -> Result<(), BoxError> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&h.ca)?))
        .identity(Identity::from_pem(read(&h.cert)?, read(&h.key)?));
    if let Some(name) = &h.server_name {
        tls = tls.domain_name(name.clone());
    }
    let endpoint = Channel::from_shared(h.url.clone())?
        .tls_config(tls)?
        .connect_timeout(h.timeout)
        .timeout(h.timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        tokio::time::timeout(h.timeout, async {
            let channel = endpoint.connect().await?;
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: h.service.clone(),
                })
                .await?;
            Ok::<_, BoxError>(answer.into_inner().status)
        })
        .await
        .map_err(|_| -> BoxError { format!("{}: no answer in {:?}", h.url, h.timeout).into() })?
    })?;
    let name = ServingStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("unknown status");
    if h.any_status || status == ServingStatus::Serving as i32 {
        println!("{} {:?}: {name}", h.url, h.service);
        Ok(())
    } else {
        Err(format!("{} {:?}: {name}", h.url, h.service).into())
    }
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn serve(cfg: Config) -> Result<(), BoxError> {
    let cs = Arc::new(Cs::from_config(&cfg)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.listen.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen.addr))?;
        let addr = listener.local_addr()?;
        lurk_cs::telemetry::configure(&cfg.metrics, &cfg.log);
        if let Some(maddr) = &cfg.metrics.addr {
            // Plain HTTP, for the operator's scraper: bind it to a private address.
            let metrics = tokio::net::TcpListener::bind(maddr)
                .await
                .map_err(|e| format!("cannot listen on {maddr} ([metrics] addr): {e}"))?;
            let maddr = metrics.local_addr()?;
            tracing::info!(addr = %maddr, "metrics listener (GET /metrics)");
            println!("METRICS {maddr}");
            tokio::spawn(lurk_cs::telemetry::serve(metrics, cs.clone()));
        }
        tracing::info!(
            %addr,
            mode = if cfg.listen.plaintext { "PLAINTEXT (development only)" } else { "mTLS" },
            ephemeral = ?cfg.ephemeral.backend,
            "lurk-cs serving"
        );
        // The listener's TLS is kept to be reloaded, with the signing keys' certificate
        // chains, on SIGHUP.
        let tls = lurk_cs::reload::ListenerTls::for_listen(&cfg.listen)?;
        lurk_cs::reload::reload_on_sighup(tls.clone(), cs.clone())
            .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
        // Bound before READY, so that an engine may connect to it at once.
        let unix = cfg
            .listen
            .unix
            .as_ref()
            .map(lurk_cs::server::UnixListening::bind)
            .transpose()?;
        println!("READY {addr}");
        // Expired sessions are purged off the async threads (dropping one may destroy a
        // token object).
        let purge_cs = cs.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                let cs = purge_cs.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    cs.sessions.purge_expired();
                    if let Err(e) = cs.store.purge_expired(std::time::SystemTime::now()) {
                        tracing::warn!(error = %e, "purging expired tickets failed");
                    }
                })
                .await;
            }
        });
        let (health, health_svc) = lurk_cs::health::Health::new();
        tokio::spawn(health.clone().run_probe(cs.clone(), cfg.health.clone()));
        let svc = CryptoServiceImpl::new(cs, cfg.listen.plaintext)
            .with_exchange_limiter(lurk_cs::limits::ExchangeLimiter::from_config(&cfg.limits));
        // SIGTERM/SIGINT: health turns NOT_SERVING at once, the listener keeps serving for
        // `[health] shutdown_delay_ms`, then stops accepting and lets RPCs in flight finish;
        // engines keep their HTTP/2 connections open, so after a grace period the remaining
        // ones are closed.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let shutdown_delay = std::time::Duration::from_millis(cfg.health.shutdown_delay_ms);
        tokio::spawn(async move {
            lurk_cs::server::shutdown_signal().await;
            health.shutting_down().await;
            tokio::time::sleep(shutdown_delay).await;
            let _ = stop_tx.send(true);
        });
        let mut stopping = stop_rx.clone();
        let serving = lurk_cs::server::serve_with_unix(
            &cfg.listen,
            &cfg.limits,
            listener,
            unix,
            tls,
            lurk_proto::pb::crypto_service_server::CryptoServiceServer::new(svc),
            health_svc,
            async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            },
        );
        let mut grace = stop_rx;
        tokio::select! {
            served = serving => served?,
            _ = async move {
                let _ = grace.wait_for(|stop| *stop).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "shutdown grace period over: closing the remaining engine connections"
            ),
        }
        tracing::info!("lurk-cs stopped");
        Ok::<(), BoxError>(())
    })
}
