//! The session table: every open LURK session, its owner and its expiry.
//!
//! This is the one place a replicated CS replaces (sealed session context that any replica
//! can serve): operations only see [`SessionTable::open`], [`SessionTable::get`] and
//! [`SessionTable::close`], and the state they keep is theirs: the table is generic over it
//! ([`SessionState`]: its bytes and which TTL applies), and knows nothing of the exchanges.
//!
//! Rules enforced here (docs/design.md §4.7): session ids are 16 random bytes from the OS CSPRNG,
//! unguessable; a session belongs to the engine identity that opened it, and another engine
//! naming it gets the same answer as for an unknown id (`invalid_session_id`), so ids do not
//! leak across engines; the table is bounded in total and per engine, by count and by the
//! bytes the sessions hold (each session is charged what its stage holds, checked before an
//! exchange commits); a session expires after a TTL without an exchange (longer once the
//! handshake is established, for post-handshake authentication and ticket registration;
//! shorter for a session opened by c_init_client_finished, where no server was seen by the
//! CS). Expired sessions are dropped, which destroys any ephemeral key they still hold.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lurk_proto::status::LurkStatus;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::ServiceError;

/// A LURK session id: 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    fn random(rng: &SystemRandom) -> Result<Self, ServiceError> {
        let mut id = [0u8; 16];
        rng.fill(&mut id)
            .map_err(|_| ServiceError::Internal("CSPRNG failure".into()))?;
        Ok(Self(id))
    }

    /// The 16 random bytes sent to the engine as `session_id`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Parses an id received from an engine: anything but 16 bytes is an unknown session.
    pub fn parse(bytes: &[u8]) -> Result<Self, ServiceError> {
        let id: [u8; 16] = bytes.try_into().map_err(|_| unknown_session())?;
        Ok(Self(id))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 4 bytes are enough to correlate logs.
        write!(f, "SessionId({}…)", hex::encode(&self.0[..4]))
    }
}

/// Limits of the table.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Sessions open at most, all engines together.
    pub max: usize,
    /// Sessions one engine has open at most.
    pub max_per_engine: usize,
    /// Bytes all sessions hold at most.
    pub max_bytes: usize,
    /// Bytes one engine's sessions hold at most.
    pub max_bytes_per_engine: usize,
    /// Idle lifetime during the handshake.
    pub handshake_ttl: Duration,
    /// Idle lifetime once established (post-handshake auth, tickets).
    pub established_ttl: Duration,
    /// Idle lifetime of a session opened by c_init_client_finished (post-handshake auth only).
    pub engine_keyed_ttl: Duration,
}

/// Which TTL applies to a session (docs/protocol.md, "Engines and sessions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// During the handshake (`ttl_secs`).
    Handshake,
    /// Once established (`established_ttl_secs`).
    Established,
    /// Established by c_init_client_finished, no server seen by the CS
    /// (`engine_keyed_ttl_secs`).
    EngineKeyed,
}

/// What the table needs from the state a session keeps.
pub trait SessionState {
    /// The bytes the state holds, charged to the session's engine.
    fn held_bytes(&self) -> usize;
    /// Which TTL applies.
    fn lifetime(&self) -> Lifetime;
    /// Whether dropping the state may block (token key pairs are destroyed on drop): such a
    /// state is never dropped on an async worker ([`release`]).
    fn drop_may_block(&self) -> bool {
        false
    }
}

