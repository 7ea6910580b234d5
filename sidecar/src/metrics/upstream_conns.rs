//! `holysheep_upstream_connections{protocol}`: the upstream pool's open connections,
//! read from the pool's own counts at each scrape, so the pool needs no metrics handle.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::labels::UpstreamProtocol;
use super::sets::ProtocolLabels;

/// Reads the open HTTP/1.1 and HTTP/2 connections at each scrape.
pub(super) struct UpstreamConnections(pub(super) Box<dyn Fn() -> (u64, u64) + Send + Sync>);

impl std::fmt::Debug for UpstreamConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnections")
            .finish_non_exhaustive()
    }
}

impl Collector for UpstreamConnections {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "holysheep_upstream_connections",
            "Upstream connections open now, by protocol: HTTP/1.1 ones (one per request in \
             flight, up to limits.upstream_http1_connections) and the HTTP/2 ones carrying \
             the requests past them (protocol upgrades not counted)",
            None,
            MetricType::Gauge,
        )?;
        let (http1, http2) = (self.0)();
        for (protocol, open) in [
            (UpstreamProtocol::Http1, http1),
            (UpstreamProtocol::Http2, http2),
        ] {
            // Counts of connections: far below i64::MAX.
            let gauge = ConstGauge::new(i64::try_from(open).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&ProtocolLabels { protocol })?)?;
        }
        Ok(())
    }
}
