//! Telemetry: Prometheus metrics and the access log.
//!
//! Every RPC passes through `service::run`, which calls [`Probe::start`] and
//! [`Probe::finish`]: one counter, one histogram observation and (if `[log] access`) one
//! access-log line per exchange. The metrics are served in the Prometheus text format on a
//! listener of their own ([`serve`], `[metrics] addr`, plain HTTP `GET /metrics`), never on
//! the engines' gRPC port.
//!
//! The token is measured in one place: every PKCS#11 session checkout (`Token::session_for`,
//! token/mod.rs) carries a [`TokenCall`], which times the wait, the session's use by the
//! operation it was taken for ([`TokenOp`]), and adds both to the time the running exchange
//! spent in the token ([`token_time_of`]). The gauges of the session pool, of the token's
//! health and of the open sessions (in total and of the top engines) are read at scrape
//! time.
//!
//! Every label value comes from a fixed set: the exchange names, the LURK status names
//! (draft-mglt-lurk-tls13 §4, `docs/protocol.md`) and `success`, token operations,
//! signature schemes and groups, transport refusal reasons, and engine identities capped at
//! `[metrics] max_engine_labels` (the others share `engine="other"`) or, for open sessions,
//! the `[metrics] top_engines` with the most at the last scrape. No session id, ticket or
//! PSK identity is ever a label. The access log names a session by the first 8 bytes of
//! SHA-256 of its id, never the id itself.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use lurk_proto::pb;
use lurk_proto::wire::{NamedGroup, SignatureScheme};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::config::{LogConfig, MetricsConfig};
use crate::cs::Cs;
use crate::error::ServiceError;

/// The `status` label of an exchange that succeeded.
pub const SUCCESS: &str = "success";
/// The `engine` label shared by engines past the cap.
pub const OTHER_ENGINES: &str = "other";
/// The `engine` label of a request refused before an engine identity was established.
pub const NO_ENGINE: &str = "none";
/// The `mechanism` label of a token operation that uses no mechanism.
const NO_MECHANISM: &str = "none";
/// Scrapes served at once; more connections wait in the accept queue.
const MAX_SCRAPES: usize = 4;
/// A scrape connection (request read, answer written) at most.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A LURK exchange, as the request names it.
pub trait Exchange {
    /// The exchange's name: the `exchange` label and access-log field.
    const NAME: &'static str;
    /// The session id the request carries (empty if none).
    fn session_id(&self) -> &[u8] {
        &[]
    }
}

/// What the telemetry reads from an answer.
pub trait Answer {
    /// The session id the answer opens (empty if none).
    fn session_id(&self) -> &[u8] {
        &[]
    }
    /// Tickets the exchange stored.
    fn tickets_stored(&self) -> u32 {
        0
    }
}

macro_rules! exchange {
    ($req:ty, $name:literal) => {
        impl Exchange for $req {
            const NAME: &'static str = $name;
        }
    };
    ($req:ty, $name:literal, with_session) => {
        impl Exchange for $req {
            const NAME: &'static str = $name;
            fn session_id(&self) -> &[u8] {
                &self.session_id
            }
        }
    };
}

exchange!(pb::CInitClientHelloRequest, "c_init_client_hello");
exchange!(pb::CClientHelloRequest, "c_client_hello", with_session);
exchange!(pb::CServerHelloRequest, "c_server_hello", with_session);
exchange!(
    pb::CClientFinishedRequest,
    "c_client_finished",
    with_session
);
exchange!(pb::CServerFlightRequest, "c_server_flight", with_session);
exchange!(pb::CInitClientFinishedRequest, "c_init_client_finished");
exchange!(pb::CPostHandAuthRequest, "c_post_hand_auth", with_session);
exchange!(
    pb::CRegisterTicketsRequest,
    "c_register_tickets",
    with_session
);
exchange!(pb::CapabilitiesRequest, "capabilities");
exchange!(pb::PingRequest, "ping");

