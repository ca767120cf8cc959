//! One paid call: a 402 became offers; choose one under the rules, sign it (or reuse the
//! proof already signed for this very call), retry exactly once, and read the receipt.
//!
//! Never pays twice for one call: a second 402 after a signed payment is an error, not a new
//! payment; a paid retry whose outcome is unknown (timeout, connection lost) leaves its proof
//! pending, and calling again with the same tool, arguments and offer sends the same proof
//! (the same EIP-3009 nonce, which can settle at most once) instead of signing anew.

use std::sync::Arc;

use reqwest::header::HeaderMap;
use rmcp::RoleServer;
use rmcp::model::{CallToolResponse, CallToolResult};
use rmcp::service::RequestContext;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::approval::{Continuation, Gate};
use super::{Progress, Tollgate, success, tool_error};
use crate::approval::ApprovalRecord;
use crate::budget::credential::{Credential, RootKey};
use crate::budget::policy::Policy;
use crate::catalog::{HttpTool, UpstreamRequest};
use crate::ledger::{
    BudgetNode, Cap, Ledger, LedgerError, NewReceipt, NewReservation, ReservationId,
};
use crate::lightning::Lightning;
use crate::money::{UsdMicros, now_unix};
use crate::pay::assets::Asset;
use crate::pay::{
    self, Challenge, Judgement, PayError, Proof, Protocol, Quote, Receipt, Refusal, Rules, Wallets,
};
use crate::upstream::{Answer, Reply};
use crate::wallet::EvmWallet;
use crate::wallet::tempo::TempoWallet;

