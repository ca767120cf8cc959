//! MPP: the `Payment` HTTP authentication scheme, `tempo` method, `charge` intent. The
//! seller's 402 carries `WWW-Authenticate: Payment` challenges; the proof is a Tempo
//! transaction signed by the Tempo wallet (the `mpp` crate builds it), sent as the
//! `Authorization: Payment` credential; the seller broadcasts it and answers with
//! `Payment-Receipt`. The buyer pays the transaction fee in the charged stablecoin: a bound
//! for it is held with the price (`wallet.tempo.max_fee_atomic`) and the actual fee is read
//! from the transaction's receipt. An unknown outcome is told by the transaction's receipt on
//! chain (its hash is known before it is sent).

pub mod wire;

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::{BoxFuture, PaidAnswer, Proving, Rail, Settled, Unknown, Verdict};
use crate::ledger::PendingPayment;
use crate::money::UsdMicros;
use crate::pay::Charge;
use crate::pay::assets::{self, Asset};
use crate::pay::{Challenge, Offer, PayError, Proof, Protocol, Quote};
use crate::wallet::tempo::TempoWallet;

/// The rail's name.
pub const NAME: &str = "mpp";

/// MPP (one version on the wire).
pub const PROTOCOL: Protocol = Protocol::new(NAME, "MPP", 0);

/// The MPP rail: the Tempo wallet that signs charges.
pub struct Mpp {
    pub(super) wallet: Option<TempoWallet>,
}

impl Rail for Mpp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn read(&self, headers: &HeaderMap, body: &[u8], _now: u64, into: &mut Challenge) {
        wire::read_offers(headers, body, into);
    }

    fn auth_schemes(&self) -> &'static [&'static str] {
        &["payment"]
    }

    fn missing(&self) -> Option<String> {
        self.wallet
            .is_none()
            .then(|| "no Tempo wallet is configured".to_owned())
    }

    fn valuation(&self, offer: &Offer, assets: &[Asset]) -> Result<Asset, String> {
        // A method tollgate cannot pay has no asset to value: say why it is not paid.
        if let Some(reason) = wire::unsupported(offer) {
            return Err(reason);
        }
        assets::evm_asset(offer, assets)
    }

    fn supported(&self, offer: &Offer) -> Result<(), String> {
        wire::unsupported(offer).map_or(Ok(()), Err)
    }

    /// The price plus the most the Tempo transaction fee may cost, in the charged stablecoin.
    fn hold(&self, quote: &Quote) -> UsdMicros {
        match &self.wallet {
            Some(wallet) => quote.with_fee(u128::from(wallet.max_fee_atomic())),
            None => quote.usd,
        }
    }

    /// MPP sellers (mpp 0.17+) offer only the methods the client says it can pay.
    fn request_headers(&self, headers: &mut HeaderMap) {
        if self.wallet.is_some() {
            headers.insert(
                "accept-payment",
                HeaderValue::from_static(wire::ACCEPT_PAYMENT),
            );
        }
    }

    /// A challenge too close to its expiry (a signed Tempo transaction lives about 25 s).
    fn stale(&self, offer: &Offer, now: u64) -> Option<String> {
        wire::stale(offer, now).then(|| {
            format!(
                "the seller's MPP challenge expired ({}) before it could be signed",
                offer.raw["expires"].as_str().unwrap_or("?")
            )
        })
    }

    fn prove<'a>(&'a self, proving: Proving<'a>) -> BoxFuture<'a, Result<Proof, PayError>> {
        Box::pin(async move {
            let wallet = self.wallet.as_ref().ok_or_else(|| {
                PayError::Unpayable("no Tempo wallet is configured ([wallet.tempo])".to_owned())
            })?;
            wire::prove(&proving.quote.offer, wallet, proving.now).await
        })
    }

    /// The `Payment-Receipt` (its reference is the transaction), and the fee the transaction
    /// actually cost, from its receipt on chain.
    fn settlement<'a>(&'a self, paid: PaidAnswer<'a>) -> BoxFuture<'a, Settled> {
        let PaidAnswer {
            quote,
            proof,
            headers,
        } = paid;
        Box::pin(async move {
            let mut settled = Settled::default();
            let receipt = super::readable(wire::receipt(headers), "Payment-Receipt header");
            settled.transaction = receipt.as_ref().and_then(wire::reference);
            settled.details = wire::receipt_details(&quote.offer, receipt.as_ref());
            if let Some(receipt) = receipt {
                settled
                    .meta
                    .insert("org.paymentauth/receipt".into(), receipt);
            }
            if let Some(wallet) = &self.wallet {
                wire::read_fee(proof, &quote.offer, wallet).await;
            }
            settled
        })
    }

    /// `payment-expired`: the credential came too late and was not used.
    fn refused_as_expired(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        wire::problem(headers, body).is_some_and(|p| p.is_expired())
    }

    /// Mined → paid (amount plus the fee from its receipt); reverted → its fee was still
    /// paid; not mined and past `validBefore` (an expiring nonce) → it never can be; else open.
    fn reconcile<'a>(&'a self, unknown: Unknown<'a>) -> BoxFuture<'a, Result<Verdict, String>> {
        Box::pin(async move {
            let client = crate::rpc::client()?;
            Ok(match mpp(&client, unknown.rpc, unknown.payment).await? {
                Mined::Success(transaction, charged_usd_micros) => Verdict::Paid {
                    price_usd_micros: None,
                    transaction: Some(transaction),
                    charged_usd_micros,
                    reverted: false,
                    details: Default::default(),
                },
                // Reverted: the charge did not move, but the buyer paid the fee.
                Mined::Reverted(transaction, Some(fee)) if fee > 0 => Verdict::Paid {
                    price_usd_micros: None,
                    transaction: Some(transaction),
                    charged_usd_micros: Some(fee),
                    reverted: true,
                    details: Default::default(),
                },
                Mined::Reverted(..) => Verdict::Unpaid,
                Mined::No if unknown.expired() => Verdict::Unpaid,
                Mined::No => Verdict::Open,
            })
        })
    }
}

