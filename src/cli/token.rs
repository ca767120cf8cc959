//! `tollgate token`: mint, attenuate, inspect and revoke credentials.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use tollgate::budget::caveat::{Caveat, Restrictions};
use tollgate::budget::credential::{Credential, RootKey};
use tollgate::budget::macaroon::Macaroon;
use tollgate::config::Config;
use tollgate::money::UsdMicros;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a root credential (needs the root key) and print it.
    Mint {
        /// A caveat, e.g. "budget_usd_micros <= 1000000" (repeat for more).
        #[arg(long = "caveat", value_name = "CAVEAT")]
        caveats: Vec<String>,
        /// Start from a profile of the policy (its caveats and lifetime); --caveat narrows it.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
        /// Lifetime, e.g. "30m", "12h", "7d" (adds an `expires` caveat).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Narrow a credential with more caveats and print the child (needs no root key and no
    /// server).
    Attenuate {
        /// The parent credential (base64url).
        token: String,
        /// A caveat to append (repeat for more).
        #[arg(long = "caveat", value_name = "CAVEAT", required = true)]
        caveats: Vec<String>,
    },
    /// Show a credential's caveats and effective limits (never its signature).
    Inspect {
        /// The credential (base64url).
        token: String,
    },
    /// Revoke a credential and every credential attenuated from it (needs the root key).
    Revoke {
        /// The credential (base64url).
        token: String,
        /// Config file [default: ./tollgate.toml if present, else built-in defaults].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Mint {
            caveats: extra,
            profile,
            expires_in,
            config,
        } => {
            let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut caveats = Vec::new();
            let mut lifetime = None;
            if let Some(name) = &profile {
                let policy = config.load_policy().map_err(|problems| {
                    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    anyhow::anyhow!("the policy has problems:\n{}", lines.join("\n"))
                })?;
                let Some(p) = policy.profile(name) else {
                    let known: Vec<&str> = policy.profiles.keys().map(String::as_str).collect();
                    anyhow::bail!(
                        "the policy {} has no profile {name:?} (it has: {})",
                        policy.source,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    );
                };
                caveats.extend(p.caveats.iter().cloned());
                lifetime = p.lifetime_secs;
            }
            if let Some(text) = &expires_in {
                lifetime = Some(
                    tollgate::budget::policy::parse_duration(text)
                        .map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?,
                );
            }
            if let Some(secs) = lifetime {
                caveats.push(format!(
                    "expires < {}",
                    tollgate::money::now_unix().saturating_add(secs)
                ));
            }
            caveats.extend(extra);
            for caveat in &caveats {
                Caveat::parse(caveat).with_context(|| format!("caveat {caveat:?}"))?;
            }
            let root = RootKey::load(&config.state_dir)?;
            if config.ledger.url.is_some() {
                // A credential only this host would honour is no use on a shared ledger.
                super::agree_on_root_key(&*super::open_ledger(&config)?, &root, &config)?;
            }
            println!("{}", root.mint(&caveats)?.to_base64url());
        }
        TokenCommand::Attenuate { token, caveats } => {
            let mut token = Macaroon::from_base64url(token.trim()).context("the parent token")?;
            for caveat in &caveats {
                Caveat::parse(caveat).with_context(|| format!("caveat {caveat:?}"))?;
                token.add_caveat(caveat.as_bytes())?;
            }
            println!("{}", token.to_base64url());
        }
        TokenCommand::Revoke { token, config } => {
            let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
            let root = RootKey::load(&config.state_dir)?;
            let credential = Credential::verify(&token, &root, 0)?;
            let ledger = super::open_ledger(&config)?;
            ledger.revoke(credential.id(), tollgate::money::now_unix())?;
            println!(
                "revoked {} and every credential attenuated from it",
                credential.token.fingerprint()
            );
        }
        TokenCommand::Inspect { token } => {
            let token = Macaroon::from_base64url(token.trim()).context("the token")?;
            println!("location:   {}", token.location().unwrap_or("(none)"));
            println!(
                "id:         {}",
                String::from_utf8_lossy(token.identifier())
            );
            println!(
                "signature:  {} (fingerprint; the signature is never shown)",
                token.fingerprint()
            );
            for (i, caveat) in token.caveats().iter().enumerate() {
                let text = String::from_utf8_lossy(caveat);
                match Caveat::from_bytes(caveat) {
                    Ok(_) => println!("caveat {i}:   {text}"),
                    Err(e) => println!("caveat {i}:   {text}   <- invalid: {e}"),
                }
            }
            match Restrictions::parse(token.caveats()) {
                Ok(r) => {
                    let show =
                        |v: Option<UsdMicros>| v.map_or("none".to_owned(), |u| u.to_string());
                    println!(
                        "effective:  max per call {}, approve above {}, expires {}",
                        show(r.max_per_call()),
                        show(r.approve_above()),
                        r.expires_before_unix_secs()
                            .map_or("never".to_owned(), tollgate::money::rfc3339)
                    );
                    for b in r.budgets() {
                        println!("budget:     {} (caveat {})", b.limit, b.position);
                    }
                }
                Err(e) => println!("refused:    {e}"),
            }
        }
    }
    Ok(())
}
