//! `tollgate ledger`: set up the configured ledger's schema, and move a ledger between
//! backends (export to JSON lines, import into an empty PostgreSQL ledger).

use std::io::{BufReader, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use tollgate::config::Config;
use tollgate::ledger::{Ledger, PostgresLedger};

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Create or upgrade the configured ledger's tables (`[ledger] url` or
    /// TOLLGATE_LEDGER_URL: PostgreSQL; else the SQLite file in the state directory) and print
    /// its schema version. `serve` does the same at start; this does it ahead of time.
    Migrate {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Write every row of the configured ledger to stdout as JSON lines (it holds recorded
    /// proofs and kept L402 preimages: keep the file private).
    Export {
        /// Read the SQLite ledger in this state directory instead of the configured ledger.
        #[arg(long, value_name = "DIR")]
        sqlite: Option<PathBuf>,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Read an export from stdin into the configured PostgreSQL ledger, which must be empty:
    /// all of it or nothing, in one transaction.
    Import {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub fn ledger(command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Migrate { config } => {
            let config = load(config)?;
            let ledger = super::open_ledger(&config)?;
            let version = match &config.ledger.url {
                Some(_) => tollgate::ledger::postgres::SCHEMA_VERSION,
                None => Ledger::SCHEMA_VERSION,
            };
            println!("ledger {}: schema version {version}", ledger.location());
        }
        LedgerCommand::Export { sqlite, config } => {
            let config = load(config)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let (location, moved) = match (&sqlite, &config.ledger.url) {
                (Some(dir), _) => (
                    dir.display().to_string(),
                    tollgate::ledger::transfer::export_sqlite(dir, &mut out)?,
                ),
                (None, Some(url)) => {
                    let ledger = PostgresLedger::open(url, 1)?;
                    (ledger.name().to_owned(), ledger.export(&mut out)?)
                }
                (None, None) => (
                    config.state_dir.display().to_string(),
                    tollgate::ledger::transfer::export_sqlite(&config.state_dir, &mut out)?,
                ),
            };
            out.flush().context("cannot write the export")?;
            eprintln!("exported {moved} from {location}");
        }
        LedgerCommand::Import { config } => {
            let config = load(config)?;
            let Some(url) = &config.ledger.url else {
                anyhow::bail!(
                    "no PostgreSQL ledger is configured: set [ledger] url in tollgate.toml or \
                     TOLLGATE_LEDGER_URL (an import goes into a shared ledger; the SQLite one \
                     is the state directory's file)"
                );
            };
            let ledger = PostgresLedger::open(url, 1)?;
            let moved = ledger.import(&mut BufReader::new(std::io::stdin().lock()))?;
            println!("imported {moved} into {}", ledger.name().to_owned());
        }
    }
    Ok(())
}

fn load(config: Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))
}
