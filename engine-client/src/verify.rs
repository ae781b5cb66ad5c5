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

/// Offered after [`SUPPORTED_SCHEMES`] for signatures in certificates only: RFC 8446 §9.1
/// makes rsa_pkcs1_sha256 in certificates a MUST, and §4.2.3 allows RSASSA-PKCS1-v1_5 for
/// certificates but never for handshake signatures, so a CertificateVerify in one of these
/// is refused even though they are offered.
pub const CERTIFICATE_ONLY_SCHEMES: [SignatureScheme; 3] = [
    SignatureScheme::RsaPkcs1Sha256,
    SignatureScheme::RsaPkcs1Sha384,
    SignatureScheme::RsaPkcs1Sha512,
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

    /// Anchors from PEM certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let inner = server_auth::TrustAnchors::from_pem(pem).map_err(Error::general)?;
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

    /// A self-signed end-entity RSA certificate (CA:FALSE) for `name`, signed with `digest`
    /// by `openssl req` with a config of its own; returns its DER.
    fn openssl_rsa_cert(dir: &Path, digest: &str, name: &str) -> Vec<u8> {
        let cnf = dir.join("ee.cnf");
        std::fs::write(
            &cnf,
            format!(
                "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {name}\n\
                 [ee]\nbasicConstraints = critical, CA:FALSE\nsubjectAltName = DNS:{name}\n"
            ),
        )
        .unwrap();
        let pem = dir.join(format!("{digest}.pem"));
        let st = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg(format!("-{digest}"))
            .arg("-config")
            .arg(&cnf)
            .args(["-extensions", "ee"])
            .arg("-keyout")
            .arg(dir.join(format!("{digest}.key")))
            .arg("-out")
            .arg(&pem)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl req -{digest}");
        let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pemfile::certs(&mut &std::fs::read(&pem).unwrap()[..])
                .collect::<Result<_, _>>()
                .unwrap();
        certs[0].to_vec()
    }

    /// RFC 8446 §4.2.3: RSASSA-PKCS1-v1_5 is for certificates only: a CertificateVerify in
    /// an rsa_pkcs1 scheme is refused (illegal_parameter) although the scheme was offered.
    #[test]
    fn rsa_pkcs1_certificate_verify_is_refused_even_when_offered() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = openssl_rsa_cert(dir.path(), "sha256", "rsa.example");
        let offered: Vec<SignatureScheme> = crate::config::ClientConfig::default()
            .signature_schemes
            .clone();
        for scheme in CERTIFICATE_ONLY_SCHEMES {
            assert!(
                offered.contains(&scheme),
                "{scheme:?} offered for certificates"
            );
            let e =
                verify_server_signature(&leaf, &offered, scheme, &[0; 32], &[1; 256]).unwrap_err();
            assert_eq!(
                e.alert(),
                Some(AlertDescription::IllegalParameter),
                "{scheme:?}"
            );
        }
    }

    /// RFC 8446 §4.4.2.4: a chain signed with SHA-1 is refused (a self-signed
    /// sha1WithRSAEncryption certificate, trusted as its own anchor); the same certificate
    /// signed with SHA-256 (rsa_pkcs1_sha256, RFC 8446 §9.1) is accepted.
    #[test]
    fn a_sha1_signed_certificate_is_refused_and_a_sha256_one_accepted() {
        let dir = tempfile::tempdir().unwrap();
        for (digest, ok) in [("sha1", false), ("sha256", true)] {
            let der = openssl_rsa_cert(dir.path(), digest, "rsa.example");
            let anchors = TrustAnchors::from_der(&[&der]).unwrap();
            let r = anchors.verify_server_chain(&[&der], "rsa.example", UnixTime::now());
            assert_eq!(r.is_ok(), ok, "{digest}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.alert, AlertDescription::UnsupportedCertificate, "{e:?}");
            }
        }
    }

    /// RFC 8446 §4.4.3: the Illustrated TLS 1.3 server's CertificateVerify verifies over the
    /// transcript through its Certificate; one bit off and it is decrypt_error.
    #[test]
    fn certificate_verify_known_answer_and_a_bad_signature_is_decrypt_error() {
        let c = &lurk_test_support::illustrated().current;
        let m = &c.messages;
        let mut t = lurk_proto::transcript::Transcript::new();
        for m in [
            &m.client_hello,
            &m.server_hello,
            &m.encrypted_extensions,
            &m.server_certificate,
        ] {
            t.add(m);
        }
        let th = t.hash(lurk_proto::wire::HashAlg::Sha384);
        let cv = lurk_proto::wire::CertificateVerify::parse(&m.server_certificate_verify).unwrap();
        let leaf = &c.server_certificate_der;
        verify_server_signature(leaf, &SUPPORTED_SCHEMES, cv.scheme, &th, cv.signature).unwrap();
        let mut bad = cv.signature.to_vec();
        bad[10] ^= 1;
        let e =
            verify_server_signature(leaf, &SUPPORTED_SCHEMES, cv.scheme, &th, &bad).unwrap_err();
        assert_eq!(e, PeerMisbehaved::BadCertificateVerifySignature.into());
        assert_eq!(e.alert(), Some(AlertDescription::DecryptError));
    }
}
