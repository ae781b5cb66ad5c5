//! Several Crypto Service replicas behind one engine: [`CsPool`].
//!
//! A pool is built from one or more CS URLs and the engine's mTLS credentials
//! ([`CsEndpoint`]). A URL whose host is an IP address is one replica; a URL whose host is a
//! DNS name stands for every address the name resolves to (a Kubernetes headless Service),
//! resolved again every [`CsPoolOptions::resolve_interval`]. Each replica is reached at its
//! address with the configured host name as TLS server name, so the CS certificate still
//! verifies against the name.
//!
//! Routing:
//! - a LURK session lives only on the replica that opened it: every call of a connection after
//!   its first goes to that replica; if it is lost the connection fails with an error naming
//!   the replica;
//! - the first call of a connection goes to the healthy replica with the fewest calls
//!   outstanding (ties taken in turn); if that replica cannot be reached (no answer: connect
//!   refused, transport error, UNAVAILABLE, no answer within the call timeout) the call is
//!   made again on each other healthy replica in turn: no CS session exists yet, and nothing
//!   depends on the lost attempt. A LURK refusal (a status carrying `lurk-status`) is an
//!   answer and is never retried;
//! - a call that finds no free call permit on its replica within the call timeout
//!   ([`CsPoolOptions::max_calls_in_flight`]) is not sent and fails with [`CsError::Busy`]:
//!   the congestion is the engine's own, so the replica is not set aside, and no other
//!   replica is tried (the caller has waited a whole call timeout already); a call sent has
//!   its own call timeout;
//! - a replica whose call finds it unreachable, or whose health check fails, is set aside and
//!   probed again after a backoff (doubling up to [`CsPoolOptions::backoff_max`]); a probe or a
//!   call that succeeds brings it back. The health check is `grpc.health.v1.Health/Check` for
//!   the CryptoService by name, else for the whole server (service `""`), SERVING; a CS
//!   without the health service (UNIMPLEMENTED) counts as healthy when its `Ping` answers.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use crate::cs_channel::{CsChannel, CsClient};
use lurk_proto::pb;
use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
use tokio::sync::{watch, Notify, SemaphorePermit};
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::cs_client::{self, perform, CsCall, CsEndpoint, CsError, CsReply};

/// The gRPC service name the health check asks about first.
const CS_SERVICE: &str = pb::crypto_service_server::SERVICE_NAME;

/// Resolves `host:port` to addresses (the default is tokio's `lookup_host`). A custom one plugs
/// in another discovery mechanism.
pub type Resolver = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// Timings of a [`CsPool`].
#[derive(Clone)]
pub struct CsPoolOptions {
    /// How often DNS names are resolved again (default 30 s).
    pub resolve_interval: Duration,
    /// How often a healthy replica's health is checked (default 10 s).
    pub health_interval: Duration,
    /// How long a health check may take (default 2 s).
    pub health_timeout: Duration,
    /// The first wait before a set-aside replica is probed again (default 250 ms); it doubles
    /// at each failed probe, up to `backoff_max` (default 30 s).
    pub backoff_min: Duration,
    /// The longest wait between two probes of a set-aside replica (default 30 s).
    pub backoff_max: Duration,
    /// How long the first call waits for a DNS name's first resolution (default 5 s).
    pub resolve_timeout: Duration,
    /// How long the connect to a replica may take, TLS handshake included (default 5 s).
    pub connect_timeout: Duration,
    /// At most this many calls in flight on one replica (default 64); the others wait their
    /// turn in the engine, within [`Self::call_timeout`]. The CS refuses an engine's requests
    /// beyond its `[limits] max_requests_per_engine` (128 by default, across the engine's
    /// connections and processes): keep this, times the processes sharing an engine identity,
    /// under it. 64 is also the CS's default `max_concurrent_streams` per connection. Calls
    /// that open a LURK session (and Ping, Capabilities) hold at most three quarters of them:
    /// the rest stays for the calls of the handshakes in flight.
    pub max_calls_in_flight: usize,
    /// How long one call may wait for its turn ([`Self::max_calls_in_flight`]), then how long
    /// it may take once sent, connecting included (default 10 s each: a call may take twice
    /// this in all, per replica a first call tries). A call that runs out
    /// waiting is not sent: [`CsError::Busy`], and the replica stays in use. A call that runs
    /// out once sent counts as unanswered: its replica is set aside, and a connection's first
    /// call goes to another replica (a session the CS may have opened meanwhile expires there).
    pub call_timeout: Duration,
    /// Name resolution; `None`: tokio's `lookup_host` (the system resolver).
    pub resolver: Option<Resolver>,
}

impl Default for CsPoolOptions {
    fn default() -> Self {
        Self {
            resolve_interval: Duration::from_secs(30),
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            max_calls_in_flight: 64,
            call_timeout: Duration::from_secs(10),
            resolver: None,
        }
    }
}

