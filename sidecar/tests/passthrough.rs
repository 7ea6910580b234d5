//! The sidecar driven by a real OpenAI client (async-openai) and plain HTTP against a
//! scripted fake upstream: forwarding, key replacement, aliases, streaming, limits and
//! the sidecar's own errors.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod support;

use std::time::Duration;

use async_openai::types::chat::{ChatCompletionStreamOptions, CreateChatCompletionRequest};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use bytes::Bytes;
use futures_util::StreamExt;
use support::upstream::{FakeUpstream, Reply};
use support::{
    PLACEHOLDER_KEY, Sidecar, TEST_KEY, chat_request, closed_port, fixture, http_client,
    read_chat_stream, sdk_error, settings,
};

fn chat(model: &str) -> CreateChatCompletionRequest {
    chat_request(model, "Say hello")
}

/// Asks for the usage chunk, which the scripted stream fixtures end with (a client that
/// does not ask never sees it: the sidecar removes the one it requested itself).
fn with_usage(mut req: CreateChatCompletionRequest) -> CreateChatCompletionRequest {
    req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    req
}

#[tokio::test]
async fn plain_chat_reaches_upstream_and_returns_its_answer() {
    let up = FakeUpstream::scripted(vec![Reply::json(
        200,
        fixture("openai/chat_completion.json"),
    )])
    .await;
    let sidecar = Sidecar::start(&up.url()).await;

    let resp = sidecar
        .openai()
        .chat()
        .create(chat("gpt-4.1"))
        .await
        .unwrap();

    assert_eq!(
        resp.choices[0].message.content.as_deref(),
        Some("Hello from the fake upstream.")
    );
    assert_eq!(resp.usage.unwrap().total_tokens, 19);
    let seen = up.only();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.json()["messages"][0]["content"], "Say hello");
}

