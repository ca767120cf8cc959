//! The LND REST backend against an in-process HTTP server that implements LND's documented
//! shapes: `POST /v2/router/send` (SendPaymentV2: `payment_request`, `fee_limit_msat`,
//! `timeout_seconds`, macaroon in `Grpc-Metadata-macaroon`, an answer stream of one JSON
//! object per line) and `GET /v2/router/track/<hash, base64url>` (TrackPaymentV2). There is no
//! offline lnd to run; LNbits is the real peer for paying (tests/l402_sellers.rs).

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::upstream::{Reply, Seen, TestUpstream};
use tollgate::lightning::lnd::LndRest;
use tollgate::lightning::{BackendError, LightningBackend, Paid, PaymentStatus};

const MACAROON_HEX: &str = "0201036c6e640224030a10a1b2c3d4e5f60718293a4b5c6d7e8f901201301a160a0761646472657373120472656164120577726974651a130a04696e666f120472656164";
const INVOICE: &str = "lnbc210n1p4s98fudqvwajkzargv4eqxqrrsssp5svwzvjapdnhf5uhevd37syjnnv6lf8tz50tdzgz8knv06wuprg7spp5kmkfwr0da8zkjxqjjuyyjfshdflx88nn6jsry6jyypsyua89m2mq8qcca97dzwjqxa6pmtffmjx2g4tk6jnr7r6j6tjy7ckdts6ej9c8a46c9zgy4qek8fmw5h67p8xlfk6z8gmpzvulfgxfjdwh9zn6z6spel5gz3";
const HASH: &str = "b6ec970dede9c569181297084926176a7e639e73d4a0326a4420604e74e5dab6";
const PREIMAGE: &str = "fa131a4fecb62a80be9cd43990787214c109ada4b09f62592ea38f7adeb6563d";

