//! The owner's policy: the rules every payment must pass, whoever the agent is.
//!
//! A policy file (`policies/*.toml`, chosen by `policy` in `tollgate.toml`) says how much one
//! call may cost and what may be paid at all: which hosts and tools, on which networks, in
//! which assets, to which payees, and what each asset is worth. Unknown keys are refused: a
//! rule that tollgate would not enforce must not look as if it were there.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::caveat::{Caveat, is_label};
use crate::money::UsdMicros;
use crate::toml_input::{Problem, read_toml};

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
    /// The profile a caller without a credential gets.
    default_profile: Option<String>,
    /// Named agent profiles.
    #[serde(default)]
    profiles: BTreeMap<String, ProfileFile>,
}

/// A named agent profile as written: the limits a credential minted for it carries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    description: Option<String>,
    budget: Option<String>,
    per_call: Option<String>,
    approve_above: Option<String>,
    tools: Option<Vec<String>>,
    hosts: Option<Vec<String>>,
    networks: Option<Vec<String>>,
    /// How long a credential minted for the profile lives ("30m", "12h", "7d").
    lifetime: Option<String>,
}

/// A named agent profile: caveats in the credential language, so a profile means exactly what
/// a credential with those caveats means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    /// `label = <name>` first, then the limits, the budget last.
    pub caveats: Vec<String>,
    /// Lifetime of a credential minted for the profile, in seconds.
    pub lifetime_secs: Option<u64>,
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
    /// Named agent profiles.
    pub profiles: BTreeMap<String, Profile>,
    /// The profile a caller without a credential gets (`None`: the policy alone applies).
    pub default_profile: Option<String>,
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
                default_profile: None,
                profiles: BTreeMap::new(),
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
        let mut profiles = BTreeMap::new();
        for (name, profile) in file.profiles {
            match Profile::from_file(&name, profile) {
                Ok(profile) => {
                    profiles.insert(name, profile);
                }
                Err((key, reason)) => problems.push(Problem::new(
                    path,
                    format!(
                        "profiles.{name}{}",
                        key.map(|k| format!(".{k}")).unwrap_or_default()
                    ),
                    reason,
                )),
            }
        }
        if let Some(name) = &file.default_profile
            && !profiles.contains_key(name)
            && !problems
                .iter()
                .any(|p| p.key.starts_with(&format!("profiles.{name}")))
        {
            problems.push(Problem::new(
                path,
                "default_profile",
                format!("there is no [profiles.{name}]"),
            ));
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
            profiles,
            default_profile: file.default_profile,
        };
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }

    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// Micro-USD per whole unit of `symbol`, if the policy values it.
    pub fn rate(&self, symbol: &str) -> Option<u64> {
        self.rates.get(&symbol.to_ascii_lowercase()).copied()
    }
}

impl Profile {
    /// The profile's caveats, each checked by the credential language; an error names the key.
    fn from_file(name: &str, file: ProfileFile) -> Result<Profile, (Option<&'static str>, String)> {
        if !is_label(name) {
            return Err((
                None,
                "a profile name is 1-64 characters of [A-Za-z0-9_.-]".to_owned(),
            ));
        }
        let mut caveats = vec![format!("label = {name}")];
        let mut list = |key: &'static str, caveat: &str, items: Option<Vec<String>>| {
            if let Some(items) = items {
                if items.iter().any(|i| i == "*") {
                    return Ok(());
                }
                let text = format!("{caveat} = {}", items.join(","));
                Caveat::parse(&text).map_err(|e| (Some(key), e.to_string()))?;
                caveats.push(text);
            }
            Ok(())
        };
        list("tools", "tools", file.tools)?;
        list("hosts", "hosts", file.hosts)?;
        list("networks", "networks", file.networks)?;
        let price = |key: &'static str, value: Option<String>| {
            value
                .map(|v| {
                    v.parse::<UsdMicros>()
                        .map_err(|e| (Some(key), e.to_string()))
                })
                .transpose()
        };
        if let Some(cap) = price("per_call", file.per_call)? {
            caveats.push(format!("max_per_call_usd_micros <= {}", cap.0));
        }
        if let Some(cap) = price("approve_above", file.approve_above)? {
            caveats.push(format!("approve_above_usd_micros <= {}", cap.0));
        }
        if let Some(cap) = price("budget", file.budget)? {
            caveats.push(format!("budget_usd_micros <= {}", cap.0));
        }
        let lifetime_secs = file
            .lifetime
            .map(|l| parse_duration(&l).map_err(|e| (Some("lifetime"), e)))
            .transpose()?;
        Ok(Profile {
            name: name.to_owned(),
            description: file.description,
            caveats,
            lifetime_secs,
        })
    }
}

/// Parses a duration such as `90s`, `30m`, `12h` or `7d` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration such as \"30m\", \"12h\" or \"7d\""
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a duration such as \"30m\", \"12h\" or \"7d\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Policy, Vec<Problem>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        Policy::load(&path)
    }

    #[test]
    fn profiles_become_caveats() {
        let p = load(
            r#"
default_profile = "research"
[profiles.research]
budget = "5 USD"
per_call = "0.05 USD"
approve_above = "0.02 USD"
tools = ["web_search", "translate"]
lifetime = "12h"
"#,
        )
        .unwrap();
        let r = p.profile("research").unwrap();
        assert_eq!(
            r.caveats,
            [
                "label = research",
                "tools = web_search,translate",
                "max_per_call_usd_micros <= 50000",
                "approve_above_usd_micros <= 20000",
                "budget_usd_micros <= 5000000",
            ]
        );
        assert_eq!(r.lifetime_secs, Some(43_200));
        assert_eq!(p.default_profile.as_deref(), Some("research"));
    }

    #[test]
    fn bad_profiles_name_file_key_and_reason() {
        let problems = load(
            r#"
default_profile = "nobody"
[profiles.a]
tools = ["bad tool"]
[profiles.b]
lifetime = "soon"
[profiles.c]
colour = "red"
"#,
        )
        .unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(all.contains("colour"), "{all}");
        let problems = load(
            r#"
default_profile = "nobody"
[profiles.a]
tools = ["bad tool"]
[profiles.b]
lifetime = "soon"
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["profiles.a.tools", "profiles.b.lifetime", "default_profile"]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("1é").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
