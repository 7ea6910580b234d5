//! Local spend budgets end to end through the proxy: spend charged at the exact cost of
//! the upstream's reported usage (streamed and not), the 429 past a `reject` budget, the
//! `downgrade` path, window rollover on a hand-moved clock, and a limit edited live.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod observe;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use holysheep_sidecar::budget::Clock;
use holysheep_sidecar::config::Config;
use observe::{openai_like, scrape, value};
use serde_json::{Value, json};
use support::upstream::FakeUpstream;
use support::{Sidecar, eventually, http_client, settings};

/// 2026-12-03 22:30:00 UTC: 1h30 before the day ends, 30 min before the hour does.
const T0: i64 = 1_796_250_600;

/// A clock the test moves by hand.
#[derive(Debug, Clone)]
struct HandClock(Arc<AtomicI64>);

impl Clock for HandClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// gpt-4.1 at $1 per token, so the fake upstream's usage is the spend in USD: a
/// non-streamed chat is 12 + 7 = $19, a streamed one 12 + 5 = $17.
const PRICES: &str =
    "prices:\n  gpt-4.1: {input: 1000000, output: 1000000}\n  cheap-model: {input: 1, output: 1}\n";

async fn start(budgets: &str) -> (FakeUpstream, Sidecar, HandClock) {
    let up = FakeUpstream::start(openai_like).await;
    let mut s = settings(&up.url());
    s.config = Config::from_yaml_str(&format!("{PRICES}{budgets}")).unwrap();
    let sidecar = Sidecar::start_with(s).await;
    let clock = HandClock(Arc::new(AtomicI64::new(T0)));
    sidecar.state.budgets.set_clock(Arc::new(clock.clone()));
    (up, sidecar, clock)
}

