//! The shared ledger: PostgreSQL, for tollgate processes on several hosts that must share
//! budgets, pending proofs, receipts, approvals, kept tokens and revocations.
//!
//! Every method is one transaction, as in SQLite. Where SQLite takes the whole file
//! (`BEGIN IMMEDIATE`), this takes row locks: a reservation locks the `key_totals` row of
//! every cap it counts against (inserting the missing ones first), in key order so two
//! reservations over the same caps never deadlock, then reads spend and writes, all in one
//! `READ COMMITTED` transaction. A commit or release locks the reservation's row, then its
//! keys' rows in the same order. Reads that must be consistent across tables (`pending`,
//! `status`, receipts, the budget tree) run in one `REPEATABLE READ` snapshot.
//!
//! The traits are synchronous (callers use `block_in_place` or `spawn_blocking`); this backend
//! owns a small tokio runtime of its own that drives the pool's connections, and each method
//! blocks on its future there (`block_on` inside `block_in_place`). That is correct from a
//! plain thread, from `spawn_blocking`, and from a multi-thread runtime's worker, inside
//! `block_in_place` or not; the caller's runtime is never used, so a ledger call cannot
//! starve it or be starved by it.
//!
//! Faults: a database that cannot be reached (or is lost mid-transaction) is a
//! [`LedgerError::Database`] naming the database (never its URL): nothing was reserved, and a
//! proof made inside [`Reservations::reserve_proved`] is dropped unsent. A pool whose
//! connections are all busy makes a caller wait up to [`POOL_WAIT`], then fail with an error
//! that says so.

mod approvals;
mod connect;
mod schema;
mod tokens;
mod transfer;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Object, Pool, PoolError, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use super::{
    BudgetNode, BudgetRow, Cap, CapStatus, Lease, LedgerError, NewReceipt, NewReservation, Owners,
    PendingPayment, Proved, ReceiptRow, ReservationId, ReservationState, Reservations, Revocations,
    Store, UNOWNED_RESERVED_SECS,
};

pub use connect::{Target, UrlError, redacted};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = schema::SCHEMA_VERSION;

/// Connections per process, by default: a call holds one for one short transaction.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// How long a call waits for a free connection before failing.
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// SQL for "open and owned by nobody alive at $2": no owner, or a lapsed lease.
const UNOWNED: &str = "(owner IS NULL OR lease_until IS NULL OR lease_until < $2)";

/// The granularity of `spend_hours`, in seconds.
const HOUR_SECS: i64 = 3_600;

/// The open payments of one call (fingerprint $1) whose proof left the process, newest first:
/// what `owners_of` lists, and what a reservation made `unless_call_open` must not find.
const OPEN_OF_CALL: &str = "SELECT id, owner FROM reservations
     WHERE fingerprint = $1 AND state = 'pending'
     ORDER BY id DESC LIMIT 64";

/// A PostgreSQL database holding the ledger, shared by every process (on any host) whose
/// ledger URL names it. Cheap to share (`&self` everywhere).
pub struct PostgresLedger {
    name: String,
    pool: Pool,
    /// Drives the pool's connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresLedger {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's async context
        // (`serve` drops the ledger there): let its threads wind down on their own.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How the backend runs its statements, on a connection or in a transaction: each is prepared
/// once per pooled connection (deadpool's cache) and then only bound and run. A statement
/// sent as text is prepared again by tokio-postgres on every call, one more round trip to
/// the database each time (a payment's ledger work took 4.8 ms instead of 2.7 on a local
/// database).
pub(super) trait Cached: GenericClient {
    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, LedgerError> {
        let statement = self.prepare_cached(sql).await.map_err(db)?;
        self.execute(&statement, params).await.map_err(db)
    }

    async fn query_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, LedgerError> {
        let statement = self.prepare_cached(sql).await.map_err(db)?;
        self.query(&statement, params).await.map_err(db)
    }

    async fn query_one_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, LedgerError> {
        let statement = self.prepare_cached(sql).await.map_err(db)?;
        self.query_one(&statement, params).await.map_err(db)
    }

    async fn query_opt_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, LedgerError> {
        let statement = self.prepare_cached(sql).await.map_err(db)?;
        self.query_opt(&statement, params).await.map_err(db)
    }
}

impl<C: GenericClient> Cached for C {}

/// Maps a driver error to the ledger's, naming no URL (the driver's messages carry none).
pub(super) fn db(e: tokio_postgres::Error) -> LedgerError {
    LedgerError::Database(match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    })
}

impl PostgresLedger {
    /// Connects to the database `url` names (at most `pool_size` connections), checks that it
    /// answers, and brings its schema to [`SCHEMA_VERSION`]. Errors name the database as
    /// `postgres://host:port/database`, never the URL.
    pub fn open(url: &str, pool_size: usize) -> Result<PostgresLedger, LedgerError> {
        Self::open_waiting(url, pool_size, POOL_WAIT)
    }