/// Where an MPP payment's transaction is: mined (with what it cost in micro-USD, amount and
/// fee, when the receipt and the recorded rate tell), reverted (with the fee it still cost),
/// or not mined.
enum Mined {
    Success(String, Option<u64>),
    Reverted(String, Option<u64>),
    No,
}

/// Looks up the signed Tempo transaction of a recorded MPP proof.
async fn mpp(
    client: &reqwest::Client,
    rpc: &BTreeMap<u64, String>,
    payment: &PendingPayment,
) -> Result<Mined, String> {
    let charge = Charge::of_row(payment);
    let network = charge.network.as_str();
    let chain = assets::chain_id(network)
        .ok_or_else(|| format!("network {network:?} is not a chain tollgate knows"))?;
    let url = rpc
        .get(&chain)
        .ok_or_else(|| format!("no [rpc] endpoint for {network} in tollgate.toml"))?;
    let proof = payment
        .proof_json
        .as_deref()
        .and_then(Proof::from_json)
        .ok_or("its proof is unreadable")?;
    let hash = wire::transaction_hash(&proof)?;
    let answer = crate::rpc::call(client, url, "eth_getTransactionReceipt", json!([hash])).await?;
    let status = answer.get("status").and_then(Value::as_str);
    if status.is_none() {
        return Ok(Mined::No);
    }
    // The fee the buyer paid, in the charged asset, from the receipt.
    let signed = wire::fee_bound(&proof).ok().and_then(|b| b.fee_token);
    let asset = charge.asset.as_str();
    let fee = wire::receipt_fee(&answer, &proof.payer, signed.as_deref())
        .ok()
        .filter(|f| f.atomic == 0 || wire::fee_in_asset(f.fee_token.as_deref(), asset))
        .map(|f| f.atomic);
    let amount = charge.atomic();
    Ok(if status == Some("0x1") {
        let charged = fee
            .zip(amount)
            .and_then(|(f, a)| charge.value(a.saturating_add(f)))
            .map(|u| u.0);
        Mined::Success(format!("{hash}"), charged)
    } else {
        Mined::Reverted(
            format!("{hash}"),
            fee.and_then(|f| charge.value(f)).map(|u| u.0),
        )
    })
}
