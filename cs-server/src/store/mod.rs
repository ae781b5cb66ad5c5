//! Resumption tickets and external PSKs (docs/design.md §4.6): the PSKs never leave the CS, so the
//! CS keeps them, sealed, in a store.
//!
//! - [`Sealer`]: authenticated encryption under a key the store never sees (the PKCS#11
//!   token's AES key in production; its impl is in `token/seal.rs`).
//! - [`Tickets`] (resumption tickets) and [`ExternalPsks`] (provisioned PSKs): what the
//!   service needs, blocking (the service calls them through `spawn_blocking`);
//!   [`TicketStore`] is a backend holding both. [`SqliteStore`] (one file, one host, the
//!   default) and [`PostgresStore`] (shared by several CS replicas) implement them; [`open`]
//!   picks the one `[store] backend` names.
//!
//! Rules every backend follows:
//! - **Only the PSK is sealed**, and its AAD binds it to everything stored next to it in
//!   clear (`ticket_aad`, `external_psk_aad`): schema version, engine identity, SHA-256
//!   of the ticket identity, hash, cipher suite, times, `max_early_data`, server name (for
//!   external PSKs: identity and the list of allowed engines). A row copied to another engine
//!   or identity, or whose lifetime or allowed engines were edited, fails to unseal.
//! - **Tickets are keyed by (engine, SHA-256(identity))**: a ticket registered by one engine
//!   is invisible to every other engine.
//! - **A ticket is used once** (RFC 8446 §C.4): [`Tickets::take_ticket`] deletes it
//!   and leaves a tombstone of (engine, SHA-256(identity)) until the ticket's original
//!   expiry: the same ticket registered again is refused
//!   ([`StoreError::TicketConsumed`]), so it can never be taken twice. Registering an
//!   identity that is still stored changes nothing (its lifetime is never extended).
//!   Tombstones are also bounded by count, the oldest purged first: per engine, live
//!   tickets and tombstones together stay within twice `max_tickets_per_engine` (kept at
//!   each registration; a take turns a ticket into a tombstone and leaves the sum as it
//!   is), and in all within `max_tombstones` (at each [`Tickets::purge_expired`]).
//!   Single use does not rest on them alone (docs/design.md §4.10): a ticket's PSK can only
//!   be derived again in the session that registered it, which refuses the same nonce or
//!   identity twice.
//! - **Lifetime** = min(the server's `ticket_lifetime`, the configured cap ≤ 7 days); an
//!   expired ticket is never returned. **Count**: at most `max_tickets_per_engine` live
//!   tickets per engine; expired ones are purged before counting, and a refused registration
//!   leaves the existing tickets untouched.
//! - **One sealing key per store**: a key check value (a constant sealed under the sealing
//!   key) is written by the first CS that opens the store; a CS whose key does not open it
//!   refuses to start ([`StoreError::WrongSealingKey`]). Replicas share the key (a network
//!   HSM, or `lurk-cs token sealing-key export-wrapped / import-wrapped`).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lurk_proto::wire::HashAlg;
use zeroize::Zeroizing;

use crate::error::{StoreError, TokenError};

mod postgres;
mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;

use crate::config::{StoreBackend, StoreConfig};

/// Version of the AAD layout of sealed PSKs. Changing it makes every stored PSK unreadable:
/// a schema migration does not change it.
pub const AAD_VERSION: u32 = 1;

/// Format byte of a stored sealed blob (before the sealer's own output).
pub const BLOB_V1: u8 = 1;

/// Opens the store `cfg.backend` names, applying pending schema migrations, and checks that
/// `sealer` holds the store's sealing key.
pub fn open(
    cfg: &StoreConfig,
    sealer: Arc<dyn Sealer>,
) -> Result<Arc<dyn TicketStore>, StoreError> {
    Ok(match cfg.backend {
        StoreBackend::Sqlite => Arc::new(SqliteStore::from_config(cfg, sealer)?),
        StoreBackend::Postgres => Arc::new(PostgresStore::from_config(cfg, sealer)?),
    })
}

