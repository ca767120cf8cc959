//! What a reservation records about the charge it holds, and the one receipt builder.
//!
//! A receipt is written by the call that paid, or later by whoever settles a payment whose
//! outcome was unknown (`tollgate reconcile`, a retry that found the chain paid, the Lightning
//! backend's answer): often another process, after a crash. So everything a receipt says
//! about the charge is recorded with the reservation ([`Charge`], the ledger's `meta_json`),
//! and every receipt is built from it by [`receipt`], wherever it is written.

use serde_json::{Map, Value};

use crate::approval::ApprovalRecord;
use crate::ledger::NewReceipt;
use crate::money::{UsdMicros, rfc3339};
use crate::pay::{Charge, Receipt};

/// How a charge was settled: what the receipt adds to the charge.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Who paid (an address, `lightning:<backend>`).
    pub payer: String,
    /// The settlement transaction or reference, when known.
    pub transaction: Option<String>,
    /// What the proof and the seller's answer said (a payment hash, a fee, a reference).
    pub details: Map<String, Value>,
    /// How it was approved (none when settled after the fact).
    pub approval: Option<ApprovalRecord>,
    /// What it cost: the price plus any fee; shown when it differs from the price.
    pub charged: UsdMicros,
    /// Settled by reconciliation rather than by the call that paid.
    pub reconciled: bool,
}

/// The receipt of `charge`, paid to `payee` at `price`.
pub fn receipt(
    charge: &Charge,
    payee: &str,
    price: UsdMicros,
    settlement: Settlement,
    now: u64,
) -> Receipt {
    let mut details = charge.sold_at.clone();
    details.extend(settlement.details);
    if settlement.charged != price {
        details.insert("charged_usd_micros".into(), settlement.charged.0.into());
    }
    if settlement.reconciled {
        details.insert("reconciled".into(), true.into());
    }
    Receipt {
        protocol: charge.protocol.clone(),
        version: charge.version,
        network: charge.network.clone(),
        asset: charge.asset.clone(),
        asset_symbol: charge.asset_symbol.clone(),
        amount_atomic: charge.amount_atomic.clone(),
        amount_usd: price.decimal(),
        amount_usd_micros: price.0,
        rate_usd_micros_per_unit: charge.rate_usd_micros_per_unit,
        payee: payee.to_owned(),
        payer: settlement.payer,
        transaction: settlement.transaction,
        receipt_id: hex::encode(rand::random::<[u8; 12]>()),
        at: rfc3339(now),
        approval: settlement.approval,
        sandbox: charge.sandbox,
        details,
    }
}

/// A receipt as the ledger keeps it.
pub fn row(receipt: &Receipt, now: u64) -> NewReceipt {
    NewReceipt {
        receipt_id: receipt.receipt_id.clone(),
        at: now,
        json: serde_json::to_string(receipt).unwrap_or_default(),
    }
}
