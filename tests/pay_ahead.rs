//! Paying ahead (README "Paying ahead"): once a seller has asked the same x402 offer on two
//! paid calls in a row and settled both, the next call pays it with its first request. Against
//! the real sellers (`@x402/express` 2.27.0 for v2, `x402-express` 1.2.0 for v1, on anvil with
//! Circle's FiatToken): the seller's own log says which requests carried a payment, the chain
//! says what moved. A seller whose price changed refuses the payment made ahead: that call
//! fails saying so, nothing settles, and the next call asks first and pays the new price. The
//! hostile cases (a seller that refuses payments it did not ask for) run against an in-process
//! seller.

mod support;

use serde_json::{Value, json};
use support::stdio::Session;
use support::upstream::TestUpstream;
use support::x402_peer::{X402Peers, start};

fn setup(dir: &std::path::Path, peers: &X402Peers) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("tools")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\npolicy = \"test\"\n\
             [[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
             [[assets]]\nnetwork = \"base-sepolia\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n",
            peers.str("/v2/usdc"),
            peers.str("/v1/usdc")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("policies/test.toml"),
        "[caps]\nper_call = \"0.01 USD\"\n[allow]\nnetworks = [\"eip155:31337\", \"base-sepolia\"]\n",
    )
    .unwrap();
    let (v2, v1) = (peers.seller("v2"), peers.seller("v1"));
    std::fs::write(
        dir.join("tools/t.toml"),
        format!(
            r#"
[[tool]]
name = "weather_v2"
description = "paid"
url = "{v2}/weather?city={{city}}"
max_price = "0.01 USD"
input_schema = {{ type = "object", properties = {{ city = {{ type = "string" }} }} }}

[[tool]]
name = "weather_v1"
description = "paid, x402 v1"
url = "{v1}/weather?city={{city}}"
max_price = "0.01 USD"
input_schema = {{ type = "object", properties = {{ city = {{ type = "string" }} }} }}

[[tool]]
name = "variable"
description = "paid, at a price that changes"
url = "{v2}/variable?city={{city}}"
max_price = "0.01 USD"
input_schema = {{ type = "object", properties = {{ city = {{ type = "string" }} }} }}

[[tool]]
name = "asks_first"
description = "paid, never ahead"
url = "{v2}/weather?city=never-ahead"
max_price = "0.01 USD"
pay_ahead = false
"#
        ),
    )
    .unwrap();
    dir.join("tollgate.toml")
}

/// One call on the session, waited for.
fn call(session: &mut Session, id: u64, tool: &str, arguments: Value) -> Value {
    tokio::task::block_in_place(|| {
        session.call_tool(id, tool, arguments);
        session.response(id).expect("tollgate answered")["result"].clone()
    })
}

fn paid(result: &Value) -> &Value {
    assert_ne!(result["isError"], json!(true), "{result}");
    &result["structuredContent"]["payment"]
}