/// RFC 8446 §4.6.1: servers must not use a ticket lifetime above 7 days, and clients must
/// not cache a ticket longer.
pub const MAX_TICKET_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// Longest identity accepted (RFC 8446 §4.2.11: `opaque identity<1..2^16-1>`).
pub const MAX_IDENTITY_LEN: usize = u16::MAX as usize;

/// Longest engine identity accepted (a certificate CN is at most 64 characters; DNS names at
/// most 253).
pub const MAX_ENGINE_LEN: usize = 255;

/// Authenticated encryption of the stored PSKs, under a key the store never holds.
///
/// The PKCS#11 `Token` implements it with AES-GCM under the token key named by
/// `token.sealing_key`. `seal` returns an opaque blob (nonce, ciphertext and tag, in the
/// implementation's format); `unseal` must fail with [`TokenError::Unseal`] when the blob or
/// the AAD was altered, and with another `TokenError` when the token itself failed.
pub trait Sealer: Send + Sync {
    /// Encrypts and authenticates `plaintext`, binding `aad` (every field stored beside it:
    /// `ticket_aad`, `external_psk_aad`).
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, TokenError>;
    /// Opens what [`Sealer::seal`] made with the same `aad`.
    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError>;
}

/// A ticket to register, as `c_register_tickets` derived it.
pub struct NewTicket {
    /// `NewSessionTicket.ticket`: the identity the engine will offer in `pre_shared_key`.
    pub identity: Vec<u8>,
    /// HKDF-Expand-Label(resumption_master_secret, "resumption", ticket_nonce, Hash.length).
    pub psk: Zeroizing<Vec<u8>>,
    /// The hash of the cipher suite of the connection that issued the ticket.
    pub hash: HashAlg,
    /// That cipher suite (RFC 8446 §4.6.1: the ticket may only be used with the same hash).
    pub cipher_suite: u16,
    /// `NewSessionTicket.ticket_lifetime` in seconds; 0 means "do not cache".
    pub lifetime_secs: u32,
    /// The `early_data` extension's `max_early_data_size` (0 without it).
    pub max_early_data: u32,
    /// The SNI of the connection that issued the ticket, if any.
    pub server_name: Option<String>,
}

impl fmt::Debug for NewTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTicket")
            .field("identity_len", &self.identity.len())
            .field("psk", &"<redacted>")
            .field("hash", &self.hash)
            .field("cipher_suite", &format_args!("{:#06x}", self.cipher_suite))
            .field("lifetime_secs", &self.lifetime_secs)
            .field("max_early_data", &self.max_early_data)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A ticket taken out of the store (and so deleted from it).
pub struct StoredTicket {
    /// The resumption PSK, unsealed.
    pub psk: Zeroizing<Vec<u8>>,
    /// The hash the PSK is bound to (RFC 8446 §4.2.11).
    pub hash: HashAlg,
    /// The cipher suite of the connection that issued the ticket.
    pub cipher_suite: u16,
    /// The ticket's max_early_data_size (0: no early data, RFC 8446 §4.2.10).
    pub max_early_data: u32,
    /// The server name the ticket is bound to, if any.
    pub server_name: Option<String>,
    /// When the CS registered the ticket (an approximation of when the server issued it).
    pub issued_at: SystemTime,
    /// `issued_at` + the effective lifetime.
    pub expires_at: SystemTime,
}

impl fmt::Debug for StoredTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTicket")
            .field("psk", &"<redacted>")
            .field("hash", &self.hash)
            .field("cipher_suite", &format_args!("{:#06x}", self.cipher_suite))
            .field("max_early_data", &self.max_early_data)
            .field("server_name", &self.server_name)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What [`Tickets::peek_ticket`] tells of a stored ticket: what binds its use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketBinding {
    /// The hash the ticket's PSK is bound to.
    pub hash: HashAlg,
    /// The server name the ticket is bound to, if any.
    pub server_name: Option<String>,
}

