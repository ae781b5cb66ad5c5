//! (EC)DHE in the token (docs/design.md §4.4): key pairs generated as session objects (never
//! stored, private half sensitive and derive-only), CKM_ECDH1_DERIVE with CKD_NULL, and
//! every object destroyed as soon as the shared secret exists.
//!
//! x25519: PKCS#11 3.0 names CKM_EC_MONTGOMERY_KEY_PAIR_GEN, which SoftHSM 2.6 lacks. Its
//! Edwards generator given the X25519 curve OID (1.3.101.110) makes an X25519 key pair that
//! CKM_ECDH1_DERIVE uses correctly (checked against ring in the tests). The standard
//! mechanism is tried first; the first `CKR_MECHANISM_INVALID` switches to the Edwards route
//! for the rest of the process.
//!
//! Session objects die with the session that created them: a key pair remembers its
//! session and module generation (token/pool.rs) and is never used, nor its handles
//! destroyed, once that session was dropped after a failure.
//!
//! Reading the shared secret: SoftHSM returns CKA_VALUE only for a derived key created with
//! `sensitive=false, extractable=true`; that key is a session object that lives for the
//! microseconds between C_DeriveKey and its C_DestroyObject, in this function.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use lurk_proto::wire::NamedGroup;
use zeroize::Zeroizing;

use super::der::{self, EcCurve};
use super::pool::PooledSession;
use super::Token;
use crate::error::TokenError;
use crate::telemetry::TokenOp;

const ROUTE_MONTGOMERY: u8 = 0;
const ROUTE_EDWARDS: u8 = 1;

/// Which generator makes x25519 key pairs on this token.
pub(crate) struct X25519Route(AtomicU8);

impl X25519Route {
    pub(crate) fn from_mechanisms(mechs: &[MechanismType]) -> Self {
        let route = if mechs.contains(&MechanismType::ECC_MONTGOMERY_KEY_PAIR_GEN)
            || !mechs.contains(&MechanismType::ECC_EDWARDS_KEY_PAIR_GEN)
        {
            ROUTE_MONTGOMERY
        } else {
            ROUTE_EDWARDS
        };
        Self(AtomicU8::new(route))
    }
}

/// An (EC)DHE key pair held in the token as session objects. Consumed by
/// [`Token::derive_ephemeral`]; if dropped unused (the LURK session expired or failed), its
/// `Drop` destroys the objects, which takes a pooled session: a short blocking call (drop it
/// from blocking context, or accept a wait of one token call when the pool is busy).
pub struct TokenEphemeral {
    token: Token,
    group: NamedGroup,
    public: Vec<u8>,
    private_handle: ObjectHandle,
    public_handle: ObjectHandle,
    /// The module generation and pool session the objects were created in.
    generation: u64,
    creator: u64,
    /// Session faults the pool had seen when the pair was made (`pool::HandleEpoch`).
    faults: u64,
    live: bool,
    /// Counted as in use by the planned module recycle (token/pool/recycle.rs): handed out
    /// and of the current generation.
    in_use: AtomicBool,
}

impl std::fmt::Debug for TokenEphemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEphemeral")
            .field("group", &self.group)
            .field("public", &hex::encode(&self.public))
            .finish_non_exhaustive()
    }
}

impl TokenEphemeral {
    /// The key pair's group.
    pub fn group(&self) -> NamedGroup {
        self.group
    }

    /// The public key as a TLS key_share carries it: `0x04‖X‖Y` for the NIST curves, the
    /// 32-byte u-coordinate for x25519.
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// Counts this key pair as in use (handed out to an exchange) or not (kept ready in the
    /// ephemeral pool, or gone) for the planned module recycle (token/pool/recycle.rs).
    /// Whether it is in use now: never for a key pair of an earlier module generation.
    pub(crate) fn set_in_use(&self, in_use: bool) -> bool {
        // One exchange at a time holds a key pair (its LURK session is locked).
        if self.in_use.load(Ordering::Relaxed) != in_use {
            let counted = self.token.inner.pool.count_in_use(self.generation, in_use);
            self.in_use.store(in_use && counted, Ordering::Relaxed);
        }
        self.in_use.load(Ordering::Relaxed)
    }

