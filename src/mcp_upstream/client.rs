//! One connection to a paid MCP server: started (or dialled) on first use, shared by every
//! call, started again after it died; its tool list cached until the server says it changed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use rmcp::model::{CallToolRequestParams, ClientConfig, Implementation, Tool as McpTool};
use rmcp::service::{NotificationContext, Peer, RunningService, ServiceError};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, ReadBuf};

use super::config::{McpUpstreamConfig, Transport};

/// What a `tools/call` came back with: a result (as JSON, `_meta` included), or a JSON-RPC
/// error.
pub enum Reply {
    Result(Value),
    Error {
        code: i32,
        message: String,
        data: Option<Value>,
    },
}

/// The connection to one server.
pub struct Connection {
    pub config: Arc<McpUpstreamConfig>,
    live: tokio::sync::Mutex<Option<Live>>,
    /// Set when the server says its tool list changed.
    stale: Arc<AtomicBool>,
    listed: std::sync::Mutex<Option<Arc<Vec<McpTool>>>>,
}

/// A running client session; dropping it stops the server process tollgate started.
struct Live {
    service: RunningService<RoleClient, Handler>,
    /// Kept so that the process ends with the connection.
    _child: Option<tokio::process::Child>,
}

/// tollgate as an MCP client: it notices `tools/list_changed`, and asks for nothing else (no
/// sampling, no roots, no elicitation: an upstream cannot reach the person through it).
struct Handler {
    stale: Arc<AtomicBool>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info = Implementation::new("tollgate", env!("CARGO_PKG_VERSION"));
        info
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.stale.store(true, Ordering::SeqCst);
    }
}

impl Connection {
    pub fn new(config: McpUpstreamConfig) -> Connection {
        Connection {
            config: Arc::new(config),
            live: Default::default(),
            stale: Default::default(),
            listed: Default::default(),
        }
    }

    /// The server's tools (all of them; the allowlist is applied by the caller), listed once
    /// and again after it said its list changed.
    pub async fn tools(&self) -> Result<Arc<Vec<McpTool>>, String> {
        if !self.stale.load(Ordering::SeqCst)
            && let Some(listed) = self.lock_listed().clone()
        {
            return Ok(listed);
        }
        self.stale.store(false, Ordering::SeqCst);
        let peer = self.peer().await?;
        let listed = tokio::time::timeout(self.config.timeout, peer.list_all_tools())
            .await
            .map_err(|_| {
                format!(
                    "`{}` did not list its tools within {} ms",
                    self.config.name,
                    self.config.timeout.as_millis()
                )
            })?;
        let listed = match listed {
            Ok(tools) => Arc::new(tools),
            Err(e) => {
                self.forget_if_closed(&e).await;
                return Err(format!(
                    "`{}` could not list its tools: {}",
                    self.config.name,
                    self.config.redact(&e.to_string())
                ));
            }
        };
        *self.lock_listed() = Some(listed.clone());
        Ok(listed)
    }

    /// Calls the server's tool `name` once, with `meta` in the request's `_meta`, within the
    /// server's timeout.
    pub async fn call(
        &self,
        name: &str,
        arguments: &Map<String, Value>,
        meta: Map<String, Value>,
    ) -> Result<Reply, String> {
        let peer = self.peer().await?;
        let mut params =
            CallToolRequestParams::new(name.to_owned()).with_arguments(arguments.clone());
        if !meta.is_empty() {
            params.meta = Some(rmcp::model::RequestMetaObject(rmcp::model::MetaObject(
                meta,
            )));
        }
        let sent = tokio::time::timeout(self.config.timeout, peer.call_tool_once(params)).await;
        let answered = match sent {
            Err(_) => {
                return Err(format!(
                    "no answer from the MCP server `{}` within {} ms",
                    self.config.name,
                    self.config.timeout.as_millis()
                ));
            }
            Ok(answered) => answered,
        };
        match answered {
            Ok(rmcp::model::CallToolResponse::Complete(result)) => {
                let value = serde_json::to_value(&result)
                    .map_err(|e| format!("the MCP server's result: {e}"))?;
                let size = value.to_string().len() as u64;
                if size > self.config.max_response_bytes {
                    return Err(format!(
                        "the answer from the MCP server `{}` is {size} bytes, over its limit of \
                         {} (max_response_bytes)",
                        self.config.name, self.config.max_response_bytes
                    ));
                }
                Ok(Reply::Result(value))
            }
            Ok(_) => Err(format!(
                "the MCP server `{}` asked for more input or started a task; tollgate supports \
                 neither for an upstream call",
                self.config.name
            )),
            Err(ServiceError::McpError(error)) => Ok(Reply::Error {
                code: error.code.0,
                message: error.message.to_string(),
                data: error.data,
            }),
            Err(e) => {
                self.forget_if_closed(&e).await;
                Err(format!(
                    "the MCP server `{}` failed: {}",
                    self.config.name,
                    self.config.redact(&e.to_string())
                ))
            }
        }
    }

