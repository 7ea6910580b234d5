//! Unit tests of the retry policy (retry.rs).

use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const MS: Duration = Duration::from_millis(1);

/// [`policy`] for the tests that do not change it (a plan borrows its policy).
static POLICY: std::sync::LazyLock<RetryConfig> = std::sync::LazyLock::new(policy);

fn policy() -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        base_backoff: 10 * MS,
        max_backoff: 40 * MS,
        max_retry_after: 2000 * MS,
        attempt_timeout: 500 * MS,
        deadline: 5000 * MS,
        on_status: vec![429, 500, 502, 503, 504],
        budget_ratio: 0.2,
    }
}

fn generous() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(1000.0))
}

fn chain(models: &[&str]) -> Vec<Arc<str>> {
    models.iter().map(|&m| m.into()).collect()
}

fn status(code: u16) -> Outcome {
    Outcome::Response {
        status: StatusCode::from_u16(code).unwrap(),
        retry_after: None,
        should_retry: None,
    }
}

fn status_after(code: u16, after: Duration) -> Outcome {
    Outcome::Response {
        status: StatusCode::from_u16(code).unwrap(),
        retry_after: Some(after),
        should_retry: None,
    }
}

fn start(models: &[&str]) -> (RequestRetry<'static>, Instant, StdRng) {
    let now = Instant::now();
    let retry = RequestRetry::new(&POLICY, generous(), chain(models), true, now);
    (retry, now, StdRng::seed_from_u64(7))
}

#[test]
fn final_statuses_are_returned_as_they_are() {
    for code in [200, 201, 400, 401, 404, 422] {
        let (mut retry, now, mut rng) = start(&["a", "b"]);
        assert_eq!(
            retry.decide(status(code), now, &mut rng),
            Decision::Return,
            "{code}"
        );
    }
}

/// The sender skips `decide` (and its clock read) when `returns_as_is` says so: exactly
/// the responses whose status the policy does not list, whatever their retry hints.
#[test]
fn only_unlisted_statuses_are_returned_as_they_are() {
    let (retry, _, _) = start(&["a", "b"]);
    for code in 100..=599 {
        let listed = POLICY.on_status.contains(&code);
        assert_eq!(retry.returns_as_is(status(code)), !listed, "{code}");
        let hinted = status_after(code, 20 * MS);
        assert_eq!(
            retry.returns_as_is(hinted),
            !listed,
            "{code} with Retry-After"
        );
    }
    assert!(!retry.returns_as_is(Outcome::AttemptTimeout));
    assert!(!retry.returns_as_is(Outcome::ConnectError));
}

#[test]
fn retryable_statuses_follow_the_config_list() {
    let mut p = policy();
    p.on_status = vec![503];
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let mut retry = RequestRetry::new(&p, generous(), chain(&["a"]), true, now);
    assert_eq!(retry.decide(status(500), now, &mut rng), Decision::Return);
    assert!(matches!(
        retry.decide(status(503), now, &mut rng),
        Decision::Retry { .. }
    ));
}

#[test]
fn retries_until_max_attempts_then_gives_up_without_fallbacks() {
    let (mut retry, now, mut rng) = start(&["a"]);
    for attempt in 1..=2 {
        assert_eq!(retry.attempt(), attempt);
        let Decision::Retry { after } = retry.decide(status(503), now, &mut rng) else {
            panic!("attempt {attempt} should retry");
        };
        assert!(
            after <= 10 * MS * (1 << (attempt - 1)),
            "{after:?} over the ceiling"
        );
    }
    assert_eq!(
        retry.decide(status(503), now, &mut rng),
        Decision::GiveUp(GiveUpReason::AttemptsExhausted)
    );
}

#[test]
fn exhausted_model_falls_back_in_order_with_fresh_attempts() {
    let (mut retry, now, mut rng) = start(&["a", "b", "c"]);
    retry.decide(status(429), now, &mut rng);
    retry.decide(status(429), now, &mut rng);
    assert_eq!(
        retry.decide(status(429), now, &mut rng),
        Decision::Fallback {
            model: "b".into(),
            reason: GiveUpReason::AttemptsExhausted
        }
    );
    assert_eq!(
        (retry.model(), retry.attempt(), retry.fell_back()),
        (Some("b"), 1, true)
    );
    retry.decide(status(500), now, &mut rng);
    retry.decide(status(500), now, &mut rng);
    assert!(
        matches!(retry.decide(status(500), now, &mut rng), Decision::Fallback { ref model, .. } if &**model == "c")
    );
    retry.decide(status(500), now, &mut rng);
    retry.decide(status(500), now, &mut rng);
    assert_eq!(
        retry.decide(status(500), now, &mut rng),
        Decision::GiveUp(GiveUpReason::AttemptsExhausted)
    );
}

