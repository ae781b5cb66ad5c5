//! The engine's session ticket store (the reference engine's `EngineTicketDB`).
//!
//! Tickets are kept per server (`host:port`), several per server, each used once (RFC 8446
//! §C.4: a client SHOULD NOT reuse a ticket), and dropped when their lifetime is over
//! (§4.6.1). When the handshake ran through the Crypto Service the PSK stays there
//! (`psk: None`); only tickets of a handshake the engine ran itself (LURK sequence D) carry
//! their PSK, zeroized on drop and never shown by `Debug`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lurk_proto::wire::{CipherSuite, HashAlg};
use zeroize::Zeroizing;

/// Default cap on the tickets kept per server (the oldest go first).
pub const DEFAULT_MAX_TICKETS_PER_SERVER: usize = 8;

/// One NewSessionTicket, as the engine keeps it.
#[derive(Clone)]
pub struct StoredTicket {
    /// The ticket (the PSK identity to offer).
    pub identity: Vec<u8>,
    /// ticket_age_add (§4.6.1).
    pub age_add: u32,
    /// ticket_lifetime in seconds.
    pub lifetime: u32,
    /// max_early_data_size, 0 if the ticket does not allow early data.
    pub max_early_data: u32,
    /// The cipher suite of the connection that got the ticket; the PSK's hash is its hash.
    pub suite: CipherSuite,
    /// When the ticket arrived.
    pub received_at: SystemTime,
    /// The resumption PSK when the engine knows it (sequence D); `None` when it is held by the
    /// Crypto Service.
    pub psk: Option<Zeroizing<Vec<u8>>>,
    /// The ALPN protocol of the connection, if any (early data must use the same, §4.2.10).
    pub alpn: Option<Vec<u8>>,
}

impl StoredTicket {
    /// The PSK's hash.
    pub fn hash(&self) -> HashAlg {
        self.suite.hash().unwrap_or(HashAlg::Sha256)
    }

    /// Whether the ticket's lifetime is over at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        let age = now.duration_since(self.received_at).unwrap_or_default();
        age >= Duration::from_secs(u64::from(self.lifetime))
    }

    /// obfuscated_ticket_age = ticket age in milliseconds + ticket_age_add, mod 2^32
    /// (§4.2.11.1).
    pub fn obfuscated_age(&self, now: SystemTime) -> u32 {
        let age = now.duration_since(self.received_at).unwrap_or_default();
        let ms = u32::try_from(age.as_millis()).unwrap_or(u32::MAX);
        ms.wrapping_add(self.age_add)
    }

    /// Whether the Crypto Service holds the PSK.
    pub fn cs_held(&self) -> bool {
        self.psk.is_none()
    }
}

impl fmt::Debug for StoredTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTicket")
            .field("identity_len", &self.identity.len())
            .field("lifetime", &self.lifetime)
            .field("max_early_data", &self.max_early_data)
            .field("suite", &self.suite)
            .field("cs_held", &self.cs_held())
            .finish_non_exhaustive()
    }
}

/// Where the engine keeps its tickets. `take` removes what it returns: a ticket is offered
/// once.
pub trait TicketStore: Send + Sync {
    /// Stores a ticket for `server` (`host:port`).
    fn insert(&self, server: &str, ticket: StoredTicket);
    /// Removes and returns the newest unexpired ticket for `server` that `accept` likes;
    /// expired tickets are dropped on the way.
    fn take(
        &self,
        server: &str,
        now: SystemTime,
        accept: &dyn Fn(&StoredTicket) -> bool,
    ) -> Option<StoredTicket>;
    /// How many tickets are stored for `server`.
    fn count(&self, server: &str) -> usize;
}

/// An in-memory [`TicketStore`].
#[derive(Debug)]
pub struct MemoryTicketStore {
    tickets: Mutex<HashMap<String, VecDeque<StoredTicket>>>,
    max_per_server: usize,
}

impl Default for MemoryTicketStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TICKETS_PER_SERVER)
    }
}

