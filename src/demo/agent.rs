//! The scripted agent of `tollgate demo`: a real MCP client (rmcp) that spawns
//! `tollgate serve` over stdio, exactly as an MCP host does, and narrates what happens to the
//! money at every step.
//!
//! Owns: the script (tools and prices, `price_check`, a paid call, a refusal by the per-call
//! cap, `delegate_budget` to a sub-agent that spends until its budget refuses, an approval by
//! a person through `tollgate approve`, `tollgate budget`, `tollgate receipts`), the
//! narration, and the final check that the token contract's balances moved exactly as the
//! receipts say.
//!
//! Does not: pay, or reach into tollgate's payment code. Every payment goes through
//! `tollgate serve`, a separate process reading an ordinary config (see [`super::sandbox`]).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::RoleClient;
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use serde_json::{Map, Value, json};

use super::sandbox::Sandbox;

/// How long one MCP request of the script may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `tollgate` subcommand the script runs may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The sandbox did not start.
    #[error(transparent)]
    Sandbox(#[from] super::sandbox::SandboxError),
    /// `tollgate serve` could not be started.
    #[error("cannot start `tollgate serve` ({0})")]
    Spawn(String),
    /// An MCP request failed or timed out.
    #[error("the MCP session with tollgate failed during {step}: {reason}")]
    Mcp { step: String, reason: String },
    /// A `tollgate` subcommand failed.
    #[error("`tollgate {command}` failed: {reason}")]
    Command { command: String, reason: String },
    /// A balance could not be read.
    #[error("cannot read a balance from the token contract: {0}")]
    Chain(#[from] super::chain::ChainError),
    /// Something did not happen as scripted (a payment not refused, books not balanced).
    #[error("the demo did not go as scripted: {0}")]
    Unexpected(String),
    /// The demo directory could not be used.
    #[error("cannot use the demo directory {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
}

/// What the demo did, for the caller (and its tests).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Payments made (receipts received).
    pub payments: usize,
    /// Sum of the receipts' `amount_atomic`.
    pub receipts_atomic: u128,
    /// The buyer's balance fall, read from the token contract.
    pub buyer_paid_atomic: u128,
    /// The seller's balance rise, read from the token contract.
    pub seller_received_atomic: u128,
}

