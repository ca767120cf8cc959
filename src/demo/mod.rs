//! `tollgate demo`: tollgate at work in a few seconds, offline, with SANDBOX money.
//!
//! * [`chain`]: a real EVM in this process (revm) running Circle's USDC (FiatToken) bytecode.
//! * [`seller`]: a paid API with several priced endpoints speaking x402 v2, settled on that
//!   chain by the token contract itself.
//! * [`rpc`]: JSON-RPC over the chain on loopback, for `[rpc]` (`reconcile`, `wallet balance`).
//! * [`sandbox`]: all of it started together, a funded buyer key, and an ordinary config
//!   directory pointing `tollgate serve` at it.
//! * [`agent`]: the scripted, narrated agent: a real MCP client driving `tollgate serve` over
//!   stdio.
//!
//! Nothing here is on the payment path: `tollgate serve` pays the sandbox exactly as it pays
//! any x402 seller. The only trace of the sandbox in a receipt is `"sandbox": true`, from the
//! config's `[[assets]] sandbox = true`, which any deployment may use for test assets.

pub mod agent;
pub mod chain;
pub mod rpc;
pub mod sandbox;
pub mod seller;

use std::path::{Path, PathBuf};

pub use sandbox::new_buyer_key;

/// A sandbox running on a thread of its own (for `tollgate demo --serve`, where the main
/// thread runs `tollgate serve`).
#[derive(Debug, Clone)]
pub struct Background {
    /// The sandbox's `tollgate.toml`.
    pub config: PathBuf,
    /// The paid API's address.
    pub api: std::net::SocketAddr,
    /// The JSON-RPC endpoint's address.
    pub rpc: std::net::SocketAddr,
    /// The buyer's address.
    pub buyer: alloy::primitives::Address,
    /// The token's address.
    pub token: alloy::primitives::Address,
}

/// Starts the sandbox in `dir` on a new thread with its own runtime, funding `buyer_key`;
/// it runs until the process exits.
pub fn start_in_background(dir: &Path, buyer_key: String) -> Result<Background, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    std::thread::Builder::new()
        .name("tollgate-sandbox".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the sandbox's runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                match sandbox::Sandbox::start(&dir, Some(buyer_key)).await {
                    Ok(sandbox) => {
                        let _ = tx.send(Ok(Background {
                            config: sandbox.config.clone(),
                            api: sandbox.api,
                            rpc: sandbox.rpc,
                            buyer: sandbox.buyer,
                            token: sandbox.chain.token(),
                        }));
                        // Serve until the process exits.
                        std::future::pending::<()>().await;
                        drop(sandbox);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| format!("cannot start the sandbox's thread: {e}"))?;
    rx.recv()
        .map_err(|_| "the sandbox's thread stopped before it started".to_owned())?
}

/// A fresh directory for a demo run under the system's temporary directory.
pub fn temp_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-demo-{}-{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
