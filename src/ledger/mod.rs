//! The ledger: durable memory of money (reservations, pending proofs, spend, receipts,
//! revocations) in one SQLite file, `ledger.sqlite3` in the state directory.
//!
//! It owns the two invariants that need a disk: a budget is never exceeded, even by many
//! concurrent calls in several tollgate processes sharing one file (the check and the
//! reservation are one `BEGIN IMMEDIATE` transaction); and a crash loses no receipt and leaves
//! no budget wrong (a reservation counts until it is committed or released, and a proof is
//! recorded before it leaves the process, so a restart can reconcile it).
//!
//! It does not decide what a budget is (that is `budget/`), nor know HTTP, MCP or any payment
//! protocol: caps are opaque keys with a limit, proofs and receipts opaque JSON text.
//!
//! The life of one payment ([`PaymentStage`] names each state):
//!
//! ```text
//! reserve (owner + lease) ──► mark_pending: in flight (proof recorded, owner renews its lease)
//!    │                              ├──► commit: settled (actual amount, receipt)
//!    │                              ├──► release: released (provably not paid)
//!    │                              └──► owner gone, lease lapsed, or no answer: unknown
//!    └──► release                                   │
//!                                 unknown ──► claim (a retry of the same call, or
//!                                             reconciliation): in flight again, one owner
//! ```
//!
//! Only an unknown payment's proof may be re-sent, and only by the one caller that claimed it
//! ([`Ledger::claim_unknown`]); a live owner's payment is never touched by anyone else. Every
//! transition is one transaction.
//!
//! Cost: a budget check reads one running total per cap (lifetime caps), or for a rolling cap
//! sums hourly totals for the whole hours of its window plus the spend entries of its first,
//! partial hour (both through indexes on key and time). It never reads receipts or history
//! before the window, so it costs the same with a million receipts as with ten.
//!
//! Every method blocks on SQLite (a commit waits for an fsync, a writer may wait up to five
//! seconds for another process's transaction); call it from `spawn_blocking` in async code.
//! Times are Unix seconds given by the caller, so tests control the clock.

mod approvals;
mod error;
mod leases;
mod schema;
mod tokens;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

pub use approvals::{Approval, ApprovalState, Decided, NewApproval, Redeemed};
pub use error::LedgerError;
pub use tokens::PaidToken;

/// The ledger's file name inside the state directory.
pub const FILE_NAME: &str = "ledger.sqlite3";

/// One limit a payment must fit under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cap {
    /// Opaque key chosen by the caller, e.g. `policy:per-day`, `budget:<64 hex>`. Spend is
    /// recorded per key, so the same key must always mean the same budget.
    pub key: String,
    /// The most that may be spent (plus reserved) under this key, in micro-USD.
    pub limit_usd_micros: u64,
    /// `None`: a lifetime total. `Some(w)`: a rolling window; spend committed in the last `w`
    /// seconds (`at > now - w`) counts.
    pub window_secs: Option<u64>,
}

impl Cap {
    /// A lifetime cap: everything ever spent under `key` counts.
    pub fn lifetime(key: impl Into<String>, limit_usd_micros: u64) -> Self {
        Cap {
            key: key.into(),
            limit_usd_micros,
            window_secs: None,
        }
    }

    /// A rolling cap: spend committed in the last `window_secs` seconds counts.
    pub fn rolling(key: impl Into<String>, limit_usd_micros: u64, window_secs: u64) -> Self {
        Cap {
            key: key.into(),
            limit_usd_micros,
            window_secs: Some(window_secs),
        }
    }
}

