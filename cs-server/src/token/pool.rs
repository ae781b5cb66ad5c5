//! A pool of logged-in read-write sessions that survives a failing token.
//!
//! A cryptoki `Session` is `Send` but not `Sync`: one thread at a time. The pool hands each
//! session to exactly one caller (checkout) and takes it back when the guard drops (checkin);
//! callers wait when all sessions are out, and a session that comes back goes to the waiter
//! whose engine holds the fewest (fair.rs). The sessions stay open as
//! long as the pool lives, which keeps the token logged in (PKCS#11 logs the application out
//! when its last session closes) and keeps the session objects (token ephemerals) alive.
//!
//! Failures (PKCS#11 v2.40 §5.1, return values):
//! - a call on a session that answers a *session* fault (CKR_SESSION_HANDLE_INVALID,
//!   CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN) marks that session broken: it is closed
//!   instead of going back, the other idle sessions are checked with C_GetSessionInfo before
//!   their next use, and a fresh session is opened and logged in when one is needed;
//! - a *device* fault (CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_DEVICE_MEMORY,
//!   CKR_TOKEN_NOT_PRESENT, CKR_TOKEN_NOT_RECOGNIZED, CKR_GENERAL_ERROR,
//!   CKR_CRYPTOKI_NOT_INITIALIZED), or a session that cannot be opened or logged in, marks
//!   the token down. While it is down every checkout fails at once with
//!   [`TokenError::Unavailable`]; the first checkout after the backoff delay re-initialises
//!   the module (all sessions closed, C_Finalize, C_Initialize, the slot found again by
//!   label, one session opened and logged in). A failed attempt doubles the delay
//!   ([`Backoff`]); the delay starts again from its minimum once the token has stayed up
//!   for [`BACKOFF_MAX`].
//! - a login refused for its PIN (CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_PIN_EXPIRED) is not
//!   tried again with the same PIN: tokens lock a PIN after a few wrong attempts. The token
//!   stays down until the PIN file changes (a PIN from the environment cannot change: until
//!   a restart).
//!
//! Recovery runs lazily in the thread that finds it due (an exchange or [`Token::probe`]),
//! under the write half of `gate`: every checked-out session holds the read half, so
//! C_Finalize never runs while another thread uses the module (PKCS#11 v2.40 §5.4), and no
//! session, object handle or session object of the old module is used afterwards (each
//! checkout carries the module's `generation`; callers compare it with what they cached).
//!
//! The same re-initialisation also runs planned, for a module that keeps every destroyed
//! session object until C_Finalize (`recycle`): checkouts then wait for it instead of failing.
//!
//! [`Token::probe`]: super::Token::probe

use std::cell::Cell;
use std::collections::HashSet;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;

use crate::config::TokenConfig;
use crate::error::TokenError;
use crate::telemetry::TokenCall;

mod recycle;
pub use crate::fair::Caller;
use crate::fair::{FairQueue, Who};
pub(crate) use recycle::RecyclePolicy;
pub use recycle::{AsyncAdmission, EnteredAdmission, EphemeralAdmission, RecycleStats};

/// How long a caller waits for a free session before giving up. Every checkout is held only
/// for one or a few token calls, so reaching this means the token hangs (or a caller holds a
/// session while waiting for another, which this module never does).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// First delay before re-initialising a failed module; doubled after each failed attempt.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest delay between two attempts; also how long the token must stay up before the
/// delay starts again from [`BACKOFF_MIN`].
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

thread_local! {
    /// Pool sessions this thread holds. A thread that holds one must not wait for the
    /// write half of the gate (it would wait for itself): it never runs a recovery.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// What a failed PKCS#11 call says about the session and the module it ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// This session is unusable (closed, invalid, logged out): open another one.
    Session,
    /// The device or the module failed: re-initialise the module.
    Device,
}

/// Classifies a return value: `None` for errors that say nothing about the session or the
/// device (a bad argument, a wrong key, a failed decryption...).
pub(crate) fn classify(rv: RvError) -> Option<Fault> {
    match rv {
        RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn => {
            Some(Fault::Session)
        }
        RvError::DeviceError
        | RvError::DeviceRemoved
        | RvError::DeviceMemory
        | RvError::TokenNotPresent
        | RvError::TokenNotRecognized
        | RvError::GeneralError
        | RvError::CryptokiNotInitialized => Some(Fault::Device),
        _ => None,
    }
}

