//! The upstream client and one attempt against it.
//!
//! What it does: owns the one [`Connector`] (TCP or a CONNECT tunnel through the egress
//! proxy, then rustls with the live trust roots and ALPN) that every request kind uses:
//! every request goes through the own pool (`pool.rs`: HTTP/1.1 connections, and past
//! `limits.upstream_http1_connections` multiplexed HTTP/2 ones when the upstream picks
//! h2), buffered and streamed bodies alike, except protocol upgrades ([`send_upgrade`]),
//! which take a hyper-util client whose connector offers only HTTP/1.1 (an upgrade
//! cannot ride HTTP/2). It maps a relative `/v1/<rest>` target onto the upstream base URL
//! and sends ONE attempt ([`send_once`]) bounded by the attempt timeout, turning client
//! failures into [`ProxyError`]s whose messages carry the cause (see `connect.rs`).
//!
//! What it does not do: retries, fallbacks or backoff (`retry` wraps `send_once`), or
//! touch bodies. The connect timeout, the HTTP/1.1 limit and the route (direct or proxy)
//! are fixed when the client is built (at start); the trust roots and the proxy credentials are re-read on
//! change by the watchers of [`Upstream::spawn_watchers`].

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Limits, UpstreamBase};
use crate::error::{BoxError, ProxyError};
use crate::reload::ReloadOptions;

mod client_body;
mod connect;
pub mod egress;
mod pool;
mod response;
pub mod trust;

pub use client_body::{ClientBody, ReadFailure, describe_read_error};
pub use connect::ConnectError;
use connect::{Alpn, Connector, ProxyRoute};
use egress::{DirectReason, ProxyAuth, Route};
use pool::Pool;
pub use response::UpstreamIncoming;
use trust::{CaStatus, Trust};

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often an HTTP/2 upstream connection is pinged.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A request body going upstream: buffered (JSON, replayable) or streamed (size-bounded).
/// The rarer streamed one is boxed: hyper's client keeps a block of 32 requests per
/// connection in its dispatch channel, so every byte of this type counts 32 times.
pub type UpstreamBody = Either<Full<Bytes>, Pin<Box<Limited<ClientBody>>>>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// rustls refused the protocol versions (should not happen with `ring`).
    #[error("failed to build the TLS client config: {0}")]
    Tls(#[from] rustls::Error),
    /// The base URL makes no origin URI or Host header (a validated URL always does).
    #[error(
        "the upstream URL {0} makes no valid Host header; give a plain host name or IP address"
    )]
    Origin(String),
}

/// Beyond the base URL: extra trust and the route, as resolved from flags and env.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// `--upstream-ca-file`: a PEM bundle trusted in addition, re-read on change.
    pub ca_file: Option<PathBuf>,
    /// Direct or through an egress proxy ([`egress::resolve`]).
    pub route: Route,
    /// The proxy's `egress-proxy-auth` file (beside the API key file).
    pub proxy_auth_file: PathBuf,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            route: Route::Direct {
                why: DirectReason::NotConfigured,
            },
            proxy_auth_file: PathBuf::from(egress::AUTH_FILE_NAME),
        }
    }
}

type HttpClient = Client<Connector, UpstreamBody>;

/// The upstream: its base URL, the shared connector's pool and clients.
#[derive(Clone, Debug)]
pub struct Upstream {
    base: Arc<UpstreamBase>,
    trust: Arc<Trust>,
    route: Route,
    proxy_auth: Option<Arc<ProxyAuth>>,
    /// Every request but upgrades: HTTP/1.1 queue or HTTP/2 connections.
    pool: Arc<Pool>,
    /// HTTP/1.1 only: protocol upgrades (WebSocket) need an HTTP/1.1 connection of their own.
    upgrade_client: HttpClient,
}

