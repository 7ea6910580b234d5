//! Prometheus metrics of the sidecar: request counts and latency, upstream attempts,
//! retries and fallbacks, responses cut short, tokens and cost per model, reloads, local
//! rate limiting, and the same measurements under the OpenTelemetry GenAI
//! semantic-convention names.
//!
//! [`Metrics::register`] puts every family into a `prometheus_client` registry (served on
//! the admin listener by `server.rs`). Recording methods take raw model names and bound
//! them through [`ModelLabels`], so no caller can put client text into a label. This
//! module does not parse responses (see `usage.rs`) nor serve HTTP.

mod key_reloads;
mod labels;
mod meter;
mod models;
#[cfg(test)]
mod overhead;
mod record;
mod series;
mod sets;
mod upstream_conns;
mod zero;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::config::Config;
use key_reloads::KeyReloads;
use sets::{
    AttemptLabels, Buckets, DURATION_BUCKETS, FallbackLabels, GEN_AI_DURATION_BUCKETS,
    GEN_AI_TOKEN_BUCKETS, GenAiDurationLabels, GenAiTokenLabels, HistogramFamily, IncompleteLabels,
    ModelLabelSet, RateLimitLabels, ReloadLabels, RequestLabels, RetryLabels, RouteLabels,
    RouteModelLabels, TTFB_BUCKETS, TokenLabels, UnparsedLabels,
};
use upstream_conns::UpstreamConnections;

pub use labels::{
    AttemptOutcome, IncompleteReason, RateLimitKind, ReloadResult, RetryReason, Route, TokenType,
    UnparsedKind,
};
pub use meter::RequestMeter;
pub use models::{
    EXTRA_MODEL_CAP, MAX_MODEL_LABEL_LEN, ModelLabels, ModelName, NO_MODEL, OTHER_MODEL,
    log_safe_model,
};
pub use record::{RequestRecord, RequestSeries, TokenRecord};

/// `gen_ai.provider.name` (and the older `gen_ai.system`) reported for every call.
pub const GEN_AI_PROVIDER: &str = "holysheep";

/// Every metric family of the sidecar. Cheap to clone: one shared allocation.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    models: ModelLabels,
    /// Handles per label combination, so recording skips the families' label hashing.
    series: series::SeriesCache,
    /// Address of the last `Config` whose model names went into `models`.
    config_seen: AtomicUsize,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteModelLabels>,
    ttfb: HistogramFamily<RouteModelLabels>,
    inflight: Gauge,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
    incomplete: Family<IncompleteLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabelSet, Counter<f64, AtomicU64>>,
    unpriced_tokens: Family<TokenLabels, Counter>,
    usage_missing: Family<RouteLabels, Counter>,
    unparsed: Family<UnparsedLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    rate_limited: Family<RateLimitLabels, Counter>,
    gen_ai_tokens: HistogramFamily<GenAiTokenLabels>,
    gen_ai_duration: HistogramFamily<GenAiDurationLabels>,
}

