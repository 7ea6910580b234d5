//! The two listeners, the app wiring and graceful shutdown.
//!
//! What it does: [`build`] turns [`Settings`] into an [`App`] (config, key store, upstream
//! client, metrics registry); [`serve`] runs the loopback proxy listener (raw hyper, HTTP/1
//! and HTTP/2, every request to `proxy::handle`) and the admin listener (`/healthz`,
//! `/readyz` = a key is loaded and not draining, `/metrics`) until `shutdown` resolves;
//! then it stops accepting, lets in-flight requests and streams finish for up to
//! `Settings::shutdown_grace`, pushes the shared budget's pending spend to its store
//! (bounded), makes the final OTLP export when that push is on, and returns. [`run`] is
//! both, for `main` and tests. Both listeners bound their connections (count, head
//! deadline, idle timeout): see `conn`.
//!
//! What it does not do: parse flags or install signal handlers (`main` does), or log
//! per request (`proxy::handle` logs failures once).

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Args, Config, ConfigError, UpstreamBase};
use crate::keys::{KeySource, KeyStore, RECHECK_INTERVAL};
use crate::metrics::Metrics;
use crate::otlp::{Exporter, OtlpEnvError, OtlpSettings};
use crate::proxy::{self, AppState};
use crate::upstream::egress::{self, EgressError};
use crate::upstream::{Upstream, UpstreamError, UpstreamOptions};

mod conn;

use conn::Connections;
pub use conn::{ADMIN_MAX_CONNECTIONS, ConnLimits, HEAD_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};

/// How long in-flight requests and streams may run after SIGTERM. Kubernetes waits 30s
/// (terminationGracePeriodSeconds) before SIGKILL; 25s leaves room to exit cleanly.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
/// How long admin requests in flight (a probe, a scrape) may finish once the proxy has
/// drained; they take milliseconds, and the proxy's grace has used most of the budget.
const ADMIN_DRAIN: Duration = Duration::from_secs(2);

/// Everything needed to start the sidecar, already parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Upstream base URL.
    pub upstream: UpstreamBase,
    /// Key file and env fallback.
    pub key_source: KeySource,
    /// The validated config (file over defaults).
    pub config: Config,
    /// The `--config` file, watched for reloads when set.
    pub config_path: Option<PathBuf>,
    /// Drain time after shutdown is requested.
    pub shutdown_grace: Duration,
    /// Key file re-check interval (safety net under the directory watch).
    pub key_recheck: Duration,
    /// Bounds of the proxy listener's connections (the admin listener uses the same
    /// timeouts and [`ADMIN_MAX_CONNECTIONS`]).
    pub conn_limits: ConnLimits,
    /// Extra trust roots and the route (direct or egress proxy) to the upstream.
    pub upstream_options: UpstreamOptions,
    /// OTLP push of the metrics; `None` (off) unless an `OTEL_EXPORTER_OTLP_*ENDPOINT`
    /// is set.
    pub otlp: Option<OtlpSettings>,
    /// `--budget-key` and `--budget-usd-per-day`.
    pub budget: crate::budget::BudgetFlags,
}

impl Settings {
    /// From parsed flags: loads the `--config` file (if any), reads `HOLYSHEEP_API_KEY`,
    /// resolves the egress proxy from `--egress-proxy` and the proxy variables, and the
    /// OTLP push from the `OTEL_*` variables.
    pub fn from_args(args: &Args) -> Result<Self, RunError> {
        let config = match &args.config {
            Some(path) => config::load_startup(path)?,
            None => Config::default(),
        };
        let route = egress::resolve(args.egress_proxy.as_ref(), &args.upstream, |name| {
            std::env::var(name).ok()
        })?;
        let upstream_options = UpstreamOptions {
            ca_file: args.upstream_ca_file.clone(),
            route,
            proxy_auth_file: egress::auth_file_beside(&args.api_key_file),
        };
        Ok(Self {
            upstream: args.upstream.clone(),
            key_source: KeySource::from_env(args.api_key_file.clone()),
            config,
            config_path: args.config.clone(),
            shutdown_grace: SHUTDOWN_GRACE,
            key_recheck: RECHECK_INTERVAL,
            conn_limits: ConnLimits::default(),
            upstream_options,
            otlp: OtlpSettings::from_env(|name| std::env::var(name).ok())?,
            budget: crate::budget::BudgetFlags {
                key: args.budget_key.clone(),
                usd_per_day: args.budget_usd_per_day,
            },
        })
    }
}

