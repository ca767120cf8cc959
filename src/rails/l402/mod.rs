//! L402 (and its legacy name LSAT): a macaroon plus a BOLT11 invoice in `WWW-Authenticate`.
//! Proving is paying: the Lightning backend pays the invoice (recorded as pending, with its
//! payment hash, BEFORE it is paid), and the proof is `Authorization: L402 <macaroon>:<preimage>`.
//! The paid token is kept and sent on later calls to the same origin and service (here: the
//! tool), so parallel and later calls pay nothing more. An unknown outcome is told by the
//! backend, by payment hash.
//!
//! The preimage is a bearer credential: it goes into the `Authorization` header and the ledger
//! (the pending proof and the token), never into a log line, a tool result or a receipt;
//! receipts show the payment hash.

pub mod wire;

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Map, Value, json};

use super::{BoxFuture, Kept, Proving, Rail, Unknown, Verdict};
use crate::ledger::blocking;
use crate::ledger::{Ledger, PaidToken, PendingPayment};
use crate::lightning::{BackendError, Lightning, PaymentStatus};
use crate::money::{UsdMicros, now_unix};
use crate::pay::assets::Asset;
use crate::pay::{Challenge, Offer, PayError, Proof, Protocol, Quote};
use crate::pay::{Payment, ReusedToken};
use crate::tool::Tool;
use wire::{L402Challenge, hash_from_hex, preimage_matches};

/// The rail's name.
pub const NAME: &str = "l402";

/// L402 (one version on the wire; LSAT is read as it).
pub const PROTOCOL: Protocol = Protocol::new(NAME, "L402", 0);

/// A token whose caveats name no expiry is sent again for at most this long.
const TOKEN_DEFAULT_LIFETIME_SECS: u64 = 30 * 86_400;

/// The L402 rail: the Lightning backend that pays invoices.
pub struct L402 {
    pub(super) lightning: Option<Lightning>,
}

/// The origin a tool's requests go to (`https://api.example.com:443`).
fn origin(tool: &dyn Tool) -> String {
    tool.origin()
}

impl Rail for L402 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn read(&self, headers: &HeaderMap, _body: &[u8], now: u64, into: &mut Challenge) {
        for challenge in wire::read_challenges(headers, &mut into.problems) {
            into.offers.push(wire::offer(&challenge, now));
        }
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        &["l402", "lsat"]
    }

    fn missing(&self) -> Option<String> {
        self.lightning
            .is_none()
            .then(|| "no Lightning backend is configured".to_owned())
    }

    /// msat, valued through the policy's rate for a sat.
    fn valuation(&self, _offer: &Offer, _assets: &[Asset]) -> Result<Asset, String> {
        Ok(wire::asset())
    }

    fn supported(&self, offer: &Offer) -> Result<(), String> {
        wire::payable(offer, self.lightning.as_ref().map(|l| l.network))
    }

    /// The price plus the most routing fee the backend may pay (`lightning.max_fee_msat`).
    fn hold(&self, quote: &Quote) -> UsdMicros {
        match &self.lightning {
            Some(lightning) => quote.with_fee(u128::from(lightning.max_fee_msat)),
            None => quote.usd,
        }
    }

    fn prove<'a>(&'a self, proving: Proving<'a>) -> BoxFuture<'a, Result<Proof, PayError>> {
        Box::pin(self.pay_invoice(proving))
    }

    fn pays_when_proving(&self) -> bool {
        true
    }

    /// Asks the backend by payment hash: paid → committed (and its token kept), failed or
    /// never seen → released, in flight → left unknown.
    fn reconcile<'a>(&'a self, unknown: Unknown<'a>) -> BoxFuture<'a, Result<Verdict, String>> {
        let Unknown {
            ledger,
            payment,
            now,
            ..
        } = unknown;
        Box::pin(async move {
            let lightning = self
                .lightning
                .as_ref()
                .ok_or("no Lightning backend is configured ([lightning])")?;
            let proof = payment
                .proof_json
                .as_deref()
                .and_then(Proof::from_json)
                .ok_or("its proof is unreadable")?;
            let hash = proof
                .details
                .get("payment_hash")
                .and_then(Value::as_str)
                .and_then(hash_from_hex)
                .ok_or("no payment hash was recorded")?;
            let hash_hex = hex::encode(hash);
            match lightning.backend.status(&hash).await {
                Ok(PaymentStatus::Succeeded(paid)) if preimage_matches(&paid.preimage, &hash) => {
                    Ok(paid_verdict(ledger, payment, &proof, &hash_hex, &paid, now))
                }
                Ok(PaymentStatus::Succeeded(_)) => Err(format!(
                    "the backend's preimage for {hash_hex} does not match its payment hash"
                )),
                Ok(PaymentStatus::Failed(reason)) => {
                    tracing::info!(payment_hash = %hash_hex, %reason, "a Lightning payment failed");
                    Ok(Verdict::Unpaid)
                }
                Ok(PaymentStatus::InFlight) => Ok(Verdict::Open),
                Err(e) => Err(format!("{hash_hex}: {e}")),
            }
        })
    }

    fn kept(&self, ledger: &Ledger, tool: &dyn Tool, now: u64) -> Option<Kept> {
        self.lightning.as_ref()?;
        tool.max_price()?;
        let token = match blocking(|| ledger.token(&origin(tool), tool.name(), now)) {
            Ok(token) => token?,
            Err(e) => {
                tracing::warn!(error = %e, "the ledger could not be read for a paid L402 token");
                return None;
            }
        };
        let preimage = hash_from_hex(&token.preimage)?;
        let value = wire::authorization(&token.scheme, &token.macaroon, &preimage).ok()?;
        Some(Kept {
            rail: NAME,
            headers: vec![(AUTHORIZATION, value)],
            payment: reused_payment(&token),
            payment_hash: token.payment_hash.clone(),
            origin: token.origin.clone(),
            service: token.service.clone(),
        })
    }

    fn shared_per_service(&self, headers: &HeaderMap) -> bool {
        self.lightning.is_some() && !wire::read_challenges(headers, &mut Vec::new()).is_empty()
    }

    fn forget(&self, ledger: &Ledger, tool: &dyn Tool, payment_hash: &str) {
        if let Err(e) = blocking(|| ledger.forget_token(&origin(tool), tool.name(), payment_hash)) {
            tracing::error!(error = %e, "could not forget a refused L402 token");
        }
    }
}

