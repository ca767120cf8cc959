//! Tool definitions → MCP `Tool`s, with an output schema that covers every success shape.

use std::sync::{Arc, OnceLock};

use rmcp::model::{Tool, ToolAnnotations};
use serde_json::{Map, Value, json};

use super::shapes;
use crate::catalog::{APPROVAL_ID_ARGUMENT, HttpTool};
use crate::mcp_upstream::UpstreamTool;

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

/// The MCP view of a paid MCP server's tool: its own definition under tollgate's name, the
/// most a call may cost in the description, `approval_id` added to a paid tool's arguments,
/// and, when it declares an output schema, that schema or the `approval_required` result.
pub fn upstream_tool(tool: &UpstreamTool) -> Tool {
    let mut out = tool.definition.clone();
    out.name = tool.name.clone().into();
    let mut description = out.description.as_deref().unwrap_or_default().to_owned();
    if description.is_empty() {
        description = format!("`{}` of the MCP server `{}`.", tool.remote, tool.server());
    }
    match tool.max_price {
        Some(max) => description.push_str(&format!(" (Paid: at most {max} per call.)")),
        None => description
            .push_str(" (tollgate pays nothing for it: a call that asks for payment is refused.)"),
    }
    out.description = Some(description.into());
    if tool.max_price.is_some() {
        out.input_schema = Arc::new(with_approval_id(&tool.definition.input_schema));
        if let Some(schema) = &tool.definition.output_schema {
            let base = base_schemas();
            let mut either = Map::new();
            either.insert("type".into(), "object".into());
            either.insert(
                "anyOf".into(),
                Value::Array(vec![
                    Value::Object((**schema).clone()),
                    Value::Object(base.approval_required.clone()),
                ]),
            );
            either.insert("$defs".into(), Value::Object(base.defs.clone()));
            out.output_schema = Some(Arc::new(either));
        }
    }
    out
}

/// `{result[, payment]}` ([`shapes::Answered`]): `result` is the upstream answer (the tool's
/// own output schema when it declares one). A tool that may pay can also answer
/// [`shapes::ApprovalRequired`]. Both are derived from the types the results are built from.
fn output_schema(tool: &HttpTool) -> Map<String, Value> {
    let base = base_schemas();
    let mut answered = base.answered.clone();
    if let Some(schema) = &tool.output_schema
        && let Some(Value::Object(properties)) = answered.get_mut("properties")
    {
        properties.insert("result".to_owned(), Value::Object(schema.clone()));
    }
    if tool.max_price.is_none() {
        // No payment, so no receipt: `result` alone.
        if let Some(Value::Object(properties)) = answered.get_mut("properties") {
            properties.remove("payment");
        }
        return answered;
    }
    let mut schema = Map::new();
    schema.insert("type".into(), "object".into());
    schema.insert(
        "description".into(),
        "either {result[, payment]}, or, when a person must approve the payment first, \
         {status: \"approval_required\", approval_id, approve_url, expires_at, amount, payee, \
         tool, ...}: ask the person to run `tollgate approve <approval_id>` or open approve_url, \
         then call again with the same arguments and approval_id"
            .into(),
    );
    schema.insert(
        "anyOf".into(),
        Value::Array(vec![
            Value::Object(answered),
            Value::Object(base.approval_required.clone()),
        ]),
    );
    schema.insert("$defs".into(), Value::Object(base.defs.clone()));
    schema
}

/// The schemas of a tool's two result shapes, without `$schema` and `$defs`, and their
/// shared `$defs`.
struct BaseSchemas {
    answered: Map<String, Value>,
    approval_required: Map<String, Value>,
    defs: Map<String, Value>,
}

/// Derived once per process (hundreds of tools use them).
fn base_schemas() -> &'static BaseSchemas {
    static BASE: OnceLock<BaseSchemas> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut defs = Map::new();
        let mut strip = |mut schema: Map<String, Value>| {
            schema.remove("$schema");
            if let Some(Value::Object(more)) = schema.remove("$defs") {
                defs.extend(more);
            }
            schema
        };
        let answered = strip(shapes::schema_of::<shapes::Answered>());
        let approval_required = strip(shapes::schema_of::<shapes::ApprovalRequired>());
        BaseSchemas {
            answered,
            approval_required,
            defs,
        }
    })
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
