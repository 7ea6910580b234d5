//! Serving certificate for the admission server: loads the PEM certificate chain and key,
//! builds the rustls `ServerConfig` (ring provider, ALPN `h2` and `http/1.1`), and swaps
//! the certificate when the files change, without a restart.
//!
//! Changes are noticed two ways: a `notify` watch on the *directories* holding the files
//! (a Secret volume replaces its `..data` symlink, cert-manager's CSI driver rewrites
//! files, editors rename; watching the file itself misses all of those), and a periodic
//! re-check as a backstop for filesystems without inotify. A file that is unreadable,
//! half-written or whose key does not match keeps the previous certificate in use; the
//! failure is logged and counted. Only the certificate used by *new* handshakes changes:
//! open connections are untouched.
//!
//! What it does not do: create certificates (`holysheep-certs`, `bootstrap`) or accept
//! connections (`server`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, ReloadResult};

mod error;
pub use error::TlsError;

/// After the first change event, further events within this window are folded into one
/// reload, so a writer that replaces `tls.crt` and then `tls.key` costs one reload, not a
/// failed one followed by a good one.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Counts of reload attempts since start, published on a watch channel so tests and
/// callers can wait for a reload instead of sleeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads that put a new certificate in service.
    pub successes: u64,
    /// Changed files that could not be loaded (the old certificate stayed).
    pub failures: u64,
}

/// The paths of the serving certificate chain and its key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (`tls.crt`).
    pub cert: PathBuf,
    /// Private key (`tls.key`).
    pub key: PathBuf,
}

/// A serving certificate that can be replaced at run time. Cheap to clone; all clones
/// share the same current certificate.
#[derive(Clone)]
pub struct ReloadingTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Raw bytes of the last files examined (good or bad), so an unchanged file is not
    /// reloaded or re-reported on every tick.
    last_seen: Mutex<(Vec<u8>, Vec<u8>)>,
    status: watch::Sender<ReloadStatus>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.inner.files)
            .field("status", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

/// The ring provider, the only one compiled in; never the process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ReloadingTls {
    /// Loads the certificate and key once. Fails when they are unusable: a server must
    /// not start without a certificate. Reload results are counted in `metrics` if given.
    pub fn load(files: TlsFiles, metrics: Option<Metrics>) -> Result<Self, TlsError> {
        let provider = crypto_provider();
        let (cert_bytes, key_bytes) = read_files(&files)?;
        let key = parse(&files, &cert_bytes, &key_bytes, &provider)?;
        report_expiry(metrics.as_ref(), &cert_bytes, &key_bytes);
        let (status, _) = watch::channel(ReloadStatus::default());
        Ok(Self {
            inner: Arc::new(Inner {
                files,
                provider,
                current: RwLock::new(Arc::new(key)),
                last_seen: Mutex::new((cert_bytes, key_bytes)),
                status,
                metrics,
            }),
        })
    }

    /// The files this certificate is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// A rustls server configuration whose certificate is always the current one, with
    /// ALPN `h2` then `http/1.1` (kube-apiserver speaks HTTP/2 to webhooks).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.inner.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The DER of the leaf certificate now served to new connections.
    pub fn current_leaf(&self) -> Option<CertificateDer<'static>> {
        self.inner.current().cert.first().cloned()
    }

    /// Reload counters; `changed()`/`wait_for` on the receiver wakes on every attempt.
    pub fn subscribe(&self) -> watch::Receiver<ReloadStatus> {
        self.inner.status.subscribe()
    }

    /// Re-reads the files now. Returns `Ok(true)` when a new certificate was put in
    /// service, `Ok(false)` when the files are unchanged, and the error (old certificate
    /// kept) when the changed files are unusable.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let inner = &self.inner;
        let (cert_bytes, key_bytes) = match read_files(&inner.files) {
            Ok(bytes) => bytes,
            Err(e) => {
                // A missing file mid-swap is common and transient: it is reported, and the
                // next event or tick retries. It is not "seen", so the retry is not skipped.
                inner.record(ReloadResult::Error);
                return Err(e);
            }
        };
        {
            let mut last = inner
                .last_seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.0 == cert_bytes && last.1 == key_bytes {
                return Ok(false);
            }
            *last = (cert_bytes.clone(), key_bytes.clone());
        }
        match parse(&inner.files, &cert_bytes, &key_bytes, &inner.provider) {
            Ok(key) => {
                *inner
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                report_expiry(inner.metrics.as_ref(), &cert_bytes, &key_bytes);
                inner.record(ReloadResult::Success);
                Ok(true)
            }
            Err(e) => {
                inner.record(ReloadResult::Error);
                Err(e)
            }
        }
    }

    /// Starts watching the certificate directories, re-checking at least every `interval`,
    /// until `shutdown` completes. Errors of individual reloads are logged, not returned;
    /// if the directory watch cannot be set up, only the periodic check runs.
    pub fn spawn_watcher<F>(&self, interval: Duration, shutdown: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel::<()>();
        // Without a watch (inotify limits reached, exotic filesystem) the periodic check
        // still rotates the certificate, only later: degrade, don't refuse to serve.
        let watcher = match self.dir_watcher(tx) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    interval_s = interval.as_secs(),
                    "cannot watch the certificate directory, relying on the periodic check"
                );
                None
            }
        };
        self.spawn_loop(watcher, rx, interval, shutdown)
    }

    /// The reload loop: on change events from `rx` (debounced) and on every tick. When
    /// `rx` closes (no watch, or the watch died) the ticks go on alone.
    fn spawn_loop<F>(
        &self,
        watcher: Option<notify::RecommendedWatcher>,
        mut rx: mpsc::UnboundedReceiver<()>,
        interval: Duration,
        shutdown: F,
    ) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let this = self.clone();
        let interval = interval.max(Duration::from_secs(1));
        tokio::spawn(async move {
            // Dropping the watcher ends the inotify watch, so it lives as long as the task.
            let _watcher = watcher;
            let mut watching = true;
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate; the files were just loaded
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    event = rx.recv(), if watching => match event {
                        Some(()) => {
                            tokio::time::sleep(DEBOUNCE).await;
                            while rx.try_recv().is_ok() {}
                            this.reload_and_log("file change");
                        }
                        None => watching = false,
                    },
                    _ = ticker.tick() => this.reload_and_log("periodic check"),
                }
            }
        })
    }

    /// A `notify` watch on the directories of both files, sending on `tx` for every event
    /// that may mean new content.
    fn dir_watcher(
        &self,
        tx: mpsc::UnboundedSender<()>,
    ) -> Result<notify::RecommendedWatcher, TlsError> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Our own reads show up as open/close-read events: reacting to them would
                // loop. A close after writing is a real change.
                let relevant = match event.map(|e| e.kind) {
                    Ok(EventKind::Access(AccessKind::Close(AccessMode::Write))) => true,
                    Ok(EventKind::Access(_)) => false,
                    Ok(_) | Err(_) => true,
                };
                if relevant {
                    let _ = tx.send(());
                }
            })
            .map_err(|source| TlsError::Watch {
                path: self.inner.files.cert.clone(),
                source,
            })?;
        for dir in watch_dirs(&self.inner.files) {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| TlsError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(watcher)
    }

    fn reload_and_log(&self, trigger: &'static str) {
        let files = &self.inner.files;
        match self.reload() {
            Ok(true) => tracing::info!(
                trigger,
                cert = %files.cert.display(),
                key = %files.key.display(),
                "serving certificate reloaded"
            ),
            Ok(false) => tracing::debug!(trigger, "serving certificate unchanged"),
            Err(error) => tracing::warn!(
                trigger,
                error = %error,
                "serving certificate reload failed, keeping the previous certificate"
            ),
        }
    }
}

