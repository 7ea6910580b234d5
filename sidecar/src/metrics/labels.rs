//! Label values for the sidecar's metrics: the bounded enums (route, token type, retry
//! reason, attempt outcome, reload result, rate limit, unparsed kind, incomplete reason). Every label value
//! comes from one of these or from `models.rs`. This module does not register or record
//! metrics.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// The OpenAI API family a request belongs to, from its path. Unknown paths fold into
/// [`Route::Other`], so a label never holds a client-chosen path.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Route {
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/completions`
    Completions,
    /// `/v1/embeddings`
    Embeddings,
    /// `/v1/responses` and below
    Responses,
    /// `/v1/models` and below
    Models,
    /// `/v1/moderations`
    Moderations,
    /// `/v1/audio/...`
    Audio,
    /// `/v1/images/...`
    Images,
    /// Anything else.
    Other,
}

impl Route {
    /// The routes that carry tokens (those with a GenAI operation), for series that
    /// start at 0.
    pub const WITH_TOKENS: [Self; 4] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Embeddings,
        Self::Responses,
    ];

    /// Classifies a request path, with or without the `/v1` prefix.
    pub fn from_path(path: &str) -> Self {
        let rest = path.trim_start_matches('/');
        let rest = rest.strip_prefix("v1/").unwrap_or(rest);
        let rest = rest.trim_end_matches('/');
        let (first, tail) = match rest.split_once('/') {
            Some((first, tail)) => (first, Some(tail)),
            None => (rest, None),
        };
        match (first, tail) {
            ("chat", Some("completions")) => Self::ChatCompletions,
            ("completions", None) => Self::Completions,
            ("embeddings", None) => Self::Embeddings,
            ("responses", _) => Self::Responses,
            ("models", _) => Self::Models,
            ("moderations", None) => Self::Moderations,
            ("audio", Some(_)) => Self::Audio,
            ("images", Some(_)) => Self::Images,
            _ => Self::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Models => "models",
            Self::Moderations => "moderations",
            Self::Audio => "audio",
            Self::Images => "images",
            Self::Other => "other",
        }
    }

    /// The OpenTelemetry GenAI `gen_ai.operation.name` for routes that are GenAI
    /// operations with tokens; `None` for the rest (they get no `gen_ai_*` metrics).
    pub fn gen_ai_operation(self) -> Option<&'static str> {
        match self {
            Self::ChatCompletions | Self::Responses => Some("chat"),
            Self::Completions => Some("text_completion"),
            Self::Embeddings => Some("embeddings"),
            Self::Models | Self::Moderations | Self::Audio | Self::Images | Self::Other => None,
        }
    }
}

/// Token direction, the `type` label of `holysheep_tokens_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum TokenType {
    /// Prompt / input tokens.
    Input,
    /// Completion / output tokens.
    Output,
}

impl TokenType {
    /// Every value, for series that start at 0.
    pub const ALL: [Self; 2] = [Self::Input, Self::Output];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// Why an upstream attempt is retried (`reason` of `holysheep_upstream_retries_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RetryReason {
    /// 429 from the upstream.
    RateLimited,
    /// 500, 502, 503 or 504 from the upstream.
    ServerError,
    /// Connecting failed.
    Connect,
    /// No response headers within the attempt timeout.
    Timeout,
}

impl RetryReason {
    /// Every value, for series that start at 0.
    pub const ALL: [Self; 4] = [
        Self::RateLimited,
        Self::ServerError,
        Self::Connect,
        Self::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
        }
    }
}

/// What one upstream attempt ended with (`outcome` of `holysheep_upstream_attempts_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 1xx, 2xx or 3xx.
    Success,
    /// 4xx other than 429: the request itself was refused; not retried.
    ClientError,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// Connecting (or TLS) failed.
    ConnectError,
    /// No response headers within the attempt timeout.
    Timeout,
}

impl AttemptOutcome {
    /// Every value, for series that start at 0.
    pub const ALL: [Self; 6] = [
        Self::Success,
        Self::ClientError,
        Self::RateLimited,
        Self::ServerError,
        Self::ConnectError,
        Self::Timeout,
    ];

    /// Outcome of an attempt that got response headers with this status.
    pub fn from_status(status: u16) -> Self {
        match status {
            429 => Self::RateLimited,
            400..=499 => Self::ClientError,
            500..=599 => Self::ServerError,
            _ => Self::Success,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::ClientError => "client_error",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::ConnectError => "connect_error",
            Self::Timeout => "timeout",
        }
    }
}