/// A payment about to be attempted, as given to [`Ledger::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    /// The tool call this payment is for (for people reading receipts).
    pub call_id: String,
    /// Identifies "the same call" across retries (e.g. a hash of tool, arguments and payee),
    /// so a retry finds the proof already sent with [`Ledger::find_pending`].
    pub fingerprint: String,
    /// The most this payment may cost, in micro-USD: what is held against every cap.
    pub amount_usd_micros: u64,
    /// Every cap the payment must fit under (policy and each budget caveat in the chain).
    pub caps: Vec<Cap>,
    /// The tool's name.
    pub tool: String,
    /// Who is paid (an address, a node id...).
    pub payee: String,
    /// The payment protocol (`x402`, `l402`, `mpp`).
    pub protocol: String,
    /// Anything else the caller wants kept with the payment, as JSON text.
    pub meta_json: String,
    /// The live call that owns the payment, and until when (it renews the lease while it
    /// runs). `None`: nobody owns it, and once a proof is recorded its outcome is unknown.
    pub lease: Option<Lease>,
}

/// Who owns an open payment, and until when: the owner is an opaque id (a call in a live
/// process); past `until` (Unix seconds) without renewal, the owner is taken to be gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: u64,
}

/// Where an open or closed payment is, as the state machine names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStage {
    /// Held by a live call; no proof has left the process.
    Reserved,
    /// A proof was recorded and may have left; a live call owns it.
    InFlight,
    /// Open, and no live call owns it: its owner died, its lease lapsed, or its call ended
    /// without an answer. With a proof, it may have been paid: only a claim (one retry of
    /// the same call, or reconciliation) may act on it. Without one, nothing left the process.
    Unknown,
    /// Paid, with a receipt.
    Settled,
    /// Provably not paid.
    Released,
}

impl fmt::Display for PaymentStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PaymentStage::Reserved => "reserved",
            PaymentStage::InFlight => "in flight",
            PaymentStage::Unknown => "unknown",
            PaymentStage::Settled => "settled",
            PaymentStage::Released => "released",
        })
    }
}

/// A receipt for a settled payment, as given to [`Ledger::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReceipt {
    /// The protocol's id for the payment (transaction hash, payment hash...). Unique in the
    /// ledger: the same payment cannot be recorded twice.
    pub receipt_id: String,
    /// When the payment settled, Unix seconds, as the protocol reports it.
    pub at: u64,
    /// The whole receipt, as JSON text.
    pub json: String,
}

/// Names one reservation in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId(pub i64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a reservation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// Held against its caps; no proof has left the process.
    Reserved,
    /// Held; a proof was recorded and may have left the process: the payment may have
    /// happened. Only reconciliation may release it.
    Pending,
    /// Paid: its actual amount is spend, and it has a receipt.
    Committed,
    /// Provably not paid: it no longer counts.
    Released,
}

impl ReservationState {
    /// The name stored in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "reserved",
            ReservationState::Pending => "pending",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
        }
    }

    fn parse(text: &str) -> Result<Self, LedgerError> {
        Ok(match text {
            "reserved" => ReservationState::Reserved,
            "pending" => ReservationState::Pending,
            "committed" => ReservationState::Committed,
            "released" => ReservationState::Released,
            other => {
                return Err(LedgerError::Corrupt(format!("reservation state {other:?}")));
            }
        })
    }
}

impl fmt::Display for ReservationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reservation that is still open (reserved or pending): what a restart must reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPayment {
    /// The reservation.
    pub id: ReservationId,
    /// `Reserved` (no proof left the process) or `Pending` (a proof may have).
    pub state: ReservationState,
    /// The tool call it was for.
    pub call_id: String,
    /// The retry fingerprint given at reservation.
    pub fingerprint: String,
    /// The amount held against every key.
    pub amount_usd_micros: u64,
    /// The cap keys it counts against, sorted.
    pub keys: Vec<String>,
    /// The tool's name.
    pub tool: String,
    /// Who is paid.
    pub payee: String,
    /// The payment protocol.
    pub protocol: String,
    /// The caller's JSON given at reservation.
    pub meta_json: String,
    /// The recorded proof, to re-send on retry (`None` while `Reserved`).
    pub proof_json: Option<String>,
    /// The proof cannot settle after this time (Unix seconds), if the protocol says so.
    pub valid_before: Option<u64>,
    /// When it was reserved (Unix seconds).
    pub created_at: u64,
    /// The call that owns it, if any (see [`Lease`]).
    pub owner: Option<String>,
    /// Until when the owner's lease runs (Unix seconds).
    pub lease_until: Option<u64>,
}