/// The running watchers of the CA file and the proxy auth file; dropping stops them.
#[derive(Debug, Default)]
pub struct Watchers(Vec<JoinHandle<()>>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Upstream {
    /// Direct to `base`, trusting the platform's roots (or the bundled ones).
    pub fn new(base: UpstreamBase, limits: &Limits) -> Result<Self, UpstreamError> {
        Self::with_options(base, limits, UpstreamOptions::default())
    }

    /// The production client: platform roots plus `options.ca_file`, over `options.route`.
    pub fn with_options(
        base: UpstreamBase,
        limits: &Limits,
        options: UpstreamOptions,
    ) -> Result<Self, UpstreamError> {
        let (roots, source) = trust::platform_roots();
        let trust = Trust::new(roots, source, options.ca_file)?;
        Self::build(
            base,
            limits,
            Arc::new(trust),
            options.route,
            options.proxy_auth_file,
        )
    }

    /// Direct, with a caller-made TLS config (e.g. a private CA). ALPN is set here, per
    /// connection: `http/1.1` under `limits.upstream_http1_connections`, `h2, http/1.1`
    /// past it (see `upstream/pool.rs`).
    pub fn with_tls(
        base: UpstreamBase,
        limits: &Limits,
        tls: rustls::ClientConfig,
    ) -> Result<Self, UpstreamError> {
        let options = UpstreamOptions::default();
        Self::build(
            base,
            limits,
            Arc::new(Trust::fixed(tls)),
            options.route,
            options.proxy_auth_file,
        )
    }

    /// Everything from its parts.
    pub fn build(
        base: UpstreamBase,
        limits: &Limits,
        trust: Arc<Trust>,
        route: Route,
        proxy_auth_file: PathBuf,
    ) -> Result<Self, UpstreamError> {
        let (proxy, proxy_auth) = match &route {
            Route::Proxy(proxy) => {
                let auth = Arc::new(ProxyAuth::new(proxy_auth_file, proxy.url_auth.clone()));
                let route = ProxyRoute {
                    proxy: proxy.clone(),
                    auth: Arc::clone(&auth),
                };
                (Some(route), Some(auth))
            }
            Route::Direct { .. } => (None, None),
        };
        let connector = |alpn| {
            Connector::new(
                Arc::clone(&trust),
                proxy.clone(),
                limits.connect_timeout,
                alpn,
            )
        };
        // Upgraded connections leave the pool, so this client keeps nothing idle.
        let upgrade_client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector(Alpn::H1Only));
        let pool = Pool::new(
            connector(Alpn::H2OrH1),
            &base.scheme,
            &base.authority,
            POOL_IDLE_TIMEOUT,
            H2_KEEP_ALIVE,
            limits.upstream_http1_connections,
        )
        .ok_or_else(|| UpstreamError::Origin(base.to_string()))?;
        Ok(Self {
            pool: Arc::new(pool),
            base: Arc::new(base),
            trust,
            route,
            proxy_auth,
            upgrade_client,
        })
    }

    /// A reader of the pool's open HTTP/1.1 and HTTP/2 connections, for the metrics
    /// (protocol upgrades not counted).
    pub fn open_connections(&self) -> impl Fn() -> (u64, u64) + Send + Sync + 'static {
        let pool = Arc::clone(&self.pool);
        move || {
            let (http1, http2) = pool.open_connections();
            (http1 as u64, http2 as u64)
        }
    }

    /// Starts the watchers of the CA file and of the proxy auth file (only those in use).
    /// Must be called inside a tokio runtime.
    pub fn spawn_watchers(&self, options: ReloadOptions) -> Watchers {
        let mut tasks = Vec::new();
        tasks.extend(self.trust.spawn_watcher(options));
        if let Some(auth) = &self.proxy_auth {
            tasks.push(auth.spawn_watcher(options));
        }
        Watchers(tasks)
    }

    /// The live trust roots (tests wait on CA file reloads through it).
    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    /// Logs how the upstream is reached and what its TLS trusts; never a credential.
    pub fn log_startup(&self) {
        let upstream = self.base.to_string();
        match &self.route {
            Route::Direct {
                why: DirectReason::NotConfigured,
            } => tracing::info!(
                %upstream,
                proxy = "none",
                why = "neither --egress-proxy nor a proxy variable for the upstream's scheme is set",
                "upstream route"
            ),
            Route::Direct {
                why:
                    DirectReason::Bypassed {
                        proxy,
                        origin,
                        no_proxy,
                    },
            } => tracing::info!(
                %upstream,
                proxy = "none",
                why = %format!("{proxy} from {origin} is bypassed: {no_proxy} names the upstream's host"),
                "upstream route"
            ),
            Route::Proxy(proxy) => tracing::info!(
                %upstream,
                proxy = %proxy.display(),
                why = %format!("from {}", proxy.origin),
                tunnel = "CONNECT",
                auth = %self.proxy_auth.as_ref().map_or_else(|| "none".to_owned(), |a| a.describe()),
                "upstream route"
            ),
        }
        if !self.base.is_https() {
            return;
        }
        let (source, count) = self.trust.source();
        let (ca_file, status) = self.trust.ca_status();
        let ca_certs = match status {
            CaStatus::Unset => "none".to_owned(),
            CaStatus::Missing => "missing, trusted once it appears".to_owned(),
            CaStatus::Loaded(n) => n.to_string(),
        };
        tracing::info!(
            roots = %source,
            roots_certs = count,
            ca_file = %ca_file.map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
            ca_certs = %ca_certs,
            "upstream trust"
        );
    }

    /// The base URL.
    pub fn base(&self) -> &UpstreamBase {
        &self.base
    }

    /// The `Host` header of a request to the upstream.
    pub fn host_header(&self) -> &HeaderValue {
        self.pool.host_header()
    }

    /// `<upstream>/<rest>?<query>` for a client path `/v1/<rest>`; `rest` starts with `/`.
    pub fn uri_for(&self, rest: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
        let prefix = &self.base.path_prefix;
        let mut pq =
            String::with_capacity(prefix.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(prefix);
        pq.push_str(rest);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let path_and_query = PathAndQuery::try_from(pq).map_err(|e| ProxyError::BadRequest {
            reason: format!("invalid path: {e}"),
        })?;
        self.uri_with(path_and_query)
    }

    /// The upstream's scheme and authority with `path_and_query` as the target.
    pub fn uri_with(&self, path_and_query: PathAndQuery) -> Result<Uri, ProxyError> {
        // From the parts, not `Uri::builder()`: the builder's chain of fallible steps was
        // 45 instruction-cache lines per request for three fields already valid.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.base.scheme.clone());
        parts.authority = Some(self.base.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest {
            reason: format!("invalid path: {e}"),
        })
    }
}

