//! What a reservation records about the charge it holds (so that any process can write its
//! receipt later, after a crash too), and what a call's answer was paid with.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::assets::Asset;
use super::{Quote, Receipt};
use crate::ledger::PendingPayment;
use crate::money::UsdMicros;

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
    /// Where the call was sold, when the tool's name alone does not say (a paid MCP server
    /// and its own name for the tool): copied into the receipt.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub sold_at: Map<String, Value>,
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
            sold_at: Map::new(),
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
