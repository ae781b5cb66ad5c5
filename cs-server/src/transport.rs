//! The engine-facing transport: the CS's own accept loop, TLS handshakes and HTTP/2
//! connections (hyper) in front of tonic's router, so that what a peer makes the CS hold is
//! bounded by count and by time (`[limits]`, see `config.rs`):
//!
//! - **Descriptors**: a connection takes one of `max_connections` slots *before* accept(), so
//!   the CS never accepts past its descriptor budget (derived from RLIMIT_NOFILE, see
//!   `limits.rs`); further peers wait in the kernel's listen backlog. Accept errors from
//!   exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) back off instead of spinning.
//! - **Handshakes**: each mTLS handshake is bounded by `handshake_timeout_ms`; at most
//!   `max_pending_handshakes` run at once. A socket enters them at its first byte (or
//!   after a 250 ms grace), and a new one evicts the oldest peer that has sent no byte yet
//!   (nothing read, nothing waiting in the socket), and only if every pending peer has
//!   spoken, the oldest: a flood of silent sockets evicts its own sockets, never an engine
//!   whose ClientHello has arrived.
//! - **Engines**: after the handshake the client certificate names the engine
//!   ([`identity_from_certificate`]); past `max_connections_per_engine` its new connection
//!   is closed.
//! - **HTTP/2**: SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE and
//!   SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2), keepalive PINGs. A connection is
//!   closed (GOAWAY, RFC 9113 §6.8) when its first request does not come within
//!   `first_request_timeout_ms` (the client preface included), or after `idle_timeout_ms`
//!   without a request in flight.
//! - **Requests**: a whole RPC (request body in, answer out) is bounded by
//!   `request_timeout_ms`: past it the CS answers DEADLINE_EXCEEDED and drops the request
//!   body it held; a peer that does not take its answer loses the connection. At most
//!   `max_requests` are in flight, `max_requests_per_engine` per engine across its
//!   connections; beyond, a request is refused at once (RESOURCE_EXHAUSTED,
//!   `too_many_requests`) without its body being read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::server::Connected;

mod unix;
pub use unix::{UnixListening, UnixPeer};

use crate::config::LimitsConfig;
use crate::error::ServiceError;
use crate::limits::{connection_cap, descriptor_limit, RateLimitedWarn};
use crate::refusal_log::{RefusalLog, Verdict};
use crate::reload::ListenerTls;
use crate::server::{identity_from_certificate, EngineId};

/// HTTP/2 PING interval, and how long to wait for the answer: a dead peer's connection is
/// dropped within about a minute.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive on accepted sockets (for peers that vanish without a FIN).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How long an accepted socket may take to send its first byte before it enters the
/// pending handshakes (where, past their cap, a silent one is evicted first).
const FIRST_BYTE_GRACE: Duration = Duration::from_millis(250);
/// First and longest pause after an accept error from resource exhaustion.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A request still in flight this long after its deadline (its answer not taken by the
/// peer) gets its connection closed.
const OVERDUE_GRACE: Duration = Duration::from_secs(1);
/// At most one warning per period for each kind of refusal.
const WARN_PERIOD: Duration = Duration::from_secs(10);

