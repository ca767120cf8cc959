//! The paid path against an in-process x402 seller that the test controls (bait prices, second
//! 402s, malformed offers). The real sellers are in `x402_sellers.rs`; this file pins down
//! tollgate's own decisions, through the real Python MCP client.

mod support;

use serde_json::{Value, json};
use support::mcp::{Mode, Setup, drive, python};
use support::upstream::{Reply, TestUpstream};

use support::seller::{BUYER_KEY as KEY, PAYEE, payment_required, requirements, signature_of};

/// A seller that asks `amount` at /paid, and settles any signed payment (or refuses all).
async fn seller(amount: &'static str, settles: bool) -> TestUpstream {
    TestUpstream::start(move |seen| match (seen.path(), signature_of(seen)) {
        ("/paid", None) => payment_required(json!([requirements(amount)]), "payment required"),
        ("/paid", Some(_)) if !settles => {
            payment_required(json!([requirements(amount)]), "insufficient_funds")
        }
        ("/paid", Some(sig)) => support::seller::settled(
            json!({"data": "paid content"}),
            &sig["payload"]["authorization"]["from"],
        ),
        // The paid request to /slow never gets an answer the first time.
        ("/slow", None) => payment_required(json!([requirements(amount)]), "payment required"),
        ("/slow", Some(_)) if SLOW_FIRST.swap(false, std::sync::atomic::Ordering::SeqCst) => {
            Reply::Hang
        }
        ("/slow", Some(_)) => Reply::json(200, json!({"data": "slow but paid"})),
        ("/baits", _) => payment_required(
            json!([requirements("900000"), {"scheme": "exact", "network": "eip155:1", "amount": "1",
                   "asset": "0xdeadbeef", "payTo": PAYEE}]),
            "",
        ),
        _ => Reply::text(404, "text/plain", "no"),
    })
    .await
}

static SLOW_FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

fn tools(base: &str) -> String {
    format!(
        r#"
[[tool]]
name = "slow"
description = "A paid endpoint whose first paid answer never comes"
url = "{base}/slow?q={{q}}"
max_price = "0.05 USD"
timeout_ms = 800
input_schema = {{ type = "object", properties = {{ q = {{ type = "string" }} }} }}

[[tool]]
name = "paid"
description = "A paid endpoint"
url = "{base}/paid"
max_price = "0.05 USD"

[[tool]]
name = "baits"
description = "An endpoint with a bait offer"
url = "{base}/baits"
max_price = "0.05 USD"

[[tool]]
name = "never_pays"
description = "A paid endpoint this tool must not pay"
url = "{base}/paid"
"#
    )
}

async fn run(up: &TestUpstream, steps: Value) -> Value {
    let python = python().expect("checked by the caller");
    let setup = Setup::new(&tools(&up.base()));
    drive(
        &python,
        Mode::Legacy,
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", KEY)],
        steps,
    )
    .await
}

fn result(report: &Value, i: usize) -> &Value {
    &report["steps"][i]["result"]
}