/// An external PSK (RFC 8446 §2.2, provisioned out of band). Not consumed on use.
pub struct ExternalPsk {
    /// The identity engines offer in pre_shared_key.
    pub identity: Vec<u8>,
    /// The PSK itself.
    pub psk: Zeroizing<Vec<u8>>,
    /// The hash it is used with (RFC 8446 §4.2.11: provisioned with the PSK).
    pub hash: HashAlg,
    /// Engine identities allowed to use it; empty = every authenticated engine.
    pub allowed_engines: Vec<String>,
}

impl fmt::Debug for ExternalPsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalPsk")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("psk", &"<redacted>")
            .field("hash", &self.hash)
            .field("allowed_engines", &self.allowed_engines)
            .finish()
    }
}

/// What may be said about an external PSK without the PSK itself (`Capabilities`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalPskInfo {
    /// The PSK's identity.
    pub identity: Vec<u8>,
    /// The hash it is used with.
    pub hash: HashAlg,
    /// Engine identities allowed to use it; empty = every authenticated engine.
    pub allowed_engines: Vec<String>,
}

/// A backend holding both the tickets and the external PSKs: what the CS is given.
pub trait TicketStore: Tickets + ExternalPsks {}

impl<T: Tickets + ExternalPsks + ?Sized> TicketStore for T {}

/// The resumption tickets. Methods block (SQLite, PostgreSQL, token calls): call them from
/// `spawn_blocking`.
pub trait Tickets: Send + Sync {
    /// Registers a ticket for `engine`. A ticket with a lifetime of 0 is not stored (RFC 8446
    /// §4.6.1: "discard immediately"). Registering an identity the engine already has
    /// leaves the stored ticket as it is (same PSK, same expiry). An identity the engine
    /// already took fails with `StoreError::TicketConsumed` until that ticket's expiry.
    /// Beyond `max_tickets_per_engine` live tickets (expired ones are purged first) fails
    /// with `StoreError::TooManyTickets`, leaving the existing ones intact.
    fn put_ticket(&self, engine: &str, ticket: NewTicket) -> Result<(), StoreError> {
        self.put_tickets(engine, vec![ticket])
    }

    /// Registers `tickets` for `engine` as [`put_ticket`](Self::put_ticket) does each, all or
    /// none: the first one refused refuses them all, and nothing is stored.
    fn put_tickets(&self, engine: &str, tickets: Vec<NewTicket>) -> Result<(), StoreError>;

    /// Takes `engine`'s ticket with this identity: returns it unsealed and deletes it (a
    /// ticket is used once). `None` when the engine has no such live ticket (another
    /// engine's ticket with the same identity is not visible). A row whose seal fails to
    /// authenticate is deleted and reported as `StoreError::Seal(TokenError::Unseal)`; any
    /// other token failure leaves the row in place.
    fn take_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<StoredTicket>, StoreError>;

    /// What is stored in clear beside `engine`'s live ticket with this identity, without
    /// taking it or unsealing its PSK; `None` when there is no such live ticket. Nothing
    /// changes in the store: [`Tickets::take_ticket`] stays the one atomic point where
    /// a ticket is used. (The fields are not authenticated until the take unseals the PSK:
    /// callers check them again on what the take returns.)
    fn peek_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<TicketBinding>, StoreError>;

    /// Live (unexpired) tickets of `engine`.
    fn count_tickets(&self, engine: &str) -> Result<u64, StoreError>;

    /// Deletes every ticket (and tombstone) expired at `now`, then the oldest tombstones
    /// past `max_tombstones`; returns how many tickets. PostgreSQL: in batches, skipping
    /// rows another transaction holds (the next purge deletes them).
    fn purge_expired(&self, now: SystemTime) -> Result<u64, StoreError>;

    /// A cheap round trip to the backing database (health probe).
    fn ping(&self) -> Result<(), StoreError>;
}

/// The external PSKs (provisioned by `lurk-cs psk`). Methods block, like [`Tickets`]'.
pub trait ExternalPsks: Send + Sync {
    /// Provisions (or replaces) an external PSK.
    fn put_external_psk(&self, psk: ExternalPsk) -> Result<(), StoreError>;

