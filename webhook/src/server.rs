//! The HTTPS admission server: the axum router (`POST /mutate`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`) and the review handler.
//!
//! Every body that is not an AdmissionReview v1 gets HTTP 400 with a message (413 when it
//! is larger than the limit, 408 when it does not arrive in time, 429 when the server has
//! no room for it); nothing a client sends can panic the server. Reviews are decided on
//! the blocking pool, a few at a time, so a large one never stalls `/healthz` or the other
//! connections.
//!
//! [`serve`] (in `conn`) is the TLS accept loop with its per-connection deadlines, and at
//! the connection cap sheds quiet connections for new clients (`shed`);
//! [`run`] (in `command`) is the `serve` command: it loads or bootstraps the certificate,
//! starts the reload watcher and serves until SIGTERM. The bounds are in `limits`, the
//! body and room checks in `intake`.
//!
//! What it does not do: decide admissions (`admission`), parse certificates (`tls`) or talk
//! to the Kubernetes API (`bootstrap`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;

use crate::admission::{self, Answer};
use crate::events::EventSink;
use crate::metrics::{self, Metrics};
use crate::settings::Settings;

mod command;
mod conn;
mod intake;
pub mod limits;
mod shed;
pub use command::{run, shutdown_signal};
pub use conn::{DRAIN_TIMEOUT, serve};
pub use intake::Refusal;
pub use limits::{Limits, MAX_BODY_BYTES};

use intake::Intake;

/// What the handlers share: the webhook defaults, the server's bounds, metrics and
/// readiness.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    settings: Settings,
    limits: Limits,
    intake: Intake,
    metrics: Metrics,
    registry: Registry,
    ready: AtomicBool,
    /// Where refusal Events go; unset without a Kubernetes client.
    events: std::sync::OnceLock<EventSink>,
}

impl AppState {
    /// State with fresh metrics and the production [`Limits`], ready to serve.
    pub fn new(settings: Settings) -> Self {
        Self::with_limits(settings, Limits::default())
    }

    /// State with fresh metrics and the given bounds (tests shorten the deadlines).
    pub fn with_limits(settings: Settings, limits: Limits) -> Self {
        let limits = limits.sane();
        let mut registry = metrics::new_registry();
        let metrics = Metrics::register(&mut registry);
        Self {
            inner: Arc::new(StateInner {
                settings,
                intake: Intake::new(&limits),
                limits,
                metrics,
                registry,
                ready: AtomicBool::new(true),
                events: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The metrics handles (shared with the TLS reloader).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Posts a Warning Event on the owner of each refused pod from now on (once; a second
    /// sink is ignored).
    pub fn set_event_sink(&self, sink: EventSink) {
        let _ = self.inner.events.set(sink);
    }

    /// The server's bounds.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
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
        .with_state(state)
}

async fn mutate_handler(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    match admit(&state, request, started).await {
        Ok(response) => response,
        Err(refusal) => {
            state
                .metrics()
                .observe_admission(refusal.result(), started.elapsed().as_secs_f64());
            tracing::warn!(
                status = refusal.status().as_u16(),
                error = %refusal,
                "admission request refused"
            );
            refusal.into_response()
        }
    }
}

/// The review steps: check the content type, receive the body within the bounds, take a
/// worker slot, answer on the blocking pool (the body is dropped there once decided), then
/// hold the response's bytes in the budget until they are written out.
async fn admit(state: &AppState, request: Request, started: Instant) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    intake::check_content_type(&parts.headers)?;
    let intake = &state.inner.intake;
    let (body, mut held) = intake.receive(body).await?;
    let worker = intake.worker().await?;
    let decide = state.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        admission::answer(&body, &decide.inner.settings)
    })
    .await
    .map_err(|_| Refusal::Internal)??;
    intake.resize(&mut held, answer.body.len()).await?;
    let Answer {
        body,
        result,
        summary,
        event,
    } = answer;
    // Queued, never awaited: the answer does not wait for the API server.
    if let (Some(event), Some(sink)) = (event, state.inner.events.get()) {
        sink.post(event);
    }
    let elapsed = started.elapsed();
    state
        .metrics()
        .observe_admission(result, elapsed.as_secs_f64());
    // One line per review, at the edge. The pod itself is never logged: its env may hold
    // secrets of its own.
    tracing::info!(
        uid = %summary.uid,
        kind = %summary.kind,
        namespace = %summary.namespace,
        name = %summary.name,
        operation = %summary.operation,
        user = %summary.user,
        dry_run = summary.dry_run,
        result = result.as_str(),
        message = %summary.message,
        duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        "admission reviewed"
    );
    let mut response = Response::new(Body::from(held.into_bytes(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
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

#[cfg(test)]
mod tests;
