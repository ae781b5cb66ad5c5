//! Signing keys in the token: import from PKCS#8 PEM, generation in the token, listing
//! (`lurk-cs keys import | generate | list`).
//!
//! Every private key is created with `token=true, private=true, sensitive=true,
//! extractable=false, sign=true` and nothing else allowed (no decrypt, derive, wrap): once
//! in the token it cannot be read back (PKCS#11 §4.9: `sensitive` cannot be cleared,
//! `extractable` cannot be set again). Its public key object gets the same label and id,
//! which is how [`Token::find_signing_key`] finds its point. Imported key material is held
//! in zeroizing buffers and wiped from the object template after `C_CreateObject`.

use std::fmt;

use const_oid::db::{rfc5912, rfc8410};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use p256::pkcs8::DecodePrivateKey;
use pkcs8::{PrivateKeyInfo, SecretDocument};
use zeroize::{Zeroize, Zeroizing};

use crate::error::TokenError;
use crate::token::der::{self, EcCurve};
use crate::token::{SigningKeyType, Token};

/// Key types `keys generate` makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Ed25519: signs ed25519.
    Ed25519,
    /// ECDSA on P-256: signs ecdsa_secp256r1_sha256.
    P256,
    /// ECDSA on P-384: signs ecdsa_secp384r1_sha384.
    P384,
    /// RSA 2048 bits: signs rsa_pss_rsae_sha256/384/512 (TLS 1.3 allows no PKCS#1 v1.5 here,
    /// RFC 8446 §4.4.3).
    Rsa2048,
}

impl KeyKind {
    /// Parses `ed25519`, `p256` / `ecdsa-p256`, `p384` / `ecdsa-p384`, `rsa2048` / `rsa`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Some(Self::Ed25519),
            "p256" | "p-256" | "ecdsa-p256" | "secp256r1" => Some(Self::P256),
            "p384" | "p-384" | "ecdsa-p384" | "secp384r1" => Some(Self::P384),
            "rsa" | "rsa2048" | "rsa-2048" => Some(Self::Rsa2048),
            _ => None,
        }
    }

    /// The type of the key this kind generates.
    pub fn signing_type(self) -> SigningKeyType {
        match self {
            Self::Ed25519 => SigningKeyType::Ed25519,
            Self::P256 => SigningKeyType::EcdsaP256,
            Self::P384 => SigningKeyType::EcdsaP384,
            Self::Rsa2048 => SigningKeyType::Rsa { bits: 2048 },
        }
    }
}

/// A key now in the token.
#[derive(Clone, Debug)]
pub struct ImportedKey {
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID.
    pub id: Vec<u8>,
    /// What it signs.
    pub key_type: SigningKeyType,
    /// The public key (DER SubjectPublicKeyInfo), to put in a certificate or compare.
    pub spki_der: Vec<u8>,
    /// The RFC 7512 URI to put in `[[keys]] object`.
    pub uri: String,
}

/// One key object of the token, as `keys list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyListing {
    /// `private` or `secret`.
    pub class: &'static str,
    /// CKA_LABEL.
    pub label: String,
    /// CKA_ID in hex.
    pub id: String,
    /// `ed25519`, `ecdsa-p256`, `ecdsa-p384`, `rsa-2048`, `aes-256`, ...
    pub key_type: String,
    /// CKA_SENSITIVE: the key's value can never be read in the clear.
    pub sensitive: bool,
    /// CKA_EXTRACTABLE: the key can be wrapped out of the token (never for a signing key
    /// the CS generates or imports).
    pub extractable: bool,
}

impl fmt::Display for KeyListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<8} {:<24} id={:<16} {:<11} sensitive={} extractable={}",
            self.class, self.label, self.id, self.key_type, self.sensitive, self.extractable
        )
    }
}

