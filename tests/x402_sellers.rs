//! x402 against the real sellers (`@x402/express` 2.27.0 for v2, `x402-express` 1.2.0 for v1)
//! settling on local anvil chains with Circle's FiatToken, driven through the real Python MCP
//! client. The chain is the judge: balances and mined transactions.

mod support;

use serde_json::{Value, json};
use support::mcp::{Mode, drive, python};
use support::x402_peer::{X402Peers, start};

/// A scratch config: the peers' USDC as assets, a policy that allows the local networks.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(peers: &X402Peers, networks: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        let usdc = peers.str("/v2/usdc");
        let usdc_v1 = peers.str("/v1/usdc");
        std::fs::write(
            p.join("tollgate.toml"),
            format!(
                r#"tools_dir = "tools"
policy = "test"
[[assets]]
network = "eip155:31337"
address = "{usdc}"
symbol = "USDC"
decimals = 6
[[assets]]
network = "base-sepolia"
address = "{usdc_v1}"
symbol = "USDC"
decimals = 6
"#
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("policies/test.toml"),
            format!(
                "[caps]\nper_call = \"0.50 USD\"\n[allow]\nnetworks = {networks:?}\nassets = [\"USDC\"]\n"
            ),
        )
        .unwrap();
        let (v2, v1) = (peers.seller("v2"), peers.seller("v1"));
        std::fs::write(
            p.join("tools/sellers.toml"),
            format!(
                r#"
[[tool]]
name = "weather_v2"
description = "Weather from the x402 v2 seller"
url = "{v2}/weather?city={{city}}"
max_price = "0.01 USD"
input_schema = {{ type = "object", required = ["city"], properties = {{ city = {{ type = "string" }} }} }}

[[tool]]
name = "premium_v2"
description = "The v2 seller's premium report (0.25 USDC)"
url = "{v2}/premium"
max_price = "0.05 USD"

[[tool]]
name = "weather_v1"
description = "Weather from the legacy x402 v1 seller"
url = "{v1}/weather"
max_price = "0.01 USD"
"#
            ),
        )
        .unwrap();
        Setup { dir }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("tollgate.toml")
    }
}

async fn call(setup: &Setup, key: &str, name: &str, args: Value) -> Value {
    let python = python().expect("checked by the caller");
    let steps = json!([{"op": "call_tool", "name": name, "arguments": args}]);
    let report = drive(
        &python,
        Mode::Stateless,
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", key)],
        steps,
    )
    .await;
    report["steps"][0]["result"].clone()
}

async fn peers() -> Option<X402Peers> {
    python()?;
    start().await
}

async fn paid_call_settles_on_chain(which: &str, tool: &str, args: Value) {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, &["eip155:31337", "base-sepolia"]);
    let (buyer, payee) = (peers.str("/buyer"), peers.str(&format!("/{which}/payee")));
    let (buyer_before, payee_before) = (
        peers.balance(which, &buyer).await,
        peers.balance(which, &payee).await,
    );

    let result = call(&setup, &peers.str("/buyer_key"), tool, args).await;
    assert_ne!(
        result["isError"],
        json!(true),
        "{result}\n{}",
        peers.logs().join("\n")
    );
    assert_eq!(
        result["structuredContent"]["result"]["report"], "sunny",
        "{result}"
    );
    let receipt = &result["structuredContent"]["payment"];
    assert_eq!(receipt["amount_atomic"], "1000", "{receipt}");
    assert_eq!(receipt["amount_usd"], "0.001");
    assert_eq!(
        receipt["payer"].as_str().unwrap().to_lowercase(),
        buyer.to_lowercase()
    );
    assert_eq!(
        receipt["payee"].as_str().unwrap().to_lowercase(),
        payee.to_lowercase()
    );

    assert_eq!(
        peers.balance(which, &payee).await,
        payee_before + 1000,
        "payee got exactly 1000"
    );
    assert_eq!(
        peers.balance(which, &buyer).await,
        buyer_before - 1000,
        "buyer paid exactly 1000"
    );
    let tx = receipt["transaction"].as_str().expect("a transaction hash");
    assert_eq!(
        peers.tx_status(which, tx).await,
        "success",
        "{tx} is a mined transaction"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_paid_call_settles_on_chain_with_a_receipt() {
    paid_call_settles_on_chain("v2", "weather_v2", json!({"city": "Paris"})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_paid_call_settles_on_chain_with_a_receipt() {
    paid_call_settles_on_chain("v1", "weather_v1", json!({})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_sign_nothing_and_the_chain_shows_no_payment() {
    let Some(peers) = peers().await else { return };
    let payee = peers.str("/v2/payee");
    let payee_before = peers.balance("v2", &payee).await;

    // An offer above max_price: both figures named, nothing signed.
    let setup = Setup::new(&peers, &["eip155:31337"]);
    let result = call(&setup, &peers.str("/buyer_key"), "premium_v2", json!({})).await;
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(result["isError"], json!(true), "{result}");
    assert!(
        text.contains("0.25 USD") && text.contains("0.05 USD"),
        "{text}"
    );

    // A network the policy does not allow: refused before signing.
    let narrow = Setup::new(&peers, &["eip155:8453"]);
    let result = call(
        &narrow,
        &peers.str("/buyer_key"),
        "weather_v2",
        json!({"city": "Oslo"}),
    )
    .await;
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("not allowed by the policy"), "{text}");

    let requests = peers.seller_events("v2", "request").await;
    assert!(
        requests.iter().all(|r| r["payment_header"].is_null()),
        "a payment header reached the seller: {requests:?}"
    );
    assert!(peers.seller_events("v2", "verify").await.is_empty());
    assert!(peers.seller_events("v2", "settle").await.is_empty());
    assert_eq!(peers.balance("v2", &payee).await, payee_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfunded_wallet_gets_the_sellers_error_and_signs_once() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, &["eip155:31337"]);
    let result = call(
        &setup,
        &peers.str("/unfunded_key"),
        "weather_v2",
        json!({"city": "Rome"}),
    )
    .await;
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(result["isError"], json!(true), "{result}");
    assert!(text.contains("402 again"), "{text}");
    assert!(
        text.contains("simulation_failed") || text.contains("insufficient"),
        "seller's reason: {text}"
    );
    let signed: Vec<Value> = peers
        .seller_events("v2", "request")
        .await
        .into_iter()
        .filter(|r| !r["payment_header"].is_null())
        .collect();
    assert_eq!(signed.len(), 1, "exactly one signed attempt: {signed:?}");
    assert!(
        peers
            .seller_events("v2", "settle")
            .await
            .iter()
            .all(|s| s["ok"] != json!(true))
    );
}
