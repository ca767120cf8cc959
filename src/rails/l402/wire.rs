//! L402 (and its older name, LSAT): the wire format of a Lightning-paid 402.
//!
//! A seller answers `402` with `WWW-Authenticate: L402 macaroon="<base64>", invoice="<bolt11>"`
//! (or `LSAT`, or `token=` for `macaroon=`, with an optional `version="0"`; unknown parameters
//! are ignored). Paying the BOLT11 invoice yields a 32-byte preimage; the proof is
//! `Authorization: L402 <base64 macaroon>:<hex preimage>`, and the pair stays valid until the
//! macaroon's caveats expire, so it is kept and sent again.
//!
//! This module reads challenges and checks invoices; it never pays (that is
//! [`crate::lightning`]) and never remembers (that is the ledger). Invoices are parsed with
//! `lightning-invoice` in raw mode ([`SignedRawBolt11Invoice`]) because the strict parser
//! refuses invoices without a features field, which real wallets (LNbits' FakeWallet among
//! them) issue; so every check the strict parser would do that matters here is done below:
//! the signature, the amount (an amountless invoice is refused: its price is whatever the
//! payer says), the expiry, and the payment hash against the macaroon's identifier.

use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lightning_invoice::{Currency, SignedRawBolt11Invoice};

pub use crate::lightning::{Network, hash_from_hex};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::PROTOCOL;
use crate::budget::macaroon::Macaroon;
use crate::pay::Offer;
use crate::pay::assets::Asset;

/// The longest `WWW-Authenticate` value read (a macaroon with a few caveats and an invoice
/// with route hints fit easily).
pub const MAX_CHALLENGE_BYTES: usize = 16 * 1024;
/// The longest BOLT11 invoice accepted, in characters.
pub const MAX_INVOICE_CHARS: usize = 7089;
/// The most L402 challenges read from one 402.
const MAX_CHALLENGES: usize = 8;

/// The Lightning network a BOLT11 currency prefix names.
fn network_of(currency: &Currency) -> Network {
    match currency {
        Currency::Bitcoin => Network::Bitcoin,
        Currency::BitcoinTestnet => Network::Testnet,
        Currency::Signet => Network::Signet,
        Currency::Regtest => Network::Regtest,
        Currency::Simnet => Network::Simnet,
    }
}

/// A BOLT11 invoice whose signature checked out and which names an amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// The invoice as received (lowercase, no `lightning:` prefix).
    pub bolt11: String,
    pub amount_msat: u64,
    pub payment_hash: [u8; 32],
    /// The payee's node id (33-byte compressed public key, hex): from the `n` field or
    /// recovered from the signature.
    pub payee: String,
    pub network: Network,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds after which the invoice cannot be paid.
    pub expires_at: u64,
}

impl Invoice {
    /// Decodes and checks an invoice: bech32 and BOLT11 layout, the signature, an amount in
    /// whole millisatoshis. Expiry and network are for the caller to judge ([`Invoice::check`]).
    pub fn decode(text: &str) -> Result<Invoice, String> {
        let text = text.trim();
        let text = text
            .strip_prefix("lightning:")
            .or_else(|| text.strip_prefix("LIGHTNING:"))
            .unwrap_or(text);
        if text.len() > MAX_INVOICE_CHARS {
            return Err(format!(
                "the invoice is longer than {MAX_INVOICE_CHARS} characters"
            ));
        }
        let signed = SignedRawBolt11Invoice::from_str(text)
            .map_err(|e| format!("the invoice is not a valid BOLT11 invoice ({e})"))?;
        if !signed.check_signature() {
            return Err("the invoice's signature is not valid".to_owned());
        }
        let raw = signed.raw_invoice();
        let pico = raw.amount_pico_btc().ok_or(
            "the invoice names no amount (amountless invoices are refused: their price would be \
             whatever the payer sends)",
        )?;
        if pico % 10 != 0 {
            return Err("the invoice's amount is not a whole number of millisatoshis".to_owned());
        }
        let amount_msat = pico / 10;
        if amount_msat == 0 {
            return Err("the invoice's amount is zero".to_owned());
        }
        let payment_hash: [u8; 32] = raw
            .payment_hash()
            .and_then(|h| <[u8; 32]>::try_from(AsRef::<[u8]>::as_ref(&h.0)).ok())
            .ok_or("the invoice has no payment hash")?;
        let payee = match raw.payee_pub_key() {
            Some(key) => hex::encode(key.0.serialize()),
            None => hex::encode(
                signed
                    .recover_payee_pub_key()
                    .map_err(|_| "the invoice's payee cannot be recovered from its signature")?
                    .0
                    .serialize(),
            ),
        };
        let created_at = raw.data.timestamp.as_unix_timestamp();
        let expiry = raw
            .expiry_time()
            .map(|e| e.as_seconds())
            .unwrap_or(lightning_invoice::DEFAULT_EXPIRY_TIME);
        Ok(Invoice {
            bolt11: text.to_ascii_lowercase(),
            amount_msat,
            payment_hash,
            payee,
            network: network_of(&raw.currency()),
            created_at,
            expires_at: created_at.saturating_add(expiry),
        })
    }