impl fmt::Debug for CsPoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsPoolOptions")
            .field("resolve_interval", &self.resolve_interval)
            .field("health_interval", &self.health_interval)
            .field("health_timeout", &self.health_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("resolve_timeout", &self.resolve_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_calls_in_flight", &self.max_calls_in_flight)
            .field("call_timeout", &self.call_timeout)
            .field("resolver", &self.resolver.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// What [`CsPool::replicas`] reports about one replica.
#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    /// `https://ADDRESS:PORT` (with ` (NAME)` when it came from a DNS name).
    pub url: String,
    /// Whether new sessions may go there.
    pub healthy: bool,
    /// Calls in flight or waiting for their turn ([`CsPoolOptions::max_calls_in_flight`]).
    pub outstanding: usize,
    /// Calls the replica answered (LURK refusals included).
    pub answered: u64,
    /// Calls that found it unreachable, and failed health checks.
    pub failures: u64,
    /// Connections whose first call went there.
    pub sessions: u64,
    /// Calls not sent: they waited out the call timeout for a call permit
    /// ([`CsPoolOptions::max_calls_in_flight`]; the engine's own congestion).
    pub busy: u64,
}

/// One configured URL.
#[derive(Debug)]
enum Target {
    /// An IP address (or a fixed channel): one replica.
    Fixed,
    /// A DNS name, resolved to replicas.
    Name {
        scheme: String,
        host: String,
        port: u16,
    },
}

struct Health {
    healthy: bool,
    backoff: Duration,
    next_probe: Instant,
    probing: bool,
    last_check: Instant,
}

/// How many of a replica's `max_calls` permits calls that open a session may hold: all but
/// a quarter. A handshake in flight then always finds a permit for its next call, however
/// many new handshakes wait, e.g. for a CS whose token is being recycled, which waits in
/// turn for the handshakes in flight (cs-server token/pool/recycle.rs).
fn opening_permits(max_calls: usize) -> usize {
    let max_calls = max_calls.max(1);
    (max_calls - max_calls / 4).max(1)
}

/// One CS replica: its own HTTP/2 channel.
pub(crate) struct Replica {
    url: String,
    /// The target it came from and its address (for re-resolution).
    origin: Option<(usize, SocketAddr)>,
    client: CsClient,
    /// For health checks (`None`: a pool made from a client, not checked).
    channel: Option<CsChannel>,
    health: Mutex<Health>,
    /// One permit per call in flight ([`CsPoolOptions::max_calls_in_flight`]).
    calls: tokio::sync::Semaphore,
    /// One permit per call in flight that opens a session (or belongs to none): a quarter
    /// of `calls` stays for the calls of sessions already open ([`opening_permits`]).
    openings: tokio::sync::Semaphore,
    outstanding: AtomicUsize,
    answered: AtomicU64,
    failures: AtomicU64,
    sessions: AtomicU64,
    busy: AtomicU64,
}

impl Replica {
    fn new(
        url: String,
        origin: Option<(usize, SocketAddr)>,
        channel: CsChannel,
        max_calls: usize,
    ) -> Arc<Self> {
        Self::with_client(
            url,
            origin,
            CryptoServiceClient::new(channel.clone()),
            Some(channel),
            max_calls,
        )
    }

    fn with_client(
        url: String,
        origin: Option<(usize, SocketAddr)>,
        client: CsClient,
        channel: Option<CsChannel>,
        max_calls: usize,
    ) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            url,
            origin,
            client,
            channel,
            calls: tokio::sync::Semaphore::new(max_calls.max(1)),
            openings: tokio::sync::Semaphore::new(opening_permits(max_calls)),
            health: Mutex::new(Health {
                healthy: true,
                backoff: Duration::ZERO,
                next_probe: now,
                probing: false,
                last_check: now,
            }),
            outstanding: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        })
    }

    fn healthy(&self) -> bool {
        lock(&self.health).healthy
    }

    fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            url: self.url.clone(),
            healthy: self.healthy(),
            outstanding: self.outstanding.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Decrements the outstanding count when the call ends (or is dropped).
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Inner {
    endpoint: CsEndpoint,
    targets: Vec<Target>,
    opts: CsPoolOptions,
    replicas: Mutex<Vec<Arc<Replica>>>,
    /// Turn for ties between equally loaded replicas.
    cursor: AtomicUsize,
    /// True once every DNS name was resolved once (successfully or not).
    resolved: watch::Sender<bool>,
    resolve_error: Mutex<Option<String>>,
    /// Wakes the background task when a replica's state changes, and when the pool is gone.
    wake: Arc<Notify>,
    /// `opts.call_timeout`; none for a pool made from a client.
    call_timeout: Option<Duration>,
    background_started: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// A pool of Crypto Service replicas (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct CsPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for CsPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsPool")
            .field("replicas", &self.replicas())
            .finish()
    }
}

/// `scheme`, host (brackets stripped), port of a CS URL.
fn split_url(url: &str) -> Result<(String, String, u16), CsError> {
    let bad = |why: &str| CsError::Config(format!("CS URL {url:?}: {why}"));
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    let scheme = uri
        .scheme_str()
        .filter(|s| *s == "https" || *s == "http")
        .ok_or_else(|| bad("the scheme must be https:// (mTLS) or http:// (plaintext)"))?
        .to_owned();
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok((scheme, host, port))
}

