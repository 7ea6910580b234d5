//! The shared spend store on Redis (`budgets_store` in the `--config` file): the I/O
//! half of shared budgets.
//!
//! Layout: one integer key per (budget key, window, window start) holding micro-USD,
//! `holysheep:budget:{<budget key>}:<window>:<start unix seconds>`. Integer micro-USD
//! rather than INCRBYFLOAT: integer adds are exact and commute, so the total does not
//! depend on the order in which replicas' charges land (a float sum does), and a Lua
//! script can compare them with limits exactly. The braces are a Redis Cluster hash tag:
//! the windows of one budget key share a slot, so one script can touch them all. Each
//! key expires [`EXPIRY_GRACE`] after its window ends (EXPIREAT with the same absolute
//! time on every write, so rewriting it is idempotent).
//!
//! Two operations: [`Link::reserve`] runs [`RESERVE`], which refuses when a `reject`
//! limit is reached and otherwise adds the request's estimate to every window, in one
//! atomic step, and returns the spend each window had before; [`Link::push`] adds
//! settled corrections (and spend counted during an outage) in one MULTI/EXEC pipeline.
//! Every command, waiting for a connection included, is bounded by [`COMMAND_TIMEOUT`].
//!
//! Health: the [`Link`] is up once a command succeeded and down from the first failure
//! until a probe (PING every [`PROBE_INTERVAL`], only while down) answers. Each change is
//! logged once; `holysheep_budget_store_up` and `holysheep_budget_store_errors_total`
//! show it. While down, callers count locally and nothing waits on Redis.
//!
//! Not here: the decisions and the local views (budget.rs, shared.rs).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;

use super::{BudgetMetrics, Window};

/// Bound on one Redis command, connecting included: a slow or unreachable Redis delays
/// a request by at most this, once per outage.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(150);
/// How often a down store is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a window's key outlives the window.
pub const EXPIRY_GRACE: i64 = 600;

