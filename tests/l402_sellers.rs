//! L402 against real peers: LNbits 1.6.2 (FakeWallet: real signed invoices and preimages,
//! offline) paying an aperture-style seller (`tests/peers/l402/seller.mjs`), driven through the
//! real Python MCP client. LNbits' balances are the judge: the payee's rose by the invoice, the
//! payer's fell by exactly what the receipt says, or by nothing at all.

mod support;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::l402_peer::{L402Peers, start};
use support::mcp::{Mode, drive_with_logs, python};
use support::stdio::Session;

/// 21 sats at the policy's rate of 0.001 USD per sat.
const PRICE_MSAT: i64 = 21_000;

/// A scratch config: LNbits as the backend paying from the payer wallet, a policy that allows
/// Lightning on mainnet ("lnbc": FakeWallet's prefix) and values a sat at 0.001 USD.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(peers: &L402Peers, network: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        std::fs::write(
            p.join("tollgate.toml"),
            format!(
                r#"tools_dir = "tools"
state_dir = "state"
policy = "test"
[lightning]
backend = "lnbits"
url = "{}"
network = "{network}"
max_fee_msat = 2000
timeout_secs = 20
"#,
                peers.lnbits_url()
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("policies/test.toml"),
            "[caps]\nper_call = \"0.10 USD\"\n[allow]\nnetworks = [\"lightning:bitcoin\", \
             \"lightning:regtest\"]\nassets = [\"sat\"]\n[rates]\nsat = \"0.001 USD\"\n",
        )
        .unwrap();
        let mut tools = String::new();
        for (name, mode, service) in [
            ("weather", "normal", "weather"),
            ("forecast", "normal", "forecast"),
            ("weather_lsat_token", "version", "weather"),
            ("expired", "expired", "weather"),
            ("amountless", "amountless", "weather"),
            ("wronghash", "wronghash", "weather"),
            ("garbled", "garbled", "weather"),
            ("foreignid", "foreignid", "weather"),
            ("bait", "bait", "weather"),
            ("rejecting", "reject", "weather"),
        ] {
            tools.push_str(&format!(
                "[[tool]]\nname = \"{name}\"\ndescription = \"L402 seller, {mode} mode\"\n\
                 url = \"{}\"\nmax_price = \"0.05 USD\"\n\n",
                peers.seller_url(mode, service)
            ));
        }
        std::fs::write(p.join("tools/l402.toml"), tools).unwrap();
        Setup { dir }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("tollgate.toml")
    }
}

/// Calls `names` in order in one tollgate process; returns each result and tollgate's stderr.
async fn calls(peers: &L402Peers, setup: &Setup, names: &[&str]) -> (Vec<Value>, String) {
    let python = python().expect("checked by the caller");
    let steps: Vec<Value> = names
        .iter()
        .map(|n| json!({"op": "call_tool", "name": n, "arguments": {}}))
        .collect();
    let key = peers.payer_admin_key();
    let (report, logs) = drive_with_logs(
        &python,
        Mode::Stateless,
        &setup.config(),
        &[("TOLLGATE_LNBITS_ADMIN_KEY", key.as_str())],
        json!(steps),
    )
    .await;
    let results = (0..names.len())
        .map(|i| report["steps"][i]["result"].clone())
        .collect();
    (results, logs)
}

async fn peers() -> Option<L402Peers> {
    python()?;
    start().await
}

