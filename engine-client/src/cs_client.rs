//! The engine's connection to one Crypto Service: one HTTP/2 channel (mTLS unless the CS is
//! a plaintext development listener), reused by every connection the engine makes. Several
//! replicas: [`crate::cs_pool::CsPool`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lurk_proto::pb;
use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
use lurk_proto::status::LurkStatus;
use rustls_pki_types::ServerName;

use crate::cs_channel::{CsChannel, CsClient, TlsSettings};

/// Where the CS is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct CsEndpoint {
    /// `https://host:port` (mTLS), `http://host:port` (plaintext development CS), or
    /// `unix:/path` (a CS on this host; it names the engine by this process's uid).
    pub url: String,
    /// PEM CA that issued the CS's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key of this engine (its identity at the CS).
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// TLS server name of the CS (defaults to the URL's host).
    pub domain: Option<String>,
}

impl CsEndpoint {
    /// Reads the CA, certificate and key from PEM files.
    pub fn from_files(
        url: &str,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> std::io::Result<Self> {
        let ca_pem = ca.map(std::fs::read).transpose()?;
        let identity_pem = match (cert, key) {
            (Some(c), Some(k)) => Some((std::fs::read(c)?, std::fs::read(k)?)),
            _ => None,
        };
        Ok(Self {
            url: url.to_owned(),
            ca_pem,
            identity_pem,
            domain: None,
        })
    }

    /// Opens the channel (lazily: the first call connects).
    pub fn connect_lazy(&self) -> Result<CsClient, CsError> {
        Ok(CryptoServiceClient::new(self.channel(
            &self.url,
            self.domain.as_deref(),
            None,
        )?))
    }

    /// A lazy channel to `url` with these credentials and `domain` as TLS server name (the
    /// URL's host when `None`); `connect_timeout` bounds the connect, TLS handshake included
    /// (5 s when `None`).
    pub(crate) fn channel(
        &self,
        url: &str,
        domain: Option<&str>,
        connect_timeout: Option<Duration>,
    ) -> Result<CsChannel, CsError> {
        let timeout = connect_timeout.unwrap_or(Duration::from_secs(5));
        if let Some(path) = url.strip_prefix(UNIX_SCHEME) {
            if path.is_empty() {
                return Err(CsError::Config("CS URL unix: names no socket path".into()));
            }
            return Ok(CsChannel::unix(url, Path::new(path), timeout));
        }
        let tls = if url.starts_with("https://") {
            let host = url
                .parse::<tonic::codegen::http::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_owned()));
            let name = domain.map(str::to_owned).or(host).ok_or_else(|| {
                CsError::Config(format!("CS URL {url:?}: no host for the TLS server name"))
            })?;
            Some(TlsSettings {
                config: self.tls_config()?,
                server_name: ServerName::try_from(name.clone())
                    .map_err(|e| CsError::Config(format!("CS TLS server name {name:?}: {e}")))?,
            })
        } else {
            None
        };
        CsChannel::tcp(url, tls, timeout)
    }

    /// The mTLS client configuration: the CS's CA, this engine's certificate and key, ALPN h2.
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, CsError> {
        let bad =
            |what: &str, e: &dyn fmt::Display| CsError::Config(format!("CS TLS: {what}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca_pem {
            for cert in rustls_pemfile::certs(&mut &ca[..]) {
                let cert = cert.map_err(|e| bad("CA certificate", &e))?;
                roots.add(cert).map_err(|e| bad("CA certificate", &e))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots);
        let mut config = match &self.identity_pem {
            Some((cert, key)) => {
                let chain = rustls_pemfile::certs(&mut &cert[..])
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("engine certificate", &e))?;
                let key = rustls_pemfile::private_key(&mut &key[..])
                    .map_err(|e| bad("engine key", &e))?
                    .ok_or_else(|| {
                        CsError::Config("CS TLS: engine key: no key in the PEM".into())
                    })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("engine certificate and key", &e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The URL prefix of a CS on a Unix-domain socket: `unix:/run/lurk-cs/cs.sock`.
pub const UNIX_SCHEME: &str = "unix:";

/// A failed call to the CS.
#[derive(Debug, thiserror::Error)]
pub enum CsError {
    /// The CS is not configured or its configuration is unusable (URL, credentials).
    #[error("CS configuration: {0}")]
    Config(String),
    /// No answer from the CS (connect refused, connection lost, UNAVAILABLE).
    #[error("CS unreachable: {0}")]
    Unreachable(String),
    /// The call was not sent: it waited the whole call timeout for its turn among the
    /// engine's calls to the replica ([`crate::cs_pool::CsPoolOptions::max_calls_in_flight`],
    /// three quarters of them at most opening sessions). Says nothing about the replica's
    /// health.
    #[error("CS call not sent: {0}")]
    Busy(String),
    /// The CS answered with a LURK refusal (docs/protocol.md).
    #[error("CS refused the exchange with LURK status {status}: {message}")]
    Refused {
        /// The LURK status.
        status: LurkStatus,
        /// The CS's message.
        message: String,
    },
    /// Another gRPC error.
    #[error("CS error ({code:?}): {message}")]
    Other {
        /// The gRPC code.
        code: tonic::Code,
        /// The message.
        message: String,
    },
}

impl CsError {
    /// The LURK status of a refusal.
    pub fn lurk_status(&self) -> Option<LurkStatus> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<tonic::Status> for CsError {
    fn from(s: tonic::Status) -> Self {
        if let Some(status) = LurkStatus::from_grpc(&s) {
            return Self::Refused {
                status,
                message: s.message().to_owned(),
            };
        }
        // A status with a source is the client's own (connect refused, connection lost,
        // hyper/h2 error): the CS never answered.
        let transport = std::error::Error::source(&s).is_some();
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                Self::Unreachable(with_causes(&s))
            }
            code if transport => Self::Unreachable(format!("{code:?}: {}", with_causes(&s))),
            code => Self::Other {
                code,
                message: s.message().to_owned(),
            },
        }
    }
}

/// The status message followed by the distinct messages of its sources ("tcp connect error:
/// Connection refused (os error 111)").
fn with_causes(s: &tonic::Status) -> String {
    append_causes(s.message().to_owned(), std::error::Error::source(s))
}

/// `m` followed by the messages of `source` and its sources that `m` does not hold yet.
pub(crate) fn append_causes(
    mut m: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(e) = source {
        let t = e.to_string();
        if !m.contains(&t) {
            m.push_str(": ");
            m.push_str(&t);
        }
        source = e.source();
    }
    m
}

/// A call to the CS the state machine asks its driver to make (one LURK exchange).
#[derive(Clone)]
pub enum CsCall {
    /// c_init_client_hello.
    InitClientHello(pb::CInitClientHelloRequest),
    /// c_client_hello.
    ClientHello(pb::CClientHelloRequest),
    /// c_server_hello.
    ServerHello(pb::CServerHelloRequest),
    /// c_client_finished.
    ClientFinished(pb::CClientFinishedRequest),
    /// c_server_flight (one exchange for c_server_hello + c_client_finished).
    ServerFlight(pb::CServerFlightRequest),
    /// c_init_client_finished.
    InitClientFinished(pb::CInitClientFinishedRequest),
    /// c_post_hand_auth.
    PostHandAuth(pb::CPostHandAuthRequest),
    /// c_register_tickets.
    RegisterTickets(pb::CRegisterTicketsRequest),
}

impl CsCall {
    /// The LURK exchange name.
    pub fn exchange(&self) -> &'static str {
        match self {
            Self::InitClientHello(_) => "c_init_client_hello",
            Self::ClientHello(_) => "c_client_hello",
            Self::ServerHello(_) => "c_server_hello",
            Self::ClientFinished(_) => "c_client_finished",
            Self::ServerFlight(_) => "c_server_flight",
            Self::InitClientFinished(_) => "c_init_client_finished",
            Self::PostHandAuth(_) => "c_post_hand_auth",
            Self::RegisterTickets(_) => "c_register_tickets",
        }
    }
}

/// Requests carry secrets (shared secrets) and transcripts: show only the exchange.
impl fmt::Debug for CsCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CsCall({})", self.exchange())
    }
}

/// The CS's answer to a [`CsCall`].
pub enum CsReply {
    /// c_init_client_hello.
    InitClientHello(pb::CInitClientHelloResponse),
    /// c_client_hello.
    ClientHello(pb::CClientHelloResponse),
    /// c_server_hello.
    ServerHello(pb::CServerHelloResponse),
    /// c_client_finished.
    ClientFinished(pb::CClientFinishedResponse),
    /// c_server_flight (one exchange for c_server_hello + c_client_finished).
    ServerFlight(pb::CServerFlightResponse),
    /// c_init_client_finished.
    InitClientFinished(pb::CInitClientFinishedResponse),
    /// c_post_hand_auth.
    PostHandAuth(pb::CPostHandAuthResponse),
    /// c_register_tickets.
    RegisterTickets(pb::CRegisterTicketsResponse),
}

/// Responses carry traffic secrets: show only the variant.
impl fmt::Debug for CsReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::InitClientHello(_) => "InitClientHello",
            Self::ClientHello(_) => "ClientHello",
            Self::ServerHello(_) => "ServerHello",
            Self::ClientFinished(_) => "ClientFinished",
            Self::ServerFlight(_) => "ServerFlight",
            Self::InitClientFinished(_) => "InitClientFinished",
            Self::PostHandAuth(_) => "PostHandAuth",
            Self::RegisterTickets(_) => "RegisterTickets",
        };
        write!(f, "CsReply({name})")
    }
}

