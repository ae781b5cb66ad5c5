//! The ClientHello.random of LURK (draft-mglt-lurk-tls13 §3, LURK.md §3 and §4.3).
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
/// decides whether it is allowed (LURK.md §4.3).
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
