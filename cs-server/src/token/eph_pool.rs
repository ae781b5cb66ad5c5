//! Token (EC)DHE key pairs made ahead of use (`[ephemeral] token_pool`), so that a handshake
//! pays only the derive: key generation is the slower half of a token ephemeral (SoftHSM's
//! x25519 keygen ≈ its derive+destroy).
//!
//! - Bounded: at most `per_group` ready key pairs for each group an exchange has asked for
//!   (at most the three supported groups), each two session objects in the token.
//! - Refilled in the background by one thread of the pool's own, one key pair at a time
//!   (one pooled token session for one call), after each take; a token that fails to
//!   generate is retried after a pause.
//! - A key pair is handed out once (`take` moves it out of the pool) and is then the
//!   exchange's, destroyed after its derive or when its LURK session ends, as before.
//! - Destroyed on expiry (older than `max_age`), and when the pool is closed or dropped (CS
//!   shutdown). After any token fault (token/pool.rs: a session fault, or a module
//!   re-initialisation after a device fault, each counted in the pool's epoch) no key pair
//!   made before it is handed out: they are dropped, and their objects destroyed only if the
//!   session that made them is still open (the objects of a closed session died with it, and
//!   their handles may name other objects now).
//! - Ready key pairs are not "in use" for a planned module recycle (token/pool/recycle.rs):
//!   it does not wait for them; they are discarded after it, like after a fault. A take
//!   waits while a recycle is under way.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lurk_proto::wire::NamedGroup;

use super::{Token, TokenEphemeral};
use crate::error::TokenError;

/// Pause after a failed generation before the next attempt (the token may be down).
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Longest sleep of the refill thread between expiry checks.
const SWEEP_MAX: Duration = Duration::from_secs(5);

struct Ready {
    made: Instant,
    eph: TokenEphemeral,
}

#[derive(Default)]
struct State {
    /// Ready key pairs of each group asked for, oldest first.
    groups: Vec<(NamedGroup, VecDeque<Ready>)>,
    closed: bool,
}

struct Shared {
    token: Token,
    per_group: usize,
    max_age: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bounded pool of token key pairs generated ahead of use; closed (every key pair
/// destroyed, the refill thread stopped) when dropped.
pub struct EphemeralPool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for EphemeralPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralPool")
            .field("per_group", &self.shared.per_group)
            .field("max_age", &self.shared.max_age)
            .finish_non_exhaustive()
    }
}

