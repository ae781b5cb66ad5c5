//! Service configuration: a TOML file (see `deploy/lurk-cs.toml`, every key commented)
//! overlaid with `LURK_*` environment variables (`LURK_LISTEN__ADDR=0.0.0.0:7443`, the
//! double underscore separating sections). The token PIN is never read from this file: it
//! comes from the environment variable or the file the `[token]` section names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ConfigError;

/// The whole configuration file; unknown keys are refused. Only `[listen]`, `[token]` and
/// `[store]` are required.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listen]`: where engines connect.
    pub listen: ListenConfig,
    /// `[token]`: the PKCS#11 token holding every credential.
    pub token: TokenConfig,
    /// `[[keys]]`: the signing keys engines may use, by id.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// `[ephemeral]`: where (EC)DHE key pairs are made.
    #[serde(default)]
    pub ephemeral: EphemeralConfig,
    /// `[store]`: where sealed tickets and external PSKs are kept.
    pub store: StoreConfig,
    /// `[sessions]`: the session table's caps and lifetimes.
    #[serde(default)]
    pub sessions: SessionConfig,
    /// `[freshness]`: how ClientHello.random is derived (draft-mglt-lurk-tls13 §3).
    #[serde(default)]
    pub freshness: FreshnessConfig,
    /// `[log]`: format, filter, access log.
    #[serde(default)]
    pub log: LogConfig,
    /// `[limits]`: transport and per-engine fairness caps.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[health]`: the `grpc.health.v1` probe of token and store.
    #[serde(default)]
    pub health: crate::health::HealthConfig,
    /// `[server_auth]`: the CS checks the TLS server itself.
    #[serde(default)]
    pub server_auth: ServerAuthConfig,
    /// `[metrics]`: the Prometheus listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[exchanges]`: the optional exchanges offered.
    #[serde(default)]
    pub exchanges: ExchangesConfig,
}

/// `[exchanges]`: the exchanges this CS offers beyond the draft's (docs/protocol.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangesConfig {
    /// `c_server_flight`: c_server_hello and c_client_finished in one exchange (default on).
    #[serde(default = "default_true")]
    pub server_flight: bool,
}

impl Default for ExchangesConfig {
    fn default() -> Self {
        Self {
            server_flight: true,
        }
    }
}

/// `[listen]`: the gRPC listener (mTLS, or plaintext in development) and an optional Unix
/// socket.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Socket address of the gRPC listener.
    pub addr: String,
    /// TLS with client-certificate authentication. Required unless `plaintext` is set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Development only: serve gRPC without TLS. Engines then name themselves with the
    /// `lurk-engine-id` metadata header, which nothing authenticates.
    #[serde(default)]
    pub plaintext: bool,
    /// A Unix-domain socket beside the TCP listener, for engines on the same host: no TLS,
    /// the engine is named by the peer's uid (SO_PEERCRED) through `engines`.
    #[serde(default)]
    pub unix: Option<UnixListenConfig>,
}

/// `[listen.unix]`: a Unix-domain socket for engines on the same host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixListenConfig {
    /// Path of the socket file (created at start, removed at shutdown; an old socket file
    /// left there is replaced, any other file is an error).
    pub path: PathBuf,
    /// Permissions of the socket file (default 0o660: owner and group may connect).
    #[serde(default = "default_unix_mode")]
    pub mode: u32,
    /// Which uid is which engine; a peer whose uid is not listed is refused at accept.
    #[serde(default)]
    pub engines: Vec<UnixEngine>,
}

/// One uid allowed on the Unix socket, and the engine identity it gets.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixEngine {
    /// The peer's uid, as SO_PEERCRED reports it.
    pub uid: u32,
    /// The engine identity its requests run as (tickets, sessions and keys are per identity).
    pub engine: String,
}

fn default_unix_mode() -> u32 {
    0o660
}

