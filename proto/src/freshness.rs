//! The ClientHello.random of LURK (draft-mglt-lurk-tls13 §3, docs/design.md §3 and §4.3).
//!
//! The engine never chooses the random the Crypto Service derives its secrets over: it sends
//! its own random, and the CS puts `H(engine_random || "tls13 pfs clt")` (truncated to 32 bytes)
//! in the ClientHello. A compromised engine then cannot replay a recorded handshake to re-derive
//! its secrets, nor use the CS as a signing oracle for another transcript.

use std::fmt;
use std::str::FromStr;

use ring::digest;

use crate::pb;

/// The label the draft appends to the engine's random before hashing.
pub const DRAFT_CLIENT_LABEL: &[u8] = b"tls13 pfs clt";

/// Length of ClientHello.random (RFC 8446 §4.1.2).
pub const RANDOM_LEN: usize = 32;

/// Which formula the freshness function follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FreshnessMode {
    /// The draft's: H(engine_random || "tls13 pfs clt").
    #[default]
    Draft,
    /// pylurk 0.0.3's, for interoperability with it: H(engine_random), no label.
    Pylurk,
}

impl FreshnessMode {
    /// The mode's name in the configuration (`freshness = "draft" | "pylurk"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Pylurk => "pylurk",
        }
    }
}

impl fmt::Display for FreshnessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A freshness mode name that is neither "draft" nor "pylurk".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownFreshnessMode(pub String);

impl fmt::Display for UnknownFreshnessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown freshness mode {:?} (expected \"draft\" or \"pylurk\")",
            self.0
        )
    }
}

impl std::error::Error for UnknownFreshnessMode {}

impl FromStr for FreshnessMode {
    type Err = UnknownFreshnessMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "draft" => Ok(Self::Draft),
            "pylurk" => Ok(Self::Pylurk),
            _ => Err(UnknownFreshnessMode(s.to_owned())),
        }
    }
}

/// The hash of a freshness function, or None for `null` (which has none).
pub fn freshness_digest(freshness: pb::Freshness) -> Option<&'static digest::Algorithm> {
    match freshness {
        pb::Freshness::Sha256 => Some(&digest::SHA256),
        pb::Freshness::Sha384 => Some(&digest::SHA384),
        pb::Freshness::Sha512 => Some(&digest::SHA512),
        pb::Freshness::Null => None,
    }
}

/// The ClientHello.random both sides put on the wire, from the engine's random:
/// the first 32 bytes of H(engine_random || "tls13 pfs clt") in `Draft` mode, of
/// H(engine_random) in `Pylurk` mode, H being SHA-256/384/512 as `freshness` says. `Null`
/// returns the engine's random unchanged: it exists for test vectors only, and the caller
/// decides whether it is allowed (docs/design.md §4.3).
pub fn client_random(
    freshness: pb::Freshness,
    mode: FreshnessMode,
    engine_random: &[u8; RANDOM_LEN],
) -> [u8; RANDOM_LEN] {
    let Some(algorithm) = freshness_digest(freshness) else {
        return *engine_random;
    };
    let mut context = digest::Context::new(algorithm);
    context.update(engine_random);
    if mode == FreshnessMode::Draft {
        context.update(DRAFT_CLIENT_LABEL);
    }
    let digest = context.finish();
    let mut random = [0u8; RANDOM_LEN];
    // SHA-256/384/512 outputs are all at least 32 bytes.
    random.copy_from_slice(&digest.as_ref()[..RANDOM_LEN]);
    random
}

/// Decodes a freshness number from a request (None for a number the contract does not define).
pub fn freshness_from_wire(value: i32) -> Option<pb::Freshness> {
    pb::Freshness::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_random() -> [u8; RANDOM_LEN] {
        std::array::from_fn(|i| i as u8)
    }

    fn first_32(algorithm: &'static digest::Algorithm, parts: &[&[u8]]) -> [u8; RANDOM_LEN] {
        let mut context = digest::Context::new(algorithm);
        for part in parts {
            context.update(part);
        }
        let mut out = [0u8; RANDOM_LEN];
        out.copy_from_slice(&context.finish().as_ref()[..RANDOM_LEN]);
        out
    }

    #[test]
    fn draft_and_pylurk_match_their_formulas() {
        let random = engine_random();
        for (freshness, algorithm) in [
            (pb::Freshness::Sha256, &digest::SHA256),
            (pb::Freshness::Sha384, &digest::SHA384),
            (pb::Freshness::Sha512, &digest::SHA512),
        ] {
            let draft = client_random(freshness, FreshnessMode::Draft, &random);
            let pylurk = client_random(freshness, FreshnessMode::Pylurk, &random);
            assert_eq!(draft, first_32(algorithm, &[&random, b"tls13 pfs clt"]));
            assert_eq!(pylurk, first_32(algorithm, &[&random]));
            assert_ne!(draft, pylurk);
            assert_ne!(draft, random);
        }
    }

    /// Values from Python's hashlib, for engine_random = 00 01 .. 1f.
    #[test]
    fn known_answers() {
        let random = engine_random();
        let known = [
            (
                pb::Freshness::Sha256,
                FreshnessMode::Draft,
                "678327fe10b52477c6473e53dc163f8f62816e84890a201172547c5d4284dee7",
            ),
            (
                pb::Freshness::Sha384,
                FreshnessMode::Draft,
                "a9b8e0f102d9df89481f545e0fd57639d3b09bf862380994f81d73b8c4243466",
            ),
            (
                pb::Freshness::Sha512,
                FreshnessMode::Pylurk,
                "3d94eea49c580aef816935762be049559d6d1440dede12e6a125f1841fff8e6f",
            ),
        ];
        for (freshness, mode, expected) in known {
            assert_eq!(
                hex::encode(client_random(freshness, mode, &random)),
                expected,
                "{freshness:?} {mode}"
            );
        }
    }

    #[test]
    fn null_keeps_the_engine_random() {
        let random = engine_random();
        for mode in [FreshnessMode::Draft, FreshnessMode::Pylurk] {
            assert_eq!(client_random(pb::Freshness::Null, mode, &random), random);
        }
        assert!(freshness_digest(pb::Freshness::Null).is_none());
    }

    #[test]
    fn mode_names_and_wire_numbers() {
        assert_eq!(FreshnessMode::default(), FreshnessMode::Draft);
        assert_eq!("PyLurk".parse(), Ok(FreshnessMode::Pylurk));
        assert_eq!("draft".parse(), Ok(FreshnessMode::Draft));
        assert!("sha256".parse::<FreshnessMode>().is_err());
        assert_eq!(FreshnessMode::Pylurk.to_string(), "pylurk");
        assert_eq!(freshness_from_wire(0), Some(pb::Freshness::Sha256));
        assert_eq!(freshness_from_wire(2), Some(pb::Freshness::Sha512));
        assert_eq!(freshness_from_wire(255), Some(pb::Freshness::Null));
        assert_eq!(freshness_from_wire(3), None);
    }
}
