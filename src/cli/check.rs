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
    if !catalog.mcp_upstreams.is_empty() {
        print_mcp_upstreams(&catalog.mcp_upstreams);
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

/// The paid MCP servers, as configured: check starts none of them (their tools are listed at
/// the first `tools/list` of `serve`), but warns about a program that cannot be found.
fn print_mcp_upstreams(upstreams: &[tollgate::mcp_upstream::McpUpstreamConfig]) {
    use tollgate::mcp_upstream::config::Transport;
    let rows: Vec<[String; 4]> = upstreams
        .iter()
        .map(|u| {
            let transport = match &u.transport {
                Transport::Stdio { command, .. } => format!("stdio: {command}"),
                // Scheme, host, port and path: never a query or credentials.
                Transport::Http { url, .. } => format!(
                    "http: {}://{}{}",
                    url.scheme(),
                    u.host(),
                    match url.port() {
                        Some(port) => format!(":{port}{}", url.path()),
                        None => url.path().to_owned(),
                    }
                ),
            };
            let price = match (u.max_price, u.max_prices.len()) {
                (None, 0) => "never pays".to_owned(),
                (Some(p), 0) => p.to_string(),
                (Some(p), n) => format!("{p} ({n} per tool)"),
                (None, n) => format!("{n} tool(s) only"),
            };
            [u.name.clone(), format!("{}*", u.prefix), transport, price]
        })
        .collect();
    println!("paid MCP servers (started and listed at first use, not by check):");
    print_table(["MCP SERVER", "TOOLS", "TRANSPORT", "MAX PRICE"], &rows);
    for u in upstreams {
        if let Transport::Stdio { command, .. } = &u.transport
            && !program_exists(command)
        {
            println!(
                "warning: mcp_upstream `{}` ({}): the program `{command}` is not found{}; its \
                 tools will not be offered",
                u.name,
                u.file.display(),
                if command.contains('/') {
                    ""
                } else {
                    " on PATH"
                }
            );
        }
    }
}

/// Whether `command` names an executable file: an absolute path as given, a bare name on
/// `PATH`.
fn program_exists(command: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        // A relative path is resolved where the program starts (its `cwd`): not judged here.
        let path = std::path::Path::new(command);
        return !path.is_absolute() || runnable(path);
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| runnable(&dir.join(command))))
}
