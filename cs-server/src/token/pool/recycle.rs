//! The planned recycle of a module that keeps every destroyed session object until
//! C_Finalize (SoftHSM up to 2.6: `keeps_destroyed_objects`, token/mod.rs). After `[token]
//! recycle_after_objects` session objects made under one module generation (two per token
//! key pair, one per derive), the module is re-initialised exactly as after a device fault
//! (`SessionPool::reinitialize`), at a moment when no key pair in use is lost:
//!
//! 1. new token key generations stop: they wait, at most the drain time and
//!    [`REINIT_MARGIN`]; every other token call goes on (signatures, sealing, the derives of
//!    handshakes in flight). A `c_init_client_hello` waits on the async side, before it
//!    takes an exchange slot or a blocking thread ([`AsyncAdmission`], service.rs), so that
//!    the handshakes in flight always find a slot for the exchange that frees their key
//!    pair. A `c_client_hello` after a HelloRetryRequest waits on its blocking thread
//!    instead, once it has given up its first key pairs (which the drain would otherwise
//!    wait for); it holds one of its engine's exchange slots meanwhile;
//! 2. the recycle waits until no key pair made under this generation and handed out is
//!    alive (each is destroyed after its derive, or with its LURK session) and no generation
//!    is in progress, at most `[token] recycle_drain_ms`. Key pairs still alive then are
//!    given up: their handshake's next exchange is refused with `token_unavailable`, as
//!    after a fault. Key pairs ready in the ephemeral pool (token/eph_pool.rs) are not in
//!    use: they are discarded after the recycle;
//! 3. the module is re-initialised under the gate's write half (token calls in flight finish
//!    first; checkouts meanwhile wait for it instead of failing);
//! 4. key generation resumes.
//!
//! One recycle at a time, run by the thread whose key generation finds it due (it holds no
//! session and no key pair), or for a gRPC request on a blocking thread of its own; never while the token is down (its recovery re-initialises the
//! module anyway). The key pairs of one request are made under one admission
//! (`Token::admit_ephemerals`; `c_init_client_hello` with several empty shares), so that the
//! second never waits for a drain that waits for the first; after a HelloRetryRequest, the
//! first ClientHello's key pairs, of no use any more, are not waited for
//! (`PendingEphemeral::not_needed_by_recycle`).

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Health, SessionPool, State, HELD};
use crate::error::TokenError;
use crate::token::Token;

/// How long a key generation waits for a recycle beyond its drain: the re-initialisation
/// itself (waiting for the token calls in flight, C_Finalize, C_Initialize, a login).
const REINIT_MARGIN: Duration = Duration::from_secs(10);

/// When the planned recycle runs (`after_objects` 0: never).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecyclePolicy {
    /// Session objects made under one module generation before it is recycled.
    pub(crate) after_objects: u64,
    /// Longest wait for the key pairs in use.
    pub(crate) drain: Duration,
}

thread_local! {
    /// Admissions this thread holds: a nested one never waits (the key pairs the thread made
    /// under the first would keep the drain from finishing).
    static ADMITTED: Cell<usize> = const { Cell::new(0) };
}

/// The planned recycle's bookkeeping, in the pool's state.
#[derive(Default)]
pub(super) struct Counts {
    /// Session objects made under this module generation.
    objects: u64,
    /// Key pairs of this generation handed out and alive.
    in_use: u64,
    /// Key generations admitted and not finished.
    admitted: usize,
    /// A recycle is under way: admissions wait.
    draining: bool,
    recycles: u64,
    given_up: u64,
}

impl Counts {
    /// A module generation begins with no session object.
    pub(super) fn new_generation(&mut self) {
        self.objects = 0;
        self.in_use = 0;
    }
}

/// The planned recycle's figures (tests, metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecycleStats {
    /// Module re-initialisations so far, planned or after a fault.
    pub generation: u64,
    /// Session objects made since the module was (re)initialised.
    pub objects: u64,
    /// Token key pairs of this generation handed out and alive.
    pub in_use: u64,
    /// Planned recycles done.
    pub recycles: u64,
    /// Key pairs the planned recycles gave up (alive when their drain ended).
    pub given_up: u64,
    /// `[token] recycle_after_objects` in effect (0: never).
    pub after_objects: u64,
}

