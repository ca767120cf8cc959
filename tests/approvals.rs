//! A payment above the threshold is paid only after a person says yes, and the agent can never
//! say yes. The real Python MCP client (mcp 2.3.0) drives the binary in four modes (2025-11-25
//! and 2026-07-28, each with and without an elicitation callback) against the real x402 v2
//! seller on anvil (`tests/peers/x402`); the out-of-band flow completes through `tollgate
//! approve` and through the local approval page in headless Chromium (`tests/peers/browser`).
//! The chain and the seller's log are the judges of "nothing signed".

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::ledgers::{Backend, Place};
use support::mcp::{Mode, browser, click_on_page, drive_elicit, python};
use support::x402_peer::{X402Peers, start};
use tollgate::ledger::{ApprovalState, Ledger};

/// A scratch config for the x402 peers: weather_v2 costs 0.001 USD; the policy asks a person
/// above `approve_above`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(peers: &X402Peers, approve_above: &str, approval: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        let usdc = peers.str("/v2/usdc");
        std::fs::write(
            p.join("tollgate.toml"),
            format!(
                "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n\
                 [[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{usdc}\"\nsymbol = \"USDC\"\n\
                 decimals = 6\n[approval]\n{approval}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("policies/test.toml"),
            format!(
                "[caps]\nper_call = \"0.50 USD\"\nper_day = \"1 USD\"\napprove_above = \
                 \"{approve_above}\"\n[allow]\nnetworks = [\"eip155:31337\"]\nassets = [\"USDC\"]\n"
            ),
        )
        .unwrap();
        let v2 = peers.seller("v2");
        std::fs::write(
            p.join("tools/sellers.toml"),
            format!(
                r#"
[[tool]]
name = "weather_v2"
description = "Weather from the x402 v2 seller"
url = "{v2}/weather?city={{city}}"
max_price = "0.01 USD"
input_schema = {{ type = "object", required = ["city"], properties = {{ city = {{ type = "string" }} }} }}

[[tool]]
name = "weather_sensitive"
description = "The same weather, marked as always needing a person"
url = "{v2}/weather?city={{city}}"
max_price = "0.01 USD"
approval = "always"
input_schema = {{ type = "object", required = ["city"], properties = {{ city = {{ type = "string" }} }} }}
"#
            ),
        )
        .unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tollgate.toml")
    }

    fn state(&self, id: &str) -> ApprovalState {
        let config = tollgate::config::Config::load(Some(&self.config())).unwrap();
        let ledger = Ledger::open_with(&config.state_dir, &config.ledger).unwrap();
        ledger
            .approval(id, tollgate::money::now_unix())
            .unwrap()
            .expect("the approval is in the ledger")
            .state
    }
}

async fn peers() -> Option<X402Peers> {
    python()?;
    start().await
}

/// One tool call in a fresh session; returns the step's output and the whole report.
async fn call(
    setup: &Setup,
    peers: &X402Peers,
    mode: Mode,
    elicit: Option<&str>,
    tool: &str,
    arguments: Value,
) -> (Value, Value) {
    let python = python().expect("checked by the caller");
    let steps = json!([{"op": "call_tool", "name": tool, "arguments": arguments, "timeout_s": 8}]);
    let (report, logs) = drive_elicit(
        &python,
        mode,
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", &peers.str("/buyer_key"))],
        steps,
        elicit,
    )
    .await;
    assert_eq!(
        report["protocol_version"],
        mode.revision(),
        "negotiated revision: {report}\n{logs}"
    );
    (report["steps"][0].clone(), report)
}

/// Requests that carried a signed payment to the v2 seller so far.
async fn signed(peers: &X402Peers) -> usize {
    peers
        .seller_events("v2", "request")
        .await
        .iter()
        .filter(|r| !r["payment_header"].is_null())
        .count()
}

fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `tollgate approve|deny|approvals` in its own process (as a person would run it).
fn cli(setup: &Setup, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(setup.config())
        .output()
        .expect("run tollgate");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

fn assert_paid_by_person(result: &Value, channel: &str, payee: &str) {
    assert_ne!(result["isError"], json!(true), "{result}");
    assert_eq!(
        result["structuredContent"]["result"]["report"], "sunny",
        "{result}"
    );
    let receipt = &result["structuredContent"]["payment"];
    assert_eq!(receipt["amount_atomic"], "1000", "{receipt}");
    assert_eq!(
        receipt["payee"].as_str().unwrap().to_lowercase(),
        payee.to_lowercase()
    );
    assert_eq!(receipt["approval"]["approved_by"], "person", "{receipt}");
    assert_eq!(receipt["approval"]["channel"], channel, "{receipt}");
}

/// approve → paid with a receipt; decline → isError and nothing signed; no answer in time →
/// nothing signed, on the host's protocol revision.
async fn elicitation_decides(mode: Mode) {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "0.0005 USD", "elicitation_timeout_secs = 3");
    let (buyer, payee) = (peers.str("/buyer"), peers.str("/v2/payee"));
    let before = peers.balance("v2", &payee).await;

    let (step, report) = call(
        &setup,
        &peers,
        mode,
        Some("accept"),
        "weather_v2",
        json!({"city": "Paris"}),
    )
    .await;
    assert_paid_by_person(&step["result"], "elicitation", &payee);
    let asked = &report["elicitations"][0];
    let message = asked["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("0.001 USD") && message.to_lowercase().contains(&payee.to_lowercase()),
        "the person sees amount and payee: {asked}"
    );
    assert!(
        message.contains("0.001 USDC"),
        "amount in the asset: {message}"
    );
    assert!(
        message.contains("budget left after paying: 0.999 USD"),
        "{message}"
    );
    assert!(
        message.contains("x402") && message.contains("eip155:31337"),
        "{message}"
    );
    assert_eq!(peers.balance("v2", &payee).await, before + 1000);
    assert_eq!(signed(&peers).await, 1);
    assert!(peers.balance("v2", &buyer).await > 0);

    for answer in ["decline", "reject"] {
        let (step, report) = call(
            &setup,
            &peers,
            mode,
            Some(answer),
            "weather_v2",
            json!({"city": "Oslo"}),
        )
        .await;
        assert_eq!(report["elicitations"].as_array().map(Vec::len), Some(1));
        assert_eq!(step["result"]["isError"], json!(true), "{step}");
        assert!(text(&step["result"]).contains("declined"), "{step}");
        assert_eq!(signed(&peers).await, 1, "nothing signed after {answer}");
    }

    let (step, _) = call(
        &setup,
        &peers,
        mode,
        Some("never"),
        "weather_v2",
        json!({"city": "Rome"}),
    )
    .await;
    match mode {
        // 2025-11-25: tollgate gives up on the elicitation after 3 s and falls back to the
        // out-of-band flow.
        Mode::Legacy => {
            let s = &step["result"]["structuredContent"];
            assert_eq!(s["status"], "approval_required", "{step}");
            assert!(text(&step["result"]).contains("did not answer"), "{step}");
            assert_eq!(
                setup.state(s["approval_id"].as_str().unwrap()),
                ApprovalState::Pending
            );
        }
        // 2026-07-28: the host never retries; the client gives up.
        Mode::Stateless => assert_eq!(step["timed_out"], json!(true), "{step}"),
    }
    assert_eq!(signed(&peers).await, 1, "nothing signed without an answer");

    if let Mode::Stateless = mode {
        // An answer after the sealed requestState expired is refused.
        let (step, _) = call(
            &setup,
            &peers,
            mode,
            Some("late:3500"),
            "weather_v2",
            json!({"city": "Lima"}),
        )
        .await;
        assert_eq!(step["result"]["isError"], json!(true), "{step}");
        assert!(text(&step["result"]).contains("expired"), "{step}");
        assert_eq!(
            signed(&peers).await,
            1,
            "nothing signed after a late answer"
        );
    }
    assert_eq!(peers.balance("v2", &payee).await, before + 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn elicitation_on_2025_11_25_approves_declines_and_times_out() {
    elicitation_decides(Mode::Legacy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn elicitation_on_2026_07_28_approves_declines_and_times_out() {
    elicitation_decides(Mode::Stateless).await;
}

/// Without elicitation: approval_required; `tollgate approve` in another process; the retry
/// with approval_id pays, once. Reuse, other arguments, a denial and expiry are refused.
async fn out_of_band_with_the_cli(mode: Mode) {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "0.0005 USD", "");
    let payee = peers.str("/v2/payee");
    let paris = json!({"city": "Paris"});

    let (step, _) = call(&setup, &peers, mode, None, "weather_v2", paris.clone()).await;
    let s = step["result"]["structuredContent"].clone();
    assert_eq!(s["status"], "approval_required", "{step}");
    assert_eq!(s["tool"], "weather_v2");
    assert_eq!(s["amount"], "0.001 USD");
    assert_eq!(
        s["payee"].as_str().unwrap().to_lowercase(),
        payee.to_lowercase()
    );
    assert!(
        s["approve_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "{s}"
    );
    assert!(s["expires_at"].is_string());
    let id = s["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(signed(&peers).await, 0);

    // Retrying before a person decides pays nothing.
    let mut with_id = paris.clone();
    with_id["approval_id"] = json!(id);
    let (step, _) = call(&setup, &peers, mode, None, "weather_v2", with_id.clone()).await;
    assert_eq!(
        step["result"]["structuredContent"]["status"],
        "approval_required"
    );
    assert!(
        text(&step["result"]).contains("No person has decided yet"),
        "{step}"
    );
    assert_eq!(signed(&peers).await, 0);

    let (ok, out) = cli(&setup, &["approvals"]);
    assert!(
        ok && out.contains(&id) && out.contains("0.001 USD"),
        "{out}"
    );
    let (ok, out) = cli(&setup, &["approve", &id]);
    assert!(ok, "{out}");
    assert!(
        out.contains("weather_v2") && out.contains("0.001 USDC"),
        "{out}"
    );
    // The agent can see where its approval stands, and nothing more.
    let status = json!({"approval_id": id});
    let (step, _) = call(&setup, &peers, mode, None, "payment_status", status).await;
    let s = &step["result"]["structuredContent"];
    assert_eq!(s["state"], "approved", "{step}");
    assert_eq!(s["decided_by"], "cli", "{step}");
    assert!(
        s["next"]
            .as_str()
            .unwrap_or("")
            .contains("call the tool again")
    );

    // The approved id for other arguments is refused (and stays usable for its own call).
    let mut other = json!({"city": "Rome", "approval_id": id});
    let (step, _) = call(&setup, &peers, mode, None, "weather_v2", other.clone()).await;
    assert_eq!(step["result"]["isError"], json!(true), "{step}");
    assert!(text(&step["result"]).contains("different call"), "{step}");
    // ...and for another tool.
    other["city"] = json!("Paris");
    let (step, _) = call(&setup, &peers, mode, None, "weather_sensitive", other).await;
    assert!(text(&step["result"]).contains("different call"), "{step}");
    assert_eq!(signed(&peers).await, 0);
    assert_eq!(setup.state(&id), ApprovalState::Approved);

    let (step, _) = call(&setup, &peers, mode, None, "weather_v2", with_id.clone()).await;
    assert_paid_by_person(&step["result"], "cli", &payee);
    assert_eq!(
        step["result"]["structuredContent"]["payment"]["approval"]["approval_id"],
        json!(id)
    );
    assert_eq!(signed(&peers).await, 1);
    assert_eq!(setup.state(&id), ApprovalState::Used);

    // Single use.
    let (step, _) = call(&setup, &peers, mode, None, "weather_v2", with_id).await;
    assert!(text(&step["result"]).contains("already used"), "{step}");
    assert_eq!(signed(&peers).await, 1);

    // A denied one stays denied.
    let (step, _) = call(
        &setup,
        &peers,
        mode,
        None,
        "weather_v2",
        json!({"city": "Oslo"}),
    )
    .await;
    let denied = step["result"]["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cli(&setup, &["deny", &denied]).0);
    let (ok, out) = cli(&setup, &["approve", &denied]);
    assert!(!ok && out.contains("already denied"), "{out}");
    let (step, _) = call(
        &setup,
        &peers,
        mode,
        None,
        "weather_v2",
        json!({"city": "Oslo", "approval_id": denied}),
    )
    .await;
    assert!(
        text(&step["result"]).contains("denied by a person (through cli)"),
        "{step}"
    );
    assert_eq!(setup.state(&denied), ApprovalState::Denied);
    let status = json!({"approval_id": denied});
    let (step, _) = call(&setup, &peers, mode, None, "payment_status", status).await;
    assert_eq!(
        step["result"]["structuredContent"]["state"], "denied",
        "{step}"
    );
    assert_eq!(signed(&peers).await, 1);
}

/// Three hosts (state directories) sharing a PostgreSQL ledger: the call asked on host 1 is
/// approved with `tollgate approve` on host 2 and redeemed by the agent's retry on host 3,
/// once; the seller is paid once.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_asked_on_one_host_is_given_on_a_second_and_redeemed_on_a_third() {
    let Some(peers) = peers().await else { return };
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let hosts: Vec<Setup> = (0..3)
        .map(|_| Setup::new(&peers, "0.0005 USD", ""))
        .collect();
    for host in &hosts {
        place.configure(&host.config());
    }
    let payee = peers.str("/v2/payee");
    let paris = json!({"city": "Paris"});
    let (step, _) = call(
        &hosts[0],
        &peers,
        Mode::Legacy,
        None,
        "weather_v2",
        paris.clone(),
    )
    .await;
    let s = &step["result"]["structuredContent"];
    assert_eq!(s["status"], "approval_required", "{step}");
    let id = s["approval_id"].as_str().unwrap().to_owned();

    let (ok, out) = cli(&hosts[1], &["approvals"]);
    assert!(ok && out.contains(&id), "host 2 sees the question: {out}");
    let (ok, out) = cli(&hosts[1], &["approve", &id]);
    assert!(ok, "{out}");
    assert_eq!(signed(&peers).await, 0);

    let mut with_id = paris;
    with_id["approval_id"] = json!(id);
    let (step, _) = call(
        &hosts[2],
        &peers,
        Mode::Legacy,
        None,
        "weather_v2",
        with_id.clone(),
    )
    .await;
    assert_paid_by_person(&step["result"], "cli", &payee);
    assert_eq!(signed(&peers).await, 1);
    assert_eq!(hosts[0].state(&id), ApprovalState::Used);
    // Used once, on any host.
    let (step, _) = call(&hosts[0], &peers, Mode::Legacy, None, "weather_v2", with_id).await;
    assert!(text(&step["result"]).contains("already used"), "{step}");
    assert_eq!(signed(&peers).await, 1);
    let (ok, out) = cli(&hosts[1], &["receipts", "--format", "json"]);
    let receipts: Value = serde_json::from_str(&out).unwrap_or_default();
    assert!(ok, "{out}");
    assert_eq!(
        receipts.as_array().map(Vec::len),
        Some(1),
        "host 2 sees host 3's receipt: {out}"
    );
    assert_eq!(receipts[0]["approval"]["approval_id"], json!(id), "{out}");
    for host in &hosts {
        place.assert_used_by(&host.dir.path().join("state"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_elicitation_on_2025_11_25_tollgate_approve_completes_the_call() {
    out_of_band_with_the_cli(Mode::Legacy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_elicitation_on_2026_07_28_tollgate_approve_completes_the_call() {
    out_of_band_with_the_cli(Mode::Stateless).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_approval_is_refused() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "0.0005 USD", "expires_after_secs = 2");
    let (step, _) = call(
        &setup,
        &peers,
        Mode::Legacy,
        None,
        "weather_v2",
        json!({"city": "Paris"}),
    )
    .await;
    let id = step["result"]["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(cli(&setup, &["approve", &id]).0);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (step, _) = call(
        &setup,
        &peers,
        Mode::Legacy,
        None,
        "weather_v2",
        json!({"city": "Paris", "approval_id": id}),
    )
    .await;
    assert_eq!(step["result"]["isError"], json!(true), "{step}");
    assert!(text(&step["result"]).contains("expired"), "{step}");
    assert_eq!(setup.state(&id), ApprovalState::Expired);
    assert_eq!(signed(&peers).await, 0);
}

/// No MCP tool can change an approval's state: every listed tool, called with the pending
/// approval's id (and without), leaves it pending.
#[tokio::test(flavor = "multi_thread")]
async fn no_tool_can_change_an_approvals_state() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "0.0005 USD", "");
    let (step, report) = call(
        &setup,
        &peers,
        Mode::Legacy,
        None,
        "weather_v2",
        json!({"city": "Paris"}),
    )
    .await;
    let id = step["result"]["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(report["steps"][0]["result"]["structuredContent"]["approve_url"].is_string());

    let python = python().unwrap();
    let (listed, _) = drive_elicit(
        &python,
        Mode::Legacy,
        &setup.config(),
        &[],
        json!([{"op": "list_tools"}]),
        None,
    )
    .await;
    let names: Vec<String> = listed["steps"][0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    let mut steps = Vec::new();
    for name in &names {
        for arguments in [
            json!({"approval_id": id, "city": "Paris"}),
            json!({"approval_id": id, "tool": "weather_v2", "arguments": {"city": "Paris"}}),
            json!({"id": id, "approve": true, "decision": "approve"}),
        ] {
            steps.push(json!({"op": "call_tool", "name": name, "arguments": arguments}));
        }
    }
    let count = steps.len();
    let (report, _) = drive_elicit(
        &python,
        Mode::Stateless,
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", &peers.str("/buyer_key"))],
        Value::Array(steps),
        Some("accept"),
    )
    .await;
    assert_eq!(report["steps"].as_array().map(Vec::len), Some(count));
    assert_eq!(setup.state(&id), ApprovalState::Pending, "{report}");
    let still = cli(&setup, &["approvals"]).1;
    assert!(still.contains(&id), "{still}");
}

/// The out-of-band flow completed by a person on the local approval page, in headless
/// Chromium, while the MCP session (and so the page) stays up.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_page_in_headless_chromium_completes_the_call() {
    let Some(script) = browser() else { return };
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "0.0005 USD", "");
    let payee = peers.str("/v2/payee");
    let work = tempfile::tempdir().unwrap();
    let (first, go) = (work.path().join("first.json"), work.path().join("go"));
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    let steps = json!([
        {"op": "call_tool", "name": "weather_v2", "arguments": {"city": "Paris"}, "report_to": p(&first)},
        {"op": "wait_file", "path": p(&go), "timeout_s": 90},
        {"op": "call_tool", "name": "weather_v2", "arguments": {"city": "Paris"}, "approval_id_from": p(&first)}
    ]);
    let python = python().unwrap();
    let config = setup.config();
    let key = peers.str("/buyer_key");
    let session = tokio::spawn(async move {
        drive_elicit(
            &python,
            Mode::Legacy,
            &config,
            &[("TOLLGATE_EVM_KEY", &key)],
            steps,
            None,
        )
        .await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !first.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first call never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    let s = &report["result"]["structuredContent"];
    let url = s["approve_url"]
        .as_str()
        .expect("an approval page URL")
        .to_owned();
    let id = s["approval_id"].as_str().unwrap().to_owned();
    assert!(url.ends_with(&format!("/approvals/{id}")), "{url}");

    // A forged POST (no CSRF token, foreign Origin) changes nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let forged = http
        .post(&url)
        .header("Origin", "http://evil.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("decision=approve&csrf=AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(setup.state(&id), ApprovalState::Pending);

    let seen = click_on_page(&script, &url, "approve").await;
    let before = seen["before"].as_str().unwrap_or_default();
    assert_eq!(seen["status"], 200, "{seen}");
    for fact in [
        "weather_v2",
        "0.001 USD",
        "0.001 USDC",
        "x402",
        "eip155:31337",
        "0.999 USD",
        "pending",
    ] {
        assert!(before.contains(fact), "the page shows {fact}: {before}");
    }
    assert!(
        before.to_lowercase().contains(&payee.to_lowercase()),
        "{before}"
    );
    assert!(
        seen["after"]
            .as_str()
            .unwrap_or_default()
            .contains("You approved"),
        "{seen}"
    );
    assert_eq!(setup.state(&id), ApprovalState::Approved);
    assert_eq!(
        signed(&peers).await,
        0,
        "nothing is signed on approval alone"
    );

    std::fs::write(&go, "").unwrap();
    let (report, logs) = session.await.unwrap();
    assert!(
        logs.contains("approval page on http://127.0.0.1:"),
        "{logs}"
    );
    let paid = &report["steps"][2]["result"];
    assert_paid_by_person(paid, "page", &payee);
    assert_eq!(signed(&peers).await, 1);
    assert_eq!(setup.state(&id), ApprovalState::Used);
}

/// Below the threshold nothing asks anyone, and the receipt says so; a tool marked
/// `approval = "always"` asks even below it.
#[tokio::test(flavor = "multi_thread")]
async fn below_the_threshold_the_policy_approves_and_the_receipt_says_so() {
    let Some(peers) = peers().await else { return };
    let setup = Setup::new(&peers, "0.01 USD", "");
    let (step, report) = call(
        &setup,
        &peers,
        Mode::Stateless,
        Some("accept"),
        "weather_v2",
        json!({"city": "Paris"}),
    )
    .await;
    assert_eq!(report["elicitations"], json!([]), "nobody was asked");
    let receipt = &step["result"]["structuredContent"]["payment"];
    assert_eq!(receipt["approval"]["approved_by"], "policy", "{step}");
    assert_eq!(receipt["approval"]["channel"], "policy");
    let (ok, out) = cli(&setup, &["receipts", "--format", "json"]);
    assert!(
        ok && out.contains("\"approved_by\": \"policy\""),
        "recorded with the receipt: {out}"
    );

    let (step, report) = call(
        &setup,
        &peers,
        Mode::Stateless,
        Some("accept"),
        "weather_sensitive",
        json!({"city": "Paris"}),
    )
    .await;
    assert_eq!(report["elicitations"].as_array().map(Vec::len), Some(1));
    assert!(
        report["elicitations"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("approval = \"always\""),
        "{report}"
    );
    assert_eq!(
        step["result"]["structuredContent"]["payment"]["approval"]["approved_by"],
        "person"
    );
    assert_eq!(signed(&peers).await, 2);
}

/// If the fresh 402 after an approval asks for more than was approved, a person is asked
/// again and nothing is paid (a seller the test controls raises its price).
#[tokio::test(flavor = "multi_thread")]
async fn a_higher_price_after_approval_asks_again_and_pays_nothing() {
    use support::seller::{BUYER_KEY, payment_required, requirements, signature_of};
    use support::upstream::{Reply, TestUpstream};
    let Some(python) = python() else { return };
    let price = Arc::new(AtomicUsize::new(1000));
    let signatures = Arc::new(AtomicUsize::new(0));
    let (p, s) = (price.clone(), signatures.clone());
    let up = TestUpstream::start(move |seen| {
        if signature_of(seen).is_some() {
            s.fetch_add(1, Ordering::SeqCst);
            return Reply::json(500, json!({"unexpected": "signature"}));
        }
        let amount = p.load(Ordering::SeqCst).to_string();
        payment_required(json!([requirements(&amount)]), "payment required")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tools")).unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/test.toml"),
        "[caps]\napprove_above = \"0.0005 USD\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tools/t.toml"),
        format!("[[tool]]\nname = \"paid\"\ndescription = \"d\"\nurl = \"{}/paid\"\nmax_price = \"0.05 USD\"\n", up.base()),
    )
    .unwrap();
    let config = dir.path().join("tollgate.toml");
    let run = |arguments: Value| {
        let (python, config) = (python.clone(), config.clone());
        async move {
            let steps = json!([{"op": "call_tool", "name": "paid", "arguments": arguments}]);
            drive_elicit(
                &python,
                Mode::Legacy,
                &config,
                &[("TOLLGATE_EVM_KEY", BUYER_KEY)],
                steps,
                None,
            )
            .await
            .0["steps"][0]["result"]
                .clone()
        }
    };
    let first = run(json!({})).await;
    let id = first["structuredContent"]["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let setup_cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .status()
            .unwrap()
            .success()
    };
    assert!(setup_cli(&["approve", &id]));
    price.store(2000, Ordering::SeqCst);
    let again = run(json!({"approval_id": id})).await;
    let s = &again["structuredContent"];
    assert_eq!(s["status"], "approval_required", "{again}");
    assert_ne!(s["approval_id"], json!(id), "a new approval is asked for");
    assert_eq!(s["amount"], "0.002 USD");
    assert!(text(&again).contains("covers at most 0.001 USD"), "{again}");
    assert_eq!(signatures.load(Ordering::SeqCst), 0, "nothing signed");
    let ledger = Ledger::open(&dir.path().join("state")).unwrap();
    let old = ledger
        .approval(&id, tollgate::money::now_unix())
        .unwrap()
        .unwrap();
    assert_eq!(
        old.state,
        ApprovalState::Approved,
        "the old approval was not used"
    );
}
