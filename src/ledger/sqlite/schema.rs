//! The ledger file: creating it, the connection settings, and versioned migrations.
//!
//! The schema version lives in `PRAGMA user_version`. `MIGRATIONS[i]` takes a file from
//! version `i` to `i + 1`; a migration is only ever appended, never edited once released.
//! Migrations run in one `BEGIN IMMEDIATE` transaction, so two processes opening a fresh
//! file at once do not both migrate it.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::LedgerError;

/// How long a writer waits for another connection's write transaction before giving up.
/// Transactions here are a handful of indexed statements and one fsync: milliseconds.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 1: everything.
///
/// * `reservations`: one row per payment attempt, in state `reserved` → (`pending`) →
///   `committed` | `released`; `pending` carries the proof that is (about to be) sent.
/// * `reservation_keys`: the cap keys a reservation (and so its spend and receipt) counts
///   against.
/// * `key_totals`: running totals per key: lifetime spend, and open reservations. Budget
///   checks read these instead of summing history.
/// * `spend`: one entry per (key, committed payment) at its commit time, clustered by
///   (key, at); also the index for listing receipts per key.
/// * `spend_hours`: the same spend summed per (key, hour), so a rolling window reads whole
///   hours from here and only its first, partial hour from `spend`.
/// * `receipts`: one per committed reservation.
/// * `revocations`: opaque ids (credential fingerprints) that must no longer be honoured.
const MIGRATION_1: &str = "
CREATE TABLE reservations (
    id                INTEGER PRIMARY KEY,
    call_id           TEXT    NOT NULL,
    fingerprint       TEXT    NOT NULL,
    state             TEXT    NOT NULL
                      CHECK (state IN ('reserved', 'pending', 'committed', 'released')),
    amount_usd_micros INTEGER NOT NULL CHECK (amount_usd_micros >= 0),
    actual_usd_micros INTEGER CHECK (actual_usd_micros >= 0),
    tool              TEXT    NOT NULL,
    payee             TEXT    NOT NULL,
    protocol          TEXT    NOT NULL,
    meta_json         TEXT    NOT NULL,
    proof_json        TEXT,
    valid_before      INTEGER,
    created_at        INTEGER NOT NULL,
    settled_at        INTEGER
);
CREATE INDEX reservations_open ON reservations (state)
    WHERE state IN ('reserved', 'pending');
CREATE INDEX reservations_open_fingerprint ON reservations (fingerprint, id)
    WHERE state IN ('reserved', 'pending');

CREATE TABLE reservation_keys (
    reservation_id INTEGER NOT NULL REFERENCES reservations (id),
    key            TEXT    NOT NULL,
    PRIMARY KEY (reservation_id, key)
) WITHOUT ROWID;

CREATE TABLE key_totals (
    key                 TEXT    NOT NULL PRIMARY KEY,
    spent_usd_micros    INTEGER NOT NULL DEFAULT 0 CHECK (spent_usd_micros >= 0),
    reserved_usd_micros INTEGER NOT NULL DEFAULT 0 CHECK (reserved_usd_micros >= 0)
) WITHOUT ROWID;

CREATE TABLE spend (
    key               TEXT    NOT NULL,
    at                INTEGER NOT NULL,
    reservation_id    INTEGER NOT NULL REFERENCES reservations (id),
    amount_usd_micros INTEGER NOT NULL CHECK (amount_usd_micros >= 0),
    PRIMARY KEY (key, at, reservation_id)
) WITHOUT ROWID;

CREATE TABLE spend_hours (
    key               TEXT    NOT NULL,
    hour              INTEGER NOT NULL,
    amount_usd_micros INTEGER NOT NULL CHECK (amount_usd_micros >= 0),
    PRIMARY KEY (key, hour)
) WITHOUT ROWID;

CREATE TABLE receipts (
    reservation_id INTEGER PRIMARY KEY REFERENCES reservations (id),
    receipt_id     TEXT    NOT NULL UNIQUE,
    at             INTEGER NOT NULL,
    committed_at   INTEGER NOT NULL,
    json           TEXT    NOT NULL
);
CREATE INDEX receipts_committed_at ON receipts (committed_at);

