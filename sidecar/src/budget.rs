//! Local spend budgets: USD per calendar window (hour, day, month, in UTC), counted by
//! this sidecar process alone, checked before a request goes upstream.
//!
//! Spend is charged in two steps, like the token rate limit: [`Budgets::admit`] reserves
//! an estimate (the prompt text / 4 plus the completion cap, priced at the model's
//! dearer rate; 0 when the model has no price), and [`BudgetReservation::settle`]
//! replaces it with the cost the meter computed from the reported usage (the same number
//! as `holysheep_cost_usd_total`). A request is refused (or downgraded) once the spend
//! of its window, reservations of requests in flight included, has reached the limit;
//! requests already admitted are never cut, so concurrent requests can overshoot by
//! what they cost beyond their estimates.
//!
//! Spend is kept per window kind, not per budget: a reload that edits a limit keeps what
//! was counted. A window's spend starts again at 0 when the clock enters the next one.
//!
//! Not here: the 429 body (error.rs), rewriting the model (proxy.rs), pricing (usage.rs).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::atomic::AtomicU64;

use crate::config::Config;
use crate::ratelimit::estimate_tokens;

/// A calendar window in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// From minute 0 of each hour.
    Hour,
    /// From 00:00 UTC.
    Day,
    /// From 00:00 UTC on the 1st.
    Month,
}

impl EncodeLabelValue for Window {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.name())
    }
}

impl Window {
    const ALL: [Self; 3] = [Self::Hour, Self::Day, Self::Month];

    fn index(self) -> usize {
        match self {
            Self::Hour => 0,
            Self::Day => 1,
            Self::Month => 2,
        }
    }

    /// The name used in the config, labels and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// Start and end (unix seconds) of the window holding `now`.
    pub fn bounds(self, now: i64) -> (i64, i64) {
        match self {
            Self::Hour => {
                let start = now.div_euclid(3600) * 3600;
                (start, start + 3600)
            }
            Self::Day => {
                let start = now.div_euclid(86_400) * 86_400;
                (start, start + 86_400)
            }
            Self::Month => {
                let (y, m, _) = civil_from_days(now.div_euclid(86_400));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * 86_400,
                    days_from_civil(ny, nm, 1) * 86_400,
                )
            }
        }
    }
}

/// What happens to requests once a budget is spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// 429 `budget_exceeded`.
    Reject,
    /// The request goes to this model instead.
    Downgrade(String),
}

impl Action {
    fn label(&self) -> ActionLabel {
        match self {
            Self::Reject => ActionLabel::Reject,
            Self::Downgrade(_) => ActionLabel::Downgrade,
        }
    }
}

/// One configured budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// The calendar window.
    pub window: Window,
    /// The limit in USD.
    pub usd: f64,
    /// What to do past it.
    pub action: Action,
}

/// A request refused by a `reject` budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "budget exceeded: {usd} USD per {} (budgets[{index}], action reject) is spent; it resets in {}s, or raise budgets[{index}].usd",
    window.name(),
    retry_after.as_secs()
)]
pub struct BudgetExceeded {
    /// Position in the `budgets` list.
    pub index: usize,
    /// Its window.
    pub window: Window,
    /// Its limit.
    pub usd: f64,
    /// Until the window resets.
    pub retry_after: Duration,
}

/// The UTC clock windows are read from; tests set their own.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the unix epoch.
    fn now_unix(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Spend {
    start: i64,
    usd: f64,
}

#[derive(Debug)]
struct State {
    clock: Arc<dyn Clock>,
    spend: [Spend; 3],
}

impl State {
    /// The spend of `window` now, reset when a new window has begun.
    fn current(&mut self, window: Window, now: i64) -> &mut Spend {
        let (start, _) = window.bounds(now);
        let slot = &mut self.spend[window.index()];
        if slot.start != start {
            *slot = Spend { start, usd: 0.0 };
        }
        slot
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WindowLabels {
    window: Window,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ActionLabel {
    Reject,
    Downgrade,
}

impl EncodeLabelValue for ActionLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Reject => "reject",
            Self::Downgrade => "downgrade",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ExceededLabels {
    window: Window,
    action: ActionLabel,
}

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Default)]
struct BudgetMetrics {
    limit: Family<WindowLabels, FloatGauge>,
    spent: Family<WindowLabels, FloatGauge>,
    exceeded: Family<ExceededLabels, Counter>,
}

/// The spend of every window plus the budget metrics. Shared by all requests; clones
/// share the same counts.
#[derive(Debug, Clone)]
pub struct Budgets {
    state: Arc<Mutex<State>>,
    metrics: Arc<BudgetMetrics>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                clock: Arc::new(SystemClock),
                spend: [Spend::default(); 3],
            })),
            metrics: Arc::default(),
        }
    }
}

