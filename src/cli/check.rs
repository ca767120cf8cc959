//! `tollgate check`: the config, the policy files and every tool definition.

use std::path::PathBuf;
use std::process::ExitCode;

use tollgate::budget::policy::Policy;

use super::{load_and_compile, print_table};

pub fn check(config: Option<PathBuf>) -> ExitCode {
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
    if let Some(url) = &config.ledger.url {
        // Reachable, and of a schema this tollgate can use; nothing is written.
        match tollgate::ledger::PostgresLedger::probe(url) {
            Ok((name, version)) if version > tollgate::ledger::postgres::SCHEMA_VERSION => {
                println!(
                    "error: ledger {name} (from {}): schema version {version} is newer than \
                     this tollgate understands ({}); upgrade tollgate",
                    config.ledger_url_source,
                    tollgate::ledger::postgres::SCHEMA_VERSION
                );
                return ExitCode::FAILURE;
            }
            Ok((name, version)) => println!(
                "ledger {name} (from {}): reachable, schema version {version}{}",
                config.ledger_url_source,
                if version == 0 {
                    " (set up at the first `serve` or `tollgate ledger migrate`)"
                } else {
                    ""
                }
            ),
            Err(e) => {
                println!("error: ledger (from {}): {e}", config.ledger_url_source);
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{} tool(s) OK", catalog.len());
    ExitCode::SUCCESS
}