impl Inner {
    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, result: ReloadResult) {
        if let Some(metrics) = &self.metrics {
            metrics.observe_reload(result);
        }
        self.status.send_modify(|s| match result {
            ReloadResult::Success => s.successes += 1,
            ReloadResult::Error => s.failures += 1,
        });
    }
}

/// Hands rustls the current certificate on every handshake.
struct Resolver(Arc<Inner>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("files", &self.0.files)
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// Logs and exports the leaf's `notAfter`, so an expiring certificate (a stuck
/// cert-manager, a renewal loop without RBAC) is seen before the apiserver refuses it.
/// Best effort: a certificate rustls accepted but holysheep-certs cannot read (another key
/// type) is served all the same, only without the figure.
fn report_expiry(metrics: Option<&Metrics>, cert_pem: &[u8], key_pem: &[u8]) {
    let (Ok(cert), Ok(key)) = (std::str::from_utf8(cert_pem), std::str::from_utf8(key_pem)) else {
        return;
    };
    if let Ok(serving) = holysheep_certs::ServingCert::from_pem(cert, key) {
        let not_after = serving.not_after();
        tracing::info!(not_after = %not_after, dns_names = ?serving.dns_names(), "serving certificate loaded");
        if let Some(metrics) = metrics {
            metrics.set_cert_not_after(not_after.unix_timestamp());
        }
    }
}

fn read_files(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    Ok((read("certificate", &files.cert)?, read("key", &files.key)?))
}

fn parse(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let bad_cert = |reason: String| TlsError::BadCertificate {
        path: files.cert.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_cert(
            "the file is empty or has no BEGIN CERTIFICATE line".into(),
        ));
    }
    // The pem error never echoes file contents, so it is safe to show for the key too.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::BadKey {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// The distinct parent directories of the two files (`.` for a bare file name).
fn watch_dirs(files: &TlsFiles) -> BTreeSet<PathBuf> {
    [&files.cert, &files.key]
        .into_iter()
        .map(|p| match p.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}

#[cfg(test)]
mod tests;
