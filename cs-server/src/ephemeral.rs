//! (EC)DHE key pairs the CS generates for the ClientHello's key_share (cs_generated,
//! docs/design.md §4.4). Three backends:
//! - `Token` (default): key pairs generated in the PKCS#11 token as session objects, derived
//!   with CKM_ECDH1_DERIVE and destroyed as soon as the shared secret exists;
//! - `Memory`: ring's ephemeral keys in CS memory (single use; the shared secret is kept for
//!   the server share it was agreed with while the session is in its hello stage);
//! - test vectors: private keys injected by an in-process test (RFC 8448 traces), only in a
//!   build with the `test-vectors` feature and when the configuration enables the mode. There
//!   is no RPC to inject keys.

use std::cell::Cell;
#[cfg(feature = "test-vectors")]
use std::collections::VecDeque;
use std::fmt;
#[cfg(feature = "test-vectors")]
use std::sync::Mutex;

use lurk_proto::status::LurkStatus;
use lurk_proto::wire::NamedGroup;
use ring::agreement;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::config::EphemeralBackendKind;
use crate::error::ServiceError;
use crate::token::{AsyncAdmission, EphemeralAdmission, EphemeralPool, Token, TokenEphemeral};

/// A generated key pair waiting for the server's share. An agreement that fails leaves it
/// usable (a refused exchange changes nothing); it is destroyed when dropped.
pub enum PendingEphemeral {
    /// A key pair generated in the token as session objects (`[ephemeral] backend = "token"`).
    Token(TokenEphemeral),
    /// ring's key agrees once: it is taken only after the server's share is validated, and
    /// the shared secret is kept for that share (see [`MemoryKey`]).
    Memory(Cell<Option<MemoryKey>>),
    /// Test-vector mode: a private key given in-process (RFC 8448's), never from a request.
    #[cfg(feature = "test-vectors")]
    Injected(InjectedKey),
}

/// A memory key pair's state. ring's private key agrees once, but the exchange that agrees
/// may still be refused after it (a server flight whose records do not open, a byte cap):
/// the shared secret is then kept for that same server share, so that the exchange retried,
/// or `c_server_hello` after a refused `c_server_flight`, finds the session as it was. A
/// different server share is refused (`invalid_ephemeral`): the key pair served once.
pub enum MemoryKey {
    /// Not used yet.
    Fresh(agreement::EphemeralPrivateKey),
    /// Agreed with `peer`.
    Agreed {
        /// The server's share.
        peer: Vec<u8>,
        /// The (EC)DHE shared secret.
        shared: Zeroizing<Vec<u8>>,
    },
}

impl fmt::Debug for PendingEphemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Token(_) => "PendingEphemeral::Token",
            Self::Memory(_) => "PendingEphemeral::Memory",
            #[cfg(feature = "test-vectors")]
            Self::Injected(_) => "PendingEphemeral::Injected",
        })
    }
}

/// A test-vector private key (RFC 8448), zeroized on drop.
#[cfg(feature = "test-vectors")]
pub struct InjectedKey {
    group: NamedGroup,
    private: Zeroizing<Vec<u8>>,
}

/// Where ephemeral key pairs come from.
pub struct EphemeralSource {
    kind: EphemeralBackendKind,
    token: Option<Token>,
    /// Token backend: key pairs made ahead of use (`[ephemeral] token_pool`).
    pool: Option<EphemeralPool>,
    rng: SystemRandom,
    /// Some only in test-vector mode.
    #[cfg(feature = "test-vectors")]
    injected: Option<Mutex<VecDeque<InjectedKey>>>,
}

fn invalid_ephemeral(why: impl Into<String>) -> ServiceError {
    ServiceError::refuse(LurkStatus::InvalidEphemeral, why)
}

impl EphemeralSource {
    /// A source of `kind`; `token` is needed for the token backend, `test_vectors` allows
    /// injected keys (only in builds with the `test-vectors` feature).
    pub fn new(kind: EphemeralBackendKind, token: Option<Token>, test_vectors: bool) -> Self {
        // Without the feature, the configuration refuses the mode (config.rs).
        #[cfg(not(feature = "test-vectors"))]
        let _ = test_vectors;
        Self {
            kind,
            token,
            pool: None,
            rng: SystemRandom::new(),
            #[cfg(feature = "test-vectors")]
            injected: test_vectors.then(|| Mutex::new(VecDeque::new())),
        }
    }

