//! The shapes of what tollgate's tools take and return, as Rust types: the meta-tools'
//! arguments and results, the paid tool's `{result, payment}` envelope, and the
//! `approval_required` result.
//!
//! Each shape is one type. Results are serialized from it and the advertised `outputSchema` is
//! derived from it (schemars, the crate rmcp's tool macros use), so the two cannot drift: MCP
//! clients (Python `mcp` among them) validate every non-error `structuredContent` against the
//! `outputSchema`. Arguments are deserialized into their type with `serde_path_to_error`, so a
//! bad argument is refused with its name.
//!
//! This module does not build the values (the tools do) and knows no protocol.

use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::checkout::Payment;
use crate::pay::Judgement;

/// The JSON Schema of `T`, as an MCP tool schema (an object schema; draft 2020-12).
pub fn schema_of<T: JsonSchema>() -> Map<String, Value> {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    match serde_json::to_value(schema) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// A value as `structuredContent` (every result shape here serializes to an object).
pub fn to_structured<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A successful tool result: `value` as `structuredContent`, and as JSON text for clients
/// that read only text.
pub fn structured<T: Serialize>(value: &T) -> CallToolResult {
    let value = to_structured(value);
    let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
    result.structured_content = Some(value);
    result
}

/// `arguments` as a `T`; `Err` names the argument that is wrong and why.
pub fn arguments<T: DeserializeOwned>(arguments: &Map<String, Value>) -> Result<T, String> {
    serde_path_to_error::deserialize(Value::Object(arguments.clone())).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("argument `{path}`: {inner}")
        }
    })
}

/// No arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

/// `price_check`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceCheckArguments {
    /// The name of the tool to price.
    pub tool: String,
    /// The arguments you would call it with.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// `price_check`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PriceCheck {
    pub tool: String,
    pub status: PriceStatus,
    /// The tool's `max_price` in USD, if it may pay.
    pub max_price_usd: Option<String>,
    /// Every offer of the 402, with whether tollgate may pay it.
    pub offers: Vec<OfferView>,
    /// Offers or challenges that could not be read, each with the reason.
    pub unreadable: Vec<String>,
    /// The offer tollgate would pay, if any.
    pub would_pay: Option<WouldPay>,
}

/// Whether a call is free or asks for payment.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceStatus {
    Free,
    PaymentRequired,
}

/// One offer of a 402 and tollgate's judgement of it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct OfferView {
    pub protocol: String,
    pub version: u8,
    pub scheme: String,
    pub network: String,
    pub asset: String,
    pub asset_symbol: Option<String>,
    /// Atomic units, as a decimal string.
    pub amount_atomic: String,
    pub amount_usd: Option<String>,
    pub payee: String,
    pub payable: bool,
    /// Why it is not paid.
    pub reason: Option<String>,
}

impl From<&Judgement> for OfferView {
    fn from(j: &Judgement) -> OfferView {
        let o = &j.offer;
        OfferView {
            protocol: o.protocol.name().to_owned(),
            version: o.protocol.version(),
            scheme: o.scheme.clone(),
            network: o.network.clone(),
            asset: o.asset.clone(),
            asset_symbol: j.asset.as_ref().map(|a| a.symbol.clone()),
            amount_atomic: o.amount_atomic.to_string(),
            amount_usd: j.usd.map(|u| u.decimal()),
            payee: o.payee.clone(),
            payable: j.refusal.is_none(),
            reason: j.refusal.as_ref().map(ToString::to_string),
        }
    }
}

/// The offer tollgate would choose.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WouldPay {
    pub protocol: String,
    pub network: String,
    pub amount_usd: String,
}

/// `budget_status`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BudgetStatus {
    /// The credential's fingerprint, or that there is none.
    pub caller: String,
    /// The policy's per-call cap in USD.
    pub per_call_usd: String,
    /// The credential's per-call cap in USD, if it sets one.
    pub max_per_call_usd: Option<String>,
    pub caps: Vec<CapStatus>,
}

