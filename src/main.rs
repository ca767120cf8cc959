//! The `tollgate` command: parses arguments and dispatches to `cli/` (one file per command
//! group), which calls the library. stdout belongs to MCP when serving; every log line goes to
//! stderr.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use cli::books::{BudgetFormat, ReceiptFormat};
use cli::ledger::LedgerCommand;
use cli::token::TokenCommand;
use cli::wallet::WalletCommand;

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
    /// Serve MCP over stdio (what an MCP host such as Claude Desktop runs), or over
    /// streamable HTTP for remote agents with --http.
    Serve {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Serve MCP over streamable HTTP (at /mcp; any path is served) instead of stdio, on
        /// ADDR [default: `[http] listen`, 127.0.0.1:8402]. Each request is identified by its
        /// `Authorization: Bearer` credential.
        #[arg(long, value_name = "ADDR", num_args = 0..=1)]
        http: Option<Option<String>>,
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
    /// The ledger: set up its schema, move it between SQLite and PostgreSQL.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: the log's last lines are written before the process exits.
    let log = init_logging(cli.log_format);
    // Before any client is built, whichever command runs.
    tollgate::install_tls_provider();
    let outcome = match cli.command {
        Command::Serve { config, http } => cli::serve::serve(config, http),
        Command::Check { config } => return cli::check::check(config),
        Command::Wallet {
            command: WalletCommand::Address { config },
        } => cli::wallet::wallet_address(config),
        Command::Wallet {
            command:
                WalletCommand::New {
                    password_file,
                    config,
                },
        } => cli::wallet::wallet_new(config, password_file),
        Command::Wallet {
            command: WalletCommand::Balance { config },
        } => cli::wallet::wallet_balance(config),
        Command::Demo { serve: true, dir } => cli::demo::demo_serve(dir),
        Command::Demo { serve: false, dir } => cli::demo::demo(dir),
        Command::Init { config } => cli::init::init(config),
        Command::Token { command } => cli::token::token(command),
        Command::Ledger { command } => cli::ledger::ledger(command),
        Command::Receipts {
            since,
            format,
            config,
        } => cli::books::receipts(config, since, format),
        Command::Budget { format, config } => cli::books::budget(config, format),
        Command::Reconcile { config } => cli::reconcile::reconcile(config),
        Command::Approve { id, config } => cli::approvals::decide(config, &id, true),
        Command::Deny { id, config } => cli::approvals::decide(config, &id, false),
        Command::Approvals { config } => cli::approvals::approvals(config),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The log's last lines first, then why the command failed.
            drop(log);
            eprintln!("tollgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The log goes to stderr without ever making a call wait for it (see [`cli::log`]).
fn init_logging(format: LogFormat) -> cli::log::Flush {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tollgate=info,rmcp=warn"));
    let (stderr, flush) = cli::log::Stderr::start(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
    flush
}
