//! Sealing stored secrets (tickets' PSKs) under an AES-256 key that never leaves the token
//! (docs/design.md §4.6).
//!
//! Format (version 1): `0x01 ‖ iv (12 bytes) ‖ AES-256-GCM ciphertext ‖ tag (16 bytes)`,
//! with additional data `0x01 ‖ aad`, so that the version byte is authenticated too. The IV
//! is random (ring's `SystemRandom`): at 2^32 seals per key the collision probability stays
//! below 2^-32 (NIST SP 800-38D §8.3).

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::pool::PooledSession;
use super::{find_one, Token};
use crate::error::TokenError;
use crate::telemetry::TokenOp;

const VERSION: u8 = 1;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;

impl Token {
    /// Creates the sealing key (`[token] sealing_key` label) unless it exists; returns
    /// whether it was created. AES-256, token object, private, sensitive, not extractable,
    /// encrypt/decrypt only.
    pub fn ensure_sealing_key(&self) -> Result<bool, TokenError> {
        self.ensure_sealing_key_exportable(false)
    }

    /// [`ensure_sealing_key`](Self::ensure_sealing_key); with `exportable`, the key is
    /// extractable so that it can leave the token wrapped (`token::wrap`), for replicas.
    pub fn ensure_sealing_key_exportable(&self, exportable: bool) -> Result<bool, TokenError> {
        let session = self.session()?;
        if self.find_sealing_key(&session)?.is_some() {
            return Ok(false);
        }
        let mut template = super::wrap::sealing_key_template(&self.inner.sealing_label, exportable);
        template.push(Attribute::ValueLen(32u64.into()));
        let handle = session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(session.fail("C_GenerateKey"))?;
        self.cache_sealing_key(&session, handle);
        tracing::info!(label = %self.inner.sealing_label, "sealing key created in the token");
        Ok(true)
    }

    /// Whether the token holds the sealing key.
    pub fn has_sealing_key(&self) -> Result<bool, TokenError> {
        let session = self.session()?;
        Ok(self.find_sealing_key(&session)?.is_some())
    }

    /// Remembers the handle for this handle epoch (token/pool.rs).
    pub(super) fn cache_sealing_key(&self, session: &PooledSession<'_>, handle: ObjectHandle) {
        *self
            .inner
            .sealing_key
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((session.epoch(), handle));
    }

    pub(super) fn find_sealing_key(
        &self,
        session: &PooledSession<'_>,
    ) -> Result<Option<ObjectHandle>, TokenError> {
        let cached = *self
            .inner
            .sealing_key
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((epoch, h)) = cached {
            if epoch == session.epoch() {
                return Ok(Some(h));
            }
        }
        let label = &self.inner.sealing_label;
        let found = find_one(
            session,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
            &format!("sealing key {label:?}"),
        )?;
        if let Some(h) = found {
            self.cache_sealing_key(session, h);
        }
        Ok(found)
    }

    pub(super) fn sealing_key(
        &self,
        session: &PooledSession<'_>,
    ) -> Result<ObjectHandle, TokenError> {
        self.find_sealing_key(session)?.ok_or_else(|| {
            TokenError::KeyNotFound(format!(
                "sealing key {:?} (create it with `lurk-cs token sealing-key`)",
                self.inner.sealing_label
            ))
        })
    }