    /// [`PostgresLedger::open`] where a call waits at most `wait` for a free connection.
    pub fn open_waiting(
        url: &str,
        pool_size: usize,
        wait: Duration,
    ) -> Result<PostgresLedger, LedgerError> {
        let target = Target::parse(url).map_err(|e| LedgerError::Open {
            path: redacted(url).into(),
            source: Box::new(e),
        })?;
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| LedgerError::Open {
            path: target.name.clone().into(),
            source,
        };
        let pool = target
            .pool(pool_size.max(1), wait)
            .map_err(|e| open_err(Box::new(e)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tollgate-ledger")
            .enable_all()
            .build()
            .map_err(|e| open_err(Box::new(e)))?;
        let ledger = PostgresLedger {
            name: target.name.clone(),
            pool,
            runtime: Some(runtime),
        };
        let found = ledger
            .block(async {
                let mut client = ledger.client().await?;
                schema::migrate(&mut client).await
            })
            .map_err(|e| match e {
                LedgerError::Database(why) => open_err(why.into()),
                other => other,
            })?;
        if found > SCHEMA_VERSION {
            return Err(LedgerError::NewerSchema {
                path: target.name.into(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(ledger)
    }

    /// Connects to the database `url` names and reads its schema version (0: not set up yet),
    /// changing nothing: what `tollgate check` asks. Errors name the database, never the URL.
    pub fn probe(url: &str) -> Result<(String, i64), LedgerError> {
        let target = Target::parse(url).map_err(|e| LedgerError::Open {
            path: redacted(url).into(),
            source: Box::new(e),
        })?;
        let pool = target.pool(1, POOL_WAIT).map_err(|e| LedgerError::Open {
            path: target.name.clone().into(),
            source: Box::new(e),
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LedgerError::Database(e.to_string()))?;
        let ledger = PostgresLedger {
            name: target.name.clone(),
            pool,
            runtime: Some(runtime),
        };
        let version = ledger.schema_version()?;
        Ok((target.name, version))
    }

    /// `postgres://host:port/database`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema version the database holds.
    pub fn schema_version(&self) -> Result<i64, LedgerError> {
        self.block(async { schema::version(&self.client().await?).await })
    }

    /// Runs `f` to completion on the ledger's runtime, blocking this thread. Called from a
    /// multi-thread runtime's worker (or its `block_on` thread) without `block_in_place`, it
    /// steps out of that runtime first (`block_in_place` is a no-op where it is not needed:
    /// plain threads, `spawn_blocking`, inside `block_in_place`), so the caller's other tasks
    /// move to another worker instead of stalling. A `current_thread` runtime cannot block:
    /// call the ledger from `spawn_blocking` there.
    fn block<T>(&self, f: impl Future<Output = Result<T, LedgerError>>) -> Result<T, LedgerError> {
        match &self.runtime {
            Some(runtime) => tokio::task::block_in_place(|| runtime.block_on(f)),
            None => Err(LedgerError::Database("the ledger is closing".to_owned())),
        }
    }

    /// A connection from the pool, or an error that says why there is none.
    async fn client(&self) -> Result<Object, LedgerError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(_) => LedgerError::Database(format!(
                "no free connection to the ledger {} within {} ms (all {} in use); \
                 raise [ledger] pool_size or the database's max_connections",
                self.name,
                self.pool.timeouts().wait.unwrap_or(POOL_WAIT).as_millis(),
                self.pool.status().max_size
            )),
            PoolError::Backend(e) => LedgerError::Database(format!(
                "cannot reach the ledger {}: {}",
                self.name,
                describe(&e)
            )),
            other => {
                LedgerError::Database(format!("cannot reach the ledger {}: {other}", self.name))
            }
        })
    }

    /// Reads or records a fact every host sharing the ledger must agree on (`name`): returns
    /// the value recorded first, recording `value` if there was none.
    pub fn agree(&self, name: &str, value: &str) -> Result<String, LedgerError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute_cached(
                    "INSERT INTO ledger_meta (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &value],
                )
                .await?;
            Ok(client
                .query_one_cached("SELECT value FROM ledger_meta WHERE name = $1", &[&name])
                .await?
                .get(0))
        })
    }
}

/// A driver error with its cause (connection refused, authentication failed...).
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return d.message().to_owned();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Amounts and times are BIGINT: a u64 beyond i64 is refused, never wrapped.
pub(super) fn to_sql(what: &'static str, value: u64) -> Result<i64, LedgerError> {
    i64::try_from(value).map_err(|_| LedgerError::OutOfRange { what, value })
}

pub(super) fn from_sql(what: &str, value: i64) -> Result<u64, LedgerError> {
    u64::try_from(value).map_err(|_| LedgerError::Corrupt(format!("negative {what} {value}")))
}

/// Starts a transaction that sees one snapshot for all its statements.
async fn snapshot(client: &mut Object) -> Result<Transaction<'_>, LedgerError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)
}