/// Result of a reload (`result` of the config and key reload counters).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new file was applied.
    Success,
    /// The new file was refused; the previous one stays in force.
    Failure,
}

impl ReloadResult {
    /// Every value, for series that start at 0.
    pub const ALL: [Self; 2] = [Self::Success, Self::Failure];

    /// `Success` for `Ok`, `Failure` for `Err`.
    pub fn from_ok(ok: bool) -> Self {
        if ok { Self::Success } else { Self::Failure }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// Which local limit refused a request (`limit` of `holysheep_rate_limited_requests_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RateLimitKind {
    /// `rate_limit.requests_per_minute`.
    Requests,
    /// `rate_limit.tokens_per_minute`.
    Tokens,
}

impl RateLimitKind {
    /// Every value, for series that start at 0.
    pub const ALL: [Self; 2] = [Self::Requests, Self::Tokens];

    /// From the config field that refused the request, e.g.
    /// `rate_limit.tokens_per_minute`.
    pub fn from_field(field: &str) -> Self {
        if field.contains("tokens") {
            Self::Tokens
        } else {
            Self::Requests
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
        }
    }
}

/// Where a response's usage could not be read (`kind` of
/// `holysheep_usage_unparsed_events_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UnparsedKind {
    /// One SSE event that was not JSON, or too long to inspect.
    SseEvent,
    /// A JSON response body that did not parse.
    JsonBody,
}

impl UnparsedKind {
    /// Every value, for series that start at 0.
    pub const ALL: [Self; 2] = [Self::SseEvent, Self::JsonBody];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SseEvent => "sse_event",
            Self::JsonBody => "json_body",
        }
    }
}

/// Why a response body did not reach its end (`reason` of
/// `holysheep_incomplete_responses_total`); the values are the request log's `end`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum IncompleteReason {
    /// The upstream sent nothing for `limits.stream_idle_timeout`.
    Timeout,
    /// The upstream body failed (reset, closed mid-body).
    UpstreamError,
    /// The client went away before the end.
    ClientGone,
}

impl IncompleteReason {
    /// Every value, for series that start at 0.
    pub const ALL: [Self; 3] = [Self::Timeout, Self::UpstreamError, Self::ClientGone];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::UpstreamError => "upstream_error",
            Self::ClientGone => "client_gone",
        }
    }
}

/// Protocol of an upstream connection (`protocol` of `holysheep_upstream_connections`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
}

impl UpstreamProtocol {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

macro_rules! label_value_from_as_str {
    ($($ty:ty),* $(,)?) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

label_value_from_as_str!(
    Route,
    TokenType,
    RetryReason,
    AttemptOutcome,
    ReloadResult,
    RateLimitKind,
    UnparsedKind,
    IncompleteReason,
    UpstreamProtocol,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_classify_known_paths_and_fold_the_rest() {
        let cases = [
            ("/v1/chat/completions", Route::ChatCompletions),
            ("/v1/completions", Route::Completions),
            ("/v1/embeddings", Route::Embeddings),
            ("/v1/responses", Route::Responses),
            ("/v1/responses/resp_123", Route::Responses),
            ("/v1/models", Route::Models),
            ("/v1/models/gpt-4.1", Route::Models),
            ("/v1/moderations", Route::Moderations),
            ("/v1/audio/speech", Route::Audio),
            ("/v1/images/generations", Route::Images),
            ("chat/completions", Route::ChatCompletions),
            ("/v1/chat/completions/", Route::ChatCompletions),
            ("/v1/chat", Route::Other),
            ("/v1/chat/completions/extra", Route::Other),
            ("/v1/ignore previous instructions", Route::Other),
            ("/", Route::Other),
            ("", Route::Other),
        ];
        for (path, want) in cases {
            assert_eq!(Route::from_path(path), want, "path {path:?}");
        }
    }

    #[test]
    fn rate_limit_kind_from_config_field() {
        assert_eq!(
            RateLimitKind::from_field("rate_limit.tokens_per_minute"),
            RateLimitKind::Tokens
        );
        assert_eq!(
            RateLimitKind::from_field("rate_limit.requests_per_minute"),
            RateLimitKind::Requests
        );
    }

    #[test]
    fn attempt_outcome_from_status() {
        assert_eq!(AttemptOutcome::from_status(200), AttemptOutcome::Success);
        assert_eq!(
            AttemptOutcome::from_status(400),
            AttemptOutcome::ClientError
        );
        assert_eq!(
            AttemptOutcome::from_status(429),
            AttemptOutcome::RateLimited
        );
        assert_eq!(
            AttemptOutcome::from_status(503),
            AttemptOutcome::ServerError
        );
    }
}