/// `[listen.tls]`: the listener's TLS; engines must present a certificate from `client_ca`,
/// whose subject CN (else first DNS SAN) is the engine identity.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the CS.
    pub cert: PathBuf,
    /// PEM private key of the CS's TLS certificate (transport only; no LURK credential).
    pub key: PathBuf,
    /// PEM CA certificates that issue engine client certificates.
    pub client_ca: PathBuf,
}

/// `[token]`: the PKCS#11 module and token, how to log in, and the session pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Path of the PKCS#11 module (any module; SoftHSM2 is the default).
    #[serde(default = "default_module")]
    pub module: PathBuf,
    /// Label of the token to use.
    pub label: String,
    /// Name of the environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// File holding the user PIN (first line; the file should be mode 0600).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Number of logged-in sessions kept open (0 = twice the number of CPUs).
    #[serde(default)]
    pub pool_size: usize,
    /// Label of the AES key in the token that seals stored PSKs.
    #[serde(default = "default_sealing_key")]
    pub sealing_key: String,
    /// Environment variables set before the module is initialised (e.g. SOFTHSM2_CONF).
    #[serde(default)]
    pub module_env: BTreeMap<String, String>,
    /// A planned re-initialisation of the module (token/pool/recycle.rs) after this many
    /// session objects made since it was (re)initialised, for a module that keeps every
    /// destroyed session object until C_Finalize (SoftHSM up to 2.6). Unset:
    /// [`DEFAULT_RECYCLE_AFTER_OBJECTS`] for such a module, else never; 0: never.
    #[serde(default)]
    pub recycle_after_objects: Option<u64>,
    /// How long a planned re-initialisation waits for the token key pairs in use to be
    /// consumed; those still alive then are given up (their handshake is refused).
    #[serde(default = "default_recycle_drain_ms")]
    pub recycle_drain_ms: u64,
}

/// `[token] recycle_after_objects` for a module that keeps destroyed session objects:
/// 100,000 handshakes with token ephemerals (three session objects each), about 90 MB of
/// SoftHSM 2.6 memory.
pub const DEFAULT_RECYCLE_AFTER_OBJECTS: u64 = 300_000;

fn default_recycle_drain_ms() -> u64 {
    3000
}

impl TokenConfig {
    /// The planned re-initialisation's threshold for a module that does or does not keep
    /// destroyed session objects (`recycle_after_objects`); 0: never.
    pub fn recycle_threshold(&self, module_keeps_destroyed_objects: bool) -> u64 {
        match self.recycle_after_objects {
            Some(n) => n,
            None if module_keeps_destroyed_objects => DEFAULT_RECYCLE_AFTER_OBJECTS,
            None => 0,
        }
    }
}

/// One `[[keys]]` entry: a signing key in the token with its certificate chain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id engines name in their requests.
    pub id: String,
    /// The private key in the token: an RFC 7512 `pkcs11:` URI (`object=`, `id=`) or a label.
    pub object: String,
    /// PEM certificate chain of the key, leaf first.
    pub certificate_chain: PathBuf,
    /// Engine identities allowed to use this key; empty = every authenticated engine.
    #[serde(default)]
    pub allowed_engines: Vec<String>,
}

/// `[ephemeral] backend`: where (EC)DHE key pairs are generated and used.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EphemeralBackendKind {
    /// (EC)DHE key pairs generated in the token as session objects (default).
    #[default]
    Token,
    /// (EC)DHE key pairs in CS memory (ring), zeroized after use.
    Memory,
}

/// `[ephemeral]`: the (EC)DHE backend and the token backend's pool of ready key pairs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EphemeralConfig {
    /// Token (default) or memory.
    #[serde(default)]
    pub backend: EphemeralBackendKind,
    /// Token backend: key pairs kept ready per group, generated ahead of use in the background
    /// (0: none, each generated when asked for).
    #[serde(default)]
    pub token_pool: usize,
    /// Token backend: a ready key pair older than this is destroyed unused.
    #[serde(default = "default_token_pool_max_age_secs")]
    pub token_pool_max_age_secs: u64,
}

fn default_token_pool_max_age_secs() -> u64 {
    300
}

