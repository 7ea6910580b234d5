//! Accepting and serving connections on a listener, with bounds: a cap on open
//! connections, a deadline for request heads, an idle timeout, and a graceful drain.
//!
//! What it does: [`Connections::accept`] takes a permit before each accept (at the cap
//! it waits, and the kernel queues new connections), serves each connection with hyper
//! (HTTP/1 with upgrades, HTTP/2), and closes it gracefully when
//! - no request arrived within `head_timeout` of the accept (silent or half-sent head),
//! - an HTTP/1 request head began but did not complete within `head_timeout`,
//! - no request was in flight for `idle_timeout`;
//!
//! [`Connections::drain`] closes all of them gracefully and waits up to a grace period.
//!
//! Why not hyper's own `header_read_timeout`: it also runs between keep-alive requests
//! (closing every idle HTTP/1 connection after the head timeout) and does not cover the
//! protocol sniffing before HTTP/1 or HTTP/2 is chosen (a silent connection never ends).
//!
//! Why the protocol is chosen by peeking at the socket ([`sniff`]) rather than by
//! hyper-util's `auto` builder: `auto` reads the first bytes itself and hands them to
//! HTTP/1 first, so hyper's first read is a few bytes, and its read buffer, topped up to
//! 8 KiB of free room before the next read, doubles to 16 KiB for the life of every
//! connection. Peeking leaves the bytes in the socket: hyper reads the whole head at once
//! into one 8 KiB buffer (1,000 concurrent streams: about 8 MiB less). `auto` stays for the
//! rare HTTP/2 preface that arrives in pieces.
//!
//! What it does not do: bound a request in flight (a slow body or a stalled reader is
//! the proxy's and the upstream's business), or count a connection once it is upgraded
//! (a WebSocket tunnel leaves hyper at the 101, and its permit is returned then).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::BoxError;

mod activity;

use activity::{Activity, Tracked, WatchedIo};

/// A request head (the first one: from the accept) must arrive within this. Generous for
/// a loopback client; short enough that stuck connections do not pile up to the cap.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight for this long is closed. Longer than common
/// HTTP client pools keep an idle connection (90s at most), so the client closes first
/// and never sends a request into a connection we are closing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Open proxy connections at most. Measured: about 23 KiB per idle keep-alive HTTP/1
/// connection (6 KiB before its first request), so 2048 of them hold about 46 MiB, well
/// inside the injected container's default 128 MiB limit with room for the requests
/// themselves, and twice the 1,000 concurrent streams an HTTP/1 client (one connection
/// per stream) may run.
pub const MAX_CONNECTIONS: u32 = 2048;
// 1,000 concurrent streams over HTTP/1 must fit under the cap.
const _: () = assert!(MAX_CONNECTIONS >= 1000);
/// Open admin connections at most: probes and scrapes need a handful.
pub const ADMIN_MAX_CONNECTIONS: u32 = 64;

/// Bounds of the connections on one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time for a request head: from the accept for the first, from its first byte for a
    /// later HTTP/1 one.
    pub head_timeout: Duration,
    /// Time without a request in flight before the connection is closed.
    pub idle_timeout: Duration,
    /// Open connections at most (at least 1 is used).
    pub max_connections: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            head_timeout: HEAD_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// The connections of one listener: the cap, and the signal that drains them.
pub(super) struct Connections {
    limits: ConnLimits,
    permits: Arc<Semaphore>,
    /// The permit count, for waiting until every connection has returned its permit.
    total: u32,
    drain: CancellationToken,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

impl Connections {
    pub(super) fn new(limits: ConnLimits) -> Self {
        let total = limits.max_connections.max(1);
        let permits = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            limits,
            permits: Arc::new(Semaphore::new(permits)),
            total: u32::try_from(permits).unwrap_or(u32::MAX),
            drain: CancellationToken::new(),
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
            auto: auto::Builder::new(TokioExecutor::new()),
        }
    }

