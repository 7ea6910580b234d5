//! Upstream faults after and before the response headers, end to end over real sockets:
//! a body that goes quiet past `limits.stream_idle_timeout`, an event stream cut in the
//! middle of an event, a client that leaves before the headers, retries that are counted
//! only once they are sent, and error messages that name the limit, the upstream URL and
//! the root cause. Tests check what the client got and, where the fault is counted or
//! logged, `/metrics` and the request log line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

mod observe;
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holysheep_sidecar::config::Config;
use observe::{LogBuf, capture_logs, request_lines, scrape, sum, value, wait_for_requests};
use serde_json::{Value, json};
use support::tcp::{RawReply, TcpUpstream, chunk, chunked_head};
use support::upstream::{FakeUpstream, Reply};
use support::{Sidecar, TEST_KEY, eventually, http_client, settings};
use tokio::sync::mpsc;

/// Bound on every client read: a hang fails the test instead of stalling the suite.
const READ_BOUND: Duration = Duration::from_secs(10);

async fn sidecar(upstream: &str, yaml: &str) -> Sidecar {
    let mut s = settings(upstream);
    s.config = Config::from_yaml_str(yaml).unwrap();
    Sidecar::start_with(s).await
}

/// A chat request body; `stream` asks for SSE, `usage` for `include_usage` (so the
/// sidecar forwards events untouched instead of stripping what it asked for itself).
fn chat_body(stream: bool, usage: bool) -> Value {
    let mut body = json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]});
    if stream {
        body["stream"] = json!(true);
    }
    if usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn post(sidecar: &Sidecar, request_id: &str, body: &Value) -> reqwest::RequestBuilder {
    http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .bearer_auth("injected-by-holysheep")
        .header("x-request-id", request_id)
        .json(body)
}

