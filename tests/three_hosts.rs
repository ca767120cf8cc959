//! Three tollgate "hosts" (separate state directories, the same root key) sharing one
//! PostgreSQL ledger, against the real x402 v2 seller (`@x402/express` 2.27 on anvil with
//! Circle's FiatToken): the chain is the judge.
//!
//! * 3 hosts × 4 processes × 8 concurrent paid calls under one per-day cap of N payments:
//!   exactly N are paid on chain and N receipts are in the ledger.
//! * A child credential delegated on host 1 spends on host 2 and counts against its parent,
//!   whose next payments are judged on host 3.

mod support;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use support::cli::tollgate;
use support::hosts::host;
use support::ledgers::{Backend, Place};
use support::stdio::Session;
use support::x402_peer::start;

const PRICE: u128 = 1_000; // atomic USDC (and µUSD) per call of /weather (0.001 USD)
const HOSTS: usize = 3;
const PROCESSES: usize = 4;
const CALLS: usize = 8;
const N: usize = 10;

/// One `tollgate serve` on `host`: `calls` calls sent at once, their results collected.
fn burst(host: &Path, env: &[(&str, &str)], tag: &str, calls: usize) -> Vec<Value> {
    let mut session = Session::start(&host.join("tollgate.toml"), env);
    for i in 0..calls {
        let city = format!("{tag}-{i}");
        session.call_tool(i as u64 + 1, "weather", json!({ "city": city }));
    }
    let results = (0..calls)
        .map(|_| session.next_response().expect("tollgate exited early")["result"].clone())
        .collect();
    session.finish();
    results
}

fn is_paid(result: &Value) -> bool {
    result["isError"] != json!(true) && result["structuredContent"]["payment"].is_object()
}