/// How a request was admitted.
#[derive(Debug)]
pub struct Admission {
    /// The model to send instead, when a `downgrade` budget is spent.
    pub downgrade_to: Option<String>,
    /// The estimate to settle with the real cost.
    pub reservation: BudgetReservation,
}

/// The USD a request was admitted with; settle it with the real cost when known.
#[derive(Debug)]
pub struct BudgetReservation {
    state: Arc<Mutex<State>>,
    metrics: Arc<BudgetMetrics>,
    /// Window starts at admission, per window kind, for the windows charged.
    charged: Vec<(Window, i64)>,
    estimate: f64,
}

impl Drop for BudgetReservation {
    /// A request refused after admission (e.g. by the rate limit) never ran: no cost.
    fn drop(&mut self) {
        self.apply(0.0);
    }
}

impl BudgetReservation {
    /// Whether a window was charged, i.e. there is anything to settle.
    pub fn charges_anything(&self) -> bool {
        !self.charged.is_empty()
    }

    /// Replaces the estimate by `cost_usd` (0 when the response reported no usage or the
    /// model has no price). A window that ended meanwhile keeps the estimate and the
    /// current one is charged the full cost: spend lands where it is known.
    pub fn settle(mut self, cost_usd: f64) {
        self.apply(cost_usd);
    }

    /// Charges once; later calls (the drop after a settle) do nothing.
    fn apply(&mut self, cost_usd: f64) {
        let charged = std::mem::take(&mut self.charged);
        if charged.is_empty() {
            return;
        }
        let cost = if cost_usd.is_finite() { cost_usd } else { 0.0 };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = state.clock.now_unix();
        for (window, start) in charged {
            let slot = state.current(window, now);
            let delta = if slot.start == start {
                cost - self.estimate
            } else {
                cost
            };
            slot.usd = (slot.usd + delta).max(0.0);
            let spent = slot.usd;
            self.metrics
                .spent
                .get_or_create(&WindowLabels { window })
                .set(spent);
        }
    }
}

