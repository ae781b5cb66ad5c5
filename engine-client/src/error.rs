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

use lurk_proto::status::LurkStatus;
use lurk_proto::wire::enums::{AlertDescription, ContentType, HandshakeType};
use lurk_proto::wire::WireError;

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
    /// A handshake message that does not parse or breaks a structural rule of RFC 8446 (the
    /// alert is the one [`WireError::alert`] prescribes).
    Wire(WireError),
    /// The server's certificate was rejected (chain, name, validity or signature).
    InvalidCertificate(CertificateError),
    /// A call to the Crypto Service failed: unreachable, refused with a LURK status, or
    /// answered something unusable.
    CryptoService {
        /// The LURK exchange (`c_server_hello`, ...).
        exchange: &'static str,
        /// The LURK status of a refusal.
        status: Option<LurkStatus>,
        /// What went wrong.
        message: String,
    },
    /// The handshake needs the Crypto Service but the engine was configured without one.
    NoCryptoService(&'static str),
    /// The transport failed (or closed in the middle of the handshake).
    Io {
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// What happened.
        message: String,
    },
    /// The operation needs a completed handshake.
    HandshakeNotComplete,
    /// Keying material export needs `ClientConfig::exporter` (RFC 8446 §7.5): without it the
    /// engine neither asks the Crypto Service for exporter_master_secret nor keeps it.
    ExporterNotEnabled,
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
            Self::Wire(e) => Some(e.alert()),
            Self::InvalidCertificate(e) => Some(e.alert),
            Self::CryptoService { .. } | Self::NoCryptoService(_) | Self::General(_) => {
                Some(AlertDescription::InternalError)
            }
            Self::Io { .. } | Self::HandshakeNotComplete | Self::ExporterNotEnabled => None,
        }
    }

    /// An I/O error, kept with its kind.
    pub fn io(e: &std::io::Error) -> Self {
        Self::Io {
            kind: e.kind(),
            message: e.to_string(),
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
            Self::Wire(e) => write!(f, "received invalid handshake message: {e}"),
            Self::InvalidCertificate(e) => write!(f, "server certificate rejected: {e}"),
            Self::CryptoService {
                exchange,
                status: Some(status),
                message,
            } => write!(
                f,
                "Crypto Service refused {exchange} with LURK status {status}: {message}"
            ),
            Self::CryptoService {
                exchange,
                status: None,
                message,
            } => write!(f, "Crypto Service call {exchange} failed: {message}"),
            Self::NoCryptoService(exchange) => write!(
                f,
                "the handshake needs the Crypto Service ({exchange}) but none is configured (--cs)"
            ),
            Self::Io { kind, message } => write!(f, "I/O error ({kind:?}): {message}"),
            Self::HandshakeNotComplete => f.write_str("the handshake is not complete"),
            Self::ExporterNotEnabled => {
                f.write_str("keying material export is not enabled (ClientConfig::exporter)")
            }
            Self::General(msg) => write!(f, "unexpected error: {msg}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}

impl From<CertificateError> for Error {
    fn from(e: CertificateError) -> Self {
        Self::InvalidCertificate(e)
    }
}

/// Why the server's certificate was rejected, and the alert that says so (RFC 8446 §6.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateError {
    /// The reason, naming the check that failed.
    pub reason: String,
    /// bad_certificate, unknown_ca, certificate_expired, decrypt_error, ...
    pub alert: AlertDescription,
}

impl CertificateError {
    /// A rejection with its alert.
    pub fn new(alert: AlertDescription, reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            alert,
        }
    }
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

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
    /// ServerHello.legacy_session_id_echo differs from our legacy_session_id (§4.1.3).
    WrongSessionIdEcho,
    /// The server selected a cipher suite we did not offer (§4.1.3).
    SelectedUnofferedCipherSuite,
    /// The ServerHello's cipher suite differs from the HelloRetryRequest's (§4.1.4).
    SelectedDifferentCipherSuiteAfterRetry,
    /// The server's key share is for a group we sent no share for (§4.2.8).
    WrongGroupForKeyShare,
    /// The server's key share does not decode or gives no shared secret (§4.2.8.1, §7.4).
    InvalidKeyShare,
    /// The server selected a PSK identity we did not offer (§4.2.11).
    SelectedUnofferedPsk,
    /// The selected PSK's hash is not the cipher suite's (§4.2.11).
    SelectedPskWithWrongHash,
    /// Neither key_share nor pre_shared_key in the ServerHello (§4.2.8, §9.2).
    MissingKeyShare,
    /// The server used a PSK key exchange mode we did not offer (§4.2.9).
    UnofferedPskKeyExchangeMode,
    /// A second HelloRetryRequest (§4.1.4).
    TwoHelloRetryRequests,
    /// A HelloRetryRequest that would not change the ClientHello, or asks for a group that was
    /// not offered or already had a share (§4.1.4).
    IllegalHelloRetryRequest,
    /// early_data accepted in EncryptedExtensions although not offered (§4.2.10).
    UnsolicitedEarlyDataExtension,
    /// early_data accepted with a PSK other than the first (§4.2.11: `illegal_parameter`).
    EarlyDataAcceptedWithOtherPsk,
    /// early_data accepted but the ALPN protocol or cipher suite differs from the ticket's
    /// (§4.2.10).
    EarlyDataParametersChanged,
    /// record_size_limit in EncryptedExtensions although we did not offer it (§4.2:
    /// `unsupported_extension`).
    UnsolicitedRecordSizeLimit,
    /// An ALPN protocol we did not offer (RFC 7301 §3.2).
    UnofferedAlpnProtocol,
    /// An extension in the ServerHello, HelloRetryRequest, EncryptedExtensions or the server's
    /// Certificate that the ClientHello did not offer (§4.2: `unsupported_extension`).
    UnsolicitedExtension,
    /// certificate_request_context not empty in the handshake, or empty after it (§4.3.2).
    IllegalCertificateRequestContext,
    /// The server sent an empty certificate_list (§4.4.2.4: `decode_error`).
    EmptyServerCertificate,
    /// The server Certificate's certificate_request_context is not empty (§4.4.2).
    ServerCertificateWithContext,
    /// CertificateVerify with a scheme we did not offer, or unfit for the key (§4.4.3).
    UnofferedSignatureScheme,
    /// The server's CertificateVerify signature does not verify (§4.4.3: `decrypt_error`).
    BadCertificateVerifySignature,
    /// The server Finished does not verify (§4.4.4: `decrypt_error`).
    IncorrectFinished,
    /// A post-handshake CertificateRequest although post_handshake_auth was not offered
    /// (§4.6.2: `unexpected_message`).
    UnsolicitedPostHandshakeAuth,
    /// The Crypto Service completed the ClientHello with another random than the freshness
    /// function of our random (docs/design.md §3).
    WrongFreshRandom,
}

impl PeerMisbehaved {
    /// The alert answering this broken rule.
    pub fn alert(&self) -> AlertDescription {
        match self {
            Self::IllegalRecordSizeLimit
            | Self::WrongSessionIdEcho
            | Self::SelectedUnofferedCipherSuite
            | Self::SelectedDifferentCipherSuiteAfterRetry
            | Self::WrongGroupForKeyShare
            | Self::InvalidKeyShare
            | Self::SelectedUnofferedPsk
            | Self::SelectedPskWithWrongHash
            | Self::UnofferedPskKeyExchangeMode
            | Self::IllegalHelloRetryRequest
            | Self::UnofferedAlpnProtocol
            | Self::EarlyDataAcceptedWithOtherPsk
            | Self::EarlyDataParametersChanged
            | Self::IllegalCertificateRequestContext
            | Self::ServerCertificateWithContext
            | Self::UnofferedSignatureScheme => AlertDescription::IllegalParameter,
            Self::MissingKeyShare => AlertDescription::MissingExtension,
            Self::UnsolicitedEarlyDataExtension
            | Self::UnsolicitedRecordSizeLimit
            | Self::UnsolicitedExtension => AlertDescription::UnsupportedExtension,
            Self::EmptyServerCertificate => AlertDescription::DecodeError,
            Self::BadCertificateVerifySignature | Self::IncorrectFinished => {
                AlertDescription::DecryptError
            }
            Self::WrongFreshRandom => AlertDescription::InternalError,
            Self::TwoHelloRetryRequests | Self::UnsolicitedPostHandshakeAuth => {
                AlertDescription::UnexpectedMessage
            }
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
            Self::WrongSessionIdEcho => "ServerHello does not echo our legacy_session_id",
            Self::SelectedUnofferedCipherSuite => "server selected a cipher suite we did not offer",
            Self::SelectedDifferentCipherSuiteAfterRetry => {
                "ServerHello cipher suite differs from the HelloRetryRequest's"
            }
            Self::WrongGroupForKeyShare => "server key share for a group we sent no share for",
            Self::InvalidKeyShare => "server key share is invalid",
            Self::SelectedUnofferedPsk => "server selected a PSK identity we did not offer",
            Self::SelectedPskWithWrongHash => "selected PSK's hash is not the cipher suite's",
            Self::MissingKeyShare => "ServerHello has neither key_share nor pre_shared_key",
            Self::UnofferedPskKeyExchangeMode => "server used a PSK mode we did not offer",
            Self::TwoHelloRetryRequests => "second HelloRetryRequest",
            Self::IllegalHelloRetryRequest => {
                "HelloRetryRequest asks for an unoffered group, a group we already shared, or no change"
            }
            Self::UnsolicitedEarlyDataExtension => "server accepted early data we did not offer",
            Self::UnofferedAlpnProtocol => "server selected an ALPN protocol we did not offer",
            Self::UnsolicitedExtension => "server sent an extension we did not offer",
            Self::EarlyDataAcceptedWithOtherPsk => {
                "server accepted early data with a PSK other than the first"
            }
            Self::EarlyDataParametersChanged => {
                "server accepted early data with another ALPN protocol or cipher suite than the ticket's"
            }
            Self::UnsolicitedRecordSizeLimit => "server sent record_size_limit we did not offer",
            Self::IllegalCertificateRequestContext => "illegal certificate_request_context",
            Self::EmptyServerCertificate => "server sent an empty certificate list",
            Self::ServerCertificateWithContext => {
                "server Certificate has a non-empty certificate_request_context"
            }
            Self::UnofferedSignatureScheme => {
                "server CertificateVerify uses a scheme we did not offer or unfit for its key"
            }
            Self::BadCertificateVerifySignature => {
                "server CertificateVerify signature does not verify"
            }
            Self::IncorrectFinished => "server Finished does not verify",
            Self::UnsolicitedPostHandshakeAuth => {
                "post-handshake CertificateRequest without post_handshake_auth offered"
            }
            Self::WrongFreshRandom => {
                "Crypto Service returned a ClientHello.random that is not the freshness of ours"
            }
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