/// Reads a response body to its end; `Err` when the body failed (connection cut).
async fn read_all(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A fake upstream whose every answer is a stream of `content_type` the test feeds;
/// returns it and the channel of the feeds' senders, one per request.
async fn fed_upstream(
    content_type: &'static str,
) -> (FakeUpstream, mpsc::Receiver<mpsc::Sender<Bytes>>) {
    let (feeds_tx, feeds) = mpsc::channel(4);
    let up = FakeUpstream::start(move |_| {
        let (reply, tx) = Reply::stream(content_type);
        feeds_tx.try_send(tx).unwrap();
        reply
    })
    .await;
    (up, feeds)
}

/// One dispatched Server-Sent Event.
#[derive(Debug)]
struct Event {
    event: String,
    data: String,
}

/// Parses a transcript by the SSE rules (lines end in CRLF, LF or CR; `field: value`;
/// a blank line dispatches an event that has data; an unterminated event at the end of
/// the stream is discarded).
fn parse_sse(text: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let (mut event, mut data): (String, Option<String>) = (String::new(), None);
    let mut rest = text;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let after = &rest[end..];
        rest = after.strip_prefix("\r\n").unwrap_or_else(|| &after[1..]);
        if line.is_empty() {
            if let Some(data) = data.take() {
                let name = if event.is_empty() { "message" } else { &event };
                events.push(Event {
                    event: name.to_owned(),
                    data,
                });
            }
            event.clear();
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value.to_owned(),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    events
}

/// The one request log line with `request_id` (fails unless exactly one).
fn log_line(logs: &LogBuf, request_id: &str) -> Value {
    let lines: Vec<Value> = request_lines(logs)
        .into_iter()
        .filter(|l| l["fields"]["request_id"] == request_id)
        .collect();
    assert_eq!(lines.len(), 1, "request lines of {request_id}: {lines:#?}");
    lines[0]["fields"].clone()
}

/// Waits until the request `request_id` has its log line (it is written when the body
/// ends, which can be just after the client saw the end).
async fn wait_for_log_line(logs: &LogBuf, request_id: &str) -> Value {
    eventually(Duration::from_secs(5), "the request log line", || async {
        request_lines(logs)
            .iter()
            .any(|l| l["fields"]["request_id"] == request_id)
    })
    .await;
    log_line(logs, request_id)
}

const FIRST_EVENT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n";

#[tokio::test]
async fn an_event_stream_idle_past_the_limit_ends_with_a_timeout_error_event() {
    let logs = capture_logs();
    let (up, mut feeds) = fed_upstream("text/event-stream").await;
    let sidecar = sidecar(&up.url(), "limits:\n  stream_idle_timeout: 300ms\n").await;

    let resp = post(&sidecar, "idle-sse", &chat_body(true, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let feed = feeds.recv().await.unwrap();
    feed.send(Bytes::from_static(FIRST_EVENT.as_bytes()))
        .await
        .unwrap();
    // Nothing more is sent; the feed stays open, so only the idle limit can end it.
    let body = tokio::time::timeout(READ_BOUND, read_all(resp))
        .await
        .expect("the idle stream was ended")
        .expect("an event stream ends cleanly, with an error event");

    let text = String::from_utf8(body).unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.len(), 2, "the event sent, then the error: {text:?}");
    assert!(events[0].data.contains("\"Hel\""));
    assert_eq!(events[1].event, "error");
    let error: Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(error["error"]["type"], "timeout_error", "{error}");
    assert_eq!(error["error"]["code"], "stream_idle_timeout");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.stream_idle_timeout"), "{message}");
    // The upstream side was let go.
    tokio::time::timeout(READ_BOUND, feed.closed())
        .await
        .expect("the upstream response was dropped");

    let line = wait_for_log_line(&logs, "idle-sse").await;
    assert_eq!(line["end"], "timeout", "{line}");
    let (_, s) = wait_for_requests(&sidecar, 1.0).await;
    let timeouts = [("reason", "timeout")];
    assert_eq!(
        value(&s, "holysheep_incomplete_responses_total", &timeouts),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_body_idle_past_the_limit_is_aborted() {
    let logs = capture_logs();
    let (up, mut feeds) = fed_upstream("application/json").await;
    let sidecar = sidecar(&up.url(), "limits:\n  stream_idle_timeout: 300ms\n").await;

    let resp = post(&sidecar, "idle-json", &chat_body(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let feed = feeds.recv().await.unwrap();
    feed.send(Bytes::from_static(b"{\"id\":")).await.unwrap();
    let read = tokio::time::timeout(READ_BOUND, read_all(resp))
        .await
        .expect("the idle body was ended");
    assert!(
        read.is_err(),
        "a body cut short must fail for the client, not end as if complete: {read:?}"
    );
    tokio::time::timeout(READ_BOUND, feed.closed())
        .await
        .expect("the upstream response was dropped");

    let line = wait_for_log_line(&logs, "idle-json").await;
    assert_eq!(line["end"], "timeout", "{line}");
    assert_eq!(line["status"], 200);
    let (_, s) = wait_for_requests(&sidecar, 1.0).await;
    let timeouts = [("reason", "timeout")];
    assert_eq!(
        value(&s, "holysheep_incomplete_responses_total", &timeouts),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_stream_cut_inside_an_event_gets_a_well_formed_error_event() {
    let logs = capture_logs();
    // The first event whole, then half of the next one, then the connection is closed.
    let mut cut = chunked_head("text/event-stream");
    cut.extend(chunk(FIRST_EVENT));
    cut.extend(chunk("data: {\"id\":"));
    let up = TcpUpstream::start(RawReply::Cut(cut)).await;
    let sidecar = sidecar(&up.url, "retry:\n  max_attempts: 1\n").await;

    // Events forwarded untouched (the client asked for usage) and held back until
    // complete (the sidecar asked for it and strips it again).
    for (request_id, usage) in [("cut-pass-through", true), ("cut-strip", false)] {
        let resp = post(&sidecar, request_id, &chat_body(true, usage))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(READ_BOUND, read_all(resp))
            .await
            .expect("the broken stream was ended")
            .expect("an event stream ends cleanly, with an error event");
        let text = String::from_utf8(body).unwrap();

        let events = parse_sse(&text);
        let last = events.last().expect("events");
        assert_eq!(last.event, "error", "{request_id}: {text:?}");
        let error: Value = serde_json::from_str(&last.data).unwrap_or_else(|e| {
            panic!("{request_id}: error event data is not JSON ({e}): {text:?}")
        });
        assert_eq!(error["error"]["code"], "upstream_stream_broken");
        assert_eq!(error["error"]["type"], "server_error");
        assert_eq!(
            events.iter().filter(|e| e.event == "error").count(),
            1,
            "{request_id}: {text:?}"
        );
        assert!(events[0].data.contains("\"Hel\""), "{request_id}: {text:?}");

        let line = wait_for_log_line(&logs, request_id).await;
        assert_eq!(line["end"], "upstream_error", "{request_id}: {line}");
    }
    let (_, s) = wait_for_requests(&sidecar, 2.0).await;
    let broken = [("reason", "upstream_error")];
    assert_eq!(
        value(&s, "holysheep_incomplete_responses_total", &broken),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_client_gone_before_the_headers_is_one_499_and_one_log_line() {
    let logs = capture_logs();
    let up = TcpUpstream::start(RawReply::Silent).await;
    let sidecar = sidecar(&up.url, "").await;

    let request = post(&sidecar, "gone-early", &chat_body(false, false));
    let client = tokio::spawn(request.send());
    up.wait_for_requests(1).await;
    // The upstream holds the request; the client gives up and closes its connection.
    client.abort();
    let _ = client.await;

    eventually(Duration::from_secs(5), "a 499 in /metrics", || async {
        let (_, s) = scrape(&sidecar).await;
        sum(&s, "holysheep_requests_total", &[("status", "499")]) == 1.0
            && value(&s, "holysheep_inflight_requests", &[]) == Some(0.0)
    })
    .await;
    let (_, s) = scrape(&sidecar).await;
    let labels = [
        ("route", "chat_completions"),
        ("model", "gpt-4.1"),
        ("status", "499"),
    ];
    assert_eq!(value(&s, "holysheep_requests_total", &labels), Some(1.0));
    assert_eq!(sum(&s, "holysheep_requests_total", &[]), 1.0);

    let line = wait_for_log_line(&logs, "gone-early").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["end"], "client_gone", "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["model"], "gpt-4.1", "{line}");
}

#[tokio::test]
async fn a_retry_abandoned_because_the_client_left_is_not_counted() {
    let logs = capture_logs();
    // Asks for a pause long enough that the client leaves during it.
    let up = FakeUpstream::start(|_| {
        Reply::json(503, r#"{"error":{"message":"busy"}}"#).with_header("retry-after-ms", "5000")
    })
    .await;
    let sidecar = sidecar(&up.url(), "").await;

    let client = tokio::spawn(post(&sidecar, "gone-in-backoff", &chat_body(false, false)).send());
    eventually(Duration::from_secs(5), "the first attempt", || async {
        let (_, s) = scrape(&sidecar).await;
        sum(&s, "holysheep_upstream_attempts_total", &[]) == 1.0
    })
    .await;
    client.abort();
    let _ = client.await;

    let line = wait_for_log_line(&logs, "gone-in-backoff").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    let (_, s) = scrape(&sidecar).await;
    assert_eq!(up.requests().len(), 1);
    assert_eq!(
        sum(&s, "holysheep_upstream_retries_total", &[]),
        0.0,
        "the retry was never sent"
    );
}

#[tokio::test]
async fn retries_counted_are_retries_sent_when_the_budget_runs_out() {
    let logs = capture_logs();
    // Reads each request and hangs up: a failure before any response, always retried.
    let up = TcpUpstream::start(RawReply::HangUp).await;
    let yaml = "
retry:
  max_attempts: 3
  base_backoff: 1ms
  max_backoff: 2ms
  budget_ratio: 0.0
";
    let sidecar = sidecar(&up.url, yaml).await;
    let url = format!("{}/chat/completions", up.url);

    const REQUESTS: usize = 12;
    let mut messages = Vec::new();
    for i in 0..REQUESTS {
        let before = up.requests();
        let request_id = format!("budget-{i}");
        let resp = post(&sidecar, &request_id, &chat_body(false, false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        let sent = up.requests() - before;
        let line = wait_for_log_line(&logs, &request_id).await;
        assert_eq!(line["attempts"], sent, "{request_id}: {line}");
        assert!(message.contains(&url), "{message}");
        assert!(!message.contains(TEST_KEY));
        messages.push((sent, message));
    }

    let total = up.requests();
    let (_, s) = wait_for_requests(&sidecar, REQUESTS as f64).await;
    assert_eq!(
        sum(&s, "holysheep_upstream_retries_total", &[]),
        (total - REQUESTS) as f64,
        "retries counted = requests sent beyond the first attempts"
    );
    // A fresh budget allows retries; then it runs out and says so.
    let (sent, first) = &messages[0];
    assert_eq!(*sent, 3, "{first}");
    assert!(first.contains("retry.max_attempts"), "{first}");
    let (sent, last) = messages.last().unwrap();
    assert_eq!(*sent, 1, "{messages:#?}");
    assert!(last.contains("retry budget"), "{last}");
    assert!(last.contains("retry.budget_ratio"), "{last}");
}

#[tokio::test]
async fn retries_counted_are_retries_sent_when_the_deadline_ends_it() {
    let logs = capture_logs();
    let up = TcpUpstream::start(RawReply::Silent).await;
    let yaml = "
retry:
  max_attempts: 10
  base_backoff: 1ms
  max_backoff: 2ms
  attempt_timeout: 300ms
  deadline: 800ms
";
    let sidecar = sidecar(&up.url, yaml).await;

    let resp = post(&sidecar, "deadline", &chat_body(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("retry.deadline"), "{message}");
    assert!(
        message.contains(&format!("{}/chat/completions", up.url)),
        "{message}"
    );
    assert!(
        message.contains("retry.attempt_timeout"),
        "the last attempt's failure: {message}"
    );

    let sent = up.requests();
    assert!(sent >= 2, "attempts were cut by their timeout and retried");
    let line = wait_for_log_line(&logs, "deadline").await;
    assert_eq!(line["attempts"], sent, "{line}");
    let (_, s) = wait_for_requests(&sidecar, 1.0).await;
    assert_eq!(
        sum(&s, "holysheep_upstream_retries_total", &[]),
        (sent - 1) as f64
    );
}

/// An HTTPS upstream for `localhost` whose self-signed certificate no public root
/// trusts; returns its port. Handshakes fail; nothing is ever served.
async fn untrusted_tls_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], private)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            conns.spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn an_unknown_certificate_authority_is_named_with_the_url_and_the_limit() {
    let (port, server) = untrusted_tls_upstream().await;
    let upstream = format!("https://localhost:{port}/v1");
    let yaml = "retry:\n  base_backoff: 1ms\n  max_backoff: 2ms\n";
    let sidecar = sidecar(&upstream, yaml).await;

    let resp = post(&sidecar, "tls", &chat_body(false, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("https://localhost:{port}/v1/chat/completions")),
        "{message}"
    );
    assert!(message.contains("retry.max_attempts"), "{message}");
    assert!(message.contains("invalid peer certificate"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(!message.contains(TEST_KEY));
    server.abort();
}
