//! Paid x402 calls the way hosts make them, against the real v2 seller (`@x402/express`
//! 2.27.0 on anvil), side by side with the reference buyer `@x402/fetch` in one run:
//!
//! * tollgate's own cost per paid call over a pre-signed paid request: each paid call through
//!   tollgate (MCP over stdio) minus what a paid request sent with a pre-signed
//!   `PAYMENT-SIGNATURE` would have taken: its paid request's time at the seller (verify +
//!   settle, which nobody can avoid), timed on the wire by a proxy in front of the seller, plus
//!   the way there and back (the median over the pre-signed requests, sent through the same
//!   proxy). The figure is the same call's, not the difference of two calls whose settle times
//!   differ by more than it. Half the pre-signed requests are sent right behind their unpaid
//!   request (as before), half after the ~20 ms of idle tollgate's process has before its call;
//!   the figure is given over each. The same for `@x402/fetch`; and, as a cross-check, the plain
//!   differences of alternating pairs. Beside each paid call, a free call after the same idle
//!   gives the floor every call pays on this machine (MCP over stdio, waking up, one request),
//!   so the figure splits into that floor and what paying adds. While these are timed the
//!   sellers and chains run at the lowest CPU priority (`renice`), so that what they still do
//!   after answering is not counted as the next buyer's; `X402_BENCH_PAUSE_MS` pauses before
//!   each call (default 0);
//! * throughput with 8 calls in flight on one MCP session, distinct and identical arguments,
//!   and `@x402/fetch` with 8 concurrent loops: calls/s and errors;
//! * spawn → first paid result: a fresh `tollgate serve`, initialize, one paid call (timed
//!   before the loads, while the seller is at rest);
//! * fsyncs per paid call and their wall-clock time after the same idle (with `strace`, when
//!   installed).
//!
//! To compare two builds or settings within one run (machines here drift by ±0.2 ms between
//! runs, more than most changes are worth), set `X402_AB_BIN` to another `tollgate` binary
//! and/or `X402_AB_ENV=NAME=value` for the second process: the bench then only alternates
//! paid calls between this build (A) and the other (B), `X402_AB_CALLS` each (default 150),
//! and prints both own costs and the median of the paired differences.
//!
//! Run: `cargo bench --bench x402_parallel` after `scripts/test` installed the peers. Prints
//! figures; asserts only that nothing failed unexpectedly. Machines here are shared: compare
//! the figures of one run with each other, not across runs.

#[path = "../tests/support/stdio.rs"]
#[allow(dead_code)]
mod stdio;
#[path = "support/timing_proxy.rs"]
mod timing_proxy;
#[path = "../tests/support/x402_peer.rs"]
mod x402_peer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stdio::Session;

