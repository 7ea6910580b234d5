//! Shared budgets: this process's view of the store's windows, and the task that pushes
//! what this process charged and probes the store while it is down.
//!
//! Per window kind the view holds the last total Redis reported (`redis`), the spend
//! this process counted that Redis has not confirmed (`pending`: settle corrections,
//! refunds, and every reservation made while the store was down) and what is on its way
//! (`pushing`). Their sum is the spend admission compares with the limits while the
//! store is down, and what `holysheep_budget_spent_usd` shows: the store's total as last
//! seen plus what this sidecar added since. Pending spend of a window that has just
//! ended is kept in a backlog and pushed too; a window that ended more than
//! [`EXPIRY_GRACE`] ago is dropped (its key has expired).
//!
//! Nothing counted is dropped with the store: at shutdown [`Budgets::flush_store`] pushes
//! what is pending, bounded by [`FLUSH_TIMEOUT`]; a store a reload replaces or removes
//! is kept aside until a background flush (bounded by [`RETIRE_TIMEOUT`]) has pushed its
//! pending spend to it. One push at a time per store (`Link::push_turn`), so a flush
//! and the store task never send the same spend twice.
//!
//! Not here: the Redis commands (store.rs) and the decisions (budget.rs).

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::store::{self, COMMAND_TIMEOUT, Delta, EXPIRY_GRACE, Link, PROBE_INTERVAL, StoreError};
use super::{
    Action, Admission, BudgetExceeded, BudgetReservation, Budgets, State, Window, WindowLabels,
    estimate_usd, to_micro,
};
use crate::config::Config;

/// Bound on the push at shutdown. The drain (25 s), this and the final OTLP export (3 s)
/// stay inside Kubernetes' 30 s grace (server.rs shortens it after a drain that used its
/// whole grace).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a store replaced or removed by a reload is given to take its pending spend.
pub const RETIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between the push attempts of a flush while the store fails.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct View {
    pub start: i64,
    end: i64,
    /// The window's total in Redis when last seen (micro-USD).
    pub redis: i64,
    /// Counted here, not yet sent.
    pub pending: i64,
    /// Sent, not yet confirmed.
    pushing: i64,
}

impl View {
    pub fn total(&self) -> i64 {
        self.redis
            .saturating_add(self.pending)
            .saturating_add(self.pushing)
    }
}

/// The store in use, this process's view of it and its task (stopped on drop).
#[derive(Debug)]
pub(super) struct Shared {
    pub link: Arc<Link>,
    views: [View; 3],
    backlog: Vec<(Delta, i64)>,
    task: JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// Starts the store task for `link`. Must be called inside a tokio runtime.
    pub fn start(link: Arc<Link>, state: Weak<Mutex<State>>) -> Self {
        let task = tokio::spawn(run(Arc::clone(&link), state));
        Self {
            link,
            views: [View::default(); 3],
            backlog: Vec::new(),
            task,
        }
    }

    /// The view of `window` at `now`; a window that ended leaves its pending spend in
    /// the backlog.
    pub fn view(&mut self, window: Window, now: i64) -> &mut View {
        let (start, end) = window.bounds(now);
        let view = &mut self.views[window.index()];
        if view.start != start {
            if view.pending != 0 {
                let delta = Delta {
                    window,
                    start: view.start,
                    micro: view.pending,
                };
                self.backlog.push((delta, view.end));
            }
            *view = View {
                start,
                end,
                ..View::default()
            };
        }
        view
    }

    /// Everything to send: marks it as on its way.
    fn take_pending(&mut self, now: i64) -> Vec<(Delta, i64)> {
        // A window that ended since its last request goes to the backlog now: a retired
        // store sees no more requests, and the store in use may see none for a while.
        for window in Window::ALL {
            self.view(window, now);
        }
        let mut out = std::mem::take(&mut self.backlog);
        out.retain(|(_, end)| end.saturating_add(EXPIRY_GRACE) > now);
        for window in Window::ALL {
            let view = &mut self.views[window.index()];
            if view.pending != 0 && view.end > now {
                let delta = Delta {
                    window,
                    start: view.start,
                    micro: view.pending,
                };
                out.push((delta, view.end));
                view.pushing = view.pushing.saturating_add(view.pending);
                view.pending = 0;
            }
        }
        out
    }

    /// What [`Shared::take_pending`] would send plus what is on its way: the spend the
    /// store has not confirmed.
    fn unpushed(&self, now: i64) -> i64 {
        let backlog = self
            .backlog
            .iter()
            .filter(|(_, end)| end.saturating_add(EXPIRY_GRACE) > now)
            .map(|(d, _)| d.micro);
        let views = self
            .views
            .iter()
            .filter(|v| v.end.saturating_add(EXPIRY_GRACE) > now)
            .map(|v| v.pending.saturating_add(v.pushing));
        backlog.chain(views).fold(0, i64::saturating_add)
    }

