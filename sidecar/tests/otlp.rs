//! OTLP push, end to end with the real binary: a receiver on 127.0.0.1:0 decodes the
//! OTLP/HTTP protobuf exports with the opentelemetry-proto types. With an export
//! interval of 10 minutes, only the final export on SIGTERM can deliver a Job's spend;
//! it must carry exactly what `/metrics` shows. Also: an unsupported protocol stops the
//! start naming the variable, and a receiver that is down costs one warning and a
//! counter, never a request.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, metric, number_data_point};
use prometheus_parse::{Scrape, Value};
use prost::Message as _;
use support::process::{Launch, SidecarProcess};
use support::upstream::{FakeUpstream, Reply};
use support::{eventually, fixture, http_client};

/// Usage in the shared fixture `openai/chat_completion.json`.
const PROMPT: f64 = 12.0;
const COMPLETION: f64 = 7.0;
/// Built-in price of gpt-4.1 (the target of the built-in alias gpt-4), USD per 1M tokens.
const GPT41_PRICE: f64 = 8.0;

/// Exports received: request headers and the decoded body.
type Received = Arc<Mutex<Vec<(HeaderMap, ExportMetricsServiceRequest)>>>;

/// An OTLP/HTTP receiver on 127.0.0.1:0; returns its base URL and what it received.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route(
            "/v1/metrics",
            post(
                |State(r): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    let req = ExportMetricsServiceRequest::decode(body).unwrap();
                    r.lock().unwrap().push((headers, req));
                    ""
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn chat(sidecar: &SidecarProcess) {
    let resp = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "gpt-4",
            "messages": [{"role": "user", "content": "hello"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
}

async fn scrape(sidecar: &SidecarProcess) -> Scrape {
    sidecar.scrape().await.1
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => panic!("attribute {} is not a string: {other:?}", kv.key),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// Every point of an export as (name, attributes) -> (value or histogram count, sum).
fn points(req: &ExportMetricsServiceRequest) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for m in &req.resource_metrics[0].scope_metrics[0].metrics {
        match m.data.as_ref().unwrap() {
            metric::Data::Sum(sum) => {
                assert!(sum.is_monotonic, "{} is a counter", m.name);
                let cumulative = AggregationTemporality::Cumulative as i32;
                assert_eq!(sum.aggregation_temporality, cumulative, "{}", m.name);
                for p in &sum.data_points {
                    assert!(
                        p.start_time_unix_nano > 0 && p.start_time_unix_nano <= p.time_unix_nano
                    );
                    out.insert((m.name.clone(), attrs(&p.attributes)), number(p.value));
                }
            }
            metric::Data::Gauge(gauge) => {
                for p in &gauge.data_points {
                    out.insert((m.name.clone(), attrs(&p.attributes)), number(p.value));
                }
            }
            metric::Data::Histogram(h) => {
                for p in &h.data_points {
                    assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
                    assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
                    // A text parser may read a histogram whole or as `_count` and
                    // `_sum` samples: offer both shapes.
                    let a = attrs(&p.attributes);
                    out.insert((m.name.clone(), a.clone()), p.count as f64);
                    out.insert((format!("{}_count", m.name), a.clone()), p.count as f64);
                    out.insert((format!("{}_sum", m.name), a), p.sum.unwrap());
                }
            }
            other => panic!("{}: unexpected {other:?}", m.name),
        }
    }
    out
}

fn number(value: Option<number_data_point::Value>) -> f64 {
    match value.unwrap() {
        number_data_point::Value::AsDouble(v) => v,
        number_data_point::Value::AsInt(v) => v as f64,
    }
}

/// The same shape from a `/metrics` scrape (histograms by their count).
fn scraped(s: &Scrape) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    s.samples
        .iter()
        .map(|sample| {
            let labels = sample
                .labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let value = match &sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => panic!("no summaries"),
            };
            ((sample.metric.clone(), labels), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_pushes_exactly_the_spend_that_no_scrape_or_interval_delivered() {
    let (otlp, received) = receiver().await;
    let up =
        FakeUpstream::start(|_| Reply::json(200, fixture("openai/chat_completion.json"))).await;
    let launch = Launch::default()
        .arg("--upstream", up.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "600000")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=shop,authorization=Bearer%20t0k",
        )
        .env("OTEL_SERVICE_NAME", "billing-job")
        .env("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=job-x1");
    let mut sidecar = SidecarProcess::start(launch, |_| {}).await;

    for _ in 0..3 {
        chat(&sidecar).await;
    }
    // Recorded when each body ended: wait for the third before stopping.
    eventually(
        Duration::from_secs(5),
        "three requests recorded",
        || async {
            let s = scraped(&scrape(&sidecar).await);
            let requests = s
                .iter()
                .filter(|((n, _), _)| n == "holysheep_requests_total");
            requests.map(|(_, v)| v).sum::<f64>() == 3.0
        },
    )
    .await;
    // Nothing moves any more: this is what the final export must carry.
    let expected = scraped(&scrape(&sidecar).await);
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing is pushed before the interval"
    );

    let status = tokio::task::block_in_place(|| sidecar.terminate());
    assert!(status.success(), "{status:?}\n{}", sidecar.output());

    let exports = received.lock().unwrap().clone();
    assert_eq!(exports.len(), 1, "exactly the final export");
    let (headers, req) = &exports[0];
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(headers["x-tenant"], "shop");
    assert_eq!(headers["authorization"], "Bearer t0k");
    let resource = attrs(
        &req.resource_metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes,
    );
    assert_eq!(resource["service.name"], "billing-job");
    assert_eq!(resource["k8s.pod.name"], "job-x1");

    let pushed = points(req);
    let value = |name: &str, labels: &[(&str, &str)]| {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        pushed.get(&(name.to_owned(), labels)).copied()
    };
    let model = [("model", "gpt-4.1")];
    let input = [("model", "gpt-4.1"), ("type", "input")];
    let output = [("model", "gpt-4.1"), ("type", "output")];
    assert_eq!(value("holysheep_tokens_total", &input), Some(3.0 * PROMPT));
    assert_eq!(
        value("holysheep_tokens_total", &output),
        Some(3.0 * COMPLETION)
    );
    let cost = value("holysheep_cost_usd_total", &model).unwrap();
    let want = 3.0 * (PROMPT + COMPLETION) * GPT41_PRICE / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} != {want}");

    // The same names, labels and values as /metrics, series for series, both ways.
    for (key, want) in &expected {
        assert_eq!(pushed.get(key), Some(want), "{key:?}");
    }
    for (name, labels) in pushed.keys() {
        let base = name.trim_end_matches("_count").trim_end_matches("_sum");
        let shapes = [base.to_owned(), format!("{base}_count")];
        assert!(
            shapes
                .iter()
                .any(|n| expected.contains_key(&(n.clone(), labels.clone()))),
            "only in OTLP: {name}{labels:?}"
        );
    }
    // The key never leaves in the export.
    assert!(!format!("{req:?}").contains(support::TEST_KEY));
}

#[test]
fn an_unsupported_protocol_stops_the_start_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_holysheep-sidecar"))
        .env_clear()
        .env("HOLYSHEEP_API_KEY", "sk-x")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{text}");
    assert!(text.contains("http/protobuf"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_costs_one_warning_and_a_counter_never_a_request() {
    let closed = support::closed_port().await;
    let up =
        FakeUpstream::start(|_| Reply::json(200, fixture("openai/chat_completion.json"))).await;
    let launch = Launch::default()
        .arg("--upstream", up.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{closed}"))
        .env("OTEL_METRIC_EXPORT_INTERVAL", "20");
    let sidecar = SidecarProcess::start(launch, |_| {}).await;
    let failures = |s: &Scrape| {
        scraped(s)
            .get(&(
                "holysheep_otlp_export_failures_total".to_owned(),
                BTreeMap::new(),
            ))
            .copied()
            .unwrap_or(0.0)
    };
    eventually(Duration::from_secs(10), "three failed exports", || async {
        failures(&scrape(&sidecar).await) >= 3.0
    })
    .await;
    chat(&sidecar).await;
    let warnings = sidecar
        .output()
        .lines()
        .filter(|l| l.contains("OTLP metrics export failed"))
        .count();
    assert_eq!(warnings, 1, "{}", sidecar.output());
}
