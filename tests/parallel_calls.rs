//! Parallel calls as hosts make them: several `tools/call` requests at once on one MCP
//! session, identical (models repeat a call, and a tool without arguments makes every call
//! identical) and across processes sharing one ledger, against the real x402 v2 seller
//! (`@x402/express` 2.27 on anvil with Circle's FiatToken). The chain is the judge: every
//! paid call moved exactly its price, every payment has exactly one receipt, and no call ever
//! sends another call's in-flight proof. The cross-process case runs on both ledger
//! backends: the SQLite file the processes share, and a PostgreSQL database
//! (`support::ledgers`).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::ledgers::{Backend, Place};
use support::stdio::Session;
use support::x402_peer::{X402Peers, start};

const PRICE: u128 = 1_000; // atomic USDC per call of /weather (0.001 USD)

/// A scratch config for the v2 seller, with `policy` as the policy file.
struct Setup {
    dir: tempfile::TempDir,
    /// The ledger's database, when it is not the SQLite file in `dir/state`.
    place: Option<Place>,
}

impl Setup {
    /// The config of [`Setup::new`] on a ledger of `backend`; `None` (after saying why) when
    /// PostgreSQL is not available and peers are not required.
    fn on(peers: &X402Peers, policy: &str, backend: Backend) -> Option<Setup> {
        let mut setup = Setup::new(peers, policy);
        if backend == Backend::Postgres {
            let place = Place::new(backend)?;
            place.configure(&setup.config());
            setup.place = Some(place);
        }
        Some(setup)
    }

