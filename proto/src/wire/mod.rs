//! TLS 1.3 wire types (RFC 8446 §4), read from and spliced into exact wire bytes.
pub mod enums;

pub use enums::*;

use std::fmt;

/// A message that does not parse, or breaks a structural rule of RFC 8446.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended inside the named structure.
    Truncated(&'static str),
    /// Bytes were left after the named structure.
    TrailingBytes(&'static str),
    /// A structural rule was broken (the text names it).
    Invalid(String),
    /// A handshake message of another type was expected.
    UnexpectedMessage { expected: &'static str, got: u8 },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(what) => write!(f, "truncated {what}"),
            Self::TrailingBytes(what) => write!(f, "trailing bytes after {what}"),
            Self::Invalid(why) => write!(f, "{why}"),
            Self::UnexpectedMessage { expected, got } => {
                write!(f, "expected {expected}, got handshake type {got}")
            }
        }
    }
}

impl std::error::Error for WireError {}
