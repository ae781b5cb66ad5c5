//! The gRPC listener: mutual TLS (or plaintext, for development only), the engine identity
//! every request is bound to, and graceful shutdown.
//!
//! - **mTLS**: rustls (ring) with the CS's certificate and key from `[listen.tls]`, and
//!   `client_ca` as the only roots that may issue engine certificates. Client certificates
//!   are required: a connection without one, or with one from another CA, fails in the TLS
//!   handshake and never reaches the service.
//! - **Engine identity** ([`engine_identity`]): the subject CN of the engine's certificate
//!   (first DNS SAN if there is no CN). Sessions, tickets and key permissions are keyed by it.
//!   On a plaintext listener the engine names itself with the `lurk-engine-id` header.
//! - **Transport limits** (`transport.rs`, `[limits]`): the CS runs its own accept loop,
//!   handshakes and HTTP/2 connections, each bounded by count and time; `TCP_NODELAY` on
//!   every socket (docs/design.md §5: Nagle's 40 ms stalls); tokio's listener sets `SO_REUSEADDR`, so a
//!   restarted CS binds again at once.
//! - **Certificate rotation** ([`crate::reload`]): each accepted connection takes the TLS
//!   configuration in force, so a reload (SIGHUP) applies to new connections only.
//! - **Shutdown**: when the shutdown future completes the listener closes, and in-flight
//!   RPCs finish before [`serve`] returns ([`shutdown_signal`]: SIGINT or SIGTERM).
//!
//! The functions are generic over the `CryptoService` implementation, so that the listener
//! does not depend on the service's internals (and its tests use a small test service).

use std::fmt;
use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use lurk_proto::pb::crypto_service_server::{CryptoService, CryptoServiceServer};
use lurk_proto::status::LurkStatus;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tonic::service::Routes;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{LimitsConfig, ListenConfig, TlsConfig};
use crate::error::ServiceError;
use crate::reload::{summarize, ListenerTls, TlsSummary};
pub use crate::transport::{ConnectionEngine, UnixListening, UnixPeer};

/// Metadata header naming the engine on a plaintext (development) listener.
pub const ENGINE_ID_METADATA: &str = "lurk-engine-id";

/// Engine identity on a plaintext listener when the header is absent.
pub const DEV_ENGINE_ID: &str = "dev";

/// Largest request message tonic decodes (tonic's default is 4 MiB): the request cap plus
/// 64 KiB, so that a request a little over the cap still reaches the service and is refused
/// with its LURK status (`invalid_format`); anything larger is refused by tonic
/// (`OUT_OF_RANGE`) before it is buffered whole.
pub const MAX_DECODING_MESSAGE_SIZE: usize = lurk_proto::wire::limits::MAX_REQUEST_LEN + 64 * 1024;

/// Longest engine identity accepted (a CN is at most 64 characters, a DNS name 253).
pub const MAX_ENGINE_ID_LEN: usize = 255;

/// The authenticated name of an engine (certificate CN, or the dev header).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineId(String);

impl EngineId {
    /// An engine identity; refused (`Unauthenticated`) if empty, longer than
    /// [`MAX_ENGINE_ID_LEN`] bytes or holding control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, ServiceError> {
        let id = id.into();
        if id.is_empty() || id.len() > MAX_ENGINE_ID_LEN || id.chars().any(char::is_control) {
            return Err(ServiceError::refuse(
                LurkStatus::Unauthenticated,
                "engine identity must be 1..=255 bytes without control characters",
            ));
        }
        Ok(Self(id))
    }

    /// The identity, as the session table, the store and the logs key it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EngineId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Errors of the listener (start-up and transport).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listener cannot be set up as configured (TLS material, reflection, a reload).
    #[error("listen: {0}")]
    Config(String),
    /// A certificate, key or CA file cannot be read.
    #[error("listen: {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The listening socket cannot be bound.
    #[error("listen: cannot bind {addr}: {source}")]
    Bind {
        /// The address or socket path.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// tonic failed to serve.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `cfg.addr` and serves `service` under `limits` until `shutdown` completes.
pub async fn serve<S: CryptoService>(
    cfg: &ListenConfig,
    limits: &LimitsConfig,
    service: CryptoServiceServer<S>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let listener = TcpListener::bind(&cfg.addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.addr.clone(),
            source,
        })?;
    serve_with_listener(cfg, limits, listener, service, shutdown).await
}