/// The seller's requests to `path`, in order: (status, the payment header it carried).
async fn requests(peers: &X402Peers, which: &str, path: &str) -> Vec<(u64, Option<String>)> {
    peers
        .seller_events(which, "request")
        .await
        .iter()
        .filter(|e| e["path"] == path)
        .map(|e| {
            (
                e["status"].as_u64().unwrap_or_default(),
                e["payment_header"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn paid_ahead_from_the_third_call(which: &str, tool: &str, header: &str) {
    let Some(peers) = start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &peers);
    let payee = peers.str(&format!("/{which}/payee"));
    let before = peers.balance(which, &payee).await;
    let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &peers.str("/buyer_key"))]);
    let mut transactions = std::collections::HashSet::new();
    for i in 0..4u64 {
        let result = call(&mut session, i + 1, tool, json!({"city": format!("c{i}")}));
        let receipt = paid(&result);
        assert_eq!(receipt["amount_atomic"], "1000", "{receipt}");
        let tx = receipt["transaction"].as_str().expect("a transaction");
        assert_eq!(peers.tx_status(which, tx).await, "success");
        transactions.insert(tx.to_owned());
    }
    tokio::task::block_in_place(|| session.finish());
    assert_eq!(transactions.len(), 4, "four settlements");
    assert_eq!(peers.balance(which, &payee).await, before + 4000);
    let h = Some(header.to_owned());
    assert_eq!(
        requests(&peers, which, "/weather").await,
        vec![
            (402, None),
            (200, h.clone()),
            (402, None),
            (200, h.clone()),
            // The same offer asked and settled twice: paid with the first request.
            (200, h.clone()),
            (200, h),
        ],
        "{}",
        peers.logs().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_a_price_asked_and_settled_twice_is_paid_with_the_first_request_after() {
    paid_ahead_from_the_third_call("v2", "weather_v2", "PAYMENT-SIGNATURE").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_a_price_asked_and_settled_twice_is_paid_with_the_first_request_after() {
    paid_ahead_from_the_third_call("v1", "weather_v1", "X-PAYMENT").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_price_refuses_the_payment_made_ahead_and_the_next_call_pays_the_new_one() {
    let Some(peers) = start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &peers);
    let payee = peers.str("/v2/payee");
    let buyer = peers.str("/buyer");
    let (payee_before, buyer_before) = (
        peers.balance("v2", &payee).await,
        peers.balance("v2", &buyer).await,
    );
    let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &peers.str("/buyer_key"))]);
    for i in 0..3u64 {
        let result = call(
            &mut session,
            i + 1,
            "variable",
            json!({"city": format!("c{i}")}),
        );
        assert_eq!(paid(&result)["amount_atomic"], "1000");
    }
    let raised = reqwest::Client::new()
        .post(format!("{}/_price/2000", peers.seller("v2")))
        .send()
        .await
        .unwrap();
    assert!(raised.status().is_success());

    // Paid ahead at 1000; the seller now asks 2000 and refuses it.
    let refused = call(&mut session, 4, "variable", json!({"city": "c3"}));
    assert_eq!(refused["isError"], json!(true), "{refused}");
    let text = refused["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("ahead") && text.contains("2000") && text.contains("nothing more was signed"),
        "{text}"
    );
    // The next calls ask first and pay the new price.
    for i in 5..7u64 {
        let result = call(
            &mut session,
            i,
            "variable",
            json!({"city": format!("c{i}")}),
        );
        assert_eq!(paid(&result)["amount_atomic"], "2000", "{result}");
    }
    tokio::task::block_in_place(|| session.finish());

    let moved = 3 * 1000 + 2 * 2000;
    assert_eq!(peers.balance("v2", &payee).await, payee_before + moved);
    assert_eq!(peers.balance("v2", &buyer).await, buyer_before - moved);
    let p = Some("PAYMENT-SIGNATURE".to_owned());
    assert_eq!(
        requests(&peers, "v2", "/variable").await,
        vec![
            (402, None),
            (200, p.clone()),
            (402, None),
            (200, p.clone()),
            (200, p.clone()),
            // Paid ahead at the old price: refused, and nothing more is signed for that call.
            (402, p.clone()),
            // Never ahead again for this seller in this process.
            (402, None),
            (200, p.clone()),
            (402, None),
            (200, p),
        ],
        "{}",
        peers.logs().join("\n")
    );
    let settled = peers.seller_events("v2", "settle").await;
    assert_eq!(
        settled.iter().filter(|e| e["ok"] == json!(true)).count(),
        5,
        "the refused payment never settled: {settled:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_with_pay_ahead_off_asks_the_seller_every_time() {
    let Some(peers) = start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &peers);
    let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &peers.str("/buyer_key"))]);
    for i in 0..4u64 {
        let result = call(&mut session, i + 1, "asks_first", json!({}));
        assert_eq!(paid(&result)["amount_atomic"], "1000");
    }
    tokio::task::block_in_place(|| session.finish());
    let p = Some("PAYMENT-SIGNATURE".to_owned());
    assert_eq!(
        requests(&peers, "v2", "/weather").await,
        (0..4)
            .flat_map(|_| [(402, None), (200, p.clone())])
            .collect::<Vec<_>>(),
        "{}",
        peers.logs().join("\n")
    );
}

