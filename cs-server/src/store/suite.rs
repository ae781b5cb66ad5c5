//! The store test suite, run against every backend ([`Harness`]): SQLite in a temp file
//! (`sqlite.rs` tests), PostgreSQL in a private cluster (`postgres.rs` tests). Each case
//! takes a fresh, empty store.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lurk_proto::wire::HashAlg;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::*;
use crate::config::StoreConfig;
use crate::error::{StoreError, TokenError};

/// Software AES-256-GCM with a random key: a test double for the store tests only. The
/// real sealer (the PKCS#11 token's AES key) is tested with the token.
pub(crate) struct TestSealer {
    key: LessSafeKey,
    rng: SystemRandom,
    /// Number of upcoming `unseal` calls that fail as if the token were unavailable.
    pub fail_unseal: AtomicUsize,
    /// When set, the next `unseal` waits in it (a token that is slow to answer).
    pub unseal_gate: Mutex<Option<Arc<Gate>>>,
}

/// Holds an `unseal` until opened: `entered` says it is waiting.
#[derive(Default)]
pub(crate) struct Gate {
    entered: Mutex<bool>,
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn pass(&self) {
        *self.entered.lock().unwrap() = true;
        self.cv.notify_all();
        let open = self.open.lock().unwrap();
        let _open = self.cv.wait_while(open, |o| !*o).unwrap();
    }

    fn wait_entered(&self) {
        let entered = self.entered.lock().unwrap();
        let _entered = self.cv.wait_while(entered, |e| !*e).unwrap();
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl TestSealer {
    pub(crate) fn new() -> Arc<Self> {
        let rng = SystemRandom::new();
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill(&mut key[..]).unwrap();
        Arc::new(Self {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key[..]).unwrap()),
            rng,
            fail_unseal: AtomicUsize::new(0),
            unseal_gate: Mutex::new(None),
        })
    }
}

impl Sealer for TestSealer {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, TokenError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| TokenError::Other("rng".into()))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| TokenError::Other("seal".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let gate = self.unseal_gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.pass();
        }
        if self
            .fail_unseal
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(TokenError::pkcs11("C_Decrypt", "CKR_DEVICE_REMOVED"));
        }
        if sealed.len() < NONCE_LEN {
            return Err(TokenError::Unseal);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| TokenError::Unseal)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| TokenError::Unseal)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Limits of a test store (the backend fills in where the store is).
pub(crate) fn cfg(max: u32, lifetime: u64) -> StoreConfig {
    StoreConfig {
        backend: Default::default(),
        path: Default::default(),
        postgres: None,
        ticket_lifetime_secs: lifetime,
        max_tickets_per_engine: max,
        max_tombstones: 1_000_000,
    }
}

/// The test clock (starts at the system time: `open` purges with the system clock).
#[derive(Clone)]
pub(crate) struct TestClock(Arc<AtomicU64>);

impl TestClock {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicU64::new(unix_secs(SystemTime::now()))))
    }
    pub(crate) fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    pub(crate) fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
    pub(crate) fn func(&self) -> impl Fn() -> SystemTime + Send + Sync + 'static {
        let c = self.clone();
        move || c.now()
    }
}

/// One backend under test: a fresh, empty store per case, and raw access to its rows (the
/// tables and columns are the same in both backends).
pub(crate) trait Harness {
    /// Opens (another handle on) the store with these limits, `sealer` and the clock.
    fn open_sealed(
        &self,
        cfg: &StoreConfig,
        sealer: Arc<dyn Sealer>,
    ) -> Result<Box<dyn TicketStore>, StoreError>;
    fn sealer(&self) -> &Arc<TestSealer>;
    fn clock(&self) -> &TestClock;
    /// Runs raw SQL; returns the rows changed.
    fn exec(&self, sql: &str) -> u64;
    /// `SELECT count(*) …`.
    fn count(&self, sql: &str) -> i64;
    /// The one ticket row's sealed blob.
    fn sealed_blob(&self) -> Vec<u8>;
    fn set_sealed_blob(&self, blob: &[u8]);
    /// A SQL literal for bytes.
    fn bytes_literal(&self, b: &[u8]) -> String;
    /// The SQL function that makes a character from its code (`char` / `chr`).
    fn chr(&self) -> &'static str;

    fn open_with(&self, cfg: &StoreConfig) -> Result<Box<dyn TicketStore>, StoreError> {
        self.open_sealed(cfg, self.sealer().clone())
    }
    fn open(&self) -> Box<dyn TicketStore> {
        self.open_with(&cfg(64, MAX_TICKET_LIFETIME_SECS)).unwrap()
    }
    fn advance(&self, secs: u64) {
        self.clock().advance(secs)
    }
}

pub(crate) fn random_psk(len: usize) -> Zeroizing<Vec<u8>> {
    let mut psk = Zeroizing::new(vec![0u8; len]);
    SystemRandom::new().fill(&mut psk).unwrap();
    psk
}

