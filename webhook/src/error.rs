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
    /// `--self-signed` is missing something it needs, or the bootstrap failed.
    #[error("self-signed bootstrap failed: {0}")]
    Bootstrap(String),
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
