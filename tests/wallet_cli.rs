//! The delegated wallet from the CLI: `tollgate wallet address` reads the key from an
//! encrypted keystore or `TOLLGATE_EVM_KEY`, prints the address, and never the key.

use std::process::Command;

use alloy::signers::local::PrivateKeySigner;

const KEY_HEX: &str = "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";
const ADDRESS: &str = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720";

fn run(config: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(["wallet", "address", "--config"])
        .arg(config)
        .env_remove("TOLLGATE_EVM_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(&KEY_HEX[..16]), "the key was printed: {all}");
    (out.status.success(), all)
}

#[test]
fn address_from_a_keystore_or_the_environment_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    let key = hex::decode(KEY_HEX).unwrap();
    PrivateKeySigner::encrypt_keystore(
        dir.path(),
        &mut rand::thread_rng(),
        &key,
        "hunter2",
        Some("k.json"),
    )
    .unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        "tools_dir = \"tools\"\n[wallet]\nevm_keystore = \"k.json\"\n",
    )
    .unwrap();

    let (ok, out) = run(&config, &[("TOLLGATE_EVM_KEYSTORE_PASSWORD", "hunter2")]);
    assert!(ok && out.trim() == ADDRESS, "{out}");
    let (ok, out) = run(&config, &[("TOLLGATE_EVM_KEYSTORE_PASSWORD", "wrong")]);
    assert!(!ok && out.contains("k.json"), "{out}");
    let (ok, out) = run(&config, &[]);
    assert!(
        !ok && out.contains("TOLLGATE_EVM_KEYSTORE_PASSWORD"),
        "{out}"
    );

    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "tools_dir = \"tools\"\n").unwrap();
    let (ok, out) = run(&plain, &[("TOLLGATE_EVM_KEY", &format!("0x{KEY_HEX}"))]);
    assert!(ok && out.trim() == ADDRESS, "{out}");
    let (ok, out) = run(
        &plain,
        &[("TOLLGATE_EVM_KEY", &format!("0x{}zz", &KEY_HEX[..62]))],
    );
    assert!(
        !ok && out.contains("not a 32-byte hex private key"),
        "{out}"
    );
}
