//! Shared budgets on a real Redis (`budgets_store`): two in-process sidecars with one
//! budget key share a day budget under 50 concurrent callers, and overshoot it by less
//! than one request's cost; different keys do not share; a Redis killed mid-run leaves
//! the sidecar serving on its local count (metric down, one log line) and the spend of
//! the outage is pushed once a Redis answers again on the same port. No spend is lost
//! when the store goes away: the binary pushes what is pending on SIGTERM (retrying
//! while Redis comes back, and exiting within the flush bound when it does not), and a
//! reload that replaces the store pushes the spend counted for the old one to it. Also
//! the flags `--budget-usd-per-day` and `--budget-key`, and the `budgets_store` URL check.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod observe;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use holysheep_sidecar::budget::{BudgetFlags, BudgetKey, Clock, FLUSH_TIMEOUT};
use holysheep_sidecar::config::{Args, Config};
use holysheep_sidecar::server::Settings;
use observe::{capture_logs, openai_like, scrape, value};
use serde_json::{Value, json};
use support::process::{Launch, SidecarProcess};
use support::redis::RedisServer;
use support::upstream::FakeUpstream;
use support::{Sidecar, eventually, http_client, settings};

/// gpt-4.1 at $1 per token, so the fake upstream's usage (12 + 7 tokens) costs $19.
const PRICES: &str = "prices:\n  gpt-4.1: {input: 1000000, output: 1000000}\n";
/// The cost of one chat, in micro-USD.
const CHAT: i64 = 19_000_000;

/// A clock stopped at the real time the test started: the window cannot change in the
/// middle of a test, and the keys' expiry is in the future.
#[derive(Debug, Clone)]
struct StoppedClock(Arc<AtomicI64>);

impl StoppedClock {
    fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Self(Arc::new(AtomicI64::new(i64::try_from(secs).unwrap())))
    }

    /// The Redis key of `budget_key`'s day window.
    fn day_key(&self, budget_key: &str) -> String {
        let start = self.0.load(Ordering::SeqCst).div_euclid(86_400) * 86_400;
        format!("holysheep:budget:{{{budget_key}}}:day:{start}")
    }
}

