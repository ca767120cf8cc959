//! x402 (v1 and v2), the buyer's side: offers out of a 402, an EIP-3009 authorization signed
//! into a header, the settlement read back.
//!
//! * v2: the offer is the `PAYMENT-REQUIRED` header (base64 JSON, CAIP-2 networks such as
//!   `eip155:8453`, `amount`); the proof goes in `PAYMENT-SIGNATURE` with `accepted` echoed
//!   exactly as received; the settlement comes back in `PAYMENT-RESPONSE`.
//! * v1: the offer is the JSON body (`accepts[].maxAmountRequired`, network names such as
//!   `base-sepolia`); the proof goes in `X-PAYMENT`; the settlement in `X-PAYMENT-RESPONSE`.
//!
//! Only the `exact` scheme on EVM networks is paid: a `TransferWithAuthorization` (EIP-3009)
//! signed under the token's EIP-712 domain, whose `name` and `version` must come from the
//! offer's `extra` (tollgate refuses to guess them).

use alloy::primitives::{Address, B256, U256};
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolStruct};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::protocol;
use crate::pay::assets;
use crate::pay::{Challenge, Offer, PayError, Proof};
use crate::wallet::EvmWallet;

/// Longest `PAYMENT-REQUIRED` / `PAYMENT-RESPONSE` header read.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most offers read from one 402.
const MAX_OFFERS: usize = 32;
/// Seconds before now that `validAfter` is set to, to tolerate clock skew (as the reference
/// client does).
const VALID_AFTER_SKEW: u64 = 600;
/// Longest validity tollgate signs, whatever `maxTimeoutSeconds` asks.
const MAX_VALIDITY_SECONDS: u64 = 3600;

sol! {
    /// EIP-3009 `TransferWithAuthorization`, as USDC (FiatToken v2) defines it.
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// Reads every x402 offer in a 402: the v2 header and the v1 body. Offers that cannot be read
/// are reported in `problems`, never guessed at.
pub fn read_offers(headers: &HeaderMap, body: &[u8], into: &mut Challenge) {
    let (offers, problems, seller_error) =
        (&mut into.offers, &mut into.problems, &mut into.seller_error);
    if let Some(value) = headers.get("payment-required") {
        const WHERE: &str = "x402 PAYMENT-REQUIRED header";
        match decode_header_json(value) {
            // The reference client reads a header of either version by its `x402Version`.
            Ok(json) => match known_version(&json, WHERE) {
                Ok(version) => {
                    read_payment_required(version, &json, offers, problems, seller_error)
                }
                Err(problem) => problems.push(problem),
            },
            Err(reason) => problems.push(format!("{WHERE}: {reason}")),
        }
    }
    // v1 puts the offer in the body; only a body that says it is x402 is read as one.
    if let Ok(json) = serde_json::from_slice::<Value>(body)
        && json.get("x402Version").is_some()
        && json.get("accepts").is_some()
    {
        match known_version(&json, "x402 body") {
            Ok(1) => read_payment_required(1, &json, offers, problems, seller_error),
            // A v2 seller may repeat the header's content in the body: read the header only.
            Ok(_) if headers.contains_key("payment-required") => {}
            Ok(version) => read_payment_required(version, &json, offers, problems, seller_error),
            Err(problem) => problems.push(problem),
        }
    }
}

/// The message's `x402Version`, if it is one tollgate can pay (1 or 2). Any other version
/// (3, `"2"`, 2.5, none) is a protocol tollgate does not know: its offers are not read, so
/// they are never paid as if they were v2.
fn known_version(json: &Value, place: &str) -> Result<u8, String> {
    match json.get("x402Version") {
        None => Err(format!(
            "{place}: no `x402Version`; tollgate pays x402 versions 1 and 2 only"
        )),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(1),
        Some(Value::Number(n)) if n.as_u64() == Some(2) => Ok(2),
        Some(other) => {
            let shown: String = other.to_string().chars().take(40).collect();
            Err(format!(
                "{place}: x402Version {shown} is not supported (tollgate pays versions 1 and 2 \
                 only); its offers were not read"
            ))
        }
    }
}

fn decode_header_json(value: &HeaderValue) -> Result<Value, String> {
    if value.len() > MAX_HEADER_BYTES {
        return Err(format!("longer than {MAX_HEADER_BYTES} bytes"));
    }
    let text = value.to_str().map_err(|_| "not ASCII".to_owned())?;
    let bytes = B64
        .decode(text.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text.trim()))
        .map_err(|_| "not valid base64".to_owned())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON after base64: {e}"))
}