/// Serves `routes` on `listener` (mTLS with `tls`, else plaintext), and on `unix` when set
/// (see `transport/unix.rs`), under `limits` until `shutdown` completes; then stops
/// accepting, closes every connection with a GOAWAY and returns once their requests in
/// flight are done (each within its request timeout).
pub(crate) async fn serve(
    listener: TcpListener,
    unix: Option<UnixListening>,
    tls: Option<Arc<ListenerTls>>,
    routes: Routes,
    limits: &LimitsConfig,
    shutdown: impl Future<Output = ()>,
) {
    let nofile = descriptor_limit();
    let max_connections = connection_cap(limits.max_connections, nofile);
    // Pending handshakes hold descriptors too: they never take more than half the slots,
    // or silent sockets could leave no slot to accept (and evict) with.
    let max_pending = limits
        .max_pending_handshakes
        .min((max_connections / 2).max(1));
    tracing::info!(
        max_connections,
        descriptor_limit = nofile,
        max_pending_handshakes = max_pending,
        max_connections_per_engine = limits.max_connections_per_engine,
        max_concurrent_streams = limits.max_concurrent_streams,
        max_requests = limits.max_requests,
        max_requests_per_engine = limits.max_requests_per_engine,
        request_timeout_ms = limits.request_timeout_ms,
        "transport limits"
    );
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_frame_size(limits.max_frame_size)
        .max_header_list_size(limits.max_header_list_size)
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        routes,
        tls,
        h2,
        request_timeout: Duration::from_millis(limits.request_timeout_ms),
        handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
        first_request_timeout: Duration::from_millis(limits.first_request_timeout_ms),
        idle_timeout: Duration::from_millis(limits.idle_timeout_ms),
        pending: Arc::new(PendingHandshakes::new(max_pending)),
        engines: Arc::new(EngineConnections::new(
            limits.max_connections_per_engine,
            limits.max_requests_per_engine,
        )),
        requests: Arc::new(Counter::new(limits.max_requests, "requests in flight")),
        stop: stop_rx,
        evicted_warn: RateLimitedWarn::new(WARN_PERIOD),
        engine_cap_warn: RefusalLog::new(1, WARN_PERIOD),
    });
    // Every connection task holds a clone; recv() returns None once all are done.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let slots = Arc::new(Semaphore::new(max_connections));
    if let Some(unix) = unix {
        tokio::spawn(unix::accept_loop(
            unix,
            shared.clone(),
            slots.clone(),
            alive_tx.clone(),
        ));
    }
    let full_warn = RateLimitedWarn::new(WARN_PERIOD);
    let accept_warn = RateLimitedWarn::new(WARN_PERIOD);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                crate::telemetry::transport_refused("max_connections", None);
                if let Some(n) = full_warn.check() {
                    tracing::warn!(
                        max_connections,
                        times = n,
                        "connection cap reached: new peers wait in the listen backlog"
                    );
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    tcp
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    if let Some(n) = accept_warn.check() {
                        tracing::warn!(error = %e, times = n, backoff_ms = backoff.as_millis(),
                            "accept failed for lack of descriptors or memory: backing off");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
                Err(e) => {
                    // A connection-level error (ECONNABORTED, ...): that peer only.
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        configure_socket(&tcp);
        let shared = shared.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            connection(&shared, tcp).await;
            drop(slot);
            drop(alive);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
}

/// What every connection task shares.
struct Shared {
    routes: Routes,
    /// Read per accepted connection: a reload applies to the next handshake.
    tls: Option<Arc<ListenerTls>>,
    h2: http2::Builder<TokioExecutor>,
    request_timeout: Duration,
    handshake_timeout: Duration,
    first_request_timeout: Duration,
    idle_timeout: Duration,
    pending: Arc<PendingHandshakes>,
    engines: Arc<EngineConnections>,
    /// Requests in flight, all connections.
    requests: Arc<Counter>,
    /// True once the server shuts down.
    stop: watch::Receiver<bool>,
    evicted_warn: RateLimitedWarn,
    /// One line per engine per period (refusal_log: engines tracked are bounded), so that
    /// one engine's flood does not hide another engine reaching its cap.
    engine_cap_warn: RefusalLog,
}

fn configure_socket(tcp: &TcpStream) {
    // LURK exchanges are small request/answer pairs: Nagle's delay would stall each.
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Accept errors that say the process or system is out of a resource, not that one peer
/// went away (Linux errno: ENOMEM 12, ENFILE 23, EMFILE 24, ENOBUFS 105).
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105))
        || e.kind() == std::io::ErrorKind::OutOfMemory
}