impl Reservations for PostgresLedger {
    fn reserve(&self, r: NewReservation, now: u64) -> Result<ReservationId, LedgerError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let id = reserve_in(&tx, &r, now).await?;
            tx.commit().await.map_err(db)?;
            Ok(id)
        })
    }

    /// One transaction: the caps' rows locked and checked, the reservation written, the
    /// proof made (while no other reservation can touch these caps) and recorded pending. If
    /// the commit fails, the proof is dropped here, never sent.
    fn reserve_proved(
        &self,
        r: NewReservation,
        now: u64,
        prove: &mut dyn FnMut(ReservationId) -> Result<Proved, String>,
    ) -> Result<ReservationId, LedgerError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let id = reserve_in(&tx, &r, now).await?;
            let proved = prove(id).map_err(LedgerError::NotProved)?;
            tx.execute_cached(
                "UPDATE reservations SET state = 'pending', proof_json = $2,
                            valid_before = $3
                     WHERE id = $1",
                &[
                    &id.0,
                    &proved.proof_json,
                    &to_sql("time", proved.valid_before)?,
                ],
            )
            .await?;
            tx.commit().await.map_err(db)?;
            Ok(id)
        })
    }

    fn mark_pending(
        &self,
        id: ReservationId,
        proof_json: &str,
        valid_before: u64,
    ) -> Result<(), LedgerError> {
        let valid_before = to_sql("time", valid_before)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let (state, _) = lock_reservation(&tx, id).await?;
            match state {
                ReservationState::Reserved => {
                    tx.execute_cached(
                        "UPDATE reservations
                         SET state = 'pending', proof_json = $2, valid_before = $3
                         WHERE id = $1",
                        &[&id.0, &proof_json, &valid_before],
                    )
                    .await?;
                }
                ReservationState::Pending => {
                    let recorded: Option<String> = tx
                        .query_one_cached(
                            "SELECT proof_json FROM reservations WHERE id = $1",
                            &[&id.0],
                        )
                        .await?
                        .get(0);
                    if recorded.as_deref() != Some(proof_json) {
                        return Err(LedgerError::ProofAlreadyRecorded(id));
                    }
                }
                state => {
                    return Err(LedgerError::WrongState {
                        id,
                        state,
                        action: "mark pending",
                    });
                }
            }
            tx.commit().await.map_err(db)?;
            Ok(())
        })
    }

    fn replace_proof(
        &self,
        id: ReservationId,
        proof_json: &str,
        valid_before: u64,
    ) -> Result<(), LedgerError> {
        let valid_before = to_sql("time", valid_before)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let (state, _) = lock_reservation(&tx, id).await?;
            if state != ReservationState::Pending {
                return Err(LedgerError::WrongState {
                    id,
                    state,
                    action: "replace the proof of",
                });
            }
            tx.execute_cached(
                "UPDATE reservations SET proof_json = $2, valid_before = $3 WHERE id = $1",
                &[&id.0, &proof_json, &valid_before],
            )
            .await?;
            tx.commit().await.map_err(db)?;
            Ok(())
        })
    }

    fn commit(
        &self,
        id: ReservationId,
        actual_usd_micros: u64,
        receipt: NewReceipt,
        now: u64,
    ) -> Result<(), LedgerError> {
        let actual = to_sql("amount", actual_usd_micros)?;
        let now_sql = to_sql("time", now)?;
        let receipt_at = to_sql("time", receipt.at)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let (state, reserved) = lock_reservation(&tx, id).await?;
            if state == ReservationState::Pending {
                // As SQLite's `write_lazy`: the commit of a payment whose proof is recorded
                // does not wait for the WAL flush. A database crash can only undo it back to
                // pending (still held against every cap, its proof kept), which
                // reconciliation settles from the chain or the Lightning backend. A commit
                // of a released or proof-less reservation waits: nothing would find it again.
                tx.batch_execute("SET LOCAL synchronous_commit = off")
                    .await
                    .map_err(db)?;
            }
            // Released: the amount no longer counts as held, so there is nothing to unhold.
            let held = if state == ReservationState::Released {
                0
            } else {
                reserved
            };
            if state == ReservationState::Committed {
                let recorded = tx
                    .query_opt_cached(
                        "SELECT receipt_id FROM receipts WHERE reservation_id = $1",
                        &[&id.0],
                    )
                    .await?
                    .map(|row| row.get::<_, String>(0));
                return if recorded.as_deref() == Some(receipt.receipt_id.as_str()) {
                    Ok(())
                } else {
                    Err(LedgerError::WrongState {
                        id,
                        state,
                        action: "commit",
                    })
                };
            }
            let existing = tx
                .query_opt_cached(
                    "SELECT reservation_id FROM receipts WHERE receipt_id = $1",
                    &[&receipt.receipt_id],
                )
                .await?;
            if let Some(existing) = existing {
                return Err(LedgerError::ReceiptAlreadyRecorded {
                    receipt_id: receipt.receipt_id,
                    existing: ReservationId(existing.get(0)),
                });
            }
            tx.execute_cached(
                "UPDATE reservations
                 SET state = 'committed', actual_usd_micros = $2, settled_at = $3,
                     owner = NULL, lease_until = NULL
                 WHERE id = $1",
                &[&id.0, &actual, &now_sql],
            )
            .await?;
            tx.execute_cached(
                "INSERT INTO receipts (reservation_id, receipt_id, at, committed_at, json)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id.0,
                    &receipt.receipt_id,
                    &receipt_at,
                    &now_sql,
                    &receipt.json,
                ],
            )
            .await?;
            let keys = keys_of(&tx, id).await?;
            let hour = now_sql / HOUR_SECS;
            // Key order, as `reserve` locks them: no deadlock between the two.
            tx.execute_cached(
                "INSERT INTO key_totals (key, spent_usd_micros)
                 SELECT k, $2 FROM unnest($1::text[]) AS k ORDER BY k
                 ON CONFLICT (key) DO UPDATE
                 SET spent_usd_micros = key_totals.spent_usd_micros + excluded.spent_usd_micros,
                     reserved_usd_micros = key_totals.reserved_usd_micros - $3",
                &[&keys, &actual, &held],
            )
            .await?;
            tx.execute_cached(
                "INSERT INTO spend (key, at, reservation_id, amount_usd_micros)
                 SELECT k, $2, $3, $4 FROM unnest($1::text[]) AS k",
                &[&keys, &now_sql, &id.0, &actual],
            )
            .await?;
            tx.execute_cached(
                "INSERT INTO spend_hours (key, hour, amount_usd_micros)
                 SELECT k, $2, $3 FROM unnest($1::text[]) AS k ORDER BY k
                 ON CONFLICT (key, hour) DO UPDATE
                 SET amount_usd_micros = spend_hours.amount_usd_micros
                                         + excluded.amount_usd_micros",
                &[&keys, &hour, &actual],
            )
            .await?;
            tx.commit().await.map_err(db)?;
            Ok(())
        })
    }

    fn release(&self, id: ReservationId, now: u64) -> Result<(), LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let (state, reserved) = lock_reservation(&tx, id).await?;
            match state {
                ReservationState::Reserved | ReservationState::Pending => {}
                ReservationState::Released => return Ok(()),
                ReservationState::Committed => {
                    return Err(LedgerError::WrongState {
                        id,
                        state,
                        action: "release",
                    });
                }
            }
            tx.execute_cached(
                "UPDATE reservations
                 SET state = 'released', settled_at = $2, owner = NULL, lease_until = NULL
                 WHERE id = $1",
                &[&id.0, &now_sql],
            )
            .await?;
            let keys = keys_of(&tx, id).await?;
            for key in &keys {
                tx.execute_cached(
                    "UPDATE key_totals SET reserved_usd_micros = reserved_usd_micros - $2
                     WHERE key = $1",
                    &[key, &reserved],
                )
                .await?;
            }
            tx.commit().await.map_err(db)?;
            Ok(())
        })
    }

    fn pending(&self) -> Result<Vec<PendingPayment>, LedgerError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let rows = tx
                .query_cached(
                    &format!(
                        "SELECT {PENDING_COLUMNS} FROM reservations
                         WHERE state IN ('reserved', 'pending') ORDER BY id"
                    ),
                    &[],
                )
                .await?;
            let payments = load_pending_rows(&tx, rows).await?;
            tx.commit().await.map_err(db)?;
            Ok(payments)
        })
    }

    fn status(&self, caps: &[Cap], now: u64) -> Result<Vec<CapStatus>, LedgerError> {
        to_sql("time", now)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let mut out = Vec::with_capacity(caps.len());
            for cap in caps {
                let (spent, reserved) = usage(&tx, cap, now).await?;
                out.push(CapStatus {
                    key: cap.key.clone(),
                    limit_usd_micros: cap.limit_usd_micros,
                    window_secs: cap.window_secs,
                    spent_usd_micros: spent,
                    reserved_usd_micros: reserved,
                    remaining_usd_micros: cap
                        .limit_usd_micros
                        .saturating_sub(spent.saturating_add(reserved)),
                });
            }
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
    }

    fn receipts(
        &self,
        keys: &[String],
        since: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReceiptRow>, LedgerError> {
        let since = to_sql("time", since.unwrap_or(0))?;
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            // One indexed, limited walk per key, then merge.
            let mut newest: BTreeSet<(i64, i64)> = BTreeSet::new();
            for key in keys {
                for row in tx
                    .query_cached(
                        "SELECT at, reservation_id FROM spend WHERE key = $1 AND at >= $2
                         ORDER BY at DESC, reservation_id DESC LIMIT $3",
                        &[key, &since, &limit_sql],
                    )
                    .await?
                {
                    newest.insert((row.get(0), row.get(1)));
                }
            }
            let mut seen = BTreeSet::new();
            let ids: Vec<i64> = newest
                .into_iter()
                .rev()
                .filter(|(_, id)| seen.insert(*id))
                .take(limit)
                .map(|(_, id)| id)
                .collect();
            let rows = load_receipts(&tx, &ids).await?;
            tx.commit().await.map_err(db)?;
            Ok(rows)
        })
    }

    fn all_receipts(
        &self,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReceiptRow>, LedgerError> {
        let since = to_sql("time", since.unwrap_or(0))?;
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let ids: Vec<i64> = tx
                .query_cached(
                    "SELECT reservation_id FROM receipts WHERE committed_at >= $1
                     ORDER BY committed_at DESC, reservation_id DESC LIMIT $2",
                    &[&since, &limit_sql],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            let rows = load_receipts(&tx, &ids).await?;
            tx.commit().await.map_err(db)?;
            Ok(rows)
        })
    }

    fn register_budgets(&self, chain: &[BudgetNode], now: u64) -> Result<(), LedgerError> {
        let now = to_sql("time", now)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO budgets (key, parent, label, limit_usd_micros, first_seen)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
                )
                .await
                .map_err(db)?;
            let mut parent: Option<&str> = None;
            for node in chain {
                let limit = to_sql("limit", node.limit_usd_micros)?;
                tx.execute(&insert, &[&node.key, &parent, &node.label, &limit, &now])
                    .await
                    .map_err(db)?;
                parent = Some(&node.key);
            }
            tx.commit().await.map_err(db)?;
            Ok(())
        })
    }

    fn budget_tree(&self) -> Result<Vec<BudgetRow>, LedgerError> {
        let rows = self.block(async {
            let client = self.client().await?;
            client
                .query_cached(
                    "SELECT b.key, b.parent, b.label, b.limit_usd_micros, b.first_seen,
                            COALESCE(t.spent_usd_micros, 0), COALESCE(t.reserved_usd_micros, 0)
                     FROM budgets b LEFT JOIN key_totals t ON t.key = b.key
                     ORDER BY b.first_seen, b.key",
                    &[],
                )
                .await
        })?;
        let rows = rows
            .iter()
            .map(|row| {
                Ok(BudgetRow {
                    key: row.get(0),
                    parent: row.get(1),
                    label: row.get(2),
                    limit_usd_micros: from_sql("limit", row.get(3))?,
                    first_seen: from_sql("time", row.get(4))?,
                    spent_usd_micros: from_sql("spend", row.get(5))?,
                    reserved_usd_micros: from_sql("reservation", row.get(6))?,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        Ok(parents_first(rows))
    }
}

/// Parents before children, siblings in the order they were first seen (as SQLite's).
fn parents_first(mut rows: Vec<BudgetRow>) -> Vec<BudgetRow> {
    let mut ordered = Vec::with_capacity(rows.len());
    let keys: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    let (roots, mut rest): (Vec<_>, Vec<_>) = rows
        .drain(..)
        .partition(|r| r.parent.as_ref().is_none_or(|p| !keys.contains(p)));
    let mut stack: Vec<BudgetRow> = roots.into_iter().rev().collect();
    while let Some(node) = stack.pop() {
        let (children, others): (Vec<_>, Vec<_>) = rest
            .drain(..)
            .partition(|r| r.parent.as_deref() == Some(node.key.as_str()));
        rest = others;
        stack.extend(children.into_iter().rev());
        ordered.push(node);
    }
    ordered
}

impl Owners for PostgresLedger {
    fn renew_leases(
        &self,
        owner: &str,
        ids: &[ReservationId],
        until: u64,
    ) -> Result<usize, LedgerError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let until = to_sql("time", until)?;
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        self.block(async {
            let client = self.client().await?;
            let renewed = client
                .execute_cached(
                    "UPDATE reservations SET lease_until = $3
                     WHERE id = ANY($1) AND owner = $2 AND state IN ('reserved', 'pending')",
                    &[&ids, &owner, &until],
                )
                .await?;
            Ok(usize::try_from(renewed).unwrap_or(usize::MAX))
        })
    }

    fn disown(&self, id: ReservationId, owner: &str) -> Result<(), LedgerError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute_cached(
                    "UPDATE reservations SET owner = NULL, lease_until = NULL
                     WHERE id = $1 AND owner = $2 AND state IN ('reserved', 'pending')",
                    &[&id.0, &owner],
                )
                .await?;
            Ok(())
        })
    }

    fn claim_unknown(
        &self,
        fingerprint: &str,
        lease: &Lease,
        now: u64,
    ) -> Result<Option<PendingPayment>, LedgerError> {
        let now_sql = to_sql("time", now)?;
        let until = to_sql("time", lease.until)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            // FOR UPDATE re-checks the row once it holds the lock: a claimant that waited for
            // the winner sees the new owner and finds nothing (or an older unknown proof).
            let found = tx
                .query_opt_cached(
                    &format!(
                        "SELECT id FROM reservations
                         WHERE fingerprint = $1 AND state = 'pending'
                           AND proof_json IS NOT NULL AND {UNOWNED}
                         ORDER BY id DESC LIMIT 1 FOR UPDATE"
                    ),
                    &[&fingerprint, &now_sql],
                )
                .await?;
            let Some(found) = found else {
                return Ok(None);
            };
            let id = ReservationId(found.get(0));
            tx.execute_cached(
                "UPDATE reservations SET owner = $2, lease_until = $3 WHERE id = $1",
                &[&id.0, &lease.owner, &until],
            )
            .await?;
            let payment = load_pending(&tx, id).await?;
            tx.commit().await.map_err(db)?;
            Ok(Some(payment))
        })
    }

    fn owners_of(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<(ReservationId, Option<String>)>, LedgerError> {
        self.block(async {
            let client = self.client().await?;
            Ok(client
                .query_cached(OPEN_OF_CALL, &[&fingerprint])
                .await?
                .iter()
                .map(|row| (ReservationId(row.get(0)), row.get(1)))
                .collect())
        })
    }

    fn claim(
        &self,
        id: ReservationId,
        lease: &Lease,
        now: u64,
    ) -> Result<Option<PendingPayment>, LedgerError> {
        let now_sql = to_sql("time", now)?;
        let until = to_sql("time", lease.until)?;
        let young = to_sql("time", now.saturating_sub(UNOWNED_RESERVED_SECS))?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            // One UPDATE: a concurrent claimant waits for the row, then re-checks the
            // conditions on the new owner, and claims nothing.
            let claimed = tx
                .execute_cached(
                    &format!(
                        "UPDATE reservations SET owner = $3, lease_until = $4
                         WHERE id = $1 AND state IN ('reserved', 'pending') AND {UNOWNED}
                           AND NOT (state = 'reserved' AND owner IS NULL AND created_at > $5)"
                    ),
                    &[&id.0, &now_sql, &lease.owner, &until, &young],
                )
                .await?;
            if claimed == 0 {
                return Ok(None);
            }
            let payment = load_pending(&tx, id).await?;
            tx.commit().await.map_err(db)?;
            Ok(Some(payment))
        })
    }
}

