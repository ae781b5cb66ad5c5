//! [`SqliteStore`]: the ticket store in one SQLite file (rusqlite, bundled SQLite).
//!
//! - The file is created with mode 0600 (an existing file with wider permissions is narrowed,
//!   with a warning); SQLite gives its `-wal` and `-shm` files the same mode.
//! - `journal_mode=WAL`, `synchronous=NORMAL` (a crash may lose the last tickets registered,
//!   never corrupt the file: a lost ticket only costs a full handshake), `secure_delete=ON`
//!   (freed pages are zeroed, so consumed tickets' sealed blobs do not linger), busy timeout.
//! - A `schema_version` table: an empty file gets the latest schema, a v1 or v2 file is
//!   migrated (v2: tombstones, key check value; v3: an index of each engine's
//!   tombstones); any other version, or a file holding other tables, is refused with
//!   `StoreError::Schema`.
//! - Sealed blobs are versioned: one format byte ([`BLOB_V1`]) before the sealer's output.
//! - One connection behind a `Mutex`: every operation is a short transaction, and the
//!   service already serialises them through `spawn_blocking`. Enough for one CS (thousands
//!   of operations per second); a pool of WAL readers would only speed up lookups, and
//!   `take_ticket` writes anyway. Statements are cached per connection (`prepare_cached`).
//! - Token calls never hold the lock: `put_*` seals before taking it; `take_ticket` reads the
//!   row, unseals it, then deletes that same row (matched by its sealed blob) with its
//!   tombstone in one transaction. A token failure leaves the row in place, a forged or
//!   corrupt row is deleted, and of two concurrent takes only the one whose delete removed
//!   the row gets the ticket.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    hash_from_code, identity_hash, int, log_refusal, lookup_key, split_engines, sql_int,
    tombstone_excess, unix_secs, EngineGates, ExternalPsk, ExternalPskInfo, ExternalPsks,
    NewTicket, Sealer, Sealing, StoredTicket, TicketBinding, TicketRow, Tickets,
};
use crate::config::StoreConfig;
use crate::error::{StoreError, TokenError};

/// Version of the SQLite schema this code writes.
pub(super) const SCHEMA_VERSION: i64 = 3;

/// How long a writer waits for another process holding the file (a second CS on the same
/// file, an administrator's `sqlite3`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// v1 → v2: tombstones of consumed tickets, and the sealing key's check value.
const SCHEMA_V2: &str = "
CREATE TABLE consumed_tickets (
    engine     TEXT    NOT NULL,
    id_hash    BLOB    NOT NULL,
    expires_at INTEGER NOT NULL,  -- the consumed ticket's expiry
    PRIMARY KEY (engine, id_hash)
) WITHOUT ROWID;
CREATE INDEX consumed_tickets_expires_at ON consumed_tickets (expires_at);
CREATE TABLE key_check (
    id         INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    sealed     BLOB    NOT NULL,  -- BLOB_V1 || Sealer output of a constant
    created_at INTEGER NOT NULL
);
";

/// v2 → v3: an engine's oldest tombstones found through an index (the room made at each
/// registration of an engine at its bound), not by sorting all of them.
const SCHEMA_V3: &str = "
CREATE INDEX consumed_tickets_engine_expires_at ON consumed_tickets (engine, expires_at);
";

/// The migrations from v1, in order: (version reached, SQL).
const MIGRATIONS: &[(i64, &str)] = &[(2, SCHEMA_V2), (3, SCHEMA_V3)];