/// One accepted socket: the TLS handshake (bounded), the engine's connection cap, then
/// HTTP/2 until the peer, the idle timer or the shutdown ends it.
async fn connection(shared: &Shared, tcp: TcpStream) {
    let Some(acceptor) = shared.tls.as_ref().map(|t| t.acceptor()) else {
        // Plaintext (development): engines name themselves per request, so only the
        // global caps apply.
        let info = tcp.connect_info();
        return serve_http2(shared, tcp, info, None).await;
    };
    let peer = Arc::new(PeerSocket::new(tcp));
    // The first byte gets a short grace before the handshake counts among the pending
    // ones: an engine's ClientHello is then already there, and it is evicted only after
    // every silent socket. (Meanwhile the socket holds its connection slot, as any.)
    peer.first_byte(FIRST_BYTE_GRACE.min(shared.handshake_timeout))
        .await;
    let (pending, evicted) = shared.pending.enter(peer.clone());
    let io = SharedTcp(peer);
    let tls = tokio::select! {
        r = tokio::time::timeout(shared.handshake_timeout, acceptor.accept(io)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                crate::telemetry::tls_handshake_failed(crate::telemetry::tls_failure_reason(&e));
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                crate::telemetry::tls_handshake_failed("timeout");
                return;
            }
        },
        _ = evicted => {
            crate::telemetry::tls_handshake_failed("evicted");
            if let Some(n) = shared.evicted_warn.check() {
                tracing::warn!(times = n, cap = shared.pending.cap,
                    "too many TLS handshakes in progress: a silent (else the oldest) dropped");
            }
            return;
        }
    };
    drop(pending);
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    let engine = match leaf.map(|c| identity_from_certificate(c.as_ref())) {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "engine certificate names no identity: connection closed");
            crate::telemetry::tls_handshake_failed("no_engine_identity");
            return;
        }
        // The verifier requires a client certificate.
        None => return,
    };
    let Some(counted) = shared.engines.enter(&engine) else {
        crate::telemetry::transport_refused("max_connections_per_engine", Some(engine.as_str()));
        engine_cap_reached(shared, &engine);
        return;
    };
    // What tonic's own server puts in each request: `Request::peer_certs` reads it.
    let info = tls.connect_info();
    let requests = counted.requests.clone();
    serve_http2(shared, tls, info, Some(requests)).await;
    drop(counted);
}

/// Logs that `engine` reached its connection cap: at most once per engine per period, with
/// the times it was reached since its last line.
fn engine_cap_reached(shared: &Shared, engine: &EngineId) {
    if let Verdict::Log { suppressed, .. } = shared.engine_cap_warn.note(engine.as_str()) {
        tracing::warn!(engine = %engine, cap = shared.engines.cap, times = suppressed + 1,
            "connection cap per engine reached: new connection closed");
    }
}

/// HTTP/2 on one connection; `engine_requests` counts the requests in flight of the
/// connection's engine (mTLS), across its connections.
async fn serve_http2<IO, I>(shared: &Shared, io: IO, info: I, engine_requests: Option<Arc<Counter>>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    I: Clone + Send + Sync + 'static,
{
    let activity = Arc::new(Activity::new());
    let engine = engine_requests.as_ref().and_then(|c| c.engine.clone());
    let service = ConnService {
        routes: shared.routes.clone(),
        info,
        activity: activity.clone(),
        timeout: shared.request_timeout,
        requests: shared.requests.clone(),
        engine_requests,
    };
    let conn = shared.h2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stop = shared.stop.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
            }
            return;
        }
        why = activity.closing(shared.first_request_timeout, shared.idle_timeout) => {
            tracing::debug!(reason = why, "closing connection");
            crate::telemetry::transport_closed(why, engine.as_ref().map(EngineId::as_str));
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    // GOAWAY; the requests in flight end within their timeout, after which a peer that
    // does not finish the exchange is dropped.
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(shared.request_timeout + OVERDUE_GRACE, conn)
        .await
        .is_err()
    {
        tracing::debug!("connection dropped: GOAWAY not completed in time");
    }
}

/// The requests in flight on one connection, and since when it has had none.
struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
}

