//! LND's REST API (the gRPC gateway): pays with a macaroon in `Grpc-Metadata-macaroon`.
//!
//! * pay: `POST /v2/router/send` (SendPaymentV2) with `payment_request`, `fee_limit_msat`,
//!   `timeout_seconds` and `no_inflight_updates: true`. The answer is a stream of JSON
//!   objects, one per line, each `{"result": Payment}` or `{"error": {code, message}}`; the
//!   payment's `status` ends as `SUCCEEDED` (with `payment_preimage` in hex and `fee_msat`) or
//!   `FAILED` (with `failure_reason`).
//! * status: `GET /v2/router/track/<payment hash, base64url>` (TrackPaymentV2): the first
//!   object is the payment's current state; an error saying the payment is not known means it
//!   was never sent.

use std::time::Duration;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::hash_from_hex;
use super::{
    BackendError, LightningBackend, MAX_BACKEND_REPLY_BYTES, Paid, PaymentStatus, STATUS_TIMEOUT,
    SetupError, base_url, client, excerpt, transport,
};

/// Seconds added to the payment's own timeout before tollgate stops waiting for LND.
const GRACE_SECS: u64 = 10;

/// An LND node reached over REST.
pub struct LndRest {
    base: String,
    macaroon: HeaderValue,
    http: reqwest::Client,
}

impl LndRest {
    /// `macaroon_hex` is the macaroon (admin or one allowed to send payments) in hex;
    /// `tls_cert_pem` LND's self-signed certificate, if it is not publicly trusted.
    pub fn new(
        url: &str,
        macaroon_hex: &str,
        tls_cert_pem: Option<&[u8]>,
    ) -> Result<LndRest, SetupError> {
        if macaroon_hex.is_empty() || hex::decode(macaroon_hex).is_err() {
            return Err(SetupError::Invalid(
                "the LND macaroon must be given in hex".to_owned(),
            ));
        }
        let mut macaroon = HeaderValue::from_str(macaroon_hex)
            .map_err(|_| SetupError::Invalid("the LND macaroon is not valid hex".to_owned()))?;
        macaroon.set_sensitive(true);
        Ok(LndRest {
            base: base_url(url)?,
            macaroon,
            http: client(tls_cert_pem)?,
        })
    }

    fn header() -> HeaderName {
        HeaderName::from_static("grpc-metadata-macaroon")
    }
}

/// One object of LND's answer stream, sorted.
enum Update {
    Succeeded(Paid),
    Failed(String),
    InFlight,
    Error(String),
}

fn read_update(line: &[u8]) -> Result<Update, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|_| format!("not JSON: {}", excerpt(line)))?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Ok(Update::Error(excerpt(message.as_bytes())));
    }
    let payment = value.get("result").unwrap_or(&value);
    let status = payment.get("status").and_then(Value::as_str).unwrap_or("");
    match status {
        "SUCCEEDED" => {
            let preimage = payment
                .get("payment_preimage")
                .and_then(Value::as_str)
                .and_then(hash_from_hex)
                .ok_or("SUCCEEDED without a 32-byte hex payment_preimage")?;
            let fee_msat = match payment.get("fee_msat") {
                Some(Value::String(s)) => {
                    s.parse::<u64>().map_err(|_| "fee_msat is not a count")?
                }
                Some(Value::Number(n)) => n.as_u64().ok_or("fee_msat is not a count")?,
                _ => 0,
            };
            Ok(Update::Succeeded(Paid { preimage, fee_msat }))
        }
        "FAILED" => Ok(Update::Failed(
            payment
                .get("failure_reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned(),
        )),
        "IN_FLIGHT" | "INITIATED" | "UNKNOWN" => Ok(Update::InFlight),
        other => Err(format!(
            "unknown payment status {:?}",
            excerpt(other.as_bytes())
        )),
    }
}

/// Reads the answer stream line by line, up to [`MAX_BACKEND_REPLY_BYTES`], until `done`
/// says stop. Returns the last update read.
async fn read_stream(
    mut response: reqwest::Response,
    done: impl Fn(&Update) -> bool,
) -> Result<Update, String> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut last = None;
    loop {
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let update = read_update(line)?;
            if done(&update) {
                return Ok(update);
            }
            last = Some(update);
        }
        match response.chunk().await.map_err(transport)? {
            Some(chunk) => {
                total += chunk.len();
                if total > MAX_BACKEND_REPLY_BYTES {
                    return Err(format!(
                        "the answer is larger than {MAX_BACKEND_REPLY_BYTES} bytes"
                    ));
                }
                buffer.extend_from_slice(&chunk);
            }
            None => {
                let rest = buffer.trim_ascii();
                if !rest.is_empty() {
                    return read_update(rest);
                }
                return last.ok_or_else(|| "the answer was empty".to_owned());
            }
        }
    }
}