/// The fault a cryptoki error reports, if any.
pub(crate) fn fault_of(e: &CkError) -> Option<Fault> {
    match e {
        CkError::Pkcs11(rv, _) => classify(*rv),
        _ => None,
    }
}

/// Exponential backoff between attempts to re-initialise the module.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The delay before the next attempt, doubling the one after (up to the maximum).
    pub(crate) fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

enum Health {
    Up { since: Instant },
    Down { reason: String, retry_at: Instant },
}

/// A session of the pool with its number (never reused in a process) and the fault count
/// at which it was last known good.
struct Entry {
    session: Session,
    id: u64,
    checked: u64,
}

struct State {
    slot: Slot,
    /// Incremented by every module re-initialisation.
    generation: u64,
    idle: Vec<Entry>,
    /// Sessions that exist or are being opened: idle, checked out, opening.
    open: usize,
    /// Ids of the sessions open now: a session object is usable only while the session that
    /// created it is open.
    live: HashSet<u64>,
    next_id: u64,
    /// Session faults seen so far; an idle session checked before the last one is checked
    /// again (C_GetSessionInfo) before it is handed out.
    faults: u64,
    health: Health,
    recovering: bool,
    backoff: Backoff,
    /// Set when the token refused the PIN: the PIN file's modification time then (None: no
    /// file). No login is tried again until it changes.
    pin_refused: Option<Option<SystemTime>>,
    /// Callers waiting for a session, and the sessions each engine holds.
    fair: FairQueue,
    /// Session objects and token key pairs of this generation (the planned recycle).
    eph: recycle::Counts,
}

/// The pool at one instant (for the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Sessions the pool holds at most.
    pub size: usize,
    /// Sessions checked out or being opened.
    pub in_use: usize,
    /// Logged-in sessions open and free.
    pub idle: usize,
    /// Callers waiting for a session.
    pub waiting: usize,
}