impl Answer for pb::CInitClientHelloResponse {
    fn session_id(&self) -> &[u8] {
        &self.session_id
    }
}
impl Answer for pb::CInitClientFinishedResponse {
    fn session_id(&self) -> &[u8] {
        &self.session_id
    }
}
impl Answer for pb::CRegisterTicketsResponse {
    fn tickets_stored(&self) -> u32 {
        self.registered
    }
}
impl Answer for pb::CClientHelloResponse {}
impl Answer for pb::CServerHelloResponse {}
impl Answer for pb::CClientFinishedResponse {}
impl Answer for pb::CServerFlightResponse {}
impl Answer for pb::CPostHandAuthResponse {}
impl Answer for pb::CapabilitiesResponse {}
impl Answer for pb::PingResponse {}

/// The metrics of one CS (the process has one, [`metrics`]; unit tests make their own).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    refusals: IntCounterVec,
    sessions_open: IntGauge,
    tickets_stored: IntCounter,
    tickets_taken: IntCounter,
    token_wait: Histogram,
    token_held: Histogram,
    store_ops: HistogramVec,
    tls_failures: IntCounterVec,
    token_ops: HistogramVec,
    exchange_token: HistogramVec,
    token_up: IntGaugeVec,
    pool_size: IntGauge,
    pool_in_use: IntGauge,
    pool_idle: IntGauge,
    pool_waiting: IntGauge,
    token_objects: IntGauge,
    token_recycles: IntCounter,
    token_recycle_given_up: IntCounter,
    sessions_by_engine: IntGaugeVec,
    transport_refusals: IntCounterVec,
    /// Engine identities with a label of their own, at most `max_engines`.
    engines: Mutex<HashSet<String>>,
    max_engines: AtomicUsize,
    /// Engines with a series of their own in `sessions_by_engine`.
    top_engines: AtomicUsize,
    /// One scrape at a time updates the gauges read at scrape time and renders them.
    scrape: Mutex<()>,
}

/// Seconds, from 50 µs to about 3.3 s (doubling).
fn latency_buckets() -> Vec<f64> {
    (0..17).map(|i| 50e-6 * f64::from(1u32 << i)).collect()
}