    /// Destroys the key pair now (what `Drop` does, with the error reported).
    pub fn destroy(mut self) -> Result<(), TokenError> {
        self.live = false;
        let session = self.token.session_for(TokenOp::DESTROY)?;
        if !session.is_live(self.generation, self.creator) {
            // Gone with the session that created them.
            return Ok(());
        }
        destroy_all(&session, &[self.private_handle, self.public_handle])
    }
}

impl Drop for TokenEphemeral {
    fn drop(&mut self) {
        if self.live {
            let result = self.token.session_for(TokenOp::DESTROY).and_then(|s| {
                if s.is_live(self.generation, self.creator) {
                    destroy_all(&s, &[self.private_handle, self.public_handle])
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, group = self.group.name(), "could not destroy an unused token ephemeral");
            }
        }
        // After the destroy: a recycle waiting for this pair may now run.
        self.set_in_use(false);
    }
}

/// Destroys every object, reporting the first failure.
fn destroy_all(session: &PooledSession<'_>, handles: &[ObjectHandle]) -> Result<(), TokenError> {
    let mut first = Ok(());
    for &h in handles {
        if let Err(e) = session.destroy_object(h) {
            let e = session.error("C_DestroyObject", e);
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// Curve parameters and sizes of a supported group.
struct GroupParams {
    curve: EcCurve,
    public_len: usize,
    secret_len: usize,
}

fn params(group: NamedGroup) -> Result<GroupParams, TokenError> {
    match group {
        NamedGroup::Secp256r1 => Ok(GroupParams {
            curve: EcCurve::P256,
            public_len: 65,
            secret_len: 32,
        }),
        NamedGroup::Secp384r1 => Ok(GroupParams {
            curve: EcCurve::P384,
            public_len: 97,
            secret_len: 48,
        }),
        NamedGroup::X25519 => Ok(GroupParams {
            curve: EcCurve::X25519,
            public_len: 32,
            secret_len: 32,
        }),
        other => Err(TokenError::Unsupported(format!(
            "(EC)DHE group {} in the token",
            other.name()
        ))),
    }
}

/// Every check a peer key_share value must pass before an agreement: the encoding, the point
/// on the curve (RFC 8446 §4.2.8.2) and, for x25519, not of small order (RFC 8446 §7.4.2).
pub fn validate_peer_key(group: NamedGroup, peer: &[u8]) -> Result<(), TokenError> {
    // validate_peer refuses small-order x25519 values too.
    validate_peer(group, peer)
}

fn validate_peer(group: NamedGroup, peer: &[u8]) -> Result<(), TokenError> {
    let ok = match group {
        NamedGroup::Secp256r1 => {
            peer.len() == 65 && peer[0] == 4 && p256::PublicKey::from_sec1_bytes(peer).is_ok()
        }
        NamedGroup::Secp384r1 => {
            peer.len() == 97 && peer[0] == 4 && p384::PublicKey::from_sec1_bytes(peer).is_ok()
        }
        // Refused here, before the token sees it: SoftHSM answers a small-order key with
        // CKR_GENERAL_ERROR, which would read as a device fault (token/pool.rs).
        NamedGroup::X25519 => peer.len() == 32 && !x25519_small_order(peer),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::InvalidPeerKey(group.name()))
    }
}

impl Token {
    /// Generates an (EC)DHE key pair for `group` as session objects.
    pub fn generate_ephemeral(&self, group: NamedGroup) -> Result<TokenEphemeral, TokenError> {
        let p = params(group)?;
        let _admitted = self.admit_ephemerals()?;
        let session = self.session_for(TokenOp::generate_key_pair(group))?;
        let (public_handle, private_handle) = match group {
            NamedGroup::X25519 => self.generate_x25519(&session)?,
            _ => generate(&session, &Mechanism::EccKeyPairGen, KeyType::EC, p.curve)
                .map_err(session.fail("C_GenerateKeyPair"))?,
        };
        session.objects_made(2);
        let read = session
            .get_attributes(public_handle, &[AttributeType::EcPoint])
            .map_err(session.fail("C_GetAttributeValue"))
            .and_then(|attrs| {
                attrs
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcPoint(p) => Some(p),
                        _ => None,
                    })
                    .ok_or_else(|| TokenError::Other("generated key has no CKA_EC_POINT".into()))
            })
            .and_then(|point| der::unwrap_ec_point(&point, p.public_len));
        let public = match read {
            Ok(p) => p,
            Err(e) => {
                let _ = destroy_all(&session, &[private_handle, public_handle]);
                return Err(e);
            }
        };
        let (generation, creator) = (session.generation(), session.id());
        let faults = session.epoch().1;
        // Counted while the session is out: no recycle can start a new generation meanwhile.
        let in_use = self.inner.pool.count_in_use(generation, true);
        drop(session);
        Ok(TokenEphemeral {
            token: self.clone(),
            group,
            public,
            private_handle,
            public_handle,
            generation,
            creator,
            faults,
            live: true,
            in_use: AtomicBool::new(in_use),
        })
    }

    fn generate_x25519(
        &self,
        session: &PooledSession<'_>,
    ) -> Result<(ObjectHandle, ObjectHandle), TokenError> {
        let route = &self.inner.x25519.0;
        if route.load(Ordering::Relaxed) == ROUTE_MONTGOMERY {
            match generate(
                session,
                &Mechanism::EccMontgomeryKeyPairGen,
                KeyType::EC_MONTGOMERY,
                EcCurve::X25519,
            ) {
                Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {
                    tracing::info!(
                        "token lacks CKM_EC_MONTGOMERY_KEY_PAIR_GEN; x25519 via the Edwards generator"
                    );
                    route.store(ROUTE_EDWARDS, Ordering::Relaxed);
                }
                other => return other.map_err(session.fail("C_GenerateKeyPair")),
            }
        }
        generate(
            session,
            &Mechanism::EccEdwardsKeyPairGen,
            KeyType::EC_EDWARDS,
            EcCurve::X25519,
        )
        .map_err(session.fail("C_GenerateKeyPair"))
    }

    /// Computes the shared secret with the peer's key_share value and destroys the key pair
    /// and the derived object before returning (also on failure).
    pub fn derive_ephemeral(
        &self,
        mut eph: TokenEphemeral,
        peer: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let result = self.derive_ephemeral_keep(&eph, peer);
        let session = self.session_for(TokenOp::DESTROY)?;
        // From here on this function destroys the objects, not Drop.
        eph.live = false;
        // Objects of a lost session died with it; their handles may name new objects now.
        let destroyed = if session.is_live(eph.generation, eph.creator) {
            destroy_all(&session, &[eph.private_handle, eph.public_handle])
        } else {
            Ok(())
        };
        let secret = result?;
        destroyed?;
        Ok(secret)
    }

    /// Computes the shared secret with the peer's key_share value; the key pair stays (it is
    /// destroyed when `eph` is dropped), so that a refused peer key leaves it usable.
    pub fn derive_ephemeral_keep(
        &self,
        eph: &TokenEphemeral,
        peer: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let group = eph.group;
        let session = self.session_for(TokenOp::derive(group))?;
        if !session.is_live(eph.generation, eph.creator) {
            return Err(TokenError::Unavailable(
                if session.generation() != eph.generation {
                    "the PKCS#11 module was re-initialised (a fault, or a planned recycle) since \
                     this (EC)DHE key pair was made"
                } else {
                    "the token session holding this (EC)DHE key pair was lost"
                }
                .into(),
            ));
        }
        let result = validate_peer(group, peer)
            .and_then(|()| params(group))
            .and_then(|p| derive(&session, eph.private_handle, peer, p.secret_len));
        let secret = result?;
        // RFC 8446 §7.4.2: an all-zero x25519 result means a small-order peer key.
        if secret.iter().all(|b| *b == 0) {
            return Err(TokenError::InvalidPeerKey(group.name()));
        }
        Ok(secret)
    }

    /// Whether the token session that created `eph` is still open (else its objects died with
    /// it). Reads memory only.
    pub(crate) fn ephemeral_is_live(&self, eph: &TokenEphemeral) -> bool {
        self.inner.pool.session_is_open(eph.generation, eph.creator)
    }

    /// Whether no session fault and no re-initialisation happened since `eph` was made. A
    /// logout behind the pool's back (a session fault) destroys private session objects even
    /// in sessions that a later login brings back. Reads memory only.
    pub(crate) fn ephemeral_is_unfaulted(&self, eph: &TokenEphemeral) -> bool {
        self.inner.pool.current_epoch() == (eph.generation, eph.faults)
    }

    /// The module generation and session faults now (`pool::HandleEpoch`): a key pair made
    /// under another is dead. Reads memory only.
    pub(crate) fn handle_epoch(&self) -> (u64, u64) {
        self.inner.pool.current_epoch()
    }

    /// Session objects of this token visible to us (tests: nothing may leak).
    #[cfg(test)]
    pub(crate) fn count_session_objects(&self) -> usize {
        self.session()
            .unwrap()
            .find_objects(&[Attribute::Token(false)])
            .unwrap()
            .len()
    }
}

fn generate(
    session: &PooledSession<'_>,
    mechanism: &Mechanism<'_>,
    key_type: KeyType,
    curve: EcCurve,
) -> Result<(ObjectHandle, ObjectHandle), CkError> {
    let public = [
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::KeyType(key_type),
        Attribute::EcParams(curve.ec_params()),
    ];
    let private = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::KeyType(key_type),
        Attribute::Derive(true),
        Attribute::Sign(false),
    ];
    session.generate_key_pair(mechanism, &public, &private)
}

