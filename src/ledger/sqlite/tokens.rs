//! Paid L402 tokens on SQLite.

use rusqlite::{OptionalExtension, params};

use super::{SqliteLedger, to_sql};
use crate::ledger::LedgerError;
use crate::ledger::tokens::{PaidToken, Tokens};

impl Tokens for SqliteLedger {
    /// Keeps a paid token for (origin, service), replacing the one there was.
    fn store_token(&self, token: &PaidToken) -> Result<(), LedgerError> {
        let expires = token.expires_at.map(|t| to_sql("time", t)).transpose()?;
        let created = to_sql("time", token.created_at)?;
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO l402_tokens
                 (origin, service, scheme, macaroon, preimage, payment_hash, expires_at,
                  created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                token.origin,
                token.service,
                token.scheme,
                token.macaroon,
                token.preimage,
                token.payment_hash,
                expires,
                created
            ])?;
            Ok(())
        })
    }

    /// The token for (origin, service) that has not expired at `now`, if any. An expired one
    /// is deleted.
    fn token(
        &self,
        origin: &str,
        service: &str,
        now: u64,
    ) -> Result<Option<PaidToken>, LedgerError> {
        let found = self.read(|tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT scheme, macaroon, preimage, payment_hash, expires_at, created_at
                     FROM l402_tokens WHERE origin = ?1 AND service = ?2",
                )?
                .query_row(params![origin, service], |row| {
                    Ok(PaidToken {
                        origin: origin.to_owned(),
                        service: service.to_owned(),
                        scheme: row.get(0)?,
                        macaroon: row.get(1)?,
                        preimage: row.get(2)?,
                        payment_hash: row.get(3)?,
                        expires_at: row
                            .get::<_, Option<i64>>(4)?
                            .map(|t| u64::try_from(t).unwrap_or(0)),
                        created_at: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
                    })
                })
                .optional()?)
        })?;
        match found {
            // A minute's margin: a token about to expire would only be refused.
            Some(t) if t.expires_at.is_some_and(|e| e <= now + 60) => {
                self.forget_token(origin, service, &t.payment_hash)?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// Deletes the token for (origin, service) if it is still the one with `payment_hash`
    /// (another call may have paid a fresh one meanwhile).
    fn forget_token(
        &self,
        origin: &str,
        service: &str,
        payment_hash: &str,
    ) -> Result<(), LedgerError> {
        self.write(|tx| {
            tx.prepare_cached(
                "DELETE FROM l402_tokens
                 WHERE origin = ?1 AND service = ?2 AND payment_hash = ?3",
            )?
            .execute(params![origin, service, payment_hash])?;
            Ok(())
        })
    }
}