/// The RFC 7512 URI of a private key with this label and id.
pub fn key_uri(label: &str, id: &[u8]) -> String {
    let mut s = String::from("pkcs11:object=");
    for b in label.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02x}"));
        }
    }
    if !id.is_empty() {
        s.push_str(";id=");
        for b in id {
            s.push_str(&format!("%{b:02x}"));
        }
    }
    s.push_str(";type=private");
    s
}

/// Imports a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`: Ed25519, P-256, P-384 or
/// RSA ≥ 2048 bits) as a non-extractable signing key, with its public key object.
///
/// With `leaf_spki` (the DER SubjectPublicKeyInfo of the certificate the key goes with), a
/// key that is not the certificate's is refused before anything is written to the token.
pub fn import_pkcs8_pem(
    token: &Token,
    label: &str,
    id: &[u8],
    pem_key: &str,
    leaf_spki: Option<&[u8]>,
) -> Result<ImportedKey, TokenError> {
    let bad = |why: &str| TokenError::UnsupportedKey(format!("key for {label:?}: {why}"));
    if pem_key.contains("ENCRYPTED PRIVATE KEY") {
        return Err(bad(
            "encrypted PKCS#8 is not supported; decrypt it with `openssl pkcs8` first",
        ));
    }
    if pem_key.contains("BEGIN EC PRIVATE KEY") || pem_key.contains("BEGIN RSA PRIVATE KEY") {
        return Err(bad(
            "not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt`",
        ));
    }
    let (pem_label, doc) =
        SecretDocument::from_pem(pem_key).map_err(|_| bad("not a PEM private key"))?;
    if pem_label != "PRIVATE KEY" {
        return Err(bad("expected a PEM \"PRIVATE KEY\" (PKCS#8)"));
    }
    let info = PrivateKeyInfo::try_from(doc.as_bytes()).map_err(|_| bad("malformed PKCS#8"))?;
    let common = |class: ObjectClass, key_type: KeyType| {
        vec![
            Attribute::Class(class),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ]
    };
    let (mut private, public, spki) = match info.algorithm.oid {
        rfc8410::ID_ED_25519 => {
            let seed = der::ed25519_seed(info.private_key).map_err(|why| bad(&why))?;
            let public = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed)
                .map_err(|_| bad("invalid Ed25519 seed"))?;
            let public = ring::signature::KeyPair::public_key(&public)
                .as_ref()
                .to_vec();
            let mut priv_t = common(ObjectClass::PRIVATE_KEY, KeyType::EC_EDWARDS);
            priv_t.push(Attribute::EcParams(EcCurve::Ed25519.ec_params()));
            priv_t.push(Attribute::Value(seed.to_vec()));
            let mut pub_t = common(ObjectClass::PUBLIC_KEY, KeyType::EC_EDWARDS);
            pub_t.push(Attribute::EcParams(EcCurve::Ed25519.ec_params()));
            pub_t.push(Attribute::EcPoint(der::wrap_ec_point(&public)?));
            (priv_t, pub_t, der::spki_ed25519(&public)?)
        }
        rfc5912::ID_EC_PUBLIC_KEY => {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|_| bad("EC key without a named curve"))?;
            let (curve, scalar, point) = match curve {
                rfc5912::SECP_256_R_1 => {
                    use p256::elliptic_curve::sec1::ToEncodedPoint;
                    let sk = p256::SecretKey::from_pkcs8_der(doc.as_bytes())
                        .map_err(|_| bad("invalid P-256 key"))?;
                    let mut fb = sk.to_bytes();
                    let scalar = Zeroizing::new(fb.to_vec());
                    fb[..].zeroize();
                    let point = sk.public_key().to_encoded_point(false).as_bytes().to_vec();
                    (EcCurve::P256, scalar, point)
                }
                rfc5912::SECP_384_R_1 => {
                    use p384::elliptic_curve::sec1::ToEncodedPoint;
                    let sk = p384::SecretKey::from_pkcs8_der(doc.as_bytes())
                        .map_err(|_| bad("invalid P-384 key"))?;
                    let mut fb = sk.to_bytes();
                    let scalar = Zeroizing::new(fb.to_vec());
                    fb[..].zeroize();
                    let point = sk.public_key().to_encoded_point(false).as_bytes().to_vec();
                    (EcCurve::P384, scalar, point)
                }
                other => return Err(bad(&format!("curve {other} is not supported"))),
            };
            let mut priv_t = common(ObjectClass::PRIVATE_KEY, KeyType::EC);
            priv_t.push(Attribute::EcParams(curve.ec_params()));
            priv_t.push(Attribute::Value(scalar.to_vec()));
            let mut pub_t = common(ObjectClass::PUBLIC_KEY, KeyType::EC);
            pub_t.push(Attribute::EcParams(curve.ec_params()));
            pub_t.push(Attribute::EcPoint(der::wrap_ec_point(&point)?));
            (priv_t, pub_t, der::spki_ec(curve, &point)?)
        }
        rfc5912::RSA_ENCRYPTION => {
            let k = der::rsa_private_key(info.private_key).map_err(|why| bad(&why))?;
            let (n, e) = (k.modulus.as_bytes(), k.public_exponent.as_bytes());
            let bits = der::bit_len(n);
            if bits < 2048 {
                return Err(bad(&format!("{bits}-bit RSA is too small (2048 at least)")));
            }
            let mut priv_t = common(ObjectClass::PRIVATE_KEY, KeyType::RSA);
            priv_t.extend([
                Attribute::Modulus(n.to_vec()),
                Attribute::PublicExponent(e.to_vec()),
                Attribute::PrivateExponent(k.private_exponent.as_bytes().to_vec()),
                Attribute::Prime1(k.prime1.as_bytes().to_vec()),
                Attribute::Prime2(k.prime2.as_bytes().to_vec()),
                Attribute::Exponent1(k.exponent1.as_bytes().to_vec()),
                Attribute::Exponent2(k.exponent2.as_bytes().to_vec()),
                Attribute::Coefficient(k.coefficient.as_bytes().to_vec()),
            ]);
            let mut pub_t = common(ObjectClass::PUBLIC_KEY, KeyType::RSA);
            pub_t.push(Attribute::Modulus(n.to_vec()));
            pub_t.push(Attribute::PublicExponent(e.to_vec()));
            let spki = der::spki_rsa(n, e)?;
            (priv_t, pub_t, spki)
        }
        other => return Err(bad(&format!("key algorithm {other} is not supported"))),
    };
    drop(doc);
    if leaf_spki.is_some_and(|leaf| leaf != spki.as_slice()) {
        wipe(&mut private);
        return Err(bad("the certificate does not carry this key's public key"));
    }
    private.extend(private_key_policy());
    let mut public = public;
    public.extend([
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
    ]);
    let created = create_pair(token, label, id, &private, &public);
    wipe(&mut private);
    created?;
    describe_new_key(token, label, id)
}

