//! Tool definitions → MCP `Tool`s, with an output schema that covers every success shape.

use std::sync::Arc;

use rmcp::model::{Tool, ToolAnnotations};
use serde_json::{Map, Value, json};

use crate::catalog::HttpTool;

/// The MCP view of an HTTP tool.
pub fn mcp_tool(tool: &HttpTool) -> Tool {
    let mut description = tool.description.clone();
    if let Some(max) = tool.max_price {
        description.push_str(&format!(" (Paid: at most {max} per call.)"));
    }
    let mut out = Tool::new(
        tool.name.clone(),
        description,
        Arc::clone(&tool.input_schema),
    )
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
