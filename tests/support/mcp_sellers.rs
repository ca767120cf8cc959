//! Real paid MCP servers for the `[[mcp_upstream]]` tests: the x402 Python SDK's MCP server
//! wrapper (PyPI `x402[mcp]`, `tests/peers/x402-mcp/seller.py`) on the x402 peers' chain, and
//! mppx's MCP server transport (`tests/peers/mpp/mcp_seller.mjs`) on the MPP peers' Tempo-mode
//! anvil. Each runs over stdio (tollgate starts it from the config this module writes) or over
//! streamable HTTP ([`HttpSeller`], started here, killed on drop). Sellers append one JSON line
//! per event (`call`, `settle`, `refuse`) to a log file the tests read with [`events`].

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::mcp::root;

/// Anvil's account #5: the Python seller's facilitator pays gas from it, so it never races the
/// x402 peers' own facilitator (#3) for a nonce.
pub const X402_MCP_FACILITATOR_KEY: &str =
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";

/// The x402 MCP seller's price of `weather` (0.001 USDC).
pub const X402_PRICE: u128 = 1_000;
/// The MPP MCP seller's price of `weather` (0.01 pathUSD).
pub const MPP_AMOUNT: u128 = 10_000;

/// The x402 MCP seller's Python (the venv `scripts/test` builds from its requirements), or
/// `None` after saying why (a failure when peers are required).
pub fn x402_python() -> Option<PathBuf> {
    let python = root().join("target/venv-x402-mcp/bin/python");
    if python.exists() {
        return Some(python);
    }
    let reason = format!(
        "the x402 MCP seller's venv is not installed at {} (scripts/test creates it from \
         tests/peers/x402-mcp/requirements.txt)",
        python.display()
    );
    if std::env::var_os("TOLLGATE_REQUIRE_PEERS").is_some_and(|v| v == "1") {
        panic!("peer missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// The command line of the x402 MCP seller (program first), stdio unless `http`.
pub fn x402_seller_command(
    rpc: &str,
    usdc: &str,
    pay_to: &str,
    hostile: bool,
    log: &Path,
) -> Vec<String> {
    let python = root().join("target/venv-x402-mcp/bin/python");
    let mut cmd = vec![
        python.display().to_string(),
        root()
            .join("tests/peers/x402-mcp/seller.py")
            .display()
            .to_string(),
        "--rpc".into(),
        rpc.into(),
        "--usdc".into(),
        usdc.into(),
        "--pay-to".into(),
        pay_to.into(),
        "--facilitator-key".into(),
        X402_MCP_FACILITATOR_KEY.into(),
        "--network".into(),
        "eip155:31337".into(),
        "--price-atomic".into(),
        X402_PRICE.to_string(),
        "--log".into(),
        log.display().to_string(),
    ];
    if hostile {
        cmd.push("--hostile".into());
    }
    cmd
}

/// The command line of mppx's MCP seller (program first), stdio unless `http`.
pub fn mpp_seller_command(rpc: &str, recipient: &str, hostile: bool, log: &Path) -> Vec<String> {
    let mut cmd = vec![
        "node".to_owned(),
        root()
            .join("tests/peers/mpp/mcp_seller.mjs")
            .display()
            .to_string(),
        "--rpc".into(),
        rpc.into(),
        "--recipient".into(),
        recipient.into(),
        "--amount".into(),
        MPP_AMOUNT.to_string(),
        "--log".into(),
        log.display().to_string(),
    ];
    if hostile {
        cmd.push("--hostile".into());
    }
    cmd
}

/// An `[[mcp_upstream]]` table that starts `command` over stdio, with `extra` TOML lines.
pub fn stdio_upstream(name: &str, command: &[String], extra: &str) -> String {
    let args: Vec<String> = command[1..].iter().map(|a| toml_string(a)).collect();
    format!(
        "[[mcp_upstream]]\nname = \"{name}\"\ncommand = {}\nargs = [{}]\n{extra}\n",
        toml_string(&command[0]),
        args.join(", ")
    )
}

/// An `[[mcp_upstream]]` table for a streamable HTTP server at `url`, with `extra` TOML lines.
pub fn http_upstream(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[mcp_upstream]]\nname = \"{name}\"\nurl = {}\n{extra}\n",
        toml_string(url)
    )
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

/// A seller serving streamable HTTP, killed on drop.
pub struct HttpSeller {
    pub url: String,
    child: Child,
}

impl HttpSeller {
    /// Starts `command` with `--http 127.0.0.1:0` and waits for its `{"url":…}` line.
    pub fn start(command: &[String]) -> HttpSeller {
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .args(["--http", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", command[0]));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{} printed no URL within 60 s", command[1]));
        let ready: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("{} printed {line:?}, not its ready line: {e}", command[1]));
        let url = ready["url"].as_str().expect("a url").to_owned();
        HttpSeller { url, child }
    }
}

impl Drop for HttpSeller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The events a seller logged to `log`, of `kind` (`call`, `settle`, `refuse`), for `tool`.
pub fn events(log: &Path, kind: &str, tool: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == kind && e["tool"] == tool)
        .collect()
}
