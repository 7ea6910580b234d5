use std::time::Duration;

use super::*;
use prometheus_client::encoding::text::encode;
use prometheus_parse::{Sample, Scrape, Value};

fn scrape(registry: &Registry) -> Scrape {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

fn counter(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(scrape, name, labels);
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name} is not a counter: {other:?}"),
    }
}

fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(scrape, name, labels);
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    match &found[0].value {
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

fn record<'a>(route: Route, requested: &'a str, upstream: &'a str) -> RequestRecord<'a> {
    RequestRecord {
        route,
        requested_model: Some(requested),
        upstream_model: Some(upstream),
        response_model: Some("gpt-4.1-2025-04-14"),
        status: 200,
        duration: Duration::from_millis(120),
        ttfb: Some(Duration::from_millis(30)),
    }
}

#[test]
fn design_metric_names_are_exposed_and_parse() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.models().set_known(["gpt-4", "gpt-4.1"]);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(
        counter(&scrape(&registry), "holysheep_build_info", &version),
        1.0
    );
    let rec = record(Route::ChatCompletions, "gpt-4", "gpt-4.1");
    {
        let _guard = metrics.inflight();
        let s = scrape(&registry);
        assert_eq!(counter(&s, "holysheep_inflight_requests", &[]), 1.0);
    }
    let series = metrics.record_request(&rec);
    let cost = metrics.record_tokens(
        &series,
        &rec,
        &TokenRecord {
            input: 1_000,
            output: 500,
            price_per_million: Some((8.0, 8.0)),
        },
    );
    assert_eq!(cost, Some(0.012));
    metrics.record_attempt("gpt-4.1", AttemptOutcome::ServerError);
    metrics.record_retry("gpt-4.1", RetryReason::ServerError);
    metrics.record_fallback("gpt-4.1", "deepseek-chat-v3-0324");

    let s = scrape(&registry);
    assert_eq!(counter(&s, "holysheep_inflight_requests", &[]), 0.0);
    let req = [
        ("route", "chat_completions"),
        ("model", "gpt-4.1"),
        ("requested_model", "gpt-4"),
        ("status", "200"),
    ];
    assert_eq!(counter(&s, "holysheep_requests_total", &req), 1.0);
    let rm = [("route", "chat_completions"), ("model", "gpt-4.1")];
    assert_eq!(
        histogram_count(&s, "holysheep_request_duration_seconds", &rm),
        1.0
    );
    assert_eq!(
        histogram_count(&s, "holysheep_time_to_first_byte_seconds", &rm),
        1.0
    );
    let input = [("model", "gpt-4.1"), ("type", "input")];
    let output = [("model", "gpt-4.1"), ("type", "output")];
    assert_eq!(counter(&s, "holysheep_tokens_total", &input), 1000.0);
    assert_eq!(counter(&s, "holysheep_tokens_total", &output), 500.0);
    assert!(
        (counter(&s, "holysheep_cost_usd_total", &[("model", "gpt-4.1")]) - 0.012).abs() < 1e-12
    );
    assert!(find(&s, "holysheep_unpriced_tokens_total", &[]).is_empty());
    let attempt = [("model", "gpt-4.1"), ("outcome", "server_error")];
    assert_eq!(
        counter(&s, "holysheep_upstream_attempts_total", &attempt),
        1.0
    );
    let retry = [("model", "gpt-4.1"), ("reason", "server_error")];
    assert_eq!(counter(&s, "holysheep_upstream_retries_total", &retry), 1.0);
    // The fallback target is not configured, but is a well-formed name under the cap.
    let fb = [
        ("from_model", "gpt-4.1"),
        ("to_model", "deepseek-chat-v3-0324"),
    ];
    assert_eq!(counter(&s, "holysheep_fallbacks_total", &fb), 1.0);
}

