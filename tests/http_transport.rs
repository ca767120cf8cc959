//! `tollgate serve --http`: MCP over streamable HTTP for remote agents, each identified by the
//! bearer credential its requests carry. Real clients drive the real binary: the Python SDK
//! (mcp 2.3.0) on both revisions, raw HTTP for what a client must not be able to do, and the
//! real x402 v2 seller (`@x402/express` on anvil) for paid calls, judged by the chain.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::http_server::{HttpServer, initialize, message, open_session, post};
use support::mcp::{Mode, drive_url, python};
use support::upstream::{Reply, TestUpstream};

const PRICE: u128 = 1_000; // atomic USDC per paid call of the v2 seller (0.001 USD)

/// A scratch config directory with a root key (`tollgate init`).
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new(config: &str, tools: &str, policy: Option<&str>) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        let mut head = "tools_dir = \"tools\"\nstate_dir = \"state\"\n".to_owned();
        if let Some(policy) = policy {
            std::fs::write(p.join("policies/test.toml"), policy).unwrap();
            head.push_str("policy = \"test\"\n");
        }
        std::fs::write(p.join("tollgate.toml"), format!("{head}{config}")).unwrap();
        std::fs::write(p.join("tools/test.toml"), tools).unwrap();
        let site = Site { dir };
        site.cli(&["init"]);
        site
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tollgate.toml")
    }

    /// Runs a `tollgate` command on this config; its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("--config")
            .arg(self.config())
            .output()
            .unwrap();
        assert!(out.status.success(), "tollgate {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A root credential with these caveats.
    fn mint(&self, caveats: &[&str]) -> String {
        let mut args = vec!["token", "mint"];
        for caveat in caveats {
            args.extend(["--caveat", caveat]);
        }
        let out = self.cli(&args);
        out.lines().last().unwrap().trim().to_owned()
    }

    fn receipts(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.cli(&["receipts", "--format", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

async fn free_upstream() -> TestUpstream {
    TestUpstream::start(|seen| match seen.path() {
        "/notes" => Reply::json(200, json!({"note": "buy milk"})),
        "/hang" => Reply::Hang,
        _ => Reply::text(404, "text/plain", "no such path"),
    })
    .await
}

fn free_tools(base: &str) -> String {
    format!("[[tool]]\nname = \"notes\"\ndescription = \"Notes\"\nurl = \"{base}/notes\"\n")
}

fn tools_call(id: u64, name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": {}}})
}

fn structured(report: &Value, step: usize) -> &Value {
    let result = &report["steps"][step]["result"];
    assert_ne!(result["isError"], json!(true), "{report}");
    &result["structuredContent"]
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
    the_python_client_lists_and_calls_as_its_bearer_alone,
    the_client_cancels_a_call_over_http,
    a_person_approves_a_payment_over_http_by_elicitation,
);

async fn the_python_client_lists_and_calls_as_its_bearer_alone(mode: Mode) {
    let Some(python) = python() else { return };
    let up = free_upstream().await;
    let site = Site::new("", &free_tools(&up.base()), None);
    let agent = site.mint(&["budget_usd_micros <= 1000000"]);
    // The process's own token must not apply to network callers.
    let process_token = site.mint(&["budget_usd_micros <= 2000000"]);
    let server = HttpServer::start(&site.config(), &[("TOLLGATE_TOKEN", &process_token)]).await;
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "notes", "arguments": {}, "progress": true},
        {"op": "call_tool", "name": "budget_status", "arguments": {},
         "meta": {"tollgate/token": process_token}},
    ]);
    let report = drive_url(&python, mode, &server.url, Some(&agent), steps, None).await;
    assert_eq!(report["protocol_version"], mode.revision(), "{report}");
    let names: Vec<&str> = report["steps"][0]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"notes") && names.contains(&"list_receipts"),
        "{names:?}"
    );
    assert_eq!(structured(&report, 1)["result"]["note"], "buy milk");
    let progress = report["steps"][1]["progress"].as_array().unwrap();
    assert_eq!(
        progress.last().map(|p| &p["message"]),
        Some(&json!("done")),
        "progress notifications arrive over HTTP: {progress:?}"
    );
    // The bearer's budget (1 USD), not TOLLGATE_TOKEN's nor `_meta`'s (2 USD).
    let caps = &structured(&report, 2)["caps"];
    assert_eq!(caps.as_array().map(Vec::len), Some(1), "{caps}");
    assert_eq!(caps[0]["limit_usd"], "1", "{caps}");
    assert_eq!(up.seen().len(), 1, "one upstream request");
}

