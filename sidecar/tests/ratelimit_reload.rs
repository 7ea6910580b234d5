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

use std::time::Duration;

use holysheep_sidecar::metrics::ReloadResult;
use serde_json::{Value, json};
use support::upstream::{FakeUpstream, Reply};
use support::{Sidecar, eventually, fixture, http_client, settings};

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

/// Replaces `path` in one step, as the kubelet's symlink swap does.
fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The model the upstream saw for a request asking for `mini`.
async fn mini_goes_to(sidecar: &Sidecar, up: &FakeUpstream) -> String {
    let before = up.requests().len();
    assert_eq!(chat(sidecar, hello("mini")).await.status(), 200);
    let seen = up.wait_for_requests(before + 1).await;
    seen[before].json()["model"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_bad_config_file_keeps_the_sidecar_on_the_last_good_one() {
    let up =
        FakeUpstream::start(|_| Reply::json(200, fixture("openai/chat_completion.json"))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "aliases:\n  mini: model-a\n").unwrap();
    let mut s = settings(&up.url());
    s.config = holysheep_sidecar::config::load_file(&path).unwrap();
    s.config_path = Some(path.clone());
    let sidecar = Sidecar::start_with(s).await;
    let reloads = |result| sidecar.state.metrics.config_reloads(result);
    assert_eq!(mini_goes_to(&sidecar, &up).await, "model-a");

    // An unknown key: refused, counted, and the old aliases keep serving.
    write_atomic(
        &path,
        "aliases:\n  mini: model-b\nretry:\n  max_attemps: 2\n",
    );
    eventually(Duration::from_secs(5), "the refused reload", || async {
        reloads(ReloadResult::Failure) == 1
    })
    .await;
    assert_eq!(mini_goes_to(&sidecar, &up).await, "model-a");
    let metrics = http_client()
        .get(sidecar.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("holysheep_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );

    // The fixed file is applied without a restart.
    write_atomic(
        &path,
        "aliases:\n  mini: model-b\nretry:\n  max_attempts: 2\n",
    );
    eventually(Duration::from_secs(5), "the applied reload", || async {
        reloads(ReloadResult::Success) == 1
    })
    .await;
    assert_eq!(mini_goes_to(&sidecar, &up).await, "model-b");
    assert_eq!(sidecar.state.config.load().retry.max_attempts, 2);
}

#[tokio::test]
async fn tokens_used_beyond_the_estimate_are_charged_after_the_answer() {
    // The answer reports 900 tokens for a request estimated at a handful.
    let mut answer: Value = serde_json::from_str(&fixture("openai/chat_completion.json")).unwrap();
    answer["usage"] = json!({"prompt_tokens": 100, "completion_tokens": 800, "total_tokens": 900});
    let answer = answer.to_string();
    let up = FakeUpstream::start(move |_| Reply::json(200, answer.clone())).await;
    let sidecar = sidecar(&up.url(), "rate_limit:\n  tokens_per_minute: 1000\n").await;

    assert_eq!(chat(&sidecar, hello("gpt-4.1")).await.status(), 200);
    // The charge happens when the response body ends; the usage metric is written
    // right after it, so wait for that.
    eventually(Duration::from_secs(5), "the usage report", || async {
        let text = http_client()
            .get(sidecar.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .any(|l| l.starts_with("holysheep_tokens_total{") && l.ends_with(" 800"))
    })
    .await;

    // ~100 tokens are left of the 1000: a request capped at 200 must wait.
    let mut capped = hello("gpt-4.1");
    capped["max_tokens"] = json!(200);
    local_429(chat(&sidecar, capped).await, "rate_limit.tokens_per_minute").await;
    assert_eq!(up.requests().len(), 1);
}
