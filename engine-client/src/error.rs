//! The engine's error tree, in the style of rustls `error.rs`.
//!
//! - [`InvalidMessage`]: bytes that do not decode (mostly `decode_error`).
//! - [`PeerMisbehaved`]: bytes that decode but break a rule of RFC 8446; one variant per rule so that
//!   logs and tests name the rule.
//! - the other [`Error`] variants: record protection, alerts received, wrong message types, local
//!   failures.
//!
//! [`Error::alert`] is the one place that decides which alert (if any) answers an error.

use std::fmt;

use lurk_proto::wire::enums::{AlertDescription, ContentType, HandshakeType};

/// An error of the engine. Fatal for the connection unless a caller documents otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent bytes that do not decode.
    InvalidMessage(InvalidMessage),
    /// The peer sent something that decodes but breaks a protocol rule.
    PeerMisbehaved(PeerMisbehaved),
    /// The peer sent a fatal alert (or an alert TLS 1.3 treats as fatal). We never answer it.
    AlertReceived(AlertDescription),
    /// A protected record did not authenticate (`bad_record_mac`, RFC 8446 §5.2).
    DecryptError,
    /// A record longer than allowed (RFC 8446 §5.1, §5.2, §5.4; RFC 8449).
    RecordOverflow,
    /// A record of a content type not allowed here.
    InappropriateMessage {
        /// The content types the state accepts.
        expected: Vec<ContentType>,
        /// What arrived.
        got: ContentType,
    },
    /// A handshake message of a type not allowed here.
    InappropriateHandshakeMessage {
        /// The handshake types the state accepts.
        expected: Vec<HandshakeType>,
        /// What arrived.
        got: HandshakeType,
    },
    /// A sequence number would wrap (RFC 8446 §5.3: rekey or terminate). No alert can be sent
    /// under the exhausted write key, so none is.
    SequenceExhausted,
    /// A local failure or misuse of the API (a bug, a bad key length, an unsupported suite).
    General(String),
}

impl Error {
    /// The alert to send for this error, or `None` when no alert must be sent (we received one,
    /// or the write side cannot protect one).
    pub fn alert(&self) -> Option<AlertDescription> {
        match self {
            Self::InvalidMessage(e) => Some(e.alert()),
            Self::PeerMisbehaved(e) => Some(e.alert()),
            Self::AlertReceived(_) | Self::SequenceExhausted => None,
            Self::DecryptError => Some(AlertDescription::BadRecordMac),
            Self::RecordOverflow => Some(AlertDescription::RecordOverflow),
            Self::InappropriateMessage { .. } | Self::InappropriateHandshakeMessage { .. } => {
                Some(AlertDescription::UnexpectedMessage)
            }
            Self::General(_) => Some(AlertDescription::InternalError),
        }
    }

    /// Shorthand for [`Error::General`].
    pub(crate) fn general(msg: impl Into<String>) -> Self {
        Self::General(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidMessage(e) => write!(f, "received corrupt message: {e}"),
            Self::PeerMisbehaved(e) => write!(f, "peer misbehaved: {e}"),
            Self::AlertReceived(d) => write!(f, "received fatal alert: {d:?}"),
            Self::DecryptError => f.write_str("cannot decrypt peer's message (bad_record_mac)"),
            Self::RecordOverflow => f.write_str("record too large (record_overflow)"),
            Self::InappropriateMessage { expected, got } => {
                write!(
                    f,
                    "received unexpected {got:?} record, expected {expected:?}"
                )
            }
            Self::InappropriateHandshakeMessage { expected, got } => {
                write!(
                    f,
                    "received unexpected {got:?} handshake message, expected {expected:?}"
                )
            }
            Self::SequenceExhausted => f.write_str("record sequence number exhausted"),
            Self::General(msg) => write!(f, "unexpected error: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<InvalidMessage> for Error {
    fn from(e: InvalidMessage) -> Self {
        Self::InvalidMessage(e)
    }
}

impl From<PeerMisbehaved> for Error {
    fn from(e: PeerMisbehaved) -> Self {
        Self::PeerMisbehaved(e)
    }
}

/// Bytes that do not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// A record header names a content type RFC 8446 does not define (§5: `unexpected_message`).
    InvalidContentType(u8),
    /// A record header's legacy_record_version is not 0x03XX: this is not TLS.
    UnknownProtocolVersion(u16),
    /// A plaintext record of a type that must not be empty has length 0 (RFC 8446 §5.1).
    InvalidEmptyPayload(ContentType),
    /// A ChangeCipherSpec record other than the single byte 0x01 (RFC 8446 §5).
    InvalidCcs,
    /// An alert record that is not exactly two bytes (RFC 8446 §6).
    InvalidAlert,
    /// A decrypted record's inner content type is not one RFC 8446 defines.
    InvalidInnerContentType(u8),
    /// A handshake message announces a body longer than the joiner accepts.
    HandshakePayloadTooLarge {
        /// The announced body length.
        len: usize,
        /// The cap in force.
        max: usize,
    },
}

impl InvalidMessage {
    /// The alert answering this decode failure (`decode_error` unless RFC 8446 names another).
    pub fn alert(&self) -> AlertDescription {
        match self {
            // RFC 8446 §5: "an unexpected record type ... MUST terminate the connection with an
            // unexpected_message alert"; same for a bad change_cipher_spec value.
            Self::InvalidContentType(_) | Self::InvalidInnerContentType(_) | Self::InvalidCcs => {
                AlertDescription::UnexpectedMessage
            }
            Self::UnknownProtocolVersion(_) => AlertDescription::ProtocolVersion,
            Self::InvalidEmptyPayload(_)
            | Self::InvalidAlert
            | Self::HandshakePayloadTooLarge { .. } => AlertDescription::DecodeError,
        }
    }
}

impl fmt::Display for InvalidMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidContentType(t) => write!(f, "invalid record content type {t}"),
            Self::UnknownProtocolVersion(v) => {
                write!(f, "record version {v:#06x} is not TLS (0x03XX)")
            }
            Self::InvalidEmptyPayload(t) => write!(f, "empty {t:?} record"),
            Self::InvalidCcs => f.write_str("change_cipher_spec record other than 0x01"),
            Self::InvalidAlert => f.write_str("alert record is not 2 bytes"),
            Self::InvalidInnerContentType(t) => write!(f, "invalid inner content type {t}"),
            Self::HandshakePayloadTooLarge { len, max } => {
                write!(
                    f,
                    "handshake message of {len} bytes exceeds the cap of {max}"
                )
            }
        }
    }
}

