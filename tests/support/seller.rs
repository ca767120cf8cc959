//! An in-process x402 v2 seller's answers, for tests of tollgate's own decisions (the real
//! sellers are in `tests/peers/x402`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::upstream::{Reply, Seen};

pub const USDC_BASE: &str = "0x833589fCD6eDb6E08f4c3C32D4f71b54bdA02913";
pub const PAYEE: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
/// Anvil dev key #9: the wallet tests pay from.
pub const BUYER_KEY: &str = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";

/// One `exact` offer of `amount` atomic USDC on Base.
pub fn requirements(amount: &str) -> Value {
    json!({"scheme": "exact", "network": "eip155:8453", "amount": amount, "asset": USDC_BASE,
           "payTo": PAYEE, "maxTimeoutSeconds": 60, "extra": {"name": "USD Coin", "version": "2"}})
}

/// A 402 carrying `accepts` in `PAYMENT-REQUIRED`, with the seller's `error`.
pub fn payment_required(accepts: Value, error: &str) -> Reply {
    let header = json!({"x402Version": 2, "error": error, "resource": {"url": "http://seller/r"},
                        "accepts": accepts});
    Reply::json(402, json!({})).with_header("PAYMENT-REQUIRED", &B64.encode(header.to_string()))
}

/// A paid answer with a settlement response.
pub fn settled(body: Value, payer: &Value) -> Reply {
    let response = json!({"success": true, "transaction": "0xabc123", "network": "eip155:8453",
                          "payer": payer});
    Reply::json(200, body).with_header("PAYMENT-RESPONSE", &B64.encode(response.to_string()))
}

/// The decoded `PAYMENT-SIGNATURE` of a request, if it carries one.
pub fn signature_of(seen: &Seen) -> Option<Value> {
    let header = seen.header("PAYMENT-SIGNATURE")?;
    serde_json::from_slice(&B64.decode(header).ok()?).ok()
}

/// A seller asking 0.01 USDC that settles every signed request.
pub fn always_settles(seen: &Seen) -> Reply {
    match signature_of(seen) {
        None => payment_required(json!([requirements("10000")]), "payment required"),
        Some(sig) => settled(
            json!({"paid": true}),
            &sig["payload"]["authorization"]["from"],
        ),
    }
}