/// Runs the whole demo in `dir` (an empty directory it may fill), printing the narration on
/// stdout. `tollgate` is the binary to run as the server (normally the current executable).
pub async fn run(dir: &Path, tollgate: &Path) -> Result<Outcome, DemoError> {
    let started = Instant::now();
    say("tollgate demo: an AI agent pays for tools, under a budget, with SANDBOX money.");
    say("Everything runs on this machine: a paid API, a blockchain with Circle's USDC contract,");
    say(
        "and tollgate between the agent and the API. No real money moves; nothing leaves loopback.",
    );
    say("");

    heading("1. The sandbox");
    let sandbox = progress(
        "starting an EVM (revm) with Circle's USDC contract and a paid API",
        || async { Ok(Sandbox::start(dir, None).await?) },
    )
    .await?;
    let chain = sandbox.chain.clone();
    say(&format!(
        "   chain eip155:{} · USDC (sandbox) at {}",
        chain.chain_id(),
        chain.token()
    ));
    say(&format!("   paid API (x402 v2) at http://{}", sandbox.api));
    say(&format!(
        "   the agent's wallet {} holds {} USDC (sandbox); the seller {} holds {}",
        sandbox.buyer,
        usdc(chain.balance_of(sandbox.buyer)?),
        sandbox.seller,
        usdc(chain.balance_of(sandbox.seller)?)
    ));
    say(&format!("   config: {}", sandbox.config.display()));
    say("");

    heading("2. The agent connects to tollgate over MCP, as Claude Desktop would");
    say(&format!(
        "   $ tollgate serve --config {}   (stdio; the wallet key in TOLLGATE_EVM_KEY, never printed)",
        sandbox.config.display()
    ));
    let agent = progress(
        "starting tollgate serve and initializing the MCP session",
        || connect(tollgate, &sandbox, None, dir, "serve.log"),
    )
    .await?;
    let tools = agent
        .list_all_tools()
        .await
        .map_err(|e| mcp("tools/list", e))?;
    say(&format!(
        "   tools/list: {} tools. Their prices (price_check asks the API, pays nothing):",
        tools.len()
    ));
    for tool in tools.iter().filter(|t| t.name.starts_with("sandbox_")) {
        let mut args = Map::new();
        args.insert("tool".into(), Value::String(tool.name.to_string()));
        if tool.name == "sandbox_forecast" {
            args.insert("arguments".into(), json!({"city": "Paris"}));
        }
        if tool.name == "sandbox_summary" {
            args.insert("arguments".into(), json!({"topic": "stablecoins"}));
        }
        let priced = call(&agent, "price_check", args).await?;
        let structured = &priced["structuredContent"];
        let price = match structured["status"].as_str() {
            Some("free") => "free".to_owned(),
            _ => structured["offers"][0]["amount_usd"]
                .as_str()
                .map(|p| format!("{p} USD per call"))
                .unwrap_or_else(|| "unknown".to_owned()),
        };
        say(&format!("     {:<18} {}", tool.name, price));
    }
    say(
        "   tollgate's own tools: price_check, budget_status, list_receipts, delegate_budget, payment_status",
    );
    say("");

    let mut outcome = Outcome::default();
    let buyer_start = chain.balance_of(sandbox.buyer)?;
    let seller_start = chain.balance_of(sandbox.seller)?;

    heading("3. A paid call");
    say(
        "   the policy (policies/demo.toml): at most 0.10 USD per call, a person approves above 0.02 USD,",
    );
    say("   the agent's profile may spend 1 USD in total");
    paid_call(
        &agent,
        &sandbox,
        &mut outcome,
        "sandbox_quote",
        Map::new(),
        "the agent calls sandbox_quote",
    )
    .await?;
    say("");

    heading("4. A call the policy refuses");
    let before = chain.balance_of(sandbox.buyer)?;
    let refused = call(&agent, "sandbox_report", Map::new()).await?;
    if refused["isError"] != Value::Bool(true) {
        return Err(DemoError::Unexpected(format!(
            "sandbox_report (0.25 USD) was not refused by the 0.10 USD per-call cap: {refused}"
        )));
    }
    say("   the agent calls sandbox_report (0.25 USD); tollgate answers:");
    say(&format!("     \"{}\"", text_of(&refused)));
    say(&format!(
        "   money: nothing moved; the wallet still holds {} USDC (sandbox)",
        usdc(expect_same(before, chain.balance_of(sandbox.buyer)?)?)
    ));
    say("");

    heading("5. Delegation: a sub-agent gets a budget of its own");
    let delegated = call(
        &agent,
        "delegate_budget",
        obj(json!({"budget_usd_micros": 5000, "label": "researcher"})),
    )
    .await?;
    let token = delegated["structuredContent"]["token"]
        .as_str()
        .ok_or_else(|| {
            DemoError::Unexpected(format!("delegate_budget gave no token: {delegated}"))
        })?
        .to_owned();
    say(&format!(
        "   delegate_budget {{budget_usd_micros: 5000, label: \"researcher\"}} -> a credential of {} characters,",
        token.len()
    ));
    say(&format!(
        "   budget {} USD (its spending counts against the agent's own budget too)",
        delegated["structuredContent"]["effective"]["budget_usd"]
            .as_str()
            .unwrap_or("0.005")
    ));
    say("   the sub-agent runs its own tollgate with TOLLGATE_TOKEN=<that credential> and spends:");
    let sub = progress("starting the sub-agent's tollgate serve", || {
        connect(tollgate, &sandbox, Some(&token), dir, "serve-subagent.log")
    })
    .await?;
    let mut refused_by_budget = false;
    for city in ["Paris", "Lisbon", "Oslo", "Kyoto"] {
        let before = chain.balance_of(sandbox.buyer)?;
        let answer = call(&sub, "sandbox_forecast", obj(json!({"city": city}))).await?;
        if answer["isError"] == Value::Bool(true) {
            say(&format!(
                "     sandbox_forecast {city}: refused: \"{}\"",
                text_of(&answer)
            ));
            say(&format!(
                "     money: nothing moved (wallet {} USDC)",
                usdc(expect_same(before, chain.balance_of(sandbox.buyer)?)?)
            ));
            refused_by_budget = true;
            break;
        }
        let receipt = receipt_of(&answer)?;
        let after = chain.balance_of(sandbox.buyer)?;
        record(&mut outcome, &receipt, before, after)?;
        say(&format!(
            "     sandbox_forecast {city}: paid {} USD, tx {}; wallet {} -> {} USDC",
            receipt["amount_usd"].as_str().unwrap_or("?"),
            short(receipt["transaction"].as_str().unwrap_or("?")),
            usdc(before),
            usdc(after)
        ));
    }
    if !refused_by_budget {
        return Err(DemoError::Unexpected(
            "the sub-agent's budget never refused a call".into(),
        ));
    }
    let _ = sub.cancel().await;
    say("");

    heading("6. A payment above the approval threshold: a person decides");
    let args = obj(json!({"topic": "stablecoins"}));
    let asked = call(&agent, "sandbox_summary", args.clone()).await?;
    let id = asked["structuredContent"]["approval_id"]
        .as_str()
        .filter(|_| asked["structuredContent"]["status"] == "approval_required")
        .ok_or_else(|| {
            DemoError::Unexpected(format!(
                "sandbox_summary (0.05 USD) did not ask for approval: {asked}"
            ))
        })?
        .to_owned();
    say(&format!(
        "   the agent calls sandbox_summary (0.05 USD, above 0.02): approval_required, id {id}"
    ));
    say("   (this agent's MCP client declares no elicitation, so tollgate cannot ask in the chat;");
    say("   nothing is signed or paid while a person decides, and no MCP tool can approve)");
    say("   the person runs:");
    let config_arg = sandbox.config.display().to_string();
    say(&format!("   $ tollgate approve {id} --config {config_arg}"));
    let approved = run_tollgate(tollgate, &["approve", &id, "--config", &config_arg]).await?;
    indent(&approved);
    let mut retry = args;
    retry.insert("approval_id".into(), Value::String(id.clone()));
    paid_call(
        &agent,
        &sandbox,
        &mut outcome,
        "sandbox_summary",
        retry,
        "the agent calls sandbox_summary again with approval_id",
    )
    .await?;
    let _ = agent.cancel().await;
    say("");

    heading("7. What the owner sees");
    say(&format!("   $ tollgate budget --config {config_arg}"));
    indent(&run_tollgate(tollgate, &["budget", "--config", &config_arg]).await?);
    say(&format!("   $ tollgate receipts --config {config_arg}"));
    indent(&run_tollgate(tollgate, &["receipts", "--config", &config_arg]).await?);
    say("");

    outcome.buyer_paid_atomic = buyer_start.saturating_sub(chain.balance_of(sandbox.buyer)?);
    outcome.seller_received_atomic = chain
        .balance_of(sandbox.seller)?
        .saturating_sub(seller_start);
    heading("8. The books balance");
    say(&format!(
        "   receipts: {} payments, {} USDC ({} atomic units)",
        outcome.payments,
        usdc(outcome.receipts_atomic),
        outcome.receipts_atomic
    ));
    say(&format!(
        "   on chain (balanceOf on the USDC contract): the wallet paid {} atomic units, the seller received {}",
        outcome.buyer_paid_atomic, outcome.seller_received_atomic
    ));
    if outcome.buyer_paid_atomic != outcome.receipts_atomic
        || outcome.seller_received_atomic != outcome.receipts_atomic
    {
        return Err(DemoError::Unexpected(format!(
            "the chain and the receipts disagree: {outcome:?}"
        )));
    }
    say("   they agree.");
    say(&format!(
        "   (demo finished in {:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    say("");
    heading("Next: give your own assistant a wallet");
    say("   cargo build --release");
    say(
        "   target/release/tollgate wallet new            # an encrypted keystore; prints the address to fund",
    );
    say(
        "   target/release/tollgate demo --serve          # or try the sandbox in Claude Desktop first",
    );
    say(
        "   Claude Code:    claude mcp add tollgate -- /abs/path/target/release/tollgate serve --config /abs/path/tollgate.toml",
    );
    say("   Claude Desktop: add to claude_desktop_config.json:");
    say(
        "     {\"mcpServers\": {\"tollgate\": {\"command\": \"/abs/path/target/release/tollgate\",",
    );
    say("       \"args\": [\"serve\", \"--config\", \"/abs/path/tollgate.toml\"],");
    say("       \"env\": {\"TOLLGATE_EVM_KEYSTORE_PASSWORD\": \"...\"}}}}");
    say("   README.md has the five-minute path.");
    Ok(outcome)
}

/// One paid call narrated: balances before and after, the receipt, and the check that the
/// contract moved exactly the receipt's amount.
async fn paid_call(
    agent: &Agent,
    sandbox: &Sandbox,
    outcome: &mut Outcome,
    tool: &str,
    args: Map<String, Value>,
    what: &str,
) -> Result<(), DemoError> {
    let chain = &sandbox.chain;
    let before = chain.balance_of(sandbox.buyer)?;
    let seller_before = chain.balance_of(sandbox.seller)?;
    let answer = call(agent, tool, args).await?;
    let receipt = receipt_of(&answer)?;
    let after = chain.balance_of(sandbox.buyer)?;
    let seller_after = chain.balance_of(sandbox.seller)?;
    record(outcome, &receipt, before, after)?;
    say(&format!(
        "   {what}: tollgate got a 402, paid it, and returned the answer:"
    ));
    say(&format!(
        "     result: {}",
        answer["structuredContent"]["result"]
    ));
    say(&format!(
        "     receipt: {} USD ({} atomic units of USDC), {} v{} on {}, payee {}, tx {}{}",
        receipt["amount_usd"].as_str().unwrap_or("?"),
        receipt["amount_atomic"].as_str().unwrap_or("?"),
        receipt["protocol"].as_str().unwrap_or("?"),
        receipt["version"],
        receipt["network"].as_str().unwrap_or("?"),
        receipt["payee"].as_str().unwrap_or("?"),
        short(receipt["transaction"].as_str().unwrap_or("?")),
        if receipt["sandbox"] == Value::Bool(true) {
            ", sandbox: true"
        } else {
            ""
        }
    ));
    if let Some(approval) = receipt.get("approval") {
        let who = match approval["approved_by"].as_str() {
            Some("person") => format!(
                "a person ({}, {})",
                approval["channel"].as_str().unwrap_or("?"),
                approval["approval_id"].as_str().unwrap_or("?")
            ),
            Some(other) => format!("the {other}"),
            None => "?".to_owned(),
        };
        say(&format!(
            "     approved by: {who}: {}",
            approval["reason"].as_str().unwrap_or_default()
        ));
    }
    say(&format!(
        "   money: wallet {} -> {} USDC, seller {} -> {} USDC (sandbox; read from the token contract)",
        usdc(before),
        usdc(after),
        usdc(seller_before),
        usdc(seller_after)
    ));
    Ok(())
}

/// Adds a receipt to the totals, checking that the wallet fell by exactly its amount.
fn record(
    outcome: &mut Outcome,
    receipt: &Value,
    before: u128,
    after: u128,
) -> Result<(), DemoError> {
    let amount: u128 = receipt["amount_atomic"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            DemoError::Unexpected(format!("a receipt without amount_atomic: {receipt}"))
        })?;
    if before.checked_sub(after) != Some(amount) {
        return Err(DemoError::Unexpected(format!(
            "the receipt says {amount} atomic units, but the wallet went from {before} to {after}"
        )));
    }
    outcome.payments += 1;
    outcome.receipts_atomic += amount;
    Ok(())
}

type Agent = RunningService<RoleClient, ()>;

/// Spawns `tollgate serve` on the sandbox config and initializes an MCP session with it.
async fn connect(
    tollgate: &Path,
    sandbox: &Sandbox,
    token: Option<&str>,
    dir: &Path,
    log: &str,
) -> Result<Agent, DemoError> {
    let log_path = dir.join(log);
    let log = std::fs::File::create(&log_path).map_err(|e| DemoError::Dir {
        path: log_path.clone(),
        reason: e.to_string(),
    })?;
    let mut command = tokio::process::Command::new(tollgate);
    command
        .arg("serve")
        .arg("--config")
        .arg(&sandbox.config)
        .env("TOLLGATE_EVM_KEY", sandbox.buyer_key())
        .env("RUST_LOG", "tollgate=info,rmcp=warn")
        .env_remove("TOLLGATE_EVM_KEYSTORE_PASSWORD")
        // Sandbox payments go to the sandbox's own ledger, never a shared one.
        .env_remove(crate::config::LEDGER_URL_ENV)
        .kill_on_drop(true);
    match token {
        Some(token) => command.env("TOLLGATE_TOKEN", token),
        None => command.env_remove("TOLLGATE_TOKEN"),
    };
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| DemoError::Spawn(e.to_string()))?;
    tokio::time::timeout(REQUEST_TIMEOUT, ().serve(transport))
        .await
        .map_err(|_| DemoError::Mcp {
            step: "initialize".into(),
            reason: format!(
                "no answer in {} s (see {})",
                REQUEST_TIMEOUT.as_secs(),
                log_path.display()
            ),
        })?
        .map_err(|e| DemoError::Mcp {
            step: "initialize".into(),
            reason: format!("{e} (see {})", log_path.display()),
        })
}

