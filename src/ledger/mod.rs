//! The ledger: durable memory of money (reservations, pending proofs, spend, receipts,
//! revocations, approvals, kept tokens), behind traits so that a backend is one folder:
//!
//! * [`Reservations`]: caps, reservations, pending proofs, spend, receipts, the tree of budgets;
//! * [`Owners`]: which live call owns an open payment, and claiming one whose outcome is unknown;
//! * [`Approvals`] ([`approvals`]), [`Tokens`] ([`tokens`]), [`Revocations`];
//! * [`Store`]: all of them; callers hold a [`Ledger`] (`dyn Store`) and never name a backend.
//!
//! Two backends: [`SqliteLedger`] (`sqlite/`, the default): one SQLite file, `ledger.sqlite3`
//! in the state directory; and [`PostgresLedger`] (`postgres/`): a PostgreSQL database shared
//! by tollgates on several hosts (`[ledger] url` or `TOLLGATE_LEDGER_URL`; `Ledger::open_with`
//! chooses). No SQLite or PostgreSQL type crosses the traits. [`transfer`] moves a ledger from
//! one to the other.
//!
//! It owns the two invariants that need a disk: a budget is never exceeded, even by many
//! concurrent calls in several tollgate processes (and hosts) sharing one ledger (the check and
//! the reservation are one transaction across every cap); and a crash loses no receipt and leaves
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
//! ([`Owners::claim_unknown`]); a live owner's payment is never touched by anyone else. Every
//! transition is one transaction.
//!
//! Cost: a budget check reads one running total per cap (lifetime caps), or for a rolling cap
//! sums hourly totals for the whole hours of its window plus the spend entries of its first,
//! partial hour (both through indexes on key and time). It never reads receipts or history
//! before the window, so it costs the same with a million receipts as with ten.
//!
//! Every method blocks (a commit waits for an fsync or the database, a writer may wait for
//! another process's transaction); call it from `spawn_blocking` or `block_in_place` in async
//! code.
//! Times are Unix seconds given by the caller, so tests control the clock.

mod approvals;
mod error;
pub mod postgres;
mod sqlite;
mod tokens;
pub mod transfer;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use approvals::{Approval, ApprovalState, Approvals, Decided, NewApproval, Redeemed};
pub use error::LedgerError;
pub use postgres::PostgresLedger;
pub use sqlite::SqliteLedger;
pub use tokens::{PaidToken, Tokens};

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

/// What makes the proof of a new reservation, inside its transaction.
pub type Prove<'a> = &'a mut dyn FnMut(ReservationId) -> Result<Proved, String>;

/// A reservation made, or why not.
pub type Reserved = Result<ReservationId, LedgerError>;

/// A proof as [`Reservations::reserve_proved`] records it.
#[derive(Debug, Clone)]
pub struct Proved {
    /// The proof, as opaque JSON text.
    pub proof_json: String,
    /// It cannot settle after this time (Unix seconds).
    pub valid_before: u64,
}

/// A payment about to be attempted, as given to [`Reservations::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    /// The tool call this payment is for (for people reading receipts).
    pub call_id: String,
    /// Identifies "the same call" across retries (e.g. a hash of tool, arguments and payee),
    /// so a retry finds the proof already sent with [`Owners::claim_unknown`].
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
    /// Made only if no payment of the same call (`fingerprint`) has a proof recorded and is
    /// still open: otherwise nothing is written and the error is [`LedgerError::CallOpen`].
    /// A new call asks this, and looks at what is open only when told so, in one transaction
    /// instead of a read before every reservation.
    pub unless_call_open: bool,
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

/// A receipt for a settled payment, as given to [`Reservations::commit`].
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

/// Where one cap stands, from [`Reservations::status`].
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