type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// The SQLite ticket store. See the module documentation.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Rows per engine, so that the per-engine cap needs no `count(*)` over the engine's
    /// rows on every registration. Locked only with `conn` held (order: `conn`, `counts`).
    counts: Mutex<RowCounts>,
    /// One registration per engine at a time (store/mod.rs).
    gates: EngineGates,
    sealing: Sealing,
    path: PathBuf,
    max_tickets_per_engine: u32,
    max_tombstones: u64,
    clock: Clock,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("lifetime_cap_secs", &self.sealing.lifetime_cap_secs)
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
        let sealing = Sealing::new(sealer, cfg);
        check_sealing_key(&mut conn, &sealing, path)?;

        let store = Self {
            conn: Mutex::new(conn),
            counts: Mutex::new(RowCounts::default()),
            gates: EngineGates::default(),
            sealing,
            path: path.to_owned(),
            max_tickets_per_engine: cfg.max_tickets_per_engine,
            max_tombstones: cfg.max_tombstones,
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

    /// The database file.
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
}

impl Tickets for SqliteStore {
    fn put_tickets(&self, engine: &str, tickets: Vec<NewTicket>) -> Result<(), StoreError> {
        let now = self.now();
        // The token calls happen before the lock is taken.
        let mut sealed = Vec::with_capacity(tickets.len());
        for ticket in &tickets {
            sealed.extend(self.sealing.prepare_ticket(engine, ticket, now)?);
        }
        if sealed.is_empty() {
            return Ok(());
        }

        // One registration of this engine at a time: the others wait here, not in the
        // connection's queue in front of other engines' calls (store/mod.rs `EngineGates`).
        let _turn = self.gates.enter(engine, BUSY_TIMEOUT)?;
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
        // Taken out of the cache: put back only when the transaction commits.
        let known = counts.by_engine.remove(engine);
        // Expired tickets neither count nor stay. Through the expiry index: the primary
        // key would visit every row of the engine.
        let expired = tx
            .prepare_cached(
                "DELETE FROM tickets INDEXED BY tickets_expires_at
                 WHERE expires_at <= ?2 AND engine = ?1",
            )?
            .execute(params![engine, sql_int(now)])?;
        let mut total: i64 = match known {
            Some(n) => n - expired as i64,
            None => tx
                .prepare_cached("SELECT count(*) FROM tickets WHERE engine = ?1")?
                .query_row(params![engine], |r| r.get(0))?,
        };
        let cap = self.max_tickets_per_engine;
        // The engine's tombstones, counted at its first admitted ticket, then kept.
        let mut tombstones: Option<i64> = None;
        for t in &sealed {
            // A stored identity stays as it is: re-registering never extends a lifetime.
            let exists: i64 = tx
                .prepare_cached("SELECT count(*) FROM tickets WHERE engine = ?1 AND id_hash = ?2")?
                .query_row(params![engine, &t.id_hash[..]], |r| r.get(0))?;
            if exists > 0 {
                continue;
            }
            let consumed: i64 = tx
                .prepare_cached(
                    "SELECT count(*) FROM consumed_tickets
                     WHERE engine = ?1 AND id_hash = ?2 AND expires_at > ?3",
                )?
                .query_row(params![engine, &t.id_hash[..], sql_int(now)], |r| r.get(0))?;
            let refusal = if consumed > 0 {
                StoreError::TicketConsumed
            } else if total >= i64::from(cap) {
                StoreError::TooManyTickets {
                    engine: engine.to_owned(),
                    cap,
                }
            } else {
                // Room among the engine's tombstones, the oldest first (docs/design.md §4.10).
                let held = match tombstones {
                    Some(n) => n,
                    None => tx
                        .prepare_cached("SELECT count(*) FROM consumed_tickets WHERE engine = ?1")?
                        .query_row(params![engine], |r| r.get(0))?,
                };
                let excess = tombstone_excess(total + 1, held, cap);
                let purged = if excess > 0 {
                    tx.prepare_cached(
                        "DELETE FROM consumed_tickets WHERE engine = ?1 AND id_hash IN
                            (SELECT id_hash FROM consumed_tickets WHERE engine = ?1
                             ORDER BY expires_at, id_hash LIMIT ?2)",
                    )?
                    .execute(params![engine, excess])?
                } else {
                    0
                };
                tombstones = Some(held - purged as i64);
                tx.prepare_cached(
                    "INSERT INTO tickets (engine, id_hash, hash_alg, cipher_suite, issued_at,
                                          expires_at, max_early_data, server_name, sealed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    engine,
                    &t.id_hash[..],
                    t.hash_alg,
                    t.cipher_suite,
                    t.issued_at,
                    t.expires_at,
                    t.max_early_data,
                    t.server_name,
                    t.sealed,
                ])?;
                total += 1;
                continue;
            };
            // All or none: the transaction rolls back (the purge too).
            drop(tx);
            return log_refusal(engine, Some(refusal));
        }
        tx.commit()?;
        counts.by_engine.insert(engine.to_owned(), total);
        Ok(())
    }

    fn take_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<StoredTicket>, StoreError> {
        let Some(id_hash) = lookup_key(Some(engine), identity)? else {
            return Ok(None);
        };
        let now = self.now();
        // Read, unseal, then consume: no lock is held during the token call, which may wait
        // for a token session (other engines' store calls go on meanwhile).
        let row = self
            .conn()
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
            self.sealing.open_ticket(engine, &id_hash, &row).map(Some)
        };
        match &result {
            // The token could not answer: keep the ticket for a later attempt.
            Err(StoreError::Seal(e)) if !matches!(e, TokenError::Unseal) => return result,
            Err(e) => {
                tracing::warn!(engine, error = %e, "stored ticket rejected and deleted");
            }
            Ok(_) => {}
        }
        // Used, expired, forged or corrupt: in every case the row read above goes, if it is
        // still there (a concurrent take through another handle may have taken it).
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx
            .prepare_cached(
                "DELETE FROM tickets WHERE engine = ?1 AND id_hash = ?2 AND sealed = ?3",
            )?
            .execute(params![engine, &id_hash[..], &row.sealed])?;
        if deleted == 0 {
            return result.map(|_| None);
        }
        if matches!(result, Ok(Some(_))) {
            // The tombstone: this ticket is never stored again before its expiry.
            tx.prepare_cached(
                "INSERT INTO consumed_tickets (engine, id_hash, expires_at)
                 VALUES (?1, ?2, ?3)
                 ON CONFLICT (engine, id_hash) DO UPDATE
                    SET expires_at = max(expires_at, excluded.expires_at)",
            )?
            .execute(params![engine, &id_hash[..], row.expires_at])?;
        }
        // The cached count is lowered before the connection is let go: a registration in
        // between would count the rows again, and then be lowered twice.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        tx.commit()?;
        if let Some(n) = counts.by_engine.get_mut(engine) {
            *n -= deleted as i64;
        }
        drop(counts);
        drop(conn);
        result
    }

    fn peek_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<TicketBinding>, StoreError> {
        let Some(id_hash) = lookup_key(Some(engine), identity)? else {
            return Ok(None);
        };
        let now = self.now();
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT hash_alg, server_name FROM tickets
                 WHERE engine = ?1 AND id_hash = ?2 AND expires_at > ?3",
            )?
            .query_row(params![engine, &id_hash[..], sql_int(now)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()?;
        row.map(|(hash, server_name)| {
            Ok(TicketBinding {
                hash: hash_from_code(hash)?,
                server_name,
            })
        })
        .transpose()
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
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx
            .prepare_cached("DELETE FROM tickets WHERE expires_at <= ?1")?
            .execute(params![sql_int(unix_secs(now))])?;
        tx.prepare_cached("DELETE FROM consumed_tickets WHERE expires_at <= ?1")?
            .execute(params![sql_int(unix_secs(now))])?;
        let tombstones: i64 = tx
            .prepare_cached("SELECT count(*) FROM consumed_tickets")?
            .query_row([], |r| r.get(0))?;
        let excess = tombstones - sql_int(self.max_tombstones);
        if excess > 0 {
            tx.prepare_cached(
                "DELETE FROM consumed_tickets WHERE (engine, id_hash) IN
                    (SELECT engine, id_hash FROM consumed_tickets
                     ORDER BY expires_at, engine, id_hash LIMIT ?1)",
            )?
            .execute(params![excess])?;
            tracing::warn!(
                purged = excess,
                cap = self.max_tombstones,
                "tombstone cap reached: the oldest purged"
            );
        }
        tx.commit()?;
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

    fn ping(&self) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached("SELECT count(*) FROM key_check")?
            .query_row([], |r| r.get::<_, i64>(0))?;
        Ok(())
    }
}

