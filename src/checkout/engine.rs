//! The saga of one call: send; on a 402 read every offer, choose one under the rules, have it
//! approved, reserve it against every cap, prove it (or re-send the proof of this very call
//! whose outcome is unknown), retry exactly once, read the settlement, commit the receipt.
//!
//! Never pays twice for one call: a second 402 after a signed payment is an error, not a new
//! payment; a paid retry whose outcome is unknown (timeout, connection lost) leaves its proof
//! pending and gives it up, and calling again with the same tool, arguments and offer claims
//! that proof and re-sends it (the same EIP-3009 nonce, which can settle at most once). A
//! payment in flight in a live call is never taken: a parallel identical call pays its own.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::approve::Ask;
use super::lease::{Held, Leases};
use super::receipt::{self, Settlement};
use super::{Call, Checkout, Counter, Gate, HttpCounter, Outcome, Port, Sold, Tool, blocking};
use crate::approval::ApprovalRecord;
use crate::catalog::{HttpTool, UpstreamRequest};
use crate::ledger::{LedgerError, NewReservation, PendingPayment, Proved};
use crate::money::{UsdMicros, now_unix};
use crate::pay::{self, Challenge, Judgement, PayError, Proof, Quote, Receipt, Refusal};
use crate::pay::{Charge, Payment};
use crate::rails::{Kept, PaidAnswer, Proving, Rail};
use crate::upstream::{Limits, Reply, Stage, UpstreamError};

/// Which attempt at paying one call this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// At the price the seller asked on its last calls, before it asks ([`super::ahead`]).
    Ahead,
    First,
    /// On a fresh challenge, after the first went stale; never followed by another.
    Fresh,
}

impl Checkout {
    /// A credential kept from an earlier payment for this tool, on any rail.
    fn kept(&self, tool: &dyn Tool) -> Option<Kept> {
        let now = now_unix();
        self.rails
            .iter()
            .find_map(|r| r.kept(&*self.ledger, tool, now))
    }

    /// Runs one call of `call.tool`: the request, and the payment when the upstream asks for
    /// one and the rules allow it.
    pub async fn call<P: Port, C: Counter>(
        &self,
        call: Call<'_, C>,
        port: &P,
    ) -> Outcome<P::Halt, C::Answer> {
        let tool = call.tool();
        // A credential paid earlier for this origin and service (an L402 token) is sent on the
        // first request.
        let mut kept = self.kept(tool);
        if kept.is_none()
            && let Some(outcome) = self.pay_ahead(&call, port).await
        {
            return outcome;
        }
        // Held until this call has paid (or given up) once it meets a challenge whose payment
        // serves every call to the service: a parallel call to it waits, then sends what this
        // one paid for (`Flights`).
        let mut flight = None;
        loop {
            let headers: Vec<_> = kept.iter().flat_map(|k| k.headers.clone()).collect();
            match self.exchange(call.counter, &headers, port).await {
                Exchange::Cancelled => return Outcome::Cancelled,
                Exchange::PaymentRequired { headers, body } => {
                    // A refused credential is forgotten; the 402 that refused it is paid once,
                    // afresh.
                    if let Some(refused) = kept.take() {
                        tracing::info!(origin = %refused.origin, service = %refused.service,
                            payment_hash = %refused.payment_hash,
                            "the seller refused a kept credential; paying afresh once");
                        if let Some(rail) = self.rails.named(refused.rail) {
                            rail.forget(&*self.ledger, tool, &refused.payment_hash);
                        }
                    } else if flight.is_none()
                        && self.rails.iter().any(|r| r.shared_per_service(&headers))
                    {
                        flight = tokio::select! {
                            guard = self.flights.enter(tool) => Some(guard),
                            () = port.cancelled() => return Outcome::Cancelled,
                        };
                        kept = self.kept(tool);
                        if let Some(paid) = &kept {
                            tracing::info!(tool = %tool.name(), payment_hash = %paid.payment_hash,
                                "a parallel call paid this service meanwhile; sending what it kept");
                            continue;
                        }
                    }
                    let outcome = self.pay(&call, &headers, &body, port).await;
                    drop(flight);
                    return outcome;
                }
                Exchange::Answered { answer, .. } => {
                    return Outcome::Answered {
                        answer,
                        payment: kept.map(|k| k.payment),
                        meta: Map::new(),
                    };
                }
                Exchange::Failed(e) => {
                    return Outcome::failed(tool.redact(&format!("`{}` failed: {e}", tool.name())));
                }
            }
        }
    }

    /// Pays at once, with the call's first request, the offer `call`'s seller asked for and
    /// settled on its last calls ([`super::ahead`]); `None` when this call asks the seller
    /// first (no such offer, or one the rules would not pay now, or one a person would have
    /// to approve): nothing was reserved or signed then.
    async fn pay_ahead<P: Port, C: Counter>(
        &self,
        call: &Call<'_, C>,
        port: &P,
    ) -> Option<Outcome<P::Halt, C::Answer>> {
        let tool = call.tool();
        if !tool.pays_ahead() || tool.max_price().is_none() {
            return None;
        }
        let Some(mut offer) = self.ahead.offer(tool.name()) else {
            tracing::debug!(tool = %tool.name(), "no known price to pay ahead");
            return None;
        };
        if !self.rails.get(offer.protocol)?.pays_ahead() || !self.policy_permits(tool) {
            return None;
        }
        // The payment names the resource it pays for: this call's, not the earlier one's.
        if let (Some(url), Some(Value::Object(resource))) =
            (call.counter.resource_url(), offer.resource.as_mut())
            && resource.contains_key("url")
        {
            resource.insert("url".to_owned(), Value::String(url));
        }
        let challenge = Challenge {
            offers: vec![offer],
            ..Challenge::default()
        };
        let quote = match pay::choose(&challenge, &self.rules(tool, call.caller)) {
            Ok(quote) => quote,
            Err(judged) => {
                tracing::debug!(tool = %tool.name(), ?judged, "the known price is not payable now; asking the seller first");
                return None;
            }
        };
        let now = now_unix();
        if self.approval_reason(tool, &quote, call.caller).is_some() {
            tracing::debug!(tool = %tool.name(), "a person must approve; asking the seller first");
            return None;
        }
        let approval = ApprovalRecord::by_policy(quote.usd, now);
        Some(
            self.pay_quote(call, quote, approval, port, Attempt::Ahead)
                .await,
        )
    }

