//! Recording: the methods the proxy, the retry loop and the reloaders call. Each takes
//! raw model names and bounds them through [`ModelLabels`](super::ModelLabels) before they
//! become labels. Registration lives in the parent module.

use std::sync::Arc;
use std::time::Duration;

use super::series::{Series, SeriesKey};
use super::sets::{
    AttemptLabels, FallbackLabels, GenAiDurationLabels, GenAiLabels, GenAiTokenLabels,
    IncompleteLabels, ModelLabelSet, RateLimitLabels, ReloadLabels, RequestLabels, RetryLabels,
    RouteLabels, RouteModelLabels, TokenLabels, UnparsedLabels,
};
use super::{
    AttemptOutcome, GEN_AI_PROVIDER, IncompleteReason, Metrics, RateLimitKind, ReloadResult,
    RetryReason, Route, TokenType, UnparsedKind,
};

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

/// The bounded label values of one finished request and their cached handles: looked up
/// once per request (label bounding and the cache lookup hash every model name).
#[derive(Debug)]
pub struct RequestSeries {
    key: SeriesKey,
    series: Arc<Series>,
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

impl Metrics {
    /// Records a finished request: count, latency, time to first byte, and the GenAI
    /// operation duration for GenAI routes. Returns its resolved series, for
    /// [`Metrics::record_tokens`].
    pub fn record_request(&self, rec: &RequestRecord<'_>) -> RequestSeries {
        let resolved = self.series(rec);
        let RequestSeries { key, series: s } = &resolved;
        s.requests
            .get_or_init(|| {
                self.0
                    .requests
                    .get_or_create(&RequestLabels {
                        route: key.route,
                        model: key.model.clone(),
                        requested_model: key.requested.clone(),
                        status: key.status,
                    })
                    .clone()
            })
            .inc();
        let route_model = || RouteModelLabels {
            route: key.route,
            model: key.model.clone(),
        };
        s.duration
            .get_or_init(|| {
                self.0
                    .request_duration
                    .get_or_create(&route_model())
                    .clone()
            })
            .observe(rec.duration.as_secs_f64());
        if let Some(ttfb) = rec.ttfb {
            s.ttfb
                .get_or_init(|| self.0.ttfb.get_or_create(&route_model()).clone())
                .observe(ttfb.as_secs_f64());
        }
        if let Some(operation) = rec.route.gen_ai_operation() {
            s.gen_ai_duration
                .get_or_init(|| {
                    let error_type = match key.status {
                        400..=499 => "4xx",
                        500..=599 => "5xx",
                        _ => "",
                    };
                    let labels = GenAiDurationLabels {
                        common: gen_ai_labels(operation, key),
                        error_type,
                    };
                    self.0.gen_ai_duration.get_or_create(&labels).clone()
                })
                .observe(rec.duration.as_secs_f64());
        }
        resolved
    }

    /// Records the tokens of a response and its cost, under the series
    /// [`Metrics::record_request`] resolved for it; returns the cost in USD, `None` when
    /// the upstream model is unpriced (its tokens then also go to the unpriced counter).
    pub fn record_tokens(
        &self,
        resolved: &RequestSeries,
        rec: &RequestRecord<'_>,
        tokens: &TokenRecord,
    ) -> Option<f64> {
        let RequestSeries { key, series: s } = resolved;
        let cost = tokens.cost_usd();
        for (i, ty, n) in [
            (0, TokenType::Input, tokens.input),
            (1, TokenType::Output, tokens.output),
        ] {
            let labels = || TokenLabels {
                model: key.model.clone(),
                r#type: ty,
            };
            s.tokens[i]
                .get_or_init(|| self.0.tokens.get_or_create(&labels()).clone())
                .inc_by(n);
            if cost.is_none() && n > 0 {
                s.unpriced[i]
                    .get_or_init(|| self.0.unpriced_tokens.get_or_create(&labels()).clone())
                    .inc_by(n);
            }
        }
        if let Some(cost) = cost {
            s.cost
                .get_or_init(|| {
                    self.0
                        .cost
                        .get_or_create(&ModelLabelSet {
                            model: key.model.clone(),
                        })
                        .clone()
                })
                .inc_by(cost);
        }
        if let Some(operation) = rec.route.gen_ai_operation() {
            let types: &[(usize, TokenType, u64)] = if rec.route == Route::Embeddings {
                // Embeddings have no output tokens; an always-zero series is noise.
                &[(0, TokenType::Input, tokens.input)]
            } else {
                &[
                    (0, TokenType::Input, tokens.input),
                    (1, TokenType::Output, tokens.output),
                ]
            };
            for &(i, ty, n) in types {
                s.gen_ai_tokens[i]
                    .get_or_init(|| {
                        let labels = GenAiTokenLabels {
                            common: gen_ai_labels(operation, key),
                            gen_ai_token_type: ty,
                        };
                        self.0.gen_ai_tokens.get_or_create(&labels).clone()
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

    /// Counts one response body that did not reach its end.
    pub fn record_incomplete(&self, reason: IncompleteReason) {
        self.0
            .incomplete
            .get_or_create(&IncompleteLabels { reason })
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

    /// The bounded label values of `rec` and their cached handles.
    fn series(&self, rec: &RequestRecord<'_>) -> RequestSeries {
        let models = &self.0.models;
        let model = models.label(rec.upstream_model);
        // Usually the three names are one: each is looked up only when it differs.
        let response = match rec.response_model {
            Some(m) if Some(m) != rec.upstream_model => models.label(Some(m)),
            _ => model.clone(),
        };
        let requested = if rec.requested_model == rec.upstream_model {
            model.clone()
        } else {
            models.label(rec.requested_model)
        };
        let key = SeriesKey {
            route: rec.route,
            status: rec.status,
            requested,
            model,
            response,
        };
        let series = self.0.series.get(&key);
        RequestSeries { key, series }
    }
}

/// The GenAI attributes of a request's label values.
fn gen_ai_labels(operation: &'static str, key: &SeriesKey) -> GenAiLabels {
    GenAiLabels {
        gen_ai_operation_name: operation,
        gen_ai_provider_name: GEN_AI_PROVIDER,
        gen_ai_system: GEN_AI_PROVIDER,
        gen_ai_request_model: key.requested.clone(),
        gen_ai_response_model: key.response.clone(),
    }
}
