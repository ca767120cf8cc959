//! The payment protocols' MCP bindings, translated to and from the HTTP wire the rails speak.
//!
//! Both protocols carry the very same messages over MCP as over HTTP, only placed differently:
//!
//! | | HTTP | MCP |
//! |---|---|---|
//! | x402 v2 challenge | `PAYMENT-REQUIRED: base64(PaymentRequired)` | an `isError` result whose `structuredContent` (or `content[0].text`) is the `PaymentRequired`; legacy: JSON-RPC error 402 with it in `data` |
//! | x402 v1 challenge | the 402 body | the same objects with `x402Version: 1` |
//! | x402 proof | `PAYMENT-SIGNATURE` / `X-PAYMENT: base64(PaymentPayload)` | `params._meta["x402/payment"]` |
//! | x402 settlement | `PAYMENT-RESPONSE: base64(SettlementResponse)` | `result._meta["x402/payment-response"]` |
//! | MPP challenge | `WWW-Authenticate: Payment id=…, request=base64url(JCS(request))` | JSON-RPC error -32042 with `data.challenges` (`request` an object), or a result with `_meta["org.paymentauth/payment-required"]` |
//! | MPP credential | `Authorization: Payment base64url(credential)` | `params._meta["org.paymentauth/credential"]` (its `challenge.request` an object) |
//! | MPP refusal | 402 with a fresh challenge and a problem | JSON-RPC error -32043 (same `data`) |
//! | MPP receipt | `Payment-Receipt: base64url(receipt)` | `result._meta["org.paymentauth/receipt"]` |
//!
//! So a paid MCP server's answer is translated into the challenge (headers and body) the rails
//! already read and judge, and a proof's headers into the `_meta` the server reads: no rail
//! knows MCP, and every check a rail makes (unknown versions, bait prices, malformed offers)
//! holds over MCP as over HTTP. MCP's own -32042 (URL elicitation required, `data.elicitations`)
//! is told apart from MPP's by the shape of `data`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// `_meta` key of an x402 payment payload (request) and settlement response (result).
pub const X402_PAYMENT: &str = "x402/payment";
pub const X402_PAYMENT_RESPONSE: &str = "x402/payment-response";
/// `_meta` keys of the Payment auth scheme's MCP transport.
pub const MPP_CREDENTIAL: &str = "org.paymentauth/credential";
pub const MPP_RECEIPT: &str = "org.paymentauth/receipt";
pub const MPP_PAYMENT_REQUIRED: &str = "org.paymentauth/payment-required";
/// JSON-RPC error codes: MPP's payment required (also MCP's URL elicitation required),
/// MPP's refused credential, and x402's legacy payment required.
pub const PAYMENT_REQUIRED_CODE: i32 = -32042;
pub const VERIFICATION_FAILED_CODE: i32 = -32043;
pub const X402_LEGACY_CODE: i32 = 402;

/// What a paid MCP server's answer is, read through the payment bindings.
#[derive(Debug)]
pub enum Read {
    /// It asks for payment (again): the challenge as the rails read it.
    PaymentRequired { headers: HeaderMap, body: Vec<u8> },
    /// An answer (an error result of the tool's own included), with the settlement headers
    /// its `_meta` carried.
    Answered { headers: HeaderMap },
}