    /// Token backend: keeps `per_group` key pairs ready for each group asked for, made in the
    /// background and destroyed unused after `max_age` (token/eph_pool.rs). No effect with
    /// another backend or `per_group` 0.
    pub fn with_token_pool(mut self, per_group: usize, max_age: std::time::Duration) -> Self {
        if self.kind != EphemeralBackendKind::Token || per_group == 0 {
            return self;
        }
        if let Some(token) = &self.token {
            match EphemeralPool::start(token.clone(), per_group, max_age) {
                Ok(p) => self.pool = Some(p),
                Err(e) => tracing::warn!(error = %e, "token ephemeral pool not started"),
            }
        }
        self
    }

    /// The token key-pair pool, when configured.
    pub fn token_pool(&self) -> Option<&EphemeralPool> {
        self.pool.as_ref()
    }

    /// The configured backend.
    pub fn kind(&self) -> EphemeralBackendKind {
        self.kind
    }

    /// Test-vector mode only: the next key pair generated for `group` uses this private key.
    #[cfg(feature = "test-vectors")]
    pub fn inject(&self, group: NamedGroup, private: &[u8]) -> Result<(), ServiceError> {
        let q = self.injected.as_ref().ok_or_else(|| {
            ServiceError::Internal("ephemeral keys can be injected only in test-vector mode".into())
        })?;
        q.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(InjectedKey {
                group,
                private: Zeroizing::new(private.to_vec()),
            });
        Ok(())
    }

    #[cfg(feature = "test-vectors")]
    fn take_injected(&self, group: NamedGroup) -> Option<InjectedKey> {
        let mut q = self
            .injected
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let pos = q.iter().position(|k| k.group == group)?;
        q.remove(pos)
    }

    /// Token backend: admits the key generations of one request until the admission drops
    /// (`Token::admit_ephemerals`), so that a planned module recycle never waits for the
    /// first of its key pairs while the second waits for the recycle. Waits while a
    /// recycle is under way. None with another backend.
    pub fn admit(&self) -> Result<Option<EphemeralAdmission<'_>>, ServiceError> {
        match (&self.token, self.kind) {
            (Some(token), EphemeralBackendKind::Token) => Ok(Some(token.admit_ephemerals()?)),
            _ => Ok(None),
        }
    }

    /// [`admit`](Self::admit) taken before the request's blocking work: it waits for a
    /// recycle on the async side, holding no blocking thread and no exchange slot
    /// (service.rs); the blocking work enters it.
    pub async fn admit_async(&self) -> Result<Option<AsyncAdmission>, ServiceError> {
        match (&self.token, self.kind) {
            (Some(token), EphemeralBackendKind::Token) => {
                Ok(Some(token.admit_ephemerals_async().await?))
            }
            _ => Ok(None),
        }
    }

    /// Generates a key pair for `group`; returns the key_share public value (TLS encoding).
    /// Blocking (may call the token).
    pub fn generate(&self, group: NamedGroup) -> Result<(Vec<u8>, PendingEphemeral), ServiceError> {
        if !NamedGroup::SUPPORTED.contains(&group) {
            return Err(invalid_ephemeral(format!(
                "group {group:?} is not supported"
            )));
        }
        #[cfg(feature = "test-vectors")]
        if let Some(k) = self.take_injected(group) {
            let public = injected_public(&k)?;
            return Ok((public, PendingEphemeral::Injected(k)));
        }
        match self.kind {
            EphemeralBackendKind::Token => {
                let token = self
                    .token
                    .as_ref()
                    .ok_or_else(|| ServiceError::Internal("no token for ephemerals".into()))?;
                let eph = match &self.pool {
                    Some(pool) => pool.take(group)?,
                    None => token.generate_ephemeral(group)?,
                };
                let public = eph.public_key().to_vec();
                Ok((public, PendingEphemeral::Token(eph)))
            }
            EphemeralBackendKind::Memory => {
                let alg = ring_alg(group)?;
                let private =
                    agreement::EphemeralPrivateKey::generate(alg, &self.rng).map_err(|_| {
                        ServiceError::Internal("ephemeral key generation failed".into())
                    })?;
                let public = private
                    .compute_public_key()
                    .map_err(|_| ServiceError::Internal("ephemeral public key failed".into()))?
                    .as_ref()
                    .to_vec();
                Ok((
                    public,
                    PendingEphemeral::Memory(Cell::new(Some(MemoryKey::Fresh(private)))),
                ))
            }
        }
    }
}