    /// Sends the call once, unpaid, through its counter: what the seller asks for, if anything
    /// (`price_check`); `None` when the caller cancelled meanwhile. Pays nothing.
    pub async fn peek<P: Port, C: Counter>(
        &self,
        counter: &C,
        port: &P,
    ) -> Option<Result<Sold<C::Answer>, String>> {
        match self.exchange(counter, &[], port).await {
            Exchange::Cancelled => None,
            Exchange::PaymentRequired { headers, body } => {
                Some(Ok(Sold::PaymentRequired { headers, body }))
            }
            Exchange::Answered { answer, headers } => Some(Ok(Sold::Answered { answer, headers })),
            Exchange::Failed(e) => Some(Err(e)),
        }
    }

    /// Sends the call once through its counter, with what every rail adds to a request and
    /// `headers` (a proof's, a kept credential's), and sorts what came back: what the engine
    /// does next depends on which it is.
    async fn exchange<P: Port, C: Counter>(
        &self,
        counter: &C,
        headers: &[(HeaderName, HeaderValue)],
        port: &P,
    ) -> Exchange<C::Answer> {
        let mut all = tool_headers(&self.rails);
        all.extend(headers.iter().cloned());
        let progress = |line| port.progress(line);
        let sent = tokio::select! {
            sent = counter.send(&all, &progress) => sent,
            () = port.cancelled() => {
                tracing::info!(tool = %counter.tool().name(), "call cancelled by the client; upstream request dropped");
                return Exchange::Cancelled;
            }
        };
        match sent {
            Ok(Sold::PaymentRequired { headers, body }) => {
                Exchange::PaymentRequired { headers, body }
            }
            Ok(Sold::Answered { answer, headers }) => Exchange::Answered { answer, headers },
            Err(e) => Exchange::Failed(e),
        }
    }

    /// The 402 path of one call: the offers, the choice, the approval, then paying.
    async fn pay<P: Port, C: Counter>(
        &self,
        call: &Call<'_, C>,
        headers: &HeaderMap,
        body: &[u8],
        port: &P,
    ) -> Outcome<P::Halt, C::Answer> {
        let tool = call.tool();
        let challenge = self.rails.read_challenge(headers, body);
        if tool.max_price().is_none() {
            return Outcome::failed(tool.redact(&format!(
                "`{}` answered 402 Payment Required, but this tool has no max_price, so tollgate \
                 never pays for it; nothing was paid. {}",
                tool.name(),
                describe(&challenge)
            )));
        }
        if !self.policy_permits(tool) {
            return Outcome::failed(format!(
                "the policy ({}) does not allow paying for `{}` (host {}); nothing was paid",
                self.policy.source,
                tool.name(),
                tool.host()
            ));
        }
        let quote = match pay::choose(&challenge, &self.rules(tool, call.caller)) {
            Ok(quote) => quote,
            Err(judged) => {
                return Outcome::failed(tool.redact(&refusal_message(tool, &challenge, &judged)));
            }
        };
        // Above the threshold a person decides, before anything is signed (signatures expire
        // within seconds to a minute).
        let approval = match self.approve(call, &quote, port).await {
            Ok(approval) => approval,
            Err(stopped) => return stopped,
        };
        self.pay_quote(call, quote, approval, port, Attempt::First)
            .await
    }

    /// Whether the policy lets tollgate pay for `tool` at all (its `tools` and `hosts`).
    fn policy_permits(&self, tool: &dyn Tool) -> bool {
        self.policy.tools.permits(tool.name()) && self.policy.hosts.permits(&tool.host())
    }

    /// The approval step: by the policy below every threshold, else by a person, asked
    /// through the transport.
    async fn approve<P: Port, C: Counter>(
        &self,
        call: &Call<'_, C>,
        quote: &Quote,
        port: &P,
    ) -> Result<ApprovalRecord, Outcome<P::Halt, C::Answer>> {
        let now = now_unix();
        let Some(reason) = self.approval_reason(call.tool(), quote, call.caller) else {
            return Ok(ApprovalRecord::by_policy(quote.usd, now));
        };
        if self.approval.secret.is_none() {
            return Err(Outcome::failed(format!(
                "`{}`: {reason}, so a person must approve it, but this tollgate has no approval \
                 secret (it could not write its state directory); nothing was paid",
                call.tool().name()
            )));
        }
        let facts = self.facts(call.tool(), call.arguments, quote, call.caller, reason, now);
        match port.approve(&Ask { facts }).await {
            Gate::Pay(approval) => Ok(approval),
            Gate::Refuse(message) => Err(Outcome::Failed(message)),
            Gate::Halt(halt) => Err(Outcome::Halted(halt)),
        }
    }

