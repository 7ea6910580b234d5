//! [`RequestMeter`]: follows one proxied request from arrival to the last byte of its
//! response, then records its metrics and writes its log line, once.
//!
//! The proxy creates it first thing, tells it what it learns (models, stream usage mode,
//! attempts) and hands it the final response, whose body it wraps in a
//! [`UsageBody`]. A meter dropped before it got a response is a client that went away
//! before the response headers (hyper drops the request's future then): it is recorded
//! as status 499, `end: client_gone`. It does not parse requests or decide retries.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response, header};
use http_body::Body;

use super::{
    IncompleteReason, InflightGuard, Metrics, RequestRecord, Route, TokenRecord, UnparsedKind,
};
use crate::config::Config;
use crate::logging::RequestLog;
use crate::usage::{MediaKind, StreamEnd, StreamUsage, TapMode, UsageBody, UsageReport, cost_usd};

/// Longest client `x-request-id` reused as the request id.
const MAX_REQUEST_ID_LEN: usize = 64;
/// The status recorded for a client gone before the response headers (nginx's
/// "client closed request"; nothing was sent, so no real status exists).
const CLIENT_GONE_STATUS: u16 = 499;

/// One request in flight; see the module docs.
pub struct RequestMeter {
    metrics: Metrics,
    /// The client's `x-request-id`, when well-formed; otherwise the log line draws one.
    client_request_id: Option<String>,
    route: Route,
    started: Instant,
    requested_model: Option<Arc<str>>,
    upstream_model: Option<Arc<str>>,
    stream_usage: StreamUsage,
    attempts: u32,
    on_tokens: Option<TokensHook>,
    on_cost: Option<CostHook>,
    #[expect(
        dead_code,
        reason = "held for its Drop: in flight until the meter goes"
    )]
    inflight: InflightGuard,
    /// The request was recorded; dropping the meter then records nothing more.
    recorded: bool,
}

/// Called once with the response's total tokens (0 when unknown), e.g. to settle a
/// token rate-limit reservation.
type TokensHook = Box<dyn FnOnce(u64) + Send + 'static>;

/// Called once with the response's cost in USD, as `holysheep_cost_usd_total` counts it
/// (0 when no usage was reported or the model has no price), e.g. to settle a budget.
type CostHook = Box<dyn FnOnce(f64) + Send + 'static>;