/// Serves `service` on an already bound listener (`cfg.addr` is ignored): tests bind
/// `127.0.0.1:0` and read the port before starting the server.
pub async fn serve_with_listener<S: CryptoService>(
    cfg: &ListenConfig,
    limits: &LimitsConfig,
    listener: TcpListener,
    service: CryptoServiceServer<S>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    serve_with_health(cfg, limits, listener, service, health, shutdown).await
}

/// [`serve_with_listener`], with the `grpc.health.v1` service `crate::health` drives.
pub async fn serve_with_health<S: CryptoService>(
    cfg: &ListenConfig,
    limits: &LimitsConfig,
    listener: TcpListener,
    service: CryptoServiceServer<S>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let tls = ListenerTls::for_listen(cfg)?;
    serve_with_tls(cfg, limits, listener, tls, service, health, shutdown).await
}

/// [`serve_with_health`] with the listener's TLS loaded by the caller, which keeps it to
/// reload the certificates ([`ListenerTls::reload`], on SIGHUP); `tls` is `None` on a
/// plaintext listener.
pub async fn serve_with_tls<S: CryptoService>(
    cfg: &ListenConfig,
    limits: &LimitsConfig,
    listener: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    service: CryptoServiceServer<S>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let unix = cfg.unix.as_ref().map(UnixListening::bind).transpose()?;
    serve_with_unix(cfg, limits, listener, unix, tls, service, health, shutdown).await
}

/// [`serve_with_tls`] with the `[listen.unix]` socket bound by the caller (before it says it
/// is ready), or none.
#[allow(clippy::too_many_arguments)]
pub async fn serve_with_unix<S: CryptoService>(
    cfg: &ListenConfig,
    limits: &LimitsConfig,
    listener: TcpListener,
    unix: Option<UnixListening>,
    tls: Option<Arc<ListenerTls>>,
    service: CryptoServiceServer<S>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    if let Some(u) = &unix {
        tracing::info!(path = %u.path().display(), "crypto service listening on a unix socket");
    }
    let local = listener
        .local_addr()
        .map_or_else(|_| cfg.addr.clone(), |a| a.to_string());
    // Every gRPC service the CS serves: one `.add_service(...)` each.
    let routes = Routes::new(service.max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE))
        .add_service(health)
        .add_service(crate::reflection::service()?)
        .prepare();
    tracing::info!(addr = %local, mtls = tls.is_some(), "crypto service listening");
    crate::transport::serve(listener, unix, tls, routes, limits, shutdown).await;
    tracing::info!(addr = %local, "crypto service stopped");
    Ok(())
}

/// Reads the PEM files of `[listen.tls]`, checking each holds what it should so that a
/// misconfiguration (at start-up or on reload) is reported with the file's name.
pub(crate) fn load_tls(tls: &TlsConfig) -> Result<(Arc<ServerConfig>, TlsSummary), ServerError> {
    let bad = |path: &Path, what: &str| ServerError::Config(format!("{}: {what}", path.display()));
    let chain = expect_certs(&tls.cert, &read_file(&tls.cert)?)?;
    let roots = expect_certs(&tls.client_ca, &read_file(&tls.client_ca)?)?;
    // The transport key, not a LURK credential; rustls keeps its own copy.
    let key_pem = zeroize::Zeroizing::new(read_file(&tls.key)?);
    let key: PrivateKeyDer<'static> = match rustls_pemfile::private_key(&mut &key_pem[..]) {
        Ok(Some(k)) => k,
        _ => return Err(bad(&tls.key, "no PEM private key")),
    };
    if let Ok(meta) = fs::metadata(&tls.key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %tls.key.display(), "TLS key readable by group or others");
        }
    }
    let summary = summarize(chain[0].as_ref(), roots.len());
    let mut store = RootCertStore::empty();
    for ca in roots {
        store
            .add(ca)
            .map_err(|e| bad(&tls.client_ca, &format!("unusable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| bad(&tls.client_ca, &format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Config(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            ServerError::Config(format!(
                "{} and {}: unusable key, or not the certificate's key: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    // gRPC is HTTP/2 only (RFC 9113 §3.2: "h2" over TLS).
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), summary))
}

