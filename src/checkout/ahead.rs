//! Paying ahead: once a seller has asked the same price for a tool on its last calls, and
//! settled each payment, the next call signs that offer at once and sends it with its first
//! request, instead of sending the request unpaid to be told the price again. A paid call is
//! then one request to the seller, not two.
//!
//! Nothing about the rules changes: the offer is chosen under the caller's rules and caps,
//! reserved and signed exactly as an offer read from a 402 is, and never when a person would
//! have to approve it (then the call asks the seller first, as usual). What may change is the
//! seller's mind: a seller that answers a payment made ahead with 402 (its price changed, or it
//! will not take payments it did not ask for) is refused like any seller that answers 402 to a
//! signed payment: nothing more is signed for that call, the chain is asked whether the refused
//! payment settled anyway, and this process never pays that tool ahead again.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};

use crate::pay::Offer;

/// How many paid calls in a row must have met the same offer before the next pays it ahead.
pub const CONFIRMATIONS: u32 = 2;

/// What each tool's seller asked for on its last calls.
#[derive(Default)]
pub(super) struct Ahead(Mutex<HashMap<String, Known>>);

struct Known {
    offer: Offer,
    /// What makes two offers the same price (see [`same_price`]).
    key: Value,
    /// Paid calls in a row that met this offer, and settled.
    times: u32,
    /// The seller refused a payment made ahead: never again in this process.
    refused: bool,
}

impl Ahead {
    /// The offer to pay ahead for `tool`: the one its seller asked for and settled on its last
    /// [`CONFIRMATIONS`] paid calls, unless it ever refused a payment made ahead.
    pub(super) fn offer(&self, tool: &str) -> Option<Offer> {
        let known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .get(tool)
            .filter(|k| !k.refused && k.times >= CONFIRMATIONS)
            .map(|k| k.offer.clone())
    }

    /// A call of `tool` paid `offer`, and the seller settled it.
    pub(super) fn settled(&self, tool: &str, offer: &Offer) {
        let key = same_price(offer);
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match known.get_mut(tool) {
            Some(k) if k.key == key => k.times = k.times.saturating_add(1),
            Some(k) => {
                k.offer = offer.clone();
                k.key = key;
                k.times = 1;
            }
            None => {
                known.insert(
                    tool.to_owned(),
                    Known {
                        offer: offer.clone(),
                        key,
                        times: 1,
                        refused: false,
                    },
                );
            }
        }
    }

    /// The seller of `tool` refused a payment made ahead: its calls ask the price first from
    /// now on.
    pub(super) fn refused(&self, tool: &str) {
        let mut known = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(k) = known.get_mut(tool) {
            k.refused = true;
            k.times = 0;
        }
    }
}

/// What two offers must share to be the same price: the protocol, scheme, network, asset,
/// amount, payee, validity and the scheme's extra terms (the token's EIP-712 domain), but not
/// the resource they were asked for on (x402 v1 puts the request's URL in each offer).
fn same_price(offer: &Offer) -> Value {
    json!([
        offer.protocol.to_string(),
        offer.scheme,
        offer.network,
        offer.asset,
        offer.amount_atomic.to_string(),
        offer.payee,
        offer.max_timeout_seconds,
        offer.raw.get("extra"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pay::Protocol;

    fn offer(amount: u128, resource: &str) -> Offer {
        Offer {
            protocol: Protocol::new("x402", "x402", 1),
            scheme: "exact".into(),
            network: "base".into(),
            chain_id: Some(8453),
            asset: "0xA".into(),
            amount_atomic: amount,
            payee: "0xB".into(),
            max_timeout_seconds: 60,
            raw: json!({"resource": resource, "extra": {"name": "USD Coin", "version": "2"}}),
            resource: None,
            extensions: None,
        }
    }

    #[test]
    fn pays_ahead_only_after_the_same_price_was_settled_twice_in_a_row() {
        let ahead = Ahead::default();
        assert!(ahead.offer("t").is_none());
        ahead.settled("t", &offer(1000, "/a?x=1"));
        assert!(ahead.offer("t").is_none(), "once is not a pattern");
        // Another URL, the same price (v1 offers name the request's URL).
        ahead.settled("t", &offer(1000, "/a?x=2"));
        assert_eq!(ahead.offer("t").map(|o| o.amount_atomic), Some(1000));
        // The price changed: counted afresh.
        ahead.settled("t", &offer(2000, "/a?x=3"));
        assert!(ahead.offer("t").is_none());
        ahead.settled("t", &offer(2000, "/a?x=4"));
        assert_eq!(ahead.offer("t").map(|o| o.amount_atomic), Some(2000));
        assert!(ahead.offer("other").is_none(), "per tool");
    }

    #[test]
    fn a_seller_that_refused_a_payment_made_ahead_is_never_paid_ahead_again() {
        let ahead = Ahead::default();
        for _ in 0..3 {
            ahead.settled("t", &offer(1000, "/a"));
        }
        assert!(ahead.offer("t").is_some());
        ahead.refused("t");
        assert!(ahead.offer("t").is_none());
        for _ in 0..5 {
            ahead.settled("t", &offer(1000, "/a"));
        }
        assert!(ahead.offer("t").is_none());
    }
}
