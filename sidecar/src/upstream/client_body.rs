//! The client's request body on its way upstream, remembering whether reading it failed.
//!
//! Why: a streamed body is read while the upstream request is sent, so a client that
//! breaks its own framing (bad chunked encoding, fewer bytes than Content-Length) makes
//! the upstream exchange fail, and the upstream client reports that in its own terms
//! (over HTTP/2 only as a reset stream). The failure is recorded here as it happens, so
//! the proxy can answer 400 (the client's fault) instead of 502.
//!
//! What it does not do: change or count the bytes, or bound their size (`Limited` does).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The client's body, passed through frame by frame.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    failure: ReadFailure,
}

/// Set once reading the client's body failed; shared with whoever sent it upstream.
#[derive(Debug, Clone, Default)]
pub struct ReadFailure(Arc<OnceLock<String>>);

impl ReadFailure {
    /// What the HTTP layer reported, once reading failed.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl ClientBody {
    /// Wraps the client's body.
    pub fn new(inner: Incoming) -> Self {
        Self {
            inner,
            failure: ReadFailure::default(),
        }
    }

    /// The handle that tells whether reading failed.
    pub fn failure(&self) -> ReadFailure {
        self.failure.clone()
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            // The first failure is the cause; a later one would only repeat it.
            let _ = self.failure.0.set(describe_read_error(e));
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

/// A read error with its causes, e.g. "error reading a body from connection: invalid
/// chunk size line" (the outer message alone does not say what was wrong).
pub fn describe_read_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    for cause in std::iter::successors(e.source(), |c| c.source()) {
        out.push_str(": ");
        out.push_str(&cause.to_string());
    }
    out
}