    /// The external PSK with this identity, unsealed. With `Some(engine)`, a PSK restricted
    /// to other engines is reported as absent; `None` skips that check (administration).
    fn get_external_psk(
        &self,
        engine: Option<&str>,
        identity: &[u8],
    ) -> Result<Option<ExternalPsk>, StoreError>;

    /// Deletes an external PSK; returns whether it existed.
    fn delete_external_psk(&self, identity: &[u8]) -> Result<bool, StoreError>;

    /// Identities, hashes and allowed engines of the external PSKs (never the PSKs).
    fn list_external_psks(&self) -> Result<Vec<ExternalPskInfo>, StoreError>;
}

/// SHA-256 of a PSK identity: the key tickets and external PSKs are stored under.
pub(crate) fn identity_hash(identity: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, identity);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Stable code of a hash in stored rows and AADs.
pub(crate) fn hash_code(h: HashAlg) -> u8 {
    match h {
        HashAlg::Sha256 => 1,
        HashAlg::Sha384 => 2,
    }
}

pub(crate) fn hash_from_code(code: i64) -> Result<HashAlg, StoreError> {
    match code {
        1 => Ok(HashAlg::Sha256),
        2 => Ok(HashAlg::Sha384),
        other => Err(StoreError::Corrupt(format!("unknown hash code {other}"))),
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn from_unix_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// Everything stored beside a ticket's sealed PSK, in clear.
pub(crate) struct TicketMeta<'a> {
    pub engine: &'a str,
    pub id_hash: &'a [u8; 32],
    pub hash: HashAlg,
    pub cipher_suite: u16,
    pub issued_at: u64,
    pub expires_at: u64,
    pub max_early_data: u32,
    pub server_name: Option<&'a str>,
}

/// AAD of a ticket's sealed PSK: a fixed label, the schema version, then every field stored
/// beside it, each length-prefixed or fixed-size so that no two tuples encode alike.
pub(crate) fn ticket_aad(m: &TicketMeta<'_>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96 + m.engine.len());
    aad.extend_from_slice(b"lurk-cs ticket\0");
    aad.extend_from_slice(&AAD_VERSION.to_be_bytes());
    push_str16(&mut aad, m.engine);
    aad.extend_from_slice(m.id_hash);
    aad.push(hash_code(m.hash));
    aad.extend_from_slice(&m.cipher_suite.to_be_bytes());
    aad.extend_from_slice(&m.issued_at.to_be_bytes());
    aad.extend_from_slice(&m.expires_at.to_be_bytes());
    aad.extend_from_slice(&m.max_early_data.to_be_bytes());
    match m.server_name {
        None => aad.push(0),
        Some(sn) => {
            aad.push(1);
            push_str16(&mut aad, sn);
        }
    }
    aad
}

/// AAD of an external PSK: label, schema version, identity hash, hash, allowed engines (in
/// the order stored).
pub(crate) fn external_psk_aad(id_hash: &[u8; 32], hash: HashAlg, allowed: &[String]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"lurk-cs external-psk\0");
    aad.extend_from_slice(&AAD_VERSION.to_be_bytes());
    aad.extend_from_slice(id_hash);
    aad.push(hash_code(hash));
    aad.extend_from_slice(&(allowed.len() as u32).to_be_bytes());
    for e in allowed {
        push_str16(&mut aad, e);
    }
    aad
}