impl std::fmt::Debug for RequestMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMeter")
            .field("client_request_id", &self.client_request_id)
            .field("route", &self.route)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl RequestMeter {
    /// Starts metering a request to `path` (counts it in flight).
    pub fn start(metrics: &Metrics, path: &str, headers: &HeaderMap) -> Self {
        // Built at compile time: a `&str` key is parsed and checked on every lookup.
        static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
        let client_request_id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|id| is_safe_id(id))
            .map(str::to_owned);
        Self {
            metrics: metrics.clone(),
            client_request_id,
            route: Route::from_path(path),
            started: Instant::now(),
            requested_model: None,
            upstream_model: None,
            stream_usage: StreamUsage::NotApplicable,
            attempts: 0,
            on_tokens: None,
            on_cost: None,
            inflight: metrics.inflight(),
            recorded: false,
        }
    }

    /// The client's id, when it sent a well-formed `x-request-id`.
    pub fn client_request_id(&self) -> Option<&str> {
        self.client_request_id.as_deref()
    }

    /// The request's route.
    pub fn route(&self) -> Route {
        self.route
    }

    /// The model the client asked for and the one sent upstream.
    pub fn set_models(&mut self, requested: Option<Arc<str>>, upstream: Option<Arc<str>>) {
        self.requested_model = requested;
        self.upstream_model = upstream;
    }

    /// A fallback switched the upstream model (the same name again changes nothing).
    pub fn set_upstream_model(&mut self, upstream: &Arc<str>) {
        if self.upstream_model.as_deref() != Some(&**upstream) {
            self.upstream_model = Some(Arc::clone(upstream));
        }
    }

    /// What the request side did about stream usage.
    pub fn set_stream_usage(&mut self, stream_usage: StreamUsage) {
        self.stream_usage = stream_usage;
    }

    /// The metrics the meter records into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Upstream attempts made so far, updated as each one is sent, so a request that
    /// ends early still reports the attempts it made.
    pub fn set_attempts(&mut self, attempts: u32) {
        self.attempts = attempts;
    }

    /// Runs `hook` with the response's total tokens when the body ends (0 when the
    /// response reported none).
    pub fn on_tokens(&mut self, hook: impl FnOnce(u64) + Send + 'static) {
        self.on_tokens = Some(Box::new(hook));
    }

    /// Runs `hook` with the response's cost when the body ends (0 when unknown).
    pub fn on_cost(&mut self, hook: impl FnOnce(f64) + Send + 'static) {
        self.on_cost = Some(Box::new(hook));
    }

    /// Wraps the response body so usage is read as it streams; when the body ends (or is
    /// dropped) the request's metrics are recorded and its log line written. `config`
    /// supplies the prices in force; `media` is the response's [`MediaKind`].
    pub fn finish<B>(
        self,
        resp: Response<B>,
        media: MediaKind,
        config: Arc<Config>,
    ) -> Response<UsageBody<B>>
    where
        B: Body<Data = Bytes>,
    {
        let (mut parts, body) = resp.into_parts();
        let mode = TapMode::for_response(parts.status, &parts.headers, media, self.stream_usage);
        if mode == TapMode::SseStripInjected {
            // Events are removed, so the upstream's length no longer holds.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let status = parts.status.as_u16();
        let report = Box::new(move |report: UsageReport| self.report(status, &config, report));
        Response::from_parts(parts, UsageBody::new(body, mode, report))
    }

    fn report(mut self, status: u16, config: &Config, report: UsageReport) {
        self.recorded = true;
        if let Some(hook) = self.on_tokens.take() {
            hook(
                report
                    .usage
                    .map_or(0, |u| u.input_tokens.saturating_add(u.output_tokens)),
            );
        }
        let metrics = &self.metrics;
        metrics.observe_config(config);
        let rec = RequestRecord {
            route: self.route,
            requested_model: self.requested_model.as_deref(),
            upstream_model: self.upstream_model.as_deref(),
            response_model: report.response_model.as_deref(),
            status,
            duration: report.finished_at.saturating_duration_since(self.started),
            ttfb: report
                .first_byte_at
                .map(|t| t.saturating_duration_since(self.started)),
        };
        let series = metrics.record_request(&rec);
        let kind = match report.mode {
            TapMode::Json => UnparsedKind::JsonBody,
            TapMode::Off | TapMode::Sse | TapMode::SseStripInjected => UnparsedKind::SseEvent,
        };
        metrics.record_unparsed(kind, report.unparsed);
        let mut cost = None;
        if let Some(usage) = report.usage {
            let price = self
                .upstream_model
                .as_deref()
                .and_then(|m| config.prices.get(m));
            cost = price.map(|p| cost_usd(&usage, p));
            metrics.record_tokens(
                &series,
                &rec,
                &TokenRecord {
                    input: usage.input_tokens,
                    output: usage.output_tokens,
                    price_per_million: price.map(|p| (p.input, p.output)),
                },
            );
        } else if report.mode != TapMode::Off
            && report.end == StreamEnd::Complete
            && self.route.gen_ai_operation().is_some()
        {
            // A successful completion/embedding read to the end without usage: spend we
            // cannot see. (Model lists and the like never carry usage.)
            metrics.record_usage_missing(self.route);
        }
        if let Some(hook) = self.on_cost.take() {
            hook(cost.unwrap_or(0.0));
        }
        RequestLog {
            client_request_id: self.client_request_id.as_deref(),
            request: rec,
            attempts: self.attempts,
            input_tokens: report.usage.map(|u| u.input_tokens),
            output_tokens: report.usage.map(|u| u.output_tokens),
            cost_usd: cost,
            stream: matches!(report.mode, TapMode::Sse | TapMode::SseStripInjected),
            end: report.end,
        }
        .emit();
        if let Some(reason) = incomplete_reason(report.end) {
            metrics.record_incomplete(reason);
        }
        // In flight until the report is made (the last byte has gone): the guard goes
        // with `self`, here.
    }

    /// The client went away before a response existed: one 499 record and log line.
    fn report_client_gone(&mut self) {
        self.recorded = true;
        if let Some(hook) = self.on_tokens.take() {
            // Nothing was reported back: nothing beyond the reservation is charged.
            hook(0);
        }
        if let Some(hook) = self.on_cost.take() {
            hook(0.0);
        }
        let rec = RequestRecord {
            route: self.route,
            requested_model: self.requested_model.as_deref(),
            upstream_model: self.upstream_model.as_deref(),
            response_model: None,
            status: CLIENT_GONE_STATUS,
            duration: self.started.elapsed(),
            ttfb: None,
        };
        let _series = self.metrics.record_request(&rec);
        RequestLog {
            client_request_id: self.client_request_id.as_deref(),
            request: rec,
            attempts: self.attempts,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            stream: false,
            end: StreamEnd::Dropped,
        }
        .emit();
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        // `finish` hands the meter to the body's report, which records it; a meter
        // dropped unrecorded never got that far.
        if !self.recorded {
            self.report_client_gone();
        }
    }
}

