//! The caveat language: what a credential's first-party caveats say, and the effective limits
//! they add up to.
//!
//! This module owns meaning; bytes and signatures are [`super::macaroon`]. It fails closed: a
//! caveat that does not parse exactly, or whose key or operator is unknown, rejects the whole
//! credential, because a caveat a verifier skips is a limit nobody enforces.
//!
//! # Grammar
//!
//! A caveat is printable ASCII, one key, one operator and one value, separated by exactly one
//! space each (no leading, trailing or repeated spaces):
//!
//! ```text
//! caveat   = key " " op " " value
//! integer  = "0" / [1-9][0-9]*                  decimal u64: no sign, leading zero or "_"
//! list     = item ("," item)*                   no spaces, no empty items
//! tool     = [A-Za-z0-9_.-]{1,128}
//! host     = (dns-name / ipv4 / "[" ipv6 "]") [":" port]
//! dns-name = label ("." label)*                 lowercase [a-z0-9-], labels 1-63 chars, not
//!                                               starting or ending with "-", at most 253 chars
//! ipv4     = dotted quad in canonical form; ipv6 in canonical (RFC 5952) form
//! port     = 1-65535, no leading zero
//! network  = [a-z0-9][a-z0-9-]{0,31} [":" [A-Za-z0-9_-]{1,64}]    e.g. base, eip155:8453
//! label    = [A-Za-z0-9_.-]{1,64}
//! ```
//!
//! | caveat | means |
//! | --- | --- |
//! | `expires < 1795320000` | valid only while the time is before this (unix seconds) |
//! | `tools = search,weather` | only these tools |
//! | `hosts = api.example.com,127.0.0.1:8402` | pay only these upstream hosts (a port, if given, must match too) |
//! | `networks = base,eip155:8453` | pay only on these networks |
//! | `max_per_call_usd_micros <= 50000` | no single payment above 0.05 USD |
//! | `budget_usd_micros <= 1000000` | at most 1 USD in total under this caveat |
//! | `approve_above_usd_micros <= 20000` | a payment above 0.02 USD needs a person's approval |
//! | `label = research-1` | names the credential (and the budgets after it); restricts nothing |
//!
//! Money is integer micro-USD (1 USD = 1 000 000). Every caveat must hold. [`Caveat::parse`]
//! and [`Caveat`]'s `Display` round-trip exactly, so a caveat has one spelling.
//!
//! # Attenuation
//!
//! A `label` restricts nothing: it names the budgets that follow it (in `tollgate budget` and
//! `budget_status`), and, because it changes the HMAC chain, it makes the budget caveat after
//! it a distinct budget even when a sibling's caveats are otherwise identical.
//!
//! Caveats only narrow. Folding them in order ([`Restrictions::parse`]) gives the effective
//! limits: the intersection of every list of the same key (a later `tools` caveat cannot add a
//! tool), the minimum of every numeric cap, and the earliest expiry. Budgets are the exception:
//! each `budget_usd_micros` caveat stays a separate budget ([`Restrictions::budgets`]), with its
//! own ledger key derived from the HMAC chain value right after it, so a payment must fit under
//! every one of them.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::money::UsdMicros;

/// The longest caveat accepted, in bytes.
pub const MAX_CAVEAT_LEN: usize = 4096;

/// The longest tool name accepted (as MCP allows).
pub const MAX_TOOL_NAME_LEN: usize = 128;

