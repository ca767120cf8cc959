//! Invariant 2: never exceed a budget, with many concurrent calls in several tollgate
//! processes sharing one ledger. 4 processes × 32 concurrent paid calls against a cap that
//! allows exactly N payments: exactly N succeed, the receipts add up to what the seller
//! received, and the refused calls signed nothing. Run against both ledger backends: the
//! SQLite file all four share, and a PostgreSQL database (`support::ledgers`).

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::ledgers::{Backend, Place};
use support::mcp::Setup;
use support::stdio::Session;
use support::upstream::TestUpstream;

use support::seller::BUYER_KEY as KEY;
const PROCESSES: usize = 4;
const CALLS: usize = 32;
const N: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn four_processes_pay_exactly_n_times_under_a_shared_cap() {
    four_processes_pay_exactly_n_times(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn four_processes_pay_exactly_n_times_under_a_shared_postgres_cap() {
    four_processes_pay_exactly_n_times(Backend::Postgres).await;
}

async fn four_processes_pay_exactly_n_times(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let url = place.url.clone();
    let up = TestUpstream::start(support::seller::always_settles).await;
    let setup = Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{}/paid?n={{n}}\"\nmax_price = \"0.05 USD\"\n\
         input_schema = {{ type = \"object\", properties = {{ n = {{ type = \"integer\" }} }} }}\n",
        up.base()
    ));
    let dir = setup.dir.path().to_owned();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    // N payments of 0.01 USD fit; the (N+1)th does not.
    std::fs::write(
        dir.join("policies/default.toml"),
        format!("[caps]\ntotal = \"0.{N:02}5 USD\"\n"),
    )
    .unwrap();

    let config = setup.config();
    let outcomes = tokio::task::spawn_blocking(move || {
        let handles: Vec<_> = (0..PROCESSES)
            .map(|p| {
                let (config, url) = (config.clone(), url.clone());
                std::thread::spawn(move || run_process(&config, url.as_deref(), p))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<Value>>()
    })
    .await
    .unwrap();

    assert_eq!(outcomes.len(), PROCESSES * CALLS);
    let paid = outcomes
        .iter()
        .filter(|r| r["structuredContent"]["payment"].is_object())
        .count();
    let refused: Vec<&Value> = outcomes
        .iter()
        .filter(|r| r["isError"] == json!(true))
        .collect();
    assert_eq!(paid, N, "exactly N payments");
    assert_eq!(refused.len(), PROCESSES * CALLS - N);
    for r in &refused {
        let text = r["content"][0]["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("policy's total cap") && text.contains("nothing was paid"),
            "{text}"
        );
    }
    let received = up
        .seen()
        .iter()
        .filter(|s| s.header("PAYMENT-SIGNATURE").is_some())
        .count();
    assert_eq!(received, N, "the seller received exactly N signed payments");

    let mut receipts = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    receipts
        .args(["receipts", "--format", "json", "--config"])
        .arg(setup.config());
    if let Some(url) = &place.url {
        receipts.env("TOLLGATE_LEDGER_URL", url);
    }
    let out = receipts.output().unwrap();
    let receipts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let total: u64 = receipts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["amount_usd_micros"].as_u64())
        .sum();
    assert_eq!(
        total,
        N as u64 * 10_000,
        "the receipts add up to what the seller received"
    );
    place.assert_used_by(&dir.join("state"));
}

/// One tollgate process: 32 calls sent at once, their results collected.
fn run_process(config: &std::path::Path, url: Option<&str>, p: usize) -> Vec<Value> {
    let mut env = vec![("TOLLGATE_EVM_KEY", KEY)];
    if let Some(url) = url {
        env.push(("TOLLGATE_LEDGER_URL", url));
    }
    let mut session = Session::start(config, &env);
    for i in 0..CALLS {
        let n = p * CALLS + i; // distinct arguments: distinct calls
        session.call_tool(i as u64 + 1, "paid", json!({"n": n}));
    }
    let results = (0..CALLS)
        .map(|_| session.next_response().expect("tollgate exited early")["result"].clone())
        .collect();
    session.finish();
    results
}
