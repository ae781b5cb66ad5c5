//! Errors, one type per layer, and the one place where they become a gRPC status plus a
//! LURK status: `TokenError` (PKCS#11) and `StoreError` (SQLite) → `ServiceError` →
//! `tonic::Status` with the `lurk-status` metadata.
//!
//! Messages never carry secret material: a refusal names the rule that was broken, an
//! internal failure names the operation that failed.

use std::fmt;
use std::sync::LazyLock;

use lurk_proto::status::{LurkStatus, LURK_STATUS_METADATA};
use lurk_proto::wire::WireErrorKind;

use crate::refusal_log::{self, RefusalLog, Verdict};

/// Configuration errors (start-up only).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is missing, out of range or inconsistent with another; the message says which.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A file the configuration names cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
}

/// Errors of the PKCS#11 token layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The PKCS#11 module (shared library) cannot be loaded or initialised.
    #[error("cannot load PKCS#11 module {module}: {reason}")]
    Module {
        /// The module's path.
        module: String,
        /// The loader's or `C_Initialize`'s error.
        reason: String,
    },
    /// No slot holds a token with the configured label.
    #[error("no token labelled {0:?} in any slot")]
    TokenNotFound(String),
    /// The PIN file or environment variable cannot be read.
    #[error("cannot read the token PIN: {0}")]
    Pin(String),
    /// `C_Login` as user failed (wrong PIN, locked token).
    #[error("login to token {label:?} failed: {reason}")]
    Login {
        /// The token's label.
        label: String,
        /// The PKCS#11 error.
        reason: String,
    },
    /// Start-up check: the token lacks mechanisms the configured keys and ephemerals need.
    #[error("the token lacks mechanisms this configuration needs: {}", .0.join(", "))]
    MissingMechanisms(Vec<String>),
    /// A key object the configuration or a request names is not in the token:
    /// `invalid_certificate` in an exchange.
    #[error("key not found in the token: {0}")]
    KeyNotFound(String),
    /// A key whose type or parameters the CS cannot use for TLS 1.3 signing.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A group or signature scheme the token or the key does not support:
    /// `invalid_signature_scheme`.
    #[error("unsupported group or scheme: {0}")]
    Unsupported(String),
    /// The server's key share is not a valid public key of its group (RFC 8446 §4.2.8.2):
    /// `invalid_ephemeral`.
    #[error("invalid peer public key for {0}")]
    InvalidPeerKey(&'static str),
    /// A sealed ticket or PSK did not authenticate under the sealing key (tampered, or sealed
    /// by another key): `invalid_psk`.
    #[error("sealed data failed authentication")]
    Unseal,
    /// A PKCS#11 call failed for another reason: `undefined_error`, details only in the log.
    #[error("PKCS#11 {op} failed: {reason}")]
    Pkcs11 {
        /// The PKCS#11 function (`C_Sign`, ...).
        op: &'static str,
        /// The CKR_ value or cryptoki's error.
        reason: String,
    },
    /// The token does not answer: a device or session failure, or the module is being
    /// re-initialised (token/pool.rs). Exchanges fail fast with `token_unavailable`.
    #[error("token unavailable: {0}")]
    Unavailable(String),
    /// Any other token-side failure (a malformed attribute, a missing label, ...).
    #[error("{0}")]
    Other(String),
}

impl TokenError {
    /// Wraps a cryptoki error with the name of the call that failed.
    pub fn pkcs11(op: &'static str, e: impl fmt::Display) -> Self {
        Self::Pkcs11 {
            op,
            reason: e.to_string(),
        }
    }
}

