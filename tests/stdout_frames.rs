//! Invariant: stdout carries MCP frames only; every log line goes to stderr, at any level.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// `tollgate serve` on `dir/tollgate.toml` with every log level on and all three of its
/// standard streams piped.
fn serve_logging_every_frame(dir: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(dir.join("tollgate.toml"))
        .env("RUST_LOG", "trace")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

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
    let mut child = serve_logging_every_frame(dir.path());
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

/// A host that pipes stderr and never reads it (or reads it only at the end) must not stall
/// tollgate: once the pipe is full, a process writing its log there inline waits for the
/// reader. The log is written by a thread of its own; lines it cannot place are dropped and
/// counted, and the calls go on.
#[test]
fn a_host_that_never_reads_stderr_does_not_stall_the_calls() {
    use std::io::{BufRead, BufReader, Read};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    std::fs::write(dir.path().join("tollgate.toml"), "tools_dir = \"tools\"\n").unwrap();
    // Every frame is logged: the 64 KiB pipe fills within a few requests.
    let mut child = serve_logging_every_frame(dir.path());
    let mut stdin = child.stdin.take().unwrap();
    // Answers are read on a thread, so a stall shows as a timeout, not a hung test.
    let (answers, answered) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let message: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
            if answers.send(message).is_err() {
                break;
            }
        }
    });
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"2025-11-25","capabilities":{{}},"clientInfo":{{"name":"t","version":"0"}}}}}}"#
    )
    .unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    let answer = |id: i64| loop {
        let message = answered
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("request {id} was not answered: the process stalled"));
        if message["id"] == id {
            return message;
        }
    };
    answer(0);
    for id in 1..=500 {
        writeln!(
            stdin,
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#
        )
        .unwrap();
        assert!(answer(id)["result"]["tools"].is_array());
    }
    // Now the host reads what is left of stderr, and the process ends.
    drop(stdin);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let told = stderr
        .lines()
        .filter(|l| l.contains("log lines dropped here: stderr was not being read"))
        .count();
    eprintln!("{told} reports of dropped log lines");
    // Lines queued while the pipe was full may have been dropped, the very last among them;
    // what reaches stderr at the end is then the mark of the gap.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("stdin closed; exiting") || last.contains("log lines dropped here"),
        "the log's end reaches stderr before the process exits: {last:?}"
    );
}
