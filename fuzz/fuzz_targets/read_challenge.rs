//! Every protocol at once, as a 402 is read (`tollgate::pay::read_challenge`), then the choice
//! under the built-in caps with every network, asset and wallet allowed: a chosen offer is
//! never above a cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::budget::policy::{Allow, Policy};
use tollgate::money::UsdMicros;
use tollgate::pay::{self, Rules, Wallets, assets};
use tollgate_fuzz::{bounded_messages, http_answer};

fuzz_target!(|data: &[u8]| {
    let (headers, body) = http_answer(data);
    let challenge = pay::read_challenge(&headers, body);
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
        wallets: Wallets {
            evm: true,
            lightning: true,
            tempo: true,
            lightning_network: Some(pay::l402::Network::Bitcoin),
        },
        restrictions: None,
    };
    if let Ok(quote) = pay::choose(&challenge, &rules) {
        assert!(quote.usd <= tool_max && quote.usd <= policy.per_call);
        assert!(quote.offer.amount_atomic > 0);
        assert!(challenge.offers.contains(&quote.offer));
    }
});
