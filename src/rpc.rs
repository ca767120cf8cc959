//! JSON-RPC to a chain's node: one bounded call (connect and whole-call timeouts, a size limit
//! on the answer, no redirects), with errors that say what failed but never show the URL (an
//! endpoint URL may carry an API key). Settling unknown outcomes (`reconcile`), reading an MPP
//! charge's fee (`wallet::tempo`) and reading balances (`wallet::balance`) all call through it.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

/// The longest answer read from a node.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Time to open the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for nodes: connect and whole-call timeouts, no redirects.
pub fn client() -> Result<reqwest::Client, String> {
    crate::install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Calls `method` with `params` on the node at `url` and returns its `result` (`null` when
/// the node has nothing, e.g. a transaction not mined yet).
pub async fn call(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    params: Value,
) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("the node did not answer {method} ({})", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!(
            "the node answered {method} with HTTP {}",
            response.status()
        ));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the node's answer to {method}: {}", e.without_url()))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the node's answer to {method} is over {MAX_ANSWER_BYTES} bytes"
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let answer: Value = serde_json::from_slice(&bytes)
        .map_err(|_| format!("the node's answer to {method} is not JSON"))?;
    if let Some(error) = answer.get("error") {
        let message: String = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message")
            .chars()
            .take(200)
            .collect();
        return Err(format!("the node refused {method}: {message}"));
    }
    answer
        .get("result")
        .cloned()
        .ok_or_else(|| format!("the node's answer to {method} has no result"))
}
