//! Lightning backends: the node or wallet that pays an L402 invoice for tollgate.
//!
//! One small trait, [`LightningBackend`] (`pay` an invoice under a fee cap and a timeout,
//! ask the `status` of a payment by its hash), and one file per backend: [`lnbits`] (an LNbits
//! wallet's admin key) and [`lnd`] (LND's REST API with a macaroon). The `[lightning]` table of
//! `tollgate.toml` ([`LightningConfig`]) chooses one; its secret comes from the environment.
//!
//! What a backend says is sorted into three outcomes, because they decide what the ledger
//! does: paid (with the preimage and the routing fee), refused (provably not paid: release
//! the reservation), or unknown (a timeout, a 5xx: the payment stays pending and is checked
//! again at the next start). Every call has a timeout and a cap on the answer's size; secrets
//! (the admin key, the macaroon, preimages) never appear in errors or `Debug`.

pub mod lnbits;
pub mod lnd;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;

mod network;

pub use network::{Network, hash_from_hex};

/// The largest answer read from a backend (LND streams several updates per payment).
pub const MAX_BACKEND_REPLY_BYTES: usize = 256 * 1024;
/// Time allowed to connect to the backend.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a status question.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(15);

/// Default environment variable for LNbits' admin key.
pub const LNBITS_KEY_ENV: &str = "TOLLGATE_LNBITS_ADMIN_KEY";
/// Default environment variable for LND's macaroon (hex).
pub const LND_MACAROON_ENV: &str = "TOLLGATE_LND_MACAROON";

/// A payment that went through: the preimage (a bearer secret) and the routing fee paid.
#[derive(Clone, PartialEq, Eq)]
pub struct Paid {
    pub preimage: [u8; 32],
    pub fee_msat: u64,
}

impl fmt::Debug for Paid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Paid {{ preimage: [redacted], fee_msat: {} }}",
            self.fee_msat
        )
    }
}

/// What a backend knows of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentStatus {
    Succeeded(Paid),
    /// Failed for good, or never started: nothing was (or will be) paid.
    Failed(String),
    /// Still in flight: the outcome is not known yet.
    InFlight,
}

/// Why a backend call did not end in a payment.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend refused before paying: nothing was paid.
    #[error("the Lightning backend refused the payment: {0}")]
    Refused(String),
    /// The outcome is not known (timeout, lost connection, server error): the payment may
    /// still happen.
    #[error("the Lightning backend's answer is unknown: {0}")]
    Unknown(String),
}

/// A Lightning node or wallet that can pay invoices.
pub trait LightningBackend: Send + Sync {
    /// `lnbits` or `lnd`, for receipts and logs.
    fn name(&self) -> &'static str;
    /// Pays `invoice`, spending at most `max_fee_msat` on routing, waiting at most `timeout`.
    fn pay<'a>(
        &'a self,
        invoice: &'a str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Paid, BackendError>>;
    /// What became of the payment of the invoice with this payment hash.
    fn status<'a>(
        &'a self,
        payment_hash: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<PaymentStatus, BackendError>>;
}

/// Which backend `[lightning]` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Lnbits,
    Lnd,
}

/// The `[lightning]` table of `tollgate.toml`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightningConfig {
    /// `lnbits` or `lnd`.
    pub backend: BackendKind,
    /// The backend's base URL (`https://lnbits.example`, `https://127.0.0.1:8080`).
    pub url: String,
    /// The network invoices must be for: `bitcoin`, `testnet`, `signet`, `regtest`, `simnet`.
    pub network: String,
    /// The most routing fee one payment may cost, in millisatoshis; charged to the budget.
    #[serde(default = "default_max_fee_msat")]
    pub max_fee_msat: u64,
    /// How long one payment may take, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The environment variable holding the secret: LNbits' admin key (default
    /// `TOLLGATE_LNBITS_ADMIN_KEY`) or LND's macaroon in hex (default `TOLLGATE_LND_MACAROON`).
    pub key_env: Option<String>,
    /// LND's `tls.cert` (PEM), when it is self-signed. Relative to the config file.
    pub tls_cert: Option<PathBuf>,
}

fn default_max_fee_msat() -> u64 {
    10_000
}
fn default_timeout_secs() -> u64 {
    60
}

impl LightningConfig {
    /// The environment variable holding this backend's secret.
    pub fn key_env(&self) -> &str {
        match (&self.key_env, self.backend) {
            (Some(name), _) => name,
            (None, BackendKind::Lnbits) => LNBITS_KEY_ENV,
            (None, BackendKind::Lnd) => LND_MACAROON_ENV,
        }
    }

    /// What is wrong with the table: `(key, reason)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => problems.push(("url", "must be an http(s) URL with a host".to_owned())),
        }
        if let Err(e) = Network::from_str(&self.network) {
            problems.push(("network", e));
        }
        if self.timeout_secs == 0 || self.timeout_secs > 3600 {
            problems.push(("timeout_secs", "must be between 1 and 3600".to_owned()));
        }
        if self
            .key_env
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.contains('='))
        {
            problems.push((
                "key_env",
                "must be an environment variable's name".to_owned(),
            ));
        }
        if self.tls_cert.is_some() && self.backend != BackendKind::Lnd {
            problems.push((
                "tls_cert",
                "only the lnd backend takes a certificate".to_owned(),
            ));
        }
        problems
    }
}

