//! The `tollgate` command: parses arguments and calls the library. stdout belongs to MCP when
//! serving; every log line goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use rmcp::ServiceExt as _;

use tollgate::budget::policy::Policy;
use tollgate::catalog::Catalog;
use tollgate::config::{Config, Problem};
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
    /// The delegated wallet.
    Wallet {
        #[command(subcommand)]
        command: WalletCommand,
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
        let payments = Payments::new(policy, config.assets.clone(), evm);
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
    let (_config, catalog, policy) = match load_and_compile(config) {
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
        "policy {}: at most {} per call",
        policy.source, policy.per_call
    );
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