/// Token key generations admitted (`Token::admit_ephemerals`): a planned recycle waits for
/// them to end, and a thread that holds one generates more without waiting for a recycle.
/// Held by one thread (not `Send`).
pub struct EphemeralAdmission<'a> {
    pool: &'a SessionPool,
    _one_thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for EphemeralAdmission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EphemeralAdmission")
    }
}

impl Drop for EphemeralAdmission<'_> {
    fn drop(&mut self) {
        ADMITTED.set(ADMITTED.get().saturating_sub(1));
        self.pool.end_admission();
    }
}

impl SessionPool {
    /// Admits a token key generation: waits while a recycle is under way, and runs the
    /// recycle when it is due. Fails with [`TokenError::Unavailable`] when the recycle takes
    /// longer than its drain and [`REINIT_MARGIN`].
    pub(crate) fn admit(&self) -> Result<EphemeralAdmission<'_>, TokenError> {
        let mut st = self.lock();
        // A thread holding a session never waits for the recycle (which waits for it).
        if ADMITTED.get() == 0 && HELD.get() == 0 {
            let until = Instant::now() + self.recycle.drain + REINIT_MARGIN;
            loop {
                if st.eph.draining {
                    let now = Instant::now();
                    if now >= until {
                        return Err(TokenError::Unavailable(
                            "the PKCS#11 module is being recycled".into(),
                        ));
                    }
                    st = self
                        .recycle_cv
                        .wait_timeout(st, until - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                } else if self.recycle_due(&st) {
                    self.set_draining(&mut st, true);
                    drop(st);
                    self.recycle();
                    st = self.lock();
                } else {
                    break;
                }
            }
        }
        st.eph.admitted += 1;
        drop(st);
        ADMITTED.set(ADMITTED.get() + 1);
        Ok(EphemeralAdmission {
            pool: self,
            _one_thread: PhantomData,
        })
    }

    /// An admission ends: a drain waiting for it may finish.
    fn end_admission(&self) {
        let mut st = self.lock();
        st.eph.admitted = st.eph.admitted.saturating_sub(1);
        if st.eph.draining {
            self.recycle_cv.notify_all();
        }
    }

    /// Starts or ends a drain, for the waiters of both kinds.
    fn set_draining(&self, st: &mut State, on: bool) {
        st.eph.draining = on;
        self.drain_watch.send_replace(on);
    }

    fn recycle_due(&self, st: &State) -> bool {
        let n = self.recycle.after_objects;
        n > 0 && st.eph.objects >= n && !st.recovering && matches!(st.health, Health::Up { .. })
    }