/// Why a caveat is not one this language accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaveatError {
    /// Longer than [`MAX_CAVEAT_LEN`].
    #[error("caveat is {len} bytes; at most {max} are accepted")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A byte outside printable ASCII (0x20-0x7e), such as UTF-8, a tab or a newline.
    #[error("caveat has byte {byte:#04x} at offset {offset}; caveats are printable ASCII")]
    NotPrintableAscii {
        /// Offset of the first offending byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// Not `key op value` with exactly one space on each side of the operator.
    #[error("caveat {0:?} is not `key op value` with single spaces, such as `tools = search`")]
    Shape(String),
    /// The key is not one of the language's keys.
    #[error(
        "unknown caveat key {0:?}; known keys: expires, tools, hosts, networks, \
         max_per_call_usd_micros, budget_usd_micros, approve_above_usd_micros, label"
    )]
    UnknownKey(String),
    /// The key is known but takes another operator.
    #[error("caveat key {key} takes operator {expected:?}, not {found:?}")]
    WrongOperator {
        /// The key.
        key: &'static str,
        /// The operator it takes.
        expected: &'static str,
        /// The operator found.
        found: String,
    },
    /// The value of an integer key is not a canonical decimal u64.
    #[error(
        "{key} takes a decimal integer without sign, leading zero or separators, at most \
         18446744073709551615; got {value:?}"
    )]
    Integer {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// A list value has an empty item (`a,,b`, a leading or trailing comma, or nothing).
    #[error("{key} has an empty item in {value:?}; items are separated by single commas")]
    EmptyItem {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// A label with characters outside `[A-Za-z0-9_.-]` or too long.
    #[error("label {0:?} is not 1-64 characters of [A-Za-z0-9_.-]")]
    Label(String),
    /// A tool name with characters outside `[A-Za-z0-9_.-]` or too long.
    #[error("tool name {0:?} is not 1-128 characters of [A-Za-z0-9_.-]")]
    ToolName(String),
    /// A host that is not a lowercase DNS name or a canonical IP address with an optional port.
    #[error(
        "host {0:?} is not a lowercase DNS name, canonical IPv4 address or [IPv6] address, \
         with an optional :port from 1 to 65535"
    )]
    Host(String),
    /// A network that is not a name such as `base` or a CAIP-2 id such as `eip155:8453`.
    #[error("network {0:?} is not a name such as `base` or a CAIP-2 id such as `eip155:8453`")]
    Network(String),
}

/// A caveat that failed to parse, with its position in the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caveat {position}: {error}")]
pub struct InvalidCaveat {
    /// Zero-based position among the credential's caveats.
    pub position: usize,
    /// What was wrong with it.
    #[source]
    pub error: CaveatError,
}

/// One host a `hosts` caveat allows: a DNS name or IP address, and a port if it pins one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPattern {
    /// Lowercase DNS name, or IP address in canonical form (IPv6 without brackets).
    pub host: String,
    /// The only port allowed; `None` allows any.
    pub port: Option<u16>,
}

