//! `tollgate receipts` and `tollgate budget`: what was paid, and what is left.

use std::path::PathBuf;

use clap::ValueEnum;

use tollgate::config::Config;
use tollgate::money::UsdMicros;

use super::print_table;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReceiptFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BudgetFormat {
    Table,
    Json,
}

pub fn receipts(
    config: Option<PathBuf>,
    since: Option<u64>,
    format: ReceiptFormat,
) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = super::open_ledger(&config)?;
    let rows = ledger.all_receipts(since, 100_000)?;
    let receipts: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.json).ok())
        .collect();
    let field = |r: &serde_json::Value, k: &str| {
        let text = match &r[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        // Test money is labelled wherever it is shown (`[[assets]] sandbox = true`).
        if k == "asset_symbol" && r["sandbox"] == serde_json::Value::Bool(true) {
            format!("{text} (sandbox)")
        } else {
            text
        }
    };
    let columns = [
        "at",
        "receipt_id",
        "protocol",
        "network",
        "amount_usd",
        "asset_symbol",
        "payee",
        "transaction",
    ];
    match format {
        ReceiptFormat::Json => println!("{}", serde_json::to_string_pretty(&receipts)?),
        ReceiptFormat::Csv => {
            println!("{}", columns.join(","));
            for r in &receipts {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| field(r, c).replace(',', " "))
                    .collect();
                println!("{}", cells.join(","));
            }
        }
        ReceiptFormat::Table => {
            let rows: Vec<[String; 8]> = receipts
                .iter()
                .map(|r| columns.map(|c| field(r, c)))
                .collect();
            print_table(
                columns
                    .map(str::to_ascii_uppercase)
                    .each_ref()
                    .map(String::as_str),
                &rows,
            );
            println!("{} receipt(s)", rows.len());
        }
    }
    Ok(())
}

pub fn budget(config: Option<PathBuf>, format: BudgetFormat) -> anyhow::Result<()> {
    use tollgate::ledger::Cap;
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let policy = config.load_policy().map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the policy has problems:\n{}", lines.join("\n"))
    })?;
    let ledger = super::open_ledger(&config)?;
    let now = tollgate::money::now_unix();
    let mut caps = Vec::new();
    if let Some(day) = policy.per_day {
        caps.push(Cap::rolling("policy:per_day", day.0, 86_400));
    }
    if let Some(total) = policy.total {
        caps.push(Cap::lifetime("policy:total", total.0));
    }
    let policy_caps = ledger.status(&caps, now)?;
    let tree = ledger.budget_tree()?;
    let depth = |row: &tollgate::ledger::BudgetRow| {
        let mut depth = 0;
        let mut parent = row.parent.as_deref();
        while let Some(p) = parent {
            depth += 1;
            parent = tree
                .iter()
                .find(|r| r.key == p)
                .and_then(|r| r.parent.as_deref());
            if depth > 64 {
                break;
            }
        }
        depth
    };
    let usd = |m: u64| UsdMicros(m).decimal();
    let remaining = |r: &tollgate::ledger::BudgetRow| {
        r.limit_usd_micros
            .saturating_sub(r.spent_usd_micros.saturating_add(r.reserved_usd_micros))
    };
    // A budget's key is derived from a signature: show only its start, as an id.
    let short = |key: &str| {
        key.trim_start_matches("budget:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    match format {
        BudgetFormat::Json => {
            let value = serde_json::json!({
                "policy": {
                    "source": policy.source,
                    "per_call_usd": policy.per_call.decimal(),
                    "caps": policy_caps.iter().map(|c| serde_json::json!({
                        "cap": c.key, "limit_usd": usd(c.limit_usd_micros),
                        "spent_usd": usd(c.spent_usd_micros),
                        "reserved_usd": usd(c.reserved_usd_micros),
                        "remaining_usd": usd(c.remaining_usd_micros),
                    })).collect::<Vec<_>>(),
                },
                "budgets": tree.iter().map(|r| serde_json::json!({
                    "id": short(&r.key),
                    "parent": r.parent.as_deref().map(short),
                    "depth": depth(r),
                    "label": r.label,
                    "limit_usd": usd(r.limit_usd_micros),
                    "spent_usd": usd(r.spent_usd_micros),
                    "reserved_usd": usd(r.reserved_usd_micros),
                    "remaining_usd": usd(remaining(r)),
                    "first_seen": tollgate::money::rfc3339(r.first_seen),
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        BudgetFormat::Table => {
            println!(
                "policy {}: at most {} per call",
                policy.source, policy.per_call
            );
            for c in &policy_caps {
                println!(
                    "  {}: limit {}, spent {}, held {}, remaining {}",
                    match c.key.as_str() {
                        "policy:per_day" => "per day (rolling 24 h)",
                        _ => "total",
                    },
                    usd(c.limit_usd_micros),
                    usd(c.spent_usd_micros),
                    usd(c.reserved_usd_micros),
                    usd(c.remaining_usd_micros)
                );
            }
            let rows: Vec<[String; 6]> = tree
                .iter()
                .map(|r| {
                    let name = r.label.clone().unwrap_or_else(|| "(no label)".to_owned());
                    [
                        format!("{}{} {}", "  ".repeat(depth(r)), name, short(&r.key)),
                        usd(r.limit_usd_micros),
                        usd(r.spent_usd_micros),
                        usd(r.reserved_usd_micros),
                        usd(remaining(r)),
                        tollgate::money::rfc3339(r.first_seen),
                    ]
                })
                .collect();
            println!();
            print_table(
                [
                    "BUDGET",
                    "LIMIT USD",
                    "SPENT",
                    "HELD",
                    "REMAINING",
                    "FIRST USED",
                ],
                &rows,
            );
            println!(
                "{} budget(s); a child's spend also counts in every budget above it",
                rows.len()
            );
        }
    }
    Ok(())
}
