//! What a reservation records about the charge it holds, and the one receipt builder.
//!
//! A receipt is written by the call that paid, or later by whoever settles a payment whose
//! outcome was unknown (`tollgate reconcile`, a retry that found the chain paid, the Lightning
//! backend's answer): often another process, after a crash. So everything a receipt says
//! about the charge is recorded with the reservation ([`Charge`], the ledger's `meta_json`),
//! and every receipt is built from it by [`receipt`], wherever it is written.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::approval::ApprovalRecord;
use crate::ledger::{NewReceipt, PendingPayment};
use crate::money::{UsdMicros, rfc3339};
use crate::pay::assets::Asset;
use crate::pay::{Quote, Receipt};

/// The charge a reservation holds, as the receipt will state it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Charge {
    /// The rail's name (`x402`, `l402`, `mpp`). Rows written before it was recorded take it
    /// from the reservation's protocol.
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub version: u8,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub asset: String,
    #[serde(default)]
    pub asset_symbol: String,
    /// Atomic units of the asset, as a decimal string.
    #[serde(default)]
    pub amount_atomic: String,
    #[serde(default)]
    pub decimals: Option<u8>,
    /// Micro-USD per whole unit, as valued when it was reserved.
    #[serde(default)]
    pub rate_usd_micros_per_unit: u64,
    /// A test asset: no real money moves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// The call's arguments (for the books).
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

impl Charge {
    /// The charge of paying `quote` for a call with `arguments`.
    pub fn of(quote: &Quote, arguments: &Map<String, Value>) -> Charge {
        Charge {
            protocol: quote.offer.protocol.name().to_owned(),
            version: quote.offer.protocol.version(),
            network: quote.offer.network.clone(),
            asset: quote.offer.asset.clone(),
            asset_symbol: quote.asset.symbol.clone(),
            amount_atomic: quote.offer.amount_atomic.to_string(),
            decimals: Some(quote.asset.decimals),
            rate_usd_micros_per_unit: quote.asset.usd_micros_per_unit,
            sandbox: quote.asset.sandbox,
            arguments: arguments.clone(),
        }
    }

    /// The charge a reservation recorded. Rows from before a field was recorded fill it from
    /// the row (`x402 v2` → `x402`, version 2).
    pub fn of_row(payment: &PendingPayment) -> Charge {
        let mut charge: Charge = serde_json::from_str(&payment.meta_json).unwrap_or_default();
        if charge.protocol.is_empty() {
            let (name, version) = match payment.protocol.split_once(" v") {
                Some((name, v)) => (name.to_owned(), v.parse::<u8>().unwrap_or(0)),
                None => (payment.protocol.to_ascii_lowercase(), 0),
            };
            charge.protocol = name;
            charge.version = version;
        }
        // Lightning rows from before decimals were recorded: msat, a thousandth of a sat.
        if charge.decimals.is_none() && charge.protocol == crate::rails::l402::NAME {
            charge.decimals = Some(crate::pay::l402::asset().decimals);
        }
        charge
    }

    /// As the ledger records it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `atomic` units of this charge's asset in micro-USD, at the rate recorded; `None` when
    /// the decimals or the rate were not recorded.
    pub fn value(&self, atomic: u128) -> Option<UsdMicros> {
        if self.rate_usd_micros_per_unit == 0 {
            return None;
        }
        let asset = Asset {
            chain_id: 0,
            address: String::new(),
            symbol: self.asset_symbol.clone(),
            decimals: self.decimals?,
            usd_micros_per_unit: self.rate_usd_micros_per_unit,
            sandbox: self.sandbox,
        };
        asset.to_usd_micros(atomic)
    }

    /// The amount in atomic units.
    pub fn atomic(&self) -> Option<u128> {
        self.amount_atomic.parse().ok()
    }

    /// The price in micro-USD, if it can be valued from what was recorded.
    pub fn price(&self) -> Option<UsdMicros> {
        self.value(self.atomic()?)
    }
}

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
    let mut details = settlement.details;
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

/// What a call's answer was paid with.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Payment {
    /// This call's payment.
    Receipt(Box<Receipt>),
    /// An L402 token paid by an earlier call: nothing was paid for this one.
    Reused(ReusedToken),
}

/// The `payment` of a result served on an L402 token paid earlier: nothing was paid for it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReusedToken {
    pub protocol: String,
    pub reused: bool,
    pub amount_usd: String,
    pub amount_usd_micros: u64,
    pub amount_msat: String,
    /// The origin the token was bought for.
    pub payee: String,
    pub payment_hash: String,
    pub receipt_id: String,
    pub note: String,
    pub at: String,
}
