//! The label sets and histogram buckets of the sidecar's metric families: one struct
//! per label set, values from the bounded enums and [`ModelName`]s of `models.rs`.
//! Nothing here records anything.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;

use super::labels::{
    AttemptOutcome, IncompleteReason, RateLimitKind, ReloadResult, RetryReason, Route, TokenType,
    UnparsedKind, UpstreamProtocol,
};
use super::models::ModelName;

/// Request latency buckets (seconds): LLM calls span ~50 ms to minutes.
pub(super) const DURATION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0,
];
/// Time-to-first-byte buckets (seconds).
pub(super) const TTFB_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0,
];
/// `gen_ai.client.operation.duration` buckets from the semantic conventions.
pub(super) const GEN_AI_DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// `gen_ai.client.token.usage` buckets from the semantic conventions.
pub(super) const GEN_AI_TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Labels of `holysheep_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) route: Route,
    pub(super) model: ModelName,
    pub(super) requested_model: ModelName,
    pub(super) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteModelLabels {
    pub(super) route: Route,
    pub(super) model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabels {
    pub(super) route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ModelLabelSet {
    pub(super) model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TokenLabels {
    pub(super) model: ModelName,
    pub(super) r#type: TokenType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RetryLabels {
    pub(super) model: ModelName,
    pub(super) reason: RetryReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FallbackLabels {
    pub(super) from_model: ModelName,
    pub(super) to_model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct AttemptLabels {
    pub(super) model: ModelName,
    pub(super) outcome: AttemptOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReloadLabels {
    pub(super) result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProtocolLabels {
    pub(super) protocol: UpstreamProtocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RateLimitLabels {
    pub(super) limit: RateLimitKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UnparsedLabels {
    pub(super) kind: UnparsedKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct IncompleteLabels {
    pub(super) reason: IncompleteReason,
}

/// Attributes shared by the GenAI metrics, named as the semantic conventions name them
/// (dots become underscores in Prometheus form).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GenAiLabels {
    pub(super) gen_ai_operation_name: &'static str,
    pub(super) gen_ai_provider_name: &'static str,
    pub(super) gen_ai_system: &'static str,
    pub(super) gen_ai_request_model: ModelName,
    pub(super) gen_ai_response_model: ModelName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GenAiTokenLabels {
    #[prometheus(flatten)]
    pub(super) common: GenAiLabels,
    pub(super) gen_ai_token_type: TokenType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GenAiDurationLabels {
    #[prometheus(flatten)]
    pub(super) common: GenAiLabels,
    /// Empty (which Prometheus treats as absent) on success, else the HTTP status class.
    pub(super) error_type: &'static str,
}

/// Builds histograms with fixed buckets inside a `Family`.
#[derive(Clone, Copy)]
pub(super) struct Buckets(pub(super) &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

pub(super) type HistogramFamily<L> = Family<L, Histogram, Buckets>;

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Buckets").field(&self.0.len()).finish()
    }
}