const SEQUENTIAL: usize = 60;
/// The pause before each sequential call, `X402_BENCH_PAUSE_MS` (default 0). Hosts call tools
/// seconds apart; on a virtual machine an idle vCPU is woken again on every hop, which costs
/// as much as tollgate's own work (a free tool call: ~0.4 ms back to back, ~1.1 ms after 30 ms
/// idle, on the 2-core CI machine).
fn pause() -> Duration {
    Duration::from_millis(
        std::env::var("X402_BENCH_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}
const CONCURRENCY: usize = 8;
const SECONDS: u64 = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `seller`: the v2 seller's base URL the tools call (the timing proxy's).
fn setup(dir: &Path, peers: &x402_peer::X402Peers, seller: &str) -> PathBuf {
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
             max_price = \"0.01 USD\"\n\n\
             [[tool]]\nname = \"free\"\ndescription = \"free\"\nurl = \"{0}/free?city={{city}}\"\n\
             input_schema = {{ type = \"object\", properties = {{ city = {{ type = \"string\" }} }} }}\n",
            seller
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

/// Sequential paid calls, with what the seller's side of the wire says of each.
#[derive(Default)]
struct Sequential {
    /// Latency of a paid request sent with a pre-signed `PAYMENT-SIGNATURE` (ms).
    presigned: Vec<f64>,
    /// Latency of the alternating paid call through tollgate (ms).
    through: Vec<f64>,
    /// Each tollgate call minus its own paid request's time at the seller: what it cost over
    /// a pre-signed paid request (its 402 round trip, if it made one, included).
    own: Vec<f64>,
    /// Each tollgate call minus every request's time at the seller: its own processing.
    processing: Vec<f64>,
    /// How many requests each tollgate call sent (2: the unpaid one answered 402, then the
    /// paid one; 1: paid at once, at the price the seller asked before).
    requests: Vec<usize>,
    /// The pairs' differences (tollgate call minus pre-signed request), the noisy cross-check.
    pairs: Vec<f64>,
    /// Each pre-signed request's latency minus its time at the seller: what the way to the
    /// seller and back costs any client (loopback, the proxy, waking up). Sent right after
    /// the unpaid request (every other call).
    wire: Vec<f64>,
    /// The same for a pre-signed request sent after [`IDLE_LIKE_TOLLGATE`] of idle (the
    /// other calls), as tollgate's paid request is.
    wire_idle: Vec<f64>,
    /// A free call through tollgate, after the same idle as a paid one, minus its request's
    /// time at the seller: what every call costs (MCP over stdio, waking up, the request),
    /// paid or not. The paid call's own cost less this is what paying adds.
    free: Vec<f64>,
}

/// How long tollgate's process sits idle before each timed call: the pre-signed request's
/// time at the seller (verify + settle on anvil).
const IDLE_LIKE_TOLLGATE: Duration = Duration::from_millis(20);

/// Paid calls made one at a time, alternating: a paid request sent with a pre-signed
/// `PAYMENT-SIGNATURE` (the seller's verify + settle, which nobody can avoid), then a paid call
/// through tollgate (MCP over stdio: choosing, reserving, signing, the paid request, the
/// receipt). Both go through the timing proxy at `seller`. The first two warm both paths up
/// (connections, schema compilation).
fn sequential(
    runtime: &tokio::runtime::Runtime,
    seller: &str,
    peers: &x402_peer::X402Peers,
    timed: &timing_proxy::Intervals,
    config: &Path,
    key: &str,
) -> Sequential {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let wallet = tollgate::wallet::EvmWallet::from_hex(&peers.str("/buyer_key")).unwrap();
    let mut session = Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    let mut out = Sequential::default();
    for i in 0..SEQUENTIAL + 2 {
        std::thread::sleep(pause());
        let presigned = runtime.block_on(async {
            let url = format!("{seller}/weather?city=p{i}");
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
            // Every other pre-signed request waits as long as tollgate waits before its call
            // (the seller's ~20 ms), so that its way there and back is measured from idle
            // too, not right behind the unpaid request on a warm connection.
            if i % 2 == 1 {
                tokio::time::sleep(IDLE_LIKE_TOLLGATE).await;
            }
            let t0 = Instant::now();
            let r = paid.send().await.unwrap();
            let status = r.status();
            let _ = r.bytes().await;
            assert!(status.is_success(), "{status}");
            let latency = t0.elapsed().as_secs_f64() * 1e3;
            let at_seller: f64 = timed.between(t0, Instant::now()).iter().sum();
            (latency, latency - at_seller)
        });
        let (presigned, wire) = presigned;
        std::thread::sleep(pause());
        let t0 = Instant::now();
        session.call_tool(i as u64 + 1, "weather", json!({"city": format!("s{i}")}));
        let r = session.response(i as u64 + 1).expect("tollgate answered");
        let t1 = Instant::now();
        let through = (t1 - t0).as_secs_f64() * 1e3;
        assert!(
            r["result"]["structuredContent"]["payment"].is_object(),
            "{r}"
        );
        let at_seller = timed.between(t0, t1);
        if i >= 2 {
            out.presigned.push(presigned);
            out.through.push(through);
            out.own
                .push(through - at_seller.last().copied().unwrap_or_default());
            out.processing.push(through - at_seller.iter().sum::<f64>());
            out.requests.push(at_seller.len());
            out.pairs.push(through - presigned);
            if i % 2 == 1 {
                out.wire_idle.push(wire);
            } else {
                out.wire.push(wire);
            }
        }
        // The floor: a free call after the same idle as the paid call had.
        std::thread::sleep(IDLE_LIKE_TOLLGATE + pause());
        let id = 10_000 + i as u64;
        let t0 = Instant::now();
        session.call_tool(id, "free", json!({"city": format!("f{i}")}));
        let r = session.response(id).expect("tollgate answered");
        let t1 = Instant::now();
        assert_eq!(
            r["result"]["structuredContent"]["result"]["free"],
            json!(true),
            "{r}"
        );
        let at_seller: f64 = timed.between(t0, t1).iter().sum();
        if i >= 2 {
            out.free.push((t1 - t0).as_secs_f64() * 1e3 - at_seller);
        }
    }
    session.finish();
    out
}

/// `@x402/fetch` making `SEQUENTIAL` paid calls one at a time through the timing proxy: each
/// call's latency minus its paid request's time at the seller (ms).
fn fetch_own(seller: &str, key: &str, timed: &timing_proxy::Intervals) -> Result<Vec<f64>, String> {
    let t0 = Instant::now();
    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/x402/fetch_load.mjs"
        ))
        .arg(seller)
        .arg("/weather?city=Paris")
        .arg(key)
        .env("X402_SEQUENTIAL", (SEQUENTIAL + 2).to_string())
        .env("X402_PAUSE_MS", pause().as_millis().to_string())
        .output()
        .map_err(|e| e.to_string())?;
    let requests = timed.between(t0, Instant::now());
    let answer: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(300)
            .collect::<String>()
    })?;
    let latencies: Vec<f64> = answer["latencies_ms"]
        .as_array()
        .ok_or_else(|| answer.to_string())?
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    // Each call: the unpaid request (402), then the paid one.
    if requests.len() != 2 * latencies.len() {
        return Err(format!(
            "{} requests at the seller for {} calls",
            requests.len(),
            latencies.len()
        ));
    }
    Ok(latencies
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, latency)| latency - requests[2 * i + 1])
        .collect())
}

