//! `tollgate wallet`: the delegated wallet.

use std::path::PathBuf;

use clap::Subcommand;

use tollgate::config::Config;
use tollgate::wallet::EvmWallet;

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Print the EVM address tollgate pays from (never the key).
    Address {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub fn wallet_address(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    match EvmWallet::open(&config.wallet)? {
        Some(wallet) => println!("{}", wallet.address()),
        None => anyhow::bail!(
            "no EVM wallet is configured: set {} or wallet.evm_keystore in the config",
            tollgate::wallet::EVM_KEY_ENV
        ),
    }
    Ok(())
}
