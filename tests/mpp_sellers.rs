//! MPP (the `Payment` HTTP authentication scheme, Tempo charge) against the real sellers
//! (`mppx` 0.11.0 and `pympp` 0.16.0) settling on anvil in Tempo mode, driven through the real
//! Python MCP client. The chain is the judge: mined transactions and pathUSD balances.

mod support;

use serde_json::{Value, json};
use support::mcp::{Mode, drive, python};
use support::mpp_peer::{MppPeers, start};

/// One pathUSD charge of the sellers' `/weather` (0.01 pathUSD, 6 decimals).
const AMOUNT: u128 = 10_000;

/// A scratch config: the local chain's pathUSD as an asset, the Tempo wallet on the peers'
/// anvil, a policy allowing `networks` and `assets`, and one tool per seller route.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(peers: &MppPeers, networks: &[&str], assets: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        let (rpc, path_usd) = (peers.str("/rpc"), peers.str("/tokens/pathUSD"));
        std::fs::write(
            p.join("tollgate.toml"),
            format!(
                r#"tools_dir = "tools"
policy = "test"
[[assets]]
network = "tempo:31337"
address = "{path_usd}"
symbol = "pathUSD"
decimals = 6
[wallet.tempo]
rpc_url = "{rpc}"
chain_id = 31337
[rpc]
"tempo:31337" = "{rpc}"
"#
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("policies/test.toml"),
            format!(
                "[caps]\nper_call = \"0.50 USD\"\n[allow]\nnetworks = {networks:?}\nassets = {assets:?}\n"
            ),
        )
        .unwrap();
        let (mppx, pympp) = (peers.str("/mppx/seller"), peers.str("/pympp/seller"));
        let tool = |name: &str, url: String| {
            format!(
                "[[tool]]\nname = \"{name}\"\ndescription = \"{name} from an MPP seller\"\n\
                 url = \"{url}\"\nmax_price = \"0.05 USD\"\n\n"
            )
        };
        let tools = [
            tool("weather_mppx", format!("{mppx}/weather")),
            tool("weather_pympp", format!("{pympp}/weather")),
            tool("weather_mixed", format!("{mppx}/mixed")),
            tool("expensive", format!("{mppx}/expensive")),
            tool("stale", format!("{mppx}/expired")),
            tool("lightning_only", format!("{mppx}/unknown-method")),
            tool("slow_once", format!("{mppx}/slow-once")),
            tool("switch_payee", format!("{mppx}/switch-payee")),
            // A person approves every payment of this tool.
            "approval = \"always\"\n\n".to_owned(),
            tool("hang_after_pay", format!("{mppx}/hang-after-pay")),
            // Gives up before the seller answers (it holds the paid answer 8 s).
            "timeout_ms = 3000\n".to_owned(),
        ]
        .concat();
        std::fs::write(p.join("tools/sellers.toml"), tools).unwrap();
        Setup { dir }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("tollgate.toml")
    }
}

async fn call(setup: &Setup, key: &str, name: &str) -> Value {
    call_with(setup, key, name, json!({})).await
}