impl Metrics {
    /// Creates every family and registers it into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let f = Families {
            models: ModelLabels::default(),
            series: series::SeriesCache::default(),
            config_seen: AtomicUsize::new(0),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(Buckets(&DURATION_BUCKETS)),
            ttfb: Family::new_with_constructor(Buckets(&TTFB_BUCKETS)),
            inflight: Gauge::default(),
            attempts: Family::default(),
            retries: Family::default(),
            fallbacks: Family::default(),
            incomplete: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            unpriced_tokens: Family::default(),
            usage_missing: Family::default(),
            unparsed: Family::default(),
            config_reloads: Family::default(),
            rate_limited: Family::default(),
            gen_ai_tokens: Family::new_with_constructor(Buckets(&GEN_AI_TOKEN_BUCKETS)),
            gen_ai_duration: Family::new_with_constructor(Buckets(&GEN_AI_DURATION_BUCKETS)),
        };
        let r = registry;
        // Always 1: the version label lets one query compare sidecars with the webhook.
        let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        r.register(
            "holysheep_build_info",
            "Always 1; the version label is this sidecar's version",
            build_info,
        );
        r.register(
            "holysheep_requests",
            "Requests answered, by route, upstream model, requested model and status",
            f.requests.clone(),
        );
        r.register_with_unit(
            "holysheep_request_duration",
            "Time from request received to last response byte sent",
            Unit::Seconds,
            f.request_duration.clone(),
        );
        r.register_with_unit(
            "holysheep_time_to_first_byte",
            "Time from request received to the first response body byte sent",
            Unit::Seconds,
            f.ttfb.clone(),
        );
        r.register(
            "holysheep_inflight_requests",
            "Requests being served right now",
            f.inflight.clone(),
        );
        r.register(
            "holysheep_upstream_attempts",
            "Upstream attempts by model and outcome",
            f.attempts.clone(),
        );
        r.register(
            "holysheep_upstream_retries",
            "Upstream attempts retried, by model and reason",
            f.retries.clone(),
        );
        r.register(
            "holysheep_fallbacks",
            "Switches to a fallback model after retries on a model were exhausted",
            f.fallbacks.clone(),
        );
        for reason in IncompleteReason::ALL {
            // Known in advance: each starts at 0, so a rate over it is defined from start.
            let _ = f.incomplete.get_or_create(&IncompleteLabels { reason });
        }
        r.register(
            "holysheep_incomplete_responses",
            "Response bodies that did not reach their end, by reason: timeout (upstream idle \
             past limits.stream_idle_timeout), upstream_error, client_gone",
            f.incomplete.clone(),
        );
        r.register(
            "holysheep_tokens",
            "Tokens reported by the upstream, by upstream model and type",
            f.tokens.clone(),
        );
        r.register(
            "holysheep_cost_usd",
            "Cost in USD from the prices table, by upstream model",
            f.cost.clone(),
        );
        r.register(
            "holysheep_unpriced_tokens",
            "Tokens of models missing from the prices table (not in holysheep_cost_usd)",
            f.unpriced_tokens.clone(),
        );
        r.register(
            "holysheep_usage_missing",
            "Successful responses whose token usage could not be read",
            f.usage_missing.clone(),
        );
        r.register(
            "holysheep_usage_unparsed_events",
            "SSE events or JSON bodies forwarded untouched that could not be parsed",
            f.unparsed.clone(),
        );
        r.register(
            "holysheep_config_reloads",
            "Config file reloads by result",
            f.config_reloads.clone(),
        );
        r.register(
            "holysheep_rate_limited_requests",
            "Requests refused with 429 by the local rate limit",
            f.rate_limited.clone(),
        );
        r.register(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used (OpenTelemetry gen_ai.client.token.usage)",
            f.gen_ai_tokens.clone(),
        );
        r.register_with_unit(
            "gen_ai_client_operation_duration",
            "GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration)",
            Unit::Seconds,
            f.gen_ai_duration.clone(),
        );
        Self(Arc::new(f))
    }

    /// The model-name bounder; call [`ModelLabels::set_known`] with the configured names
    /// on start and on every config reload.
    pub fn models(&self) -> &ModelLabels {
        &self.0.models
    }

    /// Lets every model name in `config` (aliases and their targets, fallbacks, prices,
    /// budget downgrade targets) keep its own label value, and creates at 0 the counter
    /// series this config makes known in advance (see `zero.rs`). Cheap when called
    /// again with the same config: the request path calls it with the config in force,
    /// the server on start and on every reload, so a reload's new series exist before
    /// any request uses them.
    pub fn observe_config(&self, config: &Config) {
        let addr = std::ptr::from_ref(config) as usize;
        if self.0.config_seen.swap(addr, Ordering::AcqRel) == addr {
            return;
        }
        let aliases = config.aliases.keys();
        self.0.models.set_known(
            aliases
                .map(String::as_str)
                .chain(zero::upstream_models(config)),
        );
        zero::create(&self.0, config);
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn inflight(&self) -> InflightGuard {
        self.0.inflight.inc();
        InflightGuard {
            gauge: self.0.inflight.clone(),
        }
    }

    /// Registers `holysheep_key_reloads_total{result="success"|"failure"}`, read from
    /// `changes` and `failures` at each scrape: the key store counts them itself, so
    /// nothing has to be told. Call once, after the first load: `success` counts changes
    /// since then (the first load is not a reload), `failure` keeps a bad key file seen
    /// at start, which is exactly what an operator needs to see.
    pub fn register_key_reloads(
        registry: &mut Registry,
        changes: impl Fn() -> u64 + Send + Sync + 'static,
        failures: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let baseline = changes();
        registry.register_collector(Box::new(KeyReloads {
            successes: Box::new(move || changes().saturating_sub(baseline)),
            failures: Box::new(failures),
        }));
    }

    /// Registers `holysheep_upstream_connections{protocol="http1"|"http2"}`, read from
    /// `open` (HTTP/1.1 and HTTP/2 connections open) at each scrape.
    pub fn register_upstream_connections(
        registry: &mut Registry,
        open: impl Fn() -> (u64, u64) + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(UpstreamConnections(Box::new(open))));
    }
}

/// Decrements `holysheep_inflight_requests` when dropped.
#[derive(Debug)]
pub struct InflightGuard {
    gauge: Gauge,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests;