impl HostPattern {
    /// Whether a request to `host` on `port` is allowed. `host` may be bracketed IPv6 (as
    /// `url::Url::host_str` gives it); DNS names compare case-insensitively, addresses by value.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match (self.host.parse::<IpAddr>(), host.parse::<IpAddr>()) {
            (Ok(mine), Ok(theirs)) => mine == theirs,
            (Err(_), Err(_)) => self.host.eq_ignore_ascii_case(host),
            _ => false,
        }
    }

    /// The narrower of two patterns for the same host, or `None` if they allow nothing in
    /// common.
    fn intersect(&self, other: &HostPattern) -> Option<HostPattern> {
        if self.host != other.host {
            return None;
        }
        let port = match (self.port, other.port) {
            (None, p) | (p, None) => p,
            (Some(a), Some(b)) if a == b => Some(a),
            _ => return None,
        };
        Some(HostPattern {
            host: self.host.clone(),
            port,
        })
    }

    fn parse(item: &str) -> Result<HostPattern, CaveatError> {
        let bad = || CaveatError::Host(item.to_owned());
        let (host, port) = if let Some(rest) = item.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            let addr: Ipv6Addr = inside.parse().map_err(|_| bad())?;
            if addr.to_string() != inside {
                return Err(bad());
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (inside, port)
        } else {
            match item.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (item, None),
            }
        };
        let port = match port {
            None => None,
            Some(text) => Some(
                parse_u64(text)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0)
                    .ok_or_else(bad)?,
            ),
        };
        if !item.starts_with('[') && !is_dns_name_or_ipv4(host) {
            return Err(bad());
        }
        Ok(HostPattern {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// One first-party caveat of a tollgate credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caveat {
    /// `expires < T`: valid only while the time is before `T`, in unix seconds.
    Expires {
        /// The first second at which the credential is no longer valid.
        before_unix_secs: u64,
    },
    /// `tools = a,b`: only these tools may be called.
    Tools(Vec<String>),
    /// `hosts = h1,h2:8443`: only these upstream hosts may be paid.
    Hosts(Vec<HostPattern>),
    /// `networks = base,eip155:8453`: only these payment networks may be used.
    Networks(Vec<String>),
    /// `max_per_call_usd_micros <= N`: no single payment above `N`.
    MaxPerCall(UsdMicros),
    /// `budget_usd_micros <= N`: at most `N` in total, on this caveat's own ledger key.
    Budget(UsdMicros),
    /// `approve_above_usd_micros <= N`: a payment above `N` needs a person's approval.
    ApproveAbove(UsdMicros),
    /// `label = name`: names what follows; restricts nothing.
    Label(String),
}

const EXPIRES: &str = "expires";
const TOOLS: &str = "tools";
const HOSTS: &str = "hosts";
const NETWORKS: &str = "networks";
const MAX_PER_CALL: &str = "max_per_call_usd_micros";
const BUDGET: &str = "budget_usd_micros";
const APPROVE_ABOVE: &str = "approve_above_usd_micros";
const LABEL: &str = "label";

/// The longest label accepted.
pub const MAX_LABEL_LEN: usize = 64;

impl Caveat {
    /// Parses one caveat, exactly as the grammar in the module docs says.
    pub fn parse(text: &str) -> Result<Caveat, CaveatError> {
        Caveat::from_bytes(text.as_bytes())
    }

    /// Parses one caveat from a macaroon's predicate bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Caveat, CaveatError> {
        if bytes.len() > MAX_CAVEAT_LEN {
            return Err(CaveatError::TooLong {
                len: bytes.len(),
                max: MAX_CAVEAT_LEN,
            });
        }
        if let Some((offset, &byte)) = bytes
            .iter()
            .enumerate()
            .find(|(_, b)| !(0x20..=0x7e).contains(*b))
        {
            return Err(CaveatError::NotPrintableAscii { offset, byte });
        }
        // Printable ASCII is UTF-8; this cannot fail, but the fallback keeps it panic-free.
        let text = std::str::from_utf8(bytes).map_err(|_| CaveatError::Shape(String::new()))?;
        let shape = || CaveatError::Shape(text.to_owned());
        let mut parts = text.splitn(3, ' ');
        let (Some(key), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(shape());
        };
        if key.is_empty() || op.is_empty() || value.is_empty() || value.contains(' ') {
            return Err(shape());
        }
        let (key, expected_op): (&'static str, &'static str) = match key {
            EXPIRES => (EXPIRES, "<"),
            TOOLS => (TOOLS, "="),
            HOSTS => (HOSTS, "="),
            NETWORKS => (NETWORKS, "="),
            MAX_PER_CALL => (MAX_PER_CALL, "<="),
            BUDGET => (BUDGET, "<="),
            APPROVE_ABOVE => (APPROVE_ABOVE, "<="),
            LABEL => (LABEL, "="),
            other => return Err(CaveatError::UnknownKey(other.to_owned())),
        };
        if op != expected_op {
            return Err(CaveatError::WrongOperator {
                key,
                expected: expected_op,
                found: op.to_owned(),
            });
        }
        let integer = || {
            parse_u64(value).ok_or_else(|| CaveatError::Integer {
                key,
                value: value.to_owned(),
            })
        };
        Ok(match key {
            EXPIRES => Caveat::Expires {
                before_unix_secs: integer()?,
            },
            MAX_PER_CALL => Caveat::MaxPerCall(UsdMicros(integer()?)),
            BUDGET => Caveat::Budget(UsdMicros(integer()?)),
            APPROVE_ABOVE => Caveat::ApproveAbove(UsdMicros(integer()?)),
            TOOLS => Caveat::Tools(parse_list(key, value, |item| {
                let ok = item.len() <= MAX_TOOL_NAME_LEN
                    && item
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
                ok.then(|| item.to_owned())
                    .ok_or_else(|| CaveatError::ToolName(item.to_owned()))
            })?),
            HOSTS => Caveat::Hosts(parse_list(key, value, HostPattern::parse)?),
            LABEL => {
                if !is_label(value) {
                    return Err(CaveatError::Label(value.to_owned()));
                }
                Caveat::Label(value.to_owned())
            }
            _ => Caveat::Networks(parse_list(key, value, |item| {
                is_network(item)
                    .then(|| item.to_owned())
                    .ok_or_else(|| CaveatError::Network(item.to_owned()))
            })?),
        })
    }
}

impl FromStr for Caveat {
    type Err = CaveatError;

    fn from_str(text: &str) -> Result<Caveat, CaveatError> {
        Caveat::parse(text)
    }
}

impl fmt::Display for Caveat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(
            f: &mut fmt::Formatter<'_>,
            key: &str,
            items: &[T],
        ) -> fmt::Result {
            write!(f, "{key} = ")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        }
        match self {
            Caveat::Expires { before_unix_secs } => write!(f, "{EXPIRES} < {before_unix_secs}"),
            Caveat::Tools(tools) => list(f, TOOLS, tools),
            Caveat::Hosts(hosts) => list(f, HOSTS, hosts),
            Caveat::Networks(networks) => list(f, NETWORKS, networks),
            Caveat::MaxPerCall(cap) => write!(f, "{MAX_PER_CALL} <= {}", cap.0),
            Caveat::Budget(cap) => write!(f, "{BUDGET} <= {}", cap.0),
            Caveat::ApproveAbove(cap) => write!(f, "{APPROVE_ABOVE} <= {}", cap.0),
            Caveat::Label(label) => write!(f, "{LABEL} = {label}"),
        }
    }
}