struct ActivityState {
    next_id: u64,
    /// (deadline, id) of each request in flight.
    in_flight: BTreeSet<(Instant, u64)>,
    /// When the last request ended (or the connection started).
    since: Instant,
    any_request: bool,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                next_id: 0,
                in_flight: BTreeSet::new(),
                since: Instant::now(),
                any_request: false,
            }),
            changed: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>, deadline: Instant) -> InFlight {
        let key = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let key = (deadline, s.next_id);
            s.next_id += 1;
            s.in_flight.insert(key);
            s.any_request = true;
            key
        };
        self.changed.notify_waiters();
        InFlight {
            activity: self.clone(),
            key,
        }
    }

    /// Completes when the connection should close: no first request in time, idle too
    /// long, or a request overdue (its answer not taken by the peer).
    async fn closing(&self, first_request: Duration, idle: Duration) -> &'static str {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (deadline, why) = {
                let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                match s.in_flight.first() {
                    Some((d, _)) => (*d + OVERDUE_GRACE, "request overdue"),
                    None if s.any_request => (s.since + idle, "idle"),
                    None => (s.since + first_request, "no request"),
                }
            };
            if Instant::now() >= deadline {
                return why;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = &mut notified => {}
            }
        }
    }
}

/// A request in flight; ends (and restarts the idle timer) on drop.
struct InFlight {
    activity: Arc<Activity>,
    key: (Instant, u64),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut s = self
                .activity
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            s.in_flight.remove(&self.key);
            s.since = Instant::now();
        }
        self.activity.changed.notify_waiters();
    }
}

/// The engine a connection authenticated (its mTLS certificate, or its Unix peer's uid),
/// put in each of its requests: [`crate::server::engine_identity`] reads it rather than parse
/// the certificate again for every call.
#[derive(Clone, Debug)]
pub struct ConnectionEngine(pub EngineId);

