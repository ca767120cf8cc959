//! End-to-end latency of a paid x402 call through tollgate against the same call by the
//! reference TypeScript buyer (`@x402/fetch`), against the same local seller
//! (`@x402/express` 2.27.0 on anvil). Run: `cargo bench --bench x402_e2e` after `scripts/test`
//! has installed the peers. Prints figures and the ratio; needs no assertion to pass.
//!
//! Both sides include verify and on-chain settlement (the seller's cost, ~30 ms here), so the
//! ratio is near 1 when tollgate adds little.

#[path = "../tests/support/stdio.rs"]
#[allow(dead_code)]
mod stdio;
#[path = "../tests/support/x402_peer.rs"]
mod x402_peer;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stdio::Session;

const CALLS: usize = 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(peers) = runtime.block_on(x402_peer::start()) else {
        println!("x402 peers are not installed (run scripts/test once); nothing measured");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\npolicy = \"bench\"\n[[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n",
            peers.str("/v2/usdc")
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/bench.toml"),
        "[allow]\nnetworks = [\"eip155:31337\"]\n",
    )
    .unwrap();
    std::fs::write(
        p.join("tools/t.toml"),
        format!(
            "[[tool]]\nname = \"weather\"\ndescription = \"paid\"\nurl = \"{}/weather?city=Paris\"\nmax_price = \"0.01 USD\"\n",
            peers.seller("v2")
        ),
    )
    .unwrap();

    let buyer_key = peers.str("/buyer_key");
    let mut session = Session::start(
        &p.join("tollgate.toml"),
        &[("TOLLGATE_EVM_KEY", &buyer_key)],
    );
    let mut ours = Vec::new();
    for i in 0..CALLS + 2 {
        let t0 = Instant::now();
        session.call_tool(i as u64 + 1, "weather", json!({}));
        let r = session.response(i as u64 + 1).expect("tollgate answered");
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        assert!(
            r["result"]["structuredContent"]["payment"].is_object(),
            "{r}"
        );
        if i >= 2 {
            ours.push(ms);
        }
    }
    session.finish();

    let out = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/x402/pay_with_fetch.mjs"
        ))
        .arg(peers.seller("v2"))
        .arg("/weather?city=Paris")
        .arg(peers.str("/buyer_key"))
        .env("X402_REPEAT", (CALLS + 2).to_string())
        .output()
        .unwrap();
    let reference: Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: Vec<f64> = reference["ms_all"]
        .as_array()
        .unwrap()
        .iter()
        .skip(2)
        .filter_map(Value::as_f64)
        .collect();
    let (o, t) = (median(ours), median(theirs));
    println!(
        "paid x402 v2 call, median of {CALLS}: tollgate (MCP over stdio) {o:.1} ms, @x402/fetch {t:.1} ms; ratio {:.2}",
        o / t
    );
    std::thread::sleep(Duration::from_millis(10));
}
