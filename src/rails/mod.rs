//! Payment rails: one folder per protocol, each behind [`Rail`], all held by [`Rails`].
//!
//! A rail knows its wire format and its money: how its challenge reads out of a 402, what
//! its offers are worth and what paying them may cost at most (the fee bound held with the
//! price), how to prove payment, what the paid answer says about the settlement, and how to
//! find out what happened to a payment whose outcome is unknown. Everything else (choosing,
//! approval, reservations, pending proofs, one retry, receipts) is the checkout engine's and
//! the same for every rail.
//!
//! Adding a rail is one folder here (a type implementing [`Rail`], its wire format beside
//! it), one line in [`Rails::new`], and one config table for its wallet.

pub mod closing;
pub mod l402;
pub mod mpp;
pub mod x402;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::ledger::{Ledger, PendingPayment, ReservationId};
use crate::money::UsdMicros;
use crate::pay::assets::Asset;
use crate::pay::{Challenge, Offer, PayError, Proof, Protocol, Quote};
use crate::tool::Tool;

/// A boxed future, as a trait object's async method returns it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the engine asks of one payment protocol.
pub trait Rail: Send + Sync {
    /// The protocol's name in receipts, configuration and the ledger (`x402`, `l402`, `mpp`).
    fn name(&self) -> &'static str;

    /// Reads this rail's offers (and what it could not read) out of a 402.
    fn read(&self, headers: &HeaderMap, body: &[u8], now: u64, into: &mut Challenge);

    /// The `WWW-Authenticate` schemes this rail reads (lower case), so that any other scheme
    /// is reported as unknown.
    fn auth_schemes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Why this process cannot pay on this rail at all (no wallet configured), if it cannot.
    fn missing(&self) -> Option<String>;

    /// The asset an offer is paid in, as tollgate values it (before the policy's `[rates]`),
    /// or why it cannot be valued.
    fn valuation(&self, offer: &Offer, assets: &[Asset]) -> Result<Asset, String>;

    /// Whether the offer can be paid the way it asks (its scheme, method, intent, network).
    fn supported(&self, _offer: &Offer) -> Result<(), String> {
        Ok(())
    }

    /// What to hold against the budgets for a quote: its price, plus the most its fee may add.
    fn hold(&self, quote: &Quote) -> UsdMicros {
        quote.usd
    }

    /// Headers every request to a tool carries (an MPP client says what it can pay).
    fn request_headers(&self, _headers: &mut HeaderMap) {}

    /// Why an offer must not be signed now (a challenge about to expire): the engine fetches
    /// one fresh challenge instead.
    fn stale(&self, _offer: &Offer, _now: u64) -> Option<String> {
        None
    }

    /// Proves payment of a reserved quote (signs it, or pays it). A rail whose proof moves
    /// money before the seller sees it records the payment as pending itself, before it pays
    /// ([`Rail::pays_when_proving`]); the engine records every other proof before sending it.
    fn prove<'a>(&'a self, proving: Proving<'a>) -> BoxFuture<'a, Result<Proof, PayError>>;

    /// Whether proving is a signature made at once, without I/O or waiting ([`Rail::sign`]):
    /// then the engine makes it inside the reservation's own transaction and records it there
    /// (one durable write instead of two; nothing is signed without a reservation).
    fn signs_at_once(&self) -> bool {
        false
    }

    /// The signature that proves payment, for a rail that [`Rail::signs_at_once`].
    fn sign(&self, quote: &Quote, _now: u64) -> Result<Proof, PayError> {
        Err(PayError::Unpayable(format!(
            "{} does not sign at once",
            quote.offer.protocol
        )))
    }

    /// Whether an offer the seller asked for on earlier calls may be paid on the next call's
    /// first request, before the seller asks: the proof must be one a seller that refuses it
    /// never settles (a signed authorization for exactly that offer), and proving must be at
    /// once ([`Rail::signs_at_once`]).
    fn pays_ahead(&self) -> bool {
        false
    }

    /// Whether proving moves the money (an invoice paid), rather than the seller's settling
    /// of the proof: then a refused or failed paid request still committed the payment.
    fn pays_when_proving(&self) -> bool {
        false
    }

    /// Reads the settlement out of the paid answer (and the actual fee into the proof). By
    /// default nothing: a rail whose proof carries its facts (L402's payment hash and fee)
    /// reads nothing from the answer.
    fn settlement<'a>(&'a self, _paid: PaidAnswer<'a>) -> BoxFuture<'a, Settled> {
        Box::pin(std::future::ready(Settled::default()))
    }

