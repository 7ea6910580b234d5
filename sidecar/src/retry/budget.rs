//! The retry budget: retries (and fallbacks) may be at most a share of recent requests,
//! so a failing upstream is not hammered by every client request multiplying itself.
//!
//! Built on tower's `TpsBudget` (the finagle/linkerd token bucket): each request deposits,
//! each retry withdraws, over a 10 s sliding window, plus a small floor of retries per
//! second so a pod with little traffic can still retry once. Not here: deciding whether
//! an outcome is worth retrying (the policy in retry.rs does that).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tower::retry::budget::{Budget, TpsBudget};

/// How long one deposit counts.
const WINDOW: Duration = Duration::from_secs(10);
/// Retries per second allowed on top of the ratio, so low traffic can still retry.
const MIN_RETRIES_PER_SEC: u32 = 1;
/// tower refuses ratios above this.
const MAX_RATIO: f64 = 1000.0;

/// A retry budget for one ratio; shared by all requests.
pub struct RetryBudget {
    ratio: f64,
    inner: TpsBudget,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("inner", &self.inner)
            .finish()
    }
}

impl RetryBudget {
    /// A budget allowing retries for `ratio` of recent requests (0.2: one retry per five
    /// requests) plus the floor. Out-of-range or NaN ratios are clamped to `0..=1000`.
    pub fn new(ratio: f64) -> Self {
        let ratio = clamp_ratio(ratio);
        Self {
            ratio,
            // tower takes an f32; for a clamped ratio the narrowing loses nothing that matters.
            inner: TpsBudget::new(WINDOW, MIN_RETRIES_PER_SEC, ratio as f32),
        }
    }

    /// The (clamped) ratio this budget was built with.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Counts one client request.
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry out of the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }
}

/// `ratio` limited to what tower accepts; NaN counts as 0.
fn clamp_ratio(ratio: f64) -> f64 {
    if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, MAX_RATIO)
    }
}

/// The process-wide budget that follows the live config: asking with a ratio other
/// than the current one (after a config reload) starts a fresh budget for that ratio.
#[derive(Debug)]
pub struct SharedRetryBudget {
    current: ArcSwap<RetryBudget>,
}

impl Default for SharedRetryBudget {
    /// Starts at the default `retry.budget_ratio`; the first request's config corrects it.
    fn default() -> Self {
        Self::new(crate::config::RetryConfig::default().budget_ratio)
    }
}

impl SharedRetryBudget {
    /// A shared budget starting at `ratio`.
    pub fn new(ratio: f64) -> Self {
        Self {
            current: ArcSwap::from_pointee(RetryBudget::new(ratio)),
        }
    }

    /// The budget for `ratio`, rebuilt if the ratio changed since the last call.
    pub fn get(&self, ratio: f64) -> Arc<RetryBudget> {
        let current = self.current.load_full();
        // Runs for every request: compare without building a budget (tower allocates one).
        if current.ratio() == clamp_ratio(ratio) {
            return current;
        }
        let fresh = Arc::new(RetryBudget::new(ratio));
        self.current.store(Arc::clone(&fresh));
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_bounds_retries_beyond_the_floor() {
        let budget = RetryBudget::new(0.2);
        // The floor: one retry per second of the window, with no request at all.
        let floor = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(floor, 10);
        for _ in 0..50 {
            budget.deposit();
        }
        let earned = (0..100).take_while(|_| budget.withdraw()).count();
        assert_eq!(earned, 10, "50 requests at 0.2 earn 10 retries");
    }

    #[tokio::test(start_paused = true)]
    async fn spent_budget_refills_after_the_window() {
        let budget = RetryBudget::new(0.0);
        while budget.withdraw() {}
        assert!(!budget.withdraw());
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert!(budget.withdraw(), "the floor comes back with a new window");
    }

    #[test]
    fn bad_ratios_are_clamped_not_panicking() {
        assert_eq!(RetryBudget::new(f64::NAN).ratio(), 0.0);
        assert_eq!(RetryBudget::new(-1.0).ratio(), 0.0);
        assert_eq!(RetryBudget::new(5000.0).ratio(), MAX_RATIO);
    }

    #[test]
    fn shared_budget_rebuilds_only_when_the_ratio_changes() {
        let shared = SharedRetryBudget::new(0.2);
        let a = shared.get(0.2);
        assert!(Arc::ptr_eq(&a, &shared.get(0.2)));
        let b = shared.get(0.5);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b.ratio(), 0.5);
    }
}
