//! `[[mcp_upstream]]`: a paid MCP server tollgate connects to, as written (in `tollgate.toml` or
//! any `tools/*.toml`), and checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::resolve_env;
use crate::money::UsdMicros;
use crate::toml_input::Problem;

/// One `[[mcp_upstream]]` table as written (documented key by key in the README).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpUpstreamSpec {
    /// What tollgate calls the server (in receipts, messages, the default prefix).
    pub name: String,
    /// Put before each of its tool names in tollgate's `tools/list` (default `"<name>_"`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// A stdio server: the program to start (found on `PATH` unless a path).
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment for the program (values may use `${ENV_VAR}`); nothing else of tollgate's
    /// environment is passed on but `PATH`, `HOME`, `LANG` and `TMPDIR`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the program (relative to the file that names it).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// A streamable HTTP server: its MCP endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// Headers sent with every HTTP request (values may use `${ENV_VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Only these of its tools are offered (by the server's own names); all when absent.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// The most any one call to its tools may cost (e.g. `"0.05 USD"`); without it (and
    /// without a per-tool price) tollgate never pays it.
    #[serde(default)]
    pub max_price: Option<String>,
    /// Per tool (by the server's own name): the most one call may cost, over `max_price`.
    #[serde(default)]
    pub max_prices: BTreeMap<String, String>,
    /// `"always"`: every payment to this server needs a person's approval.
    #[serde(default)]
    pub approval: Option<String>,
    /// Time allowed for one call (and for starting and listing), in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Largest single message read from the server, in bytes.
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
}

/// How tollgate reaches the server.
#[derive(Clone)]
pub enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        /// Resolved values; they are secrets (redacted from what the server says).
        env: Vec<(String, String)>,
        cwd: Option<PathBuf>,
    },
    Http {
        url: url::Url,
        headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    },
}

/// A checked `[[mcp_upstream]]`.
#[derive(Clone)]
pub struct McpUpstreamConfig {
    pub name: String,
    pub prefix: String,
    pub transport: Transport,
    pub tools: Option<Vec<String>>,
    pub max_price: Option<UsdMicros>,
    pub max_prices: BTreeMap<String, UsdMicros>,
    pub approval_always: bool,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    /// Values from the environment (in `env` and `headers`): redacted from anything the
    /// server says that tollgate passes on.
    pub secrets: Vec<String>,
    /// Where it was defined, for messages.
    pub file: PathBuf,
}