impl MemoryTicketStore {
    /// A store keeping at most `max_per_server` tickets per server.
    pub fn new(max_per_server: usize) -> Self {
        Self {
            tickets: Mutex::new(HashMap::new()),
            max_per_server: max_per_server.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<StoredTicket>>> {
        // A panic while holding the lock leaves a consistent map (every operation is one
        // push/remove), so a poisoned lock is still usable.
        self.tickets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TicketStore for MemoryTicketStore {
    fn insert(&self, server: &str, ticket: StoredTicket) {
        if ticket.lifetime == 0 {
            // §4.6.1: lifetime 0 means the ticket must not be used.
            return;
        }
        let mut map = self.lock();
        let list = map.entry(server.to_owned()).or_default();
        while list.len() >= self.max_per_server {
            list.pop_front();
        }
        list.push_back(ticket);
    }

    fn take(
        &self,
        server: &str,
        now: SystemTime,
        accept: &dyn Fn(&StoredTicket) -> bool,
    ) -> Option<StoredTicket> {
        let mut map = self.lock();
        let list = map.get_mut(server)?;
        list.retain(|t| !t.is_expired(now));
        let pos = list.iter().rposition(accept)?;
        list.remove(pos)
    }

    fn count(&self, server: &str) -> usize {
        self.lock().get(server).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(id: u8, lifetime: u32, at: SystemTime) -> StoredTicket {
        StoredTicket {
            identity: vec![id; 4],
            age_add: 0xffff_fff0,
            lifetime,
            max_early_data: 0,
            suite: CipherSuite::TlsAes128GcmSha256,
            received_at: at,
            psk: None,
            alpn: None,
        }
    }

    #[test]
    fn obfuscated_age_is_ms_plus_age_add_mod_2_32() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = ticket(1, 100, t0);
        assert_eq!(t.obfuscated_age(t0), 0xffff_fff0);
        // 20 ms later the sum wraps around 2^32.
        assert_eq!(t.obfuscated_age(t0 + Duration::from_millis(20)), 4);
        // A clock going backwards counts as age 0.
        assert_eq!(t.obfuscated_age(t0 - Duration::from_secs(1)), 0xffff_fff0);
    }

    #[test]
    fn each_ticket_is_used_once_newest_first() {
        let s = MemoryTicketStore::default();
        let now = SystemTime::now();
        s.insert("a:443", ticket(1, 100, now));
        s.insert("a:443", ticket(2, 100, now));
        s.insert("b:443", ticket(3, 100, now));
        assert_eq!(s.count("a:443"), 2);
        let all = |_: &StoredTicket| true;
        assert_eq!(s.take("a:443", now, &all).unwrap().identity, vec![2; 4]);
        assert_eq!(s.take("a:443", now, &all).unwrap().identity, vec![1; 4]);
        assert!(s.take("a:443", now, &all).is_none());
        assert_eq!(s.count("b:443"), 1);
        assert!(s.take("c:443", now, &all).is_none());
    }

    #[test]
    fn expired_tickets_are_dropped() {
        let s = MemoryTicketStore::default();
        let t0 = SystemTime::now();
        s.insert("a:1", ticket(1, 10, t0));
        s.insert("a:1", ticket(2, 100, t0));
        let later = t0 + Duration::from_secs(11);
        let all = |_: &StoredTicket| true;
        assert_eq!(s.take("a:1", later, &all).unwrap().identity, vec![2; 4]);
        assert_eq!(s.count("a:1"), 0);
        // Lifetime 0: never stored.
        s.insert("a:1", ticket(3, 0, t0));
        assert_eq!(s.count("a:1"), 0);
    }

    #[test]
    fn filter_and_cap() {
        let s = MemoryTicketStore::new(2);
        let now = SystemTime::now();
        for i in 1..=3 {
            s.insert("a:1", ticket(i, 100, now));
        }
        assert_eq!(s.count("a:1"), 2, "the oldest ticket was evicted");
        let only_two = |t: &StoredTicket| t.identity[0] == 2;
        assert_eq!(s.take("a:1", now, &only_two).unwrap().identity, vec![2; 4]);
        assert!(s.take("a:1", now, &only_two).is_none());
        assert_eq!(s.count("a:1"), 1);
    }

    #[test]
    fn debug_hides_the_psk() {
        let mut t = ticket(1, 100, SystemTime::now());
        t.psk = Some(Zeroizing::new(vec![0xab; 32]));
        let d = format!("{t:?}");
        assert!(!d.contains("171") && !d.contains("ab"), "{d}");
        assert!(d.contains("cs_held: false"));
    }
}
