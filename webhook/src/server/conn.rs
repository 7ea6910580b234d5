//! The TLS accept loop and the life of one connection, each phase under a deadline.
//!
//! A connection holds one of `max_connections` slots for its whole life. When every slot
//! is taken, a new client still gets in if some connection has no request in flight: that
//! one is shed to make room (`shed` says which); only when every slot is busy with a
//! request does the loop stop accepting, and new clients wait in the listen backlog. Then: the
//! TLS handshake (`handshake_timeout`); the first request within `head_timeout` of the
//! handshake, whatever protocol was negotiated (a client that never sends one is dropped);
//! each HTTP/1 request head within `head_timeout` too (hyper's header read timeout, which
//! also bounds the wait for the next request on a kept-alive HTTP/1 connection); after
//! `idle_timeout` without a request an HTTP/2 connection is closed with a GOAWAY. A closing
//! connection with no request in flight gets `close_grace` to finish, then is dropped. The
//! body deadline belongs to the review handler (`intake`), which is what awaits a body.
//!
//! On shutdown every connection is closed gracefully (HTTP/2: GOAWAY; HTTP/1: after the
//! response in progress) and the server waits for the slots to come back, at most
//! [`DRAIN_TIMEOUT`].
//!
//! What it does not do: route or answer requests (`server`, `intake`) or load certificates
//! (`tls`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::limits::{H1_MAX_BUF, H2_MAX_HEADER_LIST, H2_MAX_STREAMS, H2_WINDOW, Limits};
use super::shed::{Seat, SeatHandle, Seats};
use super::{AppState, app};
use crate::error::WebhookError;
use crate::metrics::Metrics;
use crate::tls::ReloadingTls;

/// Pause after a failed accept (EMFILE...), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long in-flight requests get to finish after shutdown starts. Below the default
/// 30 s `terminationGracePeriodSeconds`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves [`app`] over TLS on `listener` until `shutdown` completes, then stops accepting,
/// marks the state not ready and lets open requests finish (HTTP/2 connections get a
/// GOAWAY) for up to [`DRAIN_TIMEOUT`]. The bounds are the state's [`Limits`].
///
/// The certificate comes from `tls` on every handshake, so a reload applies to new
/// connections without touching open ones.
pub async fn serve<F>(
    listener: TcpListener,
    tls: ReloadingTls,
    state: AppState,
    shutdown: F,
) -> Result<(), WebhookError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let limits = state.limits().clone();
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls.server_config()?),
        router: app(state.clone()),
        http: http_builder(&limits),
        metrics: state.metrics().clone(),
        limits: limits.clone(),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let seats = Arc::new(Seats::default());
    let (closing_tx, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // Room first, then the accept: a free slot, or a connection that can give its slot
        // up. With every slot busy with a request, clients wait in the kernel's backlog
        // instead of costing memory here.
        tokio::select! {
            () = &mut shutdown => break,
            () = room(&slots, &seats) => {}
        }
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the open
                    // connections rather than exiting, and back off instead of spinning.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = take_slot(&slots, &seats, &shared.metrics) => match slot {
                Some(slot) => slot,
                None => break,
            },
        };
        let (seat, shed) = seats.take();
        tokio::spawn(connection(
            shared.clone(),
            stream,
            peer,
            Held { _slot: slot, seat },
            shed,
            closing_rx.clone(),
        ));
    }
    state.set_ready(false);
    drop(listener);
    tracing::info!(
        connections = limits.max_connections - slots.available_permits(),
        "shutting down, draining connections"
    );
    let _ = closing_tx.send(true);
    let every_slot = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(every_slot))
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached, closing remaining connections");
    }
    Ok(())
}

/// Returns once a new connection can have a slot: one is free, or one can be shed.
async fn room(slots: &Semaphore, seats: &Seats) {
    tokio::select! {
        // The permit goes back at once: only this loop takes slots, so it is still free
        // when the accepted connection asks for it.
        _ = slots.acquire() => {}
        () = seats.until_sheddable() => {}
    }
}

