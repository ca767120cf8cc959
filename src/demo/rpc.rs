//! A minimal Ethereum JSON-RPC endpoint over the sandbox chain, on loopback, so that the
//! parts of tollgate that read a chain (`[rpc]`: `tollgate reconcile`, `tollgate wallet
//! balance`) work against the sandbox exactly as against a node.
//!
//! Owns: `eth_chainId`, `eth_blockNumber`, `eth_call`, `eth_getTransactionReceipt`,
//! `eth_getLogs` (address and topic filters over the blocks kept in memory).
//!
//! Does not: accept transactions (`eth_sendRawTransaction`): only the sandbox moves money.

use std::sync::Arc;

use alloy::primitives::{Address, B256};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::chain::{Chain, Executed};

/// Largest JSON-RPC request read.
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Serves JSON-RPC on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, chain: Arc<Chain>) {
    crate::loopback::serve(listener, "sandbox RPC", move |request| {
        let chain = chain.clone();
        async move { handle(request, &chain).await }
    })
    .await;
}

async fn handle(request: Request<Incoming>, chain: &Chain) -> Response<Full<Bytes>> {
    if request.method() != Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "POST only"}),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "too large"}),
            );
        }
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return respond(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}),
        );
    };
    let answer = match &request {
        Value::Array(batch) => Value::Array(batch.iter().map(|r| one(r, chain)).collect()),
        single => one(single, chain),
    };
    respond(StatusCode::OK, &answer)
}

fn one(request: &Value, chain: &Chain) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let method = request["method"].as_str().unwrap_or_default();
    let params = &request["params"];
    match dispatch(method, params, chain) {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        }
    }
}

fn dispatch(method: &str, params: &Value, chain: &Chain) -> Result<Value, (i64, String)> {
    let invalid = |what: &str| (-32602, format!("invalid params: {what}"));
    match method {
        "eth_chainId" => Ok(quantity(chain.chain_id())),
        "net_version" => Ok(Value::String(chain.chain_id().to_string())),
        "eth_blockNumber" => Ok(quantity(chain.block_number())),
        "eth_call" => {
            let call = &params[0];
            let to: Address = call["to"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| invalid("call.to"))?;
            let data = call["data"]
                .as_str()
                .or_else(|| call["input"].as_str())
                .unwrap_or("0x");
            let data = hex::decode(data.trim_start_matches("0x")).map_err(|_| invalid("data"))?;
            chain
                .call(to, data)
                .map(|out| Value::String(format!("0x{}", hex::encode(out))))
                .map_err(|e| (3, e.to_string()))
        }
        "eth_getTransactionReceipt" => {
            let hash: B256 = params[0]
                .as_str()
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| invalid("hash"))?;
            Ok(chain
                .transaction(&hash)
                .map(|t| receipt(&t))
                .unwrap_or(Value::Null))
        }
        "eth_getLogs" => {
            let filter = &params[0];
            let head = chain.block_number();
            let block = |key: &str, default: u64| match filter[key].as_str() {
                None | Some("latest") | Some("safe") | Some("finalized") | Some("pending") => {
                    Ok(default)
                }
                Some("earliest") => Ok(0),
                Some(n) => {
                    u64::from_str_radix(n.trim_start_matches("0x"), 16).map_err(|_| invalid(key))
                }
            };
            let (from, to) = (block("fromBlock", head)?, block("toBlock", head)?);
            let addresses: Vec<String> = match &filter["address"] {
                Value::String(a) => vec![a.to_ascii_lowercase()],
                Value::Array(list) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .collect(),
                _ => Vec::new(),
            };
            let topics: Vec<Option<Vec<String>>> = filter["topics"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|t| match t {
                            Value::String(t) => Some(vec![t.to_ascii_lowercase()]),
                            Value::Array(any) => Some(
                                any.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_ascii_lowercase)
                                    .collect(),
                            ),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let logs: Vec<Value> = chain
                .transactions(from, to)
                .iter()
                .flat_map(logs_of)
                .filter(|log| {
                    let address = log["address"].as_str().unwrap_or_default();
                    (addresses.is_empty() || addresses.iter().any(|a| a == address))
                        && topics.iter().enumerate().all(|(i, wanted)| match wanted {
                            None => true,
                            Some(wanted) => log["topics"][i]
                                .as_str()
                                .is_some_and(|t| wanted.iter().any(|w| w == t)),
                        })
                })
                .collect();
            Ok(Value::Array(logs))
        }
        _ => Err((
            -32601,
            format!("method {method:?} is not served by the sandbox"),
        )),
    }
}

fn quantity(n: u64) -> Value {
    Value::String(format!("0x{n:x}"))
}

fn block_hash(block: u64) -> String {
    format!("{:#x}", alloy::primitives::keccak256(block.to_be_bytes()))
}

fn logs_of(t: &Executed) -> Vec<Value> {
    t.logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            json!({
                "address": format!("{:#x}", log.address),
                "topics": log.topics().iter().map(|t| format!("{t:#x}")).collect::<Vec<_>>(),
                "data": format!("0x{}", hex::encode(&log.data.data)),
                "blockNumber": quantity(t.block),
                "blockHash": block_hash(t.block),
                "transactionHash": format!("{:#x}", t.hash),
                "transactionIndex": "0x0",
                "logIndex": quantity(i as u64),
                "removed": false,
            })
        })
        .collect()
}

fn receipt(t: &Executed) -> Value {
    json!({
        "transactionHash": format!("{:#x}", t.hash),
        "transactionIndex": "0x0",
        "blockNumber": quantity(t.block),
        "blockHash": block_hash(t.block),
        "from": format!("{:#x}", t.from),
        "to": t.to.map(|a| format!("{a:#x}")),
        "contractAddress": t.created.map(|a| format!("{a:#x}")),
        "gasUsed": quantity(t.gas_used),
        "cumulativeGasUsed": quantity(t.gas_used),
        "effectiveGasPrice": "0x0",
        "status": if t.success { "0x1" } else { "0x0" },
        "type": "0x0",
        "logs": logs_of(t),
    })
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[rpc]` pointed at the sandbox reads the token as at any node: `wallet balance` sees
    /// the buyer's funds, and the chain id and logs are served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wallet_balance_and_logs_read_the_sandbox_through_its_rpc() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-rpc-test-{}",
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sandbox = crate::demo::sandbox::Sandbox::start(&dir, None)
            .await
            .unwrap();
        let config = crate::config::Config::load(Some(&sandbox.config)).unwrap();
        let (held, _) =
            crate::wallet::balance::balances(sandbox.buyer, &config.assets, &config.rpc).await;
        let sandbox_usdc = held.iter().find(|h| h.sandbox).expect("the sandbox asset");
        assert_eq!(sandbox_usdc.shown(), "10.000000");

        crate::install_tls_provider();
        let client = reqwest::Client::new();
        let ask = |method: &'static str, params: Value| {
            let client = client.clone();
            let url = format!("http://{}/", sandbox.rpc);
            async move {
                let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
                let answer: Value = client
                    .post(url)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                answer["result"].clone()
            }
        };
        assert_eq!(ask("eth_chainId", json!([])).await, "0x7a69");
        let logs = ask(
            "eth_getLogs",
            json!([{"address": format!("{:#x}", sandbox.chain.token()), "fromBlock": "0x0",
                    "topics": [format!("{:#x}", crate::demo::chain::transfer_topic())]}]),
        )
        .await;
        // The mint to the buyer is a Transfer from the zero address.
        assert_eq!(logs.as_array().map(Vec::len), Some(1), "{logs}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
