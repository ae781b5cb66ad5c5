//! Server authentication: the certificate chain and name, and the CertificateVerify signature
//! (RFC 8446 §4.4.2-§4.4.3). The rules live in `lurk_proto::server_auth` (the CS applies the
//! same ones under its `[server_auth]` policy); this module maps their failures to the alert
//! the engine sends.

use std::path::Path;

use lurk_proto::server_auth::{self, ChainError, SignatureError};
use lurk_proto::wire::{AlertDescription, SignatureScheme};
use rustls_pki_types::UnixTime;

use crate::error::{CertificateError, Error, PeerMisbehaved};

pub use lurk_proto::server_auth::server_signed_content;

/// The schemes the engine offers and verifies, in preference order.
pub const SUPPORTED_SCHEMES: [SignatureScheme; 8] = [
    SignatureScheme::EcdsaSecp256r1Sha256,
    SignatureScheme::EcdsaSecp384r1Sha384,
    SignatureScheme::Ed25519,
    SignatureScheme::RsaPssRsaeSha256,
    SignatureScheme::RsaPssRsaeSha384,
    SignatureScheme::RsaPssRsaeSha512,
    SignatureScheme::RsaPssPssSha256,
    SignatureScheme::RsaPssPssSha384,
];

/// Trust anchors owned for the life of the engine.
#[derive(Clone, Debug, Default)]
pub struct TrustAnchors {
    inner: server_auth::TrustAnchors,
}

impl TrustAnchors {
    /// Anchors from DER certificates.
    pub fn from_der<C: AsRef<[u8]>>(certs: &[C]) -> Result<Self, Error> {
        let inner = server_auth::TrustAnchors::from_der(certs).map_err(Error::general)?;
        Ok(Self { inner })
    }

    /// Anchors from a PEM file of certificates.
    pub fn from_pem_file(path: &Path) -> Result<Self, Error> {
        let data = std::fs::read(path).map_err(|e| {
            Error::general(format!("cannot read trust anchors {}: {e}", path.display()))
        })?;
        let inner = server_auth::TrustAnchors::from_pem(&data)
            .map_err(|e| Error::general(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// How many anchors there are.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Validates `chain` (leaf first) to one of the anchors at `now`, for serverAuth, and the
    /// leaf for `server_name` (a DNS name or an IP address).
    pub fn verify_server_chain(
        &self,
        chain: &[&[u8]],
        server_name: &str,
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        self.inner
            .verify_server_chain(chain, server_name, now)
            .map_err(|e| CertificateError::new(chain_alert(&e), e.to_string()))
    }
}

fn chain_alert(e: &ChainError) -> AlertDescription {
    use webpki::Error as E;
    match e {
        ChainError::Empty => AlertDescription::DecodeError,
        ChainError::NotAName(_) => AlertDescription::InternalError,
        ChainError::Leaf(_) => AlertDescription::BadCertificate,
        ChainError::Path(e) | ChainError::Name(e) => match e {
            E::CertExpired { .. } | E::CertNotValidYet { .. } => {
                AlertDescription::CertificateExpired
            }
            E::UnknownIssuer => AlertDescription::UnknownCa,
            E::CertRevoked => AlertDescription::CertificateRevoked,
            E::UnsupportedSignatureAlgorithmContext(_)
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                AlertDescription::UnsupportedCertificate
            }
            _ => AlertDescription::BadCertificate,
        },
    }
}

/// Verifies the server's CertificateVerify (`lurk_proto::server_auth::verify_server_signature`)
/// and names the failure with its alert (RFC 8446 §4.4.3, §6.2).
pub fn verify_server_signature(
    leaf: &[u8],
    offered: &[SignatureScheme],
    scheme: SignatureScheme,
    transcript_hash: &[u8],
    sig: &[u8],
) -> Result<(), Error> {
    server_auth::verify_server_signature(leaf, offered, scheme, transcript_hash, sig).map_err(|e| {
        match e {
            SignatureError::UnofferedScheme => PeerMisbehaved::UnofferedSignatureScheme.into(),
            SignatureError::BadSignature => PeerMisbehaved::BadCertificateVerifySignature.into(),
            SignatureError::Leaf(_) => {
                CertificateError::new(AlertDescription::BadCertificate, e.to_string()).into()
            }
            SignatureError::UnsupportedKey => {
                CertificateError::new(AlertDescription::UnsupportedCertificate, e.to_string())
                    .into()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unoffered_scheme_is_refused_before_parsing() {
        let e = verify_server_signature(
            b"not a cert",
            &[SignatureScheme::Ed25519],
            SignatureScheme::EcdsaSecp256r1Sha256,
            &[0; 32],
            &[1],
        )
        .unwrap_err();
        assert_eq!(e, PeerMisbehaved::UnofferedSignatureScheme.into());
        assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
    }

    /// RFC 8446 §4.4.3: the Illustrated TLS 1.3 server's CertificateVerify verifies over the
    /// transcript through its Certificate; one bit off and it is decrypt_error.
    #[test]
    fn certificate_verify_known_answer_and_a_bad_signature_is_decrypt_error() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/illustrated.json")).unwrap();
        let c = &doc["connections"]["current"];
        let hexv = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
        let mut t = lurk_proto::transcript::Transcript::new();
        for m in [
            "client_hello",
            "server_hello",
            "encrypted_extensions",
            "server_certificate",
        ] {
            t.add(&hexv(&c["messages"][m]));
        }
        let th = t.hash(lurk_proto::wire::HashAlg::Sha384);
        let cv = hexv(&c["messages"]["server_certificate_verify"]);
        let cv = lurk_proto::wire::CertificateVerify::parse(&cv).unwrap();
        let leaf = hexv(&c["server_certificate_der"]);
        verify_server_signature(&leaf, &SUPPORTED_SCHEMES, cv.scheme, &th, cv.signature).unwrap();
        let mut bad = cv.signature.to_vec();
        bad[10] ^= 1;
        let e =
            verify_server_signature(&leaf, &SUPPORTED_SCHEMES, cv.scheme, &th, &bad).unwrap_err();
        assert_eq!(e, PeerMisbehaved::BadCertificateVerifySignature.into());
        assert_eq!(e.alert(), Some(AlertDescription::DecryptError));
    }
}