fn error_text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_pay_exactly_n_times_under_one_per_day_cap() {
    if support::mcp::python().is_none() {
        return;
    }
    let Some(peers) = start().await else { return };
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let policy = format!("[caps]\nper_call = \"0.01 USD\"\nper_day = \"0.0{N} USD\"\n");
    let hosts: Vec<PathBuf> = (0..HOSTS)
        .map(|i| host(&peers, &place, &policy, i))
        .collect();
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    let key = peers.str("/buyer_key");
    let started = Instant::now();
    let results: Vec<Value> = tokio::task::spawn_blocking(move || {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .flat_map(|(h, host)| (0..PROCESSES).map(move |p| (h, p, host.clone())))
            .map(|(h, p, host)| {
                let key = key.clone();
                std::thread::spawn(move || {
                    burst(
                        &host,
                        &[("TOLLGATE_EVM_KEY", &key)],
                        &format!("h{h}p{p}"),
                        CALLS,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();

    assert_eq!(results.len(), HOSTS * PROCESSES * CALLS);
    let paid: Vec<&Value> = results.iter().filter(|r| is_paid(r)).collect();
    assert_eq!(
        paid.len(),
        N,
        "exactly N paid across three hosts: {:#?}\n{}",
        results
            .iter()
            .filter(|r| !is_paid(r))
            .map(error_text)
            .collect::<std::collections::BTreeSet<_>>(),
        peers.logs().join("\n")
    );
    for refused in results.iter().filter(|r| !is_paid(r)) {
        let text = error_text(refused);
        assert!(
            text.contains("per-day cap") && text.contains("nothing was paid"),
            "{text}"
        );
    }
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + N as u128 * PRICE,
        "the chain moved exactly N × the price"
    );
    let ledger = tokio::task::block_in_place(|| place.open());
    let receipts = ledger.all_receipts(None, 1_000).unwrap();
    assert_eq!(receipts.len(), N, "N receipts in the shared ledger");
    assert_eq!(
        receipts.iter().map(|r| r.amount_usd_micros).sum::<u64>() as u128,
        N as u128 * PRICE
    );
    assert!(ledger.pending().unwrap().is_empty(), "nothing left open");
    for i in 0..HOSTS {
        place.assert_used_by(&place.dir.path().join(format!("host-{i}/state")));
    }
    eprintln!(
        "{} calls on {HOSTS} hosts × {PROCESSES} processes: {N} paid in {:.2} s ({:.1} paid calls/s, {:.1} calls/s)",
        results.len(),
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64(),
        results.len() as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_child_delegated_on_host_1_spends_on_host_2_and_counts_against_its_parent_on_host_3() {
    if support::mcp::python().is_none() {
        return;
    }
    let Some(peers) = start().await else { return };
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    // The orchestrator may spend 3 payments; its child 2.
    let policy = "[caps]\nper_call = \"0.01 USD\"\n\n[profiles.orchestrator]\nbudget = \"0.003 USD\"\n\
                  lifetime = \"1d\"\n";
    let hosts: Vec<PathBuf> = (0..HOSTS)
        .map(|i| host(&peers, &place, policy, i))
        .collect();
    let key = peers.str("/buyer_key");
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let orchestrator = tollgate(&hosts[0], &["token", "mint", "--profile", "orchestrator"]);

    let (h, k, o) = (hosts.clone(), key.clone(), orchestrator.clone());
    let (child, spent_by_child, parent_calls) = tokio::task::spawn_blocking(move || {
        // Host 1: the orchestrator delegates.
        let mut session = Session::start(
            &h[0].join("tollgate.toml"),
            &[("TOLLGATE_EVM_KEY", &k), ("TOLLGATE_TOKEN", &o)],
        );
        session.call_tool(
            1,
            "delegate_budget",
            json!({"budget_usd_micros": 2000, "label": "worker", "tools": ["weather"]}),
        );
        let delegated = session.response(1).expect("delegate_budget answered");
        session.finish();
        let child = delegated["result"]["structuredContent"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no child token: {delegated}"))
            .to_owned();
        // Host 2: the child spends all it has (2 payments), the third is refused.
        let spent = burst(
            &h[1],
            &[("TOLLGATE_EVM_KEY", &k), ("TOLLGATE_TOKEN", &child)],
            "child",
            3,
        );
        // Host 3: the orchestrator has 1 payment left, whatever host it calls from.
        let parent = burst(
            &h[2],
            &[("TOLLGATE_EVM_KEY", &k), ("TOLLGATE_TOKEN", &o)],
            "parent",
            2,
        );
        (child, spent, parent)
    })
    .await
    .unwrap();
    assert!(!child.is_empty());
    let child_paid = spent_by_child.iter().filter(|r| is_paid(r)).count();
    assert_eq!(child_paid, 2, "{spent_by_child:#?}");
    let refused: Vec<String> = spent_by_child
        .iter()
        .filter(|r| !is_paid(r))
        .map(error_text)
        .collect();
    assert!(refused[0].contains("nothing was paid"), "{refused:?}");
    let parent_paid = parent_calls.iter().filter(|r| is_paid(r)).count();
    assert_eq!(
        parent_paid, 1,
        "the child's spend on host 2 counts against the parent on host 3: {parent_calls:#?}"
    );
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + 3 * PRICE,
        "the chain moved exactly 3 payments"
    );
    // Host 3's view of the tree: the worker under the orchestrator, spend counted in both.
    let tree: Value =
        serde_json::from_str(&tollgate(&hosts[2], &["budget", "--format", "json"])).unwrap();
    let ledger = tokio::task::block_in_place(|| place.open());
    let rows = ledger.budget_tree().unwrap();
    let worker = rows
        .iter()
        .find(|r| r.label.as_deref().is_some_and(|l| l.starts_with("worker")))
        .unwrap_or_else(|| panic!("no worker budget: {tree}"));
    let parent = rows
        .iter()
        .find(|r| Some(r.key.as_str()) == worker.parent.as_deref())
        .unwrap_or_else(|| panic!("the worker has no parent: {tree}"));
    assert_eq!(worker.spent_usd_micros as u128, 2 * PRICE, "{tree}");
    assert_eq!(parent.spent_usd_micros as u128, 3 * PRICE, "{tree}");
    assert!(tree.to_string().contains("worker"), "{tree}");
}
