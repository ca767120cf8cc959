//! Paid L402 tokens on PostgreSQL: one row per (origin, service), shared by every host.

use super::{Cached as _, PostgresLedger, from_sql, to_sql};
use crate::ledger::LedgerError;
use crate::ledger::tokens::{PaidToken, Tokens};

impl Tokens for PostgresLedger {
    fn store_token(&self, token: &PaidToken) -> Result<(), LedgerError> {
        let expires = token.expires_at.map(|t| to_sql("time", t)).transpose()?;
        let created = to_sql("time", token.created_at)?;
        self.block(async {
            let client = self.client().await?;
            client
                .execute_cached(
                    "INSERT INTO l402_tokens
                     (origin, service, scheme, macaroon, preimage, payment_hash, expires_at,
                      created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (origin, service) DO UPDATE
                     SET scheme = excluded.scheme, macaroon = excluded.macaroon,
                         preimage = excluded.preimage, payment_hash = excluded.payment_hash,
                         expires_at = excluded.expires_at, created_at = excluded.created_at",
                    &[
                        &token.origin,
                        &token.service,
                        &token.scheme,
                        &token.macaroon,
                        &token.preimage,
                        &token.payment_hash,
                        &expires,
                        &created,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn token(
        &self,
        origin: &str,
        service: &str,
        now: u64,
    ) -> Result<Option<PaidToken>, LedgerError> {
        let found = self.block(async {
            let client = self.client().await?;
            let row = client
                .query_opt_cached(
                    "SELECT scheme, macaroon, preimage, payment_hash, expires_at, created_at
                     FROM l402_tokens WHERE origin = $1 AND service = $2",
                    &[&origin, &service],
                )
                .await?;
            row.map(|row| {
                Ok(PaidToken {
                    origin: origin.to_owned(),
                    service: service.to_owned(),
                    scheme: row.get(0),
                    macaroon: row.get(1),
                    preimage: row.get(2),
                    payment_hash: row.get(3),
                    expires_at: row
                        .get::<_, Option<i64>>(4)
                        .map(|t| from_sql("time", t))
                        .transpose()?,
                    created_at: from_sql("time", row.get(5))?,
                })
            })
            .transpose()
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

    fn forget_token(
        &self,
        origin: &str,
        service: &str,
        payment_hash: &str,
    ) -> Result<(), LedgerError> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute_cached(
                    "DELETE FROM l402_tokens
                     WHERE origin = $1 AND service = $2 AND payment_hash = $3",
                    &[&origin, &service, &payment_hash],
                )
                .await?;
            Ok(())
        })
    }
}