/// The retries of a call whose stream the CS's HTTP/2 layer refused before processing it:
/// at most 6, after a pause of 1 ms doubled each time.
pub(crate) struct RefusedStreamRetry {
    left: u32,
    pause: Duration,
}

impl RefusedStreamRetry {
    pub(crate) fn new() -> Self {
        Self {
            left: 6,
            pause: Duration::from_millis(1),
        }
    }

    /// Whether `s` is a refused stream that may be retried; if so, waits the pause first.
    pub(crate) async fn again(&mut self, s: &tonic::Status) -> bool {
        if self.left == 0 || !refused_stream(s) {
            return false;
        }
        self.left -= 1;
        tokio::time::sleep(self.pause).await;
        self.pause *= 2;
        true
    }
}

/// Makes one call on `client` (a cheap clone of the shared channel). A call whose HTTP/2
/// stream the CS refused before processing it (REFUSED_STREAM: the engine opened more
/// streams than the CS's `max_concurrent_streams`, which happens when a burst of calls
/// starts on a connection before the CS's SETTINGS arrived) is made again after a short
/// pause: RFC 9113 §8.7 guarantees such a request was not processed, so the CS's session
/// is as it was.
pub async fn perform(client: CsClient, call: CsCall) -> Result<CsReply, CsError> {
    let mut retry = RefusedStreamRetry::new();
    loop {
        match perform_once(client.clone(), call.clone()).await {
            Err(s) if retry.again(&s).await => {}
            other => return other.map_err(CsError::from),
        }
    }
}

