//! Local rate limit and live config, end to end through the proxy; plus the shipped
//! example ConfigMap parses with the sidecar's own parser.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

use holysheep_sidecar::config::Config;

/// `manifests/examples/sidecar-config.yaml` is a ConfigMap whose `config.yaml` the
/// sidecar must accept as it is, every section of it.
#[test]
fn example_configmap_parses_with_every_section() {
    let text = include_str!("../../manifests/examples/sidecar-config.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(doc["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(doc["metadata"]["name"].as_str(), Some("holysheep-config"));
    let embedded = doc["data"]["config.yaml"].as_str().unwrap();
    let config = Config::from_yaml_str(embedded).unwrap();
    let default = Config::default();

    assert_eq!(config.aliases["fast"], "gemini-2.5-flash");
    assert_eq!(
        config.aliases["claude"], default.aliases["claude"],
        "built-ins kept"
    );
    assert_eq!(
        config.fallbacks["gpt-4.1"],
        ["deepseek-chat-v3-0324", "gemini-2.5-flash"]
    );
    assert_eq!(config.retry.max_attempts, 3);
    assert_eq!(config.retry.on_status, [429, 500, 502, 503, 504]);
    assert_eq!(
        config.rate_limit.requests_per_minute.map(|n| n.get()),
        Some(600)
    );
    assert_eq!(
        config.rate_limit.tokens_per_minute.map(|n| n.get()),
        Some(200_000)
    );
    assert_eq!(config.prices["my-finetune"].output, 12.0);
    assert_eq!(config.limits.max_body_bytes, 20_971_520);
    // Every top-level section of the file is present, so the example documents them all.
    let mapping: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(embedded).unwrap();
    let sections: Vec<&str> = mapping.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(
        sections,
        [
            "aliases",
            "fallbacks",
            "retry",
            "rate_limit",
            "prices",
            "limits"
        ]
    );
}

mod support;

use serde_json::{Value, json};
use support::upstream::{FakeUpstream, Reply};
use support::{Sidecar, fixture, http_client, settings};

async fn sidecar(upstream: &str, yaml: &str) -> Sidecar {
    let mut s = settings(upstream);
    s.config = Config::from_yaml_str(yaml).unwrap();
    Sidecar::start_with(s).await
}

async fn chat(sidecar: &Sidecar, body: Value) -> reqwest::Response {
    http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Checks an OpenAI-shaped local 429 and returns its `Retry-After` in seconds.
async fn local_429(resp: reqwest::Response, field: &str) -> u64 {
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "local_rate_limit_exceeded");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(field), "{message}");
    retry_after
}

#[tokio::test]
async fn requests_per_minute_is_enforced_locally_without_calling_upstream() {
    let up =
        FakeUpstream::start(|_| Reply::json(200, fixture("openai/chat_completion.json"))).await;
    let sidecar = sidecar(&up.url(), "rate_limit:\n  requests_per_minute: 2\n").await;

    assert_eq!(chat(&sidecar, hello("gpt-4.1")).await.status(), 200);
    assert_eq!(chat(&sidecar, hello("gpt-4.1")).await.status(), 200);
    let retry_after = local_429(
        chat(&sidecar, hello("gpt-4.1")).await,
        "rate_limit.requests_per_minute",
    )
    .await;

    // 2 per minute refill one every 30 s.
    assert!(
        (29..=30).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_eq!(
        up.requests().len(),
        2,
        "the refused request never reached upstream"
    );
}

#[tokio::test]
async fn tokens_per_minute_counts_the_prompt_and_max_tokens() {
    let up =
        FakeUpstream::start(|_| Reply::json(200, fixture("openai/chat_completion.json"))).await;
    let sidecar = sidecar(&up.url(), "rate_limit:\n  tokens_per_minute: 1000\n").await;

    let mut big = hello("gpt-4.1");
    big["max_tokens"] = json!(900);
    assert_eq!(chat(&sidecar, big.clone()).await.status(), 200);
    local_429(chat(&sidecar, big).await, "rate_limit.tokens_per_minute").await;
    assert_eq!(up.requests().len(), 1);
}
