//! kill -9 across processes that share one ledger, with identical and distinct calls mixed,
//! against the real x402 v2 seller (`@x402/express` 2.27.0 on anvil, Circle's FiatToken). The
//! chain is the judge: after `tollgate reconcile`, every `AuthorizationUsed` of the buyer has
//! exactly one receipt (0 lost receipts), no settlement has two (0 double payments), the
//! receipts add up to what the payee received, and nothing the chain shows settled is left
//! open. Meanwhile a process that starts while a live sibling's slow payment is in flight (and
//! `tollgate reconcile` run then) leaves that payment alone: its owner completes it with its
//! own receipt.
//!
//! Kill points are random: the seed is printed, and `TOLLGATE_TEST_SEED=<seed>` replays a run.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use support::stdio::Session;
use support::x402_peer::X402Peers;
use tollgate::ledger::{Ledger, PendingPayment, ReservationState};

/// What `/weather` and `/hang-after-pay` each cost, in atomic USDC (= micro-USD).
const PRICE: u64 = 1_000;
/// Rounds of processes started together, some killed mid-burst.
const ROUNDS: usize = 3;
const PROCESSES: usize = 3;
/// Arguments every process sends twice at once: identical calls, within and across processes.
const IDENTICAL: [u64; 2] = [0, 1];
/// Distinct calls per process (each with arguments no other call has).
const DISTINCT: usize = 2;
/// Kills land anywhere from start-up to after the last answer.
const KILL_WITHIN_MS: u64 = 600;
/// The bound on every wait for a condition.
const WAIT: Duration = Duration::from_secs(30);

/// One call: a tool and, for `paid`, its argument `n` (`/weather?city=c<n>`).
#[derive(Debug, Clone, Copy)]
struct Call {
    tool: &'static str,
    n: Option<u64>,
}

impl Call {
    fn paid(n: u64) -> Call {
        Call {
            tool: "paid",
            n: Some(n),
        }
    }

    /// `/hang-after-pay`: verified at once, answered and settled 8 s later.
    fn slow() -> Call {
        Call {
            tool: "slow",
            n: None,
        }
    }

    fn arguments(self) -> Value {
        match self.n {
            Some(n) => json!({ "n": n }),
            None => json!({}),
        }
    }
}

/// One `tollgate serve`: what it was asked, and what it answered (`None`: killed).
#[derive(Debug)]
struct Run {
    label: String,
    calls: Vec<Call>,
    results: Option<Vec<Value>>,
}

fn send_all(session: &mut Session, calls: &[Call]) {
    for (i, call) in calls.iter().enumerate() {
        session.call_tool(i as u64 + 1, call.tool, call.arguments());
    }
}

/// Reads answers until every id in `ids` (1-based call indexes) has one; returns them by id.
fn answers(session: &mut Session, ids: &[u64], label: &str) -> BTreeMap<u64, Value> {
    let mut got = BTreeMap::new();
    while !ids.iter().all(|id| got.contains_key(id)) {
        let message = session
            .next_response()
            .unwrap_or_else(|| panic!("{label} exited before answering"));
        let id = message["id"].as_u64().expect("a numeric id");
        got.insert(id, message["result"].clone());
    }
    got
}

/// Starts a process, sends `calls` at once, then kills it after `kill_after` (SIGKILL) or
/// collects every answer.
fn run(config: &Path, key: &str, label: String, calls: Vec<Call>, kill: Option<Duration>) -> Run {
    let mut session = Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    send_all(&mut session, &calls);
    if let Some(delay) = kill {
        std::thread::sleep(delay); // the random kill point, not a wait for anything
        session.kill();
        return Run {
            label,
            calls,
            results: None,
        };
    }
    let ids: Vec<u64> = (1..=calls.len() as u64).collect();
    let results = answers(&mut session, &ids, &label).into_values().collect();
    session.finish();
    Run {
        label,
        calls,
        results: Some(results),
    }
}

/// A burst for one process: each identical argument twice, and `DISTINCT` fresh ones, shuffled.
fn burst(rng: &mut StdRng, distinct: &mut Vec<u64>) -> Vec<Call> {
    let mut calls: Vec<Call> = IDENTICAL
        .iter()
        .flat_map(|&n| [Call::paid(n), Call::paid(n)])
        .collect();
    for _ in 0..DISTINCT {
        let n = 100 + distinct.len() as u64;
        distinct.push(n);
        calls.push(Call::paid(n));
    }
    calls.shuffle(rng);
    calls
}

