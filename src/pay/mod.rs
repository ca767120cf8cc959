//! Payments, protocol-neutral: offers out of a 402, the choice of one, proofs into headers,
//! receipts out of the paid answer.
//!
//! Each protocol is one file that knows its wire format ([`x402`], [`l402`]; MPP joins as a
//! sibling); this module knows what they share: the [`Offer`] every protocol's challenge
//! becomes, the rules for choosing one ([`choose`]: payable by the wallet, allowed by the
//! policy, cheapest in micro-USD, never above the tool's `max_price` or the policy's per-call
//! cap), and the [`Receipt`]. Nothing here touches the ledger or MCP.
//!
//! Where the protocols differ, the code matches on [`Protocol`]: reading challenges
//! ([`read_challenge`]), valuing an offer ([`valuation`]), and, in `server::paid`, proving
//! payment and reading the seller's settlement.

pub mod assets;
mod charge;

pub use charge::{Charge, Payment, ReusedToken};

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;

use crate::budget::caveat::Restrictions;
use crate::budget::policy::Policy;
use crate::money::UsdMicros;
use assets::Asset;

/// A payment protocol (a rail's name) and the version of it an offer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Protocol {
    /// The rail's name (`x402`, `l402`, `mpp`): how the registry of rails finds it.
    pub name: &'static str,
    /// The version where a protocol has several on the wire (x402 v1 and v2), else 0.
    pub version: u8,
    /// How people write it (`x402`, `L402`, `MPP`).
    label: &'static str,
}

impl Protocol {
    pub const fn new(name: &'static str, label: &'static str, version: u8) -> Protocol {
        Protocol {
            name,
            version,
            label,
        }
    }

    pub fn name(self) -> &'static str {
        self.name
    }

    pub fn version(self) -> u8 {
        self.version
    }
}

/// `x402 v2`, `L402`, `MPP`: as the ledger records a reservation's protocol.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.version > 0 {
            write!(f, "{} v{}", self.label, self.version)
        } else {
            f.write_str(self.label)
        }
    }
}

/// One way a seller offers to be paid, as read from a 402.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub protocol: Protocol,
    pub scheme: String,
    /// The network as the seller named it (`eip155:8453`, `base`).
    pub network: String,
    pub chain_id: Option<u64>,
    /// The asset as the seller named it (a contract address for EVM).
    pub asset: String,
    pub amount_atomic: u128,
    pub payee: String,
    pub max_timeout_seconds: u64,
    /// The offer exactly as received (x402 v2 echoes it back in `accepted`).
    pub raw: Value,
    /// The resource the 402 is about, when the protocol says (x402 v2).
    pub resource: Option<Value>,
    /// Protocol extensions the 402 carried, to echo back (x402 v2 `extensions`).
    pub extensions: Option<Value>,
}

impl Offer {
    /// The network's names, for allowlists: as sent, CAIP-2, and the v1 name.
    pub fn network_names(&self) -> Vec<String> {
        let mut names = vec![self.network.clone()];
        if let Some(id) = self.chain_id {
            names.push(format!("eip155:{id}"));
            names.extend(
                assets::V1_NETWORKS
                    .iter()
                    .filter(|(_, c)| *c == id)
                    .map(|(n, _)| (*n).to_owned()),
            );
        }
        names
    }
}

/// Everything a 402 asked for.
#[derive(Debug, Clone, Default)]
pub struct Challenge {
    pub offers: Vec<Offer>,
    /// Offers or challenges that could not be read, each with the reason.
    pub problems: Vec<String>,
    /// The seller's own explanation, if it gave one (x402 `error`).
    pub seller_error: Option<String>,
}

/// Why a payment could not be made. Never contains key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PayError {
    #[error("{0}")]
    Unpayable(String),
    #[error("signing failed: {0}")]
    Signing(String),
    /// The payment was sent and its outcome is not known (an L402 invoice whose payment
    /// timed out): it stays pending, never released, never paid again.
    #[error("{0}")]
    OutcomeUnknown(String),
}

