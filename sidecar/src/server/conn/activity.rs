//! What one connection is doing, observed without waking anyone per request: requests
//! in flight (a guard held until the response body is done), when it went idle, and, for
//! HTTP/1, when the next request head began (the first byte read while idle). The
//! watchdog in `conn` turns that into a deadline, waking only on its own timer.
//!
//! What it does not do: close anything (the watchdog does), or look at the bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ConnLimits;

/// What one connection is doing, shared by its service (requests), its socket (reads)
/// and its watchdog. Times are milliseconds since the accept.
#[derive(Debug)]
pub(super) struct Activity {
    opened: Instant,
    /// Requests whose response has not finished.
    inflight: AtomicUsize,
    /// A request has arrived; until then the first head's deadline applies.
    served: AtomicBool,
    /// The last request was HTTP/1 (HTTP/2 reads pings and settings while idle, so only
    /// HTTP/1 reads mean a head has begun).
    http1: AtomicBool,
    /// When the last request finished.
    idle_since: AtomicU64,
    /// Armed while an idle HTTP/1 connection waits for a head; the first byte read
    /// disarms it and stamps `head_since`.
    head_watch: AtomicBool,
    head_since: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            opened: Instant::now(),
            inflight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            http1: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_watch: AtomicBool::new(false),
            head_since: AtomicU64::new(NEVER),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn at(&self, millis: u64, plus: Duration) -> Instant {
        self.opened + Duration::from_millis(millis) + plus
    }

    fn request_started(self: &Arc<Self>, version: Version) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.http1
            .store(version < Version::HTTP_2, Ordering::Release);
        self.head_watch.store(false, Ordering::Release);
        self.head_since.store(NEVER, Ordering::Release);
        InflightGuard(Arc::clone(self))
    }

    fn request_finished(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now(), Ordering::Release);
            if self.http1.load(Ordering::Acquire) {
                self.head_watch.store(true, Ordering::Release);
            }
        }
    }

    /// Called for every successful read with data: one load unless a head just began.
    fn on_read(&self) {
        if self.head_watch.load(Ordering::Relaxed) && self.head_watch.swap(false, Ordering::AcqRel)
        {
            self.head_since.store(self.now(), Ordering::Release);
        }
    }

    /// When the connection is due to close, or `None` while a request is in flight.
    fn deadline(&self, limits: &ConnLimits) -> Option<Instant> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Acquire) {
            return Some(self.at(0, limits.head_timeout));
        }
        let idle = self.at(self.idle_since.load(Ordering::Acquire), limits.idle_timeout);
        match self.head_since.load(Ordering::Acquire) {
            NEVER => Some(idle),
            since => Some(idle.min(self.at(since, limits.head_timeout))),
        }
    }

    /// Resolves once a deadline has passed with no request in flight. Nothing wakes it
    /// but its own timer: it sleeps until the deadline it can see, and never longer than
    /// the shortest deadline that could appear meanwhile (a head beginning on an HTTP/1
    /// connection, or the connection going idle), so every deadline is still kept
    /// exactly. Waking it when a head began instead cost a timer re-arm per request.
    pub(super) async fn expired(&self, limits: &ConnLimits) {
        loop {
            let now = Instant::now();
            let recheck = now + self.recheck_within(limits);
            match self.deadline(limits) {
                Some(at) if at <= now => return,
                Some(at) => tokio::time::sleep_until(at.min(recheck)).await,
                None => tokio::time::sleep_until(recheck).await,
            }
        }
    }

    /// The soonest a deadline not yet visible could fall: a head beginning now on an
    /// HTTP/1 connection is due after the head timeout; going idle now, after the idle
    /// timeout. (HTTP/2 reads are not heads.)
    fn recheck_within(&self, limits: &ConnLimits) -> Duration {
        if self.http1.load(Ordering::Acquire) || !self.served.load(Ordering::Acquire) {
            limits.head_timeout.min(limits.idle_timeout)
        } else {
            limits.idle_timeout
        }
    }
}

