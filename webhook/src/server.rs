//! The HTTPS admission server: the axum router (`POST /mutate`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`), the TLS accept loop (HTTP/1.1 and HTTP/2 by ALPN) and
//! graceful shutdown.
//!
//! Every body that is not an AdmissionReview v1 gets HTTP 400 with a message (413 when it
//! is larger than the limit); nothing a client sends can panic the server.
//!
//! [`run`] (in `command`) is the `serve` command: it loads or bootstraps the certificate,
//! starts the reload watcher and serves until SIGTERM.
//!
//! What it does not do: decide admissions (`admission`), parse certificates (`tls`) or talk
//! to the Kubernetes API (`bootstrap`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{self, AdmissionReview};
use crate::error::WebhookError;
use crate::metrics::{self, AdmissionResult, Metrics};
use crate::settings::Settings;
use crate::tls::ReloadingTls;

mod command;
pub use command::{run, shutdown_signal};

/// Largest accepted body: kube-apiserver objects are at most ~3 MiB (etcd's limit) and a
/// review can carry the object twice (object and oldObject).
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Same for the request headers of an HTTP/1.1 connection (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE...), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long in-flight requests get to finish after shutdown starts. Below the default
/// 30 s `terminationGracePeriodSeconds`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What the handlers share: the webhook defaults, metrics and readiness.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    settings: Settings,
    metrics: Metrics,
    registry: Registry,
    ready: AtomicBool,
}

impl AppState {
    /// State with fresh metrics, ready to serve.
    pub fn new(settings: Settings) -> Self {
        let mut registry = metrics::new_registry();
        let metrics = Metrics::register(&mut registry);
        Self {
            inner: Arc::new(StateInner {
                settings,
                metrics,
                registry,
                ready: AtomicBool::new(true),
            }),
        }
    }

    /// The metrics handles (shared with the TLS reloader).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Marks the server (not) ready; `/readyz` answers 503 when not ready, so the Service
    /// stops sending reviews here before the listener closes.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }
}

/// The router: `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An AdmissionReview body. Every way it can be wrong (content type, JSON syntax, shape,
/// envelope) is turned into [`BadRequest`] instead of axum's mixed 415/422 plain-text
/// answers, so the apiserver's log shows one clear message.
#[derive(Debug)]
pub struct AdmissionJson(pub admission::AdmissionRequest);

/// A rejected body: the status (400, or 413 for an oversized body) and the message,
/// answered as `{"code": ..., "message": ...}`.
#[derive(Debug)]
pub struct BadRequest {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.status.as_u16(), "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

impl<S: Send + Sync> FromRequest<S> for AdmissionJson {
    type Rejection = BadRequest;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let review = Json::<AdmissionReview>::from_request(req, state)
            .await
            .map_err(|rejection| {
                let status = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                BadRequest {
                    status,
                    message: format!("not an AdmissionReview: {}", rejection.body_text()),
                }
            })?;
        review
            .0
            .into_request()
            .map(AdmissionJson)
            .map_err(|e| BadRequest {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
            })
    }
}

async fn mutate_handler(
    State(state): State<AppState>,
    body: Result<AdmissionJson, BadRequest>,
) -> Response {
    let started = Instant::now();
    let request = match body {
        Ok(AdmissionJson(request)) => request,
        Err(rejection) => {
            state.metrics().observe_admission(
                AdmissionResult::InvalidRequest,
                started.elapsed().as_secs_f64(),
            );
            tracing::warn!(status = rejection.status.as_u16(), error = %rejection.message, "malformed admission request");
            return rejection.into_response();
        }
    };
    // Backstop only: the mutation is written not to panic, and property-tested for it. If
    // it ever does, this review gets a clear refusal instead of a reset stream, and the
    // error is counted.
    let decision = std::panic::catch_unwind(AssertUnwindSafe(|| {
        admission::review(&request, &state.inner.settings)
    }))
    .unwrap_or_else(|_| admission::internal_error(&request.uid));
    let elapsed = started.elapsed();
    state
        .metrics()
        .observe_admission(decision.result, elapsed.as_secs_f64());
    // One line per review, at the edge. The pod itself is never logged: its env may hold
    // secrets of its own.
    tracing::info!(
        uid = %request.uid,
        kind = %request.kind.kind,
        namespace = request.namespace.as_deref().unwrap_or(""),
        name = request.name.as_deref().unwrap_or(""),
        operation = %request.operation,
        user = %request.user_info.username,
        dry_run = request.dry_run.unwrap_or(false),
        result = decision.result.as_str(),
        message = decision.response.status.as_ref().map_or("", |s| s.message.as_str()),
        duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "admission reviewed"
    );
    Json(decision.response.into_review()).into_response()
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.inner.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    match metrics::render(&state.inner.registry) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to encode metrics\n",
        )
            .into_response(),
    }
}

/// Serves [`app`] over TLS on `listener` until `shutdown` completes, then stops accepting,
/// marks the state not ready and lets open requests finish (HTTP/2 connections get a
/// GOAWAY) for up to [`DRAIN_TIMEOUT`].
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
    let acceptor = TlsAcceptor::from(tls.server_config()?);
    let router = app(state.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        // Reviews are small request/response exchanges: Nagle only adds latency.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(error = %error, "set_nodelay failed");
        }
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls_stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, error = %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls_stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    state.set_ready(false);
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down, draining connections"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached, closing remaining connections");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
