//! Retries, `Retry-After`, fallback models, the deadline, the retry budget and broken
//! streams, end to end: a client talks to an in-process sidecar in front of a scripted
//! upstream. Every upstream keeps a timestamped log, so each test can also check that no
//! request went upstream after the client had received any byte of its answer.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod support;

#[path = "retry_fallback/raw.rs"]
mod raw;

use std::time::{Duration, Instant};

use holysheep_sidecar::config::Config;
use raw::{Log, RawUpstream};
use serde_json::{Value, json};
use support::upstream::{FakeUpstream, Reply, Seen};
use support::{Sidecar, fixture, http_client, settings};

/// Short timings so the suite stays fast; each test overrides what it exercises.
const FAST_RETRY: &str = "
retry:
  max_attempts: 3
  base_backoff: 5ms
  max_backoff: 20ms
  attempt_timeout: 2s
  deadline: 5s
";

async fn sidecar(upstream: &str, yaml: &str) -> Sidecar {
    let mut s = settings(upstream);
    s.config = Config::from_yaml_str(yaml).unwrap();
    Sidecar::start_with(s).await
}

/// A fake upstream answering with `reply(n, body)` for its n-th request (0-based).
async fn logged(
    reply: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static,
) -> (FakeUpstream, Log) {
    let log = Log::default();
    let log2 = log.clone();
    let up = FakeUpstream::start(move |seen: &Seen| {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let n = log2.len();
        log2.push(body.clone());
        reply(n, &body)
    })
    .await;
    (up, log)
}

fn completion(model: &str) -> Reply {
    let mut body: Value = serde_json::from_str(&fixture("openai/chat_completion.json")).unwrap();
    body["model"] = json!(model);
    Reply::json(200, body.to_string())
}

fn error(status: u16, message: &str) -> Reply {
    let body = json!({"error": {"message": message, "type": "server_error", "code": null}});
    Reply::json(status, body.to_string())
}

/// POSTs a chat request; returns the response and when its headers arrived.
async fn chat(sidecar: &Sidecar, model: &str) -> (reqwest::Response, Instant) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let resp = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .bearer_auth("injected-by-holysheep")
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp, Instant::now())
}

#[tokio::test]
async fn two_503_then_200_is_one_success_for_the_client() {
    let (up, log) = logged(|n, body| match n {
        0 | 1 => error(503, "overloaded"),
        _ => completion(body["model"].as_str().unwrap()),
    })
    .await;
    let sidecar = sidecar(&up.url(), FAST_RETRY).await;

    // The real SDK sees a single, successful call.
    let request = support::chat_request("gpt-4.1", "hi");
    let resp = sidecar.openai().chat().create(request).await.unwrap();
    let answered = Instant::now();

    assert_eq!(resp.model, "gpt-4.1");
    assert_eq!(log.len(), 3, "two failures and the success");
    let bodies: Vec<Value> = up.requests().iter().map(Seen::json).collect();
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "every attempt resent the same body"
    );
    log.nothing_after(answered);
}

