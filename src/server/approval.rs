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
//! same tool, arguments and offer at no higher price (`checkout::approve` decides that). Every
//! decision is in the ledger.

use rmcp::RoleServer;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationSchema, InputRequest, InputRequiredResult,
    InputResponses, ProtocolVersion,
};
use rmcp::service::RequestContext;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Progress, Tollgate};
use crate::approval::{self, Facts, Mismatch, Secret};
use crate::checkout::{Redemption, blocking};
use crate::ledger::Decided;
use crate::money::{UsdMicros, now_unix, rfc3339};

/// What a retried call brings back: an approval id (out of band), or the host's answer to an
/// elicitation with the sealed state (protocol 2026-07-28).
#[derive(Debug, Default)]
pub(super) struct Continuation {
    pub approval_id: Option<String>,
    pub request_state: Option<String>,
    pub input_responses: Option<InputResponses>,
}

/// The approval step's outcome: pay, refuse, or this result now (a person is asked).
type Gate = crate::checkout::Gate<Box<CallToolResponse>>;

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

impl Tollgate {
    /// Asks a person whether the payment `facts` describes may be made (the engine found
    /// one must decide), in the way the host supports, or uses the approval the call brought.
    pub(super) async fn approval_gate(
        &self,
        facts: &Facts,
        continuation: &Continuation,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
    ) -> Gate {
        let now = now_unix();
        let owner = super::network_owner(context);
        if let Some(id) = &continuation.approval_id {
            if !self.issued_to(id, owner) {
                // Another caller's approval (or one asked before a restart): never used, and
                // nothing said about it.
                return self.ask_out_of_band(
                    facts,
                    now,
                    Some(format!(
                        "approval_id {id} was not issued to your credential, so it cannot be \
                         used; a new approval is needed."
                    )),
                    owner,
                );
            }
            return self.redeem(id, facts, now, owner);
        }
        let capabilities = context.client_capabilities();
        let form = capabilities
            .as_ref()
            .and_then(|c| c.elicitation.as_ref())
            .is_some_and(|e| e.form.is_some() || e.url.is_none());
        let stateless = context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28);
        match (form, stateless, &self.checkout.approval.secret) {
            (true, true, Some(secret)) => {
                self.input_required(facts, secret, continuation, now, owner)
            }
            (true, false, _) => self.elicit(facts, progress, context, now).await,
            _ => {
                if continuation.request_state.is_some() {
                    return Gate::Refuse(format!(
                        "`{}`: the call carries a requestState, but the request does not declare \
                         elicitation; nothing was paid",
                        facts.tool
                    ));
                }
                self.ask_out_of_band(facts, now, None, owner)
            }
        }
    }

    /// The out-of-band ask: a new pending approval and the `approval_required` result.
    fn ask_out_of_band(
        &self,
        facts: &Facts,
        now: u64,
        note: Option<String>,
        owner: Option<[u8; 32]>,
    ) -> Gate {
        let expires_at = now + self.checkout.approval.expires_after_secs;
        match self.checkout.ask_person(facts, expires_at, now) {
            Ok(id) => {
                self.issue(&id, owner);
                Gate::Halt(Box::new(
                    self.approval_required(&id, facts, expires_at, note),
                ))
            }
            Err(message) => Gate::Refuse(message),
        }
    }

    /// The structured result that tells the agent a person must approve out of band.
    fn approval_required(
        &self,
        id: &str,
        facts: &Facts,
        expires_at: u64,
        note: Option<String>,
    ) -> CallToolResponse {
        let url = self
            .checkout
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
            tool: facts.tool.clone(),
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
            facts.tool
        );
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(structured);
        result.into()
    }

    /// A retried call with `approval_id`: uses the approval if a person approved exactly this.
    fn redeem(&self, id: &str, facts: &Facts, now: u64, owner: Option<[u8; 32]>) -> Gate {
        match self.checkout.redeem(id, facts, now) {
            Redemption::Use(approval) => Gate::Pay(approval),
            Redemption::AskAgain(note) => self.ask_out_of_band(facts, now, Some(note), owner),
            Redemption::Undecided { expires_at } => Gate::Halt(Box::new(self.approval_required(
                id,
                facts,
                expires_at,
                Some("No person has decided yet.".to_owned()),
            ))),
            Redemption::Refused(message) => Gate::Refuse(message),
        }
    }

    /// Protocol 2026-07-28: ask with `InputRequiredResult`, or read the host's answer.
    fn input_required(
        &self,
        facts: &Facts,
        secret: &Secret,
        continuation: &Continuation,
        now: u64,
        owner: Option<[u8; 32]>,
    ) -> Gate {
        let Some(sealed) = &continuation.request_state else {
            return self.ask_input_required(facts, secret, now, None);
        };
        let refuse = |why: &str| {
            Gate::Refuse(format!(
                "`{}`: {why}; nothing was paid. Call again without requestState to be asked again.",
                facts.tool
            ))
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
        let ledger = self.checkout.ledger.clone();
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
            Ok(Decided::Done(_)) if !yes => Gate::Refuse(format!(
                "`{}`: the person declined the payment of {}; nothing was paid",
                facts.tool,
                UsdMicros(facts.amount_usd_micros)
            )),
            Ok(Decided::Done(a)) => {
                // The fresh 402 asks for more than was approved: ask again, pay nothing.
                let higher = serde_json::from_str::<Facts>(&a.facts_json).is_ok_and(|approved| {
                    matches!(approved.covers(facts), Err(Mismatch::Higher { .. }))
                });
                if higher {
                    return self.ask_input_required(
                        facts,
                        secret,
                        now,
                        Some("The seller now asks for more than you approved."),
                    );
                }
                self.redeem(id, facts, now, owner)
            }
        }
    }

    fn ask_input_required(
        &self,
        facts: &Facts,
        secret: &Secret,
        now: u64,
        note: Option<&str>,
    ) -> Gate {
        let expires_at = now + self.checkout.approval.elicitation_timeout_secs;
        let id = match self.checkout.ask_person(facts, expires_at, now) {
            Ok(id) => id,
            Err(message) => return Gate::Refuse(message),
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
            Err(e) => return Gate::Refuse(e),
        };
        let mut requests = std::collections::BTreeMap::new();
        requests.insert(
            INPUT_KEY.to_owned(),
            InputRequest::Elicitation(ElicitRequest::new(params)),
        );
        Gate::Halt(Box::new(
            InputRequiredResult::new(Some(requests), Some(sealed)).into(),
        ))
    }

    /// Protocol 2025-11-25: `elicitation/create` from inside the call.
    async fn elicit(
        &self,
        facts: &Facts,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
        now: u64,
    ) -> Gate {
        // Expires like an out-of-band approval: no answer in time falls back to that flow.
        let expires_at = now + self.checkout.approval.expires_after_secs;
        let id = match self.checkout.ask_person(facts, expires_at, now) {
            Ok(id) => id,
            Err(message) => return Gate::Refuse(message),
        };
        // Unanswered, it becomes an out-of-band approval whose id the caller is given.
        let owner = super::network_owner(context);
        self.issue(&id, owner);
        let params = match form(facts, None) {
            Ok(params) => params,
            Err(e) => return Gate::Refuse(e),
        };
        let timeout = self.checkout.approval.elicitation_timeout_secs;
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
                return Gate::Refuse(format!("the call to `{}` was cancelled; nothing was paid", facts.tool));
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(approval = %id, error = %e, "no answer to the elicitation; falling back to out-of-band approval");
                return Gate::Halt(Box::new(self.approval_required(
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
        let ledger = self.checkout.ledger.clone();
        let now = now_unix();
        match blocking(|| ledger.decide_approval(&id, yes, "elicitation", now)) {
            Ok(Decided::Done(_)) if yes => self.redeem(&id, facts, now, owner),
            Ok(Decided::Done(_)) => Gate::Refuse(format!(
                "`{}`: the person declined the payment of {}; nothing was paid",
                facts.tool,
                UsdMicros(facts.amount_usd_micros)
            )),
            Ok(other) => Gate::Refuse(format!(
                "`{}`: the approval could not be recorded ({other:?}); nothing was paid",
                facts.tool
            )),
            Err(e) => Gate::Refuse(format!(
                "`{}`: the ledger could not record the decision ({e}); nothing was paid",
                facts.tool
            )),
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
