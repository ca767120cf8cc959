//! The embedded ledger: one SQLite file, `ledger.sqlite3` in the state directory, in WAL mode
//! with `synchronous = FULL`; every method is one transaction (`BEGIN IMMEDIATE` for writes),
//! so several tollgate processes can share the file. One exception to waiting for the disk:
//! the commit of a pending payment (see [`SqliteLedger::write_lazy`]), whose loss to a power
//! failure reconciliation repairs from the proof that stays pending.
//!
//! Ownership of open payments (leases, claims of unknown outcomes) is documented on
//! [`Owners`].

mod approvals;
mod schema;
mod tokens;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{
    BudgetNode, BudgetRow, Cap, CapStatus, Lease, LedgerError, NewReceipt, NewReservation, Owners,
    PendingPayment, Prove, ReceiptRow, ReservationId, ReservationState, Reservations, Reserved,
    Revocations, Store, UNOWNED_RESERVED_SECS,
};

use super::FILE_NAME;

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Database(e.to_string())
    }
}
/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = schema::SCHEMA_VERSION;

/// SQL for "open": the exact condition of the partial indexes on open reservations. SQLite uses
/// a partial index only when a query repeats its condition word for word (`state = 'pending'`
/// alone does not imply it), so every query by fingerprint says it; without it, each paid call
/// scanned every reservation ever made.
const OPEN: &str = "state IN ('reserved', 'pending')";

/// SQL for "open and owned by nobody alive at ?2": no owner, or a lapsed lease.
const UNOWNED: &str = "(owner IS NULL OR lease_until IS NULL OR lease_until < ?2)";

/// The newest payment of a call (fingerprint ?1) whose proof was recorded and that nobody
/// alive at ?2 owns.
fn unknown_of_sql() -> String {
    format!(
        "SELECT id FROM reservations
         WHERE fingerprint = ?1 AND {OPEN} AND state = 'pending'
           AND proof_json IS NOT NULL AND {UNOWNED}
         ORDER BY id DESC LIMIT 1"
    )
}

/// The owners of a call's (fingerprint ?1) payments in flight.
fn owners_of_sql() -> String {
    format!(
        "SELECT id, owner FROM reservations
         WHERE fingerprint = ?1 AND {OPEN} AND state = 'pending'
         ORDER BY id DESC LIMIT 64"
    )
}

/// The ledger file, opened by this process. Cheap to share (`&self` everywhere; one
/// connection behind a mutex); several processes may each open the same file.
#[derive(Debug)]
pub struct SqliteLedger {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Lazy commits made ([`Self::write_lazy`]); every [`CHECKPOINT_EVERY`]th checkpoints.
    lazy_commits: AtomicU32,
    /// A second connection, opened on the first checkpoint, that copies the log into the file
    /// without holding `conn`.
    checkpointer: Mutex<Option<Connection>>,
}

/// Lazy commits between two checkpoints: about one paid call's worth of log each (a
/// reservation and its commit write ~11 pages), so the log stays ~100 pages long.
const CHECKPOINT_EVERY: u32 = 8;

