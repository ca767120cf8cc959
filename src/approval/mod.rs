//! Approvals: a payment above the owner's threshold is paid only after a person says yes.
//!
//! This module owns what is protocol- and MCP-neutral about an approval:
//!
//! * the rule ([`required`]): the lowest of the policy's `approve_above`, the caller's
//!   `approve_above_usd_micros` caveats, and the tool's `approval = "always"`;
//! * the facts a person is shown and an approval is bound to ([`Facts`]): tool, a hash of the
//!   arguments, protocol, network, asset, payee, amount; an approval covers a later offer only
//!   if all of them match and the amount is not higher ([`Facts::covers`]);
//! * what a receipt records about the decision ([`ApprovalRecord`]);
//! * the per-state-directory secret ([`Secret`], file `approval.key`, mode 0600) that seals
//!   MCP `requestState` values and derives the approval page's CSRF tokens;
//! * the local approval page ([`page`]).
//!
//! Approvals themselves live in the ledger (`approvals` table), because the person may decide
//! in another process (`tollgate approve`) than the one that asked. How a person is asked
//! through MCP (elicitation on either protocol revision) is in `server/approval.rs`.
//!
//! Invariant: nothing an agent can send changes an approval's state. No MCP tool approves;
//! a retried call can only *use* an approval a person gave, once, for the same facts.

pub mod page;

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::money::UsdMicros;

/// The secret's file name in the state directory.
pub const SECRET_FILE: &str = "approval.key";

/// The longest a host is given to answer an elicitation (the MCP call is held open meanwhile).
pub const MAX_ELICITATION_SECS: u64 = 45;

/// Why a payment needs a person: `None` when the policy approves it on its own.
pub fn required(
    amount: UsdMicros,
    policy_above: Option<UsdMicros>,
    caveat_above: Option<UsdMicros>,
    tool: &str,
    tool_always: bool,
) -> Option<String> {
    if tool_always {
        return Some(format!("the tool `{tool}` is marked approval = \"always\""));
    }
    let lowest = [
        policy_above.map(|a| (a, "the policy's approve_above")),
        caveat_above.map(|a| (a, "your credential's approve_above_usd_micros")),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(a, _)| *a)?;
    (amount > lowest.0).then(|| format!("{amount} is above {} {}", lowest.1, lowest.0))
}

/// A stable hash of a call's arguments (objects serialize with sorted keys).
pub fn arguments_hash(arguments: &Map<String, Value>) -> String {
    hex::encode(Sha256::digest(
        crate::canonical::canonical_json(&Value::Object(arguments.clone()))
            .to_string()
            .as_bytes(),
    ))
}

/// What a person is asked to approve, and what an approval is bound to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts {
    pub tool: String,
    /// [`arguments_hash`] of the call's arguments.
    pub arguments_hash: String,
    /// The arguments themselves, shown to the person (never used for binding).
    pub arguments: Map<String, Value>,
    pub protocol: String,
    pub network: String,
    pub asset: String,
    pub asset_symbol: String,
    /// Atomic units of the asset, decimal.
    pub amount_atomic: String,
    pub amount_usd_micros: u64,
    /// The amount in the asset for people, e.g. `0.001 USDC (1000 atomic units)`.
    pub amount_in_asset: String,
    pub payee: String,
    /// The least any cap that applies would have left after this payment, if any cap applies.
    pub budget_left_usd_micros: Option<u64>,
    /// Why a person is asked.
    pub reason: String,
}

impl Facts {
    /// One line a person can decide on.
    pub fn summary(&self) -> String {
        let left = match self.budget_left_usd_micros {
            Some(left) => format!("; budget left after paying: {}", UsdMicros(left)),
            None => String::new(),
        };
        format!(
            "Pay {} ({}) for `{}` to {} ({} on {}){left}. Why you are asked: {}.",
            UsdMicros(self.amount_usd_micros),
            self.amount_in_asset,
            self.tool,
            self.payee,
            self.protocol,
            self.network,
            self.reason
        )
    }

    /// Whether an approval given for `self` covers paying `offer`: the same tool, arguments,
    /// protocol, network, asset and payee, and no more in either the asset or USD.
    pub fn covers(&self, offer: &Facts) -> Result<(), Mismatch> {
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let differs = [
            (self.tool == offer.tool, "tool"),
            (self.arguments_hash == offer.arguments_hash, "arguments"),
            (same(&self.protocol, &offer.protocol), "protocol"),
            (same(&self.network, &offer.network), "network"),
            (same(&self.asset, &offer.asset), "asset"),
            (same(&self.payee, &offer.payee), "payee"),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| what)
        .collect::<Vec<_>>();
        if !differs.is_empty() {
            return Err(Mismatch::Different(differs.join(", ")));
        }
        let atomic = |s: &str| s.parse::<u128>().unwrap_or(u128::MAX);
        if offer.amount_usd_micros > self.amount_usd_micros
            || atomic(&offer.amount_atomic) > atomic(&self.amount_atomic)
        {
            return Err(Mismatch::Higher {
                approved: UsdMicros(self.amount_usd_micros),
                asked: UsdMicros(offer.amount_usd_micros),
            });
        }
        Ok(())
    }
}

