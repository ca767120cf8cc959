//! Credentials: who is calling, and what they may spend.
//!
//! A credential is a macaroon (libmacaroons V2, [`super::macaroon`]) minted under the root key
//! in the state directory, carrying caveats in tollgate's language ([`super::caveat`]).
//! Verifying one yields its [`Restrictions`] and, for every `budget_usd_micros` caveat, a
//! ledger key derived from the HMAC chain value right after that caveat: unforgeable (it
//! needs the chain value), inherited by every descendant (they share the prefix), and distinct
//! for siblings. The chain values themselves are secrets (each can mint its prefix) and are
//! never stored or shown; only hashes of them are.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::caveat::{InvalidCaveat, Restrictions};
use super::macaroon::{DerivedKey, FormatError, Macaroon};
use crate::money::UsdMicros;

/// The root key's file name in the state directory.
pub const ROOT_KEY_FILE: &str = "root.key";
/// Location written into minted credentials.
pub const LOCATION: &str = "tollgate";

/// Why a credential is refused. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the token is not a credential: {0}")]
    Format(#[from] FormatError),
    #[error(
        "the token's signature does not verify: it was changed, or minted under another root key"
    )]
    Signature,
    #[error("the token carries an invalid caveat: {0}")]
    Caveat(#[from] InvalidCaveat),
    #[error("the token expired at {0} (unix seconds)")]
    Expired(u64),
    #[error("the token has been revoked")]
    Revoked,
    #[error("no root key at {0}: run `tollgate init` first")]
    NoRootKey(PathBuf),
    #[error("cannot use the root key file {path}: {reason}")]
    RootKeyFile { path: PathBuf, reason: String },
}

/// The root key: 32 random bytes, mode 0600 (and the signing key derived from it, kept for
/// verifying a credential on every call).
pub struct RootKey([u8; 32], DerivedKey);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(redacted)")
    }
}

