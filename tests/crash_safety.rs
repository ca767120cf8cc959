//! Invariants 3 and 5: a tollgate process killed (SIGKILL) at random points of paid calls loses
//! no receipt, leaves no budget wrong, and never pays one call twice. The seller here settles
//! each EIP-3009 nonce at most once (as the chain does) and records which call it paid.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
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
        let ledger =
            tollgate::ledger::Ledger::open(&config.parent().unwrap().join("state")).unwrap();
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
    let ledger = tollgate::ledger::Ledger::open(&setup.dir.path().join("state")).unwrap();
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
}