pub(crate) fn ticket(identity: &[u8], psk: &[u8]) -> NewTicket {
    NewTicket {
        identity: identity.to_vec(),
        psk: Zeroizing::new(psk.to_vec()),
        hash: HashAlg::Sha256,
        cipher_suite: 0x1301,
        lifetime_secs: 3600,
        max_early_data: 16384,
        server_name: Some("server.example".into()),
    }
}

/// Every case of the suite, by name.
type Case = (&'static str, fn(&dyn Harness));

pub(crate) const CASES: &[Case] = &[
    ("round_trip", round_trip),
    ("take_deletes_the_ticket", take_deletes_the_ticket),
    ("a_ticket_survives_reopening", a_ticket_survives_reopening),
    (
        "another_engine_cannot_take_a_ticket",
        another_engine_cannot_take_a_ticket,
    ),
    ("a_moved_row_does_not_unseal", a_moved_row_does_not_unseal),
    ("expiry", expiry),
    ("purge_expired", purge_expired),
    ("the_cap", the_cap),
    ("expired_tickets_do_not_count", expired_tickets_do_not_count),
    ("a_tampered_blob", a_tampered_blob),
    (
        "a_token_failure_keeps_the_ticket",
        a_token_failure_keeps_the_ticket,
    ),
    ("invalid_tickets", invalid_tickets),
    ("concurrent_puts", concurrent_puts),
    ("taken_once_under_concurrency", taken_once_under_concurrency),
    (
        "a_take_holds_no_store_lock_while_the_token_unseals",
        a_take_holds_no_store_lock_while_the_token_unseals,
    ),
    (
        "two_takes_past_the_unseal_get_the_ticket_once",
        two_takes_past_the_unseal_get_the_ticket_once,
    ),
    ("put_tickets_is_all_or_none", put_tickets_is_all_or_none),
    ("the_cap_holds_across_handles", the_cap_holds_across_handles),
    (
        "the_cap_holds_while_takes_free_places",
        the_cap_holds_while_takes_free_places,
    ),
    (
        "a_take_racing_a_re_registration",
        a_take_racing_a_re_registration,
    ),
    (
        "an_expired_identity_can_be_registered_again",
        an_expired_identity_can_be_registered_again,
    ),
    (
        "a_consumed_ticket_stays_consumed",
        a_consumed_ticket_stays_consumed,
    ),
    (
        "re_registration_never_extends",
        re_registration_never_extends,
    ),
    (
        "another_sealing_key_is_refused",
        another_sealing_key_is_refused,
    ),
    ("external_psks", external_psks),
    ("peek_changes_nothing", peek_changes_nothing),
    ("tombstones_are_bounded", tombstones_are_bounded),
];

/// Runs every case, each on a fresh harness.
pub(crate) fn run_all<'a>(make: &dyn Fn() -> Box<dyn Harness + 'a>) {
    for (name, case) in CASES {
        eprintln!("store suite: {name}");
        let h = make();
        case(&*h);
    }
}

fn round_trip(h: &dyn Harness) {
    let s = h.open();
    let psk = random_psk(32);
    s.put_ticket("engine-a", ticket(b"ticket-1", &psk)).unwrap();
    assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
    let t = s.take_ticket("engine-a", b"ticket-1").unwrap().unwrap();
    assert_eq!(&t.psk[..], &psk[..]);
    assert_eq!(t.hash, HashAlg::Sha256);
    assert_eq!(t.cipher_suite, 0x1301);
    assert_eq!(t.max_early_data, 16384);
    assert_eq!(t.server_name.as_deref(), Some("server.example"));
    assert_eq!(
        t.expires_at.duration_since(t.issued_at).unwrap().as_secs(),
        3600
    );
    assert_eq!(s.count_tickets("engine-a").unwrap(), 0);
    assert!(!format!("{t:?}").contains(&format!("{:?}", &psk[..4])));
    s.ping().unwrap();
}

fn take_deletes_the_ticket(h: &dyn Harness) {
    let s = h.open();
    s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
        .unwrap();
    assert!(s.take_ticket("engine-a", b"t").unwrap().is_some());
    assert!(s.take_ticket("engine-a", b"t").unwrap().is_none());
    assert_eq!(h.count("SELECT count(*) FROM tickets"), 0);
}

fn a_ticket_survives_reopening(h: &dyn Harness) {
    let psk = random_psk(32);
    {
        let s = h.open();
        s.put_ticket("engine-a", ticket(b"persist", &psk)).unwrap();
    }
    let s = h.open();
    assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
    let t = s.take_ticket("engine-a", b"persist").unwrap().unwrap();
    assert_eq!(&t.psk[..], &psk[..]);
}

fn another_engine_cannot_take_a_ticket(h: &dyn Harness) {
    let s = h.open();
    let psk_a = random_psk(32);
    s.put_ticket("engine-a", ticket(b"shared-id", &psk_a))
        .unwrap();
    assert!(s.take_ticket("engine-b", b"shared-id").unwrap().is_none());
    assert_eq!(s.count_tickets("engine-b").unwrap(), 0);
    // B registering the same identity does not touch A's ticket.
    let psk_b = random_psk(32);
    s.put_ticket("engine-b", ticket(b"shared-id", &psk_b))
        .unwrap();
    let a = s.take_ticket("engine-a", b"shared-id").unwrap().unwrap();
    assert_eq!(&a.psk[..], &psk_a[..]);
    let b = s.take_ticket("engine-b", b"shared-id").unwrap().unwrap();
    assert_eq!(&b.psk[..], &psk_b[..]);
}