async fn call_with(setup: &Setup, key: &str, name: &str, arguments: Value) -> Value {
    let python = python().expect("checked by the caller");
    let steps = json!([{"op": "call_tool", "name": name, "arguments": arguments, "timeout_s": 90}]);
    let report = drive(
        &python,
        Mode::Stateless,
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", key)],
        steps,
    )
    .await;
    let step = &report["steps"][0];
    assert!(step["result"].is_object(), "the call has no result: {step}");
    step["result"].clone()
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn peers() -> Option<MppPeers> {
    python()?;
    start().await
}

/// Pays `tool` (a 0.01 pathUSD `/weather` of `seller`) as buyer `buyer`, and checks the MCP
/// result, the receipt, the mined transaction and the recipient's balance.
async fn paid_call_settles_on_chain(seller: &str, tool: &str, buyer: usize, forecast: &str) {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, &["tempo:31337"], &["pathUSD"]);
    let (key, payer) = peers.buyer(buyer);
    let recipient = peers.str(&format!("/{seller}/recipient"));
    let before = peers.path_usd(&recipient).await;
    let payer_before = peers.path_usd(&payer).await;

    let result = call(&setup, &key, tool).await;
    assert_ne!(
        result["isError"],
        json!(true),
        "{result}\n{}",
        peers.logs().join("\n")
    );
    assert_eq!(
        result["structuredContent"]["result"]["forecast"], forecast,
        "{result}"
    );
    let receipt = &result["structuredContent"]["payment"];
    assert_eq!(receipt["protocol"], "mpp", "{receipt}");
    assert_eq!(receipt["method"], "tempo", "{receipt}");
    assert_eq!(receipt["intent"], "charge", "{receipt}");
    assert_eq!(receipt["network"], "tempo:31337", "{receipt}");
    assert_eq!(receipt["asset"], peers.str("/tokens/pathUSD"), "{receipt}");
    assert_eq!(receipt["asset_symbol"], "pathUSD", "{receipt}");
    assert_eq!(receipt["amount_atomic"], AMOUNT.to_string(), "{receipt}");
    assert_eq!(receipt["amount_usd"], "0.01", "{receipt}");
    assert_eq!(receipt["payee"], recipient.to_lowercase(), "{receipt}");
    assert_eq!(
        receipt["payer"].as_str().unwrap().to_lowercase(),
        payer.to_lowercase()
    );
    let reference = receipt["reference"]
        .as_str()
        .expect("a reference")
        .to_owned();
    assert_eq!(receipt["transaction"], reference.as_str(), "{receipt}");
    // The seller's own Payment-Receipt, decoded, for MCP-native clients.
    let standard = &result["_meta"]["org.paymentauth/receipt"];
    assert_eq!(standard["reference"], reference.as_str(), "{result}");
    assert_eq!(standard["status"], "success", "{result}");

    // The reference is a mined transaction sent by the buyer, and the recipient got exactly
    // the amount.
    assert_eq!(peers.tx_status(&reference).await, "success", "{reference}");
    let tx = peers.tx(&reference).await;
    assert_eq!(
        tx["from"].as_str().unwrap().to_lowercase(),
        payer.to_lowercase(),
        "{tx}"
    );
    assert_eq!(peers.path_usd(&recipient).await, before + AMOUNT);
    // The buyer paid the amount and the transaction's fee, in pathUSD; the receipt (and so
    // every budget) charged exactly what the wallet lost.
    let drop = payer_before - peers.path_usd(&payer).await;
    let fee: u128 = receipt["fee_atomic"]
        .as_str()
        .expect("the receipt shows the fee")
        .parse()
        .unwrap();
    eprintln!("{seller}: charged {receipt}, the wallet lost {drop}");
    assert!(fee > 0, "{receipt}");
    assert_eq!(drop, AMOUNT + fee, "{receipt}");
    // pathUSD: 6 decimals, 1 USD each, so atomic units are micro-USD.
    assert_eq!(receipt["charged_usd_micros"], json!(drop), "{receipt}");

    // One unpaid request (with Accept-Payment), then exactly one paid request.
    let log = peers.seller_log(seller).await;
    let paid: Vec<&Value> = log.iter().filter(|e| e["paid"] == true).collect();
    assert_eq!(paid.len(), 1, "{log:?}");
    assert_eq!(paid[0]["status"], 200, "{log:?}");
    assert_eq!(log[0]["accept_payment"], "tempo/charge", "{log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mppx_paid_call_returns_the_result_and_a_receipt_of_a_mined_transaction() {
    paid_call_settles_on_chain("mppx", "weather_mppx", 0, "sunny").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pympp_paid_call_returns_the_result_and_a_receipt_of_a_mined_transaction() {
    paid_call_settles_on_chain("pympp", "weather_pympp", 1, "rainy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_402_with_bearer_and_l402_beside_payment_is_paid_through_payment() {
    paid_call_settles_on_chain("mppx", "weather_mixed", 2, "sunny").await;
}

/// Calls `tool` and checks it is refused with `expected` in the message and nothing paid.
async fn refused(peers: &MppPeers, setup: &Setup, key: &str, tool: &str, expected: &str) {
    let result = call(setup, key, tool).await;
    let message = text(&result);
    eprintln!("refusal of {tool}: {message}");
    assert_eq!(result["isError"], json!(true), "{tool}: {result}");
    assert!(
        message.contains(expected),
        "{tool}: expected {expected:?} in {message:?}\n{}",
        peers.logs().join("\n")
    );
    assert!(message.contains("nothing"), "{tool}: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_sign_nothing_and_the_chain_shows_no_payment() {
    let Some(peers) = peers().await else { return };
    let (key, buyer) = peers.buyer(3);
    let recipient = peers.str("/mppx/recipient");
    // Tempo charges use expiring nonces (the account nonce does not move): the buyer's pathUSD
    // (which also pays the fees) is the witness that nothing was mined.
    let (buyer_before, recipient_before) = (
        peers.path_usd(&buyer).await,
        peers.path_usd(&recipient).await,
    );

    let allowed = Setup::new(&peers, &["tempo:31337"], &["pathUSD"]);
    // 5 pathUSD against a max_price of 0.05 USD.
    refused(
        &peers,
        &allowed,
        &key,
        "expensive",
        "costs 5 USD, which is above this tool's max_price 0.05 USD",
    )
    .await;
    // Every challenge of /expired is already stale: one fresh challenge, then refused.
    refused(
        &peers,
        &allowed,
        &key,
        "stale",
        "again on a fresh challenge",
    )
    .await;
    refused(
        &peers,
        &allowed,
        &key,
        "lightning_only",
        "MPP lightning/charge is not supported",
    )
    .await;
    let other_currency = Setup::new(&peers, &["tempo:31337"], &["USDC"]);
    refused(
        &peers,
        &other_currency,
        &key,
        "weather_mppx",
        "asset pathUSD is not allowed by the policy",
    )
    .await;
    let other_chain = Setup::new(&peers, &["eip155:4217"], &["pathUSD"]);
    refused(
        &peers,
        &other_chain,
        &key,
        "weather_mppx",
        "network tempo:31337 is not allowed by the policy",
    )
    .await;

    // Nothing was signed: the seller never saw a credential, the buyer spent nothing, the
    // recipient received nothing.
    let log = peers.seller_log("mppx").await;
    assert!(log.iter().all(|e| e["paid"] == false), "{log:?}");
    let stale_requests = log.iter().filter(|e| e["path"] == "/expired").count();
    assert_eq!(stale_requests, 2, "one fresh challenge, no more: {log:?}");
    assert_eq!(peers.path_usd(&buyer).await, buyer_before);
    assert_eq!(peers.path_usd(&recipient).await, recipient_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn payment_expired_gets_one_fresh_challenge_and_is_paid_once() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, &["tempo:31337"], &["pathUSD"]);
    let (key, payer) = peers.buyer(4);
    let recipient = peers.str("/mppx/recipient");
    let before = peers.path_usd(&recipient).await;

    // The seller holds the first paid request until its challenge has expired, and answers
    // problem+json `payment-expired`; tollgate asks for a fresh challenge and pays that.
    let result = call(&setup, &key, "slow_once").await;
    assert_ne!(
        result["isError"],
        json!(true),
        "{result}\n{}",
        peers.logs().join("\n")
    );
    let reference = result["structuredContent"]["payment"]["reference"]
        .as_str()
        .expect("a reference")
        .to_owned();
    assert_eq!(peers.tx_status(&reference).await, "success");
    assert_eq!(
        peers.tx(&reference).await["from"]
            .as_str()
            .unwrap()
            .to_lowercase(),
        payer.to_lowercase()
    );
    assert_eq!(peers.path_usd(&recipient).await, before + AMOUNT);

    let log = peers.seller_log("mppx").await;
    let paid: Vec<(Value, Value)> = log
        .iter()
        .filter(|e| e["paid"] == true)
        .map(|e| (e["path"].clone(), e["status"].clone()))
        .collect();
    assert_eq!(
        paid,
        [
            (json!("/slow-once"), json!(402)),
            (json!("/slow-once"), json!(200))
        ],
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_outcome_is_settled_by_reconcile_from_the_transaction_on_chain() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, &["tempo:31337"], &["pathUSD"]);
    let (key, payer) = peers.buyer(5);
    let recipient = peers.str("/mppx/recipient");
    let before = peers.path_usd(&recipient).await;
    let payer_before = peers.path_usd(&payer).await;

    // The seller settles on chain but answers after tollgate has given up: outcome unknown.
    let result = call(&setup, &key, "hang_after_pay").await;
    assert_eq!(result["isError"], json!(true), "{result}");
    assert!(
        text(&result).contains("may or may not have settled"),
        "{result}"
    );
    let state = setup.dir.path().join("state");
    let pending = tollgate::ledger::Ledger::open(&state)
        .unwrap()
        .pending()
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");

    // `tollgate reconcile` finds the signed transaction on chain and writes the receipt.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["reconcile", "--config"])
        .arg(setup.config())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("1 settled"), "{stdout}");
    let ledger = tollgate::ledger::Ledger::open(&state).unwrap();
    assert!(ledger.pending().unwrap().is_empty());
    let receipts = ledger.all_receipts(None, 10).unwrap();
    assert_eq!(receipts.len(), 1);
    let receipt: Value = serde_json::from_str(&receipts[0].json).unwrap();
    assert_eq!(receipt["protocol"], "mpp", "{receipt}");
    assert_eq!(receipt["reconciled"], true, "{receipt}");
    let transaction = receipt["transaction"].as_str().unwrap();
    assert_eq!(peers.tx_status(transaction).await, "success");
    assert_eq!(peers.path_usd(&recipient).await, before + AMOUNT);
    // Charged what the wallet lost: the amount and the transaction's fee, read from chain.
    let lost = payer_before - peers.path_usd(&payer).await;
    assert!(lost > AMOUNT, "the buyer paid a fee: {lost}");
    assert_eq!(
        receipts[0].amount_usd_micros as u128, lost,
        "the ledger counts what the wallet lost: {receipt}"
    );
    // The seller's own receipt names the same transaction.
    let log = peers.seller_log("mppx").await;
    let paid = log
        .iter()
        .find(|e| e["paid"] == true)
        .expect("a paid request");
    let theirs = paid["receipt"].as_str().unwrap();
    let decoded: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            theirs.trim_end_matches('='),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        decoded["reference"].as_str().unwrap().to_lowercase(),
        transaction
    );
}

alloy::sol! {
    /// Tempo's AccountKeychain precompile (T3+), as in `tempo-contracts` 1.11.
    struct TokenLimit { address token; uint256 amount; uint64 period; }
    struct SelectorRule { bytes4 selector; address[] recipients; }
    struct CallScope { address target; SelectorRule[] selectorRules; }
    struct KeyRestrictions {
        uint64 expiry;
        bool enforceLimits;
        TokenLimit[] limits;
        bool allowAnyCalls;
        CallScope[] allowedCalls;
    }
    function authorizeKey(address keyId, uint8 signatureType, KeyRestrictions config) external;
}

const ACCOUNT_KEYCHAIN: &str = "0xAAAAAAAA00000000000000000000000000000000";
/// anvil dev account #1: the Tempo account whose access key tollgate holds.
const ROOT_ACCOUNT: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
/// The access key tollgate is given (never funded: the account pays).
const ACCESS_KEY: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";

/// A config like `Setup::new`, in keychain mode for `ROOT_ACCOUNT`.
fn keychain_setup(peers: &MppPeers) -> Setup {
    let setup = Setup::new(peers, &["tempo:31337"], &["pathUSD"]);
    let config = setup.config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "chain_id = 31337\n",
            &format!("chain_id = 31337\naccount = \"{ROOT_ACCOUNT}\"\n"),
        ),
    )
    .unwrap();
    setup
}

