//! MPP, the buyer's side of the `Payment` HTTP authentication scheme: offers out of
//! `WWW-Authenticate: Payment …` challenges, a Tempo charge credential into `Authorization`,
//! the `Payment-Receipt` and `application/problem+json` answers read back.
//!
//! * Every `Payment` challenge of a 402 becomes an [`Offer`] (several `WWW-Authenticate` values,
//!   or several challenges in one value, beside other schemes such as `L402` or `Bearer`).
//!   Parameters tollgate does not know are ignored; a challenge for a method or intent tollgate
//!   cannot pay is still listed (and judged "not supported"), never paid.
//! * Only the `tempo` method with the `charge` intent is paid: the offer's network is
//!   `tempo:<chainId>` (its chain id also makes `eip155:<chainId>` match a policy), its asset
//!   the TIP-20 `currency` address, its amount the atomic `amount`, its payee the `recipient`.
//!   The `session` intent (payment channels) is not paid.
//! * The credential is built by the `mpp` crate's Tempo provider, but never through its
//!   `send_with_payment`: budget, policy and approval decide first, and only then [`prove`]
//!   signs. Signed Tempo transactions expire within about 25 seconds, and challenges carry
//!   `expires`: a challenge about to expire is [`stale`], and the paid flow fetches a fresh one
//!   (once) instead of signing it.

use std::time::Duration;

use alloy::primitives::{B256, U256, keccak256};
use mpp::client::PaymentProvider as _;
use mpp::protocol::core::{
    PaymentChallenge, format_authorization, parse_authorization, parse_receipt,
    parse_www_authenticate_all_bytes,
};
use mpp::protocol::intents::ChargeRequest;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::PROTOCOL;
use crate::pay::{Challenge, Offer, PayError, Proof};
use crate::wallet::tempo::TempoWallet;

/// The only method and intent tollgate pays.
pub const METHOD: &str = "tempo";
pub const INTENT: &str = "charge";
/// The `Accept-Payment` header tollgate sends when a Tempo wallet is configured: mpp 0.17+
/// sellers may only offer what a client says it can pay.
pub const ACCEPT_PAYMENT: &str = "tempo/charge";

/// Longest `WWW-Authenticate` value read for `Payment` challenges.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most `Payment` challenges read from one 402.
const MAX_CHALLENGES: usize = 32;
/// Longest `Payment-Receipt` header read.
const MAX_RECEIPT_BYTES: usize = 8 * 1024;
/// How long before `expires` a challenge is no longer signed (the seller must still accept the
/// credential after signing and one round trip).
const MIN_REMAINING_SECONDS: u64 = 5;
/// How long a signed Tempo charge transaction stays valid (the mpp crate's expiring nonce).
const TRANSACTION_VALIDITY_SECONDS: u64 = 25;
/// The whole of preparing and signing one credential (nonce, gas and fee lookups on the RPC).
const SIGN_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads every `Payment` challenge in the 402's `WWW-Authenticate` values into `offers`;
/// those that cannot be read go to `problems`. A problem+json body that reports an error
/// (anything but `payment-required`) becomes `seller_error`.
pub fn read_offers(headers: &HeaderMap, body: &[u8], into: &mut Challenge) {
    let (offers, problems, seller_error) =
        (&mut into.offers, &mut into.problems, &mut into.seller_error);
    let values: Vec<&[u8]> = headers
        .get_all("www-authenticate")
        .iter()
        .map(HeaderValue::as_bytes)
        .filter(|v| {
            if v.len() > MAX_HEADER_BYTES {
                problems.push(format!(
                    "WWW-Authenticate value longer than {MAX_HEADER_BYTES} bytes; not read"
                ));
                return false;
            }
            true
        })
        .collect();
    let parsed = parse_www_authenticate_all_bytes(values);
    let now = crate::money::now_unix();
    for (i, challenge) in parsed.iter().take(MAX_CHALLENGES).enumerate() {
        match challenge {
            Ok(challenge) => match offer(challenge, now) {
                Ok(offer) => offers.push(offer),
                Err(reason) => problems.push(format!(
                    "MPP challenge {:?}: {reason}",
                    excerpt(&challenge.id)
                )),
            },
            Err(e) => problems.push(format!("MPP challenge {i}: {}", excerpt(&e.to_string()))),
        }
    }
    if parsed.len() > MAX_CHALLENGES {
        problems.push(format!(
            "more than {MAX_CHALLENGES} MPP challenges; the rest were ignored"
        ));
    }
    if let Some(problem) = problem(headers, body)
        && problem.kind != "payment-required"
    {
        *seller_error = Some(problem.to_string());
    }
}

