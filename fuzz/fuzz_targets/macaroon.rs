//! Macaroons in the libmacaroons V2 format (`tollgate::budget::macaroon`): binary and base64
//! decoding, with encode/decode round trips and HMAC chain verification.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::budget::macaroon::{MAX_CAVEATS, MAX_TOKEN_BYTES, Macaroon};

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = Macaroon::deserialize_v2(data) {
        // The parser is strict (shortest varints, fields in order, nothing trailing): a token
        // has one encoding, so encoding what was read gives back the input.
        assert_eq!(token.serialize_v2(), data);
        assert!(data.len() <= MAX_TOKEN_BYTES);
        assert!(token.caveats().len() <= MAX_CAVEATS);
        let text = token.to_base64url();
        let again = Macaroon::from_base64url(&text).expect("its own base64url reads back");
        assert_eq!(again.serialize_v2(), data);
        assert_eq!(again.fingerprint(), token.fingerprint());
        let _ = token.verify(&[0x42; 32]);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(token) = Macaroon::from_base64url(text)
    {
        let bytes = token.serialize_v2();
        let again = Macaroon::deserialize_v2(&bytes).expect("its own encoding reads back");
        assert_eq!(again.serialize_v2(), bytes);
        assert_eq!(again.identifier(), token.identifier());
        assert_eq!(again.caveats(), token.caveats());
        assert_eq!(again.location(), token.location());
    }
});
