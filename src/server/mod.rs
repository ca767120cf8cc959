//! The MCP server: the only module that knows MCP.
//!
//! [`Tollgate`] implements rmcp's `ServerHandler` by hand, because tools are loaded from files
//! at run time. It serves both protocol revisions a host may speak (2025-11-25 with
//! `initialize`, 2026-07-28 stateless); rmcp negotiates, this module answers `tools/list` and
//! `tools/call`. A tool call validates the arguments against the tool's input schema (rmcp does
//! not, for hand-written handlers), builds the request, calls upstream under the tool's limits,
//! and turns the outcome into a result. Everything a model can fix or should know is an
//! `isError` result with a message that says what to change; JSON-RPC errors are kept for
//! protocol mistakes (an unknown tool name).

mod tools;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};

use crate::catalog::{Catalog, HttpTool};
use crate::pay::describe_challenge;
use crate::upstream::{Answer, Limits, Stage, Upstream};

/// The tollgate MCP server.
#[derive(Clone)]
pub struct Tollgate {
    catalog: Arc<Catalog>,
    upstream: Upstream,
    /// `tools/list`, built once: the catalog does not change while serving.
    tools: Arc<Vec<Tool>>,
}

impl Tollgate {
    pub fn new(catalog: Arc<Catalog>, upstream: Upstream) -> Tollgate {
        let tools = Arc::new(catalog.iter().map(|t| tools::mcp_tool(t)).collect());
        Tollgate {
            catalog,
            upstream,
            tools,
        }
    }

    /// Runs one call of an HTTP tool.
    async fn call_http_tool(
        &self,
        tool: &HttpTool,
        arguments: Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let args = Value::Object(arguments);
        if let Err(errors) = tool.validate_arguments(&args) {
            return tool_error(format!(
                "invalid arguments for `{}`: {}. Fix the arguments and call again; nothing was sent.",
                tool.name,
                errors.join("; ")
            ));
        }
        let Value::Object(arguments) = args else {
            unreachable_object()
        };
        let request = match tool.build_request(&arguments) {
            Ok(request) => request,
            Err(e) => return tool_error(format!("`{}`: {e}; nothing was sent.", tool.name)),
        };
        let progress = Progress::new(context);
        let limits = Limits {
            timeout: tool.timeout,
            max_response_bytes: tool.max_response_bytes,
        };
        let host = tool.host();
        let call = self
            .upstream
            .call(request, limits, |stage| progress.stage(stage, &host));
        let answer = tokio::select! {
            answer = call => answer,
            () = context.ct.cancelled() => {
                tracing::info!(tool = %tool.name, "call cancelled by the client; upstream request dropped");
                return tool_error(format!("the call to `{}` was cancelled", tool.name));
            }
        };
        progress.done();
        match answer {
            Ok(Answer::Json(value)) => success(tool, value),
            Ok(Answer::Text(text)) => success(tool, Value::String(text)),
            Ok(Answer::PaymentRequired { headers, body }) => {
                let asked = describe_challenge(&headers, &body);
                let asked = if asked.is_empty() {
                    "no payment options the tollgate can read".to_owned()
                } else {
                    asked.join("; ")
                };
                tool_error(tool.redact(&format!(
                    "payment required: {host} asks to be paid for `{}`, and no payment method is \
                     configured in tollgate, so nothing was paid. The seller asked for: {asked}",
                    tool.name
                )))
            }
            Err(e) => tool_error(tool.redact(&format!("`{}` failed: {e}", tool.name))),
        }
    }
}

/// A successful answer: `structuredContent = {result}`, plus the same as text.
fn success(tool: &HttpTool, result: Value) -> CallToolResult {
    if let Err(reason) = tool.validate_output(&result) {
        return tool_error(format!(
            "`{}`: the upstream answer does not match the tool's output_schema ({reason}); the \
             tool definition or the upstream API has changed",
            tool.name
        ));
    }
    let text = match &result {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
    out.structured_content = Some(json!({ "result": result }));
    out
}

fn tool_error(message: String) -> CallToolResult {
    tracing::info!(%message, "tool call refused or failed");
    CallToolResult::error(vec![ContentBlock::text(message)])
}

fn unreachable_object() -> ! {
    // `args` was built as an object two lines above.
    unreachable!("arguments are an object")
}

/// Progress notifications for one call, when the client asked for them.
struct Progress {
    token: Option<rmcp::model::ProgressToken>,
    peer: rmcp::Peer<RoleServer>,
}

impl Progress {
    const TOTAL: f64 = 3.0;

    fn new(context: &RequestContext<RoleServer>) -> Progress {
        Progress {
            token: context.meta.get_progress_token(),
            peer: context.peer.clone(),
        }
    }

    fn send(&self, step: f64, message: String) {
        let Some(token) = self.token.clone() else {
            return;
        };
        let peer = self.peer.clone();
        let param = ProgressNotificationParam::new(token, step)
            .with_total(Self::TOTAL)
            .with_message(message);
        // Notifications must not hold up the call.
        tokio::spawn(async move {
            if let Err(e) = peer.notify_progress(param).await {
                tracing::debug!(error = %e, "progress notification not delivered");
            }
        });
    }

    fn stage(&self, stage: Stage, host: &str) {
        match stage {
            Stage::Sending => self.send(1.0, format!("request sent to {host}")),
            Stage::ReadingBody => self.send(2.0, format!("{host} answered; reading the response")),
        }
    }

    fn done(&self) {
        self.send(Self::TOTAL, "done".to_owned());
    }
}

impl ServerHandler for Tollgate {
    fn get_info(&self) -> ServerConfig {
        // Only `tools`: logging is not advertised because `logging/setLevel` is not implemented.
        let capabilities = ServerCapabilities::builder().enable_tools().build();
        let mut info = ServerConfig::new(capabilities);
        info.server_info = Implementation::new("tollgate", env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "tollgate serves HTTP APIs as tools. Some tools are paid: their description says \
             the most a call may cost. Results come in structuredContent.result."
                .to_owned(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(tool) = self.catalog.get(&request.name) else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool `{}`; tools/list shows the tools this server has",
                    request.name
                ),
                None,
            ));
        };
        let arguments = request.arguments.unwrap_or_default();
        tracing::info!(tool = %tool.name, "tool call");
        Ok(self.call_http_tool(tool, arguments, &context).await.into())
    }
}