fn sha256_hex(hex_text: &str) -> String {
    hex::encode(Sha256::digest(hex::decode(hex_text).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_call_pays_the_invoice_and_the_next_call_reuses_the_token() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "bitcoin");
    let (payer0, payee0) = (
        peers.balance_msat("payer").await,
        peers.balance_msat("payee").await,
    );

    let (results, logs) = calls(&peers, &setup, &["weather", "weather"]).await;
    let first = &results[0];
    assert_ne!(first["isError"], json!(true), "{first}\n{logs}");
    assert_eq!(first["structuredContent"]["result"]["forecast"], "sunny");
    let receipt = &first["structuredContent"]["payment"];
    assert_eq!(receipt["protocol"], "l402", "{receipt}");
    assert_eq!(receipt["amount_atomic"], "21000", "msat: {receipt}");
    assert_eq!(receipt["amount_msat"], "21000");
    assert_eq!(receipt["amount_sats"], "21");
    assert_eq!(receipt["rate_usd_micros_per_unit"], 1000, "µUSD per sat");
    assert_eq!(receipt["amount_usd_micros"], 21_000);
    assert_eq!(receipt["amount_usd"], "0.021");
    assert_eq!(receipt["backend"], "lnbits");
    assert_eq!(receipt["network"], "lightning:bitcoin");
    let hash = receipt["payment_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);

    // The payee's wallet rose by the invoice; the payer's fell by it (FakeWallet charges no fee).
    assert_eq!(peers.balance_msat("payee").await, payee0 + PRICE_MSAT);
    assert_eq!(peers.balance_msat("payer").await, payer0 - PRICE_MSAT);
    // The preimage LNbits paid for hashes to the payment hash on the receipt.
    let payment = peers.payment("payer", &hash).await;
    assert_eq!(payment["paid"], true, "{payment}");
    let preimage = payment["preimage"].as_str().unwrap();
    assert_eq!(sha256_hex(preimage), hash);
    // The preimage and the admin key are bearer secrets: in no result, in no log line.
    for secret in [preimage.to_owned(), peers.payer_admin_key()] {
        assert!(!first.to_string().contains(&secret), "secret in the result");
        assert!(!logs.contains(&secret), "secret in tollgate's logs");
    }

    // The second call sent the paid token: served, nothing paid, and the result says so.
    let second = &results[1];
    assert_ne!(second["isError"], json!(true), "{second}");
    assert_eq!(second["structuredContent"]["result"]["forecast"], "sunny");
    let reused = &second["structuredContent"]["payment"];
    assert_eq!(reused["reused"], true, "{reused}");
    assert_eq!(reused["amount_usd_micros"], 0);
    assert_eq!(reused["payment_hash"], hash.as_str());
    assert_eq!(peers.balance_msat("payer").await, payer0 - PRICE_MSAT);
    assert_eq!(
        peers.seller_stats().await,
        json!({"challenges": 1, "served": 2, "refused": 0})
    );

    // A new process reuses the token from the ledger too; another service pays its own.
    let (results, _) = calls(&peers, &setup, &["weather", "forecast"]).await;
    assert_eq!(results[0]["structuredContent"]["payment"]["reused"], true);
    assert_eq!(
        results[1]["structuredContent"]["payment"]["amount_msat"], "21000",
        "{}",
        results[1]
    );
    assert_eq!(peers.balance_msat("payer").await, payer0 - 2 * PRICE_MSAT);
    assert_eq!(peers.balance_msat("payee").await, payee0 + 2 * PRICE_MSAT);
}

/// A token paid on one host is kept in the shared PostgreSQL ledger and sent by another host:
/// one invoice paid for both.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_paid_on_one_host_is_reused_by_another_sharing_a_postgres_ledger() {
    let Some(peers) = peers().await else { return };
    let Some(place) = support::ledgers::Place::new(support::ledgers::Backend::Postgres) else {
        return;
    };
    let (one, two) = (Setup::new(&peers, "bitcoin"), Setup::new(&peers, "bitcoin"));
    place.configure(&one.config());
    place.configure(&two.config());
    let payer0 = peers.balance_msat("payer").await;

    let (results, logs) = calls(&peers, &one, &["weather"]).await;
    let paid = &results[0]["structuredContent"]["payment"];
    assert_eq!(paid["amount_msat"], "21000", "{}\n{logs}", results[0]);
    let (results, logs) = calls(&peers, &two, &["weather"]).await;
    let reused = &results[0]["structuredContent"]["payment"];
    assert_eq!(reused["reused"], true, "{}\n{logs}", results[0]);
    assert_eq!(reused["payment_hash"], paid["payment_hash"]);
    assert_eq!(peers.balance_msat("payer").await, payer0 - PRICE_MSAT);
    for host in [&one, &two] {
        place.assert_used_by(&host.dir.path().join("state"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lsat_challenges_with_token_and_version_parameters_are_paid() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "bitcoin");
    let payee0 = peers.balance_msat("payee").await;
    let (results, logs) = calls(&peers, &setup, &["weather_lsat_token"]).await;
    assert_ne!(results[0]["isError"], json!(true), "{}\n{logs}", results[0]);
    assert_eq!(
        results[0]["structuredContent"]["payment"]["protocol"],
        "l402"
    );
    assert_eq!(peers.balance_msat("payee").await, payee0 + PRICE_MSAT);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_invoices_and_unbindable_macaroons_are_refused_with_nothing_paid() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "bitcoin");
    let payer0 = peers.balance_msat("payer").await;
    let (results, logs) = calls(
        &peers,
        &setup,
        &[
            "bait",
            "expired",
            "amountless",
            "wronghash",
            "garbled",
            "foreignid",
        ],
    )
    .await;
    for (result, expect) in results.iter().zip([
        "above this tool's max_price",
        "expired",
        "names no amount",
        "is not the one in the macaroon",
        "the macaroon cannot be decoded",
        "identifier (40 bytes) is not aperture's",
    ]) {
        assert_eq!(result["isError"], true, "{result}\n{logs}");
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(text.contains(expect), "expected {expect:?} in: {text}");
        assert!(text.contains("nothing was paid"), "{text}");
    }
    assert_eq!(peers.balance_msat("payer").await, payer0, "nothing paid");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invoice_for_another_network_is_refused_with_nothing_paid() {
    let Some(peers) = peers().await else { return };
    // tollgate pays on regtest; the seller's invoices are mainnet ("lnbc").
    let setup = Setup::new(&peers, "regtest");
    let payer0 = peers.balance_msat("payer").await;
    let (results, logs) = calls(&peers, &setup, &["weather"]).await;
    assert_eq!(results[0]["isError"], true, "{}\n{logs}", results[0]);
    let text = results[0]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("for the Lightning network bitcoin") && text.contains("regtest"),
        "{text}"
    );
    assert!(text.contains("nothing was paid"), "{text}");
    assert_eq!(peers.balance_msat("payer").await, payer0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_leads_to_exactly_one_fresh_payment() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "bitcoin");
    let payer0 = peers.balance_msat("payer").await;
    let (results, _) = calls(&peers, &setup, &["weather"]).await;
    assert_ne!(results[0]["isError"], json!(true), "{}", results[0]);
    assert_eq!(peers.balance_msat("payer").await, payer0 - PRICE_MSAT);

    // The seller forgets its root key: the kept token is refused, one fresh payment follows.
    peers.rotate_seller_key().await;
    let (results, _) = calls(&peers, &setup, &["weather", "weather"]).await;
    let fresh = &results[0]["structuredContent"]["payment"];
    assert_eq!(fresh["amount_msat"], "21000", "{}", results[0]);
    assert_eq!(
        results[1]["structuredContent"]["payment"]["reused"], true,
        "the fresh token is kept"
    );
    assert_eq!(peers.balance_msat("payer").await, payer0 - 2 * PRICE_MSAT);

    // A seller that refuses every token: paid once, refused, and never paid again.
    let before = peers.balance_msat("payer").await;
    let (results, _) = calls(&peers, &setup, &["rejecting"]).await;
    let text = results[0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(results[0]["isError"], true, "{text}");
    assert!(text.contains("answered 402 again"), "{text}");
    assert!(text.contains("nothing more was paid"), "{text}");
    assert_eq!(peers.balance_msat("payer").await, before - PRICE_MSAT);
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_first_calls_to_one_service_pay_one_invoice() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "bitcoin");
    let (payer0, payee0) = (
        peers.balance_msat("payer").await,
        peers.balance_msat("payee").await,
    );
    const PARALLEL: u64 = 5;
    // Five calls in flight at once on one session, each meeting the seller's 402.
    let config = setup.config();
    let key = peers.payer_admin_key();
    let results = tokio::task::spawn_blocking(move || {
        let mut session = Session::start(&config, &[("TOLLGATE_LNBITS_ADMIN_KEY", &key)]);
        for id in 1..=PARALLEL {
            session.call_tool(id, "weather", json!({}));
        }
        let results: Vec<Value> = (1..=PARALLEL)
            .map(|_| session.next_response().expect("tollgate exited early")["result"].clone())
            .collect();
        session.finish();
        results
    })
    .await
    .unwrap();

    let mut paid = 0;
    for result in &results {
        assert_ne!(result["isError"], json!(true), "{result}");
        assert_eq!(result["structuredContent"]["result"]["forecast"], "sunny");
        let payment = &result["structuredContent"]["payment"];
        if payment["reused"] == json!(true) {
            assert_eq!(payment["amount_usd_micros"], 0, "{payment}");
        } else {
            assert_eq!(payment["amount_msat"], "21000", "{payment}");
            paid += 1;
        }
    }
    // One invoice paid; the other calls waited and sent its token.
    assert_eq!(paid, 1, "{results:#?}");
    assert_eq!(peers.balance_msat("payer").await, payer0 - PRICE_MSAT);
    assert_eq!(peers.balance_msat("payee").await, payee0 + PRICE_MSAT);
    assert_eq!(peers.seller_stats().await["served"], json!(PARALLEL));
    // One receipt, for the one invoice; nothing left open.
    let ledger = tollgate::ledger::Ledger::open(&setup.dir.path().join("state")).unwrap();
    assert_eq!(ledger.all_receipts(None, 100).unwrap().len(), 1);
    assert!(ledger.pending().unwrap().is_empty());
}
