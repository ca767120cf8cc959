//! Real x402 peers for interop tests: two anvil chains with Circle's FiatToken (USDC), an
//! `@x402/express` 2.27.0 seller (x402 v2) and a legacy `x402-express` 1.2.0 seller (x402 v1),
//! started by `tests/peers/x402/start.mjs` (see `tests/peers/x402/README.md`).
//!
//! ```ignore
//! let Some(peers) = support::x402_peer::start().await else { return };
//! let seller = peers.str("/v2/seller");
//! let before = peers.balance("v2", &peers.str("/v2/payee")).await;
//! // ... pay /weather with tollgate using peers.str("/buyer_key") ...
//! assert_eq!(peers.balance("v2", &peers.str("/v2/payee")).await, before + 1000);
//! ```
//!
//! Without `tests/peers/x402/node_modules` (or without `node`), `start` prints `SKIPPED: ...`
//! and returns `None`, unless `TOLLGATE_REQUIRE_PEERS=1`, where it panics. Dropping the value
//! closes the script's stdin (it then stops both anvils and the sellers) and, if it is still
//! running after 3 s, kills its whole process group.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// How long `start` waits for the ready line (it normally comes after ~3 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Stderr lines kept for `logs()` and for failure messages.
const MAX_LOG_LINES: usize = 5000;

pub struct X402Peers {
    /// The ready line printed by `start.mjs`, e.g. `info["v2"]["seller"]`, `info["buyer_key"]`.
    pub info: Value,
    child: Child,
    stdin: Option<ChildStdin>,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var_os("TOLLGATE_REQUIRE_PEERS").is_some_and(|v| v == "1")
}