impl PendingEphemeral {
    /// A token key pair no longer needed if the running exchange commits (the first
    /// ClientHello's, after a HelloRetryRequest): a planned module recycle need not wait for
    /// it (token/pool/recycle.rs). Until then it stays usable unless the module is recycled.
    pub fn not_needed_by_recycle(&self) {
        if let Self::Token(eph) = self {
            eph.set_in_use(false);
        }
    }

    /// The (EC)DHE shared secret with the server's public value. A refused server share
    /// leaves the key pair as it was, so that a refused c_server_hello changes nothing.
    /// Blocking (may call the token).
    pub fn agree(
        &self,
        token: Option<&Token>,
        group: NamedGroup,
        peer: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
        check_peer_format(group, peer)?;
        match self {
            Self::Token(eph) => {
                let token = token.ok_or_else(|| ServiceError::Internal("no token".into()))?;
                Ok(token.derive_ephemeral_keep(eph, peer)?)
            }
            Self::Memory(cell) => {
                // Every way ring's agreement can refuse the peer is checked before the
                // single-use key is taken.
                crate::token::validate_peer_key(group, peer)?;
                let alg = ring_alg(group)?;
                match cell.take() {
                    None => Err(ServiceError::Internal("no memory key pair".into())),
                    Some(MemoryKey::Fresh(private)) => {
                        let shared = agreement::agree_ephemeral(
                            private,
                            &agreement::UnparsedPublicKey::new(alg, peer),
                            |s| Zeroizing::new(s.to_vec()),
                        )
                        .map_err(|_| {
                            ServiceError::Internal("ECDH failed on a validated key".into())
                        })?;
                        cell.set(Some(MemoryKey::Agreed {
                            peer: peer.to_vec(),
                            shared: shared.clone(),
                        }));
                        Ok(shared)
                    }
                    Some(MemoryKey::Agreed {
                        peer: agreed,
                        shared,
                    }) => {
                        let same = agreed == peer;
                        let out = same.then(|| shared.clone());
                        cell.set(Some(MemoryKey::Agreed {
                            peer: agreed,
                            shared,
                        }));
                        out.ok_or_else(|| {
                            invalid_ephemeral(
                                "the CS's key share was already agreed with another server share",
                            )
                        })
                    }
                }
            }
            #[cfg(feature = "test-vectors")]
            Self::Injected(k) => injected_agree(k, peer),
        }
    }
}

fn ring_alg(group: NamedGroup) -> Result<&'static agreement::Algorithm, ServiceError> {
    match group {
        NamedGroup::X25519 => Ok(&agreement::X25519),
        NamedGroup::Secp256r1 => Ok(&agreement::ECDH_P256),
        NamedGroup::Secp384r1 => Ok(&agreement::ECDH_P384),
        other => Err(invalid_ephemeral(format!(
            "group {other:?} is not supported"
        ))),
    }
}

/// RFC 8446 §4.2.8.2: NIST curve shares are uncompressed points; X25519 shares are 32 bytes.
fn check_peer_format(group: NamedGroup, peer: &[u8]) -> Result<(), ServiceError> {
    let ok = match group {
        NamedGroup::X25519 => peer.len() == 32,
        NamedGroup::Secp256r1 => peer.len() == 65 && peer[0] == 4,
        NamedGroup::Secp384r1 => peer.len() == 97 && peer[0] == 4,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid_ephemeral(format!(
            "the server's {} key share has a wrong length or format",
            group.name()
        )))
    }
}

#[cfg(feature = "test-vectors")]
fn injected_public(k: &InjectedKey) -> Result<Vec<u8>, ServiceError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let bad = || invalid_ephemeral("injected test-vector key is invalid");
    match k.group {
        NamedGroup::X25519 => {
            let bytes: [u8; 32] = k.private.as_slice().try_into().map_err(|_| bad())?;
            let secret = x25519_dalek::StaticSecret::from(bytes);
            Ok(x25519_dalek::PublicKey::from(&secret).as_bytes().to_vec())
        }
        NamedGroup::Secp256r1 => {
            let sk = p256::SecretKey::from_slice(&k.private).map_err(|_| bad())?;
            Ok(sk.public_key().to_encoded_point(false).as_bytes().to_vec())
        }
        NamedGroup::Secp384r1 => {
            let sk = p384::SecretKey::from_slice(&k.private).map_err(|_| bad())?;
            Ok(sk.public_key().to_encoded_point(false).as_bytes().to_vec())
        }
        _ => Err(bad()),
    }
}

