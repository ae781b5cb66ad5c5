//! The engine's HTTP/2 channel to one CS: one connection (mTLS over TCP, plaintext TCP for a
//! development CS, or a Unix-domain socket) shared by every call, made on the first call and
//! made again after it closes.
//!
//! A call is driven by the caller's own future down to hyper's connection task: there is no
//! worker task in between (tonic's `Channel` is a `tower::buffer::Buffer`, which hands every
//! call to a task of its own first, one more wake-up per call). A tonic `Channel` still works
//! through [`CsChannel::from`], for callers that build their own.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::codegen::http::uri::{Authority, PathAndQuery, Scheme};
use tonic::codegen::http::{Request, Response, Uri};
use tonic::codegen::{Service, StdError};
use tonic::transport::Channel;

use crate::cs_client::{append_causes, CsError};

/// The CS's gRPC client over a [`CsChannel`]: what [`crate::Connector::new`] and
/// [`crate::cs_pool::CsPool::from_client`] take, and what
/// [`crate::cs_client::CsEndpoint::connect_lazy`] makes.
pub type CsClient = CryptoServiceClient<CsChannel>;

/// HTTP/2 PING every 30 s, also while no call is open: a dead CS or path is found before a
/// handshake needs it (hyper closes the connection when a PING goes unanswered for 20 s).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A cheap-to-clone handle on one HTTP/2 connection to a CS (see the module documentation).
#[derive(Clone)]
pub struct CsChannel(Kind);

#[derive(Clone)]
enum Kind {
    Direct(Arc<Direct>),
    Tonic(Channel),
}

impl From<Channel> for CsChannel {
    /// A tonic channel the caller built (its calls go through tonic's buffer task).
    fn from(channel: Channel) -> Self {
        Self(Kind::Tonic(channel))
    }
}

impl fmt::Debug for CsChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Direct(d) => write!(f, "CsChannel({})", d.url),
            Kind::Tonic(_) => f.write_str("CsChannel(tonic)"),
        }
    }
}

/// How to reach the CS.
enum Dial {
    /// TCP, then TLS with this configuration and server name unless plaintext.
    Tcp {
        host: String,
        port: u16,
        tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    },
    /// A Unix-domain socket (plaintext: the CS names the engine by its peer uid).
    Unix(Arc<Path>),
}

struct Direct {
    url: String,
    dial: Dial,
    /// Put in every request's URI (`:scheme` and `:authority`, RFC 9113 §8.3.1).
    scheme: Scheme,
    authority: Authority,
    /// Bounds the whole connect: TCP, TLS and the HTTP/2 preface.
    connect_timeout: Duration,
    current: Mutex<Current>,
    /// One connect at a time; the calls that arrive meanwhile wait for it and share its
    /// outcome.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Current {
    /// The live connection's sender, if any.
    sender: Option<http2::SendRequest<Body>>,
    /// Connects attempted so far.
    attempts: u64,
    /// Why the last attempt failed (`None` after a success).
    failure: Option<String>,
}

/// TLS settings of a CS channel.
pub(crate) struct TlsSettings {
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// The CS's name in its certificate.
    pub(crate) server_name: ServerName<'static>,
}

impl CsChannel {
    /// A channel to `url` (`https://`, `http://`): nothing happens until the first call.
    pub(crate) fn tcp(
        url: &str,
        tls: Option<TlsSettings>,
        connect_timeout: Duration,
    ) -> Result<Self, CsError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| CsError::Config(format!("CS URL {url:?}: {e}")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| CsError::Config(format!("CS URL {url:?}: no scheme")))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| CsError::Config(format!("CS URL {url:?}: no host")))?;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = authority.host();
        // An IPv6 literal is bracketed in a URL, not in a socket address.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let tls = tls.map(|t| (tokio_rustls::TlsConnector::from(t.config), t.server_name));
        Ok(Self::direct(
            url,
            Dial::Tcp {
                host: host.to_owned(),
                port: authority.port_u16().unwrap_or(default_port),
                tls,
            },
            scheme,
            authority,
            connect_timeout,
        ))
    }

    /// A channel to the Unix socket at `path`: nothing happens until the first call.
    pub(crate) fn unix(url: &str, path: &Path, connect_timeout: Duration) -> Self {
        Self::direct(
            url,
            Dial::Unix(Arc::from(path)),
            Scheme::HTTP,
            Authority::from_static("localhost"),
            connect_timeout,
        )
    }

    fn direct(
        url: &str,
        dial: Dial,
        scheme: Scheme,
        authority: Authority,
        connect_timeout: Duration,
    ) -> Self {
        Self(Kind::Direct(Arc::new(Direct {
            url: url.to_owned(),
            dial,
            scheme,
            authority,
            connect_timeout,
            current: Mutex::default(),
            connecting: tokio::sync::Mutex::new(()),
        })))
    }
}

