//! tollgate's own tools (not from `tools/*.toml`): `price_check`, `budget_status`,
//! `list_receipts`, `delegate_budget`, `payment_status`. Their arguments and results are the
//! types of [`super::shapes`], and their schemas are derived from those types.
//!
//! None of them can grant an approval or move money; `price_check` only makes the unpaid
//! request and reports what the seller asks for.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::model::{CallToolResult, Tool, ToolAnnotations};
use rmcp::service::RequestContext;
use serde_json::{Map, Value};

use super::shapes::{self, structured};
use super::{Progress, Tollgate, tool_error};
use crate::pay;

pub const PRICE_CHECK: &str = "price_check";
pub const BUDGET_STATUS: &str = "budget_status";
pub const LIST_RECEIPTS: &str = "list_receipts";
pub const DELEGATE_BUDGET: &str = "delegate_budget";
pub const PAYMENT_STATUS: &str = "payment_status";

/// The MCP tools tollgate adds.
pub fn tools() -> Vec<Tool> {
    use shapes::schema_of;
    let input = schema_of::<shapes::PriceCheckArguments>();
    let output = schema_of::<shapes::PriceCheck>();
    let mut annotations = ToolAnnotations::new();
    annotations.read_only_hint = Some(true);
    annotations.open_world_hint = Some(true);
    let mut local = ToolAnnotations::new();
    local.read_only_hint = Some(true);
    local.open_world_hint = Some(false);
    let no_input = schema_of::<shapes::NoArguments>();
    let status_output = schema_of::<shapes::BudgetStatus>();
    let receipts_input = schema_of::<shapes::ListReceiptsArguments>();
    let receipts_output = schema_of::<shapes::Receipts>();
    let delegate_input = schema_of::<shapes::DelegateArguments>();
    let delegate_output = schema_of::<shapes::Delegated>();
    let status_input = schema_of::<shapes::PaymentStatusArguments>();
    let status_of_approval = schema_of::<shapes::PaymentStatus>();
    let mut delegating = ToolAnnotations::new();
    delegating.read_only_hint = Some(false);
    delegating.destructive_hint = Some(false);
    delegating.open_world_hint = Some(false);
    vec![
        Tool::new(
            PAYMENT_STATUS,
            "Where a payment that waits for a person's approval stands (pending, approved, \
             denied, expired, used). Read-only: only a person can approve, through the host, \
             `tollgate approve` or the approval page. Once approved, call the tool again with \
             the same arguments and the approval_id.",
            Arc::new(status_input),
        )
        .with_title("Payment approval status")
        .with_raw_output_schema(Arc::new(status_of_approval))
        .with_annotations(local.clone()),
        Tool::new(
            DELEGATE_BUDGET,
            "Give a sub-agent its own, smaller budget: mints a credential attenuated from yours \
             with a budget (never more than you have left), and optionally a lifetime, tools, \
             hosts, a per-call cap and an approval threshold. Its spending counts against your \
             budget too. Hand the returned token to the sub-agent; it can only narrow further.",
            Arc::new(delegate_input),
        )
        .with_title("Delegate a budget")
        .with_raw_output_schema(Arc::new(delegate_output))
        .with_annotations(delegating),
        Tool::new(
            BUDGET_STATUS,
            "Your spending limits: the most one call may pay, and for each cap that applies to \
             you (the owner's per-day and total caps, and every budget in your credential's \
             chain, ancestors included) the limit, spent, held for calls in flight, and \
             remaining.",
            Arc::new(no_input),
        )
        .with_title("Budget status")
        .with_raw_output_schema(Arc::new(status_output))
        .with_annotations(local.clone()),
        Tool::new(
            LIST_RECEIPTS,
            "Receipts of paid calls made under your credential's budget (yours and those of \
             credentials delegated from it), newest first; every receipt when no credential is \
             presented.",
            Arc::new(receipts_input),
        )
        .with_title("List receipts")
        .with_raw_output_schema(Arc::new(receipts_output))
        .with_annotations(local),
        Tool::new(
            PRICE_CHECK,
            "What a call to another tool would cost, without paying: makes the unpaid request \
             and lists every payment offer (protocol, network, asset, amount, USD) and whether \
             tollgate may pay it. Use it to plan before you spend.",
            Arc::new(input),
        )
        .with_title("Price check")
        .with_raw_output_schema(Arc::new(output))
        .with_annotations(annotations),
    ]
}