    /// Whether the invoice can be paid now on `network`: `Err` says why not.
    pub fn check(&self, network: Network, now: u64) -> Result<(), String> {
        if self.network != network {
            return Err(format!(
                "the invoice is for the Lightning network {}, but this tollgate pays on {network} \
                 (lightning.network)",
                self.network
            ));
        }
        if self.expires_at <= now {
            return Err(format!(
                "the invoice expired {} s ago",
                now.saturating_sub(self.expires_at)
            ));
        }
        Ok(())
    }

    pub fn payment_hash_hex(&self) -> String {
        hex::encode(self.payment_hash)
    }
}

/// The asset of every L402 offer: bitcoin, counted in millisatoshis, valued per sat (the
/// policy's `[rates] sat`). `amount_atomic` of an L402 offer is in millisatoshis.
pub fn asset() -> Asset {
    Asset {
        chain_id: 0,
        address: "BTC".to_owned(),
        symbol: "sat".to_owned(),
        decimals: 3,
        // Unknown until the policy gives a rate for a sat.
        usd_micros_per_unit: 0,
        sandbox: false,
    }
}

/// A challenge as an [`Offer`]: the amount in millisatoshis, the network as
/// `lightning:<name>`, the payee's node id; `raw` keeps macaroon and invoice.
pub fn offer(challenge: &L402Challenge, now: u64) -> Offer {
    let invoice = &challenge.invoice;
    Offer {
        protocol: PROTOCOL,
        scheme: challenge.scheme.clone(),
        network: invoice.network.offer_name(),
        chain_id: None,
        asset: "BTC".to_owned(),
        amount_atomic: u128::from(invoice.amount_msat),
        payee: invoice.payee.clone(),
        max_timeout_seconds: invoice.expires_at.saturating_sub(now),
        raw: challenge.to_raw(),
        resource: None,
        extensions: None,
    }
}

/// Whether an L402 offer can be paid on `network` now: its invoice decodes, is for that
/// network and has not expired. With no network (no backend), only the invoice is checked;
/// the missing backend is reported on its own.
pub fn payable(offer: &Offer, network: Option<Network>) -> Result<(), String> {
    let challenge = L402Challenge::from_raw(&offer.raw)?;
    let now = crate::money::now_unix();
    match network {
        Some(network) => challenge.invoice.check(network, now),
        None if challenge.invoice.expires_at <= now => Err("the invoice has expired".to_owned()),
        None => Ok(()),
    }
}

/// Whether `preimage` is the secret behind `payment_hash` (`sha256(preimage) == hash`).
pub fn preimage_matches(preimage: &[u8; 32], payment_hash: &[u8; 32]) -> bool {
    Sha256::digest(preimage).as_slice() == payment_hash
}

/// The payment hash in a macaroon identifier with aperture's layout: big-endian
/// `u16 version = 0 ‖ payment_hash[32] ‖ token_id[32]`. `None` for any other identifier.
pub fn identifier_payment_hash(identifier: &[u8]) -> Option<[u8; 32]> {
    if identifier.len() != 66 || identifier[..2] != [0, 0] {
        return None;
    }
    identifier[2..34].try_into().ok()
}

