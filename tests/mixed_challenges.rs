//! One 402 carrying both an L402 and an MPP `Payment` challenge, as aperture sends them: tollgate
//! pays the one that is cheaper in micro-USD, and the choice flips when the prices do. Both
//! challenges are real: the L402 one from the aperture-style seller (invoices from LNbits), the
//! `Payment` one from mppx on anvil's Tempo mode. A small front in this test merges their 402s
//! into one answer and routes the paid retry to the seller whose scheme it carries. The
//! sellers' ledgers are the judge: LNbits balances and the pathUSD balance on chain.

mod support;

use std::time::Duration;

use serde_json::json;
use support::mcp::{Mode, drive, python};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The MPP price: mppx's `/weather`, 0.01 pathUSD = 10 000 µUSD.
const MPP_USD_MICROS: u64 = 10_000;
/// The policy values a sat at 0.0005 USD: the L402 seller's 21 sats (`normal`) are 10 500 µUSD,
/// dearer than MPP; its `bait` route, set to 15 sats here, is 7 500 µUSD, cheaper.
const SAT_RATE: &str = "0.0005 USD";

/// A front that answers an unpaid request with both sellers' 402 challenges in one response,
/// and forwards a paid one (`Authorization: L402 …` or `Payment …`) to its seller.
/// `routes` maps a front path to (L402 seller URL, MPP seller URL).
async fn front(routes: Vec<(String, String, String)>) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (http, routes) = (http.clone(), routes.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let header = |name: &str| {
                    text.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case(name)
                            .then(|| v.trim().to_owned())
                    })
                };
                let Some((_, l402, mpp)) = routes.iter().find(|(p, _, _)| *p == path) else {
                    let _ = socket
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                };
                let get = |url: &str| {
                    let mut request = http.get(url);
                    for name in ["authorization", "accept-payment"] {
                        if let Some(value) = header(name) {
                            request = request.header(name, value);
                        }
                    }
                    request.send()
                };
                let authorization = header("authorization").unwrap_or_default();
                let answers = if authorization.is_empty() {
                    vec![get(l402).await, get(mpp).await]
                } else if authorization.starts_with("Payment ") {
                    vec![get(mpp).await]
                } else {
                    vec![get(l402).await]
                };
                let mut status = 402;
                let mut headers = Vec::new();
                let mut body = Vec::new();
                for answer in answers {
                    let Ok(answer) = answer else { return };
                    status = answer.status().as_u16();
                    for (name, value) in answer.headers() {
                        if ["www-authenticate", "payment-receipt", "content-type"]
                            .contains(&name.as_str())
                        {
                            headers.push(format!(
                                "{name}: {}\r\n",
                                value.to_str().unwrap_or_default()
                            ));
                        }
                    }
                    body = answer.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                }
                let mut response = format!("HTTP/1.1 {status} X\r\n");
                response.extend(headers);
                response.push_str(&format!(
                    "content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                ));
                let mut bytes = response.into_bytes();
                bytes.extend(body);
                let _ = socket.write_all(&bytes).await;
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread")]
async fn a_402_with_l402_and_payment_pays_the_cheaper_and_flips_with_the_prices() {
    let Some(python) = python() else { return };
    let Some(lightning) = support::l402_peer::start_with(&[("BAIT_SATS", "15")]).await else {
        return;
    };
    let Some(tempo) = support::mpp_peer::start().await else {
        return;
    };
    let mppx = tempo.str("/mppx/seller");
    let base = front(vec![
        (
            "/l402-cheaper".to_owned(),
            lightning.seller_url("bait", "weather"),
            format!("{mppx}/weather"),
        ),
        (
            "/mpp-cheaper".to_owned(),
            lightning.seller_url("normal", "forecast"),
            format!("{mppx}/weather"),
        ),
    ])
    .await;

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    let (rpc, path_usd) = (tempo.str("/rpc"), tempo.str("/tokens/pathUSD"));
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            r#"tools_dir = "tools"
state_dir = "state"
policy = "test"
[[assets]]
network = "tempo:31337"
address = "{path_usd}"
symbol = "pathUSD"
decimals = 6
[wallet.tempo]
rpc_url = "{rpc}"
chain_id = 31337
[lightning]
backend = "lnbits"
url = "{}"
network = "bitcoin"
max_fee_msat = 2000
timeout_secs = 20
"#,
            lightning.lnbits_url()
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/test.toml"),
        format!(
            "[caps]\nper_call = \"0.05 USD\"\n[allow]\nnetworks = [\"lightning:bitcoin\", \
             \"tempo:31337\"]\nassets = [\"sat\", \"pathUSD\"]\n[rates]\nsat = \"{SAT_RATE}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("tools/mixed.toml"),
        format!(
            "[[tool]]\nname = \"l402_cheaper\"\ndescription = \"both challenges\"\n\
             url = \"{base}/l402-cheaper\"\nmax_price = \"0.05 USD\"\n\n\
             [[tool]]\nname = \"mpp_cheaper\"\ndescription = \"both challenges\"\n\
             url = \"{base}/mpp-cheaper\"\nmax_price = \"0.05 USD\"\n"
        ),
    )
    .unwrap();

    let (key, _payer) = tempo.buyer(4);
    let recipient = tempo.str("/mppx/recipient");
    let path_usd_before = tempo.path_usd(&recipient).await;
    let payee_before = lightning.balance_msat("payee").await;
    let admin = lightning.payer_admin_key();
    let step = |name: &str| json!({"op": "call_tool", "name": name, "arguments": {}});
    let check =
        |name: &str| json!({"op": "call_tool", "name": "price_check", "arguments": {"tool": name}});
    let report = drive(
        &python,
        Mode::Stateless,
        &p.join("tollgate.toml"),
        &[
            ("TOLLGATE_EVM_KEY", key.as_str()),
            ("TOLLGATE_LNBITS_ADMIN_KEY", admin.as_str()),
        ],
        json!([
            check("l402_cheaper"),
            step("l402_cheaper"),
            check("mpp_cheaper"),
            step("mpp_cheaper")
        ]),
    )
    .await;
    let result = |i: usize| &report["steps"][i]["result"];

    // Both offers are read from the one 402, and both are payable: the price decides.
    for (i, cheaper) in [(0, "l402"), (2, "mpp")] {
        let priced = &result(i)["structuredContent"];
        let offers = priced["offers"].as_array().expect("offers");
        let protocols: Vec<&str> = offers
            .iter()
            .filter_map(|o| o["protocol"].as_str())
            .collect();
        assert!(
            protocols.contains(&"l402") && protocols.contains(&"mpp"),
            "{priced}"
        );
        assert!(offers.iter().all(|o| o["payable"] == true), "{priced}");
        assert_eq!(priced["would_pay"]["protocol"], cheaper, "{priced}");
    }

    // 15 sats (7 500 µUSD) against 10 000 µUSD: paid over Lightning.
    let paid = &result(1)["structuredContent"]["payment"];
    assert_eq!(paid["protocol"], "l402", "{}", result(1));
    assert_eq!(paid["amount_usd_micros"], 7_500, "{paid}");
    assert_eq!(
        lightning.balance_msat("payee").await - payee_before,
        15_000,
        "the Lightning payee got the invoice"
    );
    // 21 sats (10 500 µUSD) against 10 000 µUSD: paid through MPP on Tempo.
    let paid = &result(3)["structuredContent"]["payment"];
    assert_eq!(paid["protocol"], "mpp", "{}", result(3));
    assert_eq!(paid["amount_usd_micros"], MPP_USD_MICROS, "{paid}");
    assert_eq!(
        tempo.path_usd(&recipient).await - path_usd_before,
        u128::from(MPP_USD_MICROS),
        "the MPP recipient got exactly one charge"
    );
    assert_eq!(
        lightning.balance_msat("payee").await - payee_before,
        15_000,
        "the dearer L402 offer was not paid"
    );
}
