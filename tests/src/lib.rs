//! Support for the end-to-end tests across the holysheep crates.
//!
//! The tests prove that the webhook's output and the sidecar's input fit together, so
//! this crate plays the parts that sit between them in a cluster:
//! - [`pod`]: opted-in pods, and the webhook's patch applied as the apiserver would.
//! - [`kubelet`]: the container's volumes laid out on disk as the kubelet does
//!   (`..data` symlinks, item paths, file modes), and container paths mapped onto them.
//! - [`sidecar`]: the injected container's env and args turned into the sidecar's own
//!   flags, and the sidecar started in-process on ephemeral loopback ports.
//! - [`upstream`]: a fake OpenAI-compatible upstream on `127.0.0.1:0` that records
//!   what it saw.
//! - [`metrics`]: `/metrics` scraped and parsed with a Prometheus text parser.
//!
//! The tests (`tests/`): `webhook_sidecar_contract` (injected env and spec vs the
//! sidecar's flags and endpoints), `full_flow` (OpenAI SDK -> injected sidecar -> fake
//! upstream, metrics, Secret and ConfigMap updates), `offline_inject` (`inject` vs the
//! webhook, every example), `admission_tls` (AdmissionReview over real TLS) and
//! `install_manifests` (`manifests/base` vs the webhook's CLI and names).
//!
//! Everything here panics with a message on a broken setup: it is test code, and a
//! panic is how a test fails. Nothing sleeps to wait; readiness and counters are polled
//! with a bounded timeout ([`eventually`]).

pub mod kubelet;
pub mod metrics;
pub mod pod;
pub mod sidecar;
pub mod upstream;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `<workspace>/<relative>`: the manifests and examples the tests read.
pub fn workspace_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Reads a workspace file, panicking with its path when that fails.
pub fn read_workspace_file(relative: &str) -> String {
    let path = workspace_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Polls `check` every 10ms until it is true; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain HTTP client for loopback: rustls with the ring provider (the workspace
/// compiles no process-wide default), no proxy taken from the environment.
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| panic!("rustls protocol versions: {e}"))
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"))
}
