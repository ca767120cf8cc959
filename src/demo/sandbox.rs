//! The sandbox as a whole: the chain, the paid API and the JSON-RPC endpoint started
//! together on loopback, a buyer key funded with sandbox USDC, and a config directory
//! (`tollgate.toml`, `tools/sandbox.toml`, `policies/demo.toml`, `state/`) that points an
//! ordinary `tollgate serve` at them.
//!
//! Owns: starting and stopping those pieces and writing that directory. Does not: talk MCP
//! or pay anything (that is `tollgate serve`'s job, unchanged).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;

use super::chain::{Chain, ChainError};
use super::seller::{ENDPOINTS, SELLER};

/// The sandbox chain's id: the usual local development chain.
pub const CHAIN_ID: u64 = 31337;
/// What the demo funds the buyer with: 10 sandbox USDC (atomic units, 6 decimals).
pub const BUYER_FUNDS: u128 = 10_000_000;

/// Why the sandbox did not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The chain or the token did not start.
    #[error("the sandbox chain did not start: {0}")]
    Chain(#[from] ChainError),
    /// No loopback port could be bound.
    #[error("cannot listen on loopback for the sandbox {what}: {source}")]
    Listen {
        what: &'static str,
        source: std::io::Error,
    },
    /// The config directory could not be written.
    #[error("cannot write the sandbox config in {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The buyer's key is unusable.
    #[error("the sandbox buyer's key: {0}")]
    Key(String),
    /// The root key could not be created.
    #[error("cannot create the root key in {0}: {1}")]
    RootKey(PathBuf, String),
}

/// A running sandbox. Its servers stop when the runtime they were started on stops (or
/// when this is dropped).
pub struct Sandbox {
    /// The chain, shared with the servers.
    pub chain: Arc<Chain>,
    /// The sandbox paid API.
    pub api: SocketAddr,
    /// The JSON-RPC endpoint over the chain.
    pub rpc: SocketAddr,
    /// `tollgate.toml` of the sandbox config directory.
    pub config: PathBuf,
    /// The buyer's address (its key is handed to `tollgate serve` in the environment).
    pub buyer: Address,
    /// The seller's address (where the API is paid).
    pub seller: Address,
    buyer_key: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the buyer's key.
        f.debug_struct("Sandbox")
            .field("api", &self.api)
            .field("rpc", &self.rpc)
            .field("config", &self.config)
            .field("buyer", &self.buyer)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Sandbox {
    /// Starts the chain and servers on the current tokio runtime, funds the buyer key (a
    /// fresh one if `None`; see [`new_buyer_key`]) and writes the config directory into `dir`
    /// (which must exist).
    pub async fn start(dir: &Path, buyer_key: Option<String>) -> Result<Sandbox, SandboxError> {
        let chain = Arc::new(Chain::start(CHAIN_ID)?);
        let buyer_key = buyer_key.unwrap_or_else(new_buyer_key);
        let buyer = crate::wallet::EvmWallet::from_hex(&buyer_key)
            .map_err(|e| SandboxError::Key(e.to_string()))?
            .address();
        chain.mint(buyer, BUYER_FUNDS)?;
        let bind = |what: &'static str| async move {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|source| SandboxError::Listen { what, source })
        };
        let (api_listener, rpc_listener) = (bind("API").await?, bind("RPC").await?);
        let local = |l: &tokio::net::TcpListener, what: &'static str| {
            l.local_addr()
                .map_err(|source| SandboxError::Listen { what, source })
        };
        let (api, rpc) = (local(&api_listener, "API")?, local(&rpc_listener, "RPC")?);
        let tasks = vec![
            tokio::spawn(super::seller::serve(api_listener, chain.clone())),
            tokio::spawn(super::rpc::serve(rpc_listener, chain.clone())),
        ];
        let config = write_config(dir, &chain, api, rpc)?;
        Ok(Sandbox {
            chain,
            api,
            rpc,
            config,
            buyer,
            seller: SELLER,
            buyer_key,
            tasks,
        })
    }

    /// The buyer's private key (hex), for `TOLLGATE_EVM_KEY` of the `tollgate serve` the
    /// sandbox runs. Never print it.
    pub fn buyer_key(&self) -> &str {
        &self.buyer_key
    }
}