impl RootKey {
    /// Creates the root key file if it does not exist; `Ok(true)` if it was created.
    pub fn create(state_dir: &Path) -> Result<bool, CredentialError> {
        let path = state_dir.join(ROOT_KEY_FILE);
        let io = |e: std::io::Error| CredentialError::RootKeyFile {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(mut file) => {
                file.write_all(&rand::random::<[u8; 32]>()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    pub fn load(state_dir: &Path) -> Result<RootKey, CredentialError> {
        let path = state_dir.join(ROOT_KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CredentialError::NoRootKey(path));
            }
            Err(e) => {
                return Err(CredentialError::RootKeyFile {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let key: [u8; 32] = bytes.try_into().map_err(|_| CredentialError::RootKeyFile {
            path: path.clone(),
            reason: "not 32 bytes".to_owned(),
        })?;
        Ok(RootKey(key, DerivedKey::new(&key)))
    }

    /// A name for this key that is safe to show and to store (a labelled SHA-256 of it; the
    /// key cannot be recovered from it): every tollgate sharing a ledger must have the same
    /// one, or credentials minted on one would not verify on another.
    pub fn fingerprint(&self) -> String {
        derived_id("rootkey:", b"tollgate/root-key-fingerprint\0", &self.0)
    }

    /// Mints a root credential with these caveats.
    pub fn mint(&self, caveats: &[String]) -> Result<Macaroon, CredentialError> {
        self.mint_with_id(&hex::encode(rand::random::<[u8; 16]>()), caveats)
    }

    /// The credential of a policy profile for callers that present none: always the same
    /// identifier, so every process and every restart shares the profile's budget.
    pub fn profile_credential(
        &self,
        profile: &str,
        caveats: &[String],
    ) -> Result<Macaroon, CredentialError> {
        self.mint_with_id(&format!("profile:{profile}"), caveats)
    }

    fn mint_with_id(
        &self,
        identifier: &str,
        caveats: &[String],
    ) -> Result<Macaroon, CredentialError> {
        let mut token = Macaroon::mint(&self.0, identifier.as_bytes(), Some(LOCATION))?;
        for caveat in caveats {
            token.add_caveat(caveat.as_bytes())?;
        }
        Ok(token)
    }
}

/// One budget caveat of a verified credential: its ledger key, limit and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// `budget:<hex>`, derived from the HMAC chain value right after the caveat.
    pub key: String,
    pub limit: UsdMicros,
    /// The nearest `label` caveat before it.
    pub label: Option<String>,
}

/// A verified credential.
#[derive(Debug)]
pub struct Credential {
    pub token: Macaroon,
    pub restrictions: Restrictions,
    /// Ledger keys of the budget caveats, outermost (the root's) first, with their limits.
    pub budgets: Vec<Budget>,
    /// Revocation ids of this credential and every ancestor (revoking any stops it).
    pub lineage: Vec<String>,
}

impl Credential {
    /// Verifies `token` (base64url) under the root key at `now`.
    pub fn verify(text: &str, root: &RootKey, now: u64) -> Result<Credential, CredentialError> {
        let token = Macaroon::from_base64url(text.trim())?;
        let chain = token
            .verify_with(&root.1)
            .map_err(|_| CredentialError::Signature)?;
        let restrictions = Restrictions::parse(token.caveats())?;
        if restrictions.is_expired_at(now) {
            return Err(CredentialError::Expired(
                restrictions.expires_before_unix_secs().unwrap_or(0),
            ));
        }
        let budgets = restrictions
            .budgets()
            .iter()
            .filter_map(|b| {
                let value = chain.get(b.position)?;
                Some(Budget {
                    key: derived_id("budget:", b"tollgate/budget\0", value.as_bytes()),
                    limit: b.limit,
                    label: b.label.clone(),
                })
            })
            .collect();
        // The identifier names the whole family; each chain value names one prefix.
        let mut lineage = Vec::with_capacity(chain.len() + 1);
        lineage.push(derived_id(
            "token:",
            b"tollgate/token\0",
            token.identifier(),
        ));
        lineage.extend(
            chain
                .iter()
                .map(|v| derived_id("token:", b"tollgate/prefix\0", v.as_bytes())),
        );
        Ok(Credential {
            token,
            restrictions,
            budgets,
            lineage,
        })
    }

    /// The revocation id of this exact credential (the last of its lineage).
    pub fn id(&self) -> &str {
        self.lineage.last().map(String::as_str).unwrap_or("")
    }
}

/// `prefix` + hex(SHA-256(`label` ‖ `value`)), written once into one allocation: this runs for
/// every chain value on every call, so it is kept cheap.
fn derived_id(prefix: &str, label: &[u8], value: &[u8]) -> String {
    let digest = Sha256::new_with_prefix(label)
        .chain_update(value)
        .finalize();
    let mut hex = [0u8; 64];
    // 32 bytes always fit in 64 hex digits.
    let _ = hex::encode_to_slice(digest, &mut hex);
    let mut id = String::with_capacity(prefix.len() + hex.len());
    id.push_str(prefix);
    id.push_str(std::str::from_utf8(&hex).unwrap_or_default());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_the_prefix_and_the_hex_sha256_of_label_and_value() {
        // Ledger keys and revocation ids persist: their form must never change.
        let expected = format!(
            "budget:{}",
            hex::encode(Sha256::digest(b"tollgate/budget\0abc"))
        );
        assert_eq!(
            derived_id("budget:", b"tollgate/budget\0", b"abc"),
            expected
        );
    }

    fn root() -> (tempfile::TempDir, RootKey) {
        let dir = tempfile::tempdir().unwrap();
        assert!(RootKey::create(dir.path()).unwrap());
        assert!(!RootKey::create(dir.path()).unwrap(), "never overwritten");
        let key = RootKey::load(dir.path()).unwrap();
        (dir, key)
    }

    #[cfg(unix)]
    #[test]
    fn the_fingerprint_names_the_key_without_showing_it() {
        let (_a, one) = root();
        let (_b, two) = root();
        assert_eq!(one.fingerprint(), one.fingerprint());
        assert_ne!(one.fingerprint(), two.fingerprint());
        assert!(one.fingerprint().starts_with("rootkey:"));
        assert!(!one.fingerprint().contains(&hex::encode(one.0)));
    }

    #[test]
    fn the_root_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (dir, _) = root();
        let mode = std::fs::metadata(dir.path().join(ROOT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn budget_keys_are_inherited_by_children_and_differ_for_siblings() {
        let (_dir, root) = root();
        let parent = root
            .mint(&["budget_usd_micros <= 1000000".to_owned()])
            .unwrap();
        let mut a = parent.clone();
        a.add_caveat(b"budget_usd_micros <= 100000").unwrap();
        let mut b = parent.clone();
        b.add_caveat(b"budget_usd_micros <= 100000").unwrap();
        b.add_caveat(b"tools = search").unwrap();
        let p = Credential::verify(&parent.to_base64url(), &root, 0).unwrap();
        let a = Credential::verify(&a.to_base64url(), &root, 0).unwrap();
        let b = Credential::verify(&b.to_base64url(), &root, 0).unwrap();
        assert_eq!(p.budgets.len(), 1);
        assert_eq!(
            a.budgets[0], p.budgets[0],
            "the child counts against the parent's budget"
        );
        assert_eq!(a.budgets.len(), 2);
        // Same caveat text, same position: siblings share it only if their prefixes are equal.
        assert_eq!(a.budgets[1], b.budgets[1]);
        let mut c = parent.clone();
        c.add_caveat(b"tools = search").unwrap();
        c.add_caveat(b"budget_usd_micros <= 100000").unwrap();
        let c = Credential::verify(&c.to_base64url(), &root, 0).unwrap();
        assert_ne!(
            c.budgets[1].key, a.budgets[1].key,
            "a different prefix is a different budget"
        );
        assert!(
            a.lineage.starts_with(&p.lineage),
            "a child's lineage includes its parent"
        );
    }

    #[test]
    fn refuses_expired_tampered_and_foreign_tokens() {
        let (_dir, root) = root();
        let token = root.mint(&["expires < 1000".to_owned()]).unwrap();
        assert!(matches!(
            Credential::verify(&token.to_base64url(), &root, 2000),
            Err(CredentialError::Expired(1000))
        ));
        let (_other_dir, other) = self::root();
        assert!(matches!(
            Credential::verify(&token.to_base64url(), &other, 0),
            Err(CredentialError::Signature)
        ));
        assert!(matches!(
            Credential::verify("!!", &root, 0),
            Err(CredentialError::Format(_))
        ));
        let unknown = root.mint(&["colour = red".to_owned()]).unwrap();
        assert!(matches!(
            Credential::verify(&unknown.to_base64url(), &root, 0),
            Err(CredentialError::Caveat(_))
        ));
    }
}
