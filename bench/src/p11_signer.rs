//! A rustls client `SigningKey` over PKCS#11 (cryptoki, safe Rust): what a user would pick
//! instead of a separate Crypto Service to keep a client key in an HSM. The signature is
//! made in this process by `C_Sign` (CKM_ECDSA over the SHA-256 digest) on logged-in
//! sessions of the same SoftHSM token the CS uses, and DER-encoded as TLS 1.3 carries an
//! ECDSA signature (RFC 8446 §4.2.3: ecdsa_secp256r1_sha256, an ASN.1 Ecdsa-Sig-Value).

use std::path::Path;
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Logged-in sessions (as many as the CS's pool would use for two cores) and the key handle.
struct Inner {
    sessions: Vec<Mutex<Session>>,
    key: ObjectHandle,
}

/// A P-256 private key in a PKCS#11 token.
#[derive(Clone)]
pub(crate) struct P11Key(Arc<Inner>);

impl std::fmt::Debug for P11Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P11Key")
    }
}

impl P11Key {
    /// Opens `sessions` sessions on the token labelled `token_label` of `module`, logs in
    /// with `pin`, and finds the private key labelled `key_label`. Another part of this process
    /// may have initialised the module and logged in already: both are accepted.
    pub(crate) fn open(
        module: &Path,
        token_label: &str,
        pin: &str,
        key_label: &str,
        sessions: usize,
    ) -> Result<Self, BoxError> {
        let pkcs11 = Pkcs11::new(module)?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(e.into()),
        }
        let slot = pkcs11
            .get_slots_with_token()?
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == token_label)
            })
            .ok_or_else(|| format!("no token labelled {token_label:?}"))?;
        let pin = AuthPin::new(pin.to_owned().into());
        let mut list = Vec::new();
        for _ in 0..sessions.max(1) {
            let s = pkcs11.open_ro_session(slot)?;
            match s.login(UserType::User, Some(&pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => return Err(e.into()),
            }
            list.push(s);
        }
        let key = *list[0]
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(key_label.as_bytes().to_vec()),
            ])?
            .first()
            .ok_or_else(|| format!("no private key labelled {key_label:?}"))?;
        Ok(Self(Arc::new(Inner {
            sessions: list.into_iter().map(Mutex::new).collect(),
            key,
        })))
    }

    /// ECDSA P-256 over SHA-256 of `message`, DER-encoded.
    fn sign_p256(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let inner = &self.0;
        // A free session if there is one, else wait for the first.
        let guard = inner
            .sessions
            .iter()
            .find_map(|m| m.try_lock().ok())
            .map_or_else(|| inner.sessions[0].lock(), Ok)
            .map_err(|_| rustls::Error::General("PKCS#11 session lock poisoned".into()))?;
        let raw = guard
            .sign(&Mechanism::Ecdsa, inner.key, digest.as_ref())
            .map_err(|e| rustls::Error::General(format!("C_Sign: {e}")))?;
        drop(guard);
        if raw.len() != 64 {
            return Err(rustls::Error::General(format!(
                "C_Sign gave {} bytes, expected r‖s of 64",
                raw.len()
            )));
        }
        Ok(ecdsa_der(&raw[..32], &raw[32..]))
    }

    /// A rustls client certificate resolver presenting `chain` with this key.
    pub(crate) fn resolver(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Arc<dyn ResolvesClientCert> {
        Arc::new(Resolver(Arc::new(CertifiedKey::new(
            chain,
            Arc::new(self.clone()),
        ))))
    }
}

impl SigningKey for P11Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for P11Key {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.sign_p256(message)
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertifiedKey>);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        sigschemes
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } (RFC 3279 §2.2.3) from big-endian
/// r and s (each under 128 bytes, so every length fits in one byte).
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    fn integer(v: &[u8]) -> Vec<u8> {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[0u8][..],
        };
        let mut out = vec![0x02];
        if v[0] & 0x80 != 0 {
            out.push(v.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(v.len() as u8);
        }
        out.extend_from_slice(v);
        out
    }
    let (r, s) = (integer(r), integer(s));
    let mut out = vec![0x30, (r.len() + s.len()) as u8];
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    out
}

#[cfg(test)]
mod tests {
    use super::ecdsa_der;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        let mut r = [0u8; 32];
        r[31] = 1;
        let s = [0x80u8; 32];
        let der = ecdsa_der(&r, &s);
        assert_eq!(&der[..5], &[0x30, 3 + 35, 0x02, 1, 1]);
        assert_eq!(&der[5..8], &[0x02, 33, 0x00]);
        assert_eq!(der.len(), 2 + 3 + 35);
    }
}
