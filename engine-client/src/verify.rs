//! Server authentication: the certificate chain and name (webpki), and the CertificateVerify
//! signature (ring, RFC 8446 §4.4.3).
//!
//! The CertificateVerify check takes the public key out of the leaf's SubjectPublicKeyInfo
//! itself rather than through webpki's `verify_signature`, because webpki does not accept an
//! RSASSA-PSS SubjectPublicKeyInfo (id-RSASSA-PSS, used with rsa_pss_pss_* schemes): for both
//! RSA key types the RSAPublicKey is the content of the SPKI bit string, which is what ring
//! verifies with. The PSS parameters of an id-RSASSA-PSS key are not enforced (the scheme
//! fixes hash and salt length, RFC 8446 §4.2.3).

use std::path::Path;

use lurk_proto::wire::{AlertDescription, SignatureScheme};
use ring::signature;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::error::{CertificateError, Error, PeerMisbehaved};

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

/// The content of the TLS 1.3 server CertificateVerify signature (§4.4.3): 64 spaces, the
/// context string, a zero byte, the transcript hash.
pub fn server_signed_content(transcript_hash: &[u8]) -> Vec<u8> {
    let mut m = vec![0x20u8; 64];
    m.extend_from_slice(b"TLS 1.3, server CertificateVerify");
    m.push(0);
    m.extend_from_slice(transcript_hash);
    m
}

/// Trust anchors owned for the life of the engine.
#[derive(Clone, Debug, Default)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustAnchors {
    /// Anchors from DER certificates.
    pub fn from_der<C: AsRef<[u8]>>(certs: &[C]) -> Result<Self, Error> {
        let mut anchors = Vec::new();
        for c in certs {
            let der = CertificateDer::from(c.as_ref());
            let a = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| Error::general(format!("trust anchor does not parse: {e}")))?;
            anchors.push(a.to_owned());
        }
        Ok(Self { anchors })
    }

    /// Anchors from a PEM file of certificates.
    pub fn from_pem_file(path: &Path) -> Result<Self, Error> {
        let data = std::fs::read(path).map_err(|e| {
            Error::general(format!("cannot read trust anchors {}: {e}", path.display()))
        })?;
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &data[..])
            .collect::<Result<_, _>>()
            .map_err(|e| Error::general(format!("{}: bad PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::general(format!(
                "{}: no certificate found",
                path.display()
            )));
        }
        Self::from_der(&certs)
    }

    /// How many anchors there are.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Validates `chain` (leaf first) to one of the anchors at `now`, for serverAuth, and the
    /// leaf for `server_name` (a DNS name or an IP address).
    pub fn verify_server_chain(
        &self,
        chain: &[&[u8]],
        server_name: &str,
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(CertificateError::new(
                AlertDescription::DecodeError,
                "empty certificate chain",
            ));
        };
        let leaf_der = CertificateDer::from(*leaf);
        let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| {
            CertificateError::new(
                AlertDescription::BadCertificate,
                format!("leaf does not parse: {e}"),
            )
        })?;
        let intermediates: Vec<CertificateDer<'_>> =
            rest.iter().map(|c| CertificateDer::from(*c)).collect();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| cert_error(&e, "chain"))?;
        let name = ServerName::try_from(server_name).map_err(|e| {
            CertificateError::new(
                AlertDescription::InternalError,
                format!("{server_name:?} is neither a DNS name nor an IP address: {e}"),
            )
        })?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(|e| cert_error(&e, &format!("name {server_name:?}")))?;
        Ok(())
    }
}

fn cert_error(e: &webpki::Error, what: &str) -> CertificateError {
    use webpki::Error as E;
    let alert = match e {
        E::CertExpired { .. } | E::CertNotValidYet { .. } => AlertDescription::CertificateExpired,
        E::UnknownIssuer => AlertDescription::UnknownCa,
        E::CertRevoked => AlertDescription::CertificateRevoked,
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            AlertDescription::UnsupportedCertificate
        }
        _ => AlertDescription::BadCertificate,
    };
    let reason = match e {
        E::UnknownIssuer => format!("{what}: issuer unknown (not signed by a trusted CA)"),
        E::CertExpired { .. } => format!("{what}: certificate expired"),
        E::CertNotValidYet { .. } => format!("{what}: certificate not yet valid"),
        E::CertNotValidForName(_) => format!("{what}: certificate is not valid for this name"),
        other => format!("{what}: {other:?}"),
    };
    CertificateError::new(alert, reason)
}

/// The public key kinds a TLS 1.3 server certificate may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    EcP256,
    EcP384,
    Ed25519,
    RsaEncryption,
    RsaPss,
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];

/// One DER TLV: (tag, content, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81..=0x83 => {
            let width = usize::from(first & 0x7f);
            if rest.len() < width {
                return None;
            }
            let len = rest[..width]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[width..])
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Splits a SubjectPublicKeyInfo (with its outer SEQUENCE) into the key kind and the content
/// of the subjectPublicKey bit string.
fn parse_spki(spki: &[u8]) -> Option<(KeyKind, &[u8])> {
    let (0x30, body, _) = der_tlv(spki)? else {
        return None;
    };
    let (0x30, alg, rest) = der_tlv(body)? else {
        return None;
    };
    let (0x03, bits, _) = der_tlv(rest)? else {
        return None;
    };
    let (0, key) = bits.split_first()? else {
        return None; // unused bits must be 0 for a key
    };
    let (0x06, oid, params) = der_tlv(alg)? else {
        return None;
    };
    let kind = match oid {
        OID_EC_PUBLIC_KEY => {
            let (0x06, curve, _) = der_tlv(params)? else {
                return None;
            };
            match curve {
                OID_P256 => KeyKind::EcP256,
                OID_P384 => KeyKind::EcP384,
                _ => return None,
            }
        }
        OID_ED25519 => KeyKind::Ed25519,
        OID_RSA_ENCRYPTION => KeyKind::RsaEncryption,
        OID_RSASSA_PSS => KeyKind::RsaPss,
        _ => return None,
    };
    Some((kind, key))
}

