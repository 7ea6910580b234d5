//! Live config: watches the `--config` file and swaps a new, valid version into the
//! process's `ArcSwap<Config>` without a restart. Also home of [`DirWatch`], the
//! directory watch that the key store (keys.rs) shares.
//!
//! The parent DIRECTORY is watched, not the file: a ConfigMap volume updates by swapping
//! its `..data` symlink, which never touches the `config.yaml` link itself. An event that
//! can change content (see [`changes_content`]), plus a slow periodic check for
//! filesystems that drop events, leads to re-reading the file; identical content is
//! ignored. The watch never wakes on reads (open, access, close without writing): the
//! watchers' own reads raise those, and reacting to them would loop at full CPU.
//! New content is parsed by [`config::load_file`]: on success it replaces the live
//! config, on failure the last good config stays in force and the error is logged once
//! as a warning naming the field. Either way the [`OnReload`] hook is told; the server's
//! hook ([`count_reloads`]) counts it in `holysheep_config_reloads_total{result}`.
//!
//! Not here: parsing and validation (config.rs), the first load at startup and starting
//! this watcher (server.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{self, Config, ConfigError};
use crate::metrics::{Metrics, ReloadResult};

/// Told about every reload: the new config once applied, or why the file was refused.
/// Runs on the watcher task; keep it short (count a metric, refresh model labels).
pub type OnReload = Box<dyn Fn(Result<&Config, &ConfigError>) + Send + Sync + 'static>;

/// An [`OnReload`] that counts reloads in `holysheep_config_reloads_total{result}`.
pub fn count_reloads(metrics: Metrics) -> OnReload {
    Box::new(move |result| {
        metrics.record_config_reload(ReloadResult::from_ok(result.is_ok()));
    })
}

/// How long a watcher waits after an event for the rest of the burst of one update
/// (a truncate then a write, or the several steps of a symlink swap).
pub const SETTLE: Duration = Duration::from_millis(100);

/// How the watcher paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadOptions {
    /// Re-read the file this often even without a filesystem event.
    pub poll_interval: Duration,
    /// After an event, wait this long for the burst of events of one update to end.
    pub settle: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(10),
            settle: SETTLE,
        }
    }
}

/// The running watcher. Dropping it stops watching.
#[derive(Debug)]
pub struct ConfigReloader {
    task: JoinHandle<()>,
}

impl Drop for ConfigReloader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigReloader {
    /// Starts watching `path` (the file `live` was loaded from). Must be called inside
    /// a tokio runtime. If the directory cannot be watched, a warning is logged and
    /// the periodic check alone keeps the config fresh.
    pub fn spawn(
        path: PathBuf,
        live: Arc<ArcSwap<Config>>,
        on_reload: OnReload,
        options: ReloadOptions,
    ) -> Self {
        // Watch first, then read the baseline: a change in between is not missed.
        let mut watch = DirWatch::start(&path, "config", options);
        let mut state = Reloader {
            baseline: std::fs::read(&path).ok(),
            path,
            live,
            on_reload,
        };
        let task = tokio::spawn(async move {
            loop {
                watch.changed().await;
                state.check();
            }
        });
        Self { task }
    }
}

/// Whether a filesystem event can change what a watched file holds: creation, removal,
/// renames, writes, metadata (a mode change can make a file readable) and a close after
/// writing. Opening, reading and closing without writing cannot; they are what the
/// watchers' own reads raise. `Other` stands for a lost-events rescan and `Any` for an
/// unknown event: both may hide a change, so they count.
pub fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Any
        | EventKind::Other => true,
    }
}

/// A watch on the directory holding one file plus a periodic re-check:
/// [`DirWatch::changed`] resolves when the file may have changed. Idle, it costs one
/// timer wake-up per poll interval.
pub struct DirWatch {
    /// Pokes from the watcher thread; `None` once there is no watcher.
    events: Option<mpsc::Receiver<()>>,
    /// Held so the watch lasts as long as this value.
    _watcher: Option<RecommendedWatcher>,
    poll: tokio::time::Interval,
    settle: Duration,
}

