//! Prometheus metrics of the sidecar: request counts and latency, upstream attempts,
//! retries and fallbacks, tokens and cost per model, reloads, local rate limiting, and the
//! same measurements under the OpenTelemetry GenAI semantic-convention names.
//!
//! [`Metrics::register`] puts every family into a `prometheus_client` registry (served on
//! the admin listener by `server.rs`). Recording methods take raw model names and bound
//! them through [`ModelLabels`], so no caller can put client text into a label. This
//! module does not parse responses (see `usage.rs`) nor serve HTTP.

mod labels;
mod meter;
#[cfg(test)]
mod overhead;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::config::Config;

pub use labels::{
    AttemptOutcome, EXTRA_MODEL_CAP, ModelLabels, ModelName, NO_MODEL, OTHER_MODEL, RateLimitKind,
    ReloadResult, RetryReason, Route, TokenType, UnparsedKind, log_safe_model,
};
pub use meter::RequestMeter;

/// `gen_ai.provider.name` (and the older `gen_ai.system`) reported for every call.
pub const GEN_AI_PROVIDER: &str = "holysheep";

/// Request latency buckets (seconds): LLM calls span ~50 ms to minutes.
const DURATION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];
/// Time-to-first-byte buckets (seconds).
const TTFB_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0,
];
/// `gen_ai.client.operation.duration` buckets from the semantic conventions.
const GEN_AI_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// `gen_ai.client.token.usage` buckets from the semantic conventions.
const GEN_AI_TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Labels of `holysheep_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    model: ModelName,
    requested_model: ModelName,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteModelLabels {
    route: Route,
    model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabelSet {
    model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: ModelName,
    r#type: TokenType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    model: ModelName,
    reason: RetryReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    from_model: ModelName,
    to_model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    model: ModelName,
    outcome: AttemptOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    limit: RateLimitKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnparsedLabels {
    kind: UnparsedKind,
}

/// Attributes shared by the GenAI metrics, named as the semantic conventions name them
/// (dots become underscores in Prometheus form).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: &'static str,
    gen_ai_system: &'static str,
    gen_ai_request_model: ModelName,
    gen_ai_response_model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiTokenLabels {
    #[prometheus(flatten)]
    common: GenAiLabels,
    gen_ai_token_type: TokenType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiDurationLabels {
    #[prometheus(flatten)]
    common: GenAiLabels,
    /// Empty (which Prometheus treats as absent) on success, else the HTTP status class.
    error_type: &'static str,
}

/// Builds histograms with fixed buckets inside a `Family`.
#[derive(Clone, Copy)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type HistogramFamily<L> = Family<L, Histogram, Buckets>;

/// One finished request, as the proxy saw it. Model names are raw; they are bounded here.
#[derive(Clone, Copy, Debug)]
pub struct RequestRecord<'a> {
    /// Which API the request went to.
    pub route: Route,
    /// The `model` the client asked for, if any.
    pub requested_model: Option<&'a str>,
    /// The model sent upstream (after aliasing and fallback), if any.
    pub upstream_model: Option<&'a str>,
    /// The `model` the upstream response named, if read.
    pub response_model: Option<&'a str>,
    /// Status sent to the client.
    pub status: u16,
    /// From request received to the last response byte sent (or the stream cut).
    pub duration: Duration,
    /// From request received to the first response body byte, if any was sent.
    pub ttfb: Option<Duration>,
}

/// Token counts and cost of one response, as recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenRecord {
    /// Input (prompt) tokens.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
    /// USD per 1M input and output tokens for the upstream model; `None` if unpriced.
    pub price_per_million: Option<(f64, f64)>,
}

impl TokenRecord {
    /// Cost in USD, `None` when the model has no price.
    pub fn cost_usd(&self) -> Option<f64> {
        let (input_price, output_price) = self.price_per_million?;
        // u64 -> f64 is exact below 2^53 tokens, far beyond any single response.
        Some((self.input as f64 * input_price + self.output as f64 * output_price) / 1e6)
    }
}

/// Every metric family of the sidecar. Cheap to clone: one shared allocation.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Families>);

#[derive(Debug)]
struct Families {
    models: ModelLabels,
    /// Address of the last `Config` whose model names went into `models`.
    config_seen: AtomicUsize,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteModelLabels>,
    ttfb: HistogramFamily<RouteModelLabels>,
    inflight: Gauge,
    attempts: Family<AttemptLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
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

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Buckets").field(&self.0.len()).finish()
    }
}

impl Metrics {
    /// Creates every family and registers it into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let f = Families {
            models: ModelLabels::default(),
            config_seen: AtomicUsize::new(0),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(Buckets(&DURATION_BUCKETS)),
            ttfb: Family::new_with_constructor(Buckets(&TTFB_BUCKETS)),
            inflight: Gauge::default(),
            attempts: Family::default(),
            retries: Family::default(),
            fallbacks: Family::default(),
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

    /// Lets every model name in `config` (aliases and their targets, fallbacks, prices)
    /// keep its own label value. Cheap when called again with the same config: the
    /// request path calls it with the config in force, so reloads take effect without
    /// the reloader knowing about metrics.
    pub fn observe_config(&self, config: &Config) {
        let addr = std::ptr::from_ref(config) as usize;
        if self.0.config_seen.swap(addr, Ordering::AcqRel) == addr {
            return;
        }
        let aliases = config.aliases.iter().flat_map(|(k, v)| [k, v]);
        let fallbacks = config
            .fallbacks
            .iter()
            .flat_map(|(k, v)| std::iter::once(k).chain(v));
        self.0
            .models
            .set_known(aliases.chain(fallbacks).chain(config.prices.keys()));
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn inflight(&self) -> InflightGuard {
        self.0.inflight.inc();
        InflightGuard {
            gauge: self.0.inflight.clone(),
        }
    }

    /// Records a finished request: count, latency, time to first byte, and the GenAI
    /// operation duration for GenAI routes.
    pub fn record_request(&self, rec: &RequestRecord<'_>) {
        let model = self.0.models.label(rec.upstream_model);
        let requested = self.0.models.label(rec.requested_model);
        self.0
            .requests
            .get_or_create(&RequestLabels {
                route: rec.route,
                model: model.clone(),
                requested_model: requested.clone(),
                status: rec.status,
            })
            .inc();
        let route_model = RouteModelLabels {
            route: rec.route,
            model: model.clone(),
        };
        self.0
            .request_duration
            .get_or_create(&route_model)
            .observe(rec.duration.as_secs_f64());
        if let Some(ttfb) = rec.ttfb {
            self.0
                .ttfb
                .get_or_create(&route_model)
                .observe(ttfb.as_secs_f64());
        }
        if let Some(common) = self.gen_ai_labels(rec, requested, model) {
            let error_type = match rec.status {
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "",
            };
            self.0
                .gen_ai_duration
                .get_or_create(&GenAiDurationLabels { common, error_type })
                .observe(rec.duration.as_secs_f64());
        }
    }

    /// Records the tokens of a response and its cost; returns the cost in USD, `None` when
    /// the upstream model is unpriced (its tokens then also go to the unpriced counter).
    pub fn record_tokens(&self, rec: &RequestRecord<'_>, tokens: &TokenRecord) -> Option<f64> {
        let model = self.0.models.label(rec.upstream_model);
        let cost = tokens.cost_usd();
        for (ty, n) in [
            (TokenType::Input, tokens.input),
            (TokenType::Output, tokens.output),
        ] {
            let labels = TokenLabels {
                model: model.clone(),
                r#type: ty,
            };
            self.0.tokens.get_or_create(&labels).inc_by(n);
            if cost.is_none() && n > 0 {
                self.0.unpriced_tokens.get_or_create(&labels).inc_by(n);
            }
        }
        if let Some(cost) = cost {
            self.0
                .cost
                .get_or_create(&ModelLabelSet {
                    model: model.clone(),
                })
                .inc_by(cost);
        }
        let requested = self.0.models.label(rec.requested_model);
        if let Some(common) = self.gen_ai_labels(rec, requested, model) {
            let types: &[(TokenType, u64)] = if rec.route == Route::Embeddings {
                // Embeddings have no output tokens; an always-zero series is noise.
                &[(TokenType::Input, tokens.input)]
            } else {
                &[
                    (TokenType::Input, tokens.input),
                    (TokenType::Output, tokens.output),
                ]
            };
            for &(ty, n) in types {
                self.0
                    .gen_ai_tokens
                    .get_or_create(&GenAiTokenLabels {
                        common: common.clone(),
                        gen_ai_token_type: ty,
                    })
                    .observe(n as f64);
            }
        }
        cost
    }

    /// Counts a successful response whose usage could not be read (its spend is unknown).
    pub fn record_usage_missing(&self, route: Route) {
        self.0
            .usage_missing
            .get_or_create(&RouteLabels { route })
            .inc();
    }

    /// Counts `n` SSE events or JSON bodies that could not be parsed.
    pub fn record_unparsed(&self, kind: UnparsedKind, n: u64) {
        if n > 0 {
            self.0
                .unparsed
                .get_or_create(&UnparsedLabels { kind })
                .inc_by(n);
        }
    }

    /// Counts one upstream attempt (every attempt, first one included).
    pub fn record_attempt(&self, upstream_model: &str, outcome: AttemptOutcome) {
        self.0
            .attempts
            .get_or_create(&AttemptLabels {
                model: self.0.models.label(Some(upstream_model)),
                outcome,
            })
            .inc();
    }

    /// Counts one retry of `upstream_model`.
    pub fn record_retry(&self, upstream_model: &str, reason: RetryReason) {
        self.0
            .retries
            .get_or_create(&RetryLabels {
                model: self.0.models.label(Some(upstream_model)),
                reason,
            })
            .inc();
    }

    /// Counts one switch from `from` to the fallback model `to`.
    pub fn record_fallback(&self, from: &str, to: &str) {
        self.0
            .fallbacks
            .get_or_create(&FallbackLabels {
                from_model: self.0.models.label(Some(from)),
                to_model: self.0.models.label(Some(to)),
            })
            .inc();
    }

    /// Counts one config reload.
    pub fn record_config_reload(&self, result: ReloadResult) {
        self.0
            .config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Counts one request refused by the local rate limit.
    pub fn record_rate_limited(&self, limit: RateLimitKind) {
        self.0
            .rate_limited
            .get_or_create(&RateLimitLabels { limit })
            .inc();
    }

    /// Current number of config reloads with `result` (tests wait on this instead of
    /// sleeping).
    pub fn config_reloads(&self, result: ReloadResult) -> u64 {
        self.0
            .config_reloads
            .get(&ReloadLabels { result })
            .map_or(0, |c| c.get())
    }

    /// Registers `holysheep_key_reloads_total{result="success"}`, read from `changes`
    /// at each scrape: the key store counts key changes itself, so nothing has to be
    /// told. Call once, with the count at start as the baseline.
    pub fn register_key_reloads(
        registry: &mut Registry,
        changes: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        let baseline = changes();
        registry.register_collector(Box::new(KeyReloads {
            read: Box::new(move || changes().saturating_sub(baseline)),
        }));
    }

    fn gen_ai_labels(
        &self,
        rec: &RequestRecord<'_>,
        requested: ModelName,
        upstream: ModelName,
    ) -> Option<GenAiLabels> {
        let operation = rec.route.gen_ai_operation()?;
        let response = match rec.response_model {
            Some(m) => self.0.models.label(Some(m)),
            None => upstream,
        };
        Some(GenAiLabels {
            gen_ai_operation_name: operation,
            gen_ai_provider_name: GEN_AI_PROVIDER,
            gen_ai_system: GEN_AI_PROVIDER,
            gen_ai_request_model: requested,
            gen_ai_response_model: response,
        })
    }
}

/// Exposes the key store's own change count as `holysheep_key_reloads_total`.
struct KeyReloads {
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for KeyReloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyReloads").finish_non_exhaustive()
    }
}

impl Collector for KeyReloads {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let counter = ConstCounter::new((self.read)());
        let mut family = encoder.encode_descriptor(
            "holysheep_key_reloads",
            "API key changes picked up from the key file (Secret rotation) since start",
            None,
            counter.metric_type(),
        )?;
        let labels = ReloadLabels {
            result: ReloadResult::Success,
        };
        counter.encode(family.encode_family(&labels)?)
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
