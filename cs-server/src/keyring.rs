//! The signing keys this CS offers engines: a key in the token, its certificate chain and
//! the engines allowed to use it. The signature scheme is chosen here, from the peer's
//! signature_algorithms and the key's type (docs/design.md §4.9), never from configuration.

use std::path::Path;

use lurk_proto::status::LurkStatus;
use lurk_proto::wire::SignatureScheme;

use crate::config::KeyConfig;
use crate::error::{ConfigError, ServiceError, TokenError};
use crate::token::{SigningKey, Token};

/// A configured signing key.
pub struct ConfiguredKey {
    pub id: String,
    pub key: SigningKey,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    allowed_engines: Vec<String>,
}

impl ConfiguredKey {
    pub fn kind_name(&self) -> String {
        self.key.key_type().name()
    }

    /// Schemes this key can make, in our order of preference.
    pub fn schemes(&self) -> &'static [SignatureScheme] {
        self.key.schemes()
    }

    pub fn allows(&self, engine: &str) -> bool {
        self.allowed_engines.is_empty() || self.allowed_engines.iter().any(|e| e == engine)
    }

    /// RFC 8446 §4.4.3: the scheme must be one the peer offered in signature_algorithms.
    /// We take our most preferred scheme among those the peer listed.
    pub fn choose_scheme(
        &self,
        offered: &[SignatureScheme],
    ) -> Result<SignatureScheme, ServiceError> {
        self.schemes()
            .iter()
            .copied()
            .find(|s| offered.contains(s))
            .ok_or_else(|| {
                ServiceError::refuse(
                    LurkStatus::InvalidSignatureScheme,
                    format!(
                        "key {:?} ({}) can make none of the signature schemes the server accepts",
                        self.id,
                        self.kind_name()
                    ),
                )
            })
    }
}

/// All configured keys.
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<ConfiguredKey>,
}

impl KeyRing {
    pub fn empty() -> Self {
        Self::default()
    }

    /// Finds each key in the token, reads its chain and checks that the leaf certificate
    /// carries the key's public key.
    pub fn load(token: &Token, configs: &[KeyConfig]) -> Result<Self, ServiceError> {
        let mut keys = Vec::new();
        for kc in configs {
            let key = token.find_signing_key(&kc.object)?;
            let chain = read_chain(&kc.certificate_chain)
                .map_err(|e| ServiceError::Internal(format!("key {:?}: {e}", kc.id)))?;
            let leaf_spki = leaf_spki(&chain[0])
                .map_err(|e| ServiceError::Internal(format!("key {:?}: {e}", kc.id)))?;
            if leaf_spki != key.spki_der() {
                return Err(ServiceError::Token(TokenError::Other(format!(
                    "key {:?}: the certificate in {} does not carry the public key of {}",
                    kc.id,
                    kc.certificate_chain.display(),
                    kc.object
                ))));
            }
            keys.push(ConfiguredKey {
                id: kc.id.clone(),
                key,
                chain,
                allowed_engines: kc.allowed_engines.clone(),
            });
        }
        Ok(Self { keys })
    }

    /// The key `id`, if it exists and `engine` may use it.
    pub fn get(&self, id: &str, engine: &str) -> Result<&ConfiguredKey, ServiceError> {
        self.keys
            .iter()
            .find(|k| k.id == id && k.allows(engine))
            .ok_or_else(|| {
                ServiceError::refuse(
                    LurkStatus::InvalidCertificate,
                    format!("no signing key {id:?} for this engine"),
                )
            })
    }

    pub fn all(&self) -> impl Iterator<Item = &ConfiguredKey> {
        self.keys.iter()
    }

    /// Test-vector mode only (RFC 8448 §6, whose client key is not published): adds a key
    /// whose certificate is NOT checked against it. Never reachable from configuration.
    pub fn insert_test_vector_key(&mut self, id: &str, key: SigningKey, chain: Vec<Vec<u8>>) {
        self.keys.push(ConfiguredKey {
            id: id.to_owned(),
            key,
            chain,
            allowed_engines: Vec::new(),
        });
    }

    pub fn usable_by<'a>(
        &'a self,
        engine: &'a str,
    ) -> impl Iterator<Item = &'a ConfiguredKey> + 'a {
        self.keys.iter().filter(move |k| k.allows(engine))
    }
}

/// Reads a PEM certificate chain (leaf first) as DER.
pub fn read_chain(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    let io = |e| ConfigError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let pem = std::fs::read(path).map_err(io)?;
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    if certs.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{}: no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn leaf_spki(der: &[u8]) -> Result<Vec<u8>, ConfigError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| ConfigError::Invalid(format!("certificate does not parse: {e}")))?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}