fn read_payment_required(
    version: u8,
    json: &Value,
    offers: &mut Vec<Offer>,
    problems: &mut Vec<String>,
    seller_error: &mut Option<String>,
) {
    let label = format!("x402 v{version}");
    if let Some(error) = json
        .get("error")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    {
        *seller_error = Some(crate::upstream::excerpt(error.as_bytes()));
    }
    let Some(accepts) = json.get("accepts").and_then(Value::as_array) else {
        problems.push(format!("{label}: no `accepts` list"));
        return;
    };
    let resource = json.get("resource").cloned();
    let extensions = json.get("extensions").cloned();
    for (i, raw) in accepts.iter().take(MAX_OFFERS).enumerate() {
        match read_requirements(version, raw, resource.clone()) {
            Ok(offer) => offers.push(Offer {
                extensions: extensions.clone(),
                ..offer
            }),
            Err(reason) => problems.push(format!("{label} offer {i}: {reason}")),
        }
    }
    if accepts.len() > MAX_OFFERS {
        problems.push(format!(
            "{label}: more than {MAX_OFFERS} offers; the rest were ignored"
        ));
    }
}

fn read_requirements(version: u8, raw: &Value, resource: Option<Value>) -> Result<Offer, String> {
    let obj = raw.as_object().ok_or("not a JSON object")?;
    let text = |key: &str| -> Result<String, String> {
        let value = obj.get(key).ok_or_else(|| format!("missing `{key}`"))?;
        let s = value
            .as_str()
            .ok_or_else(|| format!("`{key}` is not a string"))?;
        if s.is_empty() || s.len() > 256 {
            return Err(format!("`{key}` is empty or longer than 256 characters"));
        }
        Ok(s.to_owned())
    };
    let amount_key = if version == 1 {
        "maxAmountRequired"
    } else {
        "amount"
    };
    let amount_text = text(amount_key)?;
    let amount_atomic = parse_amount(&amount_text).map_err(|r| format!("`{amount_key}` {r}"))?;
    let max_timeout_seconds = match obj.get("maxTimeoutSeconds") {
        None => 60,
        Some(v) => v
            .as_u64()
            .ok_or("`maxTimeoutSeconds` is not a non-negative integer")?,
    };
    let network = text("network")?;
    Ok(Offer {
        protocol: protocol(version),
        scheme: text("scheme")?,
        chain_id: assets::chain_id(&network),
        network,
        asset: text("asset")?,
        amount_atomic,
        payee: text("payTo")?,
        max_timeout_seconds,
        raw: raw.clone(),
        resource,
        extensions: None,
    })
}

/// An amount in atomic units: decimal digits only, no sign, fits in 128 bits, above zero.
pub(crate) fn parse_amount(text: &str) -> Result<u128, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{:?} is not an integer amount in atomic units",
            excerpt(text)
        ));
    }
    let amount: u128 = text
        .parse()
        .map_err(|_| format!("{:?} is too large", excerpt(text)))?;
    if amount == 0 {
        return Err("is zero".to_owned());
    }
    Ok(amount)
}

fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

fn address(text: &str, what: &str) -> Result<Address, PayError> {
    text.parse::<Address>().map_err(|_| {
        PayError::Unpayable(format!("{what} {:?} is not an EVM address", excerpt(text)))
    })
}

