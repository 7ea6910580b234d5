//! A small pool of plain-http HTTP/1.1 upstream connections on hyper's low-level client
//! (`hyper::client::conn::http1`), for buffered (JSON) requests to an `http://` upstream,
//! e.g. an in-cluster gateway.
//!
//! Why: hyper-util's legacy client spends a pool lookup keyed by scheme and host plus one
//! spawned task per request (to hand the connection back when the response ends) on top
//! of the connection's own task. Here a connection goes back into a FIFO queue as soon as
//! its response headers arrive; a checkout takes the first one hyper reports ready (its
//! previous exchange finished), drops closed ones, and connects when none is ready.
//! Measured on loopback: less proxy CPU and lower added latency per request (see
//! BENCHMARKS.md).
//!
//! What it does not do: TLS, HTTP/2, protocol upgrades or streamed request bodies: those
//! keep the hyper-util client (`upstream.rs` decides). A request that hyper hands back
//! unsent (the connection closed while idle) is tried again on the next connection, as
//! the legacy client does; nothing that may have reached the upstream is re-sent.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::UpstreamBody;
use crate::error::{BoxError, ProxyError};

/// Most connections kept in the queue; one past that is closed after its response.
const MAX_POOLED: usize = 256;

/// See the module docs.
#[derive(Debug)]
pub(super) struct H1Pool {
    host: String,
    port: u16,
    host_header: HeaderValue,
    connect_timeout: Duration,
    idle_timeout: Duration,
    conns: Mutex<VecDeque<Pooled>>,
}

/// What a look into the queue found.
enum Checkout {
    /// An idle connection, taken out of the queue.
    Ready(SendRequest<UpstreamBody>),
    /// Only connections still busy with a response.
    Busy,
    /// No connection at all.
    Empty,
}

#[derive(Debug)]
struct Pooled {
    tx: SendRequest<UpstreamBody>,
    /// When it last went back into the queue.
    since: Instant,
}

impl H1Pool {
    /// A pool for `authority` (plain http, default port 80).
    pub(super) fn new(
        authority: &Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<Self> {
        // `host()` keeps the brackets of an IPv6 literal; the socket API wants none.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        // The Host header as hyper-util's client writes it: the port only when not 80.
        let host_header = match authority.port_u16() {
            Some(port) if port != 80 => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        Some(Self {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            host_header: HeaderValue::from_str(&host_header).ok()?,
            connect_timeout,
            idle_timeout,
            conns: Mutex::new(VecDeque::new()),
        })
    }

    /// Sends `req` (absolute URI) and waits for the response headers.
    pub(super) async fn send(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        // What the legacy client does for HTTP/1: origin-form target, Host from the URI.
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host_header.clone());
        let mut yielded = false;
        loop {
            let mut tx = match self.checkout() {
                Checkout::Ready(tx) => tx,
                Checkout::Busy if !yielded => {
                    // A connection whose response just ended becomes ready once its task
                    // has run: give it that chance before opening another one.
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                Checkout::Busy | Checkout::Empty => break,
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(tx);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed while idle; use another.
                    Some(unsent) => req = unsent,
                    None => return Err(failed(e.into_error())),
                },
            }
        }
        let mut tx = self.connect().await?;
        match tx.try_send_request(req).await {
            Ok(resp) => {
                self.checkin(tx);
                Ok(resp)
            }
            Err(e) => Err(failed(e.into_error())),
        }
    }

    /// The first queued connection that is idle; closed and expired ones are dropped,
    /// busy ones (response still streaming) stay queued.
    fn checkout(&self) -> Checkout {
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

    fn checkin(&self, tx: SendRequest<UpstreamBody>) {
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

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, ProxyError> {
        let unreachable = |source: BoxError| ProxyError::UpstreamUnreachable { source };
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(unreachable(Box::new(e))),
            Err(_elapsed) => {
                return Err(unreachable(
                    format!("connect timed out after {:?}", self.connect_timeout).into(),
                ));
            }
        };
        // Small request writes: don't wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(Box::new(e)))?;
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }
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

    async fn get(pool: &H1Pool, authority: &Authority, path: &str) -> String {
        let uri = format!("http://{authority}{path}");
        let req = Request::post(uri)
            .body(Either::Left(Full::new(Bytes::from_static(b"{}"))))
            .unwrap();
        let resp = pool.send(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn pool(authority: &Authority) -> H1Pool {
        H1Pool::new(authority, Duration::from_secs(5), Duration::from_secs(90)).unwrap()
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
        let host = |a: &str| {
            let pool = H1Pool::new(&a.parse().unwrap(), Duration::ZERO, Duration::ZERO).unwrap();
            (pool.host_header, pool.host, pool.port)
        };
        assert_eq!(host("gw:80"), ("gw".parse().unwrap(), "gw".to_owned(), 80));
        assert_eq!(host("gw"), ("gw".parse().unwrap(), "gw".to_owned(), 80));
        assert_eq!(
            host("[::1]:8080"),
            ("[::1]:8080".parse().unwrap(), "::1".to_owned(), 8080)
        );
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
