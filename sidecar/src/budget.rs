//! Spend budgets: USD per calendar window (hour, day, month, in UTC), counted by this
//! sidecar process alone or, with `budgets_store`, shared through Redis; checked before
//! a request goes upstream. The `--budget-usd-per-day` budget comes after the file's.
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
//! With `budgets_store` the spend is shared by every sidecar with the same budget key
//! ([`Budgets::admit_shared`]): the reservation is checked and added in Redis in one
//! atomic step, so concurrent requests across replicas overshoot no more than within
//! one process; settlements are pushed in the background (shared.rs, store.rs). When
//! the store fails, admission goes on from the last shared total plus this process's
//! own spend, which is pushed once the store answers again (fail-open). Spend still
//! unpushed at shutdown, or when a reload replaces or removes the store, is pushed to
//! that store by a bounded flush (shared.rs); what it cannot push is logged, in USD.
//!
//! Not here: the 429 body (error.rs), rewriting the model (proxy.rs), pricing (usage.rs),
//! the flags (flags.rs), Redis (store.rs).

mod flags;
mod shared;
mod store;
mod window;

pub use window::Window;

pub use flags::{
    BudgetFlags, BudgetKey, DEFAULT_BUDGET_KEY, MAX_BUDGET_KEY_BYTES, MAX_USD_PER_DAY,
    parse_usd_per_day,
};
pub use shared::{FLUSH_TIMEOUT, RETIRE_TIMEOUT};
pub use store::{COMMAND_TIMEOUT, EXPIRY_GRACE, PROBE_INTERVAL, StoreUrl};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::config::Config;
use crate::ratelimit::estimate_tokens;

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

/// Where a budget was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetOrigin {
    /// Position in the `budgets` list of the `--config` file.
    File(usize),
    /// `--budget-usd-per-day`.
    Flag,
}

impl std::fmt::Display for BudgetOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(index) => write!(f, "budgets[{index}]"),
            Self::Flag => f.write_str("--budget-usd-per-day"),
        }
    }
}

impl BudgetOrigin {
    /// What to raise to let traffic through.
    fn limit_field(self) -> String {
        match self {
            Self::File(index) => format!("budgets[{index}].usd"),
            Self::Flag => "--budget-usd-per-day".to_owned(),
        }
    }
}

/// A request refused by a `reject` budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "budget exceeded: {usd} USD per {} ({origin}, action reject) is spent; it resets in {}s, or raise {}",
    window.name(),
    retry_after.as_secs(),
    origin.limit_field()
)]
pub struct BudgetExceeded {
    /// Where the budget was configured.
    pub origin: BudgetOrigin,
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
    /// The store and its view, when `budgets_store` is set.
    shared: Option<shared::Shared>,
    /// Stores a reload replaced or removed, until their pending spend is pushed to them.
    retired: Vec<shared::Shared>,
}

/// USD as the store's integer micro-USD, clamped to +-1e9 USD per amount so that sums
/// of absurd costs (a broken usage report) stay far from overflowing.
fn to_micro(usd: f64) -> i64 {
    // NaN gives 0 (`as` saturates): no input panics.
    (usd.clamp(-1e9, 1e9) * 1e6).round() as i64
}

impl State {
    /// Whether `budget` is spent: on the shared view when there is a store.
    fn is_spent(&mut self, budget: &Budget, now: i64) -> bool {
        match self.shared.as_mut() {
            Some(shared) => shared.view(budget.window, now).total() >= to_micro(budget.usd),
            None => self.current(budget.window, now).usd >= budget.usd,
        }
    }

    /// The spend of `window` that admission reads, in USD, for the gauge.
    fn shown(&mut self, window: Window, now: i64) -> f64 {
        match self.shared.as_mut() {
            Some(shared) => shared.view(window, now).total() as f64 / 1e6,
            None => self.current(window, now).usd,
        }
    }

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
    store_up: Gauge,
    store_errors: Counter,
}