/// A message that decodes but breaks a protocol rule. One variant per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// A decrypted TLSInnerPlaintext made only of zeros: no content type (RFC 8446 §5.4).
    IllegalTlsInnerPlaintext,
    /// A protected record whose inner type is change_cipher_spec (RFC 8446 §5).
    ProtectedChangeCipherSpec,
    /// A plaintext change_cipher_spec after the handshake, or more of them than we allow.
    IllegalMiddleboxChangeCipherSpec,
    /// A handshake record of length 0 (RFC 8446 §5.1: "MUST NOT send zero-length fragments of
    /// Handshake types").
    EmptyHandshakeFragment,
    /// Too many consecutive empty application data records (allowed by RFC 8446 §5.1, limited
    /// here so that a peer cannot keep us busy with nothing).
    TooManyEmptyFragments,
    /// The keys changed while a handshake message (or a part of one) was still buffered
    /// (RFC 8446 §5.1: handshake messages MUST NOT span key changes).
    KeyEpochWithPendingFragment,
    /// A non-handshake record arrived in the middle of a fragmented handshake message
    /// (RFC 8446 §5.1).
    MessageInterleavedWithHandshakeMessage,
    /// More warning-level alerts (user_canceled) than we tolerate.
    TooManyWarningAlerts,
    /// A record_size_limit below 64 (RFC 8449 §4: `illegal_parameter`).
    IllegalRecordSizeLimit,
}

impl PeerMisbehaved {
    /// The alert answering this broken rule.
    pub fn alert(&self) -> AlertDescription {
        match self {
            Self::IllegalRecordSizeLimit => AlertDescription::IllegalParameter,
            Self::TooManyWarningAlerts => AlertDescription::DecodeError,
            Self::IllegalTlsInnerPlaintext
            | Self::ProtectedChangeCipherSpec
            | Self::IllegalMiddleboxChangeCipherSpec
            | Self::EmptyHandshakeFragment
            | Self::TooManyEmptyFragments
            | Self::KeyEpochWithPendingFragment
            | Self::MessageInterleavedWithHandshakeMessage => AlertDescription::UnexpectedMessage,
        }
    }
}

impl fmt::Display for PeerMisbehaved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IllegalTlsInnerPlaintext => "inner plaintext without content type (all zeros)",
            Self::ProtectedChangeCipherSpec => "protected change_cipher_spec record",
            Self::IllegalMiddleboxChangeCipherSpec => {
                "change_cipher_spec record outside the handshake or repeated"
            }
            Self::EmptyHandshakeFragment => "zero-length handshake record",
            Self::TooManyEmptyFragments => "too many consecutive empty records",
            Self::KeyEpochWithPendingFragment => "key change while a handshake message is buffered",
            Self::MessageInterleavedWithHandshakeMessage => {
                "non-handshake record inside a fragmented handshake message"
            }
            Self::TooManyWarningAlerts => "too many warning alerts",
            Self::IllegalRecordSizeLimit => "record_size_limit below 64",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_picked_per_error() {
        assert_eq!(
            Error::DecryptError.alert(),
            Some(AlertDescription::BadRecordMac)
        );
        assert_eq!(
            Error::RecordOverflow.alert(),
            Some(AlertDescription::RecordOverflow)
        );
        assert_eq!(
            Error::AlertReceived(AlertDescription::HandshakeFailure).alert(),
            None
        );
        assert_eq!(Error::SequenceExhausted.alert(), None);
        assert_eq!(
            Error::from(InvalidMessage::InvalidAlert).alert(),
            Some(AlertDescription::DecodeError)
        );
        assert_eq!(
            Error::from(InvalidMessage::InvalidContentType(99)).alert(),
            Some(AlertDescription::UnexpectedMessage)
        );
        assert_eq!(
            Error::from(PeerMisbehaved::KeyEpochWithPendingFragment).alert(),
            Some(AlertDescription::UnexpectedMessage)
        );
        assert_eq!(
            Error::from(PeerMisbehaved::IllegalRecordSizeLimit).alert(),
            Some(AlertDescription::IllegalParameter)
        );
        assert_eq!(
            Error::InappropriateMessage {
                expected: vec![ContentType::Handshake],
                got: ContentType::ApplicationData
            }
            .alert(),
            Some(AlertDescription::UnexpectedMessage)
        );
        assert_eq!(
            Error::general("x").alert(),
            Some(AlertDescription::InternalError)
        );
    }

    #[test]
    fn display_names_the_rule() {
        let e = Error::from(PeerMisbehaved::MessageInterleavedWithHandshakeMessage);
        assert!(e.to_string().contains("fragmented handshake message"));
        let e = Error::AlertReceived(AlertDescription::UnknownCa);
        assert!(e.to_string().contains("UnknownCa"));
    }
}