/// Request headers that prove payment, for exactly one paid retry.
#[derive(Debug, Clone, Default)]
pub struct Proof {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Who pays (the wallet's address, or the Lightning backend).
    pub payer: String,
    /// Unix time after which the proof is worthless.
    pub valid_before: u64,
    /// What paying cost beyond the offer's amount, in the offer's atomic units (an L402
    /// routing fee); charged to the budget with the amount.
    pub fee_atomic: u128,
    /// Protocol-specific facts of the payment for the receipt (an L402 payment hash and
    /// backend). Never a secret.
    pub details: serde_json::Map<String, Value>,
}

impl Proof {
    /// The proof as JSON, to keep in the ledger until its outcome is known.
    pub fn to_json(&self) -> String {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        serde_json::json!({"headers": headers, "payer": self.payer, "valid_before": self.valid_before,
                           "fee_atomic": self.fee_atomic.to_string(), "details": self.details})
            .to_string()
    }

    /// A proof kept by [`Proof::to_json`]; `None` if the text is not one.
    pub fn from_json(text: &str) -> Option<Proof> {
        let value: Value = serde_json::from_str(text).ok()?;
        let headers = value
            .get("headers")?
            .as_array()?
            .iter()
            .map(|pair| {
                let name = HeaderName::from_bytes(pair.get(0)?.as_str()?.as_bytes()).ok()?;
                let mut value = HeaderValue::from_str(pair.get(1)?.as_str()?).ok()?;
                value.set_sensitive(name == reqwest::header::AUTHORIZATION);
                Some((name, value))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Proof {
            headers,
            payer: value.get("payer")?.as_str()?.to_owned(),
            valid_before: value.get("valid_before")?.as_u64()?,
            fee_atomic: value
                .get("fee_atomic")
                .and_then(Value::as_str)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0),
            details: value
                .get("details")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// An offer with its value in micro-USD.
#[derive(Debug, Clone)]
pub struct Quote {
    pub offer: Offer,
    pub asset: Asset,
    pub usd: UsdMicros,
}

impl Quote {
    /// What paying this quote costs with `fee_atomic` more of its asset (a routing or
    /// transaction fee paid in it), in micro-USD at the quote's rate; the price when that
    /// cannot be valued.
    pub fn with_fee(&self, fee_atomic: u128) -> UsdMicros {
        self.asset
            .to_usd_micros(self.offer.amount_atomic.saturating_add(fee_atomic))
            .unwrap_or(self.usd)
    }
}

/// What the wallet and the rules allow: the inputs to [`choose`].
pub struct Rules<'a> {
    pub policy: &'a Policy,
    pub assets: &'a [Asset],
    /// The tool's `max_price`.
    pub tool_max: UsdMicros,
    pub tool: &'a str,
    /// What this process can pay on, and how each protocol's offers are valued.
    pub rails: &'a dyn Payable,
    /// The caller's credential, if it presented one.
    pub restrictions: Option<&'a Restrictions>,
}

/// What choosing needs to know of the payment protocols (the rails implement it): whether
/// this process can pay on an offer's protocol at all, what its offers are worth, and whether
/// one can be paid the way it asks.
pub trait Payable {
    /// Why offers of `protocol` cannot be paid here (no wallet for it, no such rail).
    fn missing(&self, protocol: Protocol) -> Option<String>;
    /// The asset an offer is paid in, as tollgate values it (before the policy's `[rates]`).
    fn valuation(&self, offer: &Offer, assets: &[Asset]) -> Result<Asset, String>;
    /// Whether the offer can be paid the way it asks (its scheme, method, intent, network).
    fn supported(&self, offer: &Offer) -> Result<(), String>;
}

/// An offer as judged: its value if known, and why it cannot be paid, if it cannot.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub offer: Offer,
    pub asset: Option<Asset>,
    pub usd: Option<UsdMicros>,
    pub refusal: Option<Refusal>,
}

/// Why one offer is not paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The price is known and above a cap: (price, cap, which cap).
    AboveCap {
        price: UsdMicros,
        cap: UsdMicros,
        which: &'static str,
    },
    Other(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AboveCap { price, cap, which } => {
                write!(f, "price {price} is above {which} {cap}")
            }
            Refusal::Other(reason) => f.write_str(reason),
        }
    }
}

/// Judges one offer against the rules.
pub fn judge(offer: &Offer, rules: &Rules) -> Judgement {
    let mut j = Judgement {
        offer: offer.clone(),
        asset: None,
        usd: None,
        refusal: None,
    };
    let refuse = |reason: String| Some(Refusal::Other(reason));
    let mut asset = match valuation(offer, rules) {
        Ok(asset) => asset,
        Err(reason) => {
            j.refusal = refuse(reason);
            return j;
        }
    };
    if let Some(rate) = rules.policy.rate(&asset.symbol) {
        asset.usd_micros_per_unit = rate;
    }
    if asset.usd_micros_per_unit == 0 {
        j.refusal = refuse(format!(
            "the policy gives no rate for {} ([rates] in {})",
            asset.symbol, rules.policy.source
        ));
        return j;
    }
    j.usd = asset.to_usd_micros(offer.amount_atomic);
    j.asset = Some(asset.clone());
    let names = offer.network_names();
    j.refusal = if let Err(reason) = supported(offer, rules) {
        refuse(reason)
    } else if !rules
        .policy
        .networks
        .permits_any(names.iter().map(String::as_str))
    {
        refuse(format!(
            "network {} is not allowed by the policy",
            offer.network
        ))
    } else if rules
        .restrictions
        .is_some_and(|r| !names.iter().any(|n| r.allows_network(n)))
    {
        refuse(format!(
            "network {} is not allowed by your credential",
            offer.network
        ))
    } else if !rules.policy.assets.permits(&asset.symbol)
        && !rules.policy.assets.permits(&asset.address)
    {
        refuse(format!(
            "asset {} is not allowed by the policy",
            asset.symbol
        ))
    } else if !rules.policy.payees.permits(&offer.payee) {
        refuse(format!(
            "payee {} is not allowed by the policy",
            offer.payee
        ))
    } else if let Some(reason) = rules.rails.missing(offer.protocol) {
        refuse(reason)
    } else {
        match j.usd {
            None => refuse("the amount is too large to value".to_owned()),
            Some(price) if price > rules.tool_max => Some(Refusal::AboveCap {
                price,
                cap: rules.tool_max,
                which: "this tool's max_price",
            }),
            Some(price) if price > rules.policy.per_call => Some(Refusal::AboveCap {
                price,
                cap: rules.policy.per_call,
                which: "the policy's per-call cap",
            }),
            Some(price) => match rules.restrictions.and_then(Restrictions::max_per_call) {
                Some(cap) if price > cap => Some(Refusal::AboveCap {
                    price,
                    cap,
                    which: "your credential's max_per_call_usd_micros",
                }),
                _ => None,
            },
        }
    };
    j
}

/// The asset an offer is paid in, as tollgate values it (before the policy's `[rates]`).
pub fn valuation(offer: &Offer, rules: &Rules) -> Result<Asset, String> {
    rules.rails.valuation(offer, rules.assets)
}

/// Whether tollgate can pay an offer in the way it asks (its scheme, method or intent).
fn supported(offer: &Offer, rules: &Rules) -> Result<(), String> {
    rules.rails.supported(offer)
}

/// Chooses the cheapest payable offer; or, if none, every offer's reason.
pub fn choose(challenge: &Challenge, rules: &Rules) -> Result<Quote, Vec<Judgement>> {
    let judged: Vec<Judgement> = challenge.offers.iter().map(|o| judge(o, rules)).collect();
    let best = judged
        .iter()
        .filter(|j| j.refusal.is_none())
        .filter_map(|j| Some((j.usd?, j.asset.clone()?, j)))
        .min_by_key(|(usd, _, _)| *usd);
    match best {
        Some((usd, asset, j)) => Ok(Quote {
            offer: j.offer.clone(),
            asset,
            usd,
        }),
        None => Err(judged),
    }
}

/// What a paid call leaves behind, shown to the model and kept by the owner.
#[derive(Debug, Clone, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Receipt {
    pub protocol: String,
    pub version: u8,
    pub network: String,
    pub asset: String,
    pub asset_symbol: String,
    /// Atomic units, as a decimal string (they can exceed JSON's safe integers).
    pub amount_atomic: String,
    /// The value in USD as a decimal string, e.g. `"0.001"`.
    pub amount_usd: String,
    pub amount_usd_micros: u64,
    /// Micro-USD per whole unit of the asset used for `amount_usd`.
    pub rate_usd_micros_per_unit: u64,
    pub payee: String,
    pub payer: String,
    /// The settlement transaction, when the seller reports it.
    pub transaction: Option<String>,
    pub receipt_id: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// How the payment was approved: by the policy (below every threshold) or by a person,
    /// through which channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approval::ApprovalRecord>,
    /// Paid in a test asset (`[[assets]] sandbox = true`): no real money moved. Shown only
    /// when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    /// What only this protocol has (an L402 payment hash, an MPP reference, ...).
    #[serde(flatten)]
    pub details: serde_json::Map<String, Value>,
}