/// Reservations, spend and receipts: the money. Every method is one transaction; a failed one
/// wrote nothing.
pub trait Reservations {
    /// Holds `r.amount_usd_micros` against every cap in `r.caps`, if it fits under all of
    /// them: for each cap, spend in its window + open reservations on its key (whatever their
    /// age) + the amount must not exceed its limit. Check and write are one transaction, so concurrent callers
    /// (threads or processes) can never together exceed a cap.
    ///
    /// Fails with [`LedgerError::Exceeded`] naming the first cap that does not fit; then
    /// nothing is written.
    fn reserve(&self, r: NewReservation, now: u64) -> Result<ReservationId, LedgerError>;

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
    ) -> Result<(), LedgerError>;

    /// Replaces the proof of a pending reservation: an L402 payment is recorded as pending
    /// (with its payment hash) before the invoice is paid, and its proof (the token) is known
    /// only after.
    fn replace_proof(
        &self,
        id: ReservationId,
        proof_json: &str,
        valid_before: u64,
    ) -> Result<(), LedgerError>;

    /// [`Reservations::reserve`] and [`Reservations::mark_pending`] as one: reserves, and in
    /// the same transaction records the proof `prove` makes for the new reservation (a
    /// signature made at once, without I/O: nothing is signed without a reservation, and one
    /// durable write instead of two). If `prove` fails, nothing is written and the error is
    /// [`LedgerError::NotProved`]. The default runs the two steps in two transactions,
    /// releasing the reservation when `prove` fails.
    fn reserve_proved(&self, r: NewReservation, now: u64, prove: Prove<'_>) -> Reserved {
        let id = self.reserve(r, now)?;
        let proved = match prove(id) {
            Ok(proved) => proved,
            Err(why) => {
                self.release(id, now)?;
                return Err(LedgerError::NotProved(why));
            }
        };
        if let Err(e) = self.mark_pending(id, &proved.proof_json, proved.valid_before) {
            self.release(id, now)?;
            return Err(e);
        }
        Ok(id)
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
    ) -> Result<(), LedgerError>;

    /// The payment provably did not happen: the reservation stops counting. Releasing a
    /// released reservation is a no-op; releasing a committed one is
    /// [`LedgerError::WrongState`].
    fn release(&self, id: ReservationId, now: u64) -> Result<(), LedgerError>;

    /// Every open reservation (reserved or pending), oldest first: what a process must
    /// reconcile at start. Each still counts against its caps.
    fn pending(&self) -> Result<Vec<PendingPayment>, LedgerError>;

    /// Where each cap stands at `now`, from one consistent snapshot.
    fn status(&self, caps: &[Cap], now: u64) -> Result<Vec<CapStatus>, LedgerError>;

    /// Receipts of payments that count against any of `keys`, committed at or after `since`,
    /// newest first, at most `limit`. Pass a budget's key to see its descendants' spend too
    /// (every descendant's payment counts against its ancestors' keys).
    fn receipts(
        &self,
        keys: &[String],
        since: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReceiptRow>, LedgerError>;

    /// Every receipt committed at or after `since`, newest first, at most `limit`.
    fn all_receipts(
        &self,
        since: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ReceiptRow>, LedgerError>;

    /// Records a chain of budgets, outermost first (each the parent of the next), so the tree
    /// of budgets can be shown. Known budgets are left as they are.
    fn register_budgets(&self, chain: &[BudgetNode], now: u64) -> Result<(), LedgerError>;

    /// Every recorded budget with where it stands: a flat list, parents before children.
    fn budget_tree(&self) -> Result<Vec<BudgetRow>, LedgerError>;
}

/// Who owns an open payment (a live call, under a lease it renews), and claiming one whose
/// outcome is unknown. Nobody acts on a payment a live call owns.
pub trait Owners: Reservations {
    /// Extends the lease of each of `ids` still owned by `owner` to `until`; one transaction.
    /// Returns how many were renewed (a payment settled meanwhile is not).
    fn renew_leases(
        &self,
        owner: &str,
        ids: &[ReservationId],
        until: u64,
    ) -> Result<usize, LedgerError>;

    /// `owner` gives the payment up without knowing its outcome (the call ended without an
    /// answer, or its process found the owner dead): from now on it is unknown. A no-op if
    /// `owner` no longer owns it.
    fn disown(&self, id: ReservationId, owner: &str) -> Result<(), LedgerError>;

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
    ) -> Result<Option<PendingPayment>, LedgerError>;

    /// The open payments with this fingerprint that left the process (pending: the same call
    /// made earlier, maybe in a process that has died since), newest first, with their owners
    /// (`None`: given up). A new call reads this only when its reservation found the call
    /// open ([`NewReservation::unless_call_open`]).
    fn owners_of(
        &self,
        fingerprint: &str,
    ) -> Result<Vec<(ReservationId, Option<String>)>, LedgerError>;

    /// Takes ownership of one open payment if nobody alive owns it (reconciliation does this
    /// before it asks the chain, so a retry cannot re-send the proof meanwhile). `None` if it
    /// is settled, released, or owned by a live call.
    fn claim(
        &self,
        id: ReservationId,
        lease: &Lease,
        now: u64,
    ) -> Result<Option<PendingPayment>, LedgerError>;

    /// Every open payment no live call owns at `now`, oldest first: what reconciliation may
    /// act on (after claiming each).
    fn unknown(&self, now: u64) -> Result<Vec<PendingPayment>, LedgerError> {
        Ok(self
            .pending()?
            .into_iter()
            .filter(|p| !p.is_owned(now))
            .collect())
    }
}

