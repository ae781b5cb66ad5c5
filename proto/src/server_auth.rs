//! Server authentication, the rules both sides apply: the certificate chain and name
//! (webpki), and the CertificateVerify signature (ring, RFC 8446 §4.4.3). The engine checks
//! them to talk to the right server; the CS, under its `[server_auth]` policy, checks them
//! again itself before it signs, releases application secrets or registers tickets.
//!
//! The CertificateVerify check takes the public key out of the leaf's SubjectPublicKeyInfo
//! itself rather than through webpki's `verify_signature`, because webpki does not accept an
//! RSASSA-PSS SubjectPublicKeyInfo (id-RSASSA-PSS, used with rsa_pss_pss_* schemes): for both
//! RSA key types the RSAPublicKey is the content of the SPKI bit string, which is what ring
//! verifies with. The PSS parameters of an id-RSASSA-PSS key are not enforced (the scheme
//! fixes hash and salt length, RFC 8446 §4.2.3).

use std::fmt;

use ring::signature;
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use crate::wire::SignatureScheme;

/// The content of the TLS 1.3 server CertificateVerify signature (RFC 8446 §4.4.3): 64
/// spaces, the context string, a zero byte, the transcript hash through the Certificate.
pub fn server_signed_content(transcript_hash: &[u8]) -> Vec<u8> {
    let mut m = vec![0x20u8; 64];
    m.extend_from_slice(b"TLS 1.3, server CertificateVerify");
    m.push(0);
    m.extend_from_slice(transcript_hash);
    m
}

/// Why a server certificate chain was not accepted.
#[derive(Debug)]
pub enum ChainError {
    /// The Certificate message has no entry (RFC 8446 §4.4.2.4).
    Empty,
    /// The leaf does not parse as an X.509 certificate.
    Leaf(webpki::Error),
    /// No valid path to a trust anchor for serverAuth at the given time.
    Path(webpki::Error),
    /// The expected name is neither a DNS name nor an IP address.
    NotAName(String),
    /// The leaf is not valid for the expected name.
    Name(webpki::Error),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use webpki::Error as E;
        let what = |f: &mut fmt::Formatter<'_>, ctx: &str, e: &webpki::Error| match e {
            E::UnknownIssuer => write!(f, "{ctx}: issuer unknown (not signed by a trusted CA)"),
            E::CertExpired { .. } => write!(f, "{ctx}: certificate expired"),
            E::CertNotValidYet { .. } => write!(f, "{ctx}: certificate not yet valid"),
            E::CertNotValidForName(_) => {
                write!(f, "{ctx}: certificate is not valid for this name")
            }
            other => write!(f, "{ctx}: {other:?}"),
        };
        match self {
            Self::Empty => f.write_str("empty certificate chain"),
            Self::Leaf(e) => write!(f, "leaf does not parse: {e}"),
            Self::Path(e) => what(f, "chain", e),
            Self::NotAName(n) => write!(f, "{n:?} is neither a DNS name nor an IP address"),
            Self::Name(e) => what(f, "name", e),
        }
    }
}

impl std::error::Error for ChainError {}

/// Why a server CertificateVerify was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// The scheme was not offered, or does not fit the leaf's key (RFC 8446 §4.4.3).
    UnofferedScheme,
    /// The leaf does not parse.
    Leaf(String),
    /// The leaf's public key type is not one a TLS 1.3 server may use here.
    UnsupportedKey,
    /// The signature does not verify.
    BadSignature,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnofferedScheme => {
                f.write_str("the CertificateVerify scheme was not offered or does not fit the key")
            }
            Self::Leaf(e) => write!(f, "leaf does not parse: {e}"),
            Self::UnsupportedKey => f.write_str("the leaf's public key type is not supported"),
            Self::BadSignature => f.write_str("the server CertificateVerify does not verify"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Trust anchors, owned.
#[derive(Clone, Debug, Default)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustAnchors {
    /// Anchors from DER certificates.
    pub fn from_der<C: AsRef<[u8]>>(certs: &[C]) -> Result<Self, String> {
        let mut anchors = Vec::new();
        for c in certs {
            let der = CertificateDer::from(c.as_ref());
            let a = webpki::anchor_from_trusted_cert(&der)
                .map_err(|e| format!("trust anchor does not parse: {e}"))?;
            anchors.push(a.to_owned());
        }
        Ok(Self { anchors })
    }

    /// Anchors from the certificates of a PEM document (at least one).
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate found".into());
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
    /// leaf for `server_name` (a DNS name or an IP address; RFC 6125 via webpki).
    pub fn verify_server_chain(
        &self,
        chain: &[&[u8]],
        server_name: &str,
        now: UnixTime,
    ) -> Result<(), ChainError> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(ChainError::Empty);
        };
        let leaf_der = CertificateDer::from(*leaf);
        let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(ChainError::Leaf)?;
        let intermediates = path_candidates(rest);
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(ChainError::Path)?;
        let name = ServerName::try_from(server_name)
            .map_err(|e| ChainError::NotAName(format!("{server_name}: {e}")))?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(ChainError::Name)?;
        Ok(())
    }
}