/// Callers validated lengths (≤ `MAX_ENGINE_LEN`, or a server name ≤ 255 by RFC 6066).
fn push_str16(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

pub(crate) fn check_engine(engine: &str) -> Result<(), StoreError> {
    if engine.is_empty() || engine.len() > MAX_ENGINE_LEN || engine.contains('\n') {
        return Err(StoreError::Invalid(format!(
            "engine identity must be 1..={MAX_ENGINE_LEN} bytes without newline"
        )));
    }
    Ok(())
}

/// The key a lookup by (`engine`, `identity`) uses: the identity's hash, or None when the
/// identity cannot have been stored (no such ticket); a malformed engine name is an error.
pub(crate) fn lookup_key(
    engine: Option<&str>,
    identity: &[u8],
) -> Result<Option<[u8; 32]>, StoreError> {
    if let Some(engine) = engine {
        check_engine(engine)?;
    }
    Ok(check_identity(identity)
        .is_ok()
        .then(|| identity_hash(identity)))
}

/// A registration's outcome: a refusal is returned, and logged at debug only. The exchange
/// that asked logs it with its other refusals, limited per engine (an engine can repeat a
/// refused registration at will).
pub(crate) fn log_refusal(engine: &str, refusal: Option<StoreError>) -> Result<(), StoreError> {
    match refusal {
        None => Ok(()),
        Some(e) => {
            tracing::debug!(engine, error = %e, "ticket refused");
            Err(e)
        }
    }
}

pub(crate) fn check_identity(identity: &[u8]) -> Result<(), StoreError> {
    if identity.is_empty() || identity.len() > MAX_IDENTITY_LEN {
        return Err(StoreError::Invalid(format!(
            "PSK identity must be 1..={MAX_IDENTITY_LEN} bytes"
        )));
    }
    Ok(())
}

/// Bounds of an external PSK (RFC 9257 §4: at least 128 bits of entropy).
pub(crate) const MIN_EXTERNAL_PSK_LEN: usize = 16;
pub(crate) const MAX_EXTERNAL_PSK_LEN: usize = 1024;

/// AAD and plaintext of the key check value: a constant sealed under the sealing key.
const KEY_CHECK_AAD: &[u8] = b"lurk-cs key check\0";
const KEY_CHECK_PLAINTEXT: &[u8] = b"lurk-cs sealing key check value v1";

/// The sealer with the versioned blob format every backend stores, and the checks and
/// conversions the backends share.
pub(crate) struct Sealing {
    pub sealer: Arc<dyn Sealer>,
    pub lifetime_cap_secs: u64,
}

/// A ticket row as a backend reads it, before unsealing.
pub(crate) struct TicketRow {
    pub hash_alg: i64,
    pub cipher_suite: i64,
    pub issued_at: i64,
    pub expires_at: i64,
    pub max_early_data: i64,
    pub server_name: Option<String>,
    pub sealed: Vec<u8>,
}

/// A checked, sealed ticket, ready to insert.
pub(crate) struct PreparedTicket {
    pub id_hash: [u8; 32],
    pub hash_alg: i64,
    pub cipher_suite: i64,
    pub issued_at: i64,
    pub expires_at: i64,
    pub max_early_data: i64,
    pub server_name: Option<String>,
    pub sealed: Vec<u8>,
}

/// A checked, sealed external PSK, ready to insert.
pub(crate) struct PreparedExternal {
    pub id_hash: [u8; 32],
    pub identity: Vec<u8>,
    pub hash_alg: i64,
    /// Sorted, newline-separated; empty = every engine.
    pub allowed_engines: String,
    pub sealed: Vec<u8>,
}

/// One registration at a time per engine in this process: the others of the same engine
/// wait here, before the store's lock or connection is taken. An engine's registrations are
/// serialised anyway (its cap is counted under a lock: PostgreSQL's row lock across
/// replicas, SQLite's write lock); waiting for that lock while holding a pooled connection
/// would let one engine's requests hold every connection, and a registration of another
/// engine, a take, a health probe wait behind them.
#[derive(Default)]
pub(crate) struct EngineGates {
    /// Engines with a registration past the gate, and how many registrations wait.
    busy: Mutex<(HashSet<String>, usize)>,
    freed: Condvar,
}

/// An engine's turn at the gate, until dropped.
pub(crate) struct GateTurn<'a> {
    gates: &'a EngineGates,
    engine: String,
}

impl EngineGates {
    /// Waits (at most `timeout`) until no other registration of `engine` is past the gate.
    pub(crate) fn enter(
        &self,
        engine: &str,
        timeout: Duration,
    ) -> Result<GateTurn<'_>, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.1 += 1;
        while busy.0.contains(engine) {
            let now = Instant::now();
            if now >= deadline {
                busy.1 -= 1;
                return Err(StoreError::Busy(format!(
                    "another registration of this engine held its turn for more than \
                     {timeout:?}"
                )));
            }
            busy = self
                .freed
                .wait_timeout(busy, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        busy.1 -= 1;
        busy.0.insert(engine.to_owned());
        Ok(GateTurn {
            gates: self,
            engine: engine.to_owned(),
        })
    }

    /// No registration past the gate or waiting.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        let busy = self.busy.lock().unwrap();
        busy.0.is_empty() && busy.1 == 0
    }

