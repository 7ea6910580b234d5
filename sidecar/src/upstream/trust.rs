//! Which certificates the upstream's TLS trusts, and the live rustls configs built from them.
//!
//! What it does: loads the platform's roots once at start (`rustls-native-certs`, which
//! honours `SSL_CERT_FILE` and `SSL_CERT_DIR`); when the platform has none at all (a
//! distroless image may ship none) it falls back to the bundled webpki (Mozilla) roots and
//! says so. `--upstream-ca-file` adds a PEM bundle on top, re-read when its directory
//! changes ([`DirWatch`], so a Kubernetes `..data` swap is seen). A missing CA file is
//! warned about once and picked up when it appears; unreadable content, bad PEM or a file
//! with no usable certificate is logged once per change and the previous roots stay. A new
//! set of roots swaps both rustls configs whole: new connections use them, pooled ones go on.
//!
//! What it does not do: connect (connect.rs), or verify anything itself (rustls does).

use std::fmt;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio::task::JoinHandle;

use crate::reload::{DirWatch, ReloadOptions};

/// Where the roots under the CA file came from; logged at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootsSource {
    /// The platform's store, read from these places.
    System {
        /// Where it was read from (a bundle file, hash directories).
        from: String,
    },
    /// `SSL_CERT_FILE` and/or `SSL_CERT_DIR` (then the platform store is not read).
    Env {
        /// The variables and their values.
        from: String,
    },
    /// The platform has no roots: the Mozilla roots compiled into the binary.
    Bundled,
    /// A rustls config handed in by the caller (tests, embedders).
    Given,
}

impl fmt::Display for RootsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System { from } => write!(f, "system store ({from})"),
            Self::Env { from } => f.write_str(from),
            Self::Bundled => f.write_str("bundled webpki roots (the platform has none)"),
            Self::Given => f.write_str("caller-supplied rustls config"),
        }
    }
}

/// The two configs every connection is made with.
#[derive(Debug)]
pub(crate) struct TlsConfigs {
    /// ALPN `h2, http/1.1`: the pool's connections past its HTTP/1.1 limit.
    pub(crate) h2_or_h1: Arc<ClientConfig>,
    /// ALPN `http/1.1` only: the pool's first connections, and protocol upgrades (which
    /// cannot ride HTTP/2).
    pub(crate) h1_only: Arc<ClientConfig>,
}

impl TlsConfigs {
    /// Both configs from one base config (its ALPN list is replaced).
    pub(crate) fn from_config(config: ClientConfig) -> Self {
        let mut h2_or_h1 = config.clone();
        h2_or_h1.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut h1_only = config;
        h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            h2_or_h1: Arc::new(h2_or_h1),
            h1_only: Arc::new(h1_only),
        }
    }

    fn from_roots(roots: RootCertStore) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::from_config(config))
    }
}

/// The platform's roots, or the bundled ones when it has none.
pub fn platform_roots() -> (RootCertStore, RootsSource) {
    let loaded = rustls_native_certs::load_native_certs();
    for error in loaded.errors.iter().take(3) {
        tracing::debug!(%error, "skipped part of the platform's trust store");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        tracing::warn!(
            looked_in = %platform_source(),
            "the platform has no CA certificates; trusting the bundled webpki roots \
             (mount a bundle and set SSL_CERT_FILE, or use --upstream-ca-file, to change that)"
        );
        let mut bundled = RootCertStore::empty();
        bundled.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return (bundled, RootsSource::Bundled);
    }
    (roots, platform_source())
}

/// Where `load_native_certs` looked: the env variables when set, else what it probed.
fn platform_source() -> RootsSource {
    let env: Vec<String> = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
        .into_iter()
        .filter_map(|name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(|v| format!("{name} {}", v.to_string_lossy()))
        })
        .collect();
    if !env.is_empty() {
        return RootsSource::Env {
            from: env.join(", "),
        };
    }
    let probed = openssl_probe::probe();
    let from: Vec<String> = probed
        .cert_file
        .iter()
        .chain(probed.cert_dir.iter())
        .map(|p| p.display().to_string())
        .collect();
    RootsSource::System {
        from: from.join(", "),
    }
}

/// What one look at the CA file found (for tests and the reload count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaStatus {
    /// No `--upstream-ca-file`.
    Unset,
    /// Not there (yet): only the base roots are trusted.
    Missing,
    /// Loaded: this many certificates trusted in addition.
    Loaded(usize),
}