/// One L402 challenge as read from a `WWW-Authenticate` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L402Challenge {
    /// `L402` or `LSAT`, as the seller wrote it (the `Authorization` answer uses the same).
    pub scheme: String,
    /// The macaroon, base64 as received (standard or URL-safe).
    pub macaroon: String,
    pub invoice: Invoice,
    /// When the macaroon's caveats say the token stops being valid, if they say.
    pub token_expires_at: Option<u64>,
}

impl L402Challenge {
    /// The challenge as kept in an offer's `raw`.
    pub fn to_raw(&self) -> Value {
        json!({
            "scheme": self.scheme,
            "macaroon": self.macaroon,
            "invoice": self.invoice.bolt11,
            "payment_hash": self.invoice.payment_hash_hex(),
            "amount_msat": self.invoice.amount_msat.to_string(),
            "expires_at": self.invoice.expires_at,
            "token_expires_at": self.token_expires_at,
        })
    }

    /// The challenge back from an offer's `raw` (decoding the invoice again).
    pub fn from_raw(raw: &Value) -> Result<L402Challenge, String> {
        let text = |key: &str| {
            raw.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the L402 offer has no {key}"))
        };
        Ok(L402Challenge {
            scheme: text("scheme")?.to_owned(),
            macaroon: text("macaroon")?.to_owned(),
            invoice: Invoice::decode(text("invoice")?)?,
            token_expires_at: raw.get("token_expires_at").and_then(Value::as_u64),
        })
    }
}

/// Reads every L402/LSAT challenge in the `WWW-Authenticate` headers of a 402. Challenges of
/// other schemes are skipped (other protocols read them); an L402 challenge that cannot be
/// used is reported in `problems` with the reason. When a seller sends the same macaroon and
/// invoice as both `LSAT` and `L402` (as aperture does), one challenge is kept, the `L402` one.
pub fn read_challenges(headers: &HeaderMap, problems: &mut Vec<String>) -> Vec<L402Challenge> {
    let mut found: Vec<L402Challenge> = Vec::new();
    for value in headers.get_all("www-authenticate") {
        if value.len() > MAX_CHALLENGE_BYTES {
            problems.push(format!(
                "a WWW-Authenticate header longer than {MAX_CHALLENGE_BYTES} bytes was ignored"
            ));
            continue;
        }
        let Ok(text) = value.to_str() else {
            problems.push("a WWW-Authenticate header that is not ASCII was ignored".to_owned());
            continue;
        };
        for (scheme, params) in parse_www_authenticate(text) {
            if !scheme.eq_ignore_ascii_case("L402") && !scheme.eq_ignore_ascii_case("LSAT") {
                continue;
            }
            let scheme = scheme.to_ascii_uppercase();
            if found.len() >= MAX_CHALLENGES {
                problems.push(format!(
                    "more than {MAX_CHALLENGES} L402 challenges; the rest were ignored"
                ));
                return found;
            }
            match read_one(&scheme, &params) {
                Ok(challenge) => {
                    let same = found.iter_mut().find(|c| {
                        c.macaroon == challenge.macaroon
                            && c.invoice.bolt11 == challenge.invoice.bolt11
                    });
                    match same {
                        Some(c) if challenge.scheme == "L402" => c.scheme = challenge.scheme,
                        Some(_) => {}
                        None => found.push(challenge),
                    }
                }
                Err(reason) => problems.push(format!("{scheme} challenge: {reason}")),
            }
        }
    }
    found
}

fn read_one(scheme: &str, params: &[(String, String)]) -> Result<L402Challenge, String> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if let Some(version) = get("version")
        && version != "0"
    {
        return Err(format!(
            "version {:?} is not supported (only 0)",
            excerpt(version)
        ));
    }
    let macaroon = get("macaroon")
        .or_else(|| get("token"))
        .filter(|m| !m.is_empty())
        .ok_or("no macaroon= (or token=) parameter")?;
    let invoice_text = get("invoice")
        .filter(|i| !i.is_empty())
        .ok_or("no invoice= parameter")?;
    let invoice = Invoice::decode(invoice_text)?;
    let parsed = bound_macaroon(macaroon, &invoice)?;
    let token_expires_at = token_expiry(&parsed);
    Ok(L402Challenge {
        scheme: scheme.to_owned(),
        macaroon: macaroon.to_owned(),
        invoice,
        token_expires_at,
    })
}

