//! The pool's HTTP/2 connections: as many as the open streams need.
//!
//! Why: a server caps the streams open at once on one connection (its
//! `SETTINGS_MAX_CONCURRENT_STREAMS`: hyper 200, Go 250, nginx 128), and hyper's client
//! queues every request past that cap until a stream ends. With chat streams that last
//! minutes, request 201 would wait minutes. hyper does not tell the peer's cap, so each
//! connection carries at most [`STREAMS_PER_CONN`] streams, the floor RFC 9113 (6.5.2)
//! recommends servers allow, and the next request opens another connection.
//!
//! Only one connection is opened at a time while the upstream speaks (or may speak)
//! HTTP/2: requests that find every connection full wait for it instead of each opening
//! their own, so a burst of 1,000 streams opens 10 connections, not 1,000. After a failed
//! connect, requests connect on their own again until one succeeds, so an unreachable
//! upstream fails each request within its connect timeout instead of queueing them behind
//! one another. A connection that carried nothing for the idle timeout is dropped at the
//! next request that looks at the pool (and hyper then closes it).
//!
//! The pool (`pool.rs`) opens these only past its HTTP/1.1 connections
//! (`limits.upstream_http1_connections`), unless that limit is 0.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use tokio::sync::Notify;

use crate::upstream::UpstreamBody;

/// Streams one HTTP/2 connection carries before the next request opens another.
pub(crate) const STREAMS_PER_CONN: usize = 100;

/// A stream's place on its connection; freed when dropped (see `response.rs`).
#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(open))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Conn {
    tx: SendRequest<UpstreamBody>,
    /// Streams open on it (slots taken).
    open: Arc<AtomicUsize>,
    /// When a stream last went on it.
    last_used: Instant,
}

/// What [`H2Conns::pick`] found.
pub(super) enum Pick {
    /// A connection with room, and the slot taken on it.
    Room(SendRequest<UpstreamBody>, StreamSlot),
    /// Connections, all full.
    Full,
    /// No HTTP/2 connection.
    None,
}

/// What the upstream answered by ALPN on the last connection.
const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// See the module docs.
#[derive(Debug)]
pub(super) struct H2Conns {
    conns: Mutex<Vec<Conn>>,
    idle_timeout: Duration,
    proto: AtomicU8,
    connecting: AtomicBool,
    connected: Notify,
    /// The last connect failed: requests no longer wait for one another.
    failing: AtomicBool,
}

/// Whether to open a connection or wait for the one being opened.
pub(super) enum Gate<'a> {
    /// This request connects; dropping the guard lets the waiting ones look again.
    Connect(ConnectGuard<'a>),
    /// Another request is connecting: look again once it is done.
    Wait,
}

/// Held by the one request that connects (see [`H2Conns::gate`]).
pub(super) struct ConnectGuard<'a>(Option<&'a H2Conns>);

impl Drop for ConnectGuard<'_> {
    fn drop(&mut self) {
        if let Some(set) = self.0 {
            set.connecting.store(false, Ordering::Release);
            set.connected.notify_waiters();
        }
    }
}

impl H2Conns {
    pub(super) fn new(idle_timeout: Duration) -> Self {
        Self {
            conns: Mutex::new(Vec::new()),
            idle_timeout,
            proto: AtomicU8::new(PROTO_UNKNOWN),
            connecting: AtomicBool::new(false),
            connected: Notify::new(),
            failing: AtomicBool::new(false),
        }
    }

    /// The first open connection with room, its slot taken; closed connections and idle
    /// ones are dropped on the way (hyper closes a connection once its last sender
    /// is gone and its streams have ended).
    pub(super) fn pick(&self) -> Pick {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        self.prune(&mut conns, now);
        if let Some(c) = conns
            .iter_mut()
            .find(|c| c.open.load(Ordering::Acquire) < STREAMS_PER_CONN)
        {
            c.last_used = now;
            return Pick::Room(c.tx.clone(), StreamSlot::take(&c.open));
        }
        if conns.is_empty() {
            Pick::None
        } else {
            Pick::Full
        }
    }

    /// Drops closed connections and idle ones, as [`H2Conns::pick`] does, for the
    /// requests that an HTTP/1.1 connection serves (the pool calls it only while an
    /// HTTP/2 connection is open).
    pub(super) fn prune_idle(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut conns, Instant::now());
    }

    /// Keeps the open connections that carry a stream or carried one within the idle
    /// timeout, like the HTTP/1.1 queue does.
    fn prune(&self, conns: &mut Vec<Conn>, now: Instant) {
        conns.retain(|c| {
            !c.tx.is_closed()
                && (c.open.load(Ordering::Acquire) > 0
                    || now.duration_since(c.last_used) < self.idle_timeout)
        });
    }

    /// Keeps a new connection and takes its first slot.
    pub(super) fn add(&self, tx: SendRequest<UpstreamBody>) -> StreamSlot {
        self.proto.store(PROTO_H2, Ordering::Release);
        self.failing.store(false, Ordering::Release);
        let open = Arc::new(AtomicUsize::new(0));
        let slot = StreamSlot::take(&open);
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.push(Conn {
            tx,
            open,
            last_used: Instant::now(),
        });
        slot
    }

    /// The upstream picked HTTP/1.1: connections are no longer opened one at a time.
    pub(super) fn saw_http1(&self) {
        self.proto.store(PROTO_H1, Ordering::Release);
        self.failing.store(false, Ordering::Release);
    }

    /// A connect failed (before the upstream answered ALPN).
    pub(super) fn connect_failed(&self) {
        self.failing.store(true, Ordering::Release);
    }

    /// Drops the connection `slot` is on: it handed a request back unsent (going away).
    pub(super) fn forget(&self, slot: &StreamSlot) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|c| !Arc::ptr_eq(&c.open, &slot.0));
    }

    /// Whether this request may connect now. Over HTTP/1.1, or while connects fail, every
    /// request may; otherwise only one at a time, and the others wait (bounded by the
    /// caller's attempt timeout).
    pub(super) async fn gate(&self) -> Gate<'_> {
        if self.proto.load(Ordering::Acquire) == PROTO_H1 || self.failing.load(Ordering::Acquire) {
            return Gate::Connect(ConnectGuard(None));
        }
        let notified = self.connected.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a connect ending in between still wakes us.
        notified.as_mut().enable();
        if self.connecting.swap(true, Ordering::AcqRel) {
            notified.await;
            return Gate::Wait;
        }
        Gate::Connect(ConnectGuard(Some(self)))
    }
}