impl Tollgate {
    /// Runs one of tollgate's own tools; `None` if `name` is not one.
    pub(super) async fn call_meta_tool(
        &self,
        name: &str,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Option<CallToolResult> {
        match name {
            PRICE_CHECK => Some(self.price_check(arguments, context).await),
            PAYMENT_STATUS => {
                // What the ledger says includes the receipts of calls already answered.
                self.checkout.finish_writes().await;
                let owner = super::network_owner(context);
                Some(payment_status(&self.checkout, arguments, |id| {
                    self.issued_to(id, owner)
                }))
            }
            BUDGET_STATUS | LIST_RECEIPTS | DELEGATE_BUDGET => {
                self.checkout.finish_writes().await;
                let identified = super::request_token(context)
                    .and_then(|token| self.checkout.identify(token.as_deref()));
                let caller = match identified {
                    Ok(caller) => caller,
                    Err(reason) => {
                        return Some(tool_error(format!("your credential is refused: {reason}")));
                    }
                };
                let payments = &self.checkout;
                if name == DELEGATE_BUDGET {
                    let delegated = shapes::arguments(arguments).and_then(|arguments| {
                        tokio::task::block_in_place(|| {
                            delegate_budget(payments, &self.catalog, caller.as_ref(), arguments)
                        })
                    });
                    return Some(match delegated {
                        Ok(value) => structured(&value),
                        Err(reason) => tool_error(format!(
                            "delegate_budget: {reason}; no credential was minted"
                        )),
                    });
                }
                let read = |e: crate::ledger::LedgerError| {
                    tool_error(format!("{name}: the ledger could not be read: {e}"))
                };
                Some(if name == BUDGET_STATUS {
                    if let Err(reason) = shapes::arguments::<shapes::NoArguments>(arguments) {
                        return Some(tool_error(format!("{name}: {reason}")));
                    }
                    match tokio::task::block_in_place(|| budget_status(payments, caller.as_ref())) {
                        Ok(value) => structured(&value),
                        Err(e) => read(e),
                    }
                } else {
                    let arguments = match shapes::arguments(arguments) {
                        Ok(arguments) => arguments,
                        Err(reason) => return Some(tool_error(format!("{name}: {reason}"))),
                    };
                    match tokio::task::block_in_place(|| {
                        list_receipts(payments, caller.as_ref(), arguments)
                    }) {
                        Ok(value) => structured(&value),
                        Err(e) => read(e),
                    }
                })
            }
            _ => None,
        }
    }

    async fn price_check(
        &self,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let shapes::PriceCheckArguments {
            tool: name,
            arguments: tool_args,
        } = match shapes::arguments(arguments) {
            Ok(arguments) => arguments,
            Err(reason) => return tool_error(format!("price_check: {reason}")),
        };
        let name = name.as_str();
        let token = match super::request_token(context) {
            Ok(token) => token,
            Err(reason) => return tool_error(format!("your credential is refused: {reason}")),
        };
        let port = super::McpPort {
            server: self,
            progress: Progress::new(context),
            continuation: Default::default(),
            context,
        };
        // The unpaid call, through the tool's counter: an HTTP request, or a paid MCP
        // server's tool called without payment.
        let upstream;
        let (tool, asked): (&dyn crate::checkout::Tool, _) = match self.catalog.get(name) {
            Some(tool) => {
                let (request, _) = match Self::prepare(tool, tool_args) {
                    Ok(prepared) => prepared,
                    Err(result) => return result,
                };
                let counter = crate::checkout::HttpCounter {
                    tool,
                    request,
                    upstream: &self.checkout.upstream,
                };
                let asked = self.checkout.peek(&counter, &port).await;
                (&**tool, asked.map(|r| r.map(challenge_of)))
            }
            None => {
                upstream = match self.upstreams.find(name).await {
                    Some(Ok(tool)) => tool,
                    Some(Err(e)) => return tool_error(format!("price_check `{name}`: {e}")),
                    None => return tool_error(format!("price_check: there is no tool `{name}`")),
                };
                let args = Value::Object(tool_args);
                if let Err(errors) = upstream.validate_arguments(&args) {
                    return tool_error(format!(
                        "price_check: invalid arguments for `{name}`: {}; nothing was sent",
                        errors.join("; ")
                    ));
                }
                let Value::Object(arguments) = args else {
                    return tool_error("arguments must be an object".to_owned());
                };
                let counter = crate::mcp_upstream::McpCounter {
                    tool: &upstream,
                    arguments,
                };
                let asked = self.checkout.peek(&counter, &port).await;
                (&*upstream, asked.map(|r| r.map(challenge_of)))
            }
        };
        port.progress.finish().await;
        let asked = match asked {
            Some(Ok(asked)) => asked,
            Some(Err(e)) => return tool_error(tool.redact(&format!("price_check `{name}`: {e}"))),
            None => return tool_error(format!("the call to `{name}` was cancelled")),
        };
        let max = tool.max_price().map(|p| p.decimal());
        let value = match asked {
            Some((headers, body)) => {
                let challenge = self.checkout.rails.read_challenge(&headers, &body);
                let caller = self.checkout.identify(token.as_deref()).ok().flatten();
                let rules = self.checkout.rules(tool, caller.as_ref());
                let judged: Vec<_> = challenge
                    .offers
                    .iter()
                    .map(|o| pay::judge(o, &rules))
                    .collect();
                let best = pay::choose(&challenge, &rules).ok();
                shapes::PriceCheck {
                    tool: name.to_owned(),
                    status: shapes::PriceStatus::PaymentRequired,
                    max_price_usd: max,
                    offers: judged.iter().map(shapes::OfferView::from).collect(),
                    unreadable: challenge.problems,
                    would_pay: best.map(|q| shapes::WouldPay {
                        protocol: q.offer.protocol.name().to_owned(),
                        network: q.offer.network.clone(),
                        amount_usd: q.usd.decimal(),
                    }),
                }
            }
            None => shapes::PriceCheck {
                tool: name.to_owned(),
                status: shapes::PriceStatus::Free,
                max_price_usd: max,
                offers: Vec::new(),
                unreadable: Vec::new(),
                would_pay: None,
            },
        };
        structured(&value)
    }
}

/// The challenge an unpaid call met (its headers and body), if it met one.
fn challenge_of<A>(
    sold: crate::checkout::Sold<A>,
) -> Option<(reqwest::header::HeaderMap, Vec<u8>)> {
    match sold {
        crate::checkout::Sold::PaymentRequired { headers, body } => Some((headers, body)),
        crate::checkout::Sold::Answered { .. } => None,
    }
}

fn budget_status(
    payments: &crate::checkout::Checkout,
    caller: Option<&crate::budget::credential::Credential>,
) -> Result<shapes::BudgetStatus, crate::ledger::LedgerError> {
    let caps = payments.caps(caller);
    let status = payments.ledger.status(&caps, crate::money::now_unix())?;
    let usd = |micros: u64| crate::money::UsdMicros(micros).decimal();
    let caps: Vec<shapes::CapStatus> = status
        .iter()
        .map(|s| {
            let cap = match s.key.as_str() {
                "policy:per_day" => "policy per day".to_owned(),
                "policy:total" => "policy total".to_owned(),
                key => match caller.and_then(|c| c.budgets.iter().position(|b| b.key == key)) {
                    Some(0) => "credential budget (outermost ancestor)".to_owned(),
                    Some(i) => format!("credential budget (level {i})"),
                    None => key.to_owned(),
                },
            };
            shapes::CapStatus {
                cap,
                window_seconds: s.window_secs,
                limit_usd: usd(s.limit_usd_micros),
                spent_usd: usd(s.spent_usd_micros),
                reserved_usd: usd(s.reserved_usd_micros),
                remaining_usd: usd(s.remaining_usd_micros),
            }
        })
        .collect();
    Ok(shapes::BudgetStatus {
        caller: caller.map_or_else(
            || "no credential (the owner's policy alone)".to_owned(),
            |c| c.token.fingerprint(),
        ),
        per_call_usd: payments.policy.per_call.decimal(),
        max_per_call_usd: caller
            .and_then(|c| c.restrictions.max_per_call())
            .map(|u| u.decimal()),
        caps,
    })
}

fn list_receipts(
    payments: &crate::checkout::Checkout,
    caller: Option<&crate::budget::credential::Credential>,
    arguments: shapes::ListReceiptsArguments,
) -> Result<shapes::Receipts, crate::ledger::LedgerError> {
    let since = arguments.since;
    let limit = arguments.limit.unwrap_or(50).clamp(1, 1000) as usize;
    let (rows, note) = match caller {
        None => (payments.ledger.all_receipts(since, limit)?, None),
        Some(c) => match c.budgets.last() {
            Some(budget) => (
                payments
                    .ledger
                    .receipts(std::slice::from_ref(&budget.key), since, limit)?,
                None,
            ),
            None => (
                Vec::new(),
                Some("your credential has no budget caveat, so no receipts are kept under it"),
            ),
        },
    };
    let receipts = rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.json).ok())
        .collect();
    Ok(shapes::Receipts {
        receipts,
        note: note.map(str::to_owned),
    })
}