impl CsPool {
    /// A pool over `urls` (each `https://host:port`, `http://host:port` or `unix:/path`), all reached with the
    /// CA, identity and TLS server name of `endpoint` (its `url` is not used). A URL naming a
    /// host is resolved (then re-resolved) to all its addresses; the TLS server name stays the
    /// host name (or `endpoint.domain` when set). Needs a tokio runtime: the health checks and
    /// the re-resolution run in a background task that ends with the last clone of the pool.
    pub fn new(
        endpoint: &CsEndpoint,
        urls: &[String],
        opts: CsPoolOptions,
    ) -> Result<Self, CsError> {
        if urls.is_empty() {
            return Err(CsError::Config("no CS URL".into()));
        }
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| CsError::Config("a CS pool needs a tokio runtime".into()))?;
        let mut targets = Vec::new();
        let mut replicas = Vec::new();
        for url in urls {
            if url.starts_with(cs_client::UNIX_SCHEME) {
                // A socket path: one replica, nothing to resolve.
                let channel = endpoint.channel(url, None, Some(opts.connect_timeout))?;
                replicas.push(Replica::new(
                    url.clone(),
                    None,
                    channel,
                    opts.max_calls_in_flight,
                ));
                targets.push(Target::Fixed);
                continue;
            }
            let (scheme, host, port) = split_url(url)?;
            if host.parse::<IpAddr>().is_ok() {
                let channel = endpoint.channel(
                    url,
                    endpoint.domain.as_deref(),
                    Some(opts.connect_timeout),
                )?;
                replicas.push(Replica::new(
                    url.clone(),
                    None,
                    channel,
                    opts.max_calls_in_flight,
                ));
                targets.push(Target::Fixed);
            } else {
                targets.push(Target::Name { scheme, host, port });
            }
        }
        let has_names = targets.iter().any(|t| matches!(t, Target::Name { .. }));
        let call_timeout = opts.call_timeout;
        let pool = Self {
            inner: Arc::new(Inner {
                endpoint: endpoint.clone(),
                targets,
                opts,
                replicas: Mutex::new(replicas),
                cursor: AtomicUsize::new(0),
                resolved: watch::Sender::new(!has_names),
                resolve_error: Mutex::new(None),
                wake: Arc::default(),
                call_timeout: Some(call_timeout),
                background_started: AtomicBool::new(false),
            }),
        };
        pool.start_background(&rt);
        Ok(pool)
    }

    /// A pool of one replica on an existing channel: no health checks, no re-resolution
    /// (what [`crate::Connector::new`] makes of a single client).
    pub fn from_client(client: CsClient) -> Self {
        let url = "CS".to_owned();
        Self {
            inner: Arc::new(Inner {
                endpoint: CsEndpoint {
                    url: url.clone(),
                    ca_pem: None,
                    identity_pem: None,
                    domain: None,
                },
                targets: vec![Target::Fixed],
                opts: CsPoolOptions::default(),
                replicas: Mutex::new(vec![Replica::with_client(
                    url,
                    None,
                    client,
                    None,
                    CsPoolOptions::default().max_calls_in_flight,
                )]),
                cursor: AtomicUsize::new(0),
                resolved: watch::Sender::new(true),
                resolve_error: Mutex::new(None),
                wake: Arc::default(),
                call_timeout: None,
                // No health checks, no re-resolution.
                background_started: AtomicBool::new(true),
            }),
        }
    }

    /// The replicas known now.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        lock(&self.inner.replicas)
            .iter()
            .map(|r| r.status())
            .collect()
    }

    fn no_replica(&self) -> CsError {
        let why = lock(&self.inner.resolve_error).clone();
        CsError::Unreachable(match why {
            Some(e) => format!("no CS replica: {e}"),
            None => "no CS replica".into(),
        })
    }

    /// Waits (at most `resolve_timeout`) until every DNS name was resolved once.
    async fn wait_resolved(&self) -> Result<(), CsError> {
        if *self.inner.resolved.borrow() {
            return Ok(());
        }
        let mut rx = self.inner.resolved.subscribe();
        let done = tokio::time::timeout(self.inner.opts.resolve_timeout, rx.wait_for(|d| *d))
            .await
            .is_ok();
        if done {
            Ok(())
        } else {
            Err(CsError::Unreachable(format!(
                "the CS name(s) did not resolve within {:?}",
                self.inner.opts.resolve_timeout
            )))
        }
    }

    /// The replica for a new session: among healthy replicas not in `exclude`, the one with
    /// the fewest calls outstanding, ties taken in turn. With no healthy replica and nothing
    /// excluded, the set-aside one due first for a probe (the call is the probe).
    fn pick(&self, exclude: &[Arc<Replica>]) -> Option<Arc<Replica>> {
        let replicas = lock(&self.inner.replicas);
        let n = replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.inner.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(&Arc<Replica>, usize)> = None;
        for i in 0..n {
            let r = &replicas[(start + i) % n];
            if exclude.iter().any(|x| Arc::ptr_eq(x, r)) || !r.healthy() {
                continue;
            }
            let load = r.outstanding.load(Ordering::Relaxed);
            if best.is_none_or(|(_, b)| load < b) {
                best = Some((r, load));
            }
        }
        if let Some((r, _)) = best {
            return Some(r.clone());
        }
        if !exclude.is_empty() {
            return None;
        }
        replicas
            .iter()
            .min_by_key(|r| lock(&r.health).next_probe)
            .cloned()
    }

    /// Sets `r` aside after a failure; the background task probes it after the backoff. The
    /// backoff doubles when a failure comes once it ran out (a failed probe), not for each of
    /// the calls that were out together when the replica went away.
    fn set_aside(&self, r: &Replica, why: &str) {
        r.failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut h = lock(&r.health);
        if h.healthy || h.backoff.is_zero() {
            tracing::warn!(replica = %r.url, "CS replica set aside: {why}");
            h.backoff = self.inner.opts.backoff_min;
        } else if now >= h.next_probe {
            h.backoff = (h.backoff * 2).min(self.inner.opts.backoff_max);
        } else {
            return;
        }
        h.next_probe = now + h.backoff;
        h.healthy = false;
        drop(h);
        self.inner.wake.notify_one();
    }

    fn mark_healthy(r: &Replica) {
        let mut h = lock(&r.health);
        if !h.healthy {
            tracing::info!(replica = %r.url, "CS replica back");
        }
        h.healthy = true;
        h.backoff = Duration::ZERO;
        h.last_check = Instant::now();
    }

    /// One call on `r`, with the bookkeeping: an unreachable replica is set aside, an answer
    /// (LURK refusal included) marks it healthy, a call not sent counts as busy.
    /// `opening`: the call opens a session or belongs to none (see [`opening_permits`]).
    async fn call_on<T, F, Fut>(&self, r: &Arc<Replica>, opening: bool, op: F) -> Result<T, CsError>
    where
        F: FnOnce(CsClient) -> Fut,
        Fut: Future<Output = Result<T, CsError>>,
    {
        r.outstanding.fetch_add(1, Ordering::Relaxed);
        let _guard = Outstanding(&r.outstanding);
        let result = match self.permits(r, opening).await {
            // Sent: the call has its own timeout, however long it waited for its turn.
            Ok(_permits) => {
                let call = op(r.client.clone());
                match self.inner.call_timeout {
                    None => call.await,
                    Some(t) => tokio::time::timeout(t, call).await.unwrap_or_else(|_| {
                        Err(CsError::Unreachable(format!("no answer within {t:?}")))
                    }),
                }
            }
            Err(e) => Err(e),
        };
        match &result {
            Err(CsError::Unreachable(m)) => self.set_aside(r, m),
            Err(CsError::Busy(_)) => {
                r.busy.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                r.answered.fetch_add(1, Ordering::Relaxed);
                if !r.healthy() {
                    Self::mark_healthy(r);
                }
            }
        }
        result
    }

    /// A call's permits on `r` (an opening one first, when `opening`). A call beyond the
    /// replica's `max_calls_in_flight` waits here for its turn rather than be refused by the
    /// CS (its per-engine request limit), for at most the call timeout: past it the call is
    /// not sent ([`CsError::Busy`]).
    async fn permits<'r>(
        &self,
        r: &'r Replica,
        opening: bool,
    ) -> Result<(Option<SemaphorePermit<'r>>, SemaphorePermit<'r>), CsError> {
        let gone = |_| CsError::Unreachable("the replica is gone".into());
        let wait = async {
            let opening = match opening {
                true => Some(r.openings.acquire().await.map_err(gone)?),
                false => None,
            };
            Ok((opening, r.calls.acquire().await.map_err(gone)?))
        };
        match self.inner.call_timeout {
            None => wait.await,
            Some(t) => tokio::time::timeout(t, wait).await.unwrap_or_else(|_| {
                let max = self.inner.opts.max_calls_in_flight.max(1);
                Err(CsError::Busy(format!(
                    "no call permit free on {} within {t:?}: the engine keeps at most {max} \
                     calls in flight there, {} of them opening sessions",
                    r.url,
                    opening_permits(max)
                )))
            }),
        }
    }

    fn start_background(&self, rt: &tokio::runtime::Handle) {
        if self.inner.background_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(background(weak));
    }
}

