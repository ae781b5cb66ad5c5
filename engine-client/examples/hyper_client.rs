//! Links the engine into a hyper client: `cargo run -p lurk-engine --features hyper --example
//! hyper_client -- https://localhost:8443/ https://127.0.0.1:7443 lurk-dev/tls CA.pem KEY_ID`.
//! The client key `KEY_ID` stays in the Crypto Service; the CS's tickets resume later
//! connections. The README's "link the engine into your proxy" snippet is the body of `run`.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use lurk_engine::cs_client::CsEndpoint;
use lurk_engine::cs_pool::{CsPool, CsPoolOptions};
use lurk_engine::verify::TrustAnchors;
use lurk_engine::MemoryTicketStore;
use lurk_engine::{ClientConfig, ClientKey, Connector, HandshakeSummary, HttpsConnector};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(url: &str, cs_url: &str, tls: &Path, ca: &Path, key_id: &str) -> Result<(), BoxError> {
    let ep = CsEndpoint::from_files(
        cs_url,
        Some(&tls.join("ca.pem")),
        Some(&tls.join("engine.pem")),
        Some(&tls.join("engine.key")),
    )?;
    let cs = CsPool::new(&ep, &[cs_url.to_owned()], CsPoolOptions::default())?;
    let caps = cs.capabilities().await?;
    let config = ClientConfig::builder()
        .trust_anchors(TrustAnchors::from_pem_file(ca)?)
        .client_key(ClientKey::from_capabilities(&caps, key_id).ok_or("no such key at the CS")?)
        .ticket_store(Arc::new(MemoryTicketStore::default()))
        .alpn_protocols(["h2", "http/1.1"])
        .build()?;
    let https = HttpsConnector::new(Connector::with_cs_pool(Arc::new(config), cs));
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<bytes::Bytes>>(https);
    let res = client.get(url.parse()?).await?;
    println!(
        "{} {:?}",
        res.status(),
        res.extensions().get::<HandshakeSummary>()
    );
    let body = res.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 5 {
        return Err("usage: hyper_client URL CS_URL CS_TLS_DIR CA_PEM KEY_ID".into());
    }
    run(&a[0], &a[1], Path::new(&a[2]), Path::new(&a[3]), &a[4]).await
}
