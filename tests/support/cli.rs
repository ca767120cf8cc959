//! Running tollgate's commands from tests and benches.

use std::path::Path;
use std::process::Command;

/// `tollgate ARGS --config DIR/tollgate.toml`, which must succeed; its stdout, trimmed.
pub fn tollgate(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(dir.join("tollgate.toml"))
        .output()
        .expect("run tollgate");
    assert!(
        out.status.success(),
        "tollgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