pub(crate) struct SessionPool {
    pkcs11: Pkcs11,
    /// Where the label and the PIN's source come from (never the PIN itself).
    cfg: TokenConfig,
    size: usize,
    gate: RwLock<()>,
    state: Mutex<State>,
    /// The planned recycle of a module that keeps destroyed objects (pool/recycle.rs).
    recycle: RecyclePolicy,
    /// Wakes a recycle waiting for key pairs in use, and key generations waiting for it.
    recycle_cv: Condvar,
    /// Set while a planned recycle holds (or waits for) the gate's write half: a checkout
    /// then waits for it instead of failing.
    planned: AtomicBool,
    /// Whether a recycle is under way, for the waiters on the async side.
    drain_watch: tokio::sync::watch::Sender<bool>,
    /// Runs once between reserving a new session and opening it.
    #[cfg(test)]
    before_open: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl SessionPool {
    pub(crate) fn new(
        pkcs11: Pkcs11,
        cfg: TokenConfig,
        slot: Slot,
        sessions: Vec<Session>,
        recycle: RecyclePolicy,
    ) -> Self {
        let size = sessions.len();
        let idle: Vec<Entry> = sessions
            .into_iter()
            .zip(0..)
            .map(|(session, id)| Entry {
                session,
                id,
                checked: 0,
            })
            .collect();
        Self {
            pkcs11,
            cfg,
            size,
            gate: RwLock::new(()),
            state: Mutex::new(State {
                slot,
                generation: 0,
                live: idle.iter().map(|e| e.id).collect(),
                next_id: size as u64,
                open: size,
                idle,
                faults: 0,
                health: Health::Up {
                    since: Instant::now(),
                },
                recovering: false,
                backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
                pin_refused: None,
                fair: FairQueue::default(),
                eph: recycle::Counts::default(),
            }),
            recycle,
            recycle_cv: Condvar::new(),
            planned: AtomicBool::new(false),
            drain_watch: tokio::sync::watch::Sender::new(false),
            #[cfg(test)]
            before_open: Mutex::new(None),
        }
    }

    /// Runs `hook` once, in the next checkout that opens a session, before it opens it.
    #[cfg(test)]
    pub(crate) fn before_next_open(&self, hook: impl FnOnce() + Send + 'static) {
        *self.before_open.lock().unwrap() = Some(Box::new(hook));
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// A poisoned lock only means a thread panicked while holding it; the state is updated
    /// in single steps and stays consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the token is up (no known failure, or recovered since). Reads memory only.
    pub(crate) fn healthy(&self) -> bool {
        matches!(self.lock().health, Health::Up { .. })
    }

    /// Sessions in use, idle, and callers waiting.
    pub(crate) fn usage(&self) -> PoolUsage {
        let st = self.lock();
        PoolUsage {
            size: self.size,
            in_use: st.open.saturating_sub(st.idle.len()),
            idle: st.idle.len(),
            waiting: st.fair.len(),
        }
    }

    /// The current slot of the token (it may change when the module is re-initialised).
    pub(crate) fn slot(&self) -> Slot {
        self.lock().slot
    }

    /// Sessions free now: idle, or not open (a checkout opens it).
    fn free(&self, st: &State) -> usize {
        st.idle.len() + self.size.saturating_sub(st.open)
    }

    /// Grants the free sessions to waiters (fair.rs); after every change that frees one.
    fn grant(&self, st: &mut State) {
        let free = self.free(st);
        st.fair.grant(free);
    }

    /// Takes a session, waiting until one is free (and is this caller's turn: fair.rs);
    /// fails at once while the token is down.
    pub(crate) fn checkout(&self) -> Result<PooledSession<'_>, TokenError> {
        let who = Caller::current();
        let mut ticket = None;
        let result = self.checkout_as(&who, &mut ticket);
        if let Some((id, _)) = ticket {
            // Gave up while waiting: a grant it holds passes on.
            let mut st = self.lock();
            let free = self.free(&st);
            st.fair.leave(id, &who, free);
        }
        result
    }

    /// [`checkout`](Self::checkout) for `who`; `ticket` is its place in the queue while it
    /// waits.
    fn checkout_as(
        &self,
        who: &Who,
        ticket: &mut Option<(u64, Arc<Condvar>)>,
    ) -> Result<PooledSession<'_>, TokenError> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        loop {
            let gate = match self.gate.try_read() {
                Ok(g) => g,
                // A planned recycle (pool/recycle.rs) holds the module for a few token calls:
                // wait for it (a thread holding a session would wait for itself).
                Err(TryLockError::WouldBlock)
                    if self.planned.load(Ordering::Acquire) && HELD.get() == 0 =>
                {
                    self.gate.read().unwrap_or_else(|e| e.into_inner())
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(TokenError::Unavailable(
                        "the PKCS#11 module is being re-initialised".into(),
                    ))
                }
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
            };
            let mut st = self.lock();
            if let Health::Down { reason, retry_at } = &st.health {
                let same_pin = st
                    .pin_refused
                    .is_some_and(|t| t == pin_file_time(&self.cfg));
                if st.recovering || Instant::now() < *retry_at || HELD.get() > 0 || same_pin {
                    return Err(TokenError::Unavailable(reason.clone()));
                }
                st.recovering = true;
                drop(st);
                drop(gate);
                self.recover();
                continue;
            }
            let free = self.free(&st);
            st.fair.grant(free);
            if !st.fair.may_take(ticket.as_ref().map(|t| t.0), free) {
                // Wait for a grant without holding the gate (a recovery may need it).
                drop(gate);
                let now = Instant::now();
                if now >= deadline {
                    return Err(TokenError::Other(format!(
                        "no token session became free in {} s ({} in the pool)",
                        CHECKOUT_TIMEOUT.as_secs(),
                        self.size
                    )));
                }
                let wake = ticket.get_or_insert_with(|| st.fair.join(who)).1.clone();
                drop(
                    wake.wait_timeout(st, deadline - now)
                        .unwrap_or_else(|e| e.into_inner()),
                );
                continue;
            }
            // This caller's session: an idle one, else one to open.
            let entry = st.idle.pop();
            if entry.is_none() {
                st.open += 1;
            }
            let taken = ticket.take().map(|t| t.0);
            let free = self.free(&st);
            st.fair.take(taken, who, free);
            if let Some(entry) = entry {
                let generation = st.generation;
                let stale = entry.checked < st.faults;
                let faults = st.faults;
                drop(st);
                let mut s = PooledSession::new(self, gate, entry, generation, faults, who);
                if stale {
                    // Another session failed since this one was last known good.
                    match s.get_session_info() {
                        Ok(info) if info.session_state() == SessionState::RwUser => {
                            if let Some(e) = s.entry.as_mut() {
                                e.checked = faults;
                            }
                        }
                        Ok(_) => s.fault.set(Some(Fault::Session)),
                        Err(e) => s.fault.set(Some(fault_of(&e).unwrap_or(Fault::Session))),
                    }
                    if s.fault.get().is_some() {
                        // Wait again in the same place; the slot it frees may be its own.
                        let mut st = self.lock();
                        let id = match taken {
                            Some(id) => (id, st.fair.rejoin(id, who)),
                            None => st.fair.join(who),
                        };
                        *ticket = Some(id);
                        drop(st);
                        drop(s);
                        continue;
                    }
                }
                return Ok(s);
            }
            // A session was dropped: open and log in its replacement.
            let (slot, generation) = (st.slot, st.generation);
            drop(st);
            #[cfg(test)]
            if let Some(hook) = self.before_open.lock().unwrap().take() {
                hook();
            }
            match open_session(&self.pkcs11, slot, &self.cfg) {
                Ok(session) => {
                    let mut st = self.lock();
                    // Read once the session is logged in: when every other session
                    // closed meanwhile, the token logged out and this login may name
                    // the private objects by new handles (SoftHSM does). Each such
                    // close counted a fault first (`Drop`), so handles cached before
                    // it are not reused under this epoch.
                    let faults = st.faults;
                    let id = st.next_id;
                    st.next_id += 1;
                    st.live.insert(id);
                    drop(st);
                    tracing::info!(token = %self.cfg.label, "opened a new token session");
                    let entry = Entry {
                        session,
                        id,
                        checked: faults,
                    };
                    return Ok(PooledSession::new(
                        self, gate, entry, generation, faults, who,
                    ));
                }
                Err(e) => {
                    let mut st = self.lock();
                    st.open -= 1;
                    st.fair.gave_back(who);
                    let reason = format!("cannot open a logged-in session: {}", e.error);
                    if e.pin_refused {
                        st.pin_refused = Some(pin_file_time(&self.cfg));
                    }
                    self.mark_down(&mut st, &reason);
                    self.grant(&mut st);
                    return Err(TokenError::Unavailable(reason));
                }
            }
        }
    }

    fn mark_down(&self, st: &mut State, reason: &str) {
        if let Health::Up { since } = st.health {
            if since.elapsed() >= BACKOFF_MAX {
                st.backoff.reset();
            }
            let delay = st.backoff.fail();
            tracing::error!(
                token = %self.cfg.label,
                reason,
                retry_in_ms = delay.as_millis() as u64,
                "token unavailable: exchanges fail fast until the module is re-initialised"
            );
            st.health = Health::Down {
                reason: reason.to_owned(),
                retry_at: Instant::now() + delay,
            };
            // Waiters fail fast now rather than at their timeout.
            st.fair.wake_all();
        }
    }

    /// Re-initialises the module and opens one session; on failure, the token stays down
    /// until the next (later) attempt. Called with `recovering` set by this thread.
    fn recover(&self) {
        // Waits until every checked-out session is back (their guards hold the read half).
        let gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let result = self.reinitialize(&gate);
        let mut st = self.lock();
        st.recovering = false;
        st.pin_refused = match &result {
            Err(e) if e.pin_refused => Some(pin_file_time(&self.cfg)),
            _ => None,
        };
        match result {
            Ok(()) => {
                st.health = Health::Up {
                    since: Instant::now(),
                };
                tracing::warn!(
                    token = %self.cfg.label,
                    generation = st.generation,
                    "token back: PKCS#11 module re-initialised, serving again"
                );
            }
            Err(e) => {
                let delay = st.backoff.fail();
                let mut reason = format!("re-initialising the module failed: {}", e.error);
                if e.pin_refused {
                    reason.push_str(
                        "; the PIN is not tried again until the PIN file changes (or a restart)",
                    );
                }
                tracing::error!(
                    token = %self.cfg.label,
                    reason,
                    retry_in_ms = delay.as_millis() as u64,
                    "token still unavailable"
                );
                st.health = Health::Down {
                    reason,
                    retry_at: Instant::now() + delay,
                };
            }
        }
        self.grant(&mut st);
        st.fair.wake_all();
        drop(st);
        drop(gate);
    }

    /// Closes every session, runs C_Finalize and C_Initialize, finds the token's slot again
    /// and opens one logged-in session; on success a new module generation begins. Called
    /// under the gate's write half (`_gate`): no session is checked out.
    fn reinitialize(&self, _gate: &std::sync::RwLockWriteGuard<'_, ()>) -> Result<(), OpenError> {
        let old: Vec<Entry> = {
            let mut st = self.lock();
            st.live.clear();
            st.open = 0;
            st.idle.drain(..).collect()
        };
        // Closed before C_Finalize: after C_Initialize the same handle numbers may name the
        // new module's sessions.
        for e in old {
            let _ = e.session.close();
        }
        let (slot, session) = super::reinitialize_module(&self.pkcs11)
            .and_then(|()| super::find_slot(&self.pkcs11, &self.cfg.label))
            .map_err(OpenError::from)
            .and_then(|slot| Ok((slot, open_session(&self.pkcs11, slot, &self.cfg)?)))?;
        let mut st = self.lock();
        st.slot = slot;
        st.generation += 1;
        // C_Finalize freed every session object: the new generation starts from none.
        st.eph.new_generation();
        let id = st.next_id;
        st.next_id += 1;
        st.live.insert(id);
        st.open = 1;
        let checked = st.faults;
        st.idle.push(Entry {
            session,
            id,
            checked,
        });
        Ok(())
    }

    /// Whether pool session `id` of module generation `generation` is open now (the session
    /// objects it created exist). Reads memory only.
    pub(crate) fn session_is_open(&self, generation: u64, id: u64) -> bool {
        let st = self.lock();
        st.generation == generation && st.live.contains(&id)
    }

    /// The module generation and the session faults seen so far (what a
    /// [`PooledSession::epoch`] would say now). Reads memory only.
    pub(crate) fn current_epoch(&self) -> HandleEpoch {
        let st = self.lock();
        (st.generation, st.faults)
    }

    /// Sessions currently idle.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// No caller holds a session or waits for one (fair.rs).
    #[cfg(test)]
    pub(crate) fn fair_is_empty(&self) -> bool {
        self.lock().fair.is_empty()
    }

    /// The module generation (re-initialisations so far).
    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }
}

