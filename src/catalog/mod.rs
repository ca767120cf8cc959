//! The catalog: tool definitions read from `tools/*.toml`, checked once at start, and turned
//! into requests at call time.
//!
//! A definition is the owner's statement of what an agent may call: one HTTP method, one origin
//! fixed in the URL template, the arguments (a JSON Schema), how they map into the URL, query
//! and JSON body, and the most the tool may ever cost. Everything that can be checked without
//! calling upstream is checked here, so a broken definition stops `serve` and `check` with the
//! file, the key and the reason, instead of failing in front of a model.

mod request;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use request::{BuildError, UpstreamRequest};
use template::{Template, UrlTemplate};

use crate::money::UsdMicros;
use crate::toml_input::{Problem, read_toml};
use crate::upstream::UpstreamDefaults;

/// Names tollgate's own tools use; definitions may not take them.
pub const RESERVED_NAMES: &[&str] = &[
    "price_check",
    "budget_status",
    "list_receipts",
    "delegate_budget",
    "payment_status",
];

/// The argument tollgate adds to every paid tool: the id of an approval a person gave, sent
/// when the call is retried. It is removed before the arguments are validated or sent.
pub const APPROVAL_ID_ARGUMENT: &str = "approval_id";

/// A file of tool definitions: one or more `[[tool]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolFile {
    #[serde(default)]
    tool: Vec<ToolSpec>,
    /// Paid MCP servers whose tools are re-exported (`crate::mcp_upstream`).
    #[serde(default)]
    mcp_upstream: Vec<crate::mcp_upstream::McpUpstreamSpec>,
}

/// One `[[tool]]` table as written (documented key by key in the README).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    pub name: String,
    #[serde(default)]
    pub title: Option<String>,
    pub description: String,
    #[serde(default = "default_method")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub output_schema: Option<Value>,
    #[serde(default)]
    pub max_price: Option<String>,
    /// `"always"`: every payment by this tool needs a person's approval, whatever its amount;
    /// `"threshold"` (the default): only above the policy's or the caller's threshold.
    #[serde(default)]
    pub approval: Option<String>,
    /// Whether a call may pay at once at the price the seller asked on its last calls, without
    /// asking first (x402 only; `true` by default). See the README's "Paying ahead".
    #[serde(default)]
    pub pay_ahead: Option<bool>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    #[serde(default)]
    pub annotations: Annotations,
}

fn default_method() -> String {
    "GET".to_owned()
}

/// MCP tool annotations: hints for the host, never trusted for decisions.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Annotations {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

/// A header value: literal text, or text with `${ENV}` references resolved at start.
#[derive(Debug, Clone)]
pub enum HeaderSource {
    Ready(reqwest::header::HeaderValue),
    /// The environment variable is not set; the tool reports it when called.
    MissingEnv(String),
}

/// A checked tool definition, ready to build requests.
#[derive(Debug)]
pub struct HttpTool {
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    pub method: reqwest::Method,
    pub url: UrlTemplate,
    pub url_text: String,
    pub headers: Vec<(reqwest::header::HeaderName, HeaderSource)>,
    pub query: Vec<(String, Template)>,
    pub body: Option<Value>,
    /// The input schema as given (an object schema).
    pub input_schema: Arc<Map<String, Value>>,
    /// The schema of a successful upstream answer, if the owner declared one.
    pub output_schema: Option<Map<String, Value>>,
    pub max_price: Option<UsdMicros>,
    /// Every payment needs a person's approval (`approval = "always"`).
    pub approval_always: bool,
    /// A call may pay at once at the price the seller asked before (`pay_ahead`).
    pub pay_ahead: bool,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    pub annotations: Annotations,
    /// Where it was defined, for messages.
    pub file: PathBuf,
    /// Compiled on first use (or by [`Catalog::compile_all`]); the schemas were
    /// meta-validated at load, so compiling is expected to succeed.
    input_validator: OnceLock<Result<jsonschema::Validator, String>>,
    output_validator: OnceLock<Result<jsonschema::Validator, String>>,
    /// Values substituted from `${ENV}` into headers (API keys): redacted from any upstream
    /// text tollgate passes on.
    secrets: Vec<Secret>,
}