    /// Whether the seller's refusal of a fresh proof says it came too late and was never used
    /// (then one fresh challenge may be signed).
    fn refused_as_expired(&self, _headers: &HeaderMap, _body: &[u8]) -> bool {
        false
    }

    /// What happened to a payment whose outcome is unknown: its chain or its backend says.
    /// `Err` says why it cannot be told (nothing configured to ask, an unreadable proof).
    fn reconcile<'a>(&'a self, unknown: Unknown<'a>) -> BoxFuture<'a, Result<Verdict, String>>;

    /// A credential kept from an earlier payment for this tool (a paid L402 token), to send
    /// on the first request instead of paying.
    fn kept(&self, _ledger: &Ledger, _tool: &dyn Tool, _now: u64) -> Option<Kept> {
        None
    }

    /// Whether a 402 is this rail's and is paid once for every parallel call to the service
    /// (a reusable token): the engine lets one call pay while the others wait for what it kept.
    fn shared_per_service(&self, _headers: &HeaderMap) -> bool {
        false
    }

    /// The seller refused what this rail kept or had just paid for (by its payment hash):
    /// forget it.
    fn forget(&self, _ledger: &Ledger, _tool: &dyn Tool, _payment_hash: &str) {}
}

/// A credential kept from an earlier payment, sent instead of paying again.
pub struct Kept {
    /// The rail that kept it.
    pub rail: &'static str,
    /// The headers that present it.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// What the result says it was served on (nothing was paid for this call).
    pub payment: crate::pay::Payment,
    /// The payment it came from, to forget it by.
    pub payment_hash: String,
    pub origin: String,
    pub service: String,
}

/// What proving a quote needs.
pub struct Proving<'a> {
    pub quote: &'a Quote,
    pub tool: &'a dyn Tool,
    /// The reservation holding the money.
    pub reservation: ReservationId,
    pub ledger: &'a Ledger,
    pub now: u64,
}

/// What the rail says about one payment whose outcome is unknown.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Money moved: in `transaction` when the node can tell; costing `charged_usd_micros` when
    /// the rail says (an MPP charge's fee from its transaction receipt, a Lightning routing
    /// fee), else the amount held. `reverted`: the charge failed on chain, but its fee was
    /// still paid. `details`: what the rail adds to the receipt.
    Paid {
        transaction: Option<String>,
        /// The price, when the rail values it itself (else as the reservation recorded it).
        price_usd_micros: Option<u64>,
        charged_usd_micros: Option<u64>,
        reverted: bool,
        details: Map<String, Value>,
    },
    /// It can never be paid (reverted, or unused and expired): release it.
    Unpaid,
    /// Not decided yet (valid and unused): it stays unknown.
    Open,
}

/// A paid answer, as its rail reads the settlement.
pub struct PaidAnswer<'a> {
    pub quote: &'a Quote,
    /// The proof that was paid: the rail records the actual fee in it.
    pub proof: &'a mut Proof,
    pub headers: &'a HeaderMap,
}

/// A payment whose outcome is unknown, as reconciliation asks its rail about it.
pub struct Unknown<'a> {
    pub ledger: &'a Ledger,
    pub payment: &'a PendingPayment,
    /// JSON-RPC nodes by chain id (`[rpc]`), for rails settled on a chain.
    pub rpc: &'a BTreeMap<u64, String>,
    pub now: u64,
}

impl Unknown<'_> {
    /// Whether its proof can no longer settle.
    pub fn expired(&self) -> bool {
        self.payment.valid_before.is_some_and(|v| v <= self.now)
    }
}

/// A settlement header as read: its JSON, or nothing (an unreadable one is logged: the
/// payment happened all the same, and the receipt says what is known).
pub fn readable(header: Option<Result<Value, String>>, what: &str) -> Option<Value> {
    match header? {
        Ok(value) => Some(value),
        Err(reason) => {
            tracing::warn!(%reason, "unreadable {what}");
            None
        }
    }
}

/// What a paid answer says about the payment.
#[derive(Debug, Default)]
pub struct Settled {
    /// The settlement transaction or reference.
    pub transaction: Option<String>,
    /// Rail-specific receipt fields.
    pub details: Map<String, Value>,
    /// The rail's standard metadata for the tool result's `_meta`.
    pub meta: Map<String, Value>,
}

