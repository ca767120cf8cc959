//! Payments whose outcome is unknown (a process killed between sending a proof and reading
//! the answer) are settled against the chain instead of guessed at.
//!
//! For an x402 payment the proof is an EIP-3009 authorization: the token contract says whether
//! its nonce was used (`authorizationState(from, nonce)`). Used → the payment happened: commit
//! it with a receipt marked `reconciled` (and the transaction, found from the token's
//! `AuthorizationUsed` log when the node can tell). Unused and expired (`validBefore` passed) →
//! it can never settle: release it. Unused and still valid → leave it pending (a retry of the
//! same call re-sends it). For an MPP payment the proof carries the signed Tempo transaction,
//! whose hash is known before it is sent: mined → commit; reverted → release; not mined and
//! past its `validBefore` (an expiring nonce: it can never be mined later) → release; else
//! pending. Without an `[rpc]` endpoint for its network a payment stays
//! reserved and visible. A reservation whose proof never left the process (`reserved`, its
//! owner gone) is released.
//!
//! Only payments whose outcome is unknown are touched (no live owner: see
//! `checkout::lease`), and each is claimed before the chain is asked, so a retry of the same
//! call and reconciliation never act on one payment at once.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256};
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::ledger::{Ledger, LedgerError, NewReceipt, PendingPayment, ReservationState};
use crate::checkout::receipt::{self, Charge, Settlement};
use crate::money::UsdMicros;
use crate::pay::Proof;
use crate::pay::assets;

/// How long an unowned `reserved` row from a tollgate that predates leases is left alone.
pub use crate::ledger::UNOWNED_RESERVED_SECS as STALE_RESERVED_SECS;
/// Blocks searched back for the `AuthorizationUsed` log.
const LOG_LOOKBACK_BLOCKS: u64 = 100_000;

sol! {
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
}

/// What reconciling did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Paid: committed with a receipt.
    pub settled: usize,
    /// Provably unpaid: released.
    pub released: usize,
    /// Still undecided (the proof is valid and unused): left unknown, for a retry to re-send.
    pub pending: usize,
    /// Reserved with no proof sent, by a call whose owner is gone: released (counted in
    /// `released` too).
    pub unsent: usize,
    /// Owned by a live call (in this or another process): not touched.
    pub live: usize,
    /// Not checkable (no `[rpc]` for the network, an unreadable proof, a node error): left.
    pub unchecked: Vec<String>,
}

/// What the chain says about one payment whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Money moved: in `transaction` when the node can tell; costing `charged_usd_micros` when
    /// the chain says (an MPP charge's fee, read from its transaction receipt), else the
    /// amount held. `reverted`: the charge failed on chain, but its fee was still paid.
    Paid {
        transaction: Option<String>,
        charged_usd_micros: Option<u64>,
        reverted: bool,
    },
    /// It can never be paid (reverted, or unused and expired): release it.
    Unpaid,
    /// Not decided yet (valid and unused): it stays unknown.
    Open,
}

/// The HTTP client reconciliation asks nodes with.
pub use crate::rpc::client as rpc_client;

/// Asks the chain about one payment with a recorded proof (x402 or MPP). `Err` says why it
/// cannot be told (no `[rpc]` for its network, an unreadable proof, a node error).
pub async fn verdict(
    client: &reqwest::Client,
    rpc: &BTreeMap<u64, String>,
    payment: &PendingPayment,
    now: u64,
) -> Result<Verdict, String> {
    let expired = payment.valid_before.is_some_and(|v| v <= now);
    if payment.protocol.starts_with("x402") {
        return Ok(match x402(client, rpc, payment).await? {
            Some(transaction) => Verdict::Paid {
                transaction,
                charged_usd_micros: None,
                reverted: false,
            },
            None if expired => Verdict::Unpaid,
            None => Verdict::Open,
        });
    }
    if payment.protocol == "MPP" {
        return Ok(match mpp(client, rpc, payment).await? {
            Mined::Success(transaction, charged_usd_micros) => Verdict::Paid {
                transaction: Some(transaction),
                charged_usd_micros,
                reverted: false,
            },
            // Reverted: the charge did not move, but the buyer paid the fee.
            Mined::Reverted(transaction, Some(fee)) if fee > 0 => Verdict::Paid {
                transaction: Some(transaction),
                charged_usd_micros: Some(fee),
                reverted: true,
            },
            Mined::Reverted(..) => Verdict::Unpaid,
            Mined::No if expired => Verdict::Unpaid,
            Mined::No => Verdict::Open,
        });
    }
    Err(format!(
        "{} payments are not settled on a chain",
        payment.protocol
    ))
}

