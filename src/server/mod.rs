//! The MCP server: the only module that knows MCP.
//!
//! [`Tollgate`] implements rmcp's `ServerHandler` by hand, because tools are loaded from files
//! at run time. It serves both protocol revisions a host may speak (2025-11-25 with
//! `initialize`, 2026-07-28 stateless); rmcp negotiates, this module answers `tools/list` and
//! `tools/call`. A tool call identifies the caller, validates the arguments against the tool's
//! input schema (rmcp does not, for hand-written handlers), builds the request, hands the call
//! to the checkout engine ([`crate::checkout`]: the upstream request, and the payment when it
//! answers 402), and translates the engine's outcome into a result. This module is the
//! engine's [`Port`]: progress notifications, cancellation, and asking a person in MCP terms
//! (`approval.rs`). Everything a model can fix or should know is an `isError` result with a
//! message that says what to change; JSON-RPC errors are kept for protocol mistakes (an
//! unknown tool name).

mod approval;
pub mod http;
mod meta;
mod shapes;
mod tools;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Map, Value};

use crate::catalog::{Catalog, HttpTool, UpstreamRequest};
use crate::checkout::{Call, Checkout, HttpCounter, Outcome, Payment, Port};
pub(crate) use crate::in_flight::InFlight;
use crate::mcp_upstream::{McpCounter, McpUpstreams, UpstreamTool};
use crate::upstream::Answer;

/// The tollgate MCP server.
#[derive(Clone)]
pub struct Tollgate {
    catalog: Arc<Catalog>,
    checkout: Arc<Checkout>,
    /// `tools/list`, built once: the catalog does not change while serving.
    tools: Arc<Vec<Tool>>,
    /// Tool calls in flight, so that a shutdown can wait for them.
    calls: Arc<InFlight>,
    /// Out-of-band approvals asked for network callers: approval id → SHA-256 of the bearer
    /// it was issued to. Over HTTP, an approval id is visible and usable only by its caller.
    issued: Arc<std::sync::Mutex<std::collections::HashMap<String, [u8; 32]>>>,
    /// Paid MCP servers whose tools are re-exported (listed when first asked for).
    upstreams: Arc<McpUpstreams>,
}

impl Tollgate {
    pub fn new(catalog: Arc<Catalog>, checkout: Checkout) -> Tollgate {
        let mut list: Vec<Tool> = catalog.iter().map(|t| tools::mcp_tool(t)).collect();
        list.extend(meta::tools());
        // An upstream tool never shadows one of tollgate's own or a `[[tool]]`.
        let taken = list.iter().map(|t| t.name.to_string()).collect();
        let upstreams = Arc::new(McpUpstreams::new(catalog.mcp_upstreams.clone(), taken));
        Tollgate {
            catalog,
            checkout: Arc::new(checkout),
            tools: Arc::new(list),
            calls: Default::default(),
            issued: Default::default(),
            upstreams,
        }
    }

    /// Waits until the receipts of answered calls are in the ledger (before the process
    /// exits).
    pub async fn finish_writes(&self) {
        self.checkout.finish_writes().await;
    }

    /// Validates arguments and builds the request; the error is the result to return.
    // serde_json's `preserve_order` (enabled by the mpp crate's dependencies) makes every
    // `CallToolResult` this large; it is built once per call, on the error path.
    #[allow(clippy::result_large_err)]
    fn prepare(
        tool: &HttpTool,
        arguments: Map<String, Value>,
    ) -> Result<(UpstreamRequest, Map<String, Value>), CallToolResult> {
        let args = Value::Object(arguments);
        if let Err(errors) = tool.validate_arguments(&args) {
            return Err(tool_error(format!(
                "invalid arguments for `{}`: {}. Fix the arguments and call again; nothing was sent.",
                tool.name,
                errors.join("; ")
            )));
        }
        let Value::Object(arguments) = args else {
            return Err(tool_error("arguments must be an object".to_owned()));
        };
        match tool.build_request(&arguments) {
            Ok(request) => Ok((request, arguments)),
            Err(e) => Err(tool_error(format!(
                "`{}`: {e}; nothing was sent.",
                tool.name
            ))),
        }
    }

