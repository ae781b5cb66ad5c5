//! [`SqliteStore`]: the ticket store in one SQLite file (rusqlite, bundled SQLite).
//!
//! - The file is created with mode 0600 (an existing file with wider permissions is narrowed,
//!   with a warning); SQLite gives its `-wal` and `-shm` files the same mode.
//! - `journal_mode=WAL`, `synchronous=NORMAL` (a crash may lose the last tickets registered,
//!   never corrupt the file: a lost ticket only costs a full handshake), `secure_delete=ON`
//!   (freed pages are zeroed, so consumed tickets' sealed blobs do not linger), busy timeout.
//! - A `schema_version` table: an empty file gets schema v1; any other version, or a file
//!   holding other tables, is refused with `StoreError::Schema`.
//! - Sealed blobs are versioned: one format byte ([`BLOB_V1`]) before the sealer's output.
//! - One connection behind a `Mutex`: every operation is a short transaction, and the
//!   service already serialises them through `spawn_blocking`. Enough for one CS (thousands
//!   of operations per second); a pool of WAL readers would only speed up lookups, and
//!   `take_ticket` writes anyway. Statements are cached per connection (`prepare_cached`).
//! - Token calls: `put_*` seals before taking the lock; `take_ticket` unseals *inside* its
//!   transaction, so that a token failure can leave the row in place while a forged or
//!   corrupt row is deleted, and two concurrent takes can never both succeed.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use zeroize::Zeroizing;

use super::{
    check_engine, check_identity, external_psk_aad, from_unix_secs, hash_code, hash_from_code,
    identity_hash, ticket_aad, unix_secs, ExternalPsk, ExternalPskInfo, NewTicket, Sealer,
    StoredTicket, TicketMeta, TicketStore, MAX_TICKET_LIFETIME_SECS, SCHEMA_VERSION,
};
use crate::config::StoreConfig;
use crate::error::{StoreError, TokenError};

/// Format byte of a stored sealed blob (before the sealer's own output).
pub const BLOB_V1: u8 = 1;

/// How long a writer waits for another process holding the file (a second CS on the same
/// file, an administrator's `sqlite3`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of an external PSK (RFC 9257 §4: at least 128 bits of entropy).
const MIN_EXTERNAL_PSK_LEN: usize = 16;
const MAX_EXTERNAL_PSK_LEN: usize = 1024;

const SCHEMA_V1: &str = "
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE tickets (
    engine         TEXT    NOT NULL,
    id_hash        BLOB    NOT NULL,  -- SHA-256 of the ticket identity
    hash_alg       INTEGER NOT NULL,  -- 1 = SHA-256, 2 = SHA-384
    cipher_suite   INTEGER NOT NULL,
    issued_at      INTEGER NOT NULL,  -- Unix seconds
    expires_at     INTEGER NOT NULL,  -- Unix seconds, exclusive
    max_early_data INTEGER NOT NULL,
    server_name    TEXT,
    sealed         BLOB    NOT NULL,  -- BLOB_V1 || Sealer output; AAD: store::ticket_aad
    PRIMARY KEY (engine, id_hash)
) WITHOUT ROWID;
CREATE INDEX tickets_expires_at ON tickets (expires_at);
CREATE TABLE external_psks (
    id_hash         BLOB    NOT NULL PRIMARY KEY,
    identity        BLOB    NOT NULL,
    hash_alg        INTEGER NOT NULL,
    allowed_engines TEXT    NOT NULL,  -- sorted, newline-separated; empty = all engines
    created_at      INTEGER NOT NULL,
    sealed          BLOB    NOT NULL   -- BLOB_V1 || Sealer output; AAD: store::external_psk_aad
) WITHOUT ROWID;
";

type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// The SQLite ticket store. See the module documentation.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Rows per engine, so that the per-engine cap needs no `count(*)` over the engine's
    /// rows on every registration. Locked only with `conn` held (order: `conn`, `counts`).
    counts: Mutex<RowCounts>,
    sealer: Arc<dyn Sealer>,
    path: PathBuf,
    lifetime_cap_secs: u64,
    max_tickets_per_engine: u32,
    clock: Clock,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("lifetime_cap_secs", &self.lifetime_cap_secs)
            .field("max_tickets_per_engine", &self.max_tickets_per_engine)
            .finish_non_exhaustive()
    }
}

