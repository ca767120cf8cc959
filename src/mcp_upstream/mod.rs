//! Paid MCP servers (`[[mcp_upstream]]`): their tools, re-exported under a prefix, paid for
//! through the same checkout engine as HTTP tools.
//!
//! * [`config`]: the `[[mcp_upstream]]` table, checked.
//! * [`client`]: one connection per server (a program tollgate starts, or a streamable HTTP
//!   endpoint), started on first use, its tool list cached until it says it changed.
//! * [`binding`]: x402's and MPP's MCP payment messages, translated to and from the HTTP wire
//!   the rails read and write (so every rail's checks hold over MCP too).
//!
//! A server's tool is an [`UpstreamTool`] (a [`Tool`] to the engine); a call of it goes
//! through an [`McpCounter`] (the engine's [`Counter`]): the arguments, and the proof in the
//! request's `_meta`.

pub mod binding;
pub mod client;
pub mod config;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::checkout::{Counter, Sold, Tool};
use crate::money::UsdMicros;
pub use client::Connection;
pub use config::{McpUpstreamConfig, McpUpstreamSpec};

/// Every configured paid MCP server.
#[derive(Default)]
pub struct McpUpstreams {
    servers: Vec<Server>,
}

/// Names an upstream tool may not take (tollgate's own tools and the `[[tool]]`s).
type Taken = Arc<std::collections::HashSet<String>>;

struct Server {
    connection: Arc<Connection>,
    taken: Taken,
    /// The tools offered from the last listing (`None` until listed).
    offered: std::sync::Mutex<Option<Offered>>,
}

/// The tools offered from one listing, with the listing they were made from.
struct Offered {
    from: Arc<Vec<rmcp::model::Tool>>,
    tools: Arc<Vec<Arc<UpstreamTool>>>,
}