/// Why a session could not be opened, and whether the token refused the PIN.
struct OpenError {
    error: TokenError,
    pin_refused: bool,
}

impl From<TokenError> for OpenError {
    fn from(error: TokenError) -> Self {
        Self {
            error,
            pin_refused: false,
        }
    }
}

/// The PIN file's modification time, which tells a PIN changed by the operator.
fn pin_file_time(cfg: &TokenConfig) -> Option<SystemTime> {
    let path = cfg.pin_file.as_ref()?;
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Opens a read-write session on `slot` and logs it in with the PIN read again from its
/// source.
fn open_session(pkcs11: &Pkcs11, slot: Slot, cfg: &TokenConfig) -> Result<Session, OpenError> {
    let session = pkcs11
        .open_rw_session(slot)
        .map_err(|e| TokenError::pkcs11("C_OpenSession", e))?;
    let pin = super::read_pin(cfg)?;
    let refused = |pin_refused: bool, reason: String| OpenError {
        error: TokenError::Login {
            label: cfg.label.clone(),
            reason,
        },
        pin_refused,
    };
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(CkError::Pkcs11(
            rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired),
            _,
        )) => {
            return Err(refused(
                true,
                format!("the token refused the user PIN ({rv:?})"),
            ))
        }
        Err(e) => return Err(refused(false, format!("C_Login: {e}"))),
    }
    Ok(session)
}