/// The points of small order on Curve25519 as u-coordinates with the top bit cleared
/// (RFC 7748 §5 masks it): 0, 1, the two points of order 8, p − 1, and p and p + 1 (the
/// only non-canonical encodings below 2^255 of any of them: of 0 and 1). Every other u is
/// of order ≥ ℓ, so X25519 with it never gives the all-zero secret RFC 8446 §7.4.2 forbids.
/// The list libsodium's `has_small_order` checks against; each entry is checked against a
/// real scalar multiplication in the tests.
const X25519_SMALL_ORDER: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    p_plus(-1),
    p_plus(0),
    p_plus(1),
];

/// The little-endian encoding of p + d, p = 2^255 − 19, for a small d.
const fn p_plus(d: i8) -> [u8; 32] {
    let mut b = [0xff; 32];
    b[0] = (0xed_i16 + d as i16) as u8;
    b[31] = 0x7f;
    b
}

/// True when `u` has small order (a table look-up: the peer's value is public, so no
/// constant-time comparison is needed, and no scalar multiplication is spent on it).
fn x25519_small_order(u: &[u8]) -> bool {
    let Ok(mut u) = <[u8; 32]>::try_from(u) else {
        return false;
    };
    u[31] &= 0x7f;
    X25519_SMALL_ORDER.contains(&u)
}

