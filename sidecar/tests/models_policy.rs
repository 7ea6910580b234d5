//! Model allow and deny lists end to end: a refused model is a 403 and never goes
//! upstream (chat and embeddings, checked after aliases), a fallback to a refused model
//! is skipped, and `/v1/models` lists only allowed models.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod observe;
mod support;

use holysheep_sidecar::config::Config;
use observe::openai_like;
use serde_json::{Value, json};
use support::upstream::{FakeUpstream, Reply};
use support::{Sidecar, fixture, http_client, settings};

async fn start(up: &FakeUpstream, yaml: &str) -> Sidecar {
    let mut s = settings(&up.url());
    s.config = Config::from_yaml_str(yaml).unwrap();
    Sidecar::start_with(s).await
}

async fn post(sidecar: &Sidecar, path: &str, body: Value) -> reqwest::Response {
    http_client()
        .post(sidecar.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Checks the OpenAI-shaped 403 and returns its message.
async fn refused(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_allowed");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    body["error"]["message"].as_str().unwrap().to_owned()
}

const LISTS: &str = "models:\n  allow: [\"gpt-4.1*\", \"deepseek-*\", \"text-embedding-3-*\"]\n  deny: [\"gpt-4.1-nano\", \"text-embedding-3-large\"]\n";

#[tokio::test]
async fn refused_models_are_403_and_never_sent_upstream() {
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = start(&up, LISTS).await;

    let message = refused(post(&sidecar, "/v1/chat/completions", chat("gpt-4.1-nano")).await).await;
    assert!(message.contains("\"gpt-4.1-nano\""), "{message}");
    assert!(message.contains("models.deny[0]"), "{message}");
    let message = refused(post(&sidecar, "/v1/chat/completions", chat("o3")).await).await;
    assert!(
        message.contains("\"o3\"") && message.contains("models.allow"),
        "{message}"
    );
    let embed = |m| json!({"model": m, "input": "hello"});
    let message =
        refused(post(&sidecar, "/v1/embeddings", embed("text-embedding-3-large")).await).await;
    assert!(message.contains("models.deny[1]"), "{message}");
    assert!(
        up.requests().is_empty(),
        "a refused model reached the upstream"
    );

    // Allowed ones pass; `gpt-4` is checked as the alias target it is sent as.
    let ok = post(&sidecar, "/v1/chat/completions", chat("gpt-4")).await;
    assert_eq!(ok.status(), 200);
    let ok = post(&sidecar, "/v1/embeddings", embed("text-embedding-3-small")).await;
    assert_eq!(ok.status(), 200);
    let seen: Vec<Value> = up
        .requests()
        .iter()
        .map(|s| s.json()["model"].clone())
        .collect();
    assert_eq!(seen, [json!("gpt-4.1"), json!("text-embedding-3-small")]);
}

#[tokio::test]
async fn an_alias_to_a_denied_model_is_refused() {
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = start(&up, "models:\n  deny: [\"gpt-4.1\"]\n").await;
    let message = refused(post(&sidecar, "/v1/chat/completions", chat("gpt-4")).await).await;
    assert!(message.contains("\"gpt-4.1\""), "{message}");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_fallback_to_a_denied_model_is_skipped() {
    let up = FakeUpstream::start(|seen| {
        if seen.json()["model"] == "gpt-4.1" {
            Reply::json(503, r#"{"error":{"message":"busy"}}"#)
        } else {
            Reply::json(200, fixture("openai/chat_completion.json"))
        }
    })
    .await;
    let sidecar = start(
        &up,
        "fallbacks:\n  gpt-4.1: [denied-model, deepseek-chat-v3-0324]\nretry:\n  max_attempts: 1\nmodels:\n  deny: [\"denied-*\"]\n",
    )
    .await;
    let resp = post(&sidecar, "/v1/chat/completions", chat("gpt-4.1")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-holysheep-model"], "deepseek-chat-v3-0324");
    let seen: Vec<Value> = up
        .requests()
        .iter()
        .map(|s| s.json()["model"].clone())
        .collect();
    assert_eq!(seen, [json!("gpt-4.1"), json!("deepseek-chat-v3-0324")]);
}

#[tokio::test]
async fn the_model_list_shows_only_allowed_models() {
    let up = FakeUpstream::start(openai_like).await;
    let sidecar = start(&up, "models:\n  allow: [\"deepseek-*\"]\n").await;
    let resp = http_client()
        .get(sidecar.url("/v1/models"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["deepseek-chat-v3-0324"]);
    assert_eq!(list["object"], "list");
    let one = http_client()
        .get(sidecar.url("/v1/models/gpt-4.1"))
        .send()
        .await
        .unwrap();
    let message = refused(one).await;
    assert!(message.contains("\"gpt-4.1\""), "{message}");
    assert_eq!(up.requests().len(), 1, "only the list went upstream");

    // Without lists the upstream's answer passes byte for byte.
    let plain = start(&up, "aliases: {}\n").await;
    let body = http_client()
        .get(plain.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, fixture("openai/models.json"));
}

#[test]
fn bad_patterns_and_unknown_keys_are_refused_naming_them() {
    for (yaml, want) in [
        ("models:\n  allow: [\"gpt-[\"]\n", "models.allow[0]"),
        ("models:\n  deny: [\"ok\", \"x**y\"]\n", "models.deny[1]"),
        ("models:\n  only: [\"x\"]\n", "only"),
    ] {
        let err = Config::from_yaml_str(yaml).unwrap_err().to_string();
        assert!(err.contains(want), "{yaml}: {err}");
    }
}

#[tokio::test]
async fn a_model_list_that_goes_quiet_is_cut_at_the_idle_limit() {
    let (reply, chunks) = Reply::stream("application/json");
    let up = FakeUpstream::scripted(vec![reply]).await;
    let yaml = "models:\n  allow: [\"deepseek-*\"]\nlimits:\n  stream_idle_timeout: 200ms\n";
    let sidecar = start(&up, yaml).await;
    chunks
        .send(bytes::Bytes::from_static(
            b"{\"object\":\"list\",\"data\":[",
        ))
        .await
        .unwrap();
    // The list is read whole to be filtered: without the idle limit on that read, this
    // request would wait as long as the upstream keeps the body open.
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        http_client().get(sidecar.url("/v1/models")).send(),
    )
    .await
    .expect("answered once the upstream went quiet")
    .unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("stream_idle_timeout"), "{message}");
    drop(chunks);
}