/// What paying needs: the owner's policy, the assets tollgate can value, the wallet, and what
/// is needed to tell who is calling (the root key, the process's own token).
pub struct Payments {
    pub policy: Policy,
    pub assets: Vec<Asset>,
    pub evm: Option<EvmWallet>,
    /// The Tempo wallet (MPP), if `[wallet.tempo]` is configured.
    pub tempo: Option<TempoWallet>,
    /// The root key credentials are verified under (absent until `tollgate init`).
    pub root: Option<RootKey>,
    /// `TOLLGATE_TOKEN` of the process: the caller when a request carries no token.
    pub env_token: Option<String>,
    /// The credential of the policy's default profile: the caller when there is no token at
    /// all (see [`Payments::use_default_profile`]).
    pub profile_token: Option<String>,
    /// How a person is asked to approve a payment above the threshold.
    pub approval: crate::approval::Settings,
    /// Budgets, reservations, pending payments, receipts, revocations.
    pub ledger: Arc<Ledger>,
    /// The payments this process's live calls own (leases renewed while they run).
    pub leases: Arc<crate::checkout::lease::Leases>,
    /// JSON-RPC nodes by chain id (`[rpc]`): where an unknown outcome is asked.
    pub rpc: std::collections::BTreeMap<u64, String>,
    /// The Lightning backend that pays L402 invoices, if one is configured.
    pub lightning: Option<Lightning>,
    /// Credentials whose budgets this process has recorded in the tree of budgets.
    registered: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Payments {
    pub fn new(
        policy: Policy,
        assets: Vec<Asset>,
        evm: Option<EvmWallet>,
        ledger: Arc<Ledger>,
    ) -> Payments {
        Payments {
            policy,
            assets,
            evm,
            tempo: None,
            root: None,
            env_token: None,
            profile_token: None,
            approval: crate::approval::Settings::default(),
            leases: crate::checkout::lease::Leases::new(ledger.clone()),
            rpc: Default::default(),
            ledger,
            lightning: None,
            registered: Default::default(),
        }
    }

    /// Makes the policy's default profile (if it names one) the caller of requests without a
    /// credential. Needs the root key.
    pub fn use_default_profile(&mut self) -> Result<(), String> {
        let Some(name) = self.policy.default_profile.clone() else {
            return Ok(());
        };
        let profile = self
            .policy
            .profile(&name)
            .ok_or_else(|| format!("the policy has no profile {name:?}"))?;
        let root = self.root.as_ref().ok_or_else(|| {
            format!(
                "the policy ({}) gives callers without a credential the profile {name:?}, which \
                 needs the root key: run `tollgate init`",
                self.policy.source
            )
        })?;
        let token = root
            .profile_credential(&name, &profile.caveats)
            .map_err(|e| e.to_string())?;
        self.profile_token = Some(token.to_base64url());
        Ok(())
    }

    /// Every cap a payment by `caller` must fit under: the policy's, and each budget caveat in
    /// the caller's chain (a child's spend counts against every ancestor's budget).
    pub(super) fn caps(&self, caller: Option<&Credential>) -> Vec<Cap> {
        let mut caps = Vec::new();
        if let Some(day) = self.policy.per_day {
            caps.push(Cap::rolling("policy:per_day", day.0, 86_400));
        }
        if let Some(total) = self.policy.total {
            caps.push(Cap::lifetime("policy:total", total.0));
        }
        for budget in caller.map(|c| c.budgets.as_slice()).unwrap_or_default() {
            caps.push(Cap::lifetime(budget.key.clone(), budget.limit.0));
        }
        caps
    }

    /// Who is calling: the request's `_meta["tollgate/token"]`, else `TOLLGATE_TOKEN`, else
    /// the policy's default profile, else nobody in particular (the policy alone applies). An
    /// invalid token is an error, never "nobody".
    pub(super) fn identify(
        &self,
        request_token: Option<&str>,
    ) -> Result<Option<Credential>, String> {
        let Some(token) = request_token
            .or(self.env_token.as_deref())
            .or(self.profile_token.as_deref())
        else {
            return Ok(None);
        };
        let Some(root) = &self.root else {
            return Err(
                "a credential was presented, but this tollgate has no root key \
                        (`tollgate init`), so it cannot be verified"
                    .to_owned(),
            );
        };
        let credential = Credential::verify(token, root, now_unix()).map_err(|e| e.to_string())?;
        match self.ledger.is_revoked(&credential.lineage) {
            Ok(false) => {
                self.register(&credential);
                Ok(Some(credential))
            }
            Ok(true) => Err("the token has been revoked".to_owned()),
            Err(e) => Err(format!(
                "the ledger cannot be read to check revocations: {e}"
            )),
        }
    }

    /// Records the credential's chain of budgets in the ledger's tree, once per process.
    pub(super) fn register(&self, credential: &Credential) {
        if credential.budgets.is_empty() {
            return;
        }
        let id = credential.id().to_owned();
        let mut seen = self
            .registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(&id) {
            return;
        }
        let chain: Vec<BudgetNode> = credential
            .budgets
            .iter()
            .map(|b| BudgetNode {
                key: b.key.clone(),
                label: b.label.clone(),
                limit_usd_micros: b.limit.0,
            })
            .collect();
        match self.ledger.register_budgets(&chain, now_unix()) {
            Ok(()) => {
                seen.insert(id);
            }
            // Only the tree view misses it; spending is checked against the keys themselves.
            Err(e) => tracing::warn!(error = %e, "could not record a credential's budgets"),
        }
    }

    pub(super) fn rules<'a>(
        &'a self,
        tool: &'a HttpTool,
        caller: Option<&'a Credential>,
    ) -> Rules<'a> {
        Rules {
            policy: &self.policy,
            assets: &self.assets,
            tool_max: tool.max_price.unwrap_or(UsdMicros(0)),
            tool: &tool.name,
            wallets: Wallets {
                evm: self.evm.is_some(),
                lightning: self.lightning.is_some(),
                lightning_network: self.lightning.as_ref().map(|l| l.network),
                tempo: self.tempo.is_some(),
            },
            restrictions: caller.map(|c| &c.restrictions),
        }
    }
}

/// Identifies one call for proof reuse: the tool, its arguments, and the exact offer.
fn fingerprint(tool: &str, arguments: &Map<String, Value>, quote: &Quote) -> String {
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
        crate::canonical::canonical_json(&quote.offer.raw)
            .to_string()
            .as_bytes(),
    );
    hex::encode(hash.finalize())
}

