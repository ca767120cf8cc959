//! Real MPP peers for interop tests: anvil in Tempo mode (`--network tempo --hardfork t4`), an
//! `mppx` 0.11.0 seller and a `pympp` 0.16.0 seller, started by `tests/peers/mpp/start.mjs`
//! (see `tests/peers/mpp/README.md`).
//!
//! ```ignore
//! let Some(peers) = support::mpp_peer::start().await else { return };
//! let before = peers.path_usd(&peers.str("/mppx/recipient")).await;
//! // ... pay mppx's /weather with tollgate using peers.buyer_key(0) ...
//! assert_eq!(peers.path_usd(&peers.str("/mppx/recipient")).await, before + 10_000);
//! ```
//!
//! Without `tests/peers/mpp/node_modules`, `node`, or the pympp venv (`target/venv-mpp`),
//! `start` prints `SKIPPED: ...` and returns `None`, unless `TOLLGATE_REQUIRE_PEERS=1`, where
//! it panics. Dropping the value closes the script's stdin (it then stops anvil and both
//! sellers) and, if it still runs after 3 s, kills its whole process group.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_LOG_LINES: usize = 5000;

pub struct MppPeers {
    /// The ready line printed by `start.mjs`: `rpc`, `chain_id`, `tokens`, `buyer_keys`,
    /// `buyers`, `mppx` and `pympp` (`seller`, `recipient`, `amount_atomic`).
    pub info: Value,
    child: Child,
    stdin: Option<ChildStdin>,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn skip(reason: &str) -> Option<MppPeers> {
    if std::env::var_os("TOLLGATE_REQUIRE_PEERS").is_some_and(|v| v == "1") {
        panic!("peer missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// Starts anvil (Tempo) and both sellers; `None` (after printing `SKIPPED: ...`) when the
/// peers are not installed and `TOLLGATE_REQUIRE_PEERS` is not `1`.
pub async fn start() -> Option<MppPeers> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    let dir = root().join("tests/peers/mpp");
    if !dir.join("node_modules").is_dir() {
        return skip(&format!(
            "the MPP peers are not installed at {} (scripts/test runs `npm ci` there)",
            dir.join("node_modules").display()
        ));
    }
    let python = root().join("target/venv-mpp/bin/python");
    if !python.exists() {
        return skip(&format!(
            "the pympp seller's venv is not installed at {} (scripts/test creates it from \
             tests/peers/mpp/requirements.txt)",
            python.display()
        ));
    }
    let mut cmd = Command::new("node");
    cmd.arg("tests/peers/mpp/start.mjs")
        .arg("--pympp")
        .arg(&python)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return skip("`node` is not on PATH (the MPP peers need node 20+)");
        }
        Err(e) => panic!("spawning node tests/peers/mpp/start.mjs: {e}"),
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            let mut logs = sink.lock().unwrap();
            if logs.len() >= MAX_LOG_LINES {
                logs.remove(0);
            }
            logs.push(line);
        }
    });
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    let failure = match tokio::time::timeout(READY_TIMEOUT, out.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Value>(line.trim()) {
            Ok(info) => {
                return Some(MppPeers {
                    info,
                    child,
                    stdin,
                    logs,
                    http,
                });
            }
            Err(e) => format!("bad ready line {line:?}: {e}"),
        },
        Ok(Ok(_)) => "start.mjs exited before printing its ready line".to_owned(),
        Ok(Err(e)) => format!("reading start.mjs stdout: {e}"),
        Err(_) => format!("no ready line within {READY_TIMEOUT:?}"),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tail = {
        let logs = logs.lock().unwrap();
        logs[logs.len().saturating_sub(40)..].join("\n")
    };
    drop(MppPeers {
        info: Value::Null,
        child,
        stdin,
        logs,
        http,
    });
    panic!("MPP peers failed to start: {failure}\n--- start.mjs stderr (tail) ---\n{tail}");
}

impl MppPeers {
    /// A string field of `info` by JSON pointer, e.g. `str("/mppx/seller")`.
    pub fn str(&self, pointer: &str) -> String {
        self.info
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("MPP peers info has no string at {pointer}: {}", self.info))
            .to_owned()
    }

    /// The `i`th buyer's key and address (anvil dev accounts #5..#9; one per test).
    pub fn buyer(&self, i: usize) -> (String, String) {
        (
            self.str(&format!("/buyer_keys/{i}")),
            self.str(&format!("/buyers/{i}")),
        )
    }

    /// Everything the peers wrote to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// A JSON-RPC call on the chain; panics on an RPC error.
    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        let url = self.str("/rpc");
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let bytes = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let reply: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method}: not JSON ({e}): {bytes:?}"));
        if let Some(err) = reply.get("error") {
            panic!("{method}: {err}");
        }
        reply["result"].clone()
    }

    /// The pathUSD balance (`balanceOf`, 6 decimals, atomic units) of an address.
    pub async fn path_usd(&self, address: &str) -> u128 {
        let addr = address.trim_start_matches("0x").to_ascii_lowercase();
        assert!(addr.len() == 40, "bad address {address:?}");
        let data = format!("0x70a08231{addr:0>64}");
        let token = self.str("/tokens/pathUSD");
        let result = self
            .rpc("eth_call", json!([{"to": token, "data": data}, "latest"]))
            .await;
        let hex = result.as_str().expect("eth_call result");
        let hex = hex.trim_start_matches("0x").trim_start_matches('0');
        if hex.is_empty() {
            0
        } else {
            u128::from_str_radix(hex, 16).expect("balance fits u128")
        }
    }

    /// `"success"`, `"reverted"` or `"missing"` for a transaction hash.
    pub async fn tx_status(&self, hash: &str) -> String {
        let receipt = self.rpc("eth_getTransactionReceipt", json!([hash])).await;
        match receipt.get("status").and_then(Value::as_str) {
            None => "missing",
            Some("0x1") => "success",
            Some(_) => "reverted",
        }
        .to_owned()
    }

    /// The transaction itself (`from`, `to`, ...), `Null` if unknown.
    pub async fn tx(&self, hash: &str) -> Value {
        self.rpc("eth_getTransactionByHash", json!([hash])).await
    }

    /// The seller's request log (`"mppx"` or `"pympp"`): `[{path, paid, status, receipt?, ...}]`.
    pub async fn seller_log(&self, seller: &str) -> Vec<Value> {
        let url = format!("{}/_log", self.str(&format!("/{seller}/seller")));
        let bytes = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let log: Value = serde_json::from_slice(&bytes).expect("log is JSON");
        log.as_array().expect("log is an array").clone()
    }
}

impl Drop for MppPeers {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.start_kill();
    }
}
