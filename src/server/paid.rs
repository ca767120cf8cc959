//! One paid call: a 402 became offers; choose one under the rules, sign it (or reuse the
//! proof already signed for this very call), retry exactly once, and read the receipt.
//!
//! Never pays twice for one call: a second 402 after a signed payment is an error, not a new
//! payment; a paid retry whose outcome is unknown (timeout, connection lost) leaves its proof
//! pending, and calling again with the same tool, arguments and offer sends the same proof
//! (the same EIP-3009 nonce, which can settle at most once) instead of signing anew.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::header::HeaderMap;
use rmcp::RoleServer;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Progress, Tollgate, success, tool_error};
use crate::budget::credential::{Credential, RootKey};
use crate::budget::policy::Policy;
use crate::catalog::{HttpTool, UpstreamRequest};
use crate::money::{UsdMicros, now_unix};
use crate::pay::assets::Asset;
use crate::pay::{self, Challenge, Judgement, Proof, Quote, Receipt, Refusal, Rules};
use crate::upstream::{Answer, Reply};
use crate::wallet::EvmWallet;

/// What paying needs: the owner's policy, the assets tollgate can value, the wallet, and what
/// is needed to tell who is calling (the root key, the process's own token).
pub struct Payments {
    pub policy: Policy,
    pub assets: Vec<Asset>,
    pub evm: Option<EvmWallet>,
    /// The root key credentials are verified under (absent until `tollgate init`).
    pub root: Option<RootKey>,
    /// `TOLLGATE_TOKEN` of the process: the caller when a request carries no token.
    pub env_token: Option<String>,
    /// Proofs whose paid request had no known outcome, by call fingerprint.
    pending: Mutex<HashMap<[u8; 32], Arc<Proof>>>,
}

impl Payments {
    pub fn new(policy: Policy, assets: Vec<Asset>, evm: Option<EvmWallet>) -> Payments {
        Payments {
            policy,
            assets,
            evm,
            root: None,
            env_token: None,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Who is calling: the request's `_meta["tollgate/token"]`, else `TOLLGATE_TOKEN`, else
    /// nobody in particular (the policy alone applies). An invalid token is an error, never
    /// "nobody".
    pub(super) fn identify(
        &self,
        request_token: Option<&str>,
    ) -> Result<Option<Credential>, String> {
        let Some(token) = request_token.or(self.env_token.as_deref()) else {
            return Ok(None);
        };
        let Some(root) = &self.root else {
            return Err(
                "a credential was presented, but this tollgate has no root key \
                        (`tollgate init`), so it cannot be verified"
                    .to_owned(),
            );
        };
        Credential::verify(token, root, now_unix())
            .map(Some)
            .map_err(|e| e.to_string())
    }

    pub(super) fn rules<'a>(
        &'a self,
        tool: &'a HttpTool,
        caller: Option<&'a Credential>,
    ) -> Rules<'a> {
        Rules {
            policy: &self.policy,
            assets: &self.assets,
            tool_max: tool.max_price.unwrap_or(UsdMicros(0)),
            tool: &tool.name,
            has_evm_wallet: self.evm.is_some(),
            restrictions: caller.map(|c| &c.restrictions),
        }
    }

    fn pending(&self, key: &[u8; 32], now: u64) -> Option<Arc<Proof>> {
        let mut pending = self.pending.lock().ok()?;
        pending.retain(|_, proof| proof.valid_before > now);
        pending.get(key).cloned()
    }

    fn set_pending(&self, key: [u8; 32], proof: Option<Arc<Proof>>) {
        if let Ok(mut pending) = self.pending.lock() {
            match proof {
                Some(proof) => pending.insert(key, proof),
                None => pending.remove(&key),
            };
        }
    }
}

/// Identifies one call for proof reuse: the tool, its arguments, and the exact offer.
fn fingerprint(tool: &str, arguments: &Map<String, Value>, quote: &Quote) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(tool.as_bytes());
    hash.update([0]);
    hash.update(Value::Object(arguments.clone()).to_string().as_bytes());
    hash.update([0]);
    hash.update(quote.offer.raw.to_string().as_bytes());
    hash.finalize().into()
}

