//! Sharing the sealing key between CS replicas that each have their own token: the key is
//! created exportable (sensitive: it only ever leaves the token wrapped), wrapped under an
//! AES wrapping key both tokens hold (CKM_AES_KEY_WRAP, RFC 3394; SoftHSM 2.6 has it), and
//! unwrapped into the other token (C_WrapKey / C_UnwrapKey). The wrapping key is imported
//! into each token once from a key ceremony's file (`lurk-cs token wrapping-key import`).
//!
//! An exportable sealing key can be wrapped by anyone holding the user PIN and a wrapping
//! key: keep it non-exportable (the default) on a single CS, or use one network HSM that
//! all replicas share.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};

use super::{find_one, PooledSession, Token};
use crate::error::TokenError;

/// First line of a wrapped sealing key file; the second is the wrapped key in hex.
pub const WRAPPED_HEADER: &str = "lurk-cs wrapped sealing key v1 CKM_AES_KEY_WRAP";

impl Token {
    fn find_wrapping_key(
        &self,
        session: &PooledSession<'_>,
        label: &str,
    ) -> Result<ObjectHandle, TokenError> {
        find_one(
            session,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(label.as_bytes().to_vec()),
            ],
            &format!("wrapping key {label:?}"),
        )?
        .ok_or_else(|| TokenError::KeyNotFound(format!("wrapping key {label:?}")))
    }

    /// Imports an AES wrapping key (16, 24 or 32 bytes) under `label`: token object,
    /// sensitive, not extractable, wrap/unwrap only. Refuses an existing label.
    pub fn import_wrapping_key(&self, label: &str, key: &[u8]) -> Result<(), TokenError> {
        if ![16, 24, 32].contains(&key.len()) {
            return Err(TokenError::Other(
                "a wrapping key is 16, 24 or 32 bytes (AES)".into(),
            ));
        }
        let session = self.session()?;
        if self.find_wrapping_key(&session, label).is_ok() {
            return Err(TokenError::Other(format!(
                "the token already holds a key labelled {label:?}"
            )));
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Value(key.to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        session
            .create_object(&template)
            .map_err(|e| TokenError::pkcs11("C_CreateObject", e))?;
        Ok(())
    }

    /// The sealing key wrapped under the wrapping key `wrapping_label` (C_WrapKey,
    /// CKM_AES_KEY_WRAP). Fails unless the sealing key was created exportable.
    pub fn export_sealing_key_wrapped(&self, wrapping_label: &str) -> Result<Vec<u8>, TokenError> {
        let session = self.session()?;
        let wrapping = self.find_wrapping_key(&session, wrapping_label)?;
        let key = self.sealing_key(&session)?;
        session
            .wrap_key(&Mechanism::AesKeyWrap, wrapping, key)
            .map_err(|e| TokenError::pkcs11("C_WrapKey", e))
    }

    /// Unwraps `wrapped` (from [`export_sealing_key_wrapped`](Self::export_sealing_key_wrapped))
    /// into this token as its sealing key (C_UnwrapKey). Refuses if the token already has
    /// one. The new key is sensitive and not extractable unless `exportable`.
    pub fn import_sealing_key_wrapped(
        &self,
        wrapping_label: &str,
        wrapped: &[u8],
        exportable: bool,
    ) -> Result<(), TokenError> {
        let session = self.session()?;
        if self.find_sealing_key(&session)?.is_some() {
            return Err(TokenError::Other(format!(
                "the token already holds a sealing key {:?}",
                self.inner.sealing_label
            )));
        }
        let unwrapping = self.find_wrapping_key(&session, wrapping_label)?;
        let template = sealing_key_template(&self.inner.sealing_label, exportable);
        let handle = session
            .unwrap_key(&Mechanism::AesKeyWrap, unwrapping, wrapped, &template)
            .map_err(|e| TokenError::pkcs11("C_UnwrapKey", e))?;
        self.cache_sealing_key(&session, handle);
        tracing::info!(label = %self.inner.sealing_label, "sealing key imported (unwrapped)");
        Ok(())
    }
}

/// The sealing key's attributes: AES-256, token object, private, sensitive,
/// encrypt/decrypt only; extractable (hence wrappable) only when `exportable`.
pub(crate) fn sealing_key_template(label: &str, exportable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(exportable),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::testutil::new_token;
    use crate::error::StoreError;
    use crate::store::{NewTicket, SqliteStore, Tickets};
    use lurk_proto::wire::HashAlg;
    use zeroize::Zeroizing;

    fn ticket(psk: &[u8]) -> NewTicket {
        NewTicket {
            identity: b"replicated".to_vec(),
            psk: Zeroizing::new(psk.to_vec()),
            hash: HashAlg::Sha256,
            cipher_suite: 0x1301,
            lifetime_secs: 3600,
            max_early_data: 0,
            server_name: None,
        }
    }

    /// Replica A's sealing key, wrapped and unwrapped into replica B's token: what A seals,
    /// B opens; a third token with its own key is refused by the store A created.
    #[test]
    fn a_wrapped_sealing_key_moves_to_another_token() {
        let (a, _) = new_token("wrap-a");
        let (b, _) = new_token("wrap-b");
        let (c, _) = new_token("wrap-c");
        assert!(a.ensure_sealing_key_exportable(true).unwrap());
        assert!(c.ensure_sealing_key().unwrap());
        let wrapping = [0x5a; 32];
        for t in [&a, &b] {
            t.import_wrapping_key("replica-wrap", &wrapping).unwrap();
        }
        assert!(a.import_wrapping_key("replica-wrap", &wrapping).is_err());

        let wrapped = a.export_sealing_key_wrapped("replica-wrap").unwrap();
        assert_eq!(wrapped.len(), 40, "RFC 3394: 32-byte key + 8");
        b.import_sealing_key_wrapped("replica-wrap", &wrapped, false)
            .unwrap();
        assert!(b.has_sealing_key().unwrap());
        // A non-exportable key (B's now, C's) cannot be wrapped out.
        assert!(b.export_sealing_key_wrapped("replica-wrap").is_err());
        assert!(c.export_sealing_key_wrapped("replica-wrap").is_err());
        // B already has a sealing key: a second import is refused.
        assert!(b
            .import_sealing_key_wrapped("replica-wrap", &wrapped, false)
            .is_err());

        let sealed = a.seal(b"aad", b"the psk").unwrap();
        assert_eq!(&b.unseal(b"aad", &sealed).unwrap()[..], b"the psk");
        assert!(c.unseal(b"aad", &sealed).is_err());

        // Through a store: A registers, B takes; C refuses to open the store.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.sqlite");
        let cfg = crate::store::suite::cfg(64, 3600);
        let store_a = SqliteStore::open(&path, Arc::new(a.clone()), &cfg).unwrap();
        store_a.put_ticket("engine", ticket(&[7; 32])).unwrap();
        drop(store_a);
        let err = SqliteStore::open(&path, Arc::new(c.clone()), &cfg).unwrap_err();
        assert!(matches!(err, StoreError::WrongSealingKey(_)), "{err}");
        let store_b = SqliteStore::open(&path, Arc::new(b.clone()), &cfg).unwrap();
        let t = store_b
            .take_ticket("engine", b"replicated")
            .unwrap()
            .unwrap();
        assert_eq!(&t.psk[..], &[7; 32]);
    }
}