/// Whether LND's message says it never saw a payment with that hash ("payment isn't
/// initiated"). A bare 404 is not enough: a wrong URL must not release a payment.
fn never_sent(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("isn't initiated") || m.contains("not initiated")
}

impl LightningBackend for LndRest {
    fn name(&self) -> &'static str {
        "lnd"
    }

    fn pay<'a>(
        &'a self,
        invoice: &'a str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Paid, BackendError>> {
        Box::pin(async move {
            let secs = timeout.as_secs().max(1);
            let request = self
                .http
                .post(format!("{}/v2/router/send", self.base))
                .header(Self::header(), self.macaroon.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(
                    json!({
                        "payment_request": invoice,
                        "fee_limit_msat": max_fee_msat.to_string(),
                        "timeout_seconds": secs,
                        "no_inflight_updates": true,
                    })
                    .to_string(),
                );
            let exchange = async {
                let response = request
                    .send()
                    .await
                    .map_err(|e| BackendError::Unknown(transport(e)))?;
                let status = response.status();
                if !status.is_success() {
                    let body = super::read_capped(response).await.unwrap_or_default();
                    let message = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| {
                            v.get("message")
                                .or_else(|| v.get("error").and_then(|e| e.get("message")))
                                .and_then(Value::as_str)
                                .map(|m| excerpt(m.as_bytes()))
                        })
                        .unwrap_or_else(|| excerpt(&body));
                    let error = format!("LND answered {status}: {message}");
                    // A request LND rejected as malformed or unauthorized never started a payment.
                    return Err(if status.is_client_error() {
                        BackendError::Refused(error)
                    } else {
                        BackendError::Unknown(error)
                    });
                }
                read_stream(response, |u| !matches!(u, Update::InFlight))
                    .await
                    .map_err(BackendError::Unknown)
            };
            let update = tokio::time::timeout(Duration::from_secs(secs + GRACE_SECS), exchange)
                .await
                .map_err(|_| BackendError::Unknown("LND did not finish in time".to_owned()))??;
            match update {
                Update::Succeeded(paid) => Ok(paid),
                Update::Failed(reason) => Err(BackendError::Refused(format!(
                    "LND could not pay the invoice ({reason})"
                ))),
                // "invoice is already paid", "payment is in transition": LND knows more than it
                // says here; the status check at the next start will tell.
                Update::Error(message)
                    if message.contains("already") || message.contains("transition") =>
                {
                    Err(BackendError::Unknown(format!("LND: {message}")))
                }
                Update::Error(message) => Err(BackendError::Refused(format!("LND: {message}"))),
                Update::InFlight => Err(BackendError::Unknown(
                    "LND's answer ended with the payment still in flight".to_owned(),
                )),
            }
        })
    }

    fn status<'a>(
        &'a self,
        payment_hash: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<PaymentStatus, BackendError>> {
        Box::pin(async move {
            let hash = base64::engine::general_purpose::URL_SAFE.encode(payment_hash);
            let exchange = async {
                let response = self
                    .http
                    .get(format!("{}/v2/router/track/{hash}", self.base))
                    .header(Self::header(), self.macaroon.clone())
                    .send()
                    .await
                    .map_err(|e| BackendError::Unknown(transport(e)))?;
                let status = response.status();
                if !status.is_success() {
                    let body = super::read_capped(response).await.unwrap_or_default();
                    let text = excerpt(&body);
                    if never_sent(&text) {
                        return Ok(Update::Error(text));
                    }
                    return Err(BackendError::Unknown(format!(
                        "LND answered {status}: {text}"
                    )));
                }
                // The first object is the payment's current state.
                read_stream(response, |_| true)
                    .await
                    .map_err(BackendError::Unknown)
            };
            let update = tokio::time::timeout(STATUS_TIMEOUT, exchange)
                .await
                .map_err(|_| BackendError::Unknown("LND did not answer in time".to_owned()))??;
            Ok(match update {
                Update::Succeeded(paid) => PaymentStatus::Succeeded(paid),
                Update::Failed(reason) => PaymentStatus::Failed(reason),
                Update::InFlight => PaymentStatus::InFlight,
                Update::Error(message) if never_sent(&message) => {
                    PaymentStatus::Failed(format!("LND never sent it ({message})"))
                }
                Update::Error(message) => {
                    return Err(BackendError::Unknown(format!("LND: {message}")));
                }
            })
        })
    }
}