    /// Applies the outcome of a push: the new totals, or the spend back to pending.
    fn pushed(&mut self, sent: &[(Delta, i64)], totals: Option<&[i64]>) {
        for (i, (delta, end)) in sent.iter().enumerate() {
            let view = &mut self.views[delta.window.index()];
            if view.start == delta.start {
                view.pushing = view.pushing.saturating_sub(delta.micro);
                match totals.and_then(|t| t.get(i)) {
                    Some(&total) => view.redis = total,
                    None => view.pending = view.pending.saturating_add(delta.micro),
                }
            } else if totals.is_none() {
                self.backlog.push((*delta, *end));
            }
        }
    }
}

/// The store task: waits for spend to push (or, while down, for the next probe), then
/// pushes everything pending in one pipeline. It ends when its store is dropped.
async fn run(link: Arc<Link>, state: Weak<Mutex<State>>) {
    let mut first = true;
    loop {
        if !first {
            if link.is_up() {
                link.wake.notified().await;
            } else {
                // While down, only the timer paces the probes; pokes wait for it.
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        }
        first = false;
        if !link.is_up() {
            match link.probe().await {
                Ok(()) => link.mark_up(),
                Err(error) => {
                    link.mark_down(&error);
                    continue;
                }
            }
        }
        let Some(state) = state.upgrade() else {
            return;
        };
        let _turn = link.push_turn.lock().await;
        let sent = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = state.clock.now_unix();
            match state.store_of(&link) {
                Some(shared) => shared.take_pending(now),
                // Dropped: this task is about to be stopped.
                None => return,
            }
        };
        if sent.is_empty() {
            continue;
        }
        let result = link.push(&sent).await;
        apply(&state, &link, &sent, result.as_deref().ok());
        match result {
            Ok(_) => link.mark_up(),
            Err(error) => link.mark_down(&error),
        }
    }
}

/// Applies a push's outcome to `link`'s store; the totals Redis reported (which include
/// the other sidecars' spend) are shown when it is the store in use.
fn apply(state: &Mutex<State>, link: &Arc<Link>, sent: &[(Delta, i64)], totals: Option<&[i64]>) {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let in_use = state
        .shared
        .as_ref()
        .is_some_and(|s| Arc::ptr_eq(&s.link, link));
    let Some(shared) = state.store_of(link) else {
        return;
    };
    shared.pushed(sent, totals);
    if in_use {
        for (delta, _) in sent {
            let view = &shared.views[delta.window.index()];
            if view.start == delta.start {
                link.show_spent(delta.window, view.total() as f64 / 1e6);
            }
        }
    }
}

/// What a flush did, in micro-USD.
#[derive(Debug)]
struct Flushed {
    pushed: i64,
    /// Counted here and still not in the store.
    unshared: i64,
    /// The last failure, when the store did not take everything.
    error: Option<StoreError>,
}

impl Flushed {
    /// One line: `pushed` (info) when the store took everything, else `unshared` (warn).
    fn log(&self, link: &Link, pushed: &str, unshared: &str) {
        if self.unshared == 0 {
            tracing::info!(store = %link.url(), pushed_usd = usd(self.pushed), "{pushed}");
        } else {
            tracing::warn!(
                store = %link.url(),
                pushed_usd = usd(self.pushed),
                unshared_usd = usd(self.unshared),
                error = self.error.as_ref().map(tracing::field::display),
                "{unshared}"
            );
        }
    }
}

