//! `tollgate approve`, `deny` and `approvals`: a person's decisions.

use std::path::PathBuf;

use tollgate::config::Config;
use tollgate::money::UsdMicros;

/// `tollgate approve|deny <id>`: a person's decision, recorded in the shared ledger.
pub fn decide(config: Option<PathBuf>, id: &str, approve: bool) -> anyhow::Result<()> {
    use tollgate::ledger::Decided;
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !tollgate::approval::is_id(id) {
        anyhow::bail!("{id:?} is not an approval id (ap_ followed by 32 hex digits)");
    }
    let ledger = super::open_ledger(&config)?;
    let verb = if approve { "approved" } else { "denied" };
    match ledger.decide_approval(id, approve, "cli", tollgate::money::now_unix())? {
        Decided::Done(a) => {
            print_approval(&a);
            println!("{verb}: {}", a.id);
            Ok(())
        }
        Decided::Final(a) => {
            print_approval(&a);
            anyhow::bail!("nothing changed: approval {} is already {}", a.id, a.state)
        }
        Decided::NotFound => anyhow::bail!("no approval {id} in {}", ledger.location()),
    }
}

pub fn approvals(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = super::open_ledger(&config)?;
    let pending = ledger.pending_approvals(tollgate::money::now_unix())?;
    for a in &pending {
        print_approval(a);
        println!();
    }
    println!("{} approval(s) waiting for a person", pending.len());
    Ok(())
}

pub fn print_approval(a: &tollgate::ledger::Approval) {
    println!("approval:   {} ({})", a.id, a.state);
    match serde_json::from_str::<tollgate::approval::Facts>(&a.facts_json) {
        Ok(f) => {
            println!("tool:       {}", f.tool);
            println!(
                "amount:     {} = {}",
                UsdMicros(f.amount_usd_micros),
                f.amount_in_asset
            );
            println!("payee:      {}", f.payee);
            println!("protocol:   {} on {}", f.protocol, f.network);
            println!(
                "budget:     {}",
                f.budget_left_usd_micros
                    .map_or("no cap applies".to_owned(), |l| format!(
                        "{} left after paying",
                        UsdMicros(l)
                    ))
            );
            println!("why:        {}", f.reason);
            println!(
                "arguments:  {}",
                serde_json::Value::Object(f.arguments.clone())
            );
        }
        Err(_) => println!(
            "tool:       {} ({})",
            a.tool,
            UsdMicros(a.amount_usd_micros)
        ),
    }
    println!("expires:    {}", tollgate::money::rfc3339(a.expires_at));
}