/// One challenge as an offer. Challenges for methods or intents tollgate does not pay are
/// offers too (listed with their reason by the judge); only unreadable ones are errors.
fn offer(challenge: &PaymentChallenge, now: u64) -> Result<Offer, String> {
    let method = challenge.method.as_str();
    let intent = challenge.intent.as_str();
    let request: Option<ChargeRequest> = challenge.request.decode().ok();
    let tempo_charge = method == METHOD && intent == INTENT;
    let (network, chain_id, asset, amount_atomic, payee) = match &request {
        Some(request) if tempo_charge => {
            let chain_id = request
                .method_details
                .as_ref()
                .and_then(|d| d.get("chainId"))
                .and_then(Value::as_u64)
                .filter(|id| *id > 0)
                .ok_or("the tempo charge names no methodDetails.chainId; tollgate does not guess the chain")?;
            let asset = address(&request.currency, "currency")?;
            let payee = address(
                request
                    .recipient
                    .as_deref()
                    .ok_or("the tempo charge names no recipient")?,
                "recipient",
            )?;
            let amount = crate::rails::x402::wire::parse_amount(&request.amount)
                .map_err(|reason| format!("`amount` {reason}"))?;
            (
                format!("tempo:{chain_id}"),
                Some(chain_id),
                asset,
                amount,
                payee,
            )
        }
        // Listed, not paid: the judge explains why. Best-effort fields for the listing.
        _ => (
            method.to_owned(),
            None,
            request
                .as_ref()
                .map(|r| excerpt(&r.currency))
                .unwrap_or_default(),
            request
                .as_ref()
                .and_then(|r| r.amount.parse::<u128>().ok())
                .unwrap_or(0),
            request
                .as_ref()
                .and_then(|r| r.recipient.as_deref())
                .map(excerpt)
                .unwrap_or_default(),
        ),
    };
    let max_timeout_seconds = challenge
        .expires_at()
        .map(|t| {
            u64::try_from(t.unix_timestamp())
                .unwrap_or(0)
                .saturating_sub(now)
        })
        .unwrap_or(0);
    let raw = serde_json::to_value(challenge).map_err(|e| format!("cannot keep it: {e}"))?;
    Ok(Offer {
        protocol: PROTOCOL,
        scheme: format!("{method}/{intent}"),
        network,
        chain_id,
        asset,
        amount_atomic,
        payee,
        max_timeout_seconds,
        raw,
        resource: None,
        extensions: None,
    })
}