/// The Lightning wallet in force: the backend, the network it pays on, and the limits.
#[derive(Clone)]
pub struct Lightning {
    pub backend: Arc<dyn LightningBackend>,
    pub network: Network,
    pub max_fee_msat: u64,
    pub timeout: Duration,
}

impl fmt::Debug for Lightning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Lightning({} on {}, max fee {} msat)",
            self.backend.name(),
            self.network,
            self.max_fee_msat
        )
    }
}

/// Why the Lightning backend could not be set up. Never contains the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SetupError {
    #[error("lightning: the environment variable {0} (the backend's secret) is not set")]
    NoSecret(String),
    #[error("lightning: {0}")]
    Invalid(String),
}

impl Lightning {
    /// Opens the configured backend, reading its secret from the environment.
    pub fn open(config: &LightningConfig) -> Result<Lightning, SetupError> {
        let env = config.key_env();
        let secret = std::env::var(env)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SetupError::NoSecret(env.to_owned()))?;
        let network = Network::from_str(&config.network).map_err(SetupError::Invalid)?;
        let backend: Arc<dyn LightningBackend> = match config.backend {
            BackendKind::Lnbits => Arc::new(lnbits::Lnbits::new(&config.url, &secret)?),
            BackendKind::Lnd => {
                let cert = match &config.tls_cert {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        SetupError::Invalid(format!(
                            "cannot read tls_cert {}: {}",
                            path.display(),
                            e.kind()
                        ))
                    })?),
                    None => None,
                };
                Arc::new(lnd::LndRest::new(&config.url, &secret, cert.as_deref())?)
            }
        };
        Ok(Lightning {
            backend,
            network,
            max_fee_msat: config.max_fee_msat,
            timeout: Duration::from_secs(config.timeout_secs),
        })
    }
}

/// An HTTP client for a backend: connect timeout, no proxy from the environment (the backend
/// is named exactly), no redirects (a secret header must not follow one).
pub(crate) fn client(root_cert_pem: Option<&[u8]>) -> Result<reqwest::Client, SetupError> {
    crate::install_tls_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = root_cert_pem {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|_| SetupError::Invalid("tls_cert is not a PEM certificate".to_owned()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| SetupError::Invalid(format!("cannot build the HTTP client: {e}")))
}

/// The base URL without a trailing slash, checked.
pub(crate) fn base_url(url: &str) -> Result<String, SetupError> {
    let parsed = url::Url::parse(url)
        .map_err(|_| SetupError::Invalid(format!("url {url:?} is not a URL")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(SetupError::Invalid("url must be http or https".to_owned()));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Reads a response body up to [`MAX_BACKEND_REPLY_BYTES`].
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BACKEND_REPLY_BYTES as u64)
    {
        return Err(format!(
            "the answer is larger than {MAX_BACKEND_REPLY_BYTES} bytes"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BACKEND_REPLY_BYTES {
            return Err(format!(
                "the answer is larger than {MAX_BACKEND_REPLY_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error in words, without the URL (which may carry a path the owner considers
/// private) and never with headers.
pub(crate) fn transport(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    kind.to_owned()
}

/// A short, printable excerpt of a backend's answer for messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    crate::upstream::excerpt(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> LightningConfig {
        basic_toml::from_str(text).unwrap()
    }

    #[test]
    fn a_table_names_each_problem() {
        let c = config(
            "backend = \"lnbits\"\nurl = \"ftp://x\"\nnetwork = \"litecoin\"\ntimeout_secs = 0\n\
             tls_cert = \"x.pem\"\n",
        );
        let keys: Vec<&str> = c.problems().iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["url", "network", "timeout_secs", "tls_cert"]);
    }

    #[test]
    fn defaults_and_secret_names() {
        let c =
            config("backend = \"lnd\"\nurl = \"https://127.0.0.1:8080\"\nnetwork = \"regtest\"\n");
        assert!(c.problems().is_empty());
        assert_eq!(c.max_fee_msat, 10_000);
        assert_eq!(c.key_env(), LND_MACAROON_ENV);
    }

    #[test]
    fn a_missing_secret_is_named_not_shown() {
        let c = config(
            "backend = \"lnbits\"\nurl = \"http://127.0.0.1:1\"\nnetwork = \"bitcoin\"\n\
             key_env = \"TOLLGATE_TEST_UNSET_LNBITS_KEY\"\n",
        );
        let err = Lightning::open(&c).unwrap_err().to_string();
        assert!(err.contains("TOLLGATE_TEST_UNSET_LNBITS_KEY"), "{err}");
    }

    #[test]
    fn paid_debug_hides_the_preimage() {
        let paid = Paid {
            preimage: [0xab; 32],
            fee_msat: 3,
        };
        assert!(!format!("{paid:?}").contains("abab"));
    }
}