/// Held by a request until its response body is done (or dropped).
#[derive(Debug)]
struct InflightGuard(Arc<Activity>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The socket, reporting reads to the connection's [`Activity`].
pub(super) struct WatchedIo {
    pub(super) tcp: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The service, marking each request in flight until its response body is done.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.request_started(req.version());
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being handled; the guard moves into the response body.
    pub(super) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InflightGuard>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(result.map(|resp| {
            resp.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is dropped.
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InflightGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits {
        head_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(90),
        max_connections: 1,
    };

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_through_its_states() {
        let a = Arc::new(Activity::new());
        let opened = a.opened;
        // Nothing yet: the first head is due from the accept.
        assert_eq!(a.deadline(&LIMITS), Some(opened + LIMITS.head_timeout));

        tokio::time::advance(Duration::from_secs(1)).await;
        let guard = a.request_started(Version::HTTP_11);
        assert_eq!(a.deadline(&LIMITS), None, "in flight: no deadline");
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(a.deadline(&LIMITS), None, "a long request is not cut");
        drop(guard);
        let idle_from = Instant::now();
        assert_eq!(a.deadline(&LIMITS), Some(idle_from + LIMITS.idle_timeout));

        // The next HTTP/1 head begins: now it has the head timeout, not the idle one.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_read();
        let head_from = Instant::now();
        assert_eq!(a.deadline(&LIMITS), Some(head_from + LIMITS.head_timeout));
        // Later reads of the same head do not move the deadline.
        tokio::time::advance(Duration::from_secs(3)).await;
        a.on_read();
        assert_eq!(a.deadline(&LIMITS), Some(head_from + LIMITS.head_timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_reads_while_idle_are_not_heads() {
        let a = Arc::new(Activity::new());
        drop(a.request_started(Version::HTTP_2));
        let idle_from = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        // A ping or a window update.
        a.on_read();
        assert_eq!(a.deadline(&LIMITS), Some(idle_from + LIMITS.idle_timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_requests_keep_the_connection_busy_until_the_last_ends() {
        let a = Arc::new(Activity::new());
        let first = a.request_started(Version::HTTP_2);
        let second = a.request_started(Version::HTTP_2);
        drop(first);
        assert_eq!(a.deadline(&LIMITS), None);
        tokio::time::advance(Duration::from_secs(7)).await;
        drop(second);
        assert_eq!(
            a.deadline(&LIMITS),
            Some(Instant::now() + LIMITS.idle_timeout)
        );
    }

    /// Limits with these timeouts, in seconds.
    fn timeouts(head: u64, idle: u64) -> ConnLimits {
        ConnLimits {
            head_timeout: Duration::from_secs(head),
            idle_timeout: Duration::from_secs(idle),
            max_connections: 1,
        }
    }

    /// The watchdog of `a` in its own task, answering when it fired.
    fn watch(a: &Arc<Activity>, limits: ConnLimits) -> tokio::task::JoinHandle<Instant> {
        let a = Arc::clone(a);
        tokio::spawn(async move {
            a.expired(&limits).await;
            Instant::now()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_while_idle_is_cut_at_its_own_deadline_though_nothing_woke_the_watchdog() {
        let a = Arc::new(Activity::new());
        drop(a.request_started(Version::HTTP_11));
        let idle_from = Instant::now();
        let watchdog = watch(&a, timeouts(10, 120));
        tokio::task::yield_now().await;
        // Idle for 37s (past three head timeouts), then a head begins and stalls.
        tokio::time::advance(Duration::from_secs(37)).await;
        a.on_read();
        let fired = watchdog.await.unwrap();
        assert_eq!(fired - idle_from, Duration::from_secs(47));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_at_the_idle_deadline_even_after_a_long_first_wait() {
        let a = Arc::new(Activity::new());
        let start = Instant::now();
        let watchdog = watch(&a, timeouts(60, 2));
        // Let the watchdog start waiting for the first head before the request comes.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(a.request_started(Version::HTTP_11));
        let fired = watchdog.await.unwrap();
        // Idle from 1s, closed at 1s + 2s: not at the 60s first-head deadline.
        assert_eq!(fired - start, Duration::from_secs(3));
    }
}
