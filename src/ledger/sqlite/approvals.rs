//! Approvals on SQLite: every transition one `BEGIN IMMEDIATE` transaction that re-reads the
//! state.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{SqliteLedger, from_sql, to_sql};
use crate::ledger::LedgerError;
use crate::ledger::approvals::{
    Approval, ApprovalState, Approvals, Decided, NewApproval, Redeemed,
};

const COLUMNS: &str = "id, state, tool, amount_usd_micros, facts_json, created_at, expires_at, \
                       decided_at, decided_by, used_at";

/// A row as SQLite holds it: (id, state, tool, amount, facts, created, expires, decided_at,
/// decided_by, used_at).
type Raw = (
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn decode(raw: Raw) -> Result<Approval, LedgerError> {
    let (id, state, tool, amount, facts_json, created, expires, decided_at, decided_by, used) = raw;
    let opt = |v: Option<i64>, what: &str| v.map(|n| from_sql(what, n)).transpose();
    Ok(Approval {
        id,
        state: ApprovalState::parse(&state)?,
        tool,
        amount_usd_micros: from_sql("amount", amount)?,
        facts_json,
        created_at: from_sql("creation time", created)?,
        expires_at: from_sql("expiry", expires)?,
        decided_at: opt(decided_at, "decision time")?,
        decided_by,
        used_at: opt(used, "use time")?,
    })
}

fn load(tx: &Transaction<'_>, id: &str) -> Result<Option<Approval>, LedgerError> {
    let cells = tx
        .prepare_cached(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?;
    cells.map(decode).transpose()
}

/// Marks an open approval past its expiry as `expired`; returns it as it now is.
fn expire_if_due(
    tx: &Transaction<'_>,
    mut approval: Approval,
    now: u64,
) -> Result<Approval, LedgerError> {
    let open = matches!(
        approval.state,
        ApprovalState::Pending | ApprovalState::Approved
    );
    if open && now >= approval.expires_at {
        tx.prepare_cached("UPDATE approvals SET state = 'expired' WHERE id = ?1")?
            .execute([&approval.id])?;
        approval.state = ApprovalState::Expired;
    }
    Ok(approval)
}

impl Approvals for SqliteLedger {
    /// Records a new approval, waiting for a person.
    fn create_approval(&self, a: NewApproval, now: u64) -> Result<(), LedgerError> {
        let (amount, now, expires) = (
            to_sql("amount", a.amount_usd_micros)?,
            to_sql("time", now)?,
            to_sql("time", a.expires_at)?,
        );
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO approvals (id, state, tool, amount_usd_micros, facts_json, \
                 created_at, expires_at) VALUES (?1, 'pending', ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![a.id, a.tool, amount, a.facts_json, now, expires])?;
            Ok(())
        })
    }

    /// One approval, as it stands at `now` (an open one past its expiry reads `expired`, and
    /// is recorded so).
    fn approval(&self, id: &str, now: u64) -> Result<Option<Approval>, LedgerError> {
        self.write(|tx| match load(tx, id)? {
            Some(a) => expire_if_due(tx, a, now).map(Some),
            None => Ok(None),
        })
    }

    /// Approvals still waiting for a person, oldest first (expired ones are marked so and
    /// left out).
    fn pending_approvals(&self, now: u64) -> Result<Vec<Approval>, LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.write(|tx| {
            tx.prepare_cached(
                "UPDATE approvals SET state = 'expired' \
                 WHERE state IN ('pending', 'approved') AND expires_at <= ?1",
            )?
            .execute([now_sql])?;
            let rows = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM approvals WHERE state = 'pending' ORDER BY created_at"
                ))?
                .query_map([], row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(decode).collect()
        })
    }

    /// A person's decision on a pending approval, through `channel` (`elicitation`, `cli`,
    /// `page`). Only a pending, unexpired approval changes; anything else is final.
    fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        channel: &str,
        now: u64,
    ) -> Result<Decided, LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.write(|tx| {
            let Some(found) = load(tx, id)? else {
                return Ok(Decided::NotFound);
            };
            let mut found = expire_if_due(tx, found, now)?;
            if found.state != ApprovalState::Pending {
                return Ok(Decided::Final(found));
            }
            let state = if approve {
                ApprovalState::Approved
            } else {
                ApprovalState::Denied
            };
            tx.prepare_cached(
                "UPDATE approvals SET state = ?2, decided_at = ?3, decided_by = ?4 \
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute(params![id, state.as_str(), now_sql, channel])?;
            found.state = state;
            found.decided_at = Some(now);
            found.decided_by = Some(channel.to_owned());
            Ok(Decided::Done(found))
        })
    }

    /// Uses an approved approval to pay, once: if it is approved, unexpired, and `check`
    /// accepts it (the same call, no higher price), it becomes `used`. Otherwise nothing
    /// changes (but an expiry).
    fn redeem_approval(
        &self,
        id: &str,
        now: u64,
        check: &dyn Fn(&Approval) -> Result<(), String>,
    ) -> Result<Redeemed, LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.write(|tx| {
            let Some(found) = load(tx, id)? else {
                return Ok(Redeemed::NotFound);
            };
            let mut found = expire_if_due(tx, found, now)?;
            if found.state != ApprovalState::Approved {
                return Ok(Redeemed::Not(found));
            }
            if let Err(reason) = check(&found) {
                return Ok(Redeemed::Refused(found, reason));
            }
            tx.prepare_cached(
                "UPDATE approvals SET state = 'used', used_at = ?2 \
                 WHERE id = ?1 AND state = 'approved'",
            )?
            .execute(params![id, now_sql])?;
            found.state = ApprovalState::Used;
            found.used_at = Some(now);
            Ok(Redeemed::Used(found))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> (tempfile::TempDir, SqliteLedger) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteLedger::open(dir.path()).unwrap();
        (dir, ledger)
    }

    fn new(id: &str, expires_at: u64) -> NewApproval {
        NewApproval {
            id: id.into(),
            tool: "t".into(),
            amount_usd_micros: 5,
            facts_json: "{}".into(),
            expires_at,
        }
    }

    #[test]
    fn an_approval_is_used_once_and_only_after_a_yes() {
        let (_d, l) = ledger();
        l.create_approval(new("a", 100), 10).unwrap();
        assert!(
            matches!(l.redeem_approval("a", 11, &|_| Ok(())).unwrap(), Redeemed::Not(a) if a.state == ApprovalState::Pending)
        );
        assert!(matches!(
            l.decide_approval("a", true, "cli", 12).unwrap(),
            Decided::Done(_)
        ));
        assert!(
            matches!(l.decide_approval("a", false, "page", 13).unwrap(), Decided::Final(a) if a.state == ApprovalState::Approved)
        );
        let refused = l.redeem_approval("a", 14, &|_| Err("no".into())).unwrap();
        assert!(matches!(refused, Redeemed::Refused(..)));
        assert!(
            matches!(l.redeem_approval("a", 15, &|_| Ok(())).unwrap(), Redeemed::Used(a) if a.decided_by.as_deref() == Some("cli"))
        );
        assert!(
            matches!(l.redeem_approval("a", 16, &|_| Ok(())).unwrap(), Redeemed::Not(a) if a.state == ApprovalState::Used)
        );
    }

    #[test]
    fn denied_stays_denied_and_late_ones_expire() {
        let (_d, l) = ledger();
        l.create_approval(new("d", 100), 10).unwrap();
        l.create_approval(new("e", 20), 10).unwrap();
        l.decide_approval("d", false, "cli", 11).unwrap();
        assert!(
            matches!(l.decide_approval("d", true, "cli", 12).unwrap(), Decided::Final(a) if a.state == ApprovalState::Denied)
        );
        assert!(
            matches!(l.decide_approval("e", true, "cli", 20).unwrap(), Decided::Final(a) if a.state == ApprovalState::Expired)
        );
        assert_eq!(
            l.approval("e", 21).unwrap().unwrap().state,
            ApprovalState::Expired
        );
        assert_eq!(
            l.decide_approval("nope", true, "cli", 1).unwrap(),
            Decided::NotFound
        );
        assert!(l.pending_approvals(30).unwrap().is_empty());
    }
}
