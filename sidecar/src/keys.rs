//! The HolySheep API key: loaded from the key file (or env), re-read on change, redacted.
//!
//! What it does: reads `--api-key-file` (trimmed); when the file is absent at start, uses
//! `HOLYSHEEP_API_KEY`. It watches the file's DIRECTORY (a [`DirWatch`]), because
//! Kubernetes Secret volumes swap a `..data` symlink atomically (the `api-key` path
//! itself never changes), and re-reads on events that can change content, plus a cheap
//! periodic re-check as a safety net for missed events. It never wakes on its own reads:
//! an idle sidecar costs one timer wake-up per re-check, whatever the layout. The key is
//! held as a [`SecretString`] next to its precomputed, sensitive-marked `Authorization`
//! header, so the hot path only clones a refcount.
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
//! that stays bad is counted once, not at every re-check or watch event. The warning is
//! logged once per distinct refusal (new bad content or a new read error), so a file that
//! stays bad is not logged again at every re-check either.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::reload::{DirWatch, ReloadOptions, SETTLE};

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
    /// Digest of the refusal last logged (kind and content, or read error), so a file
    /// that stays bad is logged once; any other read outcome clears it.
    last_logged: Mutex<Option<u64>>,
    /// Keys the digest per process: the digest covers bad key material.
    digest: RandomState,
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
            last_logged: Mutex::new(None),
            digest: RandomState::new(),
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
        let (key, origin) = match read_source(&self.source, &self.digest) {
            Read::Key(key, origin) => (key, origin),
            Read::Nothing => {
                self.remember_logged(None);
                return false;
            }
            Read::Refused(error, digest) => {
                // Only the first failure of a streak counts: the periodic re-check and
                // every watch event re-read a file that stays bad.
                if !self.last_failed.swap(true, Ordering::Relaxed) {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
                // Logged once per distinct refusal, for the same reason.
                if self.remember_logged(Some(digest)) != Some(digest) {
                    tracing::warn!(%error, key_in_force = self.is_loaded(), "key file refused");
                }
                return false;
            }
        };
        self.last_failed.store(false, Ordering::Relaxed);
        self.remember_logged(None);
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
        // Name where the key came from, and only that: the key file when it was read,
        // the variable otherwise (the file path would read as if the key came from it).
        match origin {
            Origin::File => {
                tracing::info!(from = %self.source.file.display(), "API key loaded from the key file");
            }
            Origin::Env => tracing::info!(
                from = "HOLYSHEEP_API_KEY",
                "API key loaded from the environment (no key file)"
            ),
        }
        true
    }

    /// Stores the digest of the refusal just logged (or `None`); returns the previous one.
    fn remember_logged(&self, digest: Option<u64>) -> Option<u64> {
        // A panic elsewhere while holding this lock cannot leave the Option torn.
        let mut last = self
            .last_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *last, digest)
    }

    /// Watches the key file's directory and re-reads on content events (after a short
    /// settle, so a truncate-then-write is read once, whole) and every `recheck`
    /// (normally [`RECHECK_INTERVAL`]). Runs until the returned handle is aborted.
    pub fn spawn_watcher(self: &Arc<Self>, recheck: Duration) -> tokio::task::JoinHandle<()> {
        let options = ReloadOptions {
            poll_interval: recheck,
            settle: SETTLE,
        };
        let mut watch = DirWatch::start(&self.source.file, "key", options);
        let store = Arc::clone(self);
        tokio::spawn(async move {
            // Covers a change between the first load and the start of the watch.
            store.reload();
            loop {
                watch.changed().await;
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
    /// The key file exists but is unusable; with a digest of what was refused.
    Refused(KeyFileError, u64),
}

/// Why an existing key file was refused. No variant carries the file's content.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file holds nothing but whitespace.
    #[error(
        "key file {path} (--api-key-file) is empty; write the API key into it, or remove it \
         to use HOLYSHEEP_API_KEY"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The trimmed content is not a valid HTTP header value.
    #[error(
        "key file {path} (--api-key-file) holds characters not allowed in an HTTP header \
         (control characters, non-ASCII text or inner line breaks); write the bare key on one line"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error(
        "failed to read key file {path} (--api-key-file): {source}; make it a regular file \
         readable by the sidecar's user"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
}

fn read_source(source: &KeySource, digest: &RandomState) -> Read {
    let path = || source.file.clone();
    let mut hasher = digest.build_hasher();
    match std::fs::read(&source.file) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).ok();
            if let Some(key) = text.and_then(ApiKey::new) {
                return Read::Key(key, Origin::File);
            }
            let error = if text.is_some_and(|t| t.trim().is_empty()) {
                KeyFileError::Empty { path: path() }
            } else {
                KeyFileError::Invalid { path: path() }
            };
            bytes.hash(&mut hasher);
            Read::Refused(error, hasher.finish())
        }
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
            // A read error has no content: its kind and OS code stand for it.
            (u8::MAX, e.kind(), e.raw_os_error()).hash(&mut hasher);
            Read::Refused(
                KeyFileError::Unreadable {
                    path: path(),
                    source: e,
                },
                hasher.finish(),
            )
        }
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
