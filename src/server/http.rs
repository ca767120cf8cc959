//! MCP over streamable HTTP (`tollgate serve --http`): the same [`Tollgate`] handler as stdio,
//! behind a gate that decides who is calling from the request alone.
//!
//! rmcp's `StreamableHttpService` speaks the transport (both revisions: 2025-11-25 sessions
//! with SSE for server-to-client requests, 2026-07-28 stateless requests), validates `Host`
//! and `Origin` (DNS rebinding), bounds request bodies (413) and closes idle sessions. In
//! front of it, [`Gate`] does what is tollgate's:
//!
//! * **Identity from the request only.** `Authorization: Bearer <credential>` is verified on
//!   every request (root key, caveats, expiry, revocation) before anything else happens; a
//!   missing or refused one gets 401 with `WWW-Authenticate: Bearer` and nothing is sent or
//!   paid. The verified credential travels to the handler in the request's extensions
//!   ([`NetworkCaller`]); `_meta["tollgate/token"]`, `TOLLGATE_TOKEN` and the policy's
//!   `default_profile` never apply to a network caller. Only `[http] anonymous_profile`, named
//!   by the owner, serves requests without a bearer.
//! * **Sessions bound to their credential.** A session id answers only the bearer that opened
//!   it (another gets 404, as for an unknown session). Session ids are rmcp's random UUIDs.
//! * **Bounds.** Sessions open at once (503 beyond), connections served at once, body size.
//! * **Shutdown** ([`serve`]): stop accepting, refuse new requests (503), close the rails to
//!   new signatures, let calls in flight finish within the grace period, then end every
//!   session. A payment still open then stays pending for reconciliation.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Tollgate;

/// The header a session id travels in.
const SESSION_HEADER: &str = "mcp-session-id";

/// How the HTTP transport is bounded and who it admits (from `[http]`). No `Debug`: it holds
/// the anonymous profile's credential.
#[derive(Clone)]
pub struct Settings {
    /// `Host` values accepted besides the loopback names.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted; any other `Origin` is refused.
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_sessions: usize,
    pub max_connections: usize,
    pub session_idle: Duration,
    /// The credential requests without a bearer are served as (`[http] anonymous_profile`);
    /// `None`: such requests get 401.
    pub anonymous_token: Option<String>,
    /// How long calls in flight may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// TLS on the listener (`[http] tls_cert`, `tls_key`); `None`: plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The verified credential a network request carries, put in the request's extensions by the
/// gate and read by the handler instead of `_meta`.
#[derive(Clone)]
pub(crate) struct NetworkCaller {
    pub token: Arc<str>,
}

type Body = BoxBody<Bytes, Infallible>;

/// The front of the HTTP transport: authentication, session binding, limits.
struct Gate {
    mcp: StreamableHttpService<Tollgate, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    /// Session id → SHA-256 of the bearer that opened it.
    bound: std::sync::Mutex<HashMap<String, [u8; 32]>>,
    /// Held while a session is opened, so the count cannot overshoot `max_sessions`.
    opening: tokio::sync::Mutex<()>,
    server: Tollgate,
    settings: Settings,
    /// Cancelled when shutdown begins: new requests are refused.
    closing: CancellationToken,
    /// Responses to POSTs still being written (a tool call's SSE stream ends with its result).
    responses: Arc<crate::in_flight::InFlight>,
}

impl Gate {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        if request.method() != Method::POST {
            return self.admit(request).await;
        }
        // Counted until its body is written or dropped, so a shutdown lets a call's result
        // reach its client.
        let writing = self.responses.enter();
        self.admit(request).await.map(move |body| {
            body.map_frame(move |frame| {
                writing.hold();
                frame
            })
            .boxed()
        })
    }

    async fn admit(&self, mut request: Request<Incoming>) -> Response<Body> {
        if self.closing.is_cancelled() {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "tollgate is shutting down; nothing was sent or paid",
            );
        }
        let token = match bearer(request.headers()) {
            Presented::None => match &self.settings.anonymous_token {
                Some(token) => token.clone(),
                None => return unauthorized(None),
            },
            Presented::Malformed => {
                return unauthorized(Some(
                    "the Authorization header must be `Bearer <credential>`",
                ));
            }
            Presented::Bearer(token) => {
                let verified =
                    tokio::task::block_in_place(|| self.server.checkout.identify(Some(&token)));
                match verified {
                    Ok(_) => token,
                    Err(reason) => return unauthorized(Some(&reason)),
                }
            }
        };
        let who: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let session = request
            .headers()
            .get(SESSION_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        request.extensions_mut().insert(NetworkCaller {
            token: token.into(),
        });
        match session {
            Some(id) => {
                if !self.is_bound(&id, &who) {
                    return plain(StatusCode::NOT_FOUND, "Not Found: Session not found");
                }
                self.mcp.handle(request).await
            }
            None if request.method() == Method::POST => {
                // A request without a session may open one (an `initialize`). A request of
                // revision 2026-07-28 or later (its header says so) is stateless: it is not
                // held up behind other sessions being opened, since its answer may take as
                // long as a paid call.
                let stateless = request
                    .headers()
                    .get("mcp-protocol-version")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v >= "2026-07-28");
                let _opening = match stateless {
                    true => None,
                    false => Some(self.opening.lock().await),
                };
                if !stateless && self.open_sessions().await >= self.settings.max_sessions {
                    return too_many_sessions();
                }
                let response = self.mcp.handle(request).await;
                let Some(id) = response.headers().get(SESSION_HEADER) else {
                    return response;
                };
                let id = String::from_utf8_lossy(id.as_bytes()).into_owned();
                if stateless && self.open_sessions().await > self.settings.max_sessions {
                    // An `initialize` that named a later revision in its header still opens a
                    // session: over the bound, it is closed at once.
                    let _ = rmcp::transport::streamable_http_server::SessionManager::close_session(
                        &*self.sessions,
                        &id.clone().into(),
                    )
                    .await;
                    return too_many_sessions();
                }
                self.lock_bound().insert(id, who);
                response
            }
            None => self.mcp.handle(request).await,
        }
    }

    async fn open_sessions(&self) -> usize {
        self.sessions.sessions.read().await.len()
    }

    fn lock_bound(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.bound
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether session `id` was opened by the bearer hashed as `who`.
    fn is_bound(&self, id: &str, who: &[u8; 32]) -> bool {
        self.lock_bound().get(id).is_some_and(|owner| owner == who)
    }

    /// Forgets the bindings of sessions rmcp has closed (idle, deleted, ended).
    async fn sweep(&self) {
        let open: std::collections::HashSet<String> = self
            .sessions
            .sessions
            .read()
            .await
            .keys()
            .map(ToString::to_string)
            .collect();
        self.lock_bound().retain(|id, _| open.contains(id));
    }
}

