//! Paid L402 tokens, per origin and service, kept to be sent again until they expire or the
//! seller refuses them. The ledger does not know what a token means: it keeps strings.

use std::fmt;

use rusqlite::{OptionalExtension, params};

use super::{Ledger, LedgerError, ReservationId, ReservationState, state_of, to_sql};

/// A paid token: the macaroon and the preimage that unlocks it. `Debug` hides the preimage.
#[derive(Clone, PartialEq, Eq)]
pub struct PaidToken {
    pub origin: String,
    pub service: String,
    /// `L402` or `LSAT`.
    pub scheme: String,
    pub macaroon: String,
    /// Hex; a bearer secret.
    pub preimage: String,
    pub payment_hash: String,
    /// Unix seconds after which the seller will not take it, if its caveats say.
    pub expires_at: Option<u64>,
    pub created_at: u64,
}

impl fmt::Debug for PaidToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaidToken")
            .field("origin", &self.origin)
            .field("service", &self.service)
            .field("payment_hash", &self.payment_hash)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Keeps a paid token for (origin, service), replacing the one there was.
    pub fn store_token(&self, token: &PaidToken) -> Result<(), LedgerError> {
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
    pub fn token(
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
    pub fn forget_token(
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

    /// Replaces the proof of a pending reservation: an L402 payment is recorded as pending
    /// (with its payment hash) before the invoice is paid, and its proof (the token) is known
    /// only after.
    pub fn replace_proof(
        &self,
        id: ReservationId,
        proof_json: &str,
        valid_before: u64,
    ) -> Result<(), LedgerError> {
        let valid_before = to_sql("time", valid_before)?;
        self.write(|tx| {
            let (state, _) = state_of(tx, id)?;
            if state != ReservationState::Pending {
                return Err(LedgerError::WrongState {
                    id,
                    state,
                    action: "replace the proof of",
                });
            }
            tx.prepare_cached(
                "UPDATE reservations SET proof_json = ?2, valid_before = ?3 WHERE id = ?1",
            )?
            .execute(params![id.0, proof_json, valid_before])?;
            Ok(())
        })
    }
}
