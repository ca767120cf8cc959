//! The L402 parts of one paid call: paying the invoice through the Lightning backend (recorded
//! as pending before it is paid), keeping the paid token and sending it on later calls to the
//! same origin and service (here: the tool), and, at start, settling the Lightning payments an
//! earlier process left pending.
//!
//! The preimage is a bearer credential: it goes into the `Authorization` header and the ledger
//! (the pending proof and the token), never into a log line, a tool result or a receipt;
//! receipts show the payment hash.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::header::AUTHORIZATION;
use serde_json::{Map, Value, json};

use super::receipt::{self, Charge, Payment, ReusedToken, Settlement};
use super::{Checkout, blocking};
use crate::catalog::{HttpTool, UpstreamRequest};
use crate::ledger::{Ledger, PaidToken, ReservationId};
use crate::lightning::{BackendError, Lightning, PaymentStatus};
use crate::money::{UsdMicros, now_unix};
use crate::pay::l402::{self, L402Challenge, hash_from_hex, preimage_matches};
use crate::pay::{PayError, Proof, Quote};

/// A token whose caveats name no expiry is sent again for at most this long.
const TOKEN_DEFAULT_LIFETIME_SECS: u64 = 30 * 86_400;

/// The origin a tool's requests go to (`https://api.example.com:443`).
fn origin(tool: &HttpTool) -> String {
    tool.url.origin().ascii_serialization()
}