fn a_moved_row_does_not_unseal(h: &dyn Harness) {
    let s = h.open();
    s.put_ticket("engine-a", ticket(b"id-1", &random_psk(32)))
        .unwrap();
    h.exec("UPDATE tickets SET engine = 'engine-b'");
    assert!(matches!(
        s.take_ticket("engine-b", b"id-1"),
        Err(StoreError::Seal(TokenError::Unseal))
    ));

    s.put_ticket("engine-a", ticket(b"id-2", &random_psk(32)))
        .unwrap();
    let other = h.bytes_literal(&identity_hash(b"id-3"));
    h.exec(&format!("UPDATE tickets SET id_hash = {other}"));
    assert!(matches!(
        s.take_ticket("engine-a", b"id-3"),
        Err(StoreError::Seal(TokenError::Unseal))
    ));

    // Extending the lifetime in the database is detected too.
    s.put_ticket("engine-a", ticket(b"id-4", &random_psk(32)))
        .unwrap();
    h.exec("UPDATE tickets SET expires_at = expires_at + 100000");
    assert!(matches!(
        s.take_ticket("engine-a", b"id-4"),
        Err(StoreError::Seal(TokenError::Unseal))
    ));
}

fn expiry(h: &dyn Harness) {
    let s = h.open_with(&cfg(64, 100)).unwrap();
    let mut t = ticket(b"short", &random_psk(32));
    t.lifetime_secs = 1000; // the configured cap (100) wins
    s.put_ticket("engine-a", t).unwrap();
    let mut t = ticket(b"shorter", &random_psk(32));
    t.lifetime_secs = 10; // the server's lifetime wins
    s.put_ticket("engine-a", t).unwrap();

    h.advance(10);
    assert!(s.take_ticket("engine-a", b"shorter").unwrap().is_none());
    assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
    h.advance(89);
    assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
    h.advance(1);
    assert_eq!(s.count_tickets("engine-a").unwrap(), 0);
    assert!(s.take_ticket("engine-a", b"short").unwrap().is_none());
    assert_eq!(h.count("SELECT count(*) FROM tickets"), 0);

    // Lifetime 0: not cached at all.
    let mut t = ticket(b"zero", &random_psk(32));
    t.lifetime_secs = 0;
    s.put_ticket("engine-a", t).unwrap();
    assert!(s.take_ticket("engine-a", b"zero").unwrap().is_none());
}

fn purge_expired(h: &dyn Harness) {
    let s = h.open();
    for (id, life) in [(&b"a"[..], 10), (b"b", 20), (b"c", 30)] {
        let mut t = ticket(id, &random_psk(32));
        t.lifetime_secs = life;
        s.put_ticket("engine-a", t).unwrap();
    }
    // A tombstone expiring with its ticket goes too.
    assert!(s.take_ticket("engine-a", b"a").unwrap().is_some());
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 1);
    let now = h.clock().now() + Duration::from_secs(20);
    assert_eq!(s.purge_expired(now).unwrap(), 1);
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 0);
    h.advance(20);
    assert!(s.take_ticket("engine-a", b"c").unwrap().is_some());
}

fn the_cap(h: &dyn Harness) {
    let s = h.open_with(&cfg(3, 3600)).unwrap();
    let psks: Vec<_> = (0..3).map(|_| random_psk(32)).collect();
    for (i, psk) in psks.iter().enumerate() {
        s.put_ticket("engine-a", ticket(&[i as u8 + 1], psk))
            .unwrap();
    }
    let err = s.put_ticket("engine-a", ticket(b"fourth", &random_psk(32)));
    assert!(
        matches!(err, Err(StoreError::TooManyTickets { cap: 3, .. })),
        "{err:?}"
    );
    // Another engine has its own cap.
    s.put_ticket("engine-b", ticket(b"fourth", &random_psk(32)))
        .unwrap();
    // Re-registering a stored identity is not a new ticket (and changes nothing).
    s.put_ticket("engine-a", ticket(&[1], &random_psk(32)))
        .unwrap();
    assert_eq!(s.count_tickets("engine-a").unwrap(), 3);
    for (i, psk) in psks.iter().enumerate() {
        let t = s.take_ticket("engine-a", &[i as u8 + 1]).unwrap().unwrap();
        assert_eq!(&t.psk[..], &psk[..]);
    }
    // Taken tickets free their places.
    s.put_ticket("engine-a", ticket(b"fifth", &random_psk(32)))
        .unwrap();
}