impl Default for EphemeralConfig {
    fn default() -> Self {
        Self {
            backend: EphemeralBackendKind::default(),
            token_pool: 0,
            token_pool_max_age_secs: default_token_pool_max_age_secs(),
        }
    }
}

/// `[store] backend`: which database holds the sealed tickets and PSKs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One SQLite file (`path`): one CS on one host (default).
    #[default]
    Sqlite,
    /// A PostgreSQL database (`[store.postgres]`), shared by several CS replicas.
    Postgres,
}

/// `[store]`: the ticket and external-PSK store and its caps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite (default) or PostgreSQL.
    #[serde(default)]
    pub backend: StoreBackend,
    /// SQLite file holding the sealed tickets and external PSKs (`backend = "sqlite"`).
    #[serde(default)]
    pub path: PathBuf,
    /// `backend = "postgres"`: where the database is.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    /// Ticket lifetime cap in seconds (RFC 8446 §4.6.1: at most 7 days).
    #[serde(default = "default_ticket_lifetime")]
    pub ticket_lifetime_secs: u64,
    /// Tickets kept per engine identity.
    #[serde(default = "default_max_tickets")]
    pub max_tickets_per_engine: u32,
    /// Tombstones of consumed tickets kept in all (the oldest go first past it, at each
    /// periodic purge). Per engine they are bounded at each registration: live tickets and
    /// tombstones together at most twice `max_tickets_per_engine`.
    #[serde(default = "default_max_tombstones")]
    pub max_tombstones: u64,
}

/// `[store.postgres]`. The password is never read from this file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq-style connection string or URL without a password, e.g.
    /// `host=db.example port=5432 user=lurk dbname=lurk` (a `host` starting with `/` is a
    /// Unix socket directory).
    pub dsn: String,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (first line; mode 0600).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) of the database server: TLS is then required and the server's
    /// certificate is verified against them and the DSN's host name.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Connections kept in the pool.
    #[serde(default = "default_pg_pool_size")]
    pub pool_size: u32,
    /// How long an operation waits for a connection before failing (milliseconds).
    #[serde(default = "default_pg_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A statement of an engine's request, or its wait for a row lock held by another
    /// replica, fails past this (milliseconds; PostgreSQL's `statement_timeout` and
    /// `lock_timeout`, set on every pooled connection).
    #[serde(default = "default_pg_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
}

/// `[sessions]`: how many LURK sessions, and how many bytes of session state, the CS holds,
/// and for how long.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Open LURK sessions at most (across all engines).
    #[serde(default = "default_max_sessions")]
    pub max: usize,
    /// Open LURK sessions per engine identity at most (a fraction of `max`, so that a few
    /// engines cannot fill the table).
    #[serde(default = "default_max_sessions_per_engine")]
    pub max_per_engine: usize,
    /// Bytes all open sessions hold at most (ClientHellos, key pairs, PSKs, transcripts).
    #[serde(default = "default_max_session_bytes")]
    pub max_bytes: usize,
    /// Bytes one engine identity's sessions hold at most.
    #[serde(default = "default_max_session_bytes_per_engine")]
    pub max_bytes_per_engine: usize,
    /// Seconds a session lives without an exchange during the handshake.
    #[serde(default = "default_session_ttl")]
    pub ttl_secs: u64,
    /// Seconds an established session (kept for post-handshake authentication or ticket
    /// registration) lives without an exchange.
    #[serde(default = "default_established_ttl")]
    pub established_ttl_secs: u64,
    /// Seconds a session opened by c_init_client_finished (sequence C: post-handshake
    /// authentication only, no server seen by the CS) lives without an exchange.
    #[serde(default = "default_engine_keyed_ttl")]
    pub engine_keyed_ttl_secs: u64,
    /// Post-handshake authentications (each one a signature by the token) per session.
    #[serde(default = "default_max_post_handshake_auths")]
    pub max_post_handshake_auths: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max: default_max_sessions(),
            max_per_engine: default_max_sessions_per_engine(),
            max_bytes: default_max_session_bytes(),
            max_bytes_per_engine: default_max_session_bytes_per_engine(),
            ttl_secs: default_session_ttl(),
            established_ttl_secs: default_established_ttl(),
            engine_keyed_ttl_secs: default_engine_keyed_ttl(),
            max_post_handshake_auths: default_max_post_handshake_auths(),
        }
    }
}