/// A session checked out of the pool; it goes back when this guard drops, unless a call on
/// it reported a fault (then it is closed, and the token may be marked down).
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    _gate: RwLockReadGuard<'a, ()>,
    entry: Option<Entry>,
    generation: u64,
    /// Session faults seen by the pool when this session was checked out (or verified).
    faults: u64,
    pub(super) fault: Cell<Option<Fault>>,
    /// Measures this checkout until the session goes back (token/mod.rs, `session_for`).
    call: Option<TokenCall>,
    /// Whose exchange holds it (fair.rs).
    who: Who,
}

/// When cached object handles were looked up: the module generation and the session
/// faults seen by then. A token that lost its login may give its private objects new
/// handles when it logs in again (SoftHSM does), so a handle is reused only under the
/// same epoch.
pub(crate) type HandleEpoch = (u64, u64);

impl<'a> PooledSession<'a> {
    fn new(
        pool: &'a SessionPool,
        gate: RwLockReadGuard<'a, ()>,
        entry: Entry,
        generation: u64,
        faults: u64,
        who: &Who,
    ) -> Self {
        HELD.set(HELD.get() + 1);
        Self {
            pool,
            _gate: gate,
            entry: Some(entry),
            generation,
            faults,
            fault: Cell::new(None),
            call: None,
            who: who.clone(),
        }
    }