/// Verifies the server's CertificateVerify: `scheme` must be one we offered and fit the leaf's
/// key type (§4.4.3, §4.2.3: rsa_pss_rsae_* for rsaEncryption keys, rsa_pss_pss_* for
/// RSASSA-PSS keys, ECDSA curve = scheme curve), and the signature must verify over the
/// server content for `transcript_hash`.
pub fn verify_server_signature(
    leaf: &[u8],
    offered: &[SignatureScheme],
    scheme: SignatureScheme,
    transcript_hash: &[u8],
    sig: &[u8],
) -> Result<(), Error> {
    if !offered.contains(&scheme) {
        return Err(PeerMisbehaved::UnofferedSignatureScheme.into());
    }
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| {
        CertificateError::new(
            AlertDescription::BadCertificate,
            format!("leaf does not parse: {e}"),
        )
    })?;
    let spki = ee.subject_public_key_info();
    let (kind, key) = parse_spki(spki.as_ref()).ok_or_else(|| {
        CertificateError::new(
            AlertDescription::UnsupportedCertificate,
            "the leaf's public key type is not supported",
        )
    })?;
    use SignatureScheme as S;
    let alg: &'static dyn signature::VerificationAlgorithm =
        match (scheme, kind) {
            (S::EcdsaSecp256r1Sha256, KeyKind::EcP256) => &signature::ECDSA_P256_SHA256_ASN1,
            (S::EcdsaSecp384r1Sha384, KeyKind::EcP384) => &signature::ECDSA_P384_SHA384_ASN1,
            (S::Ed25519, KeyKind::Ed25519) => &signature::ED25519,
            (S::RsaPssRsaeSha256, KeyKind::RsaEncryption)
            | (S::RsaPssPssSha256, KeyKind::RsaPss) => &signature::RSA_PSS_2048_8192_SHA256,
            (S::RsaPssRsaeSha384, KeyKind::RsaEncryption)
            | (S::RsaPssPssSha384, KeyKind::RsaPss) => &signature::RSA_PSS_2048_8192_SHA384,
            (S::RsaPssRsaeSha512, KeyKind::RsaEncryption)
            | (S::RsaPssPssSha512, KeyKind::RsaPss) => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return Err(PeerMisbehaved::UnofferedSignatureScheme.into()),
        };
    let content = server_signed_content(transcript_hash);
    signature::UnparsedPublicKey::new(alg, key)
        .verify(&content, sig)
        .map_err(|_| PeerMisbehaved::BadCertificateVerifySignature.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    /// A minimal SPKI for an EC P-256 point.
    fn p256_spki(point: &[u8]) -> Vec<u8> {
        let mut alg = vec![0x06, OID_EC_PUBLIC_KEY.len() as u8];
        alg.extend_from_slice(OID_EC_PUBLIC_KEY);
        alg.extend_from_slice(&[0x06, OID_P256.len() as u8]);
        alg.extend_from_slice(OID_P256);
        let mut body = vec![0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, (point.len() + 1) as u8, 0]);
        body.extend_from_slice(point);
        let mut out = vec![0x30, 0x81, body.len() as u8];
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn der_lengths() {
        assert_eq!(
            der_tlv(&[0x04, 0x01, 0xaa]).unwrap(),
            (4, &[0xaa][..], &[][..])
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend(vec![1u8; 0x80]);
        assert_eq!(der_tlv(&long).unwrap().1.len(), 0x80);
        assert!(der_tlv(&[0x04, 0x02, 0xaa]).is_none());
        assert!(der_tlv(&[0x04, 0x84, 0, 0, 0, 1, 0]).is_none());
    }

    #[test]
    fn spki_kinds() {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let spki = p256_spki(kp.public_key().as_ref());
        let (kind, key) = parse_spki(&spki).unwrap();
        assert_eq!(kind, KeyKind::EcP256);
        assert_eq!(key, kp.public_key().as_ref());
        // The signature over the server content verifies with ring through the parsed key.
        let th = [7u8; 32];
        let sig = kp.sign(&rng, &server_signed_content(&th)).unwrap();
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(&server_signed_content(&th), sig.as_ref())
            .unwrap();
        assert!(parse_spki(&spki[..spki.len() - 1]).is_none());
    }

    #[test]
    fn ed25519_key_is_parsed() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03];
        spki.extend_from_slice(OID_ED25519);
        spki.extend_from_slice(&[0x03, 0x21, 0x00]);
        spki.extend_from_slice(kp.public_key().as_ref());
        assert_eq!(parse_spki(&spki).unwrap().0, KeyKind::Ed25519);
    }

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
        let certs: Vec<CertificateDer<'static>> =
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

    #[test]
    fn content_layout() {
        let c = server_signed_content(&[1, 2]);
        assert_eq!(&c[..64], &[0x20; 64][..]);
        assert_eq!(&c[64..97], b"TLS 1.3, server CertificateVerify");
        assert_eq!(&c[97..], &[0, 1, 2]);
    }
}