impl ExternalPsks for SqliteStore {
    fn put_external_psk(&self, psk: ExternalPsk) -> Result<(), StoreError> {
        let p = self.sealing.prepare_external(&psk)?;
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
                &p.id_hash[..],
                p.identity,
                p.hash_alg,
                p.allowed_engines,
                sql_int(now),
                p.sealed,
            ])?;
        Ok(())
    }

    fn get_external_psk(
        &self,
        engine: Option<&str>,
        identity: &[u8],
    ) -> Result<Option<ExternalPsk>, StoreError> {
        let Some(id_hash) = lookup_key(None, identity)? else {
            return Ok(None);
        };
        let row = self
            .conn()
            .prepare_cached(
                "SELECT identity, hash_alg, allowed_engines, sealed
                 FROM external_psks WHERE id_hash = ?1",
            )?
            .query_row(params![&id_hash[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        // The lock is released: the token call below does not hold up other requests.
        match row {
            None => Ok(None),
            Some(row) => self.sealing.open_external(engine, identity, row),
        }
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

/// Creates the latest schema in an empty file, migrates a file of an earlier version, or
/// checks the version of an existing one.
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
        for (_, sql) in MIGRATIONS {
            tx.execute_batch(sql)?;
        }
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
        [v] if (1..SCHEMA_VERSION).contains(v) => {
            for (_, sql) in MIGRATIONS.iter().filter(|m| m.0 > *v) {
                tx.execute_batch(sql)?;
            }
            tx.execute(
                "UPDATE schema_version SET version = ?1",
                params![SCHEMA_VERSION],
            )?;
            tx.commit()?;
            tracing::info!(
                from = v,
                to = SCHEMA_VERSION,
                "ticket store schema migrated"
            );
            Ok(())
        }
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

/// Writes the key check value into a new store, or checks the stored one.
fn check_sealing_key(
    conn: &mut Connection,
    sealing: &Sealing,
    path: &Path,
) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = conn
        .query_row("SELECT sealed FROM key_check WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    match stored {
        Some(blob) => sealing.verify_key_check(&blob, &path.display().to_string()),
        None => {
            let kcv = sealing.key_check_value()?;
            conn.execute(
                "INSERT INTO key_check (id, sealed, created_at) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO NOTHING",
                params![kcv, sql_int(unix_secs(SystemTime::now()))],
            )?;
            let blob: Vec<u8> =
                conn.query_row("SELECT sealed FROM key_check WHERE id = 1", [], |r| {
                    r.get(0)
                })?;
            sealing.verify_key_check(&blob, &path.display().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use lurk_proto::wire::HashAlg;

    use super::super::suite::{self, cfg, random_psk, ticket, Harness, TestClock, TestSealer};
    use super::super::MAX_TICKET_LIFETIME_SECS;
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        sealer: Arc<TestSealer>,
        clock: TestClock,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                sealer: TestSealer::new(),
                clock: TestClock::new(),
            }
        }
        fn path(&self) -> PathBuf {
            self.dir.path().join("tickets.sqlite")
        }
        fn open_with(&self, c: &StoreConfig) -> Result<SqliteStore, StoreError> {
            Ok(SqliteStore::open(&self.path(), self.sealer.clone(), c)?
                .with_clock(self.clock.func()))
        }
        fn open(&self) -> SqliteStore {
            self.open_with(&cfg(64, MAX_TICKET_LIFETIME_SECS)).unwrap()
        }
        fn raw(&self) -> Connection {
            Connection::open(self.path()).unwrap()
        }
    }

    impl Harness for Fixture {
        fn open_sealed(
            &self,
            c: &StoreConfig,
            sealer: Arc<dyn Sealer>,
        ) -> Result<Box<dyn crate::store::TicketStore>, StoreError> {
            Ok(Box::new(
                SqliteStore::open(&self.path(), sealer, c)?.with_clock(self.clock.func()),
            ))
        }
        fn sealer(&self) -> &Arc<TestSealer> {
            &self.sealer
        }
        fn clock(&self) -> &TestClock {
            &self.clock
        }
        fn exec(&self, sql: &str) -> u64 {
            self.raw().execute(sql, []).unwrap() as u64
        }
        fn count(&self, sql: &str) -> i64 {
            self.raw().query_row(sql, [], |r| r.get(0)).unwrap()
        }
        fn sealed_blob(&self) -> Vec<u8> {
            self.raw()
                .query_row("SELECT sealed FROM tickets", [], |r| r.get(0))
                .unwrap()
        }
        fn set_sealed_blob(&self, blob: &[u8]) {
            self.raw()
                .execute("UPDATE tickets SET sealed = ?1", params![blob])
                .unwrap();
        }
        fn bytes_literal(&self, b: &[u8]) -> String {
            format!("X'{}'", hex::encode(b))
        }
        fn chr(&self) -> &'static str {
            "char"
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// The shared store suite (`store/suite.rs`) on SQLite.
    #[test]
    fn store_suite() {
        suite::run_all(&|| Box::new(Fixture::new()));
    }

    #[test]
    fn a_v1_file_is_migrated_and_keeps_its_tickets() {
        let f = Fixture::new();
        let psk = random_psk(32);
        {
            let s = f.open();
            s.put_ticket("engine-a", ticket(b"old", &psk)).unwrap();
        }
        // Back to what schema v1 was.
        f.raw()
            .execute_batch(
                "DROP TABLE consumed_tickets; DROP TABLE key_check;
                 UPDATE schema_version SET version = 1;",
            )
            .unwrap();
        let s = f.open();
        let v: i64 = f
            .raw()
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let t = s.take_ticket("engine-a", b"old").unwrap().unwrap();
        assert_eq!(&t.psk[..], &psk[..]);
        assert!(matches!(
            s.put_ticket("engine-a", ticket(b"old", &psk)),
            Err(StoreError::TicketConsumed)
        ));
    }

    /// A v2 file gets the index of v3 and keeps its tickets and tombstones.
    #[test]
    fn a_v2_file_is_migrated_and_keeps_its_tickets() {
        let f = Fixture::new();
        let psk = random_psk(32);
        {
            let s = f.open();
            s.put_ticket("engine-a", ticket(b"used", &psk)).unwrap();
            s.put_ticket("engine-a", ticket(b"kept", &psk)).unwrap();
            assert!(s.take_ticket("engine-a", b"used").unwrap().is_some());
        }
        f.raw()
            .execute_batch(
                "DROP INDEX consumed_tickets_engine_expires_at;
                 UPDATE schema_version SET version = 2;",
            )
            .unwrap();
        let s = f.open();
        let (v, index): (i64, i64) = f
            .raw()
            .query_row(
                "SELECT (SELECT version FROM schema_version),
                        (SELECT count(*) FROM sqlite_master
                         WHERE name = 'consumed_tickets_engine_expires_at')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((v, index), (SCHEMA_VERSION, 1));
        assert!(s.take_ticket("engine-a", b"kept").unwrap().is_some());
        assert!(matches!(
            s.put_ticket("engine-a", ticket(b"used", &psk)),
            Err(StoreError::TicketConsumed)
        ));
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
    fn an_unknown_schema_is_refused() {
        let f = Fixture::new();
        drop(f.open());
        f.raw()
            .execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        assert!(matches!(
            f.open_with(&cfg(1, 1)),
            Err(StoreError::Schema {
                found: 99,
                expected: SCHEMA_VERSION
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
}
