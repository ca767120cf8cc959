//! x402: the v2 `PAYMENT-REQUIRED` header, the v1 body, and the `PAYMENT-RESPONSE` settlement
//! (`tollgate::rails::x402::wire`). Input: an HTTP answer (`tollgate_fuzz::http_answer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::rails::x402::wire as x402;
use tollgate_fuzz::{bounded_messages, http_answer};

fuzz_target!(|data: &[u8]| {
    let (headers, body) = http_answer(data);
    let mut read = tollgate::pay::Challenge::default();
    x402::read_offers(&headers, body, &mut read);
    let tollgate::pay::Challenge {
        offers,
        problems,
        seller_error,
    } = read;

    // At most 32 offers from the header and 32 from the body.
    assert!(offers.len() <= 64, "{} offers", offers.len());
    for offer in &offers {
        let version = offer.protocol.version();
        let key = if version == 1 {
            "maxAmountRequired"
        } else {
            "amount"
        };
        // The amount is exactly the seller's digits: never rounded, never larger.
        let written = offer.raw[key].as_str().expect("the amount was a string");
        assert!(written.bytes().all(|b| b.is_ascii_digit()), "{written:?}");
        assert_eq!(
            written.trim_start_matches('0'),
            offer.amount_atomic.to_string(),
            "amount read differs from the one written"
        );
        assert!(offer.amount_atomic > 0);
    }
    bounded_messages(&problems, seller_error.as_deref());

    let _ = x402::settlement(&headers);
});