/// A cancelled call drops its upstream request.
async fn the_client_cancels_a_call_over_http(mode: Mode) {
    let Some(python) = python() else { return };
    let up = free_upstream().await;
    let tools = format!(
        "{}\n[[tool]]\nname = \"stuck\"\ndescription = \"Never answers\"\nurl = \"{}/hang\"\n\
         timeout_ms = 60000\n",
        free_tools(&up.base()),
        up.base()
    );
    let site = Site::new("", &tools, None);
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let server = HttpServer::start(&site.config(), &[]).await;
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "stuck", "arguments": {}, "cancel_after_ms": 1000},
        {"op": "sleep", "ms": 500},
    ]);
    let report = drive_url(&python, mode, &server.url, Some(&a), steps, None).await;
    assert_eq!(report["steps"][1]["cancelled"], json!(true), "{report}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !up.seen().iter().any(|s| s.method == "CLOSED") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream request was dropped: {:?}\n{}",
            up.seen().iter().map(|s| &s.method).collect::<Vec<_>>(),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_tampered_expired_or_revoked_bearer_gets_401_and_nothing_is_sent() {
    let up = free_upstream().await;
    let site = Site::new("", &free_tools(&up.base()), None);
    let valid = site.mint(&["budget_usd_micros <= 1000000"]);
    let revoked = site.mint(&["budget_usd_micros <= 1000000"]);
    site.cli(&["token", "revoke", &revoked]);
    let expired = site.mint(&["expires < 1000000000"]);
    let mut tampered = valid.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    // Even with a valid TOLLGATE_TOKEN in the server's environment.
    let server = HttpServer::start(&site.config(), &[("TOLLGATE_TOKEN", &valid)]).await;

    let cases: [(&str, Option<&str>); 5] = [
        ("no bearer", None),
        ("not a credential", Some("hello")),
        ("tampered", Some(&tampered)),
        ("expired", Some(&expired)),
        ("revoked", Some(&revoked)),
    ];
    for (case, bearer) in cases {
        for body in [initialize(), tools_call(2, "notes")] {
            let response = post(&server.url, bearer, None, &[], &body).await;
            assert_eq!(response.status(), 401, "{case}");
            let challenge = response.headers()["www-authenticate"].to_str().unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"tollgate\""),
                "{case}: {challenge}"
            );
            if bearer.is_some() {
                assert!(
                    challenge.contains("error=\"invalid_token\""),
                    "{case}: {challenge}"
                );
            }
            assert!(response.headers().get("mcp-session-id").is_none(), "{case}");
        }
    }
    // A valid bearer with the basic scheme spelled differently is refused too.
    let response = post(
        &server.url,
        None,
        None,
        &[("authorization", &format!("Basic {valid}"))],
        &initialize(),
    )
    .await;
    assert_eq!(response.status(), 401);
    assert!(up.seen().is_empty(), "nothing reached the upstream");
    // The valid bearer is served.
    let response = post(&server.url, Some(&valid), None, &[], &initialize()).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_answers_only_the_bearer_that_opened_it() {
    let up = free_upstream().await;
    let site = Site::new("", &free_tools(&up.base()), None);
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let b = site.mint(&["budget_usd_micros <= 1000000"]);
    let server = HttpServer::start(&site.config(), &[]).await;
    let session = open_session(&server.url, &a).await;

    let response = post(
        &server.url,
        Some(&b),
        Some(&session),
        &[],
        &tools_call(2, "notes"),
    )
    .await;
    assert_eq!(response.status(), 404, "B cannot use A's session");
    let deleted = support::http_server::client()
        .delete(&server.url)
        .header("authorization", format!("Bearer {b}"))
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 404, "B cannot end A's session");
    assert!(up.seen().is_empty(), "B's call reached nothing");

    let response = post(
        &server.url,
        Some(&a),
        Some(&session),
        &[],
        &tools_call(3, "notes"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer = message(response).await;
    assert_eq!(
        answer["result"]["structuredContent"]["result"]["note"], "buy milk",
        "{answer}"
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_origin_or_host_is_refused() {
    let up = free_upstream().await;
    let site = Site::new(
        "[http]\nallowed_origins = [\"https://app.example.com:443\"]\n",
        &free_tools(&up.base()),
        None,
    );
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let server = HttpServer::start(&site.config(), &[]).await;
    let foreign = post(
        &server.url,
        Some(&a),
        None,
        &[("origin", "https://evil.example")],
        &initialize(),
    )
    .await;
    assert_eq!(foreign.status(), 403, "a foreign Origin");
    let rebound = post(
        &server.url,
        Some(&a),
        None,
        &[("host", "evil.example")],
        &initialize(),
    )
    .await;
    assert_eq!(rebound.status(), 403, "a foreign Host (DNS rebinding)");
    let allowed = post(
        &server.url,
        Some(&a),
        None,
        &[("origin", "https://app.example.com")],
        &initialize(),
    )
    .await;
    assert_eq!(allowed.status(), 200, "the owner's origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_refused() {
    let up = free_upstream().await;
    let site = Site::new(
        "[http]\nmax_body_bytes = 4096\n",
        &free_tools(&up.base()),
        None,
    );
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let server = HttpServer::start(&site.config(), &[]).await;
    let session = open_session(&server.url, &a).await;
    let mut big = tools_call(2, "notes");
    big["params"]["arguments"] = json!({"padding": "x".repeat(8192)});
    let response = post(&server.url, Some(&a), Some(&session), &[], &big).await;
    assert_eq!(response.status(), 413);
    assert!(up.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_beyond_the_limit_are_refused() {
    let up = free_upstream().await;
    let site = Site::new("[http]\nmax_sessions = 2\n", &free_tools(&up.base()), None);
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let server = HttpServer::start(&site.config(), &[]).await;
    open_session(&server.url, &a).await;
    open_session(&server.url, &a).await;
    let third = post(&server.url, Some(&a), None, &[], &initialize()).await;
    assert_eq!(third.status(), 503);
    // An initialize whose header names the stateless revision opens no session beyond either.
    let mut modern = initialize();
    modern["params"]["protocolVersion"] = json!("2026-07-28");
    let fourth = post(
        &server.url,
        Some(&a),
        None,
        &[("mcp-protocol-version", "2026-07-28")],
        &modern,
    )
    .await;
    let status = fourth.status();
    assert!(
        fourth.headers().get("mcp-session-id").is_none(),
        "no session beyond the bound ({status})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_expires() {
    let up = free_upstream().await;
    let site = Site::new(
        "[http]\nsession_idle_secs = 1\n",
        &free_tools(&up.base()),
        None,
    );
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let server = HttpServer::start(&site.config(), &[]).await;
    let session = open_session(&server.url, &a).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = post(
        &server.url,
        Some(&a),
        Some(&session),
        &[],
        &tools_call(2, "notes"),
    )
    .await;
    assert_eq!(response.status(), 404, "the idle session is gone");
    assert!(up.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_off_loopback_is_refused_without_a_tls_proxy() {
    let site = Site::new("", &free_tools("http://127.0.0.1:9"), None);
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--http", "0.0.0.0:0", "--config"])
        .arg(site.config())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("behind_tls_proxy"), "{stderr}");
}

// ---------------------------------------------------------------- paid, against the real seller

fn seller_site(peers: &support::x402_peer::X402Peers, http: &str) -> Site {
    seller_site_asking(peers, http, "")
}

/// The seller's site with `policy_extra` in the policy's `[caps]` (`approve_above = ...`).
fn seller_site_asking(
    peers: &support::x402_peer::X402Peers,
    http: &str,
    policy_extra: &str,
) -> Site {
    let config = format!(
        "[[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
         [rpc]\n\"eip155:31337\" = \"{}\"\n[approval]\nlisten = \"off\"\n{http}",
        peers.str("/v2/usdc"),
        peers.str("/v2/rpc"),
    );
    let tools = format!(
        "[[tool]]\nname = \"weather\"\ndescription = \"Weather from the x402 v2 seller\"\n\
         url = \"{0}/weather?city=Paris\"\nmax_price = \"0.01 USD\"\n\n\
         [[tool]]\nname = \"slow\"\ndescription = \"Pays, then answers after 8 s\"\n\
         url = \"{0}/hang-after-pay\"\nmax_price = \"0.01 USD\"\ntimeout_ms = 20000\n",
        peers.seller("v2")
    );
    let policy = format!(
        "[caps]\nper_call = \"0.01 USD\"\n{policy_extra}\n[allow]\nnetworks = [\"eip155:31337\"]\nassets = [\"USDC\"]\n"
    );
    Site::new(&config, &tools, Some(&policy))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_pay_the_real_seller_over_http_and_see_only_their_own_receipts() {
    let Some(python) = python() else { return };
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let site = seller_site(&peers, "");
    let (a, b) = (
        site.mint(&["budget_usd_micros <= 1000000"]),
        site.mint(&["budget_usd_micros <= 1000000"]),
    );
    let key = peers.str("/buyer_key");
    let server = HttpServer::start(&site.config(), &[("TOLLGATE_EVM_KEY", &key)]).await;
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    let pay = json!([
        {"op": "call_tool", "name": "weather", "arguments": {}},
        {"op": "call_tool", "name": "list_receipts", "arguments": {}},
    ]);
    // A on 2025-11-25 (sessions), B on 2026-07-28 (stateless), at once.
    let (report_a, report_b) = tokio::join!(
        drive_url(
            &python,
            Mode::Legacy,
            &server.url,
            Some(&a),
            pay.clone(),
            None
        ),
        drive_url(
            &python,
            Mode::Stateless,
            &server.url,
            Some(&b),
            pay.clone(),
            None
        ),
    );
    let mut receipt_ids = Vec::new();
    for (who, report, revision) in [
        ("A", &report_a, "2025-11-25"),
        ("B", &report_b, "2026-07-28"),
    ] {
        assert_eq!(report["protocol_version"], revision, "{who}: {report}");
        let paid = structured(report, 0);
        assert_eq!(paid["result"]["report"], "sunny", "{who}: {paid}");
        let receipt = &paid["payment"];
        assert_eq!(receipt["protocol"], "x402", "{who}: {receipt}");
        assert!(
            receipt["transaction"]
                .as_str()
                .is_some_and(|t| t.starts_with("0x")),
            "{receipt}"
        );
        let listed = structured(report, 1)["receipts"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(
            listed.len(),
            1,
            "{who} sees only its own receipt: {listed:?}"
        );
        assert_eq!(listed[0]["receipt_id"], receipt["receipt_id"], "{who}");
        receipt_ids.push(receipt["receipt_id"].clone());
    }
    assert_ne!(receipt_ids[0], receipt_ids[1]);
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + 2 * PRICE,
        "the chain moved 2 × the price"
    );
    assert_eq!(site.receipts().len(), 2, "two receipts in the ledger");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_paid_call_in_flight_finish_and_refuses_new_requests() {
    let Some(python) = python() else { return };
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let site = seller_site(&peers, "[http]\nshutdown_grace_secs = 30\n");
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let key = peers.str("/buyer_key");
    let mut server = HttpServer::start(
        &site.config(),
        &[
            ("TOLLGATE_EVM_KEY", &key),
            ("RUST_LOG", "debug,alloy=info,reqwest=info,hyper_util=info"),
        ],
    )
    .await;
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    let url = server.url.clone();
    let (python2, a2) = (python.clone(), a.clone());
    let call = tokio::spawn(async move {
        // Listed first: the client fetches a tool's output schema before validating its result.
        let steps = json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "slow", "arguments": {}, "timeout_s": 40},
        ]);
        drive_url(&python2, Mode::Legacy, &url, Some(&a2), steps, None).await
    });
    // Wait until the signed payment is at the seller (its answer takes 8 s more).
    wait_for(&server, "paying tool=slow", Duration::from_secs(30)).await;
    server.terminate();
    wait_for(&server, "shutting down", Duration::from_secs(5)).await;
    // The listener is closed: a new connection is refused (one already open would get 503).
    let refused = support::http_server::client()
        .post(&server.url)
        .header("authorization", format!("Bearer {a}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize().to_string())
        .send()
        .await;
    match refused {
        Err(e) => assert!(e.is_connect(), "{e}"),
        Ok(response) => assert_eq!(response.status(), 503, "no new request once shutdown began"),
    }

    let report = call.await.unwrap();
    let paid = structured(&report, 1);
    assert_eq!(paid["result"]["report"], "late", "{report}");
    assert!(paid["payment"]["receipt_id"].is_string(), "{paid}");
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("the server exits after the call")
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", server.logs());
    assert!(
        server.logs().contains("every call in flight has finished"),
        "{}",
        server.logs()
    );
    assert_eq!(peers.balance("v2", &payee).await, before + PRICE);
    assert_eq!(site.receipts().len(), 1);
}

/// Above the threshold: the host's user is asked (an SSE request on 2025-11-25, an input
/// request on 2026-07-28); accepted → paid with the person's approval on the receipt;
/// declined → refused, nothing signed.
async fn a_person_approves_a_payment_over_http_by_elicitation(mode: Mode) {
    let Some(python) = python() else { return };
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let site = seller_site_asking(&peers, "", "approve_above = \"0.0005 USD\"");
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let key = peers.str("/buyer_key");
    let server = HttpServer::start(&site.config(), &[("TOLLGATE_EVM_KEY", &key)]).await;
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let steps = json!([{"op": "call_tool", "name": "weather", "arguments": {}}]);

    let accepted = drive_url(
        &python,
        mode,
        &server.url,
        Some(&a),
        steps.clone(),
        Some("accept"),
    )
    .await;
    assert_eq!(accepted["protocol_version"], mode.revision(), "{accepted}");
    assert_eq!(
        accepted["elicitations"].as_array().map(Vec::len),
        Some(1),
        "{accepted}"
    );
    let paid = structured(&accepted, 0);
    assert_eq!(paid["result"]["report"], "sunny", "{paid}");
    assert_eq!(
        paid["payment"]["approval"]["approved_by"], "person",
        "{paid}"
    );
    assert_eq!(
        paid["payment"]["approval"]["channel"], "elicitation",
        "{paid}"
    );
    assert_eq!(peers.balance("v2", &payee).await, before + PRICE);

    let declined = drive_url(&python, mode, &server.url, Some(&a), steps, Some("decline")).await;
    let result = &declined["steps"][0]["result"];
    assert_eq!(result["isError"], json!(true), "{declined}");
    assert!(
        result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing was paid"),
        "{result}"
    );
    assert_eq!(
        peers.balance("v2", &payee).await,
        before + PRICE,
        "nothing more moved"
    );
    assert_eq!(site.receipts().len(), 1);
}

async fn wait_for(server: &HttpServer, needle: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !server.logs().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_an_anonymous_profile_the_owner_names_serves_requests_without_a_bearer() {
    let Some(python) = python() else { return };
    let up = free_upstream().await;
    let policy = "default_profile = \"desk\"\n\
                  [profiles.desk]\nbudget = \"2 USD\"\n\
                  [profiles.guest]\nbudget = \"0.5 USD\"\n";
    // The policy's default profile is for stdio: without a bearer, 401.
    let site = Site::new("", &free_tools(&up.base()), Some(policy));
    let server = HttpServer::start(&site.config(), &[]).await;
    let response = post(&server.url, None, None, &[], &initialize()).await;
    assert_eq!(
        response.status(),
        401,
        "default_profile does not apply to network callers"
    );
    drop(server);

    let site = Site::new(
        "[http]\nanonymous_profile = \"guest\"\n",
        &free_tools(&up.base()),
        Some(policy),
    );
    let server = HttpServer::start(&site.config(), &[]).await;
    let steps = json!([{"op": "call_tool", "name": "budget_status", "arguments": {}}]);
    let report = drive_url(&python, Mode::Legacy, &server.url, None, steps, None).await;
    let caps = &structured(&report, 0)["caps"];
    assert_eq!(
        caps[0]["limit_usd"], "0.5",
        "served as the guest profile: {caps}"
    );
}

/// A call that meets its 402 after shutdown began signs nothing: the rails are closed.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_signed_after_shutdown_began() {
    use support::seller::{BUYER_KEY, payment_required, requirements, settled, signature_of};
    let Some(python) = python() else { return };
    // The unpaid request is answered (402) 3 s after it arrives; a paid one would settle.
    let up = TestUpstream::start(|seen| match signature_of(seen) {
        None => Reply::Delayed(
            Box::new(payment_required(json!([requirements("1000")]), "pay")),
            Duration::from_secs(3),
        ),
        Some(_) => settled(json!({"report": "paid"}), &json!("0x0")),
    })
    .await;
    let tools = format!(
        "[[tool]]\nname = \"report\"\ndescription = \"Paid report\"\nurl = \"{}/report\"\n\
         max_price = \"0.01 USD\"\n",
        up.base()
    );
    let site = Site::new("", &tools, None);
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let mut server = HttpServer::start(&site.config(), &[("TOLLGATE_EVM_KEY", BUYER_KEY)]).await;
    let url = server.url.clone();
    let call = tokio::spawn(async move {
        let steps = json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "report", "arguments": {}},
        ]);
        drive_url(&python, Mode::Legacy, &url, Some(&a), steps, None).await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while up.seen().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{}", server.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.terminate();

    let report = call.await.unwrap();
    let result = &report["steps"][1]["result"];
    assert_eq!(result["isError"], json!(true), "{report}");
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("shutting down") && text.contains("nothing was paid"),
        "{text}"
    );
    assert!(
        up.seen().iter().all(|seen| signature_of(seen).is_none()),
        "no payment was sent"
    );
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("the server exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(site.receipts().is_empty());
}

/// Over HTTP an approval belongs to the bearer it was asked for: another agent can neither
/// read its state nor pay with it.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_is_seen_and_used_only_by_the_agent_it_was_asked_for() {
    let Some(python) = python() else { return };
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let site = seller_site_asking(&peers, "", "approve_above = \"0.0005 USD\"");
    let (a, b) = (
        site.mint(&["budget_usd_micros <= 1000000"]),
        site.mint(&["budget_usd_micros <= 1000000"]),
    );
    let key = peers.str("/buyer_key");
    let server = HttpServer::start(&site.config(), &[("TOLLGATE_EVM_KEY", &key)]).await;
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;
    let call = |approval: Option<&str>| {
        let mut arguments = json!({});
        if let Some(id) = approval {
            arguments["approval_id"] = json!(id);
        }
        json!([{"op": "call_tool", "name": "weather", "arguments": arguments}])
    };

    // A is asked to get a person's approval (no elicitation declared).
    let asked = drive_url(
        &python,
        Mode::Legacy,
        &server.url,
        Some(&a),
        call(None),
        None,
    )
    .await;
    let id = structured(&asked, 0)["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{asked}"))
        .to_owned();
    site.cli(&["approve", &id]);

    // B: the approval is unknown to it, and using it pays nothing (a new one is asked).
    let steps = json!([
        {"op": "call_tool", "name": "payment_status", "arguments": {"approval_id": id}},
        {"op": "call_tool", "name": "weather", "arguments": {"approval_id": id}},
    ]);
    let foreign = drive_url(&python, Mode::Legacy, &server.url, Some(&b), steps, None).await;
    let status = &foreign["steps"][0]["result"];
    assert_eq!(status["isError"], json!(true), "{foreign}");
    assert!(
        status["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("there is no approval"),
        "{status}"
    );
    let retried = structured(&foreign, 1);
    assert_eq!(retried["status"], "approval_required", "{retried}");
    assert_ne!(retried["approval_id"], json!(id), "B gets its own question");
    assert_eq!(peers.balance("v2", &payee).await, before, "B paid nothing");

    // A pays with it.
    let paid = drive_url(
        &python,
        Mode::Legacy,
        &server.url,
        Some(&a),
        call(Some(&id)),
        None,
    )
    .await;
    let receipt = &structured(&paid, 0)["payment"];
    assert_eq!(receipt["approval"]["approved_by"], "person", "{paid}");
    assert_eq!(peers.balance("v2", &payee).await, before + PRICE);
}

/// With `[http] tls_cert` and `tls_key` the listener speaks TLS (and may leave loopback).
#[tokio::test(flavor = "multi_thread")]
async fn tls_on_the_listener_serves_https_only() {
    let Some(openssl) =
        support::mcp::require_peer("openssl", std::path::Path::new("/usr/bin/openssl"))
    else {
        return;
    };
    let up = free_upstream().await;
    let site = Site::new(
        "[http]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
        &free_tools(&up.base()),
        None,
    );
    let dir = site.dir.path();
    // A CA, and a certificate for 127.0.0.1 signed by it (the client trusts the CA only).
    let script = "set -e\n\
        O=\"$1\"\n\
        $O req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
          -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null\n\
        $O req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
          -keyout key.pem -out leaf.csr 2>/dev/null\n\
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext\n\
        $O x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
          -extfile ext -out cert.pem 2>/dev/null\n";
    let made = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&openssl)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let a = site.mint(&["budget_usd_micros <= 1000000"]);
    let server = HttpServer::start(&site.config(), &[]).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = std::fs::read(dir.join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .build()
        .unwrap();
    let send = |bearer: Option<&str>| {
        let mut request = client
            .post(&server.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize().to_string());
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        request.send()
    };
    let served = send(Some(&a)).await.unwrap();
    assert_eq!(served.status(), 200);
    assert!(served.headers().get("mcp-session-id").is_some());
    assert_eq!(send(None).await.unwrap().status(), 401);
    // Plain HTTP to the TLS listener gets no MCP answer.
    let plain_url = server.url.replacen("https://", "http://", 1);
    let plain = support::http_server::client()
        .post(&plain_url)
        .header("authorization", format!("Bearer {a}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize().to_string())
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}

/// The approval page is the person's: an agent's bearer opens nothing on it (a decision needs
/// the form token of the page a person loaded), and the MCP endpoint does not serve it. The
/// payment stays unapproved and nothing moves.
#[tokio::test(flavor = "multi_thread")]
async fn the_approval_page_refuses_an_agents_bearer() {
    let Some(python) = python() else { return };
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let config = format!(
        "[[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\ndecimals = 6\n\
         [rpc]\n\"eip155:31337\" = \"{}\"\n[approval]\nlisten = \"127.0.0.1:0\"\n",
        peers.str("/v2/usdc"),
        peers.str("/v2/rpc"),
    );
    let tools = format!(
        "[[tool]]\nname = \"weather\"\ndescription = \"Weather from the x402 v2 seller\"\n\
         url = \"{}/weather?city=Paris\"\nmax_price = \"0.01 USD\"\n",
        peers.seller("v2")
    );
    let policy = "[caps]\nper_call = \"0.01 USD\"\napprove_above = \"0.0005 USD\"\n\
                  [allow]\nnetworks = [\"eip155:31337\"]\nassets = [\"USDC\"]\n";
    let site = Site::new(&config, &tools, Some(policy));
    let agent = site.mint(&["budget_usd_micros <= 1000000"]);
    let key = peers.str("/buyer_key");
    let server = HttpServer::start(&site.config(), &[("TOLLGATE_EVM_KEY", &key)]).await;
    let payee = peers.str("/v2/payee");
    let before = peers.balance("v2", &payee).await;

    let asked = drive_url(
        &python,
        Mode::Legacy,
        &server.url,
        Some(&agent),
        json!([{"op": "call_tool", "name": "weather", "arguments": {}}]),
        None,
    )
    .await;
    let required = structured(&asked, 0);
    let id = required["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{asked}"))
        .to_owned();
    let page = required["approve_url"]
        .as_str()
        .unwrap_or_else(|| panic!("the page is on: {asked}"))
        .to_owned();
    let origin = page
        .split("/approvals/")
        .next()
        .unwrap_or_default()
        .to_owned();
    let http = support::http_server::client();

    // The agent's bearer, the page's own Origin, no form token: refused.
    let decided = http
        .post(&page)
        .header("authorization", format!("Bearer {agent}"))
        .header("origin", &origin)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("decision=approve")
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status(), 403, "{:?}", decided.text().await);

    // The MCP endpoint serves no approval page, whatever the bearer.
    let on_mcp = server.url.replace("/mcp", &format!("/approvals/{id}"));
    let elsewhere = http
        .post(&on_mcp)
        .header("authorization", format!("Bearer {agent}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("decision=approve")
        .send()
        .await
        .unwrap();
    assert!(
        elsewhere.status().is_client_error(),
        "{}",
        elsewhere.status()
    );

    // Still undecided: using it pays nothing.
    let retried = drive_url(
        &python,
        Mode::Legacy,
        &server.url,
        Some(&agent),
        json!([{"op": "call_tool", "name": "weather", "arguments": {"approval_id": id}}]),
        None,
    )
    .await;
    let still = structured(&retried, 0);
    assert_eq!(still["status"], "approval_required", "{retried}");
    assert_eq!(peers.balance("v2", &payee).await, before, "nothing moved");
}