/// Errors of the ticket store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An SQLite error.
    #[error("ticket store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL error.
    #[error("ticket store (PostgreSQL): {0}")]
    Postgres(#[from] postgres::Error),
    /// The database cannot be reached (no connection within the pool's timeout).
    #[error("ticket store unavailable: {0}")]
    Unavailable(String),
    /// Another registration of the same engine held its turn past the wait
    /// (store/mod.rs `EngineGates`): that engine's own contention, nothing written.
    #[error("ticket store busy: {0}")]
    Busy(String),
    /// The store's key check value does not open with this CS's sealing key.
    #[error(
        "ticket store {0}: its tickets are sealed by another sealing key (key check value \
         mismatch); give this CS the sealing key of the replicas that share the store \
         (`lurk-cs token sealing-key import-wrapped`) or use another store"
    )]
    WrongSealingKey(String),
    /// The engine already used this ticket (a tombstone is kept until its expiry).
    #[error("ticket already used (RFC 8446 §C.4: a ticket is used once)")]
    TicketConsumed,
    /// The database has a schema version this CS neither uses nor migrates from, or holds
    /// tables that are not the store's.
    #[error("ticket store schema version {found} is not supported (expected {expected})")]
    Schema {
        /// The version the database records.
        found: i64,
        /// The version this CS writes.
        expected: i64,
    },
    /// The engine holds its cap of stored tickets: `too_many_tickets`.
    #[error("too many tickets for engine {engine:?} (cap {cap})")]
    TooManyTickets {
        /// The engine's identity.
        engine: String,
        /// Its cap (`[store] max_tickets_per_engine`).
        cap: u32,
    },
    /// Sealing or unsealing by the token failed (an unseal failure is `invalid_psk`).
    #[error("ticket store: sealing failed: {0}")]
    Seal(#[from] TokenError),
    /// A value the store refuses to hold (an empty engine or identity, a PSK whose length
    /// does not match its hash, ...).
    #[error("ticket store: invalid input: {0}")]
    Invalid(String),
    /// A row that does not decode: never used, reported as `undefined_error`.
    #[error("ticket store: corrupt row: {0}")]
    Corrupt(String),
    /// A file the store needs (database, directory, PostgreSQL password or CA file) cannot be
    /// read or created.
    #[error("ticket store {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Any other store failure (WAL mode refused, a PostgreSQL setting missing, ...).
    #[error("ticket store: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether a write that failed so may have been committed all the same: the database's
    /// answer was lost (a connection closed at `COMMIT`, a failover) or the failure came from
    /// the database. Refusals the store decides before writing (`TooManyTickets`,
    /// `TicketConsumed`, invalid input, sealing) store nothing.
    pub fn outcome_unknown(&self) -> bool {
        !matches!(
            self,
            Self::TooManyTickets { .. }
                | Self::Busy(_)
                | Self::TicketConsumed
                | Self::Invalid(_)
                | Self::Seal(_)
                | Self::WrongSealingKey(_)
                | Self::Schema { .. }
        )
    }
}

/// What an operation returns when it fails.
#[derive(Debug)]
pub enum ServiceError {
    /// The request broke a rule of the protocol or of the policy: refused with this status.
    Refused {
        /// The status sent in `lurk-status`.
        status: LurkStatus,
        /// The rule broken, for the gRPC message and the refusal log (never a secret).
        reason: String,
    },
    /// The token failed.
    Token(TokenError),
    /// The store failed.
    Store(StoreError),
    /// Anything else on our side.
    Internal(String),
    /// A `[limits]` cap of the engine was reached (e.g. its exchanges in flight): refused
    /// at once, nothing changed; the engine may retry later.
    Overloaded {
        /// The `[limits]` key that was reached.
        limit: &'static str,
        /// Its value.
        cap: usize,
    },
    /// The RPC did not complete within `[limits] request_timeout_ms`.
    TimedOut {
        /// The timeout, in milliseconds.
        after_ms: u64,
    },
}

impl ServiceError {
    /// A refusal with `status`; `reason` names the rule broken.
    pub fn refuse(status: LurkStatus, reason: impl Into<String>) -> Self {
        Self::Refused {
            status,
            reason: reason.into(),
        }
    }