/// A slot for a just-accepted connection: a free one, or the one given up by the
/// connection first in shed order. None once the semaphore is closed.
async fn take_slot(
    slots: &Arc<Semaphore>,
    seats: &Seats,
    metrics: &Metrics,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    loop {
        // The shed connection returns its slot as soon as its task sees the signal. If
        // none could be shed (all became busy since `room`), wait for a slot or a seat.
        if seats.shed_one() {
            metrics.connection_shed();
            return slots.clone().acquire_owned().await.ok();
        }
        tokio::select! {
            slot = slots.clone().acquire_owned() => return slot.ok(),
            () = seats.until_sheddable() => {}
        }
    }
}

/// What a connection holds for its life: a slot and a seat.
struct Held {
    _slot: OwnedSemaphorePermit,
    seat: Seat,
}

/// What every connection task shares.
struct Shared {
    acceptor: TlsAcceptor,
    router: Router,
    http: auto::Builder<TokioExecutor>,
    metrics: Metrics,
    limits: Limits,
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST);
    builder
}

/// One connection, from handshake to close; its slot is given back when it returns.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    held: Held,
    mut shed: oneshot::Receiver<()>,
    mut closing: watch::Receiver<bool>,
) {
    let Held { _slot, seat } = held;

    let _open = OpenConnection::count(&shared.metrics);
    // Reviews are small request/response exchanges: Nagle only adds latency.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(error = %error, "set_nodelay failed");
    }
    let limits = &shared.limits;
    let handshake = shared.acceptor.accept(stream);
    let handshake = tokio::time::timeout(limits.handshake_timeout, handshake);
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%peer, error = %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        _ = &mut shed => {
            tracing::debug!(%peer, "shed during the TLS handshake to make room");
            return;
        }
    };
    let (in_flight, mut requests) = watch::channel(0usize);
    let service = Tracked {
        router: shared.router.clone(),
        in_flight: Arc::new(in_flight),
        seat: seat.handle(),
    };
    let conn = shared.http.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut served = false;
    let mut quiet_since = Instant::now();
    let mut close_by: Option<Instant> = None;
    let mut watching_requests = true;
    loop {
        let in_flight = *requests.borrow_and_update();
        let deadline = close_by.unwrap_or_else(|| {
            quiet_since
                + if served {
                    limits.idle_timeout
                } else {
                    limits.head_timeout
                }
        });
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, error = %error, "connection ended with an error");
                }
                return;
            }
            _ = &mut shed => {
                tracing::debug!(%peer, served, "shed while quiet to make room");
                return;
            }
            changed = requests.changed(), if watching_requests => {
                if changed.is_err() {
                    watching_requests = false;
                    continue;
                }
                served = true;
                if *requests.borrow() == 0 {
                    quiet_since = Instant::now();
                    // The last response is being written: a closing connection gets its
                    // grace from now, not from when closing began.
                    if close_by.is_some() {
                        close_by = Some(quiet_since + limits.close_grace);
                    }
                }
            }
            () = tokio::time::sleep_until(deadline), if in_flight == 0 => {
                if close_by.is_some() {
                    tracing::debug!(%peer, "connection did not close in time, dropping it");
                    return;
                }
                tracing::debug!(%peer, served, "closing a quiet connection");
                conn.as_mut().graceful_shutdown();
                close_by = Some(Instant::now() + limits.close_grace);
            }
            _ = closing.wait_for(|closing| *closing), if close_by.is_none() => {
                conn.as_mut().graceful_shutdown();
                close_by = Some(Instant::now() + limits.close_grace);
            }
        }
    }
}

/// The router, counting the requests in flight on its connection (for its deadlines,
/// and in its seat so a busy connection is never shed).
#[derive(Clone)]
struct Tracked {
    router: Router,
    in_flight: Arc<watch::Sender<usize>>,
    seat: SeatHandle,
}

/// One request in flight; uncounted when dropped (answered, or abandoned by the client).
struct InFlight(Arc<watch::Sender<usize>>, SeatHandle);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.1.leave();
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl hyper::service::Service<http::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        // The seat first: from here on the connection is not shed.
        self.seat.enter();
        self.in_flight.send_modify(|n| *n += 1);
        let in_flight = InFlight(self.in_flight.clone(), self.seat.clone());
        let router = self.router.clone();
        Box::pin(async move {
            let _in_flight = in_flight;
            router.oneshot(request).await
        })
    }
}

/// Counts an open connection in the metrics for as long as it lives.
struct OpenConnection(Metrics);

impl OpenConnection {
    fn count(metrics: &Metrics) -> Self {
        metrics.connection_opened();
        Self(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}
