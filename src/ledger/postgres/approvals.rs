//! Approvals on PostgreSQL: every transition one transaction that locks the approval's row
//! and re-reads its state, so two hosts cannot both decide and an approval is used once.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::{Cached as _, PostgresLedger, db, from_sql, to_sql};
use crate::ledger::LedgerError;
use crate::ledger::approvals::{
    Approval, ApprovalState, Approvals, Decided, NewApproval, Redeemed,
};

const COLUMNS: &str = "id, state, tool, amount_usd_micros, facts_json, created_at, expires_at, \
                       decided_at, decided_by, used_at";

fn decode(row: &Row) -> Result<Approval, LedgerError> {
    let opt = |v: Option<i64>, what: &str| v.map(|n| from_sql(what, n)).transpose();
    Ok(Approval {
        id: row.get(0),
        state: ApprovalState::parse(row.get(1))?,
        tool: row.get(2),
        amount_usd_micros: from_sql("amount", row.get(3))?,
        facts_json: row.get(4),
        created_at: from_sql("creation time", row.get(5))?,
        expires_at: from_sql("expiry", row.get(6))?,
        decided_at: opt(row.get(7), "decision time")?,
        decided_by: row.get(8),
        used_at: opt(row.get(9), "use time")?,
    })
}

/// The approval, its row locked until the transaction ends.
async fn lock(tx: &Transaction<'_>, id: &str) -> Result<Option<Approval>, LedgerError> {
    tx.query_opt_cached(
        &format!("SELECT {COLUMNS} FROM approvals WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(decode)
    .transpose()
}

/// Marks an open approval past its expiry as `expired`; returns it as it now is.
async fn expire_if_due(
    tx: &Transaction<'_>,
    mut approval: Approval,
    now: u64,
) -> Result<Approval, LedgerError> {
    let open = matches!(
        approval.state,
        ApprovalState::Pending | ApprovalState::Approved
    );
    if open && now >= approval.expires_at {
        tx.execute_cached(
            "UPDATE approvals SET state = 'expired' WHERE id = $1",
            &[&approval.id],
        )
        .await?;
        approval.state = ApprovalState::Expired;
    }
    Ok(approval)
}

impl Approvals for PostgresLedger {
    fn create_approval(&self, a: NewApproval, now: u64) -> Result<(), LedgerError> {
        let (amount, now, expires) = (
            to_sql("amount", a.amount_usd_micros)?,
            to_sql("time", now)?,
            to_sql("time", a.expires_at)?,
        );
        self.block(async {
            let client = self.client().await?;
            client
                .execute_cached(
                    "INSERT INTO approvals (id, state, tool, amount_usd_micros, facts_json,
                         created_at, expires_at) VALUES ($1, 'pending', $2, $3, $4, $5, $6)",
                    &[&a.id, &a.tool, &amount, &a.facts_json, &now, &expires],
                )
                .await?;
            Ok(())
        })
    }

    fn approval(&self, id: &str, now: u64) -> Result<Option<Approval>, LedgerError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let found = match lock(&tx, id).await? {
                Some(a) => Some(expire_if_due(&tx, a, now).await?),
                None => None,
            };
            tx.commit().await.map_err(db)?;
            Ok(found)
        })
    }

    fn pending_approvals(&self, now: u64) -> Result<Vec<Approval>, LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            tx.execute_cached(
                "UPDATE approvals SET state = 'expired'
                 WHERE state IN ('pending', 'approved') AND expires_at <= $1",
                &[&now_sql],
            )
            .await?;
            let rows = tx
                .query_cached(
                    &format!(
                        "SELECT {COLUMNS} FROM approvals WHERE state = 'pending'
                         ORDER BY created_at, id"
                    ),
                    &[],
                )
                .await?;
            let found = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
            tx.commit().await.map_err(db)?;
            Ok(found)
        })
    }

    fn decide_approval(
        &self,
        id: &str,
        approve: bool,
        channel: &str,
        now: u64,
    ) -> Result<Decided, LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let Some(found) = lock(&tx, id).await? else {
                return Ok(Decided::NotFound);
            };
            let mut found = expire_if_due(&tx, found, now).await?;
            if found.state != ApprovalState::Pending {
                tx.commit().await.map_err(db)?;
                return Ok(Decided::Final(found));
            }
            let state = if approve {
                ApprovalState::Approved
            } else {
                ApprovalState::Denied
            };
            tx.execute_cached(
                "UPDATE approvals SET state = $2, decided_at = $3, decided_by = $4
                 WHERE id = $1 AND state = 'pending'",
                &[&id, &state.as_str(), &now_sql, &channel],
            )
            .await?;
            tx.commit().await.map_err(db)?;
            found.state = state;
            found.decided_at = Some(now);
            found.decided_by = Some(channel.to_owned());
            Ok(Decided::Done(found))
        })
    }

    fn redeem_approval(
        &self,
        id: &str,
        now: u64,
        check: &dyn Fn(&Approval) -> Result<(), String>,
    ) -> Result<Redeemed, LedgerError> {
        let now_sql = to_sql("time", now)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            let Some(found) = lock(&tx, id).await? else {
                return Ok(Redeemed::NotFound);
            };
            let mut found = expire_if_due(&tx, found, now).await?;
            if found.state != ApprovalState::Approved {
                tx.commit().await.map_err(db)?;
                return Ok(Redeemed::Not(found));
            }
            if let Err(reason) = check(&found) {
                return Ok(Redeemed::Refused(found, reason));
            }
            tx.execute_cached(
                "UPDATE approvals SET state = 'used', used_at = $2
                 WHERE id = $1 AND state = 'approved'",
                &[&id, &now_sql],
            )
            .await?;
            tx.commit().await.map_err(db)?;
            found.state = ApprovalState::Used;
            found.used_at = Some(now);
            Ok(Redeemed::Used(found))
        })
    }
}
