//! `lurk-edge-proxy`: a reverse proxy on hyper in front of one https upstream.
//!
//! - Accepts HTTP/1.1 and HTTP/2 (prior knowledge on plaintext; ALPN `h2`/`http/1.1` with
//!   `--tls-cert`/`--tls-key`, rustls on the listening side).
//! - Forwards every request to `--upstream` through a pooled `hyper_util` client whose TLS
//!   connections the LURK engine makes ([`lurk_engine::HttpsConnector`]): the client key
//!   stays in the Crypto Service (`--client-key`), resumption uses the CS's tickets, ALPN
//!   offers `h2` then `http/1.1`.
//! - Counts the upstream handshakes by their summaries, and the responses by the summary of
//!   the connection that carried them (response extensions), and serves the counters at
//!   `/lurk-proxy/metrics` (Prometheus text format) with the engine's view of each CS replica
//!   (healthy or set aside, calls outstanding, answered, failed, not sent, sessions), on a
//!   listener of its own (`--metrics-listen`), not on the proxy's.
//! - `--key-file`/`--cert-file` instead of `--cs`: the same proxy on hyper-rustls with the
//!   client key in a file (the baseline of BENCHMARKS.md).
//!
//! Prints `LISTEN <address>` on stdout once it accepts connections.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use lurk_engine::cs_pool::{CsPool, ReplicaStatus};
use lurk_engine::{HandshakeSummary, HttpsConnector};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, hyper::Error>;

const METRICS_PATH: &str = "/lurk-proxy/metrics";
/// Tries of a request that may be sent again.
const MAX_ATTEMPTS: u32 = 3;

#[derive(Parser)]
#[command(
    name = "lurk-edge-proxy",
    version,
    about = "Reverse proxy whose upstream TLS client key stays in the LURK Crypto Service"
)]
struct Args {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address of a plain-HTTP listener for the metrics, `GET /lurk-proxy/metrics` (port 0:
    /// any free port; printed as `METRICS <addr>`); none without it. They name the CS
    /// replicas: keep it on loopback or a management network.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS on the listening side (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the listening side.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The upstream, https://host:port (its certificate must name `host`).
    #[arg(long)]
    upstream: Uri,
    /// PEM trust anchors for the upstream's certificate.
    #[arg(long)]
    ca: PathBuf,
    /// Crypto Service URL(s) (https:// mTLS); a host name stands for all its addresses.
    #[arg(long, value_delimiter = ',', required_unless_present = "key_file")]
    cs: Vec<String>,
    /// PEM CA of the CS certificate.
    #[arg(long)]
    cs_ca: Option<PathBuf>,
    /// PEM certificate of this proxy at the CS (its engine identity).
    #[arg(long)]
    cs_cert: Option<PathBuf>,
    /// PEM key of that certificate.
    #[arg(long)]
    cs_key: Option<PathBuf>,
    /// Key id at the CS to authenticate to the upstream with.
    #[arg(long, conflicts_with = "key_file")]
    client_key: Option<String>,
    /// Baseline mode: hyper-rustls with this PEM client key in a file (no CS).
    #[arg(long, requires = "cert_file", conflicts_with = "cs")]
    key_file: Option<PathBuf>,
    /// Baseline mode: the PEM certificate chain of --key-file.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// Offer only http/1.1 to the upstream (default: h2, then http/1.1).
    #[arg(long)]
    upstream_http1: bool,
    /// Idle upstream connections kept per host.
    #[arg(long, default_value_t = 32)]
    pool_max_idle: usize,
    /// Seconds one upstream attempt may take until the response headers (connecting and the
    /// handshake included); past it the attempt fails like a lost connection: a request
    /// without a body and with an idempotent method is sent again, another gets 504.
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    upstream_timeout: f64,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: seconds between 0.01 and 86400")),
    }
}

/// Counters exported at [`METRICS_PATH`] (`--metrics-listen`).
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    upstream_errors: AtomicU64,
    upstream_retries: AtomicU64,
    responses_resumed: AtomicU64,
    responses_full: AtomicU64,
    handshakes_full: AtomicU64,
    handshakes_resumed: AtomicU64,
    client_authenticated: AtomicU64,
    alpn_h2: AtomicU64,
    alpn_http11: AtomicU64,
    hello_retry: AtomicU64,
    cs_exchanges: AtomicU64,
}