fn signed_requests(up: &TestUpstream) -> usize {
    up.seen()
        .iter()
        .filter(|s| s.header("PAYMENT-SIGNATURE").is_some())
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_call_returns_the_result_and_a_receipt() {
    if python().is_none() {
        return;
    }
    let up = seller("10000", true).await;
    let report = run(
        &up,
        json!([{"op": "call_tool", "name": "paid", "arguments": {}}]),
    )
    .await;
    let r = result(&report, 0);
    assert_ne!(r["isError"], json!(true), "{r}");
    assert_eq!(
        r["structuredContent"]["result"],
        json!({"data": "paid content"})
    );
    let receipt = &r["structuredContent"]["payment"];
    assert_eq!(receipt["protocol"], "x402");
    assert_eq!(receipt["version"], 2);
    assert_eq!(receipt["amount_atomic"], "10000");
    assert_eq!(receipt["amount_usd"], "0.01");
    assert_eq!(receipt["transaction"], "0xabc123");
    assert_eq!(receipt["payee"], PAYEE);
    assert_eq!(
        r["_meta"]["x402/payment-response"]["success"],
        json!(true),
        "{r}"
    );
    assert_eq!(signed_requests(&up), 1);
    let sent = signature_of(
        up.seen()
            .iter()
            .find(|s| s.header("PAYMENT-SIGNATURE").is_some())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        sent["accepted"],
        requirements("10000"),
        "accepted echoed exactly"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_an_offer_above_max_price_naming_both_figures() {
    if python().is_none() {
        return;
    }
    let up = seller("250000", true).await;
    let report = run(
        &up,
        json!([{"op": "call_tool", "name": "paid", "arguments": {}}]),
    )
    .await;
    let r = result(&report, 0);
    assert_eq!(r["isError"], json!(true), "{r}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("0.25 USD") && text.contains("0.05 USD"),
        "{text}"
    );
    assert!(text.contains("nothing was paid"), "{text}");
    assert_eq!(signed_requests(&up), 0, "nothing may be signed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_402_after_paying_is_an_error_and_nothing_more_is_signed() {
    if python().is_none() {
        return;
    }
    let up = seller("10000", false).await;
    let report = run(
        &up,
        json!([{"op": "call_tool", "name": "paid", "arguments": {}}]),
    )
    .await;
    let r = result(&report, 0);
    let text = r["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(r["isError"], json!(true), "{r}");
    assert!(
        text.contains("402 again") && text.contains("insufficient_funds"),
        "{text}"
    );
    assert_eq!(signed_requests(&up), 1, "exactly one signed attempt");
}

#[tokio::test(flavor = "multi_thread")]
async fn bait_and_unknown_offers_are_not_paid_and_price_check_shows_them() {
    if python().is_none() {
        return;
    }
    let up = seller("10000", true).await;
    let steps = json!([
        {"op": "call_tool", "name": "baits", "arguments": {}},
        {"op": "call_tool", "name": "never_pays", "arguments": {}},
        {"op": "call_tool", "name": "price_check", "arguments": {"tool": "baits"}},
        {"op": "call_tool", "name": "price_check", "arguments": {"tool": "paid"}},
    ]);
    let report = run(&up, steps).await;
    let bait = result(&report, 0)["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        bait.contains("0.9 USD") && bait.contains("nothing was paid"),
        "{bait}"
    );
    let never = result(&report, 1)["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        never.contains("no max_price") && never.contains("nothing was paid"),
        "{never}"
    );
    assert_eq!(signed_requests(&up), 0);

    let check = &result(&report, 2)["structuredContent"];
    assert_eq!(check["status"], "payment_required", "{check}");
    let offers = check["offers"].as_array().unwrap();
    assert_eq!(offers.len(), 2, "{check}");
    assert_eq!(offers[0]["amount_usd"], "0.9");
    assert_eq!(offers[0]["payable"], json!(false));
    assert!(
        offers[1]["reason"]
            .as_str()
            .unwrap()
            .contains("not a known asset"),
        "{check}"
    );
    let paid = &result(&report, 3)["structuredContent"];
    assert_eq!(paid["would_pay"]["amount_usd"], "0.01", "{paid}");
    assert_eq!(signed_requests(&up), 0, "price_check never pays");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_an_unknown_outcome_resends_the_same_signature() {
    if python().is_none() {
        return;
    }
    let up = seller("10000", true).await;
    let steps = json!([
        {"op": "call_tool", "name": "slow", "arguments": {"q": "a"}},
        {"op": "call_tool", "name": "slow", "arguments": {"q": "a"}},
    ]);
    let report = run(&up, steps).await;
    let first = result(&report, 0)["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        first.contains("may or may not have settled") && first.contains("same signed"),
        "{first}"
    );
    assert_eq!(
        result(&report, 1)["structuredContent"]["result"]["data"],
        "slow but paid"
    );
    let signatures: Vec<String> = up
        .seen()
        .iter()
        .filter(|s| s.method != "CLOSED")
        .filter_map(|s| s.header("PAYMENT-SIGNATURE").map(str::to_owned))
        .collect();
    assert_eq!(signatures.len(), 2, "two paid attempts");
    assert_eq!(
        signatures[0], signatures[1],
        "the retry re-sent the same signed payment"
    );
}