/// Mints a child of the caller's credential. Every limit is a caveat appended to the caller's
/// own, so the child can only be narrower; the budget is also capped at what the caller has
/// left now, so the answer never promises more than the parent can spend.
fn delegate_budget(
    payments: &crate::checkout::Checkout,
    catalog: &crate::catalog::Catalog,
    caller: Option<&crate::budget::credential::Credential>,
    arguments: shapes::DelegateArguments,
) -> Result<shapes::Delegated, String> {
    use crate::budget::caveat::{Caveat, is_label};
    use crate::budget::credential::Credential;
    use crate::money::{UsdMicros, now_unix, rfc3339};

    let Some(caller) = caller else {
        return Err("you present no credential to delegate from (a token in \
                    _meta[\"tollgate/token\"], TOLLGATE_TOKEN, or the policy's default_profile)"
            .to_owned());
    };
    let Some(root) = payments.root.as_ref() else {
        return Err("this tollgate has no root key (`tollgate init`)".to_owned());
    };
    let list = |key: &str, items: Option<Vec<String>>| -> Result<Option<Vec<String>>, String> {
        match items {
            Some(items) if items.is_empty() || items.len() > 256 => {
                Err(format!("`{key}` must be a list of 1 to 256 strings"))
            }
            items => Ok(items),
        }
    };
    let requested = Some(arguments.budget_usd_micros)
        .filter(|b| *b > 0)
        .ok_or("`budget_usd_micros` is required: a positive integer (1 USD = 1000000)")?;
    let now = now_unix();

    // What the caller has left under every cap it spends against.
    let status = payments
        .ledger
        .status(&payments.caps(Some(caller)), now)
        .map_err(|e| format!("the ledger could not be read ({e})"))?;
    let left = status.iter().map(|s| s.remaining_usd_micros).min();
    let budget = left.map_or(requested, |l| requested.min(l));
    if budget == 0 {
        return Err("you have nothing left to delegate (see budget_status)".to_owned());
    }

    // A random suffix makes this child's budget its own even when a sibling has the same label
    // and the same limits (a budget's key comes from the chain of caveats up to it).
    let suffix = hex::encode(rand::random::<[u8; 4]>());
    let label = match &arguments.label {
        None => format!("sub.{suffix}"),
        Some(l) if is_label(l) && l.len() <= 55 => format!("{l}.{suffix}"),
        Some(_) => return Err("`label` must be 1-55 characters of [A-Za-z0-9_.-]".to_owned()),
    };
    let mut caveats = vec![format!("label = {label}")];
    if let Some(tools) = list("tools", arguments.tools)? {
        for tool in &tools {
            if catalog.get(tool).is_none() {
                return Err(format!("there is no tool `{tool}`"));
            }
            if !caller.restrictions.allows_tool(tool) {
                return Err(format!("your own credential does not allow `{tool}`"));
            }
        }
        caveats.push(format!("tools = {}", tools.join(",")));
    }
    if let Some(hosts) = list("hosts", arguments.hosts)? {
        caveats.push(format!("hosts = {}", hosts.join(",")));
    }
    if let Some(cap) = arguments.max_per_call_usd_micros {
        caveats.push(format!("max_per_call_usd_micros <= {cap}"));
    }
    if let Some(cap) = arguments.approve_above_usd_micros {
        caveats.push(format!("approve_above_usd_micros <= {cap}"));
    }
    if let Some(secs) = arguments.lifetime_seconds {
        if secs == 0 {
            return Err("`lifetime_seconds` must be at least 1".to_owned());
        }
        caveats.push(format!("expires < {}", now.saturating_add(secs)));
    }
    caveats.push(format!("budget_usd_micros <= {budget}"));

    let mut token = caller.token.clone();
    for caveat in &caveats {
        Caveat::parse(caveat).map_err(|e| e.to_string())?;
        token
            .add_caveat(caveat.as_bytes())
            .map_err(|e| format!("the credential cannot take caveat {caveat:?}: {e}"))?;
    }
    let text = token.to_base64url();
    // Verified like any presented credential, so what is reported is what will be enforced.
    let child = Credential::verify(&text, root, now).map_err(|e| e.to_string())?;
    payments.register(&child);
    let r = &child.restrictions;
    let usd = |u: UsdMicros| u.decimal();
    tracing::info!(label = %label, budget = %UsdMicros(budget), "delegated a budget");
    let note = (budget < requested).then(|| {
        format!(
            "you asked for {}, but only {} is left under your caps; the budget is {}",
            UsdMicros(requested),
            UsdMicros(budget),
            UsdMicros(budget)
        )
    });
    Ok(shapes::Delegated {
        token: text,
        label,
        effective: shapes::Effective {
            budget_usd: UsdMicros(budget).decimal(),
            budget_usd_micros: budget,
            expires_at: r.expires_before_unix_secs().map(rfc3339),
            tools: r.tools().map(|t| t.iter().cloned().collect()),
            hosts: r
                .hosts()
                .map(|h| h.iter().map(ToString::to_string).collect()),
            max_per_call_usd: r.max_per_call().map(usd),
            approve_above_usd: r.approve_above().map(usd),
        },
        your_remaining_usd: left.map(|l| UsdMicros(l).decimal()),
        note,
    })
}

