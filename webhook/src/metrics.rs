//! Prometheus metrics of the admission server: admissions by result, admission latency,
//! certificate reloads by result, open connections, refusal Events by outcome, and
//! `holysheep_build_info{version}` (the same series the sidecar exports, so one query
//! compares their versions), served as text on `GET /metrics`.
//!
//! What it does not do: decide results (that is `admission`) or watch files (`tls`). Label
//! values come from enums only, never from request content, so a hostile pod cannot blow up
//! the series count.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What an admission review ended in; the `result` label of `admissions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdmissionResult {
    /// A patch was returned.
    Injected,
    /// A pod was allowed unchanged (not opted in, or already injected).
    Skipped,
    /// The pod was refused (invalid annotation, hostNetwork, port clash...).
    Denied,
    /// The review could not be evaluated (the object does not decode as a Pod).
    Error,
    /// The reviewed object is not a Pod (or is a Pod subresource): allowed unchanged.
    NotPod,
    /// An operation other than CREATE: allowed unchanged.
    NotCreate,
    /// The body was not an AdmissionReview v1 (answered with HTTP 400 or 413).
    InvalidRequest,
    /// No room for the review within the queue timeout (answered with HTTP 429).
    Busy,
    /// The request body did not arrive within the body deadline (HTTP 408).
    TimedOut,
}

impl AdmissionResult {
    /// The label value, also used as the `result` field of the admission log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Error => "error",
            Self::NotPod => "not_pod",
            Self::NotCreate => "not_create",
            Self::InvalidRequest => "invalid_request",
            Self::Busy => "busy",
            Self::TimedOut => "timed_out",
        }
    }
}

/// Outcome of one certificate reload attempt; the `result` label of `cert_reloads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// New certificate and key were loaded and are served to new connections.
    Success,
    /// The files could not be read or parsed: the previous certificate stays in use.
    Error,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
        }
    }
}

// The derive would print the variant names as written (`NotPod`); Prometheus convention is
// snake_case, so both enums encode through `as_str`.
impl EncodeLabelValue for AdmissionResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AdmissionLabel {
    result: AdmissionResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabel {
    result: ReloadResult,
}

/// What became of one refusal Event; the `result` label of `events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventResult {
    /// Created through the API.
    Posted,
    /// The API refused it, or did not answer in time.
    Failed,
    /// The queue was full: not posted.
    Dropped,
    /// The same refusal of the same owner was posted a moment ago: not posted again.
    Repeated,
}

impl EventResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Posted => "posted",
            Self::Failed => "failed",
            Self::Dropped => "dropped",
            Self::Repeated => "repeated",
        }
    }
}