fn expired_tickets_do_not_count(h: &dyn Harness) {
    let s = h.open_with(&cfg(2, 3600)).unwrap();
    s.put_ticket("engine-a", ticket(b"1", &random_psk(32)))
        .unwrap();
    s.put_ticket("engine-a", ticket(b"2", &random_psk(32)))
        .unwrap();
    h.advance(3600);
    s.put_ticket("engine-a", ticket(b"3", &random_psk(32)))
        .unwrap();
    assert_eq!(
        h.count("SELECT count(*) FROM tickets"),
        1,
        "expired tickets are purged when registering"
    );
}

fn a_tampered_blob(h: &dyn Harness) {
    let s = h.open();
    s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
        .unwrap();
    let mut blob = h.sealed_blob();
    blob[20] ^= 0x01;
    h.set_sealed_blob(&blob);
    assert!(matches!(
        s.take_ticket("engine-a", b"t"),
        Err(StoreError::Seal(TokenError::Unseal))
    ));
    assert!(s.take_ticket("engine-a", b"t").unwrap().is_none());
    // An unknown blob format is corrupt, and deleted too.
    s.put_ticket("engine-a", ticket(b"u", &random_psk(32)))
        .unwrap();
    let mut blob = h.sealed_blob();
    blob[0] = 2;
    h.set_sealed_blob(&blob);
    assert!(matches!(
        s.take_ticket("engine-a", b"u"),
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(s.count_tickets("engine-a").unwrap(), 0);
    // Neither left a tombstone: nothing was used.
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 0);
}

fn a_token_failure_keeps_the_ticket(h: &dyn Harness) {
    let s = h.open();
    let psk = random_psk(32);
    s.put_ticket("engine-a", ticket(b"t", &psk)).unwrap();
    h.sealer().fail_unseal.store(1, Ordering::SeqCst);
    assert!(matches!(
        s.take_ticket("engine-a", b"t"),
        Err(StoreError::Seal(TokenError::Pkcs11 { .. }))
    ));
    let t = s.take_ticket("engine-a", b"t").unwrap().unwrap();
    assert_eq!(&t.psk[..], &psk[..]);
}

/// While the token unseals one engine's ticket (here: waits), the store is not held:
/// another engine registers, peeks at and takes its own tickets. The slow take then
/// completes, once.
fn a_take_holds_no_store_lock_while_the_token_unseals(h: &dyn Harness) {
    let s: Arc<dyn TicketStore> = Arc::from(h.open());
    let psk = random_psk(32);
    s.put_ticket("engine-a", ticket(b"slow", &psk)).unwrap();
    s.put_ticket("engine-b", ticket(b"b-1", &[1; 32])).unwrap();
    let gate = Arc::new(Gate::default());
    *h.sealer().unseal_gate.lock().unwrap() = Some(gate.clone());
    let slow = {
        let s = s.clone();
        std::thread::spawn(move || s.take_ticket("engine-a", b"slow"))
    };
    gate.wait_entered();
    let (tx, rx) = std::sync::mpsc::channel();
    let other = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.put_ticket("engine-b", ticket(b"b-2", &[2; 32])).unwrap();
            assert!(s.peek_ticket("engine-b", b"b-2").unwrap().is_some());
            let t = s.take_ticket("engine-b", b"b-1").unwrap().unwrap();
            tx.send(t.psk.to_vec()).unwrap();
        })
    };
    // Before: the take held the store (SQLite's connection, a PostgreSQL connection and
    // the row) until the token answered, and this waited for the gate.
    let got = rx.recv_timeout(Duration::from_secs(30));
    gate.open();
    other.join().unwrap();
    assert_eq!(got.expect("engine-b's calls went on"), vec![1; 32]);
    let t = slow.join().unwrap().unwrap().unwrap();
    assert_eq!(&t.psk[..], &psk[..]);
    assert!(s.take_ticket("engine-a", b"slow").unwrap().is_none());
    assert!(matches!(
        s.put_ticket("engine-a", ticket(b"slow", &psk)),
        Err(StoreError::TicketConsumed)
    ));
}

/// Two takes of one ticket, both past the unseal before either consumes it: one gets it.
fn two_takes_past_the_unseal_get_the_ticket_once(h: &dyn Harness) {
    let replicas: Vec<Arc<dyn TicketStore>> = (0..2).map(|_| Arc::from(h.open())).collect();
    replicas[0]
        .put_ticket("engine-a", ticket(b"once", &[7; 32]))
        .unwrap();
    let gate = Arc::new(Gate::default());
    *h.sealer().unseal_gate.lock().unwrap() = Some(gate.clone());
    let first = {
        let s = replicas[0].clone();
        std::thread::spawn(move || s.take_ticket("engine-a", b"once").unwrap())
    };
    gate.wait_entered();
    // The second take reads, unseals and consumes while the first waits in its unseal.
    let second = replicas[1].take_ticket("engine-a", b"once").unwrap();
    gate.open();
    let first = first.join().unwrap();
    assert!(second.is_some());
    assert!(first.is_none());
    assert_eq!(h.count("SELECT count(*) FROM tickets"), 0);
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 1);
}

