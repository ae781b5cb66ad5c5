//! `[server_auth]`: the CS authenticates the TLS server itself, whatever the engine says
//! (docs/protocol.md, "What never leaves the CS"). Without it, an engine that plays the
//! server (its own key share) knows the (EC)DHE secret, hence r and the PSK of every ticket
//! it then registers.
//!
//! With the policy, before the CS signs a client CertificateVerify, releases application
//! secrets or registers tickets, the server has authenticated in this handshake:
//! - with a certificate: its chain validates to the configured anchors, for serverAuth, at
//!   the CS's clock, for the ClientHello's server_name (RFC 8446 §4.4.2, RFC 6066 §3), and
//!   its CertificateVerify verifies over the transcript through its Certificate, with a
//!   scheme the ClientHello offered (RFC 8446 §4.4.3);
//! - or with a PSK the CS holds: a resumption ticket registered under the policy is bound to
//!   the server name whose chain was verified and may only be offered for that same SNI; an
//!   external PSK is provisioned out of band for its server.
//!
//! The name is the ClientHello's server_name (a DNS name). A ClientHello without one (a
//! client connecting to an IP address, RFC 6066 §3) is refused under the policy: the CS has
//! no other way to know which server the engine means.

use std::path::Path;

use lurk_proto::server_auth::{verify_server_signature, TrustAnchors};
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::SignatureScheme;
use rustls_pki_types::UnixTime;

use crate::config::ServerAuthConfig;
use crate::error::{ConfigError, ServiceError};
use crate::ops::msgs;

/// The policy: the anchors TLS servers must chain to.
#[derive(Debug)]
pub struct ServerAuth {
    anchors: TrustAnchors,
}

impl ServerAuth {
    /// The policy `cfg` describes (`None` when disabled).
    pub fn from_config(cfg: &ServerAuthConfig) -> Result<Option<Self>, ConfigError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let path = cfg.trust_anchors.as_deref().ok_or_else(|| {
            ConfigError::Invalid("server_auth: enabled needs trust_anchors".into())
        })?;
        Self::from_pem_file(path).map(Some)
    }

    /// The policy with the CA certificates of a PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Self, ConfigError> {
        let pem = std::fs::read(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let anchors = TrustAnchors::from_pem(&pem).map_err(|e| {
            ConfigError::Invalid(format!("server_auth.trust_anchors {}: {e}", path.display()))
        })?;
        Ok(Self { anchors })
    }

    /// The policy with these anchors.
    pub fn from_anchors(anchors: TrustAnchors) -> Self {
        Self { anchors }
    }

    /// How many anchors the policy has.
    pub fn anchors(&self) -> usize {
        self.anchors.len()
    }

    /// Checks the server's Certificate and CertificateVerify messages (raw, header
    /// included) for `server_name`; `th_certificate` is the transcript hash through the
    /// Certificate. Returns the verified name.
    pub fn check_certificate(
        &self,
        server_name: Option<&str>,
        offered: &[SignatureScheme],
        certificate: &[u8],
        th_certificate: &[u8],
        certificate_verify: &[u8],
    ) -> Result<String, ServiceError> {
        let name = require_name(server_name)?;
        let cert = msgs::certificate(certificate)?;
        // RFC 8446 §4.4.2: the context is empty in the handshake's Certificate.
        if !cert.context.is_empty() {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                "the server Certificate has a certificate_request_context",
            ));
        }
        let chain: Vec<&[u8]> = cert.chain.iter().map(Vec::as_slice).collect();
        self.anchors
            .verify_server_chain(&chain, name, UnixTime::now())?;
        let cv = msgs::certificate_verify(certificate_verify)?;
        verify_server_signature(chain[0], offered, cv.0, th_certificate, &cv.1)?;
        Ok(name.to_owned())
    }
}

/// The server name the policy authenticates against: the ClientHello's SNI.
pub fn require_name(server_name: Option<&str>) -> Result<&str, ServiceError> {
    server_name.ok_or_else(|| {
        ServiceError::refuse(
            LurkStatus::InvalidCertificate,
            "[server_auth]: the ClientHello has no server_name to authenticate the server for",
        )
    })
}
