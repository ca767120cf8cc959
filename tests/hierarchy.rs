//! Hierarchical budgets through `delegate_budget`: an orchestrator session delegates budgets
//! to sub-agents that run in other tollgate processes; each child spends only its own budget,
//! every child's spend counts against the orchestrator's, twins do not touch each other, and
//! revoking the orchestrator stops its children. Against both ledger backends.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::ledgers::{Backend, Place};
use support::mcp::{Mode, Setup, drive, python};
use support::seller::BUYER_KEY as KEY;
use support::upstream::TestUpstream;

const POLICY: &str = r#"
[caps]
per_call = "0.05 USD"

[profiles.orchestrator]
budget = "0.05 USD"
lifetime = "1d"
"#;

fn tollgate(args: &[&str], config: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn paid_call() -> Value {
    json!({"op": "call_tool", "name": "paid", "arguments": {}})
}

fn delegate(arguments: Value) -> Value {
    json!({"op": "call_tool", "name": "delegate_budget", "arguments": arguments})
}

fn structured(report: &Value, i: usize) -> &Value {
    &report["steps"][i]["result"]["structuredContent"]
}

fn text(report: &Value, i: usize) -> String {
    report["steps"][i]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn signed(up: &TestUpstream) -> usize {
    up.seen()
        .iter()
        .filter(|s| s.header("PAYMENT-SIGNATURE").is_some())
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn delegated_budgets_bind_sub_agents_in_other_processes() {
    delegated_budgets_bind_sub_agents(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delegated_budgets_bind_sub_agents_sharing_a_postgres_ledger() {
    delegated_budgets_bind_sub_agents(Backend::Postgres).await;
}

async fn delegated_budgets_bind_sub_agents(backend: Backend) {
    let Some(python) = python() else { return };
    let Some(place) = Place::new(backend) else {
        return;
    };
    let up = TestUpstream::start(support::seller::always_settles).await;
    let setup = Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{}/paid\"\nmax_price = \"0.05 USD\"\n",
        up.base()
    ));
    let dir = setup.dir.path();
    std::fs::create_dir(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/team.toml"), POLICY).unwrap();
    std::fs::write(
        setup.config(),
        "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicies_dir = \"policies\"\npolicy = \"team\"\n",
    )
    .unwrap();
    let config = setup.config();
    place.configure(&config);
    tollgate(&["init"], &config);
    let orchestrator = tollgate(&["token", "mint", "--profile", "orchestrator"], &config);
    let as_orchestrator = [
        ("TOLLGATE_EVM_KEY", KEY),
        ("TOLLGATE_TOKEN", orchestrator.as_str()),
    ];

    // The orchestrator's session: two twins with the same label and limits, one greedy child,
    // and requests that must be refused.
    let report = drive(
        &python,
        Mode::Legacy,
        &config,
        &as_orchestrator,
        json!([
            delegate(json!({"budget_usd_micros": 20000, "label": "worker", "tools": ["paid"]})),
            delegate(json!({"budget_usd_micros": 20000, "label": "worker", "tools": ["paid"]})),
            delegate(json!({"budget_usd_micros": 1_000_000_000u64, "lifetime_seconds": 600})),
            delegate(json!({"budget_usd_micros": 10000, "tools": ["no_such_tool"]})),
            delegate(json!({"budget_usd_micros": 0})),
            delegate(json!({"budget_usd_micros": 10000, "label": "bad label"})),
        ]),
    )
    .await;
    let twin_a = structured(&report, 0)["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let twin_b = structured(&report, 1)["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_ne!(twin_a, twin_b);
    assert_eq!(structured(&report, 0)["effective"]["budget_usd"], "0.02");
    assert_eq!(
        structured(&report, 0)["effective"]["tools"],
        json!(["paid"])
    );
    let greedy = structured(&report, 2);
    assert_eq!(
        greedy["effective"]["budget_usd"], "0.05",
        "a child never gets more than the parent has left: {greedy}"
    );
    assert!(
        greedy["note"]
            .as_str()
            .unwrap_or("")
            .contains("only 0.05 USD is left")
    );
    assert!(greedy["effective"]["expires_at"].is_string());
    for (i, why) in [
        (3, "no tool `no_such_tool`"),
        (4, "budget_usd_micros"),
        (5, "label"),
    ] {
        assert_eq!(
            report["steps"][i]["result"]["isError"],
            true,
            "{}",
            text(&report, i)
        );
        assert!(text(&report, i).contains(why), "{}", text(&report, i));
        assert!(text(&report, i).contains("no credential was minted"));
    }
    assert_eq!(signed(&up), 0, "delegating pays nothing");

    // Twin A, in its own tollgate process, spends until its cap: 0.01 per call, 0.02 budget.
    let report = drive(
        &python,
        Mode::Stateless,
        &config,
        &[
            ("TOLLGATE_EVM_KEY", KEY),
            ("TOLLGATE_TOKEN", twin_a.as_str()),
        ],
        json!([paid_call(), paid_call(), paid_call()]),
    )
    .await;
    for i in 0..2 {
        assert_eq!(
            structured(&report, i)["payment"]["amount_usd"],
            "0.01",
            "{}",
            text(&report, i)
        );
    }
    assert!(
        text(&report, 2).contains("does not fit in your credential's budget"),
        "{}",
        text(&report, 2)
    );
    assert_eq!(signed(&up), 2);

    // Twin B, same label and limits, has its whole budget.
    let report = drive(
        &python,
        Mode::Legacy,
        &config,
        &[
            ("TOLLGATE_EVM_KEY", KEY),
            ("TOLLGATE_TOKEN", twin_b.as_str()),
        ],
        json!([paid_call(), {"op": "call_tool", "name": "budget_status", "arguments": {}}]),
    )
    .await;
    assert_eq!(
        structured(&report, 0)["payment"]["amount_usd"],
        "0.01",
        "{}",
        text(&report, 0)
    );
    let caps = structured(&report, 1)["caps"]
        .as_array()
        .expect("caps")
        .clone();
    assert_eq!(
        caps.len(),
        2,
        "twin B: its own budget and the orchestrator's"
    );
    assert_eq!(caps[1]["spent_usd"], "0.01", "the twin's spend is its own");

    // The orchestrator sees every child's spend in its own budget.
    let report = drive(
        &python,
        Mode::Legacy,
        &config,
        &as_orchestrator,
        json!([{"op": "call_tool", "name": "budget_status", "arguments": {}},
               {"op": "call_tool", "name": "list_receipts", "arguments": {}}]),
    )
    .await;
    let caps = structured(&report, 0)["caps"]
        .as_array()
        .expect("caps")
        .clone();
    assert_eq!(caps.len(), 1, "{caps:?}");
    assert_eq!(caps[0]["spent_usd"], "0.03", "{caps:?}");
    assert_eq!(caps[0]["remaining_usd"], "0.02", "{caps:?}");
    assert_eq!(
        structured(&report, 1)["receipts"].as_array().map(Vec::len),
        Some(3)
    );

    // The owner's tree: the orchestrator with its children under it.
    let tree: Value = serde_json::from_str(&tollgate(&["budget", "--format", "json"], &config))
        .expect("budget json");
    let budgets = tree["budgets"].as_array().expect("budgets");
    assert_eq!(budgets[0]["label"], "orchestrator", "{tree}");
    assert_eq!(budgets[0]["depth"], 0);
    assert_eq!(budgets[0]["spent_usd"], "0.03");
    let children: Vec<&Value> = budgets.iter().filter(|b| b["depth"] == 1).collect();
    assert_eq!(children.len(), 3, "{tree}");
    let spent: Vec<&str> = children
        .iter()
        .filter_map(|b| b["spent_usd"].as_str())
        .collect();
    assert!(spent.contains(&"0.02") && spent.contains(&"0.01"), "{tree}");
    assert!(children.iter().all(|c| c["parent"] == budgets[0]["id"]));
    let table = tollgate(&["budget"], &config);
    assert!(table.contains("  worker."), "{table}");

    // Revoking the orchestrator stops its children.
    tollgate(&["token", "revoke", &orchestrator], &config);
    let report = drive(
        &python,
        Mode::Legacy,
        &config,
        &[
            ("TOLLGATE_EVM_KEY", KEY),
            ("TOLLGATE_TOKEN", twin_b.as_str()),
        ],
        json!([paid_call()]),
    )
    .await;
    assert!(text(&report, 0).contains("revoked"), "{}", text(&report, 0));
    assert_eq!(signed(&up), 3, "nothing paid after the revocation");
    place.assert_used_by(&dir.join("state"));
}
