//! (EC)DHE key shares the engine makes itself (LURK ephemeral method e_generated), with ring.
//! The private key is ring's ephemeral key: used once, never exported, wiped by ring when it
//! is consumed or dropped.

use std::fmt;

use lurk_proto::wire::NamedGroup;
use ring::agreement;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::error::{Error, PeerMisbehaved};

/// One key pair for a key_share entry.
pub struct EngineShare {
    group: NamedGroup,
    private: agreement::EphemeralPrivateKey,
    public: Vec<u8>,
}

fn algorithm(group: NamedGroup) -> Option<&'static agreement::Algorithm> {
    match group {
        NamedGroup::X25519 => Some(&agreement::X25519),
        NamedGroup::Secp256r1 => Some(&agreement::ECDH_P256),
        NamedGroup::Secp384r1 => Some(&agreement::ECDH_P384),
        _ => None,
    }
}

impl EngineShare {
    /// A fresh key pair for `group` (x25519, secp256r1, secp384r1).
    pub fn generate(group: NamedGroup) -> Result<Self, Error> {
        let alg = algorithm(group)
            .ok_or_else(|| Error::general(format!("group {} is not supported", group.name())))?;
        let rng = SystemRandom::new();
        let private = agreement::EphemeralPrivateKey::generate(alg, &rng)
            .map_err(|_| Error::general("key pair generation failed"))?;
        let public = private
            .compute_public_key()
            .map_err(|_| Error::general("public key computation failed"))?
            .as_ref()
            .to_vec();
        Ok(Self {
            group,
            private,
            public,
        })
    }

    /// The group.
    pub fn group(&self) -> NamedGroup {
        self.group
    }

    /// The key_exchange value of the key_share entry (X25519: 32 bytes; NIST curves: the
    /// uncompressed point, RFC 8446 §4.2.8.2).
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret with the server's key_exchange. ring checks the point is on the
    /// curve and refuses an all-zero X25519 result (RFC 8446 §7.4.2).
    pub fn agree(self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let alg = algorithm(self.group).ok_or(PeerMisbehaved::InvalidKeyShare)?;
        if Some(peer.len()) != self.group.public_key_len() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        agreement::agree_ephemeral(
            self.private,
            &agreement::UnparsedPublicKey::new(alg, peer),
            |s| Zeroizing::new(s.to_vec()),
        )
        .map_err(|_| PeerMisbehaved::InvalidKeyShare.into())
    }
}

impl fmt::Debug for EngineShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineShare")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_for_every_group() {
        for g in NamedGroup::SUPPORTED {
            let a = EngineShare::generate(g).unwrap();
            let b = EngineShare::generate(g).unwrap();
            assert_eq!(Some(a.public().len()), g.public_key_len());
            let (pa, pb) = (a.public().to_vec(), b.public().to_vec());
            let s1 = a.agree(&pb).unwrap();
            let s2 = b.agree(&pa).unwrap();
            assert_eq!(*s1, *s2);
        }
    }

    #[test]
    fn bad_peer_keys_are_refused() {
        let a = EngineShare::generate(NamedGroup::X25519).unwrap();
        assert!(a.agree(&[0u8; 32]).is_err(), "all-zero X25519 point");
        let b = EngineShare::generate(NamedGroup::Secp256r1).unwrap();
        assert!(b.agree(&[4u8; 65]).is_err(), "not on the curve");
        let c = EngineShare::generate(NamedGroup::Secp384r1).unwrap();
        assert!(c.agree(&[4u8; 10]).is_err(), "wrong length");
        assert!(EngineShare::generate(NamedGroup::X448).is_err());
    }
}