    /// Runs one call of a paid MCP server's tool: who is calling, the arguments (checked
    /// against the server's schema), then the checkout engine; its outcome as an MCP result:
    /// the server's own result, with the receipt added.
    async fn call_upstream_tool(
        &self,
        tool: &UpstreamTool,
        arguments: Map<String, Value>,
        continuation: approval::Continuation,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let caller = match self.caller(tool, context) {
            Ok(caller) => caller,
            Err(refused) => return tool_error(refused).into(),
        };
        let args = Value::Object(arguments);
        if let Err(errors) = tool.validate_arguments(&args) {
            return tool_error(format!(
                "invalid arguments for `{}`: {}. Fix the arguments and call again; nothing was sent.",
                tool.name,
                errors.join("; ")
            ))
            .into();
        }
        let Value::Object(arguments) = args else {
            return tool_error("arguments must be an object".to_owned()).into();
        };
        let port = McpPort {
            server: self,
            progress: Progress::new(context),
            continuation,
            context,
        };
        let counter = McpCounter {
            tool,
            arguments: arguments.clone(),
        };
        let call = Call {
            counter: &counter,
            arguments: &arguments,
            caller: caller.as_ref(),
        };
        let outcome = self.checkout.call(call, &port).await;
        port.progress.finish().await;
        match outcome {
            Outcome::Answered {
                answer,
                payment,
                meta,
            } => upstream_success(tool, answer, payment, meta).into(),
            Outcome::Failed(message) => tool_error(message).into(),
            Outcome::Cancelled => {
                tool_error(format!("the call to `{}` was cancelled", tool.name)).into()
            }
            Outcome::Halted(response) => *response,
        }
    }

    /// Who is calling, and whether their credential lets them call `tool`; `Err` is the
    /// refusal for the model.
    fn caller(
        &self,
        tool: &dyn crate::checkout::Tool,
        context: &RequestContext<RoleServer>,
    ) -> Result<Option<crate::budget::credential::Credential>, String> {
        let identified =
            request_token(context).and_then(|token| self.checkout.identify(token.as_deref()));
        let caller = identified.map_err(|reason| {
            format!(
                "your credential is refused: {reason}. Nothing was sent or paid; ask the owner \
                 or your orchestrator for a valid token."
            )
        })?;
        self.checkout.admits(tool, caller.as_ref())?;
        Ok(caller)
    }

    /// Runs one call of an HTTP tool: who is calling, the arguments, then the checkout
    /// engine; its outcome as an MCP result.
    async fn call_http_tool(
        &self,
        tool: &HttpTool,
        arguments: Map<String, Value>,
        continuation: approval::Continuation,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let caller = match self.caller(tool, context) {
            Ok(caller) => caller,
            Err(refused) => return tool_error(refused).into(),
        };
        let (request, arguments) = match Self::prepare(tool, arguments) {
            Ok(prepared) => prepared,
            Err(result) => return result.into(),
        };
        let port = McpPort {
            server: self,
            progress: Progress::new(context),
            continuation,
            context,
        };
        let counter = HttpCounter {
            tool,
            request,
            upstream: &self.checkout.upstream,
        };
        let call = Call {
            counter: &counter,
            arguments: &arguments,
            caller: caller.as_ref(),
        };
        let outcome = self.checkout.call(call, &port).await;
        port.progress.finish().await;
        match outcome {
            Outcome::Answered {
                answer,
                payment,
                meta,
            } => {
                let mut result = success(tool, answer, payment);
                if !meta.is_empty() {
                    result.meta = Some(rmcp::model::MetaObject(meta));
                }
                result.into()
            }
            Outcome::Failed(message) => tool_error(message).into(),
            Outcome::Cancelled => {
                tool_error(format!("the call to `{}` was cancelled", tool.name)).into()
            }
            Outcome::Halted(response) => *response,
        }
    }
}