/// After each good reload, updates the budget gauges and creates the new config's
/// zero series (so they exist before any request uses them), then runs `then`.
fn metrics_follow_config(
    budgets: crate::budget::Budgets,
    metrics: Metrics,
    then: crate::reload::OnReload,
) -> crate::reload::OnReload {
    Box::new(move |result| {
        if let Ok(config) = result {
            budgets.observe_config(config);
            metrics.observe_config(config);
        }
        then(result);
    })
}

/// Why the sidecar could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The `--config` file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The egress proxy settings are unusable.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// An `OTEL_*` variable is unusable.
    #[error(transparent)]
    Otlp(#[from] OtlpEnvError),
    /// A listener could not be bound.
    #[error("failed to bind {what} listener {addr}: {source}")]
    Bind {
        /// `proxy` or `admin`.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The admin server task failed.
    #[error("admin server failed: {0}")]
    Admin(#[source] std::io::Error),
}

/// The wired application: proxy state plus what the admin listener serves.
pub struct App {
    /// Shared per-request state.
    pub state: Arc<AppState>,
    /// Metrics registry, encoded on `/metrics`. Register metrics before [`serve`].
    pub registry: Registry,
    /// The `--config` file, for the reload watcher.
    pub config_path: Option<PathBuf>,
    /// OTLP push settings and its failure counter (registered in `registry`).
    otlp: Option<(OtlpSettings, Counter)>,
    shutdown_grace: Duration,
    key_recheck: Duration,
    conn_limits: ConnLimits,
}

/// Builds the app: first key load, upstream client, registry with the sidecar metrics.
pub fn build(settings: Settings) -> Result<App, RunError> {
    let upstream = Upstream::with_options(
        settings.upstream,
        &settings.config.limits,
        settings.upstream_options,
    )?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let keys = KeyStore::load(settings.key_source);
    let (key_changes, key_failures) = (Arc::clone(&keys), Arc::clone(&keys));
    Metrics::register_key_reloads(
        &mut registry,
        move || key_changes.changes(),
        move || key_failures.failures(),
    );
    Metrics::register_upstream_connections(&mut registry, upstream.open_connections());
    let state = AppState {
        config: Arc::new(ArcSwap::from_pointee(settings.config)),
        keys,
        upstream,
        resilience: crate::resilience::Resilience::default(),
        metrics,
        budgets: crate::budget::Budgets::new(settings.budget),
    };
    state.budgets.register(&mut registry);
    let otlp = settings
        .otlp
        .map(|otlp| (otlp, crate::otlp::register_failures(&mut registry)));
    state.budgets.observe_config(&state.config.load());
    state.metrics.observe_config(&state.config.load());
    Ok(App {
        state: Arc::new(state),
        registry,
        config_path: settings.config_path,
        otlp,
        shutdown_grace: settings.shutdown_grace,
        key_recheck: settings.key_recheck,
        conn_limits: settings.conn_limits,
    })
}

/// Binds both listeners from the flags' addresses.
pub async fn bind(args: &Args) -> Result<(TcpListener, TcpListener), RunError> {
    let proxy = TcpListener::bind(args.listen)
        .await
        .map_err(|source| RunError::Bind {
            what: "proxy",
            addr: args.listen,
            source,
        })?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| RunError::Bind {
            what: "admin",
            addr: args.admin_listen,
            source,
        })?;
    Ok((proxy, admin))
}

/// [`build`] then [`serve`].
pub async fn run(
    settings: Settings,
    proxy: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    serve(build(settings)?, proxy, admin, shutdown).await
}

#[derive(Clone)]
struct AdminState {
    keys: Arc<KeyStore>,
    registry: Arc<Registry>,
    draining: Arc<AtomicBool>,
}

/// Serves both listeners until `shutdown` resolves, then drains (see module doc).
pub async fn serve(
    app: App,
    proxy: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let stop = CancellationToken::new();
    let key_watcher = app.state.keys.spawn_watcher(app.key_recheck);
    // Live config: a changed --config file is swapped in; a bad one keeps the last good.
    let _config_watcher = app.config_path.clone().map(|path| {
        crate::reload::ConfigReloader::spawn(
            path,
            Arc::clone(&app.state.config),
            metrics_follow_config(
                app.state.budgets.clone(),
                app.state.metrics.clone(),
                crate::reload::count_reloads(app.state.metrics.clone()),
            ),
            crate::reload::ReloadOptions::default(),
        )
    });
    let registry = Arc::new(app.registry);
    let exporter = app
        .otlp
        .map(|(otlp, failures)| Exporter::spawn(otlp, Arc::clone(&registry), failures));
    let admin_state = AdminState {
        keys: Arc::clone(&app.state.keys),
        registry,
        draining: Arc::new(AtomicBool::new(false)),
    };
    let draining = Arc::clone(&admin_state.draining);
    if let Ok(addr) = proxy.local_addr() {
        if !addr.ip().is_loopback() {
            // Anyone who can reach this address spends this pod's key.
            tracing::warn!(%addr, "proxy listener is not loopback: other pods can use this key");
        }
    }
    tracing::info!(
        proxy = %display_addr(&proxy),
        admin = %display_addr(&admin),
        // In full: scheme, host, the port really connected to, and path.
        upstream = %app.state.upstream.base(),
        "holysheep-sidecar listening"
    );
    app.state.upstream.log_startup();
    // The CA file and the proxy credentials are re-read when they change.
    let _upstream_watchers = app
        .state
        .upstream
        .spawn_watchers(crate::reload::ReloadOptions::default());
    let admin_stop = stop.clone();
    let admin_limits = ConnLimits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        ..app.conn_limits
    };
    let admin_task = tokio::spawn(async move {
        let conns = Connections::new(admin_limits);
        let service = TowerToHyperService::new(admin_router(admin_state));
        conns
            .accept(&admin, admin_stop.cancelled_owned(), service)
            .await;
        drop(admin);
        conns.drain(ADMIN_DRAIN).await;
    });

    let budgets = app.state.budgets.clone();
    let drain_began = serve_proxy(
        proxy,
        app.state,
        shutdown,
        &draining,
        app.shutdown_grace,
        app.conn_limits,
    )
    .await;
    // Drained: no spend is added any more. The shared budget's pending spend goes to
    // the store first, so the spend gauges of the final export are final.
    budgets
        .flush_store(flush_bound(drain_began, app.shutdown_grace))
        .await;
    // The registry holds every request's usage. Push it before exiting, so a pod gone
    // before its next scrape still reports its spend.
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }

    stop.cancel();
    key_watcher.abort();
    // The admin task only ends by returning; a join error means it panicked.
    admin_task
        .await
        .map_err(|e| RunError::Admin(std::io::Error::other(e)))
}

