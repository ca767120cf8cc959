//! The approval step of a paid call, in MCP terms: after the offer is chosen and before
//! anything is signed, a payment above the threshold waits for a person.
//!
//! How the person is asked depends on the host:
//!
//! * protocol 2026-07-28 with elicitation: the call answers `InputRequiredResult` with a form
//!   elicitation and a sealed `requestState` (HMAC under the state directory's secret, bound
//!   to the approval, the tool, the arguments and an expiry); the host retries the call with
//!   `inputResponses`, and the retry pays if the person said yes and the fresh offer is covered;
//! * protocol 2025-11-25 with elicitation: `elicitation/create` from inside the call, waiting
//!   at most `[approval] elicitation_timeout_secs` (≤ 45 s); no answer in time falls back to
//!   the out-of-band flow with the same approval;
//! * otherwise: a structured `approval_required` result; a person decides with `tollgate
//!   approve|deny <id>` or on the local page, and the agent retries with `approval_id`.
//!
//! The agent never decides: `approval_id` only *uses* an approval a person gave, once, for the
//! same tool, arguments and offer at no higher price. Every decision is in the ledger.

use rmcp::RoleServer;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationSchema, InputRequest, InputRequiredResult,
    InputResponses, ProtocolVersion,
};
use rmcp::service::RequestContext;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::paid::blocking;
use super::{Progress, Tollgate, tool_error};
use crate::approval::{self, ApprovalRecord, Facts, Mismatch, Secret};
use crate::budget::credential::Credential;
use crate::catalog::HttpTool;
use crate::ledger::{Approval, ApprovalState, Decided, NewApproval, Redeemed};
use crate::money::{UsdMicros, now_unix, rfc3339};
use crate::pay::Quote;

/// What a retried call brings back: an approval id (out of band), or the host's answer to an
/// elicitation with the sealed state (protocol 2026-07-28).
#[derive(Debug, Default)]
pub(super) struct Continuation {
    pub approval_id: Option<String>,
    pub request_state: Option<String>,
    pub input_responses: Option<InputResponses>,
}

/// The outcome of the approval step.
pub(super) enum Gate {
    /// Go on and pay; the receipt records how it was approved.
    Pay(ApprovalRecord),
    /// Stop here: nothing is signed or paid.
    Stop(Box<CallToolResponse>),
}

/// The key of the one input request tollgate sends.
const INPUT_KEY: &str = "approve_payment";
/// The seal's domain for `requestState`.
const STATE_DOMAIN: &str = "tollgate/mcp-request-state/v1";

/// What a sealed `requestState` carries (signed, not encrypted: nothing secret in it).
#[derive(Debug, Serialize, Deserialize)]
struct SealedState {
    approval_id: String,
    tool: String,
    arguments_hash: String,
    /// The offer it was asked for: protocol, network, asset, payee, amount (atomic and µUSD).
    offer: String,
    expires_at: u64,
}

fn offer_digest(f: &Facts) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}",
        f.protocol, f.network, f.asset, f.payee, f.amount_atomic, f.amount_usd_micros
    )
}

fn stop(result: CallToolResult) -> Gate {
    Gate::Stop(Box::new(result.into()))
}