/// Checks every `reject` limit against the spend before the request and, when none is
/// reached, adds the estimate to every window.
/// KEYS[i]: window i's spend (micro-USD). ARGV[1]: the estimate (micro-USD).
/// ARGV[2i]: window i's lowest reject limit (micro-USD, -1: none). ARGV[2i+1]: its expiry.
/// Returns {1 if the estimate was added else 0, spend of window 1 before, ...}.
const RESERVE: &str = r"
local estimate = tonumber(ARGV[1])
local before = {}
local spent = false
for i = 1, #KEYS do
  before[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  local limit = tonumber(ARGV[2 * i])
  if limit >= 0 and before[i] >= limit then spent = true end
end
if not spent then
  for i = 1, #KEYS do
    redis.call('INCRBY', KEYS[i], estimate)
    redis.call('EXPIREAT', KEYS[i], ARGV[2 * i + 1])
  end
end
table.insert(before, 1, spent and 0 or 1)
return before
";

/// A validated `budgets_store` URL: `redis://[:password@]HOST[:PORT][/DB]`.
/// [`fmt::Display`] hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&holysheep_common::redact_userinfo(&self.0))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl StoreUrl {
    /// Checks `text`; the message says what is wrong and what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        const FIX: &str = "use redis://HOST:PORT/DB, e.g. redis://redis.shop.svc:6379/0";
        let shown = holysheep_common::redact_userinfo(text);
        let url =
            url::Url::parse(text).map_err(|e| format!("`{shown}` is not a URL ({e}); {FIX}"))?;
        if url.scheme() != "redis" {
            return Err(format!(
                "`{shown}`: scheme {} is not supported (TLS to Redis is not either); {FIX}",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("`{shown}` names no host; {FIX}"));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(format!(
                "`{shown}`: the path must be a database number; {FIX}"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("`{shown}` has a query or fragment; {FIX}"));
        }
        redis::Client::open(text).map_err(|e| format!("`{shown}`: {e}; {FIX}"))?;
        Ok(Self(text.to_owned()))
    }
}

/// Why a store command failed (logged once per outage, never the password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis answered with an error, or the connection failed.
    #[error("budget store command failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within [`COMMAND_TIMEOUT`].
    #[error("budget store did not answer within {}ms", COMMAND_TIMEOUT.as_millis())]
    Timeout,
    /// The reply had an unexpected shape.
    #[error("budget store gave an unexpected reply: {0}")]
    Reply(&'static str),
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One window's part of a reservation.
#[derive(Debug, Clone, Copy)]
pub struct WindowCharge {
    /// The window kind.
    pub window: Window,
    /// Its start (unix seconds).
    pub start: i64,
    /// Its end (unix seconds).
    pub end: i64,
    /// Its lowest `reject` limit in micro-USD, if any.
    pub reject_limit: Option<i64>,
}

/// A correction to add to a window's shared spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    /// The window kind.
    pub window: Window,
    /// Its start (unix seconds).
    pub start: i64,
    /// Micro-USD to add (negative: a refund).
    pub micro: i64,
}

/// The connection to one store, its health and the budget key's name prefix.
pub struct Link {
    url: StoreUrl,
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
    health: AtomicU8,
    /// Pokes the store task: spend to push, or the link just went down.
    pub(super) wake: Notify,
    /// Held from taking the pending spend until the push's outcome is applied, by the
    /// store task and by a flush: one push at a time, so none is lost or sent twice.
    pub(super) push_turn: tokio::sync::Mutex<()>,
    /// Replaced by a reload: its health no longer shows in `holysheep_budget_store_up`
    /// and its failures are not counted in `holysheep_budget_store_errors_total`.
    retired: AtomicBool,
    metrics: Arc<BudgetMetrics>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to `url` for `key`; connects lazily. Must be called inside a tokio runtime.
    pub fn new(
        url: &StoreUrl,
        key: &super::BudgetKey,
        metrics: Arc<BudgetMetrics>,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.0.as_str())?;
        // One connection attempt per command: the probe paces retries, not the library.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            url: url.clone(),
            conn,
            prefix: format!("holysheep:budget:{{{}}}", key.escaped()),
            script: redis::Script::new(RESERVE),
            health: AtomicU8::new(UNKNOWN),
            wake: Notify::new(),
            push_turn: tokio::sync::Mutex::new(()),
            retired: AtomicBool::new(false),
            metrics,
        })
    }

    /// Shows `usd` as a window's spend (`holysheep_budget_spent_usd`).
    pub fn show_spent(&self, window: Window, usd: f64) {
        let labels = super::WindowLabels { window };
        self.metrics.spent.get_or_create(&labels).set(usd);
    }

    /// The store's URL (password hidden when displayed).
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The Redis key of a window.
    pub fn key(&self, window: Window, start: i64) -> String {
        format!("{}:{}:{start}", self.prefix, window.name())
    }

    /// Whether the last command (or probe) succeeded.
    pub fn is_up(&self) -> bool {
        self.health.load(Ordering::Acquire) == UP
    }

    /// From now on, its health is not the sidecar's (a reload replaced it).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Shows a command's outcome in the store metrics, unless retired.
    fn show_up(&self, up: bool) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        self.metrics.store_up.set(i64::from(up));
        if !up {
            self.metrics.store_errors.inc();
        }
    }

    /// Records a success; logs the end of an outage once.
    pub fn mark_up(&self) {
        let before = self.health.swap(UP, Ordering::AcqRel);
        self.show_up(true);
        match before {
            DOWN => tracing::info!(
                store = %self.url,
                "budget store reachable again; pushing the spend counted meanwhile"
            ),
            UNKNOWN => tracing::info!(store = %self.url, "budget store connected"),
            _ => {}
        }
    }

    /// Records a failure; logs the start of an outage once and wakes the store task so
    /// it starts probing.
    pub fn mark_down(&self, error: &StoreError) {
        let before = self.health.swap(DOWN, Ordering::AcqRel);
        self.show_up(false);
        if before != DOWN {
            tracing::warn!(
                store = %self.url,
                %error,
                "budget store unreachable; counting spend locally until it answers"
            );
            self.wake.notify_one();
        }
    }

    /// Runs [`RESERVE`] for `windows`: `Ok((charged, spend before per window))`.
    pub async fn reserve(
        &self,
        windows: &[WindowCharge],
        estimate: i64,
    ) -> Result<(bool, Vec<i64>), StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(estimate);
        for w in windows {
            invocation
                .key(self.key(w.window, w.start))
                .arg(w.reject_limit.unwrap_or(-1))
                .arg(w.end.saturating_add(EXPIRY_GRACE));
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = bounded(invocation.invoke_async(&mut conn)).await?;
        match reply.split_first() {
            Some((&charged, before)) if before.len() == windows.len() => {
                Ok((charged == 1, before.to_vec()))
            }
            _ => Err(StoreError::Reply(
                "RESERVE returned the wrong number of values",
            )),
        }
    }

    /// Adds `deltas` (and refreshes their expiry); returns each key's new total.
    pub async fn push(&self, deltas: &[(Delta, i64)]) -> Result<Vec<i64>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (d, end) in deltas {
            let key = self.key(d.window, d.start);
            pipe.cmd("INCRBY").arg(&key).arg(d.micro);
            pipe.cmd("EXPIREAT")
                .arg(&key)
                .arg(end.saturating_add(EXPIRY_GRACE))
                .ignore();
        }
        let mut conn = self.conn.clone();
        let totals: Vec<i64> = bounded(pipe.query_async(&mut conn)).await?;
        if totals.len() == deltas.len() {
            Ok(totals)
        } else {
            Err(StoreError::Reply(
                "INCRBY returned the wrong number of values",
            ))
        }
    }

    /// PING.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}

async fn bounded<T>(command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_checked_and_shown_without_password() {
        for ok in [
            "redis://redis.shop.svc:6379/0",
            "redis://127.0.0.1",
            "redis://:pw@r:6380/3",
        ] {
            let url = StoreUrl::parse(ok).unwrap();
            assert!(!url.to_string().contains("pw"), "{url}");
            assert!(!format!("{url:?}").contains("pw"));
        }
        for bad in [
            "redis.shop.svc:6379",
            "rediss://r:6379/0",
            "http://r/0",
            "redis:///0",
            "redis://r/zero",
            "redis://r/0?x=1",
            "redis://:secret@r/zero",
        ] {
            let err = StoreUrl::parse(bad).unwrap_err();
            assert!(err.contains("redis://HOST:PORT/DB"), "{bad}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