/// A tool result, read: a payment challenge, or an answer with its settlement.
pub fn read_result(result: &Value) -> Read {
    let meta = result.get("_meta").and_then(Value::as_object);
    // MPP's tool-result form of a challenge.
    if let Some(data) = meta.and_then(|m| m.get(MPP_PAYMENT_REQUIRED))
        && data.get("challenges").is_some()
    {
        return mpp_challenge(data);
    }
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        if let Some(required) = x402_required_in_result(result) {
            return x402_challenge(&required);
        }
        // mppx on the official SDK's McpServer: a payment error thrown in a tool becomes an
        // error result whose text keeps the JSON-RPC code (a refused credential, -32043).
        if let Some(text) = first_text(result)
            && let Some(kind) = MPP_ERROR_TEXTS
                .iter()
                .find_map(|(prefix, kind)| text.starts_with(prefix).then_some(*kind))
        {
            let problem = serde_json::json!({
                "type": format!("https://paymentauth.org/problems/{kind}"),
                "title": "Payment refused by the MCP server",
                "detail": excerpt(text),
            });
            return mpp_challenge(&serde_json::json!({"challenges": [], "problem": problem}));
        }
    }
    let mut headers = HeaderMap::new();
    if let Some(meta) = meta {
        if let Some(settled) = meta.get(X402_PAYMENT_RESPONSE) {
            insert(
                &mut headers,
                "payment-response",
                &STANDARD.encode(settled.to_string()),
            );
        }
        if let Some(receipt) = meta.get(MPP_RECEIPT) {
            insert(
                &mut headers,
                "payment-receipt",
                &URL_SAFE_NO_PAD.encode(receipt.to_string()),
            );
        }
    }
    Read::Answered { headers }
}

/// A JSON-RPC error, read: a payment challenge or refusal (`Ok`), else what it says, in words
/// for the model (`Err`).
pub fn read_error(code: i32, message: &str, data: Option<&Value>) -> Result<Read, String> {
    let message = excerpt(message);
    match (code, data) {
        (PAYMENT_REQUIRED_CODE | VERIFICATION_FAILED_CODE, Some(data))
            if data.get("challenges").is_some() =>
        {
            Ok(mpp_challenge(data))
        }
        (PAYMENT_REQUIRED_CODE, Some(data)) if data.get("elicitations").is_some() => Err(format!(
            "the MCP server asks a person to complete a step in a browser first (URL \
             elicitation, error -32042: {message}){}; tollgate does not pass an upstream's \
             elicitation on, so nothing was paid",
            elicitation_urls(data)
        )),
        (X402_LEGACY_CODE | PAYMENT_REQUIRED_CODE, Some(data)) if is_x402_required(data) => {
            Ok(x402_challenge(data))
        }
        (X402_LEGACY_CODE | PAYMENT_REQUIRED_CODE | VERIFICATION_FAILED_CODE, _) => Err(format!(
            "the MCP server answered error {code} ({message}) without a payment challenge \
             tollgate can read"
        )),
        _ => Err(format!("the MCP server answered error {code}: {message}")),
    }
}

/// The `_meta` of a paid request: the proof (or nothing) from the headers a rail made for the
/// HTTP wire. Headers that are not a proof (what a rail adds to every request) are not sent.
pub fn request_meta(headers: &[(HeaderName, HeaderValue)]) -> Result<Map<String, Value>, String> {
    let mut meta = Map::new();
    for (name, value) in headers {
        let text = value
            .to_str()
            .map_err(|_| format!("the {name} header is not text"))?;
        match name.as_str() {
            "payment-signature" | "x-payment" => {
                let payload = decode_json(text, &[&STANDARD, &URL_SAFE])
                    .map_err(|e| format!("the x402 payment payload: {e}"))?;
                meta.insert(X402_PAYMENT.into(), payload);
            }
            _ => {
                let Some(encoded) = text
                    .strip_prefix("Payment ")
                    .or_else(|| text.strip_prefix("payment "))
                else {
                    continue;
                };
                let mut credential = decode_json(encoded.trim(), &[&URL_SAFE_NO_PAD, &URL_SAFE])
                    .map_err(|e| format!("the MPP credential: {e}"))?;
                // Over MCP the echoed challenge carries its request as an object.
                if let Some(request) = credential
                    .get_mut("challenge")
                    .and_then(|c| c.get_mut("request"))
                    && let Some(encoded) = request.as_str()
                {
                    *request = decode_json(encoded, &[&URL_SAFE_NO_PAD, &URL_SAFE])
                        .map_err(|e| format!("the MPP challenge's request: {e}"))?;
                }
                meta.insert(MPP_CREDENTIAL.into(), credential);
            }
        }
    }
    Ok(meta)
}