    /// Registrations waiting at the gate.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.busy.lock().unwrap().1
    }
}

impl Drop for GateTurn<'_> {
    fn drop(&mut self) {
        let mut busy = self.gates.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.0.remove(&self.engine);
        drop(busy);
        // Waiters of every engine share the condition variable: each checks its own.
        self.gates.freed.notify_all();
    }
}

/// Tombstones of `engine` to purge (oldest first) before one more live ticket is stored:
/// live tickets and tombstones together stay within twice the per-engine cap.
pub(crate) fn tombstone_excess(live_after: i64, tombstones: i64, cap: u32) -> i64 {
    (live_after + tombstones - 2 * i64::from(cap)).max(0)
}

impl Sealing {
    pub(crate) fn new(sealer: Arc<dyn Sealer>, cfg: &StoreConfig) -> Self {
        Self {
            sealer,
            lifetime_cap_secs: cfg.ticket_lifetime_secs.min(MAX_TICKET_LIFETIME_SECS),
        }
    }

    /// Unseals a versioned blob.
    pub(crate) fn unseal(&self, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        match blob.split_first() {
            Some((&BLOB_V1, sealed)) => Ok(self.sealer.unseal(aad, sealed)?),
            Some((v, _)) => Err(StoreError::Corrupt(format!(
                "unknown sealed blob format {v}"
            ))),
            None => Err(StoreError::Corrupt("empty sealed blob".into())),
        }
    }

