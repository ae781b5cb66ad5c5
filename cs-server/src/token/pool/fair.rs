//! Fair queuing at the session pool. When every session is out, a session that comes back
//! goes to the waiting caller whose engine holds the fewest pool sessions at that moment
//! (ties: the first to wait). One engine's backlog (its exchange slots, all waiting for the
//! token) then cannot keep another engine's exchange waiting for more than the sessions
//! that engine already holds: the next free session is its.
//!
//! The engine is the one whose exchange the thread runs ([`Caller::enter`], service.rs);
//! the CS's own work (the ephemeral pool's refill, probes, closing sessions) counts as one
//! more caller.
//!
//! A session goes to a waiter by a grant (under the pool's lock): a caller that finds no
//! free session left ungranted joins the queue, and a granted waiter is woken on its own
//! condition variable, the others stay asleep.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Condvar};

/// Whose exchange a checkout serves: an engine, or the CS itself (`None`).
pub(crate) type Who = Option<Arc<str>>;

thread_local! {
    static CALLER: RefCell<Who> = const { RefCell::new(None) };
}

/// Marks this thread as running an exchange of `engine` until the guard drops: its pool
/// checkouts are queued as that engine's.
pub struct Caller {
    prev: Who,
}

impl Caller {
    /// Marks this thread until the guard drops (the previous mark comes back then).
    pub fn enter(engine: &str) -> Self {
        let prev = CALLER.with(|c| c.replace(Some(Arc::from(engine))));
        Self { prev }
    }

    /// Whose exchange this thread runs now.
    pub(crate) fn current() -> Who {
        CALLER.with(|c| c.borrow().clone())
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CALLER.with(|c| *c.borrow_mut() = prev);
    }
}

struct Waiter {
    id: u64,
    who: Who,
    granted: bool,
    wake: Arc<Condvar>,
}

/// The waiters and the sessions each caller holds; lives in the pool's state (its lock).
#[derive(Default)]
pub(crate) struct FairQueue {
    /// In arrival order.
    waiters: Vec<Waiter>,
    /// Sessions each caller holds now; absent: none.
    held: HashMap<Who, usize>,
    next_id: u64,
}

impl FairQueue {
    /// Callers waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    fn granted(&self) -> usize {
        self.waiters.iter().filter(|w| w.granted).count()
    }

    /// Whether a caller may take one of `free` sessions: a waiter (`ticket`) once granted,
    /// a newcomer when a free session is not granted to a waiter already.
    pub(crate) fn may_take(&self, ticket: Option<u64>, free: usize) -> bool {
        match ticket {
            Some(id) => self.waiters.iter().any(|w| w.id == id && w.granted),
            None => free > self.granted(),
        }
    }

    /// `who` waits; its ticket and the condition variable it is woken on.
    pub(crate) fn join(&mut self, who: Who) -> (u64, Arc<Condvar>) {
        let id = self.next_id;
        self.next_id += 1;
        let wake = Arc::new(Condvar::new());
        self.waiters.push(Waiter {
            id,
            who,
            granted: false,
            wake: wake.clone(),
        });
        (id, wake)
    }

    /// Waiter `id` leaves the queue (it takes its session, or gives up). A grant it leaves
    /// unused goes to the next waiter: `free` sessions are free after it left.
    pub(crate) fn leave(&mut self, id: u64, free: usize) {
        if let Some(i) = self.waiters.iter().position(|w| w.id == id) {
            self.waiters.remove(i);
            self.grant(free);
        }
    }

    /// `who` took a session.
    pub(crate) fn took(&mut self, who: &Who) {
        *self.held.entry(who.clone()).or_default() += 1;
    }

    /// `who` gave a session back (or lost it).
    pub(crate) fn gave_back(&mut self, who: &Who) {
        if let Some(n) = self.held.get_mut(who) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(who);
            }
        }
    }

    /// Grants the `free` sessions not granted yet, each to the waiter whose caller holds the
    /// fewest sessions (ties: the first to wait), and wakes it.
    pub(crate) fn grant(&mut self, free: usize) {
        for _ in self.granted()..free {
            let next = self
                .waiters
                .iter_mut()
                .filter(|w| !w.granted)
                .min_by_key(|w| (self.held.get(&w.who).copied().unwrap_or(0), w.id));
            let Some(w) = next else { return };
            w.granted = true;
            w.wake.notify_one();
        }
    }

    /// Wakes every waiter (the token went down, or came back): each checks again.
    pub(crate) fn wake_all(&self) {
        for w in &self.waiters {
            w.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(e: &str) -> Who {
        Some(Arc::from(e))
    }

    fn granted(q: &FairQueue) -> Vec<u64> {
        q.waiters
            .iter()
            .filter(|w| w.granted)
            .map(|w| w.id)
            .collect()
    }

    #[test]
    fn a_freed_session_goes_to_the_engine_holding_the_fewest() {
        let mut q = FairQueue::default();
        // "flood" holds both sessions and waits with three more exchanges; then "quiet" waits.
        q.took(&who("flood"));
        q.took(&who("flood"));
        let flood: Vec<u64> = (0..3).map(|_| q.join(who("flood")).0).collect();
        let (quiet, _) = q.join(who("quiet"));
        assert!(!q.may_take(None, 0));
        // One session comes back: "quiet" (none held) goes before the older waiters.
        q.gave_back(&who("flood"));
        q.grant(1);
        assert_eq!(granted(&q), [quiet]);
        assert!(q.may_take(Some(quiet), 1));
        assert!(!q.may_take(Some(flood[0]), 1));
        // A newcomer does not take a session granted to a waiter.
        assert!(!q.may_take(None, 1));
        q.leave(quiet, 0);
        q.took(&who("quiet"));
        // The next goes to the first "flood" waiter: both hold one session now, "flood"'s
        // waiter came first.
        q.gave_back(&who("flood"));
        q.grant(1);
        assert_eq!(granted(&q), [flood[0]]);
    }

    #[test]
    fn the_cs_own_work_is_one_more_caller() {
        let mut q = FairQueue::default();
        q.took(&who("flood"));
        q.took(&who("flood"));
        let _flood = q.join(who("flood"));
        let (cs, _) = q.join(None);
        // The CS's own work (a key pair refill) holds none: it goes first.
        q.gave_back(&who("flood"));
        q.grant(1);
        assert_eq!(granted(&q), [cs]);
    }

    #[test]
    fn a_grant_left_unused_passes_on() {
        let mut q = FairQueue::default();
        let (a, _) = q.join(who("a"));
        let (b, _) = q.join(who("b"));
        q.grant(1);
        assert_eq!(granted(&q), [a]);
        // "a" gives up (its wait timed out, or the token went down): "b" gets the session.
        q.leave(a, 1);
        assert_eq!(granted(&q), [b]);
        // Never more grants than free sessions.
        q.grant(1);
        assert_eq!(granted(&q), [b]);
        assert!(q.held.is_empty());
    }

    #[test]
    fn the_caller_is_the_engine_of_the_exchange_until_the_guard_drops() {
        assert_eq!(Caller::current(), None);
        {
            let _e = Caller::enter("engine-a");
            assert_eq!(Caller::current(), who("engine-a"));
            {
                let _f = Caller::enter("engine-b");
                assert_eq!(Caller::current(), who("engine-b"));
            }
            assert_eq!(Caller::current(), who("engine-a"));
        }
        assert_eq!(Caller::current(), None);
    }
}