/// Transport and fairness limits: what one engine (or an unauthenticated peer) can make the
/// CS hold, and for how long. Every field has a safe default.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A whole RPC (request body received, operation run, answer sent) at most, in ms
    /// (8 s by default: below the engine's call timeout, 10 s, so that a slow CS answers
    /// DEADLINE_EXCEEDED with a LURK status before the engine sets it aside).
    pub request_timeout_ms: u64,
    /// The TLS handshake of an accepted socket at most, in ms.
    pub handshake_timeout_ms: u64,
    /// From the end of the TLS handshake (or the accept, in plaintext) to the first request
    /// (HTTP/2 preface included), in ms.
    pub first_request_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed, in ms.
    pub idle_timeout_ms: u64,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: requests in flight per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2: 16384..=16777215).
    pub max_frame_size: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: bytes of request headers.
    pub max_header_list_size: u32,
    /// Open connections at most (handshakes in progress included); 0 = derived from the
    /// process's descriptor limit (RLIMIT_NOFILE). Never more than that limit allows.
    pub max_connections: usize,
    /// Authenticated connections per engine identity at most.
    pub max_connections_per_engine: usize,
    /// TLS handshakes in progress at most; beyond, the oldest is dropped.
    pub max_pending_handshakes: usize,
    /// Requests in flight (body being received included) across all connections at most;
    /// beyond, refused at once. Times the largest request decoded, this bounds request memory.
    pub max_requests: usize,
    /// Requests in flight per engine identity, across its connections (mTLS listener).
    pub max_requests_per_engine: usize,
    /// Exchanges on the blocking pool (token, store) running at once per engine.
    pub max_exchanges_per_engine: usize,
    /// Further exchanges of an engine waiting for a slot; beyond, refused at once.
    pub max_queued_exchanges_per_engine: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            request_timeout_ms: 8_000,
            handshake_timeout_ms: 5_000,
            first_request_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            max_concurrent_streams: 64,
            max_frame_size: 16_384,
            max_header_list_size: 16_384,
            max_connections: 0,
            max_connections_per_engine: 32,
            max_pending_handshakes: 128,
            max_requests: 1024,
            max_requests_per_engine: 128,
            max_exchanges_per_engine: 16,
            max_queued_exchanges_per_engine: 128,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: &str| Err(ConfigError::Invalid(format!("limits: {why}")));
        if self.request_timeout_ms == 0
            || self.handshake_timeout_ms == 0
            || self.first_request_timeout_ms == 0
            || self.idle_timeout_ms == 0
        {
            return bad("timeouts must be > 0");
        }
        // RFC 9113 §6.5.2.
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return bad("max_frame_size must be in 16384..=16777215 (RFC 9113 §6.5.2)");
        }
        if self.max_concurrent_streams == 0
            || self.max_header_list_size == 0
            || self.max_connections_per_engine == 0
            || self.max_pending_handshakes == 0
            || self.max_requests == 0
            || self.max_requests_per_engine == 0
            || self.max_exchanges_per_engine == 0
        {
            return bad(
                "stream, header, connection, handshake, request and exchange caps must be > 0",
            );
        }
        Ok(())
    }
}

/// `[server_auth]`: the CS authenticates the TLS server itself (RFC 8446 §4.4.2-§4.4.3:
/// certificate chain for the ClientHello's server_name, CertificateVerify over the
/// transcript) before it signs a client CertificateVerify, releases application secrets or
/// registers tickets, and binds every ticket to that server name. Off, an engine that plays
/// the server itself knows the PSK of the tickets it registers (docs/protocol.md).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerAuthConfig {
    /// Off by default.
    pub enabled: bool,
    /// PEM file of the CA certificates TLS servers must chain to (required when enabled).
    pub trust_anchors: Option<PathBuf>,
}