fn read_file(path: &Path) -> Result<Vec<u8>, ServerError> {
    fs::read(path).map_err(|source| ServerError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn expect_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &pem[..]).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        _ => Err(ServerError::Config(format!(
            "{}: no PEM certificate",
            path.display()
        ))),
    }
}

/// The identity of the engine that sent `req`.
///
/// On the Unix socket: the engine its peer uid maps to (`[listen.unix]`). With a client certificate (always, on an mTLS listener): its subject CN, or its first DNS
/// SAN. Without one: refused with `Unauthenticated`, unless `plaintext` (the listener's
/// `cfg.plaintext`), where the `lurk-engine-id` header names the engine ([`DEV_ENGINE_ID`]
/// by default).
pub fn engine_identity<T>(
    req: &tonic::Request<T>,
    plaintext: bool,
) -> Result<EngineId, ServiceError> {
    // Set by the CS's own listeners (transport.rs), from the connection's certificate or
    // its Unix peer's uid, once per connection.
    if let Some(ConnectionEngine(engine)) = req.extensions().get::<ConnectionEngine>() {
        return Ok(engine.clone());
    }
    // Set by the Unix-socket listener: the peer's uid, mapped in [listen.unix].
    if let Some(peer) = req.extensions().get::<UnixPeer>() {
        return Ok(peer.engine.clone());
    }
    if let Some(certs) = req.peer_certs() {
        let leaf = certs.first().ok_or_else(|| {
            ServiceError::refuse(LurkStatus::Unauthenticated, "no client certificate")
        })?;
        return identity_from_certificate(leaf.as_ref());
    }
    if !plaintext {
        return Err(ServiceError::refuse(
            LurkStatus::Unauthenticated,
            "no client certificate",
        ));
    }
    match req.metadata().get(ENGINE_ID_METADATA) {
        None => EngineId::new(DEV_ENGINE_ID),
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                ServiceError::refuse(
                    LurkStatus::Unauthenticated,
                    format!("{ENGINE_ID_METADATA} is not ASCII"),
                )
            })?;
            EngineId::new(v)
        }
    }
}

/// The engine identity a certificate (DER) names: subject CN, else the first DNS SAN.
pub fn identity_from_certificate(der: &[u8]) -> Result<EngineId, ServiceError> {
    let unauthenticated = |why: &str| ServiceError::refuse(LurkStatus::Unauthenticated, why);
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| unauthenticated("client certificate does not parse"))?;
    if let Some(cn) = cert.subject().iter_common_name().next() {
        let cn = cn
            .as_str()
            .map_err(|_| unauthenticated("client certificate CN is not a string"))?;
        return EngineId::new(cn);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| unauthenticated("client certificate SAN does not parse"))?;
    let dns = san.and_then(|ext| {
        ext.value.general_names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
    });
    match dns {
        Some(d) => EngineId::new(d),
        None => Err(unauthenticated(
            "client certificate has neither a CN nor a DNS SAN",
        )),
    }
}