/// put_tickets stores all the tickets or none: past the cap, or with an identity already
/// used, nothing of the batch is stored; within the cap, all of it.
fn put_tickets_is_all_or_none(h: &dyn Harness) {
    let s = h.open_with(&cfg(3, 3600)).unwrap();
    s.put_ticket("engine-a", ticket(b"used", &[1; 32])).unwrap();
    assert!(s.take_ticket("engine-a", b"used").unwrap().is_some());
    s.put_ticket("engine-a", ticket(b"kept", &[2; 32])).unwrap();
    let batch = |ids: &[&[u8]]| ids.iter().map(|id| ticket(id, &[3; 32])).collect();
    assert!(matches!(
        s.put_tickets("engine-a", batch(&[b"x", b"y", b"z"])),
        Err(StoreError::TooManyTickets { .. })
    ));
    assert!(matches!(
        s.put_tickets("engine-a", batch(&[b"x", b"used"])),
        Err(StoreError::TicketConsumed)
    ));
    assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
    assert!(s.peek_ticket("engine-a", b"x").unwrap().is_none());
    // An identity stored already is left as it is, and counts once.
    s.put_tickets("engine-a", batch(&[b"x", b"kept", b"y"]))
        .unwrap();
    assert_eq!(s.count_tickets("engine-a").unwrap(), 3);
    let kept = s.take_ticket("engine-a", b"kept").unwrap().unwrap();
    assert_eq!(&kept.psk[..], &[2; 32]);
}

fn invalid_tickets(h: &dyn Harness) {
    let s = h.open();
    // A SHA-384 ticket needs a 48-byte PSK.
    let mut t = ticket(b"t", &random_psk(32));
    t.hash = HashAlg::Sha384;
    assert!(matches!(
        s.put_ticket("engine-a", t),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.put_ticket("", ticket(b"t", &random_psk(32))),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.put_ticket("engine-a", ticket(b"", &random_psk(32))),
        Err(StoreError::Invalid(_))
    ));
    assert!(s.take_ticket("engine-a", b"").unwrap().is_none());
}

fn concurrent_puts(h: &dyn Harness) {
    let s: Arc<dyn TicketStore> = Arc::from(h.open_with(&cfg(1000, 3600)).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let engine = format!("engine-{}", t % 2);
                for i in 0..25 {
                    let id = format!("t{t}-{i}");
                    let psk = Zeroizing::new(vec![t as u8; 32]);
                    s.put_ticket(&engine, ticket(id.as_bytes(), &psk)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.count_tickets("engine-0").unwrap(), 100);
    assert_eq!(s.count_tickets("engine-1").unwrap(), 100);
    for t in 0..8u8 {
        for i in 0..25 {
            let id = format!("t{t}-{i}");
            let got = s
                .take_ticket(&format!("engine-{}", t % 2), id.as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(&got.psk[..], &[t; 32][..]);
        }
    }
}

/// Two handles on the same store (two replicas, for PostgreSQL: two pools), four takers
/// each, per ticket: exactly one winner.
fn taken_once_under_concurrency(h: &dyn Harness) {
    let replicas: Vec<Arc<dyn TicketStore>> = (0..2).map(|_| Arc::from(h.open())).collect();
    for round in 0..10u8 {
        replicas[0]
            .put_ticket("engine-a", ticket(&[round], &random_psk(32)))
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let winners: usize = (0..8)
            .map(|i| {
                let s = replicas[i % 2].clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    s.take_ticket("engine-a", &[round]).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap().is_some()))
            .sum();
        assert_eq!(winners, 1, "round {round}");
    }
}

/// Two handles registering for one engine at once never exceed its cap.
fn the_cap_holds_across_handles(h: &dyn Harness) {
    let replicas: Vec<Arc<dyn TicketStore>> = (0..2)
        .map(|_| Arc::from(h.open_with(&cfg(10, 3600)).unwrap()))
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let stored: usize = (0..4)
        .map(|t| {
            let s = replicas[t % 2].clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                (0..10)
                    .filter(|i| {
                        match s
                            .put_ticket("engine-a", ticket(format!("{t}-{i}").as_bytes(), &[7; 32]))
                        {
                            Ok(()) => true,
                            Err(StoreError::TooManyTickets { .. }) => false,
                            Err(e) => panic!("{e}"),
                        }
                    })
                    .count()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .sum();
    assert_eq!(stored, 10);
    assert_eq!(replicas[1].count_tickets("engine-a").unwrap(), 10);
}

/// Registrations through one handle race takes through another on a full engine: a take
/// frees one place, so exactly as many registrations succeed as tickets were taken, and
/// the engine never holds more than its cap.
fn the_cap_holds_while_takes_free_places(h: &dyn Harness) {
    let replicas: Vec<Arc<dyn TicketStore>> = (0..2)
        .map(|_| Arc::from(h.open_with(&cfg(10, 3600)).unwrap()))
        .collect();
    for i in 0..10u8 {
        replicas[0]
            .put_ticket("engine-a", ticket(&[b'o', i], &[1; 32]))
            .unwrap();
    }
    let barrier = Arc::new(std::sync::Barrier::new(3));
    let taker = {
        let s = replicas[0].clone();
        let b = barrier.clone();
        std::thread::spawn(move || {
            b.wait();
            (0..4u8)
                .filter(|i| s.take_ticket("engine-a", &[b'o', *i]).unwrap().is_some())
                .count()
        })
    };
    let registrars: Vec<_> = (0..2u8)
        .map(|t| {
            let s = replicas[1].clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                (0..10u8)
                    .filter(
                        |i| match s.put_ticket("engine-a", ticket(&[b'n', t, *i], &[2; 32])) {
                            Ok(()) => true,
                            Err(StoreError::TooManyTickets { .. }) => false,
                            Err(e) => panic!("{e}"),
                        },
                    )
                    .count()
            })
        })
        .collect();
    let taken = taker.join().unwrap();
    let stored: usize = registrars.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(taken, 4);
    assert!(stored <= 4, "{stored} stored after 4 takes");
    let live = replicas[1].count_tickets("engine-a").unwrap();
    assert_eq!(live, 10 - 4 + stored as u64);
    // Whatever the interleaving, the places freed and not yet refilled are free now.
    for i in 0..(4 - stored as u8) {
        replicas[1]
            .put_ticket("engine-a", ticket(&[b'l', i], &[3; 32]))
            .unwrap();
    }
    assert!(matches!(
        replicas[0].put_ticket("engine-a", ticket(b"over", &[3; 32])),
        Err(StoreError::TooManyTickets { .. })
    ));
}

/// A take through one handle races a registration of the same identity through another:
/// whichever comes first, the ticket is taken once in all.
fn a_take_racing_a_re_registration(h: &dyn Harness) {
    let replicas: Vec<Arc<dyn TicketStore>> = (0..2).map(|_| Arc::from(h.open())).collect();
    for round in 0..10u8 {
        let id = [b'r', round];
        replicas[0]
            .put_ticket("engine-a", ticket(&id, &[4; 32]))
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let taker = {
            let s = replicas[0].clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                s.take_ticket("engine-a", &id).unwrap().is_some()
            })
        };
        let registrar = {
            let s = replicas[1].clone();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                match s.put_ticket("engine-a", ticket(&id, &[5; 32])) {
                    Ok(()) | Err(StoreError::TicketConsumed) => {}
                    Err(e) => panic!("{e}"),
                }
            })
        };
        registrar.join().unwrap();
        assert!(taker.join().unwrap(), "round {round}");
        for s in &replicas {
            assert!(
                s.take_ticket("engine-a", &id).unwrap().is_none(),
                "round {round}"
            );
        }
    }
}