impl Revocations for PostgresLedger {
    fn revoke(&self, id: &str, now: u64) -> Result<(), LedgerError> {
        let now = to_sql("time", now)?;
        self.block(async {
            let client = self.client().await?;
            client
                .execute_cached(
                    "INSERT INTO revocations (id, at) VALUES ($1, $2)
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &now],
                )
                .await?;
            Ok(())
        })
    }

    fn is_revoked(&self, ids: &[String]) -> Result<bool, LedgerError> {
        if ids.is_empty() {
            return Ok(false);
        }
        self.block(async {
            let client = self.client().await?;
            Ok(client
                .query_one_cached(
                    "SELECT EXISTS (SELECT 1 FROM revocations WHERE id = ANY($1))",
                    &[&ids],
                )
                .await?
                .get(0))
        })
    }
}

impl Store for PostgresLedger {
    fn location(&self) -> String {
        self.name.clone()
    }

    fn agree_on(&self, name: &str, value: &str) -> Result<String, LedgerError> {
        self.agree(name, value)
    }
}

/// Locks a reservation's row for this transaction; (state, reserved amount).
async fn lock_reservation(
    tx: &Transaction<'_>,
    id: ReservationId,
) -> Result<(ReservationState, i64), LedgerError> {
    let row = tx
        .query_opt_cached(
            "SELECT state, amount_usd_micros FROM reservations WHERE id = $1 FOR UPDATE",
            &[&id.0],
        )
        .await?
        .ok_or(LedgerError::UnknownReservation(id))?;
    Ok((ReservationState::parse(row.get(0))?, row.get(1)))
}

