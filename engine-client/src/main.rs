//! `lurk-engine`: the LURK engine's command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lurk_engine::cs_client::{CsEndpoint, CsError};
use lurk_proto::pb;

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
    /// CS URL: https://host:port (mTLS) or http://host:port (plaintext development CS).
    #[arg(long, env = "LURK_CS")]
    cs: String,
    /// PEM CA of the CS certificate.
    #[arg(long)]
    cs_ca: Option<PathBuf>,
    /// PEM client certificate of this engine (its identity at the CS).
    #[arg(long)]
    cs_cert: Option<PathBuf>,
    /// PEM key of that certificate.
    #[arg(long)]
    cs_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print what the CS offers this engine (keys, groups, schemes).
    CsInfo {
        #[command(flatten)]
        cs: CsArgs,
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

fn endpoint(a: &CsArgs) -> Result<CsEndpoint, Box<dyn std::error::Error>> {
    Ok(CsEndpoint::from_files(
        &a.cs,
        a.cs_ca.as_deref(),
        a.cs_cert.as_deref(),
        a.cs_key.as_deref(),
    )?)
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::CsInfo { cs } => {
            let mut client = endpoint(&cs)?.connect_lazy()?;
            let ping = client
                .ping(pb::PingRequest {})
                .await
                .map_err(CsError::from)?
                .into_inner();
            let caps = client
                .capabilities(pb::CapabilitiesRequest {})
                .await
                .map_err(CsError::from)?
                .into_inner();
            println!(
                "CS version {} sees this engine as {:?}",
                ping.version, ping.engine_identity
            );
            println!("ephemeral backend: {}", caps.ephemeral_backend);
            let groups: Vec<String> = caps
                .groups
                .iter()
                .map(|g| {
                    lurk_proto::wire::NamedGroup::from(*g as u16)
                        .name()
                        .to_owned()
                })
                .collect();
            println!("groups: {}", groups.join(", "));
            for k in &caps.keys {
                let schemes: Vec<&str> = k
                    .signature_schemes
                    .iter()
                    .map(|s| lurk_proto::wire::SignatureScheme::from(*s as u16).name())
                    .collect();
                println!(
                    "key {:?}: {} ({}), chain of {} certificate(s)",
                    k.key_id,
                    k.key_type,
                    schemes.join(", "),
                    k.certificate_chain.len()
                );
            }
            println!(
                "tickets: at most {} per engine, lifetime cap {} s",
                caps.max_tickets_per_engine, caps.ticket_lifetime_seconds
            );
            Ok(())
        }
    }
}
