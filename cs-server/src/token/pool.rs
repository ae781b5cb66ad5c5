//! A fixed pool of logged-in read-write sessions.
//!
//! A cryptoki `Session` is `Send` but not `Sync`: one thread at a time. The pool hands each
//! session to exactly one caller (checkout) and takes it back when the guard drops (checkin);
//! callers wait on a condition variable when all sessions are out. The sessions stay open as
//! long as the pool lives, which keeps the token logged in (PKCS#11 logs the application out
//! when its last session closes) and keeps the session objects (token ephemerals) alive.

use std::ops::Deref;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use cryptoki::session::Session;

use crate::error::TokenError;

/// How long a caller waits for a free session before giving up. Every checkout is held only
/// for one or a few token calls, so reaching this means the token hangs (or a caller holds a
/// session while waiting for another, which this module never does).
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct SessionPool {
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
    size: usize,
}

impl SessionPool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        let size = sessions.len();
        Self {
            idle: Mutex::new(sessions),
            returned: Condvar::new(),
            size,
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// A poisoned lock only means a thread panicked while pushing or popping a session; the
    /// vector is still a valid set of idle sessions.
    fn lock(&self) -> MutexGuard<'_, Vec<Session>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a session, waiting until one is free.
    pub(crate) fn checkout(&self) -> Result<PooledSession<'_>, TokenError> {
        let mut idle = self.lock();
        loop {
            if let Some(session) = idle.pop() {
                return Ok(PooledSession {
                    pool: self,
                    session: Some(session),
                });
            }
            let (guard, timeout) = self
                .returned
                .wait_timeout(idle, CHECKOUT_TIMEOUT)
                .unwrap_or_else(|e| e.into_inner());
            idle = guard;
            if timeout.timed_out() && idle.is_empty() {
                return Err(TokenError::Other(format!(
                    "no token session became free in {} s ({} in the pool)",
                    CHECKOUT_TIMEOUT.as_secs(),
                    self.size
                )));
            }
        }
    }

    /// Sessions currently idle.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// A session checked out of the pool; it goes back when this guard drops.
pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;

    fn deref(&self) -> &Session {
        // Invariant: `session` is Some until `drop` takes it.
        self.session
            .as_ref()
            .expect("pooled session present until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.lock().push(session);
            self.pool.returned.notify_one();
        }
    }
}
