//! Unit tests of the local rate limit (ratelimit.rs), on governor's fake clock.

use super::*;
use governor::clock::FakeRelativeClock;
use serde_json::json;

fn limits(rpm: Option<u32>, tpm: Option<u32>) -> RateLimitConfig {
    RateLimitConfig {
        requests_per_minute: rpm.and_then(NonZeroU32::new),
        tokens_per_minute: tpm.and_then(NonZeroU32::new),
    }
}

fn limiter() -> (LocalRateLimit<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (LocalRateLimit::with_clock(clock.clone()), clock)
}

#[test]
fn no_limits_admit_everything() {
    let (limit, _) = limiter();
    for _ in 0..1000 {
        assert!(limit.check(&limits(None, None), u32::MAX).is_ok());
    }
}

#[test]
fn requests_per_minute_bursts_then_refuses_with_the_wait() {
    let (limit, clock) = limiter();
    let cfg = limits(Some(60), None);
    for i in 0..60 {
        assert!(limit.check(&cfg, 0).is_ok(), "request {i} within the burst");
    }
    let refused = limit.check(&cfg, 0).unwrap_err();
    assert_eq!(refused.kind, LimitKind::Requests);
    assert_eq!(refused.limit, 60);
    assert_eq!(
        refused.retry_after,
        Duration::from_secs(1),
        "60/min refills one per second"
    );
    assert_eq!(refused.retry_after_secs(), 1);
    clock.advance(Duration::from_secs(1));
    assert!(limit.check(&cfg, 0).is_ok());
}

#[test]
fn tokens_per_minute_counts_the_estimate() {
    let (limit, clock) = limiter();
    let cfg = limits(None, Some(1000));
    assert!(limit.check(&cfg, 600).is_ok());
    let refused = limit.check(&cfg, 600).unwrap_err();
    assert_eq!(refused.kind, LimitKind::Tokens);
    // 200 tokens missing at 1000/min: 12 s.
    assert_eq!(refused.retry_after, Duration::from_secs(12));
    clock.advance(Duration::from_secs(12));
    assert!(limit.check(&cfg, 600).is_ok());
}

#[test]
fn a_request_larger_than_the_minute_passes_on_a_full_bucket_only() {
    let (limit, _) = limiter();
    let cfg = limits(None, Some(100));
    assert!(limit.check(&cfg, 5000).is_ok());
    assert!(limit.check(&cfg, 1).is_err());
}

#[test]
fn settle_charges_usage_beyond_the_estimate() {
    let (limit, _) = limiter();
    let cfg = limits(None, Some(1000));
    let reservation = limit.check(&cfg, 100).unwrap();
    assert_eq!(reservation.estimated(), 100);
    reservation.settle(900);
    assert!(
        limit.check(&cfg, 101).is_err(),
        "900 of 1000 used: 101 do not fit"
    );
    assert!(limit.check(&cfg, 100).is_ok(), "but 100 do");
}

#[test]
fn settle_below_the_estimate_charges_nothing_more() {
    let (limit, _) = limiter();
    let cfg = limits(None, Some(1000));
    limit.check(&cfg, 500).unwrap().settle(10);
    assert!(limit.check(&cfg, 500).is_ok());
}

#[test]
fn changed_config_starts_fresh_buckets() {
    let (limit, _) = limiter();
    let small = limits(Some(1), None);
    assert!(limit.check(&small, 0).is_ok());
    assert!(limit.check(&small, 0).is_err());
    assert!(limit.check(&limits(Some(2), None), 0).is_ok());
    assert!(limit.check(&limits(None, None), 0).is_ok());
}

#[test]
fn message_names_the_field_and_the_wait() {
    let refused = RateLimited {
        kind: LimitKind::Tokens,
        limit: 5000,
        retry_after: Duration::from_millis(2500),
    };
    assert_eq!(
        refused.to_string(),
        "local rate limit reached (5000 per minute, set by rate_limit.tokens_per_minute); retry after 3s"
    );
    let zero = RateLimited {
        retry_after: Duration::ZERO,
        ..refused
    };
    assert_eq!(zero.retry_after_secs(), 1, "Retry-After is never 0");
}

#[test]
fn estimates() {
    let cases = [
        ("empty", json!({}), 0),
        (
            "chat text",
            json!({"messages": [{"role": "user", "content": "abcdefgh"}]}),
            3,
        ),
        (
            "cap added",
            json!({"messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100}),
            102,
        ),
        (
            "newest cap wins",
            json!({"prompt": "abcd", "max_completion_tokens": 7, "max_tokens": 100}),
            8,
        ),
        (
            "image skipped",
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}
            ]}]}),
            6,
        ),
        (
            "embedding list",
            json!({"input": ["abcd", "efgh"], "model": "m"}),
            2,
        ),
        ("unicode counts characters", json!({"input": "ééééé"}), 2),
        (
            "huge cap saturates",
            json!({"max_tokens": u64::MAX}),
            u32::MAX,
        ),
    ];
    for (name, body, want) in cases {
        assert_eq!(estimate_tokens(&body), want, "case {name}");
    }
}