/// An identity whose ticket expired (not yet purged) is a new ticket when registered again.
fn an_expired_identity_can_be_registered_again(h: &dyn Harness) {
    let s = h.open_with(&cfg(1, 3600)).unwrap();
    let mut t = ticket(b"again", &random_psk(32));
    t.lifetime_secs = 10;
    s.put_ticket("engine-a", t).unwrap();
    h.advance(10);
    let psk = random_psk(32);
    s.put_ticket("engine-a", ticket(b"again", &psk)).unwrap();
    assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
    let got = s.take_ticket("engine-a", b"again").unwrap().unwrap();
    assert_eq!(&got.psk[..], &psk[..]);
    assert_eq!(
        got.expires_at,
        h.clock().now() + Duration::from_secs(3600),
        "the new ticket's lifetime"
    );
}

/// Issue: a ticket taken could be registered again and taken a second time. The tombstone
/// refuses it until the ticket's original expiry (RFC 8446 §C.4: single use).
fn a_consumed_ticket_stays_consumed(h: &dyn Harness) {
    let s = h.open();
    let psk = random_psk(32);
    s.put_ticket("engine-a", ticket(b"once", &psk)).unwrap();
    assert!(s.take_ticket("engine-a", b"once").unwrap().is_some());
    assert!(matches!(
        s.put_ticket("engine-a", ticket(b"once", &psk)),
        Err(StoreError::TicketConsumed)
    ));
    assert!(s.take_ticket("engine-a", b"once").unwrap().is_none());
    // Through another handle (replica) too, and after reopening.
    let other = h.open();
    assert!(matches!(
        other.put_ticket("engine-a", ticket(b"once", &psk)),
        Err(StoreError::TicketConsumed)
    ));
    // Another engine's identical identity is its own ticket.
    s.put_ticket("engine-b", ticket(b"once", &psk)).unwrap();
    // Once the original ticket would have expired, the tombstone goes with it.
    h.advance(3600);
    s.purge_expired(h.clock().now()).unwrap();
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 0);
    s.put_ticket("engine-a", ticket(b"once", &psk)).unwrap();
}

/// Issue: registering a stored ticket again restarted its lifetime.
fn re_registration_never_extends(h: &dyn Harness) {
    let s = h.open();
    let psk = random_psk(32);
    s.put_ticket("engine-a", ticket(b"t", &psk)).unwrap();
    h.advance(3000);
    // Same identity, new lifetime and another PSK: the stored ticket stays as it was.
    s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
        .unwrap();
    h.advance(600);
    assert!(
        s.take_ticket("engine-a", b"t").unwrap().is_none(),
        "expired at the original expiry"
    );
    s.put_ticket("engine-a", ticket(b"u", &psk)).unwrap();
    h.advance(10);
    s.put_ticket("engine-a", ticket(b"u", &random_psk(32)))
        .unwrap();
    let t = s.take_ticket("engine-a", b"u").unwrap().unwrap();
    assert_eq!(&t.psk[..], &psk[..]);
    assert_eq!(
        t.expires_at,
        h.clock().now() - Duration::from_secs(10) + Duration::from_secs(3600)
    );
}