/// The spend of every window plus the budget metrics. Shared by all requests; clones
/// share the same counts.
#[derive(Debug, Clone)]
pub struct Budgets {
    state: Arc<Mutex<State>>,
    metrics: Arc<BudgetMetrics>,
    key: Arc<BudgetKey>,
    /// The day budget of `--budget-usd-per-day`.
    flag_budget: Option<Budget>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self::new(BudgetFlags::default())
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
    /// A reservation with no window charged (no budgets configured).
    fn nothing(budgets: &Budgets) -> Self {
        Self {
            state: Arc::clone(&budgets.state),
            metrics: Arc::clone(&budgets.metrics),
            charged: Vec::new(),
            estimate: 0.0,
        }
    }

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
            let same_window = slot.start == start;
            let delta = if same_window {
                cost - self.estimate
            } else {
                cost
            };
            slot.usd = (slot.usd + delta).max(0.0);
            if let Some(shared) = state.shared.as_mut() {
                // The estimate is in the shared count (or pending for it): correct it.
                let micro = if same_window {
                    to_micro(cost).saturating_sub(to_micro(self.estimate))
                } else {
                    to_micro(cost)
                };
                let view = shared.view(window, now);
                view.pending = view.pending.saturating_add(micro);
            }
            let spent = state.shown(window, now);
            self.metrics
                .spent
                .get_or_create(&WindowLabels { window })
                .set(spent);
        }
        if let Some(shared) = state.shared.as_ref() {
            shared.link.wake.notify_one();
        }
    }
}