/// `tools/call`, with a timeout; the result as JSON (`content`, `structuredContent`,
/// `isError`).
async fn call(agent: &Agent, tool: &str, args: Map<String, Value>) -> Result<Value, DemoError> {
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args);
    let result = tokio::time::timeout(REQUEST_TIMEOUT, agent.call_tool(params))
        .await
        .map_err(|_| DemoError::Mcp {
            step: format!("tools/call {tool}"),
            reason: format!("no answer in {} s", REQUEST_TIMEOUT.as_secs()),
        })?
        .map_err(|e| mcp(&format!("tools/call {tool}"), e))?;
    serde_json::to_value(&result).map_err(|e| DemoError::Mcp {
        step: format!("tools/call {tool}"),
        reason: e.to_string(),
    })
}

fn mcp(step: &str, e: impl std::fmt::Display) -> DemoError {
    DemoError::Mcp {
        step: step.to_owned(),
        reason: e.to_string(),
    }
}

/// Runs `tollgate <args>` and returns its stdout.
async fn run_tollgate(tollgate: &Path, args: &[&str]) -> Result<String, DemoError> {
    let command = args.first().copied().unwrap_or_default().to_owned();
    let output = tokio::time::timeout(
        COMMAND_TIMEOUT,
        tokio::process::Command::new(tollgate)
            .args(args)
            .env("RUST_LOG", "tollgate=warn")
            .env_remove(crate::config::LEDGER_URL_ENV)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| DemoError::Command {
        command: command.clone(),
        reason: format!("no answer in {} s", COMMAND_TIMEOUT.as_secs()),
    })?
    .map_err(|e| DemoError::Command {
        command: command.clone(),
        reason: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(DemoError::Command {
            command,
            reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn receipt_of(answer: &Value) -> Result<Value, DemoError> {
    match &answer["structuredContent"]["payment"] {
        Value::Object(receipt) if answer["isError"] != Value::Bool(true) => {
            Ok(Value::Object(receipt.clone()))
        }
        _ => Err(DemoError::Unexpected(format!(
            "expected a paid result with a receipt, got: {}",
            text_of(answer)
        ))),
    }
}

fn expect_same(before: u128, after: u128) -> Result<u128, DemoError> {
    if before == after {
        Ok(after)
    } else {
        Err(DemoError::Unexpected(format!(
            "a refused call moved money: {before} -> {after}"
        )))
    }
}

/// The first text block of a result.
fn text_of(answer: &Value) -> String {
    answer["content"]
        .as_array()
        .and_then(|blocks| blocks.iter().find_map(|b| b["text"].as_str()))
        .unwrap_or_default()
        .to_owned()
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Atomic units of a 6-decimal token as a decimal string (integers only).
fn usdc(atomic: u128) -> String {
    format!("{}.{:06}", atomic / 1_000_000, atomic % 1_000_000)
}

fn short(hash: &str) -> String {
    if hash.is_ascii() && hash.len() > 14 {
        format!("{}…{}", &hash[..10], &hash[hash.len() - 4..])
    } else {
        hash.to_owned()
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

fn heading(title: &str) {
    say(&format!("== {title}"));
}

fn indent(text: &str) {
    for line in text.lines() {
        say(&format!("     {line}"));
    }
}

/// Runs a step that takes a moment, showing what it is and then how long it took.
async fn progress<T, F, Fut>(what: &str, step: F) -> Result<T, DemoError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, DemoError>>,
{
    let started = Instant::now();
    {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "   {what} ... ");
        let _ = out.flush();
    }
    let result = step().await;
    match &result {
        Ok(_) => say(&format!("done ({} ms)", started.elapsed().as_millis())),
        Err(_) => say("failed"),
    }
    result
}
