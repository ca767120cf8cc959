//! Every success shape a tool returns validates against the `outputSchema` it advertises: the
//! meta-tools, a paid call's `{result, payment}`, and `approval_required`. MCP clients (the
//! Python `mcp` SDK among them) refuse a result that does not.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};
use support::mcp::Setup;
use support::seller::BUYER_KEY;
use support::stdio::Session;
use support::upstream::TestUpstream;

const POLICY: &str = r#"
[caps]
per_call = "0.05 USD"

[profiles.agent]
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

/// One session's calls: `(tool, arguments)` → the `tools/call` result.
fn calls(session: &mut Session, steps: &[(&str, Value)]) -> Vec<Value> {
    steps
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            let id = 100 + i as u64;
            session.call_tool(id, name, arguments.clone());
            session.response(id).expect("an answer")["result"].clone()
        })
        .collect()
}

fn output_schemas(session: &mut Session) -> BTreeMap<String, Value> {
    session.send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    let list = session.response(1).expect("tools/list");
    list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["outputSchema"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_success_shape_validates_against_its_output_schema() {
    let up = TestUpstream::start(support::seller::always_settles).await;
    let setup = Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{base}/paid\"\n\
         max_price = \"0.05 USD\"\n\n\
         [[tool]]\nname = \"asks\"\ndescription = \"a person approves\"\nurl = \"{base}/asks\"\n\
         max_price = \"0.05 USD\"\napproval = \"always\"\n",
        base = up.base()
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
    tollgate(&["init"], &config);
    let token = tollgate(&["token", "mint", "--profile", "agent"], &config);
    let mut session = Session::start(
        &config,
        &[("TOLLGATE_EVM_KEY", BUYER_KEY), ("TOLLGATE_TOKEN", &token)],
    );
    let schemas = output_schemas(&mut session);
    let mut results = calls(
        &mut session,
        &[
            ("price_check", json!({"tool": "paid"})),
            ("budget_status", json!({})),
            ("list_receipts", json!({})),
            ("paid", json!({})),
            ("list_receipts", json!({"limit": 5})),
            (
                "delegate_budget",
                json!({"budget_usd_micros": 1000, "label": "worker", "tools": ["paid"]}),
            ),
            (
                "delegate_budget",
                json!({"budget_usd_micros": 999_999_999u64}),
            ),
            ("asks", json!({})),
        ],
    );
    let approval_id = results[7]["structuredContent"]["approval_id"]
        .as_str()
        .expect("approval_required")
        .to_owned();
    results.extend(calls(
        &mut session,
        &[("payment_status", json!({"approval_id": approval_id}))],
    ));
    session.finish();
    let names = [
        "price_check",
        "budget_status",
        "list_receipts",
        "paid",
        "list_receipts",
        "delegate_budget",
        "delegate_budget",
        "asks",
        "payment_status",
    ];
    for (name, result) in names.iter().zip(&results) {
        assert_ne!(result["isError"], json!(true), "{name}: {result}");
        let schema = &schemas[*name];
        let validator = jsonschema::validator_for(schema)
            .unwrap_or_else(|e| panic!("{name}'s outputSchema is not a valid schema: {e}"));
        let content = &result["structuredContent"];
        let errors: Vec<String> = validator
            .iter_errors(content)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{name}: {content}\ndoes not match {schema}:\n{}",
            errors.join("\n")
        );
    }
    assert_eq!(
        results[4]["structuredContent"]["receipts"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        results[7]["structuredContent"]["status"],
        "approval_required"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_meta_tool_argument_is_refused_by_name() {
    let setup = Setup::new(
        "[[tool]]\nname = \"free\"\ndescription = \"free\"\nurl = \"http://127.0.0.1:9/x\"\n",
    );
    let config = setup.config();
    let mut session = Session::start(&config, &[]);
    let results = calls(
        &mut session,
        &[
            ("list_receipts", json!({"limit": "ten"})),
            ("list_receipts", json!({"until": 5})),
            ("price_check", json!({"tool": 7})),
            ("payment_status", json!({})),
        ],
    );
    session.finish();
    for (result, names) in results
        .iter()
        .zip(["`limit`", "until", "`tool`", "approval_id"])
    {
        assert_eq!(result["isError"], json!(true), "{result}");
        let text = result["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.contains(names), "expected {names} in: {text}");
    }
}
