//! tollgate's own tools (not from `tools/*.toml`): `price_check` for now.
//!
//! None of them can grant an approval or move money; `price_check` only makes the unpaid
//! request and reports what the seller asks for.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::model::{CallToolResult, ContentBlock, Tool, ToolAnnotations};
use rmcp::service::RequestContext;
use serde_json::{Map, Value, json};

use super::{Progress, Tollgate, object, paid, tool_error};
use crate::pay;
use crate::upstream::{Answer, Reply};

pub const PRICE_CHECK: &str = "price_check";

/// The MCP tools tollgate adds.
pub fn tools() -> Vec<Tool> {
    let input = object(json!({
        "type": "object",
        "required": ["tool"],
        "additionalProperties": false,
        "properties": {
            "tool": {"type": "string", "description": "name of the tool to price"},
            "arguments": {"type": "object", "description": "the arguments you would call it with"}
        }
    }));
    let output = object(json!({
        "type": "object",
        "required": ["tool", "status", "offers"],
        "properties": {
            "tool": {"type": "string"},
            "status": {"enum": ["free", "payment_required"]},
            "max_price_usd": {"type": ["string", "null"]},
            "offers": {"type": "array", "items": {"type": "object", "properties": {
                "protocol": {"type": "string"},
                "version": {"type": "integer"},
                "network": {"type": "string"},
                "asset": {"type": "string"},
                "amount_atomic": {"type": "string"},
                "amount_usd": {"type": ["string", "null"]},
                "payee": {"type": "string"},
                "payable": {"type": "boolean"},
                "reason": {"type": ["string", "null"]}
            }}},
            "unreadable": {"type": "array", "items": {"type": "string"}},
            "would_pay": {"type": ["object", "null"]}
        }
    }));
    let mut annotations = ToolAnnotations::new();
    annotations.read_only_hint = Some(true);
    annotations.open_world_hint = Some(true);
    vec![
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
            _ => None,
        }
    }

    async fn price_check(
        &self,
        arguments: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let Some(name) = arguments.get("tool").and_then(Value::as_str) else {
            return tool_error(
                "price_check needs `tool`: the name of the tool to price".to_owned(),
            );
        };
        let Some(tool) = self.catalog.get(name) else {
            return tool_error(format!("price_check: there is no tool `{name}`"));
        };
        let tool_args = match arguments.get("arguments") {
            None => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return tool_error("price_check: `arguments` must be an object".to_owned()),
        };
        let (request, _) = match Self::prepare(tool, tool_args) {
            Ok(prepared) => prepared,
            Err(result) => return result,
        };
        let token = super::request_token(context);
        let progress = Progress::new(context);
        let reply = match self.send(tool, request, &progress, context).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return tool_error(tool.redact(&format!("price_check `{name}`: {e}"))),
            Err(cancelled) => return cancelled,
        };
        progress.finish().await;
        let max = tool.max_price.map(|p| p.decimal());
        let value = match reply {
            Reply {
                answer: Answer::PaymentRequired { body },
                headers,
            } => {
                let challenge = pay::read_challenge(&headers, &body);
                let caller = self.payments.identify(token.as_deref()).ok().flatten();
                let rules = self.payments.rules(tool, caller.as_ref());
                let judged: Vec<_> = challenge
                    .offers
                    .iter()
                    .map(|o| pay::judge(o, &rules))
                    .collect();
                let best = pay::choose(&challenge, &rules).ok();
                json!({
                    "tool": name,
                    "status": "payment_required",
                    "max_price_usd": max,
                    "offers": judged.iter().map(paid::judgement_json).collect::<Vec<_>>(),
                    "unreadable": challenge.problems,
                    "would_pay": best.map(|q| json!({
                        "protocol": q.offer.protocol.name(),
                        "network": q.offer.network,
                        "amount_usd": q.usd.decimal(),
                    })),
                })
            }
            _ => json!({"tool": name, "status": "free", "max_price_usd": max, "offers": []}),
        };
        let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
        result.structured_content = Some(value);
        result
    }
}
