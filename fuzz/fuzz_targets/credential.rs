//! Credentials (`tollgate::budget::credential`): verification of a token as a caller sends it,
//! and of tokens minted here with the input's lines as caveats, where verification must agree
//! with the caveat language.
//!
//! Input: a first byte that picks the mode (even: the rest is a token; odd: the rest is caveat
//! lines), then the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::budget::caveat::{Caveat, Restrictions};
use tollgate::budget::credential::{Credential, CredentialError};
use tollgate_fuzz::{NOW, root_key};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode % 2 == 0 {
        let _ = Credential::verify(text, root_key(), NOW);
        return;
    }
    let caveats: Vec<String> = text.lines().map(str::to_owned).collect();
    let Ok(token) = root_key().mint(&caveats) else {
        return;
    };
    let verified = Credential::verify(&token.to_base64url(), root_key(), NOW);
    match Restrictions::parse(&caveats) {
        Err(_) => assert!(
            matches!(verified, Err(CredentialError::Caveat(_))),
            "a caveat that does not parse must refuse the credential: {verified:?}"
        ),
        Ok(restrictions) if restrictions.is_expired_at(NOW) => {
            assert!(matches!(verified, Err(CredentialError::Expired(_))))
        }
        Ok(restrictions) => {
            let credential = verified.expect("a token minted here verifies");
            let budgets = caveats
                .iter()
                .filter(|c| matches!(Caveat::parse(c), Ok(Caveat::Budget(_))))
                .count();
            assert_eq!(credential.budgets.len(), budgets);
            // The identifier's id, then one per chain value (one per caveat).
            assert_eq!(credential.lineage.len(), caveats.len() + 1);
            assert_eq!(credential.restrictions, restrictions);
        }
    }
});