#[test]
fn incomplete_responses_start_at_zero_and_count_by_reason() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let s = scrape(&registry);
    for reason in ["timeout", "upstream_error", "client_gone"] {
        let labels = [("reason", reason)];
        assert_eq!(
            counter(&s, "holysheep_incomplete_responses_total", &labels),
            0.0,
            "{reason}"
        );
    }
    metrics.record_incomplete(IncompleteReason::Timeout);
    let s = scrape(&registry);
    let timeout = [("reason", "timeout")];
    assert_eq!(
        counter(&s, "holysheep_incomplete_responses_total", &timeout),
        1.0
    );
}

#[test]
fn gen_ai_semantic_convention_metrics() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics
        .models()
        .set_known(["gpt-4", "gpt-4.1", "text-embedding-3-small"]);
    let chat = record(Route::ChatCompletions, "gpt-4", "gpt-4.1");
    let series = metrics.record_request(&chat);
    metrics.record_tokens(
        &series,
        &chat,
        &TokenRecord {
            input: 10,
            output: 20,
            price_per_million: None,
        },
    );
    let mut emb = record(
        Route::Embeddings,
        "text-embedding-3-small",
        "text-embedding-3-small",
    );
    emb.response_model = None;
    emb.status = 503;
    let series = metrics.record_request(&emb);
    metrics.record_tokens(
        &series,
        &emb,
        &TokenRecord {
            input: 7,
            output: 0,
            price_per_million: None,
        },
    );
    // Non-GenAI routes get no gen_ai series.
    let mut models = record(Route::Models, "", "");
    models.requested_model = None;
    models.upstream_model = None;
    metrics.record_request(&models);

    let s = scrape(&registry);
    let chat_labels = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "holysheep"),
        ("gen_ai_system", "holysheep"),
        ("gen_ai_request_model", "gpt-4"),
        ("gen_ai_response_model", "gpt-4.1-2025-04-14"),
    ];
    let mut input = chat_labels.to_vec();
    input.push(("gen_ai_token_type", "input"));
    assert_eq!(
        histogram_count(&s, "gen_ai_client_token_usage", &input),
        1.0
    );
    let mut output = chat_labels.to_vec();
    output.push(("gen_ai_token_type", "output"));
    assert_eq!(
        histogram_count(&s, "gen_ai_client_token_usage", &output),
        1.0
    );
    assert_eq!(
        histogram_count(&s, "gen_ai_client_operation_duration_seconds", &chat_labels),
        1.0
    );
    let emb_labels = [
        ("gen_ai_operation_name", "embeddings"),
        ("gen_ai_response_model", "text-embedding-3-small"),
        ("error_type", "5xx"),
    ];
    assert_eq!(
        histogram_count(&s, "gen_ai_client_operation_duration_seconds", &emb_labels),
        1.0
    );
    let emb_out = [
        ("gen_ai_operation_name", "embeddings"),
        ("gen_ai_token_type", "output"),
    ];
    assert!(find(&s, "gen_ai_client_token_usage", &emb_out).is_empty());
    assert_eq!(
        find(&s, "gen_ai_client_operation_duration_seconds", &[]).len(),
        2,
        "the models route must not produce gen_ai series"
    );
    // Unpriced: tokens are counted, cost is not, the unpriced counter is.
    let input = [("model", "gpt-4.1"), ("type", "input")];
    assert_eq!(counter(&s, "holysheep_tokens_total", &input), 10.0);
    assert_eq!(counter(&s, "holysheep_unpriced_tokens_total", &input), 10.0);
    assert!(find(&s, "holysheep_cost_usd_total", &[]).is_empty());
    let none = [
        ("route", "models"),
        ("model", "none"),
        ("requested_model", "none"),
    ];
    assert_eq!(counter(&s, "holysheep_requests_total", &none), 1.0);
}

