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
//! What it does not do: bound a request in flight (a slow body or a stalled reader is
//! the proxy's and the upstream's business), or count a connection once it is upgraded
//! (a WebSocket tunnel leaves hyper at the 101, and its permit is returned then).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
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
    builder: auto::Builder<TokioExecutor>,
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
            builder: auto::Builder::new(TokioExecutor::new()),
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
            let io = TokioIo::new(WatchedIo {
                tcp,
                activity: Arc::clone(&activity),
            });
            let service = Tracked {
                inner: service.clone(),
                activity: Arc::clone(&activity),
            };
            let conn = self
                .builder
                // With upgrades: WebSocket (Realtime API) tunnels, see `proxy::upgrade`.
                .serve_connection_with_upgrades(io, service)
                .into_owned();
            let (limits, drain) = (self.limits, self.drain.clone());
            tokio::spawn(async move {
                drive(conn, &activity, limits, &drain).await;
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

/// Serves one connection until it ends, closing it when a deadline passes or on drain.
async fn drive<C>(conn: C, activity: &Activity, limits: ConnLimits, drain: &CancellationToken)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let timed_out = tokio::select! {
        result = conn.as_mut() => return log_end(result),
        () = activity.expired(&limits) => true,
        () = drain.cancelled() => false,
    };
    conn.as_mut().graceful_shutdown();
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
