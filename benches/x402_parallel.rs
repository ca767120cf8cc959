//! Paid x402 calls the way hosts make them, against the real v2 seller (`@x402/express`
//! 2.27.0 on anvil), side by side with the reference buyer `@x402/fetch` in one run:
//!
//! * tollgate's own cost per paid call: paid calls through tollgate (MCP over stdio) alternating
//!   with the same paid request sent with a pre-signed `PAYMENT-SIGNATURE` (the seller's verify
//!   + settle, which nobody can avoid); the median of the pairs' differences;
//! * throughput with 8 calls in flight on one MCP session, distinct and identical arguments,
//!   and `@x402/fetch` with 8 concurrent loops: calls/s and errors;
//! * spawn → first paid result: a fresh `tollgate serve`, initialize, one paid call;
//! * fsyncs per paid call (with `strace`, when installed).
//!
//! Run: `cargo bench --bench x402_parallel` after `scripts/test` installed the peers. Prints
//! figures; asserts only that nothing failed unexpectedly. Machines here are shared: compare
//! the figures of one run with each other, not across runs.

#[path = "../tests/support/stdio.rs"]
#[allow(dead_code)]
mod stdio;
#[path = "../tests/support/x402_peer.rs"]
mod x402_peer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stdio::Session;

const SEQUENTIAL: usize = 60;
const CONCURRENCY: usize = 8;
const SECONDS: u64 = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn setup(dir: &Path, peers: &x402_peer::X402Peers) -> PathBuf {
    std::fs::create_dir_all(dir.join("tools")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\npolicy = \"bench\"\n[[assets]]\nnetwork = \"eip155:31337\"\n\
             address = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n",
            peers.str("/v2/usdc")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("policies/bench.toml"),
        "[caps]\nper_call = \"0.01 USD\"\n[allow]\nnetworks = [\"eip155:31337\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tools/t.toml"),
        format!(
            "[[tool]]\nname = \"weather\"\ndescription = \"paid\"\nurl = \"{0}/weather?city={{city}}\"\n\
             max_price = \"0.01 USD\"\ninput_schema = {{ type = \"object\", properties = {{ city = {{ type = \"string\" }} }} }}\n\n\
             [[tool]]\nname = \"same\"\ndescription = \"paid, no arguments\"\nurl = \"{0}/weather?city=Paris\"\n\
             max_price = \"0.01 USD\"\n",
            peers.seller("v2")
        ),
    )
    .unwrap();
    dir.join("tollgate.toml")
}

/// Keeps `CONCURRENCY` calls in flight on one session for `SECONDS`: (ok, errors, calls/s).
fn load(config: &Path, key: &str, identical: bool) -> (usize, usize, f64, Option<String>) {
    let mut session = Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    let call = |session: &mut Session, id: u64| {
        if identical {
            session.call_tool(id, "same", json!({}));
        } else {
            session.call_tool(id, "weather", json!({"city": format!("c{id}")}));
        }
    };
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(SECONDS);
    let mut next = 1u64;
    for _ in 0..CONCURRENCY {
        call(&mut session, next);
        next += 1;
    }
    let (mut ok, mut errors, mut in_flight, mut first_error) = (0, 0, CONCURRENCY, None);
    while in_flight > 0 {
        let r = session.next_response().expect("tollgate exited");
        in_flight -= 1;
        if r["result"]["structuredContent"]["payment"].is_object() {
            ok += 1;
        } else {
            errors += 1;
            first_error.get_or_insert_with(|| r.to_string().chars().take(300).collect());
        }
        if Instant::now() < deadline {
            call(&mut session, next);
            next += 1;
            in_flight += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    session.finish();
    (ok, errors, ok as f64 / secs, first_error)
}

/// `@x402/fetch` with `CONCURRENCY` loops for `SECONDS`.
fn fetch_load(peers: &x402_peer::X402Peers, identical: bool) -> Value {
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/x402/fetch_load.mjs"
        ))
        .arg(peers.seller("v2"))
        .arg("/weather?city=Paris")
        .arg(peers.str("/buyer_key"))
        .arg(CONCURRENCY.to_string())
        .arg(SECONDS.to_string())
        .env("X402_IDENTICAL", if identical { "1" } else { "0" })
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        json!({"error": String::from_utf8_lossy(&out.stderr).chars().take(300).collect::<String>()})
    })
}