/// A secret value; its `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl HttpTool {
    fn input_validator(&self) -> Result<&jsonschema::Validator, String> {
        self.input_validator
            .get_or_init(|| compile_schema(self.input_schema.as_ref()))
            .as_ref()
            .map_err(|e| format!("input_schema cannot be compiled: {e}"))
    }

    fn output_validator(&self) -> Option<Result<&jsonschema::Validator, String>> {
        let schema = self.output_schema.as_ref()?;
        Some(
            self.output_validator
                .get_or_init(|| compile_schema(schema))
                .as_ref()
                .map_err(|e| format!("output_schema cannot be compiled: {e}")),
        )
    }

    /// Compiles both schemas now; the problems, if any.
    pub fn compile(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = self.input_validator() {
            problems.push(Problem::new(
                &self.file,
                format!("{}.input_schema", self.name),
                e,
            ));
        }
        if let Some(Err(e)) = self.output_validator() {
            problems.push(Problem::new(
                &self.file,
                format!("{}.output_schema", self.name),
                e,
            ));
        }
        problems
    }

    /// Checks arguments against the input schema; each error names where and what.
    pub fn validate_arguments(&self, args: &Value) -> Result<(), Vec<String>> {
        let validator = self.input_validator().map_err(|e| vec![e])?;
        let errors: Vec<String> = validator
            .iter_errors(args)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Checks an upstream JSON answer against the declared output schema.
    pub fn validate_output(&self, value: &Value) -> Result<(), String> {
        match self.output_validator() {
            None => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(v)) => v.validate(value).map_err(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            }),
        }
    }

    /// Replaces this tool's secrets (header values from the environment) in text that came
    /// from upstream, in case a server echoes them back.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for Secret(secret) in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }

    /// The host every request of this tool goes to.
    pub fn port(&self) -> u16 {
        self.url.port()
    }

    /// The host every request of this tool goes to.
    pub fn host(&self) -> String {
        self.url.host()
    }
}

impl crate::tool::Tool for HttpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn host(&self) -> String {
        HttpTool::host(self)
    }
    fn port(&self) -> u16 {
        HttpTool::port(self)
    }
    fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
    fn max_price(&self) -> Option<UsdMicros> {
        self.max_price
    }
    fn approval_always(&self) -> bool {
        self.approval_always
    }

    fn pays_ahead(&self) -> bool {
        self.pay_ahead
    }
    fn redact(&self, text: &str) -> String {
        HttpTool::redact(self, text)
    }
}

/// All tools, in a stable order (by name).
#[derive(Debug, Default)]
pub struct Catalog {
    tools: BTreeMap<String, Arc<HttpTool>>,
    /// `[[mcp_upstream]]` tables found with the tools, as written: `(file, index, spec)`;
    /// checked by [`Catalog::mcp_upstreams`].
    pub mcp_upstream_specs: Vec<(PathBuf, usize, crate::mcp_upstream::McpUpstreamSpec)>,
    /// The paid MCP servers to serve, checked (filled by whoever loads the config too).
    pub mcp_upstreams: Vec<crate::mcp_upstream::McpUpstreamConfig>,
    /// Things worth a warning that do not stop the server (e.g. an unset API-key variable).
    pub warnings: Vec<Problem>,
}

