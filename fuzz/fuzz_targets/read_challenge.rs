//! Every protocol at once, as a 402 is read (`tollgate::rails::read_challenge`), then the choice
//! under the built-in caps with every network, asset and wallet allowed (every rail equipped,
//! never asked to pay): a chosen offer is never above a cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate::budget::policy::{Allow, Policy};
use tollgate::money::UsdMicros;

use tollgate::pay::{self, Rules, assets};
use tollgate::rails::{Equipment, Rails};
use tollgate_fuzz::{bounded_messages, http_answer};

/// Every rail with a wallet: what choosing needs to see. Nothing here pays.
fn rails() -> &'static Rails {
    static RAILS: OnceLock<Rails> = OnceLock::new();
    RAILS.get_or_init(|| {
        let key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
        let evm = tollgate::wallet::EvmWallet::from_hex(key).expect("a test key");
        let tempo = tollgate::wallet::tempo::TempoWallet::open(
            Some(&tollgate::wallet::tempo::TempoConfig {
                rpc_url: "http://127.0.0.1:9".to_owned(),
                chain_id: Some(31337),
                account: None,
                max_fee_atomic: 50_000,
            }),
            Some(&evm),
        )
        .expect("a Tempo wallet");
        let lightning = tollgate::lightning::Lightning {
            backend: std::sync::Arc::new(
                tollgate::lightning::lnbits::Lnbits::new("http://127.0.0.1:9", "unused")
                    .expect("an LNbits client"),
            ),
            network: tollgate::lightning::Network::Bitcoin,
            max_fee_msat: 0,
            timeout: std::time::Duration::from_secs(1),
        };
        Rails::new(Equipment {
            evm: Some(evm),
            tempo,
            lightning: Some(lightning),
            rpc: Default::default(),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let (headers, body) = http_answer(data);
    let challenge = tollgate::rails::read_challenge(&headers, body);
    bounded_messages(&challenge.problems, challenge.seller_error.as_deref());

    let mut policy = Policy::builtin();
    policy.networks = Allow::Any;
    policy.assets = Allow::Any;
    policy.rates.insert("sat".to_owned(), 1_000);
    let assets = assets::builtin();
    let tool_max = UsdMicros(50_000);
    let rules = Rules {
        policy: &policy,
        assets: &assets,
        tool_max,
        tool: "fuzz",
        rails: rails(),
        restrictions: None,
    };
    if let Ok(quote) = pay::choose(&challenge, &rules) {
        assert!(quote.usd <= tool_max && quote.usd <= policy.per_call);
        assert!(quote.offer.amount_atomic > 0);
        assert!(challenge.offers.contains(&quote.offer));
    }
});
