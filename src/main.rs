//! The `tollgate` command: parses arguments and calls the library. stdout belongs to MCP when
//! serving; every log line goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use rmcp::ServiceExt as _;

use tollgate::budget::caveat::{Caveat, Restrictions};
use tollgate::budget::credential::{Credential, CredentialError, RootKey};
use tollgate::budget::macaroon::Macaroon;
use tollgate::budget::policy::Policy;
use tollgate::catalog::Catalog;
use tollgate::config::{Config, Problem};
use tollgate::ledger::Ledger;
use tollgate::money::UsdMicros;
use tollgate::server::{Payments, Tollgate};
use tollgate::upstream::Upstream;
use tollgate::wallet::EvmWallet;

/// An MCP server that lets AI agents pay for tools.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr (the level comes from RUST_LOG, default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve MCP over stdio (what an MCP host such as Claude Desktop runs).
    Serve {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check the config, the policy and every tool definition; print the tools; exit 1 on any
    /// problem.
    Check {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Create the state directory and the root key credentials are minted under (mode 0600).
    Init {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Credentials: mint, attenuate, inspect.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List receipts of paid calls, newest first.
    Receipts {
        /// Only receipts at or after this time (unix seconds).
        #[arg(long, value_name = "UNIX_SECONDS")]
        since: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReceiptFormat::Table)]
        format: ReceiptFormat,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The tree of budgets: every credential budget seen, with spent, held and remaining,
    /// children under their parents; and the policy's caps.
    Budget {
        /// Output format.
        #[arg(long, value_enum, default_value_t = BudgetFormat::Table)]
        format: BudgetFormat,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Approve a payment that waits for a person (the agent then calls the tool again with
    /// the approval_id). Shows what is approved.
    Approve {
        /// The approval id (`ap_…`) from the tool's `approval_required` result.
        id: String,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Settle payments whose outcome is unknown (a process was killed mid-call) against the
    /// chain: commit the used ones with a receipt, release the expired unused ones.
    Reconcile {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Deny a payment that waits for a person. A denied approval stays denied.
    Deny {
        /// The approval id (`ap_…`).
        id: String,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// List payments waiting for a person's approval.
    Approvals {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The delegated wallet.
    Wallet {
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// See tollgate at work in a few seconds, offline, with SANDBOX money: an in-process
    /// chain running Circle's USDC contract, a paid x402 API, and a scripted agent driving
    /// `tollgate serve` over MCP.
    Demo {
        /// Serve the sandbox's tools over MCP on stdio instead (for Claude Desktop and other
        /// hosts): the same sandbox, and `tollgate serve` on this process's stdin/stdout.
        #[arg(long)]
        serve: bool,
        /// Keep the sandbox's config, ledger and logs in this directory [default: a fresh
        /// temporary directory, removed after a successful run without --serve].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BudgetFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReceiptFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a root credential (needs the root key) and print it.
    Mint {
        /// A caveat, e.g. "budget_usd_micros <= 1000000" (repeat for more).
        #[arg(long = "caveat", value_name = "CAVEAT")]
        caveats: Vec<String>,
        /// Start from a profile of the policy (its caveats and lifetime); --caveat narrows it.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Lifetime, e.g. "30m", "12h", "7d" (adds an `expires` caveat).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Narrow a credential with more caveats and print the child (needs no root key and no
    /// server).
    Attenuate {
        /// The parent credential (base64url).
        token: String,
        /// A caveat to append (repeat for more).
        #[arg(long = "caveat", value_name = "CAVEAT", required = true)]
        caveats: Vec<String>,
    },
    /// Show a credential's caveats and effective limits (never its signature).
    Inspect {
        /// The credential (base64url).
        token: String,
    },
    /// Revoke a credential and every credential attenuated from it (needs the root key).
    Revoke {
        /// The credential (base64url).
        token: String,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum WalletCommand {
    /// Print the EVM address tollgate pays from (never the key).
    Address {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Make a new EVM key in an encrypted keystore, set [wallet] evm_keystore in the config,
    /// and print the address to fund (never the key).
    New {
        /// Read the password from the first line of this file instead of a prompt (it is
        /// also written to [wallet] evm_keystore_password_file).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Config file to set [wallet] evm_keystore in, created if missing [default:
        /// ./tollgate.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// What the wallet holds of each configured asset, read on chain through [rpc].
    Balance {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let outcome = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => return check(config),
        Command::Wallet {
            command: WalletCommand::Address { config },
        } => wallet_address(config),
        Command::Wallet {
            command:
                WalletCommand::New {
                    password_file,
                    config,
                },
        } => wallet_new(config, password_file),
        Command::Wallet {
            command: WalletCommand::Balance { config },
        } => wallet_balance(config),
        Command::Demo { serve: true, dir } => demo_serve(dir),
        Command::Demo { serve: false, dir } => demo(dir),
        Command::Init { config } => init(config),
        Command::Token { command } => token(command),
        Command::Receipts {
            since,
            format,
            config,
        } => receipts(config, since, format),
        Command::Budget { format, config } => budget(config, format),
        Command::Reconcile { config } => reconcile(config),
        Command::Approve { id, config } => decide(config, &id, true),
        Command::Deny { id, config } => decide(config, &id, false),
        Command::Approvals { config } => approvals(config),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tollgate=info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the config, the catalog and the policy, or every problem found.
fn load(config: Option<PathBuf>) -> Result<(Config, Catalog, Policy), Vec<Problem>> {
    let config = Config::load(config.as_deref()).map_err(|e| e.0)?;
    let catalog = Catalog::load_dir(&config.tools_dir, &config.upstream);
    let policy = config.load_policy();
    match (catalog, policy) {
        (Ok(catalog), Ok(policy)) => Ok((config, catalog, policy)),
        (catalog, policy) => {
            let mut problems = catalog.err().unwrap_or_default();
            problems.extend(policy.err().unwrap_or_default());
            Err(problems)
        }
    }
}

/// `check` goes further than `serve` at start: it compiles every schema.
fn load_and_compile(config: Option<PathBuf>) -> Result<(Config, Catalog, Policy), Vec<Problem>> {
    let (config, catalog, policy) = load(config)?;
    let problems = catalog.compile_all();
    if problems.is_empty() {
        Ok((config, catalog, policy))
    } else {
        Err(problems)
    }
}

fn init(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let created = RootKey::create(&config.state_dir)?;
    let path = config
        .state_dir
        .join(tollgate::budget::credential::ROOT_KEY_FILE);
    if created {
        println!("created the root key {} (mode 0600)", path.display());
    } else {
        println!(
            "the root key {} already exists; left as it is",
            path.display()
        );
    }
    Ok(())
}

fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Mint {
            caveats: extra,
            profile,
            expires_in,
            config,
        } => {
            let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut caveats = Vec::new();
            let mut lifetime = None;
            if let Some(name) = &profile {
                let policy = config.load_policy().map_err(|problems| {
                    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!("the policy has problems:\n{}", lines.join("\n"))
                })?;
                let Some(p) = policy.profile(name) else {
                    let known: Vec<&str> = policy.profiles.keys().map(String::as_str).collect();
                    anyhow::bail!(
                        "the policy {} has no profile {name:?} (it has: {})",
                        policy.source,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    );
                };
                caveats.extend(p.caveats.iter().cloned());
                lifetime = p.lifetime_secs;
            }
            if let Some(text) = &expires_in {
                lifetime = Some(
                    tollgate::budget::policy::parse_duration(text)
                        .map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?,
                );
            }
            if let Some(secs) = lifetime {
                caveats.push(format!(
                    "expires < {}",
                    tollgate::money::now_unix().saturating_add(secs)
                ));
            }
            caveats.extend(extra);
            for caveat in &caveats {
                Caveat::parse(caveat).with_context(|| format!("caveat {caveat:?}"))?;
            }
            let root = RootKey::load(&config.state_dir)?;
            println!("{}", root.mint(&caveats)?.to_base64url());
        }
        TokenCommand::Attenuate { token, caveats } => {
            let mut token = Macaroon::from_base64url(token.trim()).context("the parent token")?;
            for caveat in &caveats {
                Caveat::parse(caveat).with_context(|| format!("caveat {caveat:?}"))?;
                token.add_caveat(caveat.as_bytes())?;
            }
            println!("{}", token.to_base64url());
        }
        TokenCommand::Revoke { token, config } => {
            let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let root = RootKey::load(&config.state_dir)?;
            let credential = Credential::verify(&token, &root, 0)?;
            let ledger = Ledger::open(&config.state_dir)?;
            ledger.revoke(credential.id(), tollgate::money::now_unix())?;
            println!(
                "revoked {} and every credential attenuated from it",
                credential.token.fingerprint()
            );
        }
        TokenCommand::Inspect { token } => {
            let token = Macaroon::from_base64url(token.trim()).context("the token")?;
            println!("location:   {}", token.location().unwrap_or("(none)"));
            println!(
                "id:         {}",
                String::from_utf8_lossy(token.identifier())
            );
            println!(
                "signature:  {} (fingerprint; the signature is never shown)",
                token.fingerprint()
            );
            for (i, caveat) in token.caveats().iter().enumerate() {
                let text = String::from_utf8_lossy(caveat);
                match Caveat::from_bytes(caveat) {
                    Ok(_) => println!("caveat {i}:   {text}"),
                    Err(e) => println!("caveat {i}:   {text}   <- invalid: {e}"),
                }
            }
            match Restrictions::parse(token.caveats()) {
                Ok(r) => {
                    let show =
                        |v: Option<UsdMicros>| v.map_or("none".to_owned(), |u| u.to_string());
                    println!(
                        "effective:  max per call {}, approve above {}, expires {}",
                        show(r.max_per_call()),
                        show(r.approve_above()),
                        r.expires_before_unix_secs()
                            .map_or("never".to_owned(), tollgate::money::rfc3339)
                    );
                    for b in r.budgets() {
                        println!("budget:     {} (caveat {})", b.limit, b.position);
                    }
                }
                Err(e) => println!("refused:    {e}"),
            }
        }
    }
    Ok(())
}

fn receipts(
    config: Option<PathBuf>,
    since: Option<u64>,
    format: ReceiptFormat,
) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = Ledger::open(&config.state_dir)?;
    let rows = ledger.all_receipts(since, 100_000)?;
    let receipts: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.json).ok())
        .collect();
    let field = |r: &serde_json::Value, k: &str| {
        let text = match &r[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        // Test money is labelled wherever it is shown (`[[assets]] sandbox = true`).
        if k == "asset_symbol" && r["sandbox"] == serde_json::Value::Bool(true) {
            format!("{text} (sandbox)")
        } else {
            text
        }
    };
    let columns = [
        "at",
        "receipt_id",
        "protocol",
        "network",
        "amount_usd",
        "asset_symbol",
        "payee",
        "transaction",
    ];
    match format {
        ReceiptFormat::Json => println!("{}", serde_json::to_string_pretty(&receipts)?),
        ReceiptFormat::Csv => {
            println!("{}", columns.join(","));
            for r in &receipts {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| field(r, c).replace(',', " "))
                    .collect();
                println!("{}", cells.join(","));
            }
        }
        ReceiptFormat::Table => {
            let rows: Vec<[String; 8]> = receipts
                .iter()
                .map(|r| columns.map(|c| field(r, c)))
                .collect();
            print_table(
                columns
                    .map(str::to_ascii_uppercase)
                    .each_ref()
                    .map(String::as_str),
                &rows,
            );
            println!("{} receipt(s)", rows.len());
        }
    }
    Ok(())
}

fn budget(config: Option<PathBuf>, format: BudgetFormat) -> anyhow::Result<()> {
    use tollgate::ledger::Cap;
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let policy = config.load_policy().map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the policy has problems:\n{}", lines.join("\n"))
    })?;
    let ledger = Ledger::open(&config.state_dir)?;
    let now = tollgate::money::now_unix();
    let mut caps = Vec::new();
    if let Some(day) = policy.per_day {
        caps.push(Cap::rolling("policy:per_day", day.0, 86_400));
    }
    if let Some(total) = policy.total {
        caps.push(Cap::lifetime("policy:total", total.0));
    }
    let policy_caps = ledger.status(&caps, now)?;
    let tree = ledger.budget_tree()?;
    let depth = |row: &tollgate::ledger::BudgetRow| {
        let mut depth = 0;
        let mut parent = row.parent.as_deref();
        while let Some(p) = parent {
            depth += 1;
            parent = tree
                .iter()
                .find(|r| r.key == p)
                .and_then(|r| r.parent.as_deref());
            if depth > 64 {
                break;
            }
        }
        depth
    };
    let usd = |m: u64| UsdMicros(m).decimal();
    let remaining = |r: &tollgate::ledger::BudgetRow| {
        r.limit_usd_micros
            .saturating_sub(r.spent_usd_micros.saturating_add(r.reserved_usd_micros))
    };
    // A budget's key is derived from a signature: show only its start, as an id.
    let short = |key: &str| {
        key.trim_start_matches("budget:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    match format {
        BudgetFormat::Json => {
            let value = serde_json::json!({
                "policy": {
                    "source": policy.source,
                    "per_call_usd": policy.per_call.decimal(),
                    "caps": policy_caps.iter().map(|c| serde_json::json!({
                        "cap": c.key, "limit_usd": usd(c.limit_usd_micros),
                        "spent_usd": usd(c.spent_usd_micros),
                        "reserved_usd": usd(c.reserved_usd_micros),
                        "remaining_usd": usd(c.remaining_usd_micros),
                    })).collect::<Vec<_>>(),
                },
                "budgets": tree.iter().map(|r| serde_json::json!({
                    "id": short(&r.key),
                    "parent": r.parent.as_deref().map(short),
                    "depth": depth(r),
                    "label": r.label,
                    "limit_usd": usd(r.limit_usd_micros),
                    "spent_usd": usd(r.spent_usd_micros),
                    "reserved_usd": usd(r.reserved_usd_micros),
                    "remaining_usd": usd(remaining(r)),
                    "first_seen": tollgate::money::rfc3339(r.first_seen),
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        BudgetFormat::Table => {
            println!(
                "policy {}: at most {} per call",
                policy.source, policy.per_call
            );
            for c in &policy_caps {
                println!(
                    "  {}: limit {}, spent {}, held {}, remaining {}",
                    match c.key.as_str() {
                        "policy:per_day" => "per day (rolling 24 h)",
                        _ => "total",
                    },
                    usd(c.limit_usd_micros),
                    usd(c.spent_usd_micros),
                    usd(c.reserved_usd_micros),
                    usd(c.remaining_usd_micros)
                );
            }
            let rows: Vec<[String; 6]> = tree
                .iter()
                .map(|r| {
                    let name = r.label.clone().unwrap_or_else(|| "(no label)".to_owned());
                    [
                        format!("{}{} {}", "  ".repeat(depth(r)), name, short(&r.key)),
                        usd(r.limit_usd_micros),
                        usd(r.spent_usd_micros),
                        usd(r.reserved_usd_micros),
                        usd(remaining(r)),
                        tollgate::money::rfc3339(r.first_seen),
                    ]
                })
                .collect();
            println!();
            print_table(
                [
                    "BUDGET",
                    "LIMIT USD",
                    "SPENT",
                    "HELD",
                    "REMAINING",
                    "FIRST USED",
                ],
                &rows,
            );
            println!(
                "{} budget(s); a child's spend also counts in every budget above it",
                rows.len()
            );
        }
    }
    Ok(())
}

fn log_reconciled(
    outcome: Result<tollgate::reconcile::Report, tollgate::ledger::LedgerError>,
) -> Option<tollgate::reconcile::Report> {
    match outcome {
        Ok(report) => {
            tracing::info!(
                settled = report.settled,
                released = report.released,
                pending = report.pending,
                unsent = report.unsent,
                unchecked = report.unchecked.len(),
                "reconciled payments from earlier runs"
            );
            for why in &report.unchecked {
                tracing::warn!("a payment stays reserved: {why}");
            }
            Some(report)
        }
        Err(e) => {
            tracing::error!(error = %e, "could not reconcile payments from earlier runs");
            None
        }
    }
}

fn reconcile(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = Ledger::open(&config.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime
        .block_on(tollgate::reconcile::reconcile(
            &ledger,
            &config.rpc,
            tollgate::money::now_unix(),
        ))
        .context("reconciling")?;
    // Lightning payments: asked of the configured backend.
    if let Some(c) = &config.lightning {
        match tollgate::lightning::Lightning::open(c) {
            Ok(lightning) => {
                let lines = runtime.block_on(tollgate::server::l402::reconcile(
                    &ledger,
                    &lightning,
                    tollgate::money::now_unix(),
                ));
                for line in lines {
                    println!("Lightning: {line}");
                }
            }
            Err(e) => println!("Lightning payments not checked: {e}"),
        }
    }
    println!(
        "{} settled (receipt written), {} released (provably unpaid), {} still pending \
         (valid and unused: a retry re-sends it), {} reserved but never sent (released after \
         {} s), {} not checkable",
        report.settled,
        report.released,
        report.pending,
        report.unsent,
        tollgate::reconcile::STALE_RESERVED_SECS,
        report.unchecked.len()
    );
    for why in &report.unchecked {
        println!("  not checkable: {why}");
    }
    Ok(())
}

/// `tollgate approve|deny <id>`: a person's decision, recorded in the shared ledger.
fn decide(config: Option<PathBuf>, id: &str, approve: bool) -> anyhow::Result<()> {
    use tollgate::ledger::Decided;
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !tollgate::approval::is_id(id) {
        anyhow::bail!("{id:?} is not an approval id (ap_ followed by 32 hex digits)");
    }
    let ledger = Ledger::open(&config.state_dir)?;
    let verb = if approve { "approved" } else { "denied" };
    match ledger.decide_approval(id, approve, "cli", tollgate::money::now_unix())? {
        Decided::Done(a) => {
            print_approval(&a);
            println!("{verb}: {}", a.id);
            Ok(())
        }
        Decided::Final(a) => {
            print_approval(&a);
            anyhow::bail!("nothing changed: approval {} is already {}", a.id, a.state)
        }
        Decided::NotFound => anyhow::bail!("no approval {id} in {}", ledger.path().display()),
    }
}

fn approvals(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = Ledger::open(&config.state_dir)?;
    let pending = ledger.pending_approvals(tollgate::money::now_unix())?;
    for a in &pending {
        print_approval(a);
        println!();
    }
    println!("{} approval(s) waiting for a person", pending.len());
    Ok(())
}

fn print_approval(a: &tollgate::ledger::Approval) {
    println!("approval:   {} ({})", a.id, a.state);
    match serde_json::from_str::<tollgate::approval::Facts>(&a.facts_json) {
        Ok(f) => {
            println!("tool:       {}", f.tool);
            println!(
                "amount:     {} = {}",
                UsdMicros(f.amount_usd_micros),
                f.amount_in_asset
            );
            println!("payee:      {}", f.payee);
            println!("protocol:   {} on {}", f.protocol, f.network);
            println!(
                "budget:     {}",
                f.budget_left_usd_micros
                    .map_or("no cap applies".to_owned(), |l| format!(
                        "{} left after paying",
                        UsdMicros(l)
                    ))
            );
            println!("why:        {}", f.reason);
            println!(
                "arguments:  {}",
                serde_json::Value::Object(f.arguments.clone())
            );
        }
        Err(_) => println!(
            "tool:       {} ({})",
            a.tool,
            UsdMicros(a.amount_usd_micros)
        ),
    }
    println!("expires:    {}", tollgate::money::rfc3339(a.expires_at));
}

fn wallet_address(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    match EvmWallet::open(&config.wallet)? {
        Some(wallet) => println!("{}", wallet.address()),
        None => anyhow::bail!(
            "no EVM wallet is configured: set {} or wallet.evm_keystore in the config",
            tollgate::wallet::EVM_KEY_ENV
        ),
    }
    Ok(())
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, catalog, policy) = load(config).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the configuration has problems:\n{}", lines.join("\n"))
    })?;
    for warning in &catalog.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let catalog = Arc::new(catalog);
        let upstream = Upstream::new(&config.upstream);
        // Loading root certificates takes tens of milliseconds of CPU: do it after the host's
        // first requests (initialize, tools/list) have been answered, not before or beside
        // them. A call that comes sooner builds the client itself. Schemas were
        // meta-validated at load; each compiles on its tool's first call.
        let warm_upstream = upstream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let built = tokio::task::spawn_blocking(move || warm_upstream.warm()).await;
            if let Ok(Err(e)) = built {
                tracing::error!("{e}");
            }
        });
        tracing::info!(tools = catalog.len(), "serving MCP on stdio");
        let evm = EvmWallet::open(&config.wallet).context("cannot open the EVM wallet")?;
        match &evm {
            Some(wallet) => tracing::info!(address = %wallet.address(), "EVM wallet ready"),
            None => tracing::info!("no EVM wallet configured; paid tools will not pay"),
        }
        let ledger = Arc::new(Ledger::open(&config.state_dir).context("cannot open the ledger")?);
        let lightning = match &config.lightning {
            Some(c) => {
                let lightning = tollgate::lightning::Lightning::open(c)?;
                tracing::info!(backend = lightning.backend.name(), network = %lightning.network, "Lightning backend ready");
                // Lightning payments an earlier run left pending: ask the backend, settle them,
                // in the background (a slow backend must not delay the host's first requests).
                let (ledger, backend) = (ledger.clone(), lightning.clone());
                tokio::spawn(async move {
                    let now = tollgate::money::now_unix();
                    for line in tollgate::server::l402::reconcile(&ledger, &backend, now).await {
                        tracing::warn!("pending Lightning payment: {line}");
                    }
                });
                Some(lightning)
            }
            None => None,
        };
        // Payments whose outcome was unknown when a process stopped stay reserved (they count
        // against every cap) until the chain says whether they happened.
        let open = ledger.pending().context("cannot read pending payments")?;
        if !open.is_empty() {
            tracing::warn!(
                count = open.len(),
                "payments from an earlier run have no known outcome; they stay reserved until \
                 reconciled (a retry of the same call re-sends the same proof)"
            );
            let (ledger, rpc) = (ledger.clone(), config.rpc.clone());
            tokio::spawn(async move {
                // After the host's first requests, like the HTTP client's warm-up.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                log_reconciled(
                    tollgate::reconcile::reconcile(&ledger, &rpc, tollgate::money::now_unix())
                        .await,
                );
            });
        }
        let tempo =
            tollgate::wallet::tempo::TempoWallet::open(config.wallet.tempo.as_ref(), evm.as_ref())
                .context("cannot open the Tempo wallet")?;
        if let Some(wallet) = &tempo {
            tracing::info!(?wallet, "Tempo wallet ready (MPP)");
        }
        let mut payments = Payments::new(policy, config.assets.clone(), evm, ledger);
        payments.lightning = lightning;
        payments.tempo = tempo;
        payments.root = match RootKey::load(&config.state_dir) {
            Ok(root) => Some(root),
            Err(CredentialError::NoRootKey(_)) => None,
            Err(e) => return Err(e.into()),
        };
        payments.env_token = std::env::var("TOLLGATE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        payments
            .use_default_profile()
            .map_err(|e| anyhow::anyhow!(e))?;
        let secret = match tollgate::approval::Secret::load_or_create(&config.state_dir) {
            Ok(secret) => Some(secret),
            Err(e) => {
                tracing::error!(error = %e, "no approval secret: payments that need a person's approval will be refused");
                None
            }
        };
        payments.approval.elicitation_timeout_secs = config.approval.elicitation_timeout_secs;
        payments.approval.expires_after_secs = config.approval.expires_after_secs;
        if let (Some(secret), false) = (&secret, config.approval.listen == "off") {
            let listener = tollgate::approval::page::bind(&config.approval.listen)
                .await
                .context("cannot serve the approval page ([approval] listen)")?;
            let addr = listener.local_addr().context("the approval page's address")?;
            // stderr only: stdout carries MCP frames.
            eprintln!("tollgate: approval page on http://{addr}/");
            tracing::info!(%addr, "serving the approval page");
            payments.approval.page = Some(addr);
            tokio::spawn(tollgate::approval::page::serve(
                listener,
                payments.ledger.clone(),
                secret.clone(),
            ));
        }
        payments.approval.secret = secret;
        let server = Tollgate::new(catalog, upstream, payments);
        let running = server
            .serve(rmcp::transport::stdio_pipes())
            .await
            .context("the MCP session did not start")?;
        running
            .waiting()
            .await
            .context("the MCP session ended with an error")?;
        tracing::info!("stdin closed; exiting");
        Ok(())
    })
}

fn check(config: Option<PathBuf>) -> ExitCode {
    let (config, catalog, policy) = match load_and_compile(config) {
        Ok(loaded) => loaded,
        Err(problems) => {
            for problem in &problems {
                println!("error: {problem}");
            }
            println!("{} problem(s) found", problems.len());
            return ExitCode::FAILURE;
        }
    };
    let rows: Vec<[String; 4]> = catalog
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.method.to_string(),
                t.host(),
                t.max_price
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "free".to_owned()),
            ]
        })
        .collect();
    print_table(["TOOL", "METHOD", "HOST", "MAX PRICE"], &rows);
    for warning in &catalog.warnings {
        println!("warning: {warning}");
    }
    println!(
        "policy {}: at most {} per call{}",
        policy.source,
        policy.per_call,
        policy
            .approve_above
            .map(|a| format!(", a person approves above {a}"))
            .unwrap_or_default()
    );
    for (name, profile) in &policy.profiles {
        let default = if policy.default_profile.as_deref() == Some(name.as_str()) {
            " (default: callers without a credential)"
        } else {
            ""
        };
        println!("  profile {name}{default}: {}", profile.caveats.join("; "));
    }
    // Every other policy file in policies_dir, so a switch to one of them cannot surprise.
    let mut other_problems = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&config.policies_dir) {
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .filter(|p| p.display().to_string() != policy.source)
            .collect();
        paths.sort();
        for path in paths {
            if let Err(problems) = Policy::load(&path) {
                other_problems.extend(problems);
            }
        }
    }
    for problem in &other_problems {
        println!("error: {problem}");
    }
    if !other_problems.is_empty() {
        println!("{} problem(s) found", other_problems.len());
        return ExitCode::FAILURE;
    }
    println!("{} tool(s) OK", catalog.len());
    ExitCode::SUCCESS
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
}

/// `tollgate demo`: the sandbox and the narrated agent, in a directory of its own.
fn demo(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (dir, temporary) = demo_dir(dir)?;
    let tollgate = std::env::current_exe().context("cannot find the tollgate binary to run")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(tollgate::demo::agent::run(&dir, &tollgate));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(_) if temporary => {
            // The sandbox's chain lived in this process: its ledger means nothing now.
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Ok(_) => {
            println!(
                "(the sandbox's config, ledger and logs stay in {})",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "{e}\n(the sandbox's config, ledger and logs are in {})",
            dir.display()
        )),
    }
}

/// `tollgate demo --serve`: the sandbox on a thread of its own, and `tollgate serve` on this
/// process's stdio (stdout carries MCP frames only; the notes go to stderr).
fn demo_serve(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (dir, _) = demo_dir(dir)?;
    let key = tollgate::demo::new_buyer_key();
    // SAFETY: only this thread exists (logging spawns none); the sandbox's thread and
    // serve's runtime are started after this. `serve` reads the key from the environment,
    // as it does for every host.
    unsafe { std::env::set_var(tollgate::wallet::EVM_KEY_ENV, &key) };
    let sandbox = tollgate::demo::start_in_background(&dir, key).map_err(|e| anyhow::anyhow!(e))?;
    eprintln!(
        "tollgate demo --serve: SANDBOX money only. A paid x402 API at http://{} settled on an \
         in-process chain (USDC {}); the wallet {} holds 10 sandbox USDC. Config and ledger in {}.",
        sandbox.api,
        sandbox.token,
        sandbox.buyer,
        dir.display()
    );
    serve(Some(sandbox.config))
}

/// The directory of a demo run: the one given (created if needed), else a fresh temporary
/// one (`true`).
fn demo_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, bool)> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            if dir.join("state").exists() {
                anyhow::bail!(
                    "{} holds an earlier demo's state; give an empty directory (the sandbox \
                     chain starts fresh every time)",
                    dir.display()
                );
            }
            Ok((dir, false))
        }
        None => Ok((
            tollgate::demo::temp_dir().map_err(|e| anyhow::anyhow!(e))?,
            true,
        )),
    }
}

/// `tollgate wallet new`: a new key in an encrypted keystore; prints only the address.
fn wallet_new(config: Option<PathBuf>, password_file: Option<PathBuf>) -> anyhow::Result<()> {
    use tollgate::wallet::create;
    let path = config.unwrap_or_else(|| PathBuf::from(tollgate::config::DEFAULT_CONFIG_FILE));
    let password = match &password_file {
        Some(file) => create::read_password_file(file)?,
        None => {
            let first = rpassword::prompt_password("Password for the new keystore: ")
                .context("cannot read a password from the terminal (use --password-file)")?;
            let again = rpassword::prompt_password("The same password again: ")
                .context("cannot read a password from the terminal (use --password-file)")?;
            if first != again {
                anyhow::bail!("the two passwords differ; nothing was written");
            }
            first
        }
    };
    let made = create::create(&path, &password, password_file.as_deref())?;
    println!(
        "created {} (encrypted; Web3 Secret Storage)",
        made.keystore.display()
    );
    println!(
        "{} {}: [wallet] evm_keystore",
        if made.config_created {
            "wrote"
        } else {
            "updated"
        },
        made.config.display()
    );
    println!("address to fund: {}", made.address);
    match Config::load(Some(&made.config)) {
        Ok(config) => match config.load_policy() {
            Ok(policy) => print_fundable(&config, &policy),
            Err(problems) => {
                for p in problems {
                    println!("warning: {p}");
                }
            }
        },
        Err(e) => println!("warning: {e}"),
    }
    if password_file.is_none() {
        println!(
            "tollgate serve needs the password: set {} in the MCP host's env, or \
             [wallet] evm_keystore_password_file",
            tollgate::wallet::KEYSTORE_PASSWORD_ENV
        );
    }
    Ok(())
}

/// Which assets on which networks the policy lets tollgate pay with.
fn print_fundable(config: &Config, policy: &Policy) {
    use tollgate::budget::policy::Allow;
    let allowed = |allow: &Allow, item: &str| match allow {
        Allow::Any => true,
        Allow::Only(items) => items.iter().any(|i| i.eq_ignore_ascii_case(item)),
    };
    println!("the policy ({}) pays with:", policy.source);
    let mut any = false;
    for asset in &config.assets {
        let network = format!("eip155:{}", asset.chain_id);
        if asset.chain_id != 0
            && allowed(&policy.networks, &network)
            && allowed(&policy.assets, &asset.symbol)
        {
            any = true;
            println!(
                "  {} on {network} ({}){}",
                asset.symbol,
                asset.address,
                if asset.sandbox { ", sandbox" } else { "" }
            );
        }
    }
    if !any {
        println!(
            "  nothing yet: allow a network and an asset in the policy ([allow] networks, assets)"
        );
    }
}

/// `tollgate wallet balance`: each configured asset's balance, read on chain.
fn wallet_balance(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wallet = EvmWallet::open(&config.wallet)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no wallet configured: run `tollgate wallet new`, or set {} ",
            tollgate::wallet::EVM_KEY_ENV
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (held, unchecked) = runtime.block_on(tollgate::wallet::balance::balances(
        wallet.address(),
        &config.assets,
        &config.rpc,
    ));
    println!("address: {}", wallet.address());
    let rows: Vec<[String; 4]> = held
        .iter()
        .map(|h| {
            [
                h.network.clone(),
                format!("{}{}", h.symbol, if h.sandbox { " (sandbox)" } else { "" }),
                h.shown(),
                h.asset.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no asset checked: add a JSON-RPC endpoint per network under [rpc] in the config");
    } else {
        print_table(["NETWORK", "ASSET", "BALANCE", "CONTRACT"], &rows);
    }
    if !unchecked.is_empty() {
        let mut networks: Vec<String> = unchecked
            .iter()
            .map(|a| format!("eip155:{}", a.chain_id))
            .collect();
        networks.dedup();
        println!("not checked (no [rpc] endpoint): {}", networks.join(", "));
    }
    if held.iter().any(|h| h.balance.is_err()) {
        anyhow::bail!("some balances could not be read (see above)");
    }
    Ok(())
}