/// Re-resolution, health checks of healthy replicas, probes of set-aside ones; ends when the
/// pool is dropped.
async fn background(weak: Weak<Inner>) {
    let mut next_resolve = Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let pool = CsPool { inner };
        let now = Instant::now();
        if now >= next_resolve {
            pool.resolve().await;
            next_resolve = Instant::now() + pool.inner.opts.resolve_interval;
        }
        let now = Instant::now();
        let mut wake_at = next_resolve;
        let replicas: Vec<Arc<Replica>> = lock(&pool.inner.replicas).clone();
        for r in replicas {
            let mut h = lock(&r.health);
            let due = if h.healthy {
                h.last_check + pool.inner.opts.health_interval
            } else {
                h.next_probe
            };
            if h.probing {
                continue;
            }
            if due <= now {
                h.probing = true;
                drop(h);
                let p = pool.clone();
                tokio::spawn(async move { p.probe(r).await });
            } else {
                wake_at = wake_at.min(due);
            }
        }
        // Only the Notify while waiting: the pool may go away meanwhile.
        let wake = pool.inner.wake.clone();
        drop(pool);
        tokio::select! {
            () = tokio::time::sleep_until(wake_at) => {}
            () = wake.notified() => {}
        }
    }
}

impl CsPool {
    /// Health-checks `r` and updates its state.
    async fn probe(&self, r: Arc<Replica>) {
        let Some(channel) = &r.channel else { return };
        let result = check_health(channel, self.inner.opts.health_timeout).await;
        match result {
            Ok(()) => Self::mark_healthy(&r),
            Err(e) => {
                tracing::debug!(replica = %r.url, "health check failed: {e}");
                self.set_aside(&r, &e);
            }
        }
        let mut h = lock(&r.health);
        h.probing = false;
        h.last_check = Instant::now();
        drop(h);
        self.inner.wake.notify_one();
    }

