//! Tool definitions → MCP `Tool`s, with an output schema that covers every success shape.

use std::sync::Arc;

use rmcp::model::{Tool, ToolAnnotations};
use serde_json::{Map, Value, json};

use crate::catalog::{APPROVAL_ID_ARGUMENT, HttpTool};

/// The MCP view of an HTTP tool.
pub fn mcp_tool(tool: &HttpTool) -> Tool {
    let mut description = tool.description.clone();
    if let Some(max) = tool.max_price {
        description.push_str(&format!(" (Paid: at most {max} per call.)"));
    }
    let input = if tool.max_price.is_some() {
        Arc::new(with_approval_id(&tool.input_schema))
    } else {
        Arc::clone(&tool.input_schema)
    };
    let mut out = Tool::new(tool.name.clone(), description, input)
        .with_raw_output_schema(Arc::new(output_schema(tool)));
    if let Some(title) = &tool.title {
        out = out.with_title(title.clone());
    }
    let a = &tool.annotations;
    if *a != Default::default() {
        let mut annotations = ToolAnnotations::new();
        annotations.read_only_hint = a.read_only;
        annotations.destructive_hint = a.destructive;
        annotations.idempotent_hint = a.idempotent;
        annotations.open_world_hint = a.open_world;
        out = out.with_annotations(annotations);
    }
    out
}

/// `{result}`: `result` is the upstream answer (the tool's own output schema when it declares
/// one, else any JSON or text).
fn output_schema(tool: &HttpTool) -> Map<String, Value> {
    let result = match &tool.output_schema {
        Some(schema) => Value::Object(schema.clone()),
        None => json!({ "description": "the upstream answer: JSON as sent, or text" }),
    };
    let mut properties = json!({ "result": result });
    // Only a tool that may pay returns a receipt. The schema stays short: hundreds of tools
    // repeat it in every tools/list.
    if tool.max_price.is_some() {
        properties["payment"] = json!({
            "type": "object",
            "description": "the receipt, when the call was paid: protocol, version, network, \
                asset, asset_symbol, amount_atomic, amount_usd, amount_usd_micros, \
                rate_usd_micros_per_unit, payee, payer, transaction, receipt_id, at",
            "required": ["protocol", "amount_usd", "payee", "receipt_id"]
        });
        // A payment that waits for a person: the call returns this instead of a result.
        for (key, schema) in [
            ("status", json!({"const": "approval_required"})),
            ("approval_id", json!({"type": "string"})),
            ("approve_url", json!({"type": ["string", "null"]})),
            ("expires_at", json!({"type": "string"})),
            ("amount", json!({"type": "string"})),
            ("amount_usd_micros", json!({"type": "integer"})),
            ("amount_in_asset", json!({"type": "string"})),
            ("payee", json!({"type": "string"})),
            ("protocol", json!({"type": "string"})),
            ("network", json!({"type": "string"})),
            ("budget_left_after", json!({"type": ["string", "null"]})),
            ("tool", json!({"type": "string"})),
            ("reason", json!({"type": "string"})),
        ] {
            properties[key] = schema;
        }
        let schema = json!({
            "type": "object",
            "description": "either {result[, payment]}, or, when a person must approve the \
                payment first, {status: \"approval_required\", approval_id, approve_url, \
                expires_at, amount, payee, tool, ...}: ask the person to run `tollgate approve \
                <approval_id>` or open approve_url, then call again with the same arguments \
                and approval_id",
            "properties": properties,
            "anyOf": [
                {"required": ["result"]},
                {"required": ["status", "approval_id", "expires_at", "amount", "payee", "tool"]}
            ],
        });
        return match schema {
            Value::Object(map) => map,
            _ => Map::new(),
        };
    }
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": ["result"],
    });
    match schema {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A paid tool's input schema, plus the optional `approval_id` argument tollgate handles.
fn with_approval_id(schema: &Map<String, Value>) -> Map<String, Value> {
    let mut schema = schema.clone();
    let property = json!({
        "type": "string",
        "description": "only when retrying a call that returned status approval_required: \
            the approval_id a person approved (tollgate removes it before calling the API)"
    });
    match schema.get_mut("properties") {
        Some(Value::Object(properties)) => {
            properties.insert(APPROVAL_ID_ARGUMENT.to_owned(), property);
        }
        _ => {
            schema.insert(
                "properties".to_owned(),
                json!({ APPROVAL_ID_ARGUMENT: property }),
            );
        }
    }
    schema
}