impl DirWatch {
    /// Starts watching the directory of `file`; `what` (`key`, `config`) names it in the
    /// warning logged when it cannot be watched (then only the periodic check remains).
    /// Must be called inside a tokio runtime.
    pub fn start(file: &Path, what: &'static str, options: ReloadOptions) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let watcher = watch_dir(file, what, move |event| {
            if changes_content(&event.kind) {
                // A full channel already holds a poke: this event is covered by it.
                let _ = tx.try_send(());
            }
        });
        // A zero period would make `interval` panic; no caller means "spin".
        let period = options.poll_interval.max(Duration::from_millis(1));
        // The first check is a period away: the caller has just read the file.
        let start = tokio::time::Instant::now() + period;
        let mut poll = tokio::time::interval_at(start, period);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            events: watcher.as_ref().map(|_| rx),
            _watcher: watcher,
            poll,
            settle: options.settle,
        }
    }

    /// Resolves after a content event (once its burst has settled) or a periodic tick.
    pub async fn changed(&mut self) {
        tokio::select! {
            Some(()) = next_event(&mut self.events) => {
                tokio::time::sleep(self.settle).await;
                if let Some(rx) = self.events.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            _ = self.poll.tick() => {}
        }
    }
}

/// Watches the directory holding `file` (non-recursively) and hands every event to
/// `on_event` on notify's thread. `None`, with a warning, when it cannot.
fn watch_dir(
    file: &Path,
    what: &'static str,
    on_event: impl Fn(&Event) + Send + 'static,
) -> Option<RecommendedWatcher> {
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    // Errors from the watcher thread are dropped: the periodic check covers what they hid.
    let handler = move |event: notify::Result<Event>| {
        if let Ok(event) = event {
            on_event(&event);
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        // Normal outside a pod (no Secret or ConfigMap volume there): not worth a warning.
        Err(_) if !dir.is_dir() => {
            tracing::debug!(
                watching = what,
                dir = %dir.display(),
                "directory absent; checking for it periodically"
            );
            None
        }
        Err(error) => {
            tracing::warn!(
                watching = what,
                dir = %dir.display(),
                %error,
                "cannot watch the directory; falling back to periodic checks"
            );
            None
        }
    }
}

struct Reloader {
    path: PathBuf,
    live: Arc<ArcSwap<Config>>,
    on_reload: OnReload,
    /// The content last looked at (applied or refused), so each version counts once.
    baseline: Option<Vec<u8>>,
}

impl Reloader {
    /// Re-reads the file and applies it if it changed.
    fn check(&mut self) {
        let content = match std::fs::read(&self.path) {
            Ok(content) => content,
            Err(source) => {
                // Not remembered as a baseline: a missing file may come back as it was.
                if self.baseline.take().is_some() {
                    let error = ConfigError::Read {
                        path: self.path.clone(),
                        source,
                    };
                    tracing::warn!(%error, "config file unreadable; keeping the previous config");
                    (self.on_reload)(Err(&error));
                }
                return;
            }
        };
        if self.baseline.as_deref() == Some(content.as_slice()) {
            return;
        }
        self.baseline = Some(content);
        match config::load_file(&self.path) {
            Ok(config) => {
                let config = Arc::new(config);
                self.live.store(Arc::clone(&config));
                tracing::info!(path = %self.path.display(), "config reloaded");
                (self.on_reload)(Ok(&config));
            }
            Err(error) => {
                tracing::warn!(%error, "config reload refused; keeping the previous config");
                (self.on_reload)(Err(&error));
            }
        }
    }
}

/// The next poke, or never once there is no watcher (a closed channel would otherwise
/// answer `None` at once, forever).
async fn next_event(events: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    let Some(rx) = events.as_mut() else {
        return std::future::pending().await;
    };
    let poked = rx.recv().await;
    if poked.is_none() {
        *events = None;
    }
    poked
}

#[cfg(test)]
#[path = "reload_tests.rs"]
mod tests;
