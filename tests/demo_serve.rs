//! `tollgate demo --serve`, as Claude Desktop would run it: the sandbox in-process and
//! tollgate's MCP server on stdio. The Python MCP client (mcp 2.3.0) lists the sandbox tools
//! and makes a paid call on both protocol revisions; the receipt is marked sandbox.

mod support;

use std::process::Stdio;

use serde_json::{Value, json};
use support::mcp::Mode;

async fn drive(mode: Mode) -> Value {
    let Some(python) = support::mcp::python() else {
        return Value::Null;
    };
    let dir = tempfile::tempdir().unwrap();
    let steps = dir.path().join("steps.json");
    std::fs::write(
        &steps,
        json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "sandbox_quote", "arguments": {}},
            {"op": "call_tool", "name": "sandbox_report", "arguments": {}},
        ])
        .to_string(),
    )
    .unwrap();
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(support::mcp::root().join("tests/clients/mcp_driver.py"))
        .args(["--mode", mode.arg()])
        .arg("--steps")
        .arg(&steps)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .args(["demo", "--serve", "--dir"])
        .arg(dir.path().join("sandbox"))
        .env_remove("TOLLGATE_EVM_KEY")
        .env_remove("TOLLGATE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the MCP driver finished within 120 s")
        .expect("run the MCP driver");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "driver failed:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}):\n{stdout}\n{stderr}"));
    assert!(
        stderr.contains("SANDBOX money only"),
        "demo --serve says what it is on stderr:\n{stderr}"
    );
    report
}

fn steps(report: &Value) -> &Vec<Value> {
    report["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("a report with steps: {report}"))
}

async fn a_paid_call_returns_a_receipt_marked_sandbox(mode: Mode) {
    let report = drive(mode).await;
    if report.is_null() {
        return;
    }
    assert_eq!(report["protocol_version"], mode.revision(), "{report}");
    let steps = steps(&report);
    let tools = steps[0]["tools"].as_array().expect("tools");
    let quote = tools
        .iter()
        .find(|t| t["name"] == "sandbox_quote")
        .unwrap_or_else(|| panic!("sandbox_quote listed: {report}"));
    assert!(
        quote["description"]
            .as_str()
            .unwrap_or_default()
            .contains("SANDBOX money"),
        "{quote}"
    );

    let paid = &steps[1]["result"];
    assert_ne!(paid["isError"], Value::Bool(true), "{report}");
    let receipt = &paid["structuredContent"]["payment"];
    assert_eq!(receipt["sandbox"], Value::Bool(true), "{receipt}");
    assert_eq!(receipt["protocol"], "x402", "{receipt}");
    assert_eq!(receipt["amount_atomic"], "1000", "{receipt}");
    assert_eq!(receipt["network"], "eip155:31337", "{receipt}");
    assert!(
        receipt["transaction"]
            .as_str()
            .is_some_and(|t| t.starts_with("0x")),
        "{receipt}"
    );

    let refused = &steps[2]["result"];
    assert_eq!(
        refused["isError"],
        Value::Bool(true),
        "the per-call cap refuses: {report}"
    );
}

#[tokio::test]
async fn demo_serve_pays_a_sandbox_call_on_2025_11_25() {
    a_paid_call_returns_a_receipt_marked_sandbox(Mode::Legacy).await;
}

#[tokio::test]
async fn demo_serve_pays_a_sandbox_call_on_2026_07_28() {
    a_paid_call_returns_a_receipt_marked_sandbox(Mode::Stateless).await;
}
