//! A wallet in one command: `tollgate wallet new` writes a standard encrypted keystore (Web3
//! Secret Storage) that another tool (ethers) decrypts to the same address, sets `[wallet]
//! evm_keystore` keeping the config's comments, and prints the address, never the key;
//! `tollgate wallet balance` reads the configured assets on a real chain (anvil with Circle's
//! USDC) through `[rpc]`.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn tollgate(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("TOLLGATE_EVM_KEY")
        .env_remove("TOLLGATE_EVM_KEYSTORE_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tollgate")
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `address to fund:` line of `wallet new`.
fn funded_address(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("address to fund: "))
        .unwrap_or_else(|| panic!("no address in:\n{out}"))
        .trim()
        .to_owned()
}

#[test]
fn wallet_new_writes_a_keystore_and_names_it_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        "# my tollgate\ntools_dir = \"tools\"  # the tools\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "correct horse battery staple\n").unwrap();

    let out = tollgate(
        &[
            "wallet",
            "new",
            "--password-file",
            password.to_str().unwrap(),
        ],
        &config,
    );
    let shown = both(&out);
    assert!(out.status.success(), "{shown}");
    let address = funded_address(&shown);
    assert!(
        !shown.contains("correct horse"),
        "the password was printed: {shown}"
    );
    assert!(shown.contains("pays with:"), "{shown}");
    assert!(
        shown.contains("USDC on eip155:8453"),
        "the built-in policy pays USDC on Base: {shown}"
    );

    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# my tollgate\ntools_dir = \"tools\"  # the tools\n"),
        "{text}"
    );
    assert!(
        text.contains("evm_keystore = \"keystore/tollgate-evm.json\""),
        "{text}"
    );
    let keystore = dir.path().join("keystore/tollgate-evm.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&keystore).unwrap()).unwrap();
    assert_eq!(json["version"], 3, "Web3 Secret Storage v3: {json}");
    assert!(json["crypto"]["ciphertext"].is_string(), "{json}");

    // tollgate itself opens it with the password file the config now names.
    let out = tollgate(&["wallet", "address"], &config);
    assert!(out.status.success(), "{}", both(&out));
    assert_eq!(both(&out).trim(), address);

    // Never over a configured wallet.
    let again = tollgate(
        &[
            "wallet",
            "new",
            "--password-file",
            password.to_str().unwrap(),
        ],
        &config,
    );
    assert!(!again.status.success(), "{}", both(&again));
    assert!(
        both(&again).contains("does not replace a wallet"),
        "{}",
        both(&again)
    );
}

#[test]
fn another_tool_decrypts_the_keystore_to_the_same_address() {
    let peers = support::mcp::root().join("tests/peers/wallet");
    let Some(_) = support::mcp::require_peer(
        "ethers (tests/peers/wallet)",
        &peers.join("node_modules/ethers"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-Ω\n").unwrap();
    let out = tollgate(
        &[
            "wallet",
            "new",
            "--password-file",
            password.to_str().unwrap(),
        ],
        &config,
    );
    assert!(out.status.success(), "{}", both(&out));
    let address = funded_address(&both(&out));

    let decrypted = Command::new("node")
        .arg(peers.join("decrypt.mjs"))
        .arg(dir.path().join("keystore/tollgate-evm.json"))
        .arg(&password)
        .output()
        .expect("run node (node 20+ is needed for the ethers peer)");
    assert!(decrypted.status.success(), "{}", both(&decrypted));
    let answer: Value = serde_json::from_slice(&decrypted.stdout).unwrap();
    assert_eq!(
        answer["address"].as_str(),
        Some(address.as_str()),
        "{answer}"
    );
}

#[tokio::test]
async fn wallet_balance_reads_usdc_on_chain_through_rpc() {
    let Some(peers) = support::x402_peer::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "tools_dir = \"tools\"\n\n[[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\n\
             symbol = \"USDC\"\ndecimals = 6\n\n[rpc]\n\"eip155:31337\" = \"{}\"\n",
            peers.str("/v2/usdc"),
            peers.str("/v2/rpc")
        ),
    )
    .unwrap();
    let on_chain = peers.balance("v2", &peers.str("/buyer")).await;
    let key = peers.str("/buyer_key");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["wallet", "balance", "--config"])
        .arg(&config)
        .env("TOLLGATE_EVM_KEY", &key)
        .output()
        .unwrap();
    let shown = both(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        !shown.contains(key.trim_start_matches("0x")),
        "the key was printed"
    );
    let expected = format!("{}.{:06}", on_chain / 1_000_000, on_chain % 1_000_000);
    let row = shown
        .lines()
        .find(|l| l.starts_with("eip155:31337"))
        .unwrap_or_else(|| panic!("no row for the anvil chain:\n{shown}"));
    assert!(
        row.contains(&expected),
        "balanceOf says {expected}:\n{shown}"
    );
    assert!(
        shown.contains("not checked (no [rpc] endpoint): eip155:1"),
        "{shown}"
    );
}

#[test]
fn wallet_balance_names_a_node_that_does_not_answer_and_gives_up_in_time() {
    // A port that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!("tools_dir = \"tools\"\n[rpc]\n\"eip155:8453\" = \"{url}\"\n"),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["wallet", "balance", "--config"])
        .arg(&config)
        .env(
            "TOLLGATE_EVM_KEY",
            "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
        )
        .output()
        .unwrap();
    let shown = both(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        shown.contains("eip155:8453") && shown.contains("unknown: the node did not answer"),
        "{shown}"
    );
    drop(silent);
}