fn config_dir(peers: &X402Peers) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n\
             [[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
             [rpc]\n\"eip155:31337\" = \"{}\"\n",
            peers.str("/v2/usdc"),
            peers.str("/v2/rpc")
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/test.toml"),
        "[caps]\nper_call = \"0.01 USD\"\n[allow]\nnetworks = [\"eip155:31337\"]\n",
    )
    .unwrap();
    std::fs::write(
        p.join("tools/seller.toml"),
        format!(
            "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{0}/weather?city=c{{n}}\"\n\
             max_price = \"0.01 USD\"\n\
             input_schema = {{ type = \"object\", properties = {{ n = {{ type = \"integer\" }} }} }}\n\n\
             [[tool]]\nname = \"slow\"\ndescription = \"paid, answered 8 s later\"\n\
             url = \"{0}/hang-after-pay\"\nmax_price = \"0.01 USD\"\ntimeout_ms = 25000\n",
            peers.seller("v2")
        ),
    )
    .unwrap();
    dir
}

/// `tollgate reconcile`: its one-line report.
fn reconcile(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["reconcile", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tollgate reconcile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number `reconcile` printed before `what` (e.g. " in flight in a live call").
fn count_in(report: &str, what: &str) -> usize {
    let head = &report[..report
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {report:?}"))];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {report:?}"))
}

/// The pid in an owner id (`host:pid:start:random`).
fn owner_pid(owner: &str) -> Option<u32> {
    owner.split(':').nth(1)?.parse().ok()
}

/// The EIP-3009 nonce of the authorization in a recorded x402 proof, lowercase hex.
fn nonce(payment: &PendingPayment) -> Option<String> {
    let proof: Value = serde_json::from_str(payment.proof_json.as_deref()?).ok()?;
    let header = proof["headers"].as_array()?.iter().find_map(|pair| {
        pair[0]
            .as_str()?
            .eq_ignore_ascii_case("payment-signature")
            .then(|| pair[1].as_str())?
    })?;
    let payload: Value = serde_json::from_slice(&B64.decode(header).ok()?).ok()?;
    Some(
        payload["payload"]["authorization"]["nonce"]
            .as_str()?
            .to_ascii_lowercase(),
    )
}

/// Waits (bounded) until the seller has settled every payment it verified, twice in a row: a
/// killed buyer's request still settles after the kill.
async fn seller_done(peers: &X402Peers, seed: u64) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        let log = peers.seller_log("v2").await;
        let events = log.as_array().expect("an array");
        let verified = events
            .iter()
            .filter(|e| e["kind"] == "verify" && e["ok"] == true)
            .count();
        let settled = events.iter().filter(|e| e["kind"] == "settle").count();
        let now = (verified, settled);
        if settled >= verified && last == Some(now) {
            return;
        }
        last = (settled >= verified).then_some(now);
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the seller verified {verified} payments but settled {settled}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

fn transaction(result: &Value) -> Option<String> {
    (result["isError"] != json!(true))
        .then(|| result["structuredContent"]["payment"]["transaction"].as_str())?
        .map(str::to_ascii_lowercase)
}

/// The chain's settlements against the ledger's receipts and open payments.
struct Books {
    chain_txs: BTreeSet<String>,
    receipts: Vec<tollgate::ledger::ReceiptRow>,
    open: Vec<PendingPayment>,
    summary: String,
}

/// Asserts the ledger agrees with the chain: one receipt per `AuthorizationUsed` of `buyer`
/// naming its transaction (0 lost receipts, no receipt without a settlement, none twice: 0
/// double payments), receipts add up to what `payee` received since `before`, and no open
/// payment holds a proof whose nonce the chain used.
async fn books_agree_with_the_chain(
    peers: &X402Peers,
    state: &Path,
    buyer: &str,
    payee: &str,
    before: u128,
    context: &str,
) -> Books {
    let used = peers.authorizations_used("v2", buyer).await;
    let moved = peers.balance("v2", payee).await - before;
    let chain_txs: BTreeSet<String> = used.iter().map(|(tx, _)| tx.clone()).collect();
    let used_nonces: BTreeSet<String> = used.iter().map(|(_, n)| n.clone()).collect();
    let ledger = Ledger::open(state).unwrap();
    let receipts = ledger.all_receipts(None, 10_000).unwrap();
    let open = ledger.pending().unwrap();
    let summary = format!(
        "{context}\n{} settlements on chain, {} receipts, {} open: {open:#?}",
        used.len(),
        receipts.len(),
        open.len()
    );

    assert_eq!(
        moved,
        u128::from(PRICE) * used.len() as u128,
        "the payee got the price per authorization used: {summary}"
    );
    assert_eq!(
        chain_txs.len(),
        used.len(),
        "one settlement per transaction"
    );
    assert_eq!(
        receipts.len(),
        used.len(),
        "one receipt per settlement: {summary}"
    );
    let mut receipt_txs = BTreeSet::new();
    let mut spent = 0u64;
    for r in &receipts {
        let json: Value = serde_json::from_str(&r.json).unwrap();
        let tx = json["transaction"]
            .as_str()
            .unwrap_or_else(|| panic!("a receipt names no transaction: {json}\n{summary}"))
            .to_ascii_lowercase();
        assert!(
            receipt_txs.insert(tx.clone()),
            "two receipts for {tx}: {summary}"
        );
        assert_eq!(r.amount_usd_micros, PRICE, "{json}");
        spent += r.amount_usd_micros;
    }
    assert_eq!(
        receipt_txs, chain_txs,
        "the receipts name exactly the chain's settlements: {summary}"
    );
    assert_eq!(
        u128::from(spent),
        moved,
        "ledger spent = what the chain moved: {summary}"
    );
    // Nothing the chain shows settled is left open: what stays open is a proof never used (a
    // retry re-sends it; expired, it is released) or a reservation that never signed.
    for payment in &open {
        match payment.state {
            ReservationState::Pending => {
                let nonce = nonce(payment).unwrap_or_else(|| {
                    panic!("an open payment without a readable proof: {payment:?}\n{summary}")
                });
                assert!(
                    !used_nonces.contains(&nonce),
                    "settled on chain, still open in the ledger: {payment:?}\n{summary}"
                );
            }
            _ => assert!(
                payment.proof_json.is_none(),
                "a reserved payment with a proof: {payment:?}\n{summary}"
            ),
        }
    }
    Books {
        chain_txs,
        receipts,
        open,
        summary,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_across_processes_with_identical_and_distinct_calls_agrees_with_the_chain() {
    let seed: u64 = std::env::var("TOLLGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (replay with TOLLGATE_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let started = Instant::now();
    let dir = config_dir(&peers);
    let config = dir.path().join("tollgate.toml");
    let state = dir.path().join("state");
    let key = peers.str("/buyer_key");
    let buyer = peers.str("/buyer");
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let mut distinct: Vec<u64> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();

    // 1. Rounds of processes started together on one ledger, each with a burst of identical
    // and distinct calls; most are killed at a random point of it.
    for round in 0..ROUNDS {
        let mut plans: Vec<(Vec<Call>, Option<Duration>)> = (0..PROCESSES)
            .map(|_| {
                let calls = burst(&mut rng, &mut distinct);
                let kill = rng
                    .gen_bool(0.6)
                    .then(|| Duration::from_millis(rng.gen_range(0..KILL_WITHIN_MS)));
                (calls, kill)
            })
            .collect();
        if plans.iter().all(|(_, kill)| kill.is_none()) {
            plans[0].1 = Some(Duration::from_millis(rng.gen_range(0..KILL_WITHIN_MS)));
        }
        let (config, key) = (config.clone(), key.clone());
        let round_runs = tokio::task::spawn_blocking(move || {
            let handles: Vec<_> = plans
                .into_iter()
                .enumerate()
                .map(|(i, (calls, kill))| {
                    let (config, key) = (config.clone(), key.clone());
                    let label = format!("round {round} process {i} (kill {kill:?})");
                    std::thread::spawn(move || run(&config, &key, label, calls, kill))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<Run>>()
        })
        .await
        .unwrap();
        runs.extend(round_runs);
    }

    // 2. A live sibling S with a slow payment in flight, and K killed mid-burst beside it;
    // then a new process P starts (its start-up reconciliation runs) and makes S's very call,
    // an identical call and a distinct one, and `tollgate reconcile` runs: none may touch S's
    // payment.
    let env = [("TOLLGATE_EVM_KEY", key.as_str())];
    let s_distinct = 100 + distinct.len() as u64;
    distinct.push(s_distinct);
    let s_calls = vec![Call::slow(), Call::paid(s_distinct)];
    let mut s = Session::start(&config, &env);
    let s_pid = s.pid();
    send_all(&mut s, &s_calls);
    let k_calls = burst(&mut rng, &mut distinct);
    let k_kill = Duration::from_millis(rng.gen_range(0..KILL_WITHIN_MS));
    let k = {
        let (config, key) = (config.clone(), key.clone());
        let label = format!("K (kill {k_kill:?})");
        tokio::task::spawn_blocking(move || run(&config, &key, label, k_calls, Some(k_kill)))
    };
    let deadline = Instant::now() + WAIT;
    let s_row = loop {
        let open = Ledger::open(&state).unwrap().pending().unwrap();
        let row = open.into_iter().find(|p| {
            p.tool == "slow"
                && p.state == ReservationState::Pending
                && p.owner.as_deref().and_then(owner_pid) == Some(s_pid)
        });
        let at_seller = peers
            .seller_events("v2", "verify")
            .await
            .iter()
            .any(|e| e["path"] == "/hang-after-pay" && e["ok"] == true);
        if let (Some(row), true) = (row, at_seller) {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: S's slow payment never got to the seller"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    runs.push(k.await.unwrap()); // K is dead from here on

    let p_log = dir.path().join("p.log");
    let p_distinct = 100 + distinct.len() as u64;
    distinct.push(p_distinct);
    let p_calls = vec![
        Call::slow(),
        Call::paid(IDENTICAL[0]),
        Call::paid(p_distinct),
    ];
    let mut p = Session::start_logging(&config, &env, &p_log);
    send_all(&mut p, &p_calls);
    let during = reconcile(&config);
    let (mut p, p_quick) = tokio::task::spawn_blocking(move || {
        let quick = answers(&mut p, &[2, 3], "P");
        (p, quick)
    })
    .await
    .unwrap();
    // P's start-up reconciliation runs in the background when it found payments without a
    // known outcome (K's, and earlier rounds' if left): wait for its report.
    let deadline = Instant::now() + WAIT;
    let p_reconciled = loop {
        let log = std::fs::read_to_string(&p_log).unwrap_or_default();
        if !log.contains("payments have no known outcome") {
            break None;
        }
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("reconciled payments from earlier runs"))
        {
            break Some(line.to_owned());
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: P never reconciled: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // S's payment, now: still open, still S's, with the same proof.
    let now = tollgate::money::now_unix();
    let open = Ledger::open(&state).unwrap().pending().unwrap();
    let s_now = open.iter().find(|p| p.id == s_row.id).unwrap_or_else(|| {
        panic!(
            "seed {seed}: S's payment {:?} was closed while S was waiting for its answer",
            s_row.id
        )
    });
    assert_eq!(
        s_now.owner, s_row.owner,
        "seed {seed}: S's payment changed owner"
    );
    assert_eq!(s_now.state, ReservationState::Pending);
    assert_eq!(
        s_now.proof_json, s_row.proof_json,
        "seed {seed}: S's proof changed"
    );
    assert!(
        s_now.lease_until.is_some_and(|until| until >= now),
        "seed {seed}: S's lease lapsed: {s_now:?}"
    );
    assert!(
        count_in(&during, " in flight in a live call") >= 1,
        "seed {seed}: reconcile did not see S's payment as live: {during}"
    );
    if let Some(line) = &p_reconciled {
        assert!(
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("live="))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n >= 1),
            "seed {seed}: P's start-up reconciliation did not see S's payment as live: {line}"
        );
    }

    let p_left: Vec<u64> = (1..=p_calls.len() as u64)
        .filter(|id| !p_quick.contains_key(id))
        .collect();
    let (s_results, p_results) = tokio::task::spawn_blocking(move || {
        let s_results = answers(&mut s, &[1, 2], "S");
        s.finish();
        let p_rest = answers(&mut p, &p_left, "P");
        p.finish();
        (s_results, p_rest)
    })
    .await
    .unwrap();
    let mut p_all = p_quick;
    p_all.extend(p_results);
    runs.push(Run {
        label: "S".into(),
        calls: s_calls,
        results: Some(s_results.into_values().collect()),
    });
    runs.push(Run {
        label: "P".into(),
        calls: p_calls,
        results: Some(p_all.into_values().collect()),
    });
    let s_run = &runs[runs.len() - 2];
    let p_run = &runs[runs.len() - 1];
    let s_slow = &s_run.results.as_ref().unwrap()[0];
    let p_slow = &p_run.results.as_ref().unwrap()[0];
    let s_tx = transaction(s_slow)
        .unwrap_or_else(|| panic!("seed {seed}: S's slow call did not complete: {s_slow}"));
    let p_tx = transaction(p_slow)
        .unwrap_or_else(|| panic!("seed {seed}: P's identical slow call did not pay: {p_slow}"));
    assert_ne!(s_tx, p_tx, "seed {seed}: P's twin call took S's payment");

    // 3. Every settlement started before a kill lands; reconcile; every distinct call without
    // a receipt is retried (a pending proof is re-sent, never re-signed); reconcile again.
    seller_done(&peers, seed).await;
    let first = reconcile(&config);
    let context = |last: &str| {
        format!("seed {seed}\nreconcile during S: {during}after the kills: {first}last: {last}")
    };
    // 0 lost receipts after `tollgate reconcile`: the books already agree with the chain.
    books_agree_with_the_chain(&peers, &state, &buyer, &payee, before, &context(&first)).await;
    let receipted = |state: &Path| -> BTreeMap<u64, usize> {
        let mut by_n = BTreeMap::new();
        for r in Ledger::open(state)
            .unwrap()
            .all_receipts(None, 10_000)
            .unwrap()
        {
            let meta: Value = serde_json::from_str(&r.meta_json).unwrap_or_default();
            if let Some(n) = meta["arguments"]["n"].as_u64() {
                *by_n.entry(n).or_default() += 1;
            }
        }
        by_n
    };
    let done = receipted(&state);
    let retries: Vec<Call> = distinct
        .iter()
        .filter(|n| !done.contains_key(n))
        .map(|&n| Call::paid(n))
        .collect();
    let retried = retries.len();
    if !retries.is_empty() {
        let (config, key) = (config.clone(), key.clone());
        let retry = tokio::task::spawn_blocking(move || {
            run(&config, &key, "retries".into(), retries, None)
        })
        .await
        .unwrap();
        for (call, result) in retry.calls.iter().zip(retry.results.as_ref().unwrap()) {
            assert!(
                transaction(result).is_some(),
                "seed {seed}: the retry of {call:?} did not end paid: {result}"
            );
        }
        runs.push(retry);
    }
    seller_done(&peers, seed).await;
    let second = reconcile(&config);

    // The books after the retries and the second reconcile (checked after the first too).
    let after = context(&second);
    let books = books_agree_with_the_chain(&peers, &state, &buyer, &payee, before, &after).await;
    let Books {
        chain_txs,
        receipts,
        open,
        summary,
    } = books;
    // Every distinct call ends with exactly one receipt: paid once, whether its process was
    // killed before, during or after paying.
    let by_n = receipted(&state);
    for n in &distinct {
        assert_eq!(
            by_n.get(n),
            Some(&1),
            "distinct call n={n} has {:?} receipts: {summary}",
            by_n.get(n)
        );
    }
    // S's payment was completed by S: its receipt, for its reservation, names its transaction.
    let s_receipt = receipts
        .iter()
        .find(|r| r.reservation_id == s_row.id)
        .unwrap_or_else(|| panic!("S's payment has no receipt: {summary}"));
    let s_json: Value = serde_json::from_str(&s_receipt.json).unwrap();
    assert_eq!(
        s_json["transaction"].as_str().map(str::to_ascii_lowercase),
        Some(s_tx.clone()),
        "{s_json}"
    );
    assert_ne!(
        s_json["reconciled"],
        json!(true),
        "S's receipt was written by S, not by a reconciliation: {s_json}"
    );

    // What the processes that lived were told: every answered payment is a distinct
    // settlement on chain. A call fails only as a re-sent payment (an identical call that took
    // over a killed call's proof) that the chain shows settled or still open, or as a fresh
    // payment the seller refused. Two settlements of one authorization do race here (a retry
    // re-sends a killed call's proof while the seller is still settling it); the harness's
    // facilitator sends one transaction at a time so that the loser's reverted gas estimate
    // cannot stall or refuse another payment (see `facilitatorSigner` in
    // tests/peers/x402/start.mjs). Either way the chain judged above: nothing it settled lacks
    // a receipt.
    let mut told = BTreeSet::new();
    let (mut killed, mut resent, mut refused) = (0, 0, 0);
    for r in &runs {
        let Some(results) = &r.results else {
            killed += 1;
            continue;
        };
        for (call, result) in r.calls.iter().zip(results) {
            match transaction(result) {
                Some(tx) => {
                    assert!(
                        chain_txs.contains(&tx),
                        "{}: {call:?} was told of {tx}, not on chain: {summary}",
                        r.label
                    );
                    assert!(
                        told.insert(tx.clone()),
                        "{}: two calls were told of {tx}: {summary}",
                        r.label
                    );
                }
                None => {
                    let said = text(result);
                    let identical = call.n.is_some_and(|n| IDENTICAL.contains(&n));
                    if identical
                        && (said.contains("was made (transaction")
                            || said.contains("unused and still valid"))
                    {
                        resent += 1;
                    } else if said.contains("the seller answered 402 again after tollgate sent") {
                        refused += 1;
                    } else {
                        panic!("{}: {call:?} failed: {result}\n{summary}", r.label);
                    }
                }
            }
        }
    }
    let reconciled = receipts
        .iter()
        .filter(|r| r.json.contains("\"reconciled\":true"))
        .count();
    eprintln!(
        "seed {seed}: {} processes ({killed} killed), {} settlements = {} receipts \
         ({reconciled} by reconciliation), {retried} distinct calls retried, {} left open, \
         {resent} calls told of a re-sent payment, {refused} refused by the seller, \
         P reconciled at start: {}; {:.1} s\nreconcile during S: {during}after the kills: \
         {first}after the retries: {second}",
        runs.len(),
        chain_txs.len(),
        receipts.len(),
        open.len(),
        p_reconciled.as_deref().unwrap_or("no (nothing unknown)"),
        started.elapsed().as_secs_f64()
    );
}

/// A process killed after it reserved a payment and before it signed (nothing left the
/// process) leaves a `reserved` row whose owner is a dead process on this host. A dead owner
/// on the same host is recognised at once, so `tollgate reconcile` releases the row at once
/// ("reserved but never sent"), reports nothing in flight, and the hold stops counting
/// against the caps: the killed call's retry fits again.
#[test]
fn a_dead_process_reservation_that_never_signed_is_released_at_once() {
    use tollgate::ledger::{Cap, Lease, NewReservation};
    let setup = support::mcp::Setup::new("");
    let ledger = Ledger::open(&setup.dir.path().join("state")).unwrap();
    // An owner id naming a process of this host that has exited.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let me = tollgate::checkout::lease::this_process();
    let mut parts: Vec<String> = me.split(':').map(str::to_owned).collect();
    parts[1] = gone.id().to_string();
    let dead = parts.join(":");
    let now = tollgate::money::now_unix();
    let reserve = |owner: &str| {
        ledger.reserve(
            NewReservation {
                call_id: format!("call-{owner}"),
                fingerprint: "the same call".into(),
                amount_usd_micros: 1_000,
                caps: vec![Cap::lifetime("policy:total", 1_500)],
                tool: "paid".into(),
                payee: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
                protocol: "x402 v2".into(),
                meta_json: "{}".into(),
                lease: Some(Lease {
                    owner: owner.to_owned(),
                    until: now + 60,
                }),
                unless_call_open: false,
            },
            now,
        )
    };
    reserve(&dead).unwrap();

    let report = reconcile(&setup.config());
    let open = ledger.pending().unwrap();
    assert_eq!(
        count_in(&report, " in flight in a live call"),
        0,
        "a dead process's reservation is reported live: {report}{open:#?}"
    );
    assert_eq!(
        count_in(&report, " of them reserved but never sent"),
        1,
        "{report}{open:#?}"
    );
    assert!(open.is_empty(), "{report}{open:#?}");
    reserve(&me).expect("the killed call's retry fits under the cap again");
}
