//! The one config file, `tollgate.toml` (reading TOML with errors that name the file, the key
//! and the reason is `toml_input`'s).
//!
//! Paths in the file are relative to the file's own directory, so a config works wherever the
//! host starts the process from. Without a config file, the defaults point at the repository
//! layout (`tools/`, `policies/`, `state/` under the working directory).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::budget::policy::Policy;
use crate::lightning::LightningConfig;
use crate::pay::assets::Asset;
use crate::wallet::WalletConfig;

pub use crate::toml_input::{ConfigError, Problem, parse_toml, read_toml};
pub use crate::upstream::UpstreamDefaults;

/// The file name looked for in the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "tollgate.toml";

/// `tollgate.toml` as written by the user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default = "default_tools_dir")]
    tools_dir: PathBuf,
    #[serde(default = "default_policies_dir")]
    policies_dir: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    upstream: UpstreamDefaults,
    /// The policy: a name in `policies_dir` (`"default"`) or a path to a `.toml` file.
    #[serde(default)]
    policy: Option<String>,
    /// Assets beyond the built-in USDC deployments.
    #[serde(default)]
    assets: Vec<AssetConfig>,
    #[serde(default)]
    wallet: WalletConfig,
    /// The Lightning backend that pays L402 invoices, if any.
    #[serde(default)]
    lightning: Option<LightningConfig>,
    /// JSON-RPC endpoints by network (CAIP-2 or x402 v1 name), to reconcile payments whose
    /// outcome is unknown.
    #[serde(default)]
    rpc: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    approval: ApprovalConfig,
    #[serde(default)]
    ledger: LedgerFile,
    #[serde(default)]
    http: HttpConfig,
    /// Paid MCP servers whose tools tollgate re-exports (also allowed in `tools/*.toml`).
    #[serde(default)]
    mcp_upstream: Vec<crate::mcp_upstream::McpUpstreamSpec>,
}

/// The environment variable that names the ledger's database (it wins over `[ledger] url`,
/// and is where a URL with a password belongs).
pub const LEDGER_URL_ENV: &str = "TOLLGATE_LEDGER_URL";

/// `[ledger]`: where budgets, pending payments, receipts and approvals live. Without a URL,
/// the embedded SQLite file in `state_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LedgerFile {
    /// A PostgreSQL URL shared by every host (`postgres://user@host:5432/db?sslmode=verify-full`),
    /// without a password: that comes from the environment (`PGPASSWORD`, or the whole URL in
    /// `TOLLGATE_LEDGER_URL`).
    url: Option<String>,
    /// The most connections one process opens to the database.
    pool_size: usize,
}

impl Default for LedgerFile {
    fn default() -> Self {
        LedgerFile {
            url: None,
            pool_size: crate::ledger::postgres::DEFAULT_POOL_SIZE,
        }
    }
}

/// `[approval]`: how a person is asked to approve a payment above the threshold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalConfig {
    /// Where `serve` serves the local approval page: a loopback address (port 0: any free
    /// port, printed on stderr), or `"off"`.
    pub listen: String,
    /// How long an MCP host's user has to answer an elicitation, in seconds (1 to 45); also
    /// how long a sealed `requestState` (protocol 2026-07-28) stays valid.
    pub elicitation_timeout_secs: u64,
    /// How long an out-of-band approval (CLI or page) stays open, in seconds; an approved one
    /// must be used within the same time from when it was asked.
    pub expires_after_secs: u64,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig {
            listen: "127.0.0.1:0".to_owned(),
            elicitation_timeout_secs: crate::approval::MAX_ELICITATION_SECS,
            expires_after_secs: 600,
        }
    }
}

