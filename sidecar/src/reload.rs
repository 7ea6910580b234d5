//! Live config: watches the `--config` file and swaps a new, valid version into the
//! process's `ArcSwap<Config>` without a restart.
//!
//! The parent DIRECTORY is watched, not the file: a ConfigMap volume updates by swapping
//! its `..data` symlink, which never touches the `config.yaml` link itself. Any change in
//! the directory (plus a slow periodic check, for filesystems that drop events) leads
//! to re-reading the file; identical content is ignored. New content is parsed by
//! [`config::load_file`]: on success it replaces the live config, on failure the last
//! good config stays in force and the error is logged once as a warning naming the
//! field. Either way the [`OnReload`] hook is told; the server's hook ([`count_reloads`])
//! counts it in `holysheep_config_reloads_total{result}`.
//!
//! Not here: parsing and validation (config.rs), the first load at startup and starting
//! this watcher (server.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
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
            settle: Duration::from_millis(100),
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
        let (tx, rx) = mpsc::channel(1);
        let watcher = watch_dir(&path, tx);
        let state = Reloader {
            baseline: std::fs::read(&path).ok(),
            path,
            live,
            on_reload,
        };
        let task = tokio::spawn(state.run(rx, watcher, options));
        Self { task }
    }
}

/// Watches the directory holding `path`; every relevant event pokes `tx`.
fn watch_dir(path: &Path, tx: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let handler = move |event: notify::Result<Event>| {
        // Our own reads of the file raise access events; reacting to them would loop.
        if event.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already holds a poke: this event is covered by it.
            let _ = tx.try_send(());
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(
                dir = %dir.display(),
                %error,
                "cannot watch the config directory; falling back to periodic checks"
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
    async fn run(
        mut self,
        events: mpsc::Receiver<()>,
        // Held so the watch lasts as long as this task.
        watcher: Option<RecommendedWatcher>,
        options: ReloadOptions,
    ) {
        // Without a watcher the channel is closed: only the periodic check remains.
        let mut events = watcher.as_ref().map(|_| events);
        let mut poll = tokio::time::interval(options.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await; // the first tick is immediate; the baseline covers it
        loop {
            tokio::select! {
                Some(()) = next_event(&mut events) => {
                    tokio::time::sleep(options.settle).await;
                    if let Some(rx) = events.as_mut() {
                        while rx.try_recv().is_ok() {}
                    }
                }
                _ = poll.tick() => {}
            }
            self.check();
        }
    }

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