impl Catalog {
    /// Loads every `*.toml` in `dir` (sorted by file name). Returns every problem found, not
    /// only the first.
    pub fn load_dir(dir: &Path, defaults: &UpstreamDefaults) -> Result<Catalog, Vec<Problem>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                return Err(vec![Problem::new(
                    dir,
                    "",
                    format!("cannot read the tools directory: {e}"),
                )]);
            }
        };
        files.sort();
        let mut upstreams = Vec::new();
        let mut specs = Vec::new();
        let mut problems = Vec::new();
        for file in files {
            match read_toml::<ToolFile>(&file) {
                Ok(parsed) => {
                    if parsed.tool.is_empty() && parsed.mcp_upstream.is_empty() {
                        problems.push(Problem::new(
                            &file,
                            "tool",
                            "no [[tool]] or [[mcp_upstream]] tables in this file",
                        ));
                    }
                    upstreams.extend(
                        parsed
                            .mcp_upstream
                            .into_iter()
                            .enumerate()
                            .map(|(i, s)| (file.clone(), i, s)),
                    );
                    specs.extend(
                        parsed
                            .tool
                            .into_iter()
                            .enumerate()
                            .map(|(i, s)| (file.clone(), i, s)),
                    );
                }
                Err(problem) => problems.push(problem),
            }
        }
        let mut catalog = Catalog::from_specs(specs, defaults).unwrap_or_else(|mut more| {
            problems.append(&mut more);
            Catalog::default()
        });
        catalog.mcp_upstream_specs = upstreams;
        problems.sort_by(|a, b| a.file.cmp(&b.file));
        if problems.is_empty() {
            catalog
                .warnings
                .sort_by(|a, b| (&a.file, &a.key).cmp(&(&b.file, &b.key)));
            Ok(catalog)
        } else {
            Err(problems)
        }
    }

    /// Checks and compiles definitions; `(file, index in file, spec)`.
    pub fn from_specs(
        specs: Vec<(PathBuf, usize, ToolSpec)>,
        defaults: &UpstreamDefaults,
    ) -> Result<Catalog, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut seen: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
        let mut unique = Vec::with_capacity(specs.len());
        for (file, index, spec) in specs {
            if let Some((other_file, other_index)) = seen.get(&spec.name) {
                problems.push(Problem::new(
                    &file,
                    format!("tool[{index}].name"),
                    format!(
                        "duplicate tool name `{}`: already defined in {} at tool[{other_index}]",
                        spec.name,
                        other_file.display()
                    ),
                ));
                continue;
            }
            seen.insert(spec.name.clone(), (file.clone(), index));
            unique.push((file, index, spec));
        }

        // Definitions are independent: with hundreds of them, check them on every core.
        let threads = if unique.len() < 64 {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
        };
        let per_thread = unique.len().div_ceil(threads).max(1);
        let mut chunks = Vec::new();
        let mut rest = unique.into_iter();
        loop {
            let chunk: Vec<_> = rest.by_ref().take(per_thread).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let compile_chunk = |chunk: Vec<(PathBuf, usize, ToolSpec)>| {
            let mut warnings = Vec::new();
            let results: Vec<_> = chunk
                .into_iter()
                .map(|(file, index, spec)| {
                    compile(
                        &file,
                        &format!("tool[{index}]"),
                        spec,
                        defaults,
                        &mut warnings,
                    )
                })
                .collect();
            (results, warnings)
        };
        let outcomes: Vec<_> = if chunks.len() <= 1 {
            chunks.into_iter().map(compile_chunk).collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|c| scope.spawn(move || compile_chunk(c)))
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            })
        };

        let mut catalog = Catalog::default();
        for (results, mut warnings) in outcomes {
            catalog.warnings.append(&mut warnings);
            for result in results {
                match result {
                    Ok(tool) => {
                        catalog.tools.insert(tool.name.clone(), Arc::new(tool));
                    }
                    Err(mut more) => problems.append(&mut more),
                }
            }
        }
        if problems.is_empty() {
            Ok(catalog)
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<HttpTool>> {
        self.tools.get(name)
    }

    /// The paid MCP servers found with the tools and in `extra` (the config file's), checked.
    pub fn mcp_upstreams(
        &self,
        extra: Vec<(PathBuf, usize, crate::mcp_upstream::McpUpstreamSpec)>,
    ) -> Result<Vec<crate::mcp_upstream::McpUpstreamConfig>, Vec<Problem>> {
        let mut all = extra;
        all.extend(self.mcp_upstream_specs.iter().cloned());
        crate::mcp_upstream::config::check_all(all)
    }

    /// Tools in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<HttpTool>> {
        self.tools.values()
    }

    /// Compiles every schema now (`check` does; `serve` does it in the background).
    pub fn compile_all(&self) -> Vec<Problem> {
        self.tools.values().flat_map(|t| t.compile()).collect()
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

fn compile(
    file: &Path,
    key: &str,
    spec: ToolSpec,
    defaults: &UpstreamDefaults,
    warnings: &mut Vec<Problem>,
) -> Result<HttpTool, Vec<Problem>> {
    let mut problems = Vec::new();
    macro_rules! problem {
        ($k:expr, $reason:expr $(,)?) => {
            problems.push(Problem::new(file, format!("{key}.{}", $k), $reason))
        };
    }

    if !valid_tool_name(&spec.name) {
        problem!(
            "name",
            format!(
                "`{}` is not a valid tool name: 1 to 64 characters from A-Z a-z 0-9 _ - .",
                spec.name
            ),
        );
    } else if RESERVED_NAMES.contains(&spec.name.as_str()) {
        problem!(
            "name",
            format!("`{}` is the name of one of tollgate's own tools", spec.name)
        );
    }
    if spec.description.trim().is_empty() {
        problem!(
            "description",
            "must say what the tool does; the model reads it".to_owned()
        );
    }

    let method = match spec.method.to_ascii_uppercase().as_str() {
        "GET" => Some(reqwest::Method::GET),
        "POST" => Some(reqwest::Method::POST),
        "PUT" => Some(reqwest::Method::PUT),
        "PATCH" => Some(reqwest::Method::PATCH),
        "DELETE" => Some(reqwest::Method::DELETE),
        other => {
            problem!(
                "method",
                format!("`{other}` is not one of GET, POST, PUT, PATCH, DELETE")
            );
            None
        }
    };

    let url = match UrlTemplate::parse(&spec.url) {
        Ok(url) => Some(url),
        Err(e) => {
            problem!("url", e.to_string());
            None
        }
    };

    // Input schema: an object schema (MCP requires it); default: no arguments.
    let input_schema = match spec.input_schema {
        None => {
            let mut m = Map::new();
            m.insert("type".into(), "object".into());
            m.insert("properties".into(), Value::Object(Map::new()));
            m.insert("additionalProperties".into(), false.into());
            Some(m)
        }
        Some(schema) if schema.get("type") == Some(&Value::from("object")) => {
            if let Err(e) = meta_validate(&schema) {
                problem!("input_schema", format!("not a valid JSON Schema: {e}"));
            }
            match schema {
                Value::Object(m) => Some(m),
                _ => None,
            }
        }
        Some(_) => {
            problem!(
                "input_schema",
                "must be a JSON Schema with type = \"object\"".to_owned()
            );
            None
        }
    };
    let properties: BTreeSet<String> = input_schema
        .as_ref()
        .and_then(|m| m.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let required: BTreeSet<String> = input_schema
        .as_ref()
        .and_then(|m| m.get("required"))
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    macro_rules! check_args {
        ($where:expr, $names:expr) => {
            for name in $names {
                if !properties.contains(name) {
                    problem!(
                        $where,
                        format!("uses {{{name}}}, which input_schema.properties does not define")
                    );
                }
            }
        };
    }
    if let Some(url) = &url {
        check_args!("url", url.args());
    }

    let mut query = Vec::new();
    for (name, value) in &spec.query {
        match Template::parse(value) {
            Ok(t) => {
                check_args!(format!("query.{name}"), t.args());
                query.push((name.clone(), t));
            }
            Err(e) => problem!(format!("query.{name}"), e.to_string()),
        }
    }
    if let Some(body) = &spec.body {
        let mut names = Vec::new();
        if let Err(e) = body_args(body, &mut names) {
            problem!("body", e.to_string());
        }
        check_args!("body", names.iter().map(String::as_str));
        if !body.is_object() {
            problem!(
                "body",
                "must be a table (the JSON object sent as the body)".to_owned()
            );
        }
        if matches!(method, Some(ref m) if *m == reqwest::Method::GET) {
            problem!(
                "body",
                "a GET request carries no body; map arguments with `query`".to_owned()
            );
        }
    }
    if let Some(url) = &url {
        for name in url.path_args() {
            if properties.contains(name) && !required.contains(name) {
                problem!(
                    "url",
                    format!(
                        "the path uses {{{name}}}, so input_schema.required must list \"{name}\""
                    ),
                );
            }
        }
    }

    let output_schema = match spec.output_schema {
        None => None,
        Some(schema @ Value::Object(_)) => match meta_validate(&schema) {
            Ok(()) => match schema {
                Value::Object(m) => Some(m),
                _ => None,
            },
            Err(e) => {
                problem!("output_schema", format!("not a valid JSON Schema: {e}"));
                None
            }
        },
        Some(_) => {
            problem!(
                "output_schema",
                "must be a table (a JSON Schema)".to_owned()
            );
            None
        }
    };

    let max_price = match spec.max_price.as_deref().map(str::parse::<UsdMicros>) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            let given = spec.max_price.as_deref().unwrap_or_default();
            problem!("max_price", format!("{given:?} is not a price: {e}"));
            None
        }
    };
    let approval_always = match spec.approval.as_deref() {
        None | Some("threshold") => false,
        Some("always") => true,
        Some(other) => {
            problem!(
                "approval",
                format!("{other:?} is not \"always\" or \"threshold\"")
            );
            false
        }
    };
    if approval_always && max_price.is_none() {
        problem!(
            "approval",
            "only a paid tool (one with max_price) can need approval".to_owned()
        );
    }
    if max_price.is_some()
        && input_schema
            .as_ref()
            .and_then(|s| s.get("properties"))
            .and_then(|p| p.get(APPROVAL_ID_ARGUMENT))
            .is_some()
    {
        problem!(
            "input_schema",
            format!(
                "a paid tool cannot define the argument `{APPROVAL_ID_ARGUMENT}`: tollgate adds it \
                 (it carries a person's approval when a call is retried)"
            )
        );
    }
    if spec.timeout_ms == Some(0) {
        problem!("timeout_ms", "must be above 0".to_owned());
    }
    if spec.max_response_bytes == Some(0) {
        problem!("max_response_bytes", "must be above 0".to_owned());
    }

    let mut headers = Vec::new();
    let mut secrets = Vec::new();
    for (name, value) in &spec.headers {
        let k = format!("headers.{name}");
        let Ok(header) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
            problem!(k, "not a valid HTTP header name".to_owned());
            continue;
        };
        if FORBIDDEN_HEADERS.contains(&header.as_str()) {
            problem!(k, "tollgate sets this header itself".to_owned());
            continue;
        }
        let without_env = value.replace("${", "");
        if without_env.contains('{') {
            problem!(
                k,
                "headers cannot use arguments; only ${ENV_VAR} references".to_owned()
            );
            continue;
        }
        match resolve_env(value) {
            Err(reason) => problem!(k, reason),
            Ok(Err(missing)) => {
                warnings.push(Problem::new(
                    file,
                    format!("{key}.{k}"),
                    format!(
                        "environment variable {missing} is not set; the tool will fail until it is"
                    ),
                ));
                headers.push((header, HeaderSource::MissingEnv(missing)));
            }
            Ok(Ok((text, values))) => match reqwest::header::HeaderValue::from_str(&text) {
                Ok(mut v) => {
                    v.set_sensitive(!values.is_empty());
                    secrets.extend(values.into_iter().filter(|s| s.len() >= 4).map(Secret));
                    headers.push((header, HeaderSource::Ready(v)));
                }
                Err(_) => problem!(
                    k,
                    "the value (after ${...} references) is not a valid header value".to_owned()
                ),
            },
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(method), Some(url), Some(input_schema)) = (method, url, input_schema) else {
        return Err(vec![Problem::new(file, key, "invalid definition")]);
    };
    Ok(HttpTool {
        name: spec.name,
        title: spec.title,
        description: spec.description,
        method,
        url_text: spec.url,
        url,
        headers,
        query,
        body: spec.body,
        input_schema: Arc::new(input_schema),
        output_schema,
        max_price,
        approval_always,
        pay_ahead: spec.pay_ahead.unwrap_or(true),
        timeout: Duration::from_millis(spec.timeout_ms.unwrap_or(defaults.timeout_ms)),
        max_response_bytes: spec
            .max_response_bytes
            .unwrap_or(defaults.max_response_bytes),
        annotations: spec.annotations,
        file: file.to_owned(),
        input_validator: OnceLock::new(),
        output_validator: OnceLock::new(),
        secrets,
    })
}

