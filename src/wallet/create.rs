//! `tollgate wallet new`: a fresh EVM key written as an encrypted keystore (Web3 Secret
//! Storage, the JSON format of geth, ethers, foundry and MetaMask), and `[wallet]
//! evm_keystore` set in `tollgate.toml`.
//!
//! Owns: choosing where the keystore goes, refusing to overwrite a key or a configured
//! wallet, and editing the config file so that its comments and layout survive (toml_edit).
//! Does not: read the password (the caller does: a prompt without echo, or a file), or
//! print the key: only its address leaves this module.

use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;

/// File name of the keystore tollgate creates, in `keystore/` next to the config file.
pub const KEYSTORE_FILE: &str = "tollgate-evm.json";

/// Why no wallet was made. Never contains the key or the password.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The config already names a keystore.
    #[error(
        "{config} already names a keystore ({existing}); tollgate does not replace a wallet. \
         Remove [wallet] evm_keystore first if you really mean to stop using it"
    )]
    AlreadyConfigured { config: PathBuf, existing: String },
    /// A key file is already where the new one would go.
    #[error("{0} already exists; tollgate never overwrites a key file")]
    Exists(PathBuf),
    /// The password is empty.
    #[error("the password is empty; choose one (it encrypts the key)")]
    EmptyPassword,
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The config file is not valid TOML.
    #[error("{path} is not valid TOML: {reason}")]
    Toml { path: PathBuf, reason: String },
    /// A file could not be written.
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// The keystore could not be encrypted.
    #[error("cannot encrypt the keystore: {0}")]
    Encrypt(String),
}

/// A wallet just made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new key's address (the one to fund).
    pub address: Address,
    /// The keystore file.
    pub keystore: PathBuf,
    /// The config file that now names it.
    pub config: PathBuf,
    /// Whether the config file was created (it did not exist).
    pub config_created: bool,
}

/// Makes a new key, encrypts it under `password` into `keystore/tollgate-evm.json` next to
/// `config` and sets `[wallet] evm_keystore` (and `evm_keystore_password_file` when given) in
/// `config`, creating the file if it does not exist. Everything is checked before anything
/// is written.
pub fn create(
    config: &Path,
    password: &str,
    password_file: Option<&Path>,
) -> Result<Created, CreateError> {
    if password.is_empty() {
        return Err(CreateError::EmptyPassword);
    }
    let (mut document, config_created) = match std::fs::read_to_string(config) {
        Ok(text) => (
            text.parse::<toml_edit::DocumentMut>()
                .map_err(|e| CreateError::Toml {
                    path: config.to_owned(),
                    reason: e.to_string(),
                })?,
            false,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (toml_edit::DocumentMut::new(), true),
        Err(e) => {
            return Err(CreateError::Read {
                path: config.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    if let Some(existing) = document
        .get("wallet")
        .and_then(|w| w.get("evm_keystore"))
        .and_then(|k| k.as_str())
    {
        return Err(CreateError::AlreadyConfigured {
            config: config.to_owned(),
            existing: existing.to_owned(),
        });
    }
    let base = config.parent().unwrap_or(Path::new(""));
    let dir = base.join("keystore");
    let keystore = dir.join(KEYSTORE_FILE);
    if keystore.exists() {
        return Err(CreateError::Exists(keystore));
    }
    std::fs::create_dir_all(&dir).map_err(|e| CreateError::Write {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let key = PrivateKeySigner::random();
    let (signer, _uuid) = PrivateKeySigner::encrypt_keystore(
        &dir,
        &mut rand::thread_rng(),
        key.to_bytes(),
        password,
        Some(KEYSTORE_FILE),
    )
    .map_err(|e| CreateError::Encrypt(e.to_string()))?;
    restrict(&keystore);

    if !document.contains_key("wallet") {
        document["wallet"] = toml_edit::table();
    }
    // Relative to the config file's directory, as every path in it.
    document["wallet"]["evm_keystore"] = toml_edit::value(format!("keystore/{KEYSTORE_FILE}"));
    if let Some(file) = password_file {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
        document["wallet"]["evm_keystore_password_file"] =
            toml_edit::value(absolute.display().to_string());
    }
    std::fs::write(config, document.to_string()).map_err(|e| CreateError::Write {
        path: config.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Created {
        address: signer.address(),
        keystore,
        config: config.to_owned(),
        config_created,
    })
}

/// Owner-only permissions on the keystore (it is encrypted, but need not be readable by all).
fn restrict(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The first line of a password file (without its line ending).
pub fn read_password_file(path: &Path) -> Result<String, CreateError> {
    let text = std::fs::read_to_string(path).map_err(|e| CreateError::Read {
        path: path.to_owned(),
        reason: e.kind().to_string(),
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_comments_and_other_keys_of_the_config() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-wallet-test-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("tollgate.toml");
        std::fs::write(&config, "# my notes\npolicy = \"strict\"  # why\n").unwrap();
        let made = create(&config, "pw", None).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("# my notes"), "{text}");
        assert!(text.contains("policy = \"strict\"  # why"), "{text}");
        assert!(
            text.contains("evm_keystore = \"keystore/tollgate-evm.json\""),
            "{text}"
        );
        let opened = crate::wallet::EvmWallet::from_keystore(&made.keystore, "pw").unwrap();
        assert_eq!(opened.address(), made.address);
        let again = create(&config, "pw", None).unwrap_err();
        assert!(
            matches!(again, CreateError::AlreadyConfigured { .. }),
            "{again}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