/// An approval's state, read-only (no tool can change it).
/// The state of approval `approval_id`, if `visible` to the caller (over HTTP: asked for this
/// bearer); another caller's approval reads as unknown.
fn payment_status(
    payments: &crate::checkout::Checkout,
    arguments: &Map<String, Value>,
    visible: impl Fn(&str) -> bool,
) -> CallToolResult {
    use crate::ledger::ApprovalState;
    use crate::money::{UsdMicros, now_unix, rfc3339};
    let shapes::PaymentStatusArguments { approval_id: id } = match shapes::arguments(arguments) {
        Ok(arguments) => arguments,
        Err(reason) => return tool_error(format!("payment_status: {reason}")),
    };
    let id = id.as_str();
    if !crate::approval::is_id(id) {
        return tool_error(format!(
            "payment_status: {:?} is not an approval id (ap_ followed by 32 hex digits)",
            id.chars().take(80).collect::<String>()
        ));
    }
    if !visible(id) {
        return tool_error(format!("payment_status: there is no approval {id}"));
    }
    let found = tokio::task::block_in_place(|| payments.ledger.approval(id, now_unix()));
    let approval = match found {
        Ok(Some(approval)) => approval,
        Ok(None) => return tool_error(format!("payment_status: there is no approval {id}")),
        Err(e) => return tool_error(format!("payment_status: the ledger could not be read: {e}")),
    };
    let next = match approval.state {
        ApprovalState::Pending => {
            "waiting for a person; ask them to approve it, then call the tool again with the approval_id"
        }
        ApprovalState::Approved => {
            "approved: call the tool again with the same arguments and the approval_id"
        }
        ApprovalState::Denied => "denied by a person; do not retry this payment",
        ApprovalState::Expired => "expired; calling the tool again asks anew",
        ApprovalState::Used => "used: the payment was made; its receipt is in list_receipts",
    };
    structured(&shapes::PaymentStatus {
        approval_id: approval.id.clone(),
        state: approval.state.as_str().to_owned(),
        tool: approval.tool.clone(),
        amount_usd: UsdMicros(approval.amount_usd_micros).decimal(),
        expires_at: rfc3339(approval.expires_at),
        decided_by: approval.decided_by.clone(),
        facts: serde_json::from_str::<Value>(&approval.facts_json).unwrap_or(Value::Null),
        next: next.to_owned(),
    })
}