/// The message for a 402 that will not be paid: the cheapest price above a cap if that is the
/// reason, else every offer's reason.
pub(super) fn refusal_message(
    tool: &HttpTool,
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
            tool.name
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
        tool.name,
        reasons.join("; ")
    )
}

impl Tollgate {
    /// The 402 path of one call.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn pay(
        &self,
        tool: &HttpTool,
        arguments: &Map<String, Value>,
        request: UpstreamRequest,
        headers: &HeaderMap,
        body: &[u8],
        caller: Option<&Credential>,
        continuation: &Continuation,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let payments = &self.payments;
        let challenge = pay::read_challenge(headers, body);
        if tool.max_price.is_none() {
            return tool_error(tool.redact(&format!(
                "`{}` answered 402 Payment Required, but this tool has no max_price, so tollgate \
                 never pays for it; nothing was paid. {}",
                tool.name,
                describe(&challenge)
            )))
            .into();
        }
        if !payments.policy.tools.permits(&tool.name)
            || !payments.policy.hosts.permits(&tool.host())
        {
            return tool_error(format!(
                "the policy ({}) does not allow paying for `{}` (host {}); nothing was paid",
                payments.policy.source,
                tool.name,
                tool.host()
            ))
            .into();
        }
        let quote = match pay::choose(&challenge, &payments.rules(tool, caller)) {
            Ok(quote) => quote,
            Err(judged) => {
                return tool_error(tool.redact(&refusal_message(tool, &challenge, &judged))).into();
            }
        };
        // Above the threshold a person decides, before anything is signed (signatures expire
        // within seconds to a minute).
        let approval = match self
            .approval_gate(
                tool,
                arguments,
                &quote,
                caller,
                continuation,
                progress,
                context,
            )
            .await
        {
            Gate::Pay(approval) => approval,
            Gate::Stop(response) => return *response,
        };
        self.pay_quote(
            tool,
            arguments,
            request,
            quote,
            approval,
            caller,
            progress,
            context,
            Attempt::First,
        )
        .await
        .into()
    }

    /// Pays the chosen, approved offer: reserve, prove, record pending, send, commit.
    #[allow(clippy::too_many_arguments)]
    async fn pay_quote(
        &self,
        tool: &HttpTool,
        arguments: &Map<String, Value>,
        request: UpstreamRequest,
        quote: Quote,
        approval: ApprovalRecord,
        caller: Option<&Credential>,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
        attempt: Attempt,
    ) -> CallToolResult {
        // After approval and before the reservation: an MPP challenge too close to its expiry
        // (a signed Tempo transaction lives about 25 s) is not signed; a fresh one is fetched.
        if quote.offer.protocol == Protocol::Mpp && pay::mpp::stale(&quote.offer, now_unix()) {
            let why = format!(
                "the seller's MPP challenge expired ({}) before it could be signed",
                quote.offer.raw["expires"].as_str().unwrap_or("?")
            );
            return self
                .pay_fresh(
                    tool, arguments, request, &quote, approval, caller, progress, context, attempt,
                    &why,
                )
                .await;
        }
        let payments = &self.payments;
        let now = now_unix();
        let key = fingerprint(&tool.name, arguments, &quote);
        let ledger = payments.ledger.clone();
        let in_ledger = |what: &str, e: LedgerError| {
            tool_error(format!(
                "`{}`: the ledger could not {what} ({e}); nothing was paid",
                tool.name
            ))
        };
        // A retry of a call whose payment has an unknown outcome (its process died, or the
        // call ended without an answer) re-sends that proof: the claim makes this call its one
        // owner. A payment in flight in a live call is never taken: a parallel identical call
        // pays its own.
        let lease = payments.leases.lease(now);
        let claimed = match blocking(|| {
            // The same call made earlier by a process on this host that has died since: its
            // payment is unknown now, not in flight (its lease has not lapsed yet).
            crate::checkout::lease::Leases::disown_dead_owners_of(&*ledger, &key)?;
            ledger.claim_unknown(&key, &lease, now)
        }) {
            Ok(claimed) => claimed,
            Err(e) => return in_ledger("be read", e),
        };
        let resend = claimed.and_then(|p| {
            let mut held = payments.leases.hold(p.id);
            held.proof_recorded();
            match p.proof_json.as_deref().and_then(Proof::from_json) {
                // An L402 payment recorded before its invoice was paid has no proof to send
                // (the backend tells its outcome), and an expired proof cannot settle any
                // more: both are left unknown, for reconciliation.
                Some(proof) if proof.valid_before > now + 5 && !proof.headers.is_empty() => {
                    Some((held, proof, p))
                }
                _ => {
                    held.disown();
                    None
                }
            }
        });
        let (held, proof, resent) = match resend {
            Some((held, proof, p)) => (held, proof, Some(p)),
            None => {
                let new = NewReservation {
                    call_id: hex::encode(rand::random::<[u8; 8]>()),
                    fingerprint: key.clone(),
                    amount_usd_micros: super::l402::hold_usd(&quote, payments).0,
                    caps: payments.caps(caller),
                    tool: tool.name.clone(),
                    payee: quote.offer.payee.clone(),
                    protocol: quote.offer.protocol.to_string(),
                    meta_json: json!({"network": quote.offer.network, "asset": quote.offer.asset,
                                      "amount_atomic": quote.offer.amount_atomic.to_string(),
                                      "rate_usd_micros_per_unit": quote.asset.usd_micros_per_unit,
                                      "decimals": quote.asset.decimals,
                                      "arguments": arguments})
                    .to_string(),
                    lease: Some(lease),
                };
                let id = match blocking(|| ledger.reserve(new, now)) {
                    Ok(id) => id,
                    Err(LedgerError::Exceeded {
                        key,
                        limit_usd_micros,
                        spent_usd_micros,
                        reserved_usd_micros,
                        requested_usd_micros,
                        ..
                    }) => {
                        // A fee bound (Lightning routing, Tempo gas) is held with the price.
                        let with_fee = if requested_usd_micros > quote.usd.0 {
                            format!(
                                " (held with the most its fee may cost: {})",
                                UsdMicros(requested_usd_micros)
                            )
                        } else {
                            String::new()
                        };
                        return tool_error(format!(
                            "`{}` costs {}{with_fee}, which does not fit in {} (limit {}, spent \
                             {}, held for calls in flight {}); nothing was paid",
                            tool.name,
                            quote.usd,
                            describe_cap(&key),
                            UsdMicros(limit_usd_micros),
                            UsdMicros(spent_usd_micros),
                            UsdMicros(reserved_usd_micros)
                        ));
                    }
                    Err(e) => return in_ledger("reserve the payment", e),
                };
                // From here the reservation is this call's; dropping `held` before a proof is
                // recorded releases it.
                let mut held = payments.leases.hold(id);
                let proof = match self.prove(tool, &quote, id, now).await {
                    Ok(proof) => proof,
                    // Sent, outcome unknown: it stays pending (and reserved), never released.
                    Err(PayError::OutcomeUnknown(reason)) => {
                        held.proof_recorded();
                        held.disown();
                        return tool_error(format!("`{}`: {reason}", tool.name));
                    }
                    Err(e) => {
                        drop(held);
                        return tool_error(format!("`{}`: {e}; nothing was paid", tool.name));
                    }
                };
                // Recorded before the proof leaves the process (a crash after this line leaves
                // a pending payment that a retry re-sends, never a second one). L402 recorded
                // its payment as pending before paying the invoice.
                if quote.offer.protocol != Protocol::L402
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
        let reservation = held.id();
        let reused = resent.is_some();
        progress.send(format!(
            "{} {} {}: paying {} to {} ({})",
            if reused {
                "re-sending the signed payment"
            } else if quote.offer.protocol == Protocol::L402 {
                "paid the invoice; sending the token"
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
            tool = %tool.name, protocol = %quote.offer.protocol, network = %quote.offer.network,
            amount_atomic = %quote.offer.amount_atomic, usd = %quote.usd, payee = %quote.offer.payee,
            reused, "paying"
        );

        let mut paid_request = request.clone();
        for (name, value) in &proof.headers {
            paid_request.headers.insert(name.clone(), value.clone());
        }
        let reply = match self.send(tool, paid_request, progress, context).await {
            Ok(reply) => reply,
            Err(cancelled) => return cancelled,
        };
        match reply {
            Ok(Reply {
                answer: Answer::PaymentRequired { body },
                headers,
            }) => {
                if quote.offer.protocol == Protocol::L402 {
                    // The invoice is paid (the preimage proves it): the money is gone whatever
                    // the seller thinks of the token. Commit it, forget the token, pay no more.
                    let receipt = commit_receipt(
                        &*ledger,
                        reservation,
                        &quote,
                        &proof,
                        None,
                        Map::new(),
                        Some(approval),
                    );
                    held.settled();
                    self.forget_paid_token(tool, &proof);
                    return tool_error(tool.redact(&format!(
                        "`{}`: the seller answered 402 again to the L402 token tollgate had just \
                         paid {} for (receipt {}, payment hash {}). tollgate pays once per call, \
                         so nothing more was paid.",
                        tool.name,
                        quote.usd,
                        receipt["receipt_id"].as_str().unwrap_or(""),
                        receipt["payment_hash"].as_str().unwrap_or("")
                    )));
                }
                // The seller refused a proof it had seen before: it may have settled it already
                // (its nonce is used). Ask the chain now, and say what it says.
                if let Some(payment) = resent {
                    let reason = pay::read_challenge(&headers, &body).seller_error;
                    return self
                        .resent_refused(tool, &quote, held, &payment, reason)
                        .await;
                }
                // The seller refused the fresh signed payment. Never sign again. A fresh proof
                // that is refused will not settle: release it.
                if let Err(e) = blocking(|| ledger.release(reservation, now_unix())) {
                    tracing::error!(error = %e, "could not release a refused payment's reservation");
                }
                held.settled();
                // MPP `payment-expired`: the credential came too late and was not used; one
                // fresh challenge, signed anew, is the one exception to "never sign again".
                if quote.offer.protocol == Protocol::Mpp
                    && !reused
                    && pay::mpp::problem(&headers, &body).is_some_and(|p| p.is_expired())
                {
                    let why = "the seller found the signed MPP credential expired";
                    return self
                        .pay_fresh(
                            tool, arguments, request, &quote, approval, caller, progress, context,
                            attempt, why,
                        )
                        .await;
                }
                let again = pay::read_challenge(&headers, &body);
                let reason = again
                    .seller_error
                    .unwrap_or_else(|| "no reason given".to_owned());
                tool_error(tool.redact(&format!(
                    "`{}`: the seller answered 402 again after tollgate sent a signed payment of {} \
                     (the seller says: {reason}). tollgate signs one payment per call, so nothing \
                     more was signed; nothing was charged unless the seller settles that payment.",
                    tool.name, quote.usd
                )))
            }
            Ok(Reply { answer, headers }) => {
                let settled = settlement(&quote, &headers);
                let mut proof = proof;
                if let (Protocol::Mpp, Some(wallet)) = (quote.offer.protocol, &payments.tempo) {
                    pay::mpp::read_fee(&mut proof, &quote.offer, wallet).await;
                }
                let receipt = commit_receipt(
                    &*ledger,
                    reservation,
                    &quote,
                    &proof,
                    settled.transaction,
                    settled.details,
                    Some(approval),
                );
                held.settled();
                tracing::info!(
                    tool = %tool.name, receipt = %receipt["receipt_id"],
                    transaction = %receipt["transaction"], usd = %quote.usd, "paid"
                );
                let mut result = success(tool, answer, Some(receipt));
                if !settled.meta.is_empty() {
                    result.meta = Some(rmcp::model::MetaObject(settled.meta));
                }
                result
            }
            Err(e) if quote.offer.protocol == Protocol::L402 => {
                // The invoice is paid and the token kept: the next call sends it, pays nothing.
                let receipt = commit_receipt(
                    &*ledger,
                    reservation,
                    &quote,
                    &proof,
                    None,
                    Map::new(),
                    Some(approval),
                );
                held.settled();
                tool_error(tool.redact(&format!(
                    "`{}`: the request with the paid L402 token failed ({e}). The payment of {} \
                     went through (receipt {}); calling again sends the same token and pays \
                     nothing more.",
                    tool.name,
                    quote.usd,
                    receipt["receipt_id"].as_str().unwrap_or("")
                )))
            }
            Err(e) => {
                // Unknown outcome: the payment is given up (unknown), so a retry of the same
                // call claims it and re-sends the same proof.
                held.disown();
                tool_error(tool.redact(&format!(
                    "`{}`: the paid request failed ({e}); the payment of {} may or may not have \
                     settled. Calling again with the same arguments re-sends the same signed \
                     payment (it can settle at most once), never a new one.",
                    tool.name, quote.usd
                )))
            }
        }
    }
}

impl Tollgate {
    /// The seller refused a proof tollgate re-sent for a payment whose outcome was unknown:
    /// most often because it had settled it already (the nonce is used). The chain decides at
    /// once, and the model is told what it says: paid (with the transaction and a receipt)
    /// but not delivered, provably unpaid, or still undecided.
    async fn resent_refused(
        &self,
        tool: &HttpTool,
        quote: &Quote,
        held: crate::checkout::lease::Held,
        payment: &crate::ledger::PendingPayment,
        seller: Option<String>,
    ) -> CallToolResult {
        use crate::reconcile::{self, Verdict};
        let payments = &self.payments;
        let owner = payments.leases.owner().to_owned();
        let said = seller
            .map(|r| format!(" (the seller says: {r})"))
            .unwrap_or_default();
        let now = now_unix();
        let verdict = match reconcile::rpc_client() {
            Ok(client) => reconcile::verdict(&client, &payments.rpc, payment, now).await,
            Err(e) => Err(e),
        };
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(why) => {
                held.disown();
                return tool_error(tool.redact(&format!(
                    "`{}`: the seller refused the payment of {} that tollgate re-sent for this \
                     call{said}, and the chain could not be asked whether it settled ({why}). It \
                     stays pending and counts against your budget until `tollgate reconcile` \
                     settles it; it is never paid twice.",
                    tool.name, quote.usd
                )));
            }
        };
        let ledger = &payments.ledger;
        let written = blocking(|| reconcile::settle(&**ledger, &owner, payment, &verdict, now));
        match (&verdict, written) {
            (Verdict::Paid { transaction, .. }, Ok(receipt)) => {
                held.settled();
                let receipt_id = receipt.map(|r| r.receipt_id).unwrap_or_default();
                tracing::warn!(tool = %tool.name, receipt = %receipt_id,
                    transaction = ?transaction, "a re-sent payment had settled; receipt written");
                tool_error(tool.redact(&format!(
                    "`{}`: the payment of {} for this call was made (transaction {}, receipt \
                     {receipt_id}), but the seller never delivered its answer: it refused the \
                     same payment when tollgate re-sent it{said}. Nothing more was paid. \
                     Calling again pays anew for the answer.",
                    tool.name,
                    quote.usd,
                    transaction.as_deref().unwrap_or("not found in the node's logs"),
                )))
            }
            (Verdict::Unpaid, Ok(_)) => {
                held.settled();
                tool_error(tool.redact(&format!(
                    "`{}`: the seller refused the payment that tollgate re-sent for this \
                     call{said}; the chain shows it never settled and no longer can, so nothing \
                     was paid and its hold is released.",
                    tool.name
                )))
            }
            (Verdict::Open, Ok(_)) => {
                held.settled();
                tool_error(tool.redact(&format!(
                    "`{}`: the seller refused the payment of {} that tollgate re-sent for this \
                     call{said}, and the chain shows it unused and still valid. Nothing was \
                     charged unless the seller settles it before it expires; it stays pending \
                     (counted against your budget) until then, and is never paid twice.",
                    tool.name, quote.usd
                )))
            }
            (_, Err(e)) => {
                held.disown();
                tool_error(tool.redact(&format!(
                    "`{}`: the seller refused a re-sent payment of {}{said}, and the ledger could \
                     not record what the chain says ({e}); it stays pending until `tollgate \
                     reconcile` settles it.",
                    tool.name, quote.usd
                )))
            }
        }
    }
}

impl Tollgate {
    /// Proves payment of the chosen offer: signs it (x402, MPP) or pays it (L402). Called after
    /// the reservation, never before; the caller records the proof as pending before sending it.
    async fn prove(
        &self,
        tool: &HttpTool,
        quote: &Quote,
        reservation: ReservationId,
        now: u64,
    ) -> Result<Proof, PayError> {
        match quote.offer.protocol {
            Protocol::X402 { .. } => {
                let wallet =
                    self.payments.evm.as_ref().ok_or_else(|| {
                        PayError::Unpayable("no EVM wallet is configured".to_owned())
                    })?;
                pay::x402::prove(&quote.offer, wallet, now)
            }
            // Records the payment pending BEFORE paying the invoice (server::l402).
            Protocol::L402 => self.pay_invoice(tool, quote, reservation, now).await,
            Protocol::Mpp => {
                let wallet = self.payments.tempo.as_ref().ok_or_else(|| {
                    PayError::Unpayable("no Tempo wallet is configured ([wallet.tempo])".to_owned())
                })?;
                pay::mpp::prove(&quote.offer, wallet, now).await
            }
        }
    }
}

/// Which attempt at paying one call this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    First,
    /// On a fresh challenge, after the first went stale; never followed by another.
    Fresh,
}

impl Tollgate {
    /// Asks the seller for a fresh challenge (the request again, unpaid) and pays it under the
    /// approval already given, once per call: the fresh offer must be payable under the same
    /// rules and cost no more than the one approved. A second stale challenge ends the call.
    #[allow(clippy::too_many_arguments)]
    async fn pay_fresh(
        &self,
        tool: &HttpTool,
        arguments: &Map<String, Value>,
        request: UpstreamRequest,
        approved: &Quote,
        approval: ApprovalRecord,
        caller: Option<&Credential>,
        progress: &Progress,
        context: &RequestContext<RoleServer>,
        attempt: Attempt,
        why: &str,
    ) -> CallToolResult {
        if attempt == Attempt::Fresh {
            return tool_error(tool.redact(&format!(
                "`{}`: {why}, again on a fresh challenge; tollgate fetches one fresh challenge \
                 per call, so nothing more was signed and nothing was paid. The seller's clock \
                 or its challenge lifetime may be wrong.",
                tool.name
            )));
        }
        progress.send(format!("{why}; asking the seller for a fresh challenge"));
        tracing::info!(tool = %tool.name, %why, "fetching a fresh MPP challenge");
        let reply = match self.send(tool, request.clone(), progress, context).await {
            Ok(reply) => reply,
            Err(cancelled) => return cancelled,
        };
        let (headers, body) = match reply {
            Ok(Reply {
                answer: Answer::PaymentRequired { body },
                headers,
            }) => (headers, body),
            Ok(Reply { answer, .. }) => return success(tool, answer, None),
            Err(e) => {
                return tool_error(tool.redact(&format!(
                    "`{}`: {why}, and asking for a fresh challenge failed ({e}); nothing was paid",
                    tool.name
                )));
            }
        };
        let challenge = pay::read_challenge(&headers, &body);
        let quote = match pay::choose(&challenge, &self.payments.rules(tool, caller)) {
            Ok(quote) => quote,
            Err(judged) => {
                return tool_error(tool.redact(&refusal_message(tool, &challenge, &judged)));
            }
        };
        // The approval (by a person or by the policy's thresholds) was for the first price.
        if quote.usd > approved.usd {
            return tool_error(tool.redact(&format!(
                "`{}`: the fresh challenge asks {}, more than the {} approved; nothing was paid. \
                 Call again to decide on the new price.",
                tool.name, quote.usd, approved.usd
            )));
        }
        // A person approved paying this payee, in this asset, on this network, by this
        // protocol: a fresh challenge that changes any of them is a new decision.
        if approval.approved_by != "policy" {
            let facts = |quote| super::approval::offer_facts(tool, arguments, quote, String::new());
            if let Err(mismatch) = facts(approved).covers(&facts(&quote)) {
                return tool_error(tool.redact(&format!(
                    "`{}`: the fresh challenge is not the offer as a person approved it: \
                     {mismatch}; nothing was paid. Call again to decide on the new offer.",
                    tool.name
                )));
            }
        }
        Box::pin(self.pay_quote(
            tool,
            arguments,
            request,
            quote,
            approval,
            caller,
            progress,
            context,
            Attempt::Fresh,
        ))
        .await
    }
}

/// What the paid answer says about the payment, per protocol.
#[derive(Default)]
struct Settled {
    /// The settlement transaction (x402) or reference (MPP).
    transaction: Option<String>,
    /// Protocol-specific receipt fields.
    details: Map<String, Value>,
    /// `_meta` of the tool result (x402's decoded payment response).
    meta: Map<String, Value>,
}

/// Reads the seller's settlement out of the paid answer's headers.
fn settlement(quote: &Quote, headers: &HeaderMap) -> Settled {
    let mut settled = Settled::default();
    match quote.offer.protocol {
        Protocol::X402 { .. } => {
            let decoded = match pay::x402::settlement(headers) {
                Some(Ok(value)) => Some(value),
                Some(Err(reason)) => {
                    tracing::warn!(%reason, "unreadable payment response header");
                    None
                }
                None => None,
            };
            settled.transaction = decoded
                .as_ref()
                .and_then(|d| d.get("transaction"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && t.len() <= 200)
                .map(str::to_owned);
            if let Some(decoded) = decoded {
                settled.meta.insert("x402/payment-response".into(), decoded);
            }
        }
        // L402's facts (payment hash, fee, backend) come with the proof, not the answer.
        Protocol::L402 => {}
        Protocol::Mpp => {
            let receipt = match pay::mpp::receipt(headers) {
                Some(Ok(value)) => Some(value),
                Some(Err(reason)) => {
                    tracing::warn!(%reason, "unreadable Payment-Receipt header");
                    None
                }
                None => None,
            };
            settled.transaction = receipt.as_ref().and_then(pay::mpp::reference);
            settled.details = pay::mpp::receipt_details(&quote.offer, receipt.as_ref());
            if let Some(receipt) = receipt {
                settled.meta.insert("mpp/payment-receipt".into(), receipt);
            }
        }
    }
    settled
}

/// Commits a paid reservation with its receipt (the actual cost: the amount plus any fee the
/// proof reports) and returns the receipt as shown to the model. A failure to commit leaves
/// the reservation held (never under-counted) and is logged for the owner.
#[allow(clippy::too_many_arguments)]
fn commit_receipt(
    ledger: &Ledger,
    reservation: ReservationId,
    quote: &Quote,
    proof: &Proof,
    transaction: Option<String>,
    details: Map<String, Value>,
    approval: Option<ApprovalRecord>,
) -> Value {
    let mut receipt = Receipt::new(quote, proof, transaction, now_unix());
    receipt.approval = approval;
    receipt.details = proof.details.clone();
    receipt.details.extend(details);
    let actual = super::l402::actual_usd(quote, proof);
    if actual != quote.usd {
        receipt
            .details
            .insert("charged_usd_micros".into(), actual.0.into());
    }
    let receipt_json = serde_json::to_value(&receipt).unwrap_or(Value::Null);
    let row = NewReceipt {
        receipt_id: receipt.receipt_id.clone(),
        at: now_unix(),
        json: receipt_json.to_string(),
    };
    if let Err(e) = blocking(|| ledger.commit(reservation, actual.0, row, now_unix())) {
        tracing::error!(error = %e, receipt = %receipt.receipt_id, "paid, but the receipt could not be committed");
    }
    receipt_json
}

/// Runs a (short, blocking) ledger operation without stalling the async workers.
pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
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
pub(super) fn describe(challenge: &Challenge) -> String {
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
    use super::*;

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