impl SqliteLedger {
    /// Opens `state_dir/ledger.sqlite3`, creating the directory (mode 0700) and the file
    /// (mode 0600) if needed, and migrating an older schema.
    pub fn open(state_dir: &Path) -> Result<SqliteLedger, LedgerError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let conn = schema::open(&path)?;
        Ok(SqliteLedger {
            path,
            conn: Mutex::new(conn),
            lazy_commits: AtomicU32::new(0),
            checkpointer: Mutex::new(None),
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction, which rolled back: the
        // connection is as good as before.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in a write transaction taken at once (`BEGIN IMMEDIATE`): no other connection,
    /// in any process, writes between its reads and its writes. An error rolls back.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// [`Self::write`] without waiting for the disk: the transaction is in the write-ahead log
    /// at once (a killed process loses nothing) and on the disk with the next durable write or
    /// checkpoint; only a power loss or an OS crash may undo it. For the commit of a payment
    /// that was pending: undone, the payment is pending again with its proof, still held
    /// against every cap, and reconciliation commits it from what the chain or backend says.
    ///
    /// Every [`CHECKPOINT_EVERY`] lazy commits, the caller then copies the log into the file
    /// ([`Self::checkpoint`]): that makes these commits durable too, and keeps the log short.
    fn write_lazy<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let out = {
            let mut conn = self.lock();
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let out = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })();
            conn.pragma_update(None, "synchronous", "FULL")?;
            out
        };
        let made = self.lazy_commits.fetch_add(1, Ordering::Relaxed);
        if made.wrapping_add(1).is_multiple_of(CHECKPOINT_EVERY)
            && let Err(e) = self.checkpoint()
        {
            tracing::debug!(error = %e, "the ledger's log was not copied into its file this time");
        }
        out
    }

    /// Copies the write-ahead log into the ledger file (a passive checkpoint: it waits for no
    /// reader or writer, in any process), on a connection of its own so that no payment waits
    /// for it.
    ///
    /// Why: the durable write before a proof leaves costs one sync of the log, and a sync of
    /// a log that grows (appended to) costs about twice one that is written over in place.
    /// SQLite starts the log again from its beginning once all of it has been copied, so a
    /// log copied every few calls is written over in place, while the default (a copy every
    /// 1,000 pages, made by whichever commit crosses the mark, the payment's own included)
    /// keeps it growing for ~90 paid calls at a time, and makes one payment in 90 wait for the
    /// copy. Off the payment's path here: the caller is the receipt's commit, made beside the
    /// answer.
    fn checkpoint(&self) -> Result<(), LedgerError> {
        let mut checkpointer = self
            .checkpointer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if checkpointer.is_none() {
            let conn = Connection::open(&self.path)?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            *checkpointer = Some(conn);
        }
        if let Some(conn) = checkpointer.as_ref() {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        Ok(())
    }

    /// Runs `f` in a read transaction: one consistent snapshot, blocking no writer.
    fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

impl Reservations for SqliteLedger {
    /// Holds `r.amount_usd_micros` against every cap in `r.caps`, if it fits under all of
    /// them: for each cap, spend in its window + open reservations on its key (whatever their
    /// age) + the amount must not exceed its limit. Check and write are one transaction, so concurrent callers
    /// (threads or processes) can never together exceed a cap.
    ///
    /// Fails with [`LedgerError::Exceeded`] naming the first cap that does not fit; then
    /// nothing is written.
    fn reserve(&self, r: NewReservation, now: u64) -> Result<ReservationId, LedgerError> {
        self.write(|tx| reserve_in(tx, &r, now))
    }

    /// One `BEGIN IMMEDIATE` transaction: the caps checked, the reservation written, the proof
    /// made (while no other writer can act) and recorded pending.
    fn reserve_proved(&self, r: NewReservation, now: u64, prove: Prove<'_>) -> Reserved {
        self.write(|tx| {
            let id = reserve_in(tx, &r, now)?;
            let proved = prove(id).map_err(LedgerError::NotProved)?;
            tx.prepare_cached(
                "UPDATE reservations SET state = 'pending', proof_json = ?2, valid_before = ?3
                 WHERE id = ?1",
            )?
            .execute(params![
                id.0,
                proved.proof_json,
                to_sql("time", proved.valid_before)?
            ])?;
            Ok(id)
        })
    }

    /// Records that a proof is about to leave the process (state `pending`), so a crash or a
    /// retry re-sends this proof rather than making a new one. Call it before sending.
    ///
    /// Recording the same proof again is a no-op; a different proof for an already pending
    /// reservation is [`LedgerError::ProofAlreadyRecorded`] (two proofs could pay twice).
    fn mark_pending(
        &self,
        id: ReservationId,
        proof_json: &str,
        valid_before: u64,
    ) -> Result<(), LedgerError> {
        let valid_before = to_sql("time", valid_before)?;
        self.write(|tx| {
            let (state, _) = state_of(tx, id)?;
            match state {
                ReservationState::Reserved => {
                    tx.prepare_cached(
                        "UPDATE reservations
                         SET state = 'pending', proof_json = ?2, valid_before = ?3
                         WHERE id = ?1",
                    )?
                    .execute(params![id.0, proof_json, valid_before])?;
                    Ok(())
                }
                ReservationState::Pending => {
                    let recorded: Option<String> = tx
                        .prepare_cached("SELECT proof_json FROM reservations WHERE id = ?1")?
                        .query_row([id.0], |row| row.get(0))?;
                    if recorded.as_deref() == Some(proof_json) {
                        Ok(())
                    } else {
                        Err(LedgerError::ProofAlreadyRecorded(id))
                    }
                }
                state => Err(LedgerError::WrongState {
                    id,
                    state,
                    action: "mark pending",
                }),
            }
        })
    }

    /// Replaces the proof of a pending reservation: an L402 payment is recorded as pending
    /// (with its payment hash) before the invoice is paid, and its proof (the token) is known
    /// only after.
    fn replace_proof(
        &self,
        id: ReservationId,
        proof_json: &str,
        valid_before: u64,
    ) -> Result<(), LedgerError> {
        let valid_before = to_sql("time", valid_before)?;
        self.write(|tx| {
            let (state, _) = state_of(tx, id)?;
            if state != ReservationState::Pending {
                return Err(LedgerError::WrongState {
                    id,
                    state,
                    action: "replace the proof of",
                });
            }
            tx.prepare_cached(
                "UPDATE reservations SET proof_json = ?2, valid_before = ?3 WHERE id = ?1",
            )?
            .execute(params![id.0, proof_json, valid_before])?;
            Ok(())
        })
    }

    /// Settles a reservation: the payment happened and cost `actual_usd_micros`. Records that
    /// amount as spend under every key of the reservation at `now` (even if it is more than
    /// was reserved: the money is gone either way), stops the reservation counting, and
    /// stores the receipt; all in one transaction.
    ///
    /// Committing an already committed reservation with the same receipt id is a no-op;
    /// another receipt for it is [`LedgerError::WrongState`]. Spend is never recorded twice.
    /// A released reservation can still be committed: if the money moved after all (a
    /// settlement arrived, or the chain says so), the spend and the receipt are recorded; a
    /// receipt is never lost to an earlier guess.
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
        let was_released = self.write_lazy(|tx| {
            let (state, reserved) = state_of(tx, id)?;
            // Released: the amount no longer counts as held, so there is nothing to unhold.
            let held = if state == ReservationState::Released {
                0
            } else {
                reserved
            };
            match state {
                ReservationState::Reserved
                | ReservationState::Pending
                | ReservationState::Released => {}
                ReservationState::Committed => {
                    let recorded: Option<String> = tx
                        .prepare_cached(
                            "SELECT receipt_id FROM receipts WHERE reservation_id = ?1",
                        )?
                        .query_row([id.0], |row| row.get(0))
                        .optional()?;
                    return if recorded.as_deref() == Some(receipt.receipt_id.as_str()) {
                        Ok(false)
                    } else {
                        Err(LedgerError::WrongState {
                            id,
                            state,
                            action: "commit",
                        })
                    };
                }
            }
            let existing: Option<i64> = tx
                .prepare_cached("SELECT reservation_id FROM receipts WHERE receipt_id = ?1")?
                .query_row([&receipt.receipt_id], |row| row.get(0))
                .optional()?;
            if let Some(existing) = existing {
                return Err(LedgerError::ReceiptAlreadyRecorded {
                    receipt_id: receipt.receipt_id,
                    existing: ReservationId(existing),
                });
            }
            tx.prepare_cached(
                "UPDATE reservations
                 SET state = 'committed', actual_usd_micros = ?2, settled_at = ?3,
                     owner = NULL, lease_until = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id.0, actual, now_sql])?;
            tx.prepare_cached(
                "INSERT INTO receipts (reservation_id, receipt_id, at, committed_at, json)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                id.0,
                receipt.receipt_id,
                receipt_at,
                now_sql,
                receipt.json
            ])?;
            let mut spend = tx.prepare_cached(
                "INSERT INTO spend (key, at, reservation_id, amount_usd_micros)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            // An upsert, though `reserve` created the row: spend that happened is recorded
            // whatever else is wrong.
            let mut totals = tx.prepare_cached(
                "INSERT INTO key_totals (key, spent_usd_micros) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE
                 SET spent_usd_micros = spent_usd_micros + excluded.spent_usd_micros,
                     reserved_usd_micros = reserved_usd_micros - ?3",
            )?;
            let mut hourly = tx.prepare_cached(
                "INSERT INTO spend_hours (key, hour, amount_usd_micros) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key, hour) DO UPDATE
                 SET amount_usd_micros = amount_usd_micros + excluded.amount_usd_micros",
            )?;
            let hour = now_sql / HOUR_SECS;
            for key in keys_of(tx, id)? {
                spend.execute(params![key, now_sql, id.0, actual])?;
                hourly.execute(params![key, hour, actual])?;
                totals.execute(params![key, actual, held])?;
            }
            Ok(state == ReservationState::Released)
        })?;
        // The rare commit of a payment released on a guess: nothing else would find it again
        // after a power loss, so it goes to disk now (a checkpoint syncs the log first).
        if was_released {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// The payment provably did not happen: the reservation stops counting. Releasing a
    /// released reservation is a no-op; releasing a committed one is
    /// [`LedgerError::WrongState`].
    fn release(&self, id: ReservationId, now: u64) -> Result<(), LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.write(|tx| {
            let (state, reserved) = state_of(tx, id)?;
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
            tx.prepare_cached(
                "UPDATE reservations
                 SET state = 'released', settled_at = ?2, owner = NULL, lease_until = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id.0, now_sql])?;
            let mut totals = tx.prepare_cached(
                "UPDATE key_totals SET reserved_usd_micros = reserved_usd_micros - ?2
                 WHERE key = ?1",
            )?;
            for key in keys_of(tx, id)? {
                totals.execute(params![key, reserved])?;
            }
            Ok(())
        })
    }

    /// Every open reservation (reserved or pending), oldest first: what a process must
    /// reconcile at start. Each still counts against its caps.
    fn pending(&self) -> Result<Vec<PendingPayment>, LedgerError> {
        self.read(|tx| {
            let ids: Vec<i64> = tx
                .prepare_cached(
                    "SELECT id FROM reservations WHERE state IN ('reserved', 'pending')
                     ORDER BY id",
                )?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            ids.into_iter()
                .map(|id| load_pending(tx, ReservationId(id)))
                .collect()
        })
    }

    /// Where each cap stands at `now`, from one consistent snapshot.
    fn status(&self, caps: &[Cap], now: u64) -> Result<Vec<CapStatus>, LedgerError> {
        to_sql("time", now)?;
        self.read(|tx| {
            caps.iter()
                .map(|cap| {
                    let (spent, reserved) = usage(tx, cap, now)?;
                    Ok(CapStatus {
                        key: cap.key.clone(),
                        limit_usd_micros: cap.limit_usd_micros,
                        window_secs: cap.window_secs,
                        spent_usd_micros: spent,
                        reserved_usd_micros: reserved,
                        remaining_usd_micros: cap
                            .limit_usd_micros
                            .saturating_sub(spent.saturating_add(reserved)),
                    })
                })
                .collect()
        })
    }

    /// Receipts of payments that count against any of `keys`, committed at or after `since`,
    /// newest first, at most `limit`. Pass a budget's key to see its descendants' spend too
    /// (every descendant's payment counts against its ancestors' keys).
    fn receipts(
        &self,
        keys: &[String],
        since: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReceiptRow>, LedgerError> {
        let since = to_sql("time", since.unwrap_or(0))?;
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            // One indexed, limited walk per key, then merge: ORDER BY over `key IN (...)`
            // would sort every matching entry.
            let mut newest: BTreeSet<(i64, i64)> = BTreeSet::new();
            let mut walk = tx.prepare_cached(
                "SELECT at, reservation_id FROM spend WHERE key = ?1 AND at >= ?2
                 ORDER BY at DESC, reservation_id DESC LIMIT ?3",
            )?;
            for key in keys {
                let rows = walk.query_map(params![key, since, limit_sql], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })?;
                for row in rows {
                    newest.insert(row?);
                }
            }
            let mut seen = BTreeSet::new();
            newest
                .into_iter()
                .rev()
                .filter(|(_, id)| seen.insert(*id))
                .take(limit)
                .map(|(_, id)| load_receipt(tx, ReservationId(id)))
                .collect()
        })
    }

    /// Every receipt committed at or after `since`, newest first, at most `limit`.
    fn all_receipts(
        &self,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReceiptRow>, LedgerError> {
        let since = to_sql("time", since.unwrap_or(0))?;
        let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|tx| {
            let ids: Vec<i64> = tx
                .prepare_cached(
                    "SELECT reservation_id FROM receipts WHERE committed_at >= ?1
                     ORDER BY committed_at DESC, reservation_id DESC LIMIT ?2",
                )?
                .query_map(params![since, limit_sql], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            ids.into_iter()
                .map(|id| load_receipt(tx, ReservationId(id)))
                .collect()
        })
    }

    /// Records a chain of budgets, outermost first (each the parent of the next), so the tree
    /// of budgets can be shown. Known budgets are left as they are.
    fn register_budgets(&self, chain: &[BudgetNode], now: u64) -> Result<(), LedgerError> {
        let now = to_sql("time", now)?;
        self.write(|tx| {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO budgets (key, parent, label, limit_usd_micros, first_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut parent: Option<&str> = None;
            for node in chain {
                let limit = to_sql("limit", node.limit_usd_micros)?;
                insert.execute(params![node.key, parent, node.label, limit, now])?;
                parent = Some(&node.key);
            }
            Ok(())
        })
    }

    /// Every recorded budget with where it stands: a flat list, parents before children.
    fn budget_tree(&self) -> Result<Vec<BudgetRow>, LedgerError> {
        self.read(|tx| {
            let mut rows = tx
                .prepare_cached(
                    "SELECT b.key, b.parent, b.label, b.limit_usd_micros, b.first_seen,
                            COALESCE(t.spent_usd_micros, 0), COALESCE(t.reserved_usd_micros, 0)
                     FROM budgets b LEFT JOIN key_totals t ON t.key = b.key
                     ORDER BY b.first_seen, b.key",
                )?
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        [row.get::<_, i64>(3)?, row.get(4)?, row.get(5)?, row.get(6)?],
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .map(
                    |(key, parent, label, [limit, first_seen, spent, reserved])| {
                        Ok(BudgetRow {
                            key,
                            parent,
                            label,
                            limit_usd_micros: from_sql("limit", limit)?,
                            first_seen: from_sql("time", first_seen)?,
                            spent_usd_micros: from_sql("spend", spent)?,
                            reserved_usd_micros: from_sql("reservation", reserved)?,
                        })
                    },
                )
                .collect::<Result<Vec<_>, LedgerError>>()?;
            // Parents before children, siblings in the order they were first seen.
            let mut ordered = Vec::with_capacity(rows.len());
            let keys: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
            let mut stack: Vec<BudgetRow> = Vec::new();
            let (roots, mut rest): (Vec<_>, Vec<_>) = rows
                .drain(..)
                .partition(|r| r.parent.as_ref().is_none_or(|p| !keys.contains(p)));
            stack.extend(roots.into_iter().rev());
            while let Some(node) = stack.pop() {
                let (children, others): (Vec<_>, Vec<_>) = rest
                    .drain(..)
                    .partition(|r| r.parent.as_deref() == Some(node.key.as_str()));
                rest = others;
                stack.extend(children.into_iter().rev());
                ordered.push(node);
            }
            Ok(ordered)
        })
    }
}

impl Owners for SqliteLedger {
    /// Extends the lease of each of `ids` still owned by `owner` to `until`; one transaction.
    /// Returns how many were renewed (a payment settled meanwhile is not).
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
        self.write(|tx| {
            let mut renew = tx.prepare_cached(
                "UPDATE reservations SET lease_until = ?3
                 WHERE id = ?1 AND owner = ?2 AND state IN ('reserved', 'pending')",
            )?;
            let mut renewed = 0;
            for id in ids {
                renewed += renew.execute(params![id.0, owner, until])?;
            }
            Ok(renewed)
        })
    }

    /// `owner` gives the payment up without knowing its outcome (the call ended without an
    /// answer, or its process found the owner dead): from now on it is unknown. A no-op if
    /// `owner` no longer owns it.
    fn disown(&self, id: ReservationId, owner: &str) -> Result<(), LedgerError> {
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE reservations SET owner = NULL, lease_until = NULL
                 WHERE id = ?1 AND owner = ?2 AND state IN ('reserved', 'pending')",
            )?
            .execute(params![id.0, owner])?;
            Ok(())
        })
    }

    /// A retry of the same call: takes ownership of the newest payment with `fingerprint`
    /// whose proof was recorded and whose outcome is unknown (no live owner), and returns it;
    /// the caller then re-sends its proof. `None` when there is none: a payment in flight in
    /// a live call is never returned (its twin pays its own). Check and claim are one
    /// transaction, so two retries never both re-send one proof.
    fn claim_unknown(
        &self,
        fingerprint: &str,
        lease: &Lease,
        now: u64,
    ) -> Result<Option<PendingPayment>, LedgerError> {
        let now_sql = to_sql("time", now)?;
        let until = to_sql("time", lease.until)?;
        let find = |tx: &Transaction<'_>| -> Result<Option<i64>, LedgerError> {
            Ok(tx
                .prepare_cached(&unknown_of_sql())?
                .query_row(params![fingerprint, now_sql], |row| row.get(0))
                .optional()?)
        };
        // Nearly every call has nothing to claim: find out without taking the write lock.
        if self.read(find)?.is_none() {
            return Ok(None);
        }
        self.write(|tx| {
            // Again under the lock: another claimant may have won meanwhile.
            let Some(id) = find(tx)? else { return Ok(None) };
            tx.prepare_cached(
                "UPDATE reservations SET owner = ?2, lease_until = ?3 WHERE id = ?1",
            )?
            .execute(params![id, lease.owner, until])?;
            load_pending(tx, ReservationId(id)).map(Some)
        })
    }

    /// The owners of open payments with a recorded proof and this fingerprint (the same call
    /// made earlier, maybe in a process that has died since), newest first.
    fn owners_of(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<(ReservationId, Option<String>)>, LedgerError> {
        self.read(|tx| {
            let rows = tx
                .prepare_cached(&owners_of_sql())?
                .query_map([fingerprint], |row| {
                    Ok((ReservationId(row.get(0)?), row.get::<_, Option<String>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Takes ownership of one open payment if nobody alive owns it (reconciliation does this
    /// before it asks the chain, so a retry cannot re-send the proof meanwhile). `None` if it
    /// is settled, released, or owned by a live call.
    fn claim(
        &self,
        id: ReservationId,
        lease: &Lease,
        now: u64,
    ) -> Result<Option<PendingPayment>, LedgerError> {
        let now_sql = to_sql("time", now)?;
        let until = to_sql("time", lease.until)?;
        let young = to_sql("time", now.saturating_sub(UNOWNED_RESERVED_SECS))?;
        self.write(|tx| {
            // An unowned `reserved` row younger than UNOWNED_RESERVED_SECS may be a live
            // call of a tollgate from before leases: left alone.
            let claimed = tx
                .prepare_cached(&format!(
                    "UPDATE reservations SET owner = ?3, lease_until = ?4
                     WHERE id = ?1 AND state IN ('reserved', 'pending') AND {UNOWNED}
                       AND NOT (state = 'reserved' AND owner IS NULL AND created_at > ?5)"
                ))?
                .execute(params![id.0, now_sql, lease.owner, until, young])?;
            if claimed == 0 {
                return Ok(None);
            }
            load_pending(tx, id).map(Some)
        })
    }
}

impl Revocations for SqliteLedger {
    /// Records that `id` (an opaque string, e.g. a credential's fingerprint) is revoked from
    /// `now` on. Revoking twice keeps the first time.
    fn revoke(&self, id: &str, now: u64) -> Result<(), LedgerError> {
        let now = to_sql("time", now)?;
        self.write(|tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO revocations (id, at) VALUES (?1, ?2)")?
                .execute(params![id, now])?;
            Ok(())
        })
    }

    /// Whether any of `ids` is revoked (e.g. any credential in a token's chain).
    fn is_revoked(&self, ids: &[String]) -> Result<bool, LedgerError> {
        self.read(|tx| {
            let mut find = tx.prepare_cached("SELECT 1 FROM revocations WHERE id = ?1")?;
            for id in ids {
                if find.exists([id])? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }
}

impl Store for SqliteLedger {
    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

fn create_private_dir(dir: &Path) -> Result<(), LedgerError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| LedgerError::Create {
        path: dir.to_owned(),
        source,
    })
}

/// The granularity of `spend_hours`, in seconds.
const HOUR_SECS: i64 = 3_600;

/// SQLite integers are signed 64-bit.
fn to_sql(what: &'static str, value: u64) -> Result<i64, LedgerError> {
    i64::try_from(value).map_err(|_| LedgerError::OutOfRange { what, value })
}

fn from_sql(what: &str, value: i64) -> Result<u64, LedgerError> {
    u64::try_from(value).map_err(|_| LedgerError::Corrupt(format!("negative {what} {value}")))
}

/// (spent in the cap's window, open reservations) for one cap.
fn usage(tx: &Transaction<'_>, cap: &Cap, now: u64) -> Result<(u64, u64), LedgerError> {
    let totals: Option<(i64, i64)> = tx
        .prepare_cached(
            "SELECT spent_usd_micros, reserved_usd_micros FROM key_totals WHERE key = ?1",
        )?
        .query_row([&cap.key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (lifetime, reserved) = totals.unwrap_or((0, 0));
    // Spend with `at > now - window` counts (and any stamped later than `now` by a process
    // whose clock runs ahead). A window reaching before the epoch is the lifetime total.
    let spent = match cap.window_secs.and_then(|w| now.checked_sub(w)) {
        None => lifetime,
        Some(start) => {
            // Whole hours from `spend_hours`; the partial first hour, (start, next hour),
            // entry by entry. The cost is one hour's entries plus one row per hour of the
            // window, however much history lies before it.
            let start = to_sql("time", start)?;
            let first_whole_hour = start / HOUR_SECS + 1;
            let partial: i64 = tx
                .prepare_cached(
                    "SELECT COALESCE(SUM(amount_usd_micros), 0) FROM spend
                     WHERE key = ?1 AND at > ?2 AND at < ?3",
                )?
                .query_row(
                    params![cap.key, start, first_whole_hour * HOUR_SECS],
                    |row| row.get(0),
                )?;
            let whole: i64 = tx
                .prepare_cached(
                    "SELECT COALESCE(SUM(amount_usd_micros), 0) FROM spend_hours
                     WHERE key = ?1 AND hour >= ?2",
                )?
                .query_row(params![cap.key, first_whole_hour], |row| row.get(0))?;
            partial.checked_add(whole).ok_or_else(|| {
                LedgerError::Corrupt(format!("spend under {:?} overflows", cap.key))
            })?
        }
    };
    Ok((
        from_sql("spend", spent)?,
        from_sql("reserved amount", reserved)?,
    ))
}

/// (state, reserved amount) of a reservation.
fn state_of(
    tx: &Transaction<'_>,
    id: ReservationId,
) -> Result<(ReservationState, i64), LedgerError> {
    let row: Option<(String, i64)> = tx
        .prepare_cached("SELECT state, amount_usd_micros FROM reservations WHERE id = ?1")?
        .query_row([id.0], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (state, amount) = row.ok_or(LedgerError::UnknownReservation(id))?;
    Ok((ReservationState::parse(&state)?, amount))
}

/// The cap keys of reservation ?1, in key order.
const KEYS_OF: &str = "SELECT key FROM reservation_keys WHERE reservation_id = ?1 ORDER BY key";

fn keys_of(tx: &Transaction<'_>, id: ReservationId) -> Result<Vec<String>, LedgerError> {
    Ok(tx
        .prepare_cached(KEYS_OF)?
        .query_map([id.0], |row| row.get(0))?
        .collect::<Result<_, _>>()?)
}

fn load_pending(tx: &Transaction<'_>, id: ReservationId) -> Result<PendingPayment, LedgerError> {
    let mut stmt = tx.prepare_cached(
        "SELECT state, call_id, fingerprint, amount_usd_micros, tool, payee, protocol,
                meta_json, proof_json, valid_before, created_at, owner, lease_until
         FROM reservations WHERE id = ?1",
    )?;
    let row = stmt
        .query_row([id.0], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, Option<String>>(8)?,
                row.get::<_, Option<i64>>(9)?,
                row.get::<_, i64>(10)?,
                row.get::<_, Option<String>>(11)?,
                row.get::<_, Option<i64>>(12)?,
            ))
        })
        .optional()?;
    let Some((
        state,
        call_id,
        fingerprint,
        amount,
        tool,
        payee,
        protocol,
        meta_json,
        proof_json,
        valid_before,
        created_at,
        owner,
        lease_until,
    )) = row
    else {
        return Err(LedgerError::UnknownReservation(id));
    };
    Ok(PendingPayment {
        id,
        state: ReservationState::parse(&state)?,
        call_id,
        fingerprint,
        amount_usd_micros: from_sql("amount", amount)?,
        keys: keys_of(tx, id)?,
        tool,
        payee,
        protocol,
        meta_json,
        proof_json,
        valid_before: valid_before.map(|v| from_sql("time", v)).transpose()?,
        created_at: from_sql("time", created_at)?,
        owner,
        lease_until: lease_until.map(|v| from_sql("time", v)).transpose()?,
    })
}

fn load_receipt(tx: &Transaction<'_>, id: ReservationId) -> Result<ReceiptRow, LedgerError> {
    let mut stmt = tx.prepare_cached(
        "SELECT r.receipt_id, v.call_id, v.tool, v.payee, v.protocol, v.amount_usd_micros,
                v.actual_usd_micros, r.at, r.committed_at, r.json, v.meta_json
         FROM receipts r JOIN reservations v ON v.id = r.reservation_id
         WHERE r.reservation_id = ?1",
    )?;
    let row = stmt
        .query_row([id.0], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<i64>>(6)?,
                row.get::<_, i64>(7)?,
                row.get::<_, i64>(8)?,
                row.get::<_, String>(9)?,
                row.get::<_, String>(10)?,
            ))
        })
        .optional()?;
    let Some((
        receipt_id,
        call_id,
        tool,
        payee,
        protocol,
        reserved,
        actual,
        at,
        committed_at,
        json,
        meta_json,
    )) = row
    else {
        return Err(LedgerError::UnknownReservation(id));
    };
    let actual = actual
        .ok_or_else(|| LedgerError::Corrupt(format!("receipt {receipt_id:?} has no amount")))?;
    Ok(ReceiptRow {
        reservation_id: id,
        receipt_id,
        call_id,
        tool,
        payee,
        protocol,
        reserved_usd_micros: from_sql("amount", reserved)?,
        amount_usd_micros: from_sql("amount", actual)?,
        at: from_sql("time", at)?,
        committed_at: from_sql("time", committed_at)?,
        keys: keys_of(tx, id)?,
        json,
        meta_json,
    })
}

/// Checks every cap and writes the reservation, inside the caller's write transaction.
fn reserve_in(
    tx: &Transaction<'_>,
    r: &NewReservation,
    now: u64,
) -> Result<ReservationId, LedgerError> {
    let amount = to_sql("amount", r.amount_usd_micros)?;
    let now_sql = to_sql("time", now)?;
    if r.unless_call_open
        && tx
            .prepare_cached(&owners_of_sql())?
            .exists([r.fingerprint.as_str()])?
    {
        return Err(LedgerError::CallOpen);
    }
    for cap in &r.caps {
        let (spent, reserved) = usage(tx, cap, now)?;
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
    tx.prepare_cached(
        "INSERT INTO reservations (call_id, fingerprint, state, amount_usd_micros, tool,
                 payee, protocol, meta_json, created_at, owner, lease_until)
             VALUES (?1, ?2, 'reserved', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        r.call_id,
        r.fingerprint,
        amount,
        r.tool,
        r.payee,
        r.protocol,
        r.meta_json,
        now_sql,
        owner,
        lease_until
    ])?;
    let id = tx.last_insert_rowid();
    let keys: BTreeSet<&str> = r.caps.iter().map(|c| c.key.as_str()).collect();
    let mut link =
        tx.prepare_cached("INSERT INTO reservation_keys (reservation_id, key) VALUES (?1, ?2)")?;
    let mut hold = tx.prepare_cached(
        "INSERT INTO key_totals (key, reserved_usd_micros) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE
             SET reserved_usd_micros = reserved_usd_micros + excluded.reserved_usd_micros",
    )?;
    for key in keys {
        link.execute(params![id, key])?;
        hold.execute(params![key, amount])?;
    }
    Ok(ReservationId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paid call's statements are compiled once per connection, not again whenever their
    /// arguments change (SQLite does that for a bound value that might change the plan, as
    /// in every query here with an `ORDER BY`, unless the query planner stability guarantee
    /// is on): the reservation's transaction is on the way of every proof.
    #[test]
    fn a_paid_calls_statements_are_not_compiled_again_for_new_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(dir.path()).unwrap();
        for i in 0..4u64 {
            let id = ledger
                .reserve(
                    NewReservation {
                        call_id: format!("call-{i}"),
                        fingerprint: format!("fp-{i}"),
                        amount_usd_micros: 1_000,
                        caps: vec![Cap {
                            key: "policy:per-day".into(),
                            limit_usd_micros: 1_000_000,
                            window_secs: Some(86_400),
                        }],
                        tool: "weather".into(),
                        payee: "0xpayee".into(),
                        protocol: "x402".into(),
                        meta_json: "{}".into(),
                        lease: None,
                        unless_call_open: true,
                    },
                    1_000 + i,
                )
                .unwrap();
            ledger.mark_pending(id, "{}", 2_000 + i).unwrap();
            let receipt = NewReceipt {
                receipt_id: format!("0xtx{i}"),
                at: 1_000 + i,
                json: "{}".into(),
            };
            ledger.commit(id, 1_000, receipt, 1_000 + i).unwrap();
        }
        let conn = ledger.lock();
        for sql in [owners_of_sql(), KEYS_OF.to_owned()] {
            let statement = conn.prepare_cached(&sql).unwrap();
            assert_eq!(
                statement.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
    }

    /// The queries every paid call makes by fingerprint read open payments through a partial
    /// index of open reservations, never the whole history of reservations.
    #[test]
    fn queries_by_fingerprint_read_only_open_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(dir.path()).unwrap();
        let conn = ledger.lock();
        for (sql, arguments) in [
            (unknown_of_sql(), params!["fp", 0]),
            (owners_of_sql(), params!["fp"]),
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(arguments, |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter().all(|step| !step.contains("SCAN reservations"))
                    && plan
                        .iter()
                        .any(|step| step.contains("INDEX reservations_open")),
                "{sql}\n{plan:?}"
            );
        }
    }
}