/// `[http]`: MCP over streamable HTTP (`tollgate serve --http`), for remote agents. Each
/// request is identified by its `Authorization: Bearer` credential alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where `serve --http` listens when no address follows the flag.
    pub listen: String,
    /// The owner states that a TLS proxy in front of tollgate terminates TLS: with it, a
    /// listener off loopback may serve plain HTTP.
    pub behind_tls_proxy: bool,
    /// TLS on the listener itself: a PEM certificate chain and its PEM private key (both or
    /// neither). Relative to the config file.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `Host` values accepted besides the loopback names (`localhost`, `127.0.0.1`, `::1`):
    /// the public name a proxy forwards (`tollgate.example.com`), against DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted (`https://app.example.com:443`); a request with any other
    /// `Origin` is refused (requests without one, as non-browser agents send, pass).
    pub allowed_origins: Vec<String>,
    /// The largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// The most sessions (protocol 2025-11-25) open at once; a new one beyond is refused (503).
    pub max_sessions: usize,
    /// The most connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// A session without any message for this long is closed, in seconds.
    pub session_idle_secs: u64,
    /// The policy profile a request without a bearer credential is served as. Absent (the
    /// default): such a request gets 401. `TOLLGATE_TOKEN` and `default_profile` never apply
    /// to network callers.
    pub anonymous_profile: Option<String>,
    /// On SIGTERM/SIGINT, how long calls in flight may take to finish, in seconds; a payment
    /// still open after it stays pending for reconciliation.
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8402".to_owned(),
            behind_tls_proxy: false,
            tls_cert: None,
            tls_key: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_body_bytes: 1024 * 1024,
            max_sessions: 256,
            max_connections: 1024,
            session_idle_secs: 300,
            anonymous_profile: None,
            shutdown_grace_secs: 20,
        }
    }
}

impl HttpConfig {
    /// Why `listen` may not be served on, if it may not: an unparsable address, or one off
    /// loopback without `behind_tls_proxy`.
    pub fn refuse_listen(&self, listen: &str) -> Option<String> {
        match listen.parse::<std::net::SocketAddr>() {
            Err(_) => Some(format!(
                "{listen:?} is not an address like \"127.0.0.1:8402\""
            )),
            Ok(addr)
                if !addr.ip().is_loopback()
                    && !self.behind_tls_proxy
                    && self.tls_cert.is_none() =>
            {
                Some(format!(
                    "{addr} is not a loopback address and no TLS is configured: bearer \
                     credentials would cross the network in the clear. Set `[http] tls_cert` \
                     and `tls_key`, or put a TLS proxy in front and set `[http] \
                     behind_tls_proxy = true`, or listen on 127.0.0.1"
                ))
            }
            Ok(_) => None,
        }
    }
}

/// An `[[assets]]` entry: an ERC-20 token tollgate may value (its rate comes from the policy's
/// `[rates]`, by symbol).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetConfig {
    /// CAIP-2 (`eip155:8453`) or an x402 v1 name (`base`).
    pub network: String,
    /// The token contract.
    pub address: String,
    pub symbol: String,
    pub decimals: u8,
    /// A test asset (no real value): receipts paid in it carry `"sandbox": true`.
    #[serde(default)]
    pub sandbox: bool,
}

fn default_tools_dir() -> PathBuf {
    "tools".into()
}
fn default_policies_dir() -> PathBuf {
    "policies".into()
}
fn default_state_dir() -> PathBuf {
    "state".into()
}

/// The configuration in force: paths resolved, defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// Directory of tool definitions (`*.toml`).
    pub tools_dir: PathBuf,
    /// Directory of policy files (`*.toml`).
    pub policies_dir: PathBuf,
    /// Where tollgate keeps its durable state.
    pub state_dir: PathBuf,
    pub upstream: UpstreamDefaults,
    /// The policy file, if one is configured or `policies_dir/default.toml` exists.
    pub policy_file: Option<PathBuf>,
    /// Built-in and configured assets.
    pub assets: Vec<Asset>,
    pub wallet: WalletConfig,
    /// `[lightning]`: the backend that pays L402 invoices (`tls_cert` resolved).
    pub lightning: Option<LightningConfig>,
    /// JSON-RPC endpoints by chain id (from `[rpc]`).
    pub rpc: std::collections::BTreeMap<u64, String>,
    pub approval: ApprovalConfig,
    /// `[ledger]`, with `TOLLGATE_LEDGER_URL` applied: where the ledger lives.
    pub ledger: crate::ledger::LedgerConfig,
    /// Where the ledger URL came from (`ledger.url` or `TOLLGATE_LEDGER_URL`), for messages.
    pub ledger_url_source: &'static str,
    pub http: HttpConfig,
    /// `[[mcp_upstream]]` tables of this file, as written (checked with the tool files').
    pub mcp_upstream: Vec<crate::mcp_upstream::McpUpstreamSpec>,
    raw_assets: Vec<AssetConfig>,
    raw_rpc: std::collections::BTreeMap<String, String>,
}

