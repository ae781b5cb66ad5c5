//! Fair queuing at a pool shared by engines: the token's sessions (token/pool.rs), the
//! PostgreSQL store's connections (store/postgres.rs). When every resource is out, one that
//! comes back goes to the waiting caller whose engine holds the fewest of them at that
//! moment (resources granted and not taken yet count as held; ties: the first to wait). A
//! waiting exchange of an engine that holds fewer than every other waiting engine gets the
//! next free one, whatever the backlog of the others.
//!
//! The engine is the one whose exchange the thread runs ([`Caller::enter`], service.rs);
//! the CS's own work (the ephemeral pool's refill, probes, closing sessions, the store's
//! purge) counts as one more caller.
//!
//! A resource goes to a waiter by a grant (under the pool's lock): a caller that finds no
//! free one left ungranted joins its caller's queue, and a granted waiter is woken on its
//! own condition variable. Each grant looks at the callers that wait, not at every waiter.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Condvar};

/// Whose exchange a checkout serves: an engine, or the CS itself (`None`).
pub(crate) type Who = Option<Arc<str>>;

thread_local! {
    static CALLER: RefCell<Who> = const { RefCell::new(None) };
}

/// Marks this thread as running an exchange of `engine` until the guard drops: its pool
/// checkouts are queued as that engine's. Dropped on the thread that made it (not `Send`).
pub struct Caller {
    prev: Who,
    _one_thread: PhantomData<*const ()>,
}

impl Caller {
    /// Marks this thread until the guard drops (the previous mark comes back then).
    pub fn enter(engine: &str) -> Self {
        let prev = CALLER.with(|c| c.replace(Some(Arc::from(engine))));
        Self {
            prev,
            _one_thread: PhantomData,
        }
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
    wake: Arc<Condvar>,
}

/// One caller's resources and waiters.
#[derive(Default)]
struct PerCaller {
    /// Resources it holds, and resources granted to its waiters not taken yet.
    held: usize,
    /// Its waiters not granted yet, by arrival.
    waiting: VecDeque<Waiter>,
}

/// The waiters and the resources each caller holds; lives in the pool's state (its lock).
#[derive(Default)]
pub(crate) struct FairQueue {
    /// Callers that hold a resource or wait; absent: neither.
    callers: HashMap<Who, PerCaller>,
    /// Waiters granted a resource, not taken yet.
    granted: HashMap<u64, Arc<Condvar>>,
    /// Waiters not granted yet.
    waiting: usize,
    next_id: u64,
}

impl FairQueue {
    /// Callers waiting (granted or not).
    pub(crate) fn len(&self) -> usize {
        self.waiting + self.granted.len()
    }

    /// Nobody holds a resource or waits.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.callers.is_empty() && self.granted.is_empty() && self.waiting == 0
    }

    /// Whether a caller may take one of `free` resources: a waiter (`ticket`) once granted,
    /// a newcomer when a free resource is not granted to a waiter already.
    pub(crate) fn may_take(&self, ticket: Option<u64>, free: usize) -> bool {
        match ticket {
            Some(id) => self.granted.contains_key(&id),
            None => free > self.granted.len(),
        }
    }

    /// `who` waits; its ticket and the condition variable it is woken on.
    pub(crate) fn join(&mut self, who: &Who) -> (u64, Arc<Condvar>) {
        let id = self.next_id;
        self.next_id += 1;
        (id, self.rejoin(id, who))
    }

    /// `who` waits again with its earlier ticket `id` (the resource it took was unusable): in
    /// its first place among its caller's waiters.
    pub(crate) fn rejoin(&mut self, id: u64, who: &Who) -> Arc<Condvar> {
        let wake = Arc::new(Condvar::new());
        let q = &mut self.callers.entry(who.clone()).or_default().waiting;
        let at = q.partition_point(|w| w.id < id);
        q.insert(
            at,
            Waiter {
                id,
                wake: wake.clone(),
            },
        );
        self.waiting += 1;
        wake
    }

    /// `who` takes a resource: with its grant (`ticket`), or as a newcomer. Then `free`
    /// resources are free.
    pub(crate) fn take(&mut self, ticket: Option<u64>, who: &Who, free: usize) {
        match ticket {
            // Counted as held since its grant.
            Some(id) => {
                self.granted.remove(&id);
            }
            None => self.callers.entry(who.clone()).or_default().held += 1,
        }
        self.grant(free);
    }

    /// Waiter `id` of `who` gives up (its wait timed out, or the pool failed). A grant it
    /// leaves unused goes to the next waiter: `free` resources are free after it left.
    pub(crate) fn leave(&mut self, id: u64, who: &Who, free: usize) {
        if self.granted.remove(&id).is_some() {
            self.gave_back(who);
        } else if let Some(c) = self.callers.get_mut(who) {
            if let Some(at) = c.waiting.iter().position(|w| w.id == id) {
                c.waiting.remove(at);
                self.waiting -= 1;
                self.forget_if_done(who);
            }
        }
        self.grant(free);
    }

    /// `who` gave a resource back (or lost it).
    pub(crate) fn gave_back(&mut self, who: &Who) {
        if let Some(c) = self.callers.get_mut(who) {
            c.held = c.held.saturating_sub(1);
            self.forget_if_done(who);
        }
    }