/// The `holysheep_incomplete_responses_total` reason of a body's end, if it was cut.
fn incomplete_reason(end: StreamEnd) -> Option<IncompleteReason> {
    match end {
        StreamEnd::Complete => None,
        StreamEnd::Error => Some(IncompleteReason::UpstreamError),
        StreamEnd::Timeout => Some(IncompleteReason::Timeout),
        StreamEnd::Dropped => Some(IncompleteReason::ClientGone),
    }
}

fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::metrics::ReloadResult;

    #[test]
    fn request_ids_from_clients_only_when_safe() {
        let metrics = Metrics::register(&mut Registry::default());
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "abc-123".parse().unwrap());
        let meter = RequestMeter::start(&metrics, "/v1/models", &headers);
        assert_eq!(meter.client_request_id(), Some("abc-123"));
        assert_eq!(meter.route(), Route::Models);
        headers.insert("x-request-id", "has space".parse().unwrap());
        let meter = RequestMeter::start(&metrics, "/v1/models", &headers);
        assert_eq!(meter.client_request_id(), None);
    }

    #[tokio::test]
    async fn finish_records_tokens_cost_and_inflight() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let mut meter = RequestMeter::start(&metrics, "/v1/embeddings", &HeaderMap::new());
        meter.set_models(
            Some("text-embedding-3-small".into()),
            Some("text-embedding-3-small".into()),
        );
        meter.set_attempts(1);
        let mut config = Config::default();
        config.prices.insert(
            "text-embedding-3-small".to_owned(),
            crate::config::Price {
                input: 0.02,
                output: 0.0,
            },
        );
        let json =
            r#"{"model":"text-embedding-3-small","usage":{"prompt_tokens":50,"total_tokens":50}}"#;
        let resp = Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap();
        let settled = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let hook = Arc::clone(&settled);
        meter.on_tokens(move |t| hook.store(t, std::sync::atomic::Ordering::SeqCst));
        let media = MediaKind::of(resp.headers());
        let resp = meter.finish(resp, media, Arc::new(config));
        assert_eq!(metrics.0.inflight.get(), 1, "in flight until the body ends");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, json.as_bytes());
        assert_eq!(metrics.0.inflight.get(), 0);
        assert_eq!(settled.load(std::sync::atomic::Ordering::SeqCst), 50);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"holysheep_tokens_total{model="text-embedding-3-small",type="input"} 50"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"holysheep_cost_usd_total{model="text-embedding-3-small"} 0.000001"#)
        );
        assert_eq!(metrics.config_reloads(ReloadResult::Success), 0);
    }

    #[test]
    fn a_meter_dropped_before_its_response_is_a_499() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let mut meter = RequestMeter::start(&metrics, "/v1/chat/completions", &HeaderMap::new());
        meter.set_models(Some("gpt-4".into()), Some("gpt-4.1".into()));
        meter.set_attempts(2);
        let settled = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let hook = Arc::clone(&settled);
        meter.on_tokens(move |t| hook.store(t, std::sync::atomic::Ordering::SeqCst));
        assert_eq!(metrics.0.inflight.get(), 1);
        // What hyper does to the handler when the client leaves before the headers.
        drop(meter);
        assert_eq!(metrics.0.inflight.get(), 0);
        assert_eq!(settled.load(std::sync::atomic::Ordering::SeqCst), 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"holysheep_requests_total{route="chat_completions",model="gpt-4.1",requested_model="gpt-4",status="499"} 1"#
            ),
            "{text}"
        );
        // A body cut after the headers is not a 499, and is not counted twice.
        let meter = RequestMeter::start(&metrics, "/v1/chat/completions", &HeaderMap::new());
        let resp = meter.finish(
            Response::new(Full::new(Bytes::from_static(b"{}"))),
            MediaKind::Other,
            Arc::new(Config::default()),
        );
        drop(resp);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"status="499"} 1"#), "{text}");
        assert!(
            text.contains(r#"holysheep_incomplete_responses_total{reason="client_gone"} 1"#),
            "{text}"
        );
    }
}