async fn keys_of(tx: &Transaction<'_>, id: ReservationId) -> Result<Vec<String>, LedgerError> {
    Ok(tx
        .query_cached(
            "SELECT key FROM reservation_keys WHERE reservation_id = $1 ORDER BY key",
            &[&id.0],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// (spent in the cap's window, open reservations) for one cap: the running totals, and for a
/// rolling cap the hourly totals of its whole hours plus the entries of its first, partial
/// hour (as SQLite's `usage`).
async fn usage(tx: &Transaction<'_>, cap: &Cap, now: u64) -> Result<(u64, u64), LedgerError> {
    let totals = tx
        .query_opt_cached(
            "SELECT spent_usd_micros, reserved_usd_micros FROM key_totals WHERE key = $1",
            &[&cap.key],
        )
        .await?
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)));
    let (lifetime, reserved) = totals.unwrap_or((0, 0));
    Ok((
        from_sql("spend", windowed(tx, cap, now, lifetime).await?)?,
        from_sql("reserved amount", reserved)?,
    ))
}

/// Spend under `cap` in its window: `lifetime` for a lifetime cap (or a window reaching before
/// the epoch), else hourly totals plus the partial first hour's entries.
async fn windowed(
    tx: &Transaction<'_>,
    cap: &Cap,
    now: u64,
    lifetime: i64,
) -> Result<i64, LedgerError> {
    let Some(start) = cap.window_secs.and_then(|w| now.checked_sub(w)) else {
        return Ok(lifetime);
    };
    let start = to_sql("time", start)?;
    let first_whole_hour = start / HOUR_SECS + 1;
    let row = tx
        .query_one_cached(
            "SELECT
               (SELECT COALESCE(SUM(amount_usd_micros), 0)::BIGINT FROM spend
                 WHERE key = $1 AND at > $2 AND at < $3),
               (SELECT COALESCE(SUM(amount_usd_micros), 0)::BIGINT FROM spend_hours
                 WHERE key = $1 AND hour >= $4)",
            &[
                &cap.key,
                &start,
                &(first_whole_hour * HOUR_SECS),
                &first_whole_hour,
            ],
        )
        .await?;
    let (partial, whole): (i64, i64) = (row.get(0), row.get(1));
    partial
        .checked_add(whole)
        .ok_or_else(|| LedgerError::Corrupt(format!("spend under {:?} overflows", cap.key)))
}