/// Why an approval does not cover an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// It was given for another call: these facts differ.
    Different(String),
    /// The same call, but the seller now asks for more than was approved.
    Higher {
        approved: UsdMicros,
        asked: UsdMicros,
    },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Different(what) => {
                write!(f, "it was given for a different call (differs in: {what})")
            }
            Mismatch::Higher { approved, asked } => write!(
                f,
                "it covers at most {approved}, and the seller now asks for {asked}"
            ),
        }
    }
}

/// The amount in the asset for people: `0.001 USDC (1000 atomic units)`.
pub fn amount_in_asset(atomic: u128, decimals: u8, symbol: &str) -> String {
    let atomic = atomic.to_string();
    format!(
        "{} {symbol} ({atomic} atomic units)",
        decimal_units(&atomic, decimals)
    )
}

/// `atomic` scaled down by `decimals`, exactly (`"1000"`, 6 → `"0.001"`).
fn decimal_units(atomic: &str, decimals: u8) -> String {
    let d = usize::from(decimals);
    if d == 0 || !atomic.bytes().all(|b| b.is_ascii_digit()) {
        return atomic.to_owned();
    }
    let padded = format!("{atomic:0>width$}", width = d + 1);
    let (whole, frac) = padded.split_at(padded.len() - d);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        whole.to_owned()
    } else {
        format!("{whole}.{frac}")
    }
}

/// How a payment was approved, as its receipt records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct ApprovalRecord {
    /// `"policy"` (below every threshold) or `"person"`.
    pub approved_by: String,
    /// `"policy"`, `"elicitation"` (the MCP host asked its user), `"cli"` (`tollgate
    /// approve`) or `"page"` (the local approval page).
    pub channel: String,
    /// The approval in the ledger (none for the policy).
    pub approval_id: Option<String>,
    /// RFC 3339, UTC.
    pub decided_at: String,
    /// Why a person was asked, or the thresholds the payment stayed under.
    pub reason: String,
}

impl ApprovalRecord {
    pub fn by_policy(amount: UsdMicros, now: u64) -> ApprovalRecord {
        ApprovalRecord {
            approved_by: "policy".to_owned(),
            channel: "policy".to_owned(),
            approval_id: None,
            decided_at: crate::money::rfc3339(now),
            reason: format!("{amount} is not above any approval threshold"),
        }
    }
}

/// How this process asks for approvals (from `[approval]` in `tollgate.toml`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seals `requestState` and derives CSRF tokens; without it, no person can be asked and
    /// a payment that needs one is refused.
    pub secret: Option<Secret>,
    /// How long a host's user has to answer an elicitation (at most 45 s).
    pub elicitation_timeout_secs: u64,
    /// How long an out-of-band approval stays open.
    pub expires_after_secs: u64,
    /// Where this process serves the approval page, if it does.
    pub page: Option<std::net::SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            secret: None,
            elicitation_timeout_secs: MAX_ELICITATION_SECS,
            expires_after_secs: 600,
            page: None,
        }
    }
}