    /// The LURK status this error is reported with.
    pub fn lurk_status(&self) -> LurkStatus {
        match self {
            Self::Refused { status, .. } => *status,
            Self::Token(TokenError::InvalidPeerKey(_)) => LurkStatus::InvalidEphemeral,
            Self::Token(TokenError::KeyNotFound(_)) => LurkStatus::InvalidCertificate,
            Self::Token(TokenError::Unseal) => LurkStatus::InvalidPsk,
            Self::Token(TokenError::Unsupported(_)) => LurkStatus::InvalidSignatureScheme,
            Self::Token(TokenError::Unavailable(_))
            | Self::Store(StoreError::Seal(TokenError::Unavailable(_))) => {
                LurkStatus::TokenUnavailable
            }
            Self::Token(_) => LurkStatus::UndefinedError,
            Self::Store(StoreError::TooManyTickets { .. }) => LurkStatus::TooManyTickets,
            Self::Store(StoreError::Seal(TokenError::Unseal)) => LurkStatus::InvalidPsk,
            Self::Store(_) => LurkStatus::UndefinedError,
            Self::Internal(_) => LurkStatus::UndefinedError,
            Self::Overloaded { .. } => LurkStatus::TooManyRequests,
            Self::TimedOut { .. } => LurkStatus::UndefinedError,
        }
    }

    fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Refused { status, .. } => match status {
                LurkStatus::Unauthenticated => tonic::Code::Unauthenticated,
                LurkStatus::InvalidSessionId => tonic::Code::NotFound,
                LurkStatus::InvalidStatus => tonic::Code::FailedPrecondition,
                LurkStatus::TooManySessions
                | LurkStatus::TooManyTickets
                | LurkStatus::TooManyRequests => tonic::Code::ResourceExhausted,
                LurkStatus::UndefinedError => tonic::Code::Internal,
                LurkStatus::TokenUnavailable => tonic::Code::Unavailable,
                _ => tonic::Code::InvalidArgument,
            },
            Self::Token(TokenError::InvalidPeerKey(_)) => tonic::Code::InvalidArgument,
            Self::Token(TokenError::KeyNotFound(_)) => tonic::Code::InvalidArgument,
            Self::Token(TokenError::Unseal) => tonic::Code::InvalidArgument,
            Self::Token(TokenError::Unsupported(_)) => tonic::Code::InvalidArgument,
            Self::Store(StoreError::TooManyTickets { .. }) => tonic::Code::ResourceExhausted,
            Self::Token(_) | Self::Store(_) => tonic::Code::Unavailable,
            Self::Internal(_) => tonic::Code::Internal,
            Self::Overloaded { .. } => tonic::Code::ResourceExhausted,
            Self::TimedOut { .. } => tonic::Code::DeadlineExceeded,
        }
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { status, reason } => write!(f, "{}: {reason}", status.name()),
            Self::Token(e) => write!(f, "token: {e}"),
            Self::Store(e) => write!(f, "{e}"),
            Self::Internal(e) => write!(f, "internal error: {e}"),
            Self::Overloaded { limit, cap } => write!(
                f,
                "{}: {limit} reached ({cap}); retry later",
                LurkStatus::TooManyRequests.name()
            ),
            Self::TimedOut { after_ms } => write!(f, "request timeout ({after_ms} ms)"),
        }
    }
}

impl std::error::Error for ServiceError {}

/// `[server_auth]` (server_auth.rs): a server chain that does not validate for the name is
/// `invalid_certificate`.
impl From<lurk_proto::server_auth::ChainError> for ServiceError {
    fn from(e: lurk_proto::server_auth::ChainError) -> Self {
        Self::refuse(
            LurkStatus::InvalidCertificate,
            format!("[server_auth]: server certificate: {e}"),
        )
    }
}

/// `[server_auth]`: a server CertificateVerify that does not verify is
/// `invalid_certificate_verify`; a scheme not offered is `invalid_signature_scheme`; a leaf
/// whose key cannot be used is `invalid_certificate`.
impl From<lurk_proto::server_auth::SignatureError> for ServiceError {
    fn from(e: lurk_proto::server_auth::SignatureError) -> Self {
        use lurk_proto::server_auth::SignatureError as S;
        let status = match e {
            S::BadSignature => LurkStatus::InvalidCertificateVerify,
            S::UnofferedScheme => LurkStatus::InvalidSignatureScheme,
            S::Leaf(_) | S::UnsupportedKey => LurkStatus::InvalidCertificate,
        };
        Self::refuse(
            status,
            format!("[server_auth]: server CertificateVerify: {e}"),
        )
    }
}

