//! Real L402 peers for interop tests: LNbits 1.6.2 with its FakeWallet backend (a payer and a
//! payee wallet on one instance; real signed invoices, real preimages, fully offline), and the
//! L402 seller `tests/peers/l402/seller.mjs` (aperture's macaroon layout, both `LSAT` and `L402`
//! challenges, invoices from the payee wallet). See `tests/peers/l402/README.md`.
//!
//! ```ignore
//! let Some(peers) = support::l402_peer::start().await else { return };
//! let before = peers.balance_msat("payee").await;
//! // ... pay peers.seller_url("normal", "weather") with tollgate, LNbits admin key
//! //     peers.payer_admin_key() ...
//! assert_eq!(peers.balance_msat("payee").await, before + 21_000);
//! ```
//!
//! Without `target/venv-l402` (made by scripts/test) or `tests/peers/l402/node_modules`, `start`
//! prints `SKIPPED: ...` and returns `None`, unless `TOLLGATE_REQUIRE_PEERS=1`, where it panics.
//! Dropping the value closes both scripts' stdin (they stop LNbits and the seller) and kills
//! their process groups if they are still running after 3 s.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// LNbits needs about 11-15 s from an empty folder to two funded wallets.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_LOG_LINES: usize = 5000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn skip(reason: &str) -> Option<L402Peers> {
    if std::env::var_os("TOLLGATE_REQUIRE_PEERS").is_some_and(|v| v == "1") {
        panic!("peer missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// One started script: its stdin (closing it stops the script) and its logs.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Script {
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

/// Starts `cmd` in its own process group, forwards its stderr to ours (kept in `logs`), and
/// waits for its one JSON ready line on stdout.
async fn spawn(
    mut cmd: Command,
    what: &str,
    logs: &Arc<Mutex<Vec<String>>>,
) -> Result<(Script, Value), String> {
    cmd.current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("spawning {what}: {e}"))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let sink = logs.clone();
    let label = what.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{label}] {line}");
            let mut logs = sink.lock().unwrap();
            if logs.len() >= MAX_LOG_LINES {
                logs.remove(0);
            }
            logs.push(line);
        }
    });
    let script = Script { child, stdin };
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    match tokio::time::timeout(READY_TIMEOUT, out.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => serde_json::from_str(line.trim())
            .map(|info| (script, info))
            .map_err(|e| format!("{what}: bad ready line {line:?}: {e}")),
        Ok(Ok(_)) => Err(format!("{what} exited before its ready line")),
        Ok(Err(e)) => Err(format!("{what}: reading stdout: {e}")),
        Err(_) => Err(format!("{what}: no ready line within {READY_TIMEOUT:?}")),
    }
}

pub struct L402Peers {
    /// LNbits' ready line: `url`, `payer`/`payee` (`id`, `adminkey`, `inkey`), `funded_sats`.
    pub lnbits: Value,
    /// The seller's base URL.
    pub seller: String,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    // Dropped seller first, then LNbits.
    _seller: Script,
    _lnbits: Script,
}

/// Starts LNbits and the seller; `None` (after `SKIPPED: ...`) when they are not installed
/// and `TOLLGATE_REQUIRE_PEERS` is not `1`.
pub async fn start() -> Option<L402Peers> {
    start_with(&[]).await
}

/// Like [`start`], with extra environment for the seller (`PRICE_SATS`, `TOKEN_VALID_SECS`).
pub async fn start_with(seller_env: &[(&str, &str)]) -> Option<L402Peers> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let python = root().join("target/venv-l402/bin/python");
    if !python.exists() {
        return skip(&format!(
            "LNbits is not installed at {} (scripts/test makes the venv from \
             tests/peers/l402/requirements.txt)",
            python.display()
        ));
    }
    let modules = root().join("tests/peers/l402/node_modules");
    if !modules.is_dir() {
        return skip(&format!(
            "the L402 seller's packages are not installed at {} (scripts/test runs `npm ci`)",
            modules.display()
        ));
    }
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut cmd = Command::new(&python);
    cmd.arg("tests/peers/l402/start_lnbits.py");
    let (lnbits_script, lnbits) = match spawn(cmd, "lnbits", &logs).await {
        Ok(started) => started,
        Err(e) => fail(&e, &logs).await,
    };
    let mut cmd = Command::new("node");
    cmd.arg("tests/peers/l402/seller.mjs")
        .env("LNBITS_URL", lnbits["url"].as_str().unwrap_or_default())
        .env(
            "LNBITS_INKEY",
            lnbits["payee"]["inkey"].as_str().unwrap_or_default(),
        );
    for (k, v) in seller_env {
        cmd.env(k, v);
    }
    let (seller_script, seller) = match spawn(cmd, "seller", &logs).await {
        Ok(started) => started,
        Err(e) if e.contains("No such file") => {
            return skip("`node` is not on PATH (the L402 seller needs node 20+)");
        }
        Err(e) => fail(&e, &logs).await,
    };
    Some(L402Peers {
        lnbits,
        seller: seller["url"].as_str().unwrap_or_default().to_owned(),
        logs,
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client"),
        _seller: seller_script,
        _lnbits: lnbits_script,
    })
}

