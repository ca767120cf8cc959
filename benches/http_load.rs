//! Load on `tollgate serve --http` (loopback only, bounded): 64 concurrent sessions, each with
//! its own bearer, calling a free tool and a paid one (the real x402 v2 seller on anvil) for
//! 30 s (`TOLLGATE_BENCH_SECS`). Reports calls, errors, p50/p99 latency of each kind and the
//! server's RSS; checks that the chain moved exactly the receipts' amount. Then a second
//! burst is cut by SIGTERM: after `tollgate reconcile`, every payment settled on chain must
//! have its receipt.
//!
//! Run: `cargo bench --bench http_load` after `scripts/test` has installed the peers
//! (`--profile dev` to measure the debug build). Exits non-zero when a check fails.

#[path = "../tests/support/http_server.rs"]
#[allow(dead_code)]
mod http_server;
#[path = "../tests/support/x402_peer.rs"]
mod x402_peer;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http_server::{HttpServer, initialize, message};
use serde_json::{Value, json};

const SESSIONS: usize = 64;
const PRICE: u128 = 1_000;
/// One call in this many is paid (the first of each session among them).
const PAID_EVERY: usize = 4;

#[derive(Default)]
struct Tally {
    free: Vec<f64>,
    paid: Vec<f64>,
    errors: Vec<String>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "tollgate {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn receipts(config: &Path) -> usize {
    let listed: Value =
        serde_json::from_str(&cli(config, &["receipts", "--format", "json"])).unwrap();
    listed.as_array().unwrap().len()
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A POST as a streamable HTTP client sends it, on this session's own client.
fn request(
    client: &reqwest::Client,
    url: &str,
    bearer: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(url)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(id) = session {
        request = request
            .header("mcp-session-id", id)
            .header("mcp-protocol-version", "2025-11-25");
    }
    request
}

/// Opens a 2025-11-25 session: its id.
async fn open(client: &reqwest::Client, url: &str, bearer: &str) -> Result<String, String> {
    let response = request(client, url, bearer, None, &initialize())
        .send()
        .await
        .map_err(|e| format!("initialize: {e}"))?;
    if response.status() != 200 {
        return Err(format!("initialize: HTTP {}", response.status()));
    }
    let id = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("initialize: no session id")?
        .to_owned();
    let _ = response.text().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = request(client, url, bearer, Some(&id), &initialized)
        .send()
        .await
        .map_err(|e| format!("initialized: {e}"))?;
    if response.status() != 202 {
        return Err(format!("initialized: HTTP {}", response.status()));
    }
    Ok(id)
}

/// One session: calls until `until`, timing each; stops at the first transport error.
async fn session(url: String, bearer: String, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let client = http_server::client();
    let id = match open(&client, &url, &bearer).await {
        Ok(id) => id,
        Err(e) => {
            tally.errors.push(e);
            return tally;
        }
    };
    let mut n = 0usize;
    while Instant::now() < until {
        n += 1;
        let paid = n % PAID_EVERY == 1;
        let tool = if paid { "weather" } else { "free" };
        let body = json!({"jsonrpc": "2.0", "id": n + 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": {}}});
        let started = Instant::now();
        let sent = request(&client, &url, &bearer, Some(&id), &body).send();
        let response = match tokio::time::timeout(Duration::from_secs(60), sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tally.errors.push(format!("{tool}: {e}"));
                break;
            }
            Err(_) => {
                tally.errors.push(format!("{tool}: no answer in 60 s"));
                break;
            }
        };
        if response.status() != 200 {
            tally
                .errors
                .push(format!("{tool}: HTTP {}", response.status()));
            break;
        }
        let answer = message(response).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if answer["result"]["isError"] == json!(true) || answer.get("error").is_some() {
            tally.errors.push(format!("{tool}: {answer}"));
            continue;
        }
        if paid {
            tally.paid.push(ms);
        } else {
            tally.free.push(ms);
        }
    }
    tally
}

async fn burst(url: &str, bearers: &[String], secs: f64) -> Tally {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = bearers
        .iter()
        .map(|b| tokio::spawn(session(url.to_owned(), b.clone(), until)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.unwrap();
        all.free.extend(t.free);
        all.paid.extend(t.paid);
        all.errors.extend(t.errors);
    }
    all
}

fn main() {
    let secs: f64 = std::env::var("TOLLGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(run(secs));
    if !ok {
        std::process::exit(1);
    }
}

async fn run(secs: f64) -> bool {
    let Some(peers) = x402_peer::start().await else {
        println!("x402 peers are not installed (run scripts/test once); nothing measured");
        return true;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"bench\"\n[[assets]]\n\
             network = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
             [rpc]\n\"eip155:31337\" = \"{}\"\n[approval]\nlisten = \"off\"\n",
            peers.str("/v2/usdc"),
            peers.str("/v2/rpc"),
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/bench.toml"),
        "[caps]\nper_call = \"0.01 USD\"\nper_day = \"100 USD\"\n[allow]\nnetworks = [\"eip155:31337\"]\n",
    )
    .unwrap();
    std::fs::write(
        p.join("tools/t.toml"),
        format!(
            "[[tool]]\nname = \"weather\"\ndescription = \"paid\"\nurl = \"{0}/weather?city=Paris\"\n\
             max_price = \"0.01 USD\"\ntimeout_ms = 60000\n\n\
             [[tool]]\nname = \"free\"\ndescription = \"free\"\nurl = \"{0}/free\"\n",
            peers.seller("v2")
        ),
    )
    .unwrap();
    let config = p.join("tollgate.toml");
    cli(&config, &["init"]);
    let bearers: Vec<String> = (0..SESSIONS)
        .map(|i| {
            let label = format!("label = agent-{i}");
            cli(
                &config,
                &[
                    "token",
                    "mint",
                    "--caveat",
                    &label,
                    "--caveat",
                    "budget_usd_micros <= 10000000",
                ],
            )
        })
        .collect();
    let key = peers.str("/buyer_key");
    let env = [
        ("TOLLGATE_EVM_KEY", key.as_str()),
        ("RUST_LOG", "tollgate=warn"),
    ];
    let payee = peers.str("/v2/payee");
    let mut ok = true;

    // 1. The burst.
    let server = HttpServer::start(&config, &env).await;
    let pid = server.child.id().unwrap();
    let (idle_rss, _) = memory(pid);
    let before = peers.balance("v2", &payee).await;
    let started = Instant::now();
    let mut tally = burst(&server.url, &bearers, secs).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (rss, peak) = memory(pid);
    let moved = peers.balance("v2", &payee).await - before;
    let paid_receipts = receipts(&config);
    println!(
        "{SESSIONS} sessions for {elapsed:.1} s: {} free calls, {} paid calls, {} errors",
        tally.free.len(),
        tally.paid.len(),
        tally.errors.len()
    );
    println!(
        "free: p50 {:.1} ms, p99 {:.1} ms; paid: p50 {:.1} ms, p99 {:.1} ms; {:.0} calls/s",
        percentile(&mut tally.free, 0.5),
        percentile(&mut tally.free, 0.99),
        percentile(&mut tally.paid, 0.5),
        percentile(&mut tally.paid, 0.99),
        (tally.free.len() + tally.paid.len()) as f64 / elapsed
    );
    println!("server RSS: idle {idle_rss:.1} MiB, after {rss:.1} MiB, peak {peak:.1} MiB");
    for e in tally.errors.iter().take(5) {
        println!("error: {e}");
    }
    if !tally.errors.is_empty() {
        ok = false;
    }
    if moved != tally.paid.len() as u128 * PRICE || paid_receipts != tally.paid.len() {
        println!(
            "MISMATCH: chain moved {moved} atomic, {} paid calls, {paid_receipts} receipts",
            tally.paid.len()
        );
        ok = false;
    } else {
        println!(
            "chain moved exactly {} × the price; {paid_receipts} receipts",
            tally.paid.len()
        );
    }
    drop(server);

    // 2. SIGTERM in the middle of a burst, then restart + reconcile: every payment settled on
    //    chain has its receipt.
    let mut server = HttpServer::start(&config, &env).await;
    let before = peers.balance("v2", &payee).await;
    let receipts_before = receipts(&config);
    let url = server.url.clone();
    let cut = bearers.clone();
    let burst_task = tokio::spawn(async move { burst(&url, &cut, 10.0).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.terminate();
    let status = tokio::time::timeout(Duration::from_secs(40), server.child.wait()).await;
    let _ = burst_task.await;
    println!("SIGTERM during the burst: the server exited ({status:?})");
    cli(&config, &["reconcile"]);
    let settled = (peers.balance("v2", &payee).await - before) / PRICE;
    let new_receipts = receipts(&config) - receipts_before;
    if settled == new_receipts as u128 {
        println!("after reconcile: {settled} payments settled on chain, {new_receipts} receipts");
    } else {
        println!("MISMATCH after SIGTERM: {settled} settled on chain, {new_receipts} receipts");
        ok = false;
    }
    ok
}