    /// Pays the chosen, approved offer: reserve, prove, record pending, send, commit.
    async fn pay_quote<P: Port, C: Counter>(
        &self,
        call: &Call<'_, C>,
        quote: Quote,
        approval: ApprovalRecord,
        port: &P,
        attempt: Attempt,
    ) -> Outcome<P::Halt, C::Answer> {
        let tool = call.tool();
        let Some(rail) = self.rails.get(quote.offer.protocol) else {
            return Outcome::failed(format!(
                "`{}`: {} is not a rail tollgate has; nothing was paid",
                tool.name(),
                quote.offer.protocol
            ));
        };
        // After approval and before the reservation: a challenge too close to its expiry is
        // not signed; a fresh one is fetched.
        if let Some(why) = rail.stale(&quote.offer, now_unix()) {
            return self
                .pay_fresh(call, &quote, approval, port, attempt, &why)
                .await;
        }
        let now = now_unix();
        let ledger = &self.ledger;
        let in_ledger = |what: &str, e: LedgerError| {
            Outcome::failed(format!(
                "`{}`: the ledger could not {what} ({e}); nothing was paid",
                tool.name()
            ))
        };
        let (held, proof, resent) = match self.claim_or_reserve(call, rail, &quote, now) {
            Err(refused) => return Outcome::Failed(refused),
            Ok(Start::Resend(resend)) => {
                let (held, proof, payment) = *resend;
                (held, proof, Some(payment))
            }
            // Signed and recorded pending in the reservation's own transaction.
            Ok(Start::Signed(mut held, proof)) => {
                held.proof_recorded();
                (held, proof, None)
            }
            Ok(Start::Reserved(mut held)) => {
                let id = held.id();
                let proving = Proving {
                    quote: &quote,
                    tool,
                    reservation: id,
                    ledger: &**ledger,
                    now,
                };
                let proof = match rail.prove(proving).await {
                    Ok(proof) => proof,
                    // Sent, outcome unknown: it stays pending (and reserved), never released.
                    Err(PayError::OutcomeUnknown(reason)) => {
                        held.proof_recorded();
                        held.disown();
                        return Outcome::failed(format!("`{}`: {reason}", tool.name()));
                    }
                    Err(e) => {
                        drop(held);
                        return Outcome::failed(format!(
                            "`{}`: {e}; nothing was paid",
                            tool.name()
                        ));
                    }
                };
                // Recorded before the proof leaves the process (a crash after this line leaves
                // a pending payment that a retry re-sends, never a second one). A rail whose
                // proving moves the money recorded its payment as pending before paying.
                if !rail.pays_when_proving()
                    && let Err(e) =
                        blocking(|| ledger.mark_pending(id, &proof.to_json(), proof.valid_before))
                {
                    drop(held);
                    return in_ledger("record the pending payment", e);
                }
                held.proof_recorded();
                (held, proof, None)
            }
        };
        let reused = resent.is_some();
        port.progress(format!(
            "{} {} {}: paying {} to {} ({})",
            if reused {
                "re-sending the signed payment"
            } else if attempt == Attempt::Ahead {
                "signed ahead, at the price asked on the last calls"
            } else if rail.pays_when_proving() {
                "paid; sending the proof"
            } else {
                "signed"
            },
            quote.offer.protocol,
            quote.offer.network,
            quote.usd,
            quote.offer.payee,
            quote.asset.symbol
        ));
        tracing::info!(
            tool = %tool.name(), protocol = %quote.offer.protocol, network = %quote.offer.network,
            amount_atomic = %quote.offer.amount_atomic, usd = %quote.usd, payee = %quote.offer.payee,
            reused, ahead = attempt == Attempt::Ahead, "paying"
        );

        // Cancelled after the proof left: `held` gives the payment up (unknown) as it drops.
        match self.exchange(call.counter, &proof.headers, port).await {
            Exchange::Cancelled => Outcome::Cancelled,
            Exchange::PaymentRequired { headers, body } => {
                let refused = Refused {
                    held,
                    proof,
                    resent,
                    headers: &headers,
                    body: &body,
                };
                self.paid_and_refused(call, rail, quote, approval, refused, port, attempt)
                    .await
            }
            Exchange::Answered { answer, headers } => {
                let mut proof = proof;
                let paid = PaidAnswer {
                    quote: &quote,
                    proof: &mut proof,
                    headers: &headers,
                };
                let settled = rail.settlement(paid).await;
                // A seller that settled this offer may be paid it ahead on later calls.
                if settled.transaction.is_some() && rail.pays_ahead() && tool.pays_ahead() {
                    self.ahead.settled(tool.name(), &quote.offer);
                }
                let receipt = self.commit(
                    call,
                    held,
                    &quote,
                    &proof,
                    settled.transaction,
                    settled.details,
                    approval,
                );
                tracing::info!(
                    tool = %tool.name(), receipt = %receipt.receipt_id,
                    transaction = ?receipt.transaction, usd = %quote.usd, "paid"
                );
                Outcome::Answered {
                    answer,
                    payment: Some(Payment::Receipt(Box::new(receipt))),
                    meta: settled.meta,
                }
            }
            Exchange::Failed(e) if rail.pays_when_proving() => {
                // Paid, and what was paid for is kept: the next call sends it, pays nothing.
                let receipt = self.commit(call, held, &quote, &proof, None, Map::new(), approval);
                Outcome::failed(tool.redact(&format!(
                    "`{}`: the request with the paid {} credential failed ({e}). The payment of \
                     {} went through (receipt {}); calling again sends the same credential and \
                     pays nothing more.",
                    tool.name(),
                    quote.offer.protocol,
                    quote.usd,
                    receipt.receipt_id
                )))
            }
            Exchange::Failed(e) => {
                // Unknown outcome: the payment is given up (unknown), so a retry of the same
                // call claims it and re-sends the same proof.
                held.disown();
                Outcome::failed(tool.redact(&format!(
                    "`{}`: the paid request failed ({e}); the payment of {} may or may not have \
                     settled. Calling again with the same arguments re-sends the same signed \
                     payment (it can settle at most once), never a new one.",
                    tool.name(),
                    quote.usd
                )))
            }
        }
    }

