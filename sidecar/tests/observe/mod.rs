//! Helpers for the observability tests: an OpenAI-like fake upstream that streams usage
//! only when asked (as the real API does), `/metrics` scraping parsed with a real
//! Prometheus text parser, and log capture.
#![allow(
    dead_code,
    reason = "shared by several test crates; each uses a subset"
)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use prometheus_parse::{Scrape, Value};
use tokio::sync::mpsc;

use crate::support::upstream::{Reply, Seen};
use crate::support::{Sidecar, eventually, fixture, scrape_metrics};

/// Usage the fake upstream reports for every streamed chat call.
pub const STREAM_PROMPT_TOKENS: u64 = 12;
pub const STREAM_COMPLETION_TOKENS: u64 = 5;

/// The SSE body an OpenAI-compatible upstream sends for a streamed chat completion,
/// with or without `stream_options.include_usage`.
pub fn chat_sse(include_usage: bool) -> String {
    let null = if include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let mut out = String::new();
    let deltas = [
        r#"{"role":"assistant","content":"Hel"}"#,
        r#"{"content":"lo, \"usage\": {} is just text"}"#,
        r#"{"content":"!"}"#,
        r#"{}"#,
    ];
    for (i, delta) in deltas.iter().enumerate() {
        let finish = if i == deltas.len() - 1 {
            r#""stop""#
        } else {
            "null"
        };
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-s3\",\"object\":\"chat.completion.chunk\",\"created\":1764000000,\"model\":\"gpt-4.1-2025-04-14\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{null}}}\n\n"
        ));
    }
    if include_usage {
        out.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-s3\",\"object\":\"chat.completion.chunk\",\"created\":1764000000,\"model\":\"gpt-4.1-2025-04-14\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{STREAM_PROMPT_TOKENS},\"completion_tokens\":{STREAM_COMPLETION_TOKENS},\"total_tokens\":{}}}}}\n\n",
            STREAM_PROMPT_TOKENS + STREAM_COMPLETION_TOKENS
        ));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

/// A streamed reply whose body is `body` cut into odd-sized frames (so events straddle
/// frame boundaries), pushed by a task the reply owns.
pub fn sse_reply(body: String) -> Reply {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let bytes = Bytes::from(body);
        let mut at = 0;
        let mut len = 29;
        while at < bytes.len() {
            let end = (at + len).min(bytes.len());
            if tx.send(bytes.slice(at..end)).await.is_err() {
                return;
            }
            at = end;
            len = len * 7 % 113 + 1;
        }
    });
    Reply::Stream {
        status: StatusCode::OK,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: rx,
    }
}

/// An OpenAI-like upstream: chat completions (streamed with usage only when asked) and
/// embeddings from the shared fixtures.
pub fn openai_like(seen: &Seen) -> Reply {
    match seen.path.as_str() {
        "/v1/embeddings" => Reply::json(200, fixture("openai/embeddings.json")),
        "/v1/models" => Reply::json(200, fixture("openai/models.json")),
        "/v1/chat/completions" => {
            let req = seen.json();
            if req["stream"] == true {
                let asked = req["stream_options"]["include_usage"] == true;
                sse_reply(chat_sse(asked))
            } else {
                Reply::json(200, fixture("openai/chat_completion.json"))
            }
        }
        other => Reply::json(404, format!("{{\"error\":{{\"message\":\"no {other}\"}}}}")),
    }
}

/// `/metrics` as text and parsed.
pub async fn scrape(sidecar: &Sidecar) -> (String, Scrape) {
    scrape_metrics(&sidecar.admin_url("/metrics")).await
}

/// The value of the one sample `name{labels}` (counter or gauge), or of a histogram's
/// count; `None` when there is no such series.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(
        found.len() <= 1,
        "{name}{labels:?} matches several series: {found:#?}"
    );
    found.first().map(|s| match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => panic!("{name} is a summary"),
    })
}

/// Sum of `name` over every series matching `labels`.
pub fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Waits (bounded) until `holysheep_requests_total` sums to `n`: a request is recorded
/// when its body ends, which can be just after the client read the last byte.
pub async fn wait_for_requests(sidecar: &Sidecar, n: f64) -> (String, Scrape) {
    eventually(
        Duration::from_secs(5),
        "requests recorded in /metrics",
        || async {
            let (_, s) = scrape(sidecar).await;
            sum(&s, "holysheep_requests_total", &[]) >= n
                && value(&s, "holysheep_inflight_requests", &[]) == Some(0.0)
        },
    )
    .await;
    scrape(sidecar).await
}

/// A shared in-memory log sink.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs (once per test binary) the sidecar's own JSON subscriber at `debug` level,
/// writing into a buffer, and returns that buffer.
pub fn capture_logs() -> LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let sink = buf.clone();
        let subscriber = holysheep_sidecar::logging::subscriber(
            tracing_subscriber::EnvFilter::new("debug"),
            move || sink.clone(),
        );
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

/// The per-request log lines (target `holysheep::request`) as JSON.
pub fn request_lines(logs: &LogBuf) -> Vec<serde_json::Value> {
    logs.text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == holysheep_sidecar::logging::REQUEST_TARGET)
        .collect()
}
