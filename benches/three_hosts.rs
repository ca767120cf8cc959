//! The three-instance burst of `tests/three_hosts.rs` as a benchmark, on both ledgers
//! (`cargo bench --bench three_hosts`): 3 hosts × 4 `tollgate serve` processes × 8 concurrent
//! paid calls against the real x402 v2 seller (`@x402/express` 2.27 on anvil with Circle's
//! FiatToken), and the same 96 calls with every process sharing one SQLite ledger file (the
//! SQLite equivalent: three configs, one state directory). Prints, per ledger, paid calls/s,
//! p50/p99 call latency, errors, and whether the chain's settlements equal the ledger's
//! receipts; then the burst once more under a per-day cap of N, which must pay exactly N.
//!
//! The clock starts when all 12 processes are up (each answered `tools/list`) and every call
//! is sent; spawning is not counted. The bursts alternate between the ledgers, so the drift of
//! a shared machine falls on both. Figures, not assertions, except that nothing is paid
//! twice or without a receipt.
//!
//! The database: `TOLLGATE_BENCH_PG_URL` if set (a server where the bench may create and drop
//! databases), else a cluster of its own in `target/pg-bench` (`scripts/postgres`, fsync on,
//! as a real database), stopped after. The peers: `scripts/test` installs them.

#[path = "../tests/support/cli.rs"]
mod cli;
#[path = "../tests/support/hosts.rs"]
mod hosts;
#[path = "../tests/support/ledgers.rs"]
#[allow(dead_code)]
mod ledgers;
#[path = "../tests/support/stdio.rs"]
#[allow(dead_code)]
mod stdio;
#[path = "../tests/support/x402_peer.rs"]
mod x402_peer;

#[path = "support/bench_postgres.rs"]
mod bench_postgres;

use bench_postgres::BenchPostgres;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hosts::host;
use ledgers::{Backend, Place};
use serde_json::{Value, json};
use stdio::Session;
use x402_peer::X402Peers;

const PRICE: u128 = 1_000; // atomic USDC (and µUSD) per call of /weather (0.001 USD)
const HOSTS: usize = 3;
const PROCESSES: usize = 4;
const CALLS: usize = 8;
/// Bursts per ledger without a binding cap (alternating SQLite, PostgreSQL).
const ROUNDS: usize = 3;
/// The cap of the last burst, in payments.
const N: usize = 10;

/// One call's outcome: its latency and its result.
struct Call {
    latency: Duration,
    result: Value,
}

/// One `tollgate serve` on `host`: up (it answered `tools/list`), then waits at `start` for
/// every other process, sends `CALLS` calls at once and collects their results.
fn process(host: &Path, key: &str, tag: &str, start: &Barrier) -> (Vec<Call>, Instant) {
    let mut session = Session::start(&host.join("tollgate.toml"), &[("TOLLGATE_EVM_KEY", key)]);
    session.send(json!({"jsonrpc": "2.0", "id": 1_000, "method": "tools/list"}));
    session
        .response(1_000)
        .expect("tollgate answered tools/list");
    start.wait();
    let mut sent = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        sent.push(Instant::now());
        session.call_tool(
            i as u64 + 1,
            "weather",
            json!({ "city": format!("{tag}-{i}") }),
        );
    }
    let mut calls = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let response = session.next_response().expect("tollgate exited early");
        let id = response["id"].as_u64().expect("a numeric id") as usize;
        calls.push(Call {
            latency: sent[id - 1].elapsed(),
            result: response["result"].clone(),
        });
    }
    let done = Instant::now();
    session.finish();
    (calls, done)
}

fn is_paid(result: &Value) -> bool {
    result["isError"] != json!(true) && result["structuredContent"]["payment"].is_object()
}

fn is_cap_refusal(result: &Value) -> bool {
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    result["isError"] == json!(true)
        && text.contains("per-day cap")
        && text.contains("nothing was paid")
}

/// What one burst did.
struct Burst {
    calls: Vec<Call>,
    elapsed: Duration,
    paid: usize,
    /// Neither paid nor refused by the cap.
    errors: usize,
    first_error: Option<String>,
    /// `AuthorizationUsed` events of the buyer on chain during the burst.
    settled: usize,
    /// What the payee received, in payments.
    moved: u128,
    receipts: usize,
    open: usize,
}