impl L402 {
    /// Pays the quote's invoice: records the payment as pending (with its payment hash)
    /// BEFORE the backend is asked to pay, pays, checks the preimage against the hash, keeps
    /// the token for later calls, and returns the `Authorization` proof.
    async fn pay_invoice(&self, proving: Proving<'_>) -> Result<Proof, PayError> {
        let Proving {
            quote,
            tool,
            reservation,
            ledger,
            now,
        } = proving;
        let lightning = self
            .lightning
            .as_ref()
            .ok_or_else(|| PayError::Unpayable("no Lightning backend is configured".to_owned()))?;
        let challenge = L402Challenge::from_raw(&quote.offer.raw).map_err(PayError::Unpayable)?;
        let invoice = &challenge.invoice;
        invoice
            .check(lightning.network, now)
            .map_err(PayError::Unpayable)?;
        let backend = lightning.backend.name();
        let origin = origin(tool);
        let mut details = Map::new();
        details.insert("payment_hash".into(), invoice.payment_hash_hex().into());
        details.insert("backend".into(), backend.into());
        details.insert("amount_msat".into(), invoice.amount_msat.to_string().into());
        details.insert("amount_sats".into(), sats(invoice.amount_msat).into());
        details.insert("rate_unit".into(), "sat".into());
        let pending = Proof {
            headers: Vec::new(),
            payer: format!("lightning:{backend}"),
            valid_before: invoice.expires_at,
            fee_atomic: 0,
            details: {
                let mut d = details.clone();
                d.insert("origin".into(), origin.clone().into());
                d.insert("service".into(), tool.name().into());
                d.insert("scheme".into(), challenge.scheme.clone().into());
                d.insert("macaroon".into(), challenge.macaroon.clone().into());
                d.insert("token_expires_at".into(), json!(challenge.token_expires_at));
                d
            },
        };
        blocking(|| ledger.mark_pending(reservation, &pending.to_json(), invoice.expires_at))
            .map_err(|e| {
                PayError::Unpayable(format!(
                    "the ledger could not record the pending payment ({e})"
                ))
            })?;
        tracing::info!(
            tool = %tool.name(), backend, payment_hash = %invoice.payment_hash_hex(),
            amount_msat = invoice.amount_msat, "paying a Lightning invoice"
        );
        let paid = match lightning
            .backend
            .pay(&invoice.bolt11, lightning.max_fee_msat, lightning.timeout)
            .await
        {
            Ok(paid) => paid,
            Err(BackendError::Refused(reason)) => return Err(PayError::Unpayable(reason)),
            Err(BackendError::Unknown(reason)) => {
                return Err(PayError::OutcomeUnknown(format!(
                    "the Lightning payment of {} (payment hash {}) has an unknown outcome: \
                     {reason}. It stays pending and is checked with the backend when tollgate \
                     next starts; it is never paid twice",
                    quote.usd,
                    invoice.payment_hash_hex()
                )));
            }
        };
        if !preimage_matches(&paid.preimage, &invoice.payment_hash) {
            return Err(PayError::OutcomeUnknown(format!(
                "the Lightning backend reported the invoice paid, but its preimage does not hash \
                 to the payment hash {}; the payment stays pending for the owner to check",
                invoice.payment_hash_hex()
            )));
        }
        if paid.fee_msat > lightning.max_fee_msat {
            tracing::warn!(
                fee_msat = paid.fee_msat,
                max_fee_msat = lightning.max_fee_msat,
                backend,
                "the backend paid a routing fee above lightning.max_fee_msat; it is charged"
            );
        }
        let authorization =
            wire::authorization(&challenge.scheme, &challenge.macaroon, &paid.preimage)
                .map_err(|e| PayError::OutcomeUnknown(format!("paid, but {e}")))?;
        let token_expires = challenge
            .token_expires_at
            .unwrap_or(now + TOKEN_DEFAULT_LIFETIME_SECS);
        details.insert("fee_msat".into(), paid.fee_msat.to_string().into());
        let proof = Proof {
            headers: vec![(AUTHORIZATION, authorization)],
            payer: format!("lightning:{backend}"),
            valid_before: token_expires,
            fee_atomic: u128::from(paid.fee_msat),
            details,
        };
        let token = PaidToken {
            origin,
            service: tool.name().to_owned(),
            scheme: challenge.scheme.clone(),
            macaroon: challenge.macaroon.clone(),
            preimage: hex::encode(paid.preimage),
            payment_hash: invoice.payment_hash_hex(),
            expires_at: Some(token_expires),
            created_at: now,
        };
        // Paid: from here on a failure to write is logged, never "nothing was paid". The
        // token is kept at once, so a call after a lost answer sends it instead of paying.
        blocking(|| {
            if let Err(e) = ledger.replace_proof(reservation, &proof.to_json(), token_expires) {
                tracing::error!(error = %e, "paid, but the proof could not be recorded");
            }
            if let Err(e) = ledger.store_token(&token) {
                tracing::error!(error = %e, "paid, but the token could not be kept for reuse");
            }
        });
        Ok(proof)
    }
}

