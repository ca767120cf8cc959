//! x402 (v1 and v2): USDC and other EIP-3009 tokens on EVM chains. The seller's 402 carries
//! its requirements (v2 in the `PAYMENT-REQUIRED` header, v1 in the body); the proof is an
//! EIP-3009 `transferWithAuthorization` signed by the delegated EVM key; the seller's
//! facilitator settles it and answers with `PAYMENT-RESPONSE`. An unknown outcome is told by
//! the token contract: `authorizationState(from, nonce)`.

pub mod wire;

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256};
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::{BoxFuture, PaidAnswer, Proving, Rail, Settled, Unknown, Verdict};
use crate::ledger::PendingPayment;
use crate::pay::Charge;
use crate::pay::assets::{self, Asset};
use crate::pay::{Challenge, Offer, PayError, Proof, Protocol, Quote};
use crate::wallet::EvmWallet;

/// The rail's name.
pub const NAME: &str = "x402";

/// x402 at a version of its wire format.
pub const fn protocol(version: u8) -> Protocol {
    Protocol::new(NAME, "x402", version)
}

/// The x402 rail: the EVM key that signs.
pub struct X402 {
    pub(super) wallet: Option<EvmWallet>,
}

impl Rail for X402 {
    fn name(&self) -> &'static str {
        NAME
    }

    fn read(&self, headers: &HeaderMap, body: &[u8], _now: u64, into: &mut Challenge) {
        wire::read_offers(headers, body, into);
    }

    fn missing(&self) -> Option<String> {
        self.wallet.is_none().then(|| {
            "no EVM wallet is configured (set TOLLGATE_EVM_KEY or wallet.evm_keystore)".to_owned()
        })
    }

    fn valuation(&self, offer: &Offer, assets: &[Asset]) -> Result<Asset, String> {
        assets::evm_asset(offer, assets)
    }

    fn supported(&self, offer: &Offer) -> Result<(), String> {
        if offer.scheme == "exact" {
            Ok(())
        } else {
            Err(format!(
                "x402 scheme {:?} is not supported (only \"exact\")",
                offer.scheme
            ))
        }
    }

    /// An EIP-3009 signature: made at once, inside the reservation's transaction.
    fn signs_at_once(&self) -> bool {
        true
    }

    /// A signed authorization for exactly the offer the seller asked for on its last calls:
    /// a seller that finds it no longer matches its requirements refuses it unsettled.
    fn pays_ahead(&self) -> bool {
        true
    }

    fn sign(&self, quote: &Quote, now: u64) -> Result<Proof, PayError> {
        match &self.wallet {
            Some(wallet) => wire::prove(&quote.offer, wallet, now),
            None => Err(PayError::Unpayable(
                "no EVM wallet is configured".to_owned(),
            )),
        }
    }

    fn prove<'a>(&'a self, proving: Proving<'a>) -> BoxFuture<'a, Result<Proof, PayError>> {
        Box::pin(std::future::ready(self.sign(proving.quote, proving.now)))
    }

    fn settlement<'a>(&'a self, paid: PaidAnswer<'a>) -> BoxFuture<'a, Settled> {
        let mut settled = Settled::default();
        let decoded = super::readable(wire::settlement(paid.headers), "PAYMENT-RESPONSE header");
        settled.transaction = decoded
            .as_ref()
            .and_then(|d| d.get("transaction"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 200)
            .map(str::to_owned);
        if let Some(decoded) = decoded {
            settled.meta.insert("x402/payment-response".into(), decoded);
        }
        Box::pin(std::future::ready(settled))
    }

    /// Used → paid (with the transaction from the token's `AuthorizationUsed` log when the
    /// node still has it); unused and expired → it can never settle; unused and valid → open.
    fn reconcile<'a>(&'a self, unknown: Unknown<'a>) -> BoxFuture<'a, Result<Verdict, String>> {
        Box::pin(async move {
            let client = crate::rpc::client()?;
            Ok(match x402(&client, unknown.rpc, unknown.payment).await? {
                Some(transaction) => Verdict::Paid {
                    price_usd_micros: None,
                    transaction,
                    charged_usd_micros: None,
                    reverted: false,
                    details: Default::default(),
                },
                None if unknown.expired() => Verdict::Unpaid,
                None => Verdict::Open,
            })
        })
    }
}

