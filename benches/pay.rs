//! Payment benchmarks (`cargo bench --bench pay`): the time from a parsed 402 to a signed x402
//! header (target ≤ 200 µs), and reading offers out of a 402. Figures, not assertions.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;
use tollgate::rails::{self, x402::wire as x402};
use tollgate::wallet::EvmWallet;

const ROUNDS: usize = 5000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let wallet = EvmWallet::from_hex(&"2a".repeat(32)).expect("key");
    let required = json!({"x402Version": 2, "resource": {"url": "https://api.example.com/r"},
        "accepts": [{"scheme": "exact", "network": "eip155:8453", "amount": "10000",
        "asset": "0x833589fCD6eDb6E08f4c3C32D4f71b54bdA02913",
        "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "maxTimeoutSeconds": 60,
        "extra": {"name": "USD Coin", "version": "2"}}]});
    let mut headers = HeaderMap::new();
    let encoded = base64::engine::general_purpose::STANDARD.encode(required.to_string());
    headers.insert(
        "payment-required",
        HeaderValue::from_str(&encoded).expect("header"),
    );

    let mut parse = Vec::with_capacity(ROUNDS);
    let mut sign = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t0 = Instant::now();
        let challenge = rails::read_challenge(&headers, b"{}");
        parse.push(t0.elapsed());
        let offer = &challenge.offers[0];
        let t1 = Instant::now();
        let proof = x402::prove(offer, &wallet, 1_800_000_000).expect("signed");
        sign.push(t1.elapsed());
        assert_eq!(proof.headers.len(), 1);
    }
    println!(
        "402 → offers (parse PAYMENT-REQUIRED): median {:.1} µs",
        median(parse).as_secs_f64() * 1e6
    );
    println!(
        "parsed 402 → signed PAYMENT-SIGNATURE header: median {:.1} µs (target ≤ 200 µs)",
        median(sign).as_secs_f64() * 1e6
    );
}