/// A `reserved` row without an owner (written before leases existed) this old belongs to no
/// live call: between reserving and recording the proof a call only signs.
pub const UNOWNED_RESERVED_SECS: u64 = 120;

impl PendingPayment {
    /// Seconds since it was reserved.
    pub fn age_secs(&self, now: u64) -> u64 {
        now.saturating_sub(self.created_at)
    }

    /// Whether a live call owns it at `now` (its lease has not lapsed).
    pub fn is_owned(&self, now: u64) -> bool {
        match (&self.owner, self.lease_until) {
            (Some(_), Some(until)) => until >= now,
            // Unowned rows from before leases: a young `reserved` one may be a live call.
            (None, _) => {
                self.state == ReservationState::Reserved
                    && self.age_secs(now) < UNOWNED_RESERVED_SECS
            }
            (Some(_), None) => false,
        }
    }

    /// Where it is in the state machine at `now`.
    pub fn stage(&self, now: u64) -> PaymentStage {
        match (self.state, self.is_owned(now)) {
            (ReservationState::Reserved, true) => PaymentStage::Reserved,
            (ReservationState::Pending, true) => PaymentStage::InFlight,
            (ReservationState::Reserved | ReservationState::Pending, false) => {
                PaymentStage::Unknown
            }
            (ReservationState::Committed, _) => PaymentStage::Settled,
            (ReservationState::Released, _) => PaymentStage::Released,
        }
    }
}

/// Where one cap stands, from [`Ledger::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapStatus {
    /// The cap's key.
    pub key: String,
    /// The cap's limit.
    pub limit_usd_micros: u64,
    /// The cap's window (`None`: lifetime).
    pub window_secs: Option<u64>,
    /// Committed spend within the window (or ever).
    pub spent_usd_micros: u64,
    /// Open reservations on the key (they count whatever the window).
    pub reserved_usd_micros: u64,
    /// What a new payment may still reserve: `limit - spent - reserved`, at least 0.
    pub remaining_usd_micros: u64,
}

/// One budget of a credential chain, to record in the tree of budgets.
#[derive(Debug, Clone)]
pub struct BudgetNode {
    pub key: String,
    pub label: Option<String>,
    pub limit_usd_micros: u64,
}

/// A recorded budget and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRow {
    pub key: String,
    pub parent: Option<String>,
    pub label: Option<String>,
    pub limit_usd_micros: u64,
    pub first_seen: u64,
    pub spent_usd_micros: u64,
    pub reserved_usd_micros: u64,
}

/// A committed payment with its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    /// The reservation it settled.
    pub reservation_id: ReservationId,
    /// The protocol's id for the payment.
    pub receipt_id: String,
    /// The tool call it was for.
    pub call_id: String,
    /// The tool's name.
    pub tool: String,
    /// Who was paid.
    pub payee: String,
    /// The payment protocol.
    pub protocol: String,
    /// What was held at reservation.
    pub reserved_usd_micros: u64,
    /// What was actually paid: the spend recorded under every key.
    pub amount_usd_micros: u64,
    /// When the payment settled, as the protocol reported it.
    pub at: u64,
    /// When it was committed to the ledger (the time its spend counts from).
    pub committed_at: u64,
    /// The cap keys it counts against, sorted.
    pub keys: Vec<String>,
    /// The receipt, as given to commit.
    pub json: String,
    /// The caller's JSON given at reservation.
    pub meta_json: String,
}

