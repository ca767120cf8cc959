//! Closing the rails to new signatures when the process shuts down.
//!
//! Every rail [`Rails`](super::Rails) holds is wrapped in [`Closable`], which forwards to it
//! and lets [`Rail::prove`] and [`Rail::sign`] start only while the rails are open. A shutdown closes them
//! ([`Signing::close`]): it waits for proofs being made to finish (a payment that began is
//! completed and recorded), and from then on every `prove` is refused with nothing paid. The
//! engine needs no change: a refused proof is an ordinary "nothing was paid" failure.

use std::sync::Arc;

use reqwest::header::HeaderMap;

use super::{BoxFuture, Kept, PaidAnswer, Proving, Rail, Settled, Unknown, Verdict};
use crate::ledger::Ledger;
use crate::money::UsdMicros;
use crate::pay::assets::Asset;
use crate::pay::{Challenge, Offer, PayError, Proof, Quote};
use crate::tool::Tool;

/// Whether new proofs may be made: `false` once shutdown began. A proof holds the read side
/// while it is made; closing takes the write side.
#[derive(Default, Clone)]
pub struct Signing(Arc<tokio::sync::RwLock<bool>>);

impl Signing {
    /// Refuses every later proof, after waiting for those being made.
    pub async fn close(&self) {
        *self.0.write().await = true;
    }
}

/// A rail whose proofs stop when [`Signing`] closes.
pub(super) struct Closable {
    pub(super) rail: Box<dyn Rail>,
    pub(super) signing: Signing,
}

impl Rail for Closable {
    fn name(&self) -> &'static str {
        self.rail.name()
    }
    fn read(&self, headers: &HeaderMap, body: &[u8], now: u64, into: &mut Challenge) {
        self.rail.read(headers, body, now, into);
    }
    fn auth_schemes(&self) -> &'static [&'static str] {
        self.rail.auth_schemes()
    }
    fn missing(&self) -> Option<String> {
        self.rail.missing()
    }
    fn valuation(&self, offer: &Offer, assets: &[Asset]) -> Result<Asset, String> {
        self.rail.valuation(offer, assets)
    }
    fn supported(&self, offer: &Offer) -> Result<(), String> {
        self.rail.supported(offer)
    }
    fn hold(&self, quote: &Quote) -> UsdMicros {
        self.rail.hold(quote)
    }
    fn request_headers(&self, headers: &mut HeaderMap) {
        self.rail.request_headers(headers);
    }
    fn stale(&self, offer: &Offer, now: u64) -> Option<String> {
        self.rail.stale(offer, now)
    }
    fn prove<'a>(&'a self, proving: Proving<'a>) -> BoxFuture<'a, Result<Proof, PayError>> {
        Box::pin(async move {
            let closed = self.signing.0.read().await;
            if *closed {
                return Err(shutting_down());
            }
            let proof = self.rail.prove(proving).await;
            drop(closed);
            proof
        })
    }
    fn signs_at_once(&self) -> bool {
        self.rail.signs_at_once()
    }
    fn sign(&self, quote: &Quote, now: u64) -> Result<Proof, PayError> {
        // Made inside a ledger transaction: never waits. A shutdown taking the write side
        // (or waiting for it) means no new signature.
        let Ok(closed) = self.signing.0.try_read() else {
            return Err(shutting_down());
        };
        if *closed {
            return Err(shutting_down());
        }
        let proof = self.rail.sign(quote, now);
        drop(closed);
        proof
    }
    fn pays_when_proving(&self) -> bool {
        self.rail.pays_when_proving()
    }
    fn pays_ahead(&self) -> bool {
        self.rail.pays_ahead()
    }
    fn settlement<'a>(&'a self, paid: PaidAnswer<'a>) -> BoxFuture<'a, Settled> {
        self.rail.settlement(paid)
    }
    fn refused_as_expired(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        self.rail.refused_as_expired(headers, body)
    }
    fn reconcile<'a>(&'a self, unknown: Unknown<'a>) -> BoxFuture<'a, Result<Verdict, String>> {
        self.rail.reconcile(unknown)
    }
    fn kept(&self, ledger: &Ledger, tool: &dyn Tool, now: u64) -> Option<Kept> {
        self.rail.kept(ledger, tool, now)
    }
    fn shared_per_service(&self, headers: &HeaderMap) -> bool {
        self.rail.shared_per_service(headers)
    }
    fn forget(&self, ledger: &Ledger, tool: &dyn Tool, payment_hash: &str) {
        self.rail.forget(ledger, tool, payment_hash);
    }
}

fn shutting_down() -> PayError {
    PayError::Unpayable(
        "tollgate is shutting down and signs no new payment; call again once it is back".to_owned(),
    )
}