#[tokio::test]
async fn retry_after_one_second_is_honoured() {
    let (up, log) = logged(|n, body| match n {
        0 => error(429, "slow down").with_header("retry-after", "1"),
        _ => completion(body["model"].as_str().unwrap()),
    })
    .await;
    let sidecar = sidecar(&up.url(), FAST_RETRY).await;

    let start = Instant::now();
    let (resp, first_byte) = chat(&sidecar, "gpt-4.1").await;
    let elapsed = start.elapsed();

    assert_eq!(resp.status(), 200);
    assert!(
        elapsed >= Duration::from_millis(950),
        "waited only {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "waited {elapsed:?}");
    assert_eq!(log.len(), 2);
    log.nothing_after(first_byte);
}

#[tokio::test]
async fn always_429_model_falls_back_to_the_next_one() {
    let (up, log) = logged(|_, body| {
        let model = body["model"].as_str().unwrap();
        if model == "gpt-4.1" {
            error(429, "rate limited")
        } else {
            completion(model)
        }
    })
    .await;
    let yaml = format!("{FAST_RETRY}fallbacks:\n  gpt-4.1: [deepseek, gemini-2.5-flash]\n");
    let sidecar = sidecar(&up.url(), &yaml).await;

    // `gpt-4` is an alias of gpt-4.1; `deepseek` in the list is an alias too.
    let (resp, first_byte) = chat(&sidecar, "gpt-4").await;

    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-holysheep-model"], "deepseek-chat-v3-0324");
    assert!(!resp.headers().contains_key("x-should-retry"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "deepseek-chat-v3-0324");
    assert_eq!(
        log.models(),
        ["gpt-4.1", "gpt-4.1", "gpt-4.1", "deepseek-chat-v3-0324"],
        "three attempts on the model, then its first fallback"
    );
    log.nothing_after(first_byte);
}

#[tokio::test]
async fn when_every_model_fails_the_last_error_comes_back_marked_final() {
    let (up, log) = logged(|_, _| error(503, "down")).await;
    let yaml = format!("{FAST_RETRY}fallbacks:\n  gpt-4.1: [deepseek-chat-v3-0324]\n");
    let sidecar = sidecar(&up.url(), &yaml).await;

    let (resp, first_byte) = chat(&sidecar, "gpt-4.1").await;

    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert_eq!(resp.headers()["x-holysheep-model"], "deepseek-chat-v3-0324");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["message"], "down",
        "the upstream's own error, untouched"
    );
    assert_eq!(log.len(), 6, "3 attempts on each of the 2 models");
    log.nothing_after(first_byte);
}

#[tokio::test]
async fn long_retry_after_skips_straight_to_the_fallback() {
    let (up, log) = logged(|_, body| {
        let model = body["model"].as_str().unwrap();
        if model == "gpt-4.1" {
            error(429, "come back in an hour").with_header("retry-after", "3600")
        } else {
            completion(model)
        }
    })
    .await;
    let yaml = format!(
        "{FAST_RETRY}  max_retry_after: 2s\nfallbacks:\n  gpt-4.1: [deepseek-chat-v3-0324]\n"
    );
    let sidecar = sidecar(&up.url(), &yaml).await;

    let start = Instant::now();
    let (resp, _) = chat(&sidecar, "gpt-4.1").await;

    assert_eq!(resp.status(), 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "did not wait for the hour"
    );
    assert_eq!(log.models(), ["gpt-4.1", "deepseek-chat-v3-0324"]);
}

#[tokio::test]
async fn deadline_exceeded_is_a_504_within_the_deadline() {
    let up = RawUpstream::silent().await;
    let yaml = "
retry:
  max_attempts: 10
  base_backoff: 5ms
  max_backoff: 10ms
  attempt_timeout: 250ms
  deadline: 700ms
";
    let sidecar = sidecar(&up.url, yaml).await;

    let start = Instant::now();
    let (resp, _) = chat(&sidecar, "gpt-4.1").await;
    let elapsed = start.elapsed();

    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    assert!(
        elapsed >= Duration::from_millis(600),
        "gave up early: {elapsed:?}"
    );
    // The deadline itself plus scheduling slack on a busy 2-core machine.
    assert!(
        elapsed < Duration::from_millis(700 + 300),
        "overran: {elapsed:?}"
    );
    assert!(
        up.log.len() >= 3,
        "attempts were cut by their timeout and retried"
    );
}

#[tokio::test]
async fn retry_budget_stops_retries_under_sustained_errors() {
    let (up, log) = logged(|_, _| error(503, "down")).await;
    let yaml = "
retry:
  max_attempts: 3
  base_backoff: 1ms
  max_backoff: 2ms
  budget_ratio: 0.1
";
    let sidecar = sidecar(&up.url(), yaml).await;

    const REQUESTS: usize = 40;
    let mut per_request = Vec::new();
    for _ in 0..REQUESTS {
        let before = log.len();
        let (resp, _) = chat(&sidecar, "gpt-4.1").await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-should-retry"], "false");
        per_request.push(log.len() - before);
    }

    // Without a budget: 3 attempts each (120). With it: one attempt each, plus 10% of
    // the requests, plus the floor of 1 retry/s over the 10 s window.
    let total: usize = per_request.iter().sum();
    assert!(
        total <= REQUESTS + REQUESTS / 10 + 10,
        "{total} upstream calls: {per_request:?}"
    );
    assert!(
        per_request[0] == 3,
        "a fresh budget still retries: {per_request:?}"
    );
    // Once the floor is spent, only the ratio's share is retried: 1 in 10 requests.
    let tail = &per_request[REQUESTS / 2..];
    let tail_retries: usize = tail.iter().map(|n| n - 1).sum();
    assert!(
        tail_retries <= tail.len() / 10 + 1,
        "retries in the tail: {per_request:?}"
    );
}

#[tokio::test]
async fn a_stream_broken_after_its_first_chunk_ends_with_an_error_event_and_no_retry() {
    let up = RawUpstream::breaking_stream().await;
    let log = up.log.clone();
    let sidecar = sidecar(&up.url, FAST_RETRY).await;

    let body = json!({"model": "gpt-4.1", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let read = async {
        let mut resp = http_client()
            .post(sidecar.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let first_byte = Instant::now();
        assert_eq!(resp.status(), 200);
        let mut text = Vec::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            text.extend_from_slice(&chunk);
        }
        (String::from_utf8(text).unwrap(), first_byte)
    };
    // Bounded: a hang fails the test instead of stalling the suite.
    let (text, first_byte) = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap();

    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(
        events.len(),
        2,
        "the first chunk, then the error event: {text:?}"
    );
    assert!(events[0].contains("\"Hel\""));
    let error = events[1].strip_prefix("event: error\ndata: ").unwrap();
    let error: Value = serde_json::from_str(error).unwrap();
    assert_eq!(error["error"]["code"], "upstream_stream_broken");
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(log.len(), 1, "a started stream is never retried");
    log.nothing_after(first_byte);
}

#[tokio::test]
async fn a_request_without_body_is_retried_too() {
    let (up, log) = logged(|n, _| match n {
        0 => error(502, "bad gateway"),
        _ => Reply::json(200, fixture("openai/models.json")),
    })
    .await;
    let sidecar = sidecar(&up.url(), FAST_RETRY).await;

    let resp = http_client()
        .get(sidecar.url("/v1/models"))
        .send()
        .await
        .unwrap();
    let first_byte = Instant::now();

    assert_eq!(resp.status(), 200);
    assert!(
        !resp.headers().contains_key("x-holysheep-model"),
        "no model in the request"
    );
    assert_eq!(log.len(), 2);
    assert!(
        up.requests()
            .iter()
            .all(|r| r.method == http::Method::GET && r.body.is_empty())
    );
    log.nothing_after(first_byte);
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_byte_is_retried() {
    let (up, log) = logged(|n, _| match n {
        0 => error(503, "overloaded"),
        _ => Reply::Full {
            status: http::StatusCode::OK,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: fixture("openai/chat_stream_2.sse").into(),
        },
    })
    .await;
    let sidecar = sidecar(&up.url(), FAST_RETRY).await;

    let body = json!({"model": "gpt-4.1", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let first_byte = Instant::now();

    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-holysheep-model"], "gpt-4.1");
    let text = resp.text().await.unwrap();
    assert!(text.contains("\"lo!\""), "{text}");
    assert!(!text.contains("event: error"), "{text}");
    assert_eq!(log.len(), 2);
    assert!(up.requests().iter().all(|r| r.json()["stream"] == true));
    log.nothing_after(first_byte);
}
