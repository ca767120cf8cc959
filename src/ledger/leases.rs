//! Who owns an open payment: leases, and claiming a payment whose outcome is unknown.
//!
//! A call that reserves a payment owns it under a lease it renews while it runs
//! ([`Ledger::renew_leases`]). Nobody else acts on an owned payment: not a parallel identical
//! call (it pays its own), not reconciliation at start, not `tollgate reconcile`. When the
//! call ends without an answer it gives the payment up ([`Ledger::disown`]); when its process
//! dies the lease lapses. Either way the payment's outcome is *unknown*, and exactly one
//! claimant at a time ([`Ledger::claim_unknown`], [`Ledger::claim`]) may re-send its proof or
//! settle it.

use rusqlite::{OptionalExtension, params};

use super::{
    Lease, Ledger, LedgerError, PendingPayment, ReservationId, UNOWNED_RESERVED_SECS,
    load_pending, to_sql,
};

/// SQL for "open and owned by nobody alive at ?now": no owner, or a lapsed lease.
const UNOWNED: &str = "(owner IS NULL OR lease_until IS NULL OR lease_until < ?2)";

impl Ledger {
    /// Extends the lease of each of `ids` still owned by `owner` to `until`; one transaction.
    /// Returns how many were renewed (a payment settled meanwhile is not).
    pub fn renew_leases(
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
    pub fn disown(&self, id: ReservationId, owner: &str) -> Result<(), LedgerError> {
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
    pub fn claim_unknown(
        &self,
        fingerprint: &str,
        lease: &Lease,
        now: u64,
    ) -> Result<Option<PendingPayment>, LedgerError> {
        let now_sql = to_sql("time", now)?;
        let until = to_sql("time", lease.until)?;
        self.write(|tx| {
            let id: Option<i64> = tx
                .prepare_cached(&format!(
                    "SELECT id FROM reservations
                     WHERE fingerprint = ?1 AND state = 'pending' AND proof_json IS NOT NULL
                       AND {UNOWNED}
                     ORDER BY id DESC LIMIT 1"
                ))?
                .query_row(params![fingerprint, now_sql], |row| row.get(0))
                .optional()?;
            let Some(id) = id else { return Ok(None) };
            tx.prepare_cached(
                "UPDATE reservations SET owner = ?2, lease_until = ?3 WHERE id = ?1",
            )?
            .execute(params![id, lease.owner, until])?;
            load_pending(tx, ReservationId(id)).map(Some)
        })
    }

    /// The owners of open payments with a recorded proof and this fingerprint (the same call
    /// made earlier, maybe in a process that has died since), newest first.
    pub fn owners_of(&self, fingerprint: &str) -> Result<Vec<(ReservationId, String)>, LedgerError> {
        self.read(|tx| {
            let rows = tx
                .prepare_cached(
                    "SELECT id, owner FROM reservations
                     WHERE fingerprint = ?1 AND state = 'pending' AND owner IS NOT NULL
                     ORDER BY id DESC LIMIT 64",
                )?
                .query_map([fingerprint], |row| {
                    Ok((ReservationId(row.get(0)?), row.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Takes ownership of one open payment if nobody alive owns it (reconciliation does this
    /// before it asks the chain, so a retry cannot re-send the proof meanwhile). `None` if it
    /// is settled, released, or owned by a live call.
    pub fn claim(
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

    /// Every open payment no live call owns at `now`, oldest first: what reconciliation may
    /// act on (after claiming each).
    pub fn unknown(&self, now: u64) -> Result<Vec<PendingPayment>, LedgerError> {
        Ok(self
            .pending()?
            .into_iter()
            .filter(|p| !p.is_owned(now))
            .collect())
    }
}