impl From<TokenError> for ServiceError {
    fn from(e: TokenError) -> Self {
        Self::Token(e)
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooManyTickets { .. } => {
                Self::refuse(LurkStatus::TooManyTickets, e.to_string())
            }
            StoreError::TicketConsumed => Self::refuse(LurkStatus::InvalidPsk, e.to_string()),
            StoreError::Busy(_) => Self::refuse(LurkStatus::TooManyRequests, e.to_string()),
            other => Self::Store(other),
        }
    }
}

/// docs/protocol.md "Malformed and invalid messages": bytes that do not parse are
/// `invalid_format`, a parsed message that breaks a rule is `invalid_handshake`.
impl From<lurk_proto::wire::WireError> for ServiceError {
    fn from(e: lurk_proto::wire::WireError) -> Self {
        let status = match e.kind() {
            WireErrorKind::Decode => LurkStatus::InvalidFormat,
            WireErrorKind::Rule => LurkStatus::InvalidHandshake,
        };
        Self::refuse(status, e.to_string())
    }
}

/// Failures on the CS side (the store, the CS itself) logged at error: at most a burst per
/// cause per interval, the rest counted (refusal_log). A database that is down fails every
/// request, and requests an engine repeats at will must not flood the log.
static FAILURE_LOG: LazyLock<RefusalLog> = LazyLock::new(RefusalLog::default);

fn log_failure(log: &RefusalLog, cause: &'static str, e: &ServiceError) {
    if let Verdict::Log { suppressed, last } = log.note(cause) {
        tracing::error!(error = %e, suppressed, "request failed: {cause}");
        if last {
            tracing::warn!(
                "further failures ({cause}) are counted, not logged, for {} s",
                refusal_log::INTERVAL.as_secs()
            );
        }
    }
}

/// The one mapping to what the engine sees: a gRPC status whose metadata carries the LURK
/// status number. Internal details (token and store failures) are logged, not returned.
impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        status_logged_in(e, &FAILURE_LOG)
    }
}