    pub(crate) fn seal(&self, aad: &[u8], psk: &[u8]) -> Result<Vec<u8>, StoreError> {
        let sealed = self.sealer.seal(aad, psk)?;
        let mut blob = Vec::with_capacity(1 + sealed.len());
        blob.push(BLOB_V1);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// A fresh key check value for a new store.
    pub(crate) fn key_check_value(&self) -> Result<Vec<u8>, StoreError> {
        self.seal(KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)
    }

    /// Checks the store's key check value against our sealing key.
    pub(crate) fn verify_key_check(&self, blob: &[u8], store: &str) -> Result<(), StoreError> {
        match self.unseal(KEY_CHECK_AAD, blob) {
            Ok(p) if p.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
            Ok(_) | Err(StoreError::Seal(TokenError::Unseal)) | Err(StoreError::Corrupt(_)) => {
                Err(StoreError::WrongSealingKey(store.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    /// Checks and seals a ticket registered at `now`; `None` for a lifetime of 0 (RFC 8446
    /// §4.6.1: not cached).
    pub(crate) fn prepare_ticket(
        &self,
        engine: &str,
        ticket: &NewTicket,
        now: u64,
    ) -> Result<Option<PreparedTicket>, StoreError> {
        check_engine(engine)?;
        check_identity(&ticket.identity)?;
        if ticket.psk.len() != ticket.hash.output_len() {
            return Err(StoreError::Invalid(format!(
                "a {:?} resumption PSK is {} bytes, got {}",
                ticket.hash,
                ticket.hash.output_len(),
                ticket.psk.len()
            )));
        }
        if let Some(sn) = &ticket.server_name {
            if sn.is_empty() || sn.len() > 255 {
                return Err(StoreError::Invalid(
                    "server name must be 1..=255 bytes".into(),
                ));
            }
        }
        let lifetime = u64::from(ticket.lifetime_secs).min(self.lifetime_cap_secs);
        if lifetime == 0 {
            tracing::debug!(
                engine,
                "ticket with lifetime 0 not stored (RFC 8446 §4.6.1)"
            );
            return Ok(None);
        }
        let expires_at = now.saturating_add(lifetime);
        let id_hash = identity_hash(&ticket.identity);
        let aad = ticket_aad(&TicketMeta {
            engine,
            id_hash: &id_hash,
            hash: ticket.hash,
            cipher_suite: ticket.cipher_suite,
            issued_at: now,
            expires_at,
            max_early_data: ticket.max_early_data,
            server_name: ticket.server_name.as_deref(),
        });
        let sealed = self.seal(&aad, &ticket.psk)?;
        Ok(Some(PreparedTicket {
            id_hash,
            hash_alg: i64::from(hash_code(ticket.hash)),
            cipher_suite: i64::from(ticket.cipher_suite),
            issued_at: sql_int(now),
            expires_at: sql_int(expires_at),
            max_early_data: i64::from(ticket.max_early_data),
            server_name: ticket.server_name.clone(),
            sealed,
        }))
    }

    /// Checks and unseals a ticket row.
    pub(crate) fn open_ticket(
        &self,
        engine: &str,
        id_hash: &[u8; 32],
        row: &TicketRow,
    ) -> Result<StoredTicket, StoreError> {
        let hash = hash_from_code(row.hash_alg)?;
        let cipher_suite = int::<u16>(row.cipher_suite, "cipher_suite")?;
        let issued_at = int::<u64>(row.issued_at, "issued_at")?;
        let expires_at = int::<u64>(row.expires_at, "expires_at")?;
        let max_early_data = int::<u32>(row.max_early_data, "max_early_data")?;
        let aad = ticket_aad(&TicketMeta {
            engine,
            id_hash,
            hash,
            cipher_suite,
            issued_at,
            expires_at,
            max_early_data,
            server_name: row.server_name.as_deref(),
        });
        let psk = self.unseal(&aad, &row.sealed)?;
        Ok(StoredTicket {
            psk,
            hash,
            cipher_suite,
            max_early_data,
            server_name: row.server_name.clone(),
            issued_at: from_unix_secs(issued_at),
            expires_at: from_unix_secs(expires_at),
        })
    }

    /// Checks and seals an external PSK.
    pub(crate) fn prepare_external(
        &self,
        psk: &ExternalPsk,
    ) -> Result<PreparedExternal, StoreError> {
        check_identity(&psk.identity)?;
        if !(MIN_EXTERNAL_PSK_LEN..=MAX_EXTERNAL_PSK_LEN).contains(&psk.psk.len()) {
            return Err(StoreError::Invalid(format!(
                "an external PSK must be {MIN_EXTERNAL_PSK_LEN}..={MAX_EXTERNAL_PSK_LEN} bytes"
            )));
        }
        let mut allowed = psk.allowed_engines.clone();
        for e in &allowed {
            check_engine(e)?;
        }
        allowed.sort();
        allowed.dedup();
        let id_hash = identity_hash(&psk.identity);
        let sealed = self.seal(&external_psk_aad(&id_hash, psk.hash, &allowed), &psk.psk)?;
        Ok(PreparedExternal {
            id_hash,
            identity: psk.identity.clone(),
            hash_alg: i64::from(hash_code(psk.hash)),
            allowed_engines: allowed.join("\n"),
            sealed,
        })
    }

    /// Checks and unseals an external PSK row (identity, hash code, allowed engines,
    /// sealed); `None` when `engine` may not use it.
    pub(crate) fn open_external(
        &self,
        engine: Option<&str>,
        identity: &[u8],
        row: (Vec<u8>, i64, String, Vec<u8>),
    ) -> Result<Option<ExternalPsk>, StoreError> {
        let (stored_identity, hash_alg, allowed, sealed) = row;
        if stored_identity != identity {
            return Err(StoreError::Corrupt(
                "external PSK identity does not match its hash".into(),
            ));
        }
        let allowed = split_engines(&allowed);
        if let Some(engine) = engine {
            if !allowed.is_empty() && !allowed.iter().any(|a| a == engine) {
                return Ok(None);
            }
        }
        let hash = hash_from_code(hash_alg)?;
        let id_hash = identity_hash(identity);
        // Unsealing also authenticates the allowed-engines list just checked.
        let psk = self
            .unseal(&external_psk_aad(&id_hash, hash, &allowed), &sealed)
            .inspect_err(|e| tracing::error!(error = %e, "stored external PSK rejected"))?;
        Ok(Some(ExternalPsk {
            identity: stored_identity,
            psk,
            hash,
            allowed_engines: allowed,
        }))
    }
}

pub(crate) fn split_engines(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Database integers are i64; our times are far below its limit.
pub(crate) fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn int<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(engine: &'a str, id_hash: &'a [u8; 32]) -> TicketMeta<'a> {
        TicketMeta {
            engine,
            id_hash,
            hash: HashAlg::Sha256,
            cipher_suite: 0x1301,
            issued_at: 10,
            expires_at: 20,
            max_early_data: 0,
            server_name: Some("example.com"),
        }
    }

    /// One registration per engine past the gate: another engine passes at once, the same
    /// engine waits for the turn to end, or fails as busy past its timeout.
    #[test]
    fn engine_gates() {
        let gates = Arc::new(EngineGates::default());
        let a = gates.enter("engine-a", Duration::ZERO).unwrap();
        let b = gates.enter("engine-b", Duration::ZERO).unwrap();
        let err = gates
            .enter("engine-a", Duration::from_millis(20))
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Busy(_)), "{err}");
        let waiter = {
            let gates = gates.clone();
            std::thread::spawn(move || {
                gates
                    .enter("engine-a", Duration::from_secs(60))
                    .map(|_turn| ())
            })
        };
        while gates.waiting() == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(a);
        waiter.join().unwrap().unwrap();
        drop(b);
        assert!(gates.is_empty());
    }

    #[test]
    fn ticket_aad_binds_engine_identity_and_metadata() {
        let h = identity_hash(b"ticket");
        let base = ticket_aad(&meta("engine-a", &h));
        assert_ne!(base, ticket_aad(&meta("engine-b", &h)));
        assert_ne!(
            base,
            ticket_aad(&meta("engine-a", &identity_hash(b"other")))
        );
        let mut m = meta("engine-a", &h);
        m.expires_at = 21;
        assert_ne!(base, ticket_aad(&m));
        let mut m = meta("engine-a", &h);
        m.server_name = None;
        assert_ne!(base, ticket_aad(&m));
        // Length prefixes: moving a byte between engine and server name changes the AAD.
        let mut m = meta("engine-ae", &h);
        m.server_name = Some("xample.com");
        assert_ne!(base, ticket_aad(&m));
    }

    #[test]
    fn external_aad_binds_allowed_engines() {
        let h = identity_hash(b"ext");
        let a = external_psk_aad(&h, HashAlg::Sha256, &["a".into(), "b".into()]);
        assert_ne!(a, external_psk_aad(&h, HashAlg::Sha256, &["a".into()]));
        assert_ne!(a, external_psk_aad(&h, HashAlg::Sha256, &["ab".into()]));
        assert_ne!(
            a,
            external_psk_aad(&h, HashAlg::Sha384, &["a".into(), "b".into()])
        );
    }

    #[test]
    fn debug_never_shows_the_psk() {
        let psk = vec![0xAB; 32];
        let t = StoredTicket {
            psk: Zeroizing::new(psk.clone()),
            hash: HashAlg::Sha256,
            cipher_suite: 0x1301,
            max_early_data: 0,
            server_name: None,
            issued_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH,
        };
        let n = NewTicket {
            identity: b"id".to_vec(),
            psk: Zeroizing::new(psk.clone()),
            hash: HashAlg::Sha256,
            cipher_suite: 0x1301,
            lifetime_secs: 1,
            max_early_data: 0,
            server_name: None,
        };
        let e = ExternalPsk {
            identity: b"id".to_vec(),
            psk: Zeroizing::new(psk),
            hash: HashAlg::Sha256,
            allowed_engines: vec![],
        };
        for s in [format!("{t:?}"), format!("{n:?}"), format!("{e:?}")] {
            assert!(s.contains("redacted"), "{s}");
            assert!(!s.to_lowercase().contains("ab, ab"), "{s}");
            assert!(!s.contains("171"), "{s}");
        }
    }
}