CREATE TABLE revocations (
    id TEXT    NOT NULL PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 2: `budgets`, the tree of credential budgets (each budget key with its parent's
/// key, its label and its limit), recorded when a credential is first used or delegated, so
/// `tollgate budget` can show who spends under whom.
const MIGRATION_2: &str = "
CREATE TABLE budgets (
    key              TEXT    NOT NULL PRIMARY KEY,
    parent           TEXT,
    label            TEXT,
    limit_usd_micros INTEGER NOT NULL CHECK (limit_usd_micros >= 0),
    first_seen       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX budgets_parent ON budgets (parent);
";

/// Version 3: approvals (a person's yes or no to one payment above the threshold).
///
/// * `approvals`: one row per time a person is asked, in state `pending` → `approved` →
///   `used` (paid once), or `pending` → `denied` | `expired`. `facts_json` is what the
///   person was shown and what the approval is bound to (tool, arguments hash, protocol,
///   network, asset, payee, amount); `decided_by` is the channel (`elicitation`, `cli`,
///   `page`). Ids are random, never sequential.
const MIGRATION_3: &str = "
CREATE TABLE approvals (
    id                TEXT    NOT NULL PRIMARY KEY,
    state             TEXT    NOT NULL
                      CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'used')),
    tool              TEXT    NOT NULL,
    amount_usd_micros INTEGER NOT NULL CHECK (amount_usd_micros >= 0),
    facts_json        TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    decided_at        INTEGER,
    decided_by        TEXT,
    used_at           INTEGER
) WITHOUT ROWID;
CREATE INDEX approvals_open ON approvals (state, created_at)
    WHERE state IN ('pending', 'approved');
";

/// Version 4: paid L402 tokens, kept to be sent again: one per (origin, service), replaced when a
/// fresh one is paid, deleted when the seller refuses it. `preimage` is a bearer secret (the
/// ledger is the one place besides the `Authorization` header that holds it).
const MIGRATION_L402_TOKENS: &str = "
CREATE TABLE l402_tokens (
    origin       TEXT    NOT NULL,
    service      TEXT    NOT NULL,
    scheme       TEXT    NOT NULL,
    macaroon     TEXT    NOT NULL,
    preimage     TEXT    NOT NULL,
    payment_hash TEXT    NOT NULL,
    expires_at   INTEGER,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (origin, service)
) WITHOUT ROWID;
";

/// Version 5: who owns an open payment, and until when.
///
/// A `reserved` or `pending` row with an `owner` whose `lease_until` has not passed belongs to
/// a live call (the owner renews the lease while the call runs): nobody else may re-send its
/// proof, release it or reconcile it. A `pending` row without a live owner (its process died,
/// its lease lapsed, or its call ended without an answer and cleared the owner) has an
/// *unknown* outcome: a retry of the same call may claim it (become its owner) and re-send its
/// proof, once at a time, and reconciliation may settle it. Rows written before this version
/// have no owner.
const MIGRATION_LEASES: &str = "
ALTER TABLE reservations ADD COLUMN owner TEXT;
ALTER TABLE reservations ADD COLUMN lease_until INTEGER;
CREATE INDEX reservations_owned ON reservations (owner)
    WHERE owner IS NOT NULL AND state IN ('reserved', 'pending');
";

/// Every migration, in order; the schema version is their number.
const MIGRATIONS: &[&str] = &[
    MIGRATION_1,
    MIGRATION_2,
    MIGRATION_3,
    MIGRATION_L402_TOKENS,
    MIGRATION_LEASES,
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed) the ledger file at `path`, sets the connection up and brings
/// the schema to [`SCHEMA_VERSION`].
pub(super) fn open(path: &Path) -> Result<Connection, LedgerError> {
    create_private_file(path)?;
    let open_err = |source| LedgerError::Open {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    // Every statement the ledger runs stays prepared (there are about 25).
    conn.set_prepared_statement_cache_capacity(64);
    // ...and stays prepared when its arguments change. Without the query planner stability
    // guarantee, SQLite compiles a statement again on its next step whenever a value bound
    // in its `WHERE` might change the plan: here every query by fingerprint or reservation
    // with an `ORDER BY`, so each paid call parsed and planned its open-call check inside
    // the reservation's transaction (~80 µs), and the receipt's commit its keys query. The
    // ledger never gathers statistics (`ANALYZE`), so a plan chosen without the values is
    // the plan chosen with them.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(open_err)?;
    enable_wal(&conn, path)?;
    // FULL: a commit is fsynced before it returns, so a receipt outlives a power cut, not
    // only a crash of the process. This is per connection, not stored in the file.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_err)?;
    migrate(conn, path)
}

/// WAL: readers never block the writer and a commit is one append. The mode is stored in the
/// file, so asking again is free once it is set.
///
/// Switching a fresh file to WAL needs an exclusive lock and, unlike other statements, does
/// not wait through the busy handler: several processes opening a new ledger at once get
/// `SQLITE_BUSY` immediately. So this waits itself, up to [`BUSY_TIMEOUT`].
fn enable_wal(conn: &Connection, path: &Path) -> Result<(), LedgerError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)) {
            Ok(mode) => break mode,
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(source) => {
                return Err(LedgerError::Open {
                    path: path.to_owned(),
                    source: Box::new(source),
                });
            }
        }
    };
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(LedgerError::NotWal {
            path: path.to_owned(),
            mode,
        })
    }
}

/// Creates the file with mode 0600 if it does not exist yet (SQLite would create it with the
/// umask's mode, and its `-wal`/`-shm` files copy the database file's mode).
fn create_private_file(path: &Path) -> Result<(), LedgerError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|source| LedgerError::Create {
            path: path.to_owned(),
            source,
        })
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

fn migrate(mut conn: Connection, path: &Path) -> Result<Connection, LedgerError> {
    let open_err = |source| LedgerError::Open {
        path: path.to_owned(),
        source: Box::new(source),
    };
    let newer = |found| LedgerError::NewerSchema {
        path: path.to_owned(),
        found,
        supported: SCHEMA_VERSION,
    };
    // The common case (already current) takes no write lock.
    let found = user_version(&conn).map_err(open_err)?;
    if found == SCHEMA_VERSION {
        return Ok(conn);
    }
    if found > SCHEMA_VERSION {
        return Err(newer(found));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;
    // Another process may have migrated between the read above and the lock.
    let found = user_version(&tx).map_err(open_err)?;
    if found > SCHEMA_VERSION {
        return Err(newer(found));
    }
    let start = usize::try_from(found)
        .map_err(|_| LedgerError::Corrupt(format!("negative schema version {found}")))?;
    for migration in &MIGRATIONS[start.min(MIGRATIONS.len())..] {
        tx.execute_batch(migration).map_err(open_err)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(open_err)?;
    tx.commit().map_err(open_err)?;
    Ok(conn)
}
