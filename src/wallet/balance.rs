//! `tollgate wallet balance`: what the wallet holds of each configured asset, read on chain
//! through `[rpc]` (`eth_call` of the token's `balanceOf`).
//!
//! Owns: one bounded JSON-RPC call per asset (connect and total timeouts, a size cap on the
//! answer) and formatting atomic units as decimals with integers only. Does not: guess an
//! endpoint (an asset whose network has no `[rpc]` entry is reported as not checked), or
//! value anything in USD.

use std::collections::BTreeMap;

use alloy::primitives::{Address, U256};
use alloy::sol;
use alloy::sol_types::SolCall;
use serde_json::json;

use crate::pay::assets::Asset;

sol! {
    function balanceOf(address account) returns (uint256);
}

/// One asset's balance, or why it could not be read.
#[derive(Debug, Clone)]
pub struct Holding {
    /// `eip155:<chain id>`.
    pub network: String,
    /// The asset's symbol (`USDC`).
    pub symbol: String,
    /// The token contract.
    pub asset: String,
    /// Atomic units, or the reason it is unknown.
    pub balance: Result<U256, String>,
    /// Decimals of the asset's atomic unit.
    pub decimals: u8,
    /// A test asset (`[[assets]] sandbox = true`).
    pub sandbox: bool,
}

impl Holding {
    /// The balance as a decimal string in whole units (`"9.942000"`), or the error.
    pub fn shown(&self) -> String {
        match &self.balance {
            Ok(amount) => decimal(*amount, self.decimals),
            Err(reason) => format!("unknown: {reason}"),
        }
    }
}

/// Atomic units as whole units with every decimal (integers only: never a float).
pub fn decimal(amount: U256, decimals: u8) -> String {
    if decimals == 0 {
        return amount.to_string();
    }
    let scale = U256::from(10u8).pow(U256::from(decimals));
    let (whole, fraction) = (amount / scale, amount % scale);
    format!(
        "{whole}.{:0>width$}",
        fraction.to_string(),
        width = usize::from(decimals)
    )
}

/// Reads `owner`'s balance of every asset whose chain has an `[rpc]` endpoint. The second
/// list holds the assets not checked (no endpoint for their network).
pub async fn balances(
    owner: Address,
    assets: &[Asset],
    rpc: &BTreeMap<u64, String>,
) -> (Vec<Holding>, Vec<Asset>) {
    let client = match crate::rpc::client() {
        Ok(client) => client,
        Err(reason) => {
            let held = assets
                .iter()
                .filter(|a| rpc.contains_key(&a.chain_id))
                .map(|a| holding(a, Err(reason.clone())))
                .collect();
            return (held, Vec::new());
        }
    };
    let mut held = Vec::new();
    let mut unchecked = Vec::new();
    for asset in assets.iter().filter(|a| a.chain_id != 0) {
        let Some(url) = rpc.get(&asset.chain_id) else {
            unchecked.push(asset.clone());
            continue;
        };
        let balance = balance_of(&client, url, &asset.address, owner).await;
        held.push(holding(asset, balance));
    }
    (held, unchecked)
}

fn holding(asset: &Asset, balance: Result<U256, String>) -> Holding {
    Holding {
        network: format!("eip155:{}", asset.chain_id),
        symbol: asset.symbol.clone(),
        asset: asset.address.clone(),
        balance,
        decimals: asset.decimals,
        sandbox: asset.sandbox,
    }
}

async fn balance_of(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    owner: Address,
) -> Result<U256, String> {
    let data = balanceOfCall { account: owner }.abi_encode();
    let result = crate::rpc::call(
        client,
        url,
        "eth_call",
        json!([{"to": token, "data": format!("0x{}", hex::encode(data))}, "latest"]),
    )
    .await?;
    let raw = result
        .as_str()
        .and_then(|h| hex::decode(h.trim_start_matches("0x")).ok())
        .ok_or("the node's answer has no hex result")?;
    balanceOfCall::abi_decode_returns(&raw)
        .map_err(|_| "balanceOf did not return a uint256 (is the asset address a token?)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_every_decimal_with_integers_only() {
        assert_eq!(decimal(U256::from(9_942_000u64), 6), "9.942000");
        assert_eq!(decimal(U256::from(5u64), 6), "0.000005");
        assert_eq!(decimal(U256::from(12u64), 0), "12");
    }
}
