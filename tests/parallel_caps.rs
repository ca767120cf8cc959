//! Four `tollgate serve` processes on one ledger, each sending parallel identical calls under
//! one per-day cap, against the real MPP seller (`mppx` 0.11.0 on anvil in Tempo mode) and the
//! real L402 stack (LNbits 1.6.2 FakeWallet and the aperture-style seller). The chain or the
//! Lightning backend is the judge: what moved is what the ledger spent, to the unit; nothing
//! goes past the cap; every call either pays, reuses a paid token, or is refused cleanly
//! before anything is signed; and once the cap is reached the next payment is refused.
//!
//! The cap holds a payment's price plus the most its fee may cost (`wallet.tempo.max_fee_atomic`
//! for MPP, `lightning.max_fee_msat` for L402) until it settles, then its actual cost.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::stdio::Session;

const PROCESSES: usize = 4;

/// `tollgate serve` with `env`: `calls` calls of `tool` sent at once, answers by request id.
fn parallel(config: &Path, env: &[(&str, &str)], tool: &str, calls: usize) -> Vec<Value> {
    let mut session = Session::start(config, env);
    for id in 1..=calls as u64 {
        session.call_tool(id, tool, json!({}));
    }
    let mut results = vec![Value::Null; calls];
    for _ in 0..calls {
        let message = session.next_response().expect("tollgate exited early");
        let id = message["id"].as_u64().expect("a numeric id") as usize;
        results[id - 1] = message["result"].clone();
    }
    session.finish();
    results
}