/// Checks every cap and writes the reservation, inside the caller's transaction: the caps'
/// `key_totals` rows are created if missing and locked in key order, so every other
/// reservation, commit or release touching one of them waits for this transaction.
async fn reserve_in(
    tx: &Transaction<'_>,
    r: &NewReservation,
    now: u64,
) -> Result<ReservationId, LedgerError> {
    let amount = to_sql("amount", r.amount_usd_micros)?;
    let now_sql = to_sql("time", now)?;
    if r.unless_call_open
        && !tx
            .query_cached(OPEN_OF_CALL, &[&r.fingerprint])
            .await?
            .is_empty()
    {
        return Err(LedgerError::CallOpen);
    }
    let keys: Vec<&str> = r
        .caps
        .iter()
        .map(|c| c.key.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Holds the amount on every key and locks its row, creating missing rows, one row at a
    // time in key order (an upsert locks the row it finds or inserts): every other
    // reservation, commit or release on one of these keys waits for this transaction, and two
    // reservations sharing keys take them in the same order, so they never deadlock. Checked
    // after; a cap that does not fit rolls it all back.
    let held = tx
        .query_cached(
            "INSERT INTO key_totals (key, reserved_usd_micros)
                 SELECT k, $2 FROM unnest($1::text[]) AS k ORDER BY k
                 ON CONFLICT (key) DO UPDATE
                 SET reserved_usd_micros = key_totals.reserved_usd_micros
                                           + excluded.reserved_usd_micros
                 RETURNING key, spent_usd_micros, reserved_usd_micros",
            &[&keys, &amount],
        )
        .await?;
    // (lifetime spend, reserved before this reservation) per key.
    let totals: BTreeMap<String, (i64, i64)> = held
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get::<_, i64>(2) - amount)))
        .collect();
    for cap in &r.caps {
        let (lifetime, reserved) = totals.get(&cap.key).copied().unwrap_or((0, 0));
        let spent = from_sql("spend", windowed(tx, cap, now, lifetime).await?)?;
        let reserved = from_sql("reserved amount", reserved)?;
        let needed = u128::from(spent) + u128::from(reserved) + u128::from(r.amount_usd_micros);
        if needed > u128::from(cap.limit_usd_micros) {
            return Err(LedgerError::Exceeded {
                key: cap.key.clone(),
                window_secs: cap.window_secs,
                limit_usd_micros: cap.limit_usd_micros,
                spent_usd_micros: spent,
                reserved_usd_micros: reserved,
                requested_usd_micros: r.amount_usd_micros,
            });
        }
    }
    let (owner, lease_until) = match &r.lease {
        Some(lease) => (
            Some(lease.owner.as_str()),
            Some(to_sql("time", lease.until)?),
        ),
        None => (None, None),
    };
    let id: i64 = tx
        .query_one_cached(
            "INSERT INTO reservations (call_id, fingerprint, state, amount_usd_micros, tool,
                         payee, protocol, meta_json, created_at, owner, lease_until)
                 VALUES ($1, $2, 'reserved', $3, $4, $5, $6, $7, $8, $9, $10)
                 RETURNING id",
            &[
                &r.call_id,
                &r.fingerprint,
                &amount,
                &r.tool,
                &r.payee,
                &r.protocol,
                &r.meta_json,
                &now_sql,
                &owner,
                &lease_until,
            ],
        )
        .await?
        .get(0);
    tx.execute_cached(
        "INSERT INTO reservation_keys (reservation_id, key)
             SELECT $1, k FROM unnest($2::text[]) AS k",
        &[&id, &keys],
    )
    .await?;
    Ok(ReservationId(id))
}

