//! hyper integration (cargo feature `hyper`): [`HttpsConnector`], a connector for
//! `hyper_util::client::legacy::Client`, shaped like hyper-rustls' `HttpsConnector`.
//!
//! `https://` URIs get a TCP connection and a handshake through the engine (the CS does the
//! credential work); `http://` URIs get a plain TCP connection unless
//! [`HttpsConnector::https_only`] is set. The protocol the server selects through ALPN
//! decides HTTP/2 or HTTP/1.1 on the connection: offer both in
//! `ClientConfig::alpn` (`h2` first) for HTTP/2 upstreams. Each response of a TLS connection
//! carries that connection's [`HandshakeSummary`] in its extensions
//! (`response.extensions().get::<HandshakeSummary>()`), and
//! [`HttpsConnector::on_handshake`] sees every summary as the connection is made.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::HandshakeSummary;
use crate::server_name::ServerName;
use crate::stream::{Connector, TlsStream};

/// The error type of the connector's futures (what hyper-util expects).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Observer = Arc<dyn Fn(&HandshakeSummary) + Send + Sync>;

/// Connects hyper's client through the engine. Cheap to clone (the clones share the
/// [`Connector`], hence its CS and ticket store).
///
/// ```no_run
/// # async fn example(connector: lurk_engine::Connector) -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use lurk_engine::{HandshakeSummary, HttpsConnector};
///
/// let client = Client::builder(TokioExecutor::new())
///     .build::<_, Empty<bytes::Bytes>>(HttpsConnector::new(connector));
/// let res = client.get("https://localhost:8443/".parse()?).await?;
/// let summary = res.extensions().get::<HandshakeSummary>();
/// println!("{} resumed={:?}", res.status(), summary.map(|s| s.resumed));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HttpsConnector {
    connector: Connector,
    https_only: bool,
    observer: Option<Observer>,
}

impl std::fmt::Debug for HttpsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsConnector")
            .field("connector", &self.connector)
            .field("https_only", &self.https_only)
            .finish_non_exhaustive()
    }
}

impl From<Connector> for HttpsConnector {
    fn from(connector: Connector) -> Self {
        Self::new(connector)
    }
}

impl HttpsConnector {
    /// A connector making its TLS connections with `connector`.
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            https_only: false,
            observer: None,
        }
    }

    /// Refuses `http://` URIs (default: passed through as plain TCP).
    pub fn https_only(mut self, yes: bool) -> Self {
        self.https_only = yes;
        self
    }

    /// Calls `f` with the summary of each handshake, when it completes (for counters).
    pub fn on_handshake(mut self, f: impl Fn(&HandshakeSummary) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// The engine connector underneath.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    async fn connect(self, uri: Uri) -> Result<MaybeHttpsStream, BoxError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if !self.https_only => false,
            other => {
                return Err(format!("unsupported scheme {other:?} in {uri}").into());
            }
        };
        let host = uri.host().ok_or_else(|| format!("no host in {uri}"))?;
        // An IPv6 literal comes bracketed.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = async {
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(tcp)
        };
        if !https {
            return Ok(MaybeHttpsStream::Http(TokioIo::new(tcp.await?)));
        }
        let name = ServerName::try_from(host)?;
        // The first CS exchange runs while the TCP connection is made.
        let tls = self.connector.connect_with(&name, port, tcp).await?;
        if let Some(f) = &self.observer {
            f(tls.summary());
        }
        Ok(MaybeHttpsStream::Https(Box::new(TokioIo::new(tls))))
    }
}

impl tower_service::Service<Uri> for HttpsConnector {
    type Response = MaybeHttpsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeHttpsStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A connection made by [`HttpsConnector`]: plain TCP or TLS through the engine.
#[allow(clippy::large_enum_variant)]
pub enum MaybeHttpsStream {
    /// An `http://` connection.
    Http(TokioIo<TcpStream>),
    /// An `https://` connection through the engine.
    Https(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl std::fmt::Debug for MaybeHttpsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(_) => f.write_str("MaybeHttpsStream::Http"),
            Self::Https(s) => f
                .debug_tuple("MaybeHttpsStream::Https")
                .field(s.inner().summary())
                .finish(),
        }
    }
}

impl MaybeHttpsStream {
    /// The handshake summary of a TLS connection.
    pub fn summary(&self) -> Option<&HandshakeSummary> {
        match self {
            Self::Http(_) => None,
            Self::Https(s) => Some(s.inner().summary()),
        }
    }
}

impl Connection for MaybeHttpsStream {
    fn connected(&self) -> Connected {
        match self {
            Self::Http(s) => s.connected(),
            Self::Https(s) => {
                let summary = s.inner().summary();
                let c = s.inner().get_ref().connected().extra(summary.clone());
                if summary.alpn.as_deref() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl Read for MaybeHttpsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Http(s) => Pin::new(s).poll_read(cx, buf),
            Self::Https(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for MaybeHttpsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Http(s) => Pin::new(s).poll_write(cx, buf),
            Self::Https(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Http(s) => Pin::new(s).poll_flush(cx),
            Self::Https(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Http(s) => Pin::new(s).poll_shutdown(cx),
            Self::Https(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
