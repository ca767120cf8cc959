//! The delegated wallet: keys the owner hands tollgate to pay with.
//!
//! The EVM key comes from the environment (`TOLLGATE_EVM_KEY`, hex) or from an encrypted JSON
//! keystore (password from the environment or a file). A key is never printed: not by `Debug`,
//! not in errors (which name the source, never the value), not in logs.

pub mod balance;
pub mod create;
pub mod tempo;

use std::fmt;
use std::path::{Path, PathBuf};

use alloy::primitives::{Address, B256};
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;

/// Environment variable holding the EVM private key (hex, optional `0x`).
pub const EVM_KEY_ENV: &str = "TOLLGATE_EVM_KEY";
/// Environment variable holding the keystore password, when the config names a keystore.
pub const KEYSTORE_PASSWORD_ENV: &str = "TOLLGATE_EVM_KEYSTORE_PASSWORD";

/// Where the EVM key comes from (the `[wallet]` table of `tollgate.toml`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletConfig {
    /// An encrypted JSON keystore (Web3 Secret Storage) holding the EVM key.
    pub evm_keystore: Option<PathBuf>,
    /// A file whose first line is the keystore's password (else `TOLLGATE_EVM_KEYSTORE_PASSWORD`).
    pub evm_keystore_password_file: Option<PathBuf>,
    /// `[wallet.tempo]`: paying MPP `tempo` charges (see [`tempo`]).
    pub tempo: Option<tempo::TempoConfig>,
}

/// Why the wallet could not be opened. Never contains key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalletError {
    #[error("{EVM_KEY_ENV} is set but is not a 32-byte hex private key")]
    BadEnvKey,
    #[error("cannot open the keystore {path}: {reason}")]
    Keystore { path: PathBuf, reason: String },
    #[error(
        "the keystore {0} needs a password: set {KEYSTORE_PASSWORD_ENV} or \
         wallet.evm_keystore_password_file"
    )]
    NoPassword(PathBuf),
    #[error("cannot read the keystore password file {path}: {reason}")]
    PasswordFile { path: PathBuf, reason: String },
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("{} is set but is not a 32-byte hex private key", tempo::TEMPO_KEY_ENV)]
    BadTempoKey,
    #[error(
        "[wallet.tempo] is configured but there is no key to sign with: set {} or the EVM key \
         ({EVM_KEY_ENV} or wallet.evm_keystore)",
        tempo::TEMPO_KEY_ENV
    )]
    NoTempoKey,
    #[error("{0}")]
    TempoConfig(String),
}

/// A delegated EVM key.
pub struct EvmWallet {
    signer: PrivateKeySigner,
}

impl fmt::Debug for EvmWallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EvmWallet({})", self.address())
    }
}

impl EvmWallet {
    /// Opens the key: the keystore if the config names one, else `TOLLGATE_EVM_KEY`. `Ok(None)`
    /// when neither is configured (tollgate then pays nothing).
    pub fn open(config: &WalletConfig) -> Result<Option<EvmWallet>, WalletError> {
        if let Some(path) = &config.evm_keystore {
            let password = match &config.evm_keystore_password_file {
                Some(file) => std::fs::read_to_string(file)
                    .map_err(|e| WalletError::PasswordFile {
                        path: file.clone(),
                        reason: e.kind().to_string(),
                    })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                None => std::env::var(KEYSTORE_PASSWORD_ENV)
                    .map_err(|_| WalletError::NoPassword(path.clone()))?,
            };
            return Self::from_keystore(path, &password).map(Some);
        }
        match std::env::var(EVM_KEY_ENV) {
            Ok(text) => Self::from_hex(&text).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// A key from hex text (with or without `0x`). The error never repeats the text.
    pub fn from_hex(text: &str) -> Result<EvmWallet, WalletError> {
        let text = text.trim();
        let hex = text.strip_prefix("0x").unwrap_or(text);
        if hex.len() != 64 {
            return Err(WalletError::BadEnvKey);
        }
        let bytes = hex::decode(hex).map_err(|_| WalletError::BadEnvKey)?;
        let signer = PrivateKeySigner::from_slice(&bytes).map_err(|_| WalletError::BadEnvKey)?;
        Ok(EvmWallet { signer })
    }

    /// A key from an encrypted JSON keystore.
    pub fn from_keystore(path: &Path, password: &str) -> Result<EvmWallet, WalletError> {
        // Errors from the keystore crate describe the failure (wrong password, bad JSON),
        // never the key.
        let signer = PrivateKeySigner::decrypt_keystore(path, password).map_err(|e| {
            WalletError::Keystore {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(EvmWallet { signer })
    }

    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// Signs a 32-byte digest (an EIP-712 signing hash); 65 bytes `r ‖ s ‖ v` with v = 27/28.
    pub fn sign_digest(&self, digest: &B256) -> Result<[u8; 65], WalletError> {
        self.signer
            .sign_hash_sync(digest)
            .map(|sig| sig.as_bytes())
            .map_err(|e| WalletError::Signing(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";

    #[test]
    fn reads_a_hex_key_and_never_shows_it() {
        let wallet = EvmWallet::from_hex(KEY).unwrap();
        let shown = format!("{wallet:?}");
        assert!(shown.contains(&format!("{}", wallet.address())));
        assert!(!shown.to_lowercase().contains(&KEY[2..12]), "{shown}");
    }

    #[test]
    fn a_bad_key_error_does_not_repeat_it() {
        let bad = format!("{}zz", &KEY[..64]);
        let err = EvmWallet::from_hex(&bad).unwrap_err().to_string();
        assert!(!err.contains(&KEY[2..12]), "{err}");
    }
}
