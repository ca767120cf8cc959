//! `tollgate serve --http` as a child process, and raw MCP-over-HTTP requests to it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `tollgate serve --http 127.0.0.1:0`.
pub struct HttpServer {
    pub child: Child,
    /// `http://127.0.0.1:PORT/mcp`.
    pub url: String,
    /// Everything the server wrote on stderr so far.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HttpServer {
    /// Starts the server on a free loopback port, with `env` added, and waits until it
    /// listens.
    pub async fn start(config: &Path, env: &[(&str, &str)]) -> HttpServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["serve", "--http", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("RUST_LOG", "tollgate=debug")
            .env_remove("TOLLGATE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tollgate serve --http");
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[serve] {line}");
                if let Some(url) = line.strip_prefix("tollgate: MCP over HTTP on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let url = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the server listens within 30 s")
            .expect("the server printed its address");
        HttpServer { child, url, logs }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM to the server (this test's own child, by its pid).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

/// A client for raw MCP-over-HTTP requests.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// A JSON-RPC request POSTed as a streamable HTTP client does, with optional bearer, session
/// and extra headers.
pub async fn post(
    url: &str,
    bearer: Option<&str>,
    session: Option<&str>,
    extra: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.header("authorization", format!("Bearer {bearer}"));
    }
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    match request.send().await {
        Ok(response) => response,
        Err(e) => panic!("send: {e:?}"),
    }
}

/// An `initialize` request at 2025-11-25.
pub fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"}}})
}

/// Opens a 2025-11-25 session with `bearer`: its session id.
pub async fn open_session(url: &str, bearer: &str) -> String {
    let response = post(url, Some(bearer), None, &[], &initialize()).await;
    assert_eq!(response.status(), 200, "initialize");
    let id = response
        .headers()
        .get("mcp-session-id")
        .expect("a session id")
        .to_str()
        .unwrap()
        .to_owned();
    let _ = response.text().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = post(url, Some(bearer), Some(&id), &[], &initialized).await;
    assert_eq!(response.status(), 202, "initialized");
    id
}

/// The JSON-RPC message carried by a response (JSON, or the last SSE `data:` event).
pub async fn message(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    if let Ok(value) = serde_json::from_str(&text) {
        return value;
    }
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC message in {text:?}"))
}