/// `PROCESSES` processes at once, each `parallel(.., calls)`: each process's answers.
async fn processes(
    config: &Path,
    env: &[(&str, &str)],
    tool: &str,
    calls: usize,
) -> Vec<Vec<Value>> {
    let config = config.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let tool = tool.to_owned();
    tokio::task::spawn_blocking(move || {
        let handles: Vec<_> = (0..PROCESSES)
            .map(|_| {
                let (config, env, tool) = (config.clone(), env.clone(), tool.clone());
                std::thread::spawn(move || {
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    parallel(&config, &env, &tool, calls)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<Vec<Value>>>()
    })
    .await
    .unwrap()
}

/// One call at a time in one process, `tools(i)` for the i-th, until a call is not paid
/// (at most `bound` calls): every answer, the last one the call that was not paid.
async fn until_refused(
    config: &Path,
    env: &[(&str, &str)],
    tools: impl Fn(usize) -> String + Send + 'static,
    bound: usize,
) -> Vec<Value> {
    let config = config.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut session = Session::start(&config, &env);
        let mut results = Vec::new();
        for i in 0..bound {
            session.call_tool(i as u64 + 1, &tools(i), json!({}));
            let result = session
                .response(i as u64 + 1)
                .expect("tollgate exited early")["result"]
                .clone();
            let stop = result["isError"] == json!(true);
            results.push(result);
            if stop {
                break;
            }
        }
        session.finish();
        results
    })
    .await
    .unwrap()
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

/// A refusal by the per-day cap, made before anything was signed or paid, of a payment held
/// at `hold` micro-USD (its price and the most its fee may cost).
fn refused_by_the_cap(result: &Value, hold: u64) -> bool {
    let said = text(result);
    result["isError"] == json!(true)
        && said.contains("does not fit in the policy's per-day cap")
        && said.contains(&format!(
            "held with the most its fee may cost: {}",
            tollgate::money::UsdMicros(hold)
        ))
        && said.contains("nothing was paid")
}

/// `(spent, receipts)` of the ledger in `state`, and whether anything is left open.
fn books(state: &Path) -> (u64, Vec<Value>, usize) {
    let ledger = tollgate::ledger::Ledger::open(state).unwrap();
    let rows = ledger.all_receipts(None, 10_000).unwrap();
    let spent = rows.iter().map(|r| r.amount_usd_micros).sum();
    let receipts = rows
        .iter()
        .map(|r| serde_json::from_str(&r.json).unwrap())
        .collect();
    (spent, receipts, ledger.pending().unwrap().len())
}

// ---------------------------------------------------------------------------- MPP

mod mpp {
    use super::*;
    use support::mpp_peer::MppPeers;

    /// mppx's `/weather`: 0.01 pathUSD (6 decimals, 1 USD each: atomic units are micro-USD).
    const AMOUNT: u64 = 10_000;
    /// `wallet.tempo.max_fee_atomic`: the most a charge's fee may cost, held with the amount.
    const MAX_FEE: u64 = 50_000;
    const HOLD: u64 = AMOUNT + MAX_FEE;
    /// The cap holds N payments in flight at once.
    const N: u64 = 3;
    const CAP: u64 = N * HOLD;

    fn setup(peers: &MppPeers) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        let (rpc, path_usd) = (peers.str("/rpc"), peers.str("/tokens/pathUSD"));
        std::fs::write(
            p.join("tollgate.toml"),
            format!(
                "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n\
                 [[assets]]\nnetwork = \"tempo:31337\"\naddress = \"{path_usd}\"\n\
                 symbol = \"pathUSD\"\ndecimals = 6\n\
                 [wallet.tempo]\nrpc_url = \"{rpc}\"\nchain_id = 31337\nmax_fee_atomic = {MAX_FEE}\n\
                 [rpc]\n\"tempo:31337\" = \"{rpc}\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("policies/test.toml"),
            format!(
                "[caps]\nper_call = \"0.50 USD\"\nper_day = \"{}\"\n[allow]\n\
                 networks = [\"tempo:31337\"]\nassets = [\"pathUSD\"]\n",
                tollgate::money::UsdMicros(CAP)
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("tools/mppx.toml"),
            format!(
                "[[tool]]\nname = \"weather\"\ndescription = \"weather from mppx\"\n\
                 url = \"{}/weather\"\nmax_price = \"0.05 USD\"\n",
                peers.str("/mppx/seller")
            ),
        )
        .unwrap();
        dir
    }

    /// The chain's word on every paid answer: mined, sent by the buyer, one per answer.
    async fn mined_once_each(peers: &MppPeers, paid: &[&Value], payer: &str) {
        let mut references: Vec<String> = Vec::new();
        for result in paid {
            let reference = result["structuredContent"]["payment"]["reference"]
                .as_str()
                .unwrap_or_else(|| panic!("a paid answer without a reference: {result}"))
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
        assert_eq!(
            references.len(),
            paid.len(),
            "one transaction per paid call"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn four_processes_of_identical_calls_never_pass_the_cap_and_spend_what_the_wallet_lost() {
        if support::mcp::python().is_none() {
            return;
        }
        let Some(peers) = support::mpp_peer::start().await else {
            return;
        };
        let started = std::time::Instant::now();
        let dir = setup(&peers);
        let (config, state) = (dir.path().join("tollgate.toml"), dir.path().join("state"));
        let (key, payer) = peers.buyer(0);
        let recipient = peers.str("/mppx/recipient");
        let (payer0, recipient0) = (
            peers.path_usd(&payer).await,
            peers.path_usd(&recipient).await,
        );
        let env = [("TOLLGATE_EVM_KEY", key.as_str())];

        // 4 processes × N identical calls at once, under a cap of N held payments.
        let results: Vec<Value> = processes(&config, &env, "weather", N as usize)
            .await
            .into_iter()
            .flatten()
            .collect();
        let paid: Vec<&Value> = results
            .iter()
            .filter(|r| r["isError"] != json!(true))
            .collect();
        for r in results.iter().filter(|r| r["isError"] == json!(true)) {
            assert!(
                refused_by_the_cap(r, HOLD),
                "every call pays or is refused by the cap before signing: {r}\n{}",
                peers.logs().join("\n")
            );
        }
        // A call is refused only when N others hold or spent their share: N always pay.
        assert!(
            paid.len() as u64 >= N,
            "fewer than N paid: {results:#?}\n{}",
            peers.logs().join("\n")
        );
        mined_once_each(&peers, &paid, &payer).await;
        let (spent, receipts, open) = books(&state);
        assert_eq!(receipts.len(), paid.len(), "one receipt per paid call");
        assert_eq!(open, 0, "nothing left open");
        assert!(spent <= CAP, "spent {spent} past the cap {CAP}");
        let lost = payer0 - peers.path_usd(&payer).await;
        assert_eq!(
            u128::from(spent),
            lost,
            "ledger spent = what the wallet lost (amounts and fees): {receipts:#?}"
        );
        assert_eq!(
            peers.path_usd(&recipient).await - recipient0,
            u128::from(AMOUNT) * paid.len() as u128,
            "the recipient got exactly one charge per paid call"
        );
        let seller_paid = peers
            .seller_log("mppx")
            .await
            .iter()
            .filter(|e| e["paid"] == true && e["status"] == 200)
            .count();
        assert_eq!(
            seller_paid,
            paid.len(),
            "the seller served one paid request per paid call"
        );
        let burst_paid = paid.len();

        // Then one call at a time until the cap refuses one: it refuses exactly when the
        // next hold no longer fits beside what was spent, and not before.
        let bound = (CAP / AMOUNT) as usize + 1;
        let more = until_refused(&config, &env, |_| "weather".to_owned(), bound).await;
        let (last, drained) = more.split_last().expect("at least one call");
        assert!(
            refused_by_the_cap(last, HOLD),
            "the next call is refused: {last}"
        );
        let drained: Vec<&Value> = drained.iter().collect();
        mined_once_each(&peers, &drained, &payer).await;
        let total = burst_paid + drained.len();
        let (spent, receipts, open) = books(&state);
        assert_eq!(open, 0);
        assert_eq!(receipts.len(), total, "one receipt per paid call");
        assert!(
            spent <= CAP && spent + HOLD > CAP,
            "refused exactly when a hold ({HOLD}) no longer fits: spent {spent}, cap {CAP}"
        );
        let lost = payer0 - peers.path_usd(&payer).await;
        assert_eq!(
            u128::from(spent),
            lost,
            "ledger spent = what the wallet lost"
        );
        assert_eq!(
            peers.path_usd(&recipient).await - recipient0,
            u128::from(AMOUNT) * total as u128
        );
        eprintln!(
            "MPP: {} calls at once paid {burst_paid} (cap {CAP} = {N} holds of {HOLD}), then \
             {} more one at a time; {total} charges, spent {spent} = the wallet's loss; {:.1} s",
            results.len(),
            drained.len(),
            started.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------- L402

mod l402 {
    use super::*;
    use support::l402_peer::L402Peers;

    /// The seller's invoice: 21 sats, valued by the policy at 0.001 USD per sat, so one msat is
    /// one micro-USD.
    const PRICE_MSAT: u64 = 21_000;
    /// `lightning.max_fee_msat`: the most a routing fee may cost, held with the amount.
    const MAX_FEE_MSAT: u64 = 2_000;
    const HOLD: u64 = PRICE_MSAT + MAX_FEE_MSAT;
    /// The cap holds N invoices.
    const N: u64 = 3;
    const CAP: u64 = N * HOLD;

    fn setup(peers: &L402Peers) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        std::fs::write(
            p.join("tollgate.toml"),
            format!(
                "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n\
                 [lightning]\nbackend = \"lnbits\"\nurl = \"{}\"\nnetwork = \"bitcoin\"\n\
                 max_fee_msat = {MAX_FEE_MSAT}\ntimeout_secs = 20\n",
                peers.lnbits_url()
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("policies/test.toml"),
            format!(
                "[caps]\nper_call = \"0.10 USD\"\nper_day = \"{}\"\n[allow]\n\
                 networks = [\"lightning:bitcoin\"]\nassets = [\"sat\"]\n\
                 [rates]\nsat = \"0.001 USD\"\n",
                tollgate::money::UsdMicros(CAP)
            ),
        )
        .unwrap();
        // `weather`, and services of their own (each its own token) to fill the cap.
        let mut tools = String::new();
        for service in
            std::iter::once("weather".to_owned()).chain((1..=N + 1).map(|i| format!("service{i}")))
        {
            tools.push_str(&format!(
                "[[tool]]\nname = \"{service}\"\ndescription = \"L402 {service}\"\n\
                 url = \"{}\"\nmax_price = \"0.05 USD\"\n\n",
                peers.seller_url("normal", &service)
            ));
        }
        std::fs::write(p.join("tools/l402.toml"), tools).unwrap();
        dir
    }

    /// LNbits' outgoing payments of the payer that succeeded: `(payment hash, msat moved
    /// with the fee)`.
    async fn paid_invoices(peers: &L402Peers) -> Vec<(String, u64)> {
        peers
            .payments("payer")
            .await
            .iter()
            .filter(|p| p["amount"].as_i64().is_some_and(|a| a < 0) && p["status"] == "success")
            .map(|p| {
                let amount = p["amount"].as_i64().unwrap().unsigned_abs();
                let fee = p["fee"].as_i64().unwrap_or(0).unsigned_abs();
                (p["payment_hash"].as_str().unwrap().to_owned(), amount + fee)
            })
            .collect()
    }

    /// The backend's word: every receipt is a paid invoice and every paid invoice has a
    /// receipt; the ledger spent what the payer lost; nothing is left open. Returns the count.
    async fn backend_agrees(peers: &L402Peers, state: &Path, payer0: i64, payee0: i64) -> usize {
        let invoices = paid_invoices(peers).await;
        let (spent, receipts, open) = books(state);
        let mut receipted: Vec<String> = receipts
            .iter()
            .map(|r| {
                r["payment_hash"]
                    .as_str()
                    .expect("a payment hash")
                    .to_owned()
            })
            .collect();
        receipted.sort();
        let mut hashes: Vec<String> = invoices.iter().map(|(h, _)| h.clone()).collect();
        hashes.sort();
        assert_eq!(
            receipted, hashes,
            "one receipt per invoice paid, no other: {receipts:#?} {invoices:?}"
        );
        let moved: u64 = invoices.iter().map(|(_, m)| m).sum();
        let lost = u64::try_from(payer0 - peers.balance_msat("payer").await).unwrap();
        assert_eq!(lost, moved, "the payer lost what its payments moved");
        assert_eq!(
            spent, lost,
            "ledger spent = what the payer lost (msat = micro-USD here)"
        );
        assert_eq!(
            u64::try_from(peers.balance_msat("payee").await - payee0).unwrap(),
            PRICE_MSAT * invoices.len() as u64
        );
        assert_eq!(open, 0, "nothing left open");
        assert!(spent <= CAP, "spent {spent} past the cap {CAP}");
        invoices.len()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn four_processes_of_identical_calls_pay_one_invoice_per_flight_under_the_cap() {
        if support::mcp::python().is_none() {
            return;
        }
        let Some(peers) = support::l402_peer::start().await else {
            return;
        };
        let started = std::time::Instant::now();
        let dir = setup(&peers);
        let (config, state) = (dir.path().join("tollgate.toml"), dir.path().join("state"));
        let key = peers.payer_admin_key();
        let env = [("TOLLGATE_LNBITS_ADMIN_KEY", key.as_str())];
        let (payer0, payee0) = (
            peers.balance_msat("payer").await,
            peers.balance_msat("payee").await,
        );

        // 4 processes × N identical calls at once. In a process the first call to meet the
        // 402 pays and the others wait, then send its token; across processes the token is
        // found in the shared ledger once kept, so at most one invoice per process is paid.
        let by_process = processes(&config, &env, "weather", N as usize).await;
        for answers in &by_process {
            let invoices = answers
                .iter()
                .filter(|r| r["structuredContent"]["payment"]["amount_msat"] == "21000")
                .count();
            assert!(
                invoices <= 1,
                "a process paid {invoices} invoices for one service: {answers:#?}"
            );
        }
        let results: Vec<Value> = by_process.into_iter().flatten().collect();
        let (mut paid, mut reused, mut refused) = (0, 0, 0);
        for r in &results {
            let payment = &r["structuredContent"]["payment"];
            if r["isError"] == json!(true) {
                assert!(
                    refused_by_the_cap(r, HOLD),
                    "{r}\n{}",
                    peers.logs().join("\n")
                );
                refused += 1;
            } else if payment["reused"] == json!(true) {
                assert_eq!(payment["amount_usd_micros"], 0, "{payment}");
                reused += 1;
            } else {
                assert_eq!(payment["amount_msat"], "21000", "{payment}");
                paid += 1;
            }
            if r["isError"] != json!(true) {
                assert_eq!(r["structuredContent"]["result"]["forecast"], "sunny", "{r}");
            }
        }
        let invoices = backend_agrees(&peers, &state, payer0, payee0).await;
        assert_eq!(invoices, paid, "one invoice per paid answer: {results:#?}");
        assert!(
            (1..=PROCESSES.min(N as usize)).contains(&paid),
            "between one invoice and one per process, under the cap: {paid}"
        );
        let stats = peers.seller_stats().await;
        assert_eq!(
            stats["served"],
            json!(paid + reused),
            "every answer was served by the seller: {stats}"
        );
        assert_eq!(stats["refused"], 0, "no token was refused: {stats}");
        let burst = format!("{paid} paid, {reused} on a kept token, {refused} refused");

        // The next process finds the token in the ledger: served, nothing paid.
        let next = parallel(&config, &env, "weather", 1);
        assert_eq!(
            next[0]["structuredContent"]["payment"]["reused"],
            json!(true),
            "{next:?}"
        );
        assert_eq!(backend_agrees(&peers, &state, payer0, payee0).await, paid);

        // Other services, one at a time, each its own invoice, until the cap refuses one: it
        // holds exactly N invoices (N × (price + max fee)), and the (N+1)th is refused.
        let more = until_refused(
            &config,
            &env,
            |i| format!("service{}", i + 1),
            N as usize + 1,
        )
        .await;
        let (last, filled) = more.split_last().expect("at least one call");
        assert!(
            refused_by_the_cap(last, HOLD),
            "the next invoice is refused: {last}"
        );
        for r in filled {
            assert_eq!(
                r["structuredContent"]["payment"]["amount_msat"], "21000",
                "{r}"
            );
        }
        assert_eq!(
            backend_agrees(&peers, &state, payer0, payee0).await as u64,
            N,
            "exactly N invoices paid under a cap of N"
        );
        eprintln!(
            "L402: {} calls at once: {burst}; then {} more invoices to the cap of {N}; {:.1} s",
            results.len(),
            filled.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
