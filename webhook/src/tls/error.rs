//! Why a serving certificate could not be loaded or watched.

use std::path::PathBuf;

/// Why a certificate could not be loaded or watched. Messages name the file and never
/// contain key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("failed to read {what} file {path}: {source}")]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file is not valid PEM or holds no `CERTIFICATE` block.
    #[error("certificate file {path} holds no valid PEM CERTIFICATE block ({reason})")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file holds no usable private key.
    #[error("key file {path} holds no valid PEM private key (PKCS#8, PKCS#1 or SEC1) ({reason})")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key is not usable with the certificate (unsupported algorithm, or not its key).
    #[error("key {key} does not fit certificate {cert}: {source}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// The rustls server configuration could not be built.
    #[error("failed to build the TLS server configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The directory watch could not be set up.
    #[error("failed to watch {path} for certificate changes: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: notify::Error,
    },
}