/// Writes a verdict on a claimed payment: commit (with a receipt marked `reconciled`),
/// release, or give it up again (unknown). Returns the receipt written, if any.
pub fn settle(
    ledger: &Ledger,
    owner: &str,
    payment: &PendingPayment,
    verdict: &Verdict,
    now: u64,
) -> Result<Option<NewReceipt>, LedgerError> {
    match verdict {
        Verdict::Paid {
            transaction,
            charged_usd_micros,
            reverted,
        } => {
            let charged = charged_usd_micros.unwrap_or(payment.amount_usd_micros);
            let receipt = receipt(payment, transaction.clone(), charged, *reverted, now);
            ledger.commit(payment.id, charged, receipt.clone(), now)?;
            Ok(Some(receipt))
        }
        Verdict::Unpaid => ledger.release(payment.id, now).map(|()| None),
        Verdict::Open => ledger.disown(payment.id, owner).map(|()| None),
    }
}

/// Reconciles every open payment that no live call owns (x402 and MPP; L402 payments are
/// left to the Lightning backend). Each is claimed first (`owner`, a lease), so a retry of
/// the same call cannot re-send its proof meanwhile; payments of dead owners on this host are
/// given up first. A live call's payment, in this process or another, is never touched.
pub async fn reconcile(
    ledger: &Ledger,
    rpc: &BTreeMap<u64, String>,
    owner: &str,
    now: u64,
) -> Result<Report, LedgerError> {
    let mut report = Report::default();
    tokio::task::block_in_place(|| crate::checkout::lease::Leases::disown_dead_owners(ledger))?;
    let all = tokio::task::block_in_place(|| ledger.pending())?;
    report.live = all.iter().filter(|p| p.is_owned(now)).count();
    let open: Vec<PendingPayment> = all.into_iter().filter(|p| !p.is_owned(now)).collect();
    if open.is_empty() {
        return Ok(report);
    }
    let client = rpc_client().map_err(LedgerError::Corrupt)?;
    let lease = crate::ledger::Lease {
        owner: owner.to_owned(),
        until: now + crate::checkout::lease::LEASE_SECS,
    };
    for payment in open {
        if payment.protocol == "L402" {
            continue;
        }
        let Some(payment) = tokio::task::block_in_place(|| ledger.claim(payment.id, &lease, now))?
        else {
            report.live += 1;
            continue;
        };
        if payment.state == ReservationState::Reserved {
            // Its owner is gone and no proof ever left the process.
            tokio::task::block_in_place(|| ledger.release(payment.id, now))?;
            report.released += 1;
            report.unsent += 1;
            continue;
        }
        match verdict(&client, rpc, &payment, now).await {
            Ok(verdict) => {
                tokio::task::block_in_place(|| settle(ledger, owner, &payment, &verdict, now))?;
                match verdict {
                    Verdict::Paid { .. } => report.settled += 1,
                    Verdict::Unpaid => report.released += 1,
                    Verdict::Open => report.pending += 1,
                }
            }
            Err(why) => {
                tokio::task::block_in_place(|| ledger.disown(payment.id, owner))?;
                report.unchecked.push(format!(
                    "{} to {} for `{}`: {why}",
                    UsdMicros(payment.amount_usd_micros),
                    payment.payee,
                    payment.tool
                ));
            }
        }
    }
    Ok(report)
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
    let hash = crate::pay::mpp::transaction_hash(&proof)?;
    let answer = crate::rpc::call(client, url, "eth_getTransactionReceipt", json!([hash])).await?;
    let status = answer.get("status").and_then(Value::as_str);
    if status.is_none() {
        return Ok(Mined::No);
    }
    // The fee the buyer paid, in the charged asset, from the receipt.
    let signed = crate::pay::mpp::fee_bound(&proof)
        .ok()
        .and_then(|b| b.fee_token);
    let asset = charge.asset.as_str();
    let fee = crate::pay::mpp::receipt_fee(&answer, &proof.payer, signed.as_deref())
        .ok()
        .filter(|f| f.atomic == 0 || crate::pay::mpp::fee_in_asset(f.fee_token.as_deref(), asset))
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

/// A receipt for a payment found on chain after the fact: the price as recorded, and what it
/// cost (`charged_usd_micros`, with a fee) when that differs.
fn receipt(
    payment: &PendingPayment,
    transaction: Option<String>,
    charged: u64,
    reverted: bool,
    now: u64,
) -> NewReceipt {
    let charge = Charge::of_row(payment);
    let payer = authorization(payment)
        .map(|(from, _)| from.to_string())
        .or_else(|| Some(Proof::from_json(payment.proof_json.as_deref()?)?.payer))
        .unwrap_or_default();
    let price = charge
        .price()
        .unwrap_or(UsdMicros(payment.amount_usd_micros));
    let mut details = Map::new();
    details.insert("tool".into(), payment.tool.clone().into());
    if reverted {
        details.insert("reverted".into(), true.into());
        details.insert(
            "note".into(),
            "the charge reverted on chain; its transaction fee was still paid".into(),
        );
    }
    let receipt = receipt::receipt(
        &charge,
        &payment.payee,
        if reverted { UsdMicros(0) } else { price },
        Settlement {
            payer,
            transaction,
            details,
            approval: None,
            charged: UsdMicros(charged),
            reconciled: true,
        },
        now,
    );
    receipt::row(&receipt, now)
}