/// One `budget_usd_micros` caveat: where it sits in the chain and how much it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetCaveat {
    /// Zero-based caveat position; the chain value at this index (from
    /// [`super::macaroon::Macaroon::verify`]) seeds this budget's ledger key.
    pub position: usize,
    /// The most that may be spent in total under this caveat.
    pub limit: UsdMicros,
    /// The nearest `label` caveat before it, if any.
    pub label: Option<String>,
}

/// The effective limits of a credential: its caveats folded in order. `None` means the
/// credential does not restrict that dimension (the policy still does).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Restrictions {
    expires_before_unix_secs: Option<u64>,
    tools: Option<BTreeSet<String>>,
    hosts: Option<Vec<HostPattern>>,
    networks: Option<BTreeSet<String>>,
    max_per_call: Option<UsdMicros>,
    approve_above: Option<UsdMicros>,
    budgets: Vec<BudgetCaveat>,
    label: Option<String>,
}

impl Restrictions {
    /// Parses every caveat predicate (as [`super::macaroon::Macaroon::caveats`] gives them) and
    /// folds them in order. Any caveat that does not parse rejects the whole credential.
    pub fn parse<P: AsRef<[u8]>>(predicates: &[P]) -> Result<Restrictions, InvalidCaveat> {
        let mut restrictions = Restrictions::default();
        for (position, predicate) in predicates.iter().enumerate() {
            let caveat = Caveat::from_bytes(predicate.as_ref())
                .map_err(|error| InvalidCaveat { position, error })?;
            restrictions.apply(position, &caveat);
        }
        Ok(restrictions)
    }

    /// Folds already-parsed caveats in order; position `i` is `caveats[i]`.
    pub fn fold(caveats: &[Caveat]) -> Restrictions {
        let mut restrictions = Restrictions::default();
        for (position, caveat) in caveats.iter().enumerate() {
            restrictions.apply(position, caveat);
        }
        restrictions
    }

    /// Narrows these limits by one more caveat, at `position` in the chain.
    pub fn apply(&mut self, position: usize, caveat: &Caveat) {
        fn min<T: Ord + Copy>(slot: &mut Option<T>, value: T) {
            *slot = Some(slot.map_or(value, |current| current.min(value)));
        }
        fn intersect(slot: &mut Option<BTreeSet<String>>, items: &[String]) {
            let items: BTreeSet<String> = items.iter().cloned().collect();
            *slot = Some(match slot.take() {
                None => items,
                Some(current) => current.intersection(&items).cloned().collect(),
            });
        }
        match caveat {
            Caveat::Expires { before_unix_secs } => {
                min(&mut self.expires_before_unix_secs, *before_unix_secs)
            }
            Caveat::Tools(tools) => intersect(&mut self.tools, tools),
            Caveat::Networks(networks) => intersect(&mut self.networks, networks),
            Caveat::Hosts(hosts) => {
                let narrowed = match self.hosts.take() {
                    None => hosts.clone(),
                    Some(current) => current
                        .iter()
                        .flat_map(|a| hosts.iter().filter_map(move |b| a.intersect(b)))
                        .collect(),
                };
                let unique: BTreeSet<HostPattern> = narrowed.into_iter().collect();
                self.hosts = Some(unique.into_iter().collect());
            }
            Caveat::MaxPerCall(cap) => min(&mut self.max_per_call, *cap),
            Caveat::ApproveAbove(cap) => min(&mut self.approve_above, *cap),
            Caveat::Budget(limit) => self.budgets.push(BudgetCaveat {
                position,
                limit: *limit,
                label: self.label.clone(),
            }),
            Caveat::Label(label) => self.label = Some(label.clone()),
        }
    }

    /// The last `label` caveat: the credential's name.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// The earliest `expires` bound (exclusive), in unix seconds.
    pub fn expires_before_unix_secs(&self) -> Option<u64> {
        self.expires_before_unix_secs
    }

    /// Whether the credential has expired at `now_unix_secs` (at or after its earliest bound).
    pub fn is_expired_at(&self, now_unix_secs: u64) -> bool {
        self.expires_before_unix_secs
            .is_some_and(|bound| now_unix_secs >= bound)
    }

