//! MPP: `WWW-Authenticate: Payment` challenges, the `Payment-Receipt` and problem+json answers
//! (`tollgate::rails::mpp::wire`). Input: an HTTP answer (`tollgate_fuzz::http_answer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::rails::mpp::wire as mpp;
use tollgate_fuzz::{bounded_messages, http_answer};

fuzz_target!(|data: &[u8]| {
    let (headers, body) = http_answer(data);
    let mut read = tollgate::pay::Challenge::default();
    mpp::read_offers(&headers, body, &mut read);
    let tollgate::pay::Challenge {
        offers,
        problems,
        seller_error,
    } = read;

    assert!(offers.len() <= 32, "{} offers", offers.len());
    for offer in &offers {
        if offer.chain_id.is_some() {
            // Only a decoded tempo charge names a chain: then it names an address and a
            // positive amount. (An undecodable one is listed, and refused for its network.)
            assert_eq!(offer.scheme, "tempo/charge");
            assert!(offer.amount_atomic > 0);
            assert!(offer.chain_id.is_some_and(|id| id > 0));
            assert_eq!(offer.payee.len(), 42);
            assert_eq!(offer.asset.len(), 42);
        }
        let _ = mpp::stale(offer, tollgate_fuzz::NOW);
    }
    bounded_messages(&problems, seller_error.as_deref());

    if let Some(Ok(receipt)) = mpp::receipt(&headers) {
        assert!(receipt.is_object());
        if let Some(reference) = mpp::reference(&receipt) {
            assert!(reference.len() <= 200);
        }
    }
    if let Some(problem) = mpp::problem(&headers, body) {
        assert!(problem.kind.chars().count() <= 80);
    }
});
