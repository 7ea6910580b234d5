//! The own upstream pool for every request but protocol upgrades (buffered JSON and
//! streamed bodies alike), over hyper's low-level clients (`hyper::client::conn`), for
//! every upstream: plain http and TLS alike.
//!
//! Why: hyper-util's legacy client spends a pool lookup keyed by scheme and host plus one
//! spawned task per request (to hand the connection back when the response ends) on top
//! of the connection's own task. Here an HTTP/1.1 connection goes back into a FIFO queue as
//! soon as its response headers arrive; a checkout takes the first one hyper reports ready
//! (its previous exchange finished), drops closed ones, and connects when none is ready.
//! Measured on loopback: less proxy CPU and lower added latency per request (see
//! BENCHMARKS.md).
//!
//! HTTP/2, past the HTTP/1.1 connections: the first `limits.upstream_http1_connections`
//! connections (64 by default) offer only `http/1.1` by ALPN; a connection opened while
//! that many are open offers `h2, http/1.1`. Why: per request, HTTP/1.1 costs less CPU
//! and latency than hyper's HTTP/2 client (which spawns two tasks per request and writes
//! the headers and the body in two TLS records; see BENCHMARKS.md), while HTTP/2 keeps a
//! burst of long streams from opening a connection each. When the upstream picks h2, the
//! connection is kept and the requests that find no idle HTTP/1.1 connection ride it,
//! concurrently, up to a stream cap per connection; past it another connection is opened
//! (`pool/h2.rs`). A plain-http upstream, or one that answers the `h2` offer with
//! HTTP/1.1, gets HTTP/1.1 connections without a limit, as before.
//!
//! What it does not do: protocol upgrades: those take hyper-util's client over an
//! HTTP/1.1-only connector (`upstream.rs`). A request that hyper hands back unsent (the
//! connection closed while idle) is tried again on the next connection, as the legacy
//! client does; its body, streamed or not, was never read, and nothing that may have
//! reached the upstream is re-sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;
use super::connect::{Alpn, Connector};
use super::response::UpstreamIncoming;
use crate::error::ProxyError;

mod h2;

pub(crate) use h2::StreamSlot;
use h2::{Gate, H2Conns, Pick};

/// Most HTTP/1.1 connections kept in the queue; one past that is closed after its response.
const MAX_POOLED: usize = 256;

/// See the module docs.
#[derive(Debug)]
pub(super) struct Pool {
    connector: Connector,
    /// `scheme://authority/` of the upstream: what the connector connects to.
    origin: Uri,
    host_header: HeaderValue,
    idle_timeout: Duration,
    h2_keep_alive: Duration,
    conns: Mutex<VecDeque<Pooled>>,
    /// The multiplexed connections, once the upstream chose HTTP/2.
    h2: H2Conns,
    /// HTTP/1.1 connections open, queued or busy (see [`ConnShare`]).
    h1_open: Arc<AtomicUsize>,
    /// HTTP/2 connections open: the metrics, and whether idle ones need pruning.
    h2_open: Arc<AtomicUsize>,
    /// `limits.upstream_http1_connections`.
    h1_max: usize,
    /// The upstream refused an `http/1.1`-only offer (an HTTP/2-only server): every
    /// connection offers h2 from then on.
    h2_only: AtomicBool,
}

/// One connection in [`Pool::h1_open`] or [`Pool::h2_open`]: taken before connecting (for
/// HTTP/1.1) or once connected (HTTP/2), then owned by the connection's task, so the count
/// drops when the connection ends.
struct ConnShare(Arc<AtomicUsize>);

impl ConnShare {
    fn take(open: &Arc<AtomicUsize>) -> (Self, usize) {
        let before = open.fetch_add(1, Ordering::AcqRel);
        (Self(Arc::clone(open)), before)
    }
}

impl Drop for ConnShare {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a look into the queue found.
enum Checkout {
    /// An HTTP/2 connection with room for another stream.
    H2(http2::SendRequest<UpstreamBody>, StreamSlot),
    /// An idle HTTP/1.1 connection, taken out of the queue.
    Ready(http1::SendRequest<UpstreamBody>),
    /// Only connections still busy with a response (or HTTP/2 ones, all full).
    Busy,
    /// No connection at all.
    Empty,
}

/// A new connection, by the protocol ALPN chose.
enum Fresh {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>, StreamSlot),
    /// No connection: the upstream refused an `http/1.1`-only offer; try again offering
    /// h2.
    H2Only,
}