impl Metrics {
    /// Fresh metrics, every one registered.
    pub fn new(max_engine_labels: usize) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("lurk_cs_requests_total", "LURK exchanges answered, by exchange and LURK status (success or the refusal's status)"),
            &["exchange", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "lurk_cs_request_duration_seconds",
                "Time to answer a LURK exchange (engine authenticated to answer ready), by exchange",
            )
            .buckets(latency_buckets()),
            &["exchange"],
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new("lurk_cs_refusals_total", "Refused LURK exchanges, by LURK status and engine identity (capped; the rest under engine=\"other\")"),
            &["reason", "engine"],
        )
        .expect("valid metric");
        let sessions_open = IntGauge::new(
            "lurk_cs_sessions_open",
            "LURK sessions open (all engines), read at scrape time",
        )
        .expect("valid metric");
        let tickets_stored = IntCounter::new(
            "lurk_cs_tickets_stored_total",
            "Session tickets stored (c_register_tickets)",
        )
        .expect("valid metric");
        let tickets_taken = IntCounter::new(
            "lurk_cs_tickets_taken_total",
            "Stored tickets taken (used once) to resume a session",
        )
        .expect("valid metric");
        let token_wait = Histogram::with_opts(
            HistogramOpts::new(
                "lurk_cs_token_session_wait_seconds",
                "Wait for a PKCS#11 session of the pool",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric");
        let token_held = Histogram::with_opts(
            HistogramOpts::new(
                "lurk_cs_token_session_held_seconds",
                "Time a PKCS#11 session of the pool is held: the token operations of one call",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric");
        let store_ops = HistogramVec::new(
            HistogramOpts::new(
                "lurk_cs_store_operation_seconds",
                "Ticket and PSK store calls made by exchanges, by operation (SQLite or PostgreSQL)",
            )
            .buckets(latency_buckets()),
            &["operation"],
        )
        .expect("valid metric");
        let tls_failures = IntCounterVec::new(
            Opts::new(
                "lurk_cs_tls_handshake_failures_total",
                "Engine connections dropped before their first request, by reason (mTLS handshake \
                 failures, timeouts, evictions, certificates naming no engine)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let token_ops = HistogramVec::new(
            HistogramOpts::new(
                "lurk_cs_token_operation_seconds",
                "PKCS#11 session held by one token operation, by operation (sign, derive, \
                 generate_key_pair, destroy, seal, unseal, find, probe, other) and mechanism \
                 (signature scheme, (EC)DHE group, aes_gcm or none)",
            )
            .buckets(latency_buckets()),
            &["operation", "mechanism"],
        )
        .expect("valid metric");
        let exchange_token = HistogramVec::new(
            HistogramOpts::new(
                "lurk_cs_request_token_seconds",
                "Time an exchange's operation spent in token calls (waits for a pooled \
                 session included), by exchange",
            )
            .buckets(latency_buckets()),
            &["exchange"],
        )
        .expect("valid metric");
        let token_up = IntGaugeVec::new(
            Opts::new(
                "lurk_cs_token_up",
                "1 while the PKCS#11 token answers, 0 while it is down (exchanges fail fast \
                 with token_unavailable until it is re-initialised); read at scrape time",
            ),
            &["token"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let pool_size = gauge(
            "lurk_cs_token_pool_size",
            "PKCS#11 sessions of the pool ([token] pool_size)",
        );
        let pool_in_use = gauge(
            "lurk_cs_token_pool_in_use",
            "Pooled PKCS#11 sessions checked out (or being opened) at scrape time",
        );
        let pool_idle = gauge(
            "lurk_cs_token_pool_idle",
            "Pooled PKCS#11 sessions idle at scrape time",
        );
        let pool_waiting = gauge(
            "lurk_cs_token_pool_waiting",
            "Callers waiting for a pooled PKCS#11 session at scrape time",
        );
        let token_objects = gauge(
            "lurk_cs_token_session_objects_made",
            "PKCS#11 session objects made since the module was (re)initialised (token key \
             pairs and derived secrets); a module recycle ([token] recycle_after_objects) \
             starts it again from 0; read at scrape time",
        );
        let token_recycles = IntCounter::new(
            "lurk_cs_token_recycles_total",
            "Planned re-initialisations of a PKCS#11 module that keeps destroyed session \
             objects ([token] recycle_after_objects)",
        )
        .expect("valid metric");
        let token_recycle_given_up = IntCounter::new(
            "lurk_cs_token_recycle_given_up_total",
            "Token key pairs still in use when a planned module recycle's drain ended \
             ([token] recycle_drain_ms): their handshakes were refused with token_unavailable",
        )
        .expect("valid metric");
        let sessions_by_engine = IntGaugeVec::new(
            Opts::new(
                "lurk_cs_sessions_open_by_engine",
                "LURK sessions open of the [metrics] top_engines engines with the most, read at \
                 scrape time; the others summed under engine=\"other\"",
            ),
            &["engine"],
        )
        .expect("valid metric");
        let transport_refusals = IntCounterVec::new(
            Opts::new(
                "lurk_cs_transport_refusals_total",
                "Requests and connections refused or closed by the transport ([limits]), by \
                 reason and engine identity (capped as lurk_cs_refusals_total)",
            ),
            &["reason", "engine"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "lurk_cs_build_info",
                "Always 1: the version of this lurk-cs",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(refusals.clone()),
            Box::new(sessions_open.clone()),
            Box::new(tickets_stored.clone()),
            Box::new(tickets_taken.clone()),
            Box::new(token_wait.clone()),
            Box::new(token_held.clone()),
            Box::new(store_ops.clone()),
            Box::new(tls_failures.clone()),
            Box::new(token_ops.clone()),
            Box::new(exchange_token.clone()),
            Box::new(token_up.clone()),
            Box::new(pool_size.clone()),
            Box::new(pool_in_use.clone()),
            Box::new(pool_idle.clone()),
            Box::new(pool_waiting.clone()),
            Box::new(token_objects.clone()),
            Box::new(token_recycles.clone()),
            Box::new(token_recycle_given_up.clone()),
            Box::new(sessions_by_engine.clone()),
            Box::new(transport_refusals.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            duration,
            refusals,
            sessions_open,
            tickets_stored,
            tickets_taken,
            token_wait,
            token_held,
            store_ops,
            tls_failures,
            token_ops,
            exchange_token,
            token_up,
            pool_size,
            pool_in_use,
            pool_idle,
            pool_waiting,
            token_objects,
            token_recycles,
            token_recycle_given_up,
            sessions_by_engine,
            transport_refusals,
            engines: Mutex::new(HashSet::new()),
            max_engines: AtomicUsize::new(max_engine_labels),
            top_engines: AtomicUsize::new(10),
            scrape: Mutex::new(()),
        }
    }

    /// Counts one exchange.
    fn exchange(&self, exchange: &str, status: &str, took: Duration) {
        self.requests.with_label_values(&[exchange, status]).inc();
        self.duration
            .with_label_values(&[exchange])
            .observe(took.as_secs_f64());
    }

    /// Counts one refusal; `engine` gets a label of its own while fewer than the cap have.
    fn refusal(&self, reason: &str, engine: Option<&str>) {
        let label = self.engine_label(engine);
        self.refusals.with_label_values(&[reason, label]).inc();
    }

    /// Counts one refusal of the transport, the engine labelled as for [`Self::refusal`].
    fn transport_refusal(&self, reason: &'static str, engine: Option<&str>) {
        let label = self.engine_label(engine);
        self.transport_refusals
            .with_label_values(&[reason, label])
            .inc();
    }

    /// The `engine` label of a refusal: the engine's identity while fewer than the cap have
    /// one (first come), else `other`; `none` before an engine was identified.
    fn engine_label<'a>(&self, engine: Option<&'a str>) -> &'a str {
        let Some(engine) = engine else {
            return NO_ENGINE;
        };
        let mut seen = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        let own = seen.contains(engine)
            || (seen.len() < self.max_engines.load(Ordering::Relaxed)
                && seen.insert(engine.to_owned()));
        if own {
            engine
        } else {
            OTHER_ENGINES
        }
    }

    /// Sets the gauges read at scrape time from `cs`: sessions open (in total and of the
    /// top engines), the token's health and its session pool.
    fn read(&self, cs: &Cs) {
        let top = self.top_engines.load(Ordering::Relaxed);
        let (engines, others) = cs.sessions.top_engines(top);
        self.sessions_open
            .set((engines.iter().map(|(_, n)| n).sum::<usize>() + others) as i64);
        self.sessions_by_engine.reset();
        for (engine, n) in &engines {
            self.sessions_by_engine
                .with_label_values(&[engine.as_str()])
                .set(*n as i64);
        }
        if top > 0 {
            self.sessions_by_engine
                .with_label_values(&[OTHER_ENGINES])
                .set(others as i64);
        }
        if let Some(token) = &cs.token {
            self.token_up
                .with_label_values(&[token.label()])
                .set(i64::from(token.healthy()));
            let pool = token.pool_usage();
            self.pool_size.set(pool.size as i64);
            self.pool_in_use.set(pool.in_use as i64);
            self.pool_idle.set(pool.idle as i64);
            self.pool_waiting.set(pool.waiting as i64);
            self.token_objects
                .set(i64::try_from(token.recycle_stats().objects).unwrap_or(i64::MAX));
        }
    }

    /// Reads `cs` and renders every metric.
    fn scrape(&self, cs: &Cs) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.read(cs);
        self.render()
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing to a Vec fails only on a malformed metric, which `new` cannot make.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics::new(32));
static ACCESS_LOG: AtomicBool = AtomicBool::new(true);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Applies `[metrics]` and `[log] access` (at start, before serving).
pub fn configure(metrics_cfg: &MetricsConfig, log: &LogConfig) {
    METRICS
        .max_engines
        .store(metrics_cfg.max_engine_labels, Ordering::Relaxed);
    METRICS
        .top_engines
        .store(metrics_cfg.top_engines, Ordering::Relaxed);
    ACCESS_LOG.store(log.access, Ordering::Relaxed);
}

/// A planned module recycle ran (token/pool/recycle.rs), giving up `given_up` key pairs.
pub fn token_recycled(given_up: u64) {
    METRICS.token_recycles.inc();
    METRICS.token_recycle_given_up.inc_by(given_up);
}

/// A stored ticket was taken to resume a session (it is used once).
pub fn ticket_taken() {
    METRICS.tickets_taken.inc();
}

/// Runs a store call of an exchange and records its latency under `operation` (a fixed name).
pub fn store_op<T>(operation: &'static str, call: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = call();
    METRICS
        .store_ops
        .with_label_values(&[operation])
        .observe(t.elapsed().as_secs_f64());
    r
}

/// An engine connection dropped before serving: `reason` is one of a fixed set
/// (transport.rs, [`tls_failure_reason`]).
pub fn tls_handshake_failed(reason: &'static str) {
    METRICS.tls_failures.with_label_values(&[reason]).inc();
}

/// The bounded label for a failed server-side TLS handshake: rustls' error kind when there
/// is one, else the I/O error's.
pub fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::NoCertificatesPresented => "no_client_certificate",
            rustls::Error::InvalidCertificate(_) => "invalid_certificate",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::PeerIncompatible(_) => "peer_incompatible",
            rustls::Error::PeerMisbehaved(_) => "peer_misbehaved",
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::InvalidMessage(_) => "invalid_message",
            _ => "tls_other",
        };
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "eof",
        std::io::ErrorKind::InvalidData => "invalid_data",
        _ => "io",
    }
}

/// What a PKCS#11 session is taken for: the `operation` and `mechanism` labels of
/// `lurk_cs_token_operation_seconds`, each from a fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenOp {
    operation: &'static str,
    mechanism: &'static str,
}

impl TokenOp {
    const fn new(operation: &'static str, mechanism: &'static str) -> Self {
        Self {
            operation,
            mechanism,
        }
    }
    /// Anything else (administration: key import and listing, random bytes, wrapping).
    pub const OTHER: Self = Self::new("other", NO_MECHANISM);
    /// The health check's live call.
    pub const PROBE: Self = Self::new("probe", NO_MECHANISM);
    /// Looking a signing key up by URI or label.
    pub const FIND: Self = Self::new("find", NO_MECHANISM);
    /// Destroying an (EC)DHE key pair.
    pub const DESTROY: Self = Self::new("destroy", NO_MECHANISM);
    /// Sealing a PSK (CKM_AES_GCM).
    pub const SEAL: Self = Self::new("seal", "aes_gcm");
    /// Unsealing a PSK (CKM_AES_GCM).
    pub const UNSEAL: Self = Self::new("unseal", "aes_gcm");

    /// A signature: the scheme names the mechanism, hash and key (RFC 8446 §4.2.3).
    pub fn sign(scheme: SignatureScheme) -> Self {
        Self::new("sign", scheme.name())
    }
    /// An (EC)DHE key pair generated for `group`.
    pub fn generate_key_pair(group: NamedGroup) -> Self {
        Self::new("generate_key_pair", group.name())
    }
    /// An (EC)DHE agreement (CKM_ECDH1_DERIVE) on `group`.
    pub fn derive(group: NamedGroup) -> Self {
        Self::new("derive", group.name())
    }
}

thread_local! {
    /// Token time of the exchange this thread runs ([`token_time_of`]).
    static TOKEN_TIME: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// [`TokenCall`]s alive on this thread: a nested one is not added twice.
    static TOKEN_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// One checkout of a pooled PKCS#11 session, from the moment it is asked for until the
/// session goes back (token/mod.rs makes it, token/pool.rs keeps it with the session). When
/// dropped it records the wait, the time the session was held under its [`TokenOp`], and
/// adds the whole to the running exchange's token time.
pub struct TokenCall {
    op: TokenOp,
    asked: Instant,
    got: Option<Instant>,
    outer: bool,
}

impl TokenCall {
    /// A session is asked for `op`.
    pub fn start(op: TokenOp) -> Self {
        let outer = TOKEN_DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get() == 1
        });
        Self {
            op,
            asked: Instant::now(),
            got: None,
            outer,
        }
    }

    /// The session was checked out: the wait ends, the hold begins.
    pub fn checked_out(&mut self) {
        let now = Instant::now();
        METRICS
            .token_wait
            .observe(now.duration_since(self.asked).as_secs_f64());
        self.got = Some(now);
    }
}