/// The per-connection service: adds the connection's info and engine to each request (as
/// tonic's server adds its info), bounds the RPC by the request timeout and counts it in
/// flight.
#[derive(Clone)]
struct ConnService<I> {
    routes: Routes,
    info: I,
    activity: Arc<Activity>,
    timeout: Duration,
    requests: Arc<Counter>,
    engine_requests: Option<Arc<Counter>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<I: Clone + Send + Sync + 'static> hyper::service::Service<http::Request<Incoming>>
    for ConnService<I>
{
    type Response = http::Response<BoundedBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        use tonic::codegen::Service as _;
        // Admission first: a refused request's body is never read (hyper resets the stream).
        let admitted = match admit(&self.requests, self.engine_requests.as_ref()) {
            Ok(a) => a,
            Err(refusal) => {
                let response = tonic::Status::from(refusal)
                    .into_http::<tonic::body::Body>()
                    .map(|inner| BoundedBody {
                        inner,
                        deadline: Box::pin(tokio::time::sleep(self.timeout)),
                        after_ms: 0,
                        _in_flight: None,
                        _admitted: Vec::new(),
                    });
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        req.extensions_mut().insert(self.info.clone());
        // The engine this connection authenticated (named once, at its handshake).
        if let Some(engine) = self.engine_requests.as_ref().and_then(|c| c.engine.clone()) {
            req.extensions_mut().insert(ConnectionEngine(engine));
        }
        let deadline = Instant::now() + self.timeout;
        let in_flight = self.activity.begin(deadline);
        let after_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        let mut routes = self.routes.clone();
        let engine_requests = self.engine_requests.clone();
        Box::pin(async move {
            // The request body is read inside the router's future: dropped at the deadline,
            // with whatever part of the body it held.
            let answer = tokio::time::timeout_at(deadline, async move {
                std::future::poll_fn(|cx| {
                    tonic::codegen::Service::<http::Request<Incoming>>::poll_ready(&mut routes, cx)
                })
                .await?;
                routes.call(req).await
            })
            .await;
            let response = match answer {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    let engine = engine_requests.as_ref().and_then(|c| c.engine.as_ref());
                    crate::telemetry::transport_refused(
                        "request_timeout",
                        engine.map(EngineId::as_str),
                    );
                    tonic::Status::from(ServiceError::TimedOut { after_ms })
                        .into_http::<tonic::body::Body>()
                }
            };
            Ok(response.map(|inner| BoundedBody {
                inner,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                after_ms,
                _in_flight: Some(in_flight),
                _admitted: admitted,
            }))
        })
    }
}

/// A response body that fails (the stream is reset) once the request's deadline passes,
/// and keeps the request counted in flight until it is sent or dropped.
struct BoundedBody {
    inner: tonic::body::Body,
    deadline: Pin<Box<Sleep>>,
    after_ms: u64,
    _in_flight: Option<InFlight>,
    _admitted: Vec<Admitted>,
}

impl http_body::Body for BoundedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let after_ms = this.after_ms;
            return Poll::Ready(Some(Err(ServiceError::TimedOut { after_ms }.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A count with a cap, shared by whoever is counted in it.
struct Counter {
    cap: usize,
    what: &'static str,
    n: std::sync::atomic::AtomicUsize,
    /// The engine whose requests this counts (None: all engines).
    engine: Option<EngineId>,
}

/// One place in a [`Counter`]; given back on drop.
struct Admitted(Arc<Counter>);

impl Counter {
    fn new(cap: usize, what: &'static str) -> Self {
        Self {
            cap: cap.max(1),
            what,
            n: std::sync::atomic::AtomicUsize::new(0),
            engine: None,
        }
    }

    fn try_enter(self: &Arc<Self>) -> Result<Admitted, ServiceError> {
        if self.n.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.n.fetch_sub(1, Ordering::AcqRel);
            return Err(ServiceError::Overloaded {
                limit: self.what,
                cap: self.cap,
            });
        }
        Ok(Admitted(self.clone()))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.n.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place among the engine's requests in flight (if counted per engine), then among all.
fn admit(all: &Arc<Counter>, engine: Option<&Arc<Counter>>) -> Result<Vec<Admitted>, ServiceError> {
    let mut places = Vec::with_capacity(2);
    let who = engine.and_then(|e| e.engine.as_ref()).map(EngineId::as_str);
    let refused = |reason| move |_: &ServiceError| crate::telemetry::transport_refused(reason, who);
    if let Some(e) = engine {
        places.push(
            e.try_enter()
                .inspect_err(refused("max_requests_per_engine"))?,
        );
    }
    places.push(all.try_enter().inspect_err(refused("max_requests"))?);
    Ok(places)
}

/// An accepted socket, shared by its connection's I/O and the pending-handshake table, which
/// asks whether the peer has sent anything yet.
struct PeerSocket {
    tcp: TcpStream,
    /// Set once a byte has been read from the socket.
    heard: AtomicBool,
}

impl PeerSocket {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            heard: AtomicBool::new(false),
        }
    }

    /// Waits at most `within` for a byte (or EOF, or an error) to arrive.
    async fn first_byte(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                if self.tcp.readable().await.is_err() {
                    return;
                }
                let mut byte = [MaybeUninit::<u8>::uninit(); 1];
                // readable() may complete with nothing to read (tokio says so): WouldBlock
                // from the peek clears that readiness, and the wait goes on.
                match self.tcp.try_io(tokio::io::Interest::READABLE, || {
                    socket2::SockRef::from(&self.tcp).peek(&mut byte)
                }) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => return,
                }
            }
        })
        .await;
    }

    /// Whether the peer has sent a byte: read already, or waiting in the socket's receive
    /// queue (a non-blocking MSG_PEEK, which consumes nothing). EOF and errors count as
    /// silent: such a handshake cannot complete anyway.
    fn has_spoken(&self) -> bool {
        if self.heard.load(Ordering::Relaxed) {
            return true;
        }
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        matches!(socket2::SockRef::from(&self.tcp).peek(&mut byte), Ok(n) if n > 0)
    }
}

/// The I/O of one connection over its [`PeerSocket`]: what tokio's `TcpStream` does, through
/// a shared reference, noting the first byte read.
struct SharedTcp(Arc<PeerSocket>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let peer = &self.0;
        loop {
            std::task::ready!(peer.tcp.poll_read_ready(cx))?;
            match peer.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 {
                        peer.heard.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness cleared: poll_read_ready registers the waker.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.tcp.poll_write_ready(cx))?;
            match self.0.tcp.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.tcp.poll_write_ready(cx))?;
            match self.0.tcp.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write))
    }
}

