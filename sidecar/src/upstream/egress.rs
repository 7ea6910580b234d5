//! Whether the upstream is reached through an egress proxy, and the proxy's credentials.
//!
//! What it does: [`resolve`] decides once, at start, from `--egress-proxy` (wins) or the
//! environment variable for the upstream's scheme (`HTTPS_PROXY`/`https_proxy` for an
//! https upstream, `HTTP_PROXY`/`http_proxy` for an http one; upper case first), and
//! `NO_PROXY`/`no_proxy`, which applies to the flag as well. The matching (NO_PROXY
//! domains, IPs and CIDRs, `*`; userinfo in an env URL) is hyper-util's `Matcher`.
//! [`ProxyAuth`] holds the Basic credentials: the `egress-proxy-auth` file (`user:password`)
//! beside the API key file, re-read on change, else the userinfo of an env proxy URL.
//!
//! What it does not do: connect (connect.rs). Credentials never reach a log line, a
//! metric or an error: URLs are shown without userinfo and the file's content is never
//! echoed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use holysheep_common::{HttpUrl, redact_userinfo};
use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;
use tokio::task::JoinHandle;

use crate::config::UpstreamBase;
use crate::reload::{DirWatch, ReloadOptions};

/// The auth file's name, in the directory of `--api-key-file`.
pub const AUTH_FILE_NAME: &str = "egress-proxy-auth";
/// The flag named in errors and logs.
pub const EGRESS_PROXY_FLAG: &str = "--egress-proxy";

/// Where a proxy setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyOrigin {
    /// `--egress-proxy` (or `HOLYSHEEP_EGRESS_PROXY`).
    Flag,
    /// This environment variable.
    Env(&'static str),
}

impl fmt::Display for ProxyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str(EGRESS_PROXY_FLAG),
            Self::Env(name) => f.write_str(name),
        }
    }
}

/// How the upstream is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight to the upstream.
    Direct {
        /// Why no proxy.
        why: DirectReason,
    },
    /// Through an HTTP CONNECT tunnel.
    Proxy(EgressProxy),
}

/// Why the upstream is reached directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectReason {
    /// No flag and no proxy variable for the upstream's scheme.
    NotConfigured,
    /// A proxy is configured, but this `NO_PROXY` variable names the upstream's host.
    Bypassed {
        /// The proxy that would have been used (no credentials).
        proxy: String,
        /// Where it came from.
        origin: ProxyOrigin,
        /// `NO_PROXY` or `no_proxy`.
        no_proxy: &'static str,
    },
}

/// An egress proxy in use.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy {
    /// `http://host:port/`, without credentials.
    pub uri: Uri,
    /// Where it came from.
    pub origin: ProxyOrigin,
    /// Basic credentials from the userinfo of an env URL (sensitive).
    pub url_auth: Option<HeaderValue>,
}

impl EgressProxy {
    /// `http://host:port`, never with credentials.
    pub fn display(&self) -> String {
        let scheme = self.uri.scheme_str().unwrap_or("http");
        match self.uri.authority() {
            Some(a) => format!("{scheme}://{a}"),
            None => self.uri.to_string(),
        }
    }
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("uri", &self.display())
            .field("origin", &self.origin)
            .field("url_auth", &self.url_auth.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// Why the proxy settings cannot be used. Messages never show credentials.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// A proxy variable holds something that is not a usable proxy URL.
    #[error(
        "{origin}: `{value}` is not a usable egress proxy: use http://host:port \
         (only plain-http proxies that support CONNECT are supported)"
    )]
    Unusable {
        /// The flag or variable.
        origin: ProxyOrigin,
        /// The value, credentials redacted.
        value: String,
    },
}

/// Decides the route to `upstream` (see module docs). `env` looks up a variable; the
/// process environment in production, a table in tests.
pub fn resolve(
    flag: Option<&HttpUrl>,
    upstream: &UpstreamBase,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Route, EgressError> {
    let first = |names: [&'static str; 2]| {
        names
            .into_iter()
            .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
    };
    let (origin, value) = match flag {
        Some(url) => (ProxyOrigin::Flag, url.to_string()),
        None => {
            let names = if upstream.is_https() {
                ["HTTPS_PROXY", "https_proxy"]
            } else {
                ["HTTP_PROXY", "http_proxy"]
            };
            match first(names) {
                Some((name, value)) => (ProxyOrigin::Env(name), value),
                None => {
                    return Ok(Route::Direct {
                        why: DirectReason::NotConfigured,
                    });
                }
            }
        }
    };
    let unusable = || EgressError::Unusable {
        origin,
        value: redact_userinfo(value.trim()).into_owned(),
    };
    let no_proxy = first(["NO_PROXY", "no_proxy"]);
    let target = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|_| unusable())?;
    let value = value.trim();
    // Without NO_PROXY first: tells a bad value apart from a bypass.
    let intercept = Matcher::builder()
        .http(value)
        .https(value)
        .build()
        .intercept(&target)
        .ok_or_else(unusable)?;
    if intercept.uri().scheme_str() != Some("http") {
        return Err(unusable());
    }
    let proxy = EgressProxy {
        uri: intercept.uri().clone(),
        origin,
        url_auth: intercept.basic_auth().cloned().map(|mut v| {
            v.set_sensitive(true);
            v
        }),
    };
    if let Some((name, list)) = no_proxy {
        let bypassed = Matcher::builder()
            .http(value)
            .https(value)
            .no(list)
            .build()
            .intercept(&target)
            .is_none();
        if bypassed {
            return Ok(Route::Direct {
                why: DirectReason::Bypassed {
                    proxy: proxy.display(),
                    origin,
                    no_proxy: name,
                },
            });
        }
    }
    Ok(Route::Proxy(proxy))
}

