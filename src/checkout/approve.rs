//! The approval step's decisions, whatever the transport: when a person must decide, the
//! facts they decide on (and an approval is bound to), recording the question, and using an
//! approval once. How a person is asked (an elicitation, an `approval_required` result, an
//! input request) is the transport's ([`super::Port::approve`]).
//!
//! The agent never decides: an approval id only *uses* an approval a person gave, once, for
//! the same tool, arguments and offer at no higher price. Every decision is in the ledger.

use serde_json::{Map, Value};

use super::Tool;
use super::{Checkout, blocking};
use crate::approval::{self, ApprovalRecord, Facts, Mismatch};
use crate::budget::credential::Credential;
use crate::ledger::{Approval, ApprovalState, NewApproval, Redeemed};
use crate::money::{UsdMicros, rfc3339};
use crate::pay::Quote;

/// A payment a person must decide on.
#[derive(Debug, Clone)]
pub struct Ask {
    /// What the person sees, and what an approval is bound to.
    pub facts: Facts,
}

/// What the transport's approval step decided.
#[derive(Debug)]
pub enum Gate<H> {
    /// Go on and pay; the receipt records how it was approved.
    Pay(ApprovalRecord),
    /// Do not pay: why, in words for the model (nothing was paid).
    Refuse(String),
    /// The transport answers the call itself (it asked a person and the answer comes later).
    Halt(H),
}

/// What using an approval id comes to.
#[derive(Debug)]
pub enum Redemption {
    /// A person approved exactly this: pay, once.
    Use(ApprovalRecord),
    /// The seller now asks for more than was approved: the approval was not used; ask a
    /// person again (the note says why).
    AskAgain(String),
    /// Nobody has decided yet; the question stands until `expires_at`.
    Undecided { expires_at: u64 },
    /// It cannot be used: the whole message.
    Refused(String),
}

impl Checkout {
    /// Why a person must approve paying `quote` for `tool` by `caller`, if one must.
    pub(super) fn approval_reason(
        &self,
        tool: &dyn Tool,
        quote: &Quote,
        caller: Option<&Credential>,
    ) -> Option<String> {
        approval::required(
            quote.usd,
            self.policy.approve_above,
            caller.and_then(|c| c.restrictions.approve_above()),
            tool.name(),
            tool.approval_always(),
        )
    }

    /// The facts a person sees, and an approval is bound to, with the budget left after paying.
    pub(super) fn facts(
        &self,
        tool: &dyn Tool,
        arguments: &Map<String, Value>,
        quote: &Quote,
        caller: Option<&Credential>,
        reason: String,
        now: u64,
    ) -> Facts {
        let caps = self.caps(caller);
        let left = if caps.is_empty() {
            None
        } else {
            match blocking(|| self.ledger.status(&caps, now)) {
                Ok(status) => status
                    .iter()
                    .map(|s| s.remaining_usd_micros.saturating_sub(quote.usd.0))
                    .min(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the caps for an approval request");
                    None
                }
            }
        };
        Facts {
            budget_left_usd_micros: left,
            ..offer_facts(tool, arguments, quote, reason)
        }
    }

    /// Records a new question for a person about `facts`, open until `expires_at`; its id, or
    /// the message to return.
    pub fn ask_person(&self, facts: &Facts, expires_at: u64, now: u64) -> Result<String, String> {
        let id = approval::new_id();
        let new = NewApproval {
            id: id.clone(),
            tool: facts.tool.clone(),
            amount_usd_micros: facts.amount_usd_micros,
            facts_json: serde_json::to_string(facts).unwrap_or_default(),
            expires_at,
        };
        match blocking(|| self.ledger.create_approval(new, now)) {
            Ok(()) => {
                tracing::info!(approval = %id, tool = %facts.tool,
                    usd = %UsdMicros(facts.amount_usd_micros), "asking a person to approve a payment");
                Ok(id)
            }
            Err(e) => Err(format!(
                "`{}`: the ledger could not record the approval request ({e}); nothing was paid",
                facts.tool
            )),
        }
    }