#[derive(Debug)]
struct Pooled {
    tx: http1::SendRequest<UpstreamBody>,
    /// When it last went back into the queue.
    since: Instant,
}

impl Pool {
    /// A pool for the upstream at `scheme` and `authority`, connecting with `connector`;
    /// `h1_max` HTTP/1.1 connections before one offers HTTP/2.
    pub(super) fn new(
        connector: Connector,
        scheme: &http::uri::Scheme,
        authority: &Authority,
        idle_timeout: Duration,
        h2_keep_alive: Duration,
        h1_max: usize,
    ) -> Option<Self> {
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .ok()?;
        // The Host header as hyper-util's client writes it: the port only when not the
        // scheme's default.
        let default_port = if *scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host_header = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let h2 = H2Conns::new(idle_timeout);
        if *scheme != http::uri::Scheme::HTTPS {
            // HTTP/2 comes only by ALPN: a plain-http upstream speaks HTTP/1.1.
            h2.saw_http1();
        }
        Some(Self {
            connector,
            origin,
            host_header: HeaderValue::from_str(&host_header).ok()?,
            idle_timeout,
            h2_keep_alive,
            conns: Mutex::new(VecDeque::new()),
            h2,
            h1_open: Arc::new(AtomicUsize::new(0)),
            h2_open: Arc::new(AtomicUsize::new(0)),
            h1_max,
            h2_only: AtomicBool::new(false),
        })
    }