impl Counters {
    fn handshake(&self, s: &HandshakeSummary) {
        let add = |c: &AtomicU64, yes: bool| {
            if yes {
                c.fetch_add(1, Ordering::Relaxed);
            }
        };
        add(&self.handshakes_resumed, s.resumed);
        add(&self.handshakes_full, !s.resumed);
        add(&self.client_authenticated, s.client_authenticated);
        add(&self.alpn_h2, s.alpn.as_deref() == Some(b"h2"));
        add(&self.alpn_http11, s.alpn.as_deref() == Some(b"http/1.1"));
        add(&self.hello_retry, s.hello_retry);
        self.cs_exchanges
            .fetch_add(s.lurk_exchanges.len() as u64, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# TYPE lurk_proxy_requests_total counter\n\
             lurk_proxy_requests_total {}\n\
             # TYPE lurk_proxy_upstream_errors_total counter\n\
             lurk_proxy_upstream_errors_total {}\n\
             # TYPE lurk_proxy_upstream_retries_total counter\n\
             lurk_proxy_upstream_retries_total {}\n\
             # TYPE lurk_proxy_upstream_responses_total counter\n\
             lurk_proxy_upstream_responses_total{{resumed=\"false\"}} {}\n\
             lurk_proxy_upstream_responses_total{{resumed=\"true\"}} {}\n\
             # TYPE lurk_proxy_upstream_handshakes_total counter\n\
             lurk_proxy_upstream_handshakes_total{{resumed=\"false\"}} {}\n\
             lurk_proxy_upstream_handshakes_total{{resumed=\"true\"}} {}\n\
             # TYPE lurk_proxy_upstream_client_authenticated_total counter\n\
             lurk_proxy_upstream_client_authenticated_total {}\n\
             # TYPE lurk_proxy_upstream_alpn_total counter\n\
             lurk_proxy_upstream_alpn_total{{protocol=\"h2\"}} {}\n\
             lurk_proxy_upstream_alpn_total{{protocol=\"http/1.1\"}} {}\n\
             # TYPE lurk_proxy_upstream_hello_retry_total counter\n\
             lurk_proxy_upstream_hello_retry_total {}\n\
             # TYPE lurk_proxy_upstream_cs_exchanges_total counter\n\
             lurk_proxy_upstream_cs_exchanges_total {}\n",
            g(&self.requests),
            g(&self.upstream_errors),
            g(&self.upstream_retries),
            g(&self.responses_full),
            g(&self.responses_resumed),
            g(&self.handshakes_full),
            g(&self.handshakes_resumed),
            g(&self.client_authenticated),
            g(&self.alpn_h2),
            g(&self.alpn_http11),
            g(&self.hello_retry),
            g(&self.cs_exchanges),
        )
    }
}

/// The pooled upstream client: through the engine, or the rustls baseline.
enum Upstream {
    Lurk(Client<HttpsConnector, Body>),
    Rustls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>),
}

impl Upstream {
    async fn request(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Self::Lurk(c) => c.request(req).await,
            Self::Rustls(c) => c.request(req).await,
        }
    }
}

struct Proxy {
    upstream: Upstream,
    /// `--upstream-timeout`: one attempt, until the response headers.
    upstream_timeout: Duration,
    /// `scheme://authority` of the upstream.
    base: String,
    counters: Arc<Counters>,
    /// The CS replicas (`None` with `--key-file`).
    cs: Option<CsPool>,
}

