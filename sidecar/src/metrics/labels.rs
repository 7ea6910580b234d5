//! Label values for the sidecar's metrics: bounded enums and the model-name bounder.
//!
//! Every label value either comes from an enum here or from [`ModelLabels::label`], which
//! only lets through model names the operator configured, plus a small capped set of
//! well-formed names seen at run time. This module does not register or record metrics.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Label value for a model name that is neither configured nor among the first
/// [`EXTRA_MODEL_CAP`] well-formed names seen.
pub const OTHER_MODEL: &str = "other";
/// Label value when a request carries no model (e.g. `GET /v1/models`).
pub const NO_MODEL: &str = "none";
/// How many model names not known to the config may keep their own label value.
///
/// Client-chosen names are bounded so a client looping over random names cannot blow up
/// the number of series; past the cap they all fold into [`OTHER_MODEL`].
pub const EXTRA_MODEL_CAP: usize = 32;
/// Longest model name kept as a label value; longer names fold into [`OTHER_MODEL`].
pub const MAX_MODEL_LABEL_LEN: usize = 64;

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
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SseEvent => "sse_event",
            Self::JsonBody => "json_body",
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
);

/// A bounded model label value; obtain one from [`ModelLabels::label`].
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ModelName(Arc<str>);

impl ModelName {
    /// The label value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for ModelName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// Turns client-supplied model names into bounded label values.
///
/// Configured names (aliases, their targets, fallbacks, prices) always keep their name;
/// the first [`EXTRA_MODEL_CAP`] other well-formed names too; everything else is
/// [`OTHER_MODEL`]. Well-formed means a short id of ASCII letters, digits and `.-_:/@`,
/// so a prompt pasted into the `model` field never becomes a label.
#[derive(Debug)]
pub struct ModelLabels {
    known: ArcSwap<HashSet<Arc<str>>>,
    extra: Mutex<HashSet<Arc<str>>>,
    other: ModelName,
    none: ModelName,
}

impl Default for ModelLabels {
    fn default() -> Self {
        Self {
            known: ArcSwap::from_pointee(HashSet::new()),
            extra: Mutex::new(HashSet::new()),
            other: ModelName(Arc::from(OTHER_MODEL)),
            none: ModelName(Arc::from(NO_MODEL)),
        }
    }
}

impl ModelLabels {
    /// Replaces the configured model names (call on start and on every config reload).
    /// Names that are not well-formed are skipped.
    pub fn set_known<I, S>(&self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let set: HashSet<Arc<str>> = names
            .into_iter()
            .filter(|name| is_well_formed(name.as_ref()))
            .map(|name| Arc::from(name.as_ref()))
            .collect();
        self.known.store(Arc::new(set));
    }

    /// The label value for a model name as found in a request or response.
    pub fn label(&self, model: Option<&str>) -> ModelName {
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return self.none.clone();
        };
        if let Some(name) = self.known.load().get(model) {
            return ModelName(Arc::clone(name));
        }
        if !is_well_formed(model) {
            return self.other.clone();
        }
        // A poisoned lock only means another thread panicked mid-insert; the set is
        // still a valid set, so keep using it rather than losing metrics.
        let mut extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = extra.get(model) {
            return ModelName(Arc::clone(name));
        }
        if extra.len() >= EXTRA_MODEL_CAP {
            return self.other.clone();
        }
        let name: Arc<str> = Arc::from(model);
        extra.insert(Arc::clone(&name));
        ModelName(name)
    }
}

/// `model` itself when it is a well-formed model id, else `"<invalid>"`: what logs may
/// print of a client-supplied model name.
pub fn log_safe_model(model: &str) -> &str {
    if is_well_formed(model) {
        model
    } else {
        "<invalid>"
    }
}

fn is_well_formed(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= MAX_MODEL_LABEL_LEN
        && model.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'@')
        })
}

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

    #[test]
    fn known_models_keep_their_name_and_junk_folds_into_other() {
        let labels = ModelLabels::default();
        labels.set_known(["gpt-4.1", "gpt-4"]);
        assert_eq!(labels.label(Some("gpt-4.1")).as_str(), "gpt-4.1");
        assert_eq!(labels.label(None).as_str(), NO_MODEL);
        assert_eq!(labels.label(Some("")).as_str(), NO_MODEL);
        assert_eq!(
            labels
                .label(Some("please summarise this contract"))
                .as_str(),
            OTHER_MODEL
        );
        assert_eq!(labels.label(Some(&"x".repeat(65))).as_str(), OTHER_MODEL);
        assert_eq!(labels.label(Some("a\"b")).as_str(), OTHER_MODEL);
    }

    #[test]
    fn unknown_model_names_are_capped() {
        let labels = ModelLabels::default();
        labels.set_known(["gpt-4.1"]);
        for i in 0..EXTRA_MODEL_CAP {
            let name = format!("model-{i}");
            assert_eq!(labels.label(Some(&name)).as_str(), name);
        }
        assert_eq!(labels.label(Some("model-0")).as_str(), "model-0");
        assert_eq!(labels.label(Some("one-too-many")).as_str(), OTHER_MODEL);
        // Configured names are never crowded out by the cap.
        assert_eq!(labels.label(Some("gpt-4.1")).as_str(), "gpt-4.1");
        labels.set_known(["late-addition"]);
        assert_eq!(
            labels.label(Some("late-addition")).as_str(),
            "late-addition"
        );
    }
}