#[test]
fn reload_rate_limit_and_unparsed_counters() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.record_config_reload(ReloadResult::Success);
    metrics.record_config_reload(ReloadResult::Failure);
    metrics.record_config_reload(ReloadResult::Failure);
    let changes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let (read, read_failures) = (changes.clone(), failures.clone());
    Metrics::register_key_reloads(
        &mut registry,
        move || read.load(std::sync::atomic::Ordering::SeqCst),
        move || read_failures.load(std::sync::atomic::Ordering::SeqCst),
    );
    changes.store(3, std::sync::atomic::Ordering::SeqCst);
    failures.store(4, std::sync::atomic::Ordering::SeqCst);
    metrics.record_rate_limited(RateLimitKind::Tokens);
    metrics.record_unparsed(UnparsedKind::SseEvent, 3);
    metrics.record_unparsed(UnparsedKind::JsonBody, 0);
    metrics.record_usage_missing(Route::Responses);
    assert_eq!(metrics.config_reloads(ReloadResult::Failure), 2);

    let s = scrape(&registry);
    let cfg = |r| counter(&s, "holysheep_config_reloads_total", &[("result", r)]);
    assert_eq!(cfg("success"), 1.0);
    assert_eq!(cfg("failure"), 2.0);
    assert_eq!(
        counter(&s, "holysheep_key_reloads_total", &[("result", "success")]),
        2.0,
        "changes since start, not the first load"
    );
    assert_eq!(
        counter(&s, "holysheep_key_reloads_total", &[("result", "failure")]),
        4.0,
        "failures as the key store counts them, a bad file at start included"
    );
    assert_eq!(
        counter(
            &s,
            "holysheep_rate_limited_requests_total",
            &[("limit", "tokens")]
        ),
        1.0
    );
    let kind = [("kind", "sse_event")];
    assert_eq!(
        counter(&s, "holysheep_usage_unparsed_events_total", &kind),
        3.0
    );
    assert!(
        find(
            &s,
            "holysheep_usage_unparsed_events_total",
            &[("kind", "json_body")]
        )
        .is_empty()
    );
    let route = [("route", "responses")];
    assert_eq!(counter(&s, "holysheep_usage_missing_total", &route), 1.0);
}

#[test]
fn client_text_never_reaches_a_label() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let secret_prompt = "my password is hunter2, summarise my medical record";
    let mut rec = record(
        Route::from_path("/v1/evil\"path"),
        secret_prompt,
        secret_prompt,
    );
    rec.response_model = Some(secret_prompt);
    let series = metrics.record_request(&rec);
    metrics.record_tokens(&series, &rec, &TokenRecord::default());
    for i in 0..(EXTRA_MODEL_CAP + 10) {
        metrics.record_attempt(&format!("random-{i}"), AttemptOutcome::Success);
    }
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(!text.contains("hunter2"));
    assert!(!text.contains("evil"));
    let s = scrape(&registry);
    let series = find(&s, "holysheep_upstream_attempts_total", &[]);
    // Capped: EXTRA_MODEL_CAP names keep theirs, the rest share "other".
    assert_eq!(series.len(), EXTRA_MODEL_CAP + 1);
    assert_eq!(
        counter(
            &s,
            "holysheep_upstream_attempts_total",
            &[("model", OTHER_MODEL)]
        ),
        10.0
    );
}

#[test]
fn upstream_connections_are_read_at_each_scrape_by_protocol() {
    let mut registry = Registry::default();
    let open = Arc::new((AtomicUsize::new(2), AtomicUsize::new(0)));
    let read = Arc::clone(&open);
    Metrics::register_upstream_connections(&mut registry, move || {
        (
            read.0.load(Ordering::SeqCst) as u64,
            read.1.load(Ordering::SeqCst) as u64,
        )
    });
    let gauge = |s: &Scrape, protocol| {
        counter(
            s,
            "holysheep_upstream_connections",
            &[("protocol", protocol)],
        )
    };
    let s = scrape(&registry);
    assert_eq!((gauge(&s, "http1"), gauge(&s, "http2")), (2.0, 0.0));
    assert!(
        matches!(
            find(&s, "holysheep_upstream_connections", &[])[0].value,
            Value::Gauge(_)
        ),
        "a gauge"
    );
    open.0.store(64, Ordering::SeqCst);
    open.1.store(3, Ordering::SeqCst);
    let s = scrape(&registry);
    assert_eq!((gauge(&s, "http1"), gauge(&s, "http2")), (64.0, 3.0));
}
