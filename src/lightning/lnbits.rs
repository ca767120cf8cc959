//! LNbits: pays from one LNbits wallet with its admin key (`X-Api-Key`).
//!
//! * pay: `POST /api/v1/payments {"out": true, "bolt11": ...}` → the payment, with
//!   `preimage`, `fee` (millisatoshis, negative for an outgoing payment in some versions) and
//!   `status`.
//! * status: `GET /api/v1/payments/<payment hash>` → `{"paid", "preimage", "details":
//!   {"status", "fee"}}`; 404 `{"detail": "Payment does not exist."}` when the wallet never
//!   saw the payment.
//!
//! LNbits applies its own routing-fee reserve (its `LNBITS_RESERVE_FEE_*` settings) and takes
//! no fee limit per payment; tollgate checks the fee it reports against `max_fee_msat` after the
//! fact and charges what was actually paid.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::hash_from_hex;
use super::{
    BackendError, LightningBackend, Paid, PaymentStatus, STATUS_TIMEOUT, SetupError, base_url,
    client, excerpt, read_capped, transport,
};

/// An LNbits wallet.
pub struct Lnbits {
    base: String,
    key: HeaderValue,
    http: reqwest::Client,
}

impl Lnbits {
    /// `url` is the LNbits instance; `admin_key` the wallet's admin key.
    pub fn new(url: &str, admin_key: &str) -> Result<Lnbits, SetupError> {
        let mut key = HeaderValue::from_str(admin_key).map_err(|_| {
            SetupError::Invalid("the LNbits admin key is not a valid header value".to_owned())
        })?;
        key.set_sensitive(true);
        Ok(Lnbits {
            base: base_url(url)?,
            key,
            http: client(None)?,
        })
    }

    fn api_key() -> HeaderName {
        HeaderName::from_static("x-api-key")
    }
}

/// The preimage and fee out of an LNbits payment object.
fn paid_from(payment: &Value) -> Option<Paid> {
    let preimage = hash_from_hex(payment.get("preimage")?.as_str()?)?;
    let fee = payment.get("fee").and_then(Value::as_i64).unwrap_or(0);
    Some(Paid {
        preimage,
        fee_msat: fee.unsigned_abs(),
    })
}

impl LightningBackend for Lnbits {
    fn name(&self) -> &'static str {
        "lnbits"
    }

    fn pay<'a>(
        &'a self,
        invoice: &'a str,
        _max_fee_msat: u64,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Paid, BackendError>> {
        Box::pin(async move {
            let response = self
                .http
                .post(format!("{}/api/v1/payments", self.base))
                .header(Self::api_key(), self.key.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json!({"out": true, "bolt11": invoice}).to_string())
                .timeout(timeout)
                .send()
                .await
                // Sent or not, the request may have reached LNbits: unknown.
                .map_err(|e| BackendError::Unknown(transport(e)))?;
            let status = response.status();
            let body = read_capped(response).await.map_err(BackendError::Unknown)?;
            if status.is_client_error() {
                // 4xx: LNbits refused before paying (bad key, insufficient balance, bad invoice).
                return Err(BackendError::Refused(format!(
                    "LNbits answered {status}: {}",
                    detail(&body)
                )));
            }
            if !status.is_success() {
                return Err(BackendError::Unknown(format!(
                    "LNbits answered {status}: {}",
                    detail(&body)
                )));
            }
            let payment: Value = serde_json::from_slice(&body)
                .map_err(|_| BackendError::Unknown("LNbits' answer is not JSON".to_owned()))?;
            match payment.get("status").and_then(Value::as_str) {
                Some("failed") => {
                    return Err(BackendError::Refused(
                        "LNbits reports the payment failed".to_owned(),
                    ));
                }
                Some("pending") => {
                    return Err(BackendError::Unknown(
                        "LNbits reports the payment still pending".to_owned(),
                    ));
                }
                _ => {}
            }
            paid_from(&payment).ok_or_else(|| {
                BackendError::Unknown("LNbits' answer has no 32-byte hex preimage".to_owned())
            })
        })
    }

    fn status<'a>(
        &'a self,
        payment_hash: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<PaymentStatus, BackendError>> {
        Box::pin(async move {
            let response = self
                .http
                .get(format!(
                    "{}/api/v1/payments/{}",
                    self.base,
                    hex::encode(payment_hash)
                ))
                .header(Self::api_key(), self.key.clone())
                .timeout(STATUS_TIMEOUT)
                .send()
                .await
                .map_err(|e| BackendError::Unknown(transport(e)))?;
            let status = response.status();
            let body = read_capped(response).await.map_err(BackendError::Unknown)?;
            // Only LNbits' own "does not exist" releases a payment: a bare 404 from a wrong
            // URL must not.
            if status == StatusCode::NOT_FOUND && detail(&body).contains("does not exist") {
                return Ok(PaymentStatus::Failed(
                    "LNbits has no payment with this hash".to_owned(),
                ));
            }
            if !status.is_success() {
                return Err(BackendError::Unknown(format!(
                    "LNbits answered {status}: {}",
                    detail(&body)
                )));
            }
            let reply: Value = serde_json::from_slice(&body)
                .map_err(|_| BackendError::Unknown("LNbits' answer is not JSON".to_owned()))?;
            let details = reply.get("details").unwrap_or(&Value::Null);
            if reply.get("paid").and_then(Value::as_bool) == Some(true) {
                let mut payment = details.clone();
                if let Some(obj) = payment.as_object_mut() {
                    obj.insert(
                        "preimage".into(),
                        reply.get("preimage").cloned().unwrap_or(Value::Null),
                    );
                }
                return paid_from(&payment)
                    .map(PaymentStatus::Succeeded)
                    .ok_or_else(|| {
                        BackendError::Unknown("LNbits says paid but gives no preimage".to_owned())
                    });
            }
            Ok(match details.get("status").and_then(Value::as_str) {
                Some("failed") => PaymentStatus::Failed("LNbits reports it failed".to_owned()),
                _ => PaymentStatus::InFlight,
            })
        })
    }
}

/// LNbits' `detail` message, else an excerpt of the body.
fn detail(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
        .map(|d| excerpt(d.as_bytes()))
        .unwrap_or_else(|| excerpt(body))
}
