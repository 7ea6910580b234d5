//! The `serve` command around the server: certificate from files or from the self-signed
//! bootstrap, the reload watcher, the listener, and SIGTERM handling with a readiness drain.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{AppState, serve};
use crate::bootstrap::{self, BootstrapOptions};
use crate::cli::{SelfSignedArgs, ServeArgs};
use crate::error::WebhookError;
use crate::events::EventSink;
use crate::tls::{ReloadingTls, TlsFiles};

/// The `serve` command: loads the certificate (or bootstraps it with `--self-signed`),
/// watches it for changes, binds `--listen` and serves until `signal` completes. Then
/// `/readyz` fails for `--shutdown-delay` while requests are still served, so the
/// endpoints drop this pod first, and open requests are drained.
pub async fn run<F>(args: ServeArgs, signal: F) -> Result<(), WebhookError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let settings = args.settings.into_settings()?;
    let state = AppState::new(settings);
    // Background tasks (certificate watcher, renewal loop) stop when this flips.
    let (stop_tx, stop_rx) = watch::channel(false);
    // The bootstrap needs the API; Events only use it when there is one.
    let client = match kube::Client::try_default().await {
        Ok(client) => Some(client),
        Err(error) if args.self_signed.enabled => return Err(WebhookError::KubeClient(error)),
        Err(error) => {
            tracing::info!(error = %error, "no Kubernetes client: refusal Events are not posted");
            None
        }
    };
    if let Some(client) = &client {
        state.set_event_sink(EventSink::spawn(
            client.clone(),
            instance_name(),
            state.metrics().clone(),
        ));
    }
    let files = match client.filter(|_| args.self_signed.enabled) {
        Some(client) => self_signed(client, &args.self_signed, stop_rx.clone()).await?,
        None => match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => TlsFiles { cert, key },
            _ => return Err(WebhookError::NoCertificate),
        },
    };
    let tls = ReloadingTls::load(files, Some(state.metrics().clone()))?;
    tls.spawn_watcher(args.tls_reload_interval, stopped(stop_rx.clone()));
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: args.listen,
            source,
        })?;
    // The bound address, not the flag: with port 0 the log says which port was chosen.
    let listen = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(listen = %listen, cert = %tls.files().cert.display(), "serving admission reviews");
    let delay = args.shutdown_delay;
    let draining = state.clone();
    let shutdown = async move {
        signal.await;
        draining.set_ready(false);
        tracing::info!(
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "shutdown requested, /readyz now failing"
        );
        tokio::time::sleep(delay).await;
    };
    let result = serve(listener, tls, state, shutdown).await;
    let _ = stop_tx.send(true);
    result
}

/// Bootstraps the shared certificate into `--cert-dir` and starts the renewal loop.
async fn self_signed(
    client: kube::Client,
    args: &SelfSignedArgs,
    stop: watch::Receiver<bool>,
) -> Result<TlsFiles, WebhookError> {
    let namespace = args
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .ok_or(WebhookError::NoNamespace)?;
    let mut opts = BootstrapOptions::new(namespace, args.cert_dir.clone());
    opts.service.clone_from(&args.service);
    opts.secret_name.clone_from(&args.tls_secret);
    opts.webhook_config_name.clone_from(&args.webhook_config);
    bootstrap::bootstrap_once(client.clone(), &opts).await?;
    let files = TlsFiles {
        cert: opts.cert_dir.join(holysheep_certs::TLS_CERT_FILE),
        key: opts.cert_dir.join(holysheep_certs::TLS_KEY_FILE),
    };
    tokio::spawn(bootstrap::run_renewal_loop(client, opts, stopped(stop)));
    Ok(files)
}

/// This replica's name in the Events it reports: its pod name (`POD_NAME` from the
/// downward API, else the hostname, which is the pod name in Kubernetes).
fn instance_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "holysheep-webhook".to_owned())
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Completes on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
