//! Payments: what a `402 Payment Required` answer asks for.
//!
//! For now tollgate pays nothing: [`describe_challenge`] lists what the seller asked for so the
//! model (and the owner) can see it. The protocol modules (x402, L402, MPP) turn the same
//! response into offers.

use reqwest::header::HeaderMap;
use serde_json::Value;

/// Largest header value looked at when describing a challenge.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A human-readable list of what a 402 response asks for: one line per payment option found
/// in the x402 `PAYMENT-REQUIRED` header, an x402 v1 JSON body, or `WWW-Authenticate`.
pub fn describe_challenge(headers: &HeaderMap, body: &[u8]) -> Vec<String> {
    let mut asked = Vec::new();
    if let Some(value) = headers
        .get("payment-required")
        .and_then(|v| v.to_str().ok())
        && value.len() <= MAX_HEADER_BYTES
    {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        match decoded {
            Some(json) => describe_accepts("x402 v2", &json, &mut asked),
            None => {
                asked.push("x402 v2 (PAYMENT-REQUIRED header that is not valid base64 JSON)".into())
            }
        }
    }
    if let Ok(json) = serde_json::from_slice::<Value>(body)
        && json.get("accepts").is_some()
    {
        describe_accepts("x402 v1", &json, &mut asked);
    }
    for value in headers.get_all("www-authenticate") {
        if let Ok(text) = value.to_str() {
            let scheme = text.split_whitespace().next().unwrap_or("");
            let scheme: String = scheme
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(32)
                .collect();
            asked.push(format!("{scheme} challenge (WWW-Authenticate)"));
        }
    }
    asked
}

fn describe_accepts(protocol: &str, json: &Value, out: &mut Vec<String>) {
    let Some(accepts) = json.get("accepts").and_then(Value::as_array) else {
        out.push(format!("{protocol} (no accepts list)"));
        return;
    };
    for offer in accepts.iter().take(16) {
        let field = |k: &str| {
            offer
                .get(k)
                .and_then(Value::as_str)
                .map(|s| s.chars().take(80).collect::<String>())
        };
        let amount = field("amount")
            .or_else(|| field("maxAmountRequired"))
            .unwrap_or_else(|| "?".into());
        out.push(format!(
            "{protocol}: {amount} atomic units of asset {} on {} to {}",
            field("asset").unwrap_or_else(|| "?".into()),
            field("network").unwrap_or_else(|| "?".into()),
            field("payTo").unwrap_or_else(|| "?".into()),
        ));
    }
}