    /// Where a payment starts: the unknown proof of this very call, claimed to be re-sent, or
    /// a new reservation against every cap.
    fn claim_or_reserve<C: Counter>(
        &self,
        call: &Call<'_, C>,
        rail: &dyn Rail,
        quote: &Quote,
        now: u64,
    ) -> Result<Start, String> {
        let tool = call.tool();
        let key = fingerprint(tool.name(), call.arguments, quote);
        let lease = self.leases.lease(now);
        let new = |unless_call_open| NewReservation {
            call_id: hex::encode(rand::random::<[u8; 8]>()),
            fingerprint: key.clone(),
            amount_usd_micros: rail.hold(quote).0,
            caps: self.caps(call.caller),
            tool: tool.name().to_owned(),
            payee: quote.offer.payee.clone(),
            protocol: quote.offer.protocol.to_string(),
            meta_json: charge_of(quote, call.arguments, tool).to_json(),
            lease: Some(lease.clone()),
            unless_call_open,
        };
        // Nearly every call: nothing of this call is open, and the reservation's own
        // transaction says so (no read before it).
        match self.reserve(rail, quote, new(true), now) {
            Err(LedgerError::CallOpen) => {}
            reserved => return reserved.map_err(|e| refusal(tool, quote, e)),
        }
        // A payment of this very call is open. A retry of a call whose payment has an unknown
        // outcome (its process died, or the call ended without an answer) re-sends that
        // proof: the claim makes this call its one owner. A payment in flight in a live call
        // is never taken: this call then pays its own.
        let ledger = &self.ledger;
        let claimed = blocking(|| {
            let open = ledger.owners_of(&key)?;
            // The same call made earlier by a process on this host that has died since: its
            // payment is unknown now, not in flight (its lease has not lapsed yet).
            Leases::disown_dead_among(&**ledger, open)?;
            ledger.claim_unknown(&key, &lease, now)
        })
        .map_err(|e| {
            format!(
                "`{}`: the ledger could not be read ({e}); nothing was paid",
                tool.name()
            )
        })?;
        if let Some(payment) = claimed {
            let mut held = self.leases.hold(payment.id);
            held.proof_recorded();
            match payment.proof_json.as_deref().and_then(Proof::from_json) {
                // An L402 payment recorded before its invoice was paid has no proof to send
                // (the backend tells its outcome), and an expired proof cannot settle any
                // more: both are left unknown, for reconciliation.
                Some(proof) if proof.valid_before > now + 5 && !proof.headers.is_empty() => {
                    return Ok(Start::Resend(Box::new((held, proof, payment))));
                }
                _ => held.disown(),
            }
        }
        self.reserve(rail, quote, new(false), now)
            .map_err(|e| refusal(tool, quote, e))
    }

    /// A new reservation against every cap; for a rail that signs at once, signed and recorded
    /// pending in the same transaction.
    fn reserve(
        &self,
        rail: &dyn Rail,
        quote: &Quote,
        new: NewReservation,
        now: u64,
    ) -> Result<Start, LedgerError> {
        let ledger = &self.ledger;
        if rail.signs_at_once() {
            // The signature is made inside the reservation's transaction and recorded there:
            // one durable write, and nothing signed without a reservation.
            let mut signed = None;
            let id = blocking(|| {
                ledger.reserve_proved(new, now, &mut |_| {
                    let proof = rail.sign(quote, now).map_err(|e| e.to_string())?;
                    let proved = Proved {
                        proof_json: proof.to_json(),
                        valid_before: proof.valid_before,
                    };
                    signed = Some(proof);
                    Ok(proved)
                })
            })?;
            return match signed {
                Some(proof) => Ok(Start::Signed(self.leases.hold(id), proof)),
                None => Err(LedgerError::NotProved(format!(
                    "the ledger recorded reservation {id} without its signature"
                ))),
            };
        }
        // From here the reservation is this call's; dropping the hold before a proof is
        // recorded releases it.
        let id = blocking(|| ledger.reserve(new, now))?;
        Ok(Start::Reserved(self.leases.hold(id)))
    }
}

/// Why a reservation was not made, for the model: which cap it does not fit in (with the fee
/// bound held), why the proof could not be made, or what the ledger said.
fn refusal(tool: &dyn Tool, quote: &Quote, error: LedgerError) -> String {
    match error {
        LedgerError::Exceeded {
            key,
            limit_usd_micros,
            spent_usd_micros,
            reserved_usd_micros,
            requested_usd_micros,
            ..
        } => {
            // A fee bound (Lightning routing, Tempo gas) is held with the price.
            let with_fee = if requested_usd_micros > quote.usd.0 {
                format!(
                    " (held with the most its fee may cost: {})",
                    UsdMicros(requested_usd_micros)
                )
            } else {
                String::new()
            };
            format!(
                "`{}` costs {}{with_fee}, which does not fit in {} (limit {}, spent {}, held for \
                 calls in flight {}); nothing was paid",
                tool.name(),
                quote.usd,
                describe_cap(&key),
                UsdMicros(limit_usd_micros),
                UsdMicros(spent_usd_micros),
                UsdMicros(reserved_usd_micros)
            )
        }
        LedgerError::NotProved(why) => format!("`{}`: {why}; nothing was paid", tool.name()),
        e => format!(
            "`{}`: the ledger could not reserve the payment ({e}); nothing was paid",
            tool.name()
        ),
    }
}

