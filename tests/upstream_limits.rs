//! Upstream calls keep their limits against servers that misbehave.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::upstream::{Reply, TestUpstream};
use tollgate::catalog::UpstreamRequest;
use tollgate::config::UpstreamDefaults;
use tollgate::upstream::{Answer, Limits, Upstream, UpstreamError};

fn get(url: String) -> UpstreamRequest {
    UpstreamRequest {
        method: reqwest::Method::GET,
        url: url.parse().unwrap(),
        headers: Default::default(),
        body: None,
    }
}

const LIMITS: Limits = Limits {
    timeout: Duration::from_secs(5),
    max_response_bytes: 1024,
};

async fn call(url: String, limits: Limits) -> Result<Answer, UpstreamError> {
    Upstream::new(&UpstreamDefaults::default())
        .call(get(url), limits, |_| {})
        .await
        .map(|reply| reply.answer)
}

#[tokio::test]
async fn json_and_text_answers_come_back_as_such() {
    let up = TestUpstream::start(|seen| match seen.path() {
        "/json" => Reply::json(200, json!({"temp": 21})),
        _ => Reply::text(200, "text/plain; charset=utf-8", "hello"),
    })
    .await;
    let Ok(Answer::Json(v)) = call(format!("{}/json", up.base()), LIMITS).await else {
        panic!()
    };
    assert_eq!(v, json!({"temp": 21}));
    let Ok(Answer::Text(t)) = call(format!("{}/text", up.base()), LIMITS).await else {
        panic!()
    };
    assert_eq!(t, "hello");
}

#[tokio::test]
async fn refuses_a_body_larger_than_the_limit_by_content_length() {
    let up = TestUpstream::start(|_| Reply::text(200, "text/plain", &"x".repeat(4096))).await;
    let err = call(up.base(), LIMITS).await.unwrap_err();
    assert!(
        matches!(err, UpstreamError::TooLarge { limit: 1024, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn stops_reading_a_streamed_body_at_the_limit() {
    // 1 GiB promised as a stream; tollgate must stop after 1 KiB, not read it all.
    let up = TestUpstream::start(|_| Reply::Trickle {
        status: 200,
        content_type: "application/json".into(),
        chunk: vec![b' '; 64 * 1024],
        count: 16 * 1024,
        delay: Duration::from_millis(1),
    })
    .await;
    let started = Instant::now();
    let err = call(up.base(), LIMITS).await.unwrap_err();
    assert!(matches!(err, UpstreamError::TooLarge { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "kept reading: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_times_out() {
    let up = TestUpstream::start(|_| Reply::Hang).await;
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..LIMITS
    };
    let err = call(up.base(), limits).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("300 ms"), "{err}");
}

#[tokio::test]
async fn a_slow_body_counts_against_the_whole_call_timeout() {
    let up = TestUpstream::start(|_| Reply::Trickle {
        status: 200,
        content_type: "text/plain".into(),
        chunk: b"x".to_vec(),
        count: 100,
        delay: Duration::from_millis(50),
    })
    .await;
    let limits = Limits {
        timeout: Duration::from_millis(400),
        ..LIMITS
    };
    let err = call(up.base(), limits).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn server_errors_carry_status_and_a_short_excerpt() {
    let up = TestUpstream::start(|_| {
        Reply::text(
            500,
            "text/plain",
            &format!("database\x07 on fire {}", "!".repeat(5000)),
        )
    })
    .await;
    let err = call(up.base(), LIMITS).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("500 Internal Server Error"), "{text}");
    assert!(text.contains("database on fire"), "{text}");
    assert!(text.len() < 500, "excerpt too long: {}", text.len());
}

#[tokio::test]
async fn follows_redirects_within_the_origin_only() {
    let other = TestUpstream::start(|_| Reply::json(200, json!({"evil": true}))).await;
    let other_url = other.base();
    let up = TestUpstream::start(move |seen| match seen.path() {
        "/old" => Reply::text(302, "text/plain", "").with_header("Location", "/new"),
        "/new" => Reply::json(200, json!({"moved": true})),
        _ => Reply::text(302, "text/plain", "").with_header("Location", &format!("{other_url}/x")),
    })
    .await;
    let Ok(Answer::Json(v)) = call(format!("{}/old", up.base()), LIMITS).await else {
        panic!()
    };
    assert_eq!(v, json!({"moved": true}));
    let err = call(format!("{}/away", up.base()), LIMITS)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Redirect { .. }), "{err}");
    assert!(other.seen().is_empty(), "the other origin was contacted");
}

#[tokio::test]
async fn a_same_origin_redirect_loop_is_named_with_the_count_and_the_limit() {
    let up = TestUpstream::start(|seen| match seen.path() {
        "/a" => Reply::text(302, "text/plain", "").with_header("Location", "/b"),
        _ => Reply::text(302, "text/plain", "").with_header("Location", "/a"),
    })
    .await;
    let limit = UpstreamDefaults::default().max_redirects;
    let err = call(format!("{}/a", up.base()), LIMITS).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, UpstreamError::TooManyRedirects { count, limit: l, .. } if count == limit + 1 && l == limit),
        "{text}"
    );
    assert!(!text.contains("another origin"), "{text}");
    assert!(text.contains("redirect loop"), "{text}");
    assert!(
        text.contains(&format!("{} redirects", limit + 1))
            && text.contains(&format!("limit is {limit}")),
        "{text}"
    );
    assert_eq!(up.seen().len(), limit + 1, "one request per hop, then stop");
}

#[tokio::test]
async fn refuses_binary_and_broken_json() {
    let up = TestUpstream::start(|seen| match seen.path() {
        "/png" => Reply::text(200, "image/png", "\u{89}PNG"),
        _ => Reply::text(200, "application/json", "{\"a\": "),
    })
    .await;
    let err = call(format!("{}/png", up.base()), LIMITS)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("image/png"), "{err}");
    let err = call(format!("{}/bad", up.base()), LIMITS)
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::InvalidJson { .. }), "{err}");
}

#[tokio::test]
async fn a_402_is_handed_back_with_its_headers() {
    let up = TestUpstream::start(|_| {
        Reply::json(402, json!({"x402Version": 1, "accepts": []}))
            .with_header("WWW-Authenticate", "L402 macaroon=\"m\", invoice=\"i\"")
    })
    .await;
    let reply = Upstream::new(&UpstreamDefaults::default())
        .call(get(up.base()), LIMITS, |_| {})
        .await
        .unwrap();
    let Answer::PaymentRequired { body } = reply.answer else {
        panic!()
    };
    assert!(reply.headers.get("www-authenticate").is_some());
    assert!(body.starts_with(b"{"));
}

#[tokio::test]
async fn connection_refused_is_named() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = call(format!("http://{addr}/"), LIMITS).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Connect { .. }), "{err}");
}
