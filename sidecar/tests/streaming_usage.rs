//! Streamed token usage through the sidecar: it asks the upstream for usage when the
//! client did not, counts it, and hands the client byte for byte what the upstream would
//! have sent without it; a client that asked gets the usage chunk.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod observe;
mod support;

use async_openai::types::chat::ChatCompletionStreamOptions;
use futures_util::StreamExt;
use observe::{
    STREAM_COMPLETION_TOKENS, STREAM_PROMPT_TOKENS, chat_sse, openai_like, sse_reply, sum, value,
    wait_for_requests,
};
use support::upstream::FakeUpstream;
use support::{Sidecar, TEST_KEY, chat_request, http_client, read_chat_stream};

const GPT41_PRICE: f64 = 8.0;

async fn post_raw(
    sidecar: &Sidecar,
    path: &str,
    body: &str,
) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let resp = http_client()
        .post(sidecar.url(path))
        .header("content-type", "application/json")
        .header("authorization", "Bearer injected-by-holysheep")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    (headers, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn client_without_usage_gets_the_exact_upstream_stream_and_tokens_are_counted() {
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = Sidecar::start(&up.url()).await;

    let (headers, body) = post_raw(
        &sidecar,
        "/v1/chat/completions",
        r#"{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;

    // The sidecar asked the upstream for usage...
    let seen = up.only().json();
    assert_eq!(seen["stream_options"]["include_usage"], true);
    assert_eq!(seen["model"], "gpt-4.1");
    // ...and the client got exactly what the upstream sends when nobody asks.
    assert_eq!(String::from_utf8(body).unwrap(), chat_sse(false));
    assert!(headers.get("content-length").is_none());

    let (text, s) = wait_for_requests(&sidecar, 1.0).await;
    let input = [("model", "gpt-4.1"), ("type", "input")];
    let output = [("model", "gpt-4.1"), ("type", "output")];
    assert_eq!(
        value(&s, "holysheep_tokens_total", &input),
        Some(STREAM_PROMPT_TOKENS as f64)
    );
    assert_eq!(
        value(&s, "holysheep_tokens_total", &output),
        Some(STREAM_COMPLETION_TOKENS as f64)
    );
    let cost = value(&s, "holysheep_cost_usd_total", &[("model", "gpt-4.1")]).unwrap();
    let want = (STREAM_PROMPT_TOKENS + STREAM_COMPLETION_TOKENS) as f64 * GPT41_PRICE / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} != {want}");
    // Every event parsed (the series exist at 0 from start).
    assert_eq!(sum(&s, "holysheep_usage_unparsed_events_total", &[]), 0.0);
    let req = [
        ("route", "chat_completions"),
        ("model", "gpt-4.1"),
        ("requested_model", "gpt-4"),
        ("status", "200"),
    ];
    assert_eq!(value(&s, "holysheep_requests_total", &req), Some(1.0));
    let ttfb = [("route", "chat_completions"), ("model", "gpt-4.1")];
    assert_eq!(
        value(&s, "holysheep_time_to_first_byte_seconds", &ttfb),
        Some(1.0)
    );
    assert!(!text.contains(TEST_KEY));
}

#[tokio::test]
async fn client_that_asked_for_usage_gets_everything() {
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = Sidecar::start(&up.url()).await;

    let (_, body) = post_raw(
        &sidecar,
        "/v1/chat/completions",
        r#"{"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    )
    .await;
    assert_eq!(String::from_utf8(body).unwrap(), chat_sse(true));

    // The same through the real SDK: the last chunk carries the usage.
    let mut req = chat_request("gpt-4", "hi");
    req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let mut stream = sidecar.openai().chat().create_stream(req).await.unwrap();
    let mut text = String::new();
    let usage = read_chat_stream(&mut stream, &mut text).await;
    assert_eq!(text, "Hello, \"usage\": {} is just text!");
    let usage = usage.expect("the usage chunk reached the client");
    assert_eq!(u64::from(usage.prompt_tokens), STREAM_PROMPT_TOKENS);
    assert_eq!(u64::from(usage.completion_tokens), STREAM_COMPLETION_TOKENS);

    let (_, s) = wait_for_requests(&sidecar, 2.0).await;
    let input = [("model", "gpt-4.1"), ("type", "input")];
    assert_eq!(
        value(&s, "holysheep_tokens_total", &input),
        Some(2.0 * STREAM_PROMPT_TOKENS as f64)
    );
}

#[tokio::test]
async fn sdk_stream_without_usage_still_parses_and_is_counted() {
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = Sidecar::start(&up.url()).await;
    let req = chat_request("gpt-4", "hi");
    let mut stream = sidecar.openai().chat().create_stream(req).await.unwrap();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.usage.is_none(), "the client did not ask for usage");
        assert!(
            !chunk.choices.is_empty(),
            "no usage-only chunk reaches the client"
        );
        chunks += 1;
    }
    assert_eq!(chunks, 4);
    let (_, s) = wait_for_requests(&sidecar, 1.0).await;
    let output = [("model", "gpt-4.1"), ("type", "output")];
    assert_eq!(
        value(&s, "holysheep_tokens_total", &output),
        Some(STREAM_COMPLETION_TOKENS as f64)
    );
}

#[tokio::test]
async fn responses_api_stream_usage_is_counted_untouched() {
    let events = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1-2025-04-14\",",
        "\"usage\":{\"input_tokens\":21,\"output_tokens\":4,\"total_tokens\":25}}}\n\n",
    );
    let up = FakeUpstream::start(move |_| sse_reply(events.to_owned())).await;
    let sidecar = Sidecar::start(&up.url()).await;
    let (_, body) = post_raw(
        &sidecar,
        "/v1/responses",
        r#"{"model":"gpt-4.1","stream":true,"input":"hi"}"#,
    )
    .await;
    assert_eq!(String::from_utf8(body).unwrap(), events);
    assert!(up.only().json().get("stream_options").is_none());
    let (_, s) = wait_for_requests(&sidecar, 1.0).await;
    let input = [("model", "gpt-4.1"), ("type", "input")];
    assert_eq!(value(&s, "holysheep_tokens_total", &input), Some(21.0));
    let genai = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_token_type", "output"),
        ("gen_ai_response_model", "gpt-4.1-2025-04-14"),
    ];
    assert_eq!(value(&s, "gen_ai_client_token_usage", &genai), Some(1.0));
}

#[tokio::test]
async fn unparsable_events_pass_through_and_are_counted() {
    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: <html>oops</html>\n\ndata: [DONE]\n\n";
    let up = FakeUpstream::start(move |_| sse_reply(body.to_owned())).await;
    let sidecar = Sidecar::start(&up.url()).await;
    let (_, got) = post_raw(
        &sidecar,
        "/v1/chat/completions",
        r#"{"model":"gpt-4.1","stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(String::from_utf8(got).unwrap(), body);
    let (_, s) = wait_for_requests(&sidecar, 1.0).await;
    let kind = [("kind", "sse_event")];
    assert_eq!(
        value(&s, "holysheep_usage_unparsed_events_total", &kind),
        Some(1.0)
    );
    let route = [("route", "chat_completions")];
    assert_eq!(
        value(&s, "holysheep_usage_missing_total", &route),
        Some(1.0)
    );
}