impl Config {
    /// The policy in force: the configured file, else the built-in conservative policy.
    pub fn load_policy(&self) -> Result<Policy, Vec<Problem>> {
        match &self.policy_file {
            Some(path) => Policy::load(path),
            None => Ok(Policy::builtin()),
        }
    }

    /// Loads `explicit` if given (it must exist), else `./tollgate.toml` if present, else the
    /// defaults relative to the working directory.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(path) => Some(path.to_owned()),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                default.exists().then_some(default)
            }
        };
        let Some(path) = path else {
            let defaults: ConfigFile = parse_toml(Path::new("<defaults>"), "")?;
            let config = Config::resolve(defaults, Path::new(""), None);
            let problems = config.ledger_problems(Path::new(DEFAULT_CONFIG_FILE), None);
            return if problems.is_empty() {
                Ok(config)
            } else {
                Err(ConfigError(problems))
            };
        };
        let file: ConfigFile = read_toml(&path)?;
        let base = path.parent().unwrap_or(Path::new(""));
        let file_url = file.ledger.url.clone();
        let config = Config::resolve(file, base, Some(path.clone()));
        let mut problems = config.validate().err().unwrap_or_default();
        problems.extend(config.ledger_problems(&path, file_url.as_deref()));
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(config)
    }

    fn resolve(file: ConfigFile, base: &Path, source: Option<PathBuf>) -> Config {
        let at = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let env_url = std::env::var(LEDGER_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty());
        let ledger_url_source = if env_url.is_some() {
            LEDGER_URL_ENV
        } else {
            "ledger.url"
        };
        let ledger = crate::ledger::LedgerConfig {
            url: env_url.or(file.ledger.url),
            pool_size: file.ledger.pool_size,
        };
        let policies_dir = at(file.policies_dir);
        let policy_file = match file.policy {
            Some(p) if p.ends_with(".toml") || p.contains('/') => Some(at(p.into())),
            Some(name) => Some(policies_dir.join(format!("{name}.toml"))),
            None => Some(policies_dir.join("default.toml")).filter(|p| p.exists()),
        };
        let mut assets = crate::pay::assets::builtin();
        assets.extend(file.assets.iter().filter_map(|a| {
            Some(Asset {
                chain_id: crate::pay::assets::chain_id(&a.network)?,
                address: a.address.to_ascii_lowercase(),
                symbol: a.symbol.clone(),
                decimals: a.decimals,
                // Unknown until the policy gives a rate for the symbol.
                usd_micros_per_unit: 0,
                sandbox: a.sandbox,
            })
        }));
        Config {
            source,
            tools_dir: at(file.tools_dir),
            policies_dir,
            state_dir: at(file.state_dir),
            upstream: file.upstream,
            policy_file,
            assets,
            wallet: WalletConfig {
                evm_keystore: file.wallet.evm_keystore.map(&at),
                evm_keystore_password_file: file.wallet.evm_keystore_password_file.map(&at),
                tempo: file.wallet.tempo,
            },
            lightning: file.lightning.map(|l| LightningConfig {
                tls_cert: l.tls_cert.clone().map(&at),
                ..l
            }),
            rpc: file
                .rpc
                .iter()
                .filter_map(|(network, url)| {
                    Some((crate::pay::assets::chain_id(network)?, url.clone()))
                })
                .collect(),
            approval: file.approval,
            ledger,
            ledger_url_source,
            http: HttpConfig {
                tls_cert: file.http.tls_cert.clone().map(&at),
                tls_key: file.http.tls_key.clone().map(&at),
                ..file.http
            },
            mcp_upstream: file.mcp_upstream,
            raw_assets: file.assets,
            raw_rpc: file.rpc,
        }
    }

    /// What is wrong with where the ledger lives: a password written in the file (`file_url`,
    /// the URL as the file has it), or a URL that cannot be read. Never shows the URL.
    fn ledger_problems(&self, file: &Path, file_url: Option<&str>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(url) = file_url
            && has_password(url)
        {
            problems.push(Problem::new(
                file,
                "ledger.url",
                format!(
                    "holds a password; a password never goes in the file: give it in the \
                     environment (PGPASSWORD, or the whole URL in {LEDGER_URL_ENV})"
                ),
            ));
        }
        if let Some(url) = &self.ledger.url
            && let Err(e) = crate::ledger::postgres::Target::parse(url)
        {
            let key = if self.ledger_url_source == LEDGER_URL_ENV {
                format!("{LEDGER_URL_ENV} (environment)")
            } else {
                "ledger.url".to_owned()
            };
            problems.push(Problem::new(file, key, e.to_string()));
        }
        if self.ledger.pool_size == 0 {
            problems.push(Problem::new(file, "ledger.pool_size", "must be above 0"));
        }
        problems
    }

    fn validate(&self) -> Result<(), Vec<Problem>> {
        let file = self
            .source
            .clone()
            .unwrap_or_else(|| DEFAULT_CONFIG_FILE.into());
        let mut problems = Vec::new();
        for (network, url) in &self.raw_rpc {
            if crate::pay::assets::chain_id(network).is_none() {
                problems.push(Problem::new(
                    &file,
                    format!("rpc.{network}"),
                    "not an EVM network tollgate knows (use a CAIP-2 id such as \"eip155:8453\")",
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || reqwest::Url::parse(url).is_err()
            {
                problems.push(Problem::new(
                    &file,
                    format!("rpc.{network}"),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        let u = &self.upstream;
        if u.connect_timeout_ms == 0 {
            problems.push(Problem::new(
                &file,
                "upstream.connect_timeout_ms",
                "must be above 0",
            ));
        }
        if u.timeout_ms == 0 {
            problems.push(Problem::new(
                &file,
                "upstream.timeout_ms",
                "must be above 0",
            ));
        }
        if u.max_response_bytes == 0 {
            problems.push(Problem::new(
                &file,
                "upstream.max_response_bytes",
                "must be above 0",
            ));
        }
        if u.user_agent.is_empty() || u.user_agent.chars().any(|c| c.is_control()) {
            problems.push(Problem::new(
                &file,
                "upstream.user_agent",
                "must be non-empty printable text",
            ));
        }
        let a = &self.approval;
        if !(1..=crate::approval::MAX_ELICITATION_SECS).contains(&a.elicitation_timeout_secs) {
            problems.push(Problem::new(
                &file,
                "approval.elicitation_timeout_secs",
                format!(
                    "must be from 1 to {} (signatures expire; a host's call must not hang)",
                    crate::approval::MAX_ELICITATION_SECS
                ),
            ));
        }
        if a.expires_after_secs == 0 {
            problems.push(Problem::new(
                &file,
                "approval.expires_after_secs",
                "must be above 0",
            ));
        }
        if a.listen != "off" {
            match a.listen.parse::<std::net::SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => {}
                Ok(_) => problems.push(Problem::new(
                    &file,
                    "approval.listen",
                    "must be a loopback address (127.0.0.1 or ::1): the page approves payments",
                )),
                Err(_) => problems.push(Problem::new(
                    &file,
                    "approval.listen",
                    format!(
                        "{:?} is not an address like \"127.0.0.1:0\" (or \"off\")",
                        a.listen
                    ),
                )),
            }
        }
        let h = &self.http;
        if h.tls_cert.is_some() != h.tls_key.is_some() {
            problems.push(Problem::new(
                &file,
                "http.tls_cert",
                "tls_cert and tls_key go together (a PEM certificate chain and its key)",
            ));
        }
        if let Some(why) = h.refuse_listen(&h.listen) {
            problems.push(Problem::new(&file, "http.listen", why));
        }
        for (key, value, range) in [
            (
                "http.max_body_bytes",
                h.max_body_bytes as u64,
                1024..=16 * 1024 * 1024,
            ),
            ("http.max_sessions", h.max_sessions as u64, 1..=100_000),
            (
                "http.max_connections",
                h.max_connections as u64,
                1..=100_000,
            ),
            ("http.session_idle_secs", h.session_idle_secs, 1..=86_400),
            ("http.shutdown_grace_secs", h.shutdown_grace_secs, 0..=600),
        ] {
            if !range.contains(&value) {
                problems.push(Problem::new(
                    &file,
                    key,
                    format!("must be from {} to {}", range.start(), range.end()),
                ));
            }
        }
        for (i, host) in h.allowed_hosts.iter().enumerate() {
            if host.parse::<http::uri::Authority>().is_err() {
                problems.push(Problem::new(
                    &file,
                    format!("http.allowed_hosts[{i}]"),
                    format!("{host:?} is not a host name or host:port"),
                ));
            }
        }
        for (i, origin) in h.allowed_origins.iter().enumerate() {
            let uri = origin.parse::<http::Uri>();
            if !uri.is_ok_and(|u| u.scheme().is_some() && u.authority().is_some()) {
                problems.push(Problem::new(
                    &file,
                    format!("http.allowed_origins[{i}]"),
                    format!("{origin:?} is not an origin like \"https://app.example.com:443\""),
                ));
            }
        }
        for (i, a) in self.raw_assets.iter().enumerate() {
            if crate::pay::assets::chain_id(&a.network).is_none() {
                problems.push(Problem::new(
                    &file,
                    format!("assets[{i}].network"),
                    format!(
                        "{:?} is not an EVM network (eip155:<chain id> or an x402 v1 name)",
                        a.network
                    ),
                ));
            }
            if a.address.parse::<alloy::primitives::Address>().is_err() {
                problems.push(Problem::new(
                    &file,
                    format!("assets[{i}].address"),
                    "not an EVM address",
                ));
            }
            if a.decimals > 36 {
                problems.push(Problem::new(
                    &file,
                    format!("assets[{i}].decimals"),
                    "at most 36",
                ));
            }
        }
        if let Some(tempo) = &self.wallet.tempo {
            for (key, reason) in tempo.problems() {
                problems.push(Problem::new(&file, format!("wallet.tempo.{key}"), reason));
            }
        }
        if let Some(lightning) = &self.lightning {
            for (key, reason) in lightning.problems() {
                problems.push(Problem::new(&file, format!("lightning.{key}"), reason));
            }
        }
        if let Some(policy) = &self.policy_file
            && !policy.is_file()
        {
            problems.push(Problem::new(
                &file,
                "policy",
                format!("{} does not exist", policy.display()),
            ));
        }
        if !self.tools_dir.is_dir() {
            problems.push(Problem::new(
                &file,
                "tools_dir",
                format!("{} is not a directory", self.tools_dir.display()),
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Whether a PostgreSQL URL carries a password (`user:password@` or `password=`).
fn has_password(url: &str) -> bool {
    match url::Url::parse(url) {
        Ok(u) => u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password"),
        // Unreadable: reported as such; a `:...@` in it may still be a password.
        Err(_) => {
            url.contains('@')
                && url
                    .split('@')
                    .next()
                    .is_some_and(|a| a.matches(':').count() > 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_password_in_the_file_is_refused_naming_the_key_not_the_password() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tools")).unwrap();
        let path = dir.path().join("tollgate.toml");
        for url in [
            "postgres://books:hunter2@db.internal/ledger",
            "postgres://books@db.internal/ledger?password=hunter2",
        ] {
            std::fs::write(&path, format!("[ledger]\nurl = \"{url}\"\n")).unwrap();
            let err = Config::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("ledger.url"), "{err}");
            assert!(err.contains("PGPASSWORD"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        std::fs::write(
            &path,
            "[ledger]\nurl = \"postgres://books@db.internal:6543/ledger\"\npool_size = 3\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.ledger.pool_size, 3);
        assert!(!format!("{config:?}").contains("books@"), "{config:?}");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err =
            parse_toml::<ConfigFile>(Path::new("t.toml"), "[upstream]\ntimeout = 3\n").unwrap_err();
        assert_eq!(err.key, "upstream.timeout");
        assert!(
            err.reason.contains("unknown field `timeout`"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse_toml::<ConfigFile>(Path::new("t.toml"), "tools_dir = \"a\"\nx = [\n")
            .unwrap_err();
        assert!(err.key.starts_with("line "), "{err}");
    }
}
