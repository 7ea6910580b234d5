//! Metric handles cached per request label combination, so recording a finished request
//! costs one map lookup instead of hashing a full label set (strings included) for every
//! counter and histogram it touches.
//!
//! A [`Series`] holds, for one (route, status, upstream, requested and response model),
//! the handles `record.rs` updates. Each handle is created on first use, by the same
//! `Family::get_or_create` as before, so a series appears in `/metrics` exactly when it
//! did without the cache (e.g. no unpriced-token series for a priced model). The cache is
//! bounded: label values are already bounded by `ModelLabels`, and past
//! [`MAX_CACHED`] combinations the handles are simply not kept. It records nothing itself.
//!
//! The map hashes with foldhash rather than SipHash: it is looked up for every request,
//! its keys are already bounded label values, and SipHash of three model names was the
//! larger part of the lookup (callgrind).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::labels::Route;
use super::models::ModelName;

/// Most label combinations whose handles are kept.
const MAX_CACHED: usize = 4096;

/// What identifies a [`Series`]: every label value a finished request records under.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct SeriesKey {
    pub(super) route: Route,
    pub(super) status: u16,
    pub(super) model: ModelName,
    pub(super) requested: ModelName,
    /// The response's model, or the upstream model when the response named none.
    pub(super) response: ModelName,
}

/// The handles of one label combination; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Series {
    pub(super) requests: OnceLock<Counter>,
    pub(super) duration: OnceLock<Histogram>,
    pub(super) ttfb: OnceLock<Histogram>,
    pub(super) gen_ai_duration: OnceLock<Histogram>,
    /// Input, output.
    pub(super) tokens: [OnceLock<Counter>; 2],
    /// Input, output.
    pub(super) unpriced: [OnceLock<Counter>; 2],
    pub(super) cost: OnceLock<Counter<f64, AtomicU64>>,
    /// Input, output.
    pub(super) gen_ai_tokens: [OnceLock<Histogram>; 2],
}

/// The bounded cache of [`Series`].
#[derive(Debug, Default)]
pub(super) struct SeriesCache {
    map: Mutex<foldhash::HashMap<SeriesKey, Arc<Series>>>,
}

impl SeriesCache {
    /// The series of `key`, created empty on first use.
    pub(super) fn get(&self, key: &SeriesKey) -> Arc<Series> {
        // A poisoned lock only means another thread panicked mid-insert; the map is
        // still a valid map.
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = map.get(key) {
            return Arc::clone(series);
        }
        let series = Arc::new(Series::default());
        if map.len() < MAX_CACHED {
            map.insert(key.clone(), Arc::clone(&series));
        }
        series
    }
}
