//! Paid L402 tokens, per origin and service, kept to be sent again until they expire or the
//! seller refuses them. The ledger does not know what a token means: it keeps strings.

use std::fmt;

use super::LedgerError;

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

/// Paid tokens as a store keeps them.
pub trait Tokens {
    /// Keeps a paid token for (origin, service), replacing the one there was.
    fn store_token(&self, token: &PaidToken) -> Result<(), LedgerError>;

    /// The token for (origin, service) that has not expired at `now`, if any. An expired one
    /// is deleted.
    fn token(
        &self,
        origin: &str,
        service: &str,
        now: u64,
    ) -> Result<Option<PaidToken>, LedgerError>;

    /// Deletes the token for (origin, service) if it is still the one with `payment_hash`
    /// (another call may have paid a fresh one meanwhile).
    fn forget_token(
        &self,
        origin: &str,
        service: &str,
        payment_hash: &str,
    ) -> Result<(), LedgerError>;
}
