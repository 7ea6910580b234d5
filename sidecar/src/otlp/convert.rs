//! The registry's snapshot (`prometheus_client::encoding::prometheus_protobuf::encode`)
//! turned into one OTLP `ExportMetricsServiceRequest`: the same names as `/metrics`
//! (unit and `_total` suffixes included), the same labels as attributes, counters as
//! monotonic cumulative sums, gauges as gauges, histograms as cumulative explicit-bucket
//! histograms. It reads a snapshot; it records nothing and sends nothing.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::encoding::prometheus_protobuf::prometheus_data_model as pm;

/// Process start and snapshot time, in unix nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Start of every cumulative series: the process start.
    pub start_ns: u64,
    /// When the snapshot was taken.
    pub now_ns: u64,
}

/// The export request for `families`, under `resource` attributes.
pub fn to_request(
    families: Vec<pm::MetricFamily>,
    resource: &[(String, String)],
    times: Times,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .into_iter()
        .filter_map(|family| convert_family(family, times))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| key_value(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "holysheep-sidecar".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// UCUM unit for OTLP, so receivers that add unit suffixes add the one already there.
fn otlp_unit(unit: &str) -> String {
    match unit {
        "seconds" => "s".to_owned(),
        "bytes" => "By".to_owned(),
        other => other.to_owned(),
    }
}

fn convert_family(family: pm::MetricFamily, times: Times) -> Option<Metric> {
    let kind = pm::MetricType::try_from(family.r#type).ok()?;
    let data = match kind {
        pm::MetricType::Counter => metric::Data::Sum(Sum {
            data_points: number_points(&family.metric, times),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        pm::MetricType::Gauge | pm::MetricType::Untyped => metric::Data::Gauge(Gauge {
            data_points: number_points(&family.metric, times),
        }),
        pm::MetricType::Histogram => metric::Data::Histogram(Histogram {
            data_points: histogram_points(&family.metric, times),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        // Not used by the sidecar.
        pm::MetricType::Summary | pm::MetricType::GaugeHistogram => return None,
    };
    Some(Metric {
        // Already the exposed name: unit and `_total` suffixes included.
        name: family.name,
        description: family.help,
        unit: otlp_unit(&family.unit),
        data: Some(data),
        ..Default::default()
    })
}

fn number_points(metrics: &[pm::Metric], times: Times) -> Vec<NumberDataPoint> {
    metrics
        .iter()
        .filter_map(|m| {
            // Always doubles (the Prometheus model's type): a series never flips type.
            let value = m
                .counter
                .as_ref()
                .map(|c| c.value)
                .or_else(|| m.gauge.as_ref().map(|g| g.value))
                .or_else(|| m.untyped.as_ref().map(|u| u.value))?;
            Some(NumberDataPoint {
                attributes: attributes(&m.label),
                start_time_unix_nano: times.start_ns,
                time_unix_nano: times.now_ns,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            })
        })
        .collect()
}

fn histogram_points(metrics: &[pm::Metric], times: Times) -> Vec<HistogramDataPoint> {
    metrics
        .iter()
        .filter_map(|m| {
            let h = m.histogram.as_ref()?;
            // Prometheus buckets are cumulative with an optional +Inf one; OTLP wants
            // per-bucket counts with the +Inf bucket implicit in the bounds.
            let mut bucket_counts = Vec::with_capacity(h.bucket.len() + 1);
            let mut explicit_bounds = Vec::with_capacity(h.bucket.len());
            let mut below = 0;
            for b in h.bucket.iter().filter(|b| b.upper_bound.is_finite()) {
                explicit_bounds.push(b.upper_bound);
                bucket_counts.push(b.cumulative_count.saturating_sub(below));
                below = b.cumulative_count;
            }
            bucket_counts.push(h.sample_count.saturating_sub(below));
            Some(HistogramDataPoint {
                attributes: attributes(&m.label),
                start_time_unix_nano: times.start_ns,
                time_unix_nano: times.now_ns,
                count: h.sample_count,
                sum: Some(h.sample_sum),
                bucket_counts,
                explicit_bounds,
                ..Default::default()
            })
        })
        .collect()
}

fn attributes(labels: &[pm::LabelPair]) -> Vec<KeyValue> {
    labels
        .iter()
        // An empty label value is an absent label in Prometheus (e.g. `error_type` on
        // success): leave it out here too.
        .filter(|l| !l.value.is_empty())
        .map(|l| key_value(&l.name, &l.value))
        .collect()
}

fn key_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge as PGauge;
    use prometheus_client::metrics::histogram::Histogram as PHistogram;
    use prometheus_client::registry::{Registry, Unit};
    use std::sync::atomic::AtomicU64;

    fn find<'a>(req: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn counters_gauges_and_histograms_keep_names_labels_and_values() {
        let mut registry = Registry::default();
        let tokens = Family::<[(&str, &str); 1], Counter>::default();
        tokens.get_or_create(&[("model", "m")]).inc_by(19);
        registry.register("holysheep_tokens", "t", tokens);
        let cost = Counter::<f64, AtomicU64>::default();
        cost.inc_by(0.25);
        registry.register("holysheep_cost_usd", "c", cost);
        let gauge = PGauge::<f64, AtomicU64>::default();
        gauge.set(40.0);
        registry.register("holysheep_budget_limit_usd", "g", gauge);
        let hist = PHistogram::new([0.1, 1.0]);
        for v in [0.05, 0.5, 0.6, 5.0] {
            hist.observe(v);
        }
        registry.register_with_unit("holysheep_request_duration", "h", Unit::Seconds, hist);

        let set = prometheus_client::encoding::prometheus_protobuf::encode(&registry).unwrap();
        let times = Times {
            start_ns: 1,
            now_ns: 2,
        };
        let req = to_request(set, &[("service.name".into(), "s".into())], times);

        let m = find(&req, "holysheep_tokens_total");
        let Some(metric::Data::Sum(sum)) = &m.data else {
            panic!("{m:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = &sum.data_points[0];
        assert_eq!(point.value, Some(number_data_point::Value::AsDouble(19.0)));
        assert_eq!(point.attributes, vec![key_value("model", "m")]);
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (1, 2));

        let Some(metric::Data::Sum(cost)) = &find(&req, "holysheep_cost_usd_total").data else {
            panic!()
        };
        assert_eq!(
            cost.data_points[0].value,
            Some(number_data_point::Value::AsDouble(0.25))
        );
        let Some(metric::Data::Gauge(g)) = &find(&req, "holysheep_budget_limit_usd").data else {
            panic!()
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(40.0))
        );

        let h = find(&req, "holysheep_request_duration_seconds");
        assert_eq!(h.unit, "s");
        let Some(metric::Data::Histogram(h)) = &h.data else {
            panic!()
        };
        let p = &h.data_points[0];
        assert_eq!(p.count, 4);
        assert!((p.sum.unwrap() - 6.15).abs() < 1e-9, "{:?}", p.sum);
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);

        let resource = req.resource_metrics[0].resource.as_ref().unwrap();
        assert_eq!(resource.attributes, vec![key_value("service.name", "s")]);
    }
}