fn payment(status: &str, extra: Value) -> Value {
    let mut p = json!({
        "payment_hash": HASH, "value_msat": "21000", "status": status,
        "creation_time_ns": "1795330000000000000", "htlcs": [],
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// An answer stream: one `{"result": ...}` per line, as the REST gateway sends it.
fn stream(updates: &[Value]) -> Reply {
    let body: String = updates
        .iter()
        .map(|u| format!("{}\n", json!({ "result": u })))
        .collect();
    Reply::text(200, "application/json", &body)
}

fn lnd(server: &TestUpstream) -> LndRest {
    let _ = rustls::crypto::ring::default_provider().install_default();
    LndRest::new(&server.base(), MACAROON_HEX, None).unwrap()
}

fn hash() -> [u8; 32] {
    hex::decode(HASH).unwrap().try_into().unwrap()
}

fn send_route(seen: &Seen) -> Reply {
    let authorized = seen.header("grpc-metadata-macaroon") == Some(MACAROON_HEX);
    if seen.method != "POST" || seen.path() != "/v2/router/send" || !authorized {
        return Reply::json(
            401,
            json!({"code": 16, "message": "verification failed: signature mismatch"}),
        );
    }
    stream(&[
        payment("IN_FLIGHT", json!({})),
        payment(
            "SUCCEEDED",
            json!({"payment_preimage": PREIMAGE, "fee_msat": "12", "fee_sat": "0"}),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_pays_with_macaroon_fee_limit_and_timeout() {
    let server = TestUpstream::start(send_route).await;
    let paid = lnd(&server)
        .pay(INVOICE, 5_000, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        paid,
        Paid {
            preimage: hex::decode(PREIMAGE).unwrap().try_into().unwrap(),
            fee_msat: 12
        }
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        json!({"payment_request": INVOICE, "fee_limit_msat": "5000", "timeout_seconds": 30,
               "no_inflight_updates": true})
    );
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_failed_payment_is_refused_with_its_reason() {
    let server = TestUpstream::start(|_: &Seen| {
        stream(&[payment(
            "FAILED",
            json!({"failure_reason": "FAILURE_REASON_NO_ROUTE"}),
        )])
    })
    .await;
    let err = lnd(&server)
        .pay(INVOICE, 1_000, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Refused(r) if r.contains("FAILURE_REASON_NO_ROUTE")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_stream_error_before_paying_is_refused_and_names_no_secret() {
    let server = TestUpstream::start(|_: &Seen| {
        Reply::text(
            200,
            "application/json",
            "{\"error\":{\"code\":2,\"message\":\"invoice expired. Valid until 2026-11-22\"}}\n",
        )
    })
    .await;
    let err = lnd(&server)
        .pay(INVOICE, 1_000, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Refused(r) if r.contains("invoice expired")),
        "{err:?}"
    );
    assert!(!err.to_string().contains(MACAROON_HEX));
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_already_paid_or_server_error_is_an_unknown_outcome() {
    let server = TestUpstream::start(|_: &Seen| {
        Reply::text(
            200,
            "application/json",
            "{\"error\":{\"code\":6,\"message\":\"invoice is already paid\"}}\n",
        )
    })
    .await;
    let err = lnd(&server)
        .pay(INVOICE, 1_000, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Unknown(_)), "{err:?}");

    let server =
        TestUpstream::start(|_: &Seen| Reply::json(503, json!({"message": "overloaded"}))).await;
    let err = lnd(&server)
        .pay(INVOICE, 1_000, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unknown(r) if r.contains("503")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_wrong_macaroon_is_refused() {
    let server = TestUpstream::start(send_route).await;
    let other = LndRest::new(&server.base(), "abcd", None).unwrap();
    let err = other
        .pay(INVOICE, 1_000, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Refused(r) if r.contains("401") && r.contains("verification failed")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_answer_larger_than_the_cap_is_an_unknown_outcome() {
    let server = TestUpstream::start(|_: &Seen| Reply::Trickle {
        status: 200,
        content_type: "application/json".into(),
        chunk: vec![b' '; 64 * 1024],
        count: 16,
        delay: Duration::from_millis(1),
    })
    .await;
    let err = lnd(&server)
        .pay(INVOICE, 1_000, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Unknown(r) if r.contains("larger than")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_track_reports_succeeded_in_flight_and_never_sent() {
    let path = format!(
        "/v2/router/track/{}",
        base64::engine::general_purpose::URL_SAFE.encode(hash())
    );
    let server = TestUpstream::start(move |seen: &Seen| {
        if seen.path() != path || seen.header("grpc-metadata-macaroon") != Some(MACAROON_HEX) {
            return Reply::json(404, json!({"message": "Not Found"}));
        }
        stream(&[payment(
            "SUCCEEDED",
            json!({"payment_preimage": PREIMAGE, "fee_msat": "3"}),
        )])
    })
    .await;
    match lnd(&server).status(&hash()).await.unwrap() {
        PaymentStatus::Succeeded(paid) => assert_eq!(paid.fee_msat, 3),
        other => panic!("{other:?}"),
    }

    let server = TestUpstream::start(|_: &Seen| stream(&[payment("IN_FLIGHT", json!({}))])).await;
    assert_eq!(
        lnd(&server).status(&hash()).await.unwrap(),
        PaymentStatus::InFlight
    );

    let server = TestUpstream::start(|_: &Seen| {
        Reply::json(
            500,
            json!({"code": 2, "message": "payment isn't initiated"}),
        )
    })
    .await;
    let status = lnd(&server).status(&hash()).await.unwrap();
    assert!(matches!(status, PaymentStatus::Failed(_)), "{status:?}");
}

/// A blocking HTTP/1.1 POST (the in-process server's routes are synchronous).
fn post_blocking(base: &str, path: &str, key: &str, body: &str) -> Value {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Api-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (_, body) = reply.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

/// The whole path with `backend = "lnd"`: a real MCP client calls tollgate, which pays the real
/// seller's LNbits invoice through an in-process LND (it settles each `SendPaymentV2` by paying
/// the invoice from the LNbits payer wallet and answers with LND's stream shape).
#[tokio::test(flavor = "multi_thread")]
async fn in_process_lnd_pays_a_real_seller_through_a_real_mcp_client() {
    let Some(python) = support::mcp::python() else {
        return;
    };
    let Some(peers) = support::l402_peer::start().await else {
        return;
    };
    let (lnbits, payer_key) = (peers.lnbits_url(), peers.payer_admin_key());
    let server = TestUpstream::start(move |seen: &Seen| {
        if seen.path() != "/v2/router/send"
            || seen.header("grpc-metadata-macaroon") != Some(MACAROON_HEX)
        {
            return Reply::json(401, json!({"code": 16, "message": "permission denied"}));
        }
        let request: Value = serde_json::from_slice(&seen.body).unwrap();
        let bolt11 = request["payment_request"].as_str().unwrap();
        let paid = post_blocking(
            &lnbits,
            "/api/v1/payments",
            &payer_key,
            &json!({"out": true, "bolt11": bolt11}).to_string(),
        );
        let fee = paid["fee"].as_i64().unwrap_or(0).unsigned_abs();
        stream(&[payment(
            "SUCCEEDED",
            json!({"payment_hash": paid["payment_hash"], "payment_preimage": paid["preimage"],
                   "fee_msat": fee.to_string()}),
        )])
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\nstate_dir = \"state\"\npolicy = \"test\"\n[lightning]\n\
             backend = \"lnd\"\nurl = \"{}\"\nnetwork = \"bitcoin\"\nmax_fee_msat = 3000\n",
            server.base()
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("policies/test.toml"),
        "[allow]\nnetworks = [\"lightning:bitcoin\"]\nassets = [\"sat\"]\n[rates]\nsat = \"0.001 USD\"\n",
    )
    .unwrap();
    std::fs::write(
        p.join("tools/l402.toml"),
        format!(
            "[[tool]]\nname = \"weather\"\ndescription = \"L402 seller\"\nurl = \"{}\"\n\
             max_price = \"0.05 USD\"\n",
            peers.seller_url("normal", "weather")
        ),
    )
    .unwrap();

    let payee0 = peers.balance_msat("payee").await;
    let (report, logs) = support::mcp::drive_with_logs(
        &python,
        support::mcp::Mode::Legacy,
        &p.join("tollgate.toml"),
        &[("TOLLGATE_LND_MACAROON", MACAROON_HEX)],
        json!([{"op": "call_tool", "name": "weather", "arguments": {}}]),
    )
    .await;
    let result = &report["steps"][0]["result"];
    assert_ne!(result["isError"], json!(true), "{result}\n{logs}");
    assert_eq!(result["structuredContent"]["result"]["forecast"], "sunny");
    let receipt = &result["structuredContent"]["payment"];
    assert_eq!(receipt["backend"], "lnd", "{receipt}");
    assert_eq!(receipt["amount_msat"], "21000");
    assert_eq!(peers.balance_msat("payee").await, payee0 + 21_000);
    // What tollgate sent LND: the seller's invoice, the configured fee cap, the macaroon.
    let sent: Value = serde_json::from_slice(&server.seen()[0].body).unwrap();
    assert_eq!(sent["fee_limit_msat"], "3000");
    assert_eq!(sent["timeout_seconds"], 60);
    assert!(
        !logs.contains(MACAROON_HEX),
        "the macaroon is in tollgate's logs"
    );
}
