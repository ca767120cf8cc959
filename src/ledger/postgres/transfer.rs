//! Export and import of the PostgreSQL ledger (the format is `ledger::transfer`'s).

use std::io::{BufRead, Write};

use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};

use super::{PostgresLedger, SCHEMA_VERSION, db, snapshot};
use crate::ledger::LedgerError;
use crate::ledger::transfer::{self, Moved, TABLES};

impl PostgresLedger {
    /// Writes every row of every table to `out`, from one snapshot.
    pub fn export(&self, out: &mut dyn Write) -> Result<Moved, LedgerError> {
        let io = |e: std::io::Error| LedgerError::Database(format!("cannot write the export: {e}"));
        self.block(async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            writeln!(out, "{}", transfer::header("postgres", SCHEMA_VERSION)).map_err(io)?;
            let mut moved = Moved::default();
            for (table, columns) in TABLES {
                let rows = tx
                    .query(
                        &format!(
                            "SELECT {} FROM {table} ORDER BY {}",
                            columns.join(", "),
                            columns[0]
                        ),
                        &[],
                    )
                    .await
                    .map_err(db)?;
                for row in &rows {
                    let mut object = Map::new();
                    for (i, column) in columns.iter().enumerate() {
                        let value = match *row.columns()[i].type_() {
                            Type::INT8 => row.get::<_, Option<i64>>(i).map(Value::from),
                            Type::TEXT => row.get::<_, Option<String>>(i).map(Value::from),
                            ref other => {
                                return Err(LedgerError::Corrupt(format!(
                                    "{table}.{column} has type {other}"
                                )));
                            }
                        };
                        object.insert((*column).to_owned(), value.unwrap_or(Value::Null));
                    }
                    writeln!(out, "{}", transfer::line(table, object)).map_err(io)?;
                }
                moved.0.insert(table, rows.len() as u64);
            }
            tx.commit().await.map_err(db)?;
            Ok(moved)
        })
    }

    /// Writes an export into this ledger, which must hold no payment, budget, approval or
    /// token yet; all or nothing, in one transaction. New reservations continue after the
    /// highest imported id.
    pub fn import(&self, input: &mut dyn BufRead) -> Result<Moved, LedgerError> {
        let rows = transfer::read(input)?;
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            // Nobody may write while the import runs (another host serving already).
            for (table, _) in TABLES {
                tx.batch_execute(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
                    .await
                    .map_err(db)?;
            }
            for (table, _) in TABLES.iter().filter(|(t, _)| *t != "ledger_meta") {
                let used: bool = tx
                    .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                    .await
                    .map_err(db)?
                    .get(0);
                if used {
                    return Err(LedgerError::Corrupt(format!(
                        "the ledger {} already holds {table}: import only into a new, empty \
                         ledger",
                        self.name
                    )));
                }
            }
            let mut moved = Moved::default();
            for row in &rows {
                let placeholders: Vec<String> =
                    (1..=row.columns.len()).map(|i| format!("${i}")).collect();
                // ledger_meta: a fact this database records already (the root key's
                // fingerprint) is kept, and checked by every host at start.
                let stmt = tx
                    .prepare_cached(&format!(
                        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
                        row.table,
                        row.columns.join(", "),
                        placeholders.join(", ")
                    ))
                    .await
                    .map_err(db)?;
                let params = row
                    .values
                    .iter()
                    .zip(stmt.params())
                    .zip(row.columns)
                    .map(|((value, ty), column)| param(value, ty, row.table, column))
                    .collect::<Result<Vec<_>, _>>()?;
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                tx.execute(&stmt, &refs).await.map_err(db)?;
                *moved.0.entry(row.table).or_default() += 1;
            }
            tx.batch_execute(
                "SELECT setval(pg_get_serial_sequence('reservations', 'id'),
                               COALESCE((SELECT MAX(id) FROM reservations), 0) + 1, false)",
            )
            .await
            .map_err(db)?;
            tx.commit().await.map_err(db)?;
            Ok(moved)
        })
    }
}

/// A JSON value as the column's type wants it.
fn param(
    value: &Value,
    ty: &Type,
    table: &str,
    column: &str,
) -> Result<Box<dyn ToSql + Sync + Send>, LedgerError> {
    let wrong = || LedgerError::Corrupt(format!("{table}.{column}: {value} is not a {ty}"));
    Ok(match (ty, value) {
        (&Type::INT8, Value::Null) => Box::new(None::<i64>),
        (&Type::INT8, v) => Box::new(Some(v.as_i64().ok_or_else(wrong)?)),
        (&Type::TEXT, Value::Null) => Box::new(None::<String>),
        (&Type::TEXT, Value::String(s)) => Box::new(Some(s.clone())),
        _ => return Err(wrong()),
    })
}