/// The `PaymentRequired` an x402 `isError` result carries, where the spec and the SDKs put
/// it: `structuredContent` itself or its `x402/error.data`, else the first text block parsed
/// the same two ways.
fn x402_required_in_result(result: &Value) -> Option<Value> {
    let unwrap = |value: &Value| -> Option<Value> {
        if is_x402_required(value) {
            return Some(value.clone());
        }
        let data = value.get("x402/error")?.get("data")?;
        is_x402_required(data).then(|| data.clone())
    };
    if let Some(required) = result.get("structuredContent").and_then(unwrap) {
        return Some(required);
    }
    let text = first_text(result)?;
    if text.len() > MAX_CHALLENGE_BYTES {
        return None;
    }
    unwrap(&serde_json::from_str(text).ok()?)
}

/// The first text block of a result.
fn first_text(result: &Value) -> Option<&str> {
    result
        .get("content")?
        .as_array()?
        .iter()
        .find_map(|block| block.get("text").and_then(Value::as_str))
}

/// Error-result texts that are MPP payment errors (the official TypeScript SDK's McpServer
/// turns every error but -32042 thrown in a tool into such a result), and the problem each is.
const MPP_ERROR_TEXTS: &[(&str, &str)] = &[
    ("MCP error -32043:", "verification-failed"),
    ("MCP error -32042:", "payment-required"),
];

fn is_x402_required(value: &Value) -> bool {
    value.get("x402Version").is_some() && value.get("accepts").is_some()
}

/// An x402 challenge as the HTTP wire carries it: version 1 in the body, any other version in
/// the `PAYMENT-REQUIRED` header (where the rail refuses versions it does not know).
fn x402_challenge(required: &Value) -> Read {
    let mut headers = HeaderMap::new();
    let body = if required.get("x402Version").and_then(Value::as_u64) == Some(1) {
        required.to_string().into_bytes()
    } else {
        insert(
            &mut headers,
            "payment-required",
            &STANDARD.encode(required.to_string()),
        );
        Vec::new()
    };
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Read::PaymentRequired { headers, body }
}

/// MPP challenges (`data.challenges`) as `WWW-Authenticate: Payment …` headers, and the
/// problem (a refusal's reason) as the problem+json body.
fn mpp_challenge(data: &Value) -> Read {
    let mut headers = HeaderMap::new();
    let challenges = data
        .get("challenges")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for challenge in challenges.iter().take(MAX_CHALLENGES) {
        if let Some(value) = www_authenticate(challenge) {
            headers.append(reqwest::header::WWW_AUTHENTICATE, value);
        }
    }
    let body = match data.get("problem") {
        Some(problem @ Value::Object(_)) => {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            problem.to_string().into_bytes()
        }
        _ => Vec::new(),
    };
    Read::PaymentRequired { headers, body }
}

/// One MPP challenge object as a `WWW-Authenticate` value; `None` when it is not an object
/// (the rail then finds no offer and says so).
fn www_authenticate(challenge: &Value) -> Option<HeaderValue> {
    let object = challenge.as_object()?;
    let mut params = Vec::new();
    for key in [
        "id",
        "realm",
        "method",
        "intent",
        "expires",
        "description",
        "digest",
        "header",
    ] {
        if let Some(value) = object.get(key).and_then(Value::as_str) {
            params.push(format!("{key}=\"{}\"", quote(value)));
        }
    }
    match object.get("request") {
        Some(Value::String(encoded)) => params.push(format!("request=\"{}\"", quote(encoded))),
        Some(request) => params.push(format!(
            "request=\"{}\"",
            URL_SAFE_NO_PAD.encode(crate::canonical::canonical_json(request).to_string())
        )),
        None => {}
    }
    match (object.get("opaque"), object.get("meta")) {
        (Some(Value::String(opaque)), _) => params.push(format!("opaque=\"{}\"", quote(opaque))),
        (_, Some(meta @ Value::Object(_))) => params.push(format!(
            "opaque=\"{}\"",
            URL_SAFE_NO_PAD.encode(crate::canonical::canonical_json(meta).to_string())
        )),
        _ => {}
    }
    HeaderValue::from_bytes(format!("Payment {}", params.join(", ")).as_bytes()).ok()
}