async fn chat(sidecar: &Sidecar, stream: bool) -> reqwest::Response {
    let body = json!({
        "model": "gpt-4.1",
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    });
    http_client()
        .post(sidecar.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Sends one chat, reads it to the end and waits until its cost is charged.
async fn spend(sidecar: &Sidecar, stream: bool, spent_after: f64) -> reqwest::header::HeaderMap {
    let resp = chat(sidecar, stream).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    resp.bytes().await.unwrap();
    wait_spent(sidecar, "day", spent_after).await;
    headers
}

async fn spent(sidecar: &Sidecar, window: &str) -> Option<f64> {
    let (_, s) = scrape(sidecar).await;
    value(&s, "holysheep_budget_spent_usd", &[("window", window)])
}

/// The spend is settled when the body ends, just after the client read its last byte.
async fn wait_spent(sidecar: &Sidecar, window: &str, want: f64) {
    eventually(Duration::from_secs(5), "spend settled", || async {
        spent(sidecar, window)
            .await
            .is_some_and(|v| (v - want).abs() < 1e-9)
    })
    .await;
}

#[tokio::test]
async fn a_spent_day_budget_answers_429_until_the_day_ends() {
    let (up, sidecar, clock) = start(
        "budgets:\n  - {window: day, usd: 36, action: reject}\n  - {window: hour, usd: 1000, action: reject}\n",
    )
    .await;
    let (_, s) = scrape(&sidecar).await;
    let limit = |w| value(&s, "holysheep_budget_limit_usd", &[("window", w)]);
    assert_eq!(limit("day"), Some(36.0));
    assert_eq!(limit("hour"), Some(1000.0));
    assert_eq!(limit("month"), None);
    assert_eq!(spent(&sidecar, "day").await, Some(0.0));

    spend(&sidecar, false, 19.0).await;
    spend(&sidecar, true, 36.0).await;
    assert_eq!(spent(&sidecar, "hour").await, Some(36.0));

    let resp = chat(&sidecar, false).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-should-retry"], "false");
    assert_eq!(resp.headers()["retry-after"], "5400");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "budget exceeded: 36 USD per day (budgets[0], action reject) is spent; it resets in 5400s, or raise budgets[0].usd"
    );
    assert_eq!(
        up.requests().len(),
        2,
        "the refused request never went upstream"
    );

    let (_, s) = scrape(&sidecar).await;
    let exceeded = |w, a| {
        value(
            &s,
            "holysheep_budget_exceeded_total",
            &[("window", w), ("action", a)],
        )
    };
    assert_eq!(exceeded("day", "reject"), Some(1.0));
    // Configured but not hit: its series is there at 0 from start.
    assert_eq!(exceeded("hour", "reject"), Some(0.0));

    // Midnight UTC: a new day, and a new hour.
    clock.0.store(T0 + 5400, Ordering::SeqCst);
    spend(&sidecar, false, 19.0).await;
    assert_eq!(spent(&sidecar, "hour").await, Some(19.0));
}

#[tokio::test]
async fn a_spent_downgrade_budget_sends_the_cheaper_model_at_its_price() {
    let (up, sidecar, _clock) = start(
        "budgets:\n  - {window: day, usd: 19, action: downgrade, downgrade_to: cheap-model}\n  - {window: day, usd: 1000, action: reject}\n",
    )
    .await;
    let headers = spend(&sidecar, false, 19.0).await;
    assert_eq!(headers["x-holysheep-model"], "gpt-4.1");

    let headers = spend(&sidecar, false, 19.0 + 19.0 / 1e6).await;
    assert_eq!(headers["x-holysheep-model"], "cheap-model");
    let seen = up.requests();
    assert_eq!(seen[0].json()["model"], "gpt-4.1");
    assert_eq!(seen[1].json()["model"], "cheap-model");
    let (_, s) = scrape(&sidecar).await;
    let exceeded = value(
        &s,
        "holysheep_budget_exceeded_total",
        &[("window", "day"), ("action", "downgrade")],
    );
    assert_eq!(exceeded, Some(1.0));
}

#[tokio::test]
async fn a_budget_raised_live_lets_traffic_through_and_keeps_the_spend() {
    let (_up, sidecar, _clock) =
        start("budgets:\n  - {window: day, usd: 19, action: reject}\n").await;
    spend(&sidecar, false, 19.0).await;
    assert_eq!(chat(&sidecar, false).await.status(), 429);

    // What the reload watcher does with an edited file.
    let raised = Config::from_yaml_str(&format!(
        "{PRICES}budgets:\n  - {{window: day, usd: 60, action: reject}}\n"
    ))
    .unwrap();
    sidecar.state.budgets.observe_config(&raised);
    sidecar.state.config.store(Arc::new(raised));
    let (_, s) = scrape(&sidecar).await;
    assert_eq!(
        value(&s, "holysheep_budget_limit_usd", &[("window", "day")]),
        Some(60.0)
    );
    spend(&sidecar, true, 36.0).await;
}

#[test]
fn budgets_in_the_config_file_are_checked() {
    let ok = Config::from_yaml_str(
        "budgets:\n  - {window: month, usd: 500, action: downgrade, downgrade_to: deepseek-chat-v3-0324}\n",
    )
    .unwrap();
    assert_eq!(ok.budgets.len(), 1);
    for (yaml, field) in [
        (
            "budgets:\n  - {window: day, usd: 5, action: downgrade}\n",
            "budgets[0].downgrade_to",
        ),
        (
            "budgets:\n  - {window: day, usd: 5, action: reject, downgrade_to: m}\n",
            "budgets[0].downgrade_to",
        ),
        (
            "budgets:\n  - {window: day, usd: -1, action: reject}\n",
            "budgets[0].usd",
        ),
        (
            "budgets:\n  - {window: week, usd: 5, action: reject}\n",
            "week",
        ),
        (
            "budgets:\n  - {window: day, usd: 5, action: reject, limit: 3}\n",
            "limit",
        ),
    ] {
        let err = Config::from_yaml_str(yaml).unwrap_err().to_string();
        assert!(err.contains(field), "{yaml}: {err}");
    }
}
