//! Closing the rails to new signatures when the process shuts down.
//!
//! Every rail [`Rails`](super::Rails) holds is wrapped in [`Closable`], which forwards to it
//! and lets [`Rail::prove`] start only while the rails are open. A shutdown closes them
//! ([`Signing::close`]): it waits for proofs being made to finish (a payment that began is
//! completed and recorded), and from then on every `prove` is refused with nothing paid. The
//! engine needs no change: a refused proof is an ordinary "nothing was paid" failure.

use std::sync::Arc;

use reqwest::header::HeaderMap;

use super::{BoxFuture, Kept, Proving, Rail, Settled};
use crate::catalog::HttpTool;
use crate::ledger::{Ledger, PendingPayment};
use crate::money::UsdMicros;
use crate::pay::assets::Asset;
use crate::pay::{Challenge, Offer, PayError, Proof, Quote};
use crate::reconcile::Verdict;

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
            let open = self.signing.0.read().await;
            if *open {
                return Err(PayError::Unpayable(
                    "tollgate is shutting down and signs no new payment; call again once it is \
                     back"
                        .to_owned(),
                ));
            }
            let proof = self.rail.prove(proving).await;
            drop(open);
            proof
        })
    }
    fn pays_when_proving(&self) -> bool {
        self.rail.pays_when_proving()
    }
    fn settlement<'a>(
        &'a self,
        quote: &'a Quote,
        proof: &'a mut Proof,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Settled> {
        self.rail.settlement(quote, proof, headers)
    }
    fn refused_as_expired(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        self.rail.refused_as_expired(headers, body)
    }
    fn reconcile<'a>(
        &'a self,
        ledger: &'a Ledger,
        payment: &'a PendingPayment,
        now: u64,
    ) -> BoxFuture<'a, Result<Verdict, String>> {
        self.rail.reconcile(ledger, payment, now)
    }
    fn kept(&self, ledger: &Ledger, tool: &HttpTool, now: u64) -> Option<Kept> {
        self.rail.kept(ledger, tool, now)
    }
    fn shared_per_service(&self, headers: &HeaderMap) -> bool {
        self.rail.shared_per_service(headers)
    }
    fn forget(&self, ledger: &Ledger, tool: &HttpTool, payment_hash: &str) {
        self.rail.forget(ledger, tool, payment_hash);
    }
}
