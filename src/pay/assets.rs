//! Assets tollgate knows how to value: USDC on the EVM networks where Circle deploys it and
//! pathUSD on Tempo (built in), and whatever else the config names. An offer in an unknown asset is never paid: the
//! value of its atomic unit is unknown.

use crate::money::UsdMicros;

/// An ERC-20 asset on one EVM chain, with its rate to micro-USD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    pub chain_id: u64,
    /// Contract address, lowercase `0x…`.
    pub address: String,
    pub symbol: String,
    pub decimals: u8,
    /// Micro-USD per whole unit (1 USDC = 1 000 000 micro-USD).
    pub usd_micros_per_unit: u64,
    /// A test asset (`[[assets]] sandbox = true`): receipts paid in it say `"sandbox": true`.
    pub sandbox: bool,
}

impl Asset {
    /// The value of `amount` atomic units in micro-USD, rounded up (a price is never made to
    /// look smaller than it is). `None` if it does not fit.
    pub fn to_usd_micros(&self, amount: u128) -> Option<UsdMicros> {
        let scale = 10u128.checked_pow(u32::from(self.decimals))?;
        let numerator = amount.checked_mul(u128::from(self.usd_micros_per_unit))?;
        let micros = numerator.div_ceil(scale);
        u64::try_from(micros).ok().map(UsdMicros)
    }
}

/// Circle's USDC deployments: (chain id, address).
const USDC: &[(u64, &str)] = &[
    (1, "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"),
    (10, "0x0b2c639c533813f4aa9d7837caf62653d097ff85"),
    (137, "0x3c499c542cef5e3811e1192ce70d8cc03d5c3359"),
    (8453, "0x833589fcd6edb6e08f4c3c32d4f71b54bda02913"),
    (42161, "0xaf88d065e77c8cc2239327c5edb3a432268e5831"),
    (43113, "0x5425890298aed601595a70ab815c96711a31bc65"),
    (43114, "0xb97ef9ef8734c71904d8002f8b6bc66dd9c48a6e"),
    (80002, "0x41e94eb019c0762f9bfcf9fb1e58725bfb0e7582"),
    (84532, "0x036cbd53842c5426634e7929541ec2318f3dcf7e"),
    (11155111, "0x1c7d4b196cb0c7b01d743fbc6116a902379c7238"),
];

/// Tempo's pathUSD (a TIP-20 stablecoin at the same address on every Tempo chain, 6 decimals,
/// 1:1 USD): mainnet 4217 and the Moderato testnet 42431. A local Tempo chain (anvil
/// `--network tempo`, chain 31337) is named with `[[assets]]`.
pub const PATH_USD: &str = "0x20c0000000000000000000000000000000000000";
const TEMPO_CHAINS: &[u64] = &[4217, 42431];

/// The built-in assets.
pub fn builtin() -> Vec<Asset> {
    let stable = |chain_id: u64, address: &str, symbol: &str| Asset {
        chain_id,
        address: address.to_owned(),
        symbol: symbol.to_owned(),
        decimals: 6,
        usd_micros_per_unit: 1_000_000,
        sandbox: false,
    };
    USDC.iter()
        .map(|(chain_id, address)| stable(*chain_id, address, "USDC"))
        .chain(
            TEMPO_CHAINS
                .iter()
                .map(|id| stable(*id, PATH_USD, "pathUSD")),
        )
        .collect()
}

/// x402 v1 network names and their chain ids.
pub const V1_NETWORKS: &[(&str, u64)] = &[
    ("base", 8453),
    ("base-sepolia", 84532),
    ("avalanche", 43114),
    ("avalanche-fuji", 43113),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("ethereum", 1),
    ("sepolia", 11155111),
    ("optimism", 10),
    ("arbitrum", 42161),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("iotex", 4689),
];

/// The chain id of a network as x402 names it: CAIP-2 (`eip155:8453`) or a v1 name (`base`);
/// or as MPP offers name Tempo chains (`tempo:4217`).
pub fn chain_id(network: &str) -> Option<u64> {
    if let Some(id) = network
        .strip_prefix("eip155:")
        .or_else(|| network.strip_prefix("tempo:"))
    {
        return id.parse().ok().filter(|id| *id > 0);
    }
    V1_NETWORKS
        .iter()
        .find(|(name, _)| *name == network)
        .map(|(_, id)| *id)
}

/// The known asset an offer on an EVM chain names (by chain id and contract address).
pub fn evm_asset(offer: &super::Offer, assets: &[Asset]) -> Result<Asset, String> {
    let Some(chain_id) = offer.chain_id else {
        return Err(format!(
            "network {:?} is not an EVM network tollgate knows",
            offer.network
        ));
    };
    assets
        .iter()
        .find(|a| a.chain_id == chain_id && a.address.eq_ignore_ascii_case(&offer.asset))
        .cloned()
        .ok_or_else(|| {
            format!(
                "asset {} on {} is not a known asset (built-in USDC and pathUSD, or [[assets]] in \
                 tollgate.toml)",
                offer.asset, offer.network
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usdc_atomic_units_are_micro_usd() {
        let usdc = &builtin()[0];
        assert_eq!(usdc.to_usd_micros(10_000), Some(UsdMicros(10_000)));
    }

    #[test]
    fn path_usd_is_built_in_on_tempo_mainnet_and_moderato() {
        let path_usd: Vec<u64> = builtin()
            .iter()
            .filter(|a| a.symbol == "pathUSD" && a.address == PATH_USD)
            .map(|a| a.chain_id)
            .collect();
        assert_eq!(path_usd, [4217, 42431]);
        assert_eq!(
            builtin()[path_usd.len()..].len() + path_usd.len(),
            builtin().len()
        );
    }

    #[test]
    fn rounds_up_for_finer_assets() {
        let eighteen = Asset {
            decimals: 18,
            ..builtin()[0].clone()
        };
        assert_eq!(eighteen.to_usd_micros(1), Some(UsdMicros(1)));
        assert_eq!(
            eighteen.to_usd_micros(10u128.pow(18)),
            Some(UsdMicros(1_000_000))
        );
    }

    #[test]
    fn networks_by_either_name() {
        assert_eq!(chain_id("eip155:8453"), Some(8453));
        assert_eq!(chain_id("base-sepolia"), Some(84532));
        assert_eq!(chain_id("eip155:0"), None);
        assert_eq!(chain_id("eip155:x"), None);
        assert_eq!(chain_id("solana"), None);
        assert_eq!(chain_id("tempo:4217"), Some(4217));
        assert_eq!(chain_id("tempo:0"), None);
    }
}
