//! The signing keys this CS offers engines: a key in the token, its certificate chain and
//! the engines allowed to use it. The signature scheme is chosen here, from the peer's
//! signature_algorithms and the key's type (docs/design.md §4.9), never from configuration.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use lurk_proto::status::LurkStatus;
use lurk_proto::wire::SignatureScheme;

use crate::config::KeyConfig;
use crate::error::{ConfigError, ServiceError, TokenError};
use crate::token::{SigningKey, Token};

/// A configured signing key.
pub struct ConfiguredKey {
    /// The key id engines name in their requests (`[[keys]] id`).
    pub id: String,
    /// The private key in the token.
    pub key: SigningKey,
    /// DER certificates, leaf first; swapped whole by [`KeyRing::reload_chains`].
    chain: RwLock<Arc<Vec<Vec<u8>>>>,
    /// The PEM file the chain comes from (none for the test-vector key).
    chain_path: Option<PathBuf>,
    allowed_engines: Vec<String>,
}

impl ConfiguredKey {
    /// The certificate chain (DER, leaf first) in force now.
    pub fn chain(&self) -> Arc<Vec<Vec<u8>>> {
        self.chain
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key's type for Capabilities and logs (`ed25519`, `ecdsa-p256`, ...).
    pub fn kind_name(&self) -> String {
        self.key.key_type().name()
    }

    /// Schemes this key can make, in our order of preference.
    pub fn schemes(&self) -> &'static [SignatureScheme] {
        self.key.schemes()
    }

    /// Whether `engine` may use this key (`allowed_engines` empty: every engine).
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
    /// No key: a CS that only does key exchange and PSKs.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Finds each key in the token, reads its chain and checks that the leaf certificate
    /// carries the key's public key.
    pub fn load(token: &Token, configs: &[KeyConfig]) -> Result<Self, ServiceError> {
        let mut keys = Vec::new();
        for kc in configs {
            let key = token.find_signing_key(&kc.object)?;
            let chain = checked_chain(&kc.id, &key, &kc.certificate_chain)?;
            keys.push(ConfiguredKey {
                id: kc.id.clone(),
                key,
                chain: RwLock::new(Arc::new(chain)),
                chain_path: Some(kc.certificate_chain.clone()),
                allowed_engines: kc.allowed_engines.clone(),
            });
        }
        Ok(Self { keys })
    }

    /// Reads every key's certificate chain file again (on SIGHUP) and puts in force each
    /// one that parses and whose leaf still carries the key's public key; a refused file
    /// leaves that key's current chain in force. Returns what happened, per key.
    pub fn reload_chains(&self) -> Vec<ChainReload> {
        let mut out = Vec::new();
        for k in &self.keys {
            let Some(path) = &k.chain_path else { continue };
            let outcome = match checked_chain(&k.id, &k.key, path) {
                Ok(new) => {
                    let mut current = k.chain.write().unwrap_or_else(PoisonError::into_inner);
                    if **current == new {
                        ChainOutcome::Unchanged
                    } else {
                        *current = Arc::new(new);
                        ChainOutcome::Replaced
                    }
                }
                Err(e) => ChainOutcome::Refused(e.to_string()),
            };
            out.push(ChainReload {
                key_id: k.id.clone(),
                path: path.clone(),
                outcome,
            });
        }
        out
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

    /// Every key, whatever engine may use it.
    pub fn all(&self) -> impl Iterator<Item = &ConfiguredKey> {
        self.keys.iter()
    }

    /// Test-vector mode only (RFC 8448 §6, whose client key is not published): adds a key
    /// whose certificate is NOT checked against it. Never reachable from configuration.
    pub fn insert_test_vector_key(&mut self, id: &str, key: SigningKey, chain: Vec<Vec<u8>>) {
        self.keys.push(ConfiguredKey {
            id: id.to_owned(),
            key,
            chain: RwLock::new(Arc::new(chain)),
            chain_path: None,
            allowed_engines: Vec::new(),
        });
    }

    /// The keys `engine` may use (what its Capabilities list).
    pub fn usable_by<'a>(
        &'a self,
        engine: &'a str,
    ) -> impl Iterator<Item = &'a ConfiguredKey> + 'a {
        self.keys.iter().filter(move |k| k.allows(engine))
    }
}

/// What reloading one key's chain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReload {
    /// The key.
    pub key_id: String,
    /// The PEM file its chain was read from.
    pub path: PathBuf,
    /// What became of the chain in force.
    pub outcome: ChainOutcome,
}

/// The result of reloading one key's chain on SIGHUP ([`crate::reload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainOutcome {
    /// A new chain is in force.
    Replaced,
    /// The file holds the chain already in force.
    Unchanged,
    /// The file was refused (why); the chain in force stays.
    Refused(String),
}

/// The chain in `path`, if its leaf certificate carries `key`'s public key.
fn checked_chain(id: &str, key: &SigningKey, path: &Path) -> Result<Vec<Vec<u8>>, ServiceError> {
    let chain = read_chain(path).map_err(|e| ServiceError::Internal(format!("key {id:?}: {e}")))?;
    let spki =
        leaf_spki(&chain[0]).map_err(|e| ServiceError::Internal(format!("key {id:?}: {e}")))?;
    if spki != key.spki_der() {
        return Err(ServiceError::Token(TokenError::Other(format!(
            "key {id:?}: the certificate in {} does not carry the key's public key",
            path.display(),
        ))));
    }
    Ok(chain)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::keys::{import_pkcs8_pem, key_uri};
    use crate::token::testutil;

    fn self_signed(key: &rcgen::KeyPair, cn: &str) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(key).unwrap().pem()
    }

    /// Against a real SoftHSM token: a new chain for the same key is put in force, one whose
    /// leaf carries another key (or that does not parse) is refused and the old one stays.
    #[test]
    fn chains_reload_only_when_the_leaf_carries_the_key() {
        let (token, _) = testutil::new_token("chain-reload");
        let sw = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        import_pkcs8_pem(&token, "client", b"\x01", &sw.serialize_pem(), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.pem");
        std::fs::write(&path, self_signed(&sw, "client v1")).unwrap();
        let ring = KeyRing::load(
            &token,
            &[KeyConfig {
                id: "client".into(),
                object: key_uri("client", b"\x01"),
                certificate_chain: path.clone(),
                allowed_engines: Vec::new(),
            }],
        )
        .unwrap();
        let v1 = ring.get("client", "e").unwrap().chain();
        let outcome = |ring: &KeyRing| {
            let r = ring.reload_chains();
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].key_id, "client");
            r[0].outcome.clone()
        };
        assert_eq!(outcome(&ring), ChainOutcome::Unchanged);

        // Renewed certificate, same key: in force.
        std::fs::write(&path, self_signed(&sw, "client v2")).unwrap();
        assert_eq!(outcome(&ring), ChainOutcome::Replaced);
        let v2 = ring.get("client", "e").unwrap().chain();
        assert_ne!(v1, v2);
        assert_eq!(*v2, read_chain(&path).unwrap());

        // A certificate of another key, garbage, an empty file, a missing file: refused,
        // the v2 chain stays.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        for bad in [
            Some(self_signed(&other, "client v3")),
            Some("garbage".into()),
            Some(String::new()),
            None,
        ] {
            match bad {
                Some(text) => std::fs::write(&path, text).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            assert!(
                matches!(outcome(&ring), ChainOutcome::Refused(_)),
                "a bad chain file was accepted"
            );
            assert_eq!(ring.get("client", "e").unwrap().chain(), v2);
        }
    }
}