/// One cap that applies to the caller.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CapStatus {
    pub cap: String,
    /// A rolling window's length; none for a lifetime cap.
    pub window_seconds: Option<u64>,
    pub limit_usd: String,
    pub spent_usd: String,
    /// Held for calls in flight.
    pub reserved_usd: String,
    pub remaining_usd: String,
}

/// `list_receipts`' arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListReceiptsArguments {
    /// Only receipts from this time on (unix seconds).
    pub since: Option<u64>,
    /// At most this many (default 50).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u64>,
}

/// `list_receipts`' result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Receipts {
    /// Newest first: each a receipt as a paid call's `payment` shows it (a receipt settled
    /// later by reconciliation carries `reconciled: true` and fewer fields).
    pub receipts: Vec<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `delegate_budget`'s arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegateArguments {
    /// The sub-agent's budget in micro-USD (1 USD = 1000000); capped at what you have left.
    #[schemars(range(min = 1))]
    pub budget_usd_micros: u64,
    /// How long the credential lives, in seconds.
    #[schemars(range(min = 1))]
    pub lifetime_seconds: Option<u64>,
    /// Only these tools.
    #[schemars(length(min = 1, max = 256))]
    pub tools: Option<Vec<String>>,
    /// Only these hosts.
    #[schemars(length(min = 1, max = 256))]
    pub hosts: Option<Vec<String>>,
    /// The most one call may pay, in micro-USD.
    pub max_per_call_usd_micros: Option<u64>,
    /// Above this (micro-USD) a person approves each payment.
    pub approve_above_usd_micros: Option<u64>,
    /// A name for the child budget (a random suffix is added).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,55}$"))]
    pub label: Option<String>,
}

/// `delegate_budget`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Delegated {
    /// The sub-agent's credential: pass it as `_meta["tollgate/token"]` or `TOLLGATE_TOKEN`.
    pub token: String,
    pub label: String,
    /// The limits the credential carries, as they will be enforced.
    pub effective: Effective,
    /// What you had left under your tightest cap.
    pub your_remaining_usd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A delegated credential's limits.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Effective {
    pub budget_usd: String,
    pub budget_usd_micros: u64,
    pub expires_at: Option<String>,
    pub tools: Option<Vec<String>>,
    pub hosts: Option<Vec<String>>,
    pub max_per_call_usd: Option<String>,
    pub approve_above_usd: Option<String>,
}

/// `payment_status`' arguments.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentStatusArguments {
    /// The approval_id of an approval_required result.
    pub approval_id: String,
}

/// `payment_status`' result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PaymentStatus {
    pub approval_id: String,
    /// pending, approved, denied, expired or used.
    pub state: String,
    pub tool: String,
    pub amount_usd: String,
    pub expires_at: String,
    pub decided_by: Option<String>,
    /// What was approved (tool, arguments' hash, protocol, network, asset, amount, payee).
    pub facts: Value,
    /// What to do now.
    pub next: String,
}

/// A paid tool's answer when a person must approve the payment first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApprovalRequired {
    pub status: ApprovalRequiredStatus,
    pub approval_id: String,
    /// The local approval page, when it runs.
    pub approve_url: Option<String>,
    pub expires_at: String,
    pub amount: String,
    pub amount_usd_micros: u64,
    pub amount_in_asset: String,
    pub payee: String,
    pub protocol: String,
    pub network: String,
    pub budget_left_after: Option<String>,
    pub tool: String,
    pub reason: String,
}

/// The one value of `ApprovalRequired::status`.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalRequiredStatus {
    ApprovalRequired,
}

/// A tool's answer: `result` is the upstream's (JSON as sent, or text); `payment` the receipt
/// when the call paid, or the kept token it was served on.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Answered {
    /// The upstream answer: JSON as sent, or text.
    pub result: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<Payment>,
}