/// A CS whose sealing key is not the store's refuses to open it.
fn another_sealing_key_is_refused(h: &dyn Harness) {
    let s = h.open();
    s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
        .unwrap();
    let err = h
        .open_sealed(&cfg(64, 3600), TestSealer::new())
        .err()
        .expect("another key must be refused");
    assert!(matches!(err, StoreError::WrongSealingKey(_)), "{err}");
    assert!(err.to_string().contains("another sealing key"), "{err}");
    // The right key still opens it.
    assert!(h.open().take_ticket("engine-a", b"t").unwrap().is_some());
}

fn external_psks(h: &dyn Harness) {
    let s = h.open();
    let open = random_psk(32);
    let restricted = random_psk(48);
    s.put_external_psk(ExternalPsk {
        identity: b"open".to_vec(),
        psk: open.clone(),
        hash: HashAlg::Sha256,
        allowed_engines: vec![],
    })
    .unwrap();
    s.put_external_psk(ExternalPsk {
        identity: b"restricted".to_vec(),
        psk: restricted.clone(),
        hash: HashAlg::Sha384,
        allowed_engines: vec!["engine-b".into(), "engine-a".into(), "engine-a".into()],
    })
    .unwrap();

    // Not consumed on use.
    for _ in 0..2 {
        let p = s
            .get_external_psk(Some("engine-c"), b"open")
            .unwrap()
            .unwrap();
        assert_eq!(&p.psk[..], &open[..]);
    }
    let p = s
        .get_external_psk(Some("engine-a"), b"restricted")
        .unwrap()
        .unwrap();
    assert_eq!(&p.psk[..], &restricted[..]);
    assert_eq!(p.hash, HashAlg::Sha384);
    assert_eq!(p.allowed_engines, ["engine-a", "engine-b"]);
    assert!(s
        .get_external_psk(Some("engine-c"), b"restricted")
        .unwrap()
        .is_none());
    assert!(s.get_external_psk(None, b"restricted").unwrap().is_some());
    assert!(s
        .get_external_psk(Some("engine-a"), b"missing")
        .unwrap()
        .is_none());

    let list = s.list_external_psks().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].identity, b"open");
    assert_eq!(list[1].hash, HashAlg::Sha384);
    assert!(!format!("{list:?}").contains(&format!("{:?}", &open[..4])));

    // Widening the allowed engines in the database does not grant access.
    let nl = format!("{}(10)", h.chr());
    assert_eq!(
        h.exec(&format!(
            "UPDATE external_psks SET allowed_engines = 'engine-a' || {nl} || 'engine-b' \
             || {nl} || 'engine-c' WHERE allowed_engines <> ''"
        )),
        1
    );
    assert!(matches!(
        s.get_external_psk(Some("engine-c"), b"restricted"),
        Err(StoreError::Seal(TokenError::Unseal))
    ));

    assert!(s.delete_external_psk(b"open").unwrap());
    assert!(!s.delete_external_psk(b"open").unwrap());
    assert!(s.get_external_psk(None, b"open").unwrap().is_none());
    assert!(matches!(
        s.put_external_psk(ExternalPsk {
            identity: b"weak".to_vec(),
            psk: Zeroizing::new(vec![1; 8]),
            hash: HashAlg::Sha256,
            allowed_engines: vec![],
        }),
        Err(StoreError::Invalid(_))
    ));
}

/// `peek_ticket` tells what binds a live ticket and changes nothing: the ticket is still
/// taken once, also when takers peek first on two handles at once.
fn peek_changes_nothing(h: &dyn Harness) {
    let s = h.open();
    let psk = random_psk(32);
    s.put_ticket("engine-a", ticket(b"p", &psk)).unwrap();
    let bound = TicketBinding {
        hash: HashAlg::Sha256,
        server_name: Some("server.example".into()),
    };
    for _ in 0..3 {
        assert_eq!(
            s.peek_ticket("engine-a", b"p").unwrap(),
            Some(bound.clone())
        );
    }
    assert_eq!(
        s.peek_ticket("engine-b", b"p").unwrap(),
        None,
        "another engine's"
    );
    assert_eq!(s.peek_ticket("engine-a", b"q").unwrap(), None);
    assert_eq!(s.peek_ticket("engine-a", b"").unwrap(), None);
    assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 0);
    let t = s.take_ticket("engine-a", b"p").unwrap().unwrap();
    assert_eq!(&t.psk[..], &psk[..]);
    assert_eq!(s.peek_ticket("engine-a", b"p").unwrap(), None, "taken");

    // Peek then take, eight takers on two handles: exactly one gets it.
    let replicas: Vec<Arc<dyn TicketStore>> = (0..2).map(|_| Arc::from(h.open())).collect();
    for round in 0..5u8 {
        replicas[0]
            .put_ticket("engine-a", ticket(&[round], &random_psk(32)))
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let winners: usize = (0..8)
            .map(|i| {
                let s = replicas[i % 2].clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let seen = s.peek_ticket("engine-a", &[round]).unwrap();
                    let taken = s.take_ticket("engine-a", &[round]).unwrap();
                    assert!(seen.is_some() || taken.is_none(), "taken unseen");
                    taken
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap().is_some()))
            .sum();
        assert_eq!(winners, 1, "round {round}");
    }

    // An expired ticket is not shown.
    s.put_ticket("engine-a", ticket(b"e", &psk)).unwrap();
    h.advance(3600);
    assert_eq!(s.peek_ticket("engine-a", b"e").unwrap(), None);
}