/// Why tollgate will not pay this MPP offer in the way it asks, if it will not.
pub fn unsupported(offer: &Offer) -> Option<String> {
    if offer.scheme != format!("{METHOD}/{INTENT}") {
        return Some(format!(
            "MPP {} is not supported (tollgate pays {METHOD}/{INTENT} only)",
            offer.scheme
        ));
    }
    let details = offer
        .raw
        .get("request")
        .and_then(Value::as_str)
        .and_then(|raw| {
            mpp::protocol::core::types::Base64UrlJson::from_raw(raw)
                .decode_value()
                .ok()
        })
        .and_then(|request| request.get("methodDetails").cloned());
    if details
        .as_ref()
        .and_then(|d| d.get("machineTokenEnabled"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Some(
            "the tempo charge allows machine-token funding (a swap into another token); tollgate \
             pays only in the currency it valued"
                .to_owned(),
        );
    }
    None
}

/// Whether the offer's challenge expires too soon to sign (or already has).
pub fn stale(offer: &Offer, now: u64) -> bool {
    match challenge(offer) {
        Ok(c) => match c.expires_at() {
            None => c.expires.is_some(), // unreadable `expires`: fail closed
            Some(at) => {
                at.unix_timestamp() < i64::try_from(now + MIN_REMAINING_SECONDS).unwrap_or(i64::MAX)
            }
        },
        Err(_) => true,
    }
}

fn challenge(offer: &Offer) -> Result<PaymentChallenge, PayError> {
    serde_json::from_value(offer.raw.clone())
        .map_err(|e| PayError::Unpayable(format!("the MPP challenge cannot be read back: {e}")))
}

/// Signs a Tempo charge credential for the offer: the `Authorization: Payment …` header (or
/// the header the challenge names) for the paid retry. Called only after the reservation.
pub async fn prove(offer: &Offer, wallet: &TempoWallet, now: u64) -> Result<Proof, PayError> {
    if offer.protocol != PROTOCOL {
        return Err(PayError::Unpayable(format!(
            "{} offer given to the MPP signer",
            offer.protocol
        )));
    }
    if let Some(reason) = unsupported(offer) {
        return Err(PayError::Unpayable(reason));
    }
    let challenge = challenge(offer)?;
    if stale(offer, now) {
        return Err(PayError::Unpayable(format!(
            "the MPP challenge expires at {}; it is too late to sign it",
            challenge.expires.as_deref().unwrap_or("?")
        )));
    }
    if let (Some(pinned), Some(asked)) = (wallet.chain_id(), offer.chain_id)
        && pinned != asked
    {
        return Err(PayError::Unpayable(format!(
            "the offer is on chain {asked}, but the Tempo wallet pays on chain {pinned} only \
             (wallet.tempo.chain_id)"
        )));
    }
    // The provider checks again, before any RPC or signing work, that it pays exactly the
    // currency and at most the amount that tollgate valued and reserved.
    let provider = wallet
        .provider()
        .clone()
        .with_currencies([offer.asset.clone()])
        .with_max_atomic_amount(U256::from(offer.amount_atomic));
    let credential = tokio::time::timeout(SIGN_TIMEOUT, provider.pay(&challenge))
        .await
        .map_err(|_| {
            PayError::Signing(format!(
                "preparing the Tempo transaction took longer than {}s (is wallet.tempo.rpc_url \
                 reachable?)",
                SIGN_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            PayError::Signing(format!("Tempo charge: {}", excerpt_long(&e.to_string())))
        })?;
    let value = format_authorization(&credential)
        .map_err(|e| PayError::Signing(format!("encoding the credential: {e}")))?;
    let name = HeaderName::from_bytes(challenge.credential_header().as_bytes()).map_err(|_| {
        PayError::Unpayable("the challenge names an invalid credential header".to_owned())
    })?;
    let value = HeaderValue::from_str(&value)
        .map_err(|_| PayError::Signing("the credential is not a valid header value".to_owned()))?;
    let expires = challenge
        .expires_at()
        .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
        .unwrap_or(u64::MAX);
    let mut proof = Proof {
        headers: vec![(name, value)],
        payer: format!("{}", wallet.payer()),
        valid_before: (now + TRANSACTION_VALIDITY_SECONDS).min(expires),
        ..Proof::default()
    };
    // The fee comes on top of the amount. Until the mined transaction's receipt says what it
    // cost, the proof carries the most it can cost: never under-counted.
    let bound = within_fee_limit(&proof, offer, u128::from(wallet.max_fee_atomic()))
        .map_err(PayError::Unpayable)?;
    proof.fee_atomic = bound.atomic;
    proof
        .details
        .insert("max_fee_atomic".into(), bound.atomic.to_string().into());
    Ok(proof)
}

/// The signed transaction's fee bound, if it is within `limit` and paid in the charged asset
/// (the budgets hold the fee in that asset); else why it is not sent.
pub fn within_fee_limit(proof: &Proof, offer: &Offer, limit: u128) -> Result<FeeBound, String> {
    let bound = fee_bound(proof)?;
    if bound.atomic == 0 {
        return Ok(bound);
    }
    if !fee_in_asset(bound.fee_token.as_deref(), &offer.asset) {
        return Err(format!(
            "the Tempo transaction would pay its fee in {}, not in the charged asset {}; \
             tollgate holds fees in the charged asset, so it was not sent",
            bound.fee_token.as_deref().unwrap_or("(no fee token)"),
            offer.asset
        ));
    }
    if bound.atomic > limit {
        return Err(format!(
            "the Tempo transaction's fee could reach {} atomic units of the fee token, above \
             wallet.tempo.max_fee_atomic {limit}; it was not sent",
            bound.atomic
        ));
    }
    Ok(bound)
}

/// Reads what the paid charge's transaction cost in fees from its receipt on the wallet's
/// RPC and records it in the proof ([`record_fee`]). The seller answers after the
/// transaction is mined, so the receipt is there at once; it is asked a few times in case the
/// seller answered first. Without it the proof keeps the held bound (logged, never lower).
pub async fn read_fee(proof: &mut Proof, offer: &Offer, wallet: &TempoWallet) {
    let hash = match transaction_hash(proof) {
        Ok(hash) => hash,
        // A fee-payer envelope: the seller paid the fee.
        Err(_) if fee_bound(proof).is_ok_and(|b| b.atomic == 0) => return,
        Err(why) => {
            tracing::warn!(%why, "the MPP charge's fee cannot be read; the bound is charged");
            return;
        }
    };
    for attempt in 0..FEE_RECEIPT_ATTEMPTS {
        match wallet.transaction_receipt(hash).await {
            Ok(Some(receipt)) => {
                let signed = fee_bound(proof).ok().and_then(|b| b.fee_token);
                match receipt_fee(&receipt, &format!("{}", wallet.payer()), signed.as_deref()) {
                    Ok(fee) => record_fee(proof, offer, &fee),
                    Err(why) => tracing::warn!(%why, transaction = %hash,
                        "unreadable transaction receipt; the fee bound is charged"),
                }
                return;
            }
            Ok(None) if attempt + 1 < FEE_RECEIPT_ATTEMPTS => {
                tokio::time::sleep(FEE_RECEIPT_PAUSE).await;
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(%why, transaction = %hash, "the fee bound is charged");
                return;
            }
        }
    }
    tracing::warn!(transaction = %hash, "no transaction receipt yet; the fee bound is charged");
}

/// How often, and how far apart, a paid charge's transaction receipt is asked for.
const FEE_RECEIPT_ATTEMPTS: u32 = 5;
const FEE_RECEIPT_PAUSE: Duration = Duration::from_millis(200);

/// Writes the fee a mined charge cost (from its receipt) into the proof: `fee_atomic` is then
/// what the budgets are charged on top of the amount, and the receipt shows it. A fee in
/// another token than the charged asset is shown but left at the held bound.
pub fn record_fee(proof: &mut Proof, offer: &Offer, fee: &Fee) {
    let details = &mut proof.details;
    details.insert("fee_atomic".into(), fee.atomic.to_string().into());
    if let Some(token) = &fee.fee_token {
        details.insert("fee_token".into(), token.clone().into());
    }
    details.insert("gas_used".into(), fee.gas_used.into());
    details.insert(
        "effective_gas_price".into(),
        fee.effective_gas_price.to_string().into(),
    );
    if fee.atomic == 0 || fee_in_asset(fee.fee_token.as_deref(), &offer.asset) {
        proof.fee_atomic = fee.atomic;
    }
}

/// The hash the signed Tempo transaction in a recorded proof will have once mined, to settle a
/// payment whose outcome is unknown against the chain. `Err(why)` when the proof cannot tell:
/// not a transaction credential, or a fee-payer envelope (`0x78`) that the seller co-signs, which
/// changes the hash.
pub fn transaction_hash(proof: &Proof) -> Result<B256, String> {
    let bytes = signed_transaction(proof)?;
    match bytes.first() {
        None => Err("the signed transaction is empty".to_owned()),
        Some(&FEE_PAYER_ENVELOPE) => Err(
            "the transaction is a fee-payer envelope; its hash is known only once the seller \
             co-signs it"
                .to_owned(),
        ),
        Some(_) => Ok(keccak256(&bytes)),
    }
}

/// The first byte of a fee-payer envelope: a transaction whose fee the seller pays (and
/// co-signs, which changes its hash).
const FEE_PAYER_ENVELOPE: u8 = 0x78;

/// The bytes of the signed Tempo transaction a recorded charge credential carries.
fn signed_transaction(proof: &Proof) -> Result<Vec<u8>, String> {
    let (_, value) = proof
        .headers
        .iter()
        .find(|(name, _)| {
            name.as_str().eq_ignore_ascii_case("authorization")
                || name.as_str().eq_ignore_ascii_case("payment-authorization")
        })
        .ok_or("the proof has no Payment credential")?;
    let text = value.to_str().map_err(|_| "the credential is not ASCII")?;
    let credential = parse_authorization(text).map_err(|_| "the credential is unreadable")?;
    let payload = credential
        .charge_payload()
        .map_err(|_| "the credential is not a charge")?;
    let signed = payload
        .signed_tx()
        .ok_or("the credential carries no signed transaction")?;
    hex::decode(signed.trim_start_matches("0x"))
        .map_err(|_| "the signed transaction is not hex".to_owned())
}

// Fees. A Tempo transaction's fee is paid in a TIP-20 stablecoin (its `fee_token`; the mpp
// crate names the charged currency), not in a native coin: gas prices are in attodollars
// (10^-18 USD) per gas, and the fee in the token's atomic units (6 decimals, micro-dollars)
// is `ceil(gas × price / 10^12)` (tempo-primitives' `calc_gas_balance_spending`). Before the
// transaction runs the chain takes the most it can cost (`gas_limit × max_fee_per_gas`); after,
// it refunds all but `gas_used × effective_gas_price`. So the buyer pays amount + fee, and
// both are held and charged against the budgets.

/// Attodollars per atomic unit of a 6-decimal TIP-20 token.
const GAS_PRICE_SCALE: u128 = 1_000_000_000_000;

/// The fee, in atomic units of the fee token, of `gas` at `price` attodollars per gas,
/// rounded up as the chain rounds it.
pub fn fee_atomic(gas: u64, price: u128) -> u128 {
    let fee = U256::from(gas)
        .saturating_mul(U256::from(price))
        .div_ceil(U256::from(GAS_PRICE_SCALE));
    u128::try_from(fee).unwrap_or(u128::MAX)
}

/// The most the signed transaction of a charge credential can cost in fees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeBound {
    /// In atomic units of `fee_token` (0 when the seller pays the fee).
    pub atomic: u128,
    /// The token the fee is paid in; `None` for a fee-payer envelope (the seller's choice).
    pub fee_token: Option<String>,
}

/// The most the credential's transaction can cost in fees: `gas_limit × max_fee_per_gas`,
/// scaled. A fee-payer envelope (`0x78`) costs the buyer no fee.
pub fn fee_bound(proof: &Proof) -> Result<FeeBound, String> {
    use tempo_alloy::primitives::AASigned;
    use tempo_alloy::primitives::transaction::TEMPO_TX_TYPE_ID;
    let bytes = signed_transaction(proof)?;
    let body = match bytes.split_first() {
        Some((&FEE_PAYER_ENVELOPE, _)) => {
            return Ok(FeeBound {
                atomic: 0,
                fee_token: None,
            });
        }
        Some((&TEMPO_TX_TYPE_ID, body)) => body,
        _ => return Err("the signed transaction is not a Tempo transaction (0x76)".to_owned()),
    };
    let signed = AASigned::rlp_decode(&mut &body[..])
        .map_err(|e| format!("the signed Tempo transaction cannot be decoded ({e})"))?;
    let tx = signed.tx();
    Ok(FeeBound {
        atomic: fee_atomic(tx.gas_limit, tx.max_fee_per_gas),
        fee_token: tx.fee_token.map(|t| t.to_string().to_ascii_lowercase()),
    })
}

/// What a mined charge's fee cost the buyer, read from its transaction receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fee {
    /// In atomic units of `fee_token`; 0 when another account (a sponsor) paid it.
    pub atomic: u128,
    pub fee_token: Option<String>,
    pub gas_used: u64,
    /// Attodollars per gas.
    pub effective_gas_price: u128,
}

/// The fee `payer` paid for a mined transaction, from its `eth_getTransactionReceipt`
/// answer (`gasUsed`, `effectiveGasPrice`, and Tempo's `feeToken` and `feePayer`). A receipt
/// without `feeToken` (anvil's Tempo mode leaves it out) paid in the token the signed
/// transaction names, `signed_fee_token`.
pub fn receipt_fee(
    receipt: &Value,
    payer: &str,
    signed_fee_token: Option<&str>,
) -> Result<Fee, String> {
    let quantity = |key: &str| -> Result<u128, String> {
        let text = receipt
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the transaction receipt has no {key}"))?;
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| format!("the receipt's {key} is not a hex quantity"))?;
        u128::from_str_radix(digits, 16).map_err(|_| {
            format!(
                "the receipt's {key} {:?} is not a hex quantity",
                excerpt(text)
            )
        })
    };
    let gas_used = u64::try_from(quantity("gasUsed")?)
        .map_err(|_| "the receipt's gasUsed does not fit in 64 bits".to_owned())?;
    let effective_gas_price = quantity("effectiveGasPrice")?;
    let fee_token = receipt
        .get("feeToken")
        .and_then(Value::as_str)
        .or(signed_fee_token)
        .map(str::to_ascii_lowercase);
    let sponsored = receipt
        .get("feePayer")
        .and_then(Value::as_str)
        .is_some_and(|fee_payer| !fee_payer.eq_ignore_ascii_case(payer));
    Ok(Fee {
        atomic: if sponsored || fee_token.is_none() {
            0
        } else {
            fee_atomic(gas_used, effective_gas_price)
        },
        fee_token,
        gas_used,
        effective_gas_price,
    })
}