impl Connected for SharedTcp {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.tcp.connect_info()
    }
}

/// TLS handshakes in progress, oldest first. Past the cap one is told to give up: the oldest
/// whose peer has sent no byte, else the oldest. A peer that opens sockets and stays silent
/// only ever evicts its own; an engine's handshake goes only when every pending peer has
/// spoken (then the oldest, as a handshake can also be stalled after its first bytes).
struct PendingHandshakes {
    cap: usize,
    state: Mutex<(u64, BTreeMap<u64, Pending>)>,
}

struct Pending {
    evict: oneshot::Sender<()>,
    peer: Arc<PeerSocket>,
}

struct PendingHandshake {
    set: Arc<PendingHandshakes>,
    id: u64,
}

impl PendingHandshakes {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            state: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// Registers the handshake of `peer`, evicting another if the table is full; the
    /// receiver completes if this one is evicted later.
    fn enter(self: &Arc<Self>, peer: Arc<PeerSocket>) -> (PendingHandshake, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.1.len() >= self.cap {
            // Peers that have spoken cost one atomic load each; the rest one peek, and the
            // search stops at the first silent one (in a flood, the oldest entry).
            let victim =
                s.1.iter()
                    .find(|(_, p)| !p.peer.has_spoken())
                    .or_else(|| s.1.iter().next())
                    .map(|(id, _)| *id);
            if let Some(p) = victim.and_then(|id| s.1.remove(&id)) {
                let _ = p.evict.send(());
            }
        }
        let id = s.0;
        s.0 += 1;
        s.1.insert(id, Pending { evict: tx, peer });
        (
            PendingHandshake {
                set: self.clone(),
                id,
            },
            rx,
        )
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut s = self.set.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1.remove(&self.id);
    }
}

/// Authenticated connections per engine identity, and the requests in flight each engine
/// has across them.
struct EngineConnections {
    cap: usize,
    requests_cap: usize,
    counts: Mutex<HashMap<EngineId, (usize, Arc<Counter>)>>,
}

struct EngineConnection {
    set: Arc<EngineConnections>,
    engine: EngineId,
    /// The engine's requests in flight (shared by its connections).
    requests: Arc<Counter>,
}

impl EngineConnections {
    fn new(cap: usize, requests_cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            requests_cap,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection of `engine`, or `None` if it has `cap` already.
    fn enter(self: &Arc<Self>, engine: &EngineId) -> Option<EngineConnection> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (n, requests) = counts.entry(engine.clone()).or_insert_with(|| {
            (
                0,
                Arc::new(Counter {
                    engine: Some(engine.clone()),
                    ..Counter::new(self.requests_cap, "requests in flight per engine")
                }),
            )
        });
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(EngineConnection {
            set: self.clone(),
            engine: engine.clone(),
            requests: requests.clone(),
        })
    }
}