impl EphemeralPool {
    /// Starts the refill thread. No key pair is made before a group is first asked for.
    pub fn start(token: Token, per_group: usize, max_age: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            token,
            per_group: per_group.max(1),
            max_age,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lurk-eph-pool".into())
            .spawn(move || refill(&worker))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A key pair for `group`, ready-made when the pool has a live one, else generated now.
    /// Blocking (may call the token).
    pub fn take(&self, group: NamedGroup) -> Result<TokenEphemeral, TokenError> {
        let _admitted = self.shared.token.admit_ephemerals()?;
        let mut stale = Vec::new();
        let found = {
            let mut st = self.shared.lock();
            let now = Instant::now();
            let q = match st.groups.iter().position(|(g, _)| *g == group) {
                Some(i) => &mut st.groups[i].1,
                None => {
                    st.groups.push((group, VecDeque::new()));
                    &mut st.groups.last_mut().expect("just pushed").1
                }
            };
            let mut found = None;
            while let Some(r) = q.pop_front() {
                if now.duration_since(r.made) < self.shared.max_age
                    && self.shared.token.ephemeral_is_live(&r.eph)
                    && self.shared.token.ephemeral_is_unfaulted(&r.eph)
                    && r.eph.set_in_use(true)
                {
                    found = Some(r.eph);
                    break;
                }
                stale.push(r);
            }
            found
        };
        self.shared.wake.notify_all();
        // Destroyed (when still live) outside the lock.
        drop(stale);
        match found {
            Some(eph) => Ok(eph),
            None => self.shared.token.generate_ephemeral(group),
        }
    }

    /// Ready key pairs of `group` now.
    pub fn ready(&self, group: NamedGroup) -> usize {
        self.shared
            .lock()
            .groups
            .iter()
            .find(|(g, _)| *g == group)
            .map_or(0, |(_, q)| q.len())
    }

    /// Stops the refill thread and destroys every ready key pair. Blocking.
    pub fn close(&self) {
        let drained: Vec<Ready> = {
            let mut st = self.shared.lock();
            st.closed = true;
            st.groups
                .iter_mut()
                .flat_map(|(_, q)| q.drain(..))
                .collect()
        };
        self.shared.wake.notify_all();
        drop(drained);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for EphemeralPool {
    fn drop(&mut self) {
        self.close();
    }
}

/// The refill thread: tops up each asked-for group to `per_group`, one key pair per token
/// call, and destroys expired or dead ones.
fn refill(shared: &Shared) {
    let mut epoch = shared.token.handle_epoch();
    loop {
        let (expired, need) = {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            let now = Instant::now();
            let mut expired = Vec::new();
            // After a fault or a recycle, the key pairs of before are dead: replace them now.
            if shared.token.handle_epoch() != epoch {
                epoch = shared.token.handle_epoch();
                for (_, q) in &mut st.groups {
                    let (dead, kept): (Vec<Ready>, Vec<Ready>) = q
                        .drain(..)
                        .partition(|r| !shared.token.ephemeral_is_unfaulted(&r.eph));
                    expired.extend(dead);
                    q.extend(kept);
                }
            }
            for (_, q) in &mut st.groups {
                while q
                    .front()
                    .is_some_and(|r| now.duration_since(r.made) >= shared.max_age)
                {
                    expired.extend(q.pop_front());
                }
            }
            let need = st
                .groups
                .iter()
                .find(|(_, q)| q.len() < shared.per_group)
                .map(|(g, _)| *g);
            (expired, need)
        };
        drop(expired);
        let Some(group) = need else {
            // Full: sleep until a take (or the oldest key pair's expiry, or a sweep).
            let st = shared.lock();
            if st.closed {
                return;
            }
            let next_expiry = st
                .groups
                .iter()
                .filter_map(|(_, q)| q.front())
                .map(|r| (r.made + shared.max_age).saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(SWEEP_MAX)
                .min(SWEEP_MAX);
            let _ = shared
                .wake
                .wait_timeout(st, next_expiry)
                .unwrap_or_else(|e| e.into_inner());
            continue;
        };
        match shared.token.generate_ephemeral(group) {
            Ok(eph) => {
                // Ready, not in use: a recycle does not wait for it.
                eph.set_in_use(false);
                let mut st = shared.lock();
                if st.closed {
                    drop(st);
                    drop(eph);
                    return;
                }
                if let Some((_, q)) = st.groups.iter_mut().find(|(g, _)| *g == group) {
                    q.push_back(Ready {
                        made: Instant::now(),
                        eph,
                    });
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, group = group.name(), "token ephemeral pool: generation failed");
                let st = shared.lock();
                if st.closed {
                    return;
                }
                let _ = shared
                    .wake
                    .wait_timeout(st, RETRY_PAUSE)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;
    use ring::agreement;
    use ring::rand::SystemRandom;

    impl EphemeralPool {
        /// Public keys of the ready key pairs of `group`.
        fn ready_publics(&self, group: NamedGroup) -> Vec<Vec<u8>> {
            self.shared
                .lock()
                .groups
                .iter()
                .filter(|(g, _)| *g == group)
                .flat_map(|(_, q)| q.iter().map(|r| r.eph.public_key().to_vec()))
                .collect()
        }
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The shared secret with a fresh ring x25519 key equals ring's.
    fn derives_correctly(token: &Token, eph: TokenEphemeral) {
        let rng = SystemRandom::new();
        let peer = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
        let peer_pub = peer.compute_public_key().unwrap();
        let ours = agreement::UnparsedPublicKey::new(&agreement::X25519, eph.public_key().to_vec());
        let expected = agreement::agree_ephemeral(peer, &ours, |s| s.to_vec()).unwrap();
        let got = token.derive_ephemeral(eph, peer_pub.as_ref()).unwrap();
        assert_eq!(&got[..], &expected[..]);
    }

    #[test]
    fn the_pool_refills_and_hands_each_key_pair_out_once() {
        let (token, _) = testutil::new_token("eph-pool-refill");
        let pool = EphemeralPool::start(token.clone(), 3, Duration::from_secs(300)).unwrap();
        assert_eq!(
            token.count_session_objects(),
            0,
            "nothing before a group is asked for"
        );
        // The first ask is made on the spot; the pool then fills up to 3 in the background.
        let first = pool.take(NamedGroup::X25519).unwrap();
        wait_until("3 ready", || pool.ready(NamedGroup::X25519) == 3);
        // 3 ready pairs and the one taken: two objects each, and nothing more.
        assert_eq!(token.count_session_objects(), 8);
        assert_eq!(pool.ready(NamedGroup::Secp256r1), 0);
        let ready = pool.ready_publics(NamedGroup::X25519);
        let mut seen = vec![first.public_key().to_vec()];
        derives_correctly(&token, first);
        for _ in 0..6 {
            let eph = pool.take(NamedGroup::X25519).unwrap();
            assert!(
                !seen.contains(&eph.public_key().to_vec()),
                "a key pair handed out twice"
            );
            seen.push(eph.public_key().to_vec());
            derives_correctly(&token, eph);
        }
        // The first three came ready-made, in order.
        assert_eq!(&seen[1..4], &ready[..]);
        wait_until("refilled", || pool.ready(NamedGroup::X25519) == 3);
        assert_eq!(token.count_session_objects(), 6);
        // Closing destroys them: nothing is left in the token.
        pool.close();
        assert_eq!(token.count_session_objects(), 0);
    }

    #[test]
    fn expired_key_pairs_are_destroyed_and_replaced() {
        let (token, _) = testutil::new_token("eph-pool-expiry");
        let pool = EphemeralPool::start(token.clone(), 2, Duration::from_millis(400)).unwrap();
        drop(pool.take(NamedGroup::Secp256r1).unwrap());
        wait_until("2 ready", || pool.ready(NamedGroup::Secp256r1) == 2);
        let old = pool.ready_publics(NamedGroup::Secp256r1);
        wait_until("replaced", || {
            let now = pool.ready_publics(NamedGroup::Secp256r1);
            now.len() == 2 && now.iter().all(|p| !old.contains(p))
        });
        // The expired ones are gone from the token, not only from the pool.
        wait_until("4 objects", || token.count_session_objects() == 4);
        drop(pool);
        assert_eq!(token.count_session_objects(), 0);
    }

    /// For the planned module recycle (token/pool/recycle.rs): every session object made is
    /// counted (two per key pair, one per derive), and a key pair is in use from its take
    /// until it is destroyed; ready ones are not (a recycle does not wait for them).
    #[test]
    fn only_key_pairs_handed_out_are_in_use_and_every_object_counts() {
        let (token, _) = testutil::new_token("eph-pool-in-use");
        let s0 = token.recycle_stats();
        assert_eq!((s0.objects, s0.in_use), (0, 0));
        let pool = EphemeralPool::start(token.clone(), 3, Duration::from_secs(300)).unwrap();
        let first = pool.take(NamedGroup::X25519).unwrap();
        wait_until("3 ready", || pool.ready(NamedGroup::X25519) == 3);
        let s = token.recycle_stats();
        assert_eq!((s.objects, s.in_use), (8, 1), "{s:?}");
        derives_correctly(&token, first);
        let s = token.recycle_stats();
        assert_eq!((s.objects, s.in_use), (9, 0), "{s:?}");
        let ready = pool.take(NamedGroup::X25519).unwrap();
        let made = token.generate_ephemeral(NamedGroup::Secp256r1).unwrap();
        assert_eq!(token.recycle_stats().in_use, 2);
        drop(ready);
        made.destroy().unwrap();
        assert_eq!(token.recycle_stats().in_use, 0);
        pool.close();
        wait_until("nothing in use", || token.recycle_stats().in_use == 0);
        assert_eq!(token.recycle_stats().generation, 0);
    }

    /// The token logged out behind the pool's back (a token reset): every ready key pair died
    /// with its session. None of them is handed out (each would fail its derive); the pool
    /// refills from the fresh sessions.
    #[test]
    fn after_a_token_fault_dead_key_pairs_are_never_handed_out() {
        let (token, _) = testutil::new_token("eph-pool-fault");
        let pool = EphemeralPool::start(token.clone(), 4, Duration::from_secs(300)).unwrap();
        derives_correctly(&token, pool.take(NamedGroup::X25519).unwrap());
        wait_until("4 ready", || pool.ready(NamedGroup::X25519) == 4);
        let dead = pool.ready_publics(NamedGroup::X25519);
        token.ensure_sealing_key().unwrap();
        token.session().unwrap().logout().unwrap();
        // The next call that needs the login meets the fault (as in token/mod.rs's relogin
        // test); the pool then replaces the broken sessions.
        let _ = token.seal(b"aad", b"x");
        wait_until("the token answers again", || token.probe().is_ok());
        for _ in 0..6 {
            let eph = pool.take(NamedGroup::X25519).unwrap();
            assert!(
                !dead.contains(&eph.public_key().to_vec()),
                "a dead key pair handed out"
            );
            derives_correctly(&token, eph);
        }
        pool.close();
        assert_eq!(token.count_session_objects(), 0);
    }
}