#[tokio::test]
async fn key_is_replaced_by_the_sidecar_key() {
    let up = FakeUpstream::always_json(200, r#"{"object":"list","data":[]}"#).await;
    let sidecar = Sidecar::start(&up.url()).await;

    // The SDK sends the placeholder as a Bearer token.
    sidecar.openai().models().list().await.unwrap();
    // Raw clients may send any of the three key headers.
    let resp = http_client()
        .get(sidecar.url("/v1/models"))
        .header("authorization", "Bearer client-own-key")
        .header("api-key", "azure-style-key")
        .header("x-api-key", "anthropic-style-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    for seen in up.wait_for_requests(2).await {
        let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
        assert_eq!(
            auth,
            [&format!("Bearer {TEST_KEY}")],
            "exactly our key upstream"
        );
        assert!(!seen.headers.contains_key("api-key"));
        assert!(!seen.headers.contains_key("x-api-key"));
        let all = format!("{:?}", seen.headers);
        for leaked in [
            PLACEHOLDER_KEY,
            "client-own-key",
            "azure-style-key",
            "anthropic-style-key",
        ] {
            assert!(!all.contains(leaked), "{leaked} leaked upstream: {all}");
        }
    }
}

#[tokio::test]
async fn alias_is_remapped_and_unaliased_body_is_byte_identical() {
    let up =
        FakeUpstream::start(|_| Reply::json(200, fixture("openai/chat_completion.json"))).await;
    let sidecar = Sidecar::start(&up.url()).await;

    sidecar.openai().chat().create(chat("gpt-4")).await.unwrap();
    let aliased = up.wait_for_requests(1).await.remove(0);
    assert_eq!(aliased.json()["model"], "gpt-4.1");

    // Odd spacing, key order and escapes must survive untouched when no alias applies.
    let raw: &[u8] = b"{ \"messages\" : [{\"role\":\"user\",\"content\":\"caf\\u00e9 \\\"gpt-4\\\"\"}],\n\t\"model\":\"gpt-4.1\" ,\"temperature\":0.50}";
    let resp = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let untouched = up.wait_for_requests(2).await.remove(1);
    assert_eq!(&untouched.body[..], raw);
}

#[tokio::test]
async fn streamed_chat_first_chunk_arrives_before_upstream_finishes() {
    let (reply, tx) = Reply::stream("text/event-stream");
    let up = FakeUpstream::scripted(vec![reply]).await;
    let sidecar = Sidecar::start(&up.url()).await;

    tx.send(Bytes::from(fixture("openai/chat_stream_1.sse")))
        .await
        .unwrap();
    let mut stream = sidecar
        .openai()
        .chat()
        .create_stream(with_usage(chat("gpt-4")))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first chunk before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(first.choices[0].delta.content.as_deref(), Some("Hel"));

    // Only now does the upstream send the rest and finish.
    tx.send(Bytes::from(fixture("openai/chat_stream_2.sse")))
        .await
        .unwrap();
    drop(tx);
    let mut text = String::from("Hel");
    let usage = read_chat_stream(&mut stream, &mut text).await;
    assert_eq!(text, "Hello!");
    assert_eq!(usage.unwrap().completion_tokens, 2);
    let seen = up.only();
    assert_eq!(seen.json()["stream"], true);
    assert_eq!(seen.json()["model"], "gpt-4.1");
}

#[tokio::test]
async fn embeddings_pass_through() {
    let up =
        FakeUpstream::scripted(vec![Reply::json(200, fixture("openai/embeddings.json"))]).await;
    let sidecar = Sidecar::start(&up.url()).await;

    let req = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input("The food was delicious")
        .build()
        .unwrap();
    let resp = sidecar.openai().embeddings().create(req).await.unwrap();

    assert_eq!(resp.data[0].embedding.len(), 3);
    assert_eq!(resp.usage.prompt_tokens, 5);
    let seen = up.only();
    assert_eq!(seen.path, "/v1/embeddings");
    assert_eq!(seen.json()["input"], "The food was delicious");
}

#[tokio::test]
async fn models_list_and_query_string_pass_through() {
    let up = FakeUpstream::start(|_| Reply::json(200, fixture("openai/models.json"))).await;
    let sidecar = Sidecar::start(&up.url()).await;

    let models = sidecar.openai().models().list().await.unwrap();
    let ids: Vec<_> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["gpt-4.1", "deepseek-chat-v3-0324"]);

    let resp = http_client()
        .get(sidecar.url("/v1/models?limit=2&after=a%20b&x=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.wait_for_requests(2).await;
    assert_eq!(seen[0].method, http::Method::GET);
    assert_eq!(seen[0].path, "/v1/models");
    assert_eq!(seen[0].query, None);
    assert_eq!(seen[1].query.as_deref(), Some("limit=2&after=a%20b&x=%2F"));
}

#[tokio::test]
async fn multipart_and_binary_bodies_pass_through_unchanged() {
    let audio: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let speech: Vec<u8> = (0..=255u8).rev().cycle().take(70_000).collect();
    let speech_reply = speech.clone();
    let up = FakeUpstream::start(move |seen| match seen.path.as_str() {
        "/v1/audio/speech" => Reply::Full {
            status: http::StatusCode::OK,
            headers: vec![
                ("content-type".into(), "audio/mpeg".into()),
                ("x-request-id".into(), "req-1".into()),
            ],
            body: Bytes::from(speech_reply.clone()),
        },
        _ => Reply::json(200, r#"{"text":"hello"}"#),
    })
    .await;
    let sidecar = Sidecar::start(&up.url()).await;

    let part = reqwest::multipart::Part::bytes(audio.clone())
        .file_name("a.wav")
        .mime_str("audio/wav")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("model", "whisper-1")
        .part("file", part);
    let resp = http_client()
        .post(sidecar.url("/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.only();
    let ct = seen.header("content-type");
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let boundary = ct.split("boundary=").nth(1).unwrap();
    let body = &seen.body[..];
    assert!(
        body.windows(audio.len()).any(|w| w == &audio[..]),
        "audio bytes intact"
    );
    assert!(
        body.windows(boundary.len())
            .any(|w| w == boundary.as_bytes())
    );
    assert_eq!(
        seen.header("content-length"),
        body.len().to_string(),
        "length kept for streamed bodies"
    );

    let resp = http_client()
        .post(sidecar.url("/v1/audio/speech"))
        .header("content-type", "application/octet-stream")
        .body(audio.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/mpeg");
    assert_eq!(resp.headers()["x-request-id"], "req-1");
    assert_eq!(resp.bytes().await.unwrap(), speech);
    assert_eq!(up.wait_for_requests(2).await[1].body, audio);
}

#[tokio::test]
async fn upstream_status_headers_and_error_body_pass_through() {
    let up = FakeUpstream::scripted(vec![
        Reply::json(400, fixture("openai/error_400.json"))
            .with_header("x-ratelimit-remaining-requests", "99"),
    ])
    .await;
    let sidecar = Sidecar::start(&up.url()).await;

    let resp = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("openai-organization", "org-1")
        .body(r#"{"model":"gpt-4.1","temperature":3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-ratelimit-remaining-requests"], "99");
    assert_eq!(resp.text().await.unwrap(), fixture("openai/error_400.json"));
    assert_eq!(up.only().header("openai-organization"), "org-1");
}

#[tokio::test]
async fn oversized_bodies_get_413_and_never_reach_upstream() {
    let up = FakeUpstream::always_json(200, "{}").await;
    let mut s = settings(&up.url());
    s.config.limits.max_body_bytes = 1024;
    let sidecar = Sidecar::start_with(s).await;

    // JSON with Content-Length: refused up front, OpenAI-shaped for the SDK.
    let req = chat_request("gpt-4.1", &"x".repeat(2000));
    let err = sidecar.openai().chat().create(req).await.unwrap_err();
    let (status, error) = sdk_error(&err);
    assert_eq!(status, 413, "{err}");
    assert_eq!(error["code"], "request_too_large");

    // Chunked JSON and chunked binary (no Content-Length): caught while reading.
    for ct in ["application/json", "application/octet-stream"] {
        let chunks = futures_util::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; 512]))),
        );
        let resp = http_client()
            .post(sidecar.url("/v1/audio/transcriptions"))
            .header("content-type", ct)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413, "{ct}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "request_too_large", "{ct}");
    }
    // JSON bodies are refused before any upstream contact; a streamed binary body may
    // have opened the upstream request, but it was never completed.
    assert!(up.requests().iter().all(|r| r.body.len() <= 1024));
}

#[tokio::test]
async fn upstream_down_is_502() {
    let addr = closed_port().await;
    let sidecar = Sidecar::start(&format!("http://{addr}/v1")).await;

    let err = sidecar
        .openai()
        .chat()
        .create(chat("gpt-4.1"))
        .await
        .unwrap_err();
    let (status, error) = sdk_error(&err);
    assert_eq!(status, 502, "{err}");
    assert_eq!(error["code"], "upstream_unreachable");
    assert_eq!(error["type"], "server_error");
}

#[tokio::test]
async fn unknown_path_is_404_openai_shaped() {
    let up = FakeUpstream::always_json(200, "{}").await;
    let sidecar = Sidecar::start(&up.url()).await;
    for path in ["/v2/models", "/v1", "/v1x/models", "/"] {
        let resp = http_client().get(sidecar.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unknown_url");
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let (reply, tx) = Reply::stream("text/event-stream");
    let up = FakeUpstream::scripted(vec![reply]).await;
    let sidecar = Sidecar::start(&up.url()).await;

    tx.send(Bytes::from(fixture("openai/chat_stream_1.sse")))
        .await
        .unwrap();
    let resp = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4.1","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(body); // the client goes away mid-stream

    // Keep the stream alive with SSE comments; once the sidecar has dropped its upstream
    // request, the fake upstream's body (our channel's receiver) is dropped too.
    let cancelled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                sent = tx.send(Bytes::from_static(b": keep-alive\n\n")) => if sent.is_err() { return },
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        cancelled.is_ok(),
        "upstream request still open after the client left"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let (reply, tx) = Reply::stream("text/event-stream");
    let up = FakeUpstream::scripted(vec![reply]).await;
    let mut sidecar = Sidecar::start(&up.url()).await;

    tx.send(Bytes::from(fixture("openai/chat_stream_1.sse")))
        .await
        .unwrap();
    let mut stream = sidecar
        .openai()
        .chat()
        .create_stream(with_usage(chat("gpt-4.1")))
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap();

    let stopped = sidecar.begin_stop();
    // Draining: not ready any more, no new connections, but the stream goes on.
    support::eventually(
        Duration::from_secs(5),
        "readyz to report draining",
        || async {
            http_client()
                .get(sidecar.admin_url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
        },
    )
    .await;
    assert!(!stopped.is_finished());
    tx.send(Bytes::from(fixture("openai/chat_stream_2.sse")))
        .await
        .unwrap();
    drop(tx);
    let mut rest = 0;
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
        rest += 1;
    }
    assert_eq!(rest, 3, "the whole stream arrived after shutdown began");
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        http_client()
            .get(sidecar.url("/v1/models"))
            .send()
            .await
            .is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn admin_endpoints_answer() {
    let up = FakeUpstream::always_json(200, "{}").await;
    let sidecar = Sidecar::start(&up.url()).await;
    let http = http_client();
    assert_eq!(
        http.get(sidecar.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(sidecar.readyz().await, 200);
    let metrics = http
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(metrics.text().await.unwrap().ends_with("# EOF\n"));
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn client_leaving_before_response_headers_cancels_the_upstream_request() {
    // A raw TCP upstream that reads the request, never answers, and reports when the
    // sidecar closes the connection (read returns 0): the upstream request was dropped.
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_request, request_seen) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got_request = Some(got_request);
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if let Some(tx) = got_request.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    let sidecar = Sidecar::start(&format!("http://{addr}/v1")).await;

    let client = tokio::spawn(
        http_client()
            .post(sidecar.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-4.1","messages":[]}"#)
            .send(),
    );
    tokio::time::timeout(Duration::from_secs(5), request_seen)
        .await
        .unwrap()
        .unwrap();
    client.abort(); // the app gives up (timeout, user closed the page...)

    tokio::time::timeout(Duration::from_secs(5), upstream)
        .await
        .expect("the sidecar closed its upstream request after the client left")
        .unwrap();
}
