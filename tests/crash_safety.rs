//! Invariants 3 and 5: a tollgate process killed (SIGKILL) at random points of paid calls loses
//! no receipt, leaves no budget wrong, and never pays one call twice. The seller here settles
//! each EIP-3009 nonce at most once (as the chain does) and records which call it paid.
//! The first test runs against both ledger backends.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use support::ledgers::{Backend, Place};
use support::mcp::Setup;
use support::stdio::Session;
use support::upstream::{Reply, TestUpstream};

use support::seller::BUYER_KEY as KEY;
const TRIALS: usize = 50;

fn offer() -> Reply {
    support::seller::payment_required(
        json!([support::seller::requirements("10000")]),
        "nonce already used",
    )
}

/// One serve process: initialize, one call, then killed after `kill_after` (or left to finish).
fn one_call(config: &std::path::Path, n: usize, kill_after: Option<Duration>) -> Option<Value> {
    let mut session = Session::start(config, &[("TOLLGATE_EVM_KEY", KEY)]);
    session.call_tool(1, "paid", json!({"n": n}));
    if let Some(delay) = kill_after {
        std::thread::sleep(delay);
        session.kill(); // SIGKILL
        return None;
    }
    let result = session.response(1).map(|m| m["result"].clone());
    session.finish();
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_loses_no_receipt_and_never_pays_twice() {
    kill_9_at_random_points(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_with_a_postgres_ledger() {
    kill_9_at_random_points(Backend::Postgres).await;
}

async fn kill_9_at_random_points(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    // nonce → the call (n) it paid for.
    let settled: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let seller_state = settled.clone();
    let up = TestUpstream::start(move |seen| {
        let Some(sig) = seen.header("PAYMENT-SIGNATURE") else {
            return offer();
        };
        let payload: Value =
            serde_json::from_slice(&B64.decode(sig).unwrap_or_default()).unwrap_or_default();
        let nonce = payload["payload"]["authorization"]["nonce"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let n: u64 = seen
            .target
            .split("n=")
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        // Settlement takes a moment, so kills land before, during and after it.
        std::thread::sleep(Duration::from_millis(20));
        let mut settled = seller_state.lock().unwrap();
        if settled.contains_key(&nonce) {
            return offer(); // a replayed authorization never settles twice
        }
        settled.insert(nonce, n);
        let response = json!({"success": true, "transaction": "0x01", "network": "eip155:8453"});
        Reply::json(200, json!({"paid": n}))
            .with_header("PAYMENT-RESPONSE", &B64.encode(response.to_string()))
    })
    .await;
    let setup = Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{}/paid?n={{n}}\"\nmax_price = \"0.05 USD\"\n\
         input_schema = {{ type = \"object\", properties = {{ n = {{ type = \"integer\" }} }} }}\n",
        up.base()
    ));
    let config = setup.config();
    place.configure(&config);
    let ledger_config = place.config();
    let crashed = tokio::task::spawn_blocking(move || {
        let mut rng = 0x9e3779b97f4a7c15u64;
        for n in 0..TRIALS {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Anywhere from start-up to after the answer.
            let delay = Duration::from_millis(5 + rng % 120);
            one_call(&config, n, Some(delay));
        }
        // Restart and retry every call that has no receipt (a completed call asked again would
        // be a new purchase): pending proofs are re-sent, never re-signed.
        let ledger = tollgate::ledger::Ledger::open_with(
            &config.parent().unwrap().join("state"),
            &ledger_config,
        )
        .unwrap();
        let committed: HashSet<u64> = ledger
            .all_receipts(None, 10_000)
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.meta_json).ok())
            .filter_map(|m| m["arguments"]["n"].as_u64())
            .collect();
        (0..TRIALS)
            .filter(|n| !committed.contains(&(*n as u64)))
            .map(|n| one_call(&config, n, None))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(crashed.len() <= TRIALS);

    // No call was paid twice.
    let settled = settled.lock().unwrap().clone();
    let calls: Vec<u64> = settled.values().copied().collect();
    let distinct: HashSet<u64> = calls.iter().copied().collect();
    assert_eq!(
        calls.len(),
        distinct.len(),
        "a call was paid twice: {calls:?}"
    );

    // The ledger never counts less than the seller was paid, and every committed receipt is a
    // real payment.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["receipts", "--format", "json", "--config"])
        .arg(setup.config())
        .output()
        .unwrap();
    let receipts: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        receipts.len() <= settled.len(),
        "{} receipts for {} payments",
        receipts.len(),
        settled.len()
    );
    let state = setup.dir.path().join("state");
    let ledger = tokio::task::block_in_place(|| place.open_at(&state));
    let pending = ledger.pending().unwrap();
    assert!(
        receipts.len() + pending.len() >= settled.len(),
        "{} receipts + {} pending < {} settled: a payment is missing from the ledger",
        receipts.len(),
        pending.len(),
        settled.len()
    );
    eprintln!(
        "{TRIALS} trials: {} settled, {} receipts, {} still pending",
        settled.len(),
        receipts.len(),
        pending.len()
    );
    place.assert_used_by(&state);
}

/// The same invariants against the real x402 v2 seller settling on anvil (the chain is the
/// judge), and reconciliation closing the books: after the kills, `tollgate reconcile`, a retry
/// of every call without a receipt, and a second reconcile, the ledger holds exactly one receipt
/// per call, nothing is left pending, and the receipts add up to what the payee received.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_against_the_real_seller_then_reconcile_agrees_with_the_chain() {
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n\
             [[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
             [rpc]\n\"eip155:31337\" = \"{}\"\n",
            peers.str("/v2/usdc"),
            peers.str("/v2/rpc")
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/test.toml"),
        "[caps]\nper_call = \"0.01 USD\"\n[allow]\nnetworks = [\"eip155:31337\"]\n",
    )
    .unwrap();
    std::fs::write(
        p.join("tools/seller.toml"),
        format!(
            "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{}/weather?city=c{{n}}\"\n\
             max_price = \"0.01 USD\"\n\
             input_schema = {{ type = \"object\", properties = {{ n = {{ type = \"integer\" }} }} }}\n",
            peers.seller("v2")
        ),
    )
    .unwrap();
    let config = p.join("tollgate.toml");
    let key = peers.str("/buyer_key");
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    let run = |config: std::path::PathBuf, key: String, calls: Vec<(usize, Option<Duration>)>| {
        tokio::task::spawn_blocking(move || {
            for (n, kill_after) in calls {
                let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &key)]);
                session.call_tool(1, "paid", json!({"n": n}));
                match kill_after {
                    Some(delay) => {
                        std::thread::sleep(delay);
                        session.kill();
                    }
                    None => {
                        let _ = session.response(1);
                        session.finish();
                    }
                }
            }
        })
    };
    let mut rng = 0x2545f4914f6cdd1du64;
    let trials: Vec<(usize, Option<Duration>)> = (0..TRIALS)
        .map(|n| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (n, Some(Duration::from_millis(5 + rng % 250)))
        })
        .collect();
    run(config.clone(), key.clone(), trials).await.unwrap();
    // Let settlements the seller started before a kill finish.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let reconcile = |config: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["reconcile", "--config"])
            .arg(config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = reconcile(&config);
    let receipted = |config: &std::path::Path| -> Vec<u64> {
        let ledger =
            tollgate::ledger::Ledger::open(&config.parent().unwrap().join("state")).unwrap();
        ledger
            .all_receipts(None, 10_000)
            .unwrap()
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.meta_json).ok())
            .filter_map(|m| m["arguments"]["n"].as_u64())
            .collect()
    };
    let done: HashSet<u64> = receipted(&config).into_iter().collect();
    let retries: Vec<(usize, Option<Duration>)> = (0..TRIALS)
        .filter(|n| !done.contains(&(*n as u64)))
        .map(|n| (n, None))
        .collect();
    let retried = retries.len();
    run(config.clone(), key.clone(), retries).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = reconcile(&config);

    let receipts = receipted(&config);
    let distinct: HashSet<u64> = receipts.iter().copied().collect();
    assert_eq!(
        receipts.len(),
        distinct.len(),
        "a call has two receipts: {receipts:?}"
    );
    assert_eq!(
        distinct.len(),
        TRIALS,
        "every call ends with exactly one receipt\n{first}\n{second}"
    );
    let ledger = tollgate::ledger::Ledger::open(&p.join("state")).unwrap();
    // Nothing whose outcome is unknown is left: at most reservations killed before they
    // signed, which never left the process (released by a later reconcile, after 2 minutes).
    let open = ledger.pending().unwrap();
    assert!(
        open.iter()
            .all(|o| o.state == tollgate::ledger::ReservationState::Reserved
                && o.proof_json.is_none()),
        "a payment with a proof is still open: {second}"
    );
    let received = peers.balance("v2", &payee).await - before;
    assert_eq!(
        received,
        1000 * TRIALS as u128,
        "the payee received exactly one payment per call (no call paid twice)"
    );
    let settled = peers
        .seller_events("v2", "settle")
        .await
        .iter()
        .filter(|e| e["ok"] == true)
        .count();
    assert_eq!(settled, TRIALS, "the seller settled once per call");
    let reconciled: Vec<Value> = ledger
        .all_receipts(None, 10_000)
        .unwrap()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.json).ok())
        .filter(|r| r["reconciled"] == true)
        .collect();
    for r in &reconciled {
        let tx = r["transaction"]
            .as_str()
            .expect("the chain names the transaction");
        assert_eq!(peers.tx_status("v2", tx).await, "success", "{r}");
        assert_eq!(r["amount_usd_micros"], 1000);
    }
    let reconciled = reconciled.len();
    eprintln!(
        "{TRIALS} trials against the real seller: {retried} calls retried, {reconciled} receipts \
         written by reconciliation; reconcile said: {} / {}",
        first.trim(),
        second.trim()
    );
}