/// CKM_ECDH1_DERIVE with CKD_NULL into a readable session secret, read, then destroyed.
fn derive(
    session: &PooledSession<'_>,
    private: ObjectHandle,
    peer: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    let mechanism = Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), peer));
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen((len as u64).into()),
    ];
    let derived = session
        .derive_key(&mechanism, private, &template)
        .map_err(session.fail("C_DeriveKey"))?;
    session.objects_made(1);
    let value = session
        .get_attributes(derived, &[AttributeType::Value])
        .map_err(session.fail("C_GetAttributeValue"))
        .map(|attrs| {
            attrs.into_iter().find_map(|a| match a {
                // Moved, not copied, into the zeroizing buffer. (cryptoki's own transfer
                // buffer is freed without being wiped; no safe way around that.)
                Attribute::Value(v) => Some(Zeroizing::new(v)),
                _ => None,
            })
        });
    let destroyed = session
        .destroy_object(derived)
        .map_err(session.fail("C_DestroyObject"));
    let value = value?.ok_or_else(|| {
        TokenError::Other("the derived secret is not readable (CKA_VALUE)".to_owned())
    })?;
    destroyed?;
    if value.len() != len {
        return Err(TokenError::Other(format!(
            "derived secret of {} bytes, expected {len}",
            value.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;
    use ring::agreement;
    use ring::rand::{SecureRandom, SystemRandom};

    /// The table holds exactly the values X25519 turns into the all-zero secret: each entry
    /// (with the top bit clear or set) gives zero with random scalars and is refused by
    /// ring's agreement, and random values are not in it and give a non-zero secret.
    #[test]
    fn x25519_small_order_table_matches_scalar_multiplication() {
        let rng = SystemRandom::new();
        let agree = |u: &[u8]| {
            let k = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
            agreement::agree_ephemeral(
                k,
                &agreement::UnparsedPublicKey::new(&agreement::X25519, u),
                |_| (),
            )
            .is_ok()
        };
        for entry in X25519_SMALL_ORDER {
            for top in [0u8, 0x80] {
                let mut u = entry;
                u[31] |= top;
                assert!(x25519_small_order(&u), "{u:02x?}");
                assert!(!agree(&u), "ring agreed with {u:02x?}");
                for _ in 0..4 {
                    let mut k = [0u8; 32];
                    rng.fill(&mut k).unwrap();
                    assert_eq!(x25519_dalek::x25519(k, u), [0u8; 32], "{u:02x?}");
                }
                assert!(validate_peer_key(NamedGroup::X25519, &u).is_err());
            }
        }
        for _ in 0..2000 {
            let mut u = [0u8; 32];
            rng.fill(&mut u).unwrap();
            assert!(!x25519_small_order(&u), "{u:02x?}");
            assert_ne!(x25519_dalek::x25519([0x42; 32], u), [0u8; 32]);
        }
        for u in [[0u8; 31].as_slice(), [0u8; 33].as_slice()] {
            assert!(validate_peer_key(NamedGroup::X25519, u).is_err());
        }
    }

    fn ring_alg(group: NamedGroup) -> &'static agreement::Algorithm {
        match group {
            NamedGroup::X25519 => &agreement::X25519,
            NamedGroup::Secp256r1 => &agreement::ECDH_P256,
            NamedGroup::Secp384r1 => &agreement::ECDH_P384,
            _ => unreachable!(),
        }
    }

    /// Agrees with a fresh ring key on `eph`'s group and checks the token gets ring's secret.
    fn assert_derive_matches_ring(token: &Token, eph: TokenEphemeral, rng: &SystemRandom) {
        let group = eph.group();
        let alg = ring_alg(group);
        let peer = agreement::EphemeralPrivateKey::generate(alg, rng).unwrap();
        let peer_pub = peer.compute_public_key().unwrap();
        let ours = agreement::UnparsedPublicKey::new(alg, eph.public_key().to_vec());
        let expected = agreement::agree_ephemeral(peer, &ours, |s| s.to_vec()).unwrap();
        let got = token.derive_ephemeral(eph, peer_pub.as_ref()).unwrap();
        assert_eq!(&got[..], &expected[..], "{group:?}");
    }

    #[test]
    fn ecdh_matches_ring_for_every_group() {
        let (token, _) = testutil::new_token("ecdh-ring");
        let rng = SystemRandom::new();
        for group in NamedGroup::SUPPORTED {
            for _ in 0..3 {
                let eph = token.generate_ephemeral(group).unwrap();
                assert_eq!(eph.public_key().len(), group.public_key_len().unwrap());
                assert_derive_matches_ring(&token, eph, &rng);
            }
        }
        assert_eq!(token.count_session_objects(), 0);
    }

    #[test]
    fn objects_are_destroyed_after_derive_on_drop_and_on_bad_peer() {
        let (token, _) = testutil::new_token("eph-destroy");
        assert_eq!(token.count_session_objects(), 0);
        let eph = token.generate_ephemeral(NamedGroup::Secp256r1).unwrap();
        let eph2 = token.generate_ephemeral(NamedGroup::X25519).unwrap();
        assert_eq!(token.count_session_objects(), 4);
        drop(eph2);
        assert_eq!(token.count_session_objects(), 2);
        // A bad peer key: refused, and the key pair is gone anyway.
        let err = token.derive_ephemeral(eph, &[4u8; 65]).unwrap_err();
        assert!(
            matches!(err, TokenError::InvalidPeerKey("secp256r1")),
            "{err}"
        );
        assert_eq!(token.count_session_objects(), 0);
        for (group, bad) in [
            (NamedGroup::X25519, vec![9u8; 31]),
            (NamedGroup::Secp384r1, vec![4u8; 65]),
            // Compressed points are not allowed in TLS 1.3 key shares.
            (NamedGroup::Secp256r1, {
                let mut v = vec![2u8];
                v.extend_from_slice(&[1u8; 32]);
                v
            }),
            // x25519 small-order points (u = 0, u = 1, u = p + 1 non-canonical) give an
            // all-zero secret.
            (NamedGroup::X25519, vec![0u8; 32]),
            (NamedGroup::X25519, {
                let mut v = vec![0u8; 32];
                v[0] = 1;
                v
            }),
            (NamedGroup::X25519, {
                let mut v = vec![0xffu8; 32];
                v[0] = 0xee;
                v[31] = 0x7f;
                v
            }),
        ] {
            let eph = token.generate_ephemeral(group).unwrap();
            let r = token.derive_ephemeral(eph, &bad);
            assert!(
                matches!(r, Err(TokenError::InvalidPeerKey(_))),
                "{group:?} {r:?}"
            );
        }
        // Refused before the token saw them: no engine can make the token look failed.
        assert!(token.healthy());
        let eph = token.generate_ephemeral(NamedGroup::Secp384r1).unwrap();
        eph.destroy().unwrap();
        assert_eq!(token.count_session_objects(), 0);
        assert!(matches!(
            token.generate_ephemeral(NamedGroup::X448),
            Err(TokenError::Unsupported(_))
        ));
    }

    #[test]
    fn derive_in_another_session_than_generate() {
        let (token, _) = testutil::new_token("eph-cross-session");
        let rng = SystemRandom::new();
        for group in NamedGroup::SUPPORTED {
            let eph = token.generate_ephemeral(group).unwrap();
            // Hold the session that generated the pair (the pool is LIFO): derive gets another.
            let held = token.session().unwrap();
            assert_derive_matches_ring(&token, eph, &rng);
            drop(held);
        }
        assert_eq!(token.count_session_objects(), 0);
    }

    #[test]
    fn token_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Token>();
        check::<TokenEphemeral>();
        check::<crate::token::SigningKey>();
    }

    #[test]
    fn ephemerals_in_parallel_across_pool_sessions() {
        let (token, _) = testutil::new_token("eph-threads");
        let rng = SystemRandom::new();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (token, rng) = (&token, &rng);
                s.spawn(move || {
                    let group = NamedGroup::SUPPORTED[t % 3];
                    for _ in 0..10 {
                        let eph = token.generate_ephemeral(group).unwrap();
                        let alg = ring_alg(group);
                        let peer = agreement::EphemeralPrivateKey::generate(alg, rng).unwrap();
                        let peer_pub = peer.compute_public_key().unwrap();
                        let ours =
                            agreement::UnparsedPublicKey::new(alg, eph.public_key().to_vec());
                        let expected =
                            agreement::agree_ephemeral(peer, &ours, |s| s.to_vec()).unwrap();
                        assert_eq!(
                            &token.derive_ephemeral(eph, peer_pub.as_ref()).unwrap()[..],
                            &expected[..]
                        );
                    }
                });
            }
        });
        assert_eq!(token.count_session_objects(), 0);
    }
}
