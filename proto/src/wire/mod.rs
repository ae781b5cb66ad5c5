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
pub use retry::{check_second_client_hello, RetryField, RetryRule};

use std::fmt;

/// What kind of fault a [`WireError`] is: the two the protocol tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireErrorKind {
    /// The bytes do not follow the syntax of RFC 8446 §3 (a structure cut short, bytes left
    /// over, a vector length outside its range) or pass a cap of [`limits`]: RFC 8446 §6.2
    /// decode_error; `invalid_format` at the Crypto Service.
    Decode,
    /// The bytes parse, but a value breaks a rule of RFC 8446 (or of the RFC that defines the
    /// extension): RFC 8446 §6.2 illegal_parameter (unexpected_message for a message of
    /// another type); `invalid_handshake` at the Crypto Service.
    Rule,
}

/// A message that does not parse, or breaks a rule of RFC 8446 ([`WireError::kind`] says
/// which).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    // Decode errors.
    /// The input ended inside the named structure.
    Truncated(&'static str),
    /// Bytes were left after the named structure.
    TrailingBytes(&'static str),
    /// A vector of `len` bytes (or entries), outside the range its definition allows (RFC 8446
    /// §3.4: e.g. `<1..2^16-1>` empty, `<0..32>` longer, a list of 2-byte values of odd
    /// length, or a fixed length such as Finished's `verify_data[Hash.length]`).
    BadLength {
        /// The vector, named as in RFC 8446's structure (e.g. `"cipher_suites"`).
        what: &'static str,
        /// Its length in bytes (or entries).
        len: usize,
    },
    /// A value does not fit its length prefix (encoding, or splicing a value in).
    TooLong(&'static str),
    /// A message or flight of `len` bytes, over its cap of `max` ([`limits`]).
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A list with more than `max` entries ([`limits`]).
    TooMany {
        /// The list (e.g. `"Certificate entries"`).
        what: &'static str,
        /// The cap on its entries, from [`limits`].
        max: usize,
    },

    // Rules broken.
    /// A handshake message of another type was expected.
    UnexpectedMessage {
        /// The message expected.
        expected: &'static str,
        /// The HandshakeType code point received.
        got: u8,
    },
    /// The same extension type appears twice in one message (RFC 8446 §4.2).
    DuplicateExtension {
        /// The message (or `"Certificate"` for a CertificateEntry's block).
        message: &'static str,
        /// The repeated extension type.
        typ: u16,
    },
    /// An extension RFC 8446 §4.2 does not allow in this message.
    ExtensionNotAllowed {
        /// The message, named as in RFC 8446 §4.2's table.
        message: &'static str,
        /// The extension type's code point.
        typ: u16,
    },
    /// pre_shared_key is not the last ClientHello extension (RFC 8446 §4.2.11).
    PreSharedKeyNotLast,
    /// The numbers of PSK identities and binders differ (RFC 8446 §4.2.11).
    BinderCountMismatch {
        /// Number of PSK identities.
        identities: usize,
        /// Number of binders.
        binders: usize,
    },
    /// A field holds a value its rule forbids (`what` names the field and the rule's source).
    IllegalValue {
        /// The field and the rule.
        what: &'static str,
        /// The value received.
        value: u64,
    },
    /// A message does not negotiate TLS 1.3: no supported_versions, or one without 0x0304
    /// (RFC 8446 §4.2.1).
    NotTls13 {
        /// `"ClientHello"`, `"ServerHello"` or `"HelloRetryRequest"`.
        message: &'static str,
    },
    /// A message lacks an extension it must carry.
    MissingExtension {
        /// The message.
        message: &'static str,
        /// The missing extension.
        extension: &'static str,
    },
    /// A message carries `extension` without `requires`, which must go with it.
    ExtensionRequires {
        /// The message.
        message: &'static str,
        /// The extension present.
        extension: &'static str,
        /// The extension missing.
        requires: &'static str,
    },
    /// Two key_share entries for one group (RFC 8446 §4.2.8).
    DuplicateKeyShare {
        /// The NamedGroup code point.
        group: u16,
    },
    /// A key_share entry for a group not in supported_groups (RFC 8446 §4.2.8).
    KeyShareGroupNotOffered {
        /// The NamedGroup code point.
        group: u16,
    },
    /// server_name with more than one host_name (RFC 6066 §3).
    DuplicateHostName,
    /// Filling the empty key_share entries: `fills` public keys for `empty` entries.
    KeyShareFillCount {
        /// Empty entries in the ClientHello.
        empty: usize,
        /// Public keys given.
        fills: usize,
    },
    /// Filling the empty key_share entries: the entry is for `entry`, the key for `key`.
    KeyShareFillGroup {
        /// The entry's NamedGroup code point.
        entry: u16,
        /// The key's NamedGroup code point.
        key: u16,
    },
    /// A binder to write has `len` bytes, the ClientHello reserves `reserved` (RFC 8446
    /// §4.2.11.2).
    BinderLength {
        /// The binder's index.
        index: usize,
        /// Its length.
        len: usize,
        /// The length the ClientHello reserves.
        reserved: usize,
    },
    /// A second ClientHello breaks RFC 8446 §4.1.2.
    SecondClientHello(RetryRule),
}

impl WireError {
    /// Whether the bytes do not parse or a rule is broken (one match, every variant named).
    pub fn kind(&self) -> WireErrorKind {
        match self {
            Self::Truncated(_)
            | Self::TrailingBytes(_)
            | Self::BadLength { .. }
            | Self::TooLong(_)
            | Self::TooLarge { .. }
            | Self::TooMany { .. } => WireErrorKind::Decode,
            Self::UnexpectedMessage { .. }
            | Self::DuplicateExtension { .. }
            | Self::ExtensionNotAllowed { .. }
            | Self::PreSharedKeyNotLast
            | Self::BinderCountMismatch { .. }
            | Self::IllegalValue { .. }
            | Self::NotTls13 { .. }
            | Self::MissingExtension { .. }
            | Self::ExtensionRequires { .. }
            | Self::DuplicateKeyShare { .. }
            | Self::KeyShareGroupNotOffered { .. }
            | Self::DuplicateHostName
            | Self::KeyShareFillCount { .. }
            | Self::KeyShareFillGroup { .. }
            | Self::BinderLength { .. }
            | Self::SecondClientHello(_) => WireErrorKind::Rule,
        }
    }

    /// The alert RFC 8446 §6.2 prescribes for this error: decode_error for bytes that do not
    /// parse ("some field was out of the specified range or the length of the message was
    /// incorrect"), unexpected_message for a message of another type, illegal_parameter for
    /// well-formed values that break a rule.
    pub fn alert(&self) -> AlertDescription {
        match (self, self.kind()) {
            (Self::UnexpectedMessage { .. }, _) => AlertDescription::UnexpectedMessage,
            (_, WireErrorKind::Decode) => AlertDescription::DecodeError,
            (_, WireErrorKind::Rule) => AlertDescription::IllegalParameter,
        }
    }

    /// A vector of `len` bytes outside its range.
    pub(crate) fn bad_length(what: &'static str, len: usize) -> Self {
        Self::BadLength { what, len }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated(what) => write!(f, "truncated {what}"),
            Self::TrailingBytes(what) => write!(f, "trailing bytes after {what}"),
            Self::BadLength { what, len } => {
                write!(f, "{what} of length {len} is outside its allowed range")
            }
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
            Self::IllegalValue { what, value } => write!(f, "illegal {what}: {value}"),
            Self::NotTls13 { message } => write!(f, "{message} does not negotiate TLS 1.3"),
            Self::MissingExtension { message, extension } => {
                write!(f, "{message} without {extension}")
            }
            Self::ExtensionRequires {
                message,
                extension,
                requires,
            } => write!(f, "{message} has {extension} without {requires}"),
            Self::DuplicateKeyShare { group } => {
                write!(f, "key_share: group {group:#06x} offered twice")
            }
            Self::KeyShareGroupNotOffered { group } => {
                write!(f, "key_share group {group:#06x} is not in supported_groups")
            }
            Self::DuplicateHostName => write!(f, "server_name: more than one host_name"),
            Self::KeyShareFillCount { empty, fills } => {
                write!(
                    f,
                    "{empty} key shares to fill but {fills} public keys given"
                )
            }
            Self::KeyShareFillGroup { entry, key } => write!(
                f,
                "key share to fill is for group {entry:#06x}, public key given for {key:#06x}"
            ),
            Self::BinderLength {
                index,
                len,
                reserved,
            } => write!(
                f,
                "binder {index} has {len} bytes, the ClientHello reserves {reserved}"
            ),
            Self::SecondClientHello(rule) => write!(f, "the second ClientHello {rule}"),
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
    fn a_length_out_of_range_is_a_decode_error_and_a_forbidden_value_a_rule() {
        let short = WireError::BadLength {
            what: "cookie",
            len: 0,
        };
        assert_eq!(short.kind(), WireErrorKind::Decode);
        assert_eq!(short.alert(), AlertDescription::DecodeError);
        let value = WireError::IllegalValue {
            what: "KeyUpdate request_update",
            value: 2,
        };
        assert_eq!(value.kind(), WireErrorKind::Rule);
        assert_eq!(value.alert(), AlertDescription::IllegalParameter);
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