/// Checks a schema against its meta-schema (cheap; compiling waits for first use).
pub(crate) fn meta_validate(schema: &Value) -> Result<(), String> {
    jsonschema::meta::options()
        .validate(schema)
        .map_err(|e| e.to_string())
}

pub(crate) fn compile_schema(schema: &Map<String, Value>) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(&Value::Object(schema.clone())).map_err(|e| e.to_string())
}

/// Headers a definition may not set: tollgate or the HTTP stack owns them.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "payment-signature",
    "x-payment",
];

fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Collects the placeholder names used anywhere in a JSON body template.
fn body_args(value: &Value, out: &mut Vec<String>) -> Result<(), template::TemplateError> {
    match value {
        Value::String(s) => out.extend(Template::parse(s)?.args().map(str::to_owned)),
        Value::Array(items) => {
            for item in items {
                body_args(item, out)?;
            }
        }
        Value::Object(map) => {
            for item in map.values() {
                body_args(item, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Replaces `${NAME}` with the environment variable's value; returns the text and the values
/// substituted. `Ok(Err(name))` when a variable is not set; `Err` when the text is malformed.
pub(crate) type Resolved = Result<(String, Vec<String>), String>;
pub(crate) fn resolve_env(text: &str) -> Result<Resolved, String> {
    let mut values = Vec::new();
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("unclosed ${ in header value")?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("${{{name}}} is not an environment variable name"));
        }
        match std::env::var(name) {
            Ok(value) => {
                out.push_str(&value);
                values.push(value);
            }
            Err(_) => return Ok(Err(name.to_owned())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Ok((out, values)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toml_input::parse_toml;

    fn load(text: &str) -> Result<Catalog, Vec<Problem>> {
        let file: ToolFile = parse_toml(Path::new("t.toml"), text).map_err(|p| vec![p])?;
        let specs = file
            .tool
            .into_iter()
            .enumerate()
            .map(|(i, s)| ("t.toml".into(), i, s))
            .collect();
        Catalog::from_specs(specs, &UpstreamDefaults::default())
    }

    const GOOD: &str = r#"
[[tool]]
name = "weather"
description = "Weather for a city"
url = "https://api.example.com/v1/weather?city={city}"
max_price = "0.05 USD"
input_schema = { type = "object", required = ["city"], properties = { city = { type = "string" } } }
"#;

    #[test]
    fn loads_a_good_definition() {
        let catalog = load(GOOD).unwrap();
        let tool = catalog.get("weather").unwrap();
        assert_eq!(tool.max_price, Some(UsdMicros(50_000)));
        assert_eq!(tool.host(), "api.example.com");
        assert!(
            tool.validate_arguments(&serde_json::json!({"city": "Oslo"}))
                .is_ok()
        );
        let errors = tool
            .validate_arguments(&serde_json::json!({"city": 3}))
            .unwrap_err();
        assert!(errors[0].contains("/city"), "{errors:?}");
    }

    #[test]
    fn names_the_undefined_argument() {
        let err = load(&GOOD.replace("city={city}", "city={town}")).unwrap_err();
        assert_eq!(err[0].key, "tool[0].url");
        assert!(err[0].reason.contains("{town}"), "{}", err[0].reason);
    }

    #[test]
    fn refuses_duplicates_unknown_keys_and_bad_schemas() {
        let twice = format!("{GOOD}{GOOD}");
        let err = load(&twice).unwrap_err();
        assert!(
            err[0].reason.contains("duplicate tool name `weather`"),
            "{err:?}"
        );

        let err = load(&format!("{GOOD}colour = \"red\"\n")).unwrap_err();
        assert!(err[0].reason.contains("unknown field `colour`"), "{err:?}");

        let err = load(&GOOD.replace("type = \"string\"", "type = \"strung\"")).unwrap_err();
        assert_eq!(err[0].key, "tool[0].input_schema");
    }

    #[test]
    fn path_placeholders_must_be_required() {
        let text = GOOD
            .replace("/v1/weather?city={city}", "/v1/{city}")
            .replace("required = [\"city\"], ", "");
        let err = load(&text).unwrap_err();
        assert!(err[0].reason.contains("required must list"), "{err:?}");
    }
}