impl Checkout {
    /// The seller answered 402 to a paid request.
    #[allow(clippy::too_many_arguments)]
    async fn paid_and_refused<P: Port, C: Counter>(
        &self,
        call: &Call<'_, C>,
        rail: &dyn Rail,
        quote: Quote,
        approval: ApprovalRecord,
        refused: Refused<'_>,
        port: &P,
        attempt: Attempt,
    ) -> Outcome<P::Halt, C::Answer> {
        let tool = call.tool();
        let Refused {
            held,
            proof,
            resent,
            headers,
            body,
        } = refused;
        if rail.pays_when_proving() {
            // The invoice is paid (the preimage proves it): the money is gone whatever the
            // seller thinks of the proof. Commit it, forget what was kept, pay no more.
            let receipt = self.commit(call, held, &quote, &proof, None, Map::new(), approval);
            let hash = receipt
                .details
                .get("payment_hash")
                .and_then(Value::as_str)
                .unwrap_or("");
            rail.forget(&*self.ledger, tool, hash);
            return Outcome::failed(tool.redact(&format!(
                "`{}`: the seller answered 402 again to the {} proof tollgate had just paid {} \
                 for (receipt {}, payment hash {hash}). tollgate pays once per call, so nothing \
                 more was paid.",
                tool.name(),
                quote.offer.protocol,
                quote.usd,
                receipt.receipt_id,
            )));
        }
        // The seller refused a proof it had seen before: it may have settled it already (its
        // nonce is used). Ask the chain now, and say what it says.
        if let Some(payment) = resent {
            let reason = self.rails.read_challenge(headers, body).seller_error;
            return self
                .resent_refused(tool, &quote, held, &payment, reason)
                .await;
        }
        // MPP `payment-expired`: the credential came too late and was not used; one fresh
        // challenge, signed anew, is the one exception to "never sign again".
        if rail.refused_as_expired(headers, body) {
            if let Err(e) = blocking(|| self.ledger.release(held.id(), now_unix())) {
                tracing::error!(error = %e, "could not release a refused payment's reservation");
            }
            held.settled();
            let why = format!(
                "the seller found the signed {} credential expired",
                quote.offer.protocol
            );
            return self
                .pay_fresh(call, &quote, approval, port, attempt, &why)
                .await;
        }
        // The seller refused the fresh signed payment: never sign again. A seller may still
        // have settled it (a hostile one settles, then asks again), so the chain is asked now.
        let challenge = self.rails.read_challenge(headers, body);
        let reason = challenge
            .seller_error
            .clone()
            .unwrap_or_else(|| "no reason given".to_owned());
        let refused = if attempt == Attempt::Ahead {
            // Its price or its terms changed, or it takes no payment it did not ask for: this
            // process asks it first from now on.
            self.ahead.refused(tool.name());
            tracing::warn!(tool = %tool.name(), %reason,
                "the seller refused a payment made ahead; its calls ask the price first from now on");
            format!(
                "`{}`: tollgate sent a signed payment of {} ahead, at the price the seller asked \
                 on its last calls, and the seller refused it (the seller says: {reason}). {} tollgate \
                 signs one payment per call, so nothing more was signed; calling again asks the \
                 seller its price first and pays that, within your limits",
                tool.name(),
                quote.usd,
                describe(&challenge)
            )
        } else {
            format!(
                "`{}`: the seller answered 402 again after tollgate sent a signed payment of {} \
                 (the seller says: {reason}). tollgate signs one payment per call, so nothing \
                 more was signed",
                tool.name(),
                quote.usd
            )
        };
        let payment = blocking(|| self.ledger.pending())
            .ok()
            .and_then(|all| all.into_iter().find(|p| p.id == held.id()));
        let verdict = match &payment {
            Some(payment) => tokio::time::timeout(
                ASK_THE_CHAIN,
                super::reconcile::verdict(&self.rails, &*self.ledger, payment, now_unix()),
            )
            .await
            .ok()
            .and_then(Result::ok),
            None => None,
        };
        if let (Some(payment), Some(verdict @ crate::rails::Verdict::Paid { .. })) =
            (&payment, &verdict)
        {
            let owner = self.leases.owner().to_owned();
            let ledger = &self.ledger;
            let written = blocking(|| {
                super::reconcile::settle(&**ledger, &owner, payment, verdict, now_unix())
            });
            held.settled();
            let transaction = match verdict {
                crate::rails::Verdict::Paid { transaction, .. } => transaction.clone(),
                _ => None,
            };
            let receipt = match written {
                Ok(Some(receipt)) => receipt.receipt_id,
                Ok(None) => String::new(),
                Err(e) => {
                    tracing::error!(error = %e, "a refused payment settled, but its receipt could not be committed");
                    String::new()
                }
            };
            tracing::warn!(tool = %tool.name(), %receipt, ?transaction,
                "the seller settled a payment it then refused; receipt written");
            return Outcome::failed(tool.redact(&format!(
                "{refused}. Yet the chain shows that payment settled (transaction {}, receipt \
                 {receipt}): it was paid, and the seller did not deliver the answer. Nothing \
                 more was paid.",
                transaction.as_deref().unwrap_or("not found in the node's logs"),
            )));
        }
        // Unsettled: released, and if it could still settle (the seller holds a valid
        // signature), watched until it can no longer, so a late settlement gets its receipt.
        if let Err(e) = blocking(|| self.ledger.release(held.id(), now_unix())) {
            tracing::error!(error = %e, "could not release a refused payment's reservation");
        }
        held.settled();
        if let (Some(payment), Some(crate::rails::Verdict::Open)) = (payment, verdict) {
            self.watch_refused(payment);
        }
        Outcome::failed(tool.redact(&format!(
            "{refused}; nothing was charged unless the seller settles that payment before it \
             expires (tollgate watches for that and writes its receipt if it does)."
        )))
    }