/// The checkout engine's view of one MCP call: progress notifications, the client's
/// cancellation, and asking a person (`approval.rs`).
struct McpPort<'a> {
    server: &'a Tollgate,
    progress: Progress,
    /// What a retried call brought back for its approval.
    continuation: approval::Continuation,
    context: &'a RequestContext<RoleServer>,
}

impl Port for McpPort<'_> {
    type Halt = Box<CallToolResponse>;

    fn progress(&self, message: String) {
        self.progress.send(message);
    }

    fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send {
        self.context.ct.cancelled()
    }

    fn approve(
        &self,
        ask: &crate::checkout::Ask,
    ) -> impl std::future::Future<Output = crate::checkout::Gate<Self::Halt>> + Send {
        self.server
            .approval_gate(&ask.facts, &self.continuation, &self.progress, self.context)
    }
}

/// A successful answer: `structuredContent = {result[, payment]}`, plus the same as text.
fn success(tool: &HttpTool, answer: Answer, payment: Option<Payment>) -> CallToolResult {
    let result = match answer {
        Answer::Json(value) => value,
        Answer::Text(text) => Value::String(text),
        Answer::PaymentRequired { .. } => {
            return tool_error(format!(
                "`{}`: the upstream asked for payment again",
                tool.name
            ));
        }
    };
    if let Err(reason) = tool.validate_output(&result) {
        return tool_error(format!(
            "`{}`: the upstream answer does not match the tool's output_schema ({reason}); the \
             tool definition or the upstream API has changed",
            tool.name
        ));
    }
    let mut text = match &result {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if let Some(payment) = &payment {
        let json = serde_json::to_string(payment).unwrap_or_default();
        text.push_str(&format!("\n\n[payment receipt] {json}"));
    }
    let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
    out.structured_content = Some(shapes::to_structured(&shapes::Answered { result, payment }));
    out
}

/// A paid MCP server's answer, passed on as it came (content, `structuredContent`, `isError`,
/// `_meta`), with what tollgate adds: the receipt (a text block for the model, and
/// `_meta["tollgate/receipt"]`) and the paid rail's standard settlement metadata.
fn upstream_success(
    tool: &UpstreamTool,
    answer: Value,
    payment: Option<Payment>,
    meta: Map<String, Value>,
) -> CallToolResult {
    let mut result: CallToolResult = match serde_json::from_value(answer) {
        Ok(result) => result,
        Err(e) => {
            return tool_error(format!(
                "`{}`: the MCP server `{}` answered a result that is not an MCP tool result \
                 ({e}){}",
                tool.name,
                tool.server(),
                paid_note(payment.as_ref())
            ));
        }
    };
    // The answer is tollgate's, to its own host: a complete result, whatever revision the
    // server speaks (rmcp drops the discriminator again for a host on an older revision).
    result.result_type = Some(rmcp::model::ResultType::COMPLETE);
    if result.is_error != Some(true)
        && let Some(structured) = &result.structured_content
        && let Err(reason) = tool.validate_output(structured)
    {
        return tool_error(format!(
            "`{}`: the MCP server `{}` answered structured content that does not match its own \
                 output schema ({reason}){}",
            tool.name,
            tool.server(),
            paid_note(payment.as_ref())
        ));
    }
    let mut all_meta = result.meta.take().map(|m| m.0).unwrap_or_default();
    all_meta.extend(meta);
    if let Some(payment) = &payment {
        let json = serde_json::to_value(payment).unwrap_or_default();
        result
            .content
            .push(ContentBlock::text(format!("[payment receipt] {json}")));
        all_meta.insert("tollgate/receipt".into(), json);
    }
    if !all_meta.is_empty() {
        result.meta = Some(rmcp::model::MetaObject(all_meta));
    }
    result
}

/// What was paid for an answer tollgate cannot pass on, for the message.
fn paid_note(payment: Option<&Payment>) -> String {
    match payment {
        Some(payment) => format!(
            ". It was paid for: {}",
            serde_json::to_string(payment).unwrap_or_default()
        ),
        None => String::new(),
    }
}

fn tool_error(message: String) -> CallToolResult {
    tracing::info!(%message, "tool call refused or failed");
    CallToolResult::error(vec![ContentBlock::text(message)])
}

/// Progress notifications for one call, when the client asked for them.
///
/// Notifications go through a queue drained by one task, so they arrive in order, and
/// [`Progress::finish`] waits for the queue to empty, so none arrives after the result.
struct Progress {
    queue: Option<tokio::sync::mpsc::UnboundedSender<ProgressNotificationParam>>,
    drain: Option<tokio::task::JoinHandle<()>>,
    token: Option<rmcp::model::ProgressToken>,
    step: std::sync::atomic::AtomicU32,
}

impl Progress {
    fn new(context: &RequestContext<RoleServer>) -> Progress {
        let token = context.meta.get_progress_token();
        let (queue, drain) = match token {
            None => (None, None),
            Some(_) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let peer = context.peer.clone();
                let drain = tokio::spawn(async move {
                    while let Some(param) = rx.recv().await {
                        if let Err(e) = peer.notify_progress(param).await {
                            tracing::debug!(error = %e, "progress notification not delivered");
                        }
                    }
                });
                (Some(tx), Some(drain))
            }
        };
        Progress {
            queue,
            drain,
            token,
            step: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Sends the next step (steps always increase; the total is not known in advance, as a
    /// payment adds steps).
    fn send(&self, message: String) {
        let (Some(queue), Some(token)) = (&self.queue, &self.token) else {
            return;
        };
        let step = self.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let param =
            ProgressNotificationParam::new(token.clone(), f64::from(step)).with_message(message);
        let _ = queue.send(param);
    }

    /// Sends "done" and waits until every notification has been handed to the transport.
    async fn finish(mut self) {
        self.send("done".to_owned());
        self.queue = None;
        if let Some(drain) = self.drain.take() {
            let _ = drain.await;
        }
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
             the most a call may cost, and tollgate pays from the owner's wallet within the \
             owner's limits. Results come in structuredContent.result, with a payment receipt \
             in structuredContent.payment when a call was paid. price_check shows what a call \
             would cost without paying."
                .to_owned(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let mut all = self.tools.as_ref().clone();
        if !self.upstreams.is_empty() {
            for tool in self.upstreams.tools().await {
                if all.iter().any(|t| t.name == tool.name.as_str()) {
                    tracing::warn!(tool = %tool.name, server = %tool.server(),
                        "not offered: tollgate already has a tool by that name");
                    continue;
                }
                all.push(tools::upstream_tool(&tool));
            }
        }
        Ok(ListToolsResult::with_all_items(all))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .or_else(|| {
                self.upstreams
                    .offered_now(name)
                    .map(|t| tools::upstream_tool(&t))
            })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let _in_flight = self.calls.enter();
        let mut arguments = request.arguments.unwrap_or_default();
        if let Some(result) = self
            .call_meta_tool(&request.name, &arguments, &context)
            .await
        {
            return Ok(result.into());
        }
        let Some(tool) = self.catalog.get(&request.name) else {
            return match self.upstreams.find(&request.name).await {
                Some(Ok(tool)) => {
                    let continuation = match approval_continuation(
                        &mut arguments,
                        tool.max_price.is_some(),
                        &tool.name,
                        request.request_state,
                        request.input_responses,
                    ) {
                        Ok(continuation) => continuation,
                        Err(refused) => return Ok(tool_error(refused).into()),
                    };
                    tracing::info!(tool = %tool.name, server = %tool.server(), "tool call");
                    Ok(self
                        .call_upstream_tool(&tool, arguments, continuation, &context)
                        .await)
                }
                Some(Err(e)) => Ok(tool_error(format!(
                    "`{}`: {e}; nothing was sent or paid",
                    request.name
                ))
                .into()),
                None => Err(McpError::invalid_params(
                    format!(
                        "unknown tool `{}`; tools/list shows the tools this server has",
                        request.name
                    ),
                    None,
                )),
            };
        };
        tracing::info!(tool = %tool.name, "tool call");
        let continuation = match approval_continuation(
            &mut arguments,
            tool.max_price.is_some(),
            &tool.name,
            request.request_state,
            request.input_responses,
        ) {
            Ok(continuation) => continuation,
            Err(refused) => return Ok(tool_error(refused).into()),
        };
        Ok(self
            .call_http_tool(tool, arguments, continuation, &context)
            .await)
    }
}

/// What a retried call brings back for its approval. A paid tool's `approval_id` is
/// tollgate's, never the upstream's: taken out of the arguments here.
fn approval_continuation(
    arguments: &mut Map<String, Value>,
    paid: bool,
    tool: &str,
    request_state: Option<String>,
    input_responses: Option<rmcp::model::InputResponses>,
) -> Result<approval::Continuation, String> {
    let approval_id = match arguments.remove(crate::catalog::APPROVAL_ID_ARGUMENT) {
        None => None,
        Some(_) if !paid => {
            return Err(format!(
                "`{tool}` is not a paid tool, so it takes no approval_id; nothing was sent"
            ));
        }
        Some(Value::String(id)) => Some(id),
        Some(_) => {
            return Err(
                "approval_id must be a string (the id from an approval_required result); \
                 nothing was sent"
                    .to_owned(),
            );
        }
    };
    Ok(approval::Continuation {
        approval_id,
        request_state,
        input_responses,
    })
}

/// The token a request presents: over HTTP, the bearer credential the HTTP gate verified
/// (never `_meta`: a network caller is who its request says); over stdio,
/// `_meta["tollgate/token"]` (absent: the process's own token or the default profile, which
/// only a stdio server has). `Err` when an HTTP request reached the handler without one.
fn request_token(context: &RequestContext<RoleServer>) -> Result<Option<String>, String> {
    if let Some(parts) = context.extensions.get::<::http::request::Parts>() {
        return match parts.extensions.get::<http::NetworkCaller>() {
            Some(caller) => Ok(Some(caller.token.to_string())),
            None => Err("the HTTP request carries no verified credential".to_owned()),
        };
    }
    Ok(context
        .meta
        .0
        .0
        .get("tollgate/token")
        .and_then(Value::as_str)
        .map(str::to_owned))
}

/// Over HTTP, who is calling as far as approvals go: the SHA-256 of the request's bearer
/// (zeros when an HTTP request somehow carries none, matching nothing issued); `None` over
/// stdio, where one process serves one host.
fn network_owner(context: &RequestContext<RoleServer>) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    let parts = context.extensions.get::<::http::request::Parts>()?;
    Some(match parts.extensions.get::<http::NetworkCaller>() {
        Some(caller) => sha2::Sha256::digest(caller.token.as_bytes()).into(),
        None => [0; 32],
    })
}

impl Tollgate {
    /// Records that approval `id` was asked for `owner` (a network caller).
    fn issue(&self, id: &str, owner: Option<[u8; 32]>) {
        if let Some(owner) = owner {
            self.issued
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id.to_owned(), owner);
        }
    }

    /// Whether approval `id` may be seen and used by `owner` (always over stdio).
    fn issued_to(&self, id: &str, owner: Option<[u8; 32]>) -> bool {
        let Some(owner) = owner else { return true };
        self.issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .is_some_and(|o| *o == owner)
    }
}