/// [`tonic::Status::from`], its failure lines limited by `log`.
fn status_logged_in(e: ServiceError, log: &RefusalLog) -> tonic::Status {
    let lurk = e.lurk_status();
    let message = match &e {
        ServiceError::Refused { .. }
        | ServiceError::Overloaded { .. }
        | ServiceError::TimedOut { .. } => e.to_string(),
        // The token's names for its keys (labels, ids) stay in the CS's log.
        ServiceError::Token(TokenError::KeyNotFound(_)) => format!(
            "{}: the signing key is not in the crypto service's token",
            lurk.name()
        ),
        ServiceError::Token(TokenError::InvalidPeerKey(_))
        | ServiceError::Token(TokenError::Unseal)
        | ServiceError::Token(TokenError::Unsupported(_))
        | ServiceError::Store(StoreError::TooManyTickets { .. }) => {
            format!("{}: {e}", lurk.name())
        }
        ServiceError::Token(TokenError::Unavailable(_))
        | ServiceError::Store(StoreError::Seal(TokenError::Unavailable(_))) => {
            // Logged once per outage by token/pool.rs, not once per request.
            format!(
                "{}: the crypto service's token is recovering; retry later",
                lurk.name()
            )
        }
        ServiceError::Store(StoreError::Unavailable(_)) => {
            log_failure(log, "ticket store unavailable", &e);
            format!(
                "{}: the crypto service's ticket store is unavailable; retry later",
                lurk.name()
            )
        }
        _ => {
            log_failure(log, "on the CS side", &e);
            format!("{}: the crypto service failed; see its log", lurk.name())
        }
    };
    let mut status = tonic::Status::new(e.grpc_code(), message);
    if let Ok(v) = lurk.code().to_string().parse() {
        status.metadata_mut().insert(LURK_STATUS_METADATA, v);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use lurk_proto::wire::WireError;

    #[test]
    fn wire_decode_errors_are_invalid_format_and_rule_breaks_invalid_handshake() {
        for e in [
            WireError::Truncated("ClientHello"),
            WireError::BadLength {
                what: "cookie",
                len: 0,
            },
        ] {
            assert_eq!(
                ServiceError::from(e).lurk_status(),
                LurkStatus::InvalidFormat
            );
        }
        for e in [
            WireError::PreSharedKeyNotLast,
            WireError::NotTls13 {
                message: "ClientHello",
            },
        ] {
            assert_eq!(
                ServiceError::from(e).lurk_status(),
                LurkStatus::InvalidHandshake
            );
        }
    }

    #[test]
    fn refusals_carry_the_lurk_status_number() {
        let st: tonic::Status =
            ServiceError::refuse(LurkStatus::InvalidSessionId, "unknown session").into();
        assert_eq!(st.code(), tonic::Code::NotFound);
        assert_eq!(
            LurkStatus::from_grpc(&st),
            Some(LurkStatus::InvalidSessionId)
        );
        assert!(st.message().contains("invalid_session_id"));
    }

    #[test]
    fn limits_are_resource_exhausted_and_timeouts_deadline_exceeded() {
        let st: tonic::Status = ServiceError::Overloaded {
            limit: "exchanges in flight per engine",
            cap: 4,
        }
        .into();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            LurkStatus::from_grpc(&st),
            Some(LurkStatus::TooManyRequests)
        );
        assert!(st.message().contains("too_many_requests"));
        let st: tonic::Status = ServiceError::TimedOut { after_ms: 10 }.into();
        assert_eq!(st.code(), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn internal_failures_do_not_leak_details() {
        let st: tonic::Status =
            ServiceError::Token(TokenError::pkcs11("C_Sign", "CKR_DEVICE_ERROR secret-ish")).into();
        assert_eq!(LurkStatus::from_grpc(&st), Some(LurkStatus::UndefinedError));
        assert!(!st.message().contains("secret-ish"));
        // A signing key the token no longer has: its label and id stay in the CS's log.
        let st: tonic::Status = ServiceError::Token(TokenError::KeyNotFound(
            "lurk-ed25519: the token now holds another key under this name".into(),
        ))
        .into();
        assert_eq!(
            LurkStatus::from_grpc(&st),
            Some(LurkStatus::InvalidCertificate)
        );
        assert!(!st.message().contains("lurk-ed25519"), "{}", st.message());
    }

    /// A store that is down fails every request: a burst of error lines per cause and
    /// interval, then a note that the rest are counted; every answer is still a status.
    #[test]
    fn failures_are_logged_a_burst_per_cause() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let log = RefusalLog::default();
        tracing::subscriber::with_default(subscriber, || {
            // Other tests may have hit these call sites first, with no subscriber.
            tracing::callsite::rebuild_interest_cache();
            for _ in 0..50 {
                let e = ServiceError::Store(StoreError::Unavailable("down".into()));
                let st = status_logged_in(e, &log);
                assert_eq!(st.code(), tonic::Code::Unavailable);
                let e = ServiceError::Internal("broken".into());
                assert_eq!(status_logged_in(e, &log).code(), tonic::Code::Internal);
            }
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines = |s: &str| text.lines().filter(|l| l.contains(s)).count();
        let burst = refusal_log::BURST as usize;
        assert_eq!(
            lines("request failed: ticket store unavailable"),
            burst,
            "{text}"
        );
        assert_eq!(lines("request failed: on the CS side"), burst, "{text}");
        assert_eq!(lines("are counted, not logged"), 2, "{text}");
    }

    #[test]
    fn an_unavailable_token_has_its_own_status_and_grpc_code() {
        for e in [
            ServiceError::Token(TokenError::Unavailable("CKR_DEVICE_ERROR in C_Sign".into())),
            ServiceError::Store(StoreError::Seal(TokenError::Unavailable("x".into()))),
        ] {
            let st: tonic::Status = e.into();
            assert_eq!(st.code(), tonic::Code::Unavailable);
            assert_eq!(
                LurkStatus::from_grpc(&st),
                Some(LurkStatus::TokenUnavailable)
            );
            assert!(!st.message().contains("CKR_DEVICE_ERROR"));
        }
    }
}