    fn lock_listed(&self) -> std::sync::MutexGuard<'_, Option<Arc<Vec<McpTool>>>> {
        self.listed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A session is dropped once its transport closed: the next use starts a new one.
    async fn forget_if_closed(&self, error: &ServiceError) {
        if matches!(
            error,
            ServiceError::TransportClosed | ServiceError::TransportSend(_)
        ) {
            tracing::warn!(server = %self.config.name, "the MCP server's connection closed");
            *self.live.lock().await = None;
        }
    }

    /// The live session's peer, connecting first when there is none.
    async fn peer(&self) -> Result<Peer<RoleClient>, String> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref()
            && !l.service.is_transport_closed()
        {
            return Ok(l.service.peer().clone());
        }
        *live = None;
        let started = tokio::time::timeout(self.config.timeout, self.connect())
            .await
            .map_err(|_| {
                format!(
                    "the MCP server `{}` did not start within {} ms",
                    self.config.name,
                    self.config.timeout.as_millis()
                )
            })??;
        let peer = started.service.peer().clone();
        *live = Some(started);
        self.stale.store(true, Ordering::SeqCst);
        Ok(peer)
    }

    async fn connect(&self) -> Result<Live, String> {
        let handler = Handler {
            stale: self.stale.clone(),
        };
        let name = &self.config.name;
        match &self.config.transport {
            Transport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args)
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    // Its logs go where tollgate's go; tollgate's stdout carries MCP only.
                    .stderr(std::process::Stdio::inherit())
                    .kill_on_drop(true);
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                let mut child = cmd.spawn().map_err(|e| {
                    format!("could not start the MCP server `{name}` ({command}): {e}")
                })?;
                let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
                    return Err(format!("the MCP server `{name}` has no stdio pipes"));
                };
                let stdout = LineLimit::new(stdout, self.config.max_response_bytes);
                let service = handler.serve((stdout, stdin)).await.map_err(|e| {
                    format!(
                        "the MCP server `{name}` ({command}) did not complete the MCP handshake: {}",
                        self.config.redact(&e.to_string())
                    )
                })?;
                tracing::info!(server = %name, %command, "MCP server started");
                Ok(Live {
                    service,
                    _child: Some(child),
                })
            }
            Transport::Http { url, headers } => {
                use rmcp::transport::streamable_http_client::{
                    StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
                };
                crate::install_tls_provider();
                let client = reqwest::Client::builder()
                    .connect_timeout(std::time::Duration::from_secs(5))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("HTTP client for `{name}`: {e}"))?;
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                config.custom_headers = headers.iter().cloned().collect();
                config.max_sse_event_size =
                    usize::try_from(self.config.max_response_bytes).unwrap_or(usize::MAX);
                let transport = StreamableHttpClientTransport::with_client(client, config);
                let service = handler.serve(transport).await.map_err(|e| {
                    format!(
                        "the MCP server `{name}` at {url} did not complete the MCP handshake: {}",
                        self.config.redact(&e.to_string())
                    )
                })?;
                tracing::info!(server = %name, %url, "connected to MCP server");
                Ok(Live {
                    service,
                    _child: None,
                })
            }
        }
    }
}

/// A stdio server's output, with a bound on one message (one line): a server that writes a
/// longer line is cut off (an error ends the session) before tollgate buffers it all.
struct LineLimit<R> {
    inner: R,
    limit: u64,
    /// Bytes since the last newline.
    line: u64,
}

impl<R> LineLimit<R> {
    fn new(inner: R, limit: u64) -> LineLimit<R> {
        LineLimit {
            inner,
            limit,
            line: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LineLimit<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            let mut line = self.line;
            for &b in new {
                line = if b == b'\n' { 0 } else { line + 1 };
                if line > self.limit {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a message longer than {} bytes", self.limit),
                    )));
                }
            }
            self.line = line;
        }
        polled
    }
}