#[tokio::test(flavor = "multi_thread")]
async fn keychain_mode_pays_from_the_account_that_authorized_the_access_key() {
    use alloy::sol_types::SolCall as _;
    let Some(peers) = peers().await else { return };
    let setup = keychain_setup(&peers);
    let access = tollgate::wallet::EvmWallet::from_hex(ACCESS_KEY)
        .unwrap()
        .address();
    let recipient = peers.str("/mppx/recipient");
    let (recipient_before, root_before) = (
        peers.path_usd(&recipient).await,
        peers.path_usd(ROOT_ACCOUNT).await,
    );

    // The account authorizes the key on chain, with a 1 pathUSD spending limit.
    let path_usd: alloy::primitives::Address = peers.str("/tokens/pathUSD").parse().unwrap();
    let data = authorizeKeyCall {
        keyId: access,
        signatureType: 0,
        config: KeyRestrictions {
            expiry: u64::MAX,
            enforceLimits: true,
            limits: vec![TokenLimit {
                token: path_usd,
                amount: alloy::primitives::U256::from(1_000_000u64),
                period: 0,
            }],
            allowAnyCalls: true,
            allowedCalls: vec![],
        },
    }
    .abi_encode();
    let hash = peers
        .rpc(
            "eth_sendTransaction",
            json!([{"from": ROOT_ACCOUNT, "to": ACCOUNT_KEYCHAIN,
                    "data": format!("0x{}", hex::encode(data))}]),
        )
        .await;
    // anvil mines it on its own schedule: wait for the receipt.
    let mut status = String::new();
    for _ in 0..100 {
        status = peers.tx_status(hash.as_str().unwrap()).await;
        if status != "missing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, "success", "authorizeKey");

    let result = call(&setup, ACCESS_KEY, "weather_mppx").await;
    assert_ne!(
        result["isError"],
        json!(true),
        "{result}\n{}",
        peers.logs().join("\n")
    );
    let receipt = &result["structuredContent"]["payment"];
    assert_eq!(
        receipt["payer"].as_str().unwrap().to_lowercase(),
        ROOT_ACCOUNT.to_lowercase()
    );
    let reference = receipt["reference"].as_str().unwrap();
    assert_eq!(peers.tx_status(reference).await, "success");
    assert_eq!(peers.path_usd(&recipient).await, recipient_before + AMOUNT);
    assert!(peers.path_usd(ROOT_ACCOUNT).await <= root_before - AMOUNT);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_challenge_for_another_payee_than_a_person_approved_pays_nothing() {
    let Some(peers) = peers().await else { return };
    let (key, buyer) = peers.buyer(2);
    // /switch-payee's fresh challenges pay the pympp recipient.
    let bait = peers.str("/pympp/recipient");
    let (buyer_before, bait_before) = (peers.path_usd(&buyer).await, peers.path_usd(&bait).await);
    let setup = Setup::new(&peers, &["tempo:31337"], &["pathUSD"]);

    // No elicitation in this session: the payment waits for a person.
    let first = call(&setup, &key, "switch_payee").await;
    let pending = &first["structuredContent"];
    assert_eq!(pending["status"], "approval_required", "{first}");
    let id = pending["approval_id"].as_str().unwrap().to_owned();
    let approved = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["approve", &id, "--config"])
        .arg(setup.config())
        .output()
        .unwrap();
    assert!(approved.status.success(), "{approved:?}");

    // The retry meets a challenge that has expired, so tollgate fetches a fresh one, which
    // names another recipient at the same price: not what the person approved.
    let retry = call_with(&setup, &key, "switch_payee", json!({"approval_id": id})).await;
    let message = text(&retry);
    assert_eq!(retry["isError"], json!(true), "{retry}");
    assert!(message.contains("as a person approved"), "{message}");
    assert!(message.contains("nothing was paid"), "{message}");
    let log = peers.seller_log("mppx").await;
    let switch: Vec<&Value> = log
        .iter()
        .filter(|e| e["path"] == "/switch-payee")
        .collect();
    assert_eq!(
        switch.len(),
        3,
        "the first 402, the retry's 402, one fresh: {log:?}"
    );
    assert!(switch.iter().all(|e| e["paid"] == false), "{log:?}");
    assert_eq!(peers.path_usd(&buyer).await, buyer_before);
    assert_eq!(peers.path_usd(&bait).await, bait_before);
}

/// Models send identical calls at once: each pays its own charge (its own signed Tempo
/// transaction), none sends another's credential, and every charge has one receipt.
#[tokio::test(flavor = "multi_thread")]
async fn four_identical_calls_at_once_each_pay_their_own_charge() {
    const PARALLEL: usize = 4;
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, &["tempo:31337"], &["pathUSD"]);
    let (key, payer) = peers.buyer(0);
    let recipient = peers.str("/mppx/recipient");
    let before = peers.path_usd(&recipient).await;

    let config = setup.config();
    let results = tokio::task::spawn_blocking(move || {
        let mut session =
            support::stdio::Session::start(&config, &[("TOLLGATE_EVM_KEY", key.as_str())]);
        for id in 1..=PARALLEL {
            session.call_tool(id as u64, "weather_mppx", json!({}));
        }
        let results: Vec<Value> = (0..PARALLEL)
            .map(|_| session.next_response().expect("tollgate exited early")["result"].clone())
            .collect();
        session.finish();
        results
    })
    .await
    .unwrap();

    let mut references = Vec::new();
    for result in &results {
        assert_ne!(
            result["isError"],
            json!(true),
            "{result}\n{}",
            peers.logs().join("\n")
        );
        let reference = result["structuredContent"]["payment"]["reference"]
            .as_str()
            .expect("a reference")
            .to_owned();
        assert_eq!(peers.tx_status(&reference).await, "success", "{reference}");
        assert_eq!(
            peers.tx(&reference).await["from"]
                .as_str()
                .unwrap()
                .to_lowercase(),
            payer.to_lowercase()
        );
        references.push(reference);
    }
    references.sort();
    references.dedup();
    assert_eq!(references.len(), PARALLEL, "one transaction per call");
    assert_eq!(
        peers.path_usd(&recipient).await,
        before + AMOUNT * PARALLEL as u128,
        "the recipient got exactly one charge per call"
    );
    let ledger = tollgate::ledger::Ledger::open(&setup.dir.path().join("state")).unwrap();
    let receipts = ledger.all_receipts(None, 100).unwrap();
    assert_eq!(receipts.len(), PARALLEL, "one receipt per charge");
    assert!(ledger.pending().unwrap().is_empty());
    let log = peers.seller_log("mppx").await;
    let paid = log.iter().filter(|e| e["paid"] == true).count();
    assert_eq!(paid, PARALLEL, "one paid request per call: {log:?}");
}