// Never the environment or the headers: they hold secrets.
impl std::fmt::Debug for McpUpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpUpstreamSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for McpUpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpUpstreamConfig")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl McpUpstreamConfig {
    /// The most one call of the server's tool `tool` may cost.
    pub fn max_price_of(&self, tool: &str) -> Option<UsdMicros> {
        self.max_prices.get(tool).copied().or(self.max_price)
    }

    /// Where its calls go: the HTTP host, or `mcp-stdio.<name>` for a program tollgate
    /// starts (what a policy's or a credential's `hosts` names it by).
    pub fn host(&self) -> String {
        match &self.transport {
            Transport::Http { url, .. } => url.host_str().unwrap_or_default().to_owned(),
            Transport::Stdio { .. } => format!("mcp-stdio.{}", self.name),
        }
    }

    pub fn port(&self) -> u16 {
        match &self.transport {
            Transport::Http { url, .. } => url.port_or_known_default().unwrap_or(0),
            Transport::Stdio { .. } => 0,
        }
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in self.secrets.iter().filter(|s| s.len() >= 4) {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// Environment variables a stdio server inherits from tollgate (nothing secret).
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT"];

impl McpUpstreamSpec {
    /// Checks the table at `key` of `file`; every problem found, not only the first.
    pub fn check(self, file: &Path, key: &str) -> Result<McpUpstreamConfig, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |k: &str, reason: String| {
            problems.push(Problem::new(file, format!("{key}.{k}"), reason));
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 48
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            problem(
                "name",
                format!(
                    "{:?} is not a name: 1 to 48 letters, digits, `_` or `-`",
                    self.name
                ),
            );
        }
        let prefix = self
            .prefix
            .clone()
            .unwrap_or_else(|| format!("{}_", self.name));
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            || prefix.len() > 48
        {
            problem(
                "prefix",
                format!("{prefix:?} may hold only letters, digits, `_`, `-` and `.` (at most 48)"),
            );
        }
        let mut secrets = Vec::new();
        let mut resolve = |k: &str, value: &str, problem: &mut dyn FnMut(&str, String)| {
            match resolve_env(value) {
                Err(reason) => {
                    problem(k, reason);
                    None
                }
                Ok(Err(missing)) => {
                    problem(k, format!("the environment variable {missing} is not set"));
                    None
                }
                Ok(Ok((text, values))) => {
                    secrets.extend(values);
                    Some(text)
                }
            }
        };
        let transport = match (&self.command, &self.url) {
            (Some(command), None) => {
                if !self.headers.is_empty() {
                    problem(
                        "headers",
                        "only an HTTP server (url) takes headers".to_owned(),
                    );
                }
                let mut env = Vec::new();
                for name in INHERITED_ENV {
                    if let Ok(value) = std::env::var(name) {
                        env.push(((*name).to_owned(), value));
                    }
                }
                for (name, value) in &self.env {
                    if let Some(value) = resolve(&format!("env.{name}"), value, &mut problem) {
                        env.push((name.clone(), value));
                    }
                }
                let cwd = self.cwd.as_ref().map(|c| {
                    if c.is_absolute() {
                        c.clone()
                    } else {
                        file.parent().unwrap_or(Path::new(".")).join(c)
                    }
                });
                Some(Transport::Stdio {
                    command: command.clone(),
                    args: self.args.clone(),
                    env,
                    cwd,
                })
            }
            (None, Some(url)) => {
                if !self.env.is_empty() || !self.args.is_empty() || self.cwd.is_some() {
                    problem(
                        "env",
                        "only a stdio server (command) takes args, env and cwd".to_owned(),
                    );
                }
                let parsed = match url::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                        Some(u)
                    }
                    Ok(_) => {
                        problem("url", format!("{url:?} is not an http(s) URL with a host"));
                        None
                    }
                    Err(e) => {
                        problem("url", format!("{url:?} is not a URL: {e}"));
                        None
                    }
                };
                let mut headers = Vec::new();
                for (name, value) in &self.headers {
                    let k = format!("headers.{name}");
                    let Ok(header) = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    else {
                        problem(&k, "not a valid HTTP header name".to_owned());
                        continue;
                    };
                    if let Some(value) = resolve(&k, value, &mut problem) {
                        match reqwest::header::HeaderValue::from_str(&value) {
                            Ok(mut v) => {
                                v.set_sensitive(true);
                                headers.push((header, v));
                            }
                            Err(_) => problem(&k, "not a valid header value".to_owned()),
                        }
                    }
                }
                parsed.map(|url| Transport::Http { url, headers })
            }
            (Some(_), Some(_)) => {
                problem(
                    "url",
                    "give either command (a stdio server) or url (an HTTP server), not both"
                        .to_owned(),
                );
                None
            }
            (None, None) => {
                problem(
                    "command",
                    "give command (a stdio server) or url (a streamable HTTP server)".to_owned(),
                );
                None
            }
        };
        let price = |k: &str, text: &str, problem: &mut dyn FnMut(&str, String)| match text
            .parse::<UsdMicros>()
        {
            Ok(p) => Some(p),
            Err(e) => {
                problem(k, format!("{text:?} is not a price: {e}"));
                None
            }
        };
        let max_price = self
            .max_price
            .as_deref()
            .and_then(|p| price("max_price", p, &mut problem));
        let mut max_prices = BTreeMap::new();
        for (tool, text) in &self.max_prices {
            if let Some(p) = price(&format!("max_prices.{tool}"), text, &mut problem) {
                max_prices.insert(tool.clone(), p);
            }
        }
        let approval_always = match self.approval.as_deref() {
            None | Some("threshold") => false,
            Some("always") => true,
            Some(other) => {
                problem(
                    "approval",
                    format!("{other:?} is not \"always\" or \"threshold\""),
                );
                false
            }
        };
        if self.timeout_ms == Some(0) {
            problem("timeout_ms", "must be above 0".to_owned());
        }
        if self.max_response_bytes == Some(0) {
            problem("max_response_bytes", "must be above 0".to_owned());
        }
        if let Some(tools) = &self.tools
            && tools.is_empty()
        {
            problem(
                "tools",
                "an empty list offers no tool; leave it out to offer them all".to_owned(),
            );
        }
        match transport {
            Some(transport) if problems.is_empty() => Ok(McpUpstreamConfig {
                name: self.name,
                prefix,
                transport,
                tools: self.tools,
                max_price,
                max_prices,
                approval_always,
                timeout: Duration::from_millis(self.timeout_ms.unwrap_or(30_000)),
                max_response_bytes: self.max_response_bytes.unwrap_or(4 * 1024 * 1024),
                secrets,
                file: file.to_owned(),
            }),
            _ => Err(problems),
        }
    }
}

/// Checks every `[[mcp_upstream]]` found (`(file, index in file, spec)`): names and prefixes
/// must be unique, so that every re-exported tool name has one owner.
pub fn check_all(
    specs: Vec<(PathBuf, usize, McpUpstreamSpec)>,
) -> Result<Vec<McpUpstreamConfig>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out: Vec<McpUpstreamConfig> = Vec::new();
    for (file, index, spec) in specs {
        let key = format!("mcp_upstream[{index}]");
        match spec.check(&file, &key) {
            Ok(config) => {
                if let Some(other) = out.iter().find(|o| o.name == config.name) {
                    problems.push(Problem::new(
                        &file,
                        format!("{key}.name"),
                        format!(
                            "duplicate mcp_upstream name `{}`: already defined in {}",
                            config.name,
                            other.file.display()
                        ),
                    ));
                } else if let Some(other) = out.iter().find(|o| {
                    o.prefix.starts_with(&config.prefix) || config.prefix.starts_with(&o.prefix)
                }) {
                    problems.push(Problem::new(
                        &file,
                        format!("{key}.prefix"),
                        format!(
                            "the prefix {:?} overlaps {:?} of `{}`: every tool name must have \
                             one owner",
                            config.prefix, other.prefix, other.name
                        ),
                    ));
                } else {
                    out.push(config);
                }
            }
            Err(mut more) => problems.append(&mut more),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
