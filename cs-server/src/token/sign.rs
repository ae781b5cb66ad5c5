//! Signing keys and TLS 1.3 signatures (RFC 8446 §4.4.3) made by the token.
//!
//! `Token::sign` takes the whole CertificateVerify content (64 spaces ‖ context string ‖ 0 ‖
//! transcript hash) and returns the signature as TLS puts it on the wire:
//! - Ed25519: CKM_EDDSA over the content, single part (SoftHSM has no multi-part EdDSA);
//! - ECDSA: the content hashed here (SoftHSM has no CKM_ECDSA_SHA256), CKM_ECDSA over the
//!   digest, the raw `r‖s` converted to a DER `ECDSA-Sig-Value`;
//! - RSA-PSS (rsae): CKM_RSA_PKCS_PSS over the digest, MGF1 with the same hash, salt length =
//!   hash length (RFC 8446 §4.2.3).
//!
//! Object handles are looked up once (handles stay valid across the sessions of one
//! application) and cached by the configured name, with the module generation they belong
//! to: after the module was re-initialised or the login lost (token/pool.rs) the key is
//! found again by the same name and must have the same public key, or nothing is signed.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use lurk_proto::wire::SignatureScheme;

use super::der::{self, EcCurve};
use super::pool::{HandleEpoch, PooledSession};
use super::uri::KeyUri;
use super::{find_one, Token};
use crate::error::TokenError;
use crate::telemetry::TokenOp;

/// The kind of a signing key, which fixes the schemes it can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningKeyType {
    /// Ed25519 (RFC 8446 §4.2.3 ed25519).
    Ed25519,
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA, signing with RSASSA-PSS only (RFC 8446 §4.4.3).
    Rsa {
        /// The modulus length.
        bits: usize,
    },
}

impl SigningKeyType {
    /// The TLS 1.3 signature schemes this key can make, in preference order.
    pub fn schemes(self) -> &'static [SignatureScheme] {
        match self {
            Self::Ed25519 => &[SignatureScheme::Ed25519],
            Self::EcdsaP256 => &[SignatureScheme::EcdsaSecp256r1Sha256],
            Self::EcdsaP384 => &[SignatureScheme::EcdsaSecp384r1Sha384],
            Self::Rsa { .. } => &[
                SignatureScheme::RsaPssRsaeSha256,
                SignatureScheme::RsaPssRsaeSha384,
                SignatureScheme::RsaPssRsaeSha512,
            ],
        }
    }

    /// The name `keys list` and Capabilities show (`ed25519`, `ecdsa-p256`, `rsa-2048`, ...).
    pub fn name(self) -> String {
        match self {
            Self::Ed25519 => "ed25519".to_owned(),
            Self::EcdsaP256 => "ecdsa-p256".to_owned(),
            Self::EcdsaP384 => "ecdsa-p384".to_owned(),
            Self::Rsa { bits } => format!("rsa-{bits}"),
        }
    }
}

/// A private key in the token that can sign CertificateVerify.
#[derive(Clone, Debug)]
pub struct SigningKey {
    handle: ObjectHandle,
    /// When `handle` was looked up (token/pool.rs), and the name the key was found by.
    epoch: HandleEpoch,
    object: String,
    token: String,
    key_type: SigningKeyType,
    label: String,
    id: Vec<u8>,
    spki: Vec<u8>,
    public_raw: Vec<u8>,
}

impl SigningKey {
    /// What the key signs.
    pub fn key_type(&self) -> SigningKeyType {
        self.key_type
    }

    /// The schemes this key can make.
    pub fn schemes(&self) -> &'static [SignatureScheme] {
        self.key_type.schemes()
    }

    /// Whether `scheme` is one of [`SigningKey::schemes`].
    pub fn can_sign(&self, scheme: SignatureScheme) -> bool {
        self.schemes().contains(&scheme)
    }

    /// The key object's CKA_LABEL.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The key object's CKA_ID.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The public key as a DER SubjectPublicKeyInfo, to compare with the certificate's.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Whether the certificate (DER) carries this key's public key.
    pub fn matches_certificate(&self, cert_der: &[u8]) -> Result<bool, TokenError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| TokenError::Other(format!("unparsable certificate: {e}")))?;
        Ok(cert.public_key().raw == self.spki.as_slice())
    }

    /// The public key without its SPKI wrapper: 32 bytes for Ed25519, the uncompressed
    /// point for ECDSA, an `RSAPublicKey` for RSA (what ring and rcgen call "raw").
    pub fn public_key_raw(&self) -> &[u8] {
        &self.public_raw
    }
}

