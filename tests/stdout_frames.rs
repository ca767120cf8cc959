//! Invariant: stdout carries MCP frames only; every log line goes to stderr, at any level.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

#[test]
fn every_stdout_line_is_a_json_rpc_message_even_with_debug_logs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    std::fs::write(dir.path().join("tollgate.toml"), "tools_dir = \"tools\"\n").unwrap();
    // An unset variable makes tollgate log a warning at start.
    std::fs::write(
        dir.path().join("tools/t.toml"),
        r#"
[[tool]]
name = "closed"
description = "Points at a port nobody listens on"
url = "http://127.0.0.1:9/x"
headers = { "X-Key" = "${TOLLGATE_UNSET_VARIABLE_FOR_TEST}" }
"#,
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(dir.path().join("tollgate.toml"))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let requests = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"closed","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"nope"}}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"logging/setLevel","params":{"level":"debug"}}"#,
    ];
    let mut stdin = child.stdin.take().unwrap();
    for r in requests {
        writeln!(stdin, "{r}").unwrap();
    }
    // Give the calls time to finish before closing stdin.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TOLLGATE_UNSET_VARIABLE_FOR_TEST"),
        "logs went somewhere else"
    );
    let mut ids = Vec::new();
    for line in stdout.lines() {
        let message: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        assert_eq!(message["jsonrpc"], "2.0", "{line}");
        ids.push(message["id"].as_i64().unwrap_or(-1));
    }
    ids.sort();
    assert_eq!(
        ids,
        [1, 2, 3, 4, 5],
        "every request answered once:\n{stdout}"
    );
}
