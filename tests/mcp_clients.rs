//! Real MCP clients drive the real binary: the Python SDK (mcp 2.3.0) on both protocol
//! revisions, against a local upstream that the test starts.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::mcp::{Mode, Setup, drive, python};
use support::upstream::{Reply, TestUpstream};

/// Tools pointing at the test upstream.
fn tools(base: &str) -> String {
    format!(
        r#"
[[tool]]
name = "weather"
title = "Weather"
description = "Weather for a city"
url = "{base}/weather?city={{city}}"
query = {{ units = "{{units}}" }}
timeout_ms = 10000
annotations = {{ read_only = true }}
[tool.input_schema]
type = "object"
required = ["city"]
additionalProperties = false
properties.city = {{ type = "string", minLength = 1 }}
properties.units = {{ type = "string", enum = ["metric", "imperial"] }}
[tool.output_schema]
type = "object"
required = ["temp"]
properties.temp = {{ type = "number" }}

[[tool]]
name = "notes"
description = "Plain-text notes"
url = "{base}/notes"

[[tool]]
name = "broken"
description = "An upstream that fails"
url = "{base}/fail"

[[tool]]
name = "stuck"
description = "An upstream that never answers"
url = "{base}/hang"
timeout_ms = 700

[[tool]]
name = "stuck_long"
description = "An upstream that never answers, with a long timeout"
url = "{base}/hang-long"
timeout_ms = 60000

[[tool]]
name = "huge"
description = "An upstream whose answer is too large"
url = "{base}/huge"
max_response_bytes = 2048

[[tool]]
name = "paid"
description = "An upstream that wants to be paid"
url = "{base}/paid"
max_price = "0.01 USD"
"#
    )
}

async fn upstream() -> TestUpstream {
    TestUpstream::start(|seen| match seen.path() {
        "/weather" => {
            let city = seen.target.contains("city=Oslo");
            Reply::json(200, json!({"temp": if city { -3.5 } else { 20.0 }, "q": seen.target}))
        }
        "/notes" => Reply::text(200, "text/plain; charset=utf-8", "buy milk"),
        "/fail" => Reply::text(500, "text/plain", "database on fire"),
        "/hang" | "/hang-long" => Reply::Hang,
        "/huge" => Reply::json(200, json!({"blob": "x".repeat(10_000)})),
        "/paid" => Reply::json(402, json!({"x402Version": 1, "error": "pay", "accepts": [{
            "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "10000",
            "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "payTo": "0x1111111111111111111111111111111111111111",
            "resource": "http://x/paid", "description": "", "mimeType": "", "maxTimeoutSeconds": 60}]})),
        _ => Reply::text(404, "text/plain", "no such path"),
    })
    .await
}

fn step(report: &Value, i: usize) -> &Value {
    &report["steps"][i]
}

fn error_text(result: &Value) -> String {
    assert_eq!(result["isError"], json!(true), "expected isError: {result}");
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

macro_rules! both_revisions {
    ($($name:ident),* $(,)?) => {
        mod legacy {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $name() { super::$name(super::Mode::Legacy).await } )*
        }
        mod stateless {
            $( #[tokio::test(flavor = "multi_thread")]
               async fn $name() { super::$name(super::Mode::Stateless).await } )*
        }
    };
}

both_revisions!(
    lists_the_definitions_with_their_schemas,
    a_free_tool_returns_upstream_json_as_structured_content,
    failures_are_tool_errors_naming_the_cause,
    progress_is_reported_and_cancellation_stops_the_upstream_request,
);

async fn lists_the_definitions_with_their_schemas(mode: Mode) {
    let Some(python) = python() else { return };
    let up = upstream().await;
    let setup = Setup::new(&tools(&up.base()));
    let report = drive(
        &python,
        mode,
        &setup.config(),
        &[],
        json!([{"op": "list_tools"}]),
    )
    .await;
    assert_eq!(report["protocol_version"], mode.revision(), "{report}");
    assert!(
        report["capabilities"].get("logging").is_none(),
        "logging must not be advertised"
    );

    let tools = step(&report, 0)["tools"].as_array().expect("tools").clone();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "broken",
            "huge",
            "notes",
            "paid",
            "stuck",
            "stuck_long",
            "weather",
            "payment_status",
            "delegate_budget",
            "budget_status",
            "list_receipts",
            "price_check"
        ]
    );
    let weather = &tools[6];
    assert_eq!(weather["title"], "Weather");
    assert_eq!(weather["inputSchema"]["required"], json!(["city"]));
    assert_eq!(
        weather["inputSchema"]["properties"]["units"]["enum"],
        json!(["metric", "imperial"])
    );
    assert_eq!(
        weather["outputSchema"]["properties"]["result"]["required"],
        json!(["temp"])
    );
    assert_eq!(weather["annotations"]["readOnlyHint"], json!(true));
    for tool in &tools {
        assert_eq!(tool["outputSchema"]["type"], "object", "{tool}");
    }
    let paid = &tools[3];
    assert!(
        paid["description"]
            .as_str()
            .unwrap_or("")
            .contains("at most 0.01 USD"),
        "{paid}"
    );
}

async fn a_free_tool_returns_upstream_json_as_structured_content(mode: Mode) {
    let Some(python) = python() else { return };
    let up = upstream().await;
    let setup = Setup::new(&tools(&up.base()));
    let steps = json!([
        {"op": "call_tool", "name": "weather", "arguments": {"city": "Oslo", "units": "metric"}},
        {"op": "call_tool", "name": "notes", "arguments": {}},
    ]);
    let report = drive(&python, mode, &setup.config(), &[], steps).await;

    let result = &step(&report, 0)["result"];
    assert_ne!(result["isError"], json!(true), "{result}");
    assert_eq!(
        result["structuredContent"]["result"]["temp"],
        json!(-3.5),
        "{result}"
    );
    assert_eq!(
        result["structuredContent"]["result"]["q"],
        json!("/weather?city=Oslo&units=metric")
    );
    let text: Value = serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        text, result["structuredContent"]["result"],
        "text copy of the JSON"
    );

    let notes = &step(&report, 1)["result"];
    assert_eq!(notes["content"][0]["text"], "buy milk", "{notes}");
    assert_eq!(notes["structuredContent"]["result"], "buy milk");
    assert_eq!(
        up.seen().iter().filter(|s| s.path() == "/weather").count(),
        1
    );
}

