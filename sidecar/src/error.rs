//! The sidecar's own errors and their OpenAI-shaped responses.
//!
//! What it does: [`ProxyError`] names what failed; [`ProxyError::status_and_kind`] is the
//! ONE table (an exhaustive match, no wildcard arm) from error to HTTP status and OpenAI
//! `type`/`code`; [`ProxyError::into_response`] renders
//! `{"error":{"message","type","param","code"}}` so SDKs raise their usual exceptions.
//!
//! What it does not do: log. Errors are logged once, at the edge (`proxy::handle`).
//! Upstream error responses are never turned into a `ProxyError`: they pass through as is.
//! Messages never carry the API key or request bodies.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

/// A boxed error, as carried by bodies and the upstream client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy returns (upstream stream or own error).
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Displays an error with its `source()` chain, `a: b: c`, so the root cause (e.g. the
/// TLS certificate error under hyper's "client error (Connect)") is not lost. A cause
/// whose text the previous message already holds is skipped (many errors repeat it).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

/// Causes shown at most: chains are short; this only bounds a pathological one.
const MAX_CAUSES: usize = 8;

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let causes = std::iter::successors(self.0.source(), |e| e.source());
        for cause in causes.take(MAX_CAUSES) {
            let text = cause.to_string();
            if !previous.contains(&text) {
                write!(f, ": {text}")?;
            }
            previous = text;
        }
        Ok(())
    }
}

/// Errors answered by the sidecar itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No API key is loaded (file absent and `HOLYSHEEP_API_KEY` unset, or empty).
    #[error(
        "the holysheep sidecar has no API key: mount the Secret at the --api-key-file path \
         or set HOLYSHEEP_API_KEY"
    )]
    NoKey,
    /// The path is not under `/v1/`.
    #[error("no route for {path}: the holysheep sidecar forwards /v1/... only")]
    NotFound {
        /// The requested path (no query: it may carry data).
        path: String,
    },
    /// The request body is over `limits.max_body_bytes`.
    #[error("request body is larger than {limit} bytes (limits.max_body_bytes)")]
    BodyTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The request could not be read or turned into an upstream request.
    #[error("bad request: {reason}")]
    BadRequest {
        /// What was wrong.
        reason: String,
    },
    /// No connection to the upstream could be made (refused, DNS, TLS, connect timeout).
    #[error("upstream unreachable: {}", ErrorChain(&**.source))]
    UpstreamUnreachable {
        /// The connect error.
        #[source]
        source: BoxError,
    },
    /// The connection was made but the exchange failed before response headers.
    #[error("upstream request failed: {}", ErrorChain(&**.source))]
    UpstreamFailed {
        /// The client error.
        #[source]
        source: BoxError,
    },
    /// One attempt got no response headers within `retry.attempt_timeout`.
    #[error("upstream did not answer within {} (retry.attempt_timeout)", human(*.after))]
    UpstreamTimeout {
        /// The attempt timeout.
        after: Duration,
    },
    /// All attempts and fallbacks together overran `retry.deadline`.
    #[error(
        "gave up on {upstream} after {}: retry.deadline ({}) passed{}",
        attempts_text(*.attempts),
        human(*.after),
        last_error(.last.as_deref())
    )]
    DeadlineExceeded {
        /// The deadline.
        after: Duration,
        /// The upstream URL, `scheme://host:port/path` (no query).
        upstream: String,
        /// Attempts sent, fallbacks included.
        attempts: u32,
        /// The last attempt's failure, when it was not an upstream response.
        #[source]
        last: Option<Box<ProxyError>>,
    },
    /// The local rate limit refused the request.
    #[error("local rate limit reached ({limit}); retry after {retry_after:?}")]
    RateLimited {
        /// Which limit, e.g. `rate_limit.requests_per_minute`.
        limit: &'static str,
        /// When to try again (sent as `Retry-After`, in whole seconds, rounded up).
        retry_after: Duration,
    },
    /// The `models` lists refuse the model.
    #[error(transparent)]
    ModelNotAllowed(#[from] crate::models_policy::ModelNotAllowed),
    /// A `reject` budget is spent.
    #[error(transparent)]
    BudgetExceeded(#[from] crate::budget::BudgetExceeded),
    /// The upstream kept failing before any response until `limit` stopped the retries.
    #[error(
        "gave up on {upstream} after {}: {limit}; last error: {source}",
        attempts_text(*.attempts)
    )]
    RetriesExhausted {
        /// What stopped the retries.
        limit: RetryLimit,
        /// The upstream URL, `scheme://host:port/path` (no query).
        upstream: String,
        /// Attempts sent, fallbacks included.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: Box<ProxyError>,
    },
    /// The sidecar is shutting down and refuses new work.
    #[error("the holysheep sidecar is shutting down; retry")]
    ShuttingDown,
    /// After the response headers, the upstream body sent nothing for
    /// `limits.stream_idle_timeout`; the sidecar ended it. Only ever the error of a
    /// response body (or its final SSE error event): the status is already sent.
    #[error(
        "the upstream sent nothing for {} after the response started \
         (limits.stream_idle_timeout); the holysheep sidecar ended the response",
        human(*.after)
    )]
    StreamIdle {
        /// The configured limit.
        after: Duration,
    },
    /// A method the proxy never forwards (`CONNECT`: it is not a tunnelling proxy).
    #[error(
        "{method} is not supported: the holysheep sidecar is not a tunnelling proxy; send \
         plain HTTP requests to its /v1/... URLs (and keep it out of HTTPS_PROXY)"
    )]
    MethodNotAllowed {
        /// The refused method.
        method: String,
    },
    /// The path has a `.` or `..` segment (possibly percent-encoded), which the upstream
    /// could resolve to somewhere outside `/v1/`.
    #[error(
        "request path {path} has a '.' or '..' segment: the holysheep sidecar forwards \
         normalized /v1/... paths only; resolve the path in the client"
    )]
    DotSegmentPath {
        /// The requested path (no query: it may carry data).
        path: String,
    },
    /// The client's body could not be read: its framing is broken.
    #[error(
        "failed to read the request body ({reason}): the client sent a malformed or \
         truncated body; check its Content-Length or chunked encoding"
    )]
    BodyUnreadable {
        /// What the HTTP layer reported.
        reason: String,
    },
}

