//! The overhead of a paid upstream MCP call through tollgate (`[[mcp_upstream]]`) against the
//! same call made directly by the seller SDK's own paying client, in one run, on the same
//! seller process kind and the same chain:
//!
//! * x402: the x402 Python SDK's MCP server (`tests/peers/x402-mcp/seller.py`, stdio) paid by
//!   its `x402MCPSession` (`buyer.py`) vs by tollgate;
//! * MPP: mppx's MCP server (`tests/peers/mpp/mcp_seller.mjs`, stdio) paid by mppx's MCP
//!   client (`mcp_buyer.mjs`) vs by tollgate.
//!
//! Every call is paid and settled on chain (both sides include the seller's verify and
//! settlement). Calls are sequential; the first call of each side (process start, listing) is
//! reported apart. Run: `cargo bench --bench mcp_upstream` after `scripts/test` has installed
//! the peers (`TOLLGATE_BENCH_CALLS`, default 20). Prints figures; asserts nothing but that
//! every call was paid.

#[path = "../tests/support/mcp.rs"]
#[allow(dead_code)]
mod mcp;
#[path = "../tests/support/mcp_sellers.rs"]
mod mcp_sellers;
#[path = "../tests/support/mpp_peer.rs"]
mod mpp_peer;
#[path = "../tests/support/stdio.rs"]
#[allow(dead_code)]
mod stdio;
#[path = "../tests/support/x402_peer.rs"]
mod x402_peer;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn p90(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

/// Figures of one side: first call, then the median and p90 of the rest (ms).
struct Side {
    first: f64,
    rest: Vec<f64>,
}

impl Side {
    fn print(&self, name: &str) {
        println!(
            "  {name:<34} first {:>7.1} ms   then median {:>6.1} ms  p90 {:>6.1} ms  ({} calls)",
            self.first,
            median(self.rest.clone()),
            p90(self.rest.clone()),
            self.rest.len() + 1
        );
    }
}

/// `calls` sequential paid calls of `tool` through `tollgate serve` on stdio.
fn through_tollgate(config: &Path, key: &str, tool: &str, args: Value, calls: usize) -> Side {
    let mut session = stdio::Session::start(config, &[("TOLLGATE_EVM_KEY", key)]);
    let mut ms = Vec::new();
    for i in 0..calls {
        let started = Instant::now();
        session.call_tool(i as u64 + 1, tool, args.clone());
        let response = session.next_response().expect("tollgate answered");
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let result = &response["result"];
        assert!(
            result["isError"] != json!(true) && result["_meta"]["tollgate/receipt"].is_object(),
            "a paid call through tollgate: {response:#}"
        );
    }
    session.finish();
    Side {
        first: ms[0],
        rest: ms[1..].to_vec(),
    }
}

/// The SDK buyer's own report (`{"ok","errors","ms":[…]}`), checked that every call was paid.
fn direct(mut cmd: Command, calls: usize) -> Side {
    let out = cmd.output().expect("run the SDK's paying client");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the SDK client printed no report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        report["ok"],
        json!(calls),
        "every direct call paid: {report:#}"
    );
    let ms: Vec<f64> = report["ms"]
        .as_array()
        .expect("ms")
        .iter()
        .map(|v| v.as_f64().expect("a figure"))
        .collect();
    Side {
        first: ms[0],
        rest: ms[1..].to_vec(),
    }
}

fn config(dir: &Path, head: &str, allow: &str, upstream: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("tools")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("tollgate.toml"),
        format!("tools_dir = \"tools\"\npolicy = \"bench\"\n{head}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("policies/bench.toml"),
        format!("[caps]\nper_call = \"0.05 USD\"\n[allow]\n{allow}"),
    )
    .unwrap();
    std::fs::write(dir.join("tools/upstream.toml"), upstream).unwrap();
    dir.join("tollgate.toml")
}