    /// Measures this checkout with `call` until the session goes back.
    pub(super) fn measured_by(&mut self, call: TokenCall) {
        self.call = Some(call);
    }

    pub(crate) fn epoch(&self) -> HandleEpoch {
        (self.generation, self.faults)
    }

    /// The module generation this session belongs to: object handles cached under another
    /// generation must be looked up again.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// `n` session objects were made in this session (the planned recycle counts them).
    pub(crate) fn objects_made(&self, n: u64) {
        self.pool.objects_made(self.generation, n);
    }

    /// This session's number in the pool.
    pub(crate) fn id(&self) -> u64 {
        self.entry.as_ref().map_or(u64::MAX, |e| e.id)
    }

    /// Whether the pool session `id` of this generation is still open (the session objects
    /// it created still exist).
    pub(crate) fn is_live(&self, generation: u64, id: u64) -> bool {
        generation == self.generation && self.pool.lock().live.contains(&id)
    }

    /// Maps the error of call `op` on this session; a session or device fault marks the
    /// session broken and the error becomes [`TokenError::Unavailable`].
    pub(crate) fn fail(&self, op: &'static str) -> impl Fn(CkError) -> TokenError + '_ {
        move |e| self.error(op, e)
    }

    pub(crate) fn error(&self, op: &'static str, e: CkError) -> TokenError {
        let fault = match &e {
            // A token that lost its login hides its private objects: their handles read as
            // invalid (SoftHSM). Only the session's state tells that from a bad handle.
            CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _) => {
                match self.get_session_info() {
                    Ok(info) if info.session_state() == SessionState::RwUser => None,
                    Ok(_) => Some(Fault::Session),
                    Err(e) => Some(fault_of(&e).unwrap_or(Fault::Session)),
                }
            }
            e => fault_of(e),
        };
        match fault {
            Some(f) => {
                if self.fault.get() != Some(Fault::Device) {
                    self.fault.set(Some(f));
                }
                TokenError::Unavailable(format!("{op}: {e}"))
            }
            None => TokenError::pkcs11(op, e),
        }
    }
}

impl Deref for PooledSession<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        // Invariant: `entry` is Some until `drop` takes it.
        &self
            .entry
            .as_ref()
            .expect("pooled session present until drop")
            .session
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        HELD.set(HELD.get().saturating_sub(1));
        let Some(entry) = self.entry.take() else {
            return;
        };
        let mut st = self.pool.lock();
        st.fair.gave_back(&self.who);
        let Some(fault) = self.fault.get() else {
            st.idle.push(entry);
            self.pool.grant(&mut st);
            return;
        };
        st.open -= 1;
        st.live.remove(&entry.id);
        st.faults += 1;
        if fault == Fault::Device {
            self.pool
                .mark_down(&mut st, "a token call failed with a device error");
        }
        self.pool.grant(&mut st);
        drop(st);
        tracing::warn!(
            token = %self.pool.cfg.label,
            ?fault,
            "dropped a failed token session"
        );
        // Still under the read gate: the module cannot be re-initialised meanwhile.
        let _ = entry.session.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let got: Vec<u128> = (0..5).map(|_| b.fail().as_millis()).collect();
        assert_eq!(got, [200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(200));
    }

    #[test]
    fn faults_are_classified_by_what_they_break() {
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::UserNotLoggedIn,
        ] {
            assert_eq!(classify(rv), Some(Fault::Session), "{rv:?}");
        }
        for rv in [
            RvError::DeviceError,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::GeneralError,
            RvError::CryptokiNotInitialized,
        ] {
            assert_eq!(classify(rv), Some(Fault::Device), "{rv:?}");
        }
        // Errors about the request, not the token.
        for rv in [
            RvError::KeyHandleInvalid,
            RvError::ObjectHandleInvalid,
            RvError::EncryptedDataInvalid,
            RvError::MechanismInvalid,
            RvError::SignatureInvalid,
        ] {
            assert_eq!(classify(rv), None, "{rv:?}");
        }
    }
}
