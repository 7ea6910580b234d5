//! Counter series known from the config exist at 0 in `/metrics` before any request and
//! right after a reload, and a call then moves them by exactly its usage.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod observe;
mod support;

use std::time::Duration;

use holysheep_sidecar::metrics::ReloadResult;
use observe::{scrape, value, wait_for_requests};
use support::upstream::{FakeUpstream, Reply};
use support::{Sidecar, eventually, fixture, http_client, settings};

/// Usage in the shared fixture `openai/chat_completion.json`.
const PROMPT: u64 = 12;
const COMPLETION: u64 = 7;

const CONFIG: &str = "\
prices:
  my-model: {input: 2.0, output: 4.0}
fallbacks:
  my-model: [backup-model]
budgets:
  - {window: day, usd: 100, action: downgrade, downgrade_to: cheap-model}
  - {window: month, usd: 1000, action: reject}
";

/// Replaces `path` in one step, as the kubelet's symlink swap does.
fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn known_series_start_at_zero_follow_reloads_and_count_exactly() {
    let up =
        FakeUpstream::start(|_| Reply::json(200, fixture("openai/chat_completion.json"))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let mut s = settings(&up.url());
    s.config = holysheep_sidecar::config::load_file(&path).unwrap();
    s.config_path = Some(path.clone());
    let sidecar = Sidecar::start_with(s).await;

    // Fresh: no request served, every known series there at 0.
    let (text, s) = scrape(&sidecar).await;
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            value(&s, name, labels),
            Some(0.0),
            "{name}{labels:?}\n{text}"
        );
    };
    for model in ["my-model", "cheap-model", "backup-model", "gpt-4.1"] {
        for ty in ["input", "output"] {
            zero("holysheep_tokens_total", &[("model", model), ("type", ty)]);
        }
        let attempt = [("model", model), ("outcome", "success")];
        zero("holysheep_upstream_attempts_total", &attempt);
        let retry = [("model", model), ("reason", "rate_limited")];
        zero("holysheep_upstream_retries_total", &retry);
    }
    zero("holysheep_cost_usd_total", &[("model", "my-model")]);
    zero("holysheep_cost_usd_total", &[("model", "gpt-4.1")]);
    // Unpriced: no cost series (it would never move), the unpriced counter instead.
    let cheap = [("model", "cheap-model")];
    assert_eq!(value(&s, "holysheep_cost_usd_total", &cheap), None);
    let cheap_in = [("model", "cheap-model"), ("type", "input")];
    zero("holysheep_unpriced_tokens_total", &cheap_in);
    let my_in = [("model", "my-model"), ("type", "input")];
    assert_eq!(value(&s, "holysheep_unpriced_tokens_total", &my_in), None);
    let requests = |route, model, requested| {
        [
            ("route", route),
            ("model", model),
            ("requested_model", requested),
            ("status", "200"),
        ]
    };
    zero(
        "holysheep_requests_total",
        &requests("chat_completions", "my-model", "my-model"),
    );
    // A built-in alias: requested as gpt-4, sent as gpt-4.1.
    zero(
        "holysheep_requests_total",
        &requests("chat_completions", "gpt-4.1", "gpt-4"),
    );
    zero(
        "holysheep_requests_total",
        &requests("embeddings", "my-model", "my-model"),
    );
    let step = [("from_model", "my-model"), ("to_model", "backup-model")];
    zero("holysheep_fallbacks_total", &step);
    for result in ["success", "failure"] {
        zero("holysheep_config_reloads_total", &[("result", result)]);
        zero("holysheep_key_reloads_total", &[("result", result)]);
    }
    for limit in ["requests", "tokens"] {
        zero("holysheep_rate_limited_requests_total", &[("limit", limit)]);
    }
    let day_downgrade = [("window", "day"), ("action", "downgrade")];
    zero("holysheep_budget_exceeded_total", &day_downgrade);
    let month_reject = [("window", "month"), ("action", "reject")];
    zero("holysheep_budget_exceeded_total", &month_reject);
    // Not configured: no series for that window and action.
    let day_reject = [("window", "day"), ("action", "reject")];
    assert_eq!(
        value(&s, "holysheep_budget_exceeded_total", &day_reject),
        None
    );
    zero(
        "holysheep_usage_missing_total",
        &[("route", "chat_completions")],
    );
    let new_in = [("model", "new-model"), ("type", "input")];
    assert_eq!(value(&s, "holysheep_tokens_total", &new_in), None);

    // A reload adds a priced model: its series exist before any request uses it.
    let reloaded = CONFIG.replace(
        "prices:\n",
        "prices:\n  new-model: {input: 3.0, output: 5.0}\n",
    );
    write_atomic(&path, &reloaded);
    let metrics = sidecar.state.metrics.clone();
    eventually(Duration::from_secs(5), "the applied reload", || async {
        metrics.config_reloads(ReloadResult::Success) == 1
    })
    .await;
    let (text, s) = scrape(&sidecar).await;
    for ty in ["input", "output"] {
        let labels = [("model", "new-model"), ("type", ty)];
        assert_eq!(
            value(&s, "holysheep_tokens_total", &labels),
            Some(0.0),
            "{text}"
        );
    }
    let new_model = [("model", "new-model")];
    assert_eq!(value(&s, "holysheep_cost_usd_total", &new_model), Some(0.0));
    let chat_new = requests("chat_completions", "new-model", "new-model");
    assert_eq!(value(&s, "holysheep_requests_total", &chat_new), Some(0.0));

    // One call: the counters are exactly its usage, the others stay at 0.
    let resp = http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "new-model",
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    let (text, s) = wait_for_requests(&sidecar, 1.0).await;
    let tokens = |model, ty| {
        value(
            &s,
            "holysheep_tokens_total",
            &[("model", model), ("type", ty)],
        )
    };
    assert_eq!(tokens("new-model", "input"), Some(PROMPT as f64), "{text}");
    assert_eq!(tokens("new-model", "output"), Some(COMPLETION as f64));
    assert_eq!(tokens("my-model", "input"), Some(0.0));
    let cost = value(&s, "holysheep_cost_usd_total", &new_model).unwrap();
    let want = (PROMPT as f64 * 3.0 + COMPLETION as f64 * 5.0) / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} != {want}");
    assert_eq!(value(&s, "holysheep_requests_total", &chat_new), Some(1.0));
    let attempt = [("model", "new-model"), ("outcome", "success")];
    assert_eq!(
        value(&s, "holysheep_upstream_attempts_total", &attempt),
        Some(1.0)
    );
    sidecar.stop().await.unwrap();
}