async fn fail(reason: &str, logs: &Arc<Mutex<Vec<String>>>) -> ! {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tail = {
        let logs = logs.lock().unwrap();
        logs[logs.len().saturating_sub(40)..].join("\n")
    };
    panic!("L402 peers failed to start: {reason}\n--- stderr (tail) ---\n{tail}");
}

impl L402Peers {
    /// `"payer"` or `"payee"` wallet's field (`id`, `adminkey`, `inkey`).
    pub fn wallet(&self, which: &str, field: &str) -> String {
        self.lnbits[which][field]
            .as_str()
            .unwrap_or_else(|| panic!("no {which}.{field} in {}", self.lnbits))
            .to_owned()
    }

    pub fn lnbits_url(&self) -> String {
        self.lnbits["url"].as_str().unwrap_or_default().to_owned()
    }

    /// The payer wallet's admin key: what tollgate pays with.
    pub fn payer_admin_key(&self) -> String {
        self.wallet("payer", "adminkey")
    }

    /// `<seller>/<mode>/<service>` (modes: normal, expired, amountless, wronghash, bait,
    /// reject, version; see seller.mjs).
    pub fn seller_url(&self, mode: &str, service: &str) -> String {
        format!("{}/{mode}/{service}", self.seller)
    }

    /// A wallet's balance in millisatoshis, as LNbits reports it.
    pub async fn balance_msat(&self, which: &str) -> i64 {
        let v = self
            .get_json(
                &format!("{}/api/v1/wallet", self.lnbits_url()),
                Some(&self.wallet(which, "inkey")),
            )
            .await;
        v["balance"]
            .as_i64()
            .unwrap_or_else(|| panic!("no balance in {v}"))
    }

    /// LNbits' record of a payment by hash, as seen from `which` wallet:
    /// `{paid, preimage, details}`.
    pub async fn payment(&self, which: &str, payment_hash: &str) -> Value {
        self.get_json(
            &format!("{}/api/v1/payments/{payment_hash}", self.lnbits_url()),
            Some(&self.wallet(which, "inkey")),
        )
        .await
    }

    /// Every payment of `which` wallet as LNbits lists them (`GET /api/v1/payments`): incoming
    /// and outgoing (a negative `amount`, in msat), with `payment_hash`, `status`, `fee`.
    pub async fn payments(&self, which: &str) -> Vec<Value> {
        let v = self
            .get_json(
                &format!("{}/api/v1/payments?limit=10000", self.lnbits_url()),
                Some(&self.wallet(which, "inkey")),
            )
            .await;
        v.as_array()
            .unwrap_or_else(|| panic!("LNbits' payments are not a list: {v}"))
            .clone()
    }

    /// A fresh invoice of the payee wallet: `(bolt11, payment hash hex)`.
    pub async fn payee_invoice(&self, sats: u64) -> (String, String) {
        let v = self
            .post_json(
                "/api/v1/payments",
                &self.wallet("payee", "inkey"),
                serde_json::json!({"out": false, "amount": sats, "memo": "test"}),
            )
            .await;
        (
            v["bolt11"].as_str().expect("bolt11").to_owned(),
            v["payment_hash"].as_str().expect("payment_hash").to_owned(),
        )
    }

    /// Pays `bolt11` from the payer wallet directly (not through tollgate).
    pub async fn pay_from_payer(&self, bolt11: &str) -> Value {
        self.post_json(
            "/api/v1/payments",
            &self.payer_admin_key(),
            serde_json::json!({"out": true, "bolt11": bolt11}),
        )
        .await
    }

    async fn post_json(&self, path: &str, key: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.lnbits_url());
        let resp = self
            .http
            .post(&url)
            .header("X-Api-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body");
        assert!(
            status.is_success(),
            "POST {url}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).expect("JSON")
    }

    /// The seller's counters: `{challenges, served, refused}`.
    pub async fn seller_stats(&self) -> Value {
        self.get_json(&format!("{}/admin/stats", self.seller), None)
            .await
    }

    /// Gives the seller a new root key: every token it issued so far is refused.
    pub async fn rotate_seller_key(&self) {
        let url = format!("{}/admin/rotate", self.seller);
        let r = self.http.post(&url).send().await.expect("POST rotate");
        assert!(r.status().is_success(), "rotate: {}", r.status());
    }

    /// Everything the peers wrote to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    async fn get_json(&self, url: &str, key: Option<&str>) -> Value {
        let mut req = self.http.get(url);
        if let Some(key) = key {
            req = req.header("X-Api-Key", key);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let bytes = resp.bytes().await.expect("body");
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "GET {url}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }
}