fn main() {
    let calls: usize = std::env::var("TOLLGATE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    println!("paid upstream MCP calls, sequential, {calls} per side (ms per call, client side)");

    // x402 over MCP.
    match (
        mcp_sellers::x402_python(),
        runtime.block_on(x402_peer::start()),
    ) {
        (Some(python), Some(peers)) => {
            let log = scratch.path().join("x402.jsonl");
            let seller = mcp_sellers::x402_seller_command(
                &peers.str("/v2/rpc"),
                &peers.str("/v2/usdc"),
                "0x0000000000000000000000000000000000095011",
                false,
                &log,
            );
            let key = peers.str("/buyer_key");
            let mut cmd = Command::new(&python);
            cmd.arg(mcp::root().join("tests/peers/x402-mcp/buyer.py"))
                .args(["--stdio", &seller.join(" "), "--key", &key])
                .args(["--tool", "weather", "--args", r#"{"city":"Paris"}"#])
                .args(["--calls", &calls.to_string()]);
            let sdk = direct(cmd, calls);
            let dir = scratch.path().join("x402");
            let config = config(
                &dir,
                &format!(
                    "[[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\n\
                     decimals = 6\n",
                    peers.str("/v2/usdc")
                ),
                "networks = [\"eip155:31337\"]\n",
                &mcp_sellers::stdio_upstream("pyx", &seller, "max_price = \"0.01 USD\""),
            );
            let ours = through_tollgate(
                &config,
                &key,
                "pyx_weather",
                json!({"city": "Paris"}),
                calls,
            );
            println!("x402 (x402 Python SDK MCP server, stdio):");
            sdk.print("x402MCPSession (PyPI x402 2.25.0)");
            ours.print("through tollgate");
            println!(
                "  tollgate's overhead: {:+.1} ms per call (median)",
                median(ours.rest.clone()) - median(sdk.rest.clone())
            );
        }
        _ => println!("x402 MCP peers are not installed (run scripts/test once); skipped"),
    }

    // MPP over MCP.
    match runtime.block_on(mpp_peer::start()) {
        Some(peers) => {
            let log = scratch.path().join("mpp.jsonl");
            let rpc = peers.str("/rpc");
            let seller = mcp_sellers::mpp_seller_command(
                &rpc,
                "0x0000000000000000000000000000000000095012",
                false,
                &log,
            );
            let (key, _) = peers.buyer(0);
            let mut cmd = Command::new("node");
            cmd.arg(mcp::root().join("tests/peers/mpp/mcp_buyer.mjs"))
                .args(["--stdio", &seller.join(" "), "--key", &key, "--rpc", &rpc])
                .args(["--tool", "weather", "--args", r#"{"city":"Paris"}"#])
                .args(["--calls", &calls.to_string()]);
            let sdk = direct(cmd, calls);
            let dir = scratch.path().join("mpp");
            let config = config(
                &dir,
                &format!(
                    "[[assets]]\nnetwork = \"tempo:31337\"\naddress = \"{}\"\nsymbol = \"pathUSD\"\n\
                     decimals = 6\n[wallet.tempo]\nrpc_url = \"{rpc}\"\nchain_id = 31337\n\
                     [rpc]\n\"tempo:31337\" = \"{rpc}\"\n",
                    peers.str("/tokens/pathUSD")
                ),
                "networks = [\"tempo:31337\"]\nassets = [\"pathUSD\"]\n",
                &mcp_sellers::stdio_upstream("mppx", &seller, "max_price = \"0.05 USD\""),
            );
            let ours = through_tollgate(
                &config,
                &key,
                "mppx_weather",
                json!({"city": "Paris"}),
                calls,
            );
            println!("MPP (mppx MCP server, stdio, Tempo charge):");
            sdk.print("mppx MCP client (npm mppx 0.11.0)");
            ours.print("through tollgate");
            println!(
                "  tollgate's overhead: {:+.1} ms per call (median)",
                median(ours.rest.clone()) - median(sdk.rest.clone())
            );
        }
        None => println!("MPP peers are not installed (run scripts/test once); skipped"),
    }
}
