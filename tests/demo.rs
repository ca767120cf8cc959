//! `tollgate demo`, the README's first command: offline, in seconds, an agent on a real MCP
//! client pays a sandbox x402 API through `tollgate serve`, is refused by the per-call cap,
//! delegates a budget that runs out, gets a person's approval, and the token contract's
//! balances move exactly as the receipts say.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn tollgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    // The demo brings its own key and credential; whatever the shell has must not leak in.
    cmd.env_remove("TOLLGATE_EVM_KEY")
        .env_remove("TOLLGATE_TOKEN")
        .env_remove("TOLLGATE_EVM_KEYSTORE_PASSWORD");
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first command of README.md's first `sh` block, without its comment.
fn readme_first_command() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("README.md has a ```sh block");
    let line = block.lines().next().expect("the block has a first line");
    line.split('#').next().unwrap_or_default().trim().to_owned()
}

/// A number that follows `label` in `transcript`.
fn number_after(transcript: &str, label: &str) -> u128 {
    let at = transcript
        .find(label)
        .unwrap_or_else(|| panic!("the transcript has no {label:?}:\n{transcript}"));
    transcript[at + label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?}:\n{transcript}"))
}

#[test]
fn the_readme_starts_with_the_demo_and_it_runs_as_written() {
    let command = readme_first_command();
    assert_eq!(
        command, "cargo run --release -- demo",
        "README's first command changed"
    );
    // Everything after `--` goes to the binary: run exactly that (with the test's build).
    let args: Vec<&str> = command
        .split(" -- ")
        .nth(1)
        .expect("a `cargo run -- ARGS` command")
        .split_whitespace()
        .collect();
    let started = Instant::now();
    let out = tollgate().args(&args).output().expect("run tollgate demo");
    let elapsed = started.elapsed();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "exit {}:\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!(
        "tollgate demo took {} ms (debug build)",
        elapsed.as_millis()
    );
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");

    // Every step happened, and said what happened to the money.
    for expected in [
        "SANDBOX money",
        "== 3. A paid call",
        "receipt: 0.001 USD (1000 atomic units of USDC), x402 v2 on eip155:31337",
        "sandbox: true",
        "money: wallet 10.000000 -> 9.999000 USDC",
        "== 4. A call the policy refuses",
        "per-call",
        "money: nothing moved",
        "== 5. Delegation",
        "sandbox_forecast Paris: paid 0.002 USD",
        "sandbox_forecast Lisbon: paid 0.002 USD",
        "sandbox_forecast Oslo: refused",
        "approval_required",
        "$ tollgate approve ap_",
        "approved: ap_",
        "approved by:",
        "$ tollgate budget --config",
        "$ tollgate receipts --config",
        "they agree.",
        "Claude Desktop",
    ] {
        assert!(
            stdout.contains(expected),
            "the transcript lacks {expected:?}:\n{stdout}"
        );
    }
    // Four payments: the quote, two forecasts by the sub-agent, the approved summary.
    let receipts = number_after(&stdout, "receipts: ");
    assert_eq!(receipts, 4, "{stdout}");
    let paid = number_after(&stdout, "the wallet paid ");
    let received = number_after(&stdout, "the seller received ");
    assert_eq!(paid, 1_000 + 2_000 + 2_000 + 50_000, "{stdout}");
    assert_eq!(received, paid, "{stdout}");
    // The demo's stdout is narration; the served tollgate's logs went to files, not here.
    assert!(!stdout.contains(" INFO "), "{stdout}");
}

#[test]
fn the_ledger_holds_the_receipts_the_chain_settled_all_marked_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = tollgate()
        .args(["demo", "--dir"])
        .arg(&run)
        .output()
        .expect("run tollgate demo");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "exit {}:\n{stdout}\n{stderr}",
        out.status
    );
    let paid = number_after(&stdout, "the wallet paid ");

    let config = run.join("tollgate.toml");
    let out = tollgate()
        .args(["receipts", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let (json, stderr) = text(&out);
    assert!(out.status.success(), "{json}\n{stderr}");
    let receipts: Value = serde_json::from_str(&json).expect("receipts as JSON");
    let receipts = receipts
        .as_array()
        .or_else(|| receipts["receipts"].as_array())
        .unwrap_or_else(|| panic!("a list of receipts: {json}"))
        .clone();
    assert_eq!(receipts.len(), 4, "{json}");
    let total: u128 = receipts
        .iter()
        .map(|r| {
            assert_eq!(r["sandbox"], Value::Bool(true), "{r}");
            assert_eq!(r["network"], "eip155:31337", "{r}");
            r["amount_atomic"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap()
        })
        .sum();
    assert_eq!(total, paid, "receipts {json}\ntranscript {stdout}");
    // A second run in the same directory is refused: its chain would start empty.
    let again = tollgate()
        .args(["demo", "--dir"])
        .arg(&run)
        .output()
        .unwrap();
    let (_, stderr) = text(&again);
    assert!(
        !again.status.success() && stderr.contains("earlier demo"),
        "{stderr}"
    );
}
