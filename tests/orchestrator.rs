//! `examples/orchestrator/`: one HTTP tollgate; an orchestrator on the real Python MCP client
//! delegates budgets to three sub-agents, which call the real x402 v2 seller in parallel, each
//! with its own bearer. The chain, the receipts and `tollgate budget` must agree: each child
//! paid exactly up to its budget, and every child's spend counts against the orchestrator's.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::http_server::HttpServer;
use support::mcp::{python, root};

const PRICE: u128 = 1_000; // atomic USDC per call of /weather (0.001 USD)

#[tokio::test(flavor = "multi_thread")]
async fn three_sub_agents_spend_their_delegated_budgets_in_parallel() {
    let Some(python) = python() else { return };
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n\
             [[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\n\
             decimals = 6\n[approval]\nlisten = \"off\"\n",
            peers.str("/v2/usdc"),
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/test.toml"),
        "[caps]\nper_call = \"0.01 USD\"\n[allow]\nnetworks = [\"eip155:31337\"]\nassets = [\"USDC\"]\n",
    )
    .unwrap();
    std::fs::write(
        p.join("tools/seller.toml"),
        format!(
            "[[tool]]\nname = \"weather\"\ndescription = \"Weather from the x402 v2 seller\"\n\
             url = \"{}/weather?city=Paris\"\nmax_price = \"0.01 USD\"\n",
            peers.seller("v2")
        ),
    )
    .unwrap();
    let config = p.join("tollgate.toml");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    cli(&["init"]);
    let orchestrator = cli(&[
        "token",
        "mint",
        "--caveat",
        "label = orchestrator",
        "--caveat",
        "budget_usd_micros <= 10000",
    ]);
    let key = peers.str("/buyer_key");
    let server = HttpServer::start(&config, &[("TOLLGATE_EVM_KEY", &key)]).await;
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    // Three children of 0.002 USD each; three calls each: two fit, the third is refused.
    let out = tokio::process::Command::new(&python)
        .arg(root().join("examples/orchestrator/orchestrator.py"))
        .args(["--url", &server.url, "--tool", "weather", "--children", "3"])
        .args(["--child-budget-usd-micros", "2000", "--calls", "3"])
        .env("ORCHESTRATOR_TOKEN", &orchestrator)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let agents = report["sub_agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    for agent in agents {
        let calls = agent["calls"].as_array().unwrap();
        let paid: Vec<&Value> = calls
            .iter()
            .filter(|c| c["isError"] != json!(true))
            .collect();
        assert_eq!(paid.len(), 2, "two calls fit the child's budget: {agent}");
        for call in &paid {
            assert_eq!(
                call["structuredContent"]["payment"]["protocol"], "x402",
                "{call}"
            );
        }
        let refused = calls
            .iter()
            .find(|c| c["isError"] == json!(true))
            .expect("one refused");
        let text = refused["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.contains("nothing was paid"), "{text}");
    }
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + 6 * PRICE,
        "the chain moved exactly six payments"
    );
    let receipts: Value = serde_json::from_str(&cli(&["receipts", "--format", "json"])).unwrap();
    assert_eq!(receipts.as_array().unwrap().len(), 6);

    let tree: Value = serde_json::from_str(&cli(&["budget", "--format", "json"])).unwrap();
    let budgets = tree["budgets"].as_array().unwrap();
    let parent = budgets
        .iter()
        .find(|b| b["label"] == "orchestrator")
        .unwrap_or_else(|| panic!("{tree}"));
    assert_eq!(
        parent["spent_usd"], "0.006",
        "children's spend counts: {tree}"
    );
    let children: Vec<&Value> = budgets
        .iter()
        .filter(|b| b["parent"] == parent["id"])
        .collect();
    assert_eq!(children.len(), 3, "{tree}");
    for child in children {
        assert_eq!(child["spent_usd"], "0.002", "{child}");
        assert_eq!(child["limit_usd"], "0.002", "{child}");
    }
}
