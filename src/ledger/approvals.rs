//! Approvals in the ledger: a person's yes or no to one payment, shared by every process
//! (the server asks, `tollgate approve` in another process decides, the server uses it).
//!
//! ```text
//! create (pending) ──► decide: approved ──► redeem: used      (exactly once, same facts)
//!         │                 └─────────────► expired            (not used in time)
//!         ├──────────► decide: denied                          (final)
//!         └──────────► expired                                 (nobody decided in time)
//! ```
//!
//! Every transition is one transaction that re-reads the state, so two processes cannot both
//! decide, and an approval cannot be used twice. An approval past its expiry is marked
//! `expired` by whichever operation finds it. The facts are opaque JSON here; whether they
//! cover an offer is the caller's check, run inside the transaction.

use super::LedgerError;

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalState {
    /// Waiting for a person.
    Pending,
    /// A person said yes; not used yet.
    Approved,
    /// A person said no. Final.
    Denied,
    /// Nobody decided, or it was not used, in time. Final.
    Expired,
    /// It paid for its call. Final.
    Used,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
            ApprovalState::Used => "used",
        }
    }

    /// The state named as stored.
    pub fn parse(s: &str) -> Result<ApprovalState, LedgerError> {
        Ok(match s {
            "pending" => ApprovalState::Pending,
            "approved" => ApprovalState::Approved,
            "denied" => ApprovalState::Denied,
            "expired" => ApprovalState::Expired,
            "used" => ApprovalState::Used,
            other => {
                return Err(LedgerError::Corrupt(format!(
                    "unknown approval state {other:?}"
                )));
            }
        })
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An approval to record (state `pending`).
#[derive(Debug, Clone)]
pub struct NewApproval {
    pub id: String,
    pub tool: String,
    pub amount_usd_micros: u64,
    pub facts_json: String,
    pub expires_at: u64,
}

/// One approval as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub id: String,
    pub state: ApprovalState,
    pub tool: String,
    pub amount_usd_micros: u64,
    pub facts_json: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub decided_at: Option<u64>,
    /// The channel that decided: `elicitation`, `cli`, `page`.
    pub decided_by: Option<String>,
    pub used_at: Option<u64>,
}

/// The outcome of [`Approvals::decide_approval`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// Recorded; the approval as it now is.
    Done(Approval),
    /// No approval has this id.
    NotFound,
    /// Already decided (or expired, or used): nothing changed.
    Final(Approval),
}

/// The outcome of [`Approvals::redeem_approval`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// It was approved and is now used: pay.
    Used(Approval),
    /// It cannot pay (pending, denied, expired, used): nothing changed but an expiry.
    Not(Approval),
    /// No approval has this id.
    NotFound,
    /// The caller's check refused it (another call, a higher price): nothing changed.
    Refused(Approval, String),
}

/// Approvals as a store keeps them: every method is one transaction.
pub trait Approvals {
    /// Records a new approval, waiting for a person.
    fn create_approval(&self, a: NewApproval, now: u64) -> Result<(), LedgerError>;

    /// The approval with this id (marked expired first if it is past due).
    fn approval(&self, id: &str, now: u64) -> Result<Option<Approval>, LedgerError>;

    /// Approvals still waiting for a person, oldest first (expired ones are marked so and
    /// left out).
    fn pending_approvals(&self, now: u64) -> Result<Vec<Approval>, LedgerError>;

    /// A person's decision (`channel`: `elicitation`, `cli`, `page`), recorded once.
    fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        channel: &str,
        now: u64,
    ) -> Result<Decided, LedgerError>;

    /// Uses an approved approval for one payment, if `check` (run inside the transaction)
    /// finds that it covers it.
    fn redeem_approval(
        &self,
        id: &str,
        now: u64,
        check: &dyn Fn(&Approval) -> Result<(), String>,
    ) -> Result<Redeemed, LedgerError>;
}
