//! Unit tests of local budgets: reservations, refunds and settlements across windows.

use super::*;

#[derive(Debug)]
struct At(std::sync::atomic::AtomicI64);

impl Clock for At {
    fn now_unix(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn spent(b: &Budgets, w: Window) -> f64 {
    let mut state = b.lock();
    let now = state.clock.now_unix();
    state.current(w, now).usd
}

#[test]
fn without_budgets_nothing_is_reserved() {
    let config =
        Config::from_yaml_str("prices:\n  m: {input: 1000000, output: 2000000}\n").unwrap();
    let b = Budgets::default();
    let body = br#"{"model":"m","prompt":"12345678","max_tokens":3}"#;
    let a = b.admit(&config, Some("m"), Some(body)).unwrap();
    assert!(a.downgrade_to.is_none());
    assert!(!a.reservation.charges_anything());
    assert_eq!(spent(&b, Window::Day), 0.0);
}

#[test]
fn estimates_are_reserved_refunded_and_settled_in_the_window_that_is_current() {
    let config = Config::from_yaml_str(
        "prices:\n  m: {input: 1000000, output: 2000000}\nbudgets:\n  - {window: day, usd: 100, action: reject}\n",
    )
    .unwrap();
    let b = Budgets::default();
    let clock = Arc::new(At(std::sync::atomic::AtomicI64::new(86_400 - 10)));
    b.set_clock(clock.clone());
    // 8 chars of prompt = 2 tokens, + max_tokens 3: 5 tokens at the dearer $2 each.
    let body = br#"{"model":"m","prompt":"12345678","max_tokens":3}"#;
    let a = b.admit(&config, Some("m"), Some(body)).unwrap();
    assert!((spent(&b, Window::Day) - 10.0).abs() < 1e-9);
    drop(a);
    assert_eq!(
        spent(&b, Window::Day),
        0.0,
        "a request that never ran costs nothing"
    );
    let a = b.admit(&config, Some("m"), Some(body)).unwrap();
    a.reservation.settle(4.0);
    assert!((spent(&b, Window::Day) - 4.0).abs() < 1e-9);
    // Admitted before midnight, ended after: the new day is charged the cost.
    let a = b.admit(&config, Some("m"), Some(body)).unwrap();
    clock.0.store(86_400, std::sync::atomic::Ordering::SeqCst);
    a.reservation.settle(7.0);
    assert!((spent(&b, Window::Day) - 7.0).abs() < 1e-9);
    // Unpriced model: nothing reserved.
    let a = b.admit(&config, Some("free"), Some(body)).unwrap();
    assert!((spent(&b, Window::Day) - 7.0).abs() < 1e-9);
    drop(a);
    assert!(b.admit(&Config::default(), None, None).is_ok());
}

#[test]
fn micro_usd_rounds_and_never_overflows() {
    assert_eq!(to_micro(19.0), 19_000_000);
    assert_eq!(to_micro(0.000_001_5), 2);
    assert_eq!(to_micro(f64::NAN), 0);
    assert_eq!(to_micro(f64::INFINITY), 1_000_000_000_000_000);
    assert_eq!(to_micro(-1e300), -1_000_000_000_000_000);
}