#[cfg(feature = "test-vectors")]
fn injected_agree(k: &InjectedKey, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, ServiceError> {
    let bad_peer = || invalid_ephemeral("the server's key share is not a valid point");
    let bad = || invalid_ephemeral("injected test-vector key is invalid");
    match k.group {
        NamedGroup::X25519 => {
            let bytes: [u8; 32] = k.private.as_slice().try_into().map_err(|_| bad())?;
            let secret = x25519_dalek::StaticSecret::from(bytes);
            let peer: [u8; 32] = peer.try_into().map_err(|_| bad_peer())?;
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
            Ok(Zeroizing::new(shared.as_bytes().to_vec()))
        }
        NamedGroup::Secp256r1 => {
            let sk = p256::SecretKey::from_slice(&k.private).map_err(|_| bad())?;
            let pk = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| bad_peer())?;
            let shared = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
            Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
        }
        NamedGroup::Secp384r1 => {
            let sk = p384::SecretKey::from_slice(&k.private).map_err(|_| bad())?;
            let pk = p384::PublicKey::from_sec1_bytes(peer).map_err(|_| bad_peer())?;
            let shared = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
            Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> EphemeralSource {
        EphemeralSource::new(EphemeralBackendKind::Memory, None, false)
    }

    #[test]
    fn memory_ephemerals_agree_with_a_peer_for_every_group() {
        let rng = SystemRandom::new();
        for group in NamedGroup::SUPPORTED {
            let (public, pending) = memory().generate(group).unwrap();
            let alg = ring_alg(group).unwrap();
            let peer = agreement::EphemeralPrivateKey::generate(alg, &rng).unwrap();
            let peer_pub = peer.compute_public_key().unwrap().as_ref().to_vec();
            let ours = pending.agree(None, group, &peer_pub).unwrap();
            let theirs = agreement::agree_ephemeral(
                peer,
                &agreement::UnparsedPublicKey::new(alg, &public),
                |s| s.to_vec(),
            )
            .unwrap();
            assert_eq!(ours.as_slice(), theirs.as_slice(), "{group:?}");
        }
    }

    #[test]
    fn a_malformed_server_share_is_invalid_ephemeral() {
        let (_, pending) = memory().generate(NamedGroup::Secp256r1).unwrap();
        let err = pending
            .agree(None, NamedGroup::Secp256r1, &[4u8; 10])
            .unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::InvalidEphemeral);
        let (_, pending) = memory().generate(NamedGroup::Secp256r1).unwrap();
        let mut not_on_curve = vec![4u8];
        not_on_curve.extend_from_slice(&[1u8; 64]);
        let err = pending
            .agree(None, NamedGroup::Secp256r1, &not_on_curve)
            .unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::InvalidEphemeral);
    }

    #[cfg(feature = "test-vectors")]
    #[test]
    fn injection_is_refused_outside_test_vector_mode() {
        assert!(memory().inject(NamedGroup::X25519, &[1u8; 32]).is_err());
    }

    #[cfg(feature = "test-vectors")]
    #[test]
    fn injected_x25519_key_gives_rfc8448_public_key_and_shared_secret() {
        // RFC 8448 §3: client and server ephemeral keys and the shared secret.
        let src = EphemeralSource::new(EphemeralBackendKind::Memory, None, true);
        let private =
            hex::decode("49af42ba7f7994852d713ef2784bcbcaa7911de26adc5642cb634540e7ea5005")
                .unwrap();
        src.inject(NamedGroup::X25519, &private).unwrap();
        let (public, pending) = src.generate(NamedGroup::X25519).unwrap();
        assert_eq!(
            hex::encode(&public),
            "99381de560e4bd43d23d8e435a7dbafeb3c06e51c13cae4d5413691e529aaf2c"
        );
        let server_pub =
            hex::decode("c9828876112095fe66762bdbf7c672e156d6cc253b833df1dd69b1b04e751f0f")
                .unwrap();
        let shared = pending
            .agree(None, NamedGroup::X25519, &server_pub)
            .unwrap();
        assert_eq!(
            hex::encode(shared.as_slice()),
            "8bd4054fb55b9d63fdfbacf9f04b9f0d35e6d63f537563efd46272900f89492d"
        );
    }
}
