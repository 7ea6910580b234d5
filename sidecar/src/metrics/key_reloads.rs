//! `holysheep_key_reloads_total`: read from the key store's own change counter at each
//! scrape, so the key watcher needs no metrics handle.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

use super::labels::ReloadResult;
use super::sets::ReloadLabels;

/// Exposes the key store's own change count as `holysheep_key_reloads_total`.
pub(super) struct KeyReloads {
    pub(super) read: Box<dyn Fn() -> u64 + Send + Sync>,
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