/// What stopped the retries of a request, short of the deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryLimit {
    /// `retry.max_attempts` attempts were made.
    Attempts {
        /// The configured `retry.max_attempts`.
        max: u32,
    },
    /// The retry budget is spent: retries are at most `retry.budget_ratio` of recent
    /// requests, and the upstream has been failing for many of them.
    Budget {
        /// The configured `retry.budget_ratio`.
        ratio: f64,
    },
    /// The request body was streamed: it is sent once and cannot be sent again.
    NotReplayable,
}

impl std::fmt::Display for RetryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Attempts { max } => write!(f, "retry.max_attempts ({max}) reached"),
            Self::Budget { ratio } => write!(
                f,
                "the retry budget is spent (retry.budget_ratio {ratio}: the upstream is \
                 failing for many recent requests)"
            ),
            Self::NotReplayable => f.write_str("a streamed request body is sent only once"),
        }
    }
}

/// A duration as the config writes it (`250ms`, `5m`), whole milliseconds.
fn human(d: Duration) -> humantime::FormattedDuration {
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis))
}

fn attempts_text(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_owned()
    } else {
        format!("{n} attempts")
    }
}

fn last_error(last: Option<&ProxyError>) -> String {
    last.map(|e| format!("; last error: {e}"))
        .unwrap_or_default()
}

/// OpenAI `type` values used in error bodies.
const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";
const RATE_LIMIT: &str = "rate_limit_error";
const TIMEOUT: &str = "timeout_error";
/// OpenAI's type for a spent quota (what its own billing limit answers).
const INSUFFICIENT_QUOTA: &str = "insufficient_quota";

/// `Allow` of a 405: every method is forwarded but `CONNECT`; these are the usual ones.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