    fn forget_if_done(&mut self, who: &Who) {
        if self
            .callers
            .get(who)
            .is_some_and(|c| c.held == 0 && c.waiting.is_empty())
        {
            self.callers.remove(who);
        }
    }

    /// Grants the `free` resources not granted yet, each to the first waiter of the caller
    /// that holds the fewest resources (ties: the first to wait), and wakes it.
    pub(crate) fn grant(&mut self, free: usize) {
        while self.granted.len() < free {
            let next = self
                .callers
                .values_mut()
                .filter(|c| !c.waiting.is_empty())
                .min_by_key(|c| (c.held, c.waiting[0].id));
            let Some(w) = next.and_then(|c| {
                c.held += 1;
                c.waiting.pop_front()
            }) else {
                return;
            };
            self.waiting -= 1;
            w.wake.notify_one();
            self.granted.insert(w.id, w.wake);
        }
    }

    /// Wakes every waiter (the token went down, or came back: token/pool.rs): each checks again.
    pub(crate) fn wake_all(&self) {
        let waiting = self.callers.values().flat_map(|c| &c.waiting);
        waiting.for_each(|w| w.wake.notify_one());
        self.granted.values().for_each(|w| w.notify_one());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(e: &str) -> Who {
        Some(Arc::from(e))
    }

    fn granted(q: &FairQueue) -> Vec<u64> {
        let mut g: Vec<u64> = q.granted.keys().copied().collect();
        g.sort_unstable();
        g
    }

    #[test]
    fn a_freed_session_goes_to_the_engine_holding_the_fewest() {
        let mut q = FairQueue::default();
        // "flood" holds both sessions and waits with three more exchanges; then "quiet" waits.
        q.take(None, &who("flood"), 1);
        q.take(None, &who("flood"), 0);
        let flood: Vec<u64> = (0..3).map(|_| q.join(&who("flood")).0).collect();
        let (quiet, _) = q.join(&who("quiet"));
        assert!(!q.may_take(None, 0));
        assert_eq!(q.len(), 4);
        // One session comes back: "quiet" (none held) goes before the older waiters.
        q.gave_back(&who("flood"));
        q.grant(1);
        assert_eq!(granted(&q), [quiet]);
        assert!(q.may_take(Some(quiet), 1));
        assert!(!q.may_take(Some(flood[0]), 1));
        // A newcomer does not take a session granted to a waiter.
        assert!(!q.may_take(None, 1));
        q.take(Some(quiet), &who("quiet"), 0);
        // The next goes to the first "flood" waiter: both hold one session now, "flood"'s
        // waiter came first.
        q.gave_back(&who("flood"));
        q.grant(1);
        assert_eq!(granted(&q), [flood[0]]);
    }

    /// Sessions freed together are shared out: a grant not taken yet counts as held.
    #[test]
    fn sessions_freed_together_go_to_each_engine_in_turn() {
        let mut q = FairQueue::default();
        for _ in 0..4 {
            q.take(None, &who("c"), 1);
        }
        let a: Vec<u64> = (0..4).map(|_| q.join(&who("a")).0).collect();
        let (b, _) = q.join(&who("b"));
        for _ in 0..4 {
            q.gave_back(&who("c"));
        }
        q.grant(4);
        // "a" then "b" then "a" twice: "b" is not behind "a"'s backlog.
        assert_eq!(granted(&q), [a[0], a[1], a[2], b]);
    }

    #[test]
    fn the_cs_own_work_is_one_more_caller() {
        let mut q = FairQueue::default();
        q.take(None, &who("flood"), 1);
        q.take(None, &who("flood"), 0);
        let _flood = q.join(&who("flood"));
        let (cs, _) = q.join(&None);
        // The CS's own work (a key pair refill) holds none: it goes first.
        q.gave_back(&who("flood"));
        q.grant(1);
        assert_eq!(granted(&q), [cs]);
    }

    #[test]
    fn a_grant_left_unused_passes_on() {
        let mut q = FairQueue::default();
        let (a, _) = q.join(&who("a"));
        let (b, _) = q.join(&who("b"));
        q.grant(1);
        assert_eq!(granted(&q), [a]);
        // "a" gives up (its wait timed out, or the token went down): "b" gets the session.
        q.leave(a, &who("a"), 1);
        assert_eq!(granted(&q), [b]);
        // Never more grants than free sessions.
        q.grant(1);
        assert_eq!(granted(&q), [b]);
        q.take(Some(b), &who("b"), 0);
        q.gave_back(&who("b"));
        assert!(q.is_empty());
    }

    /// A waiter whose session proved unusable waits again in its first place.
    #[test]
    fn a_waiter_that_rejoins_keeps_its_place() {
        let mut q = FairQueue::default();
        q.take(None, &who("a"), 0);
        let (a1, _) = q.join(&who("a"));
        let (a2, _) = q.join(&who("a"));
        q.gave_back(&who("a"));
        q.grant(1);
        assert_eq!(granted(&q), [a1]);
        q.take(Some(a1), &who("a"), 0);
        // Its session failed its check: it waits again, before a2.
        q.rejoin(a1, &who("a"));
        q.gave_back(&who("a"));
        q.grant(1);
        assert_eq!(granted(&q), [a1]);
        q.leave(a1, &who("a"), 0);
        q.leave(a2, &who("a"), 0);
        assert!(q.is_empty());
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