/// Prometheus label value escaping (the text exposition format: `\\`, `\"`, `\n`).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The engine's view of each CS replica ([`CsPool::replicas`]), one line per replica and
/// family.
fn render_replicas(replicas: &[ReplicaStatus]) -> String {
    type Value = fn(&ReplicaStatus) -> u64;
    let families: [(&str, &str, Value); 6] = [
        ("lurk_proxy_cs_replica_healthy", "gauge", |r| {
            u64::from(r.healthy)
        }),
        // Calls in flight or waiting for their turn (max_calls_in_flight).
        ("lurk_proxy_cs_calls_outstanding", "gauge", |r| {
            r.outstanding as u64
        }),
        ("lurk_proxy_cs_calls_answered_total", "counter", |r| {
            r.answered
        }),
        // Calls that found the replica unreachable, and failed health checks.
        ("lurk_proxy_cs_failures_total", "counter", |r| r.failures),
        // Calls not sent: no call permit within the call timeout (the engine's own queue).
        ("lurk_proxy_cs_calls_not_sent_total", "counter", |r| r.busy),
        ("lurk_proxy_cs_sessions_total", "counter", |r| r.sessions),
    ];
    let mut out = String::new();
    for (name, kind, value) in families {
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        for r in replicas {
            out.push_str(&format!(
                "{name}{{replica=\"{}\"}} {}\n",
                label(&r.url),
                value(r)
            ));
        }
    }
    out
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(n);
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

impl Proxy {
    /// A request to the metrics listener.
    fn metrics(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.uri().path() != METRICS_PATH {
            return text(StatusCode::NOT_FOUND, "not found\n".into());
        }
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n".into());
            // RFC 9110 §15.5.6.
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let mut body = self.counters.render();
        if let Some(cs) = &self.cs {
            body.push_str(&render_replicas(&cs.replicas()));
        }
        let mut r = text(StatusCode::OK, body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = match format!("{}{pq}", self.base).parse() {
            Ok(u) => u,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("bad request target: {e}\n"),
                )
            }
        };
        // The upstream connection's ALPN decides HTTP/2 or HTTP/1.1; Host comes from the URI.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        // A request with no body and an idempotent method is sent again when its connection
        // fails under it (an HTTP/2 GOAWAY past its stream, a keep-alive connection closed by
        // the upstream): RFC 9110 §9.2.2.
        let retry = (parts.method.is_idempotent() && body.is_end_stream()).then(|| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
        let mut req = Request::from_parts(parts, body.boxed());
        let mut attempts = 0;
        loop {
            attempts += 1;
            // An attempt that gets no response headers in time fails like a lost connection
            // (an HTTP/2 client can wait forever on a connection the upstream stopped serving).
            let outcome =
                match tokio::time::timeout(self.upstream_timeout, self.upstream.request(req)).await
                {
                    Ok(Ok(res)) => Ok(res),
                    Ok(Err(e)) => {
                        let mut msg = e.to_string();
                        let mut src = std::error::Error::source(&e);
                        while let Some(s) = src {
                            msg.push_str(": ");
                            msg.push_str(&s.to_string());
                            src = s.source();
                        }
                        Err((StatusCode::BAD_GATEWAY, msg))
                    }
                    Err(_) => Err((
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("no response within {:?}", self.upstream_timeout),
                    )),
                };
            match outcome {
                Ok(res) => {
                    // The summary of the connection that carried the response.
                    if let Some(s) = res.extensions().get::<HandshakeSummary>() {
                        let c = if s.resumed {
                            &self.counters.responses_resumed
                        } else {
                            &self.counters.responses_full
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    return Response::from_parts(parts, body.boxed());
                }
                Err((status, msg)) => match &retry {
                    Some((method, uri, headers)) if attempts < MAX_ATTEMPTS => {
                        self.counters
                            .upstream_retries
                            .fetch_add(1, Ordering::Relaxed);
                        req = Request::new(Empty::new().map_err(|n| match n {}).boxed());
                        *req.method_mut() = method.clone();
                        *req.uri_mut() = uri.clone();
                        *req.headers_mut() = headers.clone();
                    }
                    _ => {
                        self.counters
                            .upstream_errors
                            .fetch_add(1, Ordering::Relaxed);
                        eprintln!("lurk-edge-proxy: upstream: {msg}");
                        return text(status, format!("upstream: {msg}\n"));
                    }
                },
            }
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, BoxError> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()).into());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, BoxError> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut &pem[..])?
        .ok_or_else(|| format!("{}: no private key", path.display()).into())
}

fn alpn(args: &Args) -> Vec<Vec<u8>> {
    if args.upstream_http1 {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    }
}

/// The engine's connector (client key and tickets in the CS) and its CS replicas.
async fn lurk_connector(args: &Args) -> Result<(lurk_engine::Connector, CsPool), BoxError> {
    use lurk_engine::cs_client::CsEndpoint;
    use lurk_engine::cs_pool::CsPoolOptions;
    use lurk_engine::{ClientConfig, ClientKey, MemoryTicketStore};

    let ep = CsEndpoint::from_files(
        args.cs.first().map_or("", String::as_str),
        args.cs_ca.as_deref(),
        args.cs_cert.as_deref(),
        args.cs_key.as_deref(),
    )?;
    let pool = CsPool::new(&ep, &args.cs, CsPoolOptions::default())?;
    let mut cfg = ClientConfig::builder()
        .trust_anchors(lurk_engine::verify::TrustAnchors::from_pem_file(&args.ca)?)
        .alpn_protocols(alpn(args))
        .ticket_store(Arc::new(MemoryTicketStore::new(64)));
    if let Some(id) = &args.client_key {
        let caps = pool.capabilities().await?;
        let key = ClientKey::from_capabilities(&caps, id)
            .ok_or_else(|| format!("the CS has no key {id:?} for this engine"))?;
        cfg = cfg.client_key(key);
    }
    let cfg = cfg.build()?;
    Ok((
        lurk_engine::Connector::with_cs_pool(Arc::new(cfg), pool.clone()),
        pool,
    ))
}

/// The baseline: rustls with the client key in a file, TLS 1.3 only, in-memory resumption.
fn rustls_connector(args: &Args) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, BoxError> {
    let (Some(key), Some(cert)) = (&args.key_file, &args.cert_file) else {
        return Err("--key-file needs --cert-file".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&args.ca)? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (h2, http/1.1) is set by the builder below.
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs(cert)?, read_key(key)?)?;
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_or_http();
    Ok(if args.upstream_http1 {
        b.enable_http1().build()
    } else {
        b.enable_http1().enable_http2().build()
    })
}

fn listen_tls(args: &Args) -> Result<Option<tokio_rustls::TlsAcceptor>, BoxError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(read_certs(cert)?, read_key(key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
}

async fn run(args: Args) -> Result<(), BoxError> {
    match args.upstream.scheme_str() {
        Some("https") if args.upstream.host().is_some() => {}
        _ => {
            return Err(
                format!("--upstream {}: expected https://host[:port]", args.upstream).into(),
            )
        }
    }
    let base = format!(
        "https://{}",
        args.upstream.authority().map_or("", |a| a.as_str())
    );
    let counters = Arc::new(Counters::default());
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_max_idle_per_host(args.pool_max_idle)
        .pool_idle_timeout(Duration::from_secs(30));
    let mut engine = None;
    let mut cs = None;
    let upstream = if args.key_file.is_some() {
        Upstream::Rustls(builder.build(rustls_connector(&args)?))
    } else {
        let (connector, pool) = lurk_connector(&args).await?;
        engine = Some(connector.clone());
        cs = Some(pool);
        let c = counters.clone();
        let https = HttpsConnector::new(connector)
            .https_only(true)
            .on_handshake(move |s| c.handshake(s));
        Upstream::Lurk(builder.build(https))
    };
    let proxy = Arc::new(Proxy {
        upstream,
        upstream_timeout: Duration::from_secs_f64(args.upstream_timeout),
        base,
        counters,
        cs,
    });
    let acceptor = listen_tls(&args)?;
    if let Some(a) = args.metrics_listen {
        let metrics = TcpListener::bind(a).await?;
        println!("METRICS {}", metrics.local_addr()?);
        tokio::spawn(serve_metrics(metrics, proxy.clone()));
    }
    let listener = TcpListener::bind(args.listen).await?;
    println!("LISTEN {}", listener.local_addr()?);

    let serve = async {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Descriptor exhaustion and the like: back off, keep serving.
                    eprintln!("lurk-edge-proxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let proxy = proxy.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req).await) }
                });
                let server = auto::Builder::new(TokioExecutor::new());
                let r = match acceptor {
                    Some(a) => match a.accept(tcp).await {
                        Ok(tls) => server.serve_connection(TokioIo::new(tls), svc).await,
                        Err(_) => return,
                    },
                    None => server.serve_connection(TokioIo::new(tcp), svc).await,
                };
                let _ = r;
            });
        }
    };
    tokio::select! {
        () = serve => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some(engine) = engine {
        // Ticket registrations and session closes left at the CS.
        engine.wait_for_cs(Duration::from_secs(5)).await;
    }
    Ok(())
}

