//! The engine's connection to the Crypto Service: one HTTP/2 channel (mTLS unless the CS is
//! a plaintext development listener), reused by every connection the engine makes.

use std::path::Path;

use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
use lurk_proto::status::LurkStatus;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the CS is and how to authenticate to it.
#[derive(Clone, Debug)]
pub struct CsEndpoint {
    /// `https://host:port` (mTLS) or `http://host:port` (plaintext development CS).
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
    pub fn connect_lazy(&self) -> Result<CryptoServiceClient<Channel>, CsError> {
        let mut ep = Endpoint::from_shared(self.url.clone())
            .map_err(|e| CsError::Config(format!("CS URL {:?}: {e}", self.url)))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_timeout(std::time::Duration::from_secs(5));
        if self.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &self.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &self.domain {
                tls = tls.domain_name(d.clone());
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| CsError::Config(format!("CS TLS: {e}")))?;
        }
        Ok(CryptoServiceClient::new(ep.connect_lazy()))
    }
}

/// A failed call to the CS.
#[derive(Debug, thiserror::Error)]
pub enum CsError {
    #[error("CS configuration: {0}")]
    Config(String),
    #[error("CS unreachable: {0}")]
    Unreachable(String),
    #[error("CS refused the exchange with LURK status {status}: {message}")]
    Refused { status: LurkStatus, message: String },
    #[error("CS error ({code:?}): {message}")]
    Other { code: tonic::Code, message: String },
}

impl CsError {
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
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                Self::Unreachable(s.message().to_owned())
            }
            code => Self::Other {
                code,
                message: s.message().to_owned(),
            },
        }
    }
}