/// `[freshness] mode`: the formula of the ClientHello.random derivation, defined once in
/// lurk-proto; read from its configuration name (`"draft"` or `"pylurk"`).
pub use lurk_proto::freshness::FreshnessMode;

fn de_freshness_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FreshnessMode, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

/// `[freshness]`: the freshness function (draft-mglt-lurk-tls13 §3, docs/design.md §3).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessConfig {
    /// Draft (default) or pylurk.
    #[serde(default, deserialize_with = "de_freshness_mode")]
    pub mode: FreshnessMode,
    /// Test-vector mode: accepts `null` freshness and injected ephemeral keys. Never in
    /// production: it lets the engine choose the random the CS signs over. Refused at load by
    /// builds without the `test-vectors` cargo feature.
    #[serde(default)]
    pub test_vectors: bool,
}

/// `[log] format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's plain-text lines (default).
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[log]`: the log's format and filter, and the access log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Human (default) or JSON lines.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `lurk_cs=debug`, ...); RUST_LOG overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// The access log: one info line per exchange (target `lurk_cs::access`).
    #[serde(default = "default_true")]
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: default_log_level(),
            access: true,
        }
    }
}

/// The Prometheus listener (plain HTTP, `GET /metrics`), off unless `addr` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Socket address of the metrics listener; unset = no listener.
    pub addr: Option<String>,
    /// Engine identities that get their own `engine` label value; the refusals of the
    /// others are counted under `engine="other"` (bounds the series count).
    pub max_engine_labels: usize,
    /// Engines whose open LURK sessions get a series of their own at each scrape (the most
    /// sessions first); the others are summed under `engine="other"`.
    pub top_engines: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            addr: None,
            max_engine_labels: 32,
            top_engines: 10,
        }
    }
}

fn default_module() -> PathBuf {
    PathBuf::from("/usr/lib/softhsm/libsofthsm2.so")
}
fn default_sealing_key() -> String {
    "lurk-ticket-seal".to_owned()
}
fn default_ticket_lifetime() -> u64 {
    7 * 24 * 3600
}
fn default_max_tickets() -> u32 {
    // Servers send 2+ tickets per connection and a resumption uses one: a busy engine needs
    // thousands alive (each row is a few hundred bytes).
    10_000
}
fn default_max_tombstones() -> u64 {
    // A row is about 100 bytes.
    1_000_000
}
fn default_pg_pool_size() -> u32 {
    8
}
fn default_pg_connect_timeout_ms() -> u64 {
    3000
}
fn default_pg_statement_timeout_ms() -> u64 {
    // Well within the request's own timeout (`[limits] request_timeout_ms`).
    2000
}
fn default_max_sessions() -> usize {
    100_000
}
fn default_max_sessions_per_engine() -> usize {
    // A tenth of the table: ten engine identities, not two, are needed to fill it.
    10_000
}
fn default_max_session_bytes() -> usize {
    512 * 1024 * 1024
}
fn default_max_session_bytes_per_engine() -> usize {
    64 * 1024 * 1024
}
fn default_engine_keyed_ttl() -> u64 {
    300
}
fn default_max_post_handshake_auths() -> usize {
    16
}
fn default_session_ttl() -> u64 {
    30
}
fn default_established_ttl() -> u64 {
    3600
}
fn default_true() -> bool {
    true
}
fn default_log_level() -> String {
    "info".to_owned()
}

/// The `LURK_SECTION__KEY` variables: every setting lives in a section, so a variable
/// without the `__` separator (`LURK_CONFIG`, a PIN variable named `LURK_…`) is not a
/// configuration override and is left alone.
fn overrides_from_env() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("LURK_") && k.contains("__"))
        .collect()
}

impl Config {
    /// Reads the TOML file, then the `LURK_*` environment variables over it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("LURK")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides_from_env())),
            )
            .build()
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
        let cfg: Config = built
            .try_deserialize()
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML string (tests, `init-dev`), without environment overlay.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.tls.is_none() && !self.listen.plaintext {
            return Err(ConfigError::Invalid(
                "listen: set [listen.tls] (mTLS) or, for development only, plaintext = true".into(),
            ));
        }
        if self.ephemeral.token_pool > 1024 || self.ephemeral.token_pool_max_age_secs == 0 {
            return Err(ConfigError::Invalid(
                "ephemeral: token_pool is at most 1024 and token_pool_max_age_secs at least 1"
                    .into(),
            ));
        }
        if self.token.recycle_drain_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "token: recycle_drain_ms is at most 60000 (key generation waits that long)".into(),
            ));
        }
        if let Some(u) = &self.listen.unix {
            let mut uids = std::collections::BTreeSet::new();
            for e in &u.engines {
                crate::server::EngineId::new(&e.engine).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "listen.unix.engines: {:?} is not an engine identity",
                        e.engine
                    ))
                })?;
                if !uids.insert(e.uid) {
                    return Err(ConfigError::Invalid(format!(
                        "listen.unix.engines: uid {} listed twice",
                        e.uid
                    )));
                }
            }
            if u.mode & !0o777 != 0 {
                return Err(ConfigError::Invalid(format!(
                    "listen.unix.mode: {:o} is not a permission mode",
                    u.mode
                )));
            }
        }
        if self.token.pin_env.is_none() && self.token.pin_file.is_none() {
            return Err(ConfigError::Invalid(
                "token: set pin_env or pin_file (the PIN never goes in this file)".into(),
            ));
        }
        if self.store.ticket_lifetime_secs > 7 * 24 * 3600 {
            return Err(ConfigError::Invalid(
                "store.ticket_lifetime_secs: RFC 8446 §4.6.1 caps ticket lifetime at 7 days".into(),
            ));
        }
        if self.freshness.test_vectors && !cfg!(feature = "test-vectors") {
            return Err(ConfigError::Invalid(
                "freshness.test_vectors: this build has no test-vector mode (it exists for the \
                 RFC 8448 known-answer tests, in builds with the `test-vectors` feature)"
                    .into(),
            ));
        }
        match (self.store.backend, &self.store.postgres) {
            (StoreBackend::Sqlite, _) if self.store.path.as_os_str().is_empty() => {
                return Err(ConfigError::Invalid(
                    "store: backend \"sqlite\" needs path".into(),
                ))
            }
            (StoreBackend::Postgres, None) => {
                return Err(ConfigError::Invalid(
                    "store: backend \"postgres\" needs a [store.postgres] section".into(),
                ))
            }
            (StoreBackend::Postgres, Some(pg)) => {
                if pg.password_env.is_some() && pg.password_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "store.postgres: set password_env or password_file, not both".into(),
                    ));
                }
                if pg.pool_size == 0 {
                    return Err(ConfigError::Invalid(
                        "store.postgres.pool_size must be > 0".into(),
                    ));
                }
                if pg.statement_timeout_ms == 0 {
                    return Err(ConfigError::Invalid(
                        "store.postgres.statement_timeout_ms must be > 0".into(),
                    ));
                }
            }
            _ => {}
        }
        if self.sessions.max == 0 || self.sessions.ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "sessions: max and ttl_secs must be > 0".into(),
            ));
        }
        let s = &self.sessions;
        if s.max_per_engine == 0 || s.max_per_engine > s.max {
            return Err(ConfigError::Invalid(
                "sessions: max_per_engine must be > 0 and at most max".into(),
            ));
        }
        if s.max_bytes_per_engine == 0 || s.max_bytes_per_engine > s.max_bytes {
            return Err(ConfigError::Invalid(
                "sessions: max_bytes_per_engine must be > 0 and at most max_bytes".into(),
            ));
        }
        self.limits.validate()?;
        if self.server_auth.enabled && self.server_auth.trust_anchors.is_none() {
            return Err(ConfigError::Invalid(
                "server_auth: enabled needs trust_anchors (a PEM file of CA certificates)".into(),
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for k in &self.keys {
            if !ids.insert(&k.id) {
                return Err(ConfigError::Invalid(format!(
                    "keys: duplicate id {:?}",
                    k.id
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listen]
        addr = "127.0.0.1:0"
        plaintext = true
        [token]
        label = "t"
        pin_env = "LURK_TEST_PIN"
        [store]
        path = "/tmp/x.sqlite"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.ephemeral.backend, EphemeralBackendKind::Token);
        assert_eq!(c.freshness.mode, FreshnessMode::Draft);
        assert!(!c.freshness.test_vectors);
        assert_eq!(c.sessions.ttl_secs, 30);
    }

    /// `[freshness] mode` is read by lurk-proto's `FreshnessMode` (defined once); an unknown
    /// name is refused with the names it accepts.
    #[test]
    fn freshness_mode_names() {
        let with =
            |m: &str| Config::from_toml(&format!("{MINIMAL}\n[freshness]\nmode = \"{m}\"\n"));
        assert_eq!(
            with("pylurk").unwrap().freshness.mode,
            FreshnessMode::Pylurk
        );
        assert_eq!(with("draft").unwrap().freshness.mode, FreshnessMode::Draft);
        let e = with("sha1").unwrap_err().to_string();
        assert!(e.contains("pylurk"), "{e}");
    }

    #[test]
    fn test_vector_mode_loads_only_in_builds_that_have_it() {
        let cfg = format!("{MINIMAL}\n[freshness]\ntest_vectors = true\n");
        let loaded = Config::from_toml(&cfg);
        if cfg!(feature = "test-vectors") {
            assert!(loaded.unwrap().freshness.test_vectors);
        } else {
            let e = loaded.unwrap_err().to_string();
            assert!(e.contains("no test-vector mode"), "{e}");
        }
    }

    #[test]
    fn a_pin_in_the_config_file_is_refused() {
        let with_pin = MINIMAL.replace("pin_env = \"LURK_TEST_PIN\"", "pin = \"1234\"");
        assert!(Config::from_toml(&with_pin).is_err());
    }

    #[test]
    fn only_sectioned_lurk_variables_are_overrides() {
        // Variable names no other test uses.
        std::env::set_var("LURK_UNRELATED_TEST_VARIABLE", "x");
        std::env::set_var("LURK_SESSIONS__TTL_SECS", "7");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cs.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path).expect("an unrelated LURK_ variable is not a config key");
        std::env::remove_var("LURK_SESSIONS__TTL_SECS");
        assert_eq!(c.sessions.ttl_secs, 7);
    }

    #[test]
    fn unix_listener_map_is_checked() {
        let ok = format!(
            "{MINIMAL}\n[listen.unix]\npath = \"/tmp/cs.sock\"\n[[listen.unix.engines]]\nuid = 1000\nengine = \"engine-a\"\n"
        );
        let u = Config::from_toml(&ok).unwrap().listen.unix.unwrap();
        assert_eq!(u.mode, 0o660);
        assert_eq!(
            (u.engines[0].uid, u.engines[0].engine.as_str()),
            (1000, "engine-a")
        );
        for bad in [
            "[[listen.unix.engines]]\nuid = 1000\nengine = \"engine-b\"\n",
            "[[listen.unix.engines]]\nuid = 1001\nengine = \"\"\n",
        ] {
            assert!(Config::from_toml(&format!("{ok}{bad}")).is_err(), "{bad}");
        }
        let bad_mode = ok.replace("path = ", "mode = 0o4660\npath = ");
        assert!(Config::from_toml(&bad_mode).is_err());
    }

    #[test]
    fn limits_default_and_are_checked() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        let small = format!("{MINIMAL}\n[limits]\nrequest_timeout_ms = 500\n");
        assert_eq!(
            Config::from_toml(&small).unwrap().limits.request_timeout_ms,
            500
        );
        for bad in [
            "request_timeout_ms = 0",
            "max_frame_size = 1024",
            "max_concurrent_streams = 0",
            "max_exchanges_per_engine = 0",
            "no_such_limit = 1",
        ] {
            assert!(
                Config::from_toml(&format!("{MINIMAL}\n[limits]\n{bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn postgres_store_section_parses() {
        let pg = MINIMAL.replace(
            "path = \"/tmp/x.sqlite\"",
            "backend = \"postgres\"\n[store.postgres]\ndsn = \"host=db user=lurk\"\n\
             password_file = \"/run/secrets/pg\"\ntls_ca = \"/etc/lurk/pg-ca.pem\"",
        );
        let c = Config::from_toml(&pg).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        let p = c.store.postgres.unwrap();
        assert_eq!(p.tls_ca.as_deref(), Some(Path::new("/etc/lurk/pg-ca.pem")));
        assert_eq!(p.pool_size, 8);
        // The password never goes in the file.
        let with_pw = pg.replace("password_file", "password");
        assert!(Config::from_toml(&with_pw).is_err());
        // A postgres backend without its section, or a sqlite one without a path.
        let bare = MINIMAL.replace("path = \"/tmp/x.sqlite\"", "backend = \"postgres\"");
        assert!(Config::from_toml(&bare).is_err());
        assert!(Config::from_toml(&MINIMAL.replace("path = \"/tmp/x.sqlite\"", "")).is_err());
    }

    #[test]
    fn server_auth_is_off_by_default_and_needs_anchors_when_on() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.server_auth, ServerAuthConfig::default());
        assert!(!c.server_auth.enabled);
        let on = format!("{MINIMAL}\n[server_auth]\nenabled = true\n");
        assert!(Config::from_toml(&on).is_err());
        let on = format!("{on}trust_anchors = \"/etc/lurk/servers-ca.pem\"\n");
        let c = Config::from_toml(&on).unwrap();
        assert!(c.server_auth.enabled);
        let bad = format!("{MINIMAL}\n[server_auth]\nanchors = \"x\"\n");
        assert!(Config::from_toml(&bad).is_err());
    }

    #[test]
    fn metrics_off_and_access_log_on_by_default() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.metrics, MetricsConfig::default());
        assert!(c.metrics.addr.is_none());
        assert!(c.log.access);
        let on = format!(
            "{MINIMAL}\n[metrics]\naddr = \"127.0.0.1:9464\"\nmax_engine_labels = 4\ntop_engines = 3\n[log]\naccess = false\n"
        );
        let c = Config::from_toml(&on).unwrap();
        assert_eq!(c.metrics.addr.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(c.metrics.max_engine_labels, 4);
        assert_eq!(c.metrics.top_engines, 3);
        assert!(!c.log.access);
        assert!(Config::from_toml(&format!("{MINIMAL}\n[metrics]\nport = 1\n")).is_err());
    }

    /// The planned module recycle is on by default only for a module that keeps destroyed
    /// session objects; 0 turns it off; the drain is bounded.
    #[test]
    fn module_recycle_defaults_to_on_only_for_modules_that_keep_objects() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.token.recycle_after_objects, None);
        assert_eq!(c.token.recycle_drain_ms, 3000);
        assert_eq!(
            c.token.recycle_threshold(true),
            DEFAULT_RECYCLE_AFTER_OBJECTS
        );
        assert_eq!(c.token.recycle_threshold(false), 0);
        let with = |extra: &str| {
            Config::from_toml(&MINIMAL.replace("[store]", &format!("{extra}\n[store]")))
        };
        let c = with("recycle_after_objects = 0").unwrap();
        assert_eq!(c.token.recycle_threshold(true), 0);
        let c = with("recycle_after_objects = 50\nrecycle_drain_ms = 100").unwrap();
        assert_eq!(c.token.recycle_threshold(true), 50);
        assert_eq!(c.token.recycle_threshold(false), 50);
        assert_eq!(c.token.recycle_drain_ms, 100);
        assert!(with("recycle_drain_ms = 60001").is_err());
    }

    #[test]
    fn plaintext_must_be_explicit() {
        let no_tls = MINIMAL.replace("plaintext = true", "");
        assert!(Config::from_toml(&no_tls).is_err());
    }
}