#[test]
fn retry_after_is_waited_exactly() {
    let (mut retry, now, mut rng) = start(&["a"]);
    assert_eq!(
        retry.decide(status_after(429, 1000 * MS), now, &mut rng),
        Decision::Retry { after: 1000 * MS }
    );
}

#[test]
fn long_retry_after_abandons_the_model_at_once() {
    let (mut retry, now, mut rng) = start(&["a", "b"]);
    assert_eq!(
        retry.decide(status_after(429, 3000 * MS), now, &mut rng),
        Decision::Fallback {
            model: "b".into(),
            reason: GiveUpReason::RetryAfterTooLong
        }
    );
    assert_eq!(
        retry.decide(status_after(429, 3000 * MS), now, &mut rng),
        Decision::GiveUp(GiveUpReason::RetryAfterTooLong)
    );
}

#[test]
fn upstream_should_retry_false_is_obeyed() {
    let (mut retry, now, mut rng) = start(&["a"]);
    let outcome = Outcome::Response {
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after: None,
        should_retry: Some(false),
    };
    assert_eq!(
        retry.decide(outcome, now, &mut rng),
        Decision::GiveUp(GiveUpReason::UpstreamSaidNo)
    );
}

#[test]
fn connect_errors_retry_but_never_fall_back() {
    let (mut retry, now, mut rng) = start(&["a", "b"]);
    assert!(matches!(
        retry.decide(Outcome::ConnectError, now, &mut rng),
        Decision::Retry { .. }
    ));
    assert!(matches!(
        retry.decide(Outcome::ConnectError, now, &mut rng),
        Decision::Retry { .. }
    ));
    assert_eq!(
        retry.decide(Outcome::ConnectError, now, &mut rng),
        Decision::GiveUp(GiveUpReason::AttemptsExhausted)
    );
}

#[test]
fn timeouts_retry_and_fall_back() {
    let (mut retry, now, mut rng) = start(&["a", "b"]);
    for _ in 0..2 {
        assert!(matches!(
            retry.decide(Outcome::AttemptTimeout, now, &mut rng),
            Decision::Retry { .. }
        ));
    }
    assert!(matches!(
        retry.decide(Outcome::AttemptTimeout, now, &mut rng),
        Decision::Fallback { .. }
    ));
}

#[test]
fn deadline_cuts_attempts_and_pauses() {
    let (mut retry, now, mut rng) = start(&["a"]);
    assert_eq!(retry.attempt_timeout(now), 500 * MS);
    let late = now + 4800 * MS;
    assert_eq!(
        retry.attempt_timeout(late),
        200 * MS,
        "attempt cut to what is left"
    );
    assert_eq!(retry.attempt_timeout(now + 6000 * MS), Duration::ZERO);
    assert_eq!(
        retry.decide(status_after(503, 300 * MS), late, &mut rng),
        Decision::GiveUp(GiveUpReason::Deadline)
    );
}

#[test]
fn pause_past_the_deadline_tries_the_fallback_instead() {
    let (mut retry, now, mut rng) = start(&["a", "b"]);
    let late = now + 4800 * MS;
    assert_eq!(
        retry.decide(status_after(503, 300 * MS), late, &mut rng),
        Decision::Fallback {
            model: "b".into(),
            reason: GiveUpReason::Deadline
        }
    );
    let over = now + 5000 * MS;
    assert_eq!(
        retry.decide(Outcome::AttemptTimeout, over, &mut rng),
        Decision::GiveUp(GiveUpReason::Deadline)
    );
}

#[test]
fn spent_budget_stops_retries_and_fallbacks() {
    let budget = Arc::new(RetryBudget::new(0.0));
    while budget.withdraw() {}
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(3);
    let mut retry = RequestRetry::new(&POLICY, Arc::clone(&budget), chain(&["a", "b"]), true, now);
    assert_eq!(
        retry.decide(status(503), now, &mut rng),
        Decision::GiveUp(GiveUpReason::BudgetExhausted)
    );
    let mut retry = RequestRetry::new(&POLICY, budget, chain(&["a", "b"]), true, now);
    assert_eq!(
        retry.decide(status_after(429, 9000 * MS), now, &mut rng),
        Decision::GiveUp(GiveUpReason::BudgetExhausted)
    );
}

#[test]
fn unreplayable_bodies_and_sent_responses_are_never_retried() {
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(4);
    let mut retry = RequestRetry::new(&POLICY, generous(), chain(&["a", "b"]), false, now);
    assert_eq!(
        retry.decide(status(503), now, &mut rng),
        Decision::GiveUp(GiveUpReason::NotReplayable)
    );
    assert_eq!(retry.decide(status(200), now, &mut rng), Decision::Return);

    let (mut retry, now, mut rng) = start(&["a", "b"]);
    retry.commit();
    for outcome in [status(503), Outcome::AttemptTimeout, Outcome::ConnectError] {
        assert_eq!(
            retry.decide(outcome, now, &mut rng),
            Decision::GiveUp(GiveUpReason::AlreadySent)
        );
    }
}

