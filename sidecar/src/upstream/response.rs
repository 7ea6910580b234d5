//! The upstream response body as the proxy reads it: hyper's body plus, on the pool's
//! HTTP/2 connections, the stream's slot on its connection (`pool/h2.rs`). The slot is
//! held until the body ends, fails or is dropped, so the pool knows how many streams each
//! connection carries and opens another before a server's stream limit would make new
//! requests queue behind long streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;

pub(crate) use super::pool::StreamSlot;

pin_project! {
    /// See the module docs.
    #[derive(Debug)]
    pub struct UpstreamIncoming {
        #[pin]
        inner: Incoming,
        slot: Option<StreamSlot>,
    }
}

impl UpstreamIncoming {
    pub(crate) fn new(inner: Incoming, slot: Option<StreamSlot>) -> Self {
        Self { inner, slot }
    }
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // The stream is over: its slot is free for the next request.
            this.slot.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