impl Tollgate {
    /// The approval step: decides whether `quote` may be paid now, asking a person if needed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn approval_gate(
        &self,
        tool: &HttpTool,
        arguments: &Map<String, Value>,
        quote: &Quote,
        caller: Option<&Credential>,
        continuation: &Continuation,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
    ) -> Gate {
        let now = now_unix();
        let payments = &self.payments;
        let Some(reason) = approval::required(
            quote.usd,
            payments.policy.approve_above,
            caller.and_then(|c| c.restrictions.approve_above()),
            &tool.name,
            tool.approval_always,
        ) else {
            return Gate::Pay(ApprovalRecord::by_policy(quote.usd, now));
        };
        let Some(secret) = payments.approval.secret.clone() else {
            return stop(tool_error(format!(
                "`{}`: {reason}, so a person must approve it, but this tollgate has no approval \
                 secret (it could not write its state directory); nothing was paid",
                tool.name
            )));
        };
        let facts = self.facts(tool, arguments, quote, caller, reason, now);

        if let Some(id) = &continuation.approval_id {
            return self.redeem(tool, id, &facts, now);
        }
        let capabilities = context.client_capabilities();
        let form = capabilities
            .as_ref()
            .and_then(|c| c.elicitation.as_ref())
            .is_some_and(|e| e.form.is_some() || e.url.is_none());
        let stateless = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        match (form, stateless) {
            (true, true) => self.input_required(tool, &facts, &secret, continuation, now),
            (true, false) => self.elicit(tool, &facts, progress, context, now).await,
            (false, _) => {
                if continuation.request_state.is_some() {
                    return stop(tool_error(format!(
                        "`{}`: the call carries a requestState, but the request does not declare \
                         elicitation; nothing was paid",
                        tool.name
                    )));
                }
                self.ask_out_of_band(tool, &facts, now, None)
            }
        }
    }

    /// The facts a person sees, and an approval is bound to, with the budget left after paying.
    fn facts(
        &self,
        tool: &HttpTool,
        arguments: &Map<String, Value>,
        quote: &Quote,
        caller: Option<&Credential>,
        reason: String,
        now: u64,
    ) -> Facts {
        let payments = &self.payments;
        let caps = payments.caps(caller);
        let ledger = payments.ledger.clone();
        let left = if caps.is_empty() {
            None
        } else {
            match blocking(|| ledger.status(&caps, now)) {
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

    /// Records a new pending approval for `facts`; its id, or the result to return.
    fn record_ask(
        &self,
        tool: &HttpTool,
        facts: &Facts,
        expires_at: u64,
        now: u64,
    ) -> Result<String, Gate> {
        self.try_record_ask(tool, facts, expires_at, now)
            .map_err(|e| stop(tool_error(e)))
    }

    fn try_record_ask(
        &self,
        tool: &HttpTool,
        facts: &Facts,
        expires_at: u64,
        now: u64,
    ) -> Result<String, String> {
        let id = approval::new_id();
        let new = NewApproval {
            id: id.clone(),
            tool: tool.name.clone(),
            amount_usd_micros: facts.amount_usd_micros,
            facts_json: serde_json::to_string(facts).unwrap_or_default(),
            expires_at,
        };
        let ledger = self.payments.ledger.clone();
        match blocking(|| ledger.create_approval(new, now)) {
            Ok(()) => {
                tracing::info!(approval = %id, tool = %tool.name, usd = %UsdMicros(facts.amount_usd_micros), "asking a person to approve a payment");
                Ok(id)
            }
            Err(e) => Err(format!(
                "`{}`: the ledger could not record the approval request ({e}); nothing was paid",
                tool.name
            )),
        }
    }

    /// The out-of-band ask: a new pending approval and the `approval_required` result.
    fn ask_out_of_band(
        &self,
        tool: &HttpTool,
        facts: &Facts,
        now: u64,
        note: Option<String>,
    ) -> Gate {
        let expires_at = now + self.payments.approval.expires_after_secs;
        match self.record_ask(tool, facts, expires_at, now) {
            Ok(id) => Gate::Stop(Box::new(
                self.approval_required(tool, &id, facts, expires_at, note),
            )),
            Err(gate) => gate,
        }
    }

    /// The structured result that tells the agent a person must approve out of band.
    fn approval_required(
        &self,
        tool: &HttpTool,
        id: &str,
        facts: &Facts,
        expires_at: u64,
        note: Option<String>,
    ) -> CallToolResponse {
        let url = self
            .payments
            .approval
            .page
            .map(|addr| approval::page::url(addr, id));
        let structured = super::shapes::to_structured(&super::shapes::ApprovalRequired {
            status: super::shapes::ApprovalRequiredStatus::ApprovalRequired,
            approval_id: id.to_owned(),
            approve_url: url.clone(),
            expires_at: rfc3339(expires_at),
            amount: UsdMicros(facts.amount_usd_micros).to_string(),
            amount_usd_micros: facts.amount_usd_micros,
            amount_in_asset: facts.amount_in_asset.clone(),
            payee: facts.payee.clone(),
            protocol: facts.protocol.clone(),
            network: facts.network.clone(),
            budget_left_after: facts
                .budget_left_usd_micros
                .map(|l| UsdMicros(l).to_string()),
            tool: tool.name.clone(),
            reason: facts.reason.clone(),
        });
        let page = match &url {
            Some(url) => format!(", or open {url}"),
            None => String::new(),
        };
        let text = format!(
            "{}A person must approve this payment before tollgate pays. {} Ask the person to run \
             `tollgate approve {id}` (or `tollgate deny {id}`){page}; it expires at {}. Once \
             approved, call `{}` again with the same arguments plus \"approval_id\": \"{id}\". \
             Nothing was paid.",
            note.map(|n| format!("{n} ")).unwrap_or_default(),
            facts.summary(),
            rfc3339(expires_at),
            tool.name
        );
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(structured);
        result.into()
    }

    /// A retried call with `approval_id`: uses the approval if a person approved exactly this.
    fn redeem(&self, tool: &HttpTool, id: &str, facts: &Facts, now: u64) -> Gate {
        if !approval::is_id(id) {
            return stop(tool_error(format!(
                "`{}`: approval_id {id:?} is not an approval id (ap_ followed by 32 hex digits); \
                 nothing was paid",
                tool.name
            )));
        }
        let ledger = self.payments.ledger.clone();
        let covers = |a: &Approval| -> Result<(), Mismatch> {
            let approved: Facts = serde_json::from_str(&a.facts_json)
                .map_err(|_| Mismatch::Different("unreadable facts".to_owned()))?;
            approved.covers(facts)
        };
        let outcome =
            blocking(|| ledger.redeem_approval(id, now, &|a| covers(a).map_err(|m| m.to_string())));
        let refuse = |why: String| {
            stop(tool_error(format!(
                "`{}`: approval {id} {why}; nothing was paid",
                tool.name
            )))
        };
        match outcome {
            Err(e) => refuse(format!("cannot be read from the ledger ({e})")),
            Ok(Redeemed::NotFound) => refuse("does not exist".to_owned()),
            Ok(Redeemed::Used(a)) => Gate::Pay(person(&a, now)),
            Ok(Redeemed::Refused(a, _)) => match covers(&a) {
                Err(Mismatch::Higher { approved, asked }) => self.ask_out_of_band(
                    tool,
                    facts,
                    now,
                    Some(format!(
                        "Approval {id} covers at most {approved}, and the seller now asks for \
                         {asked}; it was not used, and a person is asked again."
                    )),
                ),
                Err(m) => refuse(format!("cannot be used here: {m}")),
                Ok(()) => refuse("cannot be used here".to_owned()),
            },
            Ok(Redeemed::Not(a)) => match a.state {
                ApprovalState::Pending => match covers(&a) {
                    Ok(()) => Gate::Stop(Box::new(self.approval_required(
                        tool,
                        id,
                        facts,
                        a.expires_at,
                        Some("No person has decided yet.".to_owned()),
                    ))),
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

    /// Protocol 2026-07-28: ask with `InputRequiredResult`, or read the host's answer.
    fn input_required(
        &self,
        tool: &HttpTool,
        facts: &Facts,
        secret: &Secret,
        continuation: &Continuation,
        now: u64,
    ) -> Gate {
        let Some(sealed) = &continuation.request_state else {
            return self.ask_input_required(tool, facts, secret, now, None);
        };
        let refuse = |why: &str| {
            stop(tool_error(format!(
                "`{}`: {why}; nothing was paid. Call again without requestState to be asked again.",
                tool.name
            )))
        };
        let state: SealedState = match secret
            .open(STATE_DOMAIN, sealed)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        {
            Ok(state) => state,
            Err(e) => return refuse(&format!("the requestState is refused: {e}")),
        };
        if state.tool != facts.tool || state.arguments_hash != facts.arguments_hash {
            return refuse("the requestState was issued for another tool or other arguments");
        }
        let ledger = self.payments.ledger.clone();
        if now >= state.expires_at {
            // Marks the approval expired in the ledger.
            let _ = blocking(|| ledger.approval(&state.approval_id, now));
            return refuse("the approval request has expired");
        }
        let answer = continuation
            .input_responses
            .as_ref()
            .and_then(|r| r.get(INPUT_KEY))
            .and_then(|v| serde_json::from_value::<ElicitResult>(v.clone()).ok());
        let Some(answer) = answer else {
            return refuse("the retry carries no answer to the approval request");
        };
        let yes = approves(&answer);
        let id = state.approval_id.as_str();
        match blocking(|| ledger.decide_approval(id, yes, "elicitation", now)) {
            Err(e) => refuse(&format!("the ledger could not record the decision ({e})")),
            Ok(Decided::NotFound) => refuse("the approval request is unknown"),
            Ok(Decided::Final(a)) => {
                refuse(&format!("the approval request is already {}", a.state))
            }
            Ok(Decided::Done(_)) if !yes => stop(tool_error(format!(
                "`{}`: the person declined the payment of {}; nothing was paid",
                tool.name,
                UsdMicros(facts.amount_usd_micros)
            ))),
            Ok(Decided::Done(a)) => {
                // The fresh 402 asks for more than was approved: ask again, pay nothing.
                let higher = serde_json::from_str::<Facts>(&a.facts_json).is_ok_and(|approved| {
                    matches!(approved.covers(facts), Err(Mismatch::Higher { .. }))
                });
                if higher {
                    return self.ask_input_required(
                        tool,
                        facts,
                        secret,
                        now,
                        Some("The seller now asks for more than you approved."),
                    );
                }
                self.redeem(tool, id, facts, now)
            }
        }
    }

    fn ask_input_required(
        &self,
        tool: &HttpTool,
        facts: &Facts,
        secret: &Secret,
        now: u64,
        note: Option<&str>,
    ) -> Gate {
        let expires_at = now + self.payments.approval.elicitation_timeout_secs;
        let id = match self.record_ask(tool, facts, expires_at, now) {
            Ok(id) => id,
            Err(gate) => return gate,
        };
        let state = SealedState {
            approval_id: id,
            tool: facts.tool.clone(),
            arguments_hash: facts.arguments_hash.clone(),
            offer: offer_digest(facts),
            expires_at,
        };
        let sealed = secret.seal(
            STATE_DOMAIN,
            serde_json::to_string(&state).unwrap_or_default().as_bytes(),
        );
        let params = match form(facts, note) {
            Ok(params) => params,
            Err(e) => return stop(tool_error(e)),
        };
        let mut requests = std::collections::BTreeMap::new();
        requests.insert(
            INPUT_KEY.to_owned(),
            InputRequest::Elicitation(ElicitRequest::new(params)),
        );
        Gate::Stop(Box::new(
            InputRequiredResult::new(Some(requests), Some(sealed)).into(),
        ))
    }

    /// Protocol 2025-11-25: `elicitation/create` from inside the call.
    async fn elicit(
        &self,
        tool: &HttpTool,
        facts: &Facts,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
        now: u64,
    ) -> Gate {
        // Expires like an out-of-band approval: no answer in time falls back to that flow.
        let expires_at = now + self.payments.approval.expires_after_secs;
        let id = match self.record_ask(tool, facts, expires_at, now) {
            Ok(id) => id,
            Err(gate) => return gate,
        };
        let params = match form(facts, None) {
            Ok(params) => params,
            Err(e) => return stop(tool_error(e)),
        };
        let timeout = self.payments.approval.elicitation_timeout_secs;
        progress.send(format!(
            "waiting up to {timeout} s for a person to approve {}",
            UsdMicros(facts.amount_usd_micros)
        ));
        let asked = context
            .peer
            .create_elicitation_with_timeout(params, Some(std::time::Duration::from_secs(timeout)));
        let answer = tokio::select! {
            answer = asked => answer,
            () = context.ct.cancelled() => {
                return stop(tool_error(format!("the call to `{}` was cancelled; nothing was paid", tool.name)));
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(approval = %id, error = %e, "no answer to the elicitation; falling back to out-of-band approval");
                return Gate::Stop(Box::new(self.approval_required(
                    tool,
                    &id,
                    facts,
                    expires_at,
                    Some(format!(
                        "The host did not answer the approval request within {timeout} s."
                    )),
                )));
            }
        };
        let yes = approves(&answer);
        let ledger = self.payments.ledger.clone();
        let now = now_unix();
        match blocking(|| ledger.decide_approval(&id, yes, "elicitation", now)) {
            Ok(Decided::Done(_)) if yes => self.redeem(tool, &id, facts, now),
            Ok(Decided::Done(_)) => stop(tool_error(format!(
                "`{}`: the person declined the payment of {}; nothing was paid",
                tool.name,
                UsdMicros(facts.amount_usd_micros)
            ))),
            Ok(other) => stop(tool_error(format!(
                "`{}`: the approval could not be recorded ({other:?}); nothing was paid",
                tool.name
            ))),
            Err(e) => stop(tool_error(format!(
                "`{}`: the ledger could not record the decision ({e}); nothing was paid",
                tool.name
            ))),
        }
    }
}

/// Whether a host's answer is a yes: accepted, with `approve: true`.
fn approves(answer: &ElicitResult) -> bool {
    answer.action == ElicitationAction::Accept
        && answer
            .content
            .as_ref()
            .and_then(|c| c.get("approve"))
            .and_then(Value::as_bool)
            == Some(true)
}

/// The elicitation form: the facts in the message, one required yes/no.
fn form(facts: &Facts, note: Option<&str>) -> Result<ElicitRequestParams, String> {
    let schema: ElicitationSchema = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            "approve": {
                "type": "boolean",
                "title": "Approve this payment?",
                "description": format!(
                    "{} to {}", UsdMicros(facts.amount_usd_micros), facts.payee
                ),
            }
        },
        "required": ["approve"],
    }))
    .map_err(|e| format!("cannot build the approval form ({e}); nothing was paid"))?;
    let message = format!(
        "{}tollgate asks before paying. {} Amount in the asset: {}.",
        note.map(|n| format!("{n} ")).unwrap_or_default(),
        facts.summary(),
        facts.amount_in_asset
    );
    Ok(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: schema,
    })
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
pub(super) fn offer_facts(
    tool: &HttpTool,
    arguments: &Map<String, Value>,
    quote: &Quote,
    reason: String,
) -> Facts {
    Facts {
        tool: tool.name.clone(),
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