/// The second side of an A/B comparison: another binary, another environment, or both.
struct AbOther {
    program: Option<PathBuf>,
    env: Option<(String, String)>,
}

impl AbOther {
    fn from_env() -> Option<AbOther> {
        let program = std::env::var_os("X402_AB_BIN").map(PathBuf::from);
        let env = std::env::var("X402_AB_ENV").ok().map(|pair| {
            let (name, value) = pair.split_once('=').expect("X402_AB_ENV is NAME=value");
            (name.to_owned(), value.to_owned())
        });
        (program.is_some() || env.is_some()).then_some(AbOther { program, env })
    }
}

/// Paid calls alternating between this build (A) and `other` (B), each after the same idle,
/// each call's own cost (minus its paid request's time at the seller) paired with the other's.
fn compare(
    other: &AbOther,
    peers: &x402_peer::X402Peers,
    seller: &str,
    timed: &timing_proxy::Intervals,
    config: &Path,
    key: &str,
) {
    let calls: usize = std::env::var("X402_AB_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let dir = tempfile::tempdir().unwrap();
    let config_b = setup(dir.path(), peers, seller);
    let mut env_b = vec![("TOLLGATE_EVM_KEY", key)];
    if let Some((name, value)) = &other.env {
        env_b.push((name.as_str(), value.as_str()));
    }
    let mut a = Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    let mut b = match &other.program {
        Some(program) => Session::start_program(program, &config_b, &env_b),
        None => Session::start(&config_b, &env_b),
    };
    let mut own = [Vec::new(), Vec::new()];
    let mut id = 1u64;
    for i in 0..calls + 2 {
        for (side, session) in [&mut a, &mut b].into_iter().enumerate() {
            std::thread::sleep(IDLE_LIKE_TOLLGATE);
            let t0 = Instant::now();
            session.call_tool(id, "weather", json!({"city": format!("ab{i}")}));
            let r = session.response(id).expect("tollgate answered");
            let t1 = Instant::now();
            id += 1;
            assert!(
                r["result"]["structuredContent"]["payment"].is_object(),
                "{r}"
            );
            if i >= 2 {
                let at_seller = timed.between(t0, t1).last().copied().unwrap_or_default();
                own[side].push((t1 - t0).as_secs_f64() * 1e3 - at_seller);
            }
        }
    }
    a.finish();
    b.finish();
    let describe = format!(
        "{}{}",
        other
            .program
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "this build".into()),
        other
            .env
            .as_ref()
            .map(|(n, v)| format!(" with {n}={v}"))
            .unwrap_or_default()
    );
    for (side, name) in [
        (0, "A (this build)".to_owned()),
        (1, format!("B ({describe})")),
    ] {
        let (q1, m, q3) = quartiles(&own[side]);
        println!(
            "{name}: {calls} paid calls, each minus its paid request's time at the seller (the \
             way there and back included): median {m:.3} ms (quartiles {q1:.3} to {q3:.3})"
        );
    }
    let paired: Vec<f64> = own[1].iter().zip(&own[0]).map(|(b, a)| b - a).collect();
    let (q1, m, q3) = quartiles(&paired);
    println!("B - A, call by call: median {m:+.3} ms (quartiles {q1:+.3} to {q3:+.3})");
}

/// Each of `v` minus `wire` (ms): a call's latency over a pre-signed request's way there and
/// back.
fn minus(v: &[f64], wire: f64) -> Vec<f64> {
    v.iter().map(|x| x - wire).collect()
}

fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut sorted = v.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    (
        sorted[sorted.len() / 4],
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 3 / 4],
    )
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
        .args(["-f", "-c", "-w", "-e", "trace=fsync,fdatasync", "-o"])
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
        let mut send = |v: Value| stdin.write_all(format!("{v}\n").as_bytes()).unwrap();
        send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"}}}),
        );
        send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?; // initialize
        for i in 0..calls {
            // The same idle as before a timed call: a flush after idle costs more than one
            // right behind another.
            std::thread::sleep(IDLE_LIKE_TOLLGATE);
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
    let seller_addr: std::net::SocketAddr = peers
        .seller("v2")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("the seller listens on an IP address");
    let (proxy, timed) = runtime.block_on(timing_proxy::start(seller_addr));
    let proxied = format!("http://{proxy}");
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), &peers, &proxied);
    let key = peers.str("/buyer_key");

    // While the sequential calls are timed, the sellers and chains yield the CPU to the
    // buyers: what a seller still does after answering (its facilitator, the chain, its log)
    // is not the next buyer's cost, yet on a 2-core machine it would be counted as such.
    let nice = |level: &str| {
        if let Some(group) = peers.process_group() {
            let _ = Command::new("renice")
                .args(["-n", level, "-g", &group.to_string()])
                .stdout(std::process::Stdio::null())
                .status();
        }
    };
    nice("19");
    if let Some(other) = AbOther::from_env() {
        compare(&other, &peers, &proxied, &timed, &config, &key);
        return;
    }
    let seq = sequential(&runtime, &proxied, &peers, &timed, &config, &key);
    // A pre-signed paid request costs its client the seller's time plus the way there and back.
    let wire = median(seq.wire.clone());
    let over = |v: &[f64]| minus(v, wire);
    let (q1, own, q3) = quartiles(&over(&seq.own));
    let one_request = seq.requests.iter().filter(|n| **n == 1).count();
    println!(
        "sequential paid calls ({SEQUENTIAL}): through tollgate median {:.2} ms; tollgate's own \
         cost per paid call over a pre-signed paid request (each call minus its paid request's \
         time at the seller, timed on the wire, minus the way there and back a pre-signed \
         request takes too, median {wire:.2} ms): median {own:.2} ms (quartiles {q1:.2} to \
         {q3:.2}); {one_request} of {SEQUENTIAL} calls paid at once at the price the seller \
         asked before (no 402 round trip)",
        median(seq.through.clone()),
    );
    let wire_idle = median(seq.wire_idle.clone());
    let over_idle = minus(&seq.own, wire_idle);
    let (i1, own_idle, i3) = quartiles(&over_idle);
    println!(
        "  over a pre-signed request sent after {} ms idle, as tollgate's is (its way there and \
         back median {wire_idle:.2} ms): median {own_idle:.2} ms (quartiles {i1:.2} to {i3:.2})",
        IDLE_LIKE_TOLLGATE.as_millis()
    );
    let (f1, free, f3) = quartiles(&minus(&seq.free, wire_idle));
    println!(
        "  the floor, a free call after the same idle (MCP over stdio, waking up, its request; \
         its time at the seller and the way there and back taken out): median {free:.2} ms \
         (quartiles {f1:.2} to {f3:.2}); what paying adds to it: {:.2} ms",
        own_idle - free
    );
    let (p1, processing, p3) = quartiles(&over(&seq.processing));
    println!(
        "  tollgate's own processing (MCP, choosing, ledger, signing, receipt; every request's \
         time at the seller and its way there and back taken out): median {processing:.2} ms \
         (quartiles {p1:.2} to {p3:.2})"
    );
    match fetch_own(&proxied, &key, &timed) {
        Ok(theirs) => {
            let (f1, fetch, f3) = quartiles(&over(&theirs));
            println!(
                "  @x402/fetch, the same way on the same seller: median {fetch:.2} ms over a \
                 pre-signed paid request (quartiles {f1:.2} to {f3:.2}; an unpaid request \
                 answered 402, then the paid one)"
            );
        }
        Err(e) => println!("  @x402/fetch sequential calls failed: {e}"),
    }
    nice("0");
    let (c1, pairs, c3) = quartiles(&seq.pairs);
    println!(
        "  cross-check, alternating pairs: pre-signed request median \
         {:.2} ms; tollgate call minus the pre-signed request median {pairs:.2} ms (quartiles \
         {c1:.2} to {c3:.2}: settle times vary by more than the figure)",
        median(seq.presigned.clone()),
    );

    // Before the loads: after `@x402/fetch`'s 10 s of load the seller and its chain take
    // seconds to drain, and a paid request then waits ~80 ms at the seller instead of ~20.
    let spawn: Vec<f64> = (0..5).map(|_| first_paid(&config, &key)).collect();
    println!(
        "spawn → first paid result: median {:.1} ms (of 5: {:?})",
        median(spawn.clone()),
        spawn.iter().map(|m| m.round()).collect::<Vec<_>>()
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

    match fsyncs(&config, &key, 20) {
        Some((per_call, micros)) => println!(
            "fsync/fdatasync per paid call (strace, 20 calls, each after {} ms idle): \
             {per_call:.1}, {micros:.0} µs each on this disk (the reservation's, which must reach \
             the disk before the proof leaves, and every few calls the log's copy into the file)",
            IDLE_LIKE_TOLLGATE.as_millis()
        ),
        None => println!("fsyncs per paid call: strace is not installed (apt-get install strace)"),
    }
}
