//! L402/LSAT: `WWW-Authenticate` challenges and the BOLT11 checks of their invoices
//! (`tollgate::rails::l402::wire`). Input: an HTTP answer (`tollgate_fuzz::http_answer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::budget::macaroon::Macaroon;
use tollgate::lightning::Network;
use tollgate::rails::l402::wire::{self as l402, L402Challenge};
use tollgate_fuzz::{NOW, bounded_messages, http_answer};

fuzz_target!(|data: &[u8]| {
    let (headers, _) = http_answer(data);
    let mut problems = Vec::new();
    let challenges = l402::read_challenges(&headers, &mut problems);

    assert!(challenges.len() <= 8, "{} challenges", challenges.len());
    for challenge in &challenges {
        let invoice = &challenge.invoice;
        assert!(invoice.amount_msat > 0);
        assert!(invoice.expires_at >= invoice.created_at);
        // A macaroon that names a payment hash names this invoice's.
        if let Some(hash) = Macaroon::from_base64url(&challenge.macaroon)
            .ok()
            .and_then(|m| l402::identifier_payment_hash(m.identifier()))
        {
            assert_eq!(hash, invoice.payment_hash);
        }
        // What an offer keeps is the challenge, read again the same.
        assert_eq!(
            L402Challenge::from_raw(&challenge.to_raw()).as_ref(),
            Ok(challenge)
        );
        let offer = l402::offer(challenge, NOW);
        assert_eq!(offer.amount_atomic, u128::from(invoice.amount_msat));
        for network in [Network::Bitcoin, Network::Testnet, Network::Regtest] {
            let _ = invoice.check(network, NOW);
        }
    }
    bounded_messages(&problems, None);

    // The raw grammar, on the whole input.
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(l402::parse_www_authenticate(text).len() <= 65);
        let _ = l402::Invoice::decode(text);
    }
});