/// The message for a 402 that will not be paid: the cheapest price above a cap if that is the
/// reason, else every offer's reason.
pub(super) fn refusal_message(
    tool: &HttpTool,
    challenge: &Challenge,
    judged: &[Judgement],
) -> String {
    let over = judged
        .iter()
        .filter_map(|j| match &j.refusal {
            Some(Refusal::AboveCap { price, cap, which }) => Some((*price, *cap, *which)),
            _ => None,
        })
        .min_by_key(|(price, _, _)| *price);
    if let Some((price, cap, which)) = over {
        return format!(
            "`{}` costs {price}, which is above {which} {cap}; nothing was paid. Ask the owner \
             to raise the limit, or use another tool.",
            tool.name
        );
    }
    let mut reasons: Vec<String> = judged
        .iter()
        .map(|j| {
            let o = &j.offer;
            let why = j
                .refusal
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!(
                "{} {} {} on {}: {why}",
                o.protocol, o.amount_atomic, o.asset, o.network
            )
        })
        .collect();
    reasons.extend(challenge.problems.iter().cloned());
    if reasons.is_empty() {
        reasons.push("the 402 carried no payment offer tollgate can read".to_owned());
    }
    format!(
        "`{}` requires payment, and no offer can be paid; nothing was paid. {}",
        tool.name,
        reasons.join("; ")
    )
}

impl Tollgate {
    /// The 402 path of one call.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pay(
        &self,
        tool: &HttpTool,
        arguments: &Map<String, Value>,
        request: UpstreamRequest,
        headers: &HeaderMap,
        body: &[u8],
        caller: Option<&Credential>,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let payments = &self.payments;
        let challenge = pay::read_challenge(headers, body);
        if tool.max_price.is_none() {
            return tool_error(tool.redact(&format!(
                "`{}` answered 402 Payment Required, but this tool has no max_price, so tollgate \
                 never pays for it; nothing was paid. {}",
                tool.name,
                describe(&challenge)
            )));
        }
        if !payments.policy.tools.permits(&tool.name)
            || !payments.policy.hosts.permits(&tool.host())
        {
            return tool_error(format!(
                "the policy ({}) does not allow paying for `{}` (host {}); nothing was paid",
                payments.policy.source,
                tool.name,
                tool.host()
            ));
        }
        let quote = match pay::choose(&challenge, &payments.rules(tool, caller)) {
            Ok(quote) => quote,
            Err(judged) => {
                return tool_error(tool.redact(&refusal_message(tool, &challenge, &judged)));
            }
        };
        // Fail closed on rules this tollgate cannot enforce yet: a budget needs the ledger, an
        // approval threshold needs a human to ask.
        if payments.policy.per_day.is_some() || payments.policy.total.is_some() {
            return tool_error(format!(
                "the policy ({}) sets caps.per_day or caps.total, and this tollgate cannot track \
                 spending over time yet, so it does not pay; nothing was paid",
                payments.policy.source
            ));
        }
        if let Some(c) = caller {
            if !c.budgets.is_empty() {
                return tool_error(format!(
                    "your credential carries a budget (budget_usd_micros), and this tollgate \
                     cannot track budgets yet, so it does not pay on it; nothing was paid ({} \
                     asked)",
                    quote.usd
                ));
            }
            if c.restrictions.needs_approval(quote.usd) {
                return tool_error(format!(
                    "{} is above your credential's approval threshold, and this tollgate cannot \
                     ask a human yet; nothing was paid",
                    quote.usd
                ));
            }
        }
        let Some(wallet) = payments.evm.as_ref() else {
            return tool_error("no EVM wallet is configured; nothing was paid".to_owned());
        };

        let now = now_unix();
        let key = fingerprint(&tool.name, arguments, &quote);
        let (proof, reused) = match payments.pending(&key, now + 5) {
            Some(proof) => (proof, true),
            None => match pay::x402::prove(&quote.offer, wallet, now) {
                Ok(proof) => (Arc::new(proof), false),
                Err(e) => return tool_error(format!("`{}`: {e}; nothing was paid", tool.name)),
            },
        };
        // Pending from the moment the proof exists until its outcome is known.
        payments.set_pending(key, Some(proof.clone()));
        progress.send(format!(
            "{} {} {}: paying {} to {} ({})",
            if reused {
                "re-sending the signed payment"
            } else {
                "signed"
            },
            quote.offer.protocol,
            quote.offer.network,
            quote.usd,
            quote.offer.payee,
            quote.asset.symbol
        ));
        tracing::info!(
            tool = %tool.name, protocol = %quote.offer.protocol, network = %quote.offer.network,
            amount_atomic = %quote.offer.amount_atomic, usd = %quote.usd, payee = %quote.offer.payee,
            reused, "paying"
        );