    /// Watches a refused payment that could still settle until it can no longer: if it
    /// settled meanwhile, its receipt is written (its reservation was released).
    fn watch_refused(&self, payment: PendingPayment) {
        let (rails, ledger) = (self.rails.clone(), self.ledger.clone());
        let owner = self.leases.owner().to_owned();
        let wait = payment
            .valid_before
            .unwrap_or(0)
            .saturating_sub(now_unix())
            .saturating_add(5)
            .min(WATCH_AT_MOST.as_secs());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            let verdict = tokio::time::timeout(
                ASK_THE_CHAIN,
                super::reconcile::verdict(&rails, &*ledger, &payment, now_unix()),
            )
            .await;
            if let Ok(Ok(verdict @ crate::rails::Verdict::Paid { .. })) = verdict {
                let written = tokio::task::spawn_blocking(move || {
                    super::reconcile::settle(&*ledger, &owner, &payment, &verdict, now_unix())
                })
                .await;
                tracing::warn!(
                    ?written,
                    "a payment the seller had refused settled later; receipt written"
                );
            }
        });
    }

    /// The seller refused a proof tollgate re-sent for a payment whose outcome was unknown:
    /// most often because it had settled it already (the nonce is used). The chain decides at
    /// once, and the model is told what it says: paid (with the transaction and a receipt)
    /// but not delivered, provably unpaid, or still undecided.
    async fn resent_refused<H, A>(
        &self,
        tool: &dyn Tool,
        quote: &Quote,
        held: Held,
        payment: &PendingPayment,
        seller: Option<String>,
    ) -> Outcome<H, A> {
        use super::reconcile;
        use crate::rails::Verdict;
        let owner = self.leases.owner().to_owned();
        let said = seller
            .map(|r| format!(" (the seller says: {r})"))
            .unwrap_or_default();
        let now = now_unix();
        let verdict = reconcile::verdict(&self.rails, &*self.ledger, payment, now).await;
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(why) => {
                held.disown();
                return Outcome::failed(tool.redact(&format!(
                    "`{}`: the seller refused the payment of {} that tollgate re-sent for this \
                     call{said}, and the chain could not be asked whether it settled ({why}). It \
                     stays pending and counts against your budget until `tollgate reconcile` \
                     settles it; it is never paid twice.",
                    tool.name(),
                    quote.usd
                )));
            }
        };
        let ledger = &self.ledger;
        let written = blocking(|| reconcile::settle(&**ledger, &owner, payment, &verdict, now));
        match (&verdict, written) {
            (Verdict::Paid { transaction, .. }, Ok(receipt)) => {
                held.settled();
                let receipt_id = receipt.map(|r| r.receipt_id).unwrap_or_default();
                tracing::warn!(tool = %tool.name(), receipt = %receipt_id,
                    transaction = ?transaction, "a re-sent payment had settled; receipt written");
                Outcome::failed(tool.redact(&format!(
                    "`{}`: the payment of {} for this call was made (transaction {}, receipt \
                     {receipt_id}), but the seller never delivered its answer: it refused the \
                     same payment when tollgate re-sent it{said}. Nothing more was paid. \
                     Calling again pays anew for the answer.",
                    tool.name(),
                    quote.usd,
                    transaction.as_deref().unwrap_or("not found in the node's logs"),
                )))
            }
            (Verdict::Unpaid, Ok(_)) => {
                held.settled();
                Outcome::failed(tool.redact(&format!(
                    "`{}`: the seller refused the payment that tollgate re-sent for this \
                     call{said}; the chain shows it never settled and no longer can, so nothing \
                     was paid and its hold is released.",
                    tool.name()
                )))
            }
            (Verdict::Open, Ok(_)) => {
                held.settled();
                Outcome::failed(tool.redact(&format!(
                    "`{}`: the seller refused the payment of {} that tollgate re-sent for this \
                     call{said}, and the chain shows it unused and still valid. Nothing was \
                     charged unless the seller settles it before it expires; it stays pending \
                     (counted against your budget) until then, and is never paid twice.",
                    tool.name(),
                    quote.usd
                )))
            }
            (_, Err(e)) => {
                held.disown();
                Outcome::failed(tool.redact(&format!(
                    "`{}`: the seller refused a re-sent payment of {}{said}, and the ledger could \
                     not record what the chain says ({e}); it stays pending until `tollgate \
                     reconcile` settles it.",
                    tool.name(),
                    quote.usd
                )))
            }
        }
    }

    /// Asks the seller for a fresh challenge (the request again, unpaid) and pays it under the
    /// approval already given, once per call: the fresh offer must be payable under the same
    /// rules and cost no more than the one approved. A second stale challenge ends the call.
    async fn pay_fresh<P: Port, C: Counter>(
        &self,
        call: &Call<'_, C>,
        approved: &Quote,
        approval: ApprovalRecord,
        port: &P,
        attempt: Attempt,
        why: &str,
    ) -> Outcome<P::Halt, C::Answer> {
        let tool = call.tool();
        if attempt == Attempt::Fresh {
            return Outcome::failed(tool.redact(&format!(
                "`{}`: {why}, again on a fresh challenge; tollgate fetches one fresh challenge \
                 per call, so nothing more was signed and nothing was paid. The seller's clock \
                 or its challenge lifetime may be wrong.",
                tool.name()
            )));
        }
        port.progress(format!("{why}; asking the seller for a fresh challenge"));
        tracing::info!(tool = %tool.name(), %why, "fetching a fresh MPP challenge");
        let (headers, body) = match self.exchange(call.counter, &[], port).await {
            Exchange::Cancelled => return Outcome::Cancelled,
            Exchange::PaymentRequired { headers, body } => (headers, body),
            Exchange::Answered { answer, .. } => {
                return Outcome::Answered {
                    answer,
                    payment: None,
                    meta: Map::new(),
                };
            }
            Exchange::Failed(e) => {
                return Outcome::failed(tool.redact(&format!(
                    "`{}`: {why}, and asking for a fresh challenge failed ({e}); nothing was paid",
                    tool.name()
                )));
            }
        };
        let challenge = self.rails.read_challenge(&headers, &body);
        let quote = match pay::choose(&challenge, &self.rules(tool, call.caller)) {
            Ok(quote) => quote,
            Err(judged) => {
                return Outcome::failed(tool.redact(&refusal_message(tool, &challenge, &judged)));
            }
        };
        // The approval (by a person or by the policy's thresholds) was for the first price.
        if quote.usd > approved.usd {
            return Outcome::failed(tool.redact(&format!(
                "`{}`: the fresh challenge asks {}, more than the {} approved; nothing was paid. \
                 Call again to decide on the new price.",
                tool.name(),
                quote.usd,
                approved.usd
            )));
        }
        // A person approved paying this payee, in this asset, on this network, by this
        // protocol: a fresh challenge that changes any of them is a new decision.
        if approval.approved_by != "policy" {
            let facts =
                |quote| super::approve::offer_facts(tool, call.arguments, quote, String::new());
            if let Err(mismatch) = facts(approved).covers(&facts(&quote)) {
                return Outcome::failed(tool.redact(&format!(
                    "`{}`: the fresh challenge is not the offer as a person approved it: \
                     {mismatch}; nothing was paid. Call again to decide on the new offer.",
                    tool.name()
                )));
            }
        }
        Box::pin(self.pay_quote(call, quote, approval, port, Attempt::Fresh)).await
    }

    /// Commits a paid reservation with its receipt (the actual cost: the amount plus any fee
    /// the proof reports) and returns the receipt at once. The ledger write runs beside the
    /// answer going back (it waits for no disk: see `Reservations::commit`): until it lands
    /// the reservation holds the amount against every cap, so nothing can be overspent
    /// meanwhile, and a transport waits for it before the process exits
    /// ([`super::Checkout::finish_writes`]). A failure to commit leaves the payment pending
    /// with its proof (never under-counted), given up for reconciliation, and is logged.
    #[allow(clippy::too_many_arguments)]
    fn commit<C: Counter>(
        &self,
        call: &Call<'_, C>,
        held: Held,
        quote: &Quote,
        proof: &Proof,
        transaction: Option<String>,
        details: Map<String, Value>,
        approval: ApprovalRecord,
    ) -> Receipt {
        let now = now_unix();
        let mut all = proof.details.clone();
        all.extend(details);
        let receipt = receipt::receipt(
            &charge_of(quote, call.arguments, call.tool()),
            &quote.offer.payee,
            quote.usd,
            Settlement {
                payer: proof.payer.clone(),
                transaction,
                details: all,
                approval: Some(approval),
                charged: actual_usd(quote, proof),
                reconciled: false,
            },
            now,
        );
        let row = receipt::row(&receipt, now);
        let charged = actual_usd(quote, proof).0;
        let ledger = self.ledger.clone();
        let receipt_id = receipt.receipt_id.clone();
        let writing = self.writes.enter();
        tokio::task::spawn_blocking(move || {
            writing.hold();
            match ledger.commit(held.id(), charged, row, now) {
                Ok(()) => held.settled(),
                // `held` drops: the payment is given up, pending with its proof, for
                // reconciliation to commit from what the chain or backend says.
                Err(e) => tracing::error!(error = %e, receipt = %receipt_id,
                    "paid, but the receipt could not be committed; the payment stays pending for reconciliation"),
            }
        });
        receipt
    }
}