/// A fresh approval id: 128 random bits, hex (unguessable; never sequential).
pub fn new_id() -> String {
    format!("ap_{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// Whether `id` looks like an approval id (checked before it reaches SQL or a URL).
pub fn is_id(id: &str) -> bool {
    id.len() == 35
        && id.starts_with("ap_")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The per-state-directory secret behind sealed `requestState`s and CSRF tokens.
/// Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a sealed value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("it is not a value tollgate sealed (malformed)")]
    Malformed,
    #[error("its seal does not verify (forged or altered)")]
    Forged,
}

type HmacSha256 = Hmac<Sha256>;

impl Secret {
    /// Loads `state_dir/approval.key`, creating it (32 random bytes, mode 0600) if missing.
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<Secret> {
        let path = state_dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
                .map(Secret)
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is not 32 bytes long", path.display()),
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(state_dir)?;
                let bytes: [u8; 32] = rand::random();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                match options.open(&path) {
                    Ok(mut file) => {
                        file.write_all(&bytes)?;
                        file.sync_all()?;
                        Ok(Secret(bytes))
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Secret::load_or_create(state_dir)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, domain: &[u8], payload: &[u8]) -> HmacSha256 {
        // A 32-byte key is always accepted by HMAC.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(domain);
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    /// `base64url(payload).base64url(HMAC(domain, payload))`.
    pub fn seal(&self, domain: &str, payload: &[u8]) -> String {
        let tag = self.mac(domain.as_bytes(), payload).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The payload of a value [`Secret::seal`] made with the same domain; the tag is compared in
    /// constant time.
    pub fn open(&self, domain: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        if sealed.len() > 64 * 1024 {
            return Err(SealError::Malformed);
        }
        let (payload, tag) = sealed.split_once('.').ok_or(SealError::Malformed)?;
        let payload = B64.decode(payload).map_err(|_| SealError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| SealError::Malformed)?;
        self.mac(domain.as_bytes(), &payload)
            .verify_slice(&tag)
            .map_err(|_| SealError::Forged)?;
        Ok(payload)
    }

    /// The approval page's CSRF token for one approval.
    pub fn csrf_token(&self, approval_id: &str) -> String {
        B64.encode(
            self.mac(b"tollgate/approval-page/csrf", approval_id.as_bytes())
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `token` is [`Secret::csrf_token`] of `approval_id` (constant time).
    pub fn csrf_ok(&self, approval_id: &str, token: &str) -> bool {
        let Ok(tag) = B64.decode(token) else {
            return false;
        };
        self.mac(b"tollgate/approval-page/csrf", approval_id.as_bytes())
            .verify_slice(&tag)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            tool: "weather".into(),
            arguments_hash: "h".into(),
            arguments: Map::new(),
            protocol: "x402".into(),
            network: "eip155:8453".into(),
            asset: "0xAbC".into(),
            asset_symbol: "USDC".into(),
            amount_atomic: "1000".into(),
            amount_usd_micros: 1000,
            amount_in_asset: "0.001 USDC".into(),
            payee: "0xPaY".into(),
            budget_left_usd_micros: None,
            reason: "r".into(),
        }
    }

    #[test]
    fn the_lowest_threshold_decides_and_equal_amounts_pass() {
        let t = |p, c| required(UsdMicros(20), p, c, "t", false);
        assert_eq!(t(None, None), None);
        assert_eq!(t(Some(UsdMicros(20)), None), None);
        assert!(
            t(Some(UsdMicros(30)), Some(UsdMicros(19))).is_some_and(|r| r.contains("credential"))
        );
        assert!(t(Some(UsdMicros(19)), Some(UsdMicros(30))).is_some_and(|r| r.contains("policy")));
        assert!(required(UsdMicros(0), None, None, "t", true).is_some());
    }

    #[test]
    fn an_approval_covers_the_same_call_at_the_same_or_a_lower_price_only() {
        let approved = facts();
        assert_eq!(approved.covers(&facts()), Ok(()));
        let mut cheaper = facts();
        cheaper.amount_atomic = "999".into();
        cheaper.amount_usd_micros = 999;
        assert_eq!(approved.covers(&cheaper), Ok(()));
        let mut dearer = facts();
        dearer.amount_atomic = "1001".into();
        dearer.amount_usd_micros = 1001;
        assert!(matches!(
            approved.covers(&dearer),
            Err(Mismatch::Higher { .. })
        ));
        let mut other = facts();
        other.tool = "search".into();
        other.arguments_hash = "g".into();
        assert_eq!(
            approved.covers(&other),
            Err(Mismatch::Different("tool, arguments".into()))
        );
        let mut case = facts();
        case.payee = "0xpay".into();
        assert_eq!(approved.covers(&case), Ok(()));
    }

    #[test]
    fn seals_open_only_unaltered_and_in_their_domain() {
        let secret = Secret([7; 32]);
        let sealed = secret.seal("a", b"payload");
        assert_eq!(secret.open("a", &sealed).as_deref(), Ok(&b"payload"[..]));
        assert_eq!(secret.open("b", &sealed), Err(SealError::Forged));
        let (p, t) = sealed.split_once('.').unwrap();
        let altered = format!("{}.{t}", B64.encode(b"payloaD"));
        assert_eq!(secret.open("a", &altered), Err(SealError::Forged));
        assert_eq!(secret.open("a", p), Err(SealError::Malformed));
        assert_eq!(Secret([8; 32]).open("a", &sealed), Err(SealError::Forged));
    }

    #[test]
    fn csrf_tokens_are_per_approval() {
        let secret = Secret([1; 32]);
        let token = secret.csrf_token("ap_1");
        assert!(secret.csrf_ok("ap_1", &token));
        assert!(!secret.csrf_ok("ap_2", &token));
        assert!(!secret.csrf_ok("ap_1", "nope"));
    }

    #[test]
    fn ids_are_random_and_recognised() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(is_id(&a) && is_id(&b));
        assert!(!is_id("ap_1") && !is_id("1; DROP TABLE approvals"));
    }

    #[test]
    fn amounts_in_the_asset_are_exact() {
        assert_eq!(decimal_units("1000", 6), "0.001");
        assert_eq!(decimal_units("1000000", 6), "1");
        assert_eq!(decimal_units("1234567", 6), "1.234567");
    }
}
