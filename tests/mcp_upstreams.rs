//! Paid MCP servers behind tollgate (`[[mcp_upstream]]`), against real sellers from the
//! registries: the x402 Python SDK's MCP server wrapper (PyPI `x402[mcp]`) selling `weather`
//! for USDC on the x402 peers' anvil, and mppx's MCP server transport (npm `mppx`) selling it
//! for pathUSD on the MPP peers' Tempo-mode anvil; each over stdio (tollgate starts it) and
//! over streamable HTTP. The real Python MCP client calls the prefixed tools through tollgate
//! on both MCP revisions. The chain is the judge: every paid call moves its price exactly once,
//! every refusal moves nothing, and every payment has one receipt naming the server and tool.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::mcp::{Mode, drive, drive_elicit, python};
use support::mcp_sellers::{
    HttpSeller, MPP_AMOUNT, X402_PRICE, events, http_upstream, mpp_seller_command, stdio_upstream,
    x402_python, x402_seller_command,
};
use support::mpp_peer::MppPeers;
use support::stdio::Session;
use support::x402_peer::X402Peers;

/// A scratch config: `head` (assets, wallet, rpc) in `tollgate.toml`, `policy` as the policy
/// file, and `tools` in `tools/sellers.toml`; the sellers' logs beside them.
struct Setup {
    dir: tempfile::TempDir,
}

/// Who sells in a test: one seller of the chain's MCP SDK over stdio, named `name` (its tools are
/// `<name>_…`), paying [`PAYEE_STDIO`], hostile tools included or not, with `extra` TOML lines
/// in its `[[mcp_upstream]]` table.
struct Stdio<'a> {
    name: &'a str,
    hostile: bool,
    extra: &'a str,
}

impl Setup {
    fn new(head: &str, policy: &str, tools: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("tools")).unwrap();
        std::fs::create_dir_all(p.join("policies")).unwrap();
        std::fs::write(
            p.join("tollgate.toml"),
            format!("tools_dir = \"tools\"\npolicy = \"test\"\n{head}"),
        )
        .unwrap();
        std::fs::write(p.join("policies/test.toml"), policy).unwrap();
        std::fs::write(p.join("tools/sellers.toml"), tools).unwrap();
        Setup { dir }
    }

    /// The x402 peers' chain (USDC on eip155:31337).
    fn x402(peers: &X402Peers, caps: &str, tools: &str) -> Setup {
        Setup::new(
            &format!(
                "[[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\nsymbol = \"USDC\"\n\
                 decimals = 6\n[rpc]\n\"eip155:31337\" = \"{}\"\n",
                peers.str("/v2/usdc"),
                peers.str("/v2/rpc"),
            ),
            &format!("{caps}\n[allow]\nnetworks = [\"eip155:31337\"]\nassets = [\"USDC\"]\n"),
            tools,
        )
    }

    /// The MPP peers' Tempo-mode chain (pathUSD on tempo:31337).
    fn mpp(peers: &MppPeers, tools: &str) -> Setup {
        let (rpc, path_usd) = (peers.str("/rpc"), peers.str("/tokens/pathUSD"));
        Setup::new(
            &format!(
                "[[assets]]\nnetwork = \"tempo:31337\"\naddress = \"{path_usd}\"\n\
                 symbol = \"pathUSD\"\ndecimals = 6\n[wallet.tempo]\nrpc_url = \"{rpc}\"\n\
                 chain_id = 31337\n[rpc]\n\"tempo:31337\" = \"{rpc}\"\n"
            ),
            "[caps]\nper_call = \"0.50 USD\"\n[allow]\nnetworks = [\"tempo:31337\"]\n\
             assets = [\"pathUSD\"]\n",
            tools,
        )
    }

    /// The x402 peers' chain with one stdio seller (the x402 Python SDK's MCP server), and
    /// that seller's log.
    fn x402_seller(peers: &X402Peers, caps: &str, seller: Stdio<'_>) -> (Setup, PathBuf) {
        let setup = Setup::x402(peers, caps, "");
        let log = setup.log(seller.name);
        setup.tools(&stdio_upstream(
            seller.name,
            &x402_command(peers, PAYEE_STDIO, seller.hostile, &log),
            seller.extra,
        ));
        (setup, log)
    }

    /// The MPP peers' chain with one stdio seller (mppx's MCP server), and that seller's log.
    fn mpp_seller(peers: &MppPeers, seller: Stdio<'_>) -> (Setup, PathBuf) {
        let setup = Setup::mpp(peers, "");
        let log = setup.log(seller.name);
        setup.tools(&stdio_upstream(
            seller.name,
            &mpp_seller_command(&peers.str("/rpc"), PAYEE_STDIO, seller.hostile, &log),
            seller.extra,
        ));
        (setup, log)
    }

    /// Replaces the tool definitions.
    fn tools(&self, tools: &str) {
        std::fs::write(self.dir.path().join("tools/sellers.toml"), tools).unwrap();
    }

    /// Where the seller `name` logs its events.
    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.jsonl"))
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("tollgate.toml")
    }

    fn tollgate(&self, args: &[&str]) -> String {
        support::cli::tollgate(self.dir.path(), args)
    }

    /// `tollgate receipts --format json`.
    fn receipts(&self) -> Vec<Value> {
        let out = self.tollgate(&["receipts", "--format", "json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn call(name: &str, arguments: Value) -> Value {
    json!({"op": "call_tool", "name": name, "arguments": arguments, "timeout_s": 90})
}

/// The results of the driver's `call_tool` steps, in order.
fn results(report: &Value) -> Vec<Value> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s.get("result").is_some() || s.get("error").is_some())
        .filter(|s| s.get("tools").is_none())
        .map(|s| {
            assert!(s["result"].is_object(), "the call has no result: {s}");
            s["result"].clone()
        })
        .collect()
}