    /// The tools every `tools` caveat allows; `None` if no caveat names tools.
    pub fn tools(&self) -> Option<&BTreeSet<String>> {
        self.tools.as_ref()
    }

    /// Whether `tool` is allowed (always, if no caveat names tools).
    pub fn allows_tool(&self, tool: &str) -> bool {
        self.tools.as_ref().is_none_or(|tools| tools.contains(tool))
    }

    /// The hosts every `hosts` caveat allows; `None` if no caveat names hosts.
    pub fn hosts(&self) -> Option<&[HostPattern]> {
        self.hosts.as_deref()
    }

    /// Whether paying `host` on `port` is allowed (always, if no caveat names hosts).
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|hosts| hosts.iter().any(|h| h.matches(host, port)))
    }

    /// The networks every `networks` caveat allows; `None` if no caveat names networks.
    pub fn networks(&self) -> Option<&BTreeSet<String>> {
        self.networks.as_ref()
    }

    /// Whether paying on `network` is allowed (always, if no caveat names networks).
    pub fn allows_network(&self, network: &str) -> bool {
        self.networks
            .as_ref()
            .is_none_or(|networks| networks.contains(network))
    }

    /// The smallest `max_per_call_usd_micros`.
    pub fn max_per_call(&self) -> Option<UsdMicros> {
        self.max_per_call
    }

    /// Whether one payment of `amount` is within the per-call cap.
    pub fn allows_per_call(&self, amount: UsdMicros) -> bool {
        self.max_per_call.is_none_or(|cap| amount <= cap)
    }

    /// The smallest `approve_above_usd_micros`.
    pub fn approve_above(&self) -> Option<UsdMicros> {
        self.approve_above
    }

    /// Whether a payment of `amount` needs a person's approval under the credential.
    pub fn needs_approval(&self, amount: UsdMicros) -> bool {
        self.approve_above
            .is_some_and(|threshold| amount > threshold)
    }

    /// Every `budget_usd_micros` caveat in chain order, each with its position. They are not
    /// merged: each is a separate ledger, and a payment must fit under all of them.
    pub fn budgets(&self) -> &[BudgetCaveat] {
        &self.budgets
    }
}

/// A canonical decimal u64: digits only, no leading zero (except "0"), no overflow.
/// Whether `text` is a label: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_LABEL_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn parse_u64(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

fn parse_list<T>(
    key: &'static str,
    value: &str,
    item: impl Fn(&str) -> Result<T, CaveatError>,
) -> Result<Vec<T>, CaveatError> {
    value
        .split(',')
        .map(|text| {
            if text.is_empty() {
                Err(CaveatError::EmptyItem {
                    key,
                    value: value.to_owned(),
                })
            } else {
                item(text)
            }
        })
        .collect()
}