impl EncodeLabelValue for EventResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabel {
    result: EventResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Handles to every metric of the webhook. Cloning is cheap and shares the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    admissions: Family<AdmissionLabel, Counter>,
    admission_duration: Histogram,
    cert_reloads: Family<ReloadLabel, Counter>,
    cert_not_after: Gauge,
    open_connections: Gauge,
    shed_connections: Counter,
    events: Family<EventLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` (normally one made by
    /// [`new_registry`]) under the `holysheep_webhook_` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("holysheep_webhook");
        let admissions = Family::<AdmissionLabel, Counter>::default();
        registry.register(
            "admissions",
            "Admission reviews answered, by result",
            admissions.clone(),
        );
        // 100 us .. ~1.6 s: the interesting range is well under the apiserver's timeout.
        let admission_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register(
            "admission_duration_seconds",
            "Time to answer one admission review, from its arrival (body read, queue, decision)",
            admission_duration.clone(),
        );
        let cert_reloads = Family::<ReloadLabel, Counter>::default();
        registry.register(
            "cert_reloads",
            "Serving certificate reload attempts after a file change, by result",
            cert_reloads.clone(),
        );
        let cert_not_after = Gauge::default();
        registry.register(
            "cert_not_after_timestamp_seconds",
            "notAfter of the serving certificate in use, as a Unix time (alert well before it)",
            cert_not_after.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now (TLS handshake included); at the cap a quiet one is shed",
            open_connections.clone(),
        );
        let shed_connections = Counter::default();
        registry.register(
            "shed_connections",
            "Connections closed without a request in flight to make room for a new client at \
             the connection cap",
            shed_connections.clone(),
        );
        let events = Family::<EventLabel, Counter>::default();
        // Known in advance: every result starts at 0, so a rate() sees the first one.
        for result in [
            EventResult::Posted,
            EventResult::Failed,
            EventResult::Dropped,
            EventResult::Repeated,
        ] {
            events.get_or_create(&EventLabel { result }).inc_by(0);
        }
        registry.register(
            "events",
            "Warning Events for refused pods, by result (posted, failed, dropped when the queue \
             is full, repeated within a few minutes)",
            events.clone(),
        );
        Self {
            admissions,
            admission_duration,
            cert_reloads,
            cert_not_after,
            open_connections,
            shed_connections,
            events,
        }
    }

    /// Counts a connection as open.
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// Counts a connection as closed.
    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// Counts a connection shed to make room for a new one.
    pub fn connection_shed(&self) {
        self.shed_connections.inc();
    }

    /// Connections shed so far (for tests and logs).
    pub fn shed_connections(&self) -> u64 {
        self.shed_connections.get()
    }

    /// Connections open now (for tests and logs).
    pub fn open_connections(&self) -> i64 {
        self.open_connections.get()
    }

    /// Counts one admission and records how long it took.
    pub fn observe_admission(&self, result: AdmissionResult, seconds: f64) {
        self.admissions
            .get_or_create(&AdmissionLabel { result })
            .inc();
        self.admission_duration.observe(seconds);
    }

    /// Counts one certificate reload attempt.
    pub fn observe_reload(&self, result: ReloadResult) {
        self.cert_reloads
            .get_or_create(&ReloadLabel { result })
            .inc();
    }

    /// Records the `notAfter` (Unix seconds) of the certificate now served.
    pub fn set_cert_not_after(&self, unix_seconds: i64) {
        self.cert_not_after.set(unix_seconds);
    }

    /// Counts one refusal Event.
    pub fn observe_event(&self, result: EventResult) {
        self.events.get_or_create(&EventLabel { result }).inc();
    }

    /// Current count of refusal Events with `result` (for tests and logs).
    pub fn events(&self, result: EventResult) -> u64 {
        self.events.get_or_create(&EventLabel { result }).get()
    }

    /// Current count of admissions with `result` (for tests and logs).
    pub fn admissions(&self, result: AdmissionResult) -> u64 {
        self.admissions
            .get_or_create(&AdmissionLabel { result })
            .get()
    }
}

/// A registry holding `holysheep_build_info{version}` = 1; [`Metrics::register`] adds the
/// `holysheep_webhook_` metrics.
pub fn new_registry() -> Registry {
    let mut registry = Registry::default();
    let build_info = Family::<VersionLabel, Gauge>::default();
    build_info
        .get_or_create(&VersionLabel {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register(
        "holysheep_build_info",
        "Always 1; the version label is this webhook's version",
        build_info,
    );
    registry
}

/// Renders `registry` in the Prometheus text format (OpenMetrics flavour).
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names_and_result_labels() {
        let mut registry = new_registry();
        let metrics = Metrics::register(&mut registry);
        metrics.observe_admission(AdmissionResult::NotPod, 0.0002);
        metrics.observe_admission(AdmissionResult::Injected, 0.001);
        metrics.observe_admission(AdmissionResult::Injected, 0.001);
        metrics.observe_reload(ReloadResult::Error);
        metrics.set_cert_not_after(1_800_000_000);
        let text = render(&registry).unwrap();
        assert!(text.contains("holysheep_webhook_cert_not_after_timestamp_seconds 1800000000"));
        let build_info = format!(
            "\nholysheep_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build_info), "{text}");
        assert!(
            text.contains("holysheep_webhook_events_total{result=\"posted\"} 0"),
            "{text}"
        );
        metrics.observe_event(EventResult::Dropped);
        let text = render(&registry).unwrap();
        assert!(
            text.contains("holysheep_webhook_events_total{result=\"dropped\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("holysheep_webhook_admissions_total{result=\"injected\"} 2"),
            "{text}"
        );
        assert!(text.contains("holysheep_webhook_admissions_total{result=\"not_pod\"} 1"));
        assert!(text.contains("holysheep_webhook_admission_duration_seconds_count 3"));
        assert!(text.contains("holysheep_webhook_cert_reloads_total{result=\"error\"} 1"));
        assert_eq!(metrics.admissions(AdmissionResult::Injected), 2);
    }

    #[test]
    fn label_values_match_as_str() {
        let mut registry = new_registry();
        let metrics = Metrics::register(&mut registry);
        for r in [
            AdmissionResult::Injected,
            AdmissionResult::Skipped,
            AdmissionResult::Denied,
            AdmissionResult::Error,
            AdmissionResult::NotPod,
            AdmissionResult::NotCreate,
            AdmissionResult::InvalidRequest,
            AdmissionResult::Busy,
            AdmissionResult::TimedOut,
        ] {
            metrics.observe_admission(r, 0.0);
            let text = render(&registry).unwrap();
            assert!(
                text.contains(&format!("result=\"{}\"", r.as_str())),
                "{r:?}: {text}"
            );
        }
    }
}
