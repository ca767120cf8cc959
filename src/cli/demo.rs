//! `tollgate demo` and `tollgate demo --serve`: the sandbox (an in-process chain running
//! Circle's USDC, a paid x402 API) and a scripted agent, or the sandbox's tools served on stdio.

use std::path::PathBuf;

use anyhow::Context as _;

/// `tollgate demo`: the sandbox and the narrated agent, in a directory of its own.
pub fn demo(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (dir, temporary) = demo_dir(dir)?;
    let tollgate = std::env::current_exe().context("cannot find the tollgate binary to run")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(tollgate::demo::agent::run(&dir, &tollgate));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(_) if temporary => {
            // The sandbox's chain lived in this process: its ledger means nothing now.
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        }
        Ok(_) => {
            println!(
                "(the sandbox's config, ledger and logs stay in {})",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "{e}\n(the sandbox's config, ledger and logs are in {})",
            dir.display()
        )),
    }
}

/// `tollgate demo --serve`: the sandbox on a thread of its own, and `tollgate serve` on this
/// process's stdio (stdout carries MCP frames only; the notes go to stderr).
pub fn demo_serve(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let (dir, _) = demo_dir(dir)?;
    let key = tollgate::demo::new_buyer_key();
    // SAFETY: only this thread exists (logging spawns none); the sandbox's thread and
    // serve's runtime are started after this. `serve` reads the key from the environment,
    // as it does for every host.
    unsafe { std::env::set_var(tollgate::wallet::EVM_KEY_ENV, &key) };
    // The sandbox keeps its own ledger in its directory, never a shared one.
    // SAFETY: as above.
    unsafe { std::env::remove_var(tollgate::config::LEDGER_URL_ENV) };
    let sandbox = tollgate::demo::start_in_background(&dir, key).map_err(|e| anyhow::anyhow!(e))?;
    eprintln!(
        "tollgate demo --serve: SANDBOX money only. A paid x402 API at http://{} settled on an \
         in-process chain (USDC {}); the wallet {} holds 10 sandbox USDC. Config and ledger in {}.",
        sandbox.api,
        sandbox.token,
        sandbox.buyer,
        dir.display()
    );
    super::serve::serve(Some(sandbox.config), None)
}

/// The directory of a demo run: the one given (created if needed), else a fresh temporary
/// one (`true`).
fn demo_dir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, bool)> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            if dir.join("state").exists() {
                anyhow::bail!(
                    "{} holds an earlier demo's state; give an empty directory (the sandbox \
                     chain starts fresh every time)",
                    dir.display()
                );
            }
            Ok((dir, false))
        }
        None => Ok((
            tollgate::demo::temp_dir().map_err(|e| anyhow::anyhow!(e))?,
            true,
        )),
    }
}