impl Drop for TokenCall {
    fn drop(&mut self) {
        if let Some(got) = self.got {
            let held = got.elapsed().as_secs_f64();
            METRICS.token_held.observe(held);
            METRICS
                .token_ops
                .with_label_values(&[self.op.operation, self.op.mechanism])
                .observe(held);
        }
        TOKEN_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if self.outer {
            let spent = self.asked.elapsed();
            TOKEN_TIME.with(|t| t.set(t.get() + spent));
        }
    }
}

/// Runs the operation of exchange `R` (on the thread that calls this: operations run
/// synchronously, inline or on one blocking thread) and records the time it spent in token
/// calls under `lurk_cs_request_token_seconds{exchange}`.
pub fn token_time_of<R: Exchange, T>(op: impl FnOnce() -> T) -> T {
    TOKEN_TIME.with(|t| t.set(Duration::ZERO));
    let result = op();
    let spent = TOKEN_TIME.with(|t| t.replace(Duration::ZERO));
    METRICS
        .exchange_token
        .with_label_values(&[R::NAME])
        .observe(spent.as_secs_f64());
    result
}

/// A request or connection refused by the transport (transport.rs): `reason` is one of
/// `max_connections`, `max_connections_per_engine`, `max_requests`,
/// `max_requests_per_engine`, `request_timeout`.
pub fn transport_refused(reason: &'static str, engine: Option<&str>) {
    METRICS.transport_refusal(reason, engine);
}

