//! `tollgate wallet`: the delegated wallet.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use tollgate::budget::policy::Policy;
use tollgate::config::Config;
use tollgate::wallet::EvmWallet;

use super::print_table;

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Print the EVM address tollgate pays from (never the key).
    Address {
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Make a new EVM key in an encrypted keystore, set [wallet] evm_keystore in the config,
    /// and print the address to fund (never the key).
    New {
        /// Read the password from the first line of this file instead of a prompt (it is
        /// also written to [wallet] evm_keystore_password_file).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Config file to set [wallet] evm_keystore in, created if missing [default:
        /// ./tollgate.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// What the wallet holds of each configured asset, read on chain through [rpc].
    Balance {
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

/// `tollgate wallet new`: a new key in an encrypted keystore; prints only the address.
pub fn wallet_new(config: Option<PathBuf>, password_file: Option<PathBuf>) -> anyhow::Result<()> {
    use tollgate::wallet::create;
    let path = config.unwrap_or_else(|| PathBuf::from(tollgate::config::DEFAULT_CONFIG_FILE));
    let password = match &password_file {
        Some(file) => create::read_password_file(file)?,
        None => {
            let first = rpassword::prompt_password("Password for the new keystore: ")
                .context("cannot read a password from the terminal (use --password-file)")?;
            let again = rpassword::prompt_password("The same password again: ")
                .context("cannot read a password from the terminal (use --password-file)")?;
            if first != again {
                anyhow::bail!("the two passwords differ; nothing was written");
            }
            first
        }
    };
    let made = create::create(&path, &password, password_file.as_deref())?;
    println!(
        "created {} (encrypted; Web3 Secret Storage)",
        made.keystore.display()
    );
    println!(
        "{} {}: [wallet] evm_keystore",
        if made.config_created {
            "wrote"
        } else {
            "updated"
        },
        made.config.display()
    );
    println!("address to fund: {}", made.address);
    match Config::load(Some(&made.config)) {
        Ok(config) => match config.load_policy() {
            Ok(policy) => print_fundable(&config, &policy),
            Err(problems) => {
                for p in problems {
                    println!("warning: {p}");
                }
            }
        },
        Err(e) => println!("warning: {e}"),
    }
    if password_file.is_none() {
        println!(
            "tollgate serve needs the password: set {} in the MCP host's env, or \
             [wallet] evm_keystore_password_file",
            tollgate::wallet::KEYSTORE_PASSWORD_ENV
        );
    }
    Ok(())
}

/// Which assets on which networks the policy lets tollgate pay with.
fn print_fundable(config: &Config, policy: &Policy) {
    use tollgate::budget::policy::Allow;
    let allowed = |allow: &Allow, item: &str| match allow {
        Allow::Any => true,
        Allow::Only(items) => items.iter().any(|i| i.eq_ignore_ascii_case(item)),
    };
    println!("the policy ({}) pays with:", policy.source);
    let mut any = false;
    for asset in &config.assets {
        let network = format!("eip155:{}", asset.chain_id);
        if asset.chain_id != 0
            && allowed(&policy.networks, &network)
            && allowed(&policy.assets, &asset.symbol)
        {
            any = true;
            println!(
                "  {} on {network} ({}){}",
                asset.symbol,
                asset.address,
                if asset.sandbox { ", sandbox" } else { "" }
            );
        }
    }
    if !any {
        println!(
            "  nothing yet: allow a network and an asset in the policy ([allow] networks, assets)"
        );
    }
}

/// `tollgate wallet balance`: each configured asset's balance, read on chain.
pub fn wallet_balance(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wallet = EvmWallet::open(&config.wallet)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no wallet configured: run `tollgate wallet new`, or set {} ",
            tollgate::wallet::EVM_KEY_ENV
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (held, unchecked) = runtime.block_on(tollgate::wallet::balance::balances(
        wallet.address(),
        &config.assets,
        &config.rpc,
    ));
    println!("address: {}", wallet.address());
    let rows: Vec<[String; 4]> = held
        .iter()
        .map(|h| {
            [
                h.network.clone(),
                format!("{}{}", h.symbol, if h.sandbox { " (sandbox)" } else { "" }),
                h.shown(),
                h.asset.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no asset checked: add a JSON-RPC endpoint per network under [rpc] in the config");
    } else {
        print_table(["NETWORK", "ASSET", "BALANCE", "CONTRACT"], &rows);
    }
    if !unchecked.is_empty() {
        let mut networks: Vec<String> = unchecked
            .iter()
            .map(|a| format!("eip155:{}", a.chain_id))
            .collect();
        networks.dedup();
        println!("not checked (no [rpc] endpoint): {}", networks.join(", "));
    }
    if held.iter().any(|h| h.balance.is_err()) {
        anyhow::bail!("some balances could not be read (see above)");
    }
    Ok(())
}
