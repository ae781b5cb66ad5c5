//! Client authentication, the case LURK is bought for: the server requires a client
//! certificate and the client's P-256 key is in the SoftHSM token. Side by side, against the
//! same rustls server:
//! - the rustls client with a software key (no HSM at all);
//! - the rustls client with the token key, signing in-process through PKCS#11 (cryptoki):
//!   what a user would pick instead of a separate Crypto Service (the bar for LURK);
//! - the engine + CS, full-CS mode (sequence A: the CS makes the key shares, runs the key
//!   schedule and signs CertificateVerify in `c_client_finished`), memory and token ephemerals;
//! - the engine + CS, signing-only mode (sequence C: the engine makes its key shares and runs
//!   the key schedule; the CS only signs, in `c_init_client_finished`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lurk_engine::config::{ClientConfig, ClientKey, Ephemeral};
use lurk_engine::cs_client::CsEndpoint;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::Connector;
use lurk_proto::wire::{CipherSuite, NamedGroup, SignatureScheme};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName};

use crate::cs_inproc::Fixture;
use crate::handshake::{self, Client, Pki, Proc};
use crate::p11_signer::P11Key;
use crate::report::Target;
use crate::sys::{self, ms, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The token key the clients authenticate with (init-dev: label, config key id).
const TOKEN_KEY_LABEL: &str = "client-p256";
const TOKEN_KEY_ID: &str = "p256";

/// A client certificate verifier for the bench's server: the end-entity certificate must be one
/// of a fixed set (the clients' self-signed certificates), and its CertificateVerify must
/// verify (RFC 8446 §4.4.3). No chain building: the certificates are pinned.
#[derive(Debug)]
pub(crate) struct PinnedClients {
    pinned: Vec<Vec<u8>>,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedClients {
    pub(crate) fn new(pinned: Vec<Vec<u8>>, provider: &CryptoProvider) -> Self {
        Self {
            pinned,
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pinned.iter().any(|p| p[..] == end_entity[..]) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General("unknown client certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// One client's figures against the client-auth server.
pub(crate) struct Row {
    pub(crate) client: String,
    pub(crate) lat: Lat,
    pub(crate) cpu: handshake::CpuPer,
    pub(crate) tput8: f64,
    pub(crate) exchanges: Vec<&'static str>,
    pub(crate) critical: Option<usize>,
    pub(crate) errors: usize,
}

/// The PEM certificates in `path`, DER.
fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    Ok(rustls_pemfile::certs(&mut std::fs::read(path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?)
}

fn rustls_builder(
    pki: &Pki,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, BoxError>
{
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&pki.ca())? {
        roots.add(c)?;
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots),
    )
}

fn rustls_done(mut cfg: rustls::ClientConfig) -> Client {
    cfg.resumption = rustls::client::Resumption::disabled();
    Client::Rustls(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// The engine with the token key `p256` at the CS `cs_url`, full handshakes.
fn engine(dev: &Path, cs_url: &str, pki: &Pki, ephemeral: Ephemeral) -> Result<Client, BoxError> {
    let tls = dev.join("tls");
    let mut ep = CsEndpoint::from_files(
        cs_url,
        Some(&tls.join("ca.pem")),
        Some(&tls.join("engine.pem")),
        Some(&tls.join("engine.key")),
    )?;
    ep.domain = Some("localhost".into());
    let cs = ep.connect_lazy()?;
    let chain = pem_certs(&dev.join(format!("{TOKEN_KEY_LABEL}.pem")))?;
    let cfg = ClientConfig::builder()
        .trust_anchors(TrustAnchors::from_pem_file(&pki.ca())?)
        .cipher_suites([CipherSuite::TlsAes128GcmSha256])
        .groups([NamedGroup::X25519])
        .ephemeral(ephemeral)
        .client_key(ClientKey {
            key_id: TOKEN_KEY_ID.into(),
            certificate_chain: chain.iter().map(|c| c.to_vec()).collect(),
            signature_schemes: vec![SignatureScheme::EcdsaSecp256r1Sha256],
        })
        .build()?;
    Ok(Client::Engine(Arc::new(Connector::new(
        Arc::new(cfg),
        Some(cs),
    ))))
}

/// The rustls server requiring one of the certificates in `pinned`.
pub(crate) fn start_server(pki: &Pki, pinned: &Path) -> Result<(Proc, u16), BoxError> {
    let port = sys::free_port();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("rustls-server")
        .arg("--port")
        .arg(port.to_string())
        .arg("--cert")
        .arg(pki.cert())
        .arg("--key")
        .arg(pki.key())
        .arg("--client-certs")
        .arg(pinned)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    if let Err(e) = handshake::wait_for_line(&mut child, "READY") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok((Proc { child }, port))
}

/// The CS processes of the run: (URL, PID) with memory and with token ephemerals.
pub(crate) struct CsProcs<'a> {
    pub(crate) memory: (&'a str, u32),
    pub(crate) token: (&'a str, u32),
}

/// Runs every client against the client-auth server; returns the markdown section and notes.
pub(crate) async fn run(
    fx: &Fixture,
    pki: &Pki,
    cs: &CsProcs<'_>,
    n: usize,
    budget: Duration,
    tput_dur: Duration,
) -> Result<(String, Vec<String>, Vec<Target>), BoxError> {
    // The software client key and its certificate.
    let soft = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["bench client".to_owned()])?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let soft_cert = params.self_signed(&soft)?;
    let token_chain = pem_certs(&fx.dev.join(format!("{TOKEN_KEY_LABEL}.pem")))?;
    let pinned = pki.dir.join("client-auth-pinned.pem");
    std::fs::write(
        &pinned,
        format!(
            "{}{}",
            soft_cert.pem(),
            std::fs::read_to_string(fx.dev.join(format!("{TOKEN_KEY_LABEL}.pem")))?
        ),
    )?;
    let pin = std::fs::read_to_string(fx.cfg.token.pin_file.as_ref().ok_or("no pin_file")?)?;
    let p11 = P11Key::open(
        &fx.cfg.token.module,
        &fx.cfg.token.label,
        pin.lines().next().unwrap_or("").trim(),
        TOKEN_KEY_LABEL,
        4,
    )?;
    let clients: Vec<(&str, Client, Option<u32>)> = vec![
        (
            "rustls client, software key",
            rustls_done(rustls_builder(pki)?.with_client_auth_cert(
                vec![soft_cert.der().clone()],
                PrivateKeyDer::try_from(soft.serialize_der())?,
            )?),
            None,
        ),
        (
            "rustls client, token key via PKCS#11 in-process",
            rustls_done(rustls_builder(pki)?.with_client_cert_resolver(p11.resolver(token_chain))),
            None,
        ),
        (
            "engine + CS, full-CS (memory ephemerals)",
            engine(&fx.dev, cs.memory.0, pki, Ephemeral::Cs)?,
            Some(cs.memory.1),
        ),
        (
            "engine + CS, full-CS (token ephemerals)",
            engine(&fx.dev, cs.token.0, pki, Ephemeral::Cs)?,
            Some(cs.token.1),
        ),
        (
            "engine + CS, signing only (sequence C)",
            engine(&fx.dev, cs.memory.0, pki, Ephemeral::Engine)?,
            Some(cs.memory.1),
        ),
    ];
    let (srv, port) = start_server(pki, &pinned)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (name, client, cs_pid) in clients {
        crate::step(&format!("client auth · {name}"));
        let r = handshake::latency(&client, port, srv.pid(), cs_pid, n, budget).await;
        match r {
            Ok((lat, cpu, _, exchanges, errors, critical)) => {
                let (tput8, failed) =
                    handshake::throughput(&client, port, 8, tput_dur, 100_000).await;
                rows.push(Row {
                    client: name.to_owned(),
                    lat,
                    cpu,
                    tput8,
                    exchanges,
                    critical: cs_pid.map(|_| critical),
                    errors: errors + failed,
                });
            }
            Err(e) => notes.push(format!("client auth · {name}: failed: {e}")),
        }
    }
    drop(srv);
    Ok((markdown(&rows), notes, targets(&rows)))
}

/// Issue 10: client authentication with the key in the token ≤ 1.2× the rustls client
/// signing with the same key in-process through PKCS#11 (wall, p50), for each engine mode.
fn targets(rows: &[Row]) -> Vec<Target> {
    let Some(bar) = rows.iter().find(|r| r.client.contains("PKCS#11")) else {
        return Vec::new();
    };
    rows.iter()
        .filter(|r| r.critical.is_some())
        .map(|r| {
            let x = ms(r.lat.p50) / ms(bar.lat.p50).max(1e-9);
            (
                format!(
                    "client authentication, key in the token, {}: wall (p50) ≤ 1.2× rustls + in-process PKCS#11",
                    r.client.trim_start_matches("engine + CS, ")
                ),
                format!("{:.3} ms vs {:.3} ms = {x:.2}×", ms(r.lat.p50), ms(bar.lat.p50)),
                Some(x <= 1.2),
            )
        })
        .collect()
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "### Client authentication (key in the token)\n\n\
         The rustls server requires a client certificate (pinned; its CertificateVerify is \
         checked); full handshakes, the same connection as above (TCP connect, handshake, \
         GET, response to EOF), concurrency 1 for latency and CPU, 8 for conn/s. The client \
         key is P-256 (ecdsa_secp256r1_sha256). The bar is the rustls client signing with the \
         same SoftHSM key in-process through PKCS#11 (a rustls `SigningKey` over cryptoki, \
         4 logged-in sessions).\n\n\
         | client | latency ms p50/p90/p99 | ×rustls+PKCS#11 p50 | conn/s @8 | CPU ms client | CS | server | (client+CS) ×rustls+PKCS#11 | CS round trips before the handshake ends | LURK exchanges | n | failed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let bar = rows.iter().find(|r| r.client.contains("PKCS#11"));
    for r in rows {
        let ratio = bar.map_or(String::new(), |b| {
            format!("{:.2}×", ms(r.lat.p50) / ms(b.lat.p50).max(1e-9))
        });
        let cpu = r.cpu.client + r.cpu.cs.unwrap_or_default();
        let cpu_ratio = bar
            .filter(|b| !b.cpu.client.is_zero())
            .map_or(String::new(), |b| {
                format!("{:.2}×", ms(cpu) / ms(b.cpu.client))
            });
        let _ = writeln!(
            s,
            "| {} | {:.3} / {:.3} / {:.3} | {} | {:.0} | {:.3} | {} | {:.3} | {} | {} | {} | {} | {} |",
            r.client,
            ms(r.lat.p50),
            ms(r.lat.p90),
            ms(r.lat.p99),
            ratio,
            r.tput8,
            ms(r.cpu.client),
            r.cpu.cs.map_or(String::new(), |d| format!("{:.3}", ms(d))),
            ms(r.cpu.server),
            cpu_ratio,
            r.critical.map_or("—".into(), |c| c.to_string()),
            if r.exchanges.is_empty() { "—".into() } else { r.exchanges.join(", ") },
            r.lat.n,
            r.errors
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Against the real SoftHSM token of an init-dev set-up: the PKCS#11 signer's
    /// CertificateVerify is checked by the pinned verifier of a rustls server, which refuses a
    /// client it does not know.
    #[test]
    fn the_token_key_authenticates_a_rustls_client_and_an_unknown_one_is_refused() {
        let fx = Fixture::new().unwrap();
        let pin = std::fs::read_to_string(fx.cfg.token.pin_file.as_ref().unwrap()).unwrap();
        let key = P11Key::open(
            &fx.cfg.token.module,
            &fx.cfg.token.label,
            pin.lines().next().unwrap().trim(),
            TOKEN_KEY_LABEL,
            2,
        )
        .unwrap();
        let chain = pem_certs(&fx.dev.join(format!("{TOKEN_KEY_LABEL}.pem"))).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&server_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(PinnedClients::new(
                vec![chain[0].to_vec()],
                &provider,
            )))
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_cert.der().clone()).unwrap();
        let client = |resolver: Option<Arc<dyn rustls::client::ResolvesClientCert>>| {
            let b = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots.clone());
            let cfg = match resolver {
                Some(r) => b.with_client_cert_resolver(r),
                None => {
                    let soft = rcgen::KeyPair::generate().unwrap();
                    let cert = rcgen::CertificateParams::new(vec!["other".to_owned()])
                        .unwrap()
                        .self_signed(&soft)
                        .unwrap();
                    b.with_client_auth_cert(
                        vec![cert.der().clone()],
                        PrivateKeyDer::try_from(soft.serialize_der()).unwrap(),
                    )
                    .unwrap()
                }
            };
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if let Ok(mut s) = acceptor.accept(tcp).await {
                            let mut b = [0u8; 4];
                            if s.read_exact(&mut b).await.is_ok() {
                                let _ = s.write_all(b"pong").await;
                                let _ = s.shutdown().await;
                            }
                        }
                    });
                }
            });
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            for (connector, known) in [
                (client(Some(key.resolver(chain.clone()))), true),
                (client(None), false),
            ] {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let mut s = connector.connect(name.clone(), tcp).await.unwrap();
                s.write_all(b"ping").await.unwrap();
                let mut b = Vec::new();
                let r = s.read_to_end(&mut b).await;
                if known {
                    assert_eq!(b, b"pong", "{r:?}");
                } else {
                    // TLS 1.3: the server's refusal of the client certificate is an alert
                    // after the client's Finished.
                    assert!(r.is_err() && b.is_empty(), "{r:?} {b:?}");
                }
            }
        });
    }
}