/// Ticket rows per engine (expired ones included), as of `data_version`: SQLite changes that
/// value when another connection (an administrator's `sqlite3`, another process) commits, and
/// then the counts are dropped and read again. Our own commits keep them exact.
#[derive(Default)]
struct RowCounts {
    data_version: Option<i64>,
    by_engine: std::collections::HashMap<String, i64>,
}

/// A ticket row as read, before unsealing.
struct TicketRow {
    hash_alg: i64,
    cipher_suite: i64,
    issued_at: i64,
    expires_at: i64,
    max_early_data: i64,
    server_name: Option<String>,
    sealed: Vec<u8>,
}

impl SqliteStore {
    /// Opens the store at `cfg.path`.
    pub fn from_config(cfg: &StoreConfig, sealer: Arc<dyn Sealer>) -> Result<Self, StoreError> {
        Self::open(&cfg.path, sealer, cfg)
    }

    /// Opens (creating it if needed) the store at `path`; `cfg` gives the limits (its `path`
    /// is not used). The parent directory must exist.
    pub fn open(
        path: &Path,
        sealer: Arc<dyn Sealer>,
        cfg: &StoreConfig,
    ) -> Result<Self, StoreError> {
        create_private_file(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other(format!(
                "{}: cannot enable WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        init_schema(&mut conn)?;

        let store = Self {
            conn: Mutex::new(conn),
            counts: Mutex::new(RowCounts::default()),
            sealer,
            path: path.to_owned(),
            lifetime_cap_secs: cfg.ticket_lifetime_secs.min(MAX_TICKET_LIFETIME_SECS),
            max_tickets_per_engine: cfg.max_tickets_per_engine,
            clock: Box::new(SystemTime::now),
        };
        let purged = store.purge_expired(store.now_time())?;
        tracing::info!(path = %path.display(), purged, "ticket store open");
        Ok(store)
    }

    /// Replaces the clock (tests of expiry; the service's tests may use it too). `open`
    /// itself purges expired tickets with the system clock.
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn now_time(&self) -> SystemTime {
        (self.clock)()
    }

    fn now(&self) -> u64 {
        unix_secs(self.now_time())
    }

    /// The connection. A panic while it was held cannot leave a transaction open (dropping
    /// a `Transaction` rolls it back), so a poisoned lock is safe to take over.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Unseals a versioned blob.
    fn unseal(&self, aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        match blob.split_first() {
            Some((&BLOB_V1, sealed)) => Ok(self.sealer.unseal(aad, sealed)?),
            Some((v, _)) => Err(StoreError::Corrupt(format!(
                "unknown sealed blob format {v}"
            ))),
            None => Err(StoreError::Corrupt("empty sealed blob".into())),
        }
    }

    fn seal(&self, aad: &[u8], psk: &[u8]) -> Result<Vec<u8>, StoreError> {
        let sealed = self.sealer.seal(aad, psk)?;
        let mut blob = Vec::with_capacity(1 + sealed.len());
        blob.push(BLOB_V1);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Checks and unseals a ticket row.
    fn open_ticket(
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
}

impl TicketStore for SqliteStore {
    fn put_ticket(&self, engine: &str, ticket: NewTicket) -> Result<(), StoreError> {
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
            return Ok(());
        }
        let now = self.now();
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
        // The token call happens before the lock is taken.
        let blob = self.seal(&aad, &ticket.psk)?;

        let mut conn = self.conn();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if counts.data_version != Some(version) {
            counts.by_engine.clear();
            counts.data_version = Some(version);
        }
        let known = counts.by_engine.remove(engine);
        // Expired tickets neither count nor stay. Through the expiry index: the primary
        // key would visit every row of the engine.
        let expired = tx
            .prepare_cached(
                "DELETE FROM tickets INDEXED BY tickets_expires_at
                 WHERE expires_at <= ?2 AND engine = ?1",
            )?
            .execute(params![engine, sql_int(now)])?;
        let total: i64 = match known {
            Some(n) => n - expired as i64,
            None => tx
                .prepare_cached("SELECT count(*) FROM tickets WHERE engine = ?1")?
                .query_row(params![engine], |r| r.get(0))?,
        };
        // Re-registering an identity replaces it, so it does not count against the cap.
        let exists: i64 = tx
            .prepare_cached("SELECT count(*) FROM tickets WHERE engine = ?1 AND id_hash = ?2")?
            .query_row(params![engine, &id_hash[..]], |r| r.get(0))?;
        let live = total - exists;
        let cap = self.max_tickets_per_engine;
        if live >= i64::from(cap) {
            // Keep the purge; nothing else was changed.
            tx.commit()?;
            counts.by_engine.insert(engine.to_owned(), total);
            tracing::warn!(engine, cap, "ticket refused: per-engine cap reached");
            return Err(StoreError::TooManyTickets {
                engine: engine.to_owned(),
                cap,
            });
        }
        tx.prepare_cached(
            "INSERT INTO tickets (engine, id_hash, hash_alg, cipher_suite, issued_at, expires_at,
                                  max_early_data, server_name, sealed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (engine, id_hash) DO UPDATE SET
                hash_alg = excluded.hash_alg, cipher_suite = excluded.cipher_suite,
                issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                max_early_data = excluded.max_early_data, server_name = excluded.server_name,
                sealed = excluded.sealed",
        )?
        .execute(params![
            engine,
            &id_hash[..],
            hash_code(ticket.hash),
            ticket.cipher_suite,
            sql_int(now),
            sql_int(expires_at),
            ticket.max_early_data,
            ticket.server_name,
            blob,
        ])?;
        tx.commit()?;
        counts
            .by_engine
            .insert(engine.to_owned(), total + 1 - exists);
        Ok(())
    }

    fn take_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<StoredTicket>, StoreError> {
        check_engine(engine)?;
        if check_identity(identity).is_err() {
            return Ok(None);
        }
        let id_hash = identity_hash(identity);
        let now = self.now();

        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = tx
            .prepare_cached(
                "SELECT hash_alg, cipher_suite, issued_at, expires_at, max_early_data,
                        server_name, sealed
                 FROM tickets WHERE engine = ?1 AND id_hash = ?2",
            )?
            .query_row(params![engine, &id_hash[..]], |r| {
                Ok(TicketRow {
                    hash_alg: r.get(0)?,
                    cipher_suite: r.get(1)?,
                    issued_at: r.get(2)?,
                    expires_at: r.get(3)?,
                    max_early_data: r.get(4)?,
                    server_name: r.get(5)?,
                    sealed: r.get(6)?,
                })
            })
            .optional()?;
        let Some(row) = row else {
            return Ok(None);
        };
        let result = if row.expires_at <= sql_int(now) {
            Ok(None)
        } else {
            self.open_ticket(engine, &id_hash, &row).map(Some)
        };
        match &result {
            // The token could not answer: keep the ticket for a later attempt.
            Err(StoreError::Seal(e)) if !matches!(e, TokenError::Unseal) => return result,
            Err(e) => {
                tracing::warn!(engine, error = %e, "stored ticket rejected and deleted");
            }
            Ok(_) => {}
        }
        // Used, expired, forged or corrupt: in every case the row goes.
        let deleted = tx
            .prepare_cached("DELETE FROM tickets WHERE engine = ?1 AND id_hash = ?2")?
            .execute(params![engine, &id_hash[..]])?;
        tx.commit()?;
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.by_engine.get_mut(engine) {
            *n -= deleted as i64;
        }
        result
    }

    fn count_tickets(&self, engine: &str) -> Result<u64, StoreError> {
        let now = self.now();
        let n: i64 = self
            .conn()
            .prepare_cached("SELECT count(*) FROM tickets WHERE engine = ?1 AND expires_at > ?2")?
            .query_row(params![engine, sql_int(now)], |r| r.get(0))?;
        int(n, "count")
    }

    fn purge_expired(&self, now: SystemTime) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM tickets WHERE expires_at <= ?1")?
            .execute(params![sql_int(unix_secs(now))])?;
        if n > 0 {
            // Rows of any engine went: count again when needed.
            self.counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_engine
                .clear();
        }
        Ok(n as u64)
    }

    fn put_external_psk(&self, psk: ExternalPsk) -> Result<(), StoreError> {
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
        let blob = self.seal(&external_psk_aad(&id_hash, psk.hash, &allowed), &psk.psk)?;
        let now = self.now();
        self.conn()
            .prepare_cached(
                "INSERT INTO external_psks (id_hash, identity, hash_alg, allowed_engines,
                                            created_at, sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id_hash) DO UPDATE SET
                    identity = excluded.identity, hash_alg = excluded.hash_alg,
                    allowed_engines = excluded.allowed_engines,
                    created_at = excluded.created_at, sealed = excluded.sealed",
            )?
            .execute(params![
                &id_hash[..],
                psk.identity,
                hash_code(psk.hash),
                allowed.join("\n"),
                sql_int(now),
                blob,
            ])?;
        Ok(())
    }

    fn get_external_psk(
        &self,
        engine: Option<&str>,
        identity: &[u8],
    ) -> Result<Option<ExternalPsk>, StoreError> {
        if check_identity(identity).is_err() {
            return Ok(None);
        }
        let id_hash = identity_hash(identity);
        let row = self
            .conn()
            .prepare_cached(
                "SELECT identity, hash_alg, allowed_engines, sealed
                 FROM external_psks WHERE id_hash = ?1",
            )?
            .query_row(params![&id_hash[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .optional()?;
        // The lock is released: the token call below does not hold up other requests.
        let Some((stored_identity, hash_alg, allowed, sealed)) = row else {
            return Ok(None);
        };
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

    fn delete_external_psk(&self, identity: &[u8]) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .prepare_cached("DELETE FROM external_psks WHERE id_hash = ?1")?
            .execute(params![&identity_hash(identity)[..]])?;
        Ok(n > 0)
    }

    fn list_external_psks(&self) -> Result<Vec<ExternalPskInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT identity, hash_alg, allowed_engines FROM external_psks ORDER BY identity",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (identity, hash_alg, allowed) = row?;
            out.push(ExternalPskInfo {
                identity,
                hash: hash_from_code(hash_alg)?,
                allowed_engines: split_engines(&allowed),
            });
        }
        Ok(out)
    }
}

/// Creates `path` with mode 0600 if it does not exist; narrows an existing file's mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    let mode = file.metadata().map_err(io_err)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "ticket store readable by others: narrowing to 0600"
        );
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    Ok(())
}

/// Creates schema v1 in an empty file, or checks the version of an existing one.
fn init_schema(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new file at once do not both create the schema.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let has_version: i64 = tx.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if has_version == 0 {
        let objects: i64 = tx.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )?;
        if objects > 0 {
            // Some other database: not ours to touch.
            return Err(StoreError::Schema {
                found: 0,
                expected: SCHEMA_VERSION,
            });
        }
        tx.execute_batch(SCHEMA_V1)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![SCHEMA_VERSION],
        )?;
        tx.commit()?;
        tracing::info!(version = SCHEMA_VERSION, "ticket store schema created");
        return Ok(());
    }
    let versions: Vec<i64> = tx
        .prepare("SELECT version FROM schema_version")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    match versions.as_slice() {
        [v] if *v == SCHEMA_VERSION => Ok(()),
        [v] => Err(StoreError::Schema {
            found: *v,
            expected: SCHEMA_VERSION,
        }),
        _ => Err(StoreError::Corrupt(format!(
            "schema_version holds {} rows, expected 1",
            versions.len()
        ))),
    }
}