/// A connection the transport closed for `why` (transport.rs, `Activity::closing`): no
/// first request in time, or an answer the peer did not take in time, are counted as
/// refusals; an idle connection's close is not.
pub fn transport_closed(why: &'static str, engine: Option<&str>) {
    let reason = match why {
        "no request" => "first_request_timeout",
        "request overdue" => "answer_overdue",
        _ => return,
    };
    METRICS.transport_refusal(reason, engine);
}

/// A short, one-way name of a session for the access log: SHA-256 of the id, first 8
/// bytes in hex. The id itself (which the engine presents to use the session) is never logged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionHash(Option<[u8; 8]>);

impl SessionHash {
    /// The hash of session id `id`; an empty id (an exchange without a session) prints `-`.
    pub fn of(id: &[u8]) -> Self {
        if id.is_empty() {
            return Self(None);
        }
        let d = ring::digest::digest(&ring::digest::SHA256, id);
        let mut h = [0u8; 8];
        h.copy_from_slice(&d.as_ref()[..8]);
        Self(Some(h))
    }
}

impl fmt::Display for SessionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("-"),
            Some(h) => h.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

/// One exchange being measured: made when the request arrives, finished with its result.
pub struct Probe {
    exchange: &'static str,
    started: Instant,
    session: SessionHash,
}

