//! Telemetry: Prometheus metrics and the access log.
//!
//! Every RPC passes through `service::run`, which calls [`Probe::start`] and
//! [`Probe::finish`]: one counter, one histogram observation and (if `[log] access`) one
//! access-log line per exchange. The metrics are served in the Prometheus text format on a
//! listener of their own ([`serve`], `[metrics] addr`, plain HTTP `GET /metrics`), never on
//! the engines' gRPC port.
//!
//! Every label value comes from a fixed set: the exchange names, the LURK status names
//! (draft-mglt-lurk-tls13 §4, `docs/protocol.md`) and `success`, and engine identities
//! capped at `[metrics] max_engine_labels` (the others share `engine="other"`). No session
//! id, ticket or PSK identity is ever a label. The access log names a session by the first
//! 8 bytes of SHA-256 of its id, never the id itself.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use lurk_proto::pb;
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
    /// Engine identities with a label of their own, at most `max_engines`.
    engines: Mutex<HashSet<String>>,
    max_engines: std::sync::atomic::AtomicUsize,
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
            engines: Mutex::new(HashSet::new()),
            max_engines: std::sync::atomic::AtomicUsize::new(max_engine_labels),
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
        let Some(engine) = engine else {
            self.refusals.with_label_values(&[reason, NO_ENGINE]).inc();
            return;
        };
        let mut seen = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        let own = seen.contains(engine)
            || (seen.len() < self.max_engines.load(Ordering::Relaxed)
                && seen.insert(engine.to_owned()));
        let label = if own { engine } else { OTHER_ENGINES };
        self.refusals.with_label_values(&[reason, label]).inc();
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
    ACCESS_LOG.store(log.access, Ordering::Relaxed);
}

/// A stored ticket was taken to resume a session (it is used once).
pub fn ticket_taken() {
    METRICS.tickets_taken.inc();
}

/// The wait for a pooled PKCS#11 session (token/mod.rs).
pub fn token_session_wait(took: Duration) {
    METRICS.token_wait.observe(took.as_secs_f64());
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

/// How long a pooled PKCS#11 session was held (token/pool.rs).
pub fn token_session_held(took: Duration) {
    METRICS.token_held.observe(took.as_secs_f64());
}

/// A short, one-way name of a session for the access log: SHA-256 of the id, first 8
/// bytes in hex. The id itself (which the engine presents to use the session) is never logged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionHash(Option<[u8; 8]>);

impl SessionHash {
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
        METRICS.sessions_open.set(cs.sessions.len() as i64);
        (
            hyper::StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(METRICS.render()),
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

    /// The Grafana dashboard is valid JSON and queries only metrics this module defines.
    #[test]
    fn the_dashboard_uses_the_metrics_defined_here() {
        let text = include_str!("../../deploy/grafana/lurk-cs.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("dashboard JSON");
        let m = Metrics::new(1);
        // A labelled family is rendered once it has a series.
        m.exchange("ping", SUCCESS, Duration::ZERO);
        m.refusal("invalid_psk", None);
        m.store_ops.with_label_values(&["take_ticket"]).observe(0.0);
        m.tls_failures.with_label_values(&["timeout"]).inc();
        let defined = m.render();
        let mut used = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !word.starts_with("lurk_cs_") {
                        continue;
                    }
                    let name = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    assert!(
                        defined.contains(&format!("# TYPE {name} ")),
                        "{name} is not a metric of the CS"
                    );
                    used += 1;
                }
            }
        }
        assert!(used >= 8);
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
