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
//! HTTP/2: connections come from the shared [`Connector`], which offers `h2, http/1.1` by
//! ALPN. When the upstream picks h2, the connection is kept and later requests ride it,
//! concurrently, up to a stream cap per connection; past it another connection is opened
//! (`pool/h2.rs`). The FIFO queue then stays empty.
//!
//! What it does not do: protocol upgrades: those take hyper-util's client over an
//! HTTP/1.1-only connector (`upstream.rs`). A request that hyper hands back unsent (the
//! connection closed while idle) is tried again on the next connection, as the legacy
//! client does; its body, streamed or not, was never read, and nothing that may have
//! reached the upstream is re-sent.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;
use super::connect::Connector;
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
}

#[derive(Debug)]
struct Pooled {
    tx: http1::SendRequest<UpstreamBody>,
    /// When it last went back into the queue.
    since: Instant,
}

impl Pool {
    /// A pool for the upstream at `scheme` and `authority`, connecting with `connector`.
    pub(super) fn new(
        connector: Connector,
        scheme: &http::uri::Scheme,
        authority: &Authority,
        idle_timeout: Duration,
        h2_keep_alive: Duration,
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
        })
    }

    /// Sends `req` (absolute URI) and waits for the response headers.
    pub(super) async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, ProxyError> {
        let mut yielded = false;
        loop {
            match self.checkout() {
                Checkout::H2(mut tx, slot) => match send_h2(&mut tx, req).await {
                    Ok(resp) => return Ok(resp.map(|b| UpstreamIncoming::new(b, Some(slot)))),
                    Err(mut e) => match e.take_message() {
                        // Never sent: the connection is going away; forget it.
                        Some(unsent) => {
                            self.h2.forget(&slot);
                            req = unsent;
                            continue;
                        }
                        None => return Err(failed(e.into_error())),
                    },
                },
                Checkout::Ready(mut tx) => {
                    origin_form(&mut req, &self.host_header);
                    match tx.try_send_request(req).await {
                        Ok(resp) => {
                            self.checkin(tx);
                            return Ok(resp.map(|b| UpstreamIncoming::new(b, None)));
                        }
                        Err(mut e) => match e.take_message() {
                            // Never written: the connection closed while idle; use another.
                            Some(unsent) => {
                                req = unsent;
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
            let guard = match self.h2.gate().await {
                Gate::Connect(guard) => guard,
                // Another request opened a connection meanwhile: look again.
                Gate::Wait => continue,
            };
            // Boxed: a new connection is rare, and its handshakes' state would size
            // every request's future.
            let fresh = Box::pin(self.connect()).await;
            if fresh.is_err() {
                self.h2.connect_failed();
            }
            drop(guard);
            return match fresh? {
                Fresh::H2(mut tx, slot) => send_h2(&mut tx, req)
                    .await
                    .map(|resp| resp.map(|b| UpstreamIncoming::new(b, Some(slot))))
                    .map_err(|e| failed(e.into_error())),
                Fresh::H1(mut tx) => {
                    origin_form(&mut req, &self.host_header);
                    match tx.try_send_request(req).await {
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

    /// An HTTP/2 connection with room if there is one, else the first queued HTTP/1.1
    /// connection that is idle; closed and expired ones are dropped, busy ones (response
    /// still streaming) stay queued.
    fn checkout(&self) -> Checkout {
        match self.h2.pick() {
            Pick::Room(tx, slot) => return Checkout::H2(tx, slot),
            Pick::Full => return Checkout::Busy,
            Pick::None => {}
        }
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..conns.len() {
            let Some(conn) = conns.pop_front() else {
                break;
            };
            if conn.tx.is_closed() {
                continue;
            }
            if conn.tx.is_ready() {
                if conn.since.elapsed() > self.idle_timeout {
                    continue;
                }
                return Checkout::Ready(conn.tx);
            }
            conns.push_back(conn);
        }
        if conns.is_empty() {
            Checkout::Empty
        } else {
            Checkout::Busy
        }
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

    async fn connect(&self) -> Result<Fresh, ProxyError> {
        let unreachable =
            |source: crate::error::BoxError| ProxyError::UpstreamUnreachable { source };
        let io = self
            .connector
            .connect(&self.origin)
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        if io.is_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(self.h2_keep_alive)
                .handshake(io)
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            let slot = self.h2.add(tx.clone());
            return Ok(Fresh::H2(tx, slot));
        }
        self.h2.saw_http1();
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        tokio::spawn(async move {
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
        let resp = pool.send(req).await.unwrap();
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
        let err = pool(&authority).send(req).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::UpstreamUnreachable { .. }),
            "{err:?}"
        );
    }
}