impl Token {
    /// Finds the private key `object` names (an RFC 7512 `pkcs11:` URI or a bare label),
    /// with its type and public key. Results are cached by `object`.
    pub fn find_signing_key(&self, object: &str) -> Result<SigningKey, TokenError> {
        if let Some(k) = self.cached_key(object) {
            return Ok(k);
        }
        let uri = KeyUri::parse(object)?;
        self.check_uri_token(&uri, object)?;
        let key = {
            let session = self.session_for(TokenOp::FIND)?;
            self.load_signing_key(&session, &uri, object)?
        };
        self.inner
            .signing_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(object.to_owned(), key.clone());
        Ok(key)
    }

    fn cached_key(&self, object: &str) -> Option<SigningKey> {
        self.inner
            .signing_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(object)
            .cloned()
    }

    fn check_uri_token(&self, uri: &KeyUri, object: &str) -> Result<(), TokenError> {
        let checks = [
            ("token", &uri.token, &self.inner.label),
            ("manufacturer", &uri.manufacturer, &self.inner.manufacturer),
            ("model", &uri.model, &self.inner.model),
            ("serial", &uri.serial, &self.inner.serial),
        ];
        for (name, wanted, have) in checks {
            if let Some(w) = wanted {
                if w != have {
                    return Err(TokenError::KeyNotFound(format!(
                        "{}: {name}={w:?} but the configured token has {have:?}",
                        object.split('?').next().unwrap_or_default()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The handle of `key` in the module generation of `session`: looked up again by its
    /// name after a re-initialisation, and refused if the token's key there is another one.
    fn current_handle(
        &self,
        session: &PooledSession<'_>,
        key: &SigningKey,
    ) -> Result<ObjectHandle, TokenError> {
        if key.epoch == session.epoch() {
            return Ok(key.handle);
        }
        if let Some(k) = self.cached_key(&key.object) {
            if k.epoch == session.epoch() && k.spki == key.spki {
                return Ok(k.handle);
            }
        }
        let found = self.load_signing_key(session, &KeyUri::parse(&key.object)?, &key.object)?;
        if found.spki != key.spki {
            return Err(TokenError::KeyNotFound(format!(
                "{}: the token now holds another key under this name",
                key.label
            )));
        }
        let handle = found.handle;
        self.inner
            .signing_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.object.clone(), found);
        Ok(handle)
    }

    fn load_signing_key(
        &self,
        session: &PooledSession<'_>,
        uri: &KeyUri,
        object: &str,
    ) -> Result<SigningKey, TokenError> {
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(l) = &uri.label {
            template.push(Attribute::Label(l.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let what = uri.describe();
        let handle = find_one(session, &template, &format!("private key {what}"))?
            .ok_or_else(|| TokenError::KeyNotFound(format!("no private key with {what}")))?;
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::Sign,
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(session.fail("C_GetAttributeValue"))?;
        let (mut key_type, mut sign, mut label, mut id) = (None, false, Vec::new(), Vec::new());
        let (mut sensitive, mut extractable) = (false, true);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Sign(b) => sign = b,
                Attribute::Label(l) => label = l,
                Attribute::Id(i) => id = i,
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                _ => {}
            }
        }
        if !sign {
            return Err(TokenError::UnsupportedKey(format!(
                "{what}: CKA_SIGN is false"
            )));
        }
        if !sensitive || extractable {
            tracing::warn!(
                key = %what,
                sensitive,
                extractable,
                "signing key can leave the token; import it again with keys import"
            );
        }
        let label = String::from_utf8_lossy(&label).into_owned();
        let key_type = key_type
            .ok_or_else(|| TokenError::UnsupportedKey(format!("{what}: no CKA_KEY_TYPE")))?;
        let (key_type, spki, public_raw) = if key_type == KeyType::RSA {
            let attrs = session
                .get_attributes(
                    handle,
                    &[AttributeType::Modulus, AttributeType::PublicExponent],
                )
                .map_err(session.fail("C_GetAttributeValue"))?;
            let (mut n, mut e) = (Vec::new(), Vec::new());
            for a in attrs {
                match a {
                    Attribute::Modulus(v) => n = v,
                    Attribute::PublicExponent(v) => e = v,
                    _ => {}
                }
            }
            if n.is_empty() || e.is_empty() {
                return Err(TokenError::UnsupportedKey(format!(
                    "{what}: RSA key without a readable modulus and exponent"
                )));
            }
            let bits = der::bit_len(&n);
            if bits < 2048 {
                return Err(TokenError::UnsupportedKey(format!(
                    "{what}: {bits}-bit RSA is too small (2048 at least)"
                )));
            }
            (
                SigningKeyType::Rsa { bits },
                der::spki_rsa(&n, &e)?,
                der::rsa_public_key(&n, &e)?,
            )
        } else if key_type == KeyType::EC || key_type == KeyType::EC_EDWARDS {
            let params = ec_params(session, handle, &what)?;
            let curve = EcCurve::from_ec_params(&params);
            let (kind, raw_len) = match (key_type == KeyType::EC, curve) {
                (true, Some(EcCurve::P256)) => (SigningKeyType::EcdsaP256, 65),
                (true, Some(EcCurve::P384)) => (SigningKeyType::EcdsaP384, 97),
                (false, Some(EcCurve::Ed25519)) => (SigningKeyType::Ed25519, 32),
                _ => {
                    return Err(TokenError::UnsupportedKey(format!(
                        "{what}: curve {} is not supported (P-256, P-384, Ed25519)",
                        hex::encode(&params)
                    )))
                }
            };
            let point = public_point(session, key_type, &label, &id, &what, raw_len)?;
            let spki = match kind {
                SigningKeyType::Ed25519 => der::spki_ed25519(&point)?,
                SigningKeyType::EcdsaP256 => der::spki_ec(EcCurve::P256, &point)?,
                _ => der::spki_ec(EcCurve::P384, &point)?,
            };
            (kind, spki, point)
        } else {
            return Err(TokenError::UnsupportedKey(format!(
                "{what}: key type {key_type} is not supported"
            )));
        };
        Ok(SigningKey {
            handle,
            epoch: session.epoch(),
            object: object.to_owned(),
            token: self.inner.label.clone(),
            key_type,
            label,
            id,
            spki,
            public_raw,
        })
    }

    /// Signs `message` (the whole CertificateVerify content) with `scheme`; see the module
    /// documentation for the encodings.
    pub fn sign(
        &self,
        key: &SigningKey,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> Result<Vec<u8>, TokenError> {
        if !key.can_sign(scheme) {
            return Err(TokenError::Unsupported(format!(
                "{} with a {} key",
                scheme.name(),
                key.key_type.name()
            )));
        }
        if key.token != self.inner.label {
            return Err(TokenError::KeyNotFound(format!(
                "key {:?} belongs to token {:?}",
                key.label, key.token
            )));
        }
        let session = self.session_for(TokenOp::sign(scheme))?;
        let handle = self.current_handle(&session, key)?;
        let sign = |mech: &Mechanism<'_>, data: &[u8]| {
            session
                .sign(mech, handle, data)
                .map_err(session.fail("C_Sign"))
        };
        match scheme {
            SignatureScheme::Ed25519 => sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                message,
            ),
            SignatureScheme::EcdsaSecp256r1Sha256 => {
                let digest = ring::digest::digest(&ring::digest::SHA256, message);
                der::ecdsa_sig_value(EcCurve::P256, &sign(&Mechanism::Ecdsa, digest.as_ref())?)
            }
            SignatureScheme::EcdsaSecp384r1Sha384 => {
                let digest = ring::digest::digest(&ring::digest::SHA384, message);
                der::ecdsa_sig_value(EcCurve::P384, &sign(&Mechanism::Ecdsa, digest.as_ref())?)
            }
            SignatureScheme::RsaPssRsaeSha256
            | SignatureScheme::RsaPssRsaeSha384
            | SignatureScheme::RsaPssRsaeSha512 => {
                let (alg, hash_alg, mgf) = match scheme {
                    SignatureScheme::RsaPssRsaeSha256 => (
                        &ring::digest::SHA256,
                        MechanismType::SHA256,
                        PkcsMgfType::MGF1_SHA256,
                    ),
                    SignatureScheme::RsaPssRsaeSha384 => (
                        &ring::digest::SHA384,
                        MechanismType::SHA384,
                        PkcsMgfType::MGF1_SHA384,
                    ),
                    _ => (
                        &ring::digest::SHA512,
                        MechanismType::SHA512,
                        PkcsMgfType::MGF1_SHA512,
                    ),
                };
                let digest = ring::digest::digest(alg, message);
                let params = PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len: (digest.as_ref().len() as u64).into(),
                };
                sign(&Mechanism::RsaPkcsPss(params), digest.as_ref())
            }
            other => Err(TokenError::Unsupported(other.name().to_owned())),
        }
    }
}

fn ec_params(
    session: &PooledSession<'_>,
    handle: ObjectHandle,
    what: &str,
) -> Result<Vec<u8>, TokenError> {
    session
        .get_attributes(handle, &[AttributeType::EcParams])
        .map_err(session.fail("C_GetAttributeValue"))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcParams(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| TokenError::UnsupportedKey(format!("{what}: no CKA_EC_PARAMS")))
}

/// The public point of an EC or Edwards private key, read from the public key object with
/// the same CKA_ID (or, without an id, the same label): PKCS#11 2.40 private keys do not
/// carry their point.
fn public_point(
    session: &PooledSession<'_>,
    key_type: KeyType,
    label: &str,
    id: &[u8],
    what: &str,
    raw_len: usize,
) -> Result<Vec<u8>, TokenError> {
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(key_type),
    ];
    if id.is_empty() {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    } else {
        template.push(Attribute::Id(id.to_vec()));
    }
    let public =
        find_one(session, &template, &format!("public key of {what}"))?.ok_or_else(|| {
            TokenError::UnsupportedKey(format!(
                "{what}: no public key object with the same {} in the token",
                if id.is_empty() { "label" } else { "id" }
            ))
        })?;
    let point = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(session.fail("C_GetAttributeValue"))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| TokenError::UnsupportedKey(format!("{what}: no CKA_EC_POINT")))?;
    der::unwrap_ec_point(&point, raw_len)
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;
    use crate::token::keys::{self, KeyKind};
    use ring::signature::{self as rs, UnparsedPublicKey};

    /// A CertificateVerify content as TLS 1.3 builds it.
    fn cv_content(transcript_hash: &[u8]) -> Vec<u8> {
        let mut m = vec![0x20; 64];
        m.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
        m.extend_from_slice(transcript_hash);
        m
    }

    fn verify(key: &SigningKey, scheme: SignatureScheme, msg: &[u8], sig: &[u8]) {
        let alg: &dyn rs::VerificationAlgorithm = match scheme {
            SignatureScheme::Ed25519 => &rs::ED25519,
            SignatureScheme::EcdsaSecp256r1Sha256 => &rs::ECDSA_P256_SHA256_ASN1,
            SignatureScheme::EcdsaSecp384r1Sha384 => &rs::ECDSA_P384_SHA384_ASN1,
            SignatureScheme::RsaPssRsaeSha256 => &rs::RSA_PSS_2048_8192_SHA256,
            SignatureScheme::RsaPssRsaeSha384 => &rs::RSA_PSS_2048_8192_SHA384,
            SignatureScheme::RsaPssRsaeSha512 => &rs::RSA_PSS_2048_8192_SHA512,
            other => panic!("{other:?}"),
        };
        UnparsedPublicKey::new(alg, key.public_key_raw())
            .verify(msg, sig)
            .unwrap_or_else(|_| panic!("{scheme:?} signature does not verify"));
    }

    #[test]
    fn sign_and_verify_every_key_type() {
        let (token, _) = testutil::new_token("sign-all");
        let msg = cv_content(&[0xab; 32]);
        for (kind, label) in [
            (KeyKind::Ed25519, "k-ed"),
            (KeyKind::P256, "k-p256"),
            (KeyKind::P384, "k-p384"),
            (KeyKind::Rsa2048, "k-rsa"),
        ] {
            keys::generate_signing_key(&token, label, label.as_bytes(), kind).unwrap();
            let key = token.find_signing_key(label).unwrap();
            for &scheme in key.schemes() {
                let sig = token.sign(&key, scheme, &msg).unwrap();
                verify(&key, scheme, &msg, &sig);
            }
            if key.key_type() == SigningKeyType::Ed25519 {
                assert_eq!(
                    token
                        .sign(&key, SignatureScheme::Ed25519, &msg)
                        .unwrap()
                        .len(),
                    64
                );
            }
        }
    }

    #[test]
    fn find_by_label_by_id_uri_and_refusals() {
        let (token, cfg) = testutil::new_token("find-keys");
        keys::generate_signing_key(&token, "my key", &[0x01, 0xa0], KeyKind::P256).unwrap();
        keys::generate_signing_key(&token, "other", &[0x02], KeyKind::Ed25519).unwrap();
        let by_label = token.find_signing_key("my key").unwrap();
        let by_uri = token
            .find_signing_key("pkcs11:object=my%20key;type=private")
            .unwrap();
        let by_id = token.find_signing_key("pkcs11:id=%01%a0").unwrap();
        let with_token = token
            .find_signing_key(&format!("pkcs11:token={};id=%01%A0", cfg.label))
            .unwrap();
        for k in [&by_uri, &by_id, &with_token] {
            assert_eq!(k.spki_der(), by_label.spki_der());
            assert_eq!(k.label(), "my key");
            assert_eq!(k.id(), &[0x01, 0xa0]);
        }
        assert_eq!(by_label.key_type(), SigningKeyType::EcdsaP256);
        // The SPKI parses and carries the same point.
        use x509_parser::prelude::FromDer;
        let (rest, spki) =
            x509_parser::x509::SubjectPublicKeyInfo::from_der(by_label.spki_der()).unwrap();
        assert!(rest.is_empty());
        assert_eq!(&spki.subject_public_key.data[..], by_label.public_key_raw());
        assert!(matches!(
            token.find_signing_key("pkcs11:object=nope"),
            Err(TokenError::KeyNotFound(_))
        ));
        assert!(matches!(
            token.find_signing_key("pkcs11:token=another;object=my%20key"),
            Err(TokenError::KeyNotFound(_))
        ));
        // A scheme the key cannot make is refused.
        let ed = token.find_signing_key("other").unwrap();
        assert!(matches!(
            token.sign(&ed, SignatureScheme::EcdsaSecp256r1Sha256, b"x"),
            Err(TokenError::Unsupported(_))
        ));
        assert!(matches!(
            token.sign(&by_label, SignatureScheme::RsaPssRsaeSha256, b"x"),
            Err(TokenError::Unsupported(_))
        ));
    }

    #[test]
    fn eight_threads_sign_concurrently() {
        let (token, _) = testutil::new_token("sign-threads");
        keys::generate_signing_key(&token, "p", b"p", KeyKind::P256).unwrap();
        keys::generate_signing_key(&token, "e", b"e", KeyKind::Ed25519).unwrap();
        let p = token.find_signing_key("p").unwrap();
        let e = token.find_signing_key("e").unwrap();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let (token, p, e) = (&token, &p, &e);
                s.spawn(move || {
                    for i in 0..25u8 {
                        let msg = cv_content(&[t, i]);
                        let sig = token
                            .sign(p, SignatureScheme::EcdsaSecp256r1Sha256, &msg)
                            .unwrap();
                        verify(p, SignatureScheme::EcdsaSecp256r1Sha256, &msg, &sig);
                        let sig = token.sign(e, SignatureScheme::Ed25519, &msg).unwrap();
                        verify(e, SignatureScheme::Ed25519, &msg, &sig);
                    }
                });
            }
        });
    }
}
