//! The local approval page: where a person approves or denies a payment out of band.
//!
//! Served by `tollgate serve` on loopback only (`[approval] listen`, default `127.0.0.1:0`;
//! the port is printed on stderr). One page per approval, at `/approvals/<id>`: the id is 128
//! random bits, so the URL cannot be guessed. The page shows the same facts every channel
//! shows (tool, arguments, amount in USD and in the asset, payee, protocol, network, budget
//! left after paying, why a person is asked, expiry) and, while the approval is pending, two
//! buttons. A decision is a `POST` that must carry the approval's CSRF token (an HMAC of the
//! id under the state directory's secret), come with a loopback `Host` (no DNS rebinding) and
//! an `Origin` of the page itself. The page never shows a secret beyond that token.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::{Facts, Secret, is_id};
use crate::ledger::{Approval, ApprovalState, Decided, Ledger};
use crate::money::{UsdMicros, now_unix, rfc3339};

/// The largest form body read.
const MAX_BODY: usize = 4096;

/// Binds the page's listener. Only loopback addresses are accepted: the page approves
/// payments, so it must not be reachable from another machine.
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("[approval] listen {listen:?} is not an address like 127.0.0.1:0"),
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("[approval] listen {listen:?} is not a loopback address (127.0.0.1 or ::1)"),
        ));
    }
    TcpListener::bind(addr).await
}

/// The page's URL for one approval.
pub fn url(addr: SocketAddr, approval_id: &str) -> String {
    format!("http://{addr}/approvals/{approval_id}")
}

/// Serves the page on `listener` until the process ends.
pub async fn serve(listener: TcpListener, ledger: Arc<Ledger>, secret: Secret) {
    let Ok(addr) = listener.local_addr() else {
        tracing::error!("the approval page's listener has no address; not serving it");
        return;
    };
    let shared = Arc::new((ledger, secret, addr));
    crate::loopback::serve(listener, "approval page", move |request| {
        let shared = shared.clone();
        async move {
            let (ledger, secret, addr) = &*shared;
            handle(request, ledger, secret, *addr).await
        }
    })
    .await;
}

async fn handle(
    request: Request<Incoming>,
    ledger: &Arc<Ledger>,
    secret: &Secret,
    addr: SocketAddr,
) -> Response<Full<Bytes>> {
    // DNS rebinding: a page elsewhere resolving its name to 127.0.0.1 sends its own Host.
    let host_ok = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| is_own_host(h, addr));
    if !host_ok {
        return page(
            StatusCode::MISDIRECTED_REQUEST,
            "Wrong host",
            "<p>This page answers only on its loopback address.</p>",
        );
    }
    let path = request.uri().path().to_owned();
    let Some(id) = path.strip_prefix("/approvals/").filter(|id| is_id(id)) else {
        return page(StatusCode::NOT_FOUND, "Not found", "<p>No such page.</p>");
    };
    let id = id.to_owned();
    match *request.method() {
        Method::GET => show(ledger, secret, &id, None).await,
        Method::POST => {
            let origin_ok = request
                .headers()
                .get(ORIGIN)
                .and_then(|o| o.to_str().ok())
                .and_then(|o| o.strip_prefix("http://"))
                .is_some_and(|o| is_own_host(o, addr));
            if !origin_ok {
                return page(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "<p>A decision must come from this page (its Origin).</p>",
                );
            }
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => {
                    return page(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Refused",
                        "<p>The form is too large.</p>",
                    );
                }
            };
            let mut token = None;
            let mut decision = None;
            for (k, v) in url::form_urlencoded::parse(&body) {
                match &*k {
                    "csrf" => token = Some(v.into_owned()),
                    "decision" => decision = Some(v.into_owned()),
                    _ => {}
                }
            }
            if !token.is_some_and(|t| secret.csrf_ok(&id, &t)) {
                return page(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "<p>The form's token is missing or wrong; reload the page and decide again.</p>",
                );
            }
            let approve = match decision.as_deref() {
                Some("approve") => true,
                Some("deny") => false,
                _ => {
                    return page(
                        StatusCode::BAD_REQUEST,
                        "Refused",
                        "<p>The decision must be approve or deny.</p>",
                    );
                }
            };
            let l = ledger.clone();
            let decided_id = id.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                l.decide_approval(&decided_id, approve, "page", now_unix())
            })
            .await;
            let note = match outcome {
                Ok(Ok(Decided::Done(a))) => {
                    tracing::info!(approval = %a.id, state = %a.state, "decided on the approval page");
                    format!(
                        "<p class=done>You {} this payment.</p>",
                        if approve { "approved" } else { "denied" }
                    )
                }
                Ok(Ok(Decided::Final(a))) => format!(
                    "<p class=done>Nothing changed: this approval is already {}.</p>",
                    a.state
                ),
                Ok(Ok(Decided::NotFound)) => {
                    return page(
                        StatusCode::NOT_FOUND,
                        "Not found",
                        "<p>No such approval.</p>",
                    );
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "approval page: the ledger refused the decision");
                    return page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Error",
                        "<p>The ledger could not record the decision; nothing changed.</p>",
                    );
                }
                Err(_) => {
                    return page(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Error",
                        "<p>Nothing changed.</p>",
                    );
                }
            };
            show(ledger, secret, &id, Some(note)).await
        }
        _ => page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "<p>GET or POST only.</p>",
        ),
    }
}