impl Budgets {
    /// Budgets with the flags' key and extra day budget.
    pub fn new(flags: BudgetFlags) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                clock: Arc::new(SystemClock),
                spend: [Spend::default(); 3],
                shared: None,
                retired: Vec::new(),
            })),
            metrics: Arc::default(),
            key: Arc::new(flags.key),
            flag_budget: flags.usd_per_day.map(|usd| Budget {
                window: Window::Day,
                usd,
                action: Action::Reject,
            }),
        }
    }

    /// Registers `holysheep_budget_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "holysheep_budget_limit_usd",
            "Configured spend budget per calendar window (UTC), in USD",
            self.metrics.limit.clone(),
        );
        registry.register(
            "holysheep_budget_spent_usd",
            "USD counted in the current window, in-flight estimates included: by this sidecar, or with a budgets_store the shared total as last seen plus what this sidecar added since",
            self.metrics.spent.clone(),
        );
        registry.register(
            "holysheep_budget_exceeded",
            "Requests rejected or downgraded because a budget was spent",
            self.metrics.exceeded.clone(),
        );
        registry.register(
            "holysheep_budget_store_up",
            "1 while the budgets_store answers, 0 when it fails or none is configured",
            self.metrics.store_up.clone(),
        );
        registry.register(
            "holysheep_budget_store_errors",
            "Budget store commands that failed or timed out (spend was counted locally)",
            self.metrics.store_errors.clone(),
        );
    }

    /// Uses `clock` from now on (tests move time by hand).
    pub fn set_clock(&self, clock: Arc<dyn Clock>) {
        self.lock().clock = clock;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configured budgets: the file's, then the flag's.
    fn all<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = (BudgetOrigin, &'a Budget)> {
        let file = config.budgets.iter().enumerate();
        file.map(|(i, b)| (BudgetOrigin::File(i), b))
            .chain(self.flag_budget.iter().map(|b| (BudgetOrigin::Flag, b)))
    }

    fn any(&self, config: &Config) -> bool {
        !config.budgets.is_empty() || self.flag_budget.is_some()
    }

    /// Sets the limit and spent gauges of the configured windows, creates their exceeded
    /// counters at 0, and starts, replaces or stops the shared store to match
    /// `budgets_store` (at start and reload).
    pub fn observe_config(&self, config: &Config) {
        let mut state = self.lock();
        self.follow_store(&mut state, config.budgets_store.as_ref());
        let now = state.clock.now_unix();
        for window in Window::ALL {
            // The smallest limit of the window: the one that bites first.
            let limit = self
                .all(config)
                .filter(|(_, b)| b.window == window)
                .map(|(_, b)| b.usd)
                .reduce(f64::min);
            if let Some(limit) = limit {
                let labels = WindowLabels { window };
                self.metrics.limit.get_or_create(&labels).set(limit);
                let spent = state.shown(window, now);
                self.metrics.spent.get_or_create(&labels).set(spent);
            }
        }
        for (_, budget) in self.all(config) {
            // Known in advance: at 0 from start, so the first refusal shows in increase().
            let labels = ExceededLabels {
                window: budget.window,
                action: budget.action.label(),
            };
            let _ = self.metrics.exceeded.get_or_create(&labels);
        }
    }

    /// Connects to `wanted` unless already on it; `None` stops using a store.
    fn follow_store(&self, state: &mut State, wanted: Option<&StoreUrl>) {
        let current = state.shared.as_ref().map(|s| s.link.url());
        if current == wanted {
            return;
        }
        if let Some(old) = state.shared.take() {
            // Its spend not yet pushed goes to it in the background: a reload never
            // waits on Redis.
            shared::retire(&self.state, state, old);
        }
        self.metrics.store_up.set(0);
        let Some(url) = wanted else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(store = %url, "budget store not started: no async runtime; counting locally");
            return;
        }
        match store::Link::new(url, &self.key, Arc::clone(&self.metrics)) {
            Ok(link) => {
                let weak = Arc::downgrade(&self.state);
                state.shared = Some(shared::Shared::start(Arc::new(link), weak));
            }
            Err(error) => {
                tracing::warn!(store = %url, %error, "budget store not started; counting locally");
            }
        }
    }

    /// Applies the budgets to `spent` (whether a budget is spent): the first spent
    /// `reject` budget refuses; else the first spent `downgrade` one names the model.
    fn decide(
        &self,
        config: &Config,
        now: i64,
        mut spent: impl FnMut(&Budget) -> bool,
    ) -> Result<Option<String>, BudgetExceeded> {
        let mut downgrade_to = None;
        for (origin, budget) in self.all(config) {
            if !spent(budget) {
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
                        origin,
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
        Ok(downgrade_to)
    }

    /// The window kinds some budget uses.
    fn windows<'a>(&'a self, config: &'a Config) -> impl Iterator<Item = Window> + 'a {
        Window::ALL
            .into_iter()
            .filter(move |w| self.all(config).any(|(_, b)| b.window == *w))
    }

    /// Checks the budgets before a request goes upstream, on this process's count (or,
    /// with a store, on the last shared total plus this process's spend since). `model`
    /// is the model it would be sent to (after aliases), `body` its JSON body for the
    /// estimate. A spent `reject` budget refuses it; else a spent `downgrade` budget
    /// names the model to send instead. The estimate is reserved in every configured
    /// window.
    pub fn admit(
        &self,
        config: &Config,
        model: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Admission, BudgetExceeded> {
        if !self.any(config) {
            // The common case, on every request: no lock, no clock, no body parse.
            return Ok(Admission {
                downgrade_to: None,
                reservation: BudgetReservation::nothing(self),
            });
        }
        let mut state = self.lock();
        let now = state.clock.now_unix();
        let downgrade_to = self.decide(config, now, |b| state.is_spent(b, now))?;
        let sent = downgrade_to.as_deref().or(model);
        let estimate = estimate_usd(config, sent, body);
        let mut charged = Vec::new();
        for window in self.windows(config) {
            let slot = state.current(window, now);
            slot.usd += estimate;
            charged.push((window, slot.start));
            if let Some(shared) = state.shared.as_mut() {
                let view = shared.view(window, now);
                view.pending = view.pending.saturating_add(to_micro(estimate));
                shared.link.wake.notify_one();
            }
            let spent = state.shown(window, now);
            self.metrics
                .spent
                .get_or_create(&WindowLabels { window })
                .set(spent);
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

#[cfg(test)]
#[path = "budget/tests.rs"]
mod tests;
