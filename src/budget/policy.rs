//! The owner's policy: the rules every payment must pass, whoever the agent is.
//!
//! A policy file (`policies/*.toml`, chosen by `policy` in `tollgate.toml`) says how much one
//! call may cost and what may be paid at all: which hosts and tools, on which networks, in
//! which assets, to which payees, and what each asset is worth. Unknown keys are refused: a
//! rule that tollgate would not enforce must not look as if it were there.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{Problem, read_toml};
use crate::money::UsdMicros;

/// A policy as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    caps: CapsFile,
    #[serde(default)]
    allow: AllowFile,
    /// Whole-unit value of each asset symbol, as a price ("1 USD").
    #[serde(default)]
    rates: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapsFile {
    per_call: Option<String>,
    /// Rolling 24 hours.
    per_day: Option<String>,
    /// Everything, ever.
    total: Option<String>,
    /// A payment above this needs a person's approval.
    approve_above: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    hosts: Option<Vec<String>>,
    tools: Option<Vec<String>>,
    networks: Option<Vec<String>>,
    assets: Option<Vec<String>>,
    payees: Option<Vec<String>>,
}

/// An allowlist: everything (`["*"]`), or exactly these entries (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    Any,
    Only(Vec<String>),
}

impl Allow {
    fn from(list: Option<Vec<String>>, default: Allow) -> Allow {
        match list {
            None => default,
            Some(items) if items.iter().any(|i| i == "*") => Allow::Any,
            Some(items) => Allow::Only(items.into_iter().map(|i| i.to_ascii_lowercase()).collect()),
        }
    }

    pub fn permits(&self, item: &str) -> bool {
        match self {
            Allow::Any => true,
            Allow::Only(items) => items.iter().any(|i| i.eq_ignore_ascii_case(item)),
        }
    }

    /// Permits any of several names for one thing (a network's CAIP-2 id and its v1 name).
    pub fn permits_any<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        names.into_iter().any(|n| self.permits(n))
    }
}

/// The policy in force.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from (`built-in` when no file).
    pub source: String,
    /// The most one call may pay.
    pub per_call: UsdMicros,
    /// The most all calls together may pay in any 24 hours.
    pub per_day: Option<UsdMicros>,
    /// The most all calls together may ever pay.
    pub total: Option<UsdMicros>,
    /// A payment above this needs a person's approval (`None`: the policy never asks).
    pub approve_above: Option<UsdMicros>,
    pub hosts: Allow,
    pub tools: Allow,
    pub networks: Allow,
    pub assets: Allow,
    pub payees: Allow,
    /// Micro-USD per whole unit, by asset symbol.
    pub rates: BTreeMap<String, u64>,
}

/// Per-call cap when a policy does not set one.
pub const DEFAULT_PER_CALL: UsdMicros = UsdMicros(100_000);

impl Policy {
    /// The conservative built-in policy: 0.10 USD per call, USDC on Base only.
    pub fn builtin() -> Policy {
        Policy::from_file(
            "built-in".to_owned(),
            PolicyFile {
                caps: CapsFile::default(),
                allow: AllowFile::default(),
                rates: BTreeMap::new(),
            },
            Path::new("built-in"),
        )
        .unwrap_or_else(|_| unreachable!("the built-in policy is valid"))
    }

    pub fn load(path: &Path) -> Result<Policy, Vec<Problem>> {
        let file: PolicyFile = read_toml(path).map_err(|p| vec![p])?;
        Policy::from_file(path.display().to_string(), file, path)
    }

    fn from_file(source: String, file: PolicyFile, path: &Path) -> Result<Policy, Vec<Problem>> {
        let mut problems = Vec::new();
        let per_call = match file.caps.per_call.as_deref().map(str::parse::<UsdMicros>) {
            None => DEFAULT_PER_CALL,
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                problems.push(Problem::new(path, "caps.per_call", e.to_string()));
                DEFAULT_PER_CALL
            }
        };
        let mut cap = |key: &str, value: Option<String>| match value
            .as_deref()
            .map(str::parse::<UsdMicros>)
        {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                problems.push(Problem::new(path, format!("caps.{key}"), e.to_string()));
                None
            }
        };
        let per_day = cap("per_day", file.caps.per_day);
        let total = cap("total", file.caps.total);
        let approve_above = cap("approve_above", file.caps.approve_above);
        let mut rates: BTreeMap<String, u64> = [
            ("usdc".to_owned(), 1_000_000),
            ("pathusd".to_owned(), 1_000_000),
        ]
        .into();
        for (symbol, rate) in file.rates {
            match rate.parse::<UsdMicros>() {
                Ok(r) if r.0 > 0 => {
                    rates.insert(symbol.to_ascii_lowercase(), r.0);
                }
                Ok(_) => problems.push(Problem::new(
                    path,
                    format!("rates.{symbol}"),
                    "must be above 0",
                )),
                Err(e) => {
                    problems.push(Problem::new(path, format!("rates.{symbol}"), e.to_string()))
                }
            }
        }
        let a = file.allow;
        let policy = Policy {
            source,
            per_call,
            per_day,
            total,
            approve_above,
            hosts: Allow::from(a.hosts, Allow::Any),
            tools: Allow::from(a.tools, Allow::Any),
            networks: Allow::from(
                a.networks,
                Allow::Only(vec!["eip155:8453".into(), "base".into()]),
            ),
            assets: Allow::from(a.assets, Allow::Only(vec!["usdc".into()])),
            payees: Allow::from(a.payees, Allow::Any),
            rates,
        };
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// Micro-USD per whole unit of `symbol`, if the policy values it.
    pub fn rate(&self, symbol: &str) -> Option<u64> {
        self.rates.get(&symbol.to_ascii_lowercase()).copied()
    }
}