/// A value as an auth-param quoted string's content.
fn quote(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn decode_json(text: &str, engines: &[&base64::engine::GeneralPurpose]) -> Result<Value, String> {
    let bytes = engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .ok_or("not valid base64")?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not JSON after base64: {e}"))
}

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// The pages a URL elicitation names (at most three, `http(s)` only), for the person the
/// model tells: ": open URL (its message)".
fn elicitation_urls(data: &Value) -> String {
    let pages: Vec<String> = data["elicitations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let url = e["url"].as_str()?;
            let scheme_ok =
                url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
            scheme_ok.then(|| match e["message"].as_str() {
                Some(said) => format!("{} ({})", excerpt(url), excerpt(said)),
                None => excerpt(url),
            })
        })
        .take(3)
        .collect();
    if pages.is_empty() {
        String::new()
    } else {
        format!(": open {}", pages.join(", "))
    }
}

/// Challenges read from one answer (more are ignored).
const MAX_CHALLENGES: usize = 16;
/// The largest `PaymentRequired` read from a text block.
const MAX_CHALLENGE_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn required() -> Value {
        json!({"x402Version": 2, "error": "Payment required",
               "resource": {"url": "mcp://tool/weather"},
               "accepts": [{"scheme": "exact", "network": "eip155:31337", "amount": "1000",
                            "asset": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
                            "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
                            "maxTimeoutSeconds": 60, "extra": {"name": "USD Coin", "version": "2"}}]})
    }

    #[test]
    fn an_x402_error_result_is_the_v2_header_challenge() {
        let result = json!({"isError": true, "structuredContent": required(),
                            "content": [{"type": "text", "text": required().to_string()}]});
        let Read::PaymentRequired { headers, body } = read_result(&result) else {
            panic!("not a challenge")
        };
        assert!(body.is_empty());
        let challenge = crate::rails::read_challenge(&headers, &body);
        assert_eq!(challenge.offers.len(), 1, "{:?}", challenge.problems);
        assert_eq!(challenge.offers[0].amount_atomic, 1000);
    }

    #[test]
    fn the_text_form_and_the_legacy_error_are_read_too() {
        let text_only =
            json!({"isError": true, "content": [{"type": "text", "text": required().to_string()}]});
        assert!(matches!(
            read_result(&text_only),
            Read::PaymentRequired { .. }
        ));
        let legacy = read_error(402, "Payment required", Some(&required())).unwrap();
        assert!(matches!(legacy, Read::PaymentRequired { .. }));
    }

    #[test]
    fn the_spec_wrapper_and_mppx_error_texts_are_read() {
        let wrapped = json!({"x402/error": {"code": 402, "message": "pay", "data": required()}});
        let result =
            json!({"isError": true, "content": [{"type": "text", "text": wrapped.to_string()}]});
        assert!(matches!(read_result(&result), Read::PaymentRequired { .. }));
        let refused = json!({"isError": true, "content": [{"type": "text",
            "text": "MCP error -32043: Payment verification failed: Transaction hash has already been used."}]});
        let Read::PaymentRequired { headers, body } = read_result(&refused) else {
            panic!("a refusal")
        };
        let challenge = crate::rails::read_challenge(&headers, &body);
        assert!(challenge.offers.is_empty());
        let problem = crate::rails::mpp::wire::problem(&headers, &body).unwrap();
        assert_eq!(problem.kind, "verification-failed");
    }

    #[test]
    fn an_error_result_without_a_challenge_is_the_tools_own_answer() {
        let result =
            json!({"isError": true, "content": [{"type": "text", "text": "city unknown"}]});
        assert!(matches!(read_result(&result), Read::Answered { .. }));
    }

    #[test]
    fn a_url_elicitation_is_not_an_mpp_challenge() {
        let data = json!({"elicitations": [{"mode": "url", "url": "https://example.com/consent",
                                             "elicitationId": "e1", "message": "consent"}]});
        let refused = read_error(-32042, "URL elicitation required", Some(&data)).unwrap_err();
        assert!(refused.contains("elicitation"), "{refused}");
        assert!(
            refused.contains("open https://example.com/consent (consent)"),
            "{refused}"
        );
        assert!(refused.contains("nothing was paid"), "{refused}");
        let other = json!({"elicitations": [{"mode": "url", "url": "javascript:alert(1)"}]});
        let refused = read_error(-32042, "URL elicitation required", Some(&other)).unwrap_err();
        assert!(!refused.contains("javascript"), "{refused}");
    }

    #[test]
    fn an_mpp_challenge_object_becomes_a_www_authenticate_header() {
        let request = json!({"amount": "10000", "currency": "0x20c0000000000000000000000000000000000000",
                             "recipient": "0x1111111111111111111111111111111111111111",
                             "methodDetails": {"chainId": 31337}});
        let data = json!({"httpStatus": 402, "challenges": [{
            "id": "abc", "realm": "mcp", "method": "tempo", "intent": "charge",
            "request": request, "expires": "2099-01-01T00:00:00Z"}]});
        let Ok(Read::PaymentRequired { headers, .. }) =
            read_error(-32042, "Payment Required", Some(&data))
        else {
            panic!("not a challenge")
        };
        let value = headers[reqwest::header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(value.starts_with("Payment id=\"abc\""), "{value}");
        let encoded = value
            .split("request=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let decoded: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, request);
    }

    #[test]
    fn proofs_become_meta_and_other_headers_are_not_sent() {
        let payload = json!({"x402Version": 2, "payload": {"signature": "0x01"}});
        let credential = json!({"challenge": {"id": "abc",
                                              "request": URL_SAFE_NO_PAD.encode(r#"{"amount":"1"}"#)},
                                "payload": {"type": "transaction"}});
        let headers = vec![
            (
                HeaderName::from_static("payment-signature"),
                HeaderValue::from_str(&STANDARD.encode(payload.to_string())).unwrap(),
            ),
            (
                HeaderName::from_static("authorization"),
                HeaderValue::from_str(&format!(
                    "Payment {}",
                    URL_SAFE_NO_PAD.encode(credential.to_string())
                ))
                .unwrap(),
            ),
            (
                HeaderName::from_static("accept-payment"),
                HeaderValue::from_static("tempo/charge"),
            ),
        ];
        let meta = request_meta(&headers).unwrap();
        assert_eq!(meta[X402_PAYMENT], payload);
        assert_eq!(
            meta[MPP_CREDENTIAL]["challenge"]["request"],
            json!({"amount": "1"})
        );
        assert_eq!(meta.len(), 2);
    }

    #[test]
    fn settlements_in_meta_become_the_headers_the_rails_read() {
        let result = json!({"content": [], "_meta": {
            X402_PAYMENT_RESPONSE: {"success": true, "transaction": "0xabc"},
            MPP_RECEIPT: {"status": "success", "reference": "0xdef", "challengeId": "abc"}}});
        let Read::Answered { headers } = read_result(&result) else {
            panic!("not an answer")
        };
        let settled = crate::rails::x402::wire::settlement(&headers)
            .unwrap()
            .unwrap();
        assert_eq!(settled["transaction"], "0xabc");
        assert!(headers.contains_key("payment-receipt"));
    }
}
