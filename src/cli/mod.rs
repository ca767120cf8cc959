//! The `tollgate` commands, one file per group; `main.rs` parses arguments and dispatches here.
//! Every command prints to stdout only what it was asked for; `serve`'s stdout carries MCP
//! frames only.

pub mod approvals;
pub mod books;
pub mod check;
pub mod demo;
pub mod init;
pub mod ledger;
pub mod log;
pub mod reconcile;
pub mod serve;
pub mod token;
pub mod wallet;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tollgate::budget::credential::RootKey;
use tollgate::budget::policy::Policy;
use tollgate::catalog::Catalog;
use tollgate::config::{Config, Problem};
use tollgate::ledger::Ledger;

/// Loads the config, the catalog and the policy, or every problem found.
pub fn load(config: Option<PathBuf>) -> Result<(Config, Catalog, Policy), Vec<Problem>> {
    let config = Config::load(config.as_deref()).map_err(|e| e.0)?;
    let catalog = Catalog::load_dir(&config.tools_dir, &config.upstream);
    let policy = config.load_policy();
    // `[[mcp_upstream]]` of the config file and of the tool files, checked together.
    let source = config.source.clone().unwrap_or_default();
    let extra = config
        .mcp_upstream
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, s)| (source.clone(), i, s))
        .collect();
    let catalog = catalog.and_then(|mut catalog| {
        catalog.mcp_upstreams = catalog.mcp_upstreams(extra)?;
        Ok(catalog)
    });
    match (catalog, policy) {
        (Ok(catalog), Ok(policy)) => Ok((config, catalog, policy)),
        (catalog, policy) => {
            let mut problems = catalog.err().unwrap_or_default();
            problems.extend(policy.err().unwrap_or_default());
            Err(problems)
        }
    }
}

/// Opens the ledger the config names (`[ledger] url` or `TOLLGATE_LEDGER_URL`: the shared
/// PostgreSQL database; else the SQLite file in the state directory).
pub fn open_ledger(config: &Config) -> anyhow::Result<Arc<Ledger>> {
    Ledger::open_with(&config.state_dir, &config.ledger).context("cannot open the ledger")
}

/// The name under which a shared ledger records the fingerprint of its hosts' root key.
pub const ROOT_KEY_FACT: &str = "root_key_fingerprint";

/// Refuses to go on when the ledger is shared with tollgates holding another root key
/// (credentials minted by one would not verify on the other); the first to ask records its.
pub fn agree_on_root_key(ledger: &Ledger, root: &RootKey, config: &Config) -> anyhow::Result<()> {
    let mine = root.fingerprint();
    let recorded = ledger.agree_on(ROOT_KEY_FACT, &mine)?;
    if recorded != mine {
        anyhow::bail!(
            "the ledger {} is shared with tollgates whose root key is another one (its \
             fingerprint {recorded}, this one's {mine}): credentials minted by one would not \
             verify on the other. Copy {} from a host already using this ledger over this \
             host's (same file, mode 0600), then start again",
            ledger.location(),
            config
                .state_dir
                .join(tollgate::budget::credential::ROOT_KEY_FILE)
                .display()
        );
    }
    Ok(())
}

/// `check` goes further than `serve` at start: it compiles every schema.
pub fn load_and_compile(
    config: Option<PathBuf>,
) -> Result<(Config, Catalog, Policy), Vec<Problem>> {
    let (config, catalog, policy) = load(config)?;
    let problems = catalog.compile_all();
    if problems.is_empty() {
        Ok((config, catalog, policy))
    } else {
        Err(problems)
    }
}

pub fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
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
