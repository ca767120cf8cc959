//! Running real MCP clients (Python `mcp`, the MCP Inspector) against the tollgate binary.
//!
//! The peers are installed by `scripts/test` (a venv under `target/venv`, node packages under
//! `tests/peers/*/node_modules`). Under `scripts/test` (`TOLLGATE_REQUIRE_PEERS=1`) a missing
//! peer fails the test; under plain `cargo test` the test prints why and skips.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Decides what to do when a peer is missing: `None` means skip (with the reason printed).
pub fn require_peer(what: &str, path: &Path) -> Option<PathBuf> {
    if path.exists() {
        return Some(path.to_owned());
    }
    let reason = format!(
        "{what} is not installed at {} (scripts/test installs it)",
        path.display()
    );
    if std::env::var_os("TOLLGATE_REQUIRE_PEERS").is_some_and(|v| v == "1") {
        panic!("peer missing: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// The venv's Python with `mcp` installed.
pub fn python() -> Option<PathBuf> {
    require_peer(
        "the Python MCP client (mcp==2.3.0)",
        &root().join("target/venv/bin/python"),
    )
}

/// Which protocol revision the Python client negotiates.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `ClientSession`: `initialize`, revision 2025-11-25.
    Legacy,
    /// `mcp.Client(mode="auto")`: stateless, revision 2026-07-28.
    Stateless,
}

impl Mode {
    pub fn arg(self) -> &'static str {
        match self {
            Mode::Legacy => "legacy",
            Mode::Stateless => "stateless",
        }
    }
    pub fn revision(self) -> &'static str {
        match self {
            Mode::Legacy => "2025-11-25",
            Mode::Stateless => "2026-07-28",
        }
    }
}

/// Runs `tests/clients/mcp_driver.py` with `steps` against `tollgate serve --config config`,
/// and returns its JSON report.
pub async fn drive(
    python: &Path,
    mode: Mode,
    config: &Path,
    env: &[(&str, &str)],
    steps: Value,
) -> Value {
    drive_with_logs(python, mode, config, env, steps).await.0
}

/// Like [`drive`], also returning everything written to stderr (tollgate's logs included).
pub async fn drive_with_logs(
    python: &Path,
    mode: Mode,
    config: &Path,
    env: &[(&str, &str)],
    steps: Value,
) -> (Value, String) {
    drive_elicit(python, mode, config, env, steps, None).await
}

/// Like [`drive_with_logs`], with the driver's elicitation callback (`--elicit`: `accept`,
/// `reject`, `decline`, `never`, `late:MS`); `None` declares no elicitation capability.
pub async fn drive_elicit(
    python: &Path,
    mode: Mode,
    config: &Path,
    env: &[(&str, &str)],
    steps: Value,
    elicit: Option<&str>,
) -> (Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let steps_file = dir.path().join("steps.json");
    std::fs::write(&steps_file, steps.to_string()).expect("write steps");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(root().join("tests/clients/mcp_driver.py"))
        .args(["--mode", mode.arg()])
        .args(elicit.map(|e| format!("--elicit={e}")))
        .arg("--steps")
        .arg(&steps_file)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "tollgate=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the MCP driver finished within 120 s")
        .expect("run the MCP driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "driver failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}):\n{stdout}\n{stderr}"));
    (report, stderr.into_owned())
}

/// Runs `tests/clients/mcp_driver.py` with `steps` against a streamable HTTP server at `url`,
/// sending `bearer` (if any) as `Authorization: Bearer`; the elicitation callback as in
/// [`drive_elicit`]. Returns the driver's JSON report.
pub async fn drive_url(
    python: &Path,
    mode: Mode,
    url: &str,
    bearer: Option<&str>,
    steps: Value,
    elicit: Option<&str>,
) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let steps_file = dir.path().join("steps.json");
    std::fs::write(&steps_file, steps.to_string()).expect("write steps");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(root().join("tests/clients/mcp_driver.py"))
        .args(["--mode", mode.arg()])
        .args(elicit.map(|e| format!("--elicit={e}")))
        .arg("--steps")
        .arg(&steps_file)
        .args(["--url", url])
        .env_remove("MCP_BEARER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(bearer) = bearer {
        cmd.env("MCP_BEARER", bearer);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the MCP driver finished within 120 s")
        .expect("run the MCP driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "driver failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}):\n{stdout}\n{stderr}"))
}

/// A scratch directory with `tollgate.toml` and `tools/test.toml`.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new(tools_toml: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tools")).expect("mkdir tools");
        std::fs::write(dir.path().join("tools/test.toml"), tools_toml).expect("write tools");
        std::fs::write(
            dir.path().join("tollgate.toml"),
            "tools_dir = \"tools\"\nstate_dir = \"state\"\n",
        )
        .expect("write config");
        Setup { dir }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("tollgate.toml")
    }
}

/// The browser peer (`tests/peers/browser`: playwright-core driving Debian's Chromium), or
/// `None` (skip) when it is not installed and peers are not required.
pub fn browser() -> Option<PathBuf> {
    require_peer(
        "Debian chromium (apt-get install chromium)",
        Path::new("/usr/bin/chromium"),
    )?;
    require_peer(
        "playwright-core",
        &root().join("tests/peers/browser/node_modules/playwright-core"),
    )?;
    Some(root().join("tests/peers/browser/approve.mjs"))
}

/// Opens `url` in headless Chromium and clicks approve or deny, as a person would. Returns
/// the script's report: the page text before and after, and the HTTP status.
pub async fn click_on_page(script: &Path, url: &str, decision: &str) -> Value {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(script)
            .args([url, decision])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finished within 90 s")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("the browser's report is JSON")
}