/// How long the chain is asked, at most, what happened to a refused payment.
const ASK_THE_CHAIN: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a refused payment that could still settle is watched, at most.
const WATCH_AT_MOST: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Where a payment starts.
enum Start {
    /// This very call's unknown proof, claimed: re-send it.
    Resend(Box<(Held, Proof, PendingPayment)>),
    /// A new reservation, held by this call, with the signature recorded pending in the
    /// same transaction.
    Signed(Held, Proof),
    /// A new reservation, held by this call; nothing proved yet.
    Reserved(Held),
}

/// Identifies one call for proof reuse: the tool, its arguments, and the exact offer. Not the
/// resource an offer names (x402 v1 puts the request's URL there, which the tool and arguments
/// already say): a call paid ahead, at an offer first asked on another call, and its retry
/// after a restart, at the offer its own 402 carries, are the same call.
fn fingerprint(tool: &str, arguments: &Map<String, Value>, quote: &Quote) -> String {
    let mut offer = quote.offer.raw.clone();
    if let Some(terms) = offer.as_object_mut() {
        terms.remove("resource");
    }
    let mut hash = Sha256::new();
    hash.update(tool.as_bytes());
    hash.update([0]);
    hash.update(
        crate::canonical::canonical_json(&Value::Object(arguments.clone()))
            .to_string()
            .as_bytes(),
    );
    hash.update([0]);
    hash.update(
        crate::canonical::canonical_json(&offer)
            .to_string()
            .as_bytes(),
    );
    hex::encode(hash.finalize())
}

/// How one sending of a call ended.
enum Exchange<A> {
    /// The caller cancelled the call meanwhile (the request was dropped).
    Cancelled,
    /// 402: the seller asks for payment (again).
    PaymentRequired { headers: HeaderMap, body: Vec<u8> },
    /// Any other answer.
    Answered { answer: A, headers: HeaderMap },
    /// No answer (a timeout, a refused connection, a body over the limit), in words.
    Failed(String),
}

/// A paid request the seller answered with 402.
struct Refused<'a> {
    held: Held,
    proof: Proof,
    /// The payment, when the proof was re-sent for a call whose outcome was unknown.
    resent: Option<PendingPayment>,
    headers: &'a HeaderMap,
    body: &'a [u8],
}

/// The charge of paying `quote` for a call of `tool` with `arguments`.
fn charge_of(quote: &Quote, arguments: &Map<String, Value>, tool: &dyn Tool) -> Charge {
    let mut charge = Charge::of(quote, arguments);
    charge.sold_at = tool.receipt_details();
    charge
}

/// What a payment actually cost: the amount plus the fee the proof reports.
fn actual_usd(quote: &Quote, proof: &Proof) -> UsdMicros {
    if proof.fee_atomic == 0 {
        return quote.usd;
    }
    quote.with_fee(proof.fee_atomic)
}

/// What every rail adds to every request to a tool (an MPP client says what it can pay).
pub fn tool_headers(rails: &crate::rails::Rails) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = HeaderMap::new();
    for rail in rails.iter() {
        rail.request_headers(&mut headers);
    }
    headers
        .into_iter()
        .filter_map(|(name, value)| Some((name?, value)))
        .collect()
}