/// Whether a fee in `fee_token` is counted in the charged asset `asset` (the same token).
pub fn fee_in_asset(fee_token: Option<&str>, asset: &str) -> bool {
    fee_token.is_some_and(|t| t.eq_ignore_ascii_case(asset))
}

/// The seller's `Payment-Receipt`, as JSON (`status`, `method`, `timestamp`, `reference`, …):
/// `None` if absent, `Some(Err(why))` if unreadable.
pub fn receipt(headers: &HeaderMap) -> Option<Result<Value, String>> {
    let value = headers.get("payment-receipt")?;
    if value.len() > MAX_RECEIPT_BYTES {
        return Some(Err(format!(
            "Payment-Receipt longer than {MAX_RECEIPT_BYTES} bytes"
        )));
    }
    let Ok(text) = value.to_str() else {
        return Some(Err("Payment-Receipt is not ASCII".to_owned()));
    };
    Some(
        parse_receipt(text.trim())
            .map_err(|e| format!("Payment-Receipt: {}", excerpt(&e.to_string())))
            .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
    )
}

/// An `application/problem+json` answer (RFC 9457) from an MPP seller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The last segment of `type`: `payment-expired`, `verification-failed`,
    /// `payment-insufficient`, `method-unsupported`, …
    pub kind: String,
    pub title: Option<String>,
    pub detail: Option<String>,
}