/// One L402 payment at a time per origin and service in this process. Calls that met the same
/// challenge while another call was paying it wait, then send the token that call paid for
/// instead of paying a second invoice (parallel tool calls are common in agents).
#[derive(Default)]
pub struct Flights(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Flights {
    /// Waits for, then holds, the right to pay `tool`'s service.
    pub async fn enter(&self, tool: &HttpTool) -> tokio::sync::OwnedMutexGuard<()> {
        let key = format!("{} {}", origin(tool), tool.name);
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Whether a 402 carries an L402 (or LSAT) challenge.
pub fn challenged(headers: &reqwest::header::HeaderMap) -> bool {
    !l402::read_challenges(headers, &mut Vec::new()).is_empty()
}

/// What to hold against the budgets for a quote: its price, plus the most its fee may add
/// (charged to the budget like the amount): for L402 the routing fee (`max_fee_msat`), for MPP
/// the Tempo transaction fee paid in the charged stablecoin (`wallet.tempo.max_fee_atomic`).
pub fn hold_usd(checkout: &Checkout, quote: &Quote) -> UsdMicros {
    if let (Some(tempo), crate::pay::Protocol::Mpp) = (&checkout.tempo, quote.offer.protocol) {
        let most = quote
            .offer
            .amount_atomic
            .saturating_add(u128::from(tempo.max_fee_atomic()));
        return quote.asset.to_usd_micros(most).unwrap_or(quote.usd);
    }
    match (&checkout.lightning, quote.offer.protocol) {
        (Some(lightning), crate::pay::Protocol::L402) => quote
            .asset
            .to_usd_micros(
                quote
                    .offer
                    .amount_atomic
                    .saturating_add(u128::from(lightning.max_fee_msat)),
            )
            .unwrap_or(quote.usd),
        _ => quote.usd,
    }
}

/// What a payment actually cost: the amount plus the fee the proof reports.
pub fn actual_usd(quote: &Quote, proof: &Proof) -> UsdMicros {
    if proof.fee_atomic == 0 {
        return quote.usd;
    }
    quote
        .asset
        .to_usd_micros(quote.offer.amount_atomic.saturating_add(proof.fee_atomic))
        .unwrap_or(quote.usd)
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

impl Checkout {
    /// Pays the quote's invoice: records the payment as pending (with its payment hash)
    /// BEFORE the backend is asked to pay, pays, checks the preimage against the hash, keeps
    /// the token for later calls, and returns the `Authorization` proof.
    pub(super) async fn pay_invoice(
        &self,
        tool: &HttpTool,
        quote: &Quote,
        reservation: ReservationId,
        now: u64,
    ) -> Result<Proof, PayError> {
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
                d.insert("service".into(), tool.name.clone().into());
                d.insert("scheme".into(), challenge.scheme.clone().into());
                d.insert("macaroon".into(), challenge.macaroon.clone().into());
                d.insert("token_expires_at".into(), json!(challenge.token_expires_at));
                d
            },
        };
        let ledger = self.ledger.clone();
        blocking(|| {
            ledger.mark_pending(reservation, &pending.to_json(), invoice.expires_at)
        })
        .map_err(|e| {
            PayError::Unpayable(format!(
                "the ledger could not record the pending payment ({e})"
            ))
        })?;
        tracing::info!(
            tool = %tool.name, backend, payment_hash = %invoice.payment_hash_hex(),
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
            l402::authorization(&challenge.scheme, &challenge.macaroon, &paid.preimage)
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
            service: tool.name.clone(),
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

    /// The paid token to send on this call, if one is kept for the tool's origin and service.
    pub(super) fn cached_token(&self, tool: &HttpTool) -> Option<PaidToken> {
        self.lightning.as_ref()?;
        tool.max_price?;
        let ledger = &self.ledger;
        match blocking(|| ledger.token(&origin(tool), &tool.name, now_unix())) {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "the ledger could not be read for a paid L402 token");
                None
            }
        }
    }

    /// The seller refused the token it had just been paid for: forget it.
    pub(super) fn forget_paid_token(&self, tool: &HttpTool, proof: &Proof) {
        let Some(hash) = proof.details.get("payment_hash").and_then(Value::as_str) else {
            return;
        };
        let ledger = &self.ledger;
        if let Err(e) =
            blocking(|| ledger.forget_token(&origin(tool), &tool.name, hash))
        {
            tracing::error!(error = %e, "could not forget a refused L402 token");
        }
    }

    /// The seller refused a kept token (it answered 402 to it): forget it.
    pub(super) fn forget_token(&self, token: &PaidToken) {
        tracing::info!(
            origin = %token.origin, service = %token.service, payment_hash = %token.payment_hash,
            "the seller refused a kept L402 token; paying afresh once"
        );
        let ledger = &self.ledger;
        if let Err(e) = blocking(|| {
            ledger.forget_token(&token.origin, &token.service, &token.payment_hash)
        }) {
            tracing::error!(error = %e, "could not forget a refused L402 token");
        }
    }
}

/// `request` with the kept token in its `Authorization` header.
pub(super) fn with_token(mut request: UpstreamRequest, token: &PaidToken) -> UpstreamRequest {
    let preimage = hash_from_hex(&token.preimage);
    let value = preimage.and_then(|p| l402::authorization(&token.scheme, &token.macaroon, &p).ok());
    if let Some(value) = value {
        request.headers.insert(AUTHORIZATION, value);
    }
    request
}

/// The `payment` of a result served on a kept token: nothing was paid for this call.
pub(super) fn reused_payment(token: &PaidToken) -> Payment {
    let short = token
        .payment_hash
        .get(..16)
        .unwrap_or(token.payment_hash.as_str());
    Payment::Reused(ReusedToken {
        protocol: "l402".to_owned(),
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

/// Settles the Lightning payments whose outcome is unknown (their call's process died, or the
/// call ended without an answer): asks the backend about each by its payment hash; a paid one
/// is committed with its receipt (and its token kept), a failed one released, one still in
/// flight left unknown. Each is claimed first (`owner`), and a payment a live call owns, in
/// this process or another, is never touched. Reservations never marked pending are left to
/// [`crate::reconcile`]. Returns a line per payment for the log.
pub async fn reconcile(
    ledger: &Ledger,
    lightning: &Lightning,
    owner: &str,
    now: u64,
) -> Vec<String> {
    let mut report = Vec::new();
    if let Err(e) =
        blocking(|| crate::checkout::lease::Leases::disown_dead_owners(ledger))
    {
        return vec![format!("cannot read pending payments: {e}")];
    }
    let pending = match blocking(|| ledger.unknown(now)) {
        Ok(p) => p,
        Err(e) => return vec![format!("cannot read pending payments: {e}")],
    };
    let lease = crate::ledger::Lease {
        owner: owner.to_owned(),
        until: now + crate::checkout::lease::LEASE_SECS,
    };
    for p in pending.into_iter().filter(|p| {
        p.protocol == crate::pay::Protocol::L402.to_string()
            && p.state == crate::ledger::ReservationState::Pending
    }) {
        let p = match blocking(|| ledger.claim(p.id, &lease, now)) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                report.push(format!("reservation {}: cannot claim it: {e}", p.id));
                continue;
            }
        };
        let line = settle_claimed(ledger, lightning, &p, now).await;
        report.push(format!("reservation {}: {line}", p.id));
        // Whatever was not settled or released goes back to unknown.
        let _ = blocking(|| ledger.disown(p.id, owner));
    }
    report
}

/// Asks the backend about one claimed L402 payment and writes what it says.
async fn settle_claimed(
    ledger: &Ledger,
    lightning: &Lightning,
    p: &crate::ledger::PendingPayment,
    now: u64,
) -> String {
    let Some(proof) = p.proof_json.as_deref().and_then(Proof::from_json) else {
        return "unreadable proof; left pending".to_owned();
    };
    let Some(hash) = proof
        .details
        .get("payment_hash")
        .and_then(Value::as_str)
        .and_then(hash_from_hex)
    else {
        return "no payment hash recorded; left pending".to_owned();
    };
    let hash_hex = hex::encode(hash);
    match lightning.backend.status(&hash).await {
        Ok(PaymentStatus::Succeeded(paid)) if preimage_matches(&paid.preimage, &hash) => {
            let line = settle_paid(ledger, p, &proof, &hash_hex, &paid, now);
            format!("({hash_hex}): {line}")
        }
        Ok(PaymentStatus::Succeeded(_)) => {
            format!("({hash_hex}): the backend's preimage does not match; left pending")
        }
        Ok(PaymentStatus::Failed(reason)) => {
            match blocking(|| ledger.release(p.id, now)) {
                Ok(()) => format!("({hash_hex}): not paid ({reason}); released"),
                Err(e) => format!("({hash_hex}): cannot release: {e}"),
            }
        }
        Ok(PaymentStatus::InFlight) => format!("({hash_hex}): still in flight; left pending"),
        Err(e) => format!("({hash_hex}): {e}; left pending"),
    }
}

/// Commits a pending L402 payment the backend says went through, and keeps its token.
fn settle_paid(
    ledger: &Ledger,
    p: &crate::ledger::PendingPayment,
    proof: &Proof,
    hash_hex: &str,
    paid: &crate::lightning::Paid,
    now: u64,
) -> String {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let d = Value::Object(proof.details.clone());
    let amount_msat: u64 = text(&d, "amount_msat").parse().unwrap_or(0);
    // The amount held covered the amount and the most fee: the actual cost is valued at the
    // rate recorded at reservation.
    let mut charge = Charge::of_row(p);
    if charge.decimals.is_none() {
        charge.decimals = Some(l402::asset().decimals);
    }
    let held = UsdMicros(p.amount_usd_micros);
    let actual = charge
        .value(u128::from(amount_msat.saturating_add(paid.fee_msat)))
        .unwrap_or(held);
    let price = charge.value(u128::from(amount_msat)).unwrap_or(actual);
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
    let receipt = receipt::receipt(
        &charge,
        &p.payee,
        price,
        Settlement {
            payer: proof.payer.clone(),
            transaction: None,
            details,
            approval: None,
            charged: actual,
            reconciled: true,
        },
        now,
    );
    let row = receipt::row(&receipt, now);
    if let Err(e) = blocking(|| ledger.commit(p.id, actual.0, row, now)) {
        return format!("paid, but the receipt could not be committed: {e}");
    }
    let d = &proof.details;
    let token = PaidToken {
        origin: text(&Value::Object(d.clone()), "origin"),
        service: text(&Value::Object(d.clone()), "service"),
        scheme: text(&Value::Object(d.clone()), "scheme"),
        macaroon: text(&Value::Object(d.clone()), "macaroon"),
        preimage: hex::encode(paid.preimage),
        payment_hash: hash_hex.to_owned(),
        expires_at: Some(
            d.get("token_expires_at")
                .and_then(Value::as_u64)
                .unwrap_or(now + TOKEN_DEFAULT_LIFETIME_SECS),
        ),
        created_at: now,
    };
    if !token.origin.is_empty()
        && !token.macaroon.is_empty()
        && let Err(e) = blocking(|| ledger.store_token(&token))
    {
        return format!("paid and committed ({actual}), but the token could not be kept: {e}");
    }
    format!(
        "paid; committed {actual} with receipt {}",
        receipt.receipt_id
    )
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