impl Probe {
    /// Starts timing `req`'s exchange.
    pub fn start<R: Exchange>(req: &R) -> Self {
        let session = if ACCESS_LOG.load(Ordering::Relaxed) {
            SessionHash::of(req.session_id())
        } else {
            SessionHash(None)
        };
        Self {
            exchange: R::NAME,
            started: Instant::now(),
            session,
        }
    }

    /// Counts the exchange and writes its access-log line. `engine` is `None` when the
    /// request was refused before the engine was identified.
    pub fn finish<A: Answer>(self, engine: Option<&str>, result: &Result<A, ServiceError>) {
        self.finish_into(&METRICS, engine, result);
    }

    fn finish_into<A: Answer>(
        self,
        m: &Metrics,
        engine: Option<&str>,
        result: &Result<A, ServiceError>,
    ) {
        let took = self.started.elapsed();
        let mut session = self.session;
        let status = match result {
            Ok(answer) => {
                let stored = answer.tickets_stored();
                if stored > 0 {
                    m.tickets_stored.inc_by(u64::from(stored));
                }
                if session.0.is_none() && ACCESS_LOG.load(Ordering::Relaxed) {
                    session = SessionHash::of(answer.session_id());
                }
                SUCCESS
            }
            Err(e) => {
                let reason = e.lurk_status().name();
                m.refusal(reason, engine);
                reason
            }
        };
        m.exchange(self.exchange, status, took);
        if ACCESS_LOG.load(Ordering::Relaxed) {
            tracing::info!(
                target: "lurk_cs::access",
                engine = engine.unwrap_or(NO_ENGINE),
                exchange = self.exchange,
                status,
                duration_us = took.as_micros() as u64,
                session = %session,
                "exchange"
            );
        }
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener`, reading the open sessions
/// of `cs` at each scrape. Runs until the runtime stops. At most `MAX_SCRAPES`
/// connections are served at once, each for at most `SCRAPE_TIMEOUT`.
pub async fn serve(listener: TcpListener, cs: Arc<Cs>) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cs = cs.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let cs = cs.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &cs)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, conn).await;
        });
    }
}

fn answer<B>(req: &hyper::Request<B>, cs: &Cs) -> hyper::Response<Full<Bytes>> {
    let (status, ctype, body) = if req.uri().path() != "/metrics" {
        (
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        )
    } else if req.method() != hyper::Method::GET {
        (
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            Bytes::from_static(b"GET only\n"),
        )
    } else {
        (
            hyper::StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(METRICS.scrape(cs)),
        )
    };
    let mut resp = hyper::Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use lurk_proto::status::LurkStatus;

    fn refused(status: LurkStatus) -> Result<pb::PingResponse, ServiceError> {
        Err(ServiceError::refuse(status, "test"))
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn exchanges_and_refusals_are_counted_with_bounded_labels() {
        let m = Metrics::new(2);
        let ok: Result<pb::PingResponse, ServiceError> = Ok(pb::PingResponse::default());
        Probe::start(&pb::PingRequest {}).finish_into(&m, Some("a"), &ok);
        for engine in ["a", "b", "c", "d", "a"] {
            Probe::start(&pb::PingRequest {}).finish_into(
                &m,
                Some(engine),
                &refused(LurkStatus::TooManyRequests),
            );
        }
        Probe::start(&pb::PingRequest {}).finish_into(
            &m,
            None,
            &refused(LurkStatus::Unauthenticated),
        );
        let text = m.render();
        let get = |p: &str| line(&text, p).unwrap_or_else(|| panic!("no {p} in\n{text}"));
        get("lurk_cs_requests_total{exchange=\"ping\",status=\"success\"} 1");
        get("lurk_cs_requests_total{exchange=\"ping\",status=\"too_many_requests\"} 5");
        get("lurk_cs_requests_total{exchange=\"ping\",status=\"unauthenticated\"} 1");
        get("lurk_cs_request_duration_seconds_count{exchange=\"ping\"} 7");
        // Two engines get their own label; c and d share "other".
        get("lurk_cs_refusals_total{engine=\"a\",reason=\"too_many_requests\"} 2");
        get("lurk_cs_refusals_total{engine=\"b\",reason=\"too_many_requests\"} 1");
        get("lurk_cs_refusals_total{engine=\"other\",reason=\"too_many_requests\"} 2");
        get("lurk_cs_refusals_total{engine=\"none\",reason=\"unauthenticated\"} 1");
        assert!(!text.contains("engine=\"c\""), "{text}");
        get(&format!(
            "lurk_cs_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ));
    }

    #[test]
    fn stored_tickets_are_counted_from_the_answer() {
        let m = Metrics::new(2);
        let ok: Result<_, ServiceError> = Ok(pb::CRegisterTicketsResponse {
            registered: 3,
            ..Default::default()
        });
        Probe::start(&pb::CRegisterTicketsRequest::default()).finish_into(&m, Some("a"), &ok);
        assert!(line(&m.render(), "lurk_cs_tickets_stored_total 3").is_some());
    }

    /// Every metric family, each with one series (a labelled family is rendered only once
    /// it has one).
    fn every_family() -> String {
        let m = Metrics::new(1);
        m.exchange("ping", SUCCESS, Duration::ZERO);
        m.refusal("invalid_psk", None);
        m.store_ops.with_label_values(&["take_ticket"]).observe(0.0);
        m.tls_failures.with_label_values(&["timeout"]).inc();
        m.token_ops
            .with_label_values(&["sign", "ed25519"])
            .observe(0.0);
        m.exchange_token.with_label_values(&["ping"]).observe(0.0);
        m.token_up.with_label_values(&["t"]).set(1);
        m.sessions_by_engine.with_label_values(&["e"]).set(1);
        m.transport_refusal("max_requests", None);
        m.render()
    }

    /// The names of the CS's metrics `text` (a PromQL or rules file) uses, histogram
    /// suffixes removed.
    fn metric_names(text: &str) -> Vec<&str> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("lurk_cs_"))
            .map(|w| {
                ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| w.strip_suffix(s))
                    .unwrap_or(w)
            })
            .collect()
    }

    /// The Grafana dashboard is valid JSON, queries only metrics this module defines, and
    /// shows every one of them.
    #[test]
    fn the_dashboard_shows_every_metric_defined_here_and_no_other() {
        let text = include_str!("../../deploy/grafana/lurk-cs.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("dashboard JSON");
        let defined = every_family();
        let mut used = HashSet::new();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                for name in metric_names(target["expr"].as_str().unwrap()) {
                    assert!(
                        defined.contains(&format!("# TYPE {name} ")),
                        "{name} is not a metric of the CS"
                    );
                    used.insert(name);
                }
            }
        }
        for line in defined.lines() {
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|l| l.split(' ').next())
            {
                assert!(used.contains(name), "{name} is not on the dashboard");
            }
        }
    }

    /// The alerting rules (deploy/prometheus/, run by promtool in the e2e suite) and their
    /// cases name only metrics this module defines.
    #[test]
    fn the_alerting_rules_use_the_metrics_defined_here() {
        let defined = every_family();
        for text in [
            include_str!("../../deploy/prometheus/lurk-cs-alerts.yml"),
            include_str!("../../deploy/prometheus/lurk-cs-alerts.test.yml"),
        ] {
            let names = metric_names(text);
            assert!(names.len() >= 5);
            for name in names {
                assert!(
                    defined.contains(&format!("# TYPE {name} ")),
                    "{name} is not a metric of the CS"
                );
            }
        }
    }

    /// A token call adds its wait and hold to the running exchange's token time once, even
    /// when another call runs inside it; the hold is recorded under its operation.
    #[test]
    fn token_time_counts_each_call_once_and_holds_by_operation() {
        let op = TokenOp::new("test_op", "test_mechanism");
        let series = || {
            METRICS
                .token_ops
                .with_label_values(&["test_op", "test_mechanism"])
                .get_sample_count()
        };
        let before = series();
        let (spent, elapsed) = token_time_of::<pb::PingRequest, _>(|| {
            let start = Instant::now();
            let mut outer = TokenCall::start(op);
            outer.checked_out();
            std::thread::sleep(Duration::from_millis(20));
            {
                // A nested call (a destroy while a session is held) is inside the outer.
                let mut inner = TokenCall::start(op);
                inner.checked_out();
                std::thread::sleep(Duration::from_millis(10));
            }
            // A checkout that failed: its wait counts, no hold.
            drop(TokenCall::start(op));
            drop(outer);
            (TOKEN_TIME.with(Cell::get), start.elapsed())
        });
        assert!(spent >= Duration::from_millis(30), "{spent:?}");
        assert!(spent <= elapsed, "counted twice: {spent:?} in {elapsed:?}");
        assert_eq!(series() - before, 2);
        // Reset for the next exchange on this thread.
        assert_eq!(TOKEN_TIME.with(Cell::get), Duration::ZERO);
        assert_eq!(TOKEN_DEPTH.with(Cell::get), 0);
    }

    #[test]
    fn transport_refusals_share_the_engine_label_cap() {
        let m = Metrics::new(1);
        m.refusal("invalid_psk", Some("a"));
        m.transport_refusal("max_requests_per_engine", Some("a"));
        m.transport_refusal("max_requests_per_engine", Some("b"));
        m.transport_refusal("max_connections", None);
        let text = m.render();
        let get = |p: &str| line(&text, p).unwrap_or_else(|| panic!("no {p} in\n{text}"));
        get("lurk_cs_transport_refusals_total{engine=\"a\",reason=\"max_requests_per_engine\"} 1");
        get("lurk_cs_transport_refusals_total{engine=\"other\",reason=\"max_requests_per_engine\"} 1");
        get("lurk_cs_transport_refusals_total{engine=\"none\",reason=\"max_connections\"} 1");
    }

    #[test]
    fn a_session_hash_is_short_and_not_the_id() {
        let id = [0xab; 32];
        let h = SessionHash::of(&id).to_string();
        assert_eq!(h.len(), 16);
        assert!(!hex::encode(id).contains(&h));
        assert_eq!(
            h,
            hex::encode(&ring::digest::digest(&ring::digest::SHA256, &id).as_ref()[..8])
        );
        assert_eq!(SessionHash::of(&[]).to_string(), "-");
    }
}
