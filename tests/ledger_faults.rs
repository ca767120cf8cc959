//! The shared ledger's database stopped in the middle of a burst of paid calls (as a crash:
//! `pg_ctl stop -m immediate`) and started again, against the real x402 v2 seller on anvil
//! (the chain is the judge). While it is down calls fail before anything is signed; a payment
//! whose commit was lost stays pending; the same `tollgate serve` pays again once the
//! database is back; and after `tollgate reconcile` every payment the chain settled has
//! exactly one receipt: no payment without a reservation, no double payment.
//!
//! The database is a cluster of this test's own (`scripts/postgres`), not the shared test
//! server, which other tests use meanwhile.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::stdio::Session;
use support::x402_peer::{X402Peers, start};

const PRICE: u128 = 1_000; // atomic USDC (and µUSD) per call of /weather

/// A PostgreSQL cluster of this test's own, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: String,
}

impl Cluster {
    fn script(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Command::new(support::mcp::root().join("scripts/postgres"))
            .args(args)
            .arg(self.dir.path().join("pg"))
            .envs(env.iter().copied())
            .output()
            .expect("run scripts/postgres");
        assert!(
            out.status.success(),
            "scripts/postgres {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Starts a fresh cluster, or `None` (skipped) without PostgreSQL for the tests.
    fn start() -> Option<(Cluster, String)> {
        support::ledgers::admin_url()?;
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            port: String::new(),
        };
        // The cluster's owner (`postgres` when run as root) must reach its directory.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let url = cluster.script(&["start"], &[]);
        cluster.port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .unwrap()
            .to_owned();
        Some((cluster, url))
    }

    fn crash(&self) {
        self.script(&["stop"], &[("TOLLGATE_PG_STOP_MODE", "immediate")]);
    }

    fn restart(&self) {
        self.script(&["start"], &[("TOLLGATE_PG_PORT", &self.port)]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(support::mcp::root().join("scripts/postgres"))
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

fn host(peers: &X402Peers, url: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n[approval]\n\
             listen = \"off\"\n[ledger]\nurl = \"{url}\"\npool_size = 4\n[[assets]]\n\
             network = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
             [rpc]\n\"eip155:31337\" = \"{}\"\n",
            peers.str("/v2/usdc"),
            peers.str("/v2/rpc"),
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/test.toml"),
        "[caps]\nper_call = \"0.01 USD\"\nper_day = \"1 USD\"\n[allow]\nnetworks = \
         [\"eip155:31337\"]\nassets = [\"USDC\"]\n",
    )
    .unwrap();
    std::fs::write(
        p.join("tools/seller.toml"),
        format!(
            "[[tool]]\nname = \"weather\"\ndescription = \"Weather from the x402 v2 seller\"\n\
             url = \"{0}/weather?city={{city}}\"\nmax_price = \"0.01 USD\"\n\
             input_schema = {{ type = \"object\", properties = {{ city = {{ type = \"string\" }} }} }}\n\n\
             [[tool]]\nname = \"slow\"\ndescription = \"Pays, then answers after 8 s\"\n\
             url = \"{0}/hang-after-pay\"\nmax_price = \"0.01 USD\"\ntimeout_ms = 3000\n",
            peers.seller("v2")
        ),
    )
    .unwrap();
    let config = p.join("tollgate.toml");
    (dir, config)
}

/// Sends `calls` calls at once on `session`, tagged `tag`; returns their results.
fn wave(session: &mut Session, first_id: u64, tag: &str, calls: u64) -> Vec<Value> {
    for i in 0..calls {
        session.call_tool(
            first_id + i,
            "weather",
            json!({"city": format!("{tag}-{i}")}),
        );
    }
    (0..calls)
        .map(|_| session.next_response().expect("tollgate exited")["result"].clone())
        .collect()
}

fn paid(results: &[Value]) -> usize {
    results
        .iter()
        .filter(|r| r["isError"] != json!(true) && r["structuredContent"]["payment"].is_object())
        .count()
}

async fn signed(peers: &X402Peers) -> usize {
    peers
        .seller_events("v2", "request")
        .await
        .iter()
        .filter(|r| !r["payment_header"].is_null())
        .count()
}

fn tollgate(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_database_crashing_mid_burst_loses_no_payment_and_pays_nothing_twice() {
    if support::mcp::python().is_none() {
        return;
    }
    let Some(peers) = start().await else { return };
    let Some((cluster, url)) = tokio::task::block_in_place(Cluster::start) else {
        return;
    };
    let (_dir, config) = host(&peers, &url);
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let key = peers.str("/buyer_key");

    let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &key)]);
    // Up: every call pays.
    let up = tokio::task::block_in_place(|| wave(&mut session, 1, "up", 4));
    assert_eq!(paid(&up), 4, "{up:#?}");

    // A burst with the database crashing under it.
    let crashed = tokio::task::block_in_place(|| {
        for i in 0..16 {
            session.call_tool(100 + i, "weather", json!({"city": format!("burst-{i}")}));
        }
        std::thread::sleep(Duration::from_millis(40));
        cluster.crash();
        (0..16)
            .map(|_| session.next_response().expect("tollgate exited")["result"].clone())
            .collect::<Vec<_>>()
    });

    // Down: calls fail, naming the database, and nothing more is signed.
    let signed_down = signed(&peers).await;
    let down = tokio::task::block_in_place(|| wave(&mut session, 200, "down", 4));
    assert_eq!(paid(&down), 0, "{down:#?}");
    for r in &down {
        let text = r["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.contains("127.0.0.1"), "the database is named: {text}");
        assert!(!text.contains(&url), "the URL is not shown: {text}");
    }
    assert_eq!(
        signed(&peers).await,
        signed_down,
        "nothing signed while down"
    );

    // Back: the same process pays again.
    tokio::task::block_in_place(|| cluster.restart());
    let back = tokio::task::block_in_place(|| wave(&mut session, 300, "back", 4));
    assert_eq!(paid(&back), 4, "{back:#?}");
    session.finish();

    // Reconciliation settles what the crash left open, from the chain.
    let (ok, out) = tollgate(&config, &["reconcile"]);
    assert!(ok, "{out}");
    let (ok, out) = tollgate(&config, &["receipts", "--format", "json"]);
    assert!(ok, "{out}");
    let receipts: Vec<Value> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone();
    let moved = peers.balance("v2", &payee).await - before;
    let transactions: BTreeSet<&str> = receipts
        .iter()
        .filter_map(|r| r["transaction"].as_str())
        .collect();
    assert_eq!(
        transactions.len(),
        receipts.len(),
        "one receipt per settlement: {receipts:#?}"
    );
    assert_eq!(
        moved,
        receipts.len() as u128 * PRICE,
        "every payment the chain settled has its receipt ({} receipts, {} moved)",
        receipts.len(),
        moved
    );
    let settled = (moved / PRICE) as usize;
    assert!(settled >= 8 + paid(&crashed), "{settled} settled");
    assert!(
        signed(&peers).await >= settled,
        "every settlement was a payment tollgate signed"
    );
    eprintln!(
        "burst across the crash: {} of 16 answered paid; {settled} settled on chain, {} receipts \
         after reconcile",
        paid(&crashed),
        receipts.len()
    );
}

/// A proof that left before the database went away: the call ends without an answer while
/// the database is down (nothing can be written), the payment stays pending in the ledger, and
/// once the database is back `tollgate reconcile` commits it from the chain, with its receipt.
#[tokio::test(flavor = "multi_thread")]
async fn a_payment_signed_before_the_database_crashed_is_settled_by_reconciliation() {
    if support::mcp::python().is_none() {
        return;
    }
    let Some(peers) = start().await else { return };
    let Some((cluster, url)) = tokio::task::block_in_place(Cluster::start) else {
        return;
    };
    let (dir, config) = host(&peers, &url);
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let key = peers.str("/buyer_key");

    let answer = tokio::task::block_in_place(|| {
        let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &key)]);
        session.call_tool(1, "slow", json!({}));
        // Signed, recorded pending and sent; the seller holds the answer 8 s.
        std::thread::sleep(Duration::from_millis(1_500));
        cluster.crash();
        let answer = session.response(1).expect("tollgate answered")["result"].clone();
        session.finish();
        answer
    });
    assert_eq!(answer["isError"], json!(true), "{answer}");
    // The seller settles once its handler answers, after the buyer gave up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while peers.balance("v2", &payee).await == before {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            peers.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(peers.balance("v2", &payee).await, before + PRICE);

    tokio::task::block_in_place(|| cluster.restart());
    let ledger_config = tollgate::ledger::LedgerConfig {
        url: Some(url.clone()),
        pool_size: 1,
    };
    let ledger = tokio::task::block_in_place(|| {
        tollgate::ledger::Ledger::open_with(&dir.path().join("state"), &ledger_config).unwrap()
    });
    let open = ledger.pending().unwrap();
    assert_eq!(open.len(), 1, "the payment stayed pending: {open:?}");
    assert!(open[0].proof_json.is_some());
    let (ok, out) = tollgate(&config, &["reconcile"]);
    assert!(ok, "{out}");
    assert!(ledger.pending().unwrap().is_empty(), "{out}");
    let receipts = ledger.all_receipts(None, 10).unwrap();
    assert_eq!(receipts.len(), 1, "{out}");
    let receipt: Value = serde_json::from_str(&receipts[0].json).unwrap();
    assert_eq!(receipt["reconciled"], json!(true), "{receipt}");
    assert_eq!(receipts[0].amount_usd_micros as u128, PRICE);
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + PRICE,
        "paid once"
    );
}