    /// Accepts connections until `stop` resolves and serves each with a clone of
    /// `service` in its own task.
    pub(super) async fn accept<S, B>(
        &self,
        listener: &TcpListener,
        stop: impl Future<Output = ()>,
        service: S,
    ) where
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        tokio::pin!(stop);
        loop {
            // At the cap, wait here: unaccepted connections wait in the kernel's queue.
            let permit = tokio::select! {
                () = &mut stop => return,
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    // Never closed; if it were, there is nothing left to serve.
                    Err(_closed) => return,
                },
            };
            let tcp = tokio::select! {
                () = &mut stop => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(e) => {
                        // E.g. out of file descriptors: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Small request/response writes: don't wait for Nagle.
            let _ = tcp.set_nodelay(true);
            let activity = Arc::new(Activity::new());
            let service = Tracked {
                inner: service.clone(),
                activity: Arc::clone(&activity),
            };
            let (limits, drain) = (self.limits, self.drain.clone());
            let (h1, h2, auto) = (self.http1.clone(), self.http2.clone(), self.auto.clone());
            tokio::spawn(async move {
                // A client silent from the start is closed at the head deadline, as ever.
                let protocol = tokio::select! {
                    protocol = sniff(&tcp) => protocol,
                    () = activity.expired(&limits) => None,
                    () = drain.cancelled() => None,
                };
                let io = TokioIo::new(WatchedIo {
                    tcp,
                    activity: Arc::clone(&activity),
                });
                match protocol {
                    // Closed, or silent past the deadline: nothing to serve.
                    None => {}
                    // With upgrades: WebSocket (Realtime API) tunnels, see `proxy::upgrade`.
                    Some(Protocol::Http1) => {
                        let conn = h1.serve_connection(io, service).with_upgrades();
                        drive(conn, |c| c.graceful_shutdown(), &activity, limits, &drain).await;
                    }
                    // Boxed, the rarer kinds: the task's future is as large as its largest
                    // arm, and every HTTP/1 connection would carry their size.
                    Some(Protocol::Http2) => {
                        let conn = Box::pin(h2.serve_connection(io, service));
                        drive(
                            conn,
                            |c| unbox(c).graceful_shutdown(),
                            &activity,
                            limits,
                            &drain,
                        )
                        .await;
                    }
                    Some(Protocol::Unsure) => {
                        let conn = Box::pin(auto.serve_connection_with_upgrades(io, service));
                        drive(
                            conn,
                            |c| GracefulConnection::graceful_shutdown(unbox(c)),
                            &activity,
                            limits,
                            &drain,
                        )
                        .await;
                    }
                }
                drop(permit);
            });
        }
    }

    /// Closes every connection gracefully (in-flight requests finish) and waits up to
    /// `grace` for all of them; `false` when some were still open.
    pub(super) async fn drain(&self, grace: Duration) -> bool {
        self.drain.cancel();
        let all_closed = self.permits.acquire_many(self.total);
        matches!(tokio::time::timeout(grace, all_closed).await, Ok(Ok(_)))
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// The whole HTTP/2 client preface (prior knowledge, h2c).
    Http2,
    /// A prefix of the HTTP/2 preface so far: let hyper-util read on and decide.
    Unsure,
}

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for the first bytes and tells the protocol without consuming them; `None` when
/// the client closed first. One peek: more bytes of a split preface cannot be awaited
/// without spinning (the socket stays readable), so that rare case is [`Protocol::Unsure`].
async fn sniff(tcp: &TcpStream) -> Option<Protocol> {
    let mut first = [0_u8; H2_PREFACE.len()];
    let n = tcp.peek(&mut first).await.ok()?;
    Some(classify(first.get(..n)?))
}

fn classify(first: &[u8]) -> Protocol {
    if first.is_empty() {
        // `sniff` maps end-of-stream to `None` before this; nothing to go on.
        Protocol::Unsure
    } else if !H2_PREFACE.starts_with(first) {
        Protocol::Http1
    } else if first.len() == H2_PREFACE.len() {
        Protocol::Http2
    } else {
        Protocol::Unsure
    }
}

/// The connection inside a boxed one.
fn unbox<C: ?Sized>(boxed: Pin<&mut Pin<Box<C>>>) -> Pin<&mut C> {
    boxed.get_mut().as_mut()
}

/// Serves one connection until it ends, closing it when a deadline passes or on drain.
/// `close` asks the connection to finish gracefully (each hyper connection type has its
/// own `graceful_shutdown`).
async fn drive<C, E>(
    conn: C,
    close: impl FnOnce(Pin<&mut C>),
    activity: &Activity,
    limits: ConnLimits,
    drain: &CancellationToken,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    // The watchdog is polled only when its own timer or the drain signal fired, not on
    // every wake-up of the connection (several per request): a FuturesUnordered polls
    // a future only after that future's waker was called.
    let mut watchdog = FuturesUnordered::new();
    watchdog.push(async {
        tokio::select! {
            () = activity.expired(&limits) => true,
            () = drain.cancelled() => false,
        }
    });
    let timed_out = tokio::select! {
        biased;
        result = conn.as_mut() => return log_end(result),
        Some(timed_out) = watchdog.next() => timed_out,
    };
    drop(watchdog);
    close(conn.as_mut());
    if timed_out {
        tracing::debug!("closing a connection: no request head in time, or idle");
        // Nothing is in flight, so closing is quick; a peer that does not take the
        // close (e.g. an HTTP/2 GOAWAY) gets one more head timeout, then the socket goes.
        if let Ok(result) = tokio::time::timeout(limits.head_timeout, conn).await {
            log_end(result);
        }
    } else {
        // Draining: the caller bounds the wait.
        log_end(conn.await);
    }
}

fn log_end<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_choose_the_protocol() {
        assert_eq!(
            classify(b"POST /v1/chat/completions HTTP/1.1\r\n"),
            Protocol::Http1
        );
        assert_eq!(classify(b"G"), Protocol::Http1);
        assert_eq!(classify(b"PRX"), Protocol::Http1);
        assert_eq!(classify(H2_PREFACE), Protocol::Http2);
        // A preface cut short: hyper-util reads on and decides.
        assert_eq!(classify(b"PRI * HTTP/2"), Protocol::Unsure);
        assert_eq!(classify(b"P"), Protocol::Unsure);
    }
}
