//! How long `tollgate demo` takes, end to end (the README's first command after the build),
//! and its in-process pieces: starting the sandbox chain (deploying and initializing Circle's
//! USDC on revm) and settling one EIP-3009 authorization on it. Run: `cargo bench --bench
//! demo`. Prints figures; the target is a demo run under 3 s on a 2-core machine.

use std::process::Command;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use alloy::signers::SignerSync as _;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol;
use alloy::sol_types::{Eip712Domain, SolStruct};
use tollgate::demo::chain::{Chain, transferWithAuthorizationCall};

const RUNS: usize = 5;

sol! {
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

fn summary(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<52} min {:>8.1} ms   median {:>8.1} ms   max {:>8.1} ms   (n = {})",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    // The chain alone.
    let mut starts = Vec::new();
    let mut settles = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let chain = Chain::start(31337).expect("the sandbox chain starts");
        starts.push(t.elapsed());
        let buyer = PrivateKeySigner::random();
        chain.mint(buyer.address(), 1_000_000).unwrap();
        let to = Address::repeat_byte(0x5e);
        let nonce = B256::from(rand::random::<[u8; 32]>());
        let message = TransferWithAuthorization {
            from: buyer.address(),
            to,
            value: U256::from(1000u64),
            validAfter: U256::ZERO,
            validBefore: U256::from(u64::MAX),
            nonce,
        };
        let domain = Eip712Domain::new(
            Some("USD Coin".into()),
            Some("2".into()),
            Some(U256::from(31337u64)),
            Some(chain.token()),
            None,
        );
        let signature = buyer
            .sign_hash_sync(&message.eip712_signing_hash(&domain))
            .unwrap()
            .as_bytes();
        let t = Instant::now();
        let done = chain
            .transfer_with_authorization(transferWithAuthorizationCall {
                from: buyer.address(),
                to,
                value: message.value,
                validAfter: message.validAfter,
                validBefore: message.validBefore,
                nonce,
                signature: signature.to_vec().into(),
            })
            .unwrap();
        settles.push(t.elapsed());
        assert!(done.success, "the token accepted the authorization");
        assert_eq!(chain.balance_of(to).unwrap(), 1000);
    }
    summary("sandbox chain: deploy + initialize USDC", starts);
    summary(
        "sandbox chain: settle one transferWithAuthorization",
        settles,
    );

    // The whole demo, as a person runs it.
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("demo")
            .env_remove("TOLLGATE_EVM_KEY")
            .env_remove("TOLLGATE_TOKEN")
            .output()
            .expect("run tollgate demo");
        runs.push(t.elapsed());
        assert!(
            out.status.success(),
            "tollgate demo failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let median = {
        let mut v = runs.clone();
        v.sort();
        v[v.len() / 2]
    };
    summary("tollgate demo, end to end (wall time)", runs);
    println!(
        "target: under 3 s after the build: {}",
        if median < Duration::from_secs(3) {
            "met"
        } else {
            "NOT met"
        }
    );
}