/// Completes on SIGINT or SIGTERM (for `serve`'s shutdown future). If a handler cannot be
/// installed the error is logged and that signal is not waited for.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use lurk_proto::pb;
    use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::config::Config;

    /// A test-only service: Ping answers with the caller's engine identity; every other RPC
    /// is unimplemented (the real service lives in `service.rs`).
    struct PingOnly {
        plaintext: bool,
    }

    #[tonic::async_trait]
    impl CryptoService for PingOnly {
        async fn c_init_client_hello(
            &self,
            _: Request<pb::CInitClientHelloRequest>,
        ) -> Result<Response<pb::CInitClientHelloResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn c_client_hello(
            &self,
            _: Request<pb::CClientHelloRequest>,
        ) -> Result<Response<pb::CClientHelloResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn c_server_hello(
            &self,
            _: Request<pb::CServerHelloRequest>,
        ) -> Result<Response<pb::CServerHelloResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn c_client_finished(
            &self,
            _: Request<pb::CClientFinishedRequest>,
        ) -> Result<Response<pb::CClientFinishedResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn c_server_flight(
            &self,
            _: Request<pb::CServerFlightRequest>,
        ) -> Result<Response<pb::CServerFlightResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn c_init_client_finished(
            &self,
            _: Request<pb::CInitClientFinishedRequest>,
        ) -> Result<Response<pb::CInitClientFinishedResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn c_post_hand_auth(
            &self,
            _: Request<pb::CPostHandAuthRequest>,
        ) -> Result<Response<pb::CPostHandAuthResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn c_register_tickets(
            &self,
            _: Request<pb::CRegisterTicketsRequest>,
        ) -> Result<Response<pb::CRegisterTicketsResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn capabilities(
            &self,
            _: Request<pb::CapabilitiesRequest>,
        ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
            Err(Status::unimplemented("test service"))
        }
        async fn ping(
            &self,
            req: Request<pb::PingRequest>,
        ) -> Result<Response<pb::PingResponse>, Status> {
            let id = engine_identity(&req, self.plaintext)?;
            Ok(Response::new(pb::PingResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                engine_identity: id.to_string(),
            }))
        }
    }

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap();
            Self { cert, key }
        }

        /// A leaf: (certificate PEM, key PEM).
        fn issue(&self, cn: Option<&str>, sans: &[&str], server: bool) -> (String, String) {
            let mut p =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.distinguished_name = DistinguishedName::new();
            if let Some(cn) = cn {
                p.distinguished_name.push(DnType::CommonName, cn);
            }
            p.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    struct Pki {
        dir: tempfile::TempDir,
        ca: Ca,
        other_ca: Ca,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let ca = Ca::new("lurk test engines CA");
            let (cert, key) = ca.issue(Some("lurk-cs"), &["localhost", "127.0.0.1"], true);
            fs::write(dir.path().join("cs.pem"), cert).unwrap();
            fs::write(dir.path().join("cs.key"), key).unwrap();
            fs::set_permissions(dir.path().join("cs.key"), fs::Permissions::from_mode(0o600))
                .unwrap();
            fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
            Self {
                dir,
                ca,
                other_ca: Ca::new("some other CA"),
            }
        }

        fn listen(&self) -> ListenConfig {
            ListenConfig {
                addr: "127.0.0.1:0".into(),
                tls: Some(TlsConfig {
                    cert: self.path("cs.pem"),
                    key: self.path("cs.key"),
                    client_ca: self.path("ca.pem"),
                }),
                plaintext: false,
                unix: None,
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn client_tls(&self, identity: Option<(String, String)>) -> ClientTlsConfig {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(self.ca.cert.pem()))
                .domain_name("localhost");
            match identity {
                Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
                None => tls,
            }
        }
    }

    struct Running {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<(), ServerError>>,
    }

    impl Running {
        async fn stop(mut self) -> Result<(), ServerError> {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("server did not stop")
                .unwrap()
        }
    }

    async fn start(cfg: ListenConfig) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let service = CryptoServiceServer::new(PingOnly {
            plaintext: cfg.plaintext,
        });
        let task = tokio::spawn(async move {
            serve_with_listener(&cfg, &LimitsConfig::default(), listener, service, async {
                let _ = rx.await;
            })
            .await
        });
        Running {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn ping_tls(
        addr: SocketAddr,
        tls: ClientTlsConfig,
    ) -> Result<pb::PingResponse, Box<dyn std::error::Error>> {
        let channel = Channel::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let resp = CryptoServiceClient::new(channel)
            .ping(pb::PingRequest {})
            .await?;
        Ok(resp.into_inner())
    }

    /// Like [`start`], keeping the listener's TLS to reload it.
    async fn start_reloadable(cfg: ListenConfig) -> (Running, Arc<ListenerTls>) {
        let tls = ListenerTls::for_listen(&cfg).unwrap().expect("mTLS");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let service = CryptoServiceServer::new(PingOnly { plaintext: false });
        let (_reporter, health) = tonic_health::server::health_reporter();
        let serving = tls.clone();
        let task = tokio::spawn(async move {
            let limits = LimitsConfig::default();
            serve_with_tls(
                &cfg,
                &limits,
                listener,
                Some(serving),
                service,
                health,
                async {
                    let _ = rx.await;
                },
            )
            .await
        });
        let running = Running {
            addr,
            stop: Some(tx),
            task,
        };
        (running, tls)
    }

    /// Client TLS trusting `ca` for the CS, presenting `identity`.
    fn client_tls_from(ca: &Ca, identity: (String, String)) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.cert.pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(identity.0, identity.1))
    }

    #[tokio::test]
    async fn reloaded_certificates_apply_to_new_connections_and_bad_files_are_refused() {
        let pki = Pki::new();
        let (server, tls) = start_reloadable(pki.listen()).await;
        let old_engine = pki.ca.issue(Some("engine-a"), &[], false);
        // A connection made before the rotation.
        let channel = Channel::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(pki.client_tls(Some(old_engine.clone())))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut established = CryptoServiceClient::new(channel);
        established.ping(pb::PingRequest {}).await.unwrap();

        // Rotation: a new CA issues the CS's certificate and the engines'; the old CA is
        // no longer a client CA.
        let new_ca = Ca::new("lurk test engines CA 2");
        let (cert, key) = new_ca.issue(Some("lurk-cs 2"), &["localhost"], true);
        fs::write(pki.path("cs.pem"), &cert).unwrap();
        fs::write(pki.path("cs.key"), &key).unwrap();
        fs::write(pki.path("ca.pem"), new_ca.cert.pem()).unwrap();
        let summary = tls.reload().unwrap();
        assert!(summary.subject.contains("lurk-cs 2"), "{summary:?}");
        assert_eq!(summary.client_cas, 1);

        let new_engine = new_ca.issue(Some("engine-b"), &[], false);
        let check_rotated = || async {
            // New connections: the new engine certificate is accepted...
            let resp = ping_tls(server.addr, client_tls_from(&new_ca, new_engine.clone()))
                .await
                .unwrap();
            assert_eq!(resp.engine_identity, "engine-b");
            // ...the old one (from the removed CA) is refused in the handshake (the client
            // sees the unknown_ca alert, or its connection closed after its Finished)...
            let refused = ping_tls(server.addr, client_tls_from(&new_ca, old_engine.clone())).await;
            assert!(refused.is_err(), "{refused:?}");
            // ...and the CS presents its new certificate (a client trusting only the old
            // CA refuses it).
            let err = ping_tls(server.addr, pki.client_tls(Some(old_engine.clone())))
                .await
                .unwrap_err();
            assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
        };
        check_rotated().await;
        // The established connection continues (a reconnection would be refused).
        let resp = established.ping(pb::PingRequest {}).await.unwrap();
        assert_eq!(resp.into_inner().engine_identity, "engine-a");

        // Bad files: each reload is refused and the rotated configuration stays in force.
        let other_key = KeyPair::generate().unwrap().serialize_pem();
        let bad_files: [(&str, String); 6] = [
            ("cs.pem", "not a certificate".into()),
            ("cs.pem", String::new()),
            (
                "cs.key",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
            ("cs.key", other_key),
            ("ca.pem", String::new()),
            (
                "ca.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            ),
        ];
        for (name, text) in bad_files {
            let good = fs::read(pki.path(name)).unwrap();
            fs::write(pki.path(name), &text).unwrap();
            let err = tls.reload().unwrap_err();
            assert!(
                err.to_string().contains(name),
                "the refusal names the file: {err}"
            );
            check_rotated().await;
            fs::write(pki.path(name), good).unwrap();
        }
        // A missing file too.
        fs::remove_file(pki.path("ca.pem")).unwrap();
        assert!(matches!(tls.reload(), Err(ServerError::Io { .. })));
        check_rotated().await;
        established.ping(pb::PingRequest {}).await.unwrap();
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn mtls_clients_are_named_by_their_certificate() {
        let pki = Pki::new();
        let server = start(pki.listen()).await;
        for cn in ["engine-a", "engine-b"] {
            let id = pki.ca.issue(Some(cn), &[], false);
            let resp = ping_tls(server.addr, pki.client_tls(Some(id)))
                .await
                .unwrap();
            assert_eq!(resp.engine_identity, cn);
            assert_eq!(resp.version, env!("CARGO_PKG_VERSION"));
        }
        // No CN: the first DNS SAN.
        let id = pki.ca.issue(None, &["engine-c.example"], false);
        let resp = ping_tls(server.addr, pki.client_tls(Some(id)))
            .await
            .unwrap();
        assert_eq!(resp.engine_identity, "engine-c.example");
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let pki = Pki::new();
        let server = start(pki.listen()).await;
        let err = ping_tls(server.addr, pki.client_tls(None))
            .await
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("CertificateRequired"),
            "{err:?}"
        );
        // The same client with a certificate gets through: the refusal was about the
        // missing certificate.
        let id = pki.ca.issue(Some("engine-a"), &[], false);
        assert!(ping_tls(server.addr, pki.client_tls(Some(id)))
            .await
            .is_ok());
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_is_refused() {
        let pki = Pki::new();
        let server = start(pki.listen()).await;
        let id = pki.other_ca.issue(Some("engine-a"), &[], false);
        let err = ping_tls(server.addr, pki.client_tls(Some(id)))
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("UnknownCA"), "{err:?}");
        // The same name from the right CA works, so the refusal was about the CA.
        let id = pki.ca.issue(Some("engine-a"), &[], false);
        assert!(ping_tls(server.addr, pki.client_tls(Some(id)))
            .await
            .is_ok());
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn plaintext_mode_takes_the_header() {
        let server = start(ListenConfig {
            addr: "127.0.0.1:0".into(),
            tls: None,
            plaintext: true,
            unix: None,
        })
        .await;
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = CryptoServiceClient::new(channel);
        let mut req = Request::new(pb::PingRequest {});
        req.metadata_mut()
            .insert(ENGINE_ID_METADATA, "engine-x".parse().unwrap());
        assert_eq!(
            client.ping(req).await.unwrap().into_inner().engine_identity,
            "engine-x"
        );
        let resp = client.ping(pb::PingRequest {}).await.unwrap().into_inner();
        assert_eq!(resp.engine_identity, DEV_ENGINE_ID);
        let other = client
            .c_server_hello(pb::CServerHelloRequest::default())
            .await
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::Unimplemented);
        drop(client);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn without_a_certificate_a_tls_listener_is_unauthenticated() {
        // What engine_identity says if a request reaches it without peer certificates on a
        // non-plaintext listener (it cannot through the mTLS handshake, but the service must
        // not rely on that alone).
        let err = engine_identity(&Request::new(()), false).unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::Unauthenticated);
        let st: Status = err.into();
        assert_eq!(st.code(), tonic::Code::Unauthenticated);
        // A header does not help.
        let mut req = Request::new(());
        req.metadata_mut()
            .insert(ENGINE_ID_METADATA, "engine-a".parse().unwrap());
        assert!(engine_identity(&req, false).is_err());
    }

    #[tokio::test]
    async fn the_shutdown_future_stops_the_server() {
        let pki = Pki::new();
        let server = start(pki.listen()).await;
        let addr = server.addr;
        let id = pki.ca.issue(Some("engine-a"), &[], false);
        ping_tls(addr, pki.client_tls(Some(id.clone())))
            .await
            .unwrap();
        server.stop().await.unwrap();
        // The listener is closed.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn misconfigured_listeners_are_refused() {
        let pki = Pki::new();
        let mut both = pki.listen();
        both.plaintext = true;
        let neither = ListenConfig {
            addr: "127.0.0.1:0".into(),
            tls: None,
            plaintext: false,
            unix: None,
        };
        let mut bad_key = pki.listen();
        if let Some(tls) = bad_key.tls.as_mut() {
            tls.key = pki.path("ca.pem");
        }
        let mut missing = pki.listen();
        if let Some(tls) = missing.tls.as_mut() {
            tls.client_ca = pki.path("nope.pem");
        }
        for cfg in [both, neither, bad_key, missing] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let service = CryptoServiceServer::new(PingOnly { plaintext: true });
            let r =
                serve_with_listener(&cfg, &LimitsConfig::default(), listener, service, async {})
                    .await;
            assert!(
                matches!(r, Err(ServerError::Config(_) | ServerError::Io { .. })),
                "{r:?}"
            );
        }
        // serve() binds the address itself.
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cfg = pki.listen();
        cfg.addr = taken.local_addr().unwrap().to_string();
        let service = CryptoServiceServer::new(PingOnly { plaintext: false });
        assert!(matches!(
            serve(&cfg, &LimitsConfig::default(), service, async {}).await,
            Err(ServerError::Bind { .. })
        ));
    }

    #[test]
    fn engine_ids_are_checked() {
        assert_eq!(EngineId::new("engine-a").unwrap().to_string(), "engine-a");
        assert!(EngineId::new("").is_err());
        assert!(EngineId::new("a\nb").is_err());
        assert!(EngineId::new("x".repeat(256)).is_err());
    }

    /// The configuration embedded in the Kubernetes ConfigMap (`lurk-cs.toml: |`, a YAML
    /// literal block indented by four spaces) parses with the code's types, and keeps what the
    /// manifests rely on: mTLS, the PIN and the database password from files, PostgreSQL.
    #[test]
    fn the_kubernetes_configuration_parses() {
        let yaml = include_str!("../../deploy/kubernetes/configmap.yaml");
        let mut lines = yaml.lines().skip_while(|l| *l != "  lurk-cs.toml: |");
        assert!(
            lines.next().is_some(),
            "no lurk-cs.toml key in the ConfigMap"
        );
        let toml: String = lines
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
            .collect();
        let cfg = Config::from_toml(&toml).expect("deploy/kubernetes/configmap.yaml");
        assert!(!cfg.listen.plaintext && cfg.listen.tls.is_some());
        assert!(cfg.token.pin_file.is_some() && cfg.token.pin_env.is_none());
        assert_eq!(cfg.store.backend, crate::config::StoreBackend::Postgres);
        let pg = cfg.store.postgres.as_ref().expect("[store.postgres]");
        assert!(pg.password_file.is_some() && !pg.dsn.contains("password"));
        assert!(!cfg.freshness.test_vectors);
        // The readiness probe must see NOT_SERVING before the listener closes.
        assert!(cfg.health.shutdown_delay_ms >= 2000);
    }

    /// The reference configuration parses with the code's configuration types (so it cannot
    /// drift), and every default it documents is the code's default.
    #[test]
    fn the_reference_configuration_parses() {
        let text = include_str!("../../deploy/lurk-cs.toml");
        let reference = Config::from_toml(text).expect("deploy/lurk-cs.toml");
        assert!(!reference.listen.plaintext);
        let tls = reference
            .listen
            .tls
            .as_ref()
            .expect("mTLS in the reference");
        assert!(tls.client_ca.is_absolute());
        assert!(reference.token.pin_env.is_some() || reference.token.pin_file.is_some());
        assert!(!reference.freshness.test_vectors);
        assert!(!reference.keys.is_empty());
        assert_eq!(reference.metrics, crate::config::MetricsConfig::default());
        assert!(reference.log.access);

        let minimal = Config::from_toml(
            r#"
            [listen]
            addr = "127.0.0.1:0"
            plaintext = true
            [token]
            label = "t"
            pin_env = "P"
            [store]
            path = "/x"
            "#,
        )
        .unwrap();
        assert_eq!(reference.token.module, minimal.token.module);
        assert_eq!(reference.token.pool_size, minimal.token.pool_size);
        assert_eq!(reference.token.sealing_key, minimal.token.sealing_key);
        assert_eq!(
            reference.token.recycle_after_objects,
            minimal.token.recycle_after_objects
        );
        assert_eq!(
            reference.token.recycle_drain_ms,
            minimal.token.recycle_drain_ms
        );
        assert_eq!(reference.ephemeral.backend, minimal.ephemeral.backend);
        assert_eq!(
            reference.store.ticket_lifetime_secs,
            minimal.store.ticket_lifetime_secs
        );
        assert_eq!(
            reference.store.max_tickets_per_engine,
            minimal.store.max_tickets_per_engine
        );
        assert_eq!(reference.sessions.max, minimal.sessions.max);
        assert_eq!(
            reference.sessions.max_per_engine,
            minimal.sessions.max_per_engine
        );
        assert_eq!(reference.sessions.ttl_secs, minimal.sessions.ttl_secs);
        assert_eq!(reference.freshness.mode, minimal.freshness.mode);
        assert_eq!(reference.log.format, minimal.log.format);
        assert_eq!(reference.log.level, minimal.log.level);
        assert_eq!(reference.limits, minimal.limits);
        // [server_auth]: on in the reference, off by default.
        assert!(reference.server_auth.enabled);
        assert!(reference
            .server_auth
            .trust_anchors
            .as_ref()
            .is_some_and(|p| p.is_absolute()));
        assert!(!minimal.server_auth.enabled);
        // `[health]` is optional, and the reference shows its defaults.
        assert_eq!(
            reference.health.probe_interval_ms,
            minimal.health.probe_interval_ms
        );
        assert_eq!(
            reference.health.shutdown_delay_ms,
            minimal.health.shutdown_delay_ms
        );
    }
}