/// What the backend's "paid" means for a payment whose outcome was unknown: committed at the
/// amount plus the routing fee, and its token kept for the next call.
fn paid_verdict(
    ledger: &Ledger,
    payment: &PendingPayment,
    proof: &Proof,
    hash_hex: &str,
    paid: &crate::lightning::Paid,
    now: u64,
) -> Verdict {
    let text = |k: &str| {
        proof
            .details
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let amount_msat: u64 = text("amount_msat").parse().unwrap_or(0);
    // Valued at the rate recorded at reservation.
    let mut charge = crate::pay::Charge::of_row(payment);
    // Rows from before decimals were recorded: msat, a thousandth of a sat.
    charge.decimals = charge.decimals.or(Some(wire::asset().decimals));
    let charged = charge
        .value(u128::from(amount_msat.saturating_add(paid.fee_msat)))
        .map(|u| u.0);
    let token = PaidToken {
        origin: text("origin"),
        service: text("service"),
        scheme: text("scheme"),
        macaroon: text("macaroon"),
        preimage: hex::encode(paid.preimage),
        payment_hash: hash_hex.to_owned(),
        expires_at: Some(
            proof
                .details
                .get("token_expires_at")
                .and_then(Value::as_u64)
                .unwrap_or(now + TOKEN_DEFAULT_LIFETIME_SECS),
        ),
        created_at: now,
    };
    if !token.origin.is_empty()
        && !token.macaroon.is_empty()
        && let Err(e) = blocking(|| ledger.store_token(&token))
    {
        tracing::error!(error = %e, "paid, but the token could not be kept for reuse");
    }
    let mut details = proof.details.clone();
    for internal in [
        "macaroon",
        "origin",
        "service",
        "scheme",
        "token_expires_at",
    ] {
        details.remove(internal);
    }
    details.insert("fee_msat".into(), paid.fee_msat.to_string().into());
    Verdict::Paid {
        transaction: None,
        price_usd_micros: charge.value(u128::from(amount_msat)).map(|u| u.0),
        charged_usd_micros: charged,
        reverted: false,
        details,
    }
}

/// The `payment` of a result served on a kept token: nothing was paid for this call.
fn reused_payment(token: &PaidToken) -> Payment {
    let short = token
        .payment_hash
        .get(..16)
        .unwrap_or(token.payment_hash.as_str());
    Payment::Reused(ReusedToken {
        protocol: NAME.to_owned(),
        reused: true,
        amount_usd: "0".to_owned(),
        amount_usd_micros: 0,
        amount_msat: "0".to_owned(),
        payee: token.origin.clone(),
        payment_hash: token.payment_hash.clone(),
        receipt_id: format!("reused-{short}"),
        note: "served on an L402 token paid earlier (payment_hash); nothing was paid for this call"
            .to_owned(),
        at: crate::money::rfc3339(now_unix()),
    })
}

/// `a msat` as sats in decimal (`"21"`, `"21.5"`): integers only.
fn sats(msat: u64) -> String {
    let (whole, rest) = (msat / 1000, msat % 1000);
    if rest == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{:03}", rest)
            .trim_end_matches('0')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::sats;

    #[test]
    fn sats_are_written_exactly() {
        assert_eq!(sats(21_000), "21");
        assert_eq!(sats(21_500), "21.5");
        assert_eq!(sats(1), "0.001");
        assert_eq!(sats(0), "0");
    }
}