/// The burst on a fresh ledger of `backend` under `policy`.
fn burst(
    runtime: &tokio::runtime::Runtime,
    peers: &X402Peers,
    backend: Backend,
    policy: &str,
) -> Burst {
    let place = Place::new(backend).expect("a ledger");
    let hosts: Vec<PathBuf> = (0..HOSTS).map(|i| host(peers, &place, policy, i)).collect();
    let (payee, buyer) = (peers.str("/v2/payee"), peers.str("/buyer"));
    let before = runtime.block_on(peers.balance("v2", &payee));
    let used_before = runtime
        .block_on(peers.authorizations_used("v2", &buyer))
        .len();

    let key = peers.str("/buyer_key");
    let start = Arc::new(Barrier::new(HOSTS * PROCESSES + 1));
    let handles: Vec<_> = hosts
        .iter()
        .enumerate()
        .flat_map(|(h, host)| (0..PROCESSES).map(move |p| (h, p, host.clone())))
        .map(|(h, p, host)| {
            let (key, start) = (key.clone(), start.clone());
            std::thread::spawn(move || process(&host, &key, &format!("h{h}p{p}"), &start))
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut calls = Vec::new();
    let mut last = t0;
    for h in handles {
        let (c, done) = h.join().unwrap();
        calls.extend(c);
        last = last.max(done);
    }
    let elapsed = last - t0;

    let paid = calls.iter().filter(|c| is_paid(&c.result)).count();
    let failed: Vec<&Call> = calls
        .iter()
        .filter(|c| !is_paid(&c.result) && !is_cap_refusal(&c.result))
        .collect();
    let first_error = failed.first().map(|c| {
        c.result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect()
    });
    let moved = (runtime.block_on(peers.balance("v2", &payee)) - before) / PRICE;
    let settled = runtime
        .block_on(peers.authorizations_used("v2", &buyer))
        .len()
        - used_before;
    let ledger = place.open();
    let receipts = ledger.all_receipts(None, 10_000).unwrap().len();
    let open = ledger.pending().unwrap().len();
    drop(ledger);
    Burst {
        errors: failed.len(),
        first_error,
        calls,
        elapsed,
        paid,
        settled,
        moved,
        receipts,
        open,
    }
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    }
}

/// The chain and the ledger agree: every settlement has its receipt, and nothing is open.
fn agrees(b: &Burst) -> bool {
    b.settled == b.receipts && b.moved == b.receipts as u128 && b.open == 0
}

fn report(backend: Backend, bursts: &[Burst]) {
    let paid: usize = bursts.iter().map(|b| b.paid).sum();
    let calls: usize = bursts.iter().map(|b| b.calls.len()).sum();
    let secs: f64 = bursts.iter().map(|b| b.elapsed.as_secs_f64()).sum();
    let errors: usize = bursts.iter().map(|b| b.errors).sum();
    let mut latencies: Vec<Duration> = bursts
        .iter()
        .flat_map(|b| b.calls.iter().map(|c| c.latency))
        .collect();
    let settled: usize = bursts.iter().map(|b| b.settled).sum();
    let receipts: usize = bursts.iter().map(|b| b.receipts).sum();
    let per_burst: Vec<String> = bursts
        .iter()
        .map(|b| format!("{:.1}", b.paid as f64 / b.elapsed.as_secs_f64()))
        .collect();
    println!(
        "{:<10}  {paid} of {calls} paid in {secs:.2} s: {:.1} paid calls/s (bursts: {}), \
         latency p50 {} p99 {}, {errors} errors{}; chain settlements {settled} = receipts \
         {receipts}: {}",
        name(backend),
        paid as f64 / secs,
        per_burst.join(", "),
        ms(percentile(&mut latencies, 50)),
        ms(percentile(&mut latencies, 99)),
        bursts
            .iter()
            .find_map(|b| b.first_error.as_deref())
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        if bursts.iter().all(agrees) {
            "yes"
        } else {
            "NO"
        },
    );
}

fn main() {
    // Stopped (when it is the bench's own) as this is dropped, at the end of main.
    let cluster = BenchPostgres::start();
    let url = cluster.url.clone();
    // `support::ledgers` makes a database per `Place` on the server this variable names.
    // SAFETY: no other thread is running yet.
    unsafe { std::env::set_var(ledgers::PG_URL, &url) };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    measure(&runtime);
    drop(runtime);
}

/// Both ledgers' uncapped bursts, alternating, then one capped burst on each.
fn measure(runtime: &tokio::runtime::Runtime) {
    let Some(peers) = runtime.block_on(x402_peer::start()) else {
        println!("x402 peers are not installed (run scripts/test once); nothing measured");
        return;
    };
    println!(
        "{HOSTS} hosts x {PROCESSES} processes x {CALLS} concurrent paid calls against the \
             x402 v2 seller, {ROUNDS} bursts per ledger (alternating), per-day cap 10 USD"
    );
    let uncapped = "[caps]\nper_call = \"0.01 USD\"\nper_day = \"10 USD\"\n";
    let (mut sqlite, mut postgres) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        sqlite.push(burst(runtime, &peers, Backend::Sqlite, uncapped));
        postgres.push(burst(runtime, &peers, Backend::Postgres, uncapped));
    }
    report(Backend::Sqlite, &sqlite);
    report(Backend::Postgres, &postgres);

    let capped = format!("[caps]\nper_call = \"0.01 USD\"\nper_day = \"0.0{N} USD\"\n");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let b = burst(runtime, &peers, backend, &capped);
        println!(
            "{:<10}  per-day cap of {N} payments: {} of {} paid in {} ({} refused by the cap, \
                 {} errors); chain settlements {} = receipts {}: {}",
            name(backend),
            b.paid,
            b.calls.len(),
            ms(b.elapsed),
            b.calls.iter().filter(|c| is_cap_refusal(&c.result)).count(),
            b.errors,
            b.settled,
            b.receipts,
            if agrees(&b) && b.paid == N {
                "yes"
            } else {
                "NO"
            },
        );
    }
}