/// How many of a chain's other certificates may share one subject name. webpki tries every
/// order of the candidates for each issuer name until its budget of 200,000 path-building
/// calls runs out: fifteen self-issued certificates named alike cost some 100 ms of CPU per
/// chain, and no signature is ever checked. Two per name (an intermediate and its
/// cross-signed twin, RFC 4158 §2.3) bound the search to two candidates per step, at most
/// six steps deep. A server that lists two other certificates of that name before the
/// one its path needs is refused: each certificate should certify the one before it
/// (RFC 8446 §4.4.2), so the path's own comes first.
const MAX_SAME_SUBJECT: usize = 2;

/// The certificates after the leaf that path building may use: in the server's order
/// (RFC 8446 §4.4.2), without exact duplicates, at most [`MAX_SAME_SUBJECT`] per subject
/// name (certificates whose subject does not parse count as one name).
fn path_candidates<'a>(rest: &[&'a [u8]]) -> Vec<CertificateDer<'a>> {
    let mut kept: Vec<(&'a [u8], Option<&'a [u8]>)> = Vec::with_capacity(rest.len());
    for &der in rest {
        if kept.iter().any(|(d, _)| *d == der) {
            continue;
        }
        let name = subject(der);
        if kept.iter().filter(|(_, n)| *n == name).count() >= MAX_SAME_SUBJECT {
            continue;
        }
        kept.push((der, name));
    }
    kept.into_iter()
        .map(|(d, _)| CertificateDer::from(d))
        .collect()
}

