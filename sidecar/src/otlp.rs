//! OTLP push of the `/metrics` registry, on only when an `OTEL_EXPORTER_OTLP_*ENDPOINT`
//! is set: every `OTEL_METRIC_EXPORT_INTERVAL` and once more at shutdown (after the
//! proxy drained, bounded by [`FINAL_EXPORT_TIMEOUT`]), the registry is snapshotted with
//! prometheus-client's Prometheus protobuf encoder, converted (`convert.rs`) and POSTed as
//! OTLP/HTTP protobuf (`send.rs`). So a Job's spend arrives even if no scrape saw it.
//!
//! Nothing is recorded twice: the request path only updates the registry, as for
//! `/metrics`. Off means nothing here exists (no task, no timer, no allocation). A
//! failed export is counted in `holysheep_otlp_export_failures_total`, warned once per
//! outage, and never blocks a request. Not here: parsing the variables (`env.rs`).

mod convert;
pub mod env;
mod send;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tokio::task::JoinHandle;

pub use env::{OtlpEnvError, OtlpSettings};
pub use send::SendError;

/// Bound on one periodic export.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the export at shutdown: the pod's grace period is nearly used by the drain.
pub const FINAL_EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Registers `holysheep_otlp_export_failures_total` (only when OTLP is on) and returns it
/// for [`Exporter::spawn`].
pub fn register_failures(registry: &mut Registry) -> Counter {
    let failures = Counter::default();
    registry.register(
        "holysheep_otlp_export_failures",
        "OTLP metric exports that did not reach the endpoint (connect, TLS, HTTP status, \
         timeout); the next export carries the same cumulative values",
        failures.clone(),
    );
    failures
}

/// The running periodic export; [`Exporter::shutdown`] makes the final one.
#[derive(Debug)]
pub struct Exporter {
    shared: Arc<Shared>,
    periodic: JoinHandle<()>,
}

struct Shared {
    settings: OtlpSettings,
    registry: Arc<Registry>,
    start_ns: u64,
    failures: Counter,
    /// Set while exports fail, so an outage is warned about once.
    failing: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("endpoint", &endpoint(&self.settings.url))
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts exporting `registry` every `settings.interval` (the first one an interval
    /// from now).
    pub fn spawn(settings: OtlpSettings, registry: Arc<Registry>, failures: Counter) -> Self {
        let interval = settings.interval;
        tracing::info!(
            endpoint = %endpoint(&settings.url),
            interval = ?interval,
            "OTLP metrics export on"
        );
        let shared = Arc::new(Shared {
            settings,
            registry,
            start_ns: unix_nanos(),
            failures,
            failing: AtomicBool::new(false),
        });
        let periodic = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move {
                let start = tokio::time::Instant::now() + interval;
                let mut ticks = tokio::time::interval_at(start, interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    shared.export(EXPORT_TIMEOUT).await;
                }
            }
        });
        Self { shared, periodic }
    }

    /// Stops the periodic export and makes the final one, within
    /// [`FINAL_EXPORT_TIMEOUT`]. Call once requests have drained.
    pub async fn shutdown(self) {
        self.periodic.abort();
        let _ = self.periodic.await;
        if self.shared.export(FINAL_EXPORT_TIMEOUT).await {
            tracing::info!("final OTLP metrics export sent");
        }
    }
}

impl Shared {
    /// One export; `true` when it arrived.
    async fn export(&self, timeout: Duration) -> bool {
        let body = match prometheus_client::encoding::prometheus_protobuf::encode(&self.registry) {
            Ok(set) => {
                let times = convert::Times {
                    start_ns: self.start_ns,
                    now_ns: unix_nanos(),
                };
                convert::to_request(set, &self.settings.resource, times).encode_to_vec()
            }
            Err(e) => {
                tracing::error!(error = %e, "failed to encode metrics for OTLP");
                return false;
            }
        };
        let sent = send::post(&self.settings.url, &self.settings.headers, body);
        let result = match tokio::time::timeout(timeout, sent).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Timeout),
        };
        match result {
            Ok(()) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(endpoint = %endpoint(&self.settings.url), "OTLP export works again");
                }
                true
            }
            Err(e) => {
                self.failures.inc();
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        endpoint = %endpoint(&self.settings.url),
                        error = %e,
                        "OTLP metrics export failed; retrying at the next interval \
                         (warned once until it works again)"
                    );
                }
                false
            }
        }
    }
}

/// Scheme, host and path of the endpoint, for logs (no query string).
fn endpoint(url: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str()),
        url.path()
    )
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