/// `<dir of key_file>/egress-proxy-auth`.
pub fn auth_file_beside(key_file: &Path) -> PathBuf {
    match key_file.parent() {
        Some(dir) => dir.join(AUTH_FILE_NAME),
        None => PathBuf::from(AUTH_FILE_NAME),
    }
}

/// The proxy's Basic credentials: the auth file when it holds some, else the URL's.
#[derive(Debug)]
pub struct ProxyAuth {
    file: PathBuf,
    url_auth: Option<HeaderValue>,
    from_file: ArcSwapOption<HeaderValue>,
    state: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    /// The problem last logged, so a file that stays bad is logged once.
    logged: Option<String>,
    /// The content last looked at (applied or refused), so each version is handled once.
    baseline: Option<Vec<u8>>,
}

impl ProxyAuth {
    /// Reads `file` once now; `url_auth` is used while the file holds no credentials.
    pub fn new(file: PathBuf, url_auth: Option<HeaderValue>) -> Self {
        // Sensitive whatever the caller did: Debug and HTTP/2 indexing then skip it.
        let url_auth = url_auth.map(|mut v| {
            v.set_sensitive(true);
            v
        });
        let auth = Self {
            file,
            url_auth,
            from_file: ArcSwapOption::empty(),
            state: Mutex::new(AuthState::default()),
        };
        auth.check();
        auth
    }

    /// The auth file's path (named in the 407 diagnostic).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The `Proxy-Authorization` value to send, if any (marked sensitive).
    pub fn header(&self) -> Option<HeaderValue> {
        match self.from_file.load_full() {
            Some(h) => Some((*h).clone()),
            None => self.url_auth.clone(),
        }
    }

    /// Where the credentials come from, for the startup log: never the credentials.
    pub fn describe(&self) -> String {
        if self.from_file.load().is_some() {
            format!("from {}", self.file.display())
        } else if self.url_auth.is_some() {
            "from the proxy URL's userinfo".to_owned()
        } else {
            format!("none ({} absent)", self.file.display())
        }
    }

    /// Watches the auth file's directory and re-reads it on change. Must be called inside
    /// a tokio runtime; abort the handle to stop.
    pub fn spawn_watcher(self: &Arc<Self>, options: ReloadOptions) -> JoinHandle<()> {
        let mut watch = DirWatch::start(&self.file, "egress proxy auth", options);
        let auth = Arc::clone(self);
        auth.check();
        tokio::spawn(async move {
            loop {
                watch.changed().await;
                auth.check();
            }
        })
    }

    /// Re-reads the file. A missing file keeps what was loaded (a Secret swap makes it
    /// briefly absent); bad content is logged once and keeps the previous credentials.
    pub fn check(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let content = match std::fs::read(&self.file) {
            Ok(content) => content,
            Err(e) => {
                state.baseline = None;
                if e.kind() != std::io::ErrorKind::NotFound {
                    let problem = e.to_string();
                    if state.logged.as_deref() != Some(problem.as_str()) {
                        tracing::warn!(path = %self.file.display(), error = %problem,
                            "egress proxy auth file unreadable; keeping the previous credentials");
                        state.logged = Some(problem);
                    }
                }
                return;
            }
        };
        if state.baseline.as_deref() == Some(content.as_slice()) {
            return;
        }
        match basic_header(&content) {
            Ok(header) => {
                self.from_file.store(Some(Arc::new(header)));
                tracing::info!(path = %self.file.display(), "egress proxy credentials loaded");
                state.logged = None;
            }
            Err(problem) => {
                if state.logged.as_deref() != Some(problem) {
                    tracing::warn!(path = %self.file.display(), error = problem,
                        "egress proxy auth file refused; keeping the previous credentials");
                    state.logged = Some(problem.to_owned());
                }
            }
        }
        state.baseline = Some(content);
    }
}

impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The baseline is the credentials file's content: never shown.
        f.debug_struct("AuthState")
            .field("logged", &self.logged)
            .field("baseline", &self.baseline.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// `Basic base64(user:password)` from the file's content (one line, trailing newline ok).
fn basic_header(content: &[u8]) -> Result<HeaderValue, &'static str> {
    const SHAPE: &str = "expected one line `user:password`";
    let text = std::str::from_utf8(content).map_err(|_| "not UTF-8; expected `user:password`")?;
    let line = text.trim_end_matches(['\r', '\n']);
    if line.contains(['\r', '\n']) {
        return Err(SHAPE);
    }
    match line.split_once(':') {
        Some((user, _)) if !user.is_empty() => {}
        _ => return Err(SHAPE),
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(line);
    let mut header =
        HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| "cannot be a header")?;
    header.set_sensitive(true);
    Ok(header)
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
