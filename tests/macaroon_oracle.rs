//! The in-house credential format (`tollgate::budget::macaroon`) checked against an independent
//! implementation: the `macaroon` crate 0.3 (libsodium HMAC, libmacaroons-compatible), used
//! here as an oracle only. Tokens minted by one verify with the other, V2 bytes are identical
//! for the same inputs, and what one refuses (tampering, another root secret) the other
//! refuses too.

use base64::Engine as _;
use macaroon::{ByteString, Format, Macaroon as Theirs, MacaroonError, MacaroonKey, Verifier};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tollgate::budget::macaroon::{FormatError, Macaroon as Ours, VerifyError};

const ROOT: &[u8] = b"oracle test root secret: 32 bytes or more";
const LOCATION: &str = "https://tollgate.example/";

fn init() {
    macaroon::initialize().expect("libsodium initializes");
}

fn satisfy_all(_: &ByteString) -> bool {
    true
}

/// Their verifier with every first-party caveat accepted: only the signature chain is checked.
fn their_verify(token: &Theirs, root: &[u8]) -> Result<(), MacaroonError> {
    let mut verifier = Verifier::default();
    verifier.satisfy_general(satisfy_all);
    verifier.verify(token, &MacaroonKey::generate(root), Vec::new())
}

fn ours(identifier: &[u8], location: Option<&str>, caveats: &[&[u8]]) -> Ours {
    let mut token = Ours::mint(ROOT, identifier, location).expect("mint");
    for caveat in caveats {
        token.add_caveat(caveat).expect("caveat");
    }
    token
}

fn theirs(identifier: &[u8], location: Option<&str>, caveats: &[&[u8]]) -> Theirs {
    // The crate's `create` takes the derived key; `MacaroonKey::generate` is the libmacaroons
    // derivation HMAC("macaroons-key-generator", secret).
    let mut token = Theirs::create(
        location.map(str::to_owned),
        &MacaroonKey::generate(ROOT),
        identifier.to_vec().into(),
    )
    .expect("create");
    for caveat in caveats {
        token.add_first_party_caveat(caveat.to_vec().into());
    }
    token
}

/// Their V2 serialization as bytes (they emit URL-safe base64 with padding).
fn their_v2_bytes(token: &Theirs) -> Vec<u8> {
    let text = token.serialize(Format::V2).expect("serialize");
    base64::engine::general_purpose::URL_SAFE
        .decode(text)
        .expect("their base64")
}