/// Tombstones are bounded by count (docs/design.md §4.10): per engine, live tickets and
/// tombstones stay within twice the cap at each registration, the oldest tombstones purged
/// first; in all, within `max_tombstones` at each purge, the oldest first. Live tickets are
/// never purged, other engines' tombstones are not touched by an engine's registrations,
/// and a ticket whose tombstone went is still never taken again.
fn tombstones_are_bounded(h: &dyn Harness) {
    let s = h.open_with(&cfg(4, 3600)).unwrap();
    let tombs = |engine: &str| {
        h.count(&format!(
            "SELECT count(*) FROM consumed_tickets WHERE engine = '{engine}'"
        ))
    };
    let tomb_of = |id: &[u8]| {
        h.count(&format!(
            "SELECT count(*) FROM consumed_tickets WHERE id_hash = {}",
            h.bytes_literal(&identity_hash(id))
        ))
    };
    for i in 0..2u8 {
        s.put_ticket("engine-b", ticket(&[9, i], &random_psk(32)))
            .unwrap();
        assert!(s.take_ticket("engine-b", &[9, i]).unwrap().is_some());
    }
    h.advance(1);
    // Three rounds of 4 tickets registered then taken, a second apart.
    for round in 0..3u8 {
        for i in 0..4u8 {
            s.put_ticket("engine-a", ticket(&[round, i], &random_psk(32)))
                .unwrap();
            let live = i64::try_from(s.count_tickets("engine-a").unwrap()).unwrap();
            assert!(live + tombs("engine-a") <= 8, "round {round}, ticket {i}");
        }
        for i in 0..4u8 {
            assert!(s.take_ticket("engine-a", &[round, i]).unwrap().is_some());
        }
        h.advance(1);
    }
    // Round 2's registrations purged round 0's tombstones, the oldest.
    assert_eq!(tombs("engine-a"), 8);
    for i in 0..4u8 {
        assert_eq!(tomb_of(&[0, i]), 0, "round 0, ticket {i}");
        assert_eq!(tomb_of(&[1, i]), 1, "round 1, ticket {i}");
        assert!(matches!(
            s.put_ticket("engine-a", ticket(&[2, i], &[7; 32])),
            Err(StoreError::TicketConsumed)
        ));
        // Its row went with the take: no tombstone needed for that.
        assert!(s.take_ticket("engine-a", &[0, i]).unwrap().is_none());
    }
    assert_eq!(
        tombs("engine-a"),
        8,
        "a refused registration purges nothing"
    );
    assert_eq!(tombs("engine-b"), 2, "another engine's tombstones stay");
    // Four live tickets: room is made among the tombstones, never among live tickets.
    for i in 0..4u8 {
        s.put_ticket("engine-a", ticket(&[3, i], &random_psk(32)))
            .unwrap();
    }
    assert_eq!(tombs("engine-a"), 4);
    assert_eq!(s.count_tickets("engine-a").unwrap(), 4);
    // Neither a stored identity registered again nor one past the cap purges anything.
    s.put_ticket("engine-a", ticket(&[3, 0], &random_psk(32)))
        .unwrap();
    assert!(matches!(
        s.put_ticket("engine-a", ticket(&[4, 0], &random_psk(32))),
        Err(StoreError::TooManyTickets { .. })
    ));
    assert_eq!(tombs("engine-a"), 4);
    for i in 0..4u8 {
        assert_eq!(tomb_of(&[2, i]), 1, "round 2, ticket {i}");
        assert!(s.take_ticket("engine-a", &[3, i]).unwrap().is_some());
    }
    // In all: 10 tombstones (8 of engine-a, 2 of engine-b); a cap of 5 keeps the newest 5.
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 10);
    let mut small = cfg(4, 3600);
    small.max_tombstones = 5;
    // Opening purges too.
    let capped = h.open_with(&small).unwrap();
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 5);
    capped.purge_expired(h.clock().now()).unwrap();
    assert_eq!(h.count("SELECT count(*) FROM consumed_tickets"), 5);
    assert_eq!(tombs("engine-b"), 0, "the oldest went first");
    for i in 0..4u8 {
        assert_eq!(tomb_of(&[3, i]), 1, "round 3, ticket {i}");
    }
}