impl Direct {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live connection's sender, if there is one.
    fn live(&self) -> Option<http2::SendRequest<Body>> {
        self.current()
            .sender
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// The live connection's sender, connecting first if there is none. A call that waited
    /// for another's connect attempt shares its failure rather than trying again: a burst of
    /// calls to an unreachable CS does not wait for one connect timeout each.
    async fn sender(&self) -> Result<http2::SendRequest<Body>, tonic::Status> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let seen = self.current().attempts;
        let _turn = self.connecting.lock().await;
        {
            let current = self.current();
            if let Some(s) = current.sender.as_ref().filter(|s| !s.is_closed()) {
                return Ok(s.clone());
            }
            if current.attempts != seen {
                if let Some(why) = &current.failure {
                    return Err(tonic::Status::unavailable(why.clone()));
                }
            }
        }
        let t = self.connect_timeout;
        let outcome = match tokio::time::timeout(t, self.connect()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("connecting to {}: {}", self.url, causes(&*e))),
            Err(_) => Err(format!(
                "connecting to {}: no connection within {t:?}",
                self.url
            )),
        };
        let mut current = self.current();
        current.attempts += 1;
        match outcome {
            Ok(s) => {
                current.sender = Some(s.clone());
                current.failure = None;
                Ok(s)
            }
            Err(why) => {
                current.sender = None;
                current.failure = Some(why.clone());
                Err(tonic::Status::unavailable(why))
            }
        }
    }

    async fn connect(&self) -> Result<http2::SendRequest<Body>, StdError> {
        match &self.dial {
            Dial::Unix(path) => handshake(tokio::net::UnixStream::connect(&**path).await?).await,
            Dial::Tcp { host, port, tls } => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                let Some((connector, name)) = tls else {
                    return handshake(tcp).await;
                };
                let tls = connector.connect(name.clone(), tcp).await?;
                // RFC 7540 §3.3: HTTP/2 over TLS is negotiated with ALPN "h2".
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the CS did not negotiate HTTP/2 (ALPN h2)".into());
                }
                handshake(tls).await
            }
        }
    }

    async fn call(self: Arc<Self>, mut req: Request<Body>) -> Result<Response<Body>, StdError> {
        // tonic's client sends the path alone; HTTP/2 needs the scheme and authority.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()?;
        let mut sender = self.sender().await?;
        let response = match sender.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                // Never sent: the connection closed between the check and the send. The next
                // connection gets it.
                Some(req) => self.sender().await?.send_request(req).await?,
                None => return Err(e.into_error().into()),
            },
        };
        Ok(response.map(Body::new))
    }
}

/// The HTTP/2 handshake on `io`; the connection is driven by a task of its own until it
/// closes.
async fn handshake<T>(io: T) -> Result<http2::SendRequest<Body>, StdError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("CS connection closed: {e}");
        }
    });
    Ok(sender)
}

/// `e` and its distinct sources, one after the other.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    append_causes(e.to_string(), e.source())
}

/// The future of one call.
pub struct ResponseFuture(Pin<Box<dyn Future<Output = Result<Response<Body>, StdError>> + Send>>);

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, StdError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl Service<Request<Body>> for CsChannel {
    type Response = Response<Body>;
    type Error = StdError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.0 {
            // Never full: a closed connection is replaced by the call itself.
            Kind::Direct(_) => Poll::Ready(Ok(())),
            Kind::Tonic(c) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match &mut self.0 {
            Kind::Direct(d) => ResponseFuture(Box::pin(d.clone().call(req))),
            Kind::Tonic(c) => {
                let f = c.call(req);
                ResponseFuture(Box::pin(async move { f.await.map_err(Into::into) }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::join_all;
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    /// A gRPC health server (a real tonic server) on `addr` until `stop` fires; counts the
    /// connections it accepts.
    async fn health_server(
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |s| {
            accepted.fetch_add(1, Ordering::SeqCst);
            s
        });
        let (_reporter, service) = tonic_health::server::health_reporter();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
        })
    }

    async fn check(c: &mut HealthClient<CsChannel>) -> Result<(), tonic::Status> {
        c.check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(drop)
    }

    /// Every call shares one connection; after the server closes it, the next call makes a
    /// new one (to the server started again on the same port).
    #[tokio::test]
    async fn calls_share_one_connection_and_reconnect_after_it_closes() {
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server = health_server(addr, accepted.clone(), stopped).await;
        let url = format!("http://{addr}");
        let channel = CsChannel::tcp(&url, None, Duration::from_secs(5)).unwrap();
        let mut c = HealthClient::new(channel.clone());
        for _ in 0..10 {
            check(&mut c).await.unwrap();
        }
        let calls = (0..10).map(|_| {
            let mut c = HealthClient::new(channel.clone());
            async move { check(&mut c).await }
        });
        for r in join_all(calls).await {
            r.unwrap();
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for 20 calls"
        );

        // The server goes away (GOAWAY, then the connection closes) and comes back.
        stop.send(()).unwrap();
        server.await.unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let _server = health_server(addr, accepted.clone(), stopped).await;
        let mut answered = false;
        for _ in 0..50 {
            // A call that raced the close may fail; the next one reconnects.
            if check(&mut c).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "no answer from the restarted server");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// Calls that wait for a connect attempt share its failure: eight calls to a CS that
    /// accepts TCP but never answers the TLS handshake make one connection, not eight (one
    /// connect timeout, not eight in a row), and all fail as "unreachable".
    #[tokio::test]
    async fn waiting_calls_share_a_failed_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let tls = TlsSettings {
            config: Arc::new(config),
            server_name: ServerName::try_from("localhost").unwrap(),
        };
        let url = format!("https://{addr}");
        let channel = CsChannel::tcp(&url, Some(tls), Duration::from_millis(300)).unwrap();
        let calls = (0..8).map(|_| {
            let mut c = CryptoServiceClient::new(channel.clone());
            async move { c.ping(lurk_proto::pb::PingRequest {}).await }
        });
        for r in join_all(calls).await {
            let e = CsError::from(r.unwrap_err());
            assert!(
                matches!(&e, CsError::Unreachable(m) if m.contains("no connection within")),
                "{e}"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
