//! The HolySheep API key: loaded from the key file (or env), re-read on change, redacted.
//!
//! What it does: reads `--api-key-file` (trimmed); when the file is absent at start, uses
//! `HOLYSHEEP_API_KEY`. It watches the file's DIRECTORY with `notify`, because Kubernetes
//! Secret volumes swap a `..data` symlink atomically (the `api-key` path itself never
//! changes), and re-reads on any event in it, plus a cheap periodic re-check as a safety
//! net for missed events. The key is held as a [`SecretString`] next to its precomputed,
//! sensitive-marked `Authorization` header, so the hot path only clones a refcount.
//!
//! What it does not do: log, print or expose the key (Debug is redacted). Readiness is
//! "a key is loaded"; once loaded, a key is only replaced by another valid key: a file
//! that is briefly missing, empty or unreadable keeps the previous key, so readiness
//! cannot flap during a rotation.
//!
//! Failed reloads are counted for `holysheep_key_reloads_total{result="failure"}`: a key
//! file that exists but is empty, holds characters not allowed in a header, or cannot be
//! read. A missing file is not a failure (the env fallback or "no key yet" applies, and
//! the kubelet's swap can make it briefly absent). The count is edge-triggered: a file
//! that stays bad is counted once, not at every re-check or watch event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use notify::Watcher;
use secrecy::{ExposeSecret, SecretString};

/// How often the key file is re-checked even without a watch event.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Where the key comes from.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// The key file (`--api-key-file`).
    pub file: PathBuf,
    /// `HOLYSHEEP_API_KEY`, used only when the file is absent.
    pub env_key: Option<SecretString>,
}

impl KeySource {
    /// The key file plus the `HOLYSHEEP_API_KEY` value of this process's environment.
    pub fn from_env(file: PathBuf) -> Self {
        let env_key = std::env::var(crate::config::API_KEY_ENV)
            .ok()
            .map(SecretString::from);
        Self { file, env_key }
    }
}

/// A loaded key and the `Authorization` header built from it.
pub struct ApiKey {
    secret: SecretString,
    header: HeaderValue,
}

impl ApiKey {
    /// Builds a key from raw text (trimmed). `None` when empty or not a valid header value.
    pub fn new(raw: &str) -> Option<Self> {
        let key = raw.trim();
        if key.is_empty() {
            return None;
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
        header.set_sensitive(true);
        Some(Self {
            secret: SecretString::from(key),
            header,
        })
    }

    /// `Bearer <key>`, marked sensitive so HTTP/2 never indexes it and Debug hides it.
    pub fn authorization(&self) -> HeaderValue {
        self.header.clone()
    }

    fn same_as(&self, other: &ApiKey) -> bool {
        self.secret.expose_secret() == other.secret.expose_secret()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

/// Where a load came from; logged instead of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The key file.
    File,
    /// `HOLYSHEEP_API_KEY`.
    Env,
}

/// The live key, shared by the proxy and readiness.
#[derive(Debug)]
pub struct KeyStore {
    source: KeySource,
    current: ArcSwapOption<ApiKey>,
    /// Count of key changes; a watch so tests and readiness waiters need not poll.
    changes: tokio::sync::watch::Sender<u64>,
    /// Count of failed reloads (a bad key file), edge-triggered by `last_failed`.
    failures: AtomicU64,
    /// Whether the last read of an existing key file failed; a good key clears it.
    last_failed: AtomicBool,
}

impl KeyStore {
    /// Creates the store and does the first load (no key is not an error: the sidecar
    /// starts, answers 503 and is not ready).
    pub fn load(source: KeySource) -> Arc<Self> {
        let store = Arc::new(Self {
            source,
            current: ArcSwapOption::empty(),
            changes: tokio::sync::watch::Sender::new(0),
            failures: AtomicU64::new(0),
            last_failed: AtomicBool::new(false),
        });
        store.reload();
        if store.current().is_none() {
            tracing::warn!(
                file = %store.source.file.display(),
                "no API key: key file absent or empty and HOLYSHEEP_API_KEY unset; answering 503"
            );
        }
        store
    }

    /// The current key, if any.
    pub fn current(&self) -> Option<Arc<ApiKey>> {
        self.current.load_full()
    }

    /// Whether a key is loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// How many times the key changed (first load included). Tests wait on it.
    pub fn changes(&self) -> u64 {
        *self.changes.borrow()
    }

    /// How many times a reload found a bad key file (existing but empty, not a valid
    /// header value, or unreadable), the first load included. A file that stays bad
    /// counts once; it counts again only after a good key was read in between.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// A receiver of the change count, for waiting on the next reload without polling.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Resolves once a key is loaded (immediately if one already is).
    pub async fn wait_loaded(&self) {
        let mut rx = self.changes.subscribe();
        // The sender lives in `self`, so the channel cannot close while we borrow it.
        let _ = rx.wait_for(|_| self.is_loaded()).await;
    }

    /// Re-reads the source; swaps in a new valid key, keeps the old one otherwise.
    /// Returns whether the key changed.
    pub fn reload(&self) -> bool {
        let (key, origin) = match read_source(&self.source) {
            Read::Key(key, origin) => (key, origin),
            Read::Nothing => return false,
            Read::BadFile => {
                // Only the first failure of a streak counts: the periodic re-check and
                // every watch event re-read a file that stays bad.
                if !self.last_failed.swap(true, Ordering::Relaxed) {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
                return false;
            }
        };
        self.last_failed.store(false, Ordering::Relaxed);
        let unchanged = self
            .current
            .load()
            .as_ref()
            .is_some_and(|old| old.same_as(&key));
        if unchanged {
            return false;
        }
        self.current.store(Some(Arc::new(key)));
        self.changes.send_modify(|n| *n += 1);
        tracing::info!(?origin, file = %self.source.file.display(), "API key loaded");
        true
    }

    /// Watches the key file's directory and re-reads on events and every
    /// `recheck` (normally [`RECHECK_INTERVAL`]). Runs until the returned handle is aborted.
    pub fn spawn_watcher(self: &Arc<Self>, recheck: Duration) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = watch_dir(&self.source.file, tx);
        let store = Arc::clone(self);
        tokio::spawn(async move {
            // Keep the watcher alive as long as the task runs.
            let _watcher = watcher;
            let mut tick = tokio::time::interval(recheck);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    event = rx.recv() => if event.is_none() { break },
                    _ = tick.tick() => {}
                }
                // Coalesce a burst of events (a symlink swap makes several) into one read.
                while rx.try_recv().is_ok() {}
                store.reload();
            }
            // Watcher gone (dir unwatchable): keep the periodic safety net alone.
            loop {
                tick.tick().await;
                store.reload();
            }
        })
    }
}