/// One attempt: sends `req` and waits for the response headers up to `attempt_timeout`
/// counted from `now` (the caller's clock read, so the attempt takes no other).
/// The response body is not read here: it streams back to the client.
pub async fn send_once(
    upstream: &Upstream,
    req: Box<Request<UpstreamBody>>,
    attempt_timeout: Duration,
    now: Instant,
    body_limit: u64,
) -> Result<Response<UpstreamIncoming>, ProxyError> {
    // A timeout too far to represent is as good as none. The send future is built in
    // the call: a binding moved into `timeout_at` cost a 1.6 KB copy per attempt.
    let deadline = now
        .checked_add(attempt_timeout)
        .unwrap_or_else(|| now + crate::retry::FAR_FUTURE);
    match tokio::time::timeout_at(deadline, upstream.pool.send(req)).await {
        Err(_elapsed) => Err(ProxyError::UpstreamTimeout {
            after: attempt_timeout,
        }),
        // A streamed body that went over the limit while being sent.
        Ok(Err(ProxyError::UpstreamFailed { source }))
            if source_chain(source.as_ref()).any(|s| s.is::<LengthLimitError>()) =>
        {
            Err(ProxyError::BodyTooLarge { limit: body_limit })
        }
        Ok(result) => result,
    }
}

/// Sends a protocol-upgrade request (e.g. WebSocket) over a fresh HTTP/1.1 connection and
/// waits for the response headers up to `attempt_timeout`. On `101 Switching Protocols`
/// the caller takes the connection with `hyper::upgrade::on(&mut response)`.
pub async fn send_upgrade(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    attempt_timeout: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    match tokio::time::timeout(attempt_timeout, upstream.upgrade_client.request(req)).await {
        Err(_elapsed) => Err(ProxyError::UpstreamTimeout {
            after: attempt_timeout,
        }),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(classify(e)),
    }
}

/// Maps an upgrade client's error: no connection (502 unreachable), or the exchange
/// broke (502). An upgrade request has no body, so no body limit can trip.
fn classify(e: hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        ProxyError::UpstreamUnreachable {
            source: Box::new(e),
        }
    } else {
        ProxyError::UpstreamFailed {
            source: Box::new(e) as BoxError,
        }
    }
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str) -> Upstream {
        Upstream::new(base.parse().unwrap(), &Limits::default()).unwrap()
    }

    #[test]
    fn rest_and_query_map_onto_the_base() {
        let up = upstream("https://api.holysheep.ai/v1");
        let uri = up.uri_for("/chat/completions", None).unwrap();
        assert_eq!(uri, "https://api.holysheep.ai/v1/chat/completions");
        let uri = up.uri_for("/models", Some("a=1&b=%20")).unwrap();
        assert_eq!(uri, "https://api.holysheep.ai/v1/models?a=1&b=%20");
        let up = upstream("http://127.0.0.1:9/");
        assert_eq!(up.uri_for("/x", None).unwrap(), "http://127.0.0.1:9/x");
    }
}