    /// Sends `req` (absolute URI, boxed for the reason in `proxy::handle`) and waits for
    /// the response headers.
    pub(super) async fn send(
        &self,
        mut req: Box<Request<UpstreamBody>>,
    ) -> Result<Response<UpstreamIncoming>, ProxyError> {
        let mut yielded = false;
        loop {
            match self.checkout() {
                // Boxed: HTTP/2 comes only past the HTTP/1.1 connections, and its state would
                // size every request's future (moved whole at each level).
                Checkout::H2(mut tx, slot) => match Box::pin(send_h2(&mut tx, *req)).await {
                    Ok(resp) => return Ok(resp.map(|b| UpstreamIncoming::new(b, Some(slot)))),
                    Err(mut e) => match e.take_message() {
                        // Never sent: the connection is going away; forget it.
                        Some(unsent) => {
                            self.h2.forget(&slot);
                            *req = unsent;
                            continue;
                        }
                        None => return Err(failed(e.into_error())),
                    },
                },
                Checkout::Ready(mut tx) => {
                    origin_form(&mut req, &self.host_header);
                    match tx.try_send_request(*req).await {
                        Ok(resp) => {
                            self.checkin(tx);
                            return Ok(resp.map(|b| UpstreamIncoming::new(b, None)));
                        }
                        Err(mut e) => match e.take_message() {
                            // Never written: the connection closed while idle; use another.
                            Some(unsent) => {
                                *req = unsent;
                                continue;
                            }
                            None => return Err(failed(e.into_error())),
                        },
                    }
                }
                Checkout::Busy if !yielded => {
                    // A connection whose response just ended becomes ready once its task
                    // has run: give it that chance before opening another one.
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                Checkout::Busy | Checkout::Empty => {}
            }
            // Under the HTTP/1.1 limit this request connects on its own; past it, the
            // connection offers h2 and is opened one at a time (`pool/h2.rs`).
            let (share, before) = ConnShare::take(&self.h1_open);
            let (share, guard) = if before < self.h1_max && !self.h2_only.load(Ordering::Acquire) {
                (Some(share), None)
            } else {
                drop(share);
                match self.h2.gate().await {
                    Gate::Connect(guard) => (None, Some(guard)),
                    // Another request opened a connection meanwhile: look again.
                    Gate::Wait => continue,
                }
            };
            // Boxed: a new connection is rare, and its handshakes' state would size
            // every request's future.
            let fresh = Box::pin(self.connect(share)).await;
            if fresh.is_err() && guard.is_some() {
                // An h2 offer failed: the next ones stop waiting for one another.
                self.h2.connect_failed();
            }
            drop(guard);
            return match fresh? {
                Fresh::H2Only => continue,
                Fresh::H2(mut tx, slot) => Box::pin(send_h2(&mut tx, *req))
                    .await
                    .map(|resp| resp.map(|b| UpstreamIncoming::new(b, Some(slot))))
                    .map_err(|e| failed(e.into_error())),
                Fresh::H1(mut tx) => {
                    origin_form(&mut req, &self.host_header);
                    match tx.try_send_request(*req).await {
                        Ok(resp) => {
                            self.checkin(tx);
                            Ok(resp.map(|b| UpstreamIncoming::new(b, None)))
                        }
                        Err(e) => Err(failed(e.into_error())),
                    }
                }
            };
        }
    }

    /// The first queued HTTP/1.1 connection that is idle, else (at the HTTP/1.1 limit) an
    /// HTTP/2 connection with room; closed and expired ones are dropped, busy ones
    /// (response still streaming) stay queued.
    fn checkout(&self) -> Checkout {
        let busy = {
            let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(tx) = Self::idle_h1(&mut conns, self.idle_timeout) {
                drop(conns);
                if self.h2_open.load(Ordering::Acquire) > 0 {
                    self.h2.prune_idle();
                }
                return Checkout::Ready(tx);
            }
            !conns.is_empty()
        };
        if self.h1_open.load(Ordering::Acquire) < self.h1_max
            && !self.h2_only.load(Ordering::Acquire)
        {
            // Room for another HTTP/1.1 connection: HTTP/2 carries only the requests past
            // them, so the pool goes back to HTTP/1.1 once a burst is over.
            return if busy {
                Checkout::Busy
            } else {
                Checkout::Empty
            };
        }
        match self.h2.pick() {
            Pick::Room(tx, slot) => Checkout::H2(tx, slot),
            Pick::Full => Checkout::Busy,
            Pick::None if busy => Checkout::Busy,
            Pick::None => Checkout::Empty,
        }
    }

    /// The first queued HTTP/1.1 connection that is idle, taken out of the queue; closed
    /// and expired ones are dropped, busy ones stay.
    fn idle_h1(
        conns: &mut VecDeque<Pooled>,
        idle_timeout: Duration,
    ) -> Option<http1::SendRequest<UpstreamBody>> {
        for _ in 0..conns.len() {
            let Some(conn) = conns.pop_front() else {
                break;
            };
            if conn.tx.is_closed() {
                continue;
            }
            if conn.tx.is_ready() {
                if conn.since.elapsed() > idle_timeout {
                    continue;
                }
                return Some(conn.tx);
            }
            conns.push_back(conn);
        }
        None
    }

    /// HTTP/1.1 and HTTP/2 connections open now.
    pub(super) fn open_connections(&self) -> (usize, usize) {
        (
            self.h1_open.load(Ordering::Acquire),
            self.h2_open.load(Ordering::Acquire),
        )
    }

    /// The upstream's `Host` value (the port only when not the scheme's default).
    pub(super) fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    fn checkin(&self, tx: http1::SendRequest<UpstreamBody>) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        // Past the cap the sender is dropped: hyper closes the connection once its
        // response is done.
        if conns.len() < MAX_POOLED {
            conns.push_back(Pooled {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Opens a connection: HTTP/1.1 only when `share` holds its place under the limit,
    /// else offering h2.
    async fn connect(&self, share: Option<ConnShare>) -> Result<Fresh, ProxyError> {
        let unreachable =
            |source: crate::error::BoxError| ProxyError::UpstreamUnreachable { source };
        let offer = if share.is_some() {
            Alpn::H1Only
        } else {
            Alpn::H2OrH1
        };
        let io = match self.connector.connect_offering(&self.origin, offer).await {
            Err(e) if e.alpn_refused() && offer == Alpn::H1Only => {
                // Only h2 would do: every later connection offers it, one at a time.
                self.h2_only.store(true, Ordering::Release);
                return Ok(Fresh::H2Only);
            }
            connected => connected.map_err(|e| unreachable(Box::new(e)))?,
        };
        if io.is_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(self.h2_keep_alive)
                .handshake(io)
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            let h2_share = ConnShare::take(&self.h2_open).0;
            tokio::spawn(async move {
                let _share = h2_share;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            let slot = self.h2.add(tx.clone());
            return Ok(Fresh::H2(tx, slot));
        }
        let share = match share {
            Some(share) => share,
            None => {
                // Offered h2, answered HTTP/1.1.
                self.h2.saw_http1();
                ConnShare::take(&self.h1_open).0
            }
        };
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        tokio::spawn(async move {
            let _share = share;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Fresh::H1(tx))
    }
}

/// Sends on the HTTP/2 connection once it can take another stream. The URI stays
/// absolute: it becomes `:scheme` and `:authority`.
async fn send_h2(
    tx: &mut http2::SendRequest<UpstreamBody>,
    mut req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
    // `:authority` carries the host; a `Host` field beside it is redundant.
    req.headers_mut().remove(header::HOST);
    if tx.ready().await.is_err() {
        // Closed while idle: hand the request back unsent, like `try_send_request` does.
        return tx.try_send_request(req).await;
    }
    tx.try_send_request(req).await
}

/// What the legacy client does for HTTP/1: origin-form target, Host from the URI.
fn origin_form(req: &mut Request<UpstreamBody>, host: &HeaderValue) {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    req.headers_mut()
        .entry(header::HOST)
        .or_insert_with(|| host.clone());
}

fn failed(e: hyper::Error) -> ProxyError {
    ProxyError::UpstreamFailed {
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::connect::Alpn;
    use hyper_util::rt::TokioIo;

    /// An HTTP/1.1 upstream on an ephemeral port that counts the connections it accepted
    /// and answers every request with its path and Host; with `close`, it asks for each
    /// connection to be closed after its response.
    async fn upstream(close: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let text = format!(
                        "{} {}",
                        req.uri(),
                        req.headers()[header::HOST].to_str().unwrap()
                    );
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    if close {
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (authority, accepted)
    }

    async fn get(pool: &Pool, authority: &Authority, path: &str) -> String {
        let uri = format!("http://{authority}{path}");
        let req = Request::post(uri)
            .body(Either::Left(Full::new(Bytes::from_static(b"{}"))))
            .unwrap();
        let resp = pool.send(Box::new(req)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn pool(authority: &Authority) -> Pool {
        pool_for("http", authority)
    }

    fn pool_for(scheme: &str, authority: &Authority) -> Pool {
        let trust = Arc::new(crate::upstream::trust::Trust::fixed(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        ));
        let connector = Connector::new(trust, None, Duration::from_secs(5), Alpn::H2OrH1);
        let scheme = scheme.parse().unwrap();
        Pool::new(
            connector,
            &scheme,
            authority,
            Duration::from_secs(90),
            Duration::from_secs(30),
            64,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection_in_origin_form_with_host() {
        let (authority, accepted) = upstream(false).await;
        let pool = pool(&authority);
        for i in 0..5 {
            let path = format!("/v1/chat/completions?i={i}");
            assert_eq!(
                get(&pool, &authority, &path).await,
                format!("{path} {authority}")
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_connections_then_share_them() {
        let (authority, accepted) = upstream(false).await;
        let pool = pool(&authority);
        let answers = futures_util::future::join_all(
            (0..4).map(|i| get(&pool, &authority, if i % 2 == 0 { "/a" } else { "/b" })),
        )
        .await;
        assert_eq!(answers.iter().filter(|a| a.starts_with("/a ")).count(), 2);
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=4).contains(&opened), "{opened}");
        for _ in 0..4 {
            get(&pool, &authority, "/c").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened, "idle ones reused");
    }

    #[tokio::test]
    async fn connections_closed_by_the_upstream_are_replaced() {
        let (authority, accepted) = upstream(true).await;
        let pool = pool(&authority);
        for _ in 0..3 {
            assert_eq!(
                get(&pool, &authority, "/x").await,
                format!("/x {authority}")
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn host_header_leaves_out_the_default_port_like_hyper_util() {
        let host = |scheme: &str, a: &str| pool_for(scheme, &a.parse().unwrap()).host_header;
        assert_eq!(host("http", "gw:80"), "gw");
        assert_eq!(host("http", "gw"), "gw");
        assert_eq!(host("http", "gw:443"), "gw:443");
        assert_eq!(host("https", "gw:443"), "gw");
        assert_eq!(host("https", "gw:80"), "gw:80");
        assert_eq!(host("http", "[::1]:8080"), "[::1]:8080");
    }

    #[tokio::test]
    async fn nobody_listening_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        drop(listener);
        let req = Request::get(format!("http://{authority}/"))
            .body(Either::Left(Full::new(Bytes::new())))
            .unwrap();
        let err = pool(&authority).send(Box::new(req)).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::UpstreamUnreachable { .. }),
            "{err:?}"
        );
    }
}