/// Whether the CS's HTTP/2 layer refused the call's stream before processing it.
pub(crate) fn refused_stream(s: &tonic::Status) -> bool {
    let mut e = std::error::Error::source(s);
    while let Some(err) = e {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        e = err.source();
    }
    false
}

async fn perform_once(mut client: CsClient, call: CsCall) -> Result<CsReply, tonic::Status> {
    Ok(match call {
        CsCall::InitClientHello(r) => {
            CsReply::InitClientHello(client.c_init_client_hello(r).await?.into_inner())
        }
        CsCall::ClientHello(r) => {
            CsReply::ClientHello(client.c_client_hello(r).await?.into_inner())
        }
        CsCall::ServerHello(r) => {
            CsReply::ServerHello(client.c_server_hello(r).await?.into_inner())
        }
        CsCall::ClientFinished(r) => {
            CsReply::ClientFinished(client.c_client_finished(r).await?.into_inner())
        }
        CsCall::ServerFlight(r) => {
            CsReply::ServerFlight(client.c_server_flight(r).await?.into_inner())
        }
        CsCall::InitClientFinished(r) => {
            CsReply::InitClientFinished(client.c_init_client_finished(r).await?.into_inner())
        }
        CsCall::PostHandAuth(r) => {
            CsReply::PostHandAuth(client.c_post_hand_auth(r).await?.into_inner())
        }
        CsCall::RegisterTickets(r) => {
            CsReply::RegisterTickets(client.c_register_tickets(r).await?.into_inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an h2 REFUSED_STREAM (found anywhere in the status's sources) is retried.
    #[test]
    fn only_refused_streams_are_retried() {
        let status =
            |reason: h2::Reason| tonic::Status::from_error(Box::new(h2::Error::from(reason)));
        assert!(refused_stream(&status(h2::Reason::REFUSED_STREAM)));
        assert!(!refused_stream(&status(h2::Reason::CANCEL)));
        assert!(!refused_stream(&status(h2::Reason::INTERNAL_ERROR)));
        assert!(!refused_stream(&tonic::Status::unavailable("no source")));
        assert!(!refused_stream(&tonic::Status::internal("refused stream")));
    }
}