/// A lowercase DNS name, or a canonical IPv4 address if the last label is numeric (so that
/// `1.2.3` or `01.2.3.4`, which URL parsers read as addresses, are refused rather than misread).
fn is_dns_name_or_ipv4(host: &str) -> bool {
    let last_label_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if last_label_numeric {
        return host
            .parse::<Ipv4Addr>()
            .is_ok_and(|addr| addr.to_string() == host);
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn is_network(item: &str) -> bool {
    let (name, reference) = match item.split_once(':') {
        Some((name, reference)) => (name, Some(reference)),
        None => (item, None),
    };
    let name_ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    let reference_ok = reference.is_none_or(|r| {
        (1..=64).contains(&r.len())
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    name_ok && reference_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::macaroon::Macaroon;

    fn err(text: &str) -> CaveatError {
        match Caveat::parse(text) {
            Ok(caveat) => panic!("{text:?} parsed as {caveat:?}"),
            Err(error) => error,
        }
    }

    fn restrictions(caveats: &[&str]) -> Restrictions {
        Restrictions::parse(caveats).unwrap()
    }

    #[test]
    fn documented_examples_round_trip_exactly() {
        for text in [
            "expires < 1795320000",
            "tools = search,weather",
            "tools = a.b-c_D9",
            "hosts = api.example.com",
            "hosts = api.example.com,127.0.0.1:8402,[::1]:8080,[2001:db8::1],localhost",
            "networks = base,eip155:8453,base-sepolia,solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
            "max_per_call_usd_micros <= 50000",
            "budget_usd_micros <= 1000000",
            "budget_usd_micros <= 0",
            "budget_usd_micros <= 18446744073709551615",
            "approve_above_usd_micros <= 20000",
            "label = research-1",
        ] {
            let caveat = Caveat::parse(text).unwrap();
            assert_eq!(caveat.to_string(), text);
            assert_eq!(text.parse::<Caveat>().unwrap(), caveat);
        }
    }

    #[test]
    fn parses_into_typed_values() {
        assert_eq!(
            Caveat::parse("expires < 1795320000").unwrap(),
            Caveat::Expires {
                before_unix_secs: 1_795_320_000
            }
        );
        assert_eq!(
            Caveat::parse("budget_usd_micros <= 1000000").unwrap(),
            Caveat::Budget(UsdMicros(1_000_000))
        );
        assert_eq!(
            Caveat::parse("hosts = [::1]:8080,a.example").unwrap(),
            Caveat::Hosts(vec![
                HostPattern {
                    host: "::1".into(),
                    port: Some(8080)
                },
                HostPattern {
                    host: "a.example".into(),
                    port: None
                },
            ])
        );
    }

    #[test]
    fn rejects_anything_but_single_spaces() {
        for text in [
            "tools  = a",
            " tools = a",
            "tools = a ",
            "tools =  a",
            "tools=a",
            "tools =a",
            "tools = a b",
            "tools =",
            "tools = ",
            "",
            "tools",
        ] {
            assert!(
                matches!(err(text), CaveatError::Shape(_)),
                "{text:?}: {:?}",
                err(text)
            );
        }
    }

    #[test]
    fn rejects_bytes_outside_printable_ascii() {
        assert_eq!(
            err("tools = sé"),
            CaveatError::NotPrintableAscii {
                offset: 9,
                byte: 0xc3
            }
        );
        assert_eq!(
            err("tools =\ta"),
            CaveatError::NotPrintableAscii {
                offset: 7,
                byte: b'\t'
            }
        );
        assert!(matches!(
            err("tools = a\n"),
            CaveatError::NotPrintableAscii { .. }
        ));
        assert!(matches!(
            Caveat::from_bytes(&[b't', 0xff]),
            Err(CaveatError::NotPrintableAscii {
                offset: 1,
                byte: 0xff
            })
        ));
    }

    #[test]
    fn rejects_unknown_keys() {
        for (text, key) in [
            ("colour = red", "colour"),
            ("Tools = a", "Tools"),
            ("budget <= 5", "budget"),
            ("time < 2020-01-01T00:00", "time"),
        ] {
            assert_eq!(err(text), CaveatError::UnknownKey(key.into()));
        }
    }

    #[test]
    fn rejects_wrong_operators() {
        for (text, key, expected, found) in [
            ("expires <= 5", "expires", "<", "<="),
            ("expires > 5", "expires", "<", ">"),
            ("tools == a", "tools", "=", "=="),
            ("budget_usd_micros < 5", "budget_usd_micros", "<=", "<"),
            ("budget_usd_micros = 5", "budget_usd_micros", "<=", "="),
            (
                "max_per_call_usd_micros >= 5",
                "max_per_call_usd_micros",
                "<=",
                ">=",
            ),
            (
                "approve_above_usd_micros > 5",
                "approve_above_usd_micros",
                "<=",
                ">",
            ),
        ] {
            assert_eq!(
                err(text),
                CaveatError::WrongOperator {
                    key,
                    expected,
                    found: found.into()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_integers_that_are_not_canonical_u64() {
        for value in [
            "+5",
            "-5",
            "1_000",
            "007",
            "00",
            "18446744073709551616",
            "1e6",
            "0x10",
            "5.0",
            "five",
        ] {
            let text = format!("budget_usd_micros <= {value}");
            assert_eq!(
                err(&text),
                CaveatError::Integer {
                    key: "budget_usd_micros",
                    value: value.into()
                },
                "{text}"
            );
        }
        assert!(matches!(
            err("expires < -1"),
            CaveatError::Integer { key: "expires", .. }
        ));
    }

    #[test]
    fn rejects_empty_list_items() {
        for value in ["a,,b", "a,", ",a", ","] {
            assert_eq!(
                err(&format!("tools = {value}")),
                CaveatError::EmptyItem {
                    key: "tools",
                    value: value.into()
                }
            );
        }
        assert!(matches!(
            err("hosts = a.example,"),
            CaveatError::EmptyItem { key: "hosts", .. }
        ));
    }

    #[test]
    fn rejects_bad_labels() {
        assert_eq!(err("label = a/b"), CaveatError::Label("a/b".into()));
        assert_eq!(err("label = a,b"), CaveatError::Label("a,b".into()));
        let long = "l".repeat(MAX_LABEL_LEN + 1);
        assert_eq!(err(&format!("label = {long}")), CaveatError::Label(long));
        assert!(matches!(
            err("label <= x"),
            CaveatError::WrongOperator { .. }
        ));
    }

    #[test]
    fn rejects_bad_tool_names() {
        assert_eq!(err("tools = a/b"), CaveatError::ToolName("a/b".into()));
        assert_eq!(err("tools = ok,*"), CaveatError::ToolName("*".into()));
        let long = "t".repeat(MAX_TOOL_NAME_LEN + 1);
        assert_eq!(err(&format!("tools = {long}")), CaveatError::ToolName(long));
        assert!(Caveat::parse(&format!("tools = {}", "t".repeat(MAX_TOOL_NAME_LEN))).is_ok());
    }

    #[test]
    fn rejects_bad_hosts() {
        for host in [
            "API.example.com",
            "*.example.com",
            "example.com.",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            "example.com:0",
            "example.com:65536",
            "example.com:080",
            "example.com:",
            ":443",
            "01.2.3.4",
            "1.2.3",
            "256.1.1.1",
            "::1",
            "[::1",
            "[0:0::1]",
            "[::1]x",
            "[::1]:",
            "[1.2.3.4]",
            "user@example.com",
        ] {
            assert_eq!(
                err(&format!("hosts = {host}")),
                CaveatError::Host(host.into()),
                "{host}"
            );
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(matches!(
            err(&format!("hosts = {long}")),
            CaveatError::Host(_)
        ));
    }

    #[test]
    fn rejects_bad_networks() {
        for network in ["Base", "eip155:", ":8453", "-base", "eip155:84 53", "a:b:c"] {
            let text = format!("networks = {network}");
            assert!(
                matches!(err(&text), CaveatError::Network(_) | CaveatError::Shape(_)),
                "{text}"
            );
        }
        assert_eq!(err("networks = Base"), CaveatError::Network("Base".into()));
    }

    #[test]
    fn rejects_overlong_caveats() {
        let text = format!("tools = {}", "a,".repeat(MAX_CAVEAT_LEN));
        assert!(matches!(
            err(&text),
            CaveatError::TooLong {
                max: MAX_CAVEAT_LEN,
                ..
            }
        ));
    }

    #[test]
    fn no_caveats_restrict_nothing() {
        let r = restrictions(&[]);
        assert!(r.allows_tool("anything"));
        assert!(r.allows_host("example.com", 443));
        assert!(r.allows_network("base"));
        assert!(r.allows_per_call(UsdMicros(u64::MAX)));
        assert!(!r.needs_approval(UsdMicros(u64::MAX)));
        assert!(!r.is_expired_at(u64::MAX));
        assert!(r.budgets().is_empty());
    }

    #[test]
    fn later_list_caveats_only_narrow() {
        let r = restrictions(&["tools = a,b", "tools = b,c"]);
        assert_eq!(r.tools().unwrap().iter().collect::<Vec<_>>(), ["b"]);
        assert!(r.allows_tool("b"));
        assert!(!r.allows_tool("a"));
        assert!(!r.allows_tool("c"), "a later caveat cannot add a tool");
        let r = restrictions(&[
            "networks = base,eip155:8453",
            "networks = eip155:8453,solana:x",
        ]);
        assert!(r.allows_network("eip155:8453"));
        assert!(!r.allows_network("base"));
        assert!(!r.allows_network("solana:x"));
    }

    #[test]
    fn disjoint_lists_allow_nothing() {
        let r = restrictions(&["tools = a", "tools = b"]);
        assert!(r.tools().unwrap().is_empty());
        assert!(!r.allows_tool("a"));
        assert!(!r.allows_tool("b"));
    }

    #[test]
    fn host_lists_intersect_with_ports() {
        let r = restrictions(&[
            "hosts = a.example,b.example:8443",
            "hosts = a.example:443,b.example",
        ]);
        assert_eq!(
            r.hosts().unwrap(),
            [
                HostPattern {
                    host: "a.example".into(),
                    port: Some(443)
                },
                HostPattern {
                    host: "b.example".into(),
                    port: Some(8443)
                },
            ]
        );
        assert!(r.allows_host("a.example", 443));
        assert!(!r.allows_host("a.example", 80));
        assert!(r.allows_host("B.EXAMPLE", 8443));
        assert!(!r.allows_host("c.example", 443));
        let r = restrictions(&["hosts = a.example:80", "hosts = a.example:443"]);
        assert!(r.hosts().unwrap().is_empty());
    }

    #[test]
    fn hosts_match_addresses_by_value() {
        let r = restrictions(&["hosts = [::1]:8080,127.0.0.1"]);
        assert!(r.allows_host("[::1]", 8080));
        assert!(r.allows_host("0:0:0:0:0:0:0:1", 8080));
        assert!(!r.allows_host("[::1]", 8081));
        assert!(r.allows_host("127.0.0.1", 1));
        assert!(!r.allows_host("127.0.0.2", 1));
        assert!(!r.allows_host("localhost", 1));
    }

    #[test]
    fn numeric_caps_take_the_minimum() {
        let r = restrictions(&[
            "max_per_call_usd_micros <= 500",
            "max_per_call_usd_micros <= 1000",
            "approve_above_usd_micros <= 300",
            "approve_above_usd_micros <= 200",
        ]);
        assert_eq!(r.max_per_call(), Some(UsdMicros(500)));
        assert!(r.allows_per_call(UsdMicros(500)));
        assert!(!r.allows_per_call(UsdMicros(501)));
        assert_eq!(r.approve_above(), Some(UsdMicros(200)));
        assert!(!r.needs_approval(UsdMicros(200)));
        assert!(r.needs_approval(UsdMicros(201)));
    }

    #[test]
    fn earliest_expiry_wins() {
        let r = restrictions(&["expires < 200", "expires < 100", "expires < 300"]);
        assert_eq!(r.expires_before_unix_secs(), Some(100));
        assert!(!r.is_expired_at(99));
        assert!(r.is_expired_at(100));
    }

    #[test]
    fn each_budget_caveat_is_kept_with_its_position() {
        let r = restrictions(&[
            "tools = a",
            "budget_usd_micros <= 1000",
            "label = child-1",
            "budget_usd_micros <= 5000",
        ]);
        assert_eq!(
            r.budgets(),
            [
                BudgetCaveat {
                    position: 1,
                    limit: UsdMicros(1000),
                    label: None,
                },
                BudgetCaveat {
                    position: 3,
                    limit: UsdMicros(5000),
                    label: Some("child-1".to_owned()),
                },
            ]
        );
        assert_eq!(r.label(), Some("child-1"));
    }

    #[test]
    fn one_bad_caveat_rejects_the_credential_and_names_its_position() {
        let error = Restrictions::parse(&["tools = a", "budget_usd_micros <= 10", "colour = red"])
            .unwrap_err();
        assert_eq!(
            error,
            InvalidCaveat {
                position: 2,
                error: CaveatError::UnknownKey("colour".into())
            }
        );
        assert!(
            error
                .to_string()
                .starts_with("caveat 2: unknown caveat key \"colour\"")
        );
    }

    #[test]
    fn fold_matches_parse() {
        let texts = ["tools = a,b", "budget_usd_micros <= 7", "tools = b"];
        let parsed: Vec<Caveat> = texts.iter().map(|t| Caveat::parse(t).unwrap()).collect();
        assert_eq!(Restrictions::fold(&parsed), restrictions(&texts));
    }

    #[test]
    fn budget_positions_index_the_verified_chain() {
        // A parent with a budget, and two children that each add their own budget: each budget
        // caveat's chain value (its future ledger key) is shared by descendants, not siblings.
        let root = b"root secret for the budget chain test";
        let mut parent = Macaroon::mint(root, b"agent-1", None).unwrap();
        parent
            .add_caveat(Caveat::Budget(UsdMicros(1_000_000)).to_string().as_bytes())
            .unwrap();
        let mut child_a = parent.clone();
        child_a.add_caveat(b"tools = search").unwrap();
        child_a.add_caveat(b"budget_usd_micros <= 5000").unwrap();
        let mut child_b = parent.clone();
        child_b.add_caveat(b"tools = search").unwrap();
        child_b.add_caveat(b"budget_usd_micros <= 9000").unwrap();

        let key_of = |m: &Macaroon| {
            let chain = m.verify(root).unwrap();
            let r = Restrictions::parse(m.caveats()).unwrap();
            r.budgets()
                .iter()
                .map(|b| chain[b.position].clone())
                .collect::<Vec<_>>()
        };
        let (parent_keys, a_keys, b_keys) = (key_of(&parent), key_of(&child_a), key_of(&child_b));
        assert_eq!(a_keys.len(), 2);
        assert_eq!(a_keys[0], parent_keys[0]);
        assert_eq!(b_keys[0], parent_keys[0]);
        assert_ne!(a_keys[1], b_keys[1]);
    }
}