    /// Seals `plaintext`, binding `aad` (e.g. the engine identity and the ticket id).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, TokenError> {
        let mut iv = [0u8; IV_LEN];
        SystemRandom::new()
            .fill(&mut iv)
            .map_err(|_| TokenError::Other("no randomness for the IV".to_owned()))?;
        let full_aad = versioned_aad(aad);
        let session = self.session_for(TokenOp::SEAL)?;
        let key = self.sealing_key(&session)?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, &full_aad, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| TokenError::pkcs11("GcmParams", e))?;
        let ct = session
            .encrypt(&Mechanism::AesGcm(params), key, plaintext)
            .map_err(session.fail("C_Encrypt"))?;
        let mut out = Vec::with_capacity(1 + IV_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`Token::seal`] made with the same `aad`. Any bad format or failed
    /// authentication is [`TokenError::Unseal`].
    pub fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        if sealed.len() < 1 + IV_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(TokenError::Unseal);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&sealed[1..1 + IV_LEN]);
        let ct = &sealed[1 + IV_LEN..];
        let full_aad = versioned_aad(aad);
        let session = self.session_for(TokenOp::UNSEAL)?;
        let key = self.sealing_key(&session)?;
        let params = GcmParams::new(&mut iv, &full_aad, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| TokenError::pkcs11("GcmParams", e))?;
        match session.decrypt(&Mechanism::AesGcm(params), key, ct) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            // What tokens return for a wrong tag (SoftHSM: CKR_ENCRYPTED_DATA_INVALID; the
            // others appear in other modules).
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::GeneralError,
                _,
            )) => Err(TokenError::Unseal),
            Err(e) => Err(session.error("C_Decrypt", e)),
        }
    }
}

fn versioned_aad(aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + aad.len());
    v.push(VERSION);
    v.extend_from_slice(aad);
    v
}

/// The token seals stored PSKs with its AES key (AES-GCM, docs/design.md §4.6).
impl crate::store::Sealer for Token {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, TokenError> {
        Token::seal(self, aad, plaintext)
    }

    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        Token::unseal(self, aad, sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;
    use cryptoki::object::AttributeType;

    #[test]
    fn seal_round_trip_and_tamper_detection() {
        let (token, _) = testutil::new_token("seal");
        assert!(matches!(
            token.seal(b"a", b"p"),
            Err(TokenError::KeyNotFound(_))
        ));
        assert!(token.ensure_sealing_key().unwrap());
        assert!(!token.ensure_sealing_key().unwrap());
        let psk = [0x5au8; 48];
        let sealed = token.seal(b"engine-dev|ticket-1", &psk).unwrap();
        assert_eq!(sealed.len(), 1 + IV_LEN + psk.len() + TAG_LEN);
        assert_eq!(sealed[0], VERSION);
        assert_eq!(
            &token.unseal(b"engine-dev|ticket-1", &sealed).unwrap()[..],
            &psk[..]
        );
        // Two seals of the same value differ (random IV).
        assert_ne!(sealed, token.seal(b"engine-dev|ticket-1", &psk).unwrap());
        // Any flipped byte, a wrong aad, a truncation or another version: Unseal.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(
                    token.unseal(b"engine-dev|ticket-1", &bad),
                    Err(TokenError::Unseal)
                ),
                "byte {i}"
            );
        }
        assert!(matches!(
            token.unseal(b"engine-other|ticket-1", &sealed),
            Err(TokenError::Unseal)
        ));
        assert!(matches!(
            token.unseal(b"engine-dev|ticket-1", &sealed[..20]),
            Err(TokenError::Unseal)
        ));
        assert!(matches!(token.unseal(b"", &[]), Err(TokenError::Unseal)));
        // Empty plaintext and aad work.
        let s = token.seal(b"", b"").unwrap();
        assert!(token.unseal(b"", &s).unwrap().is_empty());
    }

    #[test]
    fn sealing_key_is_not_extractable() {
        let (token, cfg) = testutil::new_token("seal-attrs");
        token.ensure_sealing_key().unwrap();
        let session = token.session().unwrap();
        let h = find_one(
            &session,
            &[Attribute::Label(cfg.sealing_key.as_bytes().to_vec())],
            &"sealing key",
        )
        .unwrap()
        .unwrap();
        testutil::assert_sensitive_not_extractable(&session, h, "sealing key");
        let attrs = session.get_attributes(h, &[AttributeType::Token]).unwrap();
        assert!(attrs.contains(&Attribute::Token(true)));
        testutil::assert_value_unreadable(&session, h, AttributeType::Value);
    }
}