/// The ledger file, opened by this process. Cheap to share (`&self` everywhere; one
/// connection behind a mutex); several processes may each open the same file.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Ledger {
    /// Opens `state_dir/ledger.sqlite3`, creating the directory (mode 0700) and the file
    /// (mode 0600) if needed, and migrating an older schema.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let conn = schema::open(&path)?;
        Ok(Ledger {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version this build writes (`PRAGMA user_version` of an up-to-date file).
    pub const SCHEMA_VERSION: i64 = schema::SCHEMA_VERSION;

    /// Holds `r.amount_usd_micros` against every cap in `r.caps`, if it fits under all of
    /// them: for each cap, spend in its window + open reservations on its key (whatever their
    /// age) + the amount must not exceed its limit. Check and write are one transaction, so concurrent callers
    /// (threads or processes) can never together exceed a cap.
    ///
    /// Fails with [`LedgerError::Exceeded`] naming the first cap that does not fit; then
    /// nothing is written.
    pub fn reserve(&self, r: NewReservation, now: u64) -> Result<ReservationId, LedgerError> {
        let amount = to_sql("amount", r.amount_usd_micros)?;
        let now_sql = to_sql("time", now)?;
        self.write(|tx| {
            for cap in &r.caps {
                let (spent, reserved) = usage(tx, cap, now)?;
                let needed =
                    u128::from(spent) + u128::from(reserved) + u128::from(r.amount_usd_micros);
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
                Some(lease) => (Some(lease.owner.as_str()), Some(to_sql("time", lease.until)?)),
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
            let mut link = tx.prepare_cached(
                "INSERT INTO reservation_keys (reservation_id, key) VALUES (?1, ?2)",
            )?;
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
        })
    }

    /// Records that a proof is about to leave the process (state `pending`), so a crash or a
    /// retry re-sends this proof rather than making a new one. Call it before sending.
    ///
    /// Recording the same proof again is a no-op; a different proof for an already pending
    /// reservation is [`LedgerError::ProofAlreadyRecorded`] (two proofs could pay twice).
    pub fn mark_pending(
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
    pub fn commit(
        &self,
        id: ReservationId,
        actual_usd_micros: u64,
        receipt: NewReceipt,
        now: u64,
    ) -> Result<(), LedgerError> {
        let actual = to_sql("amount", actual_usd_micros)?;
        let now_sql = to_sql("time", now)?;
        let receipt_at = to_sql("time", receipt.at)?;
        self.write(|tx| {
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
                        Ok(())
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
            Ok(())
        })
    }

    /// The payment provably did not happen: the reservation stops counting. Releasing a
    /// released reservation is a no-op; releasing a committed one is
    /// [`LedgerError::WrongState`].
    pub fn release(&self, id: ReservationId, now: u64) -> Result<(), LedgerError> {
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
    pub fn pending(&self) -> Result<Vec<PendingPayment>, LedgerError> {
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
    pub fn status(&self, caps: &[Cap], now: u64) -> Result<Vec<CapStatus>, LedgerError> {
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
    pub fn receipts(
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
    pub fn all_receipts(
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

    /// Records that `id` (an opaque string, e.g. a credential's fingerprint) is revoked from
    /// `now` on. Revoking twice keeps the first time.
    pub fn revoke(&self, id: &str, now: u64) -> Result<(), LedgerError> {
        let now = to_sql("time", now)?;
        self.write(|tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO revocations (id, at) VALUES (?1, ?2)")?
                .execute(params![id, now])?;
            Ok(())
        })
    }

    /// Records a chain of budgets, outermost first (each the parent of the next), so the tree
    /// of budgets can be shown. Known budgets are left as they are.
    pub fn register_budgets(&self, chain: &[BudgetNode], now: u64) -> Result<(), LedgerError> {
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
    pub fn budget_tree(&self) -> Result<Vec<BudgetRow>, LedgerError> {
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

    /// Whether any of `ids` is revoked (e.g. any credential in a token's chain).
    pub fn is_revoked(&self, ids: &[String]) -> Result<bool, LedgerError> {
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

fn keys_of(tx: &Transaction<'_>, id: ReservationId) -> Result<Vec<String>, LedgerError> {
    Ok(tx
        .prepare_cached("SELECT key FROM reservation_keys WHERE reservation_id = ?1 ORDER BY key")?
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