const PENDING_COLUMNS: &str = "id, state, call_id, fingerprint, amount_usd_micros, tool, payee, \
     protocol, meta_json, proof_json, valid_before, created_at, owner, lease_until";

async fn load_pending(
    tx: &Transaction<'_>,
    id: ReservationId,
) -> Result<PendingPayment, LedgerError> {
    let rows = tx
        .query_cached(
            &format!("SELECT {PENDING_COLUMNS} FROM reservations WHERE id = $1"),
            &[&id.0],
        )
        .await?;
    load_pending_rows(tx, rows)
        .await?
        .pop()
        .ok_or(LedgerError::UnknownReservation(id))
}

/// Rows of [`PENDING_COLUMNS`] with their keys (read in one more query).
async fn load_pending_rows(
    tx: &Transaction<'_>,
    rows: Vec<tokio_postgres::Row>,
) -> Result<Vec<PendingPayment>, LedgerError> {
    let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    let mut keys = keys_of_many(tx, &ids).await?;
    let time = |v: Option<i64>| v.map(|v| from_sql("time", v)).transpose();
    rows.iter()
        .map(|row| {
            let id: i64 = row.get(0);
            Ok(PendingPayment {
                id: ReservationId(id),
                state: ReservationState::parse(row.get(1))?,
                call_id: row.get(2),
                fingerprint: row.get(3),
                amount_usd_micros: from_sql("amount", row.get(4))?,
                keys: keys.remove(&id).unwrap_or_default(),
                tool: row.get(5),
                payee: row.get(6),
                protocol: row.get(7),
                meta_json: row.get(8),
                proof_json: row.get(9),
                valid_before: time(row.get(10))?,
                created_at: from_sql("time", row.get(11))?,
                owner: row.get(12),
                lease_until: time(row.get(13))?,
            })
        })
        .collect()
}