async fn failures_are_tool_errors_naming_the_cause(mode: Mode) {
    let Some(python) = python() else { return };
    let up = upstream().await;
    let setup = Setup::new(&tools(&up.base()));
    let steps = json!([
        {"op": "call_tool", "name": "weather", "arguments": {"city": 42}},
        {"op": "call_tool", "name": "weather", "arguments": {"town": "Oslo"}},
        {"op": "call_tool", "name": "broken", "arguments": {}},
        {"op": "call_tool", "name": "stuck", "arguments": {}},
        {"op": "call_tool", "name": "huge", "arguments": {}},
        {"op": "call_tool", "name": "paid", "arguments": {}},
        {"op": "call_tool", "name": "no_such_tool", "arguments": {}},
    ]);
    let report = drive(&python, mode, &setup.config(), &[], steps).await;

    let invalid = error_text(&step(&report, 0)["result"]);
    assert!(
        invalid.contains("/city") && invalid.contains("string"),
        "{invalid}"
    );
    assert!(invalid.contains("nothing was sent"), "{invalid}");
    let missing = error_text(&step(&report, 1)["result"]);
    assert!(
        missing.contains("\"city\" is a required property"),
        "{missing}"
    );
    assert!(
        missing.contains("town"),
        "the unexpected argument is named: {missing}"
    );
    assert!(
        up.seen().iter().all(|s| s.path() != "/weather"),
        "invalid arguments reached upstream"
    );

    let server_error = error_text(&step(&report, 2)["result"]);
    assert!(
        server_error.contains("500") && server_error.contains("database on fire"),
        "{server_error}"
    );
    let timeout = error_text(&step(&report, 3)["result"]);
    assert!(
        timeout.contains("no complete answer") && timeout.contains("700 ms"),
        "{timeout}"
    );
    let too_large = error_text(&step(&report, 4)["result"]);
    assert!(
        too_large.contains("larger than this tool's limit of 2048 bytes"),
        "{too_large}"
    );
    let paid = error_text(&step(&report, 5)["result"]);
    assert!(
        paid.contains("requires payment") && paid.contains("nothing was paid"),
        "{paid}"
    );
    assert!(
        paid.contains("10000") && paid.contains("base-sepolia"),
        "lists the ask: {paid}"
    );

    let unknown = step(&report, 6)["error"].as_str().unwrap_or_default();
    assert!(
        unknown.contains("unknown tool `no_such_tool`"),
        "{}",
        step(&report, 6)
    );
}

async fn progress_is_reported_and_cancellation_stops_the_upstream_request(mode: Mode) {
    let Some(python) = python() else { return };
    let up = upstream().await;
    let setup = Setup::new(&tools(&up.base()));
    let steps = json!([
        {"op": "call_tool", "name": "notes", "arguments": {}, "progress": true},
        {"op": "call_tool", "name": "stuck_long", "arguments": {}, "cancel_after_ms": 1500},
        {"op": "sleep", "ms": 500},
    ]);
    let report = drive(&python, mode, &setup.config(), &[], steps).await;

    let progress = step(&report, 0)["progress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let values: Vec<f64> = progress
        .iter()
        .filter_map(|p| p["progress"].as_f64())
        .collect();
    assert!(values.len() >= 2, "progress notifications: {progress:?}");
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "progress increases: {values:?}"
    );

    assert_eq!(
        step(&report, 1)["cancelled"],
        json!(true),
        "{}",
        step(&report, 1)
    );
    // The upstream connection is closed long before the tool's 60 s timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !up.seen().iter().any(|s| s.method == "CLOSED") {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream request still open after cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Invariant: secrets (API keys from the environment) never reach the model or the logs, even
/// when the upstream echoes them back.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_echoed_by_upstream_is_redacted_and_never_logged() {
    let Some(python) = python() else { return };
    const SECRET: &str = "sk-test-5b1d0c9e4f";
    let up = TestUpstream::start(|seen| {
        let key = seen.header("X-Api-Key").unwrap_or("(none)").to_owned();
        Reply::text(500, "text/plain", &format!("bad key {key}"))
    })
    .await;
    let setup = Setup::new(&format!(
        r#"
[[tool]]
name = "keyed"
description = "Needs an API key"
url = "{}/keyed"
headers = {{ "X-Api-Key" = "${{TOLLGATE_TEST_SECRET}}" }}
"#,
        up.base()
    ));
    let steps = json!([{"op": "call_tool", "name": "keyed", "arguments": {}}]);
    let (report, logs) = support::mcp::drive_with_logs(
        &python,
        Mode::Legacy,
        &setup.config(),
        &[("TOLLGATE_TEST_SECRET", SECRET)],
        steps,
    )
    .await;
    assert_eq!(
        up.seen()[0].header("X-Api-Key"),
        Some(SECRET),
        "the key was sent upstream"
    );
    let text = error_text(&step(&report, 0)["result"]);
    assert!(text.contains("bad key [redacted]"), "{text}");
    assert!(
        !report.to_string().contains(SECRET),
        "secret reached the client: {report}"
    );
    assert!(!logs.contains(SECRET), "secret in the logs:\n{logs}");
}