/// Pushes everything `link`'s store has pending, again every [`RETRY_PAUSE`] while the
/// store fails; no attempt starts later than `bound` minus one [`COMMAND_TIMEOUT`], so
/// it returns within `bound`.
async fn flush(state: &Mutex<State>, link: &Arc<Link>, bound: Duration) -> Flushed {
    let last_start = Instant::now() + bound.saturating_sub(COMMAND_TIMEOUT);
    let mut pushed = 0_i64;
    let mut error = None;
    loop {
        // Waits for the store task's push in flight, if any (one bounded command).
        let Ok(turn) = tokio::time::timeout_at(last_start, link.push_turn.lock()).await else {
            break;
        };
        let sent = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = state.clock.now_unix();
            state
                .store_of(link)
                .map_or_else(Vec::new, |shared| shared.take_pending(now))
        };
        if sent.is_empty() {
            break;
        }
        let result = link.push(&sent).await;
        apply(state, link, &sent, result.as_deref().ok());
        drop(turn);
        match result {
            Ok(_) => {
                link.mark_up();
                let micro = sent
                    .iter()
                    .fold(0, |sum, (d, _)| d.micro.saturating_add(sum));
                pushed = pushed.saturating_add(micro);
                error = None;
            }
            Err(e) => {
                link.mark_down(&e);
                error = Some(e);
                if Instant::now() + RETRY_PAUSE >= last_start {
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    let unshared = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = state.clock.now_unix();
        state
            .store_of(link)
            .map_or(0, |shared| shared.unpushed(now))
    };
    Flushed {
        pushed,
        unshared,
        error,
    }
}

/// Keeps `old`, just replaced or removed by a reload, until a background flush of at
/// most [`RETIRE_TIMEOUT`] has pushed its pending spend to it, then drops it (which
/// stops its task). Logs one line.
pub(super) fn retire(owner: &Arc<Mutex<State>>, state: &mut State, old: Shared) {
    if tokio::runtime::Handle::try_current().is_err() {
        // Without a runtime nothing can push: its spend stays in the local count.
        return;
    }
    let link = Arc::clone(&old.link);
    link.retire();
    state.retired.push(old);
    let owner = Arc::clone(owner);
    tokio::spawn(async move {
        let flushed = flush(&owner, &link, RETIRE_TIMEOUT).await;
        owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retired
            .retain(|s| !Arc::ptr_eq(&s.link, &link));
        flushed.log(
            &link,
            "budget store replaced by a reload; the spend counted for it is pushed",
            "budget store replaced by a reload did not take the spend counted for it; that spend stays unshared",
        );
    });
}

fn usd(micro: i64) -> f64 {
    micro as f64 / 1e6
}

impl State {
    /// The store of `link`: the one in use or a retired one.
    fn store_of(&mut self, link: &Arc<Link>) -> Option<&mut Shared> {
        self.shared
            .iter_mut()
            .chain(self.retired.iter_mut())
            .find(|s| Arc::ptr_eq(&s.link, link))
    }
}

/// The flush at shutdown.
impl Budgets {
    /// Pushes the spend this sidecar counted and its stores have not confirmed (the one
    /// in use, and any a reload is still retiring), retrying while a store fails, for at
    /// most `bound` in all: call it once, after the drain, so nothing is added meanwhile.
    /// Logs one line per store; without a store, does nothing.
    pub async fn flush_store(&self, bound: Duration) {
        let links: Vec<Arc<Link>> = {
            let state = self.lock();
            let stores = state.shared.iter().chain(&state.retired);
            stores.map(|s| Arc::clone(&s.link)).collect()
        };
        let flushes = links.iter().map(|link| async move {
            let flushed = flush(&self.state, link, bound).await;
            (link, flushed)
        });
        for (link, flushed) in futures_util::future::join_all(flushes).await {
            flushed.log(
                link,
                "budget spend pushed to the store before exit",
                "budget store did not take the pending spend before exit; it stays unshared",
            );
        }
    }
}

/// Admission through the store.
impl Budgets {
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
        // Boxed: the store's round trip is the only wait here, and its state would
        // otherwise size every request's future, with or without a store.
        let reserve = plan.link.reserve(&plan.windows, to_micro(plan.estimate));
        match Box::pin(reserve).await {
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
        if !self.any(config) || config.budgets_store.is_none() {
            // No store: not even the lock, the local path takes it.
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
                        view.pending = view.pending.saturating_add(correction);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{BudgetKey, StoreUrl};

    /// A store nobody listens on: its task only fails its probes.
    fn shared() -> Shared {
        let url = StoreUrl::parse("redis://127.0.0.1:1/0").unwrap();
        let link = Link::new(&url, &BudgetKey::default(), Arc::default()).unwrap();
        Shared::start(Arc::new(link), Weak::new())
    }

    #[tokio::test]
    async fn pending_spend_survives_a_failed_push_and_a_window_change() {
        let mut s = shared();
        let t0 = 86_400 * 20_000 + 100;
        s.view(Window::Day, t0).pending += 5;
        let sent = s.take_pending(t0);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.micro, 5);
        assert_eq!(
            s.view(Window::Day, t0).total(),
            5,
            "on its way, still counted"
        );
        s.pushed(&sent, None);
        let view = *s.view(Window::Day, t0);
        assert_eq!(
            (view.pending, view.total()),
            (5, 5),
            "a failed push is retried"
        );

        let sent = s.take_pending(t0);
        s.pushed(&sent, Some(&[42]));
        let view = *s.view(Window::Day, t0);
        assert_eq!((view.redis, view.pending, view.total()), (42, 0, 42));

        // Spend left when the day ends is still pushed, to the day it belongs to...
        s.view(Window::Day, t0).pending += 7;
        let next_day = t0 + 86_400;
        assert_eq!(s.view(Window::Day, next_day).total(), 0);
        let sent = s.take_pending(next_day);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0.start, sent[0].0.micro), (t0 - 100, 7));
        // ...unless its key has expired by then.
        s.pushed(&sent, None);
        assert!(s.take_pending(next_day + EXPIRY_GRACE).is_empty());
    }

    #[tokio::test]
    async fn spend_of_a_window_that_ended_without_another_request_is_still_sent() {
        let mut s = shared();
        let t0 = 86_400 * 20_000 + 100;
        s.view(Window::Hour, t0).pending += 3;
        // No request since: the next push is the first to see the hour has ended.
        let later = t0 + 3_600;
        assert_eq!(s.unpushed(later), 3);
        let sent = s.take_pending(later);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].0.start, sent[0].0.micro), (t0 - 100, 3));
        s.pushed(&sent, Some(&[3]));
        assert_eq!(s.unpushed(later), 0);
    }
}