    /// Resolves every DNS name and updates the replica list: new addresses become replicas,
    /// vanished ones leave it (their open sessions keep their channel). A failed or empty
    /// answer keeps the previous list.
    async fn resolve(&self) {
        let inner = &self.inner;
        for (i, t) in inner.targets.iter().enumerate() {
            let Target::Name { scheme, host, port } = t else {
                continue;
            };
            let query = format!("{host}:{port}");
            let answer = match &inner.opts.resolver {
                Some(f) => f(query.clone()).await,
                None => tokio::net::lookup_host(query.clone())
                    .await
                    .map(|it| it.collect()),
            };
            let mut addrs = match answer {
                Ok(a) if !a.is_empty() => a,
                Ok(_) => {
                    *lock(&inner.resolve_error) = Some(format!("{query} has no address"));
                    tracing::warn!("CS name {query} has no address");
                    continue;
                }
                Err(e) => {
                    *lock(&inner.resolve_error) = Some(format!("resolving {query}: {e}"));
                    tracing::warn!("resolving the CS name {query}: {e}");
                    continue;
                }
            };
            addrs.sort();
            addrs.dedup();
            let domain = inner
                .endpoint
                .domain
                .clone()
                .unwrap_or_else(|| host.clone());
            let mut replicas = lock(&inner.replicas);
            replicas.retain(|r| match r.origin {
                Some((t, a)) if t == i => addrs.contains(&a),
                _ => true,
            });
            for a in addrs {
                if replicas.iter().any(|r| r.origin == Some((i, a))) {
                    continue;
                }
                let url = format!("{scheme}://{a}");
                match inner
                    .endpoint
                    .channel(&url, Some(&domain), Some(inner.opts.connect_timeout))
                {
                    Ok(ch) => {
                        tracing::debug!("CS replica {url} ({host})");
                        replicas.push(Replica::new(
                            format!("{url} ({host})"),
                            Some((i, a)),
                            ch,
                            inner.opts.max_calls_in_flight,
                        ));
                    }
                    Err(e) => tracing::warn!("CS replica {url}: {e}"),
                }
            }
        }
        inner.resolved.send_replace(true);
    }
}

/// `grpc.health.v1.Health/Check` for the CryptoService, or for the whole server (service
/// `""`) when the CS does not report the service by name; a CS without the health service
/// (UNIMPLEMENTED) is healthy when its `Ping` answers.
async fn check_health(channel: &CsChannel, timeout: Duration) -> Result<(), String> {
    let mut health = HealthClient::new(channel.clone());
    for service in [CS_SERVICE, ""] {
        let req = HealthCheckRequest {
            service: service.to_owned(),
        };
        match tokio::time::timeout(timeout, health.check(req)).await {
            Err(_) => return Err(format!("health check timed out after {timeout:?}")),
            Ok(Ok(resp)) => {
                let status = resp.into_inner().status;
                return if status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!(
                        "health of {service:?}: {}",
                        ServingStatus::try_from(status)
                            .map_or("unknown status", |s| s.as_str_name())
                    ))
                };
            }
            // The service is not reported by name: the server's overall status.
            Ok(Err(s)) if s.code() == tonic::Code::NotFound && !service.is_empty() => {}
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                let mut cs = CryptoServiceClient::new(channel.clone());
                return match tokio::time::timeout(timeout, cs.ping(pb::PingRequest {})).await {
                    Err(_) => Err(format!("ping timed out after {timeout:?}")),
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(s)) => Err(format!("ping: {}", CsError::from(s))),
                };
            }
            Ok(Err(s)) => return Err(format!("health check: {}", CsError::from(s))),
        }
    }
    Err("health: the CS reports neither its service nor itself".into())
}

/// The way one connection reaches the CS: its LURK session stays on the replica its first
/// call reached. Cheap to clone (the clones share the pin).
#[derive(Clone)]
pub(crate) struct CsRoute {
    pool: CsPool,
    pinned: Arc<OnceLock<Arc<Replica>>>,
}

impl CsRoute {
    pub(crate) fn new(pool: CsPool) -> Self {
        Self {
            pool,
            pinned: Arc::new(OnceLock::new()),
        }
    }

    /// Makes `call` (see the module documentation for where it goes).
    pub(crate) fn perform(
        &self,
        call: CsCall,
    ) -> impl Future<Output = Result<CsReply, CsError>> + Send + 'static {
        let route = self.clone();
        async move { route.perform_inner(call).await }
    }

    async fn perform_inner(&self, call: CsCall) -> Result<CsReply, CsError> {
        let pool = &self.pool;
        if let Some(r) = self.pinned.get() {
            return match pool.call_on(r, false, |c| perform(c, call)).await {
                Err(CsError::Unreachable(m)) => Err(CsError::Unreachable(format!(
                    "lost the CS replica {} holding this connection's LURK session: {m}",
                    r.url
                ))),
                other => other,
            };
        }
        let (result, r) = pool.first_call(|c| perform(c, call.clone())).await?;
        r.sessions.fetch_add(1, Ordering::Relaxed);
        let _ = self.pinned.set(r);
        result
    }
}

impl CsPool {
    /// What the CS offers this engine (client keys with their certificates, external PSKs,
    /// groups, ticket limits), from a healthy replica.
    pub async fn capabilities(&self) -> Result<pb::CapabilitiesResponse, CsError> {
        let r = self
            .call_any(|mut c| async move { c.capabilities(pb::CapabilitiesRequest {}).await })
            .await?;
        Ok(r.into_inner())
    }

