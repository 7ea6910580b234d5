//! The crate's top-level error: everything that can stop a `holysheep-webhook` command,
//! each variant naming what failed. `main` prints it with its causes and exits non-zero.
//!
//! What it does not do: admission denials. A pod refused by the mutation is an answer
//! (`allowed: false`), not an error of the server.

use std::path::PathBuf;

use crate::tls::TlsError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The webhook-level sidecar settings (flags/env) are invalid.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The serving certificate could not be loaded or watched.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// The `--listen` address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `--self-signed` needs the namespace of the webhook's Secret and Service.
    #[error(
        "--self-signed needs the webhook's namespace: pass --namespace or set POD_NAMESPACE \
         (downward API fieldRef metadata.namespace)"
    )]
    NoNamespace,
    /// No Kubernetes client could be configured (no in-cluster token, no kubeconfig).
    #[error(
        "--self-signed needs the Kubernetes API, but no client could be configured \
         (in-cluster ServiceAccount or KUBECONFIG): {0}"
    )]
    KubeClient(#[source] kube::Error),
    /// The self-signed certificate bootstrap failed.
    #[error("self-signed certificate bootstrap failed: {0}")]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    /// `serve` was given neither `--tls-cert`/`--tls-key` nor `--self-signed`.
    #[error("no serving certificate: pass --tls-cert and --tls-key, or --self-signed")]
    NoCertificate,
    /// Generating or writing certificates failed (`certs` command).
    #[error("failed to create certificates: {0}")]
    Certs(#[from] holysheep_certs::CertError),
    /// The offline `inject` command failed.
    #[error(transparent)]
    Inject(#[from] crate::inject_cli::InjectError),
    /// Reading an input file or writing output failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// `read`, `write`...
        action: &'static str,
        /// The file (`-` for stdin/stdout).
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The structured logger could not be installed.
    #[error("failed to set up logging: {0}")]
    Logging(String),
}