/// A fresh random private key (hex) for the sandbox's buyer. Never print it.
pub fn new_buyer_key() -> String {
    hex::encode(PrivateKeySigner::random().to_bytes())
}

/// A TOML string literal (escaped).
fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn write(path: PathBuf, text: &str) -> Result<(), SandboxError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| SandboxError::Write {
            path: parent.to_owned(),
            source,
        })?;
    }
    std::fs::write(&path, text).map_err(|source| SandboxError::Write { path, source })
}

/// Writes `tollgate.toml`, `tools/sandbox.toml`, `policies/demo.toml` and the root key.
fn write_config(
    dir: &Path,
    chain: &Chain,
    api: SocketAddr,
    rpc: SocketAddr,
) -> Result<PathBuf, SandboxError> {
    let network = format!("eip155:{}", chain.chain_id());
    let config = dir.join("tollgate.toml");
    write(
        config.clone(),
        &format!(
            "# The sandbox of `tollgate demo`: every amount is SANDBOX money (test USDC on a chain\n\
             # running inside the demo's process). Delete this directory when done.\n\
             tools_dir = \"tools\"\n\
             policies_dir = \"policies\"\n\
             state_dir = \"state\"\n\
             policy = \"demo\"\n\
             \n\
             # The sandbox's USDC (Circle's FiatToken bytecode on the in-process chain).\n\
             [[assets]]\n\
             network = {network}\n\
             address = {token}\n\
             symbol = \"USDC\"\n\
             decimals = 6\n\
             sandbox = true\n\
             \n\
             [rpc]\n\
             {network} = {rpc_url}\n\
             \n\
             [approval]\n\
             listen = \"off\"\n",
            network = toml_str(&network),
            token = toml_str(&chain.token().to_checksum(None)),
            rpc_url = toml_str(&format!("http://{rpc}/")),
        ),
    )?;
    let mut tools =
        String::from("# The sandbox paid API of `tollgate demo` (x402 v2, SANDBOX money).\n");
    for e in ENDPOINTS {
        let url = match e.argument {
            Some(arg) => format!("http://{api}{}?{arg}={{{arg}}}", e.path),
            None => format!("http://{api}{}", e.path),
        };
        tools.push_str(&format!(
            "\n[[tool]]\nname = {}\ntitle = {}\ndescription = {}\nmethod = \"GET\"\nurl = {}\n",
            toml_str(e.tool),
            toml_str(e.title),
            toml_str(e.description),
            toml_str(&url),
        ));
        if let Some(max) = e.max_price {
            tools.push_str(&format!("max_price = {}\n", toml_str(max)));
        }
        tools.push_str(
            "timeout_ms = 10000\nannotations = { read_only = true, open_world = false }\n\n\
             [tool.input_schema]\ntype = \"object\"\nadditionalProperties = false\n",
        );
        match e.argument {
            Some(arg) => tools.push_str(&format!(
                "required = [{q}]\nproperties.{arg} = {{ type = \"string\", minLength = 1, maxLength = 100 }}\n",
                q = toml_str(arg)
            )),
            None => tools.push_str("properties = {}\n"),
        }
    }
    write(dir.join("tools").join("sandbox.toml"), &tools)?;
    write(
        dir.join("policies").join("demo.toml"),
        &format!(
            "# The demo's policy: SANDBOX money only, on the in-process chain.\n\
             default_profile = \"agent\"\n\
             \n\
             [caps]\n\
             per_call = \"0.10 USD\"        # nobody pays more for one call\n\
             per_day = \"5 USD\"\n\
             approve_above = \"0.02 USD\"   # above this, a person approves first\n\
             \n\
             [allow]\n\
             hosts = [\"*\"]\n\
             networks = [{network}]\n\
             assets = [\"USDC\"]\n\
             \n\
             [rates]\n\
             USDC = \"1 USD\"\n\
             \n\
             [profiles.agent]\n\
             description = \"The demo's agent: every caller without a credential.\"\n\
             budget = \"1 USD\"\n\
             lifetime = \"24h\"\n",
            network = toml_str(&network),
        ),
    )?;
    let state = dir.join("state");
    crate::budget::credential::RootKey::create(&state)
        .map_err(|e| SandboxError::RootKey(state.clone(), e.to_string()))?;
    Ok(config)
}