impl ProxyError {
    /// The one table: status, OpenAI `type` and `code` for each error.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::NoKey => (StatusCode::SERVICE_UNAVAILABLE, SERVER_ERROR, "no_api_key"),
            Self::NotFound { .. } => (StatusCode::NOT_FOUND, INVALID_REQUEST, "unknown_url"),
            Self::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID_REQUEST,
                "request_too_large",
            ),
            Self::BadRequest { .. } => (StatusCode::BAD_REQUEST, INVALID_REQUEST, "bad_request"),
            Self::UpstreamUnreachable { .. } => (
                StatusCode::BAD_GATEWAY,
                SERVER_ERROR,
                "upstream_unreachable",
            ),
            Self::UpstreamFailed { .. } => {
                (StatusCode::BAD_GATEWAY, SERVER_ERROR, "upstream_failed")
            }
            Self::UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                SERVER_ERROR,
                "upstream_timeout",
            ),
            Self::DeadlineExceeded { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                SERVER_ERROR,
                "deadline_exceeded",
            ),
            Self::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                RATE_LIMIT,
                "local_rate_limit_exceeded",
            ),
            Self::ModelNotAllowed(_) => {
                (StatusCode::FORBIDDEN, INVALID_REQUEST, "model_not_allowed")
            }
            Self::BudgetExceeded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                INSUFFICIENT_QUOTA,
                "budget_exceeded",
            ),
            // Same answer as the last attempt's failure, so clients see one meaning per status.
            Self::RetriesExhausted { source, .. } => source.status_and_kind(),
            Self::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER_ERROR,
                "shutting_down",
            ),
            Self::StreamIdle { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, TIMEOUT, "stream_idle_timeout")
            }
            Self::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID_REQUEST,
                "method_not_allowed",
            ),
            Self::DotSegmentPath { .. } => {
                (StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_path")
            }
            Self::BodyUnreadable { .. } => (
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "invalid_request_body",
            ),
        }
    }

    /// Whether the failure happened before the upstream saw the request (safe to retry
    /// even for non-idempotent methods).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::UpstreamUnreachable { .. })
    }

    /// Upstream failures the sidecar answers only once its own retries are over.
    fn is_after_retries(&self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable { .. }
                | Self::UpstreamFailed { .. }
                | Self::UpstreamTimeout { .. }
                | Self::DeadlineExceeded { .. }
                | Self::RetriesExhausted { .. }
                | Self::StreamIdle { .. }
        )
    }

    /// Renders the OpenAI-shaped JSON error response.
    pub fn into_response(self) -> Response<ResponseBody> {
        let (status, kind, code) = self.status_and_kind();
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": null,
                "code": code,
            }
        });
        let mut resp = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.is_after_retries() {
            // The sidecar already retried (or could not): the SDKs must not multiply it.
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Self::RateLimited { retry_after, .. } = &self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Self::BudgetExceeded(e) = &self {
            // Retrying cannot help before the window resets.
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(e.retry_after.as_secs().max(1)),
            );
        }
        if let Self::MethodNotAllowed { .. } = &self {
            headers.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(resp: Response<ResponseBody>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn each_error_is_openai_shaped_with_its_status() {
        let io = || -> BoxError { "refused".into() };
        let cases = [
            (ProxyError::NoKey, 503, "no_api_key"),
            (
                ProxyError::NotFound { path: "/x".into() },
                404,
                "unknown_url",
            ),
            (
                ProxyError::BodyTooLarge { limit: 10 },
                413,
                "request_too_large",
            ),
            (
                ProxyError::BadRequest { reason: "x".into() },
                400,
                "bad_request",
            ),
            (
                ProxyError::UpstreamUnreachable { source: io() },
                502,
                "upstream_unreachable",
            ),
            (
                ProxyError::UpstreamFailed { source: io() },
                502,
                "upstream_failed",
            ),
            (
                ProxyError::UpstreamTimeout {
                    after: Duration::from_secs(1),
                },
                504,
                "upstream_timeout",
            ),
            (
                ProxyError::DeadlineExceeded {
                    after: Duration::from_secs(1),
                    upstream: "https://api.holysheep.ai:443/v1/chat/completions".into(),
                    attempts: 2,
                    last: None,
                },
                504,
                "deadline_exceeded",
            ),
            (
                ProxyError::RateLimited {
                    limit: "x",
                    retry_after: Duration::from_millis(1500),
                },
                429,
                "local_rate_limit_exceeded",
            ),
            (ProxyError::ShuttingDown, 503, "shutting_down"),
            (
                ProxyError::StreamIdle {
                    after: Duration::from_secs(300),
                },
                504,
                "stream_idle_timeout",
            ),
        ];
        for (err, status, code) in cases {
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status, "{code}");
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
            let v = body_json(resp).await;
            assert_eq!(v["error"]["code"], code);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert!(v["error"]["type"].is_string());
        }
    }

    #[tokio::test]
    async fn refusals_of_the_request_itself_are_openai_shaped() {
        let cases = [
            (
                ProxyError::MethodNotAllowed {
                    method: "CONNECT".into(),
                },
                405,
                "method_not_allowed",
            ),
            (
                ProxyError::DotSegmentPath {
                    path: "/v1/../x".into(),
                },
                400,
                "invalid_path",
            ),
            (
                ProxyError::BodyUnreadable {
                    reason: "invalid chunk size line".into(),
                },
                400,
                "invalid_request_body",
            ),
        ];
        for (err, status, code) in cases {
            let allow = matches!(err, ProxyError::MethodNotAllowed { .. });
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status, "{code}");
            assert_eq!(resp.headers().contains_key(header::ALLOW), allow, "{code}");
            assert!(!resp.headers().contains_key("x-should-retry"), "{code}");
            let v = body_json(resp).await;
            assert_eq!(v["error"]["code"], code);
            assert_eq!(v["error"]["type"], INVALID_REQUEST);
        }
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        let err = ProxyError::RateLimited {
            limit: "x",
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(err.into_response().headers()[header::RETRY_AFTER], "2");
        let err = ProxyError::RateLimited {
            limit: "x",
            retry_after: Duration::ZERO,
        };
        assert_eq!(err.into_response().headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn exhausted_retries_answer_like_the_last_failure() {
        let last = ProxyError::UpstreamTimeout {
            after: Duration::from_secs(1),
        };
        let err = ProxyError::RetriesExhausted {
            limit: RetryLimit::Attempts { max: 3 },
            upstream: "http://127.0.0.1:9/v1/chat/completions".into(),
            attempts: 3,
            source: Box::new(last),
        };
        assert_eq!(err.status_and_kind().0, StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn giving_up_names_the_limit_the_upstream_and_the_last_error() {
        let url = "https://api.holysheep.ai:443/v1/chat/completions";
        let refused = || {
            Box::new(ProxyError::UpstreamUnreachable {
                source: "connection refused".into(),
            })
        };
        let cases = [
            (
                ProxyError::RetriesExhausted {
                    limit: RetryLimit::Attempts { max: 3 },
                    upstream: url.into(),
                    attempts: 3,
                    source: refused(),
                },
                "gave up on https://api.holysheep.ai:443/v1/chat/completions after 3 attempts: \
                 retry.max_attempts (3) reached; last error: upstream unreachable: connection refused",
            ),
            (
                ProxyError::RetriesExhausted {
                    limit: RetryLimit::Budget { ratio: 0.2 },
                    upstream: url.into(),
                    attempts: 1,
                    source: refused(),
                },
                "gave up on https://api.holysheep.ai:443/v1/chat/completions after 1 attempt: \
                 the retry budget is spent (retry.budget_ratio 0.2: the upstream is failing for \
                 many recent requests); last error: upstream unreachable: connection refused",
            ),
            (
                ProxyError::DeadlineExceeded {
                    after: Duration::from_millis(700),
                    upstream: url.into(),
                    attempts: 3,
                    last: Some(Box::new(ProxyError::UpstreamTimeout {
                        after: Duration::from_millis(250),
                    })),
                },
                "gave up on https://api.holysheep.ai:443/v1/chat/completions after 3 attempts: \
                 retry.deadline (700ms) passed; last error: upstream did not answer within \
                 250ms (retry.attempt_timeout)",
            ),
            (
                ProxyError::DeadlineExceeded {
                    after: Duration::from_secs(2),
                    upstream: url.into(),
                    attempts: 2,
                    last: None,
                },
                "gave up on https://api.holysheep.ai:443/v1/chat/completions after 2 attempts: \
                 retry.deadline (2s) passed",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    /// An error with a source, like hyper-util's "client error (Connect)".
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    /// An error that repeats its source in its own message.
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn upstream_failures_carry_their_root_cause() {
        let root = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let err = ProxyError::UpstreamUnreachable {
            source: Box::new(Outer(root)),
        };
        assert_eq!(
            err.to_string(),
            "upstream unreachable: client error (Connect): invalid peer certificate: UnknownIssuer"
        );
        // A cause already in its parent's text is not repeated.
        let err = ProxyError::UpstreamFailed {
            source: Box::new(Outer(std::io::Error::other(Repeats(
                std::io::Error::other("refused"),
            )))),
        };
        assert_eq!(
            err.to_string(),
            "upstream request failed: client error (Connect): tcp connect error: refused"
        );
    }

    #[test]
    fn idle_streams_are_timeouts() {
        let err = ProxyError::StreamIdle {
            after: Duration::from_millis(300),
        };
        assert_eq!(err.status_and_kind().1, "timeout_error");
        assert!(err.to_string().contains("limits.stream_idle_timeout"));
    }
}