/// The sorted keys of each of `ids`.
async fn keys_of_many(
    tx: &Transaction<'_>,
    ids: &[i64],
) -> Result<BTreeMap<i64, Vec<String>>, LedgerError> {
    let mut keys: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    if ids.is_empty() {
        return Ok(keys);
    }
    for row in tx
        .query_cached(
            "SELECT reservation_id, key FROM reservation_keys
             WHERE reservation_id = ANY($1) ORDER BY reservation_id, key",
            &[&ids],
        )
        .await?
    {
        keys.entry(row.get(0)).or_default().push(row.get(1));
    }
    Ok(keys)
}

/// The receipts of `ids`, in that order.
async fn load_receipts(tx: &Transaction<'_>, ids: &[i64]) -> Result<Vec<ReceiptRow>, LedgerError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = tx
        .query_cached(
            "SELECT r.reservation_id, r.receipt_id, v.call_id, v.tool, v.payee, v.protocol,
                    v.amount_usd_micros, v.actual_usd_micros, r.at, r.committed_at, r.json,
                    v.meta_json
             FROM receipts r JOIN reservations v ON v.id = r.reservation_id
             WHERE r.reservation_id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut keys = keys_of_many(tx, ids).await?;
    let mut by_id: BTreeMap<i64, ReceiptRow> = BTreeMap::new();
    for row in &rows {
        let id: i64 = row.get(0);
        let receipt_id: String = row.get(1);
        let actual: Option<i64> = row.get(7);
        let actual = actual
            .ok_or_else(|| LedgerError::Corrupt(format!("receipt {receipt_id:?} has no amount")))?;
        by_id.insert(
            id,
            ReceiptRow {
                reservation_id: ReservationId(id),
                receipt_id,
                call_id: row.get(2),
                tool: row.get(3),
                payee: row.get(4),
                protocol: row.get(5),
                reserved_usd_micros: from_sql("amount", row.get(6))?,
                amount_usd_micros: from_sql("amount", actual)?,
                at: from_sql("time", row.get(8))?,
                committed_at: from_sql("time", row.get(9))?,
                keys: keys.remove(&id).unwrap_or_default(),
                json: row.get(10),
                meta_json: row.get(11),
            },
        );
    }
    ids.iter()
        .map(|id| {
            by_id
                .remove(id)
                .ok_or(LedgerError::UnknownReservation(ReservationId(*id)))
        })
        .collect()
}
