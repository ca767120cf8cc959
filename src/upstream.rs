//! Calling upstream: one HTTP request with every limit applied.
//!
//! Limits: a connect timeout, a timeout on the whole call, a cap on the body that stops reading
//! (the rest is never buffered), redirects only within the same origin. What comes back is
//! sorted into what a model can use (JSON, text), a payment challenge (402), or an error that
//! says what happened.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

/// A request ready to send: nothing in it comes from the model except encoded values (the
/// catalog builds it from a tool's definition and the arguments).
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub method: reqwest::Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
}

/// Defaults for every upstream HTTP call; a tool may lower or raise its own timeout and size
/// limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamDefaults {
    /// Time allowed to open the TCP + TLS connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Time allowed for the whole call (request, response headers and body), in milliseconds.
    pub timeout_ms: u64,
    /// Largest response body read into memory, in bytes.
    pub max_response_bytes: u64,
    /// Redirects followed per call (same origin only).
    pub max_redirects: usize,
    /// `User-Agent` sent upstream.
    pub user_agent: String,
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect_timeout_ms: 5_000,
            timeout_ms: 30_000,
            max_response_bytes: 4 * 1024 * 1024,
            max_redirects: 5,
            user_agent: concat!("tollgate/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl UpstreamDefaults {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// How much of an error body is shown to the model.
const EXCERPT_CHARS: usize = 300;
/// How much of an error body is read at most.
const EXCERPT_READ_BYTES: u64 = 8 * 1024;

/// The shared HTTP client (connection pool) for every tool.
///
/// Building it loads the system's root certificates (tens of milliseconds), so it is built
/// on first use or by [`Upstream::warm`] in the background, never in front of the first
/// `tools/list`.
#[derive(Clone)]
pub struct Upstream {
    defaults: UpstreamDefaults,
    client: Arc<OnceLock<Result<reqwest::Client, String>>>,
}

/// Per-call limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub max_response_bytes: u64,
}

/// A usable answer from upstream.
#[derive(Debug, Clone)]
pub enum Answer {
    Json(Value),
    Text(String),
    /// `402 Payment Required`: the (size-limited) body, for the payment code; the headers
    /// are in the [`Reply`].
    PaymentRequired {
        body: Vec<u8>,
    },
}

/// An answer with the response headers it came with (settlement headers live there).
#[derive(Debug, Clone)]
pub struct Reply {
    pub answer: Answer,
    pub headers: HeaderMap,
}

/// Where a call is, for progress notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Sending,
    ReadingBody,
}

/// Why a call gave no usable answer. Messages never contain header values (they may hold
/// API keys).
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("no complete answer from {host} within {}; try again later or raise timeout_ms", fmt_duration(*.timeout))]
    Timeout { host: String, timeout: Duration },
    #[error(
        "the answer from {host} is larger than this tool's limit of {limit} bytes; tollgate stopped \
         reading it (raise max_response_bytes, or ask for less)"
    )]
    TooLarge { host: String, limit: u64 },
    #[error("{host} answered {status}: {excerpt}")]
    Status {
        host: String,
        status: StatusCode,
        excerpt: String,
    },
    #[error(
        "{host} redirected to {location}, another origin; tollgate follows redirects only within \
         the origin the tool names"
    )]
    Redirect { host: String, location: String },
    #[error(
        "{host} answered {count} redirects in a row within its own origin, and the limit is \
         {limit}: a redirect loop or too many redirects (the last pointed to {location}); \
         tollgate stopped following them"
    )]
    TooManyRedirects {
        host: String,
        location: String,
        /// Redirects answered, the one that was not followed included.
        count: usize,
        limit: usize,
    },
    #[error(
        "{host} answered with content type {content_type}; tollgate passes only JSON and text to \
         the model"
    )]
    ContentType { host: String, content_type: String },
    #[error("{host} said the answer is JSON but it is not: {reason}")]
    InvalidJson { host: String, reason: String },
    #[error("{host} answered with text that is not valid UTF-8")]
    InvalidText { host: String },
    #[error("the request to {host} failed: {reason}")]
    Transport { host: String, reason: String },
}

impl Upstream {
    pub fn new(defaults: &UpstreamDefaults) -> Upstream {
        Upstream {
            defaults: defaults.clone(),
            client: Arc::new(OnceLock::new()),
        }
    }

    /// Builds the HTTP client now (blocking), if it is not built yet.
    pub fn warm(&self) -> Result<(), String> {
        self.client().map(|_| ())
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| build_client(&self.defaults).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| format!("the HTTP client could not be built: {e}"))
    }
}

