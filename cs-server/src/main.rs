//! `lurk-cs`: the LURK Crypto Service.
//!
//! - `lurk-cs serve --config FILE`: serve the gRPC API (mTLS unless configured otherwise);
//! - `lurk-cs token init-dev DIR`: a private SoftHSM token with client keys, certificates,
//!   sealing key, transport PKI and a config file, in one step;
//! - `lurk-cs keys import|list|generate`: manage the signing keys in the token;
//! - `lurk-cs psk import`: store an external PSK, sealed by the token.
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
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a development setup under DIR: SoftHSM config and token, Ed25519 and P-256
    /// client keys with self-signed certificates, sealing key, mTLS files, lurk-cs.toml.
    InitDev { dir: PathBuf },
    /// Create the AES key that seals stored PSKs (`[token] sealing_key`), unless it exists.
    SealingKey {
        #[arg(long, short, env = "LURK_CONFIG")]
        config: PathBuf,
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
            command: TokenCommand::SealingKey { config },
        } => {
            let cfg = load(&config)?;
            let token = lurk_cs::token::Token::open(&cfg.token)?;
            if token.ensure_sealing_key()? {
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
                let cfg = load(&config)?;
                let token = lurk_cs::token::Token::open(&cfg.token)?;
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
                let cfg = load(&config)?;
                let token = lurk_cs::token::Token::open(&cfg.token)?;
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
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(&key_file)?);
            let psk = zeroize::Zeroizing::new(
                hex::decode(text.trim()).map_err(|_| "the key file must hold the PSK in hex")?,
            );
            let token = lurk_cs::token::Token::open(&cfg.token)?;
            let store =
                lurk_cs::store::SqliteStore::open(&cfg.store.path, Arc::new(token), &cfg.store)?;
            use lurk_cs::store::TicketStore;
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
        let svc = CryptoServiceImpl::new(cs, cfg.listen.plaintext)
            .with_exchange_limiter(lurk_cs::limits::ExchangeLimiter::from_config(&cfg.limits));
        // SIGTERM/SIGINT stop accepting and let RPCs in flight finish; engines keep their
        // HTTP/2 connections open, so after a grace period the remaining ones are closed.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            lurk_cs::server::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let mut stopping = stop_rx.clone();
        let serving = lurk_cs::server::serve_with_listener(
            &cfg.listen,
            &cfg.limits,
            listener,
            lurk_proto::pb::crypto_service_server::CryptoServiceServer::new(svc),
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
