//! The bounds of the admission server: deadlines on every phase of a connection, a cap on
//! open connections, on the size of a review, on the bytes of reviews held in memory and
//! on the reviews worked on at once. Production values are the constants; tests shorten
//! the deadlines through [`Limits`].
//!
//! The sizes are chosen so that whatever arrives the server stays well under the 128 MiB
//! memory limit of its Deployment: at most [`MAX_CONNECTIONS`] connections, each buffering
//! at most an HTTP/2 flow-control window ([`H2_WINDOW`]) or an HTTP/1 read buffer
//! ([`H1_MAX_BUF`]) of unread input, plus [`REVIEW_BYTES_BUDGET`] of request and response
//! bodies, plus the working memory of [`CONCURRENT_REVIEWS`] reviews (about the size of
//! their body, see `admission`).

use std::time::Duration;

/// Largest review body accepted: a Pod is at most about 1.5 MiB (etcd's default request
/// limit) and an UPDATE review carries it twice (`object` and `oldObject`).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// A client that has not finished the TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from the end of the handshake to the first request, and for each HTTP/1 request
/// head (which includes the wait for the next request on a kept-alive HTTP/1 connection).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to receive a whole request body, however it trickles in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/2 connection with no request for this long is closed (GOAWAY). kube-apiserver
/// reconnects when it needs to; an idle connection only costs memory here.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Open connections at most. At the cap a new client takes the slot of a connection with no
/// request in flight (never-served ones first); when every connection is busy, further
/// clients wait in the listen backlog until one closes. kube-apiserver multiplexes reviews
/// over a few HTTP/2 connections per instance.
pub const MAX_CONNECTIONS: usize = 256;
/// Bytes of review bodies held at once: requests being read or decided and responses not
/// yet sent. A review that does not fit waits, then gets 429.
pub const REVIEW_BYTES_BUDGET: usize = 16 * 1024 * 1024;
/// Reviews decided at once (CPU-bound work, run off the async workers so `/healthz` and
/// the connections stay responsive). A review that finds none free waits, then gets 429.
pub const CONCURRENT_REVIEWS: usize = 4;
/// How long a review waits for room ([`REVIEW_BYTES_BUDGET`], [`CONCURRENT_REVIEWS`])
/// before it is answered 429: short next to the webhook's `timeoutSeconds: 5`.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Grace a closing connection gets to finish (an HTTP/2 GOAWAY exchange) once it has no
/// request in flight; after it, the connection is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// HTTP/2 flow-control window of a stream and of a connection: the most a client can send
/// before the server reads it.
pub const H2_WINDOW: u32 = 64 * 1024;
/// HTTP/2 concurrent streams per connection.
pub const H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 header list size: review requests carry a handful of headers.
pub const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// HTTP/1 read buffer: the largest request head, and the chunk size of a body read.
pub const H1_MAX_BUF: usize = 16 * 1024;

/// The server's bounds. [`Limits::default`] is what production runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// [`HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// [`BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// [`CLOSE_GRACE`].
    pub close_grace: Duration,
    /// [`MAX_CONNECTIONS`] (at least 1).
    pub max_connections: usize,
    /// [`MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// [`REVIEW_BYTES_BUDGET`] (at least `max_body_bytes`).
    pub review_bytes_budget: usize,
    /// [`CONCURRENT_REVIEWS`] (at least 1).
    pub concurrent_reviews: usize,
    /// [`QUEUE_TIMEOUT`].
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            head_timeout: HEAD_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            close_grace: CLOSE_GRACE,
            max_connections: MAX_CONNECTIONS,
            max_body_bytes: MAX_BODY_BYTES,
            review_bytes_budget: REVIEW_BYTES_BUDGET,
            concurrent_reviews: CONCURRENT_REVIEWS,
            queue_timeout: QUEUE_TIMEOUT,
        }
    }
}

impl Limits {
    /// The limits with counts raised to what the server needs to make progress: one
    /// connection, one review, room for one largest body.
    pub(crate) fn sane(mut self) -> Self {
        self.max_connections = self.max_connections.max(1);
        self.concurrent_reviews = self.concurrent_reviews.max(1);
        self.review_bytes_budget = self.review_bytes_budget.max(self.max_body_bytes);
        self
    }
}