fn split_engines(s: &str) -> Vec<String> {
    s.split('\n')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// SQLite integers are i64; our times are far below its limit.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn int<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} out of range: {v}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;

    use lurk_proto::wire::HashAlg;
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
    use ring::rand::{SecureRandom, SystemRandom};

    use super::*;

    /// Software AES-256-GCM with a random key: a test double for these unit tests only. The
    /// real sealer (the PKCS#11 token's AES key) is tested with the token.
    struct TestSealer {
        key: LessSafeKey,
        rng: SystemRandom,
        /// Number of upcoming `unseal` calls that fail as if the token were unavailable.
        fail_unseal: AtomicUsize,
    }

    impl TestSealer {
        fn new() -> Arc<Self> {
            let rng = SystemRandom::new();
            let mut key = Zeroizing::new([0u8; 32]);
            rng.fill(&mut key[..]).unwrap();
            Arc::new(Self {
                key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key[..]).unwrap()),
                rng,
                fail_unseal: AtomicUsize::new(0),
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

    fn cfg(max: u32, lifetime: u64) -> StoreConfig {
        StoreConfig {
            path: PathBuf::from("unused"),
            ticket_lifetime_secs: lifetime,
            max_tickets_per_engine: max,
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        sealer: Arc<TestSealer>,
        now: Arc<AtomicU64>,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                sealer: TestSealer::new(),
                // `open` purges with the system clock: start the test clock there.
                now: Arc::new(AtomicU64::new(unix_secs(SystemTime::now()))),
            }
        }
        fn path(&self) -> PathBuf {
            self.dir.path().join("tickets.sqlite")
        }
        fn open_with(&self, c: &StoreConfig) -> Result<SqliteStore, StoreError> {
            let now = self.now.clone();
            Ok(SqliteStore::open(&self.path(), self.sealer.clone(), c)?
                .with_clock(move || UNIX_EPOCH + Duration::from_secs(now.load(Ordering::SeqCst))))
        }
        fn open(&self) -> SqliteStore {
            self.open_with(&cfg(64, MAX_TICKET_LIFETIME_SECS)).unwrap()
        }
        fn advance(&self, secs: u64) {
            self.now.fetch_add(secs, Ordering::SeqCst);
        }
        fn raw(&self) -> Connection {
            Connection::open(self.path()).unwrap()
        }
    }

    fn random_psk(len: usize) -> Zeroizing<Vec<u8>> {
        let mut psk = Zeroizing::new(vec![0u8; len]);
        SystemRandom::new().fill(&mut psk).unwrap();
        psk
    }

    fn ticket(identity: &[u8], psk: &[u8]) -> NewTicket {
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

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn round_trip() {
        let f = Fixture::new();
        let s = f.open();
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
    }

    #[test]
    fn take_deletes_the_ticket() {
        let f = Fixture::new();
        let s = f.open();
        s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
            .unwrap();
        assert!(s.take_ticket("engine-a", b"t").unwrap().is_some());
        assert!(s.take_ticket("engine-a", b"t").unwrap().is_none());
        let rows: i64 = f
            .raw()
            .query_row("SELECT count(*) FROM tickets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[test]
    fn the_file_never_holds_a_psk_in_clear() {
        let f = Fixture::new();
        let s = f.open();
        let psks: Vec<_> = (0..5).map(|_| random_psk(48)).collect();
        for (i, psk) in psks.iter().enumerate() {
            let mut t = ticket(format!("ticket-{i}").as_bytes(), psk);
            t.hash = HashAlg::Sha384;
            s.put_ticket("engine-a", t).unwrap();
        }
        let ext = random_psk(32);
        s.put_external_psk(ExternalPsk {
            identity: b"ext".to_vec(),
            psk: ext.clone(),
            hash: HashAlg::Sha256,
            allowed_engines: vec![],
        })
        .unwrap();
        // Consume one: secure_delete must not leave it behind either.
        s.take_ticket("engine-a", b"ticket-0").unwrap().unwrap();

        let files = |f: &Fixture| -> Vec<Vec<u8>> {
            ["", "-wal", "-shm"]
                .iter()
                .filter_map(|suffix| {
                    let p = format!("{}{suffix}", f.path().display());
                    fs::read(p).ok()
                })
                .collect()
        };
        let check = |contents: Vec<Vec<u8>>| {
            assert!(!contents.is_empty());
            for bytes in contents {
                for psk in psks.iter().chain([&ext]) {
                    assert!(!contains(&bytes, &psk[..16]), "PSK found in clear");
                }
            }
        };
        // While open (data in the WAL) ...
        let wal = fs::read(format!("{}-wal", f.path().display())).unwrap();
        assert!(!wal.is_empty(), "WAL expected");
        check(files(&f));
        // ... and after close (checkpointed into the main file).
        drop(s);
        check(files(&f));
    }

    #[test]
    fn files_are_private() {
        let f = Fixture::new();
        let s = f.open();
        s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
            .unwrap();
        for suffix in ["", "-wal"] {
            let p = format!("{}{suffix}", f.path().display());
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{p}");
        }
        drop(s);
        // A file someone made world-readable is narrowed on open.
        fs::set_permissions(f.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let _s = f.open();
        let mode = fs::metadata(f.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_ticket_survives_reopening() {
        let f = Fixture::new();
        let psk = random_psk(32);
        {
            let s = f.open();
            s.put_ticket("engine-a", ticket(b"persist", &psk)).unwrap();
        }
        let s = f.open();
        assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
        let t = s.take_ticket("engine-a", b"persist").unwrap().unwrap();
        assert_eq!(&t.psk[..], &psk[..]);
    }

    #[test]
    fn another_engine_cannot_take_a_ticket() {
        let f = Fixture::new();
        let s = f.open();
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

    #[test]
    fn a_row_moved_to_another_engine_or_identity_does_not_unseal() {
        let f = Fixture::new();
        let s = f.open();
        s.put_ticket("engine-a", ticket(b"id-1", &random_psk(32)))
            .unwrap();
        f.raw()
            .execute("UPDATE tickets SET engine = 'engine-b'", [])
            .unwrap();
        assert!(matches!(
            s.take_ticket("engine-b", b"id-1"),
            Err(StoreError::Seal(TokenError::Unseal))
        ));

        s.put_ticket("engine-a", ticket(b"id-2", &random_psk(32)))
            .unwrap();
        let other = identity_hash(b"id-3");
        f.raw()
            .execute("UPDATE tickets SET id_hash = ?1", params![&other[..]])
            .unwrap();
        assert!(matches!(
            s.take_ticket("engine-a", b"id-3"),
            Err(StoreError::Seal(TokenError::Unseal))
        ));

        // Extending the lifetime in the file is detected too.
        s.put_ticket("engine-a", ticket(b"id-4", &random_psk(32)))
            .unwrap();
        f.raw()
            .execute("UPDATE tickets SET expires_at = expires_at + 100000", [])
            .unwrap();
        assert!(matches!(
            s.take_ticket("engine-a", b"id-4"),
            Err(StoreError::Seal(TokenError::Unseal))
        ));
    }

    #[test]
    fn expiry_uses_the_smaller_lifetime_and_never_returns_expired_tickets() {
        let f = Fixture::new();
        let s = f.open_with(&cfg(64, 100)).unwrap();
        let mut t = ticket(b"short", &random_psk(32));
        t.lifetime_secs = 1000; // the configured cap (100) wins
        s.put_ticket("engine-a", t).unwrap();
        let mut t = ticket(b"shorter", &random_psk(32));
        t.lifetime_secs = 10; // the server's lifetime wins
        s.put_ticket("engine-a", t).unwrap();

        f.advance(10);
        assert!(s.take_ticket("engine-a", b"shorter").unwrap().is_none());
        assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
        f.advance(89);
        assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
        f.advance(1);
        assert_eq!(s.count_tickets("engine-a").unwrap(), 0);
        assert!(s.take_ticket("engine-a", b"short").unwrap().is_none());
        assert_eq!(
            f.raw()
                .query_row("SELECT count(*) FROM tickets", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            0
        );

        // Lifetime 0: not cached at all.
        let mut t = ticket(b"zero", &random_psk(32));
        t.lifetime_secs = 0;
        s.put_ticket("engine-a", t).unwrap();
        assert!(s.take_ticket("engine-a", b"zero").unwrap().is_none());
    }

    #[test]
    fn purge_expired_deletes_only_expired_tickets() {
        let f = Fixture::new();
        let s = f.open();
        for (id, life) in [(&b"a"[..], 10), (b"b", 20), (b"c", 30)] {
            let mut t = ticket(id, &random_psk(32));
            t.lifetime_secs = life;
            s.put_ticket("engine-a", t).unwrap();
        }
        let now = UNIX_EPOCH + Duration::from_secs(f.now.load(Ordering::SeqCst) + 20);
        assert_eq!(s.purge_expired(now).unwrap(), 2);
        f.advance(20);
        assert!(s.take_ticket("engine-a", b"c").unwrap().is_some());
    }

    #[test]
    fn the_cap_refuses_new_tickets_and_keeps_the_old_ones() {
        let f = Fixture::new();
        let s = f.open_with(&cfg(3, 3600)).unwrap();
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
        // Re-registering an existing identity is a replacement, not a new ticket.
        s.put_ticket("engine-a", ticket(&[1], &psks[0])).unwrap();
        assert_eq!(s.count_tickets("engine-a").unwrap(), 3);
        for (i, psk) in psks.iter().enumerate() {
            let t = s.take_ticket("engine-a", &[i as u8 + 1]).unwrap().unwrap();
            assert_eq!(&t.psk[..], &psk[..]);
        }
    }

    #[test]
    fn the_cap_follows_changes_made_by_another_connection() {
        let f = Fixture::new();
        let s = f.open_with(&cfg(2, 3600)).unwrap();
        s.put_ticket("engine-a", ticket(b"1", &random_psk(32)))
            .unwrap();
        s.put_ticket("engine-a", ticket(b"2", &random_psk(32)))
            .unwrap();
        assert!(matches!(
            s.put_ticket("engine-a", ticket(b"3", &random_psk(32))),
            Err(StoreError::TooManyTickets { .. })
        ));
        // Re-registering a stored identity is not a new ticket.
        s.put_ticket("engine-a", ticket(b"2", &random_psk(32)))
            .unwrap();
        // An administrator deletes a row with sqlite3: the cached count is dropped.
        f.raw()
            .execute("DELETE FROM tickets WHERE engine = 'engine-a'", [])
            .unwrap();
        s.put_ticket("engine-a", ticket(b"3", &random_psk(32)))
            .unwrap();
        s.put_ticket("engine-a", ticket(b"4", &random_psk(32)))
            .unwrap();
        assert!(matches!(
            s.put_ticket("engine-a", ticket(b"5", &random_psk(32))),
            Err(StoreError::TooManyTickets { .. })
        ));
        // A ticket taken frees its place.
        assert!(s.take_ticket("engine-a", b"3").unwrap().is_some());
        s.put_ticket("engine-a", ticket(b"5", &random_psk(32)))
            .unwrap();
        assert_eq!(s.count_tickets("engine-a").unwrap(), 2);
    }

    #[test]
    fn expired_tickets_do_not_count_against_the_cap() {
        let f = Fixture::new();
        let s = f.open_with(&cfg(2, 3600)).unwrap();
        s.put_ticket("engine-a", ticket(b"1", &random_psk(32)))
            .unwrap();
        s.put_ticket("engine-a", ticket(b"2", &random_psk(32)))
            .unwrap();
        f.advance(3600);
        s.put_ticket("engine-a", ticket(b"3", &random_psk(32)))
            .unwrap();
        let rows: i64 = f
            .raw()
            .query_row("SELECT count(*) FROM tickets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "expired tickets are purged when registering");
    }

    #[test]
    fn a_tampered_blob_is_reported_and_deleted() {
        let f = Fixture::new();
        let s = f.open();
        s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
            .unwrap();
        let raw = f.raw();
        let mut blob: Vec<u8> = raw
            .query_row("SELECT sealed FROM tickets", [], |r| r.get(0))
            .unwrap();
        blob[20] ^= 0x01;
        raw.execute("UPDATE tickets SET sealed = ?1", params![blob])
            .unwrap();
        assert!(matches!(
            s.take_ticket("engine-a", b"t"),
            Err(StoreError::Seal(TokenError::Unseal))
        ));
        assert!(s.take_ticket("engine-a", b"t").unwrap().is_none());
        // An unknown blob format is corrupt, and deleted too.
        s.put_ticket("engine-a", ticket(b"u", &random_psk(32)))
            .unwrap();
        f.raw()
            .execute(
                "UPDATE tickets SET sealed = CAST(X'02' || substr(sealed, 2) AS BLOB)",
                [],
            )
            .unwrap();
        assert!(matches!(
            s.take_ticket("engine-a", b"u"),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(s.count_tickets("engine-a").unwrap(), 0);
    }

    #[test]
    fn a_token_failure_keeps_the_ticket() {
        let f = Fixture::new();
        let s = f.open();
        let psk = random_psk(32);
        s.put_ticket("engine-a", ticket(b"t", &psk)).unwrap();
        f.sealer.fail_unseal.store(1, Ordering::SeqCst);
        assert!(matches!(
            s.take_ticket("engine-a", b"t"),
            Err(StoreError::Seal(TokenError::Pkcs11 { .. }))
        ));
        let t = s.take_ticket("engine-a", b"t").unwrap().unwrap();
        assert_eq!(&t.psk[..], &psk[..]);
    }

    #[test]
    fn an_unknown_schema_is_refused() {
        let f = Fixture::new();
        drop(f.open());
        f.raw()
            .execute("UPDATE schema_version SET version = 2", [])
            .unwrap();
        assert!(matches!(
            f.open_with(&cfg(1, 1)),
            Err(StoreError::Schema {
                found: 2,
                expected: 1
            })
        ));

        // A database that is not ours at all.
        let other = f.dir.path().join("other.sqlite");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER);")
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&other, f.sealer.clone(), &cfg(1, 1)),
            Err(StoreError::Schema { found: 0, .. })
        ));
    }

    #[test]
    fn invalid_tickets_are_refused() {
        let f = Fixture::new();
        let s = f.open();
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

    #[test]
    fn concurrent_puts_from_eight_threads() {
        let f = Fixture::new();
        let s = Arc::new(f.open_with(&cfg(1000, 3600)).unwrap());
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

    #[test]
    fn a_ticket_is_taken_once_under_concurrency() {
        let f = Fixture::new();
        let s = Arc::new(f.open());
        for round in 0..20u8 {
            s.put_ticket("engine-a", ticket(&[round], &random_psk(32)))
                .unwrap();
            let winners: usize = (0..4)
                .map(|_| {
                    let s = s.clone();
                    std::thread::spawn(move || s.take_ticket("engine-a", &[round]).unwrap())
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| usize::from(h.join().unwrap().is_some()))
                .sum();
            assert_eq!(winners, 1);
        }
    }

    #[test]
    fn external_psks() {
        let f = Fixture::new();
        let s = f.open();
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

        // Widening the allowed engines in the file does not grant access.
        f.raw()
            .execute(
                "UPDATE external_psks SET allowed_engines = 'engine-a\nengine-b\nengine-c'
                 WHERE identity = X'72657374726963746564'",
                [],
            )
            .unwrap();
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

    #[test]
    fn the_store_is_usable_as_a_trait_object() {
        let f = Fixture::new();
        let s: Arc<dyn TicketStore> = Arc::new(f.open());
        s.put_ticket("engine-a", ticket(b"t", &random_psk(32)))
            .unwrap();
        assert_eq!(s.count_tickets("engine-a").unwrap(), 1);
        assert!(format!("{:?}", f.open()).contains("tickets.sqlite"));
    }
}