/// The challenge's macaroon, decoded and bound to its invoice. The macaroon is the seller's;
/// tollgate reads it only to know that paying the invoice unlocks it (its identifier, in
/// aperture's layout, carries the invoice's payment hash) and when it expires. A macaroon that
/// cannot be read, or whose identifier does not carry that hash, is refused before anything is
/// paid: the preimage bought would unlock nothing tollgate can show.
fn bound_macaroon(macaroon: &str, invoice: &Invoice) -> Result<Macaroon, String> {
    let parsed = Macaroon::from_base64url(macaroon).map_err(|e| {
        format!(
            "the macaroon cannot be decoded as a libmacaroons V2 token ({e}), so tollgate cannot \
             check that paying the invoice unlocks it"
        )
    })?;
    let hash = identifier_payment_hash(parsed.identifier()).ok_or_else(|| {
        format!(
            "the macaroon's identifier ({} bytes) is not aperture's (u16 version 0, payment \
             hash, token id: 66 bytes), so it does not name the invoice's payment hash; paying \
             the invoice might not unlock this token",
            parsed.identifier().len()
        )
    })?;
    if hash != invoice.payment_hash {
        return Err(format!(
            "the invoice's payment hash {} is not the one in the macaroon ({}): paying it would \
             not unlock this token",
            invoice.payment_hash_hex(),
            hex::encode(hash)
        ));
    }
    Ok(parsed)
}

