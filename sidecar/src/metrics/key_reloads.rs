//! `holysheep_key_reloads_total{result}`: read from the key store's own counters at each
//! scrape (`success`: key changes, `failure`: bad key files), so the key watcher needs no
//! metrics handle. It does not decide what a failure is: `keys.rs` does.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use super::labels::ReloadResult;
use super::sets::ReloadLabels;

/// Exposes the key store's change and failure counts as `holysheep_key_reloads_total`.
pub(super) struct KeyReloads {
    /// Key changes picked up (`result="success"`).
    pub(super) successes: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Bad key files seen (`result="failure"`).
    pub(super) failures: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for KeyReloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyReloads").finish_non_exhaustive()
    }
}

impl Collector for KeyReloads {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "holysheep_key_reloads",
            "API key reloads from the key file (Secret rotation) since start: success = key \
             changed; failure = the file was empty, invalid or unreadable and the previous \
             key stays in use (a file that stays bad counts once)",
            None,
            MetricType::Counter,
        )?;
        for (result, read) in [
            (ReloadResult::Success, &self.successes),
            (ReloadResult::Failure, &self.failures),
        ] {
            let counter = ConstCounter::new(read());
            counter.encode(family.encode_family(&ReloadLabels { result })?)?;
        }
        Ok(())
    }
}