/// Whether a `Host` (or an `Origin` without its scheme) names this listener.
fn is_own_host(host: &str, addr: SocketAddr) -> bool {
    let port = addr.port();
    [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(host))
}

async fn show(
    ledger: &Arc<Ledger>,
    secret: &Secret,
    id: &str,
    note: Option<String>,
) -> Response<Full<Bytes>> {
    let l = ledger.clone();
    let lookup = id.to_owned();
    let found = tokio::task::spawn_blocking(move || l.approval(&lookup, now_unix())).await;
    let approval = match found {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => {
            return page(
                StatusCode::NOT_FOUND,
                "Not found",
                "<p>No such approval.</p>",
            );
        }
        _ => {
            return page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "<p>The ledger cannot be read.</p>",
            );
        }
    };
    let body = render(&approval, secret, note.as_deref());
    page(StatusCode::OK, "Approve a payment?", &body)
}

fn render(a: &Approval, secret: &Secret, note: Option<&str>) -> String {
    let facts: Option<Facts> = serde_json::from_str(&a.facts_json).ok();
    let mut out = String::new();
    if let Some(note) = note {
        out.push_str(note);
    }
    let row = |k: &str, v: &str| format!("<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    out.push_str("<table>");
    out.push_str(&row("Status", a.state.as_str()));
    out.push_str(&row("Tool", &a.tool));
    out.push_str(&row("Amount", &UsdMicros(a.amount_usd_micros).to_string()));
    if let Some(f) = &facts {
        out.push_str(&row("In the asset", &f.amount_in_asset));
        out.push_str(&row("Payee", &f.payee));
        out.push_str(&row("Protocol", &f.protocol));
        out.push_str(&row("Network", &f.network));
        out.push_str(&row(
            "Budget left after paying",
            &f.budget_left_usd_micros
                .map_or("no cap applies".to_owned(), |l| UsdMicros(l).to_string()),
        ));
        out.push_str(&row("Why you are asked", &f.reason));
        out.push_str(&row(
            "Arguments",
            &serde_json::Value::Object(f.arguments.clone()).to_string(),
        ));
    }
    out.push_str(&row("Expires", &rfc3339(a.expires_at)));
    if let Some(by) = &a.decided_by {
        out.push_str(&row("Decided through", by));
    }
    out.push_str("</table>");
    if a.state == ApprovalState::Pending {
        let token = secret.csrf_token(&a.id);
        out.push_str(&format!(
            "<form method=post><input type=hidden name=csrf value=\"{}\">\
             <button id=approve name=decision value=approve>Approve</button> \
             <button id=deny name=decision value=deny>Deny</button></form>",
            escape(&token)
        ));
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>tollgate: {t}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}\
         th{{text-align:left;padding-right:1em}}button{{font-size:1.2em;margin:1em .5em 0 0}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let set = |v: &'static str| HeaderValue::from_static(v);
    headers.insert(CONTENT_TYPE, set("text/html; charset=utf-8"));
    headers.insert("cache-control", set("no-store"));
    // same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on the
    // form POST, and the Origin check needs the page's own origin.
    headers.insert("referrer-policy", set("same-origin"));
    headers.insert("x-frame-options", set("DENY"));
    headers.insert(
        "content-security-policy",
        set("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    response
}

/// HTML-escapes text for element content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_its_own_loopback_host_is_accepted() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert!(is_own_host("127.0.0.1:4242", addr));
        assert!(is_own_host("localhost:4242", addr));
        assert!(!is_own_host("evil.example:4242", addr));
        assert!(!is_own_host("127.0.0.1:4243", addr));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[tokio::test]
    async fn refuses_to_listen_beyond_loopback() {
        assert!(bind("0.0.0.0:0").await.is_err());
        assert!(bind("nonsense").await.is_err());
        assert!(bind("127.0.0.1:0").await.is_ok());
    }
}
