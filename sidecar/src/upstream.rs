//! The upstream HTTP client and one attempt against it.
//!
//! What it does: builds the pooled hyper-util client (keep-alive, rustls with the `ring`
//! provider and webpki roots, HTTP/2 via ALPN when offered, plain http too, connect
//! timeout from `limits.connect_timeout`), maps a relative `/v1/<rest>` target onto the
//! upstream base URL, and sends ONE attempt ([`send_once`]) bounded by the attempt
//! timeout, turning client failures into [`ProxyError`]s. Protocol upgrades
//! ([`send_upgrade`]) use a second, HTTP/1.1-only client: an upgrade cannot ride HTTP/2.
//!
//! Buffered requests to a plain `http://` upstream go through the leaner own HTTP/1.1
//! pool of `h1pool.rs` instead of the hyper-util client.
//!
//! What it does not do: retries, fallbacks or backoff (`retry` wraps `send_once`), or
//! touch bodies. The connect timeout is read when the client is built (at start).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Limits, UpstreamBase};
use crate::error::{BoxError, ProxyError};

mod client_body;
mod h1pool;

pub use client_body::{ClientBody, ReadFailure, describe_read_error};
use h1pool::H1Pool;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often an HTTP/2 upstream connection is pinged.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A request body going upstream: buffered (JSON, replayable) or streamed (size-bounded).
pub type UpstreamBody = Either<Full<Bytes>, Limited<ClientBody>>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// rustls refused the protocol versions (should not happen with `ring`).
    #[error("failed to build the TLS client config: {0}")]
    Tls(#[from] rustls::Error),
}

type HttpClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// The upstream: its base URL and the pooled clients.
#[derive(Clone, Debug)]
pub struct Upstream {
    base: Arc<UpstreamBase>,
    /// HTTP/2 when the upstream offers it, else HTTP/1.1.
    client: HttpClient,
    /// HTTP/1.1 only: protocol upgrades (WebSocket) need an HTTP/1.1 connection of their own.
    upgrade_client: HttpClient,
    /// Plain-http upstreams only: buffered requests over the own HTTP/1.1 pool.
    h1: Option<Arc<H1Pool>>,
}

impl Upstream {
    /// Builds the client for `base` with the connect timeout of `limits`, trusting the
    /// Mozilla (webpki) roots.
    pub fn new(base: UpstreamBase, limits: &Limits) -> Result<Self, UpstreamError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_webpki_roots()
            .with_no_client_auth();
        Ok(Self::with_tls(base, limits, tls))
    }

    /// Builds the client with a caller-made TLS config (e.g. a private CA). ALPN is set
    /// here to `h2, http/1.1`, so HTTP/2 is used whenever the upstream offers it.
    pub fn with_tls(base: UpstreamBase, limits: &Limits, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(limits.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http.clone());
        let https_h1 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // The pool timer makes the idle timeout effective; the h2 keep-alive pings find
        // dead multiplexed connections before a request is sent on them.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http2_keep_alive_interval(H2_KEEP_ALIVE)
            .build(https);
        // Upgraded connections leave the pool, so this client keeps nothing idle.
        let upgrade_client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https_h1);
        let h1 = (!base.is_https())
            .then(|| H1Pool::new(&base.authority, limits.connect_timeout, POOL_IDLE_TIMEOUT))
            .flatten()
            .map(Arc::new);
        Self {
            base: Arc::new(base),
            client,
            upgrade_client,
            h1,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &UpstreamBase {
        &self.base
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
        Uri::builder()
            .scheme(self.base.scheme.clone())
            .authority(self.base.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ProxyError::BadRequest {
                reason: format!("invalid path: {e}"),
            })
    }
}

/// One attempt: sends `req` and waits for the response headers up to `attempt_timeout`.
/// The response body is not read here: it streams back to the client.
pub async fn send_once(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
    attempt_timeout: Duration,
    body_limit: u64,
) -> Result<Response<Incoming>, ProxyError> {
    if let (Some(pool), Either::Left(_)) = (&upstream.h1, req.body()) {
        return match tokio::time::timeout(attempt_timeout, pool.send(req)).await {
            Err(_elapsed) => Err(ProxyError::UpstreamTimeout {
                after: attempt_timeout,
            }),
            Ok(result) => result,
        };
    }
    match tokio::time::timeout(attempt_timeout, upstream.client.request(req)).await {
        Err(_elapsed) => Err(ProxyError::UpstreamTimeout {
            after: attempt_timeout,
        }),
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(classify(e, body_limit)),
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
        Ok(Err(e)) => Err(classify(e, 0)),
    }
}

/// Maps a client error: the streamed body went over the limit (413), no connection
/// (502 unreachable), or the exchange broke (502).
fn classify(e: hyper_util::client::legacy::Error, body_limit: u64) -> ProxyError {
    if source_chain(&e).any(|s| s.is::<LengthLimitError>()) {
        return ProxyError::BodyTooLarge { limit: body_limit };
    }
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