    /// Drains, re-initialises the module, lets key generation resume (module doc). Called
    /// by the thread that set `draining`.
    fn recycle(&self) {
        let start = Instant::now();
        let deadline = start + self.recycle.drain;
        let mut st = self.lock();
        let (generation, objects) = (st.generation, st.eph.objects);
        while (st.eph.in_use > 0 || st.eph.admitted > 0) && st.generation == generation {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .recycle_cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let drained = start.elapsed();
        drop(st);
        self.planned.store(true, Ordering::Release);
        let gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        // No session is out now: the key pairs of this generation still alive are lost.
        let (given_up, current) = {
            let st = self.lock();
            (
                st.eph.in_use,
                st.generation == generation && self.recycle_due(&st),
            )
        };
        // A fault's recovery may have re-initialised the module meanwhile.
        let result = current.then(|| self.reinitialize(&gate));
        drop(gate);
        self.planned.store(false, Ordering::Release);
        let mut st = self.lock();
        self.set_draining(&mut st, false);
        match result {
            Some(Ok(())) => {
                st.eph.recycles += 1;
                st.eph.given_up += given_up;
                crate::telemetry::token_recycled(given_up);
                tracing::info!(
                    token = %self.cfg.label,
                    objects,
                    drain_ms = drained.as_millis() as u64,
                    given_up,
                    generation = st.generation,
                    "PKCS#11 module recycled: the session objects it kept are freed"
                );
            }
            Some(Err(e)) => {
                let reason = format!("recycling the module failed: {}", e.error);
                if e.pin_refused {
                    st.pin_refused = Some(super::pin_file_time(&self.cfg));
                }
                self.mark_down(&mut st, &reason);
            }
            None => {}
        }
        self.grant(&mut st);
        drop(st);
        self.recycle_cv.notify_all();
    }

    /// `n` session objects were made by a session of module generation `generation`.
    pub(crate) fn objects_made(&self, generation: u64, n: u64) {
        let mut st = self.lock();
        if st.generation == generation {
            st.eph.objects += n;
        }
    }

    /// A key pair of `generation` is handed out (`in_use`) or no longer (destroyed, dropped,
    /// or back in the ephemeral pool). Whether it counts (it belongs to this generation).
    pub(crate) fn count_in_use(&self, generation: u64, in_use: bool) -> bool {
        let mut st = self.lock();
        if st.generation != generation {
            return false;
        }
        if in_use {
            st.eph.in_use += 1;
        } else {
            st.eph.in_use = st.eph.in_use.saturating_sub(1);
            if st.eph.draining {
                self.recycle_cv.notify_all();
            }
        }
        true
    }

    /// The planned recycle's figures now. Reads memory only.
    pub(crate) fn recycle_stats(&self) -> RecycleStats {
        let st = self.lock();
        RecycleStats {
            generation: st.generation,
            objects: st.eph.objects,
            in_use: st.eph.in_use,
            recycles: st.eph.recycles,
            given_up: st.eph.given_up,
            after_objects: self.recycle.after_objects,
        }
    }
}

/// A token key-generation admission taken on the async side, before the request takes a
/// blocking thread and one of its engine's exchange slots (service.rs): while a recycle is
/// under way it waits there, holding neither, so that the exchanges of the handshakes in
/// flight (whose key pairs the drain waits for) still find slots. Moved to the request's
/// blocking thread and [entered](Self::enter) there, it admits that thread's key
/// generations without waiting.
pub struct AsyncAdmission {
    token: Token,
}

impl std::fmt::Debug for AsyncAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncAdmission")
    }
}

impl AsyncAdmission {
    /// Waits while a recycle is under way (starting it, on a blocking thread, when it is
    /// due), at most the drain time and [`REINIT_MARGIN`]; then `Unavailable`.
    pub(crate) async fn take(token: &Token) -> Result<Self, TokenError> {
        let pool = &token.inner.pool;
        let until = tokio::time::Instant::now() + pool.recycle.drain + REINIT_MARGIN;
        loop {
            let recycler = {
                let mut st = pool.lock();
                if st.eph.draining {
                    false
                } else if pool.recycle_due(&st) {
                    pool.set_draining(&mut st, true);
                    true
                } else {
                    st.eph.admitted += 1;
                    return Ok(Self {
                        token: token.clone(),
                    });
                }
            };
            if recycler {
                // The recycle waits for admissions and key pairs in use: not on a worker.
                let t = token.clone();
                tokio::task::spawn_blocking(move || t.inner.pool.recycle());
            }
            let mut rx = pool.drain_watch.subscribe();
            if tokio::time::timeout_at(until, rx.wait_for(|draining| !*draining))
                .await
                .is_err()
            {
                return Err(TokenError::Unavailable(
                    "the PKCS#11 module is being recycled".into(),
                ));
            }
        }
    }

    /// Admits this thread's key generations, without waiting, until the guard drops.
    pub fn enter(&self) -> EnteredAdmission<'_> {
        ADMITTED.set(ADMITTED.get() + 1);
        EnteredAdmission {
            _admission: PhantomData,
        }
    }
}

impl Drop for AsyncAdmission {
    fn drop(&mut self) {
        self.token.inner.pool.end_admission();
    }
}

/// [`AsyncAdmission::enter`]: held by one thread (not `Send`).
pub struct EnteredAdmission<'a> {
    _admission: PhantomData<(&'a AsyncAdmission, *const ())>,
}

impl std::fmt::Debug for EnteredAdmission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnteredAdmission")
    }
}

impl Drop for EnteredAdmission<'_> {
    fn drop(&mut self) {
        ADMITTED.set(ADMITTED.get().saturating_sub(1));
    }
}