impl Clock for StoppedClock {
    fn now_unix(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A sidecar on `redis` with budget key `key` and the day budget `usd` (reject).
async fn sidecar(
    up: &FakeUpstream,
    redis: &RedisServer,
    key: &str,
    usd: u32,
    clock: &StoppedClock,
) -> Sidecar {
    let mut s = settings(&up.url());
    s.config = Config::from_yaml_str(&format!(
        "{PRICES}budgets:\n  - {{window: day, usd: {usd}, action: reject}}\nbudgets_store: {}\n",
        redis.url()
    ))
    .unwrap();
    s.budget = BudgetFlags {
        key: BudgetKey::parse(key).unwrap(),
        usd_per_day: None,
    };
    let sidecar = Sidecar::start_with(s).await;
    sidecar.state.budgets.set_clock(Arc::new(clock.clone()));
    wait_metric(&sidecar, "holysheep_budget_store_up", 1.0).await;
    sidecar
}

async fn metric(sidecar: &Sidecar, name: &str) -> Option<f64> {
    let (_, s) = scrape(sidecar).await;
    value(&s, name, &[])
}

async fn wait_metric(sidecar: &Sidecar, name: &str, want: f64) {
    eventually(Duration::from_secs(10), name, || async {
        metric(sidecar, name).await == Some(want)
    })
    .await;
}

/// One chat whose estimate covers its cost: `max_tokens` 19 plus the prompt.
async fn chat(sidecar: &Sidecar) -> (u16, Value) {
    chat_at(sidecar.url("/v1/chat/completions")).await
}

async fn chat_at(url: String) -> (u16, Value) {
    let body = json!({
        "model": "gpt-4.1",
        "max_tokens": 19,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let resp = http_client().post(url).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The micro-USD stored under `key` (0 when absent).
async fn stored(redis: &RedisServer, key: &str) -> i64 {
    let mut conn = redis.client().await;
    let v: Option<i64> = ::redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    v.unwrap_or(0)
}

async fn wait_stored(redis: &RedisServer, key: &str, want: i64) {
    eventually(Duration::from_secs(10), "spend pushed to redis", || async {
        stored(redis, key).await == want
    })
    .await;
}

fn assert_budget_exceeded(status: u16, body: &Value) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
}

#[tokio::test]
async fn two_sidecars_with_one_budget_key_share_one_budget() {
    let redis = RedisServer::start().await;
    let up = FakeUpstream::start(openai_like).await;
    let clock = StoppedClock::now();
    const LIMIT: u32 = 200;
    let a = sidecar(&up, &redis, "shop/checkout", LIMIT, &clock).await;
    let b = sidecar(&up, &redis, "shop/checkout", LIMIT, &clock).await;

    // 50 callers at once, alternating between the two sidecars.
    let calls = (0..50).map(|i| chat(if i % 2 == 0 { &a } else { &b }));
    let answers = futures_util::future::join_all(calls).await;
    let mut ok = 0;
    for (status, body) in &answers {
        if *status == 200 {
            ok += 1;
        } else {
            assert_budget_exceeded(*status, body);
        }
    }
    assert!(ok > 0 && ok < 50, "{ok} of 50 admitted");
    // Then one at a time until the budget is spent for both.
    for _ in 0..20 {
        let (sa, _) = chat(&a).await;
        let (sb, _) = chat(&b).await;
        ok += usize::from(sa == 200) + usize::from(sb == 200);
        if sa == 429 && sb == 429 {
            break;
        }
    }
    let (status, body) = chat(&a).await;
    assert_budget_exceeded(status, &body);
    let (status, body) = chat(&b).await;
    assert_budget_exceeded(status, &body);

    // Exactly the upstream's usage, every admitted request once, in one shared key.
    let charged = i64::try_from(ok).unwrap() * CHAT;
    let key = clock.day_key("shop/checkout");
    wait_stored(&redis, &key, charged).await;
    assert_eq!(
        up.requests().len(),
        ok,
        "refused requests never went upstream"
    );
    // The documented bound: with estimates that cover the cost, the limit is passed by
    // less than one request's cost, however many callers and replicas.
    let limit = i64::from(LIMIT) * 1_000_000;
    assert!(
        charged >= limit,
        "the budget was spent: {charged} of {limit}"
    );
    assert!(
        charged < limit + CHAT,
        "overshoot {} micro-USD is more than one request",
        charged - limit
    );
    // Both sidecars show the shared total once they asked Redis again (a refused
    // request reads it).
    for s in [&a, &b] {
        eventually(Duration::from_secs(5), "shared total shown", || async {
            let (status, body) = chat(s).await;
            assert_budget_exceeded(status, &body);
            let (_, scraped) = scrape(s).await;
            let spent = value(&scraped, "holysheep_budget_spent_usd", &[("window", "day")]);
            spent == Some(charged as f64 / 1e6)
        })
        .await;
    }
}

#[tokio::test]
async fn different_budget_keys_do_not_share() {
    let redis = RedisServer::start().await;
    let up = FakeUpstream::start(openai_like).await;
    let clock = StoppedClock::now();
    let a = sidecar(&up, &redis, "shop/a", 19, &clock).await;
    let b = sidecar(&up, &redis, "shop/b", 19, &clock).await;
    assert_eq!(chat(&a).await.0, 200);
    wait_stored(&redis, &clock.day_key("shop/a"), CHAT).await;
    let (status, body) = chat(&a).await;
    assert_budget_exceeded(status, &body);
    // shop/b's budget is untouched by shop/a's spend.
    assert_eq!(chat(&b).await.0, 200);
    wait_stored(&redis, &clock.day_key("shop/b"), CHAT).await;
    assert_eq!(stored(&redis, &clock.day_key("shop/a")).await, CHAT);
}

#[tokio::test]
async fn a_shared_downgrade_budget_sends_the_cheaper_model_from_every_sidecar() {
    let redis = RedisServer::start().await;
    let up = FakeUpstream::start(openai_like).await;
    let clock = StoppedClock::now();
    let budgets = "budgets:\n  - {window: day, usd: 19, action: downgrade, downgrade_to: cheap-model}\n  - {window: day, usd: 1000, action: reject}\n";
    let config = format!(
        "{PRICES}  cheap-model: {{input: 1, output: 1}}\n{budgets}budgets_store: {}\n",
        redis.url()
    );
    let mut sidecars = Vec::new();
    for _ in 0..2 {
        let mut s = settings(&up.url());
        s.config = Config::from_yaml_str(&config).unwrap();
        s.budget.key = BudgetKey::parse("shop/downgrade").unwrap();
        let sidecar = Sidecar::start_with(s).await;
        sidecar.state.budgets.set_clock(Arc::new(clock.clone()));
        wait_metric(&sidecar, "holysheep_budget_store_up", 1.0).await;
        sidecars.push(sidecar);
    }
    assert_eq!(chat(&sidecars[0]).await.0, 200);
    wait_stored(&redis, &clock.day_key("shop/downgrade"), CHAT).await;
    // The other sidecar sees the $19 the first one spent.
    assert_eq!(chat(&sidecars[1]).await.0, 200);
    let seen = up.requests();
    assert_eq!(seen[0].json()["model"], "gpt-4.1");
    assert_eq!(seen[1].json()["model"], "cheap-model");
    // 19 tokens of cheap-model at $1 per 1M: 19 micro-USD.
    wait_stored(&redis, &clock.day_key("shop/downgrade"), CHAT + 19).await;
}

/// Log lines of the store at `port` with `message`.
fn store_lines(logs: &observe::LogBuf, port: u16, message: &str) -> usize {
    let store = format!("redis://127.0.0.1:{port}/0");
    logs.text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message && v["fields"]["store"] == store.as_str())
        .count()
}

const DOWN: &str = "budget store unreachable; counting spend locally until it answers";
const BACK: &str = "budget store reachable again; pushing the spend counted meanwhile";

#[tokio::test]
async fn a_dead_store_fails_open_and_its_spend_is_pushed_when_it_is_back() {
    let logs = capture_logs();
    let redis = RedisServer::start().await;
    let port = redis.port;
    let up = FakeUpstream::start(openai_like).await;
    let clock = StoppedClock::now();
    let key = clock.day_key("shop/outage");
    let s = sidecar(&up, &redis, "shop/outage", 1000, &clock).await;
    assert_eq!(chat(&s).await.0, 200);
    wait_stored(&redis, &key, CHAT).await;

    let mut redis = redis;
    redis.stop();
    for _ in 0..3 {
        assert_eq!(chat(&s).await.0, 200, "the sidecar keeps serving");
    }
    assert_eq!(s.readyz().await, 200, "readiness does not follow the store");
    assert_eq!(metric(&s, "holysheep_budget_store_up").await, Some(0.0));
    // Several failed probes later, still one line for the outage.
    eventually(Duration::from_secs(10), "failed probes", || async {
        metric(&s, "holysheep_budget_store_errors_total").await >= Some(3.0)
    })
    .await;
    assert_eq!(store_lines(&logs, port, DOWN), 1, "{}", logs.text());
    // The local count goes on from the last shared total.
    let (_, scraped) = scrape(&s).await;
    let spent = value(&scraped, "holysheep_budget_spent_usd", &[("window", "day")]);
    assert_eq!(spent, Some(4.0 * 19.0));

    // An empty Redis on the same port: the three chats of the outage are pushed.
    let redis = redis.restart().await;
    wait_metric(&s, "holysheep_budget_store_up", 1.0).await;
    wait_stored(&redis, &key, 3 * CHAT).await;
    assert_eq!(store_lines(&logs, port, BACK), 1, "{}", logs.text());
    assert_eq!(store_lines(&logs, port, DOWN), 1);
    assert_eq!(chat(&s).await.0, 200);
    wait_stored(&redis, &key, 4 * CHAT).await;
}

#[tokio::test]
async fn a_store_set_by_a_reload_is_used_from_the_next_request() {
    let redis = RedisServer::start().await;
    let up = FakeUpstream::start(openai_like).await;
    let clock = StoppedClock::now();
    let key = clock.day_key("shop/reload");
    let mut s = settings(&up.url());
    let budgets = "budgets:\n  - {window: day, usd: 1000, action: reject}\n";
    s.config = Config::from_yaml_str(&format!("{PRICES}{budgets}")).unwrap();
    s.budget.key = BudgetKey::parse("shop/reload").unwrap();
    let sidecar = Sidecar::start_with(s).await;
    sidecar.state.budgets.set_clock(Arc::new(clock.clone()));
    assert_eq!(chat(&sidecar).await.0, 200);
    assert_eq!(
        metric(&sidecar, "holysheep_budget_store_up").await,
        Some(0.0)
    );

    // What the reload watcher does with an edited file.
    let with_store = format!("{PRICES}{budgets}budgets_store: {}\n", redis.url());
    let reloaded = Config::from_yaml_str(&with_store).unwrap();
    sidecar.state.budgets.observe_config(&reloaded);
    sidecar.state.config.store(Arc::new(reloaded));
    wait_metric(&sidecar, "holysheep_budget_store_up", 1.0).await;
    assert_eq!(chat(&sidecar).await.0, 200);
    // Only the spend from the reload on is in the store.
    wait_stored(&redis, &key, CHAT).await;

    // And a reload without it stops using it.
    let local = Config::from_yaml_str(&format!("{PRICES}{budgets}")).unwrap();
    sidecar.state.budgets.observe_config(&local);
    sidecar.state.config.store(Arc::new(local));
    assert_eq!(
        metric(&sidecar, "holysheep_budget_store_up").await,
        Some(0.0)
    );
    assert_eq!(chat(&sidecar).await.0, 200);
    eventually(Duration::from_secs(5), "spend settled", || async {
        let (_, s) = scrape(&sidecar).await;
        value(&s, "holysheep_budget_spent_usd", &[("window", "day")]) == Some(3.0 * 19.0)
    })
    .await;
    assert_eq!(stored(&redis, &key).await, CHAT);
}

#[tokio::test]
async fn budget_usd_per_day_adds_a_day_budget() {
    let up = FakeUpstream::start(openai_like).await;
    let args = Args::try_parse_from([
        "holysheep-sidecar",
        "--upstream",
        &up.url(),
        "--budget-usd-per-day",
        "19",
        "--budget-key",
        "shop/flags",
    ])
    .unwrap();
    let from_flags = Settings::from_args(&args).unwrap();
    assert_eq!(from_flags.budget.usd_per_day, Some(19.0));
    assert_eq!(from_flags.budget.key.as_str(), "shop/flags");
    let mut s = settings(&up.url());
    s.config = Config::from_yaml_str(PRICES).unwrap();
    s.budget = from_flags.budget;
    let sidecar = Sidecar::start_with(s).await;
    let (_, scraped) = scrape(&sidecar).await;
    let limit = value(&scraped, "holysheep_budget_limit_usd", &[("window", "day")]);
    assert_eq!(limit, Some(19.0));
    assert_eq!(chat(&sidecar).await.0, 200);
    eventually(Duration::from_secs(5), "spend settled", || async {
        let (_, s) = scrape(&sidecar).await;
        value(&s, "holysheep_budget_spent_usd", &[("window", "day")]) == Some(19.0)
    })
    .await;
    let (status, body) = chat(&sidecar).await;
    assert_budget_exceeded(status, &body);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("19 USD per day (--budget-usd-per-day, action reject)")
            && message.ends_with("or raise --budget-usd-per-day"),
        "{message}"
    );
}

#[test]
fn bad_budget_flags_refuse_to_start_naming_the_flag() {
    for (flag, bad) in [
        ("--budget-usd-per-day", "0"),
        ("--budget-usd-per-day", "-5"),
        ("--budget-usd-per-day", "NaN"),
        ("--budget-usd-per-day", "2e6"),
        ("--budget-usd-per-day", "fifty"),
        ("--budget-key", ""),
        ("--budget-key", "shop/with space"),
    ] {
        let err = Args::try_parse_from(["holysheep-sidecar", flag, bad]).unwrap_err();
        assert!(err.to_string().contains(flag), "{flag} {bad:?}: {err}");
        // The binary itself: non-zero exit, the flag named on stderr.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_holysheep-sidecar"))
            .env_clear()
            .args([flag, bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {bad:?} started");
        assert!(stderr.contains(flag), "{flag} {bad:?}: {stderr}");
    }
    // The env twin is checked the same way.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_holysheep-sidecar"))
        .env_clear()
        .env("HOLYSHEEP_BUDGET_USD_PER_DAY", "-1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--budget-usd-per-day"));
}

#[test]
fn a_bad_budgets_store_is_refused_naming_the_key() {
    for bad in [
        "redis.shop.svc:6379",
        "rediss://r:6379/0",
        "redis://r/zero",
        "redis:///0",
    ] {
        let err = Config::from_yaml_str(&format!("budgets_store: \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("budgets_store") && err.contains("redis://HOST:PORT/DB"),
            "{bad}: {err}"
        );
    }
    let ok = Config::from_yaml_str("budgets_store: redis://redis.shop.svc:6379/0\n").unwrap();
    assert!(ok.budgets_store.is_some());
}

/// The sidecar binary on `redis` with budget key `key` and a day budget of $1000; the
/// config file lives in the returned dir.
async fn sidecar_process(
    up: &FakeUpstream,
    redis: &RedisServer,
    key: &str,
) -> (SidecarProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let budgets = "budgets:\n  - {window: day, usd: 1000, action: reject}\n";
    let store = format!("budgets_store: {}\n", redis.url());
    std::fs::write(&config, format!("{PRICES}{budgets}{store}")).unwrap();
    let launch = Launch::default()
        .arg("--upstream", up.url())
        .arg("--config", config.as_os_str())
        .arg("--budget-key", key);
    let process = SidecarProcess::start(launch, |_| {}).await;
    wait_process_metric(&process, "holysheep_budget_store_up", &[], 1.0).await;
    (process, dir)
}

async fn process_metric(p: &SidecarProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value(&p.scrape().await.1, name, labels)
}

async fn wait_process_metric(p: &SidecarProcess, name: &str, labels: &[(&str, &str)], want: f64) {
    eventually(Duration::from_secs(10), name, || async {
        process_metric(p, name, labels).await == Some(want)
    })
    .await;
}

/// The micro-USD of every day key of `budget_key` (the binary runs on the real clock).
async fn stored_days(redis: &RedisServer, budget_key: &str) -> i64 {
    let mut conn = redis.client().await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("holysheep:budget:{{{budget_key}}}:day:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut total = 0;
    for key in keys {
        total += stored(redis, &key).await;
    }
    total
}

/// The JSON log lines of `output` whose message is `message`.
fn lines_with(output: &str, message: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

const FLUSHED: &str = "budget spend pushed to the store before exit";
const NOT_FLUSHED: &str =
    "budget store did not take the pending spend before exit; it stays unshared";
const RETIRED: &str = "budget store replaced by a reload; the spend counted for it is pushed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_pending_at_sigterm_is_pushed_to_the_store_before_exit() {
    let mut redis = RedisServer::start().await;
    let up = FakeUpstream::start(openai_like).await;
    let (mut s, _dir) = sidecar_process(&up, &redis, "shop/sigterm").await;
    let url = s.url("/v1/chat/completions");
    assert_eq!(chat_at(url.clone()).await.0, 200);
    eventually(Duration::from_secs(10), "first chat pushed", || async {
        stored_days(&redis, "shop/sigterm").await == CHAT
    })
    .await;

    // Two chats while Redis is down: their spend is pending, only counted here.
    redis.stop();
    for _ in 0..2 {
        assert_eq!(chat_at(url.clone()).await.0, 200);
    }
    let day = [("window", "day")];
    wait_process_metric(&s, "holysheep_budget_spent_usd", &day, 3.0 * 19.0).await;

    // SIGTERM first, then Redis comes back (empty, on the same port): the flush at exit
    // retries until it answers. Without it, the process is gone before Redis is up.
    s.signal_term();
    let redis = redis.restart().await;
    let status = tokio::task::block_in_place(|| s.wait_exit());
    let output = s.output();
    assert!(status.success(), "{status}: {output}");
    assert_eq!(
        stored_days(&redis, "shop/sigterm").await,
        2 * CHAT,
        "{output}"
    );
    let flushed = lines_with(&output, FLUSHED);
    assert_eq!(flushed.len(), 1, "{output}");
    assert_eq!(flushed[0]["fields"]["pushed_usd"], 38.0, "{output}");
    assert!(lines_with(&output, NOT_FLUSHED).is_empty(), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_store_down_exits_within_the_flush_bound_and_says_what_is_lost() {
    let mut redis = RedisServer::start().await;
    let up = FakeUpstream::start(openai_like).await;
    let (mut s, _dir) = sidecar_process(&up, &redis, "shop/down").await;
    redis.stop();
    assert_eq!(chat_at(s.url("/v1/chat/completions")).await.0, 200);
    let day = [("window", "day")];
    wait_process_metric(&s, "holysheep_budget_spent_usd", &day, 19.0).await;

    let began = std::time::Instant::now();
    let status = tokio::task::block_in_place(|| s.terminate());
    let took = began.elapsed();
    let output = s.output();
    assert!(status.success(), "{status}: {output}");
    // Not a speed test: the flush gives up at its bound, and the margin is the exit of
    // a debug build on a busy machine, far below the pod's 30 s grace.
    assert!(
        took < FLUSH_TIMEOUT + Duration::from_secs(5),
        "exit took {took:?}: {output}"
    );
    let lost = lines_with(&output, NOT_FLUSHED);
    assert_eq!(lost.len(), 1, "{output}");
    assert_eq!(lost[0]["fields"]["unshared_usd"], 19.0, "{output}");
    assert_eq!(lost[0]["level"], "WARN", "{output}");
    assert!(lines_with(&output, FLUSHED).is_empty(), "{output}");
}

#[tokio::test]
async fn a_store_replaced_by_a_reload_gets_the_spend_counted_for_it() {
    let logs = capture_logs();
    let mut old = RedisServer::start().await;
    let new = RedisServer::start().await;
    let old_port = old.port;
    let up = FakeUpstream::start(openai_like).await;
    let clock = StoppedClock::now();
    let key = clock.day_key("shop/moved");
    let s = sidecar(&up, &old, "shop/moved", 1000, &clock).await;
    assert_eq!(chat(&s).await.0, 200);
    wait_stored(&old, &key, CHAT).await;

    // Two chats the old store has not taken yet (it is down)...
    old.stop();
    for _ in 0..2 {
        assert_eq!(chat(&s).await.0, 200);
    }
    eventually(Duration::from_secs(5), "spend settled", || async {
        let (_, scraped) = scrape(&s).await;
        value(&scraped, "holysheep_budget_spent_usd", &[("window", "day")]) == Some(3.0 * 19.0)
    })
    .await;

    // ...then a reload moves the budget to another store, and the old one comes back
    // (empty, on the same port): the spend counted for it still goes to it.
    let budgets = "budgets:\n  - {window: day, usd: 1000, action: reject}\n";
    let moved = format!("{PRICES}{budgets}budgets_store: {}\n", new.url());
    let reloaded = Config::from_yaml_str(&moved).unwrap();
    s.state.budgets.observe_config(&reloaded);
    s.state.config.store(Arc::new(reloaded));
    let old = old.restart().await;
    wait_stored(&old, &key, 2 * CHAT).await;
    eventually(
        Duration::from_secs(10),
        "retired store log line",
        || async { store_lines(&logs, old_port, RETIRED) == 1 },
    )
    .await;

    // The new store is used from the next request, and the old one gets nothing more.
    wait_metric(&s, "holysheep_budget_store_up", 1.0).await;
    assert_eq!(chat(&s).await.0, 200);
    wait_stored(&new, &key, CHAT).await;
    assert_eq!(stored(&old, &key).await, 2 * CHAT);
    assert_eq!(store_lines(&logs, old_port, RETIRED), 1, "{}", logs.text());
}