/// One test token's inputs: identifier, location, caveats.
type Inputs<'a> = (&'a [u8], Option<&'a str>, &'a [&'a [u8]]);

const CAVEATS: &[&[u8]] = &[
    b"tools = search,weather",
    b"budget_usd_micros <= 1000000",
    b"expires < 1795320000",
];

#[test]
fn token_minted_by_us_verifies_with_theirs() {
    init();
    let token = ours(b"agent-7", Some(LOCATION), CAVEATS);
    let parsed = Theirs::deserialize(token.to_base64url()).expect("they parse ours");
    assert_eq!(parsed.identifier(), ByteString::from("agent-7"));
    assert_eq!(parsed.location().as_deref(), Some(LOCATION));
    assert_eq!(parsed.first_party_caveats().len(), CAVEATS.len());
    assert_eq!(parsed.signature().as_ref() as &[u8], token.signature());
    their_verify(&parsed, ROOT).expect("they verify ours");
}

#[test]
fn token_minted_by_them_verifies_with_ours() {
    init();
    let token = theirs(b"agent-7", Some(LOCATION), CAVEATS);
    let text = token.serialize(Format::V2).expect("serialize");
    let parsed = Ours::from_base64url(&text).expect("we parse theirs");
    assert_eq!(parsed.identifier(), b"agent-7");
    assert_eq!(parsed.location(), Some(LOCATION));
    assert_eq!(
        parsed.caveats(),
        CAVEATS.iter().map(|c| c.to_vec()).collect::<Vec<_>>()
    );
    let chain = parsed.verify(ROOT).expect("we verify theirs");
    assert_eq!(chain.len(), CAVEATS.len());
    assert_eq!(
        chain[CAVEATS.len() - 1].as_bytes() as &[u8],
        token.signature().as_ref() as &[u8]
    );
}

#[test]
fn our_chain_values_are_their_signatures_of_each_prefix() {
    init();
    let chain = ours(b"agent-7", None, CAVEATS)
        .verify(ROOT)
        .expect("verify");
    for i in 0..CAVEATS.len() {
        let prefix = theirs(b"agent-7", None, &CAVEATS[..=i]);
        assert_eq!(
            chain[i].as_bytes() as &[u8],
            prefix.signature().as_ref() as &[u8]
        );
    }
}

#[test]
fn v2_bytes_are_identical_for_the_same_inputs() {
    init();
    let long_caveat = [b'x'; 300]; // a two-byte length varint
    let cases: [Inputs; 5] = [
        (b"id", None, &[]),
        (b"id", Some(LOCATION), &[]),
        (b"agent-7", Some(LOCATION), CAVEATS),
        (&[0, 1, 2, 0xff], None, &[b"tools = a"]),
        (
            b"long",
            Some("http://example.org/"),
            &[&long_caveat, b"tools = b"],
        ),
    ];
    for (identifier, location, caveats) in cases {
        let ours = ours(identifier, location, caveats);
        let theirs = theirs(identifier, location, caveats);
        assert_eq!(ours.serialize_v2(), their_v2_bytes(&theirs), "{ours:?}");
        let their_text = theirs.serialize(Format::V2).expect("serialize");
        assert_eq!(ours.to_base64url(), their_text.trim_end_matches('='));
    }
}

#[test]
fn random_tokens_agree_byte_for_byte_and_verify_both_ways() {
    init();
    let mut rng = StdRng::seed_from_u64(0x7011_6a7e);
    for _ in 0..200 {
        let identifier: Vec<u8> = (0..rng.gen_range(1..200)).map(|_| rng.r#gen()).collect();
        let location = rng
            .gen_bool(0.5)
            .then(|| format!("https://h{}.example/", rng.gen_range(0..1000)));
        let caveats: Vec<Vec<u8>> = (0..rng.gen_range(0..8))
            .map(|_| (0..rng.gen_range(1..300)).map(|_| rng.r#gen()).collect())
            .collect();
        let caveat_refs: Vec<&[u8]> = caveats.iter().map(Vec::as_slice).collect();
        let ours = ours(&identifier, location.as_deref(), &caveat_refs);
        let theirs = theirs(&identifier, location.as_deref(), &caveat_refs);
        let bytes = their_v2_bytes(&theirs);
        assert_eq!(ours.serialize_v2(), bytes);
        Ours::deserialize_v2(&bytes)
            .expect("parse")
            .verify(ROOT)
            .expect("we verify theirs");
        let parsed = Theirs::deserialize_binary(&ours.serialize_v2()).expect("they parse ours");
        their_verify(&parsed, ROOT).expect("they verify ours");
    }
}

#[test]
fn caveat_we_append_without_the_root_secret_verifies_with_theirs() {
    init();
    let parent = theirs(b"agent-7", None, &[b"budget_usd_micros <= 1000000"]);
    let mut child =
        Ours::from_base64url(&parent.serialize(Format::V2).expect("serialize")).expect("parse");
    child
        .add_caveat(b"budget_usd_micros <= 5000")
        .expect("append");
    let parsed = Theirs::deserialize(child.to_base64url()).expect("they parse");
    their_verify(&parsed, ROOT).expect("they verify the narrowed token");
}

#[test]
fn both_refuse_a_widened_copy() {
    init();
    let mut bytes = ours(b"agent-7", None, &[b"budget_usd_micros <= 100"]).serialize_v2();
    let at = bytes.windows(3).position(|w| w == b"100").expect("amount");
    bytes[at] = b'9'; // "<= 900": looser, same length, old signature
    let widened = Ours::deserialize_v2(&bytes).expect("well-formed");
    assert_eq!(widened.verify(ROOT), Err(VerifyError::SignatureMismatch));
    let theirs = Theirs::deserialize_binary(&bytes).expect("they parse");
    assert!(matches!(
        their_verify(&theirs, ROOT),
        Err(MacaroonError::InvalidSignature)
    ));
}

#[test]
fn both_refuse_another_root_secret() {
    init();
    let token = ours(b"agent-7", None, CAVEATS);
    let other = b"some other root secret, also long enough";
    assert_eq!(token.verify(other), Err(VerifyError::SignatureMismatch));
    let parsed = Theirs::deserialize_binary(&token.serialize_v2()).expect("they parse");
    assert!(their_verify(&parsed, other).is_err());
    let token = theirs(b"agent-7", None, CAVEATS);
    let parsed = Ours::deserialize_v2(&their_v2_bytes(&token)).expect("we parse");
    assert_eq!(parsed.verify(other), Err(VerifyError::SignatureMismatch));
}

#[test]
fn we_refuse_their_third_party_caveat() {
    init();
    let mut token = theirs(b"agent-7", Some(LOCATION), &[b"tools = a"]);
    token.add_third_party_caveat(
        "https://auth.example/",
        &MacaroonKey::generate(b"third party key"),
        "caveat id".into(),
    );
    let bytes = their_v2_bytes(&token);
    assert_eq!(
        Ours::deserialize_v2(&bytes),
        Err(FormatError::ThirdPartyCaveat { index: 1 })
    );
}
