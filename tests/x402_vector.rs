//! Our EIP-712 signing hash and signature equal the reference TypeScript buyer's, byte for byte.
//!
//! The vectors in `tests/peers/x402/vector.json` were produced by `tests/peers/x402/vector.mjs`:
//! `@x402/evm`'s client scheme (what `@x402/fetch` uses, version 2.27.0) created a payment
//! payload for anvil dev key #9 and fixed requirements; the script also recorded viem's
//! `hashTypedData` digest for that authorization. Nonce and validity come from that run, so the
//! test re-signs exactly the same authorization; ECDSA here is deterministic (RFC 6979), so the
//! signatures must be identical.

use alloy::primitives::{Address, B256};
use alloy::sol_types::SolStruct;
use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use tollgate::rails::{self, x402::wire as x402};
use tollgate::wallet::EvmWallet;

fn vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/x402/vector.json"
    ))
    .expect("vector.json");
    serde_json::from_str(&text).expect("vector JSON")
}

fn offer_of(vector: &Value) -> tollgate::pay::Offer {
    let version = vector["x402Version"].as_u64().unwrap();
    let required = &vector["payment_required"];
    let mut headers = HeaderMap::new();
    let body = if version == 2 {
        let encoded = base64::engine::general_purpose::STANDARD.encode(required.to_string());
        headers.insert("payment-required", HeaderValue::from_str(&encoded).unwrap());
        Vec::new()
    } else {
        required.to_string().into_bytes()
    };
    let challenge = rails::read_challenge(&headers, &body);
    assert!(challenge.problems.is_empty(), "{:?}", challenge.problems);
    challenge.offers.into_iter().next().expect("one offer")
}

#[test]
fn signing_hash_and_signature_match_the_reference_buyer() {
    let all = vectors();
    let wallet = EvmWallet::from_hex(all["private_key"].as_str().unwrap()).unwrap();
    assert_eq!(
        wallet.address().to_checksum(None),
        all["address"].as_str().unwrap()
    );
    for vector in all["vectors"].as_array().unwrap() {
        let name = vector["name"].as_str().unwrap_or("?");
        let offer = offer_of(vector);
        let auth = &vector["payload"]["payload"]["authorization"];
        let number = |k: &str| auth[k].as_str().unwrap().parse::<u64>().unwrap();
        let nonce: B256 = auth["nonce"].as_str().unwrap().parse().unwrap();
        let from: Address = auth["from"].as_str().unwrap().parse().unwrap();
        let (domain, message) = x402::authorization(
            &offer,
            from,
            number("validAfter"),
            number("validBefore"),
            nonce,
        )
        .unwrap();
        let digest = message.eip712_signing_hash(&domain);
        assert_eq!(
            format!("{digest:#x}"),
            vector["eip712"]["digest"].as_str().unwrap(),
            "{name}"
        );
        let signature = wallet.sign_digest(&digest).unwrap();
        assert_eq!(
            format!("0x{}", hex::encode(signature)),
            vector["payload"]["payload"]["signature"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn our_v2_header_carries_what_the_reference_sends() {
    let all = vectors();
    let wallet = EvmWallet::from_hex(all["private_key"].as_str().unwrap()).unwrap();
    for vector in all["vectors"].as_array().unwrap() {
        let offer = offer_of(vector);
        let proof = x402::prove(&offer, &wallet, 1_800_000_000).unwrap();
        let (name, value) = &proof.headers[0];
        assert_eq!(
            name.as_str(),
            vector["header_name"].as_str().unwrap().to_ascii_lowercase()
        );
        let ours: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .unwrap(),
        )
        .unwrap();
        let theirs = &vector["payload"];
        for key in [
            "x402Version",
            "accepted",
            "resource",
            "extensions",
            "scheme",
            "network",
        ] {
            assert_eq!(ours.get(key), theirs.get(key), "{}: {key}", vector["name"]);
        }
    }
}