fn text(result: &Value) -> String {
    result["content"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Asserts a paid call's answer: the server's own result, tollgate's receipt naming the
/// upstream and tool, and the rail's settlement metadata under `rail_key`.
fn assert_paid(result: &Value, server: &str, tool: &str, rail_key: &str) -> Value {
    assert_ne!(result["isError"], json!(true), "a paid result: {result:#}");
    let receipt = result["_meta"]["tollgate/receipt"].clone();
    assert_eq!(receipt["mcp_server"], server, "{result:#}");
    assert_eq!(receipt["mcp_tool"], tool, "{result:#}");
    assert!(
        result["_meta"][rail_key].is_object(),
        "the rail's own settlement metadata `{rail_key}`: {result:#}"
    );
    assert!(
        text(result).contains("[payment receipt]"),
        "the model reads the receipt: {result:#}"
    );
    receipt
}

fn ledger_pairs(receipts: &[Value]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = receipts
        .iter()
        .map(|r| {
            let find = |k: &str| {
                r[k].as_str()
                    .or_else(|| r["details"][k].as_str())
                    .unwrap_or_else(|| panic!("receipt without {k}: {r:#}"))
                    .to_owned()
            };
            (find("mcp_server"), find("mcp_tool"))
        })
        .collect();
    pairs.sort();
    pairs
}

/// The x402 peers, the Python MCP client and the x402 MCP seller's venv, or `None` (skipped).
async fn x402_peers() -> Option<(PathBuf, X402Peers)> {
    let python = python()?;
    x402_python()?;
    Some((python, support::x402_peer::start().await?))
}

async fn mpp_peers() -> Option<(PathBuf, MppPeers)> {
    let python = python()?;
    Some((python, support::mpp_peer::start().await?))
}

/// The policy's caps of most tests: 0.01 USD per call, no daily cap.
const PER_CALL: &str = "[caps]\nper_call = \"0.01 USD\"\n";

/// Payees of the MCP sellers: addresses that hold nothing, so their balance is what was paid.
/// Digits only, so they are valid EIP-55 checksums (web3.py refuses a mixed-case address
/// whose checksum is wrong).
const PAYEE_STDIO: &str = "0x0000000000000000000000000000000000094011";
const PAYEE_HTTP: &str = "0x0000000000000000000000000000000000094012";

fn x402_command(peers: &X402Peers, pay_to: &str, hostile: bool, log: &Path) -> Vec<String> {
    x402_seller_command(
        &peers.str("/v2/rpc"),
        &peers.str("/v2/usdc"),
        pay_to,
        hostile,
        log,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn x402_mcp_seller_over_stdio_and_http_is_paid_once_per_call_on_both_revisions() {
    let Some((python, peers)) = x402_peers().await else {
        return;
    };
    let setup = Setup::x402(&peers, PER_CALL, "");
    let (stdio_log, http_log) = (setup.log("pyx"), setup.log("pyxh"));
    let http = HttpSeller::start(&x402_command(&peers, PAYEE_HTTP, false, &http_log));
    setup.tools(
        &[
            stdio_upstream(
                "pyx",
                &x402_command(&peers, PAYEE_STDIO, false, &stdio_log),
                "max_price = \"0.01 USD\"",
            ),
            http_upstream("pyxh", &http.url, "max_price = \"0.01 USD\""),
        ]
        .concat(),
    );

    for mode in [Mode::Legacy, Mode::Stateless] {
        let steps = json!([
            {"op": "list_tools"},
            call("pyx_weather", json!({"city": "Paris"})),
            call("pyxh_weather", json!({"city": "Lyon"})),
            call("pyx_free_echo", json!({"text": "free"})),
            call(
                "price_check",
                json!({"tool": "pyx_weather", "arguments": {"city": "Nice"}})
            ),
        ]);
        let key = peers.str("/buyer_key");
        let (report, logs) = support::mcp::drive_with_logs(
            &python,
            mode,
            &setup.config(),
            &[("TOLLGATE_EVM_KEY", &key)],
            steps,
        )
        .await;
        let tools = report["steps"][0]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("tools/list ({mode:?}): {:#}\n{logs}", report["steps"][0]));
        for name in ["pyx_weather", "pyxh_weather", "pyx_free_echo"] {
            let tool = tools
                .iter()
                .find(|t| t["name"] == name)
                .unwrap_or_else(|| panic!("{name} is listed ({mode:?}): {tools:#?}"));
            assert!(tool["inputSchema"]["properties"].is_object(), "{tool:#}");
        }
        let weather = tools.iter().find(|t| t["name"] == "pyx_weather").unwrap();
        assert!(
            weather["description"]
                .as_str()
                .unwrap()
                .contains("Paid: at most"),
            "{weather:#}"
        );
        let results = results(&report);
        assert_eq!(results.len(), 4, "{report:#}");
        let receipt = assert_paid(&results[0], "pyx", "weather", "x402/payment-response");
        assert_eq!(results[0]["structuredContent"]["city"], "Paris");
        assert_eq!(
            receipt["amount_atomic"],
            X402_PRICE.to_string(),
            "{receipt:#}"
        );
        assert_eq!(
            results[0]["_meta"]["x402/payment-response"]["success"],
            true
        );
        assert_eq!(receipt["protocol"], "x402", "{receipt:#}");
        assert_paid(&results[1], "pyxh", "weather", "x402/payment-response");
        assert_eq!(results[1]["structuredContent"]["city"], "Lyon");
        // The free tool is passed through, unpaid.
        assert_ne!(results[2]["isError"], json!(true), "{:#}", results[2]);
        assert!(results[2]["_meta"]["tollgate/receipt"].is_null());
        assert!(text(&results[2]).contains("free"), "{:#}", results[2]);
        // price_check asks the server for its price, and pays nothing (the chain says so
        // below: two payments per transport, not three).
        let check = &results[3]["structuredContent"];
        assert_eq!(check["status"], "payment_required", "{check:#}");
        assert_eq!(check["would_pay"]["amount_usd"], "0.001", "{check:#}");
        assert_eq!(check["would_pay"]["protocol"], "x402", "{check:#}");
    }

    // Two calls on each transport (one per revision): each moved the price once, on chain.
    assert_eq!(peers.balance("v2", PAYEE_STDIO).await, 2 * X402_PRICE);
    assert_eq!(peers.balance("v2", PAYEE_HTTP).await, 2 * X402_PRICE);
    assert_eq!(events(&stdio_log, "settle", "weather").len(), 2);
    assert_eq!(events(&http_log, "settle", "weather").len(), 2);
    let receipts = setup.receipts();
    assert_eq!(
        ledger_pairs(&receipts),
        [
            ("pyx".into(), "weather".into()),
            ("pyx".into(), "weather".into()),
            ("pyxh".into(), "weather".into()),
            ("pyxh".into(), "weather".into())
        ],
        "{receipts:#?}"
    );
}

/// Calls each hostile tool once through tollgate, and returns (tool, result) pairs.
async fn hostile_calls(
    python: &Path,
    setup: &Setup,
    key: &str,
    prefix: &str,
    tools: &[&str],
) -> Vec<(String, Value)> {
    let steps: Vec<Value> = tools
        .iter()
        .map(|t| call(&format!("{prefix}{t}"), json!({"city": "Paris"})))
        .collect();
    let report = drive(
        python,
        Mode::Stateless,
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", key)],
        json!(steps),
    )
    .await;
    let results = results(&report);
    assert_eq!(results.len(), tools.len(), "{report:#}");
    tools.iter().map(|t| t.to_string()).zip(results).collect()
}

/// Asserts a refusal: an error result whose text holds every one of `words`.
fn assert_refused(tool: &str, result: &Value, words: &[&str]) {
    assert_eq!(
        result["isError"],
        json!(true),
        "{tool} is refused: {result:#}"
    );
    let said = text(result);
    for word in words {
        assert!(
            said.to_lowercase().contains(&word.to_lowercase()),
            "{tool}: the refusal says `{word}`: {said}"
        );
    }
    assert!(
        result["_meta"]["tollgate/receipt"].is_null(),
        "{tool}: no receipt: {result:#}"
    );
}

/// What the hostile seller's log and tollgate's ledger say after [`hostile_calls`]: the one
/// settlement is pay_again's (with the one receipt); price_rises got one payment at the first
/// price that was never settled; the `refused` tools never got a payment at all.
fn assert_only_pay_again_settled(log: &Path, setup: &Setup, refused: &[&str]) {
    let paid_calls = |tool: &str| -> Vec<Value> {
        events(log, "call", tool)
            .into_iter()
            .filter(|e| e["paid"] == true)
            .collect()
    };
    assert_eq!(events(log, "settle", "pay_again").len(), 1);
    assert_eq!(events(log, "settle", "price_rises").len(), 0);
    assert_eq!(
        paid_calls("price_rises").len(),
        1,
        "one payment sent, at the first price"
    );
    for tool in refused {
        let paid = paid_calls(tool);
        assert!(paid.is_empty(), "{tool} got a payment: {paid:?}");
    }
    let receipts = setup.receipts();
    assert_eq!(
        ledger_pairs(&receipts),
        [("bad".into(), "pay_again".into())],
        "{receipts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn x402_mcp_refusals_move_nothing_and_a_second_ask_after_paying_pays_once() {
    let Some((python, peers)) = x402_peers().await else {
        return;
    };
    let (setup, log) = Setup::x402_seller(
        &peers,
        PER_CALL,
        Stdio {
            name: "bad",
            hostile: true,
            // `weather` costs 0.001: its own limit is below that.
            extra: "max_price = \"0.01 USD\"\nmax_prices = { weather = \"0.0005 USD\" }\n\
                    timeout_ms = 5000",
        },
    );
    let key = peers.str("/buyer_key");
    let calls = hostile_calls(
        &python,
        &setup,
        &key,
        "bad_",
        &[
            "weather",
            "unknown_network",
            "unknown_asset",
            "malformed",
            "elicit_url",
            "hang",
            "price_rises",
            "pay_again",
        ],
    )
    .await;
    for (tool, result) in &calls {
        eprintln!("{tool}: {}", text(result));
        match tool.as_str() {
            "weather" => assert_refused(tool, result, &["0.0005", "0.001"]),
            "unknown_network" => assert_refused(tool, result, &["eip155:999999"]),
            "unknown_asset" => {
                assert_refused(tool, result, &["not a known asset", "nothing was paid"])
            }
            "malformed" => assert_refused(tool, result, &["amount", "abc", "nothing was paid"]),
            "elicit_url" => assert_refused(tool, result, &["https://example.com/x"]),
            "hang" => assert_refused(tool, result, &["no answer", "5000 ms"]),
            "price_rises" => assert_refused(tool, result, &["again", "nothing more was signed"]),
            "pay_again" => {
                // Paid once (the seller settled), then asked again: an error that says so,
                // with the receipt of the one payment.
                assert_eq!(result["isError"], json!(true), "{result:#}");
                let said = text(result);
                assert!(
                    said.contains("the chain shows that payment settled"),
                    "{said}"
                );
            }
            _ => unreachable!(),
        }
    }
    // The chain: only pay_again's one settlement moved money.
    assert_eq!(
        peers.balance("v2", PAYEE_STDIO).await,
        X402_PRICE,
        "{calls:#?}"
    );
    assert_only_pay_again_settled(
        &log,
        &setup,
        &[
            "weather",
            "unknown_network",
            "unknown_asset",
            "malformed",
            "elicit_url",
            "hang",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mpp_mcp_seller_over_stdio_and_http_is_paid_once_per_call_on_both_revisions() {
    let Some((python, peers)) = mpp_peers().await else {
        return;
    };
    let setup = Setup::mpp(&peers, "");
    let (stdio_log, http_log) = (setup.log("mppx"), setup.log("mppxh"));
    let rpc = peers.str("/rpc");
    let http = HttpSeller::start(&mpp_seller_command(&rpc, PAYEE_HTTP, false, &http_log));
    setup.tools(
        &[
            stdio_upstream(
                "mppx",
                &mpp_seller_command(&rpc, PAYEE_STDIO, false, &stdio_log),
                "max_price = \"0.05 USD\"",
            ),
            http_upstream("mppxh", &http.url, "max_price = \"0.05 USD\""),
        ]
        .concat(),
    );
    let (key, _payer) = peers.buyer(0);
    for mode in [Mode::Legacy, Mode::Stateless] {
        let steps = json!([
            call("mppx_weather", json!({"city": "Paris"})),
            call("mppxh_weather", json!({"city": "Lyon"})),
        ]);
        let report = drive(
            &python,
            mode,
            &setup.config(),
            &[("TOLLGATE_EVM_KEY", &key)],
            steps,
        )
        .await;
        let results = results(&report);
        assert_eq!(results.len(), 2, "{report:#}");
        let receipt = assert_paid(&results[0], "mppx", "weather", "org.paymentauth/receipt");
        assert_eq!(receipt["protocol"], "mpp", "{receipt:#}");
        assert_eq!(
            receipt["amount_atomic"],
            MPP_AMOUNT.to_string(),
            "{receipt:#}"
        );
        assert_eq!(
            results[0]["_meta"]["org.paymentauth/receipt"]["status"], "success",
            "{:#}",
            results[0]
        );
        assert_paid(&results[1], "mppxh", "weather", "org.paymentauth/receipt");
    }
    assert_eq!(peers.path_usd(PAYEE_STDIO).await, 2 * MPP_AMOUNT);
    assert_eq!(peers.path_usd(PAYEE_HTTP).await, 2 * MPP_AMOUNT);
    assert_eq!(events(&stdio_log, "settle", "weather").len(), 2);
    assert_eq!(events(&http_log, "settle", "weather").len(), 2);
    let receipts = setup.receipts();
    assert_eq!(
        ledger_pairs(&receipts),
        [
            ("mppx".into(), "weather".into()),
            ("mppx".into(), "weather".into()),
            ("mppxh".into(), "weather".into()),
            ("mppxh".into(), "weather".into())
        ],
        "{receipts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mpp_mcp_refusals_move_nothing_and_a_second_ask_after_paying_pays_once() {
    let Some((python, peers)) = mpp_peers().await else {
        return;
    };
    let (setup, log) = Setup::mpp_seller(
        &peers,
        Stdio {
            name: "bad",
            hostile: true,
            // `weather` costs 0.01: its own limit is below that.
            extra: "max_price = \"0.05 USD\"\nmax_prices = { weather = \"0.005 USD\" }\n\
                    timeout_ms = 5000",
        },
    );
    let (key, _payer) = peers.buyer(1);
    let calls = hostile_calls(
        &python,
        &setup,
        &key,
        "bad_",
        &[
            "weather",
            "malformed",
            "elicit_url",
            "hang",
            "price_rises",
            "pay_again",
        ],
    )
    .await;
    for (tool, result) in &calls {
        eprintln!("{tool}: {}", text(result));
        match tool.as_str() {
            "weather" => assert_refused(tool, result, &["0.005", "0.01"]),
            "malformed" => assert_refused(tool, result, &["challenge", "nothing was paid"]),
            "elicit_url" => assert_refused(tool, result, &["https://"]),
            "hang" => assert_refused(tool, result, &["no answer", "5000 ms"]),
            "price_rises" => assert_refused(tool, result, &["again", "nothing more was signed"]),
            "pay_again" => {
                assert_eq!(result["isError"], json!(true), "{result:#}");
                let said = text(result);
                assert!(
                    said.contains("the chain shows that payment settled"),
                    "{said}"
                );
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(peers.path_usd(PAYEE_STDIO).await, MPP_AMOUNT, "{calls:#?}");
    assert_only_pay_again_settled(
        &log,
        &setup,
        &["weather", "malformed", "elicit_url", "hang"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_credential_budget_is_spent_across_an_http_tool_and_an_mcp_tool() {
    let Some((python, peers)) = x402_peers().await else {
        return;
    };
    let setup = Setup::x402(&peers, PER_CALL, "");
    let log = setup.log("pyx");
    setup.tools(
        &[
            format!(
                "[[tool]]\nname = \"http_weather\"\ndescription = \"Weather over HTTP (x402)\"\n\
                 url = \"{}/weather?city=Paris\"\nmax_price = \"0.01 USD\"\n\n",
                peers.seller("v2")
            ),
            stdio_upstream(
                "pyx",
                &x402_command(&peers, PAYEE_STDIO, false, &log),
                "max_price = \"0.01 USD\"",
            ),
        ]
        .concat(),
    );
    setup.tollgate(&["init"]);
    // 0.0025 USD: two calls of 0.001, not three.
    let token = setup.tollgate(&["token", "mint", "--caveat", "budget_usd_micros <= 2500"]);
    let http_payee = peers.str("/v2/payee");
    let http_before = peers.balance("v2", &http_payee).await;
    let key = peers.str("/buyer_key");
    let report = drive(
        &python,
        Mode::Stateless,
        &setup.config(),
        &[("TOLLGATE_EVM_KEY", &key), ("TOLLGATE_TOKEN", &token)],
        json!([
            call("http_weather", json!({})),
            call("pyx_weather", json!({"city": "Paris"})),
            call("pyx_weather", json!({"city": "Paris"})),
            call("http_weather", json!({})),
        ]),
    )
    .await;
    let results = results(&report);
    assert_eq!(results.len(), 4, "{report:#}");
    assert_ne!(results[0]["isError"], json!(true), "{:#}", results[0]);
    assert_paid(&results[1], "pyx", "weather", "x402/payment-response");
    for refused in &results[2..] {
        assert_refused("the third and fourth calls", refused, &["budget"]);
    }
    assert_eq!(
        peers.balance("v2", &http_payee).await,
        http_before + X402_PRICE
    );
    assert_eq!(peers.balance("v2", PAYEE_STDIO).await, X402_PRICE);
    assert_eq!(setup.receipts().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mcp_tool_that_needs_approval_is_paid_only_when_the_person_accepts() {
    let Some((python, peers)) = x402_peers().await else {
        return;
    };
    let (setup, _log) = Setup::x402_seller(
        &peers,
        PER_CALL,
        Stdio {
            name: "pyx",
            hostile: false,
            extra: "max_price = \"0.01 USD\"\napproval = \"always\"",
        },
    );
    let key = peers.str("/buyer_key");
    let mut paid = 0;
    for (decision, pays) in [("decline", false), ("accept", true)] {
        let (report, _) = drive_elicit(
            &python,
            Mode::Legacy,
            &setup.config(),
            &[("TOLLGATE_EVM_KEY", &key)],
            json!([call("pyx_weather", json!({"city": "Paris"}))]),
            Some(decision),
        )
        .await;
        let result = &results(&report)[0];
        if pays {
            paid += 1;
            assert_paid(result, "pyx", "weather", "x402/payment-response");
        } else {
            assert_eq!(result["isError"], json!(true), "{result:#}");
            assert!(result["_meta"]["tollgate/receipt"].is_null());
        }
        assert_eq!(peers.balance("v2", PAYEE_STDIO).await, paid * X402_PRICE);
    }
    assert_eq!(setup.receipts().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_parallel_calls_of_an_mcp_tool_each_pay_once() {
    let Some((_python, peers)) = x402_peers().await else {
        return;
    };
    let (setup, _log) = Setup::x402_seller(
        &peers,
        PER_CALL,
        Stdio {
            name: "pyx",
            hostile: false,
            extra: "max_price = \"0.01 USD\"",
        },
    );
    const CALLS: usize = 6;
    let (config, key) = (setup.config(), peers.str("/buyer_key"));
    let results = tokio::task::spawn_blocking(move || {
        let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &key)]);
        for i in 0..CALLS {
            session.call_tool(i as u64 + 1, "pyx_weather", json!({"city": "Paris"}));
        }
        let results: Vec<Value> = (0..CALLS)
            .map(|_| session.next_response().expect("tollgate answered")["result"].clone())
            .collect();
        session.finish();
        results
    })
    .await
    .unwrap();
    let mut transactions: Vec<String> = results
        .iter()
        .map(|r| {
            let receipt = assert_paid(r, "pyx", "weather", "x402/payment-response");
            receipt["transaction"]
                .as_str()
                .unwrap_or_else(|| panic!("a transaction: {receipt:#}"))
                .to_owned()
        })
        .collect();
    transactions.sort();
    transactions.dedup();
    assert_eq!(
        transactions.len(),
        CALLS,
        "each call settled its own payment"
    );
    assert_eq!(
        peers.balance("v2", PAYEE_STDIO).await,
        CALLS as u128 * X402_PRICE
    );
    assert_eq!(setup.receipts().len(), CALLS);
}

/// Two tollgate processes sharing one ledger, each sending identical and distinct calls of the
/// same paid MCP tool at once (one seller, over streamable HTTP, for both), under a per-day cap
/// that admits 5 of their 8 calls: exactly 5 are paid, on chain and in the ledger, each with its
/// own settlement; the others are refused by the cap before anything is signed, and so is the
/// next call.
#[tokio::test(flavor = "multi_thread")]
async fn two_processes_of_identical_and_distinct_calls_pay_exactly_the_cap() {
    let Some((_python, peers)) = x402_peers().await else {
        return;
    };
    // 5 calls of 0.001 fit under the per-day cap; the 6th does not.
    let setup = Setup::x402(
        &peers,
        "[caps]\nper_call = \"0.01 USD\"\nper_day = \"0.0055 USD\"\n",
        "",
    );
    let log = setup.log("pyxh");
    let http = HttpSeller::start(&x402_command(&peers, PAYEE_HTTP, false, &log));
    setup.tools(&http_upstream(
        "pyxh",
        &http.url,
        "max_price = \"0.01 USD\"",
    ));
    let key = peers.str("/buyer_key");
    let run = |process: usize, calls: Vec<Value>| {
        let (config, key) = (setup.config(), key.clone());
        tokio::task::spawn_blocking(move || {
            let mut session = Session::start(&config, &[("TOLLGATE_EVM_KEY", &key)]);
            for (i, arguments) in calls.iter().enumerate() {
                session.call_tool(i as u64 + 1, "pyxh_weather", arguments.clone());
            }
            let results: Vec<Value> = (0..calls.len())
                .map(|_| {
                    session
                        .next_response()
                        .unwrap_or_else(|| panic!("process {process} answered"))["result"]
                        .clone()
                })
                .collect();
            session.finish();
            results
        })
    };
    // In each process: two calls identical to each other and to the other process's, and two
    // of its own.
    let calls = |process: usize| {
        vec![
            json!({"city": "Paris"}),
            json!({"city": "Paris"}),
            json!({"city": format!("Lyon {process}")}),
            json!({"city": format!("Nice {process}")}),
        ]
    };
    let (a, b) = tokio::join!(run(0, calls(0)), run(1, calls(1)));
    let results: Vec<Value> = a.unwrap().into_iter().chain(b.unwrap()).collect();

    let (paid, refused): (Vec<&Value>, Vec<&Value>) =
        results.iter().partition(|r| r["isError"] != json!(true));
    assert_eq!(paid.len(), 5, "exactly the cap was paid: {results:#?}");
    let mut transactions: Vec<String> = paid
        .iter()
        .map(|r| {
            let receipt = assert_paid(r, "pyxh", "weather", "x402/payment-response");
            receipt["transaction"]
                .as_str()
                .expect("a transaction")
                .to_owned()
        })
        .collect();
    transactions.sort();
    transactions.dedup();
    assert_eq!(transactions.len(), 5, "five distinct settlements");
    for r in &refused {
        assert_refused(
            "a call over the cap",
            r,
            &["per-day cap", "nothing was paid"],
        );
    }
    assert_eq!(peers.balance("v2", PAYEE_HTTP).await, 5 * X402_PRICE);
    assert_eq!(events(&log, "settle", "weather").len(), 5);
    let receipts = setup.receipts();
    assert_eq!(receipts.len(), 5, "{receipts:#?}");
    let spent: u64 = receipts
        .iter()
        .map(|r| r["amount_usd_micros"].as_u64().expect("an amount"))
        .sum();
    assert_eq!(
        u128::from(spent),
        5 * X402_PRICE,
        "ledger spent = chain moved"
    );

    // The next call, from a third process, is refused too: nothing more moves.
    let next = run(2, vec![json!({"city": "Rome"})]).await.unwrap();
    assert_refused(
        "the next call",
        &next[0],
        &["per-day cap", "nothing was paid"],
    );
    assert_eq!(peers.balance("v2", PAYEE_HTTP).await, 5 * X402_PRICE);
    assert_eq!(
        events(&log, "call", "weather")
            .iter()
            .filter(|e| e["paid"] == true)
            .count(),
        5,
        "no payment was sent beyond the cap"
    );
}