thread_local! {
    static ON_BLOCKING_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as running an exchange on the blocking pool until dropped
/// (service.rs): a session released there is dropped there, within the exchange.
pub struct OnBlockingPool(());

impl OnBlockingPool {
    /// Marks the current thread.
    pub fn enter() -> Self {
        ON_BLOCKING_POOL.with(|b| b.set(true));
        Self(())
    }
}

impl Drop for OnBlockingPool {
    fn drop(&mut self) {
        ON_BLOCKING_POOL.with(|b| b.set(false));
    }
}

/// What one session costs besides its stage: the table entry, its map slot, the Arc'd mutex.
const SESSION_OVERHEAD: usize = 256;

/// One LURK session.
#[derive(Debug)]
pub struct Session<S> {
    owner: String,
    expires: Instant,
    /// Where the session is in its exchange sequence, and what it keeps.
    pub stage: S,
}

struct Entry<S> {
    owner: String,
    expires: Instant,
    /// Bytes charged to the owner for this session.
    bytes: usize,
    session: Arc<Mutex<Session<S>>>,
}

/// One engine's share of the table.
#[derive(Clone, Copy, Default)]
struct Usage {
    sessions: usize,
    bytes: usize,
}

/// The table of open sessions.
pub struct SessionTable<S> {
    limits: SessionLimits,
    rng: SystemRandom,
    inner: Mutex<Inner<S>>,
}

struct Inner<S> {
    sessions: HashMap<SessionId, Entry<S>>,
    per_engine: HashMap<String, Usage>,
    /// Bytes charged for all sessions.
    bytes: usize,
    /// No session expires before this instant (a lower bound, kept on insert and touch): a
    /// full table is scanned for expired sessions only once one may have expired, not on
    /// every refused open.
    earliest_expiry: Option<Instant>,
}

impl<S> Default for Inner<S> {
    fn default() -> Self {
        Self {
            sessions: HashMap::new(),
            per_engine: HashMap::new(),
            bytes: 0,
            earliest_expiry: None,
        }
    }
}

impl<S> Inner<S> {
    fn note_expiry(&mut self, expires: Instant) {
        self.earliest_expiry = Some(self.earliest_expiry.map_or(expires, |e| e.min(expires)));
    }
}

fn unknown_session() -> ServiceError {
    ServiceError::refuse(LurkStatus::InvalidSessionId, "unknown or expired session")
}

impl<S: SessionState> SessionTable<S> {
    /// An empty table with these limits.
    pub fn new(limits: SessionLimits) -> Self {
        Self {
            limits,
            rng: SystemRandom::new(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The limits the table was made with.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock leaves the map consistent (every update is a
        // single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self, stage: &S) -> Duration {
        match stage.lifetime() {
            Lifetime::EngineKeyed => self.limits.engine_keyed_ttl,
            Lifetime::Established => self.limits.established_ttl,
            Lifetime::Handshake => self.limits.handshake_ttl,
        }
    }

    /// What a session holding `stage_bytes` is charged.
    fn charge(owner: &str, stage_bytes: usize) -> usize {
        SESSION_OVERHEAD + owner.len() + stage_bytes
    }

    /// Refusal when `owner` would hold `engine_bytes` and the table `total` bytes.
    fn check_bytes(
        &self,
        owner: &str,
        engine_bytes: usize,
        total: usize,
    ) -> Result<(), ServiceError> {
        if engine_bytes > self.limits.max_bytes_per_engine {
            return Err(ServiceError::refuse(
                LurkStatus::TooManySessions,
                format!(
                    "engine {owner:?} holds its maximum of {} bytes of session state",
                    self.limits.max_bytes_per_engine
                ),
            ));
        }
        if total > self.limits.max_bytes {
            return Err(ServiceError::refuse(
                LurkStatus::TooManySessions,
                format!(
                    "the CS holds its maximum of {} bytes of session state",
                    self.limits.max_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Opens a session owned by `owner`, purging expired sessions when a limit is reached.
    pub fn open(&self, owner: &str, stage: S) -> Result<SessionId, ServiceError> {
        self.open_reserving(owner, stage, 0)
    }

    /// Opens a session charged at least `reserve` bytes for its stage (what the stage will
    /// hold once the operation that opens it has filled it in).
    pub fn open_reserving(
        &self,
        owner: &str,
        stage: S,
        reserve: usize,
    ) -> Result<SessionId, ServiceError> {
        let now = Instant::now();
        let expires = now + self.ttl(&stage);
        let bytes = Self::charge(owner, stage.held_bytes().max(reserve));
        let id = SessionId::random(&self.rng)?;
        let mut expired = Vec::new();
        {
            let mut inner = self.lock();
            let usage = inner.per_engine.get(owner).copied().unwrap_or_default();
            if inner.sessions.len() >= self.limits.max
                || usage.sessions >= self.limits.max_per_engine
                || self
                    .check_bytes(owner, usage.bytes + bytes, inner.bytes + bytes)
                    .is_err()
            {
                expired = Self::remove_expired(&mut inner, now);
            }
            let usage = inner.per_engine.get(owner).copied().unwrap_or_default();
            let engine_count = usage.sessions;
            if inner.sessions.len() >= self.limits.max {
                return Err(ServiceError::refuse(
                    LurkStatus::TooManySessions,
                    format!("the CS holds its maximum of {} sessions", self.limits.max),
                ));
            }
            if engine_count >= self.limits.max_per_engine {
                return Err(ServiceError::refuse(
                    LurkStatus::TooManySessions,
                    format!(
                        "engine {owner:?} holds its maximum of {} sessions",
                        self.limits.max_per_engine
                    ),
                ));
            }
            self.check_bytes(owner, usage.bytes + bytes, inner.bytes + bytes)?;
            let session = Session {
                owner: owner.to_owned(),
                expires,
                stage,
            };
            inner.sessions.insert(
                id,
                Entry {
                    owner: owner.to_owned(),
                    expires,
                    bytes,
                    session: Arc::new(Mutex::new(session)),
                },
            );
            let usage = inner.per_engine.entry(owner.to_owned()).or_default();
            usage.sessions += 1;
            usage.bytes += bytes;
            inner.bytes += bytes;
            inner.note_expiry(expires);
        }
        // Expired sessions (and the ephemeral keys they hold) are dropped outside the lock.
        drop(expired);
        Ok(id)
    }

    /// The session `id` if it exists, is alive and belongs to `owner`.
    pub fn get(&self, owner: &str, id: &SessionId) -> Result<Arc<Mutex<Session<S>>>, ServiceError> {
        let now = Instant::now();
        let inner = self.lock();
        let entry = inner.sessions.get(id).ok_or_else(unknown_session)?;
        // Another engine's session looks exactly like an unknown one (docs/design.md §4.7).
        if entry.owner != owner {
            return Err(unknown_session());
        }
        // An expired session is left to the purge (or to the next open), off the async
        // workers: dropping it may destroy token objects (an exchange on the async side may
        // ask for it).
        if entry.expires <= now {
            return Err(unknown_session());
        }
        Ok(entry.session.clone())
    }

    /// Refreshes the expiry after a successful exchange (the stage may have changed).
    pub fn touch(&self, id: &SessionId, session: &mut Session<S>) {
        let expires = Instant::now() + self.ttl(&session.stage);
        session.expires = expires;
        let mut inner = self.lock();
        if let Some(e) = inner.sessions.get_mut(id) {
            e.expires = expires;
            inner.note_expiry(expires);
        }
    }

    /// Charges session `id` for a stage of `stage_bytes` from now on, before the exchange
    /// that makes it commits: growth beyond the owner's byte share or the table's total is
    /// refused (`too_many_sessions`) and charges nothing. Shrinking always succeeds.
    pub fn resize(&self, id: &SessionId, stage_bytes: usize) -> Result<(), ServiceError> {
        self.set_bytes(id, stage_bytes, true)
    }

    /// Charges session `id` for what its stage holds after an exchange committed (never
    /// refused: growth was admitted by [`resize`](Self::resize)).
    pub fn settle(&self, id: &SessionId, stage_bytes: usize) {
        let _ = self.set_bytes(id, stage_bytes, false);
    }

    fn set_bytes(
        &self,
        id: &SessionId,
        stage_bytes: usize,
        check: bool,
    ) -> Result<(), ServiceError> {
        let mut inner = self.lock();
        let Some(entry) = inner.sessions.get(id) else {
            return Ok(());
        };
        let owner = entry.owner.clone();
        let old = entry.bytes;
        let new = Self::charge(&owner, stage_bytes);
        let usage = inner.per_engine.get(&owner).copied().unwrap_or_default();
        if check && new > old {
            self.check_bytes(&owner, usage.bytes - old + new, inner.bytes - old + new)?;
        }
        if let Some(e) = inner.sessions.get_mut(id) {
            e.bytes = new;
        }
        if let Some(u) = inner.per_engine.get_mut(&owner) {
            u.bytes = u.bytes - old + new;
        }
        inner.bytes = inner.bytes - old + new;
        Ok(())
    }

    /// Bytes charged to `owner`'s sessions, and to all sessions.
    pub fn bytes_held(&self, owner: &str) -> (usize, usize) {
        let inner = self.lock();
        let engine = inner.per_engine.get(owner).map_or(0, |u| u.bytes);
        (engine, inner.bytes)
    }

    /// Forgets a session (last_exchange, or a fatal error).
    pub fn close(&self, id: &SessionId) {
        let removed = {
            let mut inner = self.lock();
            Self::remove(&mut inner, id)
        };
        drop(removed);
    }

    fn remove(inner: &mut Inner<S>, id: &SessionId) -> Option<Entry<S>> {
        let entry = inner.sessions.remove(id)?;
        if let Some(u) = inner.per_engine.get_mut(&entry.owner) {
            u.sessions -= 1;
            u.bytes -= entry.bytes;
            if u.sessions == 0 {
                inner.per_engine.remove(&entry.owner);
            }
        }
        inner.bytes -= entry.bytes;
        Some(entry)
    }

    fn remove_expired(inner: &mut Inner<S>, now: Instant) -> Vec<Entry<S>> {
        if inner.earliest_expiry.is_some_and(|e| e > now) {
            return Vec::new();
        }
        let mut dead = Vec::new();
        let mut earliest: Option<Instant> = None;
        for (k, e) in &inner.sessions {
            // A session an exchange is still running on is left for the next purge: the
            // exchange would otherwise drop it last, on whatever thread it runs (an inline
            // one on an async worker), with the token objects it may hold. (No new handle is
            // made meanwhile: `get` takes this lock.)
            if e.expires <= now && Arc::strong_count(&e.session) == 1 {
                dead.push(*k);
            } else {
                earliest = Some(earliest.map_or(e.expires, |x| x.min(e.expires)));
            }
        }
        inner.earliest_expiry = earliest;
        dead.iter()
            .filter_map(|id| Self::remove(inner, id))
            .collect()
    }

    /// Drops every expired session; returns how many. Run periodically off the async threads.
    pub fn purge_expired(&self) -> usize {
        let removed = {
            let mut inner = self.lock();
            Self::remove_expired(&mut inner, Instant::now())
        };
        removed.len()
    }

    /// Sessions open now, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// No session open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `n` engines with the most sessions open (most first, ties by name) and the
    /// sessions of all the other engines, for the metrics.
    pub fn top_engines(&self, n: usize) -> (Vec<(String, usize)>, usize) {
        let inner = self.lock();
        let mut all: Vec<(&str, usize)> = inner
            .per_engine
            .iter()
            .map(|(engine, u)| (engine.as_str(), u.sessions))
            .collect();
        let order = |a: &(&str, usize), b: &(&str, usize)| b.1.cmp(&a.1).then(a.0.cmp(b.0));
        if all.len() > n {
            all.select_nth_unstable_by(n, order);
        }
        let others = all.get(n..).map_or(0, |r| r.iter().map(|(_, s)| s).sum());
        all.truncate(n);
        all.sort_unstable_by(order);
        let top = all.into_iter().map(|(e, s)| (e.to_owned(), s)).collect();
        (top, others)
    }
}

impl<S> Session<S> {
    /// The engine identity that opened the session; no other engine can reach it.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// Lets go of a session handle from [`SessionTable::get`]. When the session was closed (by
/// this exchange, or meanwhile by another of its exchanges) this handle is its last: a
/// session whose drop may block is then dropped on the blocking pool when the caller is an
/// async worker (an inline exchange); elsewhere, and for any other session, here.
pub fn release<S: SessionState + Send + 'static>(session: Arc<Mutex<Session<S>>>) {
    let Some(last) = Arc::into_inner(session) else {
        return;
    };
    let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
    if !last.stage.drop_may_block() || ON_BLOCKING_POOL.with(|b| b.get()) {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        drop(rt.spawn_blocking(move || drop(last)));
    }
}

/// Locks a session for one exchange. Two exchanges on one session at the same time are a
/// protocol error: the second is refused rather than queued.
pub fn lock_session<S>(
    session: &Mutex<Session<S>>,
) -> Result<MutexGuard<'_, Session<S>>, ServiceError> {
    match session.try_lock() {
        Ok(g) => Ok(g),
        Err(std::sync::TryLockError::WouldBlock) => Err(ServiceError::refuse(
            LurkStatus::InvalidStatus,
            "another exchange is in progress on this session",
        )),
        Err(std::sync::TryLockError::Poisoned(_)) => Err(unknown_session()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state that holds nothing, in the handshake.
    #[derive(Debug)]
    struct Idle;

    impl SessionState for Idle {
        fn held_bytes(&self) -> usize {
            0
        }
        fn lifetime(&self) -> Lifetime {
            Lifetime::Handshake
        }
    }

    fn limits(max: usize, per_engine: usize, ttl_ms: u64) -> SessionLimits {
        SessionLimits {
            max,
            max_per_engine: per_engine,
            max_bytes: usize::MAX,
            max_bytes_per_engine: usize::MAX,
            handshake_ttl: Duration::from_millis(ttl_ms),
            established_ttl: Duration::from_millis(ttl_ms),
            engine_keyed_ttl: Duration::from_millis(ttl_ms),
        }
    }

    #[test]
    fn ids_are_random_and_sixteen_bytes() {
        let t = SessionTable::new(limits(10, 10, 10_000));
        let a = t.open("e", Idle).unwrap();
        let b = t.open("e", Idle).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 16);
        assert!(SessionId::parse(&[0u8; 15]).is_err());
    }

    #[test]
    fn another_engines_session_looks_unknown() {
        let t = SessionTable::new(limits(10, 10, 10_000));
        let id = t.open("engine-a", Idle).unwrap();
        assert!(t.get("engine-a", &id).is_ok());
        let err = t.get("engine-b", &id).unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::InvalidSessionId);
        assert!(
            t.get("engine-a", &id).is_ok(),
            "the owner keeps its session"
        );
    }

    /// A state that says when it is dropped.
    #[derive(Debug)]
    struct Tracked(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl SessionState for Tracked {
        fn held_bytes(&self) -> usize {
            0
        }
        fn lifetime(&self) -> Lifetime {
            Lifetime::Handshake
        }
    }

    /// An expired session is unknown at once, but dropped only by the purge, which runs on
    /// a blocking thread (its token objects are destroyed there), not by the lookup.
    #[test]
    fn sessions_expire() {
        let t = SessionTable::new(limits(10, 10, 1));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id = t.open("e", Tracked(dropped.clone())).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            t.get("e", &id).unwrap_err().lurk_status(),
            LurkStatus::InvalidSessionId
        );
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(t.purge_expired(), 1);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(t.is_empty());
    }

    /// A state that says on which thread it is dropped.
    #[derive(Debug)]
    struct DroppedOn(Arc<Mutex<Option<std::thread::ThreadId>>>);

    impl Drop for DroppedOn {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(std::thread::current().id());
        }
    }

    impl SessionState for DroppedOn {
        fn held_bytes(&self) -> usize {
            0
        }
        fn lifetime(&self) -> Lifetime {
            Lifetime::Handshake
        }
        fn drop_may_block(&self) -> bool {
            true
        }
    }

    /// An exchange whose session was closed meanwhile holds its last handle: released on an
    /// async worker, the session is dropped on the blocking pool, not there.
    #[test]
    fn the_last_handle_of_a_closed_session_is_dropped_off_the_async_workers() {
        let t = SessionTable::new(limits(10, 10, 10_000));
        let on = Arc::new(Mutex::new(None));
        let id = t.open("e", DroppedOn(on.clone())).unwrap();
        let handle = t.get("e", &id).unwrap();
        t.close(&id);
        assert!(on.lock().unwrap().is_none(), "the exchange still holds it");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let here = std::thread::current().id();
        rt.block_on(async move { release(handle) });
        drop(rt);
        let dropped_on = on.lock().unwrap().expect("dropped");
        assert_ne!(dropped_on, here);
        // Outside a runtime: dropped at once, here.
        let id = t.open("e", DroppedOn(on.clone())).unwrap();
        let handle = t.get("e", &id).unwrap();
        t.close(&id);
        release(handle);
        assert_eq!(on.lock().unwrap().expect("dropped"), here);
        // An exchange on the blocking pool drops it there, within the exchange.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (ran_on, dropped) = rt.block_on(async {
            let id = t.open("e", DroppedOn(on.clone())).unwrap();
            let handle = t.get("e", &id).unwrap();
            t.close(&id);
            let on = on.clone();
            tokio::task::spawn_blocking(move || {
                let _pool = OnBlockingPool::enter();
                release(handle);
                (std::thread::current().id(), on.lock().unwrap().take())
            })
            .await
            .unwrap()
        });
        assert_eq!(dropped, Some(ran_on));
        // A session whose drop cannot block is dropped at once, even on an async worker.
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let t = SessionTable::new(limits(10, 10, 10_000));
        rt.block_on(async {
            let id = t.open("e", Tracked(dropped.clone())).unwrap();
            let handle = t.get("e", &id).unwrap();
            t.close(&id);
            release(handle);
        });
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// A session that expires while an exchange holds it is not purged from under it: the
    /// exchange would then drop it last, on its own thread. The next purge takes it.
    #[test]
    fn a_session_in_use_is_purged_after_its_exchange() {
        let t = SessionTable::new(limits(10, 10, 20));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let id = t.open("e", Tracked(dropped.clone())).unwrap();
        let held = t.get("e", &id).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.purge_expired(), 0);
        assert_eq!(t.len(), 1);
        drop(held);
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(t.purge_expired(), 1);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn the_table_is_bounded_and_purges_expired_sessions_when_full() {
        let t = SessionTable::new(limits(3, 2, 10_000));
        t.open("a", Idle).unwrap();
        t.open("a", Idle).unwrap();
        let err = t.open("a", Idle).unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::TooManySessions);
        t.open("b", Idle).unwrap();
        assert_eq!(
            t.open("c", Idle).unwrap_err().lurk_status(),
            LurkStatus::TooManySessions
        );

        let short = SessionTable::new(limits(2, 2, 1));
        short.open("a", Idle).unwrap();
        short.open("a", Idle).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        short.open("a", Idle).expect("expired sessions make room");
        assert_eq!(short.len(), 1);
    }

    #[test]
    fn bytes_are_bounded_per_engine_and_in_total_and_growth_is_checked_first() {
        let mut l = limits(100, 100, 10_000);
        l.max_bytes_per_engine = 10_000;
        l.max_bytes = 15_000;
        let t = SessionTable::new(l);
        let a = t.open_reserving("a", Idle, 4_000).unwrap();
        t.open_reserving("a", Idle, 4_000).unwrap();
        let err = t.open_reserving("a", Idle, 4_000).unwrap_err();
        assert_eq!(err.lurk_status(), LurkStatus::TooManySessions);
        // Growth beyond the share is refused and charges nothing; shrinking always works.
        let before = t.bytes_held("a");
        assert_eq!(
            t.resize(&a, 6_000).unwrap_err().lurk_status(),
            LurkStatus::TooManySessions
        );
        assert_eq!(t.bytes_held("a"), before);
        t.resize(&a, 100).unwrap();
        t.resize(&a, 1_000).unwrap();
        // Another engine has its own share, within the total.
        let b = t.open_reserving("b", Idle, 5_000).unwrap();
        assert_eq!(
            t.open_reserving("b", Idle, 4_000)
                .unwrap_err()
                .lurk_status(),
            LurkStatus::TooManySessions,
            "the total"
        );
        t.close(&b);
        t.close(&a);
        assert_eq!(t.bytes_held("b").0, 0);
        assert_eq!(t.bytes_held("a").0, t.bytes_held("a").1);
    }

    #[test]
    fn close_forgets_the_session() {
        let t = SessionTable::new(limits(10, 10, 10_000));
        let id = t.open("e", Idle).unwrap();
        t.close(&id);
        assert!(t.get("e", &id).is_err());
        assert!(t.is_empty());
    }

    #[test]
    fn concurrent_exchanges_on_one_session_are_refused() {
        let t = SessionTable::new(limits(10, 10, 10_000));
        let id = t.open("e", Idle).unwrap();
        let s = t.get("e", &id).unwrap();
        let _held = lock_session(&s).unwrap();
        let s2 = t.get("e", &id).unwrap();
        assert_eq!(
            lock_session(&s2).unwrap_err().lurk_status(),
            LurkStatus::InvalidStatus
        );
    }

    #[test]
    fn the_top_engines_are_those_with_the_most_sessions() {
        let t = SessionTable::new(limits(100, 100, 10_000));
        let mut ids = Vec::new();
        for (engine, n) in [("a", 1), ("b", 4), ("c", 2), ("d", 2), ("e", 3)] {
            for _ in 0..n {
                ids.push(t.open(engine, Idle).unwrap());
            }
        }
        let top = |n| {
            let (engines, others) = t.top_engines(n);
            let engines: Vec<_> = engines.iter().map(|(e, s)| format!("{e}={s}")).collect();
            (engines.join(" "), others)
        };
        // Ties in name order; the rest summed.
        assert_eq!(top(3), ("b=4 e=3 c=2".to_owned(), 3));
        assert_eq!(top(0), (String::new(), 12));
        assert_eq!(top(9), ("b=4 e=3 c=2 d=2 a=1".to_owned(), 0));
        for id in &ids[1..5] {
            t.close(id);
        }
        assert_eq!(top(2), ("e=3 c=2".to_owned(), 3));
    }
}