/// The subject Name of a certificate (RFC 5280 §4.1: the sixth field of the
/// TBSCertificate when the version is present, else the fifth).
fn subject(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der_tlv(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der_tlv(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = der_tlv(tbs)?;
    if tag != 0xa0 {
        rest = tbs;
    }
    // serialNumber, signature, issuer, validity.
    for want in [0x02, 0x30, 0x30, 0x30] {
        let (tag, _, r) = der_tlv(rest)?;
        if tag != want {
            return None;
        }
        rest = r;
    }
    match der_tlv(rest)? {
        (0x30, name, _) => Some(name),
        _ => None,
    }
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

/// Verifies the server's CertificateVerify: `scheme` must be one the client offered and fit
/// the leaf's key type (RFC 8446 §4.4.3, §4.2.3: rsa_pss_rsae_* for rsaEncryption keys,
/// rsa_pss_pss_* for RSASSA-PSS keys, ECDSA curve = scheme curve), and the signature must
/// verify over the server content for `transcript_hash`.
pub fn verify_server_signature(
    leaf: &[u8],
    offered: &[SignatureScheme],
    scheme: SignatureScheme,
    transcript_hash: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    if !offered.contains(&scheme) {
        return Err(SignatureError::UnofferedScheme);
    }
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| SignatureError::Leaf(e.to_string()))?;
    let spki = ee.subject_public_key_info();
    let (kind, key) = parse_spki(spki.as_ref()).ok_or(SignatureError::UnsupportedKey)?;
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
            _ => return Err(SignatureError::UnofferedScheme),
        };
    let content = server_signed_content(transcript_hash);
    signature::UnparsedPublicKey::new(alg, key)
        .verify(&content, sig)
        .map_err(|_| SignatureError::BadSignature)
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
        assert_eq!(e, SignatureError::UnofferedScheme);
    }

    #[test]
    fn an_empty_chain_and_a_non_certificate_are_refused() {
        let anchors = TrustAnchors::default();
        let now = UnixTime::now();
        assert!(matches!(
            anchors.verify_server_chain(&[], "a.example", now),
            Err(ChainError::Empty)
        ));
        assert!(matches!(
            anchors.verify_server_chain(&[b"junk"], "a.example", now),
            Err(ChainError::Leaf(_))
        ));
        assert!(TrustAnchors::from_pem(b"no pem here").is_err());
    }

    #[test]
    fn content_layout() {
        let c = server_signed_content(&[1, 2]);
        assert_eq!(&c[..64], &[0x20; 64][..]);
        assert_eq!(&c[64..97], b"TLS 1.3, server CertificateVerify");
        assert_eq!(&c[97..], &[0, 1, 2]);
    }

    /// A CA certificate named `name`, self-signed, or issued by `issuer`.
    fn ca(
        name: &str,
        issuer: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = match issuer {
            None => p.self_signed(&key).unwrap(),
            Some((c, k)) => p.signed_by(&key, c, k).unwrap(),
        };
        (cert, key)
    }

    fn leaf(issuer: &(rcgen::Certificate, rcgen::KeyPair)) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        p.signed_by(&key, &issuer.0, &issuer.1).unwrap()
    }

    #[test]
    fn subjects_are_read_from_the_tbs_certificate() {
        let x = ca("X", None);
        let y = ca("Y", Some(&x));
        let x_again = ca("X", Some(&y));
        let name = subject(x.0.der()).unwrap();
        assert!(name.ends_with(b"X"));
        assert_eq!(subject(x_again.0.der()), Some(name));
        assert!(subject(y.0.der()).unwrap().ends_with(b"Y"));
        assert_eq!(subject(b"junk"), None);
    }

    #[test]
    fn path_candidates_drop_duplicates_and_a_third_alike_name() {
        let x = ca("X", None);
        let (x1, x2, x3) = (ca("X", None), ca("X", None), ca("X", None));
        let y = ca("Y", Some(&x));
        let chain: Vec<&[u8]> = vec![
            x.0.der(),
            x.0.der(),
            x1.0.der(),
            y.0.der(),
            x2.0.der(),
            x3.0.der(),
            b"junk",
            b"more junk",
            b"still junk",
        ];
        let candidates = path_candidates(&chain);
        let kept: Vec<&[u8]> = candidates.iter().map(|c| c.as_ref()).collect();
        let want: Vec<&[u8]> = vec![x.0.der(), x1.0.der(), y.0.der(), b"junk", b"more junk"];
        assert_eq!(kept, want);
    }

    /// Fifteen self-issued CAs named alike: webpki would try their orders until its
    /// 200,000-call budget ran out (MaximumPathBuildCallsExceeded, some 100 ms of CPU); with
    /// two candidates per name the search ends at once, and the chain is refused.
    #[test]
    fn a_chain_of_alike_names_is_refused_without_exhausting_the_path_budget() {
        let anchor = ca("Anchor", None);
        let anchors = TrustAnchors::from_der(&[anchor.0.der()]).unwrap();
        let x = ca("X", None);
        let leaf = leaf(&x);
        let others: Vec<_> = (0..14).map(|_| ca("X", None)).collect();
        let mut chain: Vec<&[u8]> = vec![leaf.der(), x.0.der()];
        chain.extend(others.iter().map(|c| c.0.der().as_ref()));
        assert_eq!(chain.len(), crate::wire::limits::MAX_CERTIFICATE_ENTRIES);
        match anchors.verify_server_chain(&chain, "a.example", UnixTime::now()) {
            Err(ChainError::Path(e)) => assert_eq!(e, webpki::Error::UnknownIssuer),
            other => panic!("{other:?}"),
        }
    }

    /// An honest chain with a cross-signed twin of its intermediate (issued by a CA that is
    /// not an anchor) and repeated certificates still validates.
    #[test]
    fn a_cross_signed_intermediate_still_validates() {
        let root = ca("Root", None);
        let other_root = ca("Other Root", None);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Intermediate");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let by_root = p.clone().signed_by(&key, &root.0, &root.1).unwrap();
        let by_other = p.signed_by(&key, &other_root.0, &other_root.1).unwrap();
        let intermediate = (by_root, key);
        let leaf = leaf(&intermediate);
        let anchors = TrustAnchors::from_der(&[root.0.der()]).unwrap();
        let chain: Vec<&[u8]> = vec![
            leaf.der(),
            by_other.der(),
            by_other.der(),
            other_root.0.der(),
            intermediate.0.der(),
        ];
        anchors
            .verify_server_chain(&chain, "a.example", UnixTime::now())
            .unwrap();
    }
}
