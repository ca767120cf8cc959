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
