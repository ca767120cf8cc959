//! The Tempo wallet: what signs MPP `tempo` charge credentials (a TIP-20 transfer in a Tempo
//! transaction, which the seller broadcasts).
//!
//! The key is `TOLLGATE_TEMPO_KEY` if set, else the EVM key (`TOLLGATE_EVM_KEY` or the
//! keystore): a Tempo account is an EVM account. Two modes:
//!
//! * direct (default): the key's own address pays;
//! * keychain: `wallet.tempo.account` names a Tempo account that has authorized the key as an
//!   access key (Tempo's AccountKeychain, signature version 2); that account pays, within the
//!   limits it set on chain for the key. The owner's root key never reaches tollgate.
//!
//! Transactions are prepared (nonce, gas, fee token) against `wallet.tempo.rpc_url`; tollgate
//! pays on one chain only: `wallet.tempo.chain_id`, or the chain that RPC reports.

use std::fmt;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use mpp::client::TempoProvider;
use mpp::client::tempo::signing::{KeychainVersion, TempoSigningMode};

use super::{EvmWallet, WalletError};

/// Environment variable holding a Tempo key (hex), when it differs from the EVM key.
pub const TEMPO_KEY_ENV: &str = "TOLLGATE_TEMPO_KEY";

/// `[wallet.tempo]` in `tollgate.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TempoConfig {
    /// The Tempo JSON-RPC endpoint transactions are prepared against (http or https).
    pub rpc_url: String,
    /// The only chain tollgate pays on; default: the chain `rpc_url` reports.
    pub chain_id: Option<u64>,
    /// Keychain mode: the Tempo account the key is an access key of (`0x…`). Omit to pay
    /// from the key's own address.
    pub account: Option<String>,
    /// The most a charge's transaction fee may cost, in atomic units of the fee token (the
    /// charged stablecoin, 6 decimals): held against the budgets with the amount, as
    /// `lightning.max_fee_msat` is for L402. A transaction whose fee could exceed it is not
    /// sent. Default [`DEFAULT_MAX_FEE_ATOMIC`] (0.05 USD).
    #[serde(default = "default_max_fee_atomic")]
    pub max_fee_atomic: u64,
}

/// The default `wallet.tempo.max_fee_atomic`: 0.05 of a 6-decimal stablecoin. The bound of a
/// signed charge is `gas_limit × max_fee_per_gas`, and the mpp crate signs at 41 gwei with the
/// node's gas estimate: anvil's Tempo mode estimates ≈ 789,000 gas for a TIP-20 transfer, a
/// bound of 32,349 (0.032 USD), while the fee charged was 740.
pub const DEFAULT_MAX_FEE_ATOMIC: u64 = 50_000;

fn default_max_fee_atomic() -> u64 {
    DEFAULT_MAX_FEE_ATOMIC
}

impl TempoConfig {
    /// What is wrong with the table: `(key, reason)` pairs, for `tollgate check` and start-up.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.url().is_none() {
            problems.push((
                "rpc_url",
                format!(
                    "{:?} is not an http(s) URL with a host",
                    self.rpc_url.chars().take(80).collect::<String>()
                ),
            ));
        }
        if self.chain_id == Some(0) {
            problems.push(("chain_id", "must be above 0".to_owned()));
        }
        if let Some(text) = &self.account
            && self.account().is_none()
        {
            problems.push((
                "account",
                format!(
                    "{:?} is not an address (0x and 40 hex digits)",
                    text.chars().take(80).collect::<String>()
                ),
            ));
        }
        problems
    }

    fn url(&self) -> Option<url::Url> {
        url::Url::parse(&self.rpc_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
    }

    fn account(&self) -> Option<Address> {
        self.account.as_deref()?.parse().ok()
    }
}

/// A Tempo signer and where it pays from. Never shows the key.
#[derive(Clone)]
pub struct TempoWallet {
    provider: TempoProvider,
    payer: Address,
    chain_id: Option<u64>,
    keychain: bool,
    max_fee_atomic: u64,
    rpc_url: url::Url,
    /// Built on first use: loading the system's roots costs ~30 ms that start-up need not pay.
    http: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl fmt::Debug for TempoWallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TempoWallet({}{}, chain {:?})",
            self.payer,
            if self.keychain { ", access key" } else { "" },
            self.chain_id
        )
    }
}

impl TempoWallet {
    /// Opens the Tempo wallet if `[wallet.tempo]` is configured: the key from
    /// `TOLLGATE_TEMPO_KEY`, else the EVM wallet's. `Ok(None)` without `[wallet.tempo]`.
    pub fn open(
        config: Option<&TempoConfig>,
        evm: Option<&EvmWallet>,
    ) -> Result<Option<TempoWallet>, WalletError> {
        let Some(config) = config else {
            return Ok(None);
        };
        let signer = match std::env::var(TEMPO_KEY_ENV) {
            Ok(text) => EvmWallet::from_hex(&text)
                .map_err(|_| WalletError::BadTempoKey)?
                .signer
                .clone(),
            Err(_) => match evm {
                Some(wallet) => wallet.signer.clone(),
                None => return Err(WalletError::NoTempoKey),
            },
        };
        Self::new(config, signer).map(Some)
    }