/// Paid calls made one at a time, alternating: a paid request sent with a pre-signed
/// `PAYMENT-SIGNATURE` (the seller's verify + settle, which nobody can avoid), then a paid call
/// through tollgate (MCP over stdio: the 402, choosing, reserving, signing, the paid request,
/// the receipt). Alternating pairs cancel the drift of a shared machine; tollgate's own cost
/// is the median of each pair's difference. Latencies in ms: (pre-signed, tollgate, own).
fn paired(
    runtime: &tokio::runtime::Runtime,
    peers: &x402_peer::X402Peers,
    config: &Path,
    key: &str,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let wallet = tollgate::wallet::EvmWallet::from_hex(&peers.str("/buyer_key")).unwrap();
    let mut session = Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    let (mut signed, mut ours, mut own) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SEQUENTIAL + 2 {
        let presigned = runtime.block_on(async {
            let url = format!("{}/weather?city=p{i}", peers.seller("v2"));
            let unpaid = http.get(&url).send().await.unwrap();
            let headers = unpaid.headers().clone();
            let body = unpaid.bytes().await.unwrap();
            let challenge = tollgate::rails::read_challenge(&headers, &body);
            let proof = tollgate::rails::x402::wire::prove(
                &challenge.offers[0],
                &wallet,
                tollgate::money::now_unix(),
            )
            .unwrap();
            let mut paid = http.get(&url);
            for (name, value) in &proof.headers {
                paid = paid.header(name, value);
            }
            let t0 = Instant::now();
            let r = paid.send().await.unwrap();
            let status = r.status();
            let _ = r.bytes().await;
            assert!(status.is_success(), "{status}");
            t0.elapsed().as_secs_f64() * 1e3
        });
        let t0 = Instant::now();
        session.call_tool(i as u64 + 1, "weather", json!({"city": format!("s{i}")}));
        let r = session.response(i as u64 + 1).expect("tollgate answered");
        let through = t0.elapsed().as_secs_f64() * 1e3;
        assert!(
            r["result"]["structuredContent"]["payment"].is_object(),
            "{r}"
        );
        // The first two warm both paths up (connections, schema compilation).
        if i >= 2 {
            signed.push(presigned);
            ours.push(through);
            own.push(through - presigned);
        }
    }
    session.finish();
    (signed, ours, own)
}

/// Spawn → first paid result, in ms.
fn first_paid(config: &Path, key: &str) -> f64 {
    let t0 = Instant::now();
    let mut session = Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    session.call_tool(1, "weather", json!({"city": "first"}));
    let r = session.response(1).expect("tollgate answered");
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    assert!(
        r["result"]["structuredContent"]["payment"].is_object(),
        "{r}"
    );
    session.finish();
    ms
}

/// fsync + fdatasync calls of one `tollgate serve` making `calls` paid calls, under strace:
/// how many per paid call, and how long one takes on this disk (µs, strace's mean).
fn fsyncs(config: &Path, key: &str, calls: usize) -> Option<(f64, f64)> {
    let strace = Command::new("strace").arg("-V").output().ok()?;
    if !strace.status.success() {
        return None;
    }
    let out = tempfile::NamedTempFile::new().ok()?;
    let mut child = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(out.path())
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("TOLLGATE_EVM_KEY", key)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    {
        use std::io::{BufRead, BufReader, Write};
        let mut stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut send = |v: Value| writeln!(stdin, "{v}").unwrap();
        send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"}}}),
        );
        send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?; // initialize
        for i in 0..calls {
            send(
                json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                        "params": {"name": "weather", "arguments": {"city": format!("f{i}")}}}),
            );
            line.clear();
            stdout.read_line(&mut line).ok()?;
        }
    }
    child.wait().ok()?;
    let report = std::fs::read_to_string(out.path()).ok()?;
    // `% time  seconds  usecs/call  calls  errors  syscall`
    let rows: Vec<(f64, f64)> = report
        .lines()
        .filter(|l| l.contains("fsync") || l.contains("fdatasync"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.get(2)?.parse().ok()?, cols.get(3)?.parse().ok()?))
        })
        .collect();
    let count: f64 = rows.iter().map(|(_, n)| n).sum();
    let micros: f64 = rows.iter().map(|(us, n)| us * n).sum::<f64>() / count.max(1.0);
    Some((count / calls as f64, micros))
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(peers) = runtime.block_on(x402_peer::start()) else {
        println!("x402 peers are not installed (run scripts/test once); nothing measured");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &peers);
    let key = peers.str("/buyer_key");

    let (signed, ours, own) = paired(&runtime, &peers, &config, &key);
    let mut sorted = own.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "sequential paid calls, {SEQUENTIAL} alternating pairs: pre-signed request median {:.2} \
         ms, through tollgate median {:.2} ms; tollgate's own cost per paid call: median {:.2} \
         ms (quartiles {:.2} to {:.2})",
        median(signed),
        median(ours),
        median(own),
        sorted[sorted.len() / 4],
        sorted[sorted.len() * 3 / 4],
    );

    for identical in [false, true] {
        let what = if identical { "identical" } else { "distinct" };
        let (ok, errors, rate, first) = load(&config, &key, identical);
        let theirs = fetch_load(&peers, identical);
        println!(
            "{CONCURRENCY} in flight, {what} arguments, {SECONDS} s: tollgate {rate:.1} calls/s \
             ({ok} paid, {errors} errors{}); @x402/fetch {:.1} calls/s ({} paid, {} errors{})",
            first.map(|e| format!(", first: {e}")).unwrap_or_default(),
            theirs["calls_per_s"].as_f64().unwrap_or(0.0),
            theirs["ok"],
            theirs["errors"],
            theirs["first_error"]
                .as_str()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default(),
        );
    }

    let spawn: Vec<f64> = (0..5).map(|_| first_paid(&config, &key)).collect();
    println!(
        "spawn → first paid result: median {:.1} ms (of 5: {:?})",
        median(spawn.clone()),
        spawn.iter().map(|m| m.round()).collect::<Vec<_>>()
    );
    match fsyncs(&config, &key, 20) {
        Some((per_call, micros)) => println!(
            "fsync/fdatasync per paid call (strace, 20 calls): {per_call:.1}, {micros:.0} µs each \
             on this disk (the reservation's, which must reach the disk before the proof leaves)"
        ),
        None => println!("fsyncs per paid call: strace is not installed (apt-get install strace)"),
    }
}