/// The EIP-712 domain and authorization for an offer; exposed for tests against reference
/// vectors.
pub fn authorization(
    offer: &Offer,
    from: Address,
    valid_after: u64,
    valid_before: u64,
    nonce: B256,
) -> Result<(Eip712Domain, TransferWithAuthorization), PayError> {
    if offer.scheme != "exact" {
        return Err(PayError::Unpayable(format!(
            "scheme {:?} is not supported",
            offer.scheme
        )));
    }
    let chain_id = offer.chain_id.ok_or_else(|| {
        PayError::Unpayable(format!(
            "network {:?} is not a known EVM network",
            offer.network
        ))
    })?;
    let extra = offer.raw.get("extra").and_then(Value::as_object);
    let field = |key: &str| {
        extra
            .and_then(|e| e.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .map(str::to_owned)
            .ok_or_else(|| {
                PayError::Unpayable(format!(
                    "the offer's extra.{key} (the token's EIP-712 domain {key}) is missing; \
                     tollgate does not guess it"
                ))
            })
    };
    let (name, version) = (field("name")?, field("version")?);
    let asset = address(&offer.asset, "asset")?;
    let to = address(&offer.payee, "payTo")?;
    let domain = Eip712Domain::new(
        Some(name.into()),
        Some(version.into()),
        Some(U256::from(chain_id)),
        Some(asset),
        None,
    );
    let message = TransferWithAuthorization {
        from,
        to,
        value: U256::from(offer.amount_atomic),
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    Ok((domain, message))
}

/// Signs the offer: the proof headers for the paid retry.
pub fn prove(offer: &Offer, wallet: &EvmWallet, now: u64) -> Result<Proof, PayError> {
    let (super::NAME, version) = (offer.protocol.name, offer.protocol.version) else {
        return Err(PayError::Unpayable(format!(
            "{} offer given to the x402 signer",
            offer.protocol
        )));
    };
    let nonce = B256::from(rand::random::<[u8; 32]>());
    let validity = offer.max_timeout_seconds.clamp(1, MAX_VALIDITY_SECONDS);
    let (valid_after, valid_before) = (now.saturating_sub(VALID_AFTER_SKEW), now + validity);
    let (domain, message) =
        authorization(offer, wallet.address(), valid_after, valid_before, nonce)?;
    let digest = message.eip712_signing_hash(&domain);
    let signature = wallet
        .sign_digest(&digest)
        .map_err(|e| PayError::Signing(e.to_string()))?;
    let payload = json!({
        "signature": format!("0x{}", hex::encode(signature)),
        "authorization": {
            "from": message.from.to_checksum(None),
            "to": message.to.to_checksum(None),
            "value": message.value.to_string(),
            "validAfter": valid_after.to_string(),
            "validBefore": valid_before.to_string(),
            "nonce": format!("{nonce:#x}"),
        }
    });
    let (header, body) = if version == 1 {
        let body = json!({
            "x402Version": 1,
            "scheme": offer.scheme,
            "network": offer.network,
            "payload": payload,
        });
        ("x-payment", body)
    } else {
        let mut body = Map::new();
        body.insert("x402Version".into(), 2.into());
        if let Some(extensions) = &offer.extensions {
            body.insert("extensions".into(), with_payment_identifier(extensions));
        }
        if let Some(resource) = &offer.resource {
            body.insert("resource".into(), resource.clone());
        }
        body.insert("accepted".into(), offer.raw.clone());
        body.insert("payload".into(), payload);
        ("payment-signature", Value::Object(body))
    };
    let value = HeaderValue::from_str(&B64.encode(body.to_string()))
        .map_err(|e| PayError::Signing(e.to_string()))?;
    Ok(Proof {
        headers: vec![(HeaderName::from_static(header), value)],
        payer: message.from.to_checksum(None),
        valid_before,
        ..Proof::default()
    })
}

/// The 402's extensions as echoed in the payment, with this payment's id added where the seller
/// declared x402's `payment-identifier` extension (`info.id`, 16-128 of `[A-Za-z0-9_-]`): a
/// proof re-sent after an unknown outcome carries the same id, so the seller can answer it from
/// its cache instead of refusing it as already used. One id per signed payment, never per call:
/// twin calls pay their own.
fn with_payment_identifier(extensions: &Value) -> Value {
    let mut extensions = extensions.clone();
    if let Some(Value::Object(info)) = extensions
        .get_mut(PAYMENT_IDENTIFIER)
        .and_then(|e| e.get_mut("info"))
    {
        info.insert(
            "id".into(),
            format!("pay_{}", hex::encode(rand::random::<[u8; 16]>())).into(),
        );
    }
    extensions
}

/// The x402 extension that makes a payment idempotent at the seller.
const PAYMENT_IDENTIFIER: &str = "payment-identifier";

/// The seller's settlement response from a paid answer, decoded; `None` if there is none.
pub fn settlement(headers: &HeaderMap) -> Option<Result<Value, String>> {
    let value = headers
        .get("payment-response")
        .or_else(|| headers.get("x-payment-response"))?;
    Some(decode_header_json(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_payment_identifier_gets_one_id_per_payment() {
        let declared = json!({"payment-identifier": {"info": {"required": false},
                                                     "schema": {"type": "object"}},
                              "other": {"info": {}}});
        let a = with_payment_identifier(&declared);
        let b = with_payment_identifier(&declared);
        let id = a["payment-identifier"]["info"]["id"].as_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        assert!(id.starts_with("pay_"));
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_ne!(
            a["payment-identifier"]["info"]["id"],
            b["payment-identifier"]["info"]["id"]
        );
        assert_eq!(a["payment-identifier"]["info"]["required"], false);
        assert_eq!(
            a["other"], declared["other"],
            "other extensions are echoed as sent"
        );
        // Not declared, or declared without an info object: nothing is added.
        let none = json!({"bazaar": {"info": {}}});
        assert_eq!(with_payment_identifier(&none), none);
        let odd = json!({"payment-identifier": "yes"});
        assert_eq!(with_payment_identifier(&odd), odd);
    }

    fn v2_header(json: Value) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "payment-required",
            HeaderValue::from_str(&B64.encode(json.to_string())).unwrap(),
        );
        h
    }

    fn requirements() -> Value {
        json!({"scheme": "exact", "network": "eip155:8453", "amount": "10000",
               "asset": "0x833589fCD6eDb6E08f4c3C32D4f71b54bdA02913",
               "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "maxTimeoutSeconds": 60,
               "extra": {"name": "USD Coin", "version": "2"}})
    }

    fn read(headers: &HeaderMap, body: &[u8]) -> (Vec<Offer>, Vec<String>) {
        let mut read = Challenge::default();
        read_offers(headers, body, &mut read);
        (read.offers, read.problems)
    }

    #[test]
    fn reads_a_v2_offer_and_keeps_it_raw() {
        let (offers, problems) = read(
            &v2_header(json!({"x402Version": 2, "accepts": [requirements()]})),
            b"",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(offers[0].amount_atomic, 10_000);
        assert_eq!(offers[0].chain_id, Some(8453));
        assert_eq!(offers[0].raw, requirements());
    }

    #[test]
    fn reads_a_v1_body() {
        let mut r = requirements();
        let obj = r.as_object_mut().unwrap();
        obj.remove("amount");
        obj.insert("maxAmountRequired".into(), "5000".into());
        obj.insert("network".into(), "base-sepolia".into());
        let body =
            json!({"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [r]});
        let (offers, _) = read(&HeaderMap::new(), body.to_string().as_bytes());
        assert_eq!(offers[0].amount_atomic, 5000);
        assert_eq!(offers[0].chain_id, Some(84532));
        assert_eq!(offers[0].protocol, protocol(1));
    }

    #[test]
    fn malformed_offers_are_named_and_never_panic() {
        let mut h = HeaderMap::new();
        h.insert(
            "payment-required",
            HeaderValue::from_static("!!!not-base64!!!"),
        );
        assert!(read(&h, b"").1[0].contains("not valid base64"));

        h.insert(
            "payment-required",
            HeaderValue::from_str(&B64.encode("{nope")).unwrap(),
        );
        assert!(read(&h, b"").1[0].contains("not valid JSON"));

        let long = "A".repeat(MAX_HEADER_BYTES + 1);
        h.insert("payment-required", HeaderValue::from_str(&long).unwrap());
        assert!(read(&h, b"").1[0].contains("longer than"));

        for (field, value, expect) in [
            ("amount", json!("1.5"), "not an integer amount"),
            ("amount", json!("-3"), "not an integer amount"),
            ("amount", json!(10000), "is not a string"),
            ("amount", json!("1e6"), "not an integer amount"),
            ("amount", json!("0"), "is zero"),
            ("amount", json!("9".repeat(60)), "too large"),
            ("payTo", json!(""), "empty"),
            ("network", json!("x".repeat(300)), "longer than 256"),
            ("maxTimeoutSeconds", json!(-1), "maxTimeoutSeconds"),
        ] {
            let mut r = requirements();
            r[field] = value;
            let (offers, problems) =
                read(&v2_header(json!({"x402Version": 2, "accepts": [r]})), b"");
            assert!(offers.is_empty(), "{field}");
            assert!(problems[0].contains(expect), "{field}: {problems:?}");
        }
        let mut r = requirements();
        r.as_object_mut().unwrap().remove("asset");
        let (_, problems) = read(&v2_header(json!({"x402Version": 2, "accepts": [r]})), b"");
        assert!(problems[0].contains("missing `asset`"), "{problems:?}");
        let (_, problems) = read(&v2_header(json!({"x402Version": 2, "accepts": "x"})), b"");
        assert!(problems[0].contains("no `accepts`"), "{problems:?}");
        let (_, problems) = read(&v2_header(json!([1, 2])), b"");
        assert!(problems[0].contains("x402Version"), "{problems:?}");
    }

    #[test]
    fn refuses_a_v2_header_of_an_unknown_x402_version() {
        for version in [json!(3), json!(0), json!("2"), json!(null), json!(2.5)] {
            let (offers, problems) = read(
                &v2_header(json!({"x402Version": version, "accepts": [requirements()]})),
                b"",
            );
            assert!(
                offers.is_empty(),
                "x402Version {version} was read as an offer"
            );
            assert!(
                problems.len() == 1
                    && problems[0].contains("x402Version")
                    && problems[0].contains(&version.to_string()),
                "x402Version {version}: {problems:?}"
            );
        }
        let (offers, problems) = read(&v2_header(json!({"accepts": [requirements()]})), b"");
        assert!(offers.is_empty());
        assert!(problems[0].contains("no `x402Version`"), "{problems:?}");
    }

    #[test]
    fn refuses_a_body_of_an_unknown_x402_version_naming_it() {
        let mut r = requirements();
        r["maxAmountRequired"] = json!("5000");
        for version in [json!(7), json!("1")] {
            let body = json!({"x402Version": version, "accepts": [r.clone()]});
            let (offers, problems) = read(&HeaderMap::new(), body.to_string().as_bytes());
            assert!(
                offers.is_empty(),
                "x402Version {version} was read as an offer"
            );
            assert!(
                problems[0].contains("x402Version") && problems[0].contains(&version.to_string()),
                "x402Version {version}: {problems:?}"
            );
        }
    }

    #[test]
    fn refuses_to_sign_without_the_domain_name_and_version() {
        let wallet = EvmWallet::from_hex(&"11".repeat(32)).unwrap();
        let mut r = requirements();
        r["extra"] = json!({"name": "USD Coin"});
        let (offers, _) = read(&v2_header(json!({"x402Version": 2, "accepts": [r]})), b"");
        let err = prove(&offers[0], &wallet, 1_800_000_000).unwrap_err();
        assert!(err.to_string().contains("extra.version"), "{err}");
    }

    #[test]
    fn v2_proof_echoes_accepted_exactly() {
        let wallet = EvmWallet::from_hex(&"11".repeat(32)).unwrap();
        let required = json!({"x402Version": 2, "resource": {"url": "http://x/y"}, "accepts": [requirements()]});
        let (offers, _) = read(&v2_header(required), b"");
        let proof = prove(&offers[0], &wallet, 1_800_000_000).unwrap();
        let (name, value) = &proof.headers[0];
        assert_eq!(name.as_str(), "payment-signature");
        let sent: Value = serde_json::from_slice(&B64.decode(value.as_bytes()).unwrap()).unwrap();
        assert_eq!(sent["accepted"], requirements());
        assert_eq!(sent["resource"], json!({"url": "http://x/y"}));
        assert_eq!(
            sent["payload"]["authorization"]["validBefore"],
            "1800000060"
        );
        assert_eq!(sent["payload"]["authorization"]["value"], "10000");
    }
}
