//! `/metrics` after a plain, a streamed and an embeddings call made with the real OpenAI
//! SDK: token and cost counters equal the fake upstream's usage numbers, the GenAI
//! semantic-convention series are there, and neither `/metrics` nor the logs ever hold
//! the key or the prompt.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod observe;
mod support;

use async_openai::types::chat::CreateChatCompletionRequest;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use futures_util::StreamExt;
use observe::{
    STREAM_COMPLETION_TOKENS, STREAM_PROMPT_TOKENS, capture_logs, openai_like, request_lines,
    scrape, sum, value, wait_for_requests,
};
use support::upstream::FakeUpstream;
use support::{Sidecar, TEST_KEY};

/// Usage in the shared fixtures `openai/chat_completion.json` and `openai/embeddings.json`.
const PLAIN_PROMPT: u64 = 12;
const PLAIN_COMPLETION: u64 = 7;
const EMBED_PROMPT: u64 = 5;
/// Built-in price of gpt-4.1, USD per 1M tokens (input and output).
const GPT41_PRICE: f64 = 8.0;
/// The prompt; its marker must show up nowhere (a bare number could be a port).
const SECRET_PROMPT: &str = "my card number is 4111-1111-1111-1111, zebra-unicorn-secret";
const SECRET_MARKER: &str = "zebra-unicorn-secret";

fn chat(model: &str) -> CreateChatCompletionRequest {
    support::chat_request(model, SECRET_PROMPT)
}

