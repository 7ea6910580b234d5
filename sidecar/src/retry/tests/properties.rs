//! Property tests: invariants of the policy over arbitrary settings and outcomes.

use super::*;
use proptest::prelude::*;

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::ConnectError),
        Just(Outcome::AttemptTimeout),
        (
            prop::sample::select(vec![200u16, 400, 429, 500, 502, 503, 504]),
            prop::option::of(0u64..5_000),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(code, after_ms, should_retry)| Outcome::Response {
                status: StatusCode::from_u16(code).unwrap(),
                retry_after: after_ms.map(Duration::from_millis),
                should_retry,
            }),
    ]
}

proptest! {
    #[test]
    fn backoff_stays_under_its_ceiling(
        base_ms in 0u64..10_000,
        max_ms in 0u64..60_000,
        retry in 0u32..100,
        seed in any::<u64>(),
    ) {
        let p = RetryConfig {
            base_backoff: Duration::from_millis(base_ms),
            max_backoff: Duration::from_millis(max_ms),
            ..policy()
        };
        let ceiling = Duration::from_millis(base_ms)
            .saturating_mul(1 << retry.saturating_sub(1).min(31))
            .min(Duration::from_millis(max_ms));
        let got = backoff(&p, retry, &mut StdRng::seed_from_u64(seed));
        prop_assert!(got <= ceiling, "{got:?} > {ceiling:?}");
    }

    #[test]
    fn retry_after_parsing_never_panics(value in ".{0,40}", ms in ".{0,20}") {
        let mut headers = HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(http::header::RETRY_AFTER, v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&ms) {
            headers.insert("retry-after-ms", v);
        }
        let _ = parse_retry_after(&headers, SystemTime::now());
    }

    /// Whatever the upstream does: at most `max_attempts` per model, the models in
    /// chain order, no pause past the deadline, and nothing after a final answer.
    #[test]
    fn decisions_respect_attempts_chain_and_deadline(
        outcomes in prop::collection::vec(outcome(), 1..40),
        max_attempts in 1u32..5,
        models in 1usize..4,
        seed in any::<u64>(),
    ) {
        let p = RetryConfig { max_attempts, ..policy() };
        let names: Vec<Arc<str>> = (0..models).map(|i| format!("m{i}").into()).collect();
        let start = Instant::now();
        let mut retry = RequestRetry::new(&p, generous(), names.clone(), true, start);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now = start;
        let mut on_model = 1;
        let mut index = 0;
        for outcome in outcomes {
            match retry.decide(outcome, now, &mut rng) {
                Decision::Return => {
                    let Outcome::Response { status, .. } = outcome else {
                        panic!("a transport failure was returned as an answer");
                    };
                    prop_assert!(!p.on_status.contains(&status.as_u16()));
                    break;
                }
                Decision::GiveUp(_) => break,
                Decision::Retry { after } => {
                    on_model += 1;
                    prop_assert!(on_model <= max_attempts);
                    now += after;
                    prop_assert!(now < start + p.deadline, "paused past the deadline");
                }
                Decision::Fallback { model, .. } => {
                    index += 1;
                    prop_assert_eq!(&model, &names[index]);
                    prop_assert!(outcome != Outcome::ConnectError);
                    on_model = 1;
                }
            }
            prop_assert_eq!(retry.attempt(), on_model);
        }
    }
}