fn build_client(defaults: &UpstreamDefaults) -> Result<reqwest::Client, reqwest::Error> {
    {
        crate::install_tls_provider();
        let max_redirects = defaults.max_redirects;
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if same_origin && attempt.previous().len() <= max_redirects {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        reqwest::Client::builder()
            .connect_timeout(defaults.connect_timeout())
            .user_agent(defaults.user_agent.clone())
            .redirect(redirect)
            .build()
    }
}

impl Upstream {
    /// Sends `request` and reads the answer within `limits`. `on_stage` is told when the
    /// request goes out and when the answer's headers have arrived.
    pub async fn call(
        &self,
        request: UpstreamRequest,
        limits: Limits,
        on_stage: impl FnMut(Stage),
    ) -> Result<Reply, UpstreamError> {
        let host = request.url.host_str().unwrap_or_default().to_owned();
        match tokio::time::timeout(limits.timeout, self.call_inner(request, limits, on_stage)).await
        {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                host,
                timeout: limits.timeout,
            }),
        }
    }

    async fn call_inner(
        &self,
        request: UpstreamRequest,
        limits: Limits,
        mut on_stage: impl FnMut(Stage),
    ) -> Result<Reply, UpstreamError> {
        let host = request.url.host_str().unwrap_or_default().to_owned();
        let origin = request.url.origin();
        let client = self.client().map_err(|reason| UpstreamError::Transport {
            host: host.clone(),
            reason,
        })?;
        let mut builder = client
            .request(request.method, request.url)
            .headers(request.headers);
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        on_stage(Stage::Sending);
        let response = builder
            .send()
            .await
            .map_err(|e| transport_error(&host, e))?;
        on_stage(Stage::ReadingBody);
        let status = response.status();
        let headers = response.headers().clone();

        if status.is_redirection() {
            let raw = headers.get(LOCATION).and_then(|v| v.to_str().ok());
            let location = raw
                .map(|l| excerpt(l.as_bytes()))
                .unwrap_or_else(|| "(no Location)".to_owned());
            // The redirect policy stops a redirect for one of two reasons: it leaves the
            // origin, or it is one more than `max_redirects` within it (a loop, most often).
            let target = raw.and_then(|l| response.url().join(l).ok());
            if target.is_some_and(|t| t.origin() == origin) {
                return Err(UpstreamError::TooManyRedirects {
                    host,
                    location,
                    count: self.defaults.max_redirects + 1,
                    limit: self.defaults.max_redirects,
                });
            }
            return Err(UpstreamError::Redirect { host, location });
        }
        if status == StatusCode::PAYMENT_REQUIRED {
            let body = read_limited(response, &host, limits.max_response_bytes, true).await?;
            return Ok(Reply {
                answer: Answer::PaymentRequired { body },
                headers,
            });
        }
        if !status.is_success() {
            let body = read_limited(response, &host, EXCERPT_READ_BYTES, false).await?;
            let text = excerpt(&body);
            let excerpt = if text.is_empty() {
                "(empty body)".to_owned()
            } else {
                text
            };
            return Err(UpstreamError::Status {
                host,
                status,
                excerpt,
            });
        }

        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let kind = match content_type.as_deref() {
            None | Some("") => Kind::Sniff,
            Some(ct) if ct == "application/json" || ct.ends_with("+json") => Kind::Json,
            Some(ct)
                if ct.starts_with("text/")
                    || ct == "application/xml"
                    || ct.ends_with("+xml")
                    || ct == "application/javascript" =>
            {
                Kind::Text
            }
            Some(other) => {
                return Err(UpstreamError::ContentType {
                    host,
                    content_type: excerpt(other.as_bytes()),
                });
            }
        };
        let body = read_limited(response, &host, limits.max_response_bytes, true).await?;
        let answer = match kind {
            Kind::Json => serde_json::from_slice(&body)
                .map(Answer::Json)
                .map_err(|e| UpstreamError::InvalidJson {
                    host,
                    reason: e.to_string(),
                }),
            Kind::Text => String::from_utf8(body)
                .map(Answer::Text)
                .map_err(|_| UpstreamError::InvalidText { host }),
            Kind::Sniff => match serde_json::from_slice(&body) {
                Ok(json) => Ok(Answer::Json(json)),
                Err(_) => String::from_utf8(body).map(Answer::Text).map_err(|_| {
                    UpstreamError::ContentType {
                        host,
                        content_type: "(none, and the body is not text)".to_owned(),
                    }
                }),
            },
        }?;
        Ok(Reply { answer, headers })
    }
}

enum Kind {
    Json,
    Text,
    Sniff,
}

/// Reads at most `limit` bytes of the body. With `strict`, a longer body is an error; without,
/// it is cut (for error excerpts).
async fn read_limited(
    mut response: reqwest::Response,
    host: &str,
    limit: u64,
    strict: bool,
) -> Result<Vec<u8>, UpstreamError> {
    let too_large = || UpstreamError::TooLarge {
        host: host.to_owned(),
        limit,
    };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if strict && declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit).min(1 << 20) as usize);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(host, e))?
    {
        let room = (limit as usize).saturating_sub(body.len());
        if chunk.len() > room {
            if strict {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport_error(host: &str, e: reqwest::Error) -> UpstreamError {
    let connect = e.is_connect();
    // The URL is left out: messages stay short, and nothing from the request leaks.
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        reason = format!("{reason}: {inner}");
        source = inner.source();
    }
    if connect {
        UpstreamError::Connect {
            host: host.to_owned(),
            reason,
        }
    } else {
        UpstreamError::Transport {
            host: host.to_owned(),
            reason,
        }
    }
}

/// A short, printable excerpt of an untrusted body.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(EXCERPT_CHARS)
        .collect();
    out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

fn fmt_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