/// The metrics listener: HTTP/1.1, one request per connection, at most 4 connections at
/// once (others are closed at once), each for at most 10 s, the request head within 5 s.
async fn serve_metrics(listener: TcpListener, proxy: Arc<Proxy>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("lurk-edge-proxy: metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let r = proxy.metrics(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
        });
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lurk-edge-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lurk-edge-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per replica and family; a label value is escaped as the exposition format
    /// wants it.
    #[test]
    fn replicas_render_as_labelled_lines() {
        let r = |url: &str, healthy| ReplicaStatus {
            url: url.into(),
            healthy,
            outstanding: 2,
            answered: 7,
            failures: 1,
            sessions: 3,
            busy: 4,
        };
        let out = render_replicas(&[
            r("https://10.0.0.1:7443 (cs)", true),
            r("unix:/run/a\"b\\c\nd", false),
        ]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6 * 3, "{out}");
        assert!(lines.contains(&"# TYPE lurk_proxy_cs_replica_healthy gauge"));
        assert!(lines
            .contains(&"lurk_proxy_cs_replica_healthy{replica=\"https://10.0.0.1:7443 (cs)\"} 1"));
        assert!(lines
            .contains(&"lurk_proxy_cs_replica_healthy{replica=\"unix:/run/a\\\"b\\\\c\\nd\"} 0"));
        assert!(lines.contains(
            &"lurk_proxy_cs_calls_not_sent_total{replica=\"https://10.0.0.1:7443 (cs)\"} 4"
        ));
        assert!(lines.contains(&"# TYPE lurk_proxy_cs_sessions_total counter"));
        assert!(lines.contains(&"# TYPE lurk_proxy_cs_calls_outstanding gauge"));
    }
}