impl Problem {
    /// Whether the seller refused the credential only because it came too late: the one case
    /// where tollgate fetches a fresh challenge and signs once more.
    pub fn is_expired(&self) -> bool {
        self.kind == "payment-expired"
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind)?;
        if let Some(detail) = self.detail.as_ref().or(self.title.as_ref()) {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Reads a problem+json body, if the answer is one.
pub fn problem(headers: &HeaderMap, body: &[u8]) -> Option<Problem> {
    let content_type = headers.get("content-type")?.to_str().ok()?;
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/problem+json")
    {
        return None;
    }
    let json: Value = serde_json::from_slice(body).ok()?;
    let kind = json
        .get("type")
        .and_then(Value::as_str)
        .map(|t| t.trim_end_matches('/').rsplit('/').next().unwrap_or(t))
        .filter(|k| !k.is_empty())
        .map(excerpt)?;
    let text = |key: &str| {
        json.get(key)
            .and_then(Value::as_str)
            .map(|s| crate::upstream::excerpt(s.as_bytes()))
    };
    Some(Problem {
        kind,
        title: text("title"),
        detail: text("detail"),
    })
}

/// The receipt fields only MPP has, for [`crate::pay::Receipt::details`].
pub fn receipt_details(offer: &Offer, receipt: Option<&Value>) -> serde_json::Map<String, Value> {
    let challenge = &offer.raw;
    let mut details = serde_json::Map::new();
    details.insert("method".into(), json!(METHOD));
    details.insert("intent".into(), json!(INTENT));
    details.insert(
        "realm".into(),
        challenge.get("realm").cloned().unwrap_or(Value::Null),
    );
    details.insert(
        "challenge_id".into(),
        challenge.get("id").cloned().unwrap_or(Value::Null),
    );
    details.insert(
        "reference".into(),
        receipt
            .and_then(|r| r.get("reference"))
            .cloned()
            .unwrap_or(Value::Null),
    );
    details
}

/// The settlement reference (the transaction hash for Tempo charges) of a receipt.
pub fn reference(receipt: &Value) -> Option<String> {
    receipt
        .get("reference")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && r.len() <= 200)
        .map(str::to_owned)
}

fn address(text: &str, what: &str) -> Result<String, String> {
    let ok = text.len() == 42
        && text.starts_with("0x")
        && text[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!("`{what}` {:?} is not an address", excerpt(text)))
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

fn excerpt_long(text: &str) -> String {
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

    const PATH_USD: &str = "0x20c0000000000000000000000000000000000000";
    const RECIPIENT: &str = "0x00000000000000000000000000000000000A11CE";

    fn request(value: Value) -> String {
        B64URL.encode(value.to_string())
    }

    fn charge(id: &str, amount: &str, expires: Option<&str>) -> String {
        let mut header = format!(
            r#"Payment id="{id}", realm="api.test", method="tempo", intent="charge", request="{}", description="weather", opaque="e30", future_param="ignored""#,
            request(
                json!({"amount": amount, "currency": PATH_USD, "recipient": RECIPIENT,
                           "methodDetails": {"chainId": 31337}})
            )
        );
        if let Some(expires) = expires {
            header.push_str(&format!(r#", expires="{expires}""#));
        }
        header
    }

    fn read(
        values: &[&str],
        body: &[u8],
        content_type: Option<&str>,
    ) -> (Vec<Offer>, Vec<String>, Option<String>) {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("www-authenticate", HeaderValue::from_str(v).unwrap());
        }
        if let Some(ct) = content_type {
            headers.insert("content-type", HeaderValue::from_str(ct).unwrap());
        }
        let mut read = Challenge::default();
        read_offers(&headers, body, &mut read);
        (read.offers, read.problems, read.seller_error)
    }

    #[test]
    fn a_tempo_charge_becomes_an_offer() {
        let (offers, problems, _) = read(&[&charge("c1", "10000", None)], b"", None);
        assert!(problems.is_empty(), "{problems:?}");
        let [offer] = offers.as_slice() else {
            panic!("{offers:?}")
        };
        assert_eq!(offer.protocol, PROTOCOL);
        assert_eq!(offer.scheme, "tempo/charge");
        assert_eq!(offer.network, "tempo:31337");
        assert_eq!(offer.chain_id, Some(31337));
        assert_eq!(offer.asset, PATH_USD);
        assert_eq!(offer.amount_atomic, 10_000);
        assert_eq!(offer.payee, RECIPIENT.to_ascii_lowercase());
        assert_eq!(offer.raw["id"], "c1");
        assert_eq!(offer.raw["description"], "weather");
        assert!(offer.network_names().contains(&"eip155:31337".to_owned()));
        assert_eq!(unsupported(offer), None);
    }

    #[test]
    fn every_payment_challenge_among_other_schemes_is_read() {
        let merged = format!(
            "{}, {}",
            charge("a", "10000", None),
            charge("b", "20000", None)
        );
        let (offers, problems, _) = read(
            &[
                r#"Bearer realm="api", error="invalid_token""#,
                r#"L402 macaroon="AgEEbHNhdA==", invoice="lnbc1""#,
                &merged,
                &charge("c", "30000", None),
            ],
            b"",
            None,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let ids: Vec<_> = offers.iter().map(|o| o.raw["id"].clone()).collect();
        assert_eq!(ids, [json!("a"), json!("b"), json!("c")]);
        let amounts: Vec<_> = offers.iter().map(|o| o.amount_atomic).collect();
        assert_eq!(amounts, [10_000, 20_000, 30_000]);
    }

    #[test]
    fn unknown_methods_and_intents_are_listed_but_not_paid() {
        let lightning = format!(
            r#"Payment id="l1", realm="api", method="lightning", intent="charge", request="{}""#,
            request(json!({"amount": "100", "currency": "sat"}))
        );
        let session = format!(
            r#"Payment id="s1", realm="api", method="tempo", intent="session", request="{}""#,
            request(
                json!({"amount": "1", "currency": PATH_USD, "recipient": RECIPIENT,
                           "methodDetails": {"chainId": 31337}})
            )
        );
        let (offers, problems, _) = read(&[&lightning, &session], b"", None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(offers.len(), 2);
        let reasons: Vec<String> = offers.iter().filter_map(unsupported).collect();
        assert!(
            reasons[0].contains("lightning/charge is not supported"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("tempo/session is not supported"),
            "{reasons:?}"
        );
        assert_eq!(offers[0].chain_id, None);
    }

    #[test]
    fn unreadable_challenges_are_problems_naming_what_is_wrong() {
        let no_chain = format!(
            r#"Payment id="n1", realm="api", method="tempo", intent="charge", request="{}""#,
            request(json!({"amount": "10", "currency": PATH_USD, "recipient": RECIPIENT}))
        );
        let bad_amount = format!(
            r#"Payment id="n2", realm="api", method="tempo", intent="charge", request="{}""#,
            request(
                json!({"amount": "0.01", "currency": PATH_USD, "recipient": RECIPIENT,
                           "methodDetails": {"chainId": 31337}})
            )
        );
        let not_json = r#"Payment id="n3", realm="api", method="tempo", intent="charge", request="bm90IGpzb24""#;
        let (offers, problems, _) = read(&[&no_chain, &bad_amount, not_json], b"", None);
        assert!(offers.is_empty(), "{offers:?}");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("chainId"), "{problems:?}");
        assert!(problems[1].contains("amount"), "{problems:?}");
        assert!(problems[2].starts_with("MPP challenge 2"), "{problems:?}");
    }

    #[test]
    fn machine_token_funding_is_not_paid() {
        let header = format!(
            r#"Payment id="m1", realm="api", method="tempo", intent="charge", request="{}""#,
            request(
                json!({"amount": "10", "currency": PATH_USD, "recipient": RECIPIENT,
                           "methodDetails": {"chainId": 31337, "machineTokenEnabled": true}})
            )
        );
        let (offers, _, _) = read(&[&header], b"", None);
        assert!(unsupported(&offers[0]).unwrap().contains("machine-token"));
    }

    #[test]
    fn a_challenge_near_or_past_its_expiry_is_stale() {
        let now: u64 = 1_900_000_000; // 2030-03-17T17:46:40Z
        let at = |secs: i64| crate::money::rfc3339(now.checked_add_signed(secs).unwrap());
        let offer_expiring = |secs| {
            read(&[&charge("e", "1", Some(&at(secs)))], b"", None)
                .0
                .remove(0)
        };
        assert!(stale(&offer_expiring(-60), now));
        assert!(stale(&offer_expiring(2), now));
        assert!(!stale(&offer_expiring(60), now));
        let never = read(&[&charge("n", "1", None)], b"", None).0.remove(0);
        assert!(!stale(&never, now));
    }

    #[test]
    fn problem_json_names_the_reason() {
        let body = br#"{"type":"https://paymentauth.org/problems/payment-expired","title":"Payment Expired","status":402,"detail":"Payment expired at 2026-01-01T00:00:00Z."}"#;
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/problem+json"),
        );
        let p = problem(&headers, body).unwrap();
        assert_eq!(p.kind, "payment-expired");
        assert!(p.is_expired());
        assert_eq!(
            p.to_string(),
            "payment-expired: Payment expired at 2026-01-01T00:00:00Z."
        );
        let (_, _, error) = read(&[], body, Some("application/problem+json; charset=utf-8"));
        assert_eq!(
            error.as_deref(),
            Some("payment-expired: Payment expired at 2026-01-01T00:00:00Z.")
        );
        // The plain "payment required" of a first 402 is not an error.
        let required = br#"{"type":"https://paymentauth.org/problems/payment-required","title":"Payment Required"}"#;
        assert_eq!(
            read(&[], required, Some("application/problem+json")).2,
            None
        );
        // Not problem+json: not read as one.
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        assert_eq!(problem(&headers, body), None);
    }

    /// A recorded charge credential carrying `raw` as its signed transaction.
    fn proof_of(raw: &str) -> Proof {
        use mpp::protocol::core::{PaymentCredential, PaymentPayload};
        let (offers, _, _) = read(&[&charge("t1", "10", None)], b"", None);
        let challenge: PaymentChallenge = serde_json::from_value(offers[0].raw.clone()).unwrap();
        let credential =
            PaymentCredential::new(challenge.to_echo(), PaymentPayload::transaction(raw));
        let value = format_authorization(&credential).unwrap();
        Proof {
            headers: vec![(
                HeaderName::from_static("authorization"),
                HeaderValue::from_str(&value).unwrap(),
            )],
            payer: "0x0".into(),
            valid_before: 0,
            ..Proof::default()
        }
    }

    /// A signed Tempo transaction (0x76) with these fee fields, as hex.
    fn signed_tx(gas_limit: u64, max_fee_per_gas: u128, fee_token: &str) -> String {
        use alloy::primitives::Signature;
        use tempo_alloy::primitives::TempoTransaction;
        use tempo_alloy::primitives::transaction::Call;
        use tempo_alloy::primitives::transaction::TempoSignature;
        let token = fee_token.parse().unwrap();
        let tx = TempoTransaction {
            chain_id: 31337,
            calls: vec![Call {
                to: alloy::primitives::TxKind::Call(token),
                value: U256::ZERO,
                input: Default::default(),
            }],
            gas_limit,
            max_fee_per_gas,
            fee_token: Some(token),
            ..Default::default()
        };
        let signature = Signature::new(U256::from(1), U256::from(2), false);
        let signed = tx.into_signed(TempoSignature::from(signature));
        let mut bytes = vec![0x76];
        signed.rlp_encode(&mut bytes);
        format!("0x{}", hex::encode(bytes))
    }

    fn path_usd_offer() -> Offer {
        Offer {
            protocol: PROTOCOL,
            scheme: INTENT.to_owned(),
            network: "tempo:31337".to_owned(),
            chain_id: Some(31337),
            asset: PATH_USD.to_owned(),
            amount_atomic: 10_000,
            payee: "0x0000000000000000000000000000000000000002".to_owned(),
            max_timeout_seconds: 60,
            raw: Value::Null,
            resource: None,
            extensions: None,
        }
    }

    #[test]
    fn tempo_fees_are_gas_times_price_in_attodollars_rounded_up_to_token_units() {
        // 35,238 gas at 21 gwei (20 base + 1 priority) ≈ 740 micro-dollars, rounded up.
        assert_eq!(fee_atomic(35_238, 21_000_000_000), 740);
        assert_eq!(fee_atomic(1, 1), 1);
        assert_eq!(fee_atomic(0, 21_000_000_000), 0);
        assert_eq!(fee_atomic(21_000, 1_000_000_000), 21);
        assert_eq!(fee_atomic(u64::MAX, u128::MAX), u128::MAX);
    }

    #[test]
    fn the_signed_transaction_bounds_the_fee_and_must_fit_the_limit() {
        let proof = proof_of(&signed_tx(42_000, 41_000_000_000, PATH_USD));
        let bound = fee_bound(&proof).unwrap();
        assert_eq!(
            bound.atomic, 1_722,
            "42,000 gas × 41 gwei / 10^12, rounded up"
        );
        assert_eq!(bound.fee_token.as_deref(), Some(PATH_USD));
        let offer = path_usd_offer();
        assert_eq!(within_fee_limit(&proof, &offer, 5_000).unwrap(), bound);
        let err = within_fee_limit(&proof, &offer, 1_000).unwrap_err();
        assert!(
            err.contains("1722") && err.contains("max_fee_atomic 1000"),
            "{err}"
        );
        // A fee in another token than the charged one is not held right: not sent.
        let other = proof_of(&signed_tx(
            42_000,
            41_000_000_000,
            "0x20c0000000000000000000000000000000000001",
        ));
        let err = within_fee_limit(&other, &offer, 5_000).unwrap_err();
        assert!(err.contains("not in the charged asset"), "{err}");
        // The seller pays a fee-payer envelope's fee.
        assert_eq!(fee_bound(&proof_of("0x78c0ffee")).unwrap().atomic, 0);
        assert!(fee_bound(&proof_of("0x76c0ffee")).is_err());
    }

    #[test]
    fn the_receipt_says_what_the_fee_cost_the_buyer() {
        let payer = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
        let receipt = json!({"status": "0x1", "gasUsed": "0x89a6", "effectiveGasPrice": "0x4e3b29200",
                             "feeToken": PATH_USD, "feePayer": payer.to_lowercase()});
        let fee = receipt_fee(&receipt, payer, None).unwrap();
        assert_eq!(fee.gas_used, 0x89a6);
        assert_eq!(fee.effective_gas_price, 21_000_000_000);
        assert_eq!(fee.atomic, 740);
        let mut proof = proof_of("0x76c0ffee");
        proof.fee_atomic = 1_722;
        record_fee(&mut proof, &path_usd_offer(), &fee);
        assert_eq!(proof.fee_atomic, 740, "the actual fee replaces the bound");
        assert_eq!(proof.details["fee_atomic"], "740");
        assert_eq!(proof.details["gas_used"], 0x89a6);
        // Paid by a sponsor: nothing for the buyer.
        let mut sponsored = receipt.clone();
        sponsored["feePayer"] = json!("0x0000000000000000000000000000000000000001");
        assert_eq!(receipt_fee(&sponsored, payer, None).unwrap().atomic, 0);
        // Without feeToken (anvil), the signed transaction's fee token paid.
        let mut anvil = receipt.clone();
        anvil.as_object_mut().unwrap().remove("feeToken");
        assert_eq!(receipt_fee(&anvil, payer, None).unwrap().atomic, 0);
        let fee = receipt_fee(&anvil, payer, Some(PATH_USD)).unwrap();
        assert_eq!(
            (fee.atomic, fee.fee_token.as_deref()),
            (740, Some(PATH_USD))
        );
        // Unreadable fields are named.
        let mut bad = receipt.clone();
        bad["gasUsed"] = json!(35238);
        assert!(
            receipt_fee(&bad, payer, None)
                .unwrap_err()
                .contains("gasUsed")
        );
        bad.as_object_mut().unwrap().remove("gasUsed");
        assert!(
            receipt_fee(&bad, payer, None)
                .unwrap_err()
                .contains("no gasUsed")
        );
    }

    #[test]
    fn a_recorded_credential_names_its_transactions_hash() {
        let hash = transaction_hash(&proof_of("0x76c0ffee")).unwrap();
        assert_eq!(hash, keccak256([0x76, 0xc0, 0xff, 0xee]));
        let err = transaction_hash(&proof_of("0x78c0ffee")).unwrap_err();
        assert!(err.contains("fee-payer"), "{err}");
        // A proof recorded and read back from the ledger gives the same hash.
        let kept = Proof::from_json(&proof_of("0x76c0ffee").to_json()).unwrap();
        assert_eq!(transaction_hash(&kept).unwrap(), hash);
    }

    #[test]
    fn reads_a_payment_receipt() {
        let receipt = json!({"status": "success", "method": "tempo", "timestamp": "2026-01-01T00:00:00Z",
                             "reference": "0xabc123"});
        let mut headers = HeaderMap::new();
        headers.insert(
            "payment-receipt",
            HeaderValue::from_str(&B64URL.encode(receipt.to_string())).unwrap(),
        );
        let read = super::receipt(&headers).unwrap().unwrap();
        assert_eq!(reference(&read).as_deref(), Some("0xabc123"));
        headers.insert("payment-receipt", HeaderValue::from_static("!!!"));
        assert!(super::receipt(&headers).unwrap().is_err());
        assert!(super::receipt(&HeaderMap::new()).is_none());
    }
}