/// An in-process seller that settles what it asked for (a signed payment that follows an
/// unpaid request for the same path), and answers 402 to any payment it did not ask for.
async fn asks_first_seller() -> TestUpstream {
    use support::seller::{payment_required, requirements, settled, signature_of};
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    TestUpstream::start(move |seen| match signature_of(seen) {
        None => {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            payment_required(json!([requirements("1000")]), "payment required")
        }
        Some(_) if !asked.swap(false, std::sync::atomic::Ordering::SeqCst) => {
            payment_required(json!([requirements("1000")]), "unsolicited_payment")
        }
        Some(sig) => settled(
            json!({"data": "paid content"}),
            &sig["payload"]["authorization"]["from"],
        ),
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seller_that_takes_no_payment_it_did_not_ask_for_is_asked_first_from_then_on() {
    let up = asks_first_seller().await;
    let setup = support::mcp::Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{}/paid?q={{q}}\"\n\
         max_price = \"0.05 USD\"\ninput_schema = {{ type = \"object\", properties = {{ q = {{ type = \"string\" }} }} }}\n",
        up.base()
    ));
    let mut session = Session::start(
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", support::seller::BUYER_KEY)],
    );
    for i in 1..=2u64 {
        let result = call(&mut session, i, "paid", json!({"q": format!("{i}")}));
        paid(&result);
    }
    let refused = call(&mut session, 3, "paid", json!({"q": "3"}));
    let text = refused["content"][0]["text"].as_str().unwrap_or_default();
    assert_eq!(refused["isError"], json!(true), "{refused}");
    assert!(
        text.contains("ahead") && text.contains("unsolicited_payment"),
        "{text}"
    );
    for i in 4..=5u64 {
        let result = call(&mut session, i, "paid", json!({"q": format!("{i}")}));
        paid(&result);
    }
    tokio::task::block_in_place(|| session.finish());
    let signed: Vec<bool> = up
        .seen()
        .iter()
        .map(|s| s.header("PAYMENT-SIGNATURE").is_some())
        .collect();
    assert_eq!(
        signed,
        vec![
            false, true, // asked, paid
            false, true, // asked, paid
            true, // paid ahead: refused, and nothing more signed for that call
            false, true, // asked first from then on
            false, true,
        ]
    );
}

/// Sends every call at once on the session, then waits for all of them: results by id.
fn at_once(session: &mut Session, calls: &[(u64, Value)]) -> std::collections::HashMap<u64, Value> {
    tokio::task::block_in_place(|| {
        for (id, arguments) in calls {
            session.call_tool(*id, "weather_v2", arguments.clone());
        }
        let mut results = std::collections::HashMap::new();
        while results.len() < calls.len() {
            let r = session.next_response().expect("tollgate answered");
            results.insert(r["id"].as_u64().unwrap(), r["result"].clone());
        }
        results
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_calls_paid_ahead_each_pay_their_own_identical_or_distinct() {
    let Some(peers) = start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &peers);
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &peers.str("/buyer_key"))]);
    for i in 1..=2u64 {
        paid(&call(
            &mut session,
            i,
            "weather_v2",
            json!({"city": "warm"}),
        ));
    }
    // 8 at once, as a host sends parallel tool calls: 4 identical, 4 distinct.
    let calls: Vec<(u64, Value)> = (3..=10u64)
        .map(|id| {
            let city = if id <= 6 {
                "same".to_owned()
            } else {
                format!("c{id}")
            };
            (id, json!({"city": city}))
        })
        .collect();
    let results = at_once(&mut session, &calls);
    tokio::task::block_in_place(|| session.finish());
    let mut transactions = std::collections::HashSet::new();
    for result in results.values() {
        let receipt = paid(result);
        transactions.insert(receipt["transaction"].as_str().unwrap().to_owned());
    }
    assert_eq!(transactions.len(), 8, "each call its own settlement");
    assert_eq!(peers.balance("v2", &payee).await, before + 10 * 1000);
    let seen = requests(&peers, "v2", "/weather").await;
    let p = Some("PAYMENT-SIGNATURE".to_owned());
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert!(
        seen[4..].iter().all(|r| *r == (200, p.clone())),
        "the 8 parallel calls were each paid with their first request: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_paying_ahead_at_once_never_pass_a_shared_cap() {
    let Some(peers) = start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &peers);
    // 7 calls of 0.001 a day, for both processes (one ledger).
    std::fs::write(
        dir.path().join("policies/test.toml"),
        "[caps]\nper_call = \"0.01 USD\"\nper_day = \"0.007 USD\"\n[allow]\nnetworks = [\"eip155:31337\"]\n",
    )
    .unwrap();
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let key = peers.str("/buyer_key");
    let mut a = Session::start(&config, &[("TOLLGATE_EVM_KEY", &key)]);
    let mut b = Session::start(&config, &[("TOLLGATE_EVM_KEY", &key)]);
    for (session, name) in [(&mut a, "a"), (&mut b, "b")] {
        for i in 1..=2u64 {
            paid(&call(
                session,
                i,
                "weather_v2",
                json!({"city": format!("warm-{name}")}),
            ));
        }
    }
    // Both processes now pay ahead; 4 identical calls each, at once: 3 fit under the cap.
    let calls: Vec<(u64, Value)> = (3..=6u64).map(|id| (id, json!({"city": "same"}))).collect();
    let (ra, rb) = tokio::task::block_in_place(|| {
        for (id, arguments) in &calls {
            a.call_tool(*id, "weather_v2", arguments.clone());
            b.call_tool(*id, "weather_v2", arguments.clone());
        }
        let collect = |s: &mut Session| {
            (0..calls.len())
                .map(|_| s.next_response().expect("tollgate answered")["result"].clone())
                .collect::<Vec<_>>()
        };
        (collect(&mut a), collect(&mut b))
    });
    let all: Vec<&Value> = ra.iter().chain(rb.iter()).collect();
    let ok = all.iter().filter(|r| r["isError"] != json!(true)).count();
    let refused: Vec<String> = all
        .iter()
        .filter(|r| r["isError"] == json!(true))
        .map(|r| {
            r["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(ok, 3, "{all:#?}");
    assert!(
        refused
            .iter()
            .all(|t| t.contains("per-day cap") && t.contains("nothing was paid")),
        "{refused:?}"
    );
    // The next call, in either process, is refused before anything is signed.
    let next = call(&mut a, 7, "weather_v2", json!({"city": "next"}));
    assert_eq!(next["isError"], json!(true), "{next}");
    tokio::task::block_in_place(|| {
        a.finish();
        b.finish();
    });
    assert_eq!(peers.balance("v2", &payee).await, before + 7 * 1000);
    let settled = peers.seller_events("v2", "settle").await;
    assert_eq!(settled.iter().filter(|e| e["ok"] == json!(true)).count(), 7);
    let signed = requests(&peers, "v2", "/weather")
        .await
        .iter()
        .filter(|(_, header)| header.is_some())
        .count();
    assert_eq!(signed, 7, "nothing signed beyond the cap");
}
