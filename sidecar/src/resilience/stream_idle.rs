//! Ends an upstream response body that goes quiet: once the headers arrived, a body
//! that yields nothing for `limits.stream_idle_timeout` fails with
//! [`ProxyError::StreamIdle`], which drops (and so closes) the upstream response. An
//! event stream is then ended with an error event by [`SseErrorTail`](super::SseErrorTail);
//! any other body fails, so the client sees its response cut rather than complete.
//!
//! Only time the sidecar spends waiting on the upstream counts: the clock starts when
//! the body is polled and has nothing, so a slow client (which stops polling) never
//! makes the upstream look idle. The timer is made at the first wait and moved lazily,
//! when it fires before the current wait's end, instead of on every frame: a busy stream
//! costs one clock read per wait and no timer work, and a body that never waits none.
//!
//! Not here: the time to the response headers (the attempt timeout of `retry`).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::{BoxError, ProxyError};

pin_project! {
    /// A response body that fails once its upstream stays idle too long.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // Made at the first wait: a body whose frames are always ready (most of them,
        // read with the headers) never touches the clock or the timer wheel.
        #[pin]
        timer: Option<Sleep>,
        limit: Duration,
        // When the current wait for a frame began; `None` right after a frame.
        waiting_since: Option<Instant>,
        fired: bool,
    }
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`; it may stay idle for at most `limit` at a time.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            timer: None,
            limit,
            waiting_since: None,
            fired: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.fired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting_since = None;
            return Poll::Ready(frame);
        }
        let since = *this.waiting_since.get_or_insert_with(Instant::now);
        // A limit too far to represent never ends a body.
        let Some(deadline) = since.checked_add(*this.limit) else {
            return Poll::Pending;
        };
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep_until(deadline)));
        }
        // Set just above: this `else` is never taken.
        let Some(mut timer) = this.timer.as_pin_mut() else {
            return Poll::Pending;
        };
        // The timer is armed for this wait or an earlier one, never later than `deadline`
        // (waits only start later): when it fires early, move it on and wait again.
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                break;
            }
            timer.as_mut().reset(deadline);
        }
        *this.fired = true;
        let error = ProxyError::StreamIdle { after: *this.limit };
        Poll::Ready(Some(Err(Box::new(error))))
    }

    fn is_end_stream(&self) -> bool {
        self.fired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    use super::*;

    /// A body fed through a channel, so the test decides when frames come.
    fn fed() -> (
        mpsc::Sender<Bytes>,
        impl Body<Data = Bytes, Error = BoxError>,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let frames = stream::unfold(rx, |mut rx| async move {
            let frame = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(frame)), rx))
        });
        (tx, StreamBody::new(frames))
    }

    fn idle_error(err: &BoxError) -> Option<Duration> {
        match err.downcast_ref::<ProxyError>() {
            Some(ProxyError::StreamIdle { after }) => Some(*after),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_body_fails_after_the_limit_and_then_ends() {
        let (tx, inner) = fed();
        let mut body = std::pin::pin!(IdleTimeout::new(inner, Duration::from_secs(300)));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(idle_error(&err), Some(Duration::from_secs(300)));
        assert_eq!(started.elapsed(), Duration::from_secs(300));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none(), "nothing after the error");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_wait() {
        let (tx, inner) = fed();
        let limit = Duration::from_secs(10);
        let mut body = std::pin::pin!(IdleTimeout::new(inner, limit));
        // Frames 6 s apart: each wait is under the limit, their sum is far over it.
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        feeder.await.unwrap();
        // The feeder is gone: the body ends cleanly, no idle error.
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_client_does_not_poll_is_not_idle_time() {
        let (tx, inner) = fed();
        let limit = Duration::from_secs(10);
        let mut body = std::pin::pin!(IdleTimeout::new(inner, limit));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // A slow client: the body is not polled for twice the limit.
        tokio::time::sleep(limit * 2).await;
        // Then the upstream answers within the limit of the new wait.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(body.as_mut().poll_frame(&mut cx), Poll::Pending));
        tokio::time::sleep(limit / 2).await;
        tx.send(Bytes::from_static(b"b")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "b");
    }
}
