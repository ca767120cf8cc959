//! The sandbox paid API: a few priced endpoints that speak x402 v2 on the wire, as
//! `@x402/express` does, settled on the sandbox chain ([`super::chain`]).
//!
//! Owns: the endpoint table (paths, prices, canned answers), the 402 with its base64
//! `PAYMENT-REQUIRED` header (`x402Version: 2`, `accepts[]` with scheme `exact`, network
//! `eip155:<id>`, the token's address and EIP-712 domain in `extra`), reading
//! `PAYMENT-SIGNATURE`, settling it as a facilitator would (the token's
//! `transferWithAuthorization`, executed by the contract), and `PAYMENT-RESPONSE`
//! (`{success, transaction, network, payer}`). A refused payment answers a new 402 with
//! `error` set and no `PAYMENT-RESPONSE`.
//!
//! Does not: know tollgate. It is a seller like any other; tollgate pays it through the same
//! code that pays every x402 seller.

use std::sync::Arc;

use alloy::primitives::{Address, B256, Bytes as EvmBytes, U256};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::chain::{Chain, transferWithAuthorizationCall};

/// Longest `PAYMENT-SIGNATURE` header read.
const MAX_PROOF_BYTES: usize = 16 * 1024;
/// Longest request body read (the endpoints take none).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Where the sandbox seller is paid (no key: it only receives).
pub const SELLER: Address = Address::repeat_byte(0x5e);

/// One endpoint of the sandbox API.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// The MCP tool name tollgate serves it as.
    pub tool: &'static str,
    /// The path on the sandbox API.
    pub path: &'static str,
    /// The tool's title.
    pub title: &'static str,
    /// The tool's description (says it costs SANDBOX money).
    pub description: &'static str,
    /// Price in atomic units of the sandbox USDC (6 decimals: 1000 = 0.001 USD); 0 = free.
    pub price_atomic: u128,
    /// The tool's `max_price` in the generated definition.
    pub max_price: Option<&'static str>,
    /// The one string argument the endpoint takes, if any (`city`, `topic`).
    pub argument: Option<&'static str>,
}

/// The sandbox API's endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        tool: "sandbox_status",
        path: "/status",
        title: "Sandbox status",
        description: "Whether the sandbox API is up (free: no payment).",
        price_atomic: 0,
        max_price: None,
        argument: None,
    },
    Endpoint {
        tool: "sandbox_quote",
        path: "/quote",
        title: "Quote of the day (sandbox)",
        description: "A quote of the day. Costs 0.001 USD of SANDBOX money (test USDC on the demo's \
                      in-process chain; not real money).",
        price_atomic: 1_000,
        max_price: Some("0.01 USD"),
        argument: None,
    },
    Endpoint {
        tool: "sandbox_forecast",
        path: "/forecast",
        title: "Weather forecast (sandbox)",
        description: "Tomorrow's made-up forecast for a city. Costs 0.002 USD of SANDBOX money \
                      (test USDC on the demo's in-process chain; not real money).",
        price_atomic: 2_000,
        max_price: Some("0.01 USD"),
        argument: Some("city"),
    },
    Endpoint {
        tool: "sandbox_summary",
        path: "/summary",
        title: "Research summary (sandbox)",
        description: "A longer research summary on a topic. Costs 0.05 USD of SANDBOX money (test \
                      USDC on the demo's in-process chain; not real money); above the demo \
                      policy's approval threshold.",
        price_atomic: 50_000,
        max_price: Some("0.10 USD"),
        argument: Some("topic"),
    },
    Endpoint {
        tool: "sandbox_report",
        path: "/report",
        title: "Market report (sandbox)",
        description: "A premium market report. Costs 0.25 USD of SANDBOX money (test USDC on the \
                      demo's in-process chain; not real money); above the demo policy's per-call \
                      cap.",
        price_atomic: 250_000,
        max_price: Some("0.50 USD"),
        argument: None,
    },
];

/// Serves the sandbox API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, chain: Arc<Chain>) {
    let origin = match listener.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(e) => {
            tracing::error!(error = %e, "sandbox API: the listener has no address");
            return;
        }
    };
    let shared = Arc::new((chain, origin));
    crate::loopback::serve(listener, "sandbox API", move |request| {
        let shared = shared.clone();
        async move {
            let (chain, origin) = &*shared;
            handle(request, chain, origin).await
        }
    })
    .await;
}

async fn handle(request: Request<Incoming>, chain: &Chain, origin: &str) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let Some(endpoint) = ENDPOINTS.iter().find(|e| e.path == path) else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "no such endpoint"}));
    };
    let proof = request.headers().get("payment-signature").cloned();
    // The endpoints take no body; read (bounded) and drop whatever came.
    if Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .is_err()
    {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"error": "body too large"}),
        );
    }
    let answer = answer(endpoint, &query);
    if endpoint.price_atomic == 0 {
        return json_response(StatusCode::OK, &answer);
    }
    let requirements = requirements(endpoint, chain);
    let resource = json!({
        "url": format!("{origin}{}", endpoint.path),
        "description": endpoint.description,
        "mimeType": "application/json",
    });
    let Some(proof) = proof else {
        return payment_required(&requirements, &resource, None);
    };
    match settle(&proof, &requirements, chain) {
        Ok(settled) => {
            let mut response = json_response(StatusCode::OK, &answer);
            if let Ok(value) = HeaderValue::from_str(&B64.encode(settled.to_string())) {
                response.headers_mut().insert("payment-response", value);
            }
            response
        }
        Err(reason) => payment_required(&requirements, &resource, Some(&reason)),
    }
}

