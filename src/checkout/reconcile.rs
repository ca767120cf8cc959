//! Payments whose outcome is unknown (a process killed between sending a proof and reading
//! the answer, a call that ended without an answer) are settled by what their rail's chain or
//! backend says, never guessed at: paid → committed with a receipt marked `reconciled`;
//! provably unpaid (unused and expired, reverted, failed) → released; undecided → left
//! unknown (a retry of the same call re-sends its proof). Each rail tells in its own way
//! ([`crate::rails::Rail::reconcile`]: x402 asks the token's `authorizationState`, MPP the
//! signed transaction's receipt, L402 the Lightning backend by payment hash). Without a way to
//! ask (no `[rpc]` for the network, no Lightning backend) a payment stays reserved and
//! visible. A reservation whose proof never left the process (`reserved`, its owner gone) is
//! released.
//!
//! Only payments whose outcome is unknown are touched (no live owner: see
//! `checkout::lease`), and each is claimed before it is asked about, so a retry of the same
//! call and reconciliation never act on one payment at once.

use serde_json::{Map, Value};

use super::receipt::{self, Settlement};
use crate::ledger::{Ledger, LedgerError, NewReceipt, PendingPayment, ReservationState};
use crate::money::UsdMicros;
use crate::pay::Charge;
use crate::pay::Proof;
use crate::rails::{Rails, Verdict};

/// How long an unowned `reserved` row from a tollgate that predates leases is left alone.
pub use crate::ledger::UNOWNED_RESERVED_SECS as STALE_RESERVED_SECS;

/// What reconciling did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Paid: committed with a receipt.
    pub settled: usize,
    /// Provably unpaid: released.
    pub released: usize,
    /// Still undecided (the proof is valid and unused): left unknown, for a retry to re-send.
    pub pending: usize,
    /// Reserved with no proof sent, by a call whose owner is gone: released (counted in
    /// `released` too).
    pub unsent: usize,
    /// Owned by a live call (in this or another process): not touched.
    pub live: usize,
    /// Not checkable (no `[rpc]` for the network, an unreadable proof, a node error): left.
    pub unchecked: Vec<String>,
}

/// Asks the payment's rail what happened to it. `Err` says why it cannot be told.
pub async fn verdict(
    rails: &Rails,
    ledger: &Ledger,
    payment: &PendingPayment,
    now: u64,
) -> Result<Verdict, String> {
    let charge = Charge::of_row(payment);
    let rail = rails
        .named(&charge.protocol)
        .ok_or_else(|| format!("{} is not a rail tollgate has", payment.protocol))?;
    rail.reconcile(crate::rails::Unknown {
        ledger,
        payment,
        rpc: &rails.rpc,
        now,
    })
    .await
}

/// Writes a verdict on a claimed payment: commit (with a receipt marked `reconciled`),
/// release, or give it up again (unknown). Returns the receipt written, if any.
pub fn settle(
    ledger: &Ledger,
    owner: &str,
    payment: &PendingPayment,
    verdict: &Verdict,
    now: u64,
) -> Result<Option<NewReceipt>, LedgerError> {
    match verdict {
        Verdict::Paid {
            transaction,
            price_usd_micros,
            charged_usd_micros,
            reverted,
            details,
        } => {
            let charged = charged_usd_micros.unwrap_or(payment.amount_usd_micros);
            let receipt = receipt(
                payment,
                Settled {
                    transaction: transaction.clone(),
                    price: price_usd_micros.map(UsdMicros),
                    details: details.clone(),
                    charged,
                    reverted: *reverted,
                },
                now,
            );
            ledger.commit(payment.id, charged, receipt.clone(), now)?;
            Ok(Some(receipt))
        }
        Verdict::Unpaid => ledger.release(payment.id, now).map(|()| None),
        Verdict::Open => ledger.disown(payment.id, owner).map(|()| None),
    }
}

/// Reconciles every open payment that no live call owns, on every rail. Each is claimed first (`owner`, a lease), so a retry of
/// the same call cannot re-send its proof meanwhile; payments of dead owners on this host are
/// given up first. A live call's payment, in this process or another, is never touched.
pub async fn reconcile(
    ledger: &Ledger,
    rails: &Rails,
    owner: &str,
    now: u64,
) -> Result<Report, LedgerError> {
    let mut report = Report::default();
    let (unsent, _) =
        tokio::task::block_in_place(|| super::lease::Leases::disown_dead_owners(ledger))?;
    report.released += unsent;
    report.unsent += unsent;
    let all = tokio::task::block_in_place(|| ledger.pending())?;
    report.live = all.iter().filter(|p| p.is_owned(now)).count();
    let open: Vec<PendingPayment> = all.into_iter().filter(|p| !p.is_owned(now)).collect();
    if open.is_empty() {
        return Ok(report);
    }
    let lease = crate::ledger::Lease {
        owner: owner.to_owned(),
        until: now + super::lease::LEASE_SECS,
    };
    for payment in open {
        let Some(payment) = tokio::task::block_in_place(|| ledger.claim(payment.id, &lease, now))?
        else {
            report.live += 1;
            continue;
        };
        if payment.state == ReservationState::Reserved {
            // Its owner is gone and no proof ever left the process.
            tokio::task::block_in_place(|| ledger.release(payment.id, now))?;
            report.released += 1;
            report.unsent += 1;
            continue;
        }
        match verdict(rails, ledger, &payment, now).await {
            Ok(verdict) => {
                tokio::task::block_in_place(|| settle(ledger, owner, &payment, &verdict, now))?;
                match verdict {
                    Verdict::Paid { .. } => report.settled += 1,
                    Verdict::Unpaid => report.released += 1,
                    Verdict::Open => report.pending += 1,
                }
            }
            Err(why) => {
                tokio::task::block_in_place(|| ledger.disown(payment.id, owner))?;
                report.unchecked.push(format!(
                    "{} to {} for `{}`: {why}",
                    UsdMicros(payment.amount_usd_micros),
                    payment.payee,
                    payment.tool
                ));
            }
        }
    }
    Ok(report)
}

/// What a verdict of "paid" says, for the receipt.
struct Settled {
    transaction: Option<String>,
    /// The price, when the rail valued it (else as the reservation recorded it).
    price: Option<UsdMicros>,
    details: Map<String, Value>,
    charged: u64,
    reverted: bool,
}

/// A receipt for a payment found paid after the fact: the price as recorded (or as its rail
/// valued it), and what it cost (`charged_usd_micros`, with a fee) when that differs.
fn receipt(payment: &PendingPayment, settled: Settled, now: u64) -> NewReceipt {
    let charge = Charge::of_row(payment);
    let payer = payment
        .proof_json
        .as_deref()
        .and_then(Proof::from_json)
        .map(|p| p.payer)
        .unwrap_or_default();
    let price = settled
        .price
        .or_else(|| charge.price())
        .unwrap_or(UsdMicros(payment.amount_usd_micros));
    let mut details = settled.details;
    details.insert("tool".into(), payment.tool.clone().into());
    if settled.reverted {
        details.insert("reverted".into(), true.into());
        details.insert(
            "note".into(),
            "the charge reverted on chain; its transaction fee was still paid".into(),
        );
    }
    let receipt = receipt::receipt(
        &charge,
        &payment.payee,
        if settled.reverted {
            UsdMicros(0)
        } else {
            price
        },
        Settlement {
            payer,
            transaction: settled.transaction,
            details,
            approval: None,
            charged: UsdMicros(settled.charged),
            reconciled: true,
        },
        now,
    );
    receipt::row(&receipt, now)
}