/// Generates a signing key in the token (sensitive, not extractable).
pub fn generate_signing_key(
    token: &Token,
    label: &str,
    id: &[u8],
    kind: KeyKind,
) -> Result<ImportedKey, TokenError> {
    refuse_duplicates(token, label, id)?;
    let names = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mut public = names.to_vec();
    public.extend([Attribute::Private(false), Attribute::Verify(true)]);
    let mut private = names.to_vec();
    private.extend(private_key_policy());
    let mechanism = match kind {
        KeyKind::Ed25519 => {
            public.push(Attribute::EcParams(EcCurve::Ed25519.ec_params()));
            Mechanism::EccEdwardsKeyPairGen
        }
        KeyKind::P256 | KeyKind::P384 => {
            let curve = if kind == KeyKind::P256 {
                EcCurve::P256
            } else {
                EcCurve::P384
            };
            public.push(Attribute::EcParams(curve.ec_params()));
            Mechanism::EccKeyPairGen
        }
        KeyKind::Rsa2048 => {
            public.push(Attribute::ModulusBits(2048u64.into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
    };
    let session = token.session()?;
    session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(session.fail("C_GenerateKeyPair"))?;
    drop(session);
    describe_new_key(token, label, id)
}

/// Lists the private and secret keys of the token (public objects are not shown).
pub fn list_keys(token: &Token) -> Result<Vec<KeyListing>, TokenError> {
    let session = token.session()?;
    let mut out = Vec::new();
    for (class, name) in [
        (ObjectClass::PRIVATE_KEY, "private"),
        (ObjectClass::SECRET_KEY, "secret"),
    ] {
        let handles = session
            .find_objects(&[Attribute::Class(class)])
            .map_err(session.fail("C_FindObjects"))?;
        for h in handles {
            let attrs = session
                .get_attributes(
                    h,
                    &[
                        AttributeType::Label,
                        AttributeType::Id,
                        AttributeType::KeyType,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::EcParams,
                        AttributeType::Modulus,
                        AttributeType::ValueLen,
                    ],
                )
                .map_err(session.fail("C_GetAttributeValue"))?;
            let mut l = KeyListing {
                class: name,
                label: String::new(),
                id: String::new(),
                key_type: "unknown".to_owned(),
                sensitive: false,
                extractable: false,
            };
            let (mut kt, mut params, mut modulus, mut value_len) =
                (None, Vec::new(), Vec::new(), 0);
            for a in attrs {
                match a {
                    Attribute::Label(v) => l.label = String::from_utf8_lossy(&v).into_owned(),
                    Attribute::Id(v) => l.id = hex::encode(v),
                    Attribute::KeyType(t) => kt = Some(t),
                    Attribute::Sensitive(b) => l.sensitive = b,
                    Attribute::Extractable(b) => l.extractable = b,
                    Attribute::EcParams(p) => params = p,
                    Attribute::Modulus(m) => modulus = m,
                    Attribute::ValueLen(n) => value_len = u64::from(n),
                    _ => {}
                }
            }
            let curve = EcCurve::from_ec_params(&params);
            l.key_type = match (kt, curve) {
                (Some(KeyType::EC_EDWARDS), Some(EcCurve::Ed25519)) => "ed25519".to_owned(),
                (Some(KeyType::EC), Some(EcCurve::P256)) => "ecdsa-p256".to_owned(),
                (Some(KeyType::EC), Some(EcCurve::P384)) => "ecdsa-p384".to_owned(),
                (Some(KeyType::RSA), _) => format!("rsa-{}", der::bit_len(&modulus)),
                (Some(KeyType::AES), _) => format!("aes-{}", value_len * 8),
                (Some(t), _) => t.to_string(),
                (None, _) => "unknown".to_owned(),
            };
            out.push(l);
        }
    }
    out.sort_by(|a, b| (a.class, &a.label, &a.id).cmp(&(b.class, &b.label, &b.id)));
    Ok(out)
}

/// What every signing key may do: sign, nothing else, and never leave the token.
fn private_key_policy() -> [Attribute; 8] {
    [
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        Attribute::SignRecover(false),
    ]
}

fn refuse_duplicates(token: &Token, label: &str, id: &[u8]) -> Result<(), TokenError> {
    if label.is_empty() {
        return Err(TokenError::Other("a key needs a label".to_owned()));
    }
    let session = token.session()?;
    let mut clashes = vec![vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ]];
    if !id.is_empty() {
        clashes.push(vec![
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
        ]);
    }
    for t in clashes {
        let found = session
            .find_objects(&t)
            .map_err(session.fail("C_FindObjects"))?;
        if !found.is_empty() {
            return Err(TokenError::Other(format!(
                "the token already has a private key with label {label:?} or id {}",
                hex::encode(id)
            )));
        }
    }
    Ok(())
}

/// Creates the public then the private object; on failure, removes what was created.
fn create_pair(
    token: &Token,
    label: &str,
    id: &[u8],
    private: &[Attribute],
    public: &[Attribute],
) -> Result<(), TokenError> {
    refuse_duplicates(token, label, id)?;
    let session = token.session()?;
    let public_handle: ObjectHandle = session
        .create_object(public)
        .map_err(session.fail("C_CreateObject(public key)"))?;
    if let Err(e) = session.create_object(private) {
        let _ = session.destroy_object(public_handle);
        return Err(session.error("C_CreateObject(private key)", e));
    }
    Ok(())
}

/// Overwrites the secret values of a template.
fn wipe(template: &mut [Attribute]) {
    for a in template {
        match a {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => v.zeroize(),
            _ => {}
        }
    }
}

fn describe_new_key(token: &Token, label: &str, id: &[u8]) -> Result<ImportedKey, TokenError> {
    let uri = key_uri(label, id);
    let key = token.find_signing_key(&uri)?;
    Ok(ImportedKey {
        label: label.to_owned(),
        id: id.to_vec(),
        key_type: key.key_type(),
        spki_der: key.spki_der().to_vec(),
        uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{find_one, testutil};
    use lurk_proto::wire::SignatureScheme;
    use ring::signature::{self as rs, UnparsedPublicKey};

    fn openssl_rsa_pem() -> String {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl genpkey");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// The private parts of every signing key are unreadable, and cannot be made readable.
    fn assert_not_extractable(token: &Token, label: &str, key_type: SigningKeyType) {
        let session = token.session().unwrap();
        let h = find_one(
            &session,
            &[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
            &label,
        )
        .unwrap()
        .unwrap();
        testutil::assert_sensitive_not_extractable(&session, h, label);
        let secret_attrs: &[AttributeType] = match key_type {
            SigningKeyType::Rsa { .. } => &[
                AttributeType::PrivateExponent,
                AttributeType::Prime1,
                AttributeType::Prime2,
                AttributeType::Exponent1,
                AttributeType::Exponent2,
                AttributeType::Coefficient,
            ],
            _ => &[AttributeType::Value],
        };
        for &a in secret_attrs {
            testutil::assert_value_unreadable(&session, h, a);
        }
        // PKCS#11: CKA_EXTRACTABLE can only go from true to false, CKA_SENSITIVE only from
        // false to true.
        assert!(session
            .update_attributes(h, &[Attribute::Extractable(true)])
            .is_err());
        assert!(session
            .update_attributes(h, &[Attribute::Sensitive(false)])
            .is_err());
    }

    #[test]
    fn import_refuses_a_certificate_of_another_key_before_writing_to_the_token() {
        let (token, _) = testutil::new_token("import-mismatch");
        for alg in [
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let other = rcgen::KeyPair::generate_for(alg).unwrap();
            let pem = Zeroizing::new(key.serialize_pem());
            let err = import_pkcs8_pem(
                &token,
                "mismatch",
                b"m",
                &pem,
                Some(&other.public_key_der()),
            )
            .unwrap_err();
            assert!(err.to_string().contains("certificate"), "{err}");
            // Nothing was written: neither object exists, and the label is still free.
            assert!(token.find_signing_key("mismatch").is_err());
            let session = token.session().unwrap();
            let found = session
                .find_objects(&[Attribute::Label(b"mismatch".to_vec())])
                .unwrap();
            assert!(found.is_empty(), "{} objects left", found.len());
        }
    }

    #[test]
    fn import_every_key_type_sign_and_verify_with_the_original_public_key() {
        let (token, _) = testutil::new_token("import");
        let msg = b"TLS 1.3 CertificateVerify content";
        let cases: [(&str, &'static rcgen::SignatureAlgorithm); 3] = [
            ("imp-ed25519", &rcgen::PKCS_ED25519),
            ("imp-p256", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("imp-p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ];
        for (i, (label, alg)) in cases.into_iter().enumerate() {
            let sw = rcgen::KeyPair::generate_for(alg).unwrap();
            let pem = Zeroizing::new(sw.serialize_pem());
            // With the certificate's SPKI: the check before the import accepts the right key.
            let spki = sw.public_key_der();
            let imported =
                import_pkcs8_pem(&token, label, &[i as u8 + 1], &pem, Some(&spki)).unwrap();
            assert_eq!(imported.spki_der, sw.public_key_der(), "{label}");
            let key = token.find_signing_key(&imported.uri).unwrap();
            let scheme = key.schemes()[0];
            let sig = token.sign(&key, scheme, msg).unwrap();
            let v: &dyn rs::VerificationAlgorithm = match scheme {
                SignatureScheme::Ed25519 => &rs::ED25519,
                SignatureScheme::EcdsaSecp256r1Sha256 => &rs::ECDSA_P256_SHA256_ASN1,
                _ => &rs::ECDSA_P384_SHA384_ASN1,
            };
            UnparsedPublicKey::new(v, sw.public_key_raw())
                .verify(msg, &sig)
                .unwrap();
            assert_not_extractable(&token, label, key.key_type());
        }
        // RSA from openssl.
        let pem = Zeroizing::new(openssl_rsa_pem());
        let imported = import_pkcs8_pem(&token, "imp-rsa", b"rsa", &pem, None).unwrap();
        assert_eq!(imported.key_type, SigningKeyType::Rsa { bits: 2048 });
        let key = token.find_signing_key("imp-rsa").unwrap();
        for (scheme, alg) in [
            (
                SignatureScheme::RsaPssRsaeSha256,
                &rs::RSA_PSS_2048_8192_SHA256,
            ),
            (
                SignatureScheme::RsaPssRsaeSha384,
                &rs::RSA_PSS_2048_8192_SHA384,
            ),
            (
                SignatureScheme::RsaPssRsaeSha512,
                &rs::RSA_PSS_2048_8192_SHA512,
            ),
        ] {
            let sig = token.sign(&key, scheme, msg).unwrap();
            UnparsedPublicKey::new(alg, key.public_key_raw())
                .verify(msg, &sig)
                .unwrap();
        }
        // The SPKI matches openssl's view of the public key.
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(pem.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(out.stdout, imported.spki_der);
        // A certificate for another key does not match.
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        assert!(!key.matches_certificate(cert.der()).unwrap());
        assert_not_extractable(&token, "imp-rsa", key.key_type());

        let listing = list_keys(&token).unwrap();
        assert_eq!(listing.len(), 4);
        for l in &listing {
            assert!(l.sensitive && !l.extractable, "{l}");
        }
        let types: Vec<_> = listing.iter().map(|l| l.key_type.as_str()).collect();
        assert_eq!(types, ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048"]);
        assert_eq!(listing[0].id, "01");
    }

    #[test]
    fn generated_keys_are_not_extractable_and_listed() {
        let (token, _) = testutil::new_token("generate");
        for (kind, label) in [
            (KeyKind::Ed25519, "g-ed"),
            (KeyKind::P256, "g-p256"),
            (KeyKind::P384, "g-p384"),
            (KeyKind::Rsa2048, "g-rsa"),
        ] {
            let k = generate_signing_key(&token, label, label.as_bytes(), kind).unwrap();
            assert_eq!(k.key_type, kind.signing_type());
            assert_not_extractable(&token, label, k.key_type);
        }
        token.ensure_sealing_key().unwrap();
        let listing = list_keys(&token).unwrap();
        assert_eq!(listing.len(), 5);
        assert!(listing.iter().all(|l| l.sensitive && !l.extractable));
        assert_eq!(listing[4].class, "secret");
        assert_eq!(listing[4].key_type, "aes-256");
    }

    #[test]
    fn import_refusals() {
        let (token, _) = testutil::new_token("import-refuse");
        let sw = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        import_pkcs8_pem(&token, "dup", b"1", &sw.serialize_pem(), None).unwrap();
        // Same label, or same id: refused.
        assert!(import_pkcs8_pem(&token, "dup", b"2", &sw.serialize_pem(), None).is_err());
        assert!(import_pkcs8_pem(&token, "other", b"1", &sw.serialize_pem(), None).is_err());
        assert!(generate_signing_key(&token, "dup", b"3", KeyKind::P256).is_err());
        // Not PKCS#8 / not a key.
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            import_pkcs8_pem(&token, "x", b"x", sec1, None),
            Err(TokenError::UnsupportedKey(m)) if m.contains("openssl pkcs8")
        ));
        assert!(import_pkcs8_pem(&token, "x", b"x", "garbage", None).is_err());
        // Nothing was left behind by the refusals.
        assert_eq!(list_keys(&token).unwrap().len(), 1);
    }

    /// OpenSSL's keys (testdata/keys): the SPKI of the import and the one the token's
    /// objects give back are OpenSSL's, and the key signs what OpenSSL's public key verifies.
    #[test]
    fn import_openssl_keys_gives_openssls_spki() {
        let (token, _) = testutil::new_token("import-openssl");
        let msg = b"TLS 1.3 CertificateVerify content";
        for (label, pem, spki, verify) in [
            (
                "o-ed25519",
                &include_bytes!("../../testdata/keys/ed25519.pk8.pem")[..],
                &include_bytes!("../../testdata/keys/ed25519.spki.der")[..],
                &rs::ED25519 as &dyn rs::VerificationAlgorithm,
            ),
            (
                "o-p256",
                include_bytes!("../../testdata/keys/p256.pk8.pem"),
                include_bytes!("../../testdata/keys/p256.spki.der"),
                &rs::ECDSA_P256_SHA256_ASN1,
            ),
            (
                "o-p384",
                include_bytes!("../../testdata/keys/p384.pk8.pem"),
                include_bytes!("../../testdata/keys/p384.spki.der"),
                &rs::ECDSA_P384_SHA384_ASN1,
            ),
            (
                "o-rsa",
                include_bytes!("../../testdata/keys/rsa2048.pk8.pem"),
                include_bytes!("../../testdata/keys/rsa2048.spki.der"),
                &rs::RSA_PSS_2048_8192_SHA256,
            ),
        ] {
            let pem = Zeroizing::new(String::from_utf8(pem.to_vec()).unwrap());
            let imported =
                import_pkcs8_pem(&token, label, label.as_bytes(), &pem, Some(spki)).unwrap();
            assert_eq!(imported.spki_der, spki, "{label}");
            let key = token.find_signing_key(&imported.uri).unwrap();
            assert_eq!(key.spki_der(), spki, "{label}");
            let sig = token.sign(&key, key.schemes()[0], msg).unwrap();
            let point = spki::SubjectPublicKeyInfoRef::try_from(spki)
                .unwrap()
                .subject_public_key
                .raw_bytes();
            UnparsedPublicKey::new(verify, point)
                .verify(msg, &sig)
                .unwrap_or_else(|_| panic!("{label}: {:?}", key.schemes()[0]));
        }
        // A three-prime RSA key is refused, and nothing is written.
        let three = include_str!("../../testdata/keys/rsa2048-3primes.pk8.pem");
        let err = import_pkcs8_pem(&token, "o-3p", b"3p", three, None).unwrap_err();
        assert!(err.to_string().contains("multi-prime"), "{err}");
        assert_eq!(list_keys(&token).unwrap().len(), 4);
    }

    #[test]
    fn uris_round_trip() {
        assert_eq!(
            key_uri("client ed25519", &[1, 0xab]),
            "pkcs11:object=client%20ed25519;id=%01%ab;type=private"
        );
        let u = crate::token::KeyUri::parse(&key_uri("a;b", b"\x00")).unwrap();
        assert_eq!(u.label.as_deref(), Some("a;b"));
        assert_eq!(u.id.as_deref(), Some(&[0u8][..]));
    }
}