impl Drop for EngineConnection {
    fn drop(&mut self) {
        let mut counts = self.set.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = counts.get_mut(&self.engine) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.engine);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` accepted sockets on loopback, with the client ends.
    async fn sockets(n: usize) -> Vec<(Arc<PeerSocket>, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            out.push((Arc::new(PeerSocket::new(server)), client));
        }
        out
    }

    /// Until the byte written by a client can be peeked on the server side.
    async fn until_spoken(peer: &PeerSocket) {
        for _ in 0..200 {
            if peer.has_spoken() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the byte never arrived");
    }

    #[tokio::test]
    async fn past_the_cap_a_silent_peer_is_evicted_before_one_that_has_spoken() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socks = sockets(5).await;
        let set = Arc::new(PendingHandshakes::new(2));
        // a (oldest) has spoken: its byte waits in the socket; b is silent.
        socks[0].1.write_all(b"\x16").await.unwrap();
        until_spoken(&socks[0].0).await;
        let (a, mut ra) = set.enter(socks[0].0.clone());
        let (_b, mut rb) = set.enter(socks[1].0.clone());
        let (_c, mut rc) = set.enter(socks[2].0.clone());
        assert!(rb.try_recv().is_ok(), "the silent one is told to give up");
        assert!(ra.try_recv().is_err(), "not the oldest, which has spoken");
        assert!(
            !socks[0].0.heard.load(Ordering::Relaxed),
            "peeking reads nothing"
        );
        // A byte read through the connection's I/O counts too (c), even once consumed.
        socks[2].1.write_all(b"\x16").await.unwrap();
        let mut io = SharedTcp(socks[2].0.clone());
        let mut one = [0u8; 1];
        io.read_exact(&mut one).await.unwrap();
        assert!(socks[2].0.has_spoken());
        // Everyone pending has spoken: the oldest (a) goes.
        let (_d, mut rd) = set.enter(socks[3].0.clone());
        assert!(ra.try_recv().is_ok(), "all have spoken: the oldest goes");
        assert!(rc.try_recv().is_err());
        // d is silent: the next newcomer evicts d, not c.
        let (_e, _re) = set.enter(socks[4].0.clone());
        assert!(rd.try_recv().is_ok());
        assert!(rc.try_recv().is_err());
        drop(a);
        assert_eq!(set.state.lock().unwrap().1.len(), 2);
    }

    #[test]
    fn engines_are_capped_each_on_their_own() {
        let set = Arc::new(EngineConnections::new(2, 8));
        let a = EngineId::new("a").unwrap();
        let b = EngineId::new("b").unwrap();
        let a1 = set.enter(&a).unwrap();
        let _a2 = set.enter(&a).unwrap();
        assert!(set.enter(&a).is_none());
        let _b1 = set.enter(&b).unwrap();
        drop(a1);
        let _a3 = set.enter(&a).unwrap();
        drop(_a3);
        drop(_a2);
        assert!(!set.counts.lock().unwrap().contains_key(&a));
    }

    #[test]
    fn requests_are_admitted_within_the_engine_and_global_caps() {
        let all = Arc::new(Counter::new(3, "requests in flight"));
        let a = Arc::new(Counter::new(2, "requests in flight per engine"));
        let b = Arc::new(Counter::new(2, "requests in flight per engine"));
        let a1 = admit(&all, Some(&a)).unwrap();
        let _a2 = admit(&all, Some(&a)).unwrap();
        let refused = admit(&all, Some(&a)).err().unwrap();
        assert!(matches!(refused, ServiceError::Overloaded { cap: 2, .. }));
        let _b1 = admit(&all, Some(&b)).unwrap();
        // The global cap: b's second is refused, and its engine place given back.
        assert!(matches!(
            admit(&all, Some(&b)),
            Err(ServiceError::Overloaded { cap: 3, .. })
        ));
        assert_eq!(b.n.load(Ordering::Relaxed), 1);
        drop(a1);
        let _b2 = admit(&all, Some(&b)).unwrap();
        assert!(admit(&all, None).is_err());
    }

    #[test]
    fn exhaustion_errors_are_told_from_peer_errors() {
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            24
        )));
        assert!(is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            23
        )));
        assert!(!is_resource_exhaustion(&std::io::Error::from_raw_os_error(
            103 // ECONNABORTED
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_closes_without_a_first_request_or_when_idle() {
        let first = Duration::from_secs(5);
        let idle = Duration::from_secs(60);
        let a = Arc::new(Activity::new());
        let t0 = Instant::now();
        assert_eq!(a.closing(first, idle).await, "no request");
        assert_eq!(t0.elapsed(), first);

        let a = Arc::new(Activity::new());
        let r = a.begin(Instant::now() + Duration::from_secs(10));
        let watcher = {
            let a = a.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                (a.closing(first, idle).await, t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(r);
        let (why, after) = watcher.await.unwrap();
        assert_eq!(why, "idle");
        assert_eq!(after, Duration::from_secs(3) + idle);

        // A request whose answer is never taken: overdue after its deadline.
        let a = Arc::new(Activity::new());
        let _r = a.begin(Instant::now() + Duration::from_secs(10));
        assert_eq!(a.closing(first, idle).await, "request overdue");
    }
}