/// The live trust: base roots plus the CA file, as rustls configs.
#[derive(Debug)]
pub struct Trust {
    base: RootCertStore,
    source: RootsSource,
    ca_file: Option<PathBuf>,
    live: ArcSwap<TlsConfigs>,
    state: Mutex<CaState>,
    /// Count of CA file versions applied; a watch so tests need not poll.
    applied: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct CaState {
    /// The content last looked at (applied or refused), so each version is handled once.
    baseline: Option<Vec<u8>>,
    /// The last problem logged, so one that stays is logged once.
    logged: Option<String>,
    status: Option<CaStatus>,
}

impl Trust {
    /// Base `roots` plus the optional CA file, read once now.
    pub fn new(
        roots: RootCertStore,
        source: RootsSource,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, rustls::Error> {
        let live = ArcSwap::from_pointee(TlsConfigs::from_roots(roots.clone())?);
        let trust = Self {
            base: roots,
            source,
            ca_file,
            live,
            state: Mutex::new(CaState::default()),
            applied: tokio::sync::watch::Sender::new(0),
        };
        trust.check();
        Ok(trust)
    }

    /// A fixed caller-made config (its ALPN is replaced); no CA file.
    pub fn fixed(config: ClientConfig) -> Self {
        Self {
            base: RootCertStore::empty(),
            source: RootsSource::Given,
            ca_file: None,
            live: ArcSwap::from_pointee(TlsConfigs::from_config(config)),
            state: Mutex::new(CaState::default()),
            applied: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The configs new connections use.
    pub(crate) fn current(&self) -> Arc<TlsConfigs> {
        self.live.load_full()
    }

    /// Where the base roots came from and how many there are.
    pub fn source(&self) -> (&RootsSource, usize) {
        (&self.source, self.base.len())
    }

    /// The CA file and what the last look at it found.
    pub fn ca_status(&self) -> (Option<&PathBuf>, CaStatus) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let status = state.status.clone().unwrap_or(CaStatus::Unset);
        (self.ca_file.as_ref(), status)
    }

    /// How many CA file versions have been applied so far.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Resolves once more than `seen` CA file versions have been applied; returns the count.
    pub async fn wait_applied(&self, seen: u64) -> u64 {
        let mut rx = self.applied.subscribe();
        match rx.wait_for(|n| *n > seen).await {
            Ok(n) => *n,
            // The sender lives in `self`: it cannot be gone while we borrow it.
            Err(_) => seen,
        }
    }

    /// Watches the CA file's directory and re-reads it on change. `None` without a CA file.
    /// Must be called inside a tokio runtime; dropping the handle does not stop it: abort it.
    pub fn spawn_watcher(self: &Arc<Self>, options: ReloadOptions) -> Option<JoinHandle<()>> {
        let path = self.ca_file.clone()?;
        let mut watch = DirWatch::start(&path, "upstream CA file", options);
        let trust = Arc::clone(self);
        // Watching started after the first read: look once more so nothing in between is lost.
        trust.check();
        Some(tokio::spawn(async move {
            loop {
                watch.changed().await;
                trust.check();
            }
        }))
    }

    /// Re-reads the CA file and applies a new valid version (see module docs).
    pub fn check(&self) {
        let Some(path) = &self.ca_file else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let content = match std::fs::read(path) {
            Ok(content) => content,
            Err(e) => {
                // Not a baseline: the file may come back exactly as it was.
                state.baseline = None;
                let missing = e.kind() == ErrorKind::NotFound;
                if missing && state.status.is_none() {
                    state.status = Some(CaStatus::Missing);
                }
                let problem = if missing {
                    "not found".to_owned()
                } else {
                    e.to_string()
                };
                if state.logged.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(
                        path = %path.display(),
                        error = %problem,
                        "upstream CA file (--upstream-ca-file) unreadable; trusting the other \
                         roots until it can be read"
                    );
                    state.logged = Some(problem);
                }
                return;
            }
        };
        if state.baseline.as_deref() == Some(content.as_slice()) {
            return;
        }
        match self.roots_with(&content) {
            Ok((roots, count)) => match TlsConfigs::from_roots(roots) {
                Ok(configs) => {
                    self.live.store(Arc::new(configs));
                    tracing::info!(path = %path.display(), certs = count, "upstream CA file loaded");
                    state.status = Some(CaStatus::Loaded(count));
                    state.logged = None;
                    self.applied.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream CA file refused; keeping the previous roots");
                }
            },
            Err(problem) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %problem,
                    "upstream CA file (--upstream-ca-file) refused; keeping the previous roots"
                );
                state.logged = Some(problem);
            }
        }
        state.baseline = Some(content);
    }

    /// The base roots plus every certificate of the PEM `content`, or what is wrong with it.
    fn roots_with(&self, content: &[u8]) -> Result<(RootCertStore, usize), String> {
        let certs = CertificateDer::pem_slice_iter(content)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad PEM: {e}; expected CERTIFICATE blocks"))?;
        if certs.is_empty() {
            return Err("no `-----BEGIN CERTIFICATE-----` block in the file".to_owned());
        }
        let mut roots = self.base.clone();
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "none of its {ignored} certificates could be parsed as a CA certificate"
            ));
        }
        Ok((roots, added))
    }
}

#[cfg(test)]
#[path = "trust_tests.rs"]
mod tests;