/// Reads every offer of every rail tollgate knows from a 402 (no wallet is needed to read).
pub fn read_challenge(headers: &HeaderMap, body: &[u8]) -> Challenge {
    Rails::unequipped().read_challenge(headers, body)
}

impl crate::pay::Payable for Rails {
    fn missing(&self, protocol: Protocol) -> Option<String> {
        match self.get(protocol) {
            Some(rail) => rail.missing(),
            None => Some(format!("{protocol} is not a rail tollgate has")),
        }
    }

    fn valuation(&self, offer: &Offer, assets: &[Asset]) -> Result<Asset, String> {
        self.get(offer.protocol)
            .ok_or_else(|| format!("{} is not a rail tollgate has", offer.protocol))?
            .valuation(offer, assets)
    }

    fn supported(&self, offer: &Offer) -> Result<(), String> {
        match self.get(offer.protocol) {
            Some(rail) => rail.supported(offer),
            None => Err(format!("{} is not a rail tollgate has", offer.protocol)),
        }
    }
}

/// Every rail this process has.
pub struct Rails {
    rails: Vec<Box<dyn Rail>>,
    /// JSON-RPC nodes by chain id (`[rpc]`): where a chain is asked about unknown outcomes.
    pub rpc: BTreeMap<u64, String>,
    /// Whether new proofs may be made (closed at shutdown).
    signing: closing::Signing,
}

/// What the rails are built from: the wallets and where to ask about unknown outcomes.
#[derive(Default)]
pub struct Equipment {
    pub evm: Option<crate::wallet::EvmWallet>,
    pub tempo: Option<crate::wallet::tempo::TempoWallet>,
    pub lightning: Option<crate::lightning::Lightning>,
    /// JSON-RPC nodes by chain id (`[rpc]`).
    pub rpc: BTreeMap<u64, String>,
}

impl Rails {
    /// The registry: one line per rail.
    pub fn new(equipment: Equipment) -> Rails {
        let Equipment {
            evm,
            tempo,
            lightning,
            rpc,
        } = equipment;
        let rails: Vec<Box<dyn Rail>> = vec![
            Box::new(x402::X402 { wallet: evm }),
            Box::new(l402::L402 { lightning }),
            Box::new(mpp::Mpp { wallet: tempo }),
        ];
        let signing = closing::Signing::default();
        Rails {
            rails: rails
                .into_iter()
                .map(|rail| {
                    Box::new(closing::Closable {
                        rail,
                        signing: signing.clone(),
                    }) as Box<dyn Rail>
                })
                .collect(),
            rpc,
            signing,
        }
    }

    /// Refuses every new proof from now on (shutdown), after the proofs being made finish.
    pub async fn close_signing(&self) {
        self.signing.close().await;
    }

    /// Every rail, without wallets: enough to read challenges.
    pub fn unequipped() -> Rails {
        Rails::new(Equipment::default())
    }

    /// The rail of a protocol.
    pub fn get(&self, protocol: Protocol) -> Option<&dyn Rail> {
        self.named(protocol.name)
    }

    /// The rail with this name.
    pub fn named(&self, name: &str) -> Option<&dyn Rail> {
        self.rails
            .iter()
            .find(|r| r.name().eq_ignore_ascii_case(name))
            .map(|r| &**r)
    }

    pub fn iter(&self) -> impl Iterator<Item = &dyn Rail> {
        self.rails.iter().map(|r| &**r)
    }

    /// Reads every offer of every rail from a 402, and names any `WWW-Authenticate` scheme
    /// no rail reads.
    pub fn read_challenge(&self, headers: &HeaderMap, body: &[u8]) -> Challenge {
        let mut challenge = Challenge::default();
        let now = crate::money::now_unix();
        for rail in self.iter() {
            rail.read(headers, body, now, &mut challenge);
        }
        for value in headers.get_all("www-authenticate") {
            let scheme: String = value
                .to_str()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(32)
                .collect();
            let known = self.iter().any(|r| {
                r.auth_schemes()
                    .contains(&scheme.to_ascii_lowercase().as_str())
            });
            if !known {
                challenge.problems.push(format!(
                    "{scheme} challenge (WWW-Authenticate): not a payment scheme tollgate knows"
                ));
            }
        }
        challenge
    }
}