impl Budgets {
    /// Registers `holysheep_budget_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "holysheep_budget_limit_usd",
            "Configured spend budget per calendar window (UTC), in USD",
            self.metrics.limit.clone(),
        );
        registry.register(
            "holysheep_budget_spent_usd",
            "USD counted in the current window by this sidecar, in-flight estimates included",
            self.metrics.spent.clone(),
        );
        registry.register(
            "holysheep_budget_exceeded",
            "Requests rejected or downgraded because a budget was spent",
            self.metrics.exceeded.clone(),
        );
    }

    /// Uses `clock` from now on (tests move time by hand).
    pub fn set_clock(&self, clock: Arc<dyn Clock>) {
        self.lock().clock = clock;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the limit and spent gauges of the configured windows and creates their
    /// exceeded counters at 0 (at start and reload).
    pub fn observe_config(&self, config: &Config) {
        let mut state = self.lock();
        let now = state.clock.now_unix();
        for window in Window::ALL {
            // The smallest limit of the window: the one that bites first.
            let limit = config
                .budgets
                .iter()
                .filter(|b| b.window == window)
                .map(|b| b.usd)
                .reduce(f64::min);
            if let Some(limit) = limit {
                let labels = WindowLabels { window };
                self.metrics.limit.get_or_create(&labels).set(limit);
                let spent = state.current(window, now).usd;
                self.metrics.spent.get_or_create(&labels).set(spent);
            }
        }
        for budget in &config.budgets {
            // Known in advance: at 0 from start, so the first refusal shows in increase().
            let labels = ExceededLabels {
                window: budget.window,
                action: budget.action.label(),
            };
            let _ = self.metrics.exceeded.get_or_create(&labels);
        }
    }

    /// A reservation with no window charged (no budgets configured).
    fn nothing_charged(&self) -> BudgetReservation {
        BudgetReservation {
            state: Arc::clone(&self.state),
            metrics: Arc::clone(&self.metrics),
            charged: Vec::new(),
            estimate: 0.0,
        }
    }

    /// Checks the budgets before a request goes upstream. `model` is the model it would
    /// be sent to (after aliases), `body` its JSON body for the estimate. A spent
    /// `reject` budget refuses it; else a spent `downgrade` budget names the model to
    /// send instead. The estimate is reserved in every configured window.
    pub fn admit(
        &self,
        config: &Config,
        model: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Admission, BudgetExceeded> {
        if config.budgets.is_empty() {
            // The common case, on every request: no lock, no clock, no body parse.
            return Ok(Admission {
                downgrade_to: None,
                reservation: self.nothing_charged(),
            });
        }
        let mut state = self.lock();
        let now = state.clock.now_unix();
        let mut downgrade_to = None;
        for (index, budget) in config.budgets.iter().enumerate() {
            if state.current(budget.window, now).usd < budget.usd {
                continue;
            }
            self.metrics
                .exceeded
                .get_or_create(&ExceededLabels {
                    window: budget.window,
                    action: budget.action.label(),
                })
                .inc();
            match &budget.action {
                Action::Reject => {
                    let (_, end) = budget.window.bounds(now);
                    let secs = u64::try_from(end.saturating_sub(now)).unwrap_or(0).max(1);
                    return Err(BudgetExceeded {
                        index,
                        window: budget.window,
                        usd: budget.usd,
                        retry_after: Duration::from_secs(secs),
                    });
                }
                Action::Downgrade(to) => {
                    downgrade_to.get_or_insert_with(|| to.clone());
                }
            }
        }
        let sent = downgrade_to.as_deref().or(model);
        let estimate = estimate_usd(config, sent, body);
        let mut charged = Vec::new();
        for window in Window::ALL {
            if config.budgets.iter().any(|b| b.window == window) {
                let slot = state.current(window, now);
                slot.usd += estimate;
                charged.push((window, slot.start));
                let spent = slot.usd;
                self.metrics
                    .spent
                    .get_or_create(&WindowLabels { window })
                    .set(spent);
            }
        }
        Ok(Admission {
            downgrade_to,
            reservation: BudgetReservation {
                state: Arc::clone(&self.state),
                metrics: Arc::clone(&self.metrics),
                charged,
                estimate,
            },
        })
    }
}

/// The estimated tokens priced at the model's dearer rate; 0 when unpriced.
fn estimate_usd(config: &Config, model: Option<&str>, body: Option<&[u8]>) -> f64 {
    let (Some(price), Some(body)) = (model.and_then(|m| config.prices.get(m)), body) else {
        return 0.0;
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return 0.0;
    };
    let tokens = f64::from(estimate_tokens(&json));
    tokens * price.input.max(price.output) / 1_000_000.0
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
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
    fn month_bounds_cross_years_and_leap_days() {
        // 2024-02-29 12:00 UTC.
        let t = 1_709_208_000;
        let (start, end) = Window::Month.bounds(t);
        assert_eq!(start, 1_706_745_600); // 2024-02-01
        assert_eq!(end, 1_709_251_200); // 2024-03-01
        // 2026-12-31 23:59:59 UTC.
        let (start, end) = Window::Month.bounds(1_798_761_599);
        assert_eq!(start, 1_796_083_200); // 2026-12-01
        assert_eq!(end, 1_798_761_600); // 2027-01-01
        assert_eq!(Window::Day.bounds(86_399), (0, 86_400));
        assert_eq!(Window::Hour.bounds(3_600), (3_600, 7_200));
    }
}