/// Revoked credentials.
pub trait Revocations {
    /// Records that `id` (an opaque string, e.g. a credential's fingerprint) is revoked from
    /// `now` on. Revoking twice keeps the first time.
    fn revoke(&self, id: &str, now: u64) -> Result<(), LedgerError>;

    /// Whether any of `ids` is revoked (e.g. any credential in a token's chain).
    fn is_revoked(&self, ids: &[String]) -> Result<bool, LedgerError>;
}

/// A ledger: every store tollgate keeps its memory of money in. Callers hold a
/// [`Ledger`] (`dyn Store`) and never know the backend.
pub trait Store:
    Reservations + Owners + Approvals + Tokens + Revocations + Send + Sync + fmt::Debug
{
    /// Where the ledger lives, for messages (a file path, or `postgres://host:port/db`; never
    /// a secret).
    fn location(&self) -> String;

    /// A fact every process sharing this ledger must agree on (e.g. `root_key_fingerprint`):
    /// records `value` under `name` if nothing is recorded yet, and returns what is recorded
    /// (the caller refuses to go on if it differs from its own). The default is for a ledger
    /// that only processes sharing one state directory can reach: they share everything in
    /// it already, so there is nothing to record.
    fn agree_on(&self, name: &str, value: &str) -> Result<String, LedgerError> {
        let _ = name;
        Ok(value.to_owned())
    }
}

/// Where the ledger lives: `[ledger]` in `tollgate.toml`, or `TOLLGATE_LEDGER_URL`.
#[derive(Clone, Default)]
pub struct LedgerConfig {
    /// A PostgreSQL URL (`postgres://user@host:port/db?sslmode=verify-full`), shared by every
    /// host whose config names it; `None`: the embedded SQLite file in the state directory.
    pub url: Option<String>,
    /// The most connections this process opens to the database.
    pub pool_size: usize,
}

impl fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: only its host and database are shown.
        f.debug_struct("LedgerConfig")
            .field("url", &self.url.as_deref().map(postgres::redacted))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// The ledger, whatever its backend.
pub type Ledger = dyn Store;

/// Brings every ledger trait into scope (`use tollgate::ledger::prelude::*;`), so the methods
/// of a [`Ledger`] can be called.
pub mod prelude {
    pub use super::{
        Approvals as _, Owners as _, Reservations as _, Revocations as _, Store as _, Tokens as _,
    };
}

/// Runs a (short, blocking) ledger operation without stalling the async workers.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl dyn Store {
    /// The schema version this build writes.
    pub const SCHEMA_VERSION: i64 = sqlite::SCHEMA_VERSION;

    /// Opens the embedded ledger, `state_dir/ledger.sqlite3`, creating the directory (mode
    /// 0700) and the file (mode 0600) if needed, and migrating an older schema.
    pub fn open(state_dir: &Path) -> Result<Arc<Ledger>, LedgerError> {
        Ok(Arc::new(sqlite::SqliteLedger::open(state_dir)?))
    }

    /// Opens the ledger `config` names: the PostgreSQL database of its URL (connecting and
    /// migrating it), else the embedded file in `state_dir` ([`Ledger::open`]).
    pub fn open_with(state_dir: &Path, config: &LedgerConfig) -> Result<Arc<Ledger>, LedgerError> {
        match &config.url {
            Some(url) => Ok(Arc::new(PostgresLedger::open(url, config.pool_size)?)),
            None => Self::open(state_dir),
        }
    }
}