fn skip(reason: &str) -> Option<X402Peers> {
    if required() {
        panic!("peer missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// Starts both chains and both sellers; `None` (after printing `SKIPPED: ...`) when the peers
/// are not installed and `TOLLGATE_REQUIRE_PEERS` is not `1`.
pub async fn start() -> Option<X402Peers> {
    // reqwest here is built with `rustls-no-provider`: without a provider, building a client panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client");
    let dir = root().join("tests/peers/x402");
    if !dir.join("node_modules").is_dir() {
        return skip(&format!(
            "the x402 peers are not installed at {} (scripts/test runs `npm ci` there)",
            dir.join("node_modules").display()
        ));
    }
    let mut cmd = Command::new("node");
    cmd.arg("tests/peers/x402/start.mjs")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group: Drop can kill node, both anvils and the watchdog at once.
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return skip("`node` is not on PATH (the x402 peers need node 20+)");
        }
        Err(e) => panic!("spawning node tests/peers/x402/start.mjs: {e}"),
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");

    // Forward the peers' log to the test's stderr (shown on failure) and keep it for `logs()`.
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
    let read = tokio::time::timeout(READY_TIMEOUT, out.read_line(&mut line)).await;
    let failure = match read {
        Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Value>(line.trim()) {
            Ok(info) => {
                return Some(X402Peers {
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
    // Give the stderr task a moment to collect the reason.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tail = {
        let logs = logs.lock().unwrap();
        logs[logs.len().saturating_sub(40)..].join("\n")
    };
    drop(X402Peers {
        info: Value::Null,
        child,
        stdin,
        logs,
        http,
    });
    panic!("x402 peers failed to start: {failure}\n--- start.mjs stderr (tail) ---\n{tail}");
}

impl X402Peers {
    /// A string field of `info` by JSON pointer, e.g. `str("/v2/seller")`, `str("/buyer_key")`.
    pub fn str(&self, pointer: &str) -> String {
        self.info
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("x402 peers info has no string at {pointer}: {}", self.info))
            .to_owned()
    }

    /// `info["v1"]` or `info["v2"]`.
    pub fn side(&self, which: &str) -> &Value {
        assert!(
            which == "v1" || which == "v2",
            "which must be \"v1\" or \"v2\", got {which:?}"
        );
        &self.info[which]
    }

    /// The seller's base URL (`http://127.0.0.1:PORT`) for "v1" or "v2".
    /// The process group of the peers (start.mjs and both anvils), while it runs.
    pub fn process_group(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn seller(&self, which: &str) -> String {
        self.str(&format!("/{which}/seller"))
    }

    /// Everything the peers wrote to stderr so far (requests, verify/settle with reasons).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    async fn post_json(&self, url: &str, body: &Value) -> Value {
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "POST {url}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// A JSON-RPC call on the "v1" or "v2" chain; panics on an RPC error.
    pub async fn rpc(&self, which: &str, method: &str, params: Value) -> Value {
        let url = self.str(&format!("/{which}/rpc"));
        let reply = self
            .post_json(
                &url,
                &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
            )
            .await;
        if let Some(err) = reply.get("error") {
            panic!("{method} on {which} chain: {err}");
        }
        reply["result"].clone()
    }

    /// The chain's USDC `balanceOf(address)` in atomic units (6 decimals).
    pub async fn balance(&self, which: &str, address: &str) -> u128 {
        let token = self.str(&format!("/{which}/usdc"));
        let addr = address.trim_start_matches("0x").to_ascii_lowercase();
        assert!(
            addr.len() == 40 && addr.bytes().all(|b| b.is_ascii_hexdigit()),
            "bad address {address:?}"
        );
        let data = format!("0x70a08231{addr:0>64}");
        let result = self
            .rpc(
                which,
                "eth_call",
                json!([{"to": token, "data": data}, "latest"]),
            )
            .await;
        let hex = result
            .as_str()
            .expect("eth_call result")
            .trim_start_matches("0x");
        let hex = hex.trim_start_matches('0');
        if hex.is_empty() {
            0
        } else {
            u128::from_str_radix(hex, 16).expect("balance fits u128")
        }
    }

    /// `"success"`, `"reverted"` or `"missing"` for a transaction hash on the "v1"/"v2" chain.
    pub async fn tx_status(&self, which: &str, hash: &str) -> String {
        let receipt = self
            .rpc(which, "eth_getTransactionReceipt", json!([hash]))
            .await;
        match receipt.get("status").and_then(Value::as_str) {
            None => "missing",
            Some("0x1") => "success",
            Some(_) => "reverted",
        }
        .to_owned()
    }

    /// Every EIP-3009 authorization of `authorizer` the "v1"/"v2" chain's USDC has used (its
    /// `AuthorizationUsed(authorizer, nonce)` logs): one per settled payment, as
    /// `(transaction hash, nonce)`, both lowercase `0x` hex.
    pub async fn authorizations_used(
        &self,
        which: &str,
        authorizer: &str,
    ) -> Vec<(String, String)> {
        let token = self.str(&format!("/{which}/usdc"));
        let addr = authorizer.trim_start_matches("0x").to_ascii_lowercase();
        assert!(addr.len() == 40, "bad address {authorizer:?}");
        let topic = alloy::primitives::keccak256("AuthorizationUsed(address,bytes32)");
        let logs = self
            .rpc(
                which,
                "eth_getLogs",
                json!([{"address": token, "fromBlock": "0x0", "toBlock": "latest",
                        "topics": [format!("{topic}"), format!("0x{addr:0>64}")]}]),
            )
            .await;
        logs.as_array()
            .expect("eth_getLogs answers an array")
            .iter()
            .map(|log| {
                let tx = log["transactionHash"].as_str().expect("a transaction hash");
                let nonce = log["topics"][2].as_str().expect("the nonce topic");
                (tx.to_ascii_lowercase(), nonce.to_ascii_lowercase())
            })
            .collect()
    }

    /// The seller's event log: `[{kind: "request"|"verify"|"settle", path, ok, tx?, ...}]`.
    /// Request events also carry `status`, `payment_header` (`null`, `"PAYMENT-SIGNATURE"` or
    /// `"X-PAYMENT"`) and `paid`; verify/settle events carry `payer`, `reason`, `message`.
    pub async fn seller_log(&self, which: &str) -> Value {
        let url = format!("{}/_log", self.seller(which));
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        serde_json::from_slice(&resp.bytes().await.expect("log body")).expect("log is JSON")
    }

    /// Empties the seller's event log.
    pub async fn clear_seller_log(&self, which: &str) {
        let url = format!("{}/_log", self.seller(which));
        self.http
            .delete(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DELETE {url}: {e}"));
    }

    /// The seller's events of one kind ("request", "verify", "settle").
    pub async fn seller_events(&self, which: &str, kind: &str) -> Vec<Value> {
        self.seller_log(which)
            .await
            .as_array()
            .expect("log is an array")
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }

    /// Pays `path` on the "v1"/"v2" seller with the reference TypeScript buyer (`@x402/fetch`)
    /// using `key` (default: the funded buyer). Returns its JSON line:
    /// `{status, body, payment_response_header_decoded, ms, sent_payment, ...}`.
    pub async fn pay_with_fetch(&self, which: &str, path: &str, key: Option<&str>) -> Value {
        let key = key
            .map(str::to_owned)
            .unwrap_or_else(|| self.str("/buyer_key"));
        let out = Command::new("node")
            .arg("tests/peers/x402/pay_with_fetch.mjs")
            .arg(self.seller(which))
            .arg(path)
            .arg(key)
            .current_dir(root())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .await
            .expect("running pay_with_fetch.mjs");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pay_with_fetch.mjs printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for X402Peers {
    fn drop(&mut self) {
        // EOF on stdin: start.mjs closes its servers, stops both anvils and exits.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Still running: kill the whole group (node, anvils, watchdog); node is not reaped yet,
        // so the group id is still ours.
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
