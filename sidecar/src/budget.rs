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
//! With `budgets_store` the spend is shared by every sidecar with the same budget key
//! ([`Budgets::admit_shared`]): the reservation is checked and added in Redis in one
//! atomic step, so concurrent requests across replicas overshoot no more than within
//! one process; settlements are pushed in the background (shared.rs, store.rs). When
//! the store fails, admission goes on from the last shared total plus this process's
//! own spend, which is pushed once the store answers again (fail-open).
//!
//! Not here: the 429 body (error.rs), rewriting the model (proxy.rs), pricing (usage.rs),
//! the flags (flags.rs), Redis (store.rs).

mod flags;
mod shared;
mod store;

pub use flags::{
    BudgetFlags, BudgetKey, DEFAULT_BUDGET_KEY, MAX_BUDGET_KEY_BYTES, MAX_USD_PER_DAY,
    parse_usd_per_day,
};
pub use store::{COMMAND_TIMEOUT, EXPIRY_GRACE, PROBE_INTERVAL, StoreUrl};

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
}

/// USD as the store's integer micro-USD.
fn to_micro(usd: f64) -> i64 {
    // `as` saturates, and NaN gives 0: no input panics.
    (usd * 1e6).round() as i64
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
                    to_micro(cost) - to_micro(self.estimate)
                } else {
                    to_micro(cost)
                };
                shared.view(window, now).pending += micro;
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

    /// Sets the limit and spent gauges of the configured windows, and starts, replaces
    /// or stops the shared store to match `budgets_store` (at start and reload).
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
    }

    /// Connects to `wanted` unless already on it; `None` stops using a store.
    fn follow_store(&self, state: &mut State, wanted: Option<&StoreUrl>) {
        let current = state.shared.as_ref().map(|s| s.link.url());
        if current == wanted {
            return;
        }
        // Dropping the old store stops its task; its unpushed spend stays in the local count.
        state.shared = None;
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

    /// A reservation with no window charged (no budgets configured).
    fn nothing_charged(&self) -> BudgetReservation {
        BudgetReservation::nothing(self)
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
                reservation: self.nothing_charged(),
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
                shared.view(window, now).pending += to_micro(estimate);
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

    /// As [`Budgets::admit`], but with a store that answers the check and the reservation
    /// are one atomic step in Redis, bounded by [`COMMAND_TIMEOUT`]. Without a store, or
    /// while it is down, this is [`Budgets::admit`] and nothing waits on Redis.
    ///
    /// The estimate is of the model asked for: when a `downgrade` budget then sends a
    /// cheaper one, the reservation is the dearer estimate until the request settles.
    pub async fn admit_shared(
        &self,
        config: &Config,
        model: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<Admission, BudgetExceeded> {
        let Some(plan) = self.plan(config, model, body) else {
            return self.admit(config, model, body);
        };
        match plan
            .link
            .reserve(&plan.windows, to_micro(plan.estimate))
            .await
        {
            Ok((charged, before)) => {
                plan.link.mark_up();
                self.reserved(config, &plan, charged, &before)
            }
            Err(error) => {
                plan.link.mark_down(&error);
                self.admit(config, model, body)
            }
        }
    }

    /// What to ask the store, when there are budgets and a store that is up.
    fn plan(&self, config: &Config, model: Option<&str>, body: Option<&[u8]>) -> Option<Plan> {
        if !self.any(config) {
            return None;
        }
        let (link, now) = {
            let state = self.lock();
            let link = state.shared.as_ref().map(|s| Arc::clone(&s.link))?;
            (link, state.clock.now_unix())
        };
        if !link.is_up() {
            return None;
        }
        let windows = self
            .windows(config)
            .map(|window| {
                let (start, end) = window.bounds(now);
                let reject_limit = self
                    .all(config)
                    .filter(|(_, b)| b.window == window && b.action == Action::Reject)
                    .map(|(_, b)| to_micro(b.usd))
                    .min();
                store::WindowCharge {
                    window,
                    start,
                    end,
                    reject_limit,
                }
            })
            .collect();
        Some(Plan {
            link,
            windows,
            estimate: estimate_usd(config, model, body),
            now,
        })
    }

    /// Decides on the spend the store had before the request (the same comparison in
    /// micro-USD as the script's), and books the reservation locally.
    fn reserved(
        &self,
        config: &Config,
        plan: &Plan,
        charged: bool,
        before: &[i64],
    ) -> Result<Admission, BudgetExceeded> {
        let estimate = to_micro(plan.estimate);
        let spent_before = |window: Window| {
            let i = plan.windows.iter().position(|c| c.window == window);
            i.and_then(|i| before.get(i)).copied().unwrap_or(0)
        };
        let mut state = self.lock();
        let now = plan.now;
        let decision = self.decide(config, now, |b| spent_before(b.window) >= to_micro(b.usd));
        // Keep the estimate in the shared count only for an admitted request: a refusal
        // the script did not see (it cannot happen, as both compare the same integers)
        // is refunded, an admission it refused is charged through the pending spend.
        let correction = match (&decision, charged) {
            (Ok(_), true) | (Err(_), false) => 0,
            (Ok(_), false) => estimate,
            (Err(_), true) => -estimate,
        };
        let added = if charged { estimate } else { 0 };
        let mut reservation = BudgetReservation::nothing(self);
        reservation.estimate = plan.estimate;
        for c in &plan.windows {
            if let Some(shared) = state.shared.as_mut() {
                if Arc::ptr_eq(&shared.link, &plan.link) {
                    let view = shared.view(c.window, now);
                    if view.start == c.start {
                        view.redis = spent_before(c.window).saturating_add(added);
                        view.pending += correction;
                    }
                }
            }
            if decision.is_ok() {
                let slot = state.current(c.window, now);
                slot.usd += plan.estimate;
                reservation.charged.push((c.window, slot.start));
            }
            let spent = state.shown(c.window, now);
            self.metrics
                .spent
                .get_or_create(&WindowLabels { window: c.window })
                .set(spent);
        }
        if correction != 0 {
            plan.link.wake.notify_one();
        }
        drop(state);
        decision.map(|downgrade_to| Admission {
            downgrade_to,
            reservation,
        })
    }
}

/// One request's question to the store.
struct Plan {
    link: Arc<store::Link>,
    windows: Vec<store::WindowCharge>,
    estimate: f64,
    now: i64,
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