/// The budget flush's bound: [`FLUSH_TIMEOUT`](crate::budget::FLUSH_TIMEOUT), but never
/// past 1 s after the drain's grace, so that a drain that used all of its 25 s, the
/// flush and the final OTLP export (3 s) end inside Kubernetes' 30 s.
fn flush_bound(drain_began: tokio::time::Instant, grace: Duration) -> Duration {
    let left = (grace + Duration::from_secs(1)).saturating_sub(drain_began.elapsed());
    crate::budget::FLUSH_TIMEOUT.min(left)
}

/// Accepts proxy connections until `shutdown`, then drains them up to `grace`; returns
/// when the drain began.
async fn serve_proxy(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    draining: &AtomicBool,
    grace: Duration,
    limits: ConnLimits,
) -> tokio::time::Instant {
    let conns = Connections::new(limits);
    let service = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(proxy::handle(state, req).await) }
    });
    conns.accept(&listener, shutdown, service).await;
    drop(listener);
    let began = tokio::time::Instant::now();
    draining.store(true, Ordering::Release);
    tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
    if conns.drain(grace).await {
        tracing::info!("drained");
    } else {
        tracing::warn!("grace period over; closing remaining connections");
    }
    began
}

fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    if s.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if s.keys.is_loaded() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no API key loaded\n")
    }
}

async fn metrics(State(s): State<AdminState>) -> axum::response::Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "failed to encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A listener's address for the log (`127.0.0.1:8080`, not `Some(...)`).
fn display_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("<unknown: {e}>"), |a| a.to_string())
}