/// A tool of a paid MCP server, as tollgate offers it.
pub struct UpstreamTool {
    /// The name tollgate offers it by (prefix + the server's name for it).
    pub name: String,
    /// The server's own name for it.
    pub remote: String,
    /// The server's definition (schemas, description, annotations), passed through.
    pub definition: rmcp::model::Tool,
    pub max_price: Option<UsdMicros>,
    pub connection: Arc<Connection>,
    input: jsonschema::Validator,
    output: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for UpstreamTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTool")
            .field("name", &self.name)
            .field("server", &self.connection.config.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTool {
    /// Checks arguments against the server's input schema; every error, in words.
    pub fn validate_arguments(&self, arguments: &Value) -> Result<(), Vec<String>> {
        let errors: Vec<String> = self
            .input
            .iter_errors(arguments)
            .take(5)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Checks a successful result's `structuredContent` against the server's output schema.
    pub fn validate_output(&self, structured: &Value) -> Result<(), String> {
        match &self.output {
            Some(validator) => validator.validate(structured).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    pub fn server(&self) -> &str {
        &self.connection.config.name
    }
}

impl Tool for UpstreamTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn host(&self) -> String {
        self.connection.config.host()
    }
    fn port(&self) -> u16 {
        self.connection.config.port()
    }
    fn origin(&self) -> String {
        format!("mcp://{}", self.connection.config.name)
    }
    fn max_price(&self) -> Option<UsdMicros> {
        self.max_price
    }
    fn approval_always(&self) -> bool {
        self.connection.config.approval_always
    }
    fn redact(&self, text: &str) -> String {
        self.connection.config.redact(text)
    }
    fn receipt_details(&self) -> Map<String, Value> {
        let mut details = Map::new();
        details.insert("mcp_server".into(), self.server().into());
        details.insert("mcp_tool".into(), self.remote.clone().into());
        details
    }
}

impl McpUpstreams {
    /// `taken`: the names already offered, which no upstream tool may shadow.
    pub fn new(
        configs: Vec<McpUpstreamConfig>,
        taken: std::collections::HashSet<String>,
    ) -> McpUpstreams {
        let taken: Taken = Arc::new(taken);
        McpUpstreams {
            servers: configs
                .into_iter()
                .map(|c| Server {
                    connection: Arc::new(Connection::new(c)),
                    offered: Default::default(),
                    taken: taken.clone(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The configured servers.
    pub fn configs(&self) -> impl Iterator<Item = &McpUpstreamConfig> {
        self.servers.iter().map(|s| &*s.connection.config)
    }

    /// Every server's tools as tollgate offers them, listing the servers not listed yet (in
    /// parallel). A server that cannot be reached is left out with a warning: the others and
    /// tollgate's own tools are still offered.
    pub async fn tools(&self) -> Vec<Arc<UpstreamTool>> {
        let listed = futures_util::future::join_all(self.servers.iter().map(Server::tools)).await;
        let mut out = Vec::new();
        for (server, listed) in self.servers.iter().zip(listed) {
            match listed {
                Ok(tools) => out.extend(tools.iter().cloned()),
                Err(e) => tracing::warn!(server = %server.connection.config.name, error = %e,
                    "the MCP server's tools are not offered"),
            }
        }
        out
    }

    /// The tool offered as `name`, from the listings already made (never waits).
    pub fn offered_now(&self, name: &str) -> Option<Arc<UpstreamTool>> {
        self.servers.iter().find_map(|s| {
            let offered = s
                .offered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            offered
                .as_ref()?
                .tools
                .iter()
                .find(|t| t.name == name)
                .cloned()
        })
    }

    /// The tool offered as `name`: `None` when no server's prefix matches it; `Some(Err)`
    /// when its server could not be listed or does not offer it.
    pub async fn find(&self, name: &str) -> Option<Result<Arc<UpstreamTool>, String>> {
        let server = self
            .servers
            .iter()
            .find(|s| name.starts_with(&s.connection.config.prefix))?;
        let found = match server.tools().await {
            Err(e) => Err(e),
            Ok(tools) => tools.iter().find(|t| t.name == name).cloned().ok_or_else(|| {
                format!(
                    "the MCP server `{}` offers no tool `{name}`; tools/list shows what it offers",
                    server.connection.config.name
                )
            }),
        };
        Some(found)
    }
}

impl Server {
    async fn tools(&self) -> Result<Arc<Vec<Arc<UpstreamTool>>>, String> {
        let listed = self.connection.tools().await?;
        let mut offered = self
            .offered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(o) = offered.as_ref()
            && Arc::ptr_eq(&o.from, &listed)
        {
            return Ok(o.tools.clone());
        }
        let tools = Arc::new(offer(&self.connection, &listed, &self.taken));
        *offered = Some(Offered {
            from: listed,
            tools: tools.clone(),
        });
        Ok(tools)
    }
}

/// The tools of one listing that tollgate offers: allowed by the config, with a valid name
/// once prefixed and valid schemas. What is left out is logged with the reason.
fn offer(
    connection: &Arc<Connection>,
    listed: &[rmcp::model::Tool],
    taken: &Taken,
) -> Vec<Arc<UpstreamTool>> {
    let config = &connection.config;
    let mut out = Vec::new();
    for definition in listed.iter().take(MAX_TOOLS) {
        let remote = definition.name.to_string();
        if let Some(allowed) = &config.tools
            && !allowed.contains(&remote)
        {
            continue;
        }
        let name = format!("{}{remote}", config.prefix);
        let skip = |why: String| {
            tracing::warn!(server = %config.name, tool = %remote, "not offered: {why}");
        };
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            skip(format!("{name:?} is not a valid tool name"));
            continue;
        }
        if taken.contains(&name) {
            skip(format!(
                "`{name}` is already the name of one of tollgate's tools (change `prefix`)"
            ));
            continue;
        }
        if out.iter().any(|t: &Arc<UpstreamTool>| t.name == name) {
            skip(format!("the server lists `{remote}` twice"));
            continue;
        }
        let input_schema = Value::Object((*definition.input_schema).clone());
        let input = match crate::catalog::meta_validate(&input_schema)
            .and_then(|()| crate::catalog::compile_schema(&definition.input_schema))
        {
            Ok(v) => v,
            Err(e) => {
                skip(format!("its input schema is not a valid JSON Schema: {e}"));
                continue;
            }
        };
        let output = match &definition.output_schema {
            None => None,
            Some(schema) => match crate::catalog::meta_validate(&Value::Object((**schema).clone()))
                .and_then(|()| crate::catalog::compile_schema(schema))
            {
                Ok(v) => Some(v),
                Err(e) => {
                    skip(format!("its output schema is not a valid JSON Schema: {e}"));
                    continue;
                }
            },
        };
        let max_price = config.max_price_of(&remote);
        if max_price.is_some()
            && definition
                .input_schema
                .get("properties")
                .and_then(|p| p.get(crate::catalog::APPROVAL_ID_ARGUMENT))
                .is_some()
        {
            skip(format!(
                "it defines the argument `{}`, which tollgate adds to paid tools",
                crate::catalog::APPROVAL_ID_ARGUMENT
            ));
            continue;
        }
        out.push(Arc::new(UpstreamTool {
            name,
            remote,
            definition: definition.clone(),
            max_price,
            connection: connection.clone(),
            input,
            output,
        }));
    }
    out
}

/// Tools offered per server at most.
const MAX_TOOLS: usize = 1000;

/// One call of an upstream tool: the engine sends it unpaid, then (paid) with the proof in
/// `_meta`.
pub struct McpCounter<'a> {
    pub tool: &'a UpstreamTool,
    pub arguments: Map<String, Value>,
}

impl Counter for McpCounter<'_> {
    /// The server's result, as JSON (`_meta` included).
    type Answer = Value;

    fn tool(&self) -> &dyn Tool {
        self.tool
    }

    fn send<'a>(
        &'a self,
        headers: &'a [(HeaderName, HeaderValue)],
        progress: &'a (dyn Fn(String) + Sync),
    ) -> BoxFuture<'a, Result<Sold<Value>, String>> {
        Box::pin(async move {
            let meta = binding::request_meta(headers)?;
            let paid = !meta.is_empty();
            let connection = &self.tool.connection;
            progress(format!(
                "calling `{}` on the MCP server `{}`{}",
                self.tool.remote,
                connection.config.name,
                if paid { " with the payment" } else { "" }
            ));
            let reply = connection
                .call(&self.tool.remote, &self.arguments, meta)
                .await?;
            let read = match reply {
                client::Reply::Result(result) => match binding::read_result(&result) {
                    binding::Read::PaymentRequired { headers, body } => {
                        Sold::PaymentRequired { headers, body }
                    }
                    binding::Read::Answered { headers } => Sold::Answered {
                        answer: result,
                        headers,
                    },
                },
                client::Reply::Error {
                    code,
                    message,
                    data,
                } => match binding::read_error(code, &message, data.as_ref())
                    .map_err(|e| connection.config.redact(&e))?
                {
                    binding::Read::PaymentRequired { headers, body } => {
                        Sold::PaymentRequired { headers, body }
                    }
                    binding::Read::Answered { .. } => {
                        return Err(format!("the MCP server answered error {code}: {message}"));
                    }
                },
            };
            Ok(read)
        })
    }
}