/// The earliest `<service>_valid_until=<unix seconds>` caveat of an aperture macaroon.
fn token_expiry(macaroon: &Macaroon) -> Option<u64> {
    macaroon
        .caveats()
        .iter()
        .filter_map(|c| {
            let text = std::str::from_utf8(c).ok()?;
            let (key, value) = text.split_once('=')?;
            key.trim()
                .ends_with("_valid_until")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .min()
}

/// The `Authorization` value that proves payment: `L402 <macaroon>:<hex preimage>`. The value
/// is marked sensitive: the preimage is a bearer credential.
pub fn authorization(
    scheme: &str,
    macaroon: &str,
    preimage: &[u8; 32],
) -> Result<HeaderValue, String> {
    let scheme = if scheme.eq_ignore_ascii_case("LSAT") {
        "LSAT"
    } else {
        "L402"
    };
    let mut value =
        HeaderValue::from_str(&format!("{scheme} {macaroon}:{}", hex::encode(preimage)))
            .map_err(|_| "the macaroon cannot be sent in a header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Whether `text` is standard or URL-safe base64 (as a macaroon is sent).
pub fn is_base64(text: &str) -> bool {
    B64.decode(text).is_ok()
        || base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .is_ok()
}

fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Splits a `WWW-Authenticate` value into challenges: `(scheme, [(name, value)])`. Follows
/// RFC 9110's grammar loosely and never fails: several challenges in one value are separated
/// by commas, a parameter is `name=token` or `name="quoted"`, and anything else (a token68, a
/// stray character) is skipped.
pub fn parse_www_authenticate(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    // Tokens are ASCII; they are cut from the bytes, never from `text`, because the skips
    // below move by bytes and may stop inside a multi-byte character.
    let ascii = |from: usize, to: usize| String::from_utf8_lossy(&bytes[from..to]).into_owned();
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < bytes.len() && is_tchar(bytes[*i]) {
            *i += 1;
        }
        ascii(start, *i)
    };
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            // Not a token: skip one character and look again.
            i += 1;
            continue;
        }
        let mut params = Vec::new();
        loop {
            skip_ws(&mut i);
            let mut after_comma = false;
            while i < bytes.len() && bytes[i] == b',' {
                i += 1;
                skip_ws(&mut i);
                after_comma = true;
            }
            if i >= bytes.len() {
                break;
            }
            let start = i;
            let name = token(&mut i);
            if name.is_empty() {
                // Something unreadable: skip to the next comma.
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                continue;
            }
            let mut j = i;
            skip_ws(&mut j);
            if j >= bytes.len() || bytes[j] != b'=' {
                if params.is_empty() && !after_comma {
                    // A token68 right after the scheme: not a parameter; skip it.
                    i = j;
                    continue;
                }
                // The next challenge's scheme.
                i = start;
                break;
            }
            i = j + 1;
            skip_ws(&mut i);
            let value = if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut value = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    value.push(char::from(bytes[i]));
                    i += 1;
                }
                i += 1; // the closing quote (or past the end)
                value
            } else {
                // token (base64 padding `=` included: some sellers do not quote)
                let start = i;
                while i < bytes.len()
                    && (is_tchar(bytes[i]) || bytes[i] == b'=' || bytes[i] == b'/')
                {
                    i += 1;
                }
                ascii(start, i)
            };
            params.push((name.to_ascii_lowercase(), value));
        }
        out.push((scheme, params));
        // Guard against no progress on odd input.
        if out.len() > 64 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real invoice from LNbits 1.6.2's FakeWallet: 21 sats, mainnet prefix, issued
    /// 2026-11-22T07:43:56Z, expiry 3600 s, no features field (the strict parser refuses it).
    pub const INVOICE_21: &str = "lnbc210n1p4s98fudqvwajkzargv4eqxqrrsssp5svwzvjapdnhf5uhevd37syjnnv6lf8tz50tdzgz8knv06wuprg7spp5kmkfwr0da8zkjxqjjuyyjfshdflx88nn6jsry6jyypsyua89m2mq8qcca97dzwjqxa6pmtffmjx2g4tk6jnr7r6j6tjy7ckdts6ej9c8a46c9zgy4qek8fmw5h67p8xlfk6z8gmpzvulfgxfjdwh9zn6z6spel5gz3";
    const HASH_21: &str = "b6ec970dede9c569181297084926176a7e639e73d4a0326a4420604e74e5dab6";
    const PREIMAGE_21: &str = "fa131a4fecb62a80be9cd43990787214c109ada4b09f62592ea38f7adeb6563d";
    /// A real LNbits invoice of 5 sats with `expiry = 1`.
    const INVOICE_EXPIRING: &str = "lnbc50n1p4s98fudq2f38xy6t5wvxqppsp5j5s3zzrnuq0ddel3nhhp2mlwjvz68u3kt8vx0w498hfxgn94dq6qpp5sr2pm8t3kkkq3zfn8a99eydrarmxqzysj779nhpla9pwwaaxkrzqsef4p35fxc74hw2dw5sj20ectwwvfv0tuseqwq522fxpm97q8d4x6n0j6naz44hneq90e2t9ymhdzrwfj77k2940jaja20jw79v72jqqusyt02";

    /// Signed with npm `bolt11` for these tests: no amount; 21 sats on regtest; 21 sats on
    /// mainnet. All with payment hash 00..01 and an expiry of ten years from 2026-11.
    const AMOUNTLESS: &str = "lnbc1p4s9r7spp5qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsdqvve5hsar4wfjsxqxfvcqcqcqpfvgcy9dfyhy6qt20nrf2yy7zn0807cntmcx2l78zrcc3z57c542j3hxxmhyrs49l0q0698vghw43clrrsvvpcz2asq2400ee332dda3squmcdsz";
    const REGTEST_21: &str = "lnbcrt210n1p4s9r7spp5qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsdqvve5hsar4wfjsxqxfvcqcqcqpflpalkj4rzv726yuj4mxa5adtmzj0zywnz0q0ml64fd4m9qawyp0n3pvpmqkemcff44vp2ldtafut3c69n4kr6lmhglm36tq55239j8qqcmzjar";
    const LONG_21: &str = "lnbc210n1p4s9r7spp5qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqsdqvve5hsar4wfjsxqxfvcqcqcqpfdn6jffk2exer0968e479vhrcdnpruv2drj9jv2pf07d6s98y7gypq0tluq09qqq3t86qqklzykgmppda0sfd06qcehy0cthyxuxljfgqv25w88";

    fn hash_01() -> [u8; 32] {
        let mut h = [0u8; 32];
        h[31] = 1;
        h
    }

    #[test]
    fn refuses_an_amountless_invoice() {
        let err = Invoice::decode(AMOUNTLESS).unwrap_err();
        assert!(err.contains("names no amount"), "{err}");
    }

    #[test]
    fn reads_the_network_from_the_prefix() {
        let inv = Invoice::decode(REGTEST_21).unwrap();
        assert_eq!(inv.network, Network::Regtest);
        assert_eq!(inv.amount_msat, 21_000);
        assert!(inv.check(Network::Bitcoin, inv.created_at).is_err());
        assert!(inv.check(Network::Regtest, inv.created_at).is_ok());
    }

    /// An x402 offer of 0.01 USDC and an L402 offer of 21 sats in one 402: the cheaper in
    /// micro-USD is chosen, whichever protocol it is.
    #[test]
    fn an_l402_offer_competes_with_x402_by_price() {
        use crate::budget::policy::{Allow, Policy};
        use crate::money::UsdMicros;
        use crate::pay::{Rules, choose};
        use crate::rails::read_challenge;
        use crate::rails::{Equipment, Rails};

        let mac = aperture_macaroon(hash_01(), &[]);
        let mut h = headers(&[&format!("L402 macaroon=\"{mac}\", invoice=\"{LONG_21}\"")]);
        let x402 = json!({"x402Version": 2, "accepts": [{"scheme": "exact", "network": "eip155:8453",
            "amount": "10000", "asset": "0x833589fCD6eDb6E08f4c3C32D4f71b54bdA02913",
            "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "maxTimeoutSeconds": 60,
            "extra": {"name": "USD Coin", "version": "2"}}]});
        h.insert(
            "payment-required",
            HeaderValue::from_str(&B64.encode(x402.to_string())).unwrap(),
        );
        let challenge = read_challenge(&h, b"");
        assert_eq!(challenge.offers.len(), 2, "{:?}", challenge.problems);

        // Never asked to pay here: choosing only needs to know the wallets are there.
        let lightning = crate::lightning::Lightning {
            backend: std::sync::Arc::new(
                crate::lightning::lnbits::Lnbits::new("http://127.0.0.1:9", "unused").unwrap(),
            ),
            network: Network::Bitcoin,
            max_fee_msat: 0,
            timeout: std::time::Duration::from_secs(1),
        };
        let rails = Rails::new(Equipment {
            evm: Some(
                crate::wallet::EvmWallet::from_hex(
                    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
                )
                .unwrap(),
            ),
            lightning: Some(lightning),
            ..Equipment::default()
        });
        let chosen = |sat_rate: u64| {
            let mut policy = Policy::builtin();
            policy.networks = Allow::Only(vec!["eip155:8453".into(), "lightning:bitcoin".into()]);
            policy.assets = Allow::Only(vec!["usdc".into(), "sat".into()]);
            policy.rates.insert("sat".into(), sat_rate);
            let assets = crate::pay::assets::builtin();
            let rules = Rules {
                policy: &policy,
                assets: &assets,
                tool_max: UsdMicros(50_000),
                tool: "t",
                rails: &rails,
                restrictions: None,
            };
            let quote = choose(&challenge, &rules).unwrap();
            (quote.offer.protocol, quote.usd)
        };
        // 1000 µUSD a sat: 21 sats = 0.021 USD > 0.01 USD.
        assert_eq!(
            chosen(1000),
            (crate::rails::x402::protocol(2), UsdMicros(10_000))
        );
        // 100 µUSD a sat: 21 sats = 0.0021 USD < 0.01 USD.
        assert_eq!(chosen(100), (PROTOCOL, UsdMicros(2_100)));
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("www-authenticate", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn aperture_macaroon(hash: [u8; 32], caveats: &[&str]) -> String {
        let mut id = vec![0u8, 0];
        id.extend_from_slice(&hash);
        id.extend_from_slice(&[7u8; 32]);
        let mut m = Macaroon::mint(b"seller-secret", &id, Some("lsat")).unwrap();
        for c in caveats {
            m.add_caveat(c.as_bytes()).unwrap();
        }
        B64.encode(m.serialize_v2())
    }

    fn hash21() -> [u8; 32] {
        hash_from_hex(HASH_21).unwrap()
    }

    #[test]
    fn decodes_a_real_lnbits_invoice_in_raw_mode() {
        let inv = Invoice::decode(INVOICE_21).unwrap();
        assert_eq!(inv.amount_msat, 21_000);
        assert_eq!(inv.payment_hash_hex(), HASH_21);
        assert_eq!(inv.network, Network::Bitcoin);
        assert_eq!(inv.expires_at, inv.created_at + 3600);
        assert_eq!(inv.payee.len(), 66);
        // The strict parser refuses it: this is why raw mode is used.
        assert!(lightning_invoice::Bolt11Invoice::from_str(INVOICE_21).is_err());
    }

    #[test]
    fn the_real_preimage_hashes_to_the_payment_hash() {
        let preimage = hash_from_hex(PREIMAGE_21).unwrap();
        assert!(preimage_matches(&preimage, &hash21()));
        assert!(!preimage_matches(&[0; 32], &hash21()));
    }

    #[test]
    fn refuses_a_tampered_invoice() {
        // Change one character of the data part (keeping the bech32 checksum valid is not
        // possible by hand, so both failures count: parse error or bad signature).
        let mut t = INVOICE_21.to_owned();
        t.replace_range(20..21, if &t[20..21] == "q" { "p" } else { "q" });
        assert!(Invoice::decode(&t).is_err());
        assert!(Invoice::decode("lnbc1notaninvoice").is_err());
        assert!(Invoice::decode(&"x".repeat(MAX_INVOICE_CHARS + 1)).is_err());
    }

    #[test]
    fn refuses_an_expired_invoice_and_another_network() {
        let inv = Invoice::decode(INVOICE_EXPIRING).unwrap();
        assert_eq!(inv.expires_at, inv.created_at + 1);
        let err = inv
            .check(Network::Bitcoin, inv.created_at + 10)
            .unwrap_err();
        assert!(err.contains("expired"), "{err}");
        let inv = Invoice::decode(INVOICE_21).unwrap();
        assert!(inv.check(Network::Bitcoin, inv.created_at + 5).is_ok());
        let err = inv.check(Network::Regtest, inv.created_at + 5).unwrap_err();
        assert!(err.contains("regtest"), "{err}");
    }

    #[test]
    fn reads_lsat_and_l402_challenges_as_one_offer() {
        let mac = aperture_macaroon(
            hash21(),
            &["services=weather:0", "weather_valid_until=1800000000"],
        );
        let lsat = format!("LSAT macaroon=\"{mac}\", invoice=\"{INVOICE_21}\"");
        let l402 = format!("L402 macaroon=\"{mac}\", invoice=\"{INVOICE_21}\"");
        let mut problems = vec![];
        let found = read_challenges(&headers(&[&lsat, &l402]), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].scheme, "L402");
        assert_eq!(found[0].token_expires_at, Some(1_800_000_000));
        assert_eq!(found[0].invoice.amount_msat, 21_000);
    }

    #[test]
    fn accepts_token_version_and_unknown_parameters_beside_other_schemes() {
        let mac = aperture_macaroon(hash21(), &[]);
        let value = format!(
            "Payment id=\"abc\", method=\"tempo\", LSAT version=\"0\", token=\"{mac}\", \
             realm=\"x\", invoice=\"{INVOICE_21}\", Bearer realm=\"y\""
        );
        let mut problems = vec![];
        let found = read_challenges(&headers(&[&value]), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].scheme, "LSAT");
        assert_eq!(found[0].macaroon, mac);
    }

    #[test]
    fn refuses_a_payment_hash_that_is_not_the_macaroons() {
        let mac = aperture_macaroon([9; 32], &[]);
        let mut problems = vec![];
        let found = read_challenges(
            &headers(&[&format!(
                "L402 macaroon=\"{mac}\", invoice=\"{INVOICE_21}\""
            )]),
            &mut problems,
        );
        assert!(found.is_empty());
        assert!(problems[0].contains("payment hash"), "{problems:?}");
    }

    #[test]
    fn refuses_a_macaroon_that_cannot_be_bound_to_the_invoice() {
        // A 40-byte identifier (not aperture's u16 version ‖ payment hash ‖ token id).
        let mut foreign = Macaroon::mint(b"seller-secret", &[5u8; 40], Some("lsat")).unwrap();
        foreign.add_caveat(b"services=weather:0").unwrap();
        let foreign = B64.encode(foreign.serialize_v2());
        // Aperture's layout with another version than 0.
        let mut id = vec![0u8, 1];
        id.extend_from_slice(&hash21());
        id.extend_from_slice(&[7u8; 32]);
        let version1 = Macaroon::mint(b"seller-secret", &id, Some("lsat")).unwrap();
        let version1 = B64.encode(version1.serialize_v2());
        for (macaroon, expect) in [
            ("AgJ0b2tlbg".to_owned(), "cannot be decoded"),
            (B64.encode(b"not a macaroon at all"), "cannot be decoded"),
            ("%%%".to_owned(), "cannot be decoded"),
            (foreign, "identifier"),
            (version1, "identifier"),
        ] {
            let mut problems = vec![];
            let found = read_challenges(
                &headers(&[&format!(
                    "L402 macaroon=\"{macaroon}\", invoice=\"{INVOICE_21}\""
                )]),
                &mut problems,
            );
            assert!(found.is_empty(), "{macaroon} was read as an offer");
            assert!(
                problems[0].contains(expect) && problems[0].contains("macaroon"),
                "{macaroon}: {problems:?}"
            );
        }
    }

    #[test]
    fn names_what_is_missing_or_unsupported() {
        let mac = aperture_macaroon(hash21(), &[]);
        for (value, expect) in [
            (format!("L402 invoice=\"{INVOICE_21}\""), "no macaroon="),
            (format!("L402 macaroon=\"{mac}\""), "no invoice="),
            (
                format!("L402 version=\"1\", macaroon=\"{mac}\", invoice=\"{INVOICE_21}\""),
                "version",
            ),
            (
                format!("L402 macaroon=\"{mac}\", invoice=\"lnbc1xyz\""),
                "not a valid BOLT11",
            ),
        ] {
            let mut problems = vec![];
            let found = read_challenges(&headers(&[&value]), &mut problems);
            assert!(found.is_empty(), "{value}");
            assert!(problems[0].contains(expect), "{value}: {problems:?}");
        }
    }

    #[test]
    fn odd_headers_never_panic() {
        for value in [
            "",
            ",,,",
            "L402",
            "L402 ,",
            "L402 macaroon=",
            "L402 macaroon=\"unterminated",
            "Basic abc==",
            "L402 a b c = = ,\"",
            "= = =",
            "L402 macaroon=\"\\",
        ] {
            let mut problems = vec![];
            let _ = read_challenges(&headers(&[value]), &mut problems);
            let _ = parse_www_authenticate(value);
        }
    }

    #[test]
    fn the_authorization_header_carries_macaroon_and_preimage() {
        let preimage = hash_from_hex(PREIMAGE_21).unwrap();
        let value = authorization("L402", "AgEE", &preimage).unwrap();
        assert_eq!(value.to_str().unwrap(), format!("L402 AgEE:{PREIMAGE_21}"));
        assert!(value.is_sensitive());
        let value = authorization("lsat", "AgEE", &preimage).unwrap();
        assert!(value.to_str().unwrap().starts_with("LSAT "));
    }

    #[test]
    fn skips_non_ascii_text_between_challenges() {
        // Found by the `l402` fuzz target: skipping a byte of a multi-byte character, then
        // cutting a token at it, panicked.
        assert!(parse_www_authenticate("\u{499}\u{b}").is_empty());
        let parsed = parse_www_authenticate("é L402 macaroon=\"m\", invoice=lnbc1");
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, "L402");
        assert_eq!(parsed[0].1[1], ("invoice".to_owned(), "lnbc1".to_owned()));
    }

    #[test]
    fn parses_several_challenges_in_one_value() {
        let parsed = parse_www_authenticate(
            "Basic realm=\"a\", L402 macaroon=\"m==\", invoice=lnbc1, Payment id=\"p\"",
        );
        let schemes: Vec<&str> = parsed.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(schemes, ["Basic", "L402", "Payment"]);
        assert_eq!(parsed[1].1[0], ("macaroon".to_owned(), "m==".to_owned()));
        assert_eq!(parsed[1].1[1], ("invoice".to_owned(), "lnbc1".to_owned()));
    }
}
