//! The one error type of `holysheep-certs`.
//!
//! Every variant says what failed and, where the caller can act, how to fix it. Private
//! key material never appears in a message: only file names, field names and parser
//! reasons do.

use std::path::PathBuf;

/// Everything that can go wrong while generating, parsing, verifying or writing
/// certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A Kubernetes name used in a certificate is not a DNS-1123 label.
    #[error(
        "invalid {field} {value:?}: must be a DNS-1123 label (lowercase letters, digits and '-', \
         starting and ending with a letter or digit, at most 63 characters)"
    )]
    InvalidName {
        /// Which input was wrong, e.g. `service` or `namespace`.
        field: &'static str,
        /// The rejected value.
        value: String,
    },

    /// A validity period was zero or too long to represent.
    #[error("invalid {field}: {reason}")]
    InvalidValidity {
        /// Which input was wrong, e.g. `CA validity`.
        field: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },

    /// rcgen refused to build a key or a certificate.
    #[error("failed to generate {what}")]
    Generate {
        /// What was being generated, e.g. `CA certificate`.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },

    /// A PEM input could not be decoded or did not hold what it should.
    #[error("failed to parse {what}: {reason}")]
    Parse {
        /// Which input, e.g. `ca.crt` or `tls.key`.
        what: &'static str,
        /// What was wrong with it (never the key material itself).
        reason: String,
    },

    /// A certificate and a private key given together do not belong together.
    #[error("{cert} and {key} do not match: the key is not the certificate's private key")]
    KeyMismatch {
        /// The certificate input name.
        cert: &'static str,
        /// The key input name.
        key: &'static str,
    },

    /// The certificate offered as a CA is not a CA (basicConstraints CA:FALSE or absent).
    #[error("ca.crt is not a CA certificate (basicConstraints CA is not true)")]
    NotACa,

    /// The serving certificate does not chain to the CA, is expired, or lacks a name.
    #[error("serving certificate is not valid for {name:?} under this CA: {reason}")]
    Verify {
        /// The DNS name that was checked.
        name: String,
        /// The verifier's reason.
        reason: String,
    },

    /// Writing a certificate file failed.
    #[error("failed to write {path}", path = path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = CertError> = std::result::Result<T, E>;