/// Blocks searched back for the `AuthorizationUsed` log.
const LOG_LOOKBACK_BLOCKS: u64 = 100_000;

sol! {
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
}

/// `Ok(Some(tx))` if the authorization was used (`tx` when found), `Ok(None)` if not.
async fn x402(
    client: &reqwest::Client,
    rpc: &BTreeMap<u64, String>,
    payment: &PendingPayment,
) -> Result<Option<Option<String>>, String> {
    let charge = Charge::of_row(payment);
    let network = charge.network.as_str();
    let chain = assets::chain_id(network)
        .ok_or_else(|| format!("network {network:?} is not an EVM network"))?;
    let url = rpc
        .get(&chain)
        .ok_or_else(|| format!("no [rpc] endpoint for {network} in tollgate.toml"))?;
    let token: Address = charge
        .asset
        .parse()
        .map_err(|_| "its asset is not an address".to_owned())?;
    let (from, nonce) = authorization(payment).ok_or("its proof is unreadable")?;
    let data = authorizationStateCall {
        authorizer: from,
        nonce,
    }
    .abi_encode();
    let answer = crate::rpc::call(
        client,
        url,
        "eth_call",
        json!([{"to": token, "data": format!("0x{}", hex::encode(data))}, "latest"]),
    )
    .await?;
    let used = answer
        .as_str()
        .and_then(|h| hex::decode(h.trim_start_matches("0x")).ok())
        .filter(|b| b.len() == 32)
        .ok_or("the token's authorizationState answer is not a bool")?
        .iter()
        .any(|b| *b != 0);
    if !used {
        return Ok(None);
    }
    Ok(Some(
        find_transaction(client, url, token, from, nonce).await,
    ))
}

/// The transaction that used the authorization, if the node still has its log.
async fn find_transaction(
    client: &reqwest::Client,
    url: &str,
    token: Address,
    from: Address,
    nonce: B256,
) -> Option<String> {
    let head = crate::rpc::call(client, url, "eth_blockNumber", json!([]))
        .await
        .ok()?;
    let head = u64::from_str_radix(head.as_str()?.trim_start_matches("0x"), 16).ok()?;
    let from_block = head.saturating_sub(LOG_LOOKBACK_BLOCKS);
    let logs = crate::rpc::call(
        client,
        url,
        "eth_getLogs",
        json!([{
            "address": token,
            "fromBlock": format!("0x{from_block:x}"),
            "toBlock": "latest",
            "topics": [AuthorizationUsed::SIGNATURE_HASH, from.into_word(), nonce],
        }]),
    )
    .await
    .ok()?;
    logs.as_array()?
        .iter()
        .find_map(|l| l["transactionHash"].as_str())
        .filter(|t| t.len() <= 100)
        .map(str::to_owned)
}

/// The signer and nonce of the EIP-3009 authorization in a recorded x402 proof.
fn authorization(payment: &PendingPayment) -> Option<(Address, B256)> {
    let proof = Proof::from_json(payment.proof_json.as_deref()?)?;
    let (_, header) = proof.headers.iter().find(|(name, _)| {
        name.as_str().eq_ignore_ascii_case("payment-signature")
            || name.as_str().eq_ignore_ascii_case("x-payment")
    })?;
    let payload: Value = serde_json::from_slice(&B64.decode(header.as_bytes()).ok()?).ok()?;
    let auth = &payload["payload"]["authorization"];
    Some((
        auth["from"].as_str()?.parse().ok()?,
        auth["nonce"].as_str()?.parse().ok()?,
    ))
}