#[test]
fn huge_deadline_does_not_overflow() {
    let p = RetryConfig {
        deadline: Duration::MAX,
        ..policy()
    };
    let now = Instant::now();
    let retry = RequestRetry::new(&p, generous(), chain(&["a"]), true, now);
    assert_eq!(retry.attempt_timeout(now), 500 * MS);
    assert!(retry.remaining(now) >= FAR_FUTURE);
}

#[test]
fn zero_max_attempts_means_one_attempt() {
    let mut p = policy();
    p.max_attempts = 0;
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(5);
    let mut retry = RequestRetry::new(&p, generous(), chain(&["a"]), true, now);
    assert_eq!(
        retry.decide(status(503), now, &mut rng),
        Decision::GiveUp(GiveUpReason::AttemptsExhausted)
    );
}

#[test]
fn backoff_is_full_jitter_under_a_capped_exponential_ceiling() {
    let p = policy();
    let mut rng = StdRng::seed_from_u64(11);
    for (retry, ceiling) in [(1, 10), (2, 20), (3, 40), (4, 40), (40, 40), (u32::MAX, 40)] {
        let samples: Vec<Duration> = (0..400).map(|_| backoff(&p, retry, &mut rng)).collect();
        let ceiling = ceiling * MS;
        assert!(
            samples.iter().all(|d| *d <= ceiling),
            "retry {retry} over {ceiling:?}"
        );
        // Full jitter spreads over the whole range, not just near the ceiling.
        assert!(
            samples.iter().any(|d| *d < ceiling / 4),
            "retry {retry}: no low samples"
        );
        assert!(
            samples.iter().any(|d| *d > ceiling * 3 / 4),
            "retry {retry}: no high samples"
        );
    }
}

#[test]
fn backoff_survives_extreme_settings() {
    let p = RetryConfig {
        base_backoff: Duration::MAX,
        max_backoff: Duration::MAX,
        ..policy()
    };
    let mut rng = StdRng::seed_from_u64(12);
    let _ = backoff(&p, 64, &mut rng);
    let zero = RetryConfig {
        base_backoff: Duration::ZERO,
        ..policy()
    };
    assert_eq!(backoff(&zero, 3, &mut rng), Duration::ZERO);
}

#[test]
fn outcome_from_response_reads_the_hints() {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", http::HeaderValue::from_static("2"));
    headers.insert("x-should-retry", http::HeaderValue::from_static("true"));
    assert_eq!(
        Outcome::from_response(StatusCode::TOO_MANY_REQUESTS, &headers, SystemTime::now()),
        Outcome::Response {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(Duration::from_secs(2)),
            should_retry: Some(true),
        }
    );
}

#[test]
fn a_plan_reads_hints_only_from_statuses_it_retries() {
    let (retry, _, _) = start(&["a"]);
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", http::HeaderValue::from_static("2"));
    headers.insert("x-should-retry", http::HeaderValue::from_static("false"));
    let hinted =
        |code: u16| match retry.response_outcome(StatusCode::from_u16(code).unwrap(), &headers) {
            Outcome::Response {
                retry_after,
                should_retry,
                ..
            } => (retry_after, should_retry),
            other => panic!("{other:?}"),
        };
    assert_eq!(hinted(429), (Some(Duration::from_secs(2)), Some(false)));
    assert_eq!(hinted(503), (Some(Duration::from_secs(2)), Some(false)));
    // Returned as it is whatever the hints say, so they are not read.
    assert_eq!(hinted(200), (None, None));
    assert_eq!(hinted(400), (None, None));
}

#[test]
fn fallback_chains() {
    let fallbacks: std::collections::BTreeMap<String, Vec<String>> = [
        (
            "gpt-4.1".to_owned(),
            ["deepseek", "gpt-4.1", "flash", "deepseek-chat-v3-0324"]
                .map(String::from)
                .to_vec(),
        ),
        ("my-alias".to_owned(), vec!["x".to_owned()]),
    ]
    .into();
    let lookup = |m: &str| fallbacks.get(m).map(Vec::as_slice);
    let resolve = |m| match m {
        "deepseek" => "deepseek-chat-v3-0324",
        "flash" => "gemini-2.0-flash",
        other => other,
    };
    assert_eq!(
        fallback_chain("gpt-4", &"gpt-4.1".into(), lookup, resolve),
        chain(&["gpt-4.1", "deepseek-chat-v3-0324", "gemini-2.0-flash"]),
        "aliases resolved, repeats and the model itself dropped"
    );
    assert_eq!(
        fallback_chain("my-alias", &"real".into(), lookup, resolve),
        chain(&["real", "x"])
    );
    assert_eq!(
        fallback_chain("none", &"none".into(), lookup, resolve),
        chain(&["none"])
    );
}

mod properties;
