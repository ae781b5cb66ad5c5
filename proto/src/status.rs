//! LURK status codes (draft-mglt-lurk-tls13 §4, pylurk 0.0.3). The numbers up to 15 are the
//! draft's; the draft names a few statuses without numbers and this project adds some of its
//! own: those take the unused numbers 16.. (documented in `crypto_service.proto`).

use std::fmt;

use crate::pb;

/// A LURK status, as carried in the `lurk-status` metadata of a failed RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LurkStatus {
    /// A failure inside the CS (token, store, internal), reported without its details
    /// (docs/protocol.md "Status numbers"); also a timed-out exchange.
    UndefinedError,
    /// The request or a handshake message in it does not parse (RFC 8446 §3 syntax, or past a cap
    /// of `wire::limits`): docs/protocol.md "Malformed and invalid messages".
    InvalidFormat,
    /// The secret_request asks for a secret that never leaves the CS (the resumption master secret
    /// r; docs/design.md §4.6).
    InvalidSecretRequest,
    /// No session of this engine has that session id (unknown, expired, or another engine's).
    InvalidSessionId,
    /// A handshake message parses but breaks a rule of RFC 8446 or of its extension's RFC
    /// (docs/protocol.md "Malformed and invalid messages").
    InvalidHandshake,
    /// An unknown freshness function, or the null one outside test-vector mode
    /// (draft-mglt-lurk-tls13 §3).
    InvalidFreshness,
    /// The (EC)DHE part does not fit: a key share for a group not offered or not supported, an
    /// invalid public key, or the engine's shared secret missing where it made the share
    /// (RFC 8446 §4.2.8).
    InvalidEphemeral,
    /// A PSK or ticket the CS does not hold, has already consumed, or cannot unseal; or PskInfo
    /// entries that do not match the pre_shared_key identities.
    InvalidPsk,
    /// The certificate or key named is unknown to this engine, or a Certificate message does not
    /// match it (RFC 8446 §4.4.2); under `[server_auth]`, a server chain the CS does not accept.
    InvalidCertificate,
    /// An exchange this CS does not offer (see Capabilities), such as `c_server_flight` when
    /// disabled.
    InvalidType,
    /// The draft's status for an unsupported certificate type; this CS never sends it (it
    /// handles X.509 only, RFC 8446 §4.4.2).
    InvalidCertType,
    /// The exchange does not come next in this session's sequence (docs/protocol.md "Exchanges").
    InvalidStatus,
    /// No signature scheme both offered by the peer and usable with the key (RFC 8446 §4.2.3),
    /// or, under `[server_auth]`, a server CertificateVerify in a scheme the client did not
    /// offer or that does not fit the server's key (§4.4.3).
    InvalidSignatureScheme,
    /// The server's CertificateVerify signature does not verify (RFC 8446 §4.4.3), checked under
    /// `[server_auth]`.
    InvalidCertificateVerify,
    /// Named by the draft without a number; this CS never sends it (an unknown PSK identity is
    /// `invalid_psk`).
    InvalidIdentity,
    /// More PSK identities in the ClientHello than the CS accepts
    /// (`wire::limits::MAX_PSK_IDENTITIES`).
    TooManyIdentities,
    /// The engine holds its maximum of stored tickets, or one request or session registers more
    /// NewSessionTickets than the CS allows.
    TooManyTickets,
    /// The engine, or the CS in total, holds its maximum of sessions or of session-state bytes.
    TooManySessions,
    /// The caller has no engine identity the CS accepts: no client certificate, or no valid
    /// name in it (or in the development `lurk-engine-id` header).
    Unauthenticated,
    /// The PKCS#11 token does not answer (the CS is recovering it): retry later or on another CS.
    TokenUnavailable,
    /// Too many exchanges of this engine in flight: refused at once, retry later.
    TooManyRequests,
}

/// The gRPC metadata key that carries the LURK status number of a refusal.
pub const LURK_STATUS_METADATA: &str = "lurk-status";

impl LurkStatus {
    /// Every status, in protocol-number order.
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

    /// The status with protocol number `code`; None for 0 (success) and unassigned numbers.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The protobuf enum value of the status (same number as [`LurkStatus::code`]).
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