#[tokio::test]
async fn plain_streamed_and_embeddings_calls_are_counted_exactly() {
    let logs = capture_logs();
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = Sidecar::start(&up.url()).await;
    let client = sidecar.openai();

    // 1. plain chat (alias gpt-4 -> gpt-4.1)
    let resp = client.chat().create(chat("gpt-4")).await.unwrap();
    assert_eq!(resp.usage.unwrap().prompt_tokens as u64, PLAIN_PROMPT);
    // 2. streamed chat, read to the end
    let mut stream = client.chat().create_stream(chat("gpt-4")).await.unwrap();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    // 3. embeddings (no price configured for this model)
    let req = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input(SECRET_PROMPT)
        .build()
        .unwrap();
    let emb = client.embeddings().create(req).await.unwrap();
    assert_eq!(u64::from(emb.usage.prompt_tokens), EMBED_PROMPT);

    // 4. a model list: no tokens, and not "usage missing" either
    assert!(!client.models().list().await.unwrap().data.is_empty());

    let (text, s) = wait_for_requests(&sidecar, 4.0).await;
    // Every usage read (the series exist at 0 from start).
    assert_eq!(sum(&s, "holysheep_usage_missing_total", &[]), 0.0);

    let tokens = |model, ty| {
        value(
            &s,
            "holysheep_tokens_total",
            &[("model", model), ("type", ty)],
        )
    };
    let gpt_in = PLAIN_PROMPT + STREAM_PROMPT_TOKENS;
    let gpt_out = PLAIN_COMPLETION + STREAM_COMPLETION_TOKENS;
    assert_eq!(tokens("gpt-4.1", "input"), Some(gpt_in as f64));
    assert_eq!(tokens("gpt-4.1", "output"), Some(gpt_out as f64));
    assert_eq!(
        tokens("text-embedding-3-small", "input"),
        Some(EMBED_PROMPT as f64)
    );
    assert_eq!(tokens("text-embedding-3-small", "output"), Some(0.0));

    let cost = value(&s, "holysheep_cost_usd_total", &[("model", "gpt-4.1")]).unwrap();
    let want = (gpt_in + gpt_out) as f64 * GPT41_PRICE / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} != {want}");
    // Unpriced model: tokens counted, no cost, the unpriced counter says so.
    let emb_model = [("model", "text-embedding-3-small")];
    assert_eq!(value(&s, "holysheep_cost_usd_total", &emb_model), None);
    let unpriced = [("model", "text-embedding-3-small"), ("type", "input")];
    assert_eq!(
        value(&s, "holysheep_unpriced_tokens_total", &unpriced),
        Some(EMBED_PROMPT as f64)
    );

    let requests = |route, model, requested| {
        let labels = [
            ("route", route),
            ("model", model),
            ("requested_model", requested),
            ("status", "200"),
        ];
        value(&s, "holysheep_requests_total", &labels)
    };
    assert_eq!(requests("chat_completions", "gpt-4.1", "gpt-4"), Some(2.0));
    assert_eq!(
        requests(
            "embeddings",
            "text-embedding-3-small",
            "text-embedding-3-small"
        ),
        Some(1.0)
    );
    let chat_rm = [("route", "chat_completions"), ("model", "gpt-4.1")];
    assert_eq!(
        value(&s, "holysheep_request_duration_seconds", &chat_rm),
        Some(2.0)
    );
    assert_eq!(value(&s, "holysheep_inflight_requests", &[]), Some(0.0));

    // OpenTelemetry GenAI names.
    let genai_in = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "holysheep"),
        ("gen_ai_request_model", "gpt-4"),
        ("gen_ai_response_model", "gpt-4.1-2025-04-14"),
        ("gen_ai_token_type", "input"),
    ];
    assert_eq!(value(&s, "gen_ai_client_token_usage", &genai_in), Some(2.0));
    let genai_emb = [
        ("gen_ai_operation_name", "embeddings"),
        ("gen_ai_token_type", "input"),
    ];
    assert_eq!(
        value(&s, "gen_ai_client_token_usage", &genai_emb),
        Some(1.0)
    );
    let genai_dur = [("gen_ai_operation_name", "chat"), ("error_type", "")];
    assert_eq!(
        value(&s, "gen_ai_client_operation_duration_seconds", &genai_dur),
        Some(2.0)
    );

    // Nothing secret in the exposition.
    assert!(!text.contains(TEST_KEY), "key in /metrics");
    assert!(!text.contains(SECRET_MARKER), "prompt in /metrics");

    // One request line per call, with tokens and cost; no key, no prompt anywhere.
    let lines = request_lines(&logs);
    let ours: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["status"] == 200 && l["fields"]["route"] != "models")
        .collect();
    assert!(ours.len() >= 3, "request lines: {lines:#?}");
    let streamed = ours
        .iter()
        .find(|l| {
            l["fields"]["stream"] == true && l["fields"]["input_tokens"] == STREAM_PROMPT_TOKENS
        })
        .expect("a log line for the streamed call");
    let f = &streamed["fields"];
    assert_eq!(f["requested_model"], "gpt-4");
    assert_eq!(f["model"], "gpt-4.1");
    assert_eq!(f["output_tokens"], STREAM_COMPLETION_TOKENS);
    assert_eq!(f["end"], "complete");
    assert!(f["latency_ms"].as_f64().unwrap() >= f["ttfb_ms"].as_f64().unwrap());
    assert!(f["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let all = logs.text();
    assert!(!all.is_empty());
    assert!(!all.contains(TEST_KEY), "key in the logs");
    let leaks: Vec<&str> = all.lines().filter(|l| l.contains(SECRET_MARKER)).collect();
    assert!(leaks.is_empty(), "prompt in the logs: {leaks:#?}");
}

#[tokio::test]
async fn metrics_endpoint_is_openmetrics_text_before_any_request() {
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = Sidecar::start(&up.url()).await;
    let resp = support::http_client()
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let (text, s) = scrape(&sidecar).await;
    assert!(text.ends_with("# EOF\n"));
    // Series known in advance are there at once, at 0.
    assert_eq!(value(&s, "holysheep_inflight_requests", &[]), Some(0.0));
    let success = [("result", "success")];
    assert_eq!(
        value(&s, "holysheep_key_reloads_total", &success),
        Some(0.0)
    );
    let chat = [
        ("route", "chat_completions"),
        ("model", "gpt-4.1"),
        ("requested_model", "gpt-4"),
        ("status", "200"),
    ];
    assert_eq!(value(&s, "holysheep_requests_total", &chat), Some(0.0));
    assert_eq!(sum(&s, "holysheep_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn retries_fallbacks_and_attempts_are_counted_and_logged() {
    let logs = capture_logs();
    // gpt-4.1 always answers 503; its fallback answers with the chat fixture.
    let up = FakeUpstream::start(|seen| {
        if seen.json()["model"] == "gpt-4.1" {
            support::upstream::Reply::json(503, r#"{"error":{"message":"busy"}}"#)
        } else {
            openai_like(seen)
        }
    })
    .await;
    let mut settings = support::settings(&up.url());
    settings.config = holysheep_sidecar::config::Config::from_yaml_str(
        "retry:\n  max_attempts: 2\n  base_backoff: 1ms\n  max_backoff: 2ms\n\
         fallbacks:\n  gpt-4.1: [deepseek-chat-v3-0324]\n",
    )
    .unwrap();
    let sidecar = Sidecar::start_with(settings).await;
    let req = chat("gpt-4");
    let resp = sidecar.openai().chat().create(req).await.unwrap();
    assert_eq!(resp.usage.unwrap().prompt_tokens as u64, PLAIN_PROMPT);

    let (_, s) = wait_for_requests(&sidecar, 1.0).await;
    let attempts = |model, outcome| {
        value(
            &s,
            "holysheep_upstream_attempts_total",
            &[("model", model), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("gpt-4.1", "server_error"), Some(2.0));
    assert_eq!(attempts("deepseek-chat-v3-0324", "success"), Some(1.0));
    let retries = [("model", "gpt-4.1"), ("reason", "server_error")];
    assert_eq!(
        value(&s, "holysheep_upstream_retries_total", &retries),
        Some(1.0)
    );
    let fallback = [
        ("from_model", "gpt-4.1"),
        ("to_model", "deepseek-chat-v3-0324"),
    ];
    assert_eq!(value(&s, "holysheep_fallbacks_total", &fallback), Some(1.0));
    // Tokens and the request go to the model that answered.
    let req_labels = [
        ("model", "deepseek-chat-v3-0324"),
        ("requested_model", "gpt-4"),
        ("status", "200"),
    ];
    assert_eq!(
        value(&s, "holysheep_requests_total", &req_labels),
        Some(1.0)
    );
    let input = [("model", "deepseek-chat-v3-0324"), ("type", "input")];
    assert_eq!(
        value(&s, "holysheep_tokens_total", &input),
        Some(PLAIN_PROMPT as f64)
    );
    let line = request_lines(&logs)
        .into_iter()
        .find(|l| l["fields"]["model"] == "deepseek-chat-v3-0324")
        .expect("a request line for the fallback answer");
    assert_eq!(line["fields"]["attempts"], 3);
    assert_eq!(line["fields"]["requested_model"], "gpt-4");
}

#[tokio::test]
async fn local_rate_limit_refusals_are_counted() {
    let up = FakeUpstream::start(openai_like).await;
    let mut settings = support::settings(&up.url());
    settings.config =
        holysheep_sidecar::config::Config::from_yaml_str("rate_limit:\n  requests_per_minute: 1\n")
            .unwrap();
    let sidecar = Sidecar::start_with(settings).await;
    let client = sidecar.openai();
    client.chat().create(chat("gpt-4")).await.unwrap();
    // Plain HTTP: the SDK would wait out the Retry-After and try again.
    let refused = support::http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "gpt-4", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    drop(refused.bytes().await);

    let (_, s) = wait_for_requests(&sidecar, 2.0).await;
    let limit = [("limit", "requests")];
    assert_eq!(
        value(&s, "holysheep_rate_limited_requests_total", &limit),
        Some(1.0)
    );
    let refused = [("route", "chat_completions"), ("status", "429")];
    assert_eq!(value(&s, "holysheep_requests_total", &refused), Some(1.0));
    assert_eq!(
        up.requests().len(),
        1,
        "the refused call never went upstream"
    );
}

/// `curl -d` sends a JSON body as `application/x-www-form-urlencoded`, and some clients
/// send no content type at all: on the JSON routes the body is still remapped, and its
/// tokens are counted and priced under the model sent, not as `none`.
#[tokio::test]
async fn json_body_without_a_json_content_type_is_remapped_and_priced() {
    let up = FakeUpstream::start(observe::openai_like).await;
    let sidecar = Sidecar::start(&up.url()).await;
    let body = r#"{"model":"gpt-4","messages":[{"role":"user","content":"Say hi"}]}"#;

    for content_type in [None, Some("application/x-www-form-urlencoded")] {
        let mut req = support::http_client()
            .post(sidecar.url("/v1/chat/completions"))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{content_type:?}");
        assert_eq!(resp.headers()["x-holysheep-model"], "gpt-4.1");
    }

    for seen in up.wait_for_requests(2).await {
        assert_eq!(
            seen.json()["model"],
            "gpt-4.1",
            "alias not applied upstream"
        );
    }
    let (_, s) = wait_for_requests(&sidecar, 2.0).await;
    let input = [("model", "gpt-4.1"), ("type", "input")];
    assert_eq!(
        value(&s, "holysheep_tokens_total", &input),
        Some(2.0 * PLAIN_PROMPT as f64)
    );
    assert_eq!(sum(&s, "holysheep_tokens_total", &[("model", "none")]), 0.0);
    assert_eq!(sum(&s, "holysheep_unpriced_tokens_total", &[]), 0.0);
    let cost = value(&s, "holysheep_cost_usd_total", &[("model", "gpt-4.1")]).unwrap();
    let want = 2.0 * (PLAIN_PROMPT + PLAIN_COMPLETION) as f64 * GPT41_PRICE / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} != {want}");
}
