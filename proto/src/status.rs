//! LURK status codes (draft-mglt-lurk-tls13 §4, pylurk 0.0.3). The numbers up to 15 are the
//! draft's; the draft names a few statuses without numbers and this project adds some of its
//! own: those take the unused numbers 16.. (documented in `crypto_service.proto`).

use std::fmt;

use crate::pb;

/// A LURK status, as carried in the `lurk-status` metadata of a failed RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LurkStatus {
    UndefinedError,
    InvalidFormat,
    InvalidSecretRequest,
    InvalidSessionId,
    InvalidHandshake,
    InvalidFreshness,
    InvalidEphemeral,
    InvalidPsk,
    InvalidCertificate,
    InvalidType,
    InvalidCertType,
    InvalidStatus,
    InvalidSignatureScheme,
    InvalidCertificateVerify,
    InvalidIdentity,
    TooManyIdentities,
    TooManyTickets,
    TooManySessions,
    Unauthenticated,
    TokenUnavailable,
    TooManyRequests,
}

/// The gRPC metadata key that carries the LURK status number of a refusal.
pub const LURK_STATUS_METADATA: &str = "lurk-status";

impl LurkStatus {
    pub const ALL: [LurkStatus; 21] = [
        Self::UndefinedError,
        Self::InvalidFormat,
        Self::InvalidSecretRequest,
        Self::InvalidSessionId,
        Self::InvalidHandshake,
        Self::InvalidFreshness,
        Self::InvalidEphemeral,
        Self::InvalidPsk,
        Self::InvalidCertificate,
        Self::InvalidType,
        Self::InvalidCertType,
        Self::InvalidStatus,
        Self::InvalidSignatureScheme,
        Self::InvalidCertificateVerify,
        Self::InvalidIdentity,
        Self::TooManyIdentities,
        Self::TooManyTickets,
        Self::TooManySessions,
        Self::Unauthenticated,
        Self::TokenUnavailable,
        Self::TooManyRequests,
    ];

    /// The protocol number.
    pub fn code(self) -> u32 {
        self.to_pb() as u32
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn to_pb(self) -> pb::LurkStatus {
        use pb::LurkStatus as P;
        match self {
            Self::UndefinedError => P::UndefinedError,
            Self::InvalidFormat => P::InvalidFormat,
            Self::InvalidSecretRequest => P::InvalidSecretRequest,
            Self::InvalidSessionId => P::InvalidSessionId,
            Self::InvalidHandshake => P::InvalidHandshake,
            Self::InvalidFreshness => P::InvalidFreshness,
            Self::InvalidEphemeral => P::InvalidEphemeral,
            Self::InvalidPsk => P::InvalidPsk,
            Self::InvalidCertificate => P::InvalidCertificate,
            Self::InvalidType => P::InvalidType,
            Self::InvalidCertType => P::InvalidCertType,
            Self::InvalidStatus => P::InvalidStatus,
            Self::InvalidSignatureScheme => P::InvalidSignatureScheme,
            Self::InvalidCertificateVerify => P::InvalidCertificateVerify,
            Self::InvalidIdentity => P::InvalidIdentity,
            Self::TooManyIdentities => P::TooManyIdentities,
            Self::TooManyTickets => P::TooManyTickets,
            Self::TooManySessions => P::TooManySessions,
            Self::Unauthenticated => P::Unauthenticated,
            Self::TokenUnavailable => P::TokenUnavailable,
            Self::TooManyRequests => P::TooManyRequests,
        }
    }

    /// The draft's name of the status.
    pub fn name(self) -> &'static str {
        match self {
            Self::UndefinedError => "undefined_error",
            Self::InvalidFormat => "invalid_format",
            Self::InvalidSecretRequest => "invalid_secret_request",
            Self::InvalidSessionId => "invalid_session_id",
            Self::InvalidHandshake => "invalid_handshake",
            Self::InvalidFreshness => "invalid_freshness",
            Self::InvalidEphemeral => "invalid_ephemeral",
            Self::InvalidPsk => "invalid_psk",
            Self::InvalidCertificate => "invalid_certificate",
            Self::InvalidType => "invalid_type",
            Self::InvalidCertType => "invalid_cert_type",
            Self::InvalidStatus => "invalid_status",
            Self::InvalidSignatureScheme => "invalid_signature_scheme",
            Self::InvalidCertificateVerify => "invalid_certificate_verify",
            Self::InvalidIdentity => "invalid_identity",
            Self::TooManyIdentities => "too_many_identities",
            Self::TooManyTickets => "too_many_tickets",
            Self::TooManySessions => "too_many_sessions",
            Self::Unauthenticated => "unauthenticated",
            Self::TokenUnavailable => "token_unavailable",
            Self::TooManyRequests => "too_many_requests",
        }
    }

    /// Reads the LURK status of a failed RPC, if the CS set one.
    pub fn from_grpc(status: &tonic::Status) -> Option<Self> {
        status
            .metadata()
            .get(LURK_STATUS_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .and_then(Self::from_code)
    }
}

impl fmt::Display for LurkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_keep_the_draft_numbers() {
        for s in LurkStatus::ALL {
            assert_eq!(LurkStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(LurkStatus::InvalidFormat.code(), 3);
        assert_eq!(LurkStatus::InvalidSessionId.code(), 5);
        assert_eq!(LurkStatus::InvalidStatus.code(), 15);
        assert_eq!(LurkStatus::from_code(1), None);
    }
}