/// One HTTP request of a tool under its limits, with progress.
async fn send_http(
    upstream: &crate::upstream::Upstream,
    tool: &HttpTool,
    request: UpstreamRequest,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Reply, UpstreamError> {
    let limits = Limits {
        timeout: tool.timeout,
        max_response_bytes: tool.max_response_bytes,
    };
    let host = tool.host();
    upstream
        .call(request, limits, |stage| match stage {
            Stage::Sending => progress(format!("request sent to {host}")),
            Stage::ReadingBody => progress(format!("{host} answered; reading the response")),
        })
        .await
}

impl Counter for HttpCounter<'_> {
    type Answer = crate::upstream::Answer;

    fn tool(&self) -> &dyn Tool {
        self.tool
    }

    fn resource_url(&self) -> Option<String> {
        Some(self.request.url.to_string())
    }

    fn send<'a>(
        &'a self,
        headers: &'a [(HeaderName, HeaderValue)],
        progress: &'a (dyn Fn(String) + Sync),
    ) -> futures_util::future::BoxFuture<'a, Result<Sold<Self::Answer>, String>> {
        Box::pin(async move {
            let mut request = self.request.clone();
            for (name, value) in headers {
                request.headers.insert(name.clone(), value.clone());
            }
            match send_http(self.upstream, self.tool, request, progress).await {
                Ok(Reply {
                    answer: crate::upstream::Answer::PaymentRequired { body },
                    headers,
                }) => Ok(Sold::PaymentRequired { headers, body }),
                Ok(Reply { answer, headers }) => Ok(Sold::Answered { answer, headers }),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// The message for a 402 that will not be paid: the cheapest price above a cap if that is the
/// reason, else every offer's reason.
pub(crate) fn refusal_message(
    tool: &dyn Tool,
    challenge: &Challenge,
    judged: &[Judgement],
) -> String {
    let over = judged
        .iter()
        .filter_map(|j| match &j.refusal {
            Some(Refusal::AboveCap { price, cap, which }) => Some((*price, *cap, *which)),
            _ => None,
        })
        .min_by_key(|(price, _, _)| *price);
    if let Some((price, cap, which)) = over {
        return format!(
            "`{}` costs {price}, which is above {which} {cap}; nothing was paid. Ask the owner \
             to raise the limit, or use another tool.",
            tool.name()
        );
    }
    let mut reasons: Vec<String> = judged
        .iter()
        .map(|j| {
            let o = &j.offer;
            let why = j
                .refusal
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            format!(
                "{} {} {} on {}: {why}",
                o.protocol, o.amount_atomic, o.asset, o.network
            )
        })
        .collect();
    reasons.extend(challenge.problems.iter().cloned());
    if reasons.is_empty() {
        reasons.push("the 402 carried no payment offer tollgate can read".to_owned());
    }
    format!(
        "`{}` requires payment, and no offer can be paid; nothing was paid. {}",
        tool.name(),
        reasons.join("; ")
    )
}

/// A cap's key in words.
fn describe_cap(key: &str) -> String {
    match key {
        "policy:per_day" => "the policy's per-day cap".to_owned(),
        "policy:total" => "the policy's total cap".to_owned(),
        k if k.starts_with("budget:") => "your credential's budget".to_owned(),
        other => format!("the cap {other}"),
    }
}

/// What a 402 asked for, in one sentence (for tools that never pay).
fn describe(challenge: &Challenge) -> String {
    let mut asked: Vec<String> = challenge
        .offers
        .iter()
        .map(|o| {
            format!(
                "{}: {} atomic units of {} on {} to {}",
                o.protocol, o.amount_atomic, o.asset, o.network, o.payee
            )
        })
        .collect();
    asked.extend(challenge.problems.iter().cloned());
    if asked.is_empty() {
        "The seller's 402 carried no offer tollgate can read.".to_owned()
    } else {
        format!("The seller asked for: {}", asked.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn an_offer_asked_on_another_call_fingerprints_as_this_calls_own() {
        let quote = |raw: serde_json::Value| crate::pay::Quote {
            offer: crate::pay::Offer {
                protocol: crate::pay::Protocol::new("x402", "x402", 1),
                scheme: "exact".into(),
                network: "base".into(),
                chain_id: Some(8453),
                asset: "0xa".into(),
                amount_atomic: 1000,
                payee: "0xb".into(),
                max_timeout_seconds: 60,
                raw,
                resource: None,
                extensions: None,
            },
            asset: crate::pay::assets::Asset {
                chain_id: 8453,
                address: "0xa".into(),
                symbol: "USDC".into(),
                decimals: 6,
                usd_micros_per_unit: 1_000_000,
                sandbox: false,
            },
            usd: crate::money::UsdMicros(1000),
        };
        let arguments = json!({"city": "Paris"});
        let arguments = arguments.as_object().unwrap();
        let offer = |resource: &str, amount: &str| {
            json!({"scheme": "exact", "maxAmountRequired": amount, "resource": resource,
                   "extra": {"name": "USD Coin", "version": "2"}})
        };
        let own = super::fingerprint("t", arguments, &quote(offer("/w?city=Paris", "1000")));
        // Paid ahead at the offer asked on an earlier call (another URL in `resource`).
        let ahead = super::fingerprint("t", arguments, &quote(offer("/w?city=Oslo", "1000")));
        assert_eq!(own, ahead);
        // Any other term is another offer.
        let dearer = super::fingerprint("t", arguments, &quote(offer("/w?city=Paris", "2000")));
        assert_ne!(own, dearer);
    }

    #[test]
    fn the_same_arguments_in_another_order_are_the_same_call() {
        let a = json!({"city": "Paris", "units": {"temp": "C", "wind": "kmh"}});
        let b = json!({"units": {"wind": "kmh", "temp": "C"}, "city": "Paris"});
        assert_ne!(
            a.to_string(),
            b.to_string(),
            "serde_json keeps insertion order"
        );
        assert_eq!(
            crate::canonical::canonical_json(&a).to_string(),
            crate::canonical::canonical_json(&b).to_string()
        );
    }
}