/// What one read of the key source found.
enum Read {
    /// A valid key.
    Key(ApiKey, Origin),
    /// No key file and no usable env key: not a failure (nothing was provided).
    Nothing,
    /// The key file exists but is empty, invalid as a header value, or unreadable.
    BadFile,
}

fn read_source(source: &KeySource) -> Read {
    match std::fs::read_to_string(&source.file) {
        Ok(text) => match ApiKey::new(&text) {
            Some(key) => Read::Key(key, Origin::File),
            None => {
                tracing::warn!(
                    file = %source.file.display(),
                    "key file is empty or holds characters not allowed in an HTTP header; ignored"
                );
                Read::BadFile
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match source
                .env_key
                .as_ref()
                .and_then(|env| ApiKey::new(env.expose_secret()))
            {
                Some(key) => Read::Key(key, Origin::Env),
                None => Read::Nothing,
            }
        }
        Err(e) => {
            tracing::warn!(file = %source.file.display(), error = %e, "failed to read key file");
            Read::BadFile
        }
    }
}

/// Starts a directory watch; `None` (periodic re-check only) when it cannot.
fn watch_dir(
    file: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // The receiver only goes away when the task ends; nothing to do then.
            let _ = tx.send(());
        }
    })
    .inspect_err(|e| tracing::warn!(error = %e, "cannot create file watcher; polling only"))
    .ok()?;
    match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch key directory; polling");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(file: PathBuf, env: Option<&str>) -> KeySource {
        KeySource {
            file,
            env_key: env.map(SecretString::from),
        }
    }

    #[test]
    fn file_is_trimmed_and_wins_over_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        std::fs::write(&file, "  sk-file\n").unwrap();
        let store = KeyStore::load(source(file, Some("sk-env")));
        assert_eq!(store.current().unwrap().authorization(), "Bearer sk-file");
        assert!(store.is_loaded());
        assert_eq!(store.changes(), 1);
    }

    #[test]
    fn env_is_used_when_the_file_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::load(source(dir.path().join("nope"), Some("sk-env")));
        assert_eq!(store.current().unwrap().authorization(), "Bearer sk-env");
    }

    #[test]
    fn no_key_anywhere_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        assert!(!KeyStore::load(source(file.clone(), None)).is_loaded());
        std::fs::write(&file, " \n").unwrap();
        assert!(!KeyStore::load(source(file, Some(""))).is_loaded());
    }

    #[test]
    fn bad_or_missing_file_keeps_the_previous_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        std::fs::write(&file, "sk-1").unwrap();
        let store = KeyStore::load(source(file.clone(), None));
        std::fs::write(&file, "").unwrap();
        assert!(!store.reload());
        std::fs::write(&file, "sk\u{1}bad").unwrap();
        assert!(!store.reload());
        std::fs::remove_file(&file).unwrap();
        assert!(!store.reload());
        assert_eq!(store.current().unwrap().authorization(), "Bearer sk-1");
        std::fs::write(&file, "sk-2").unwrap();
        assert!(store.reload());
        assert_eq!(store.current().unwrap().authorization(), "Bearer sk-2");
        assert_eq!(store.changes(), 2);
    }

    #[test]
    fn a_bad_file_counts_one_failure_per_streak_and_keeps_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        std::fs::write(&file, "sk-1").unwrap();
        let store = KeyStore::load(source(file.clone(), None));
        assert_eq!(store.failures(), 0);

        // A bad rotation, re-read by several watch events and periodic re-checks.
        std::fs::write(&file, "").unwrap();
        for _ in 0..3 {
            assert!(!store.reload());
        }
        // Still bad, in another way: the same streak, not a new failure.
        std::fs::write(&file, "sk\u{1}bad").unwrap();
        assert!(!store.reload());
        assert_eq!(store.failures(), 1, "a file stuck bad counts once");
        assert_eq!(store.current().unwrap().authorization(), "Bearer sk-1");
        assert_eq!(store.changes(), 1);

        // A good key ends the streak; a later bad rotation counts again.
        std::fs::write(&file, "sk-2").unwrap();
        assert!(store.reload());
        std::fs::write(&file, " \n").unwrap();
        assert!(!store.reload());
        assert!(!store.reload());
        assert_eq!(store.failures(), 2);
        assert_eq!(store.current().unwrap().authorization(), "Bearer sk-2");
    }

    #[test]
    fn re_reading_the_same_good_key_also_ends_a_failure_streak() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        std::fs::write(&file, "sk-1").unwrap();
        let store = KeyStore::load(source(file.clone(), None));
        std::fs::write(&file, "").unwrap();
        store.reload();
        // The Secret is put back to the very key in force: no change, but good again.
        std::fs::write(&file, "sk-1").unwrap();
        assert!(!store.reload());
        std::fs::write(&file, "").unwrap();
        store.reload();
        assert_eq!(store.failures(), 2);
        assert_eq!(store.changes(), 1);
    }

    #[test]
    fn an_unreadable_key_file_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        std::fs::write(&file, "sk-1").unwrap();
        let store = KeyStore::load(source(file.clone(), None));
        // A directory in place of the file: it exists but cannot be read as text
        // (works as root too, unlike a 0000 mode).
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert!(!store.reload());
        assert_eq!(store.failures(), 1);
        assert_eq!(store.current().unwrap().authorization(), "Bearer sk-1");
    }

    #[test]
    fn an_absent_file_is_never_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        // Absent with the env fallback, at start and on re-checks.
        let with_env = KeyStore::load(source(file.clone(), Some("sk-env")));
        assert!(!with_env.reload());
        assert_eq!(with_env.failures(), 0);
        // Absent with no env key at all: not loaded, but nothing bad was provided.
        let without = KeyStore::load(source(file.clone(), None));
        assert!(!without.reload());
        assert_eq!(without.failures(), 0);
        // A good file that then disappears (kubelet swap, env fallback) is not one either.
        std::fs::write(&file, "sk-file").unwrap();
        assert!(with_env.reload());
        std::fs::remove_file(&file).unwrap();
        assert!(with_env.reload(), "back to the env key");
        assert_eq!(with_env.failures(), 0);
    }

    #[test]
    fn a_bad_file_at_start_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        std::fs::write(&file, "\n").unwrap();
        let store = KeyStore::load(source(file.clone(), Some("sk-env")));
        assert!(
            !store.is_loaded(),
            "the env key only stands in for an absent file"
        );
        assert!(!store.reload());
        assert_eq!(store.failures(), 1);
        std::fs::write(&file, "sk-ok").unwrap();
        assert!(store.reload());
        assert_eq!(store.failures(), 1);
    }

    #[tokio::test]
    async fn wait_loaded_resolves_when_a_key_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api-key");
        let store = KeyStore::load(source(file.clone(), None));
        let waiter = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.wait_loaded().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no key yet");
        std::fs::write(&file, "sk-now").unwrap();
        assert!(store.reload());
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        // Already loaded: resolves at once.
        store.wait_loaded().await;
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ApiKey::new("sk-secret-value").unwrap();
        let shown = format!("{key:?} {:?}", key.authorization());
        assert!(!shown.contains("sk-secret-value"), "{shown}");
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::load(source(dir.path().join("k"), Some("sk-secret-value")));
        assert!(!format!("{store:?}").contains("sk-secret-value"));
    }
}