    /// A Tempo wallet for this key under this configuration.
    pub fn new(config: &TempoConfig, signer: PrivateKeySigner) -> Result<TempoWallet, WalletError> {
        if let Some((key, reason)) = config.problems().into_iter().next() {
            return Err(WalletError::TempoConfig(format!(
                "wallet.tempo.{key} {reason}"
            )));
        }
        let url = config.url().ok_or_else(|| {
            WalletError::TempoConfig("wallet.tempo.rpc_url is not an http(s) URL".to_owned())
        })?;
        let account = config.account();
        crate::install_tls_provider();
        let own = signer.address();
        let mut provider = TempoProvider::new(signer, url.as_str())
            .map_err(|e| WalletError::TempoConfig(format!("wallet.tempo.rpc_url: {e}")))?;
        if let Some(id) = config.chain_id {
            provider = provider.with_expected_chain_id(id);
        }
        if let Some(wallet) = account {
            provider = provider.with_signing_mode(TempoSigningMode::Keychain {
                wallet,
                key_authorization: None,
                version: KeychainVersion::V2,
            });
        }
        Ok(TempoWallet {
            provider,
            payer: account.unwrap_or(own),
            chain_id: config.chain_id,
            keychain: account.is_some(),
            max_fee_atomic: config.max_fee_atomic,
            rpc_url: url,
            http: Default::default(),
        })
    }

    /// The account that pays (the keychain account, or the key's own address).
    pub fn payer(&self) -> Address {
        self.payer
    }

    /// The chain pinned by the configuration, if any.
    pub fn chain_id(&self) -> Option<u64> {
        self.chain_id
    }

    /// Whether the key signs as an access key of another account.
    pub fn is_keychain(&self) -> bool {
        self.keychain
    }

    /// The most a charge's transaction fee may cost (`wallet.tempo.max_fee_atomic`).
    pub fn max_fee_atomic(&self) -> u64 {
        self.max_fee_atomic
    }

    /// The receipt of a mined transaction (`eth_getTransactionReceipt` on `wallet.tempo.rpc_url`):
    /// `Ok(None)` while it is not mined. Errors name the failure, never the URL.
    pub async fn transaction_receipt(
        &self,
        hash: alloy::primitives::B256,
    ) -> Result<Option<serde_json::Value>, String> {
        let http = self
            .http
            .get_or_init(|| crate::rpc::client().unwrap_or_default());
        let result = crate::rpc::call(
            http,
            self.rpc_url.as_str(),
            "eth_getTransactionReceipt",
            serde_json::json!([hash]),
        )
        .await
        .map_err(|e| format!("the Tempo RPC: {e}"))?;
        Ok(Some(result).filter(|r| !r.is_null()))
    }

    /// The mpp provider that builds and signs credentials (for `pay::mpp`).
    pub(crate) fn provider(&self) -> &TempoProvider {
        &self.provider
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";

    fn config(account: Option<&str>) -> TempoConfig {
        TempoConfig {
            rpc_url: "http://127.0.0.1:8545".to_owned(),
            chain_id: Some(31337),
            account: account.map(str::to_owned),
            max_fee_atomic: DEFAULT_MAX_FEE_ATOMIC,
        }
    }

    fn signer() -> PrivateKeySigner {
        EvmWallet::from_hex(KEY).unwrap().signer
    }

    #[test]
    fn direct_mode_pays_from_the_keys_own_address() {
        let wallet = TempoWallet::new(&config(None), signer()).unwrap();
        assert_eq!(wallet.payer(), signer().address());
        assert!(!wallet.is_keychain());
        assert!(matches!(
            wallet.provider().signing_mode(),
            TempoSigningMode::Direct
        ));
        assert_eq!(wallet.provider().expected_chain_id(), Some(31337));
    }

    #[test]
    fn keychain_mode_pays_from_the_account_the_access_key_serves() {
        let account = "0x00000000000000000000000000000000000a11ce";
        let wallet = TempoWallet::new(&config(Some(account)), signer()).unwrap();
        assert_eq!(wallet.payer(), account.parse::<Address>().unwrap());
        assert!(wallet.is_keychain());
        match wallet.provider().signing_mode() {
            TempoSigningMode::Keychain {
                wallet, version, ..
            } => {
                assert_eq!(*wallet, account.parse::<Address>().unwrap());
                assert_eq!(*version, KeychainVersion::V2);
            }
            TempoSigningMode::Direct => panic!("expected keychain mode"),
        }
    }

    #[test]
    fn refuses_a_bad_rpc_url_or_account_by_name() {
        let mut bad = config(None);
        bad.rpc_url = "file:///etc/passwd".to_owned();
        let err = TempoWallet::new(&bad, signer()).unwrap_err().to_string();
        assert!(err.contains("wallet.tempo.rpc_url"), "{err}");
        let err = TempoWallet::new(&config(Some("0xnope")), signer())
            .unwrap_err()
            .to_string();
        assert!(err.contains("wallet.tempo.account"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let wallet = TempoWallet::new(&config(None), signer()).unwrap();
        let shown = format!("{wallet:?}");
        assert!(!shown.to_lowercase().contains(&KEY[2..12]), "{shown}");
        assert!(shown.contains(&signer().address().to_string()), "{shown}");
    }
}