    /// Uses approval `id` for a call whose offer is `facts`, if a person approved exactly this
    /// (the same tool, arguments, payee, asset, network and protocol, at no higher price).
    pub fn redeem(&self, id: &str, facts: &Facts, now: u64) -> Redemption {
        let tool = &facts.tool;
        let refuse = |why: String| {
            Redemption::Refused(format!("`{tool}`: approval {id} {why}; nothing was paid"))
        };
        if !approval::is_id(id) {
            return Redemption::Refused(format!(
                "`{tool}`: approval_id {id:?} is not an approval id (ap_ followed by 32 hex \
                 digits); nothing was paid"
            ));
        }
        let covers = |a: &Approval| -> Result<(), Mismatch> {
            let approved: Facts = serde_json::from_str(&a.facts_json)
                .map_err(|_| Mismatch::Different("unreadable facts".to_owned()))?;
            approved.covers(facts)
        };
        let outcome = blocking(|| {
            self.ledger
                .redeem_approval(id, now, &|a| covers(a).map_err(|m| m.to_string()))
        });
        match outcome {
            Err(e) => refuse(format!("cannot be read from the ledger ({e})")),
            Ok(Redeemed::NotFound) => refuse("does not exist".to_owned()),
            Ok(Redeemed::Used(a)) => Redemption::Use(person(&a, now)),
            Ok(Redeemed::Refused(a, _)) => match covers(&a) {
                Err(Mismatch::Higher { approved, asked }) => Redemption::AskAgain(format!(
                    "Approval {id} covers at most {approved}, and the seller now asks for \
                     {asked}; it was not used, and a person is asked again."
                )),
                Err(m) => refuse(format!("cannot be used here: {m}")),
                Ok(()) => refuse("cannot be used here".to_owned()),
            },
            Ok(Redeemed::Not(a)) => match a.state {
                ApprovalState::Pending => match covers(&a) {
                    Ok(()) => Redemption::Undecided {
                        expires_at: a.expires_at,
                    },
                    Err(m) => refuse(format!("cannot be used here: {m}")),
                },
                ApprovalState::Denied => refuse(format!(
                    "was denied by a person{}",
                    a.decided_by
                        .as_deref()
                        .map(|c| format!(" (through {c})"))
                        .unwrap_or_default()
                )),
                ApprovalState::Expired => refuse(
                    "has expired; call again without approval_id to ask a person again".to_owned(),
                ),
                ApprovalState::Used => {
                    refuse("was already used for a payment (an approval pays once)".to_owned())
                }
                ApprovalState::Approved => refuse("cannot be used".to_owned()),
            },
        }
    }
}

/// The receipt's record of a person's approval.
fn person(a: &Approval, now: u64) -> ApprovalRecord {
    let facts: Option<Facts> = serde_json::from_str(&a.facts_json).ok();
    ApprovalRecord {
        approved_by: "person".to_owned(),
        channel: a.decided_by.clone().unwrap_or_else(|| "unknown".to_owned()),
        approval_id: Some(a.id.clone()),
        decided_at: rfc3339(a.decided_at.unwrap_or(now)),
        reason: facts.map(|f| f.reason).unwrap_or_default(),
    }
}

/// The facts of paying `quote` for this call, without the budget (what an approval binds).
pub fn offer_facts(
    tool: &dyn Tool,
    arguments: &Map<String, Value>,
    quote: &Quote,
    reason: String,
) -> Facts {
    Facts {
        tool: tool.name().to_owned(),
        arguments_hash: approval::arguments_hash(arguments),
        arguments: arguments.clone(),
        protocol: quote.offer.protocol.to_string(),
        network: quote.offer.network.clone(),
        asset: quote.offer.asset.clone(),
        asset_symbol: quote.asset.symbol.clone(),
        amount_atomic: quote.offer.amount_atomic.to_string(),
        amount_usd_micros: quote.usd.0,
        amount_in_asset: approval::amount_in_asset(
            quote.offer.amount_atomic,
            quote.asset.decimals,
            &quote.asset.symbol,
        ),
        payee: quote.offer.payee.clone(),
        budget_left_usd_micros: None,
        reason,
    }
}
