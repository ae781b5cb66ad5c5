//! TLS 1.3 wire types (RFC 8446 §4), read from and spliced into exact wire bytes.
//!
//! - [`codec`]: [`Reader`] and the length-prefixed writers.
//! - [`handshake`]: the 4-byte handshake header, splitting a flight into messages.
//! - [`extensions`]: the extension list and the extensions TLS 1.3 clients meet.
//! - [`hello`]: ClientHello (view and the Crypto Service's splicing, `hello::client`), its
//!   builder for the engine ([`ClientHelloBuilder`], `hello::builder`), and the ServerHello /
//!   HelloRetryRequest view (`hello::server`).
//! - [`messages`]: the other handshake messages (views and encoders).
//! - [`retry`]: what the second ClientHello may change after a HelloRetryRequest.
//! - [`limits`]: the caps on sizes and counts every view enforces.
//!
//! Views borrow the input (zero-copy) and check the structural rules of RFC 8446 while
//! parsing ("parse, don't validate"); nothing here re-encodes a received message.
pub mod codec;
pub mod enums;
pub mod extensions;
pub mod handshake;
pub mod hello;
pub mod limits;
pub mod messages;
pub mod retry;

#[cfg(test)]
mod mutation_tests;
#[cfg(test)]
pub(crate) mod test_vectors;

pub use codec::Reader;
pub use enums::*;
pub use extensions::{
    Extension, ExtensionContext, KeyShareEntry, OfferedPsks, PskBinder, PskIdentity,
};
pub use handshake::{encode_handshake, split_handshake_messages, HandshakeMessage};
pub use hello::{
    binders_offset, complete_client_hello, encode_server_hello, set_binders, truncated_for_binders,
    ClientHello, ClientHelloBuilder, ServerHello,
};
pub use messages::{
    encode_certificate, encode_certificate_verify, encode_end_of_early_data, encode_finished,
    encode_key_update, message_hash, Certificate, CertificateEntry, CertificateRequest,
    CertificateVerify, EncryptedExtensions, EndOfEarlyData, Finished, KeyUpdate, NewSessionTicket,
};
pub use retry::check_second_client_hello;

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
    /// The same extension type appears twice in one message (RFC 8446 §4.2).
    DuplicateExtension { message: &'static str, typ: u16 },
    /// An extension RFC 8446 §4.2 does not allow in this message.
    ExtensionNotAllowed { message: &'static str, typ: u16 },
    /// pre_shared_key is not the last ClientHello extension (RFC 8446 §4.2.11).
    PreSharedKeyNotLast,
    /// The numbers of PSK identities and binders differ (RFC 8446 §4.2.11).
    BinderCountMismatch { identities: usize, binders: usize },
    /// A value does not fit its length prefix (encoding, or splicing a value in).
    TooLong(&'static str),
    /// A message or flight of `len` bytes, over its cap of `max` ([`limits`]).
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A list with more than `max` entries ([`limits`]).
    TooMany { what: &'static str, max: usize },
}

impl WireError {
    /// The alert RFC 8446 §6.2 prescribes for this error: decode_error for bytes that do not
    /// parse, illegal_parameter for well-formed values that break a rule.
    pub fn alert(&self) -> AlertDescription {
        match self {
            // §6.2 decode_error: "some field was out of the specified range or the length
            // of the message was incorrect".
            Self::Truncated(_)
            | Self::TrailingBytes(_)
            | Self::TooLong(_)
            | Self::TooLarge { .. }
            | Self::TooMany { .. } => AlertDescription::DecodeError,
            Self::UnexpectedMessage { .. } => AlertDescription::UnexpectedMessage,
            Self::Invalid(_)
            | Self::DuplicateExtension { .. }
            | Self::ExtensionNotAllowed { .. }
            | Self::PreSharedKeyNotLast
            | Self::BinderCountMismatch { .. } => AlertDescription::IllegalParameter,
        }
    }

    pub(crate) fn invalid(why: impl Into<String>) -> Self {
        Self::Invalid(why.into())
    }
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
            Self::DuplicateExtension { message, typ } => {
                write!(f, "duplicate extension {typ:#06x} in {message}")
            }
            Self::ExtensionNotAllowed { message, typ } => {
                write!(f, "extension {typ:#06x} is not allowed in {message}")
            }
            Self::PreSharedKeyNotLast => {
                write!(f, "pre_shared_key is not the last ClientHello extension")
            }
            Self::BinderCountMismatch {
                identities,
                binders,
            } => write!(
                f,
                "pre_shared_key has {identities} identities but {binders} binders"
            ),
            Self::TooLong(what) => write!(f, "{what} is too long for its length field"),
            Self::TooLarge { what, len, max } => {
                write!(f, "{what} of {len} bytes is over the cap of {max}")
            }
            Self::TooMany { what, max } => write!(f, "more than {max} {what}"),
        }
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_failures_map_to_decode_error_and_rule_breaks_to_illegal_parameter() {
        assert_eq!(
            WireError::Truncated("x").alert(),
            AlertDescription::DecodeError
        );
        assert_eq!(
            WireError::TrailingBytes("x").alert(),
            AlertDescription::DecodeError
        );
        assert_eq!(
            WireError::PreSharedKeyNotLast.alert(),
            AlertDescription::IllegalParameter
        );
        assert_eq!(
            WireError::UnexpectedMessage {
                expected: "Finished",
                got: 1
            }
            .alert(),
            AlertDescription::UnexpectedMessage
        );
    }

    #[test]
    fn errors_display_what_was_wrong() {
        assert_eq!(
            WireError::DuplicateExtension {
                message: "ClientHello",
                typ: 0x2b
            }
            .to_string(),
            "duplicate extension 0x002b in ClientHello"
        );
        assert_eq!(
            WireError::BinderCountMismatch {
                identities: 2,
                binders: 1
            }
            .to_string(),
            "pre_shared_key has 2 identities but 1 binders"
        );
    }
}