/// The offer for `endpoint`, as `@x402/express` writes it for a custom token.
fn requirements(endpoint: &Endpoint, chain: &Chain) -> Value {
    json!({
        "scheme": "exact",
        "network": format!("eip155:{}", chain.chain_id()),
        "amount": endpoint.price_atomic.to_string(),
        "asset": chain.token().to_checksum(None),
        "payTo": SELLER.to_checksum(None),
        "maxTimeoutSeconds": 60,
        "extra": {"name": "USD Coin", "version": "2"},
    })
}

fn payment_required(
    requirements: &Value,
    resource: &Value,
    error: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut body = json!({
        "x402Version": 2,
        "resource": resource,
        "accepts": [requirements],
    });
    if let Some(error) = error {
        body["error"] = Value::String(error.to_owned());
    }
    let mut response = json_response(StatusCode::PAYMENT_REQUIRED, &json!({}));
    if let Ok(value) = HeaderValue::from_str(&B64.encode(body.to_string())) {
        response.headers_mut().insert("payment-required", value);
    }
    response
}

/// Checks a `PAYMENT-SIGNATURE` against the offer and settles it on chain; the
/// `PAYMENT-RESPONSE` content, or why it was refused (x402's error codes, with detail).
fn settle(proof: &HeaderValue, requirements: &Value, chain: &Chain) -> Result<Value, String> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err("invalid_payload: PAYMENT-SIGNATURE is too long".to_owned());
    }
    let payload: Value = proof
        .to_str()
        .ok()
        .and_then(|text| B64.decode(text.trim()).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("invalid_payload: PAYMENT-SIGNATURE is not base64 JSON")?;
    if payload["x402Version"].as_u64() != Some(2) {
        return Err("invalid_x402_version".to_owned());
    }
    let accepted = &payload["accepted"];
    for key in ["scheme", "network", "amount"] {
        if accepted[key] != requirements[key] {
            return Err(format!(
                "invalid_payment_requirements: accepted.{key} does not match the offer"
            ));
        }
    }
    for key in ["asset", "payTo"] {
        let same = accepted[key]
            .as_str()
            .zip(requirements[key].as_str())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
        if !same {
            return Err(format!(
                "invalid_payment_requirements: accepted.{key} does not match the offer"
            ));
        }
    }
    let auth = &payload["payload"]["authorization"];
    let address = |key: &str| -> Result<Address, String> {
        auth[key]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("invalid_exact_evm_payload: authorization.{key}"))
    };
    let number = |key: &str| -> Result<U256, String> {
        auth[key]
            .as_str()
            .and_then(|v| U256::from_str_radix(v, 10).ok())
            .ok_or_else(|| format!("invalid_exact_evm_payload: authorization.{key}"))
    };
    let (from, to) = (address("from")?, address("to")?);
    let value = number("value")?;
    if to != SELLER {
        return Err("invalid_exact_evm_payload_recipient_mismatch".to_owned());
    }
    let amount = requirements["amount"]
        .as_str()
        .and_then(|a| U256::from_str_radix(a, 10).ok())
        .unwrap_or(U256::MAX);
    if value != amount {
        return Err("invalid_exact_evm_payload_authorization_value".to_owned());
    }
    let nonce: B256 = auth["nonce"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .ok_or("invalid_exact_evm_payload: authorization.nonce")?;
    let signature = payload["payload"]["signature"]
        .as_str()
        .and_then(|s| hex::decode(s.trim_start_matches("0x")).ok())
        .ok_or("invalid_exact_evm_payload_signature: not hex")?;
    let call = transferWithAuthorizationCall {
        from,
        to,
        value,
        validAfter: number("validAfter")?,
        validBefore: number("validBefore")?,
        nonce,
        signature: EvmBytes::from(signature),
    };
    let executed = chain
        .transfer_with_authorization(call)
        .map_err(|e| format!("unexpected_settle_error: {e}"))?;
    if !executed.success {
        return Err(format!(
            "invalid_transaction_state: the token refused the authorization ({})",
            super::chain::revert_reason(&executed.output)
        ));
    }
    Ok(json!({
        "success": true,
        "transaction": format!("{:#x}", executed.hash),
        "network": requirements["network"],
        "payer": from.to_checksum(None),
    }))
}

/// The canned answer of an endpoint.
fn answer(endpoint: &Endpoint, query: &str) -> Value {
    let argument = endpoint.argument.and_then(|name| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.chars().take(100).collect::<String>())
    });
    let subject = argument.unwrap_or_else(|| "anything".to_owned());
    match endpoint.tool {
        "sandbox_status" => json!({"status": "up", "sandbox": true}),
        "sandbox_quote" => json!({
            "quote": "Price is what you pay. Value is what you get.",
            "author": "Warren Buffett",
            "sandbox": true,
        }),
        "sandbox_forecast" => json!({
            "city": subject,
            "tomorrow": {"high_c": 21, "low_c": 12, "sky": "sunny spells"},
            "sandbox": true,
        }),
        "sandbox_summary" => json!({
            "topic": subject,
            "summary": format!(
                "A made-up summary about {subject}: three findings, two open questions and one \
                 recommendation, as a paid research API would return."
            ),
            "sandbox": true,
        }),
        _ => json!({"report": "A made-up premium report.", "sandbox": true}),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
