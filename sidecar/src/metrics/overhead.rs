//! What metering adds to one request, measured (run in release, it is ignored by default):
//! `cargo test --release -p holysheep-sidecar --lib overhead -- --ignored --nocapture`.
//! The same bodies are read with and without a `RequestMeter` around them; the
//! difference is the meter's cost: usage tap, metrics, and the JSON log line (to a sink).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use prometheus_client::registry::Registry;

use super::{Metrics, RequestMeter};
use crate::config::Config;
use crate::logging;
use crate::usage::MediaKind;
use crate::usage::StreamUsage;

const CHAT_JSON: &str = include_str!("../../tests/fixtures/openai/chat_completion.json");

fn sse_frames() -> Vec<Bytes> {
    let mut frames: Vec<Bytes> = (0..50)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1-2025-04-14\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    frames.push(Bytes::from_static(b"data: {\"id\":\"c\",\"model\":\"gpt-4.1-2025-04-14\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":50}}\n\ndata: [DONE]\n\n"));
    frames
}

async fn read<B: http_body::Body<Data = Bytes>>(body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    body.collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0)
}

fn response<B>(body: B, content_type: &'static str) -> Response<B> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

async fn per_request(n: u32, metered: bool, sse: bool, metrics: &Metrics) -> Duration {
    let config = Arc::new(Config::default());
    let frames = sse_frames();
    let headers = HeaderMap::new();
    let started = Instant::now();
    for _ in 0..n {
        if sse {
            let body = StreamBody::new(stream::iter(
                frames
                    .iter()
                    .cloned()
                    .map(|f| Ok::<_, std::convert::Infallible>(Frame::data(f))),
            ));
            let resp = response(body, "text/event-stream");
            if metered {
                let mut meter = RequestMeter::start(metrics, "/v1/chat/completions", &headers);
                meter.set_models(Some("gpt-4".into()), Some("gpt-4.1".into()));
                meter.set_stream_usage(StreamUsage::Injected);
                let media = MediaKind::of(resp.headers());
                read(meter.finish(resp, media, Arc::clone(&config)).into_body()).await;
            } else {
                read(resp.into_body()).await;
            }
        } else {
            let resp = response(
                Full::new(Bytes::from_static(CHAT_JSON.as_bytes())),
                "application/json",
            );
            if metered {
                let mut meter = RequestMeter::start(metrics, "/v1/chat/completions", &headers);
                meter.set_models(Some("gpt-4".into()), Some("gpt-4.1".into()));
                let media = MediaKind::of(resp.headers());
                read(meter.finish(resp, media, Arc::clone(&config)).into_body()).await;
            } else {
                read(resp.into_body()).await;
            }
        }
    }
    started.elapsed() / n
}

#[test]
#[ignore = "a measurement, not a check: run in release with --ignored --nocapture"]
fn overhead() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let metrics = Metrics::register(&mut Registry::default());
    let subscriber = logging::subscriber(tracing_subscriber::EnvFilter::new("info"), std::io::sink);
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            for (name, sse) in [
                ("JSON chat response", false),
                ("SSE, 51 events, strip mode", true),
            ] {
                // Warm up, then measure each side twice and keep the best.
                per_request(2_000, true, sse, &metrics).await;
                let n = 20_000;
                let base = per_request(n, false, sse, &metrics)
                    .await
                    .min(per_request(n, false, sse, &metrics).await);
                let with = per_request(n, true, sse, &metrics)
                    .await
                    .min(per_request(n, true, sse, &metrics).await);
                println!(
                    "{name}: {:.2} us without meter, {:.2} us with, added {:.2} us per request",
                    base.as_secs_f64() * 1e6,
                    with.as_secs_f64() * 1e6,
                    (with.as_secs_f64() - base.as_secs_f64()) * 1e6
                );
            }
        });
    });
}