enum Presented {
    None,
    Malformed,
    Bearer(String),
}

fn bearer(headers: &http::HeaderMap) -> Presented {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::None;
    };
    if values.next().is_some() {
        return Presented::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Presented::Bearer(token.trim().to_owned())
        }
        _ => Presented::Malformed,
    }
}

fn too_many_sessions() -> Response<Body> {
    tracing::warn!("session limit reached; a new session was refused");
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many open sessions; try again later",
    )
}

/// 401 with the challenge RFC 6750 describes (`error="invalid_token"` when one was presented).
fn unauthorized(reason: Option<&str>) -> Response<Body> {
    let (challenge, body) = match reason {
        None => (
            "Bearer realm=\"tollgate\"".to_owned(),
            "Unauthorized: send Authorization: Bearer <tollgate credential>; nothing was sent or \
             paid"
                .to_owned(),
        ),
        Some(reason) => {
            // A quoted-string may not hold quotes, backslashes or controls.
            let quoted: String = reason
                .chars()
                .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
                .take(200)
                .collect();
            (
                format!(
                    "Bearer realm=\"tollgate\", error=\"invalid_token\", \
                     error_description=\"{quoted}\""
                ),
                format!(
                    "Unauthorized: the credential is refused: {reason}; nothing was sent or paid"
                ),
            )
        }
    };
    let mut response = plain(StatusCode::UNAUTHORIZED, &body);
    if let Ok(value) = header::HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves HTTP/1.1 on one connection (plain or TLS) through the gate.
async fn serve_connection<I>(io: I, gate: Arc<Gate>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let gate = gate.clone();
        async move { Ok::<_, Infallible>(gate.handle(request).await) }
    });
    // No `header_read_timeout`: hyper 1 arms it while a response is still streaming and
    // closes a connection whose call's SSE stream lasts longer than it.
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves MCP on `listener` until `shutdown` resolves, then shuts down gracefully: no new
/// connection or request, no new signature, calls in flight given `shutdown_grace` to finish,
/// then every session ended.
pub async fn serve(
    server: Tollgate,
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let sessions = Arc::new({
        let mut manager = LocalSessionManager::default();
        manager.session_config.keep_alive = Some(settings.session_idle);
        manager
    });
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    hosts.extend(settings.allowed_hosts.iter().cloned());
    // A page on tollgate's own origin may call it (tollgate serves no page there); any other
    // browser origin must be listed.
    let mut origins = settings.allowed_origins.clone();
    if let Ok(addr) = listener.local_addr() {
        let port = addr.port();
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        origins.extend([
            format!("{scheme}://127.0.0.1:{port}"),
            format!("{scheme}://localhost:{port}"),
            format!("{scheme}://[::1]:{port}"),
        ]);
    }
    let ended = CancellationToken::new();
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_allowed_origins(origins)
        .enforce_origin_validation()
        .with_max_request_body_bytes(settings.max_body_bytes)
        .with_cancellation_token(ended.clone());
    let factory = {
        let server = server.clone();
        move || Ok(server.clone())
    };
    let closing = CancellationToken::new();
    let gate = Arc::new(Gate {
        mcp: StreamableHttpService::new(factory, sessions.clone(), config),
        sessions,
        bound: Default::default(),
        opening: Default::default(),
        server: server.clone(),
        settings: settings.clone(),
        closing: closing.clone(),
        responses: Default::default(),
    });
    let sweeper = {
        let gate = gate.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                gate.sweep().await;
            }
        })
    };
    let connections = Arc::new(tokio::sync::Semaphore::new(settings.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // Only closing the semaphore ends the wait this way, and nothing closes it.
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let gate = gate.clone();
        let tls = settings.tls.clone();
        // Connections are not shut down with the listener: a call's result may still have to
        // travel on one (new requests on them get 503). They end with their streams, or are
        // dropped when serving ends.
        tasks.spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(stream), gate).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => serve_connection(TokioIo::new(stream), gate).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, requests or signatures");
    closing.cancel();
    server.checkout.rails.close_signing().await;
    // Calls in flight finish, then their results are written (a POST's stream ends with
    // its result), all within the grace period.
    let finished = async {
        server.calls.idle().await;
        gate.responses.idle().await;
        server.finish_writes().await;
    };
    if tokio::time::timeout(settings.shutdown_grace, finished)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = server.calls.count(),
            "calls still in flight after the grace period; their payments stay pending for \
             reconciliation"
        );
    } else {
        tracing::info!("every call in flight has finished");
    }
    ended.cancel();
    sweeper.abort();
    // Connections close once their streams end; a connection that does not is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
