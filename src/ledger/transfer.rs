//! Moving a ledger between backends: `tollgate ledger export` writes every row of every table
//! as JSON lines, `tollgate ledger import` writes them into an empty PostgreSQL ledger in one
//! transaction. The two backends hold the same tables and columns (PostgreSQL adds
//! `ledger_meta`), so a row moves as it is: ids, states, owners, leases, spend entries and
//! hourly totals included; budgets, pending proofs and receipts mean the same after the move.
//!
//! ```text
//! {"tollgate_ledger_export":1,"from":"sqlite","schema_version":5}
//! {"table":"reservations","row":{"id":1,"call_id":"...","state":"committed",...}}
//! ```
//!
//! The export holds secrets (recorded proofs, kept L402 preimages): keep the file as private
//! as the ledger. Only the tables and columns named in [`TABLES`] are read or written, so a
//! line cannot name anything else.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{Map, Value, json};

use super::LedgerError;

/// Every table of the ledger and its columns, in the order an import must write them (a row
/// after the rows it refers to). The first column orders an export.
pub const TABLES: &[(&str, &[&str])] = &[
    (
        "reservations",
        &[
            "id",
            "call_id",
            "fingerprint",
            "state",
            "amount_usd_micros",
            "actual_usd_micros",
            "tool",
            "payee",
            "protocol",
            "meta_json",
            "proof_json",
            "valid_before",
            "created_at",
            "settled_at",
            "owner",
            "lease_until",
        ],
    ),
    ("reservation_keys", &["reservation_id", "key"]),
    (
        "key_totals",
        &["key", "spent_usd_micros", "reserved_usd_micros"],
    ),
    (
        "spend",
        &["key", "at", "reservation_id", "amount_usd_micros"],
    ),
    ("spend_hours", &["key", "hour", "amount_usd_micros"]),
    (
        "receipts",
        &["reservation_id", "receipt_id", "at", "committed_at", "json"],
    ),
    ("revocations", &["id", "at"]),
    (
        "budgets",
        &["key", "parent", "label", "limit_usd_micros", "first_seen"],
    ),
    (
        "approvals",
        &[
            "id",
            "state",
            "tool",
            "amount_usd_micros",
            "facts_json",
            "created_at",
            "expires_at",
            "decided_at",
            "decided_by",
            "used_at",
        ],
    ),
    (
        "l402_tokens",
        &[
            "origin",
            "service",
            "scheme",
            "macaroon",
            "preimage",
            "payment_hash",
            "expires_at",
            "created_at",
        ],
    ),
    ("ledger_meta", &["name", "value"]),
];

/// The export format's version (the first line's `tollgate_ledger_export`).
pub const FORMAT: u64 = 1;

/// What an export or import moved: rows per table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved(pub BTreeMap<&'static str, u64>);

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The first line of an export.
pub(super) fn header(from: &str, schema_version: i64) -> String {
    json!({"tollgate_ledger_export": FORMAT, "from": from, "schema_version": schema_version})
        .to_string()
}

/// One row as an export line.
pub(super) fn line(table: &str, row: Map<String, Value>) -> String {
    json!({"table": table, "row": row}).to_string()
}

fn io(e: std::io::Error) -> LedgerError {
    LedgerError::Database(format!("cannot write the export: {e}"))
}

/// Writes every row of the SQLite ledger in `state_dir` (migrated to the current schema
/// first) to `out`.
pub fn export_sqlite(state_dir: &Path, out: &mut dyn Write) -> Result<Moved, LedgerError> {
    drop(super::SqliteLedger::open(state_dir)?);
    let path = state_dir.join(super::FILE_NAME);
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    // One snapshot for every table.
    let tx = conn.unchecked_transaction()?;
    writeln!(out, "{}", header("sqlite", super::sqlite::SCHEMA_VERSION)).map_err(io)?;
    let mut moved = Moved::default();
    for (table, columns) in TABLES {
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [table],
            |row| row.get(0),
        )?;
        if !exists {
            continue;
        }
        let mut stmt = tx.prepare(&format!(
            "SELECT {} FROM {table} ORDER BY {}",
            columns.join(", "),
            columns[0]
        ))?;
        let mut rows = stmt.query([])?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            let mut object = Map::new();
            for (i, column) in columns.iter().enumerate() {
                let value = match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => Value::from(n),
                    rusqlite::types::ValueRef::Text(t) => {
                        Value::from(String::from_utf8_lossy(t).into_owned())
                    }
                    other => {
                        return Err(LedgerError::Corrupt(format!(
                            "{table}.{column} holds a {:?} value",
                            other.data_type()
                        )));
                    }
                };
                object.insert((*column).to_owned(), value);
            }
            writeln!(out, "{}", line(table, object)).map_err(io)?;
            count += 1;
        }
        moved.0.insert(table, count);
    }
    Ok(moved)
}

/// One line of an export, read: the table (one of [`TABLES`]) and its values in the
/// table's column order.
pub(super) struct Row {
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub values: Vec<Value>,
}

/// Reads an export: checks its header, then yields each row. Errors name the line.
pub(super) fn read(input: &mut dyn BufRead) -> Result<Vec<Row>, LedgerError> {
    let bad = |n: usize, why: String| LedgerError::Corrupt(format!("export line {n}: {why}"));
    let mut rows = Vec::new();
    let mut header_seen = false;
    for (i, text) in input.lines().enumerate() {
        let n = i + 1;
        let text = text.map_err(|e| bad(n, e.to_string()))?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| bad(n, e.to_string()))?;
        if n == 1 {
            if value["tollgate_ledger_export"] != json!(FORMAT) {
                return Err(bad(
                    n,
                    format!("not a tollgate ledger export of format {FORMAT}"),
                ));
            }
            header_seen = true;
            continue;
        }
        let name = value["table"].as_str().unwrap_or_default();
        let Some((table, columns)) = TABLES.iter().find(|(t, _)| *t == name) else {
            return Err(bad(n, format!("unknown table {name:?}")));
        };
        let Some(object) = value["row"].as_object() else {
            return Err(bad(n, "no row object".to_owned()));
        };
        if let Some(unknown) = object.keys().find(|k| !columns.contains(&k.as_str())) {
            return Err(bad(n, format!("unknown column {table}.{unknown}")));
        }
        rows.push(Row {
            table,
            columns,
            values: columns
                .iter()
                .map(|c| object.get(*c).cloned().unwrap_or(Value::Null))
                .collect(),
        });
    }
    if !header_seen {
        return Err(bad(1, "empty: not a tollgate ledger export".to_owned()));
    }
    Ok(rows)
}