    /// A call outside any LURK session (`Ping`, `Capabilities`), on a healthy replica; an
    /// unanswered call is made again on each other healthy replica.
    pub async fn call_any<T, F, Fut>(&self, mut op: F) -> Result<T, CsError>
    where
        F: FnMut(CsClient) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        // A stream refused before processing (REFUSED_STREAM) is no sign of a dead replica:
        // the call is made again after a pause (see `cs_client::perform`).
        let mut retry = cs_client::RefusedStreamRetry::new();
        loop {
            let (result, _) = self
                .first_call(|c| {
                    let fut = op(c);
                    async move {
                        match fut.await {
                            Ok(v) => Ok(Ok(v)),
                            Err(s) if cs_client::refused_stream(&s) => Ok(Err(s)),
                            Err(s) => Err(CsError::from(s)),
                        }
                    }
                })
                .await?;
            match result {
                Ok(Err(s)) if retry.again(&s).await => {}
                Ok(Err(s)) => return Err(CsError::from(s)),
                Ok(Ok(v)) => return Ok(v),
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes `op` on the replica [`Self::pick`] gives, then on each other healthy one while
    /// the replica does not answer. `Err` when none answered; else the answer (LURK refusal
    /// included) and the replica that gave it.
    async fn first_call<T, F, Fut>(
        &self,
        mut op: F,
    ) -> Result<(Result<T, CsError>, Arc<Replica>), CsError>
    where
        F: FnMut(CsClient) -> Fut,
        Fut: Future<Output = Result<T, CsError>>,
    {
        self.wait_resolved().await?;
        let mut tried: Vec<Arc<Replica>> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        loop {
            let Some(r) = self.pick(&tried) else {
                return Err(if errors.is_empty() {
                    self.no_replica()
                } else {
                    CsError::Unreachable(format!("no CS replica reachable: {}", errors.join("; ")))
                });
            };
            match self.call_on(&r, true, &mut op).await {
                // Not sent, after a whole call timeout of waiting: not tried elsewhere.
                Err(CsError::Busy(m)) if errors.is_empty() => return Err(CsError::Busy(m)),
                Err(CsError::Busy(m)) => {
                    let before = errors.join("; ");
                    return Err(CsError::Busy(format!(
                        "{m} (replicas tried before: {before})"
                    )));
                }
                // Not answered: nothing was opened there; the next replica gets the call.
                Err(CsError::Unreachable(m)) => {
                    tracing::debug!(replica = %r.url, "CS call unanswered, trying another replica: {m}");
                    errors.push(format!("{}: {m}", r.url));
                    tried.push(r);
                }
                other => return Ok((other, r)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_of_sessions_in_flight_keep_a_quarter_of_the_permits() {
        assert_eq!(opening_permits(64), 48);
        assert_eq!(opening_permits(4), 3);
        // Too few to split: openings may take them all.
        assert_eq!(opening_permits(3), 3);
        assert_eq!(opening_permits(1), 1);
        assert_eq!(opening_permits(0), 1);
    }

    fn endpoint() -> CsEndpoint {
        CsEndpoint {
            url: String::new(),
            ca_pem: None,
            identity_pem: None,
            domain: None,
        }
    }

    /// A resolver answering what the test puts in `answer` (and counting the queries).
    fn resolver(answer: Arc<Mutex<io::Result<Vec<SocketAddr>>>>) -> Resolver {
        Arc::new(move |q: String| {
            assert_eq!(q, "cs.test:7000");
            let a = match &*lock(&answer) {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { a })
        })
    }

    fn urls(pool: &CsPool) -> Vec<String> {
        let mut v: Vec<String> = pool.replicas().into_iter().map(|r| r.url).collect();
        v.sort();
        v
    }

    async fn wait_urls(pool: &CsPool, want: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while urls(pool) != want {
            assert!(
                Instant::now() < deadline,
                "replicas {:?}, want {want:?}",
                urls(pool)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A name is re-resolved every resolve_interval: new addresses join, vanished ones leave,
    /// a failed or empty answer keeps the last list; the TLS name stays the host name.
    #[tokio::test]
    async fn reresolution_follows_the_name() {
        let a1: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        let a2: SocketAddr = "10.0.0.2:7000".parse().unwrap();
        let a3: SocketAddr = "[fd00::3]:7000".parse().unwrap();
        let answer = Arc::new(Mutex::new(Ok(vec![a1, a2])));
        let opts = CsPoolOptions {
            resolve_interval: Duration::from_millis(20),
            health_interval: Duration::from_secs(3600),
            resolver: Some(resolver(answer.clone())),
            ..CsPoolOptions::default()
        };
        let pool = CsPool::new(&endpoint(), &["http://cs.test:7000".into()], opts).unwrap();
        pool.wait_resolved().await.unwrap();
        wait_urls(
            &pool,
            &[
                "http://10.0.0.1:7000 (cs.test)",
                "http://10.0.0.2:7000 (cs.test)",
            ],
        )
        .await;
        *lock(&answer) = Ok(vec![a2, a3]);
        wait_urls(
            &pool,
            &[
                "http://10.0.0.2:7000 (cs.test)",
                "http://[fd00::3]:7000 (cs.test)",
            ],
        )
        .await;
        *lock(&answer) = Err(io::Error::other("SERVFAIL"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(urls(&pool).len(), 2, "a failed lookup keeps the list");
        assert!(lock(&pool.inner.resolve_error)
            .as_deref()
            .is_some_and(|e| e.contains("SERVFAIL")));
        *lock(&answer) = Ok(vec![]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(urls(&pool).len(), 2, "an empty answer keeps the list");
        *lock(&answer) = Ok(vec![a1]);
        wait_urls(&pool, &["http://10.0.0.1:7000 (cs.test)"]).await;
    }

    /// The background task ends with the pool, without waiting for its next deadline.
    #[tokio::test]
    async fn background_task_ends_with_the_pool() {
        let answer = Arc::new(Mutex::new(Ok(vec!["10.0.0.1:7000".parse().unwrap()])));
        let opts = CsPoolOptions {
            resolve_interval: Duration::from_secs(3600),
            resolver: Some(resolver(answer)),
            ..CsPoolOptions::default()
        };
        let pool = CsPool::new(&endpoint(), &["http://cs.test:7000".into()], opts).unwrap();
        pool.wait_resolved().await.unwrap();
        let weak = Arc::downgrade(&pool.inner);
        drop(pool);
        let deadline = Instant::now() + Duration::from_secs(5);
        while weak.strong_count() > 0 {
            assert!(Instant::now() < deadline, "the pool is still alive");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Least outstanding first, ties in turn; set-aside replicas get no new session unless
    /// none is healthy; an excluded (already tried) replica is skipped.
    #[tokio::test]
    async fn pick_spreads_and_skips_set_aside() {
        let urls: Vec<String> = (1..=3).map(|i| format!("http://10.0.0.{i}:7000")).collect();
        let pool = CsPool::new(&endpoint(), &urls, CsPoolOptions::default()).unwrap();
        let rs: Vec<Arc<Replica>> = lock(&pool.inner.replicas).clone();
        let mut counts = [0usize; 3];
        for _ in 0..30 {
            let r = pool.pick(&[]).unwrap();
            counts[rs.iter().position(|x| Arc::ptr_eq(x, &r)).unwrap()] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
        rs[0].outstanding.store(2, Ordering::Relaxed);
        rs[1].outstanding.store(1, Ordering::Relaxed);
        for _ in 0..5 {
            assert!(Arc::ptr_eq(&pool.pick(&[]).unwrap(), &rs[2]));
        }
        pool.set_aside(&rs[2], "test");
        for _ in 0..5 {
            assert!(Arc::ptr_eq(&pool.pick(&[]).unwrap(), &rs[1]));
        }
        assert!(Arc::ptr_eq(
            &pool.pick(std::slice::from_ref(&rs[1])).unwrap(),
            &rs[0]
        ));
        assert!(pool.pick(&[rs[0].clone(), rs[1].clone()]).is_none());
        pool.set_aside(&rs[0], "test");
        pool.set_aside(&rs[1], "test");
        // None healthy: the one due first for a probe.
        assert!(Arc::ptr_eq(&pool.pick(&[]).unwrap(), &rs[2]));
    }

    /// The backoff doubles at each failed probe, up to backoff_max, and resets on success.
    #[tokio::test]
    async fn backoff_doubles_and_resets() {
        let opts = CsPoolOptions {
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(35),
            health_interval: Duration::from_secs(3600),
            ..CsPoolOptions::default()
        };
        let pool = CsPool::new(&endpoint(), &["http://10.0.0.1:7000".into()], opts).unwrap();
        let r = lock(&pool.inner.replicas)[0].clone();
        let mut seen = Vec::new();
        for _ in 0..4 {
            pool.set_aside(&r, "test");
            // Calls failing together within the backoff do not lengthen it.
            pool.set_aside(&r, "test");
            seen.push(lock(&r.health).backoff.as_secs());
            // The backoff runs out: the next failure is a failed probe.
            lock(&r.health).next_probe = Instant::now();
        }
        assert_eq!(seen, [10, 20, 35, 35]);
        assert_eq!(pool.replicas()[0].failures, 8);
        CsPool::mark_healthy(&r);
        pool.set_aside(&r, "test");
        assert_eq!(lock(&r.health).backoff.as_secs(), 10);
    }

    /// A real grpc.health.v1 server (tonic-health, what a CS serves) on loopback.
    async fn health_server() -> (tonic_health::server::HealthReporter, SocketAddr) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (reporter, addr)
    }

    /// The check asks for the CryptoService by name, then for the whole server when the name
    /// is not reported; anything but SERVING fails it.
    #[tokio::test]
    async fn health_check_reads_the_service_then_the_server() {
        let (mut reporter, addr) = health_server().await;
        let ch = endpoint()
            .channel(&format!("http://{addr}"), None, None)
            .unwrap();
        let t = Duration::from_secs(5);
        check_health(&ch, t).await.expect("\"\" is SERVING");
        reporter
            .set_service_status(CS_SERVICE, tonic_health::ServingStatus::NotServing)
            .await;
        let e = check_health(&ch, t).await.unwrap_err();
        assert!(e.contains("NOT_SERVING") && e.contains(CS_SERVICE), "{e}");
        reporter
            .set_service_status(CS_SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        check_health(&ch, t).await.expect("the service is SERVING");
        reporter.clear_service_status(CS_SERVICE).await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let e = check_health(&ch, t).await.unwrap_err();
        assert!(e.contains("NOT_SERVING"), "{e}");
    }

    /// A call that waits out the call timeout for a call permit (the engine's own
    /// congestion) is not sent, fails `Busy`, and leaves its replica in use; a call that runs
    /// out once sent still sets its replica aside. Against a real gRPC server (tonic-health).
    #[tokio::test]
    async fn a_call_that_finds_no_permit_in_time_is_busy_and_leaves_the_replica_in_use() {
        let (_reporter, addr) = health_server().await;
        let opts = CsPoolOptions {
            max_calls_in_flight: 4,
            call_timeout: Duration::from_millis(200),
            health_interval: Duration::from_secs(3600),
            ..CsPoolOptions::default()
        };
        let pool = CsPool::new(&endpoint(), &[format!("http://{addr}")], opts).unwrap();
        let r = lock(&pool.inner.replicas)[0].clone();
        let ops = Arc::new(AtomicUsize::new(0));
        let op = |ops: Arc<AtomicUsize>| {
            move |c: CsClient| {
                ops.fetch_add(1, Ordering::Relaxed);
                async move {
                    let mut c = c;
                    c.ping(pb::PingRequest::default())
                        .await
                        .map_err(CsError::from)
                }
            }
        };
        // A first call and a call of an open session, each with every permit taken by
        // calls in flight (held here).
        let held = r.calls.acquire_many(4).await.unwrap();
        let e = pool.first_call(op(ops.clone())).await.unwrap_err();
        assert!(
            matches!(&e, CsError::Busy(m) if m.contains("at most 4 calls in flight there, 3 of")),
            "{e}"
        );
        let e = pool.call_on(&r, false, op(ops.clone())).await.unwrap_err();
        assert!(matches!(e, CsError::Busy(_)), "{e}");
        // A first call whose opening permits (three of four) are taken.
        drop(held);
        let openings = r.openings.acquire_many(3).await.unwrap();
        let e = pool.first_call(op(ops.clone())).await.unwrap_err();
        assert!(matches!(e, CsError::Busy(_)), "{e}");
        assert_eq!(ops.load(Ordering::Relaxed), 0, "no call was sent");
        let st = &pool.replicas()[0];
        assert!(st.healthy && st.failures == 0, "{st:?}");
        assert_eq!((st.outstanding, st.busy, st.sessions), (0, 3, 0));
        // The replica answers the next call (the gRPC server has no Ping: UNIMPLEMENTED is
        // an answer).
        drop(openings);
        let (answer, _) = pool.first_call(op(ops.clone())).await.unwrap();
        assert!(
            matches!(
                &answer,
                Err(CsError::Other {
                    code: tonic::Code::Unimplemented,
                    ..
                })
            ),
            "{answer:?}"
        );
        assert_eq!(ops.load(Ordering::Relaxed), 1);
        // A call sent that gets no answer in time does set the replica aside.
        let e = pool
            .call_on(&r, false, |_c| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CsError::Unreachable(m) if m.contains("no answer")),
            "{e}"
        );
        assert!(!pool.replicas()[0].healthy);
    }

    /// A call that gets its turn late still has a whole call timeout once sent: a CS that
    /// answers within it is not set aside because the call first waited in the engine.
    #[tokio::test(start_paused = true)]
    async fn a_call_sent_late_has_its_own_call_timeout() {
        let opts = CsPoolOptions {
            max_calls_in_flight: 1,
            call_timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(86_400),
            ..CsPoolOptions::default()
        };
        let pool = CsPool::new(&endpoint(), &["http://10.0.0.1:7000".into()], opts).unwrap();
        let r = lock(&pool.inner.replicas)[0].clone();
        let held = r.calls.acquire().await.unwrap();
        let start = Instant::now();
        let call = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.first_call(|_c| async {
                    // The CS's answer takes 0.7 s.
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    Ok(())
                })
                .await
            })
        };
        // The call waits 0.6 s for its turn, then 0.7 s for its answer: 1.3 s in all.
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(held);
        let (answer, _) = call.await.unwrap().unwrap();
        answer.expect("answered within the call timeout once sent");
        assert_eq!(start.elapsed(), Duration::from_millis(1300));
        let st = &pool.replicas()[0];
        assert!(st.healthy && st.failures == 0 && st.busy == 0, "{st:?}");
        assert_eq!((st.answered, st.sessions), (1, 0));
    }

    /// A replica whose health turns NOT_SERVING (a CS draining) is set aside by the periodic
    /// check and comes back when it serves again.
    #[tokio::test]
    async fn not_serving_replica_is_set_aside_and_comes_back() {
        let (reporter, addr) = health_server().await;
        let opts = CsPoolOptions {
            health_interval: Duration::from_millis(30),
            backoff_min: Duration::from_millis(30),
            backoff_max: Duration::from_millis(60),
            ..CsPoolOptions::default()
        };
        let pool = CsPool::new(&endpoint(), &[format!("http://{addr}")], opts).unwrap();
        let healthy = |want: bool| {
            let pool = pool.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while pool.replicas()[0].healthy != want {
                    assert!(Instant::now() < deadline, "{:?}", pool.replicas());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        healthy(false).await;
        assert!(pool.replicas()[0].failures >= 1);
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        healthy(true).await;
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            split_url("https://cs.example:4443").unwrap(),
            ("https".into(), "cs.example".into(), 4443)
        );
        assert_eq!(
            split_url("https://[::1]:4443/").unwrap(),
            ("https".into(), "::1".into(), 4443)
        );
        assert_eq!(split_url("http://10.1.2.3").unwrap().2, 80);
        assert!(split_url("ftp://cs:1").is_err());
        assert!(split_url("cs:1").is_err());
    }
}
