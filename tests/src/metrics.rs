//! `/metrics` of the sidecar's admin server, fetched and parsed with `prometheus-parse`
//! (a real Prometheus text parser, so a malformed exposition fails the test).

use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use crate::{eventually, http_client};

/// Fetches `url` (a `/metrics` endpoint) and returns its text and the parsed samples.
pub async fn scrape(url: &str) -> (String, Scrape) {
    let response = http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("{url} is not Prometheus text: {e}"));
    (text, parsed)
}

/// The value of the one series `name{labels...}` (counter, gauge, or a histogram's
/// count); `None` when absent. Panics when the labels match several series.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = matching(scrape, name, labels).collect();
    assert!(
        found.len() <= 1,
        "{name}{labels:?} matches {} series",
        found.len()
    );
    found.first().copied()
}

/// The sum of `name` over every series matching `labels`.
pub fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(scrape, name, labels).sum()
}

fn matching<'a>(
    scrape: &'a Scrape,
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = f64> + 'a {
    scrape
        .samples
        .iter()
        .filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

/// Waits (bounded) until `holysheep_requests_total` sums to at least `n` and nothing is
/// in flight (a request is recorded when its body ends, which can be just after the
/// client read the last byte), then returns the scrape.
pub async fn wait_for_requests(url: &str, n: f64) -> (String, Scrape) {
    eventually(
        Duration::from_secs(5),
        "requests recorded in /metrics",
        || async {
            let (_, s) = scrape(url).await;
            sum(&s, "holysheep_requests_total", &[]) >= n
                && value(&s, "holysheep_inflight_requests", &[]) == Some(0.0)
        },
    )
    .await;
    scrape(url).await
}