    fn new(peers: &X402Peers, policy: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        std::fs::write(
            p.join("tollgate.toml"),
            format!(
                "tools_dir = \"tools\"\npolicy = \"test\"\n[[assets]]\nnetwork = \"eip155:31337\"\n\
                 address = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n[rpc]\n\"eip155:31337\" = \"{}\"\n",
                peers.str("/v2/usdc"),
                peers.str("/v2/rpc"),
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("policies/test.toml"),
            format!("{policy}\n[allow]\nnetworks = [\"eip155:31337\"]\nassets = [\"USDC\"]\n"),
        )
        .unwrap();
        std::fs::write(
            p.join("tools/seller.toml"),
            format!(
                "[[tool]]\nname = \"weather\"\ndescription = \"Weather from the x402 v2 seller\"\n\
                 url = \"{0}/weather?city=Paris\"\nmax_price = \"0.01 USD\"\n\n\
                 [[tool]]\nname = \"slow\"\ndescription = \"Pays, then answers after 8 s\"\n\
                 url = \"{0}/hang-after-pay\"\nmax_price = \"0.01 USD\"\ntimeout_ms = 3000\n",
                peers.seller("v2")
            ),
        )
        .unwrap();
        Setup { dir, place: None }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("tollgate.toml")
    }

    /// `tollgate receipts --format json`.
    fn receipts(&self) -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["receipts", "--format", "json", "--config"])
            .arg(self.config())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// One `tollgate serve`: `calls` identical calls of `weather` sent at once, results collected.
fn identical_calls(config: &std::path::Path, key: &str, calls: usize) -> Vec<Value> {
    let mut session = Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    for i in 0..calls {
        session.call_tool(i as u64 + 1, "weather", json!({}));
    }
    let results = (0..calls)
        .map(|_| session.next_response().expect("tollgate exited early")["result"].clone())
        .collect();
    session.finish();
    results
}

fn paid(results: &[Value]) -> Vec<&Value> {
    results
        .iter()
        .filter(|r| r["isError"] != json!(true))
        .map(|r| &r["structuredContent"]["payment"])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_identical_calls_at_once_on_one_session_each_pay_once() {
    if support::mcp::python().is_none() {
        return;
    }
    let Some(peers) = start().await else { return };
    let setup = Setup::new(&peers, "[caps]\nper_call = \"0.01 USD\"\n");
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    let (config, key) = (setup.config(), peers.str("/buyer_key"));
    let results = tokio::task::spawn_blocking(move || identical_calls(&config, &key, 8))
        .await
        .unwrap();

    let receipts = paid(&results);
    assert_eq!(
        receipts.len(),
        8,
        "every identical call paid its own: {results:#?}\n{}",
        peers.logs().join("\n")
    );
    let mut transactions: Vec<&str> = receipts
        .iter()
        .map(|r| r["transaction"].as_str().expect("a transaction"))
        .collect();
    transactions.sort_unstable();
    transactions.dedup();
    assert_eq!(transactions.len(), 8, "eight distinct settlements");
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + 8 * PRICE,
        "the chain moved exactly 8 × the price"
    );
    let ledger = setup.receipts();
    assert_eq!(ledger.len(), 8, "8 receipts in the ledger");
    let spent: u64 = ledger
        .iter()
        .map(|r| r["amount_usd_micros"].as_u64().unwrap())
        .sum();
    assert_eq!(u128::from(spent), 8 * PRICE, "ledger spent = chain moved");
    // No seller ever saw one authorization twice.
    let signed: Vec<Value> = peers
        .seller_events("v2", "settle")
        .await
        .into_iter()
        .filter(|s| s["ok"] == json!(true))
        .collect();
    assert_eq!(signed.len(), 8, "{signed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn four_processes_of_identical_calls_pay_exactly_the_cap_and_no_more() {
    four_processes_of_identical_calls_pay_exactly_the_cap(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn four_processes_of_identical_calls_pay_exactly_the_cap_and_no_more_on_postgres() {
    four_processes_of_identical_calls_pay_exactly_the_cap(Backend::Postgres).await;
}

async fn four_processes_of_identical_calls_pay_exactly_the_cap(backend: Backend) {
    const PROCESSES: usize = 4;
    const CALLS: usize = 8;
    const N: u128 = 5;
    if support::mcp::python().is_none() {
        return;
    }
    let Some(peers) = start().await else { return };
    // N calls of 0.001 fit under the per-day cap; the (N+1)th does not.
    let Some(setup) = Setup::on(
        &peers,
        "[caps]\nper_call = \"0.01 USD\"\nper_day = \"0.0055 USD\"\n",
        backend,
    ) else {
        return;
    };
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    let (config, key) = (setup.config(), peers.str("/buyer_key"));
    let results = tokio::task::spawn_blocking(move || {
        let handles: Vec<_> = (0..PROCESSES)
            .map(|_| {
                let (config, key) = (config.clone(), key.clone());
                std::thread::spawn(move || identical_calls(&config, &key, CALLS))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<Value>>()
    })
    .await
    .unwrap();

    assert_eq!(results.len(), PROCESSES * CALLS);
    let receipts = paid(&results);
    assert_eq!(
        receipts.len() as u128,
        N,
        "exactly N paid: {results:#?}\n{}",
        peers.logs().join("\n")
    );
    for r in results.iter().filter(|r| r["isError"] == json!(true)) {
        let text = r["content"][0]["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("per-day cap") && text.contains("nothing was paid"),
            "every other call was refused by the cap, before signing: {text}"
        );
    }
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + N * PRICE,
        "the chain moved exactly N × the price"
    );
    let ledger = setup.receipts();
    assert_eq!(ledger.len() as u128, N, "N receipts");
    let spent: u64 = ledger
        .iter()
        .map(|r| r["amount_usd_micros"].as_u64().unwrap())
        .sum();
    assert_eq!(u128::from(spent), N * PRICE, "ledger spent = chain moved");

    // The next call is refused by the cap, and nothing more moves.
    let (config, key) = (setup.config(), peers.str("/buyer_key"));
    let next = tokio::task::spawn_blocking(move || identical_calls(&config, &key, 1))
        .await
        .unwrap();
    assert_eq!(next[0]["isError"], json!(true), "{next:?}");
    assert_eq!(peers.balance("v2", &payee).await, before + N * PRICE);
    if let Some(place) = &setup.place {
        place.assert_used_by(&setup.dir.path().join("state"));
    }
}

/// A payment in flight belongs to its call: an identical call made meanwhile pays its own
/// (never re-sends the other's authorization), and a process that starts meanwhile (here
/// `tollgate reconcile`) leaves it alone; both calls then end with their own receipt.
#[tokio::test(flavor = "multi_thread")]
async fn a_payment_in_flight_is_never_taken_by_a_twin_or_a_starting_process() {
    use support::seller::{payment_required, requirements, settled, signature_of};
    use support::upstream::{Reply, TestUpstream};
    // Holds every paid request 3 s before it settles (a slow chain).
    let up = TestUpstream::start(|seen| match signature_of(seen) {
        None => payment_required(json!([requirements("10000")]), "payment required"),
        Some(sig) => Reply::Delayed(
            Box::new(settled(
                json!({"paid": true}),
                &sig["payload"]["authorization"]["from"],
            )),
            Duration::from_secs(3),
        ),
    })
    .await;
    let setup = support::mcp::Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{}/paid\"\n\
         max_price = \"0.05 USD\"\n",
        up.base()
    ));
    let config = setup.config();
    let signed = {
        let up_seen = move || {
            up.seen()
                .iter()
                .filter_map(signature_of)
                .map(|s| s["payload"]["authorization"]["nonce"].clone())
                .collect::<Vec<Value>>()
        };
        let up_seen = std::sync::Arc::new(up_seen);
        let seen = up_seen.clone();
        let (results, reconciled) = tokio::task::spawn_blocking(move || {
            let wait_for = |n: usize| {
                let deadline = Instant::now() + Duration::from_secs(20);
                while seen().len() < n {
                    assert!(
                        Instant::now() < deadline,
                        "the seller never saw {n} payments"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            let key = support::seller::BUYER_KEY;
            let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", key)]);
            session.call_tool(1, "paid", json!({}));
            wait_for(1);
            // The first payment is in flight: its twin pays its own.
            session.call_tool(2, "paid", json!({}));
            wait_for(2);
            // Both in flight: a process starting now must not touch either.
            let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .args(["reconcile", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            let reconciled = String::from_utf8_lossy(&out.stdout).into_owned();
            let results: Vec<Value> = (0..2)
                .map(|_| session.next_response().expect("tollgate exited early")["result"].clone())
                .collect();
            session.finish();
            (results, reconciled)
        })
        .await
        .unwrap();
        for r in &results {
            assert_ne!(r["isError"], json!(true), "{r}");
            assert!(
                r["structuredContent"]["payment"]["receipt_id"].is_string(),
                "{r}"
            );
        }
        assert!(
            reconciled.contains("0 settled") && reconciled.contains("0 released"),
            "{reconciled}"
        );
        assert!(
            reconciled.contains("2 in flight in a live call"),
            "{reconciled}"
        );
        up_seen()
    };
    assert_eq!(signed.len(), 2, "{signed:?}");
    assert_ne!(
        signed[0], signed[1],
        "the twin signed its own authorization"
    );
    let ledger = tollgate::ledger::Ledger::open(&setup.dir.path().join("state")).unwrap();
    assert_eq!(ledger.all_receipts(None, 10).unwrap().len(), 2);
    assert!(ledger.pending().unwrap().is_empty());
}

/// An answer lost after the seller settled (the host gave up, or tollgate was killed): the
/// proof's outcome is unknown, and the host's retry re-sends it. The seller refuses it as
/// already used; tollgate asks the chain at once, writes the receipt, and tells the model the
/// truth: paid, in which transaction, answer not delivered. Nothing more is paid.
#[tokio::test(flavor = "multi_thread")]
async fn a_resent_proof_the_seller_already_settled_is_receipted_at_once_not_paid_again() {
    let Some(python) = support::mcp::python() else {
        return;
    };
    let Some(peers) = start().await else { return };
    let setup = Setup::new(&peers, "[caps]\nper_call = \"0.01 USD\"\n");
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let key = peers.str("/buyer_key");
    let config = setup.config();
    let env = [("TOLLGATE_EVM_KEY", key.as_str())];
    let call = || {
        support::mcp::drive(
            &python,
            support::mcp::Mode::Stateless,
            &config,
            &env,
            json!([{"op": "call_tool", "name": "slow", "arguments": {}, "timeout_s": 60}]),
        )
    };

    let first = call().await["steps"][0]["result"].clone();
    let text = first["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(first["isError"], json!(true), "{first}");
    assert!(text.contains("may or may not have settled"), "{text}");

    // The seller settles once its handler answers, after the buyer gave up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !peers
        .seller_events("v2", "settle")
        .await
        .iter()
        .any(|e| e["ok"] == json!(true))
    {
        assert!(Instant::now() < deadline, "{}", peers.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(peers.balance("v2", &payee).await, before + PRICE);

    let retry = call().await["steps"][0]["result"].clone();
    let text = retry["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(retry["isError"], json!(true), "{retry}");
    assert!(
        text.contains("was made (transaction 0x") && text.contains("never delivered"),
        "the model is told it paid and got nothing: {text}"
    );
    assert!(text.contains("Nothing more was paid"), "{text}");
    // The same authorization was re-sent (never a second one), and the chain moved once.
    let signed: Vec<Value> = peers
        .seller_events("v2", "verify")
        .await
        .into_iter()
        .filter(|e| e["path"] == "/hang-after-pay")
        .collect();
    assert_eq!(signed.len(), 2, "sent, then re-sent: {signed:?}");
    // The seller declared x402's payment-identifier: both carried the one id of the payment.
    let id = signed[0]["payment_id"].as_str().expect("a payment id");
    assert!(id.starts_with("pay_") && id.len() == 36, "{id}");
    assert_eq!(signed[1]["payment_id"], signed[0]["payment_id"]);
    assert_eq!(peers.balance("v2", &payee).await, before + PRICE);
    let receipts = setup.receipts();
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!(receipts[0]["amount_usd_micros"], json!(1000));
    let ledger = tollgate::ledger::Ledger::open(&setup.dir.path().join("state")).unwrap();
    assert!(ledger.pending().unwrap().is_empty(), "nothing left open");
    let receipt: Value =
        serde_json::from_str(&ledger.all_receipts(None, 10).unwrap()[0].json).unwrap();
    assert_eq!(receipt["reconciled"], json!(true), "{receipt}");
    let tx = receipt["transaction"]
        .as_str()
        .expect("the chain names the transaction");
    assert_eq!(peers.tx_status("v2", tx).await, "success");
}