        let mut paid_request = request;
        for (name, value) in &proof.headers {
            paid_request.headers.insert(name.clone(), value.clone());
        }
        let reply = match self.send(tool, paid_request, progress, context).await {
            Ok(reply) => reply,
            Err(cancelled) => return cancelled,
        };
        match reply {
            Ok(Reply {
                answer: Answer::PaymentRequired { body },
                headers,
            }) => {
                // The seller refused the signed payment: it will not settle. Never sign again.
                payments.set_pending(key, None);
                let again = pay::read_challenge(&headers, &body);
                let reason = again
                    .seller_error
                    .unwrap_or_else(|| "no reason given".to_owned());
                tool_error(tool.redact(&format!(
                    "`{}`: the seller answered 402 again after tollgate sent a signed payment of {} \
                     (the seller says: {reason}). tollgate signs one payment per call, so nothing \
                     more was signed; nothing was charged unless the seller settles that payment.",
                    tool.name, quote.usd
                )))
            }
            Ok(Reply { answer, headers }) => {
                payments.set_pending(key, None);
                let settlement = pay::x402::settlement(&headers);
                let decoded = match &settlement {
                    Some(Ok(value)) => Some(value.clone()),
                    Some(Err(reason)) => {
                        tracing::warn!(%reason, "unreadable payment response header");
                        None
                    }
                    None => None,
                };
                let transaction = decoded
                    .as_ref()
                    .and_then(|d| d.get("transaction"))
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty() && t.len() <= 200)
                    .map(str::to_owned);
                let receipt = Receipt::new(&quote, &proof, transaction, now_unix());
                tracing::info!(
                    tool = %tool.name, receipt = %receipt.receipt_id,
                    transaction = ?receipt.transaction, usd = %quote.usd, "paid"
                );
                let receipt = serde_json::to_value(&receipt).unwrap_or(Value::Null);
                let mut result = success(tool, answer, Some(receipt));
                if let Some(decoded) = decoded {
                    let mut meta = Map::new();
                    meta.insert("x402/payment-response".into(), decoded);
                    result.meta = Some(rmcp::model::MetaObject(meta));
                }
                result
            }
            Err(e) => {
                // Unknown outcome: keep the proof pending so a retry re-sends it.
                tool_error(tool.redact(&format!(
                    "`{}`: the paid request failed ({e}); the payment of {} may or may not have \
                     settled. Calling again with the same arguments re-sends the same signed \
                     payment (it can settle at most once), never a new one.",
                    tool.name, quote.usd
                )))
            }
        }
    }
}

/// What a 402 asked for, in one sentence (for tools that never pay).
pub(super) fn describe(challenge: &Challenge) -> String {
    let mut asked: Vec<String> = challenge
        .offers
        .iter()
        .map(|o| {
            format!(
                "{}: {} atomic units of {} on {} to {}",
                o.protocol, o.amount_atomic, o.asset, o.network, o.payee
            )
        })
        .collect();
    asked.extend(challenge.problems.iter().cloned());
    if asked.is_empty() {
        "The seller's 402 carried no offer tollgate can read.".to_owned()
    } else {
        format!("The seller asked for: {}", asked.join("; "))
    }
}

/// JSON view of an offer and its judgement (for `price_check`).
pub(super) fn judgement_json(j: &Judgement) -> Value {
    let o = &j.offer;
    json!({
        "protocol": o.protocol.name(),
        "version": o.protocol.version(),
        "scheme": o.scheme,
        "network": o.network,
        "asset": o.asset,
        "asset_symbol": j.asset.as_ref().map(|a| a.symbol.clone()),
        "amount_atomic": o.amount_atomic.to_string(),
        "amount_usd": j.usd.map(|u| u.decimal()),
        "payee": o.payee,
        "payable": j.refusal.is_none(),
        "reason": j.refusal.as_ref().map(ToString::to_string),
    })
}
