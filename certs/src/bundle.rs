//! The `caBundle` of a webhook configuration: encoding and comparison.
//!
//! In the Kubernetes API `caBundle` is PEM bytes, which JSON and YAML carry as base64.
//! Comparison looks at the certificates themselves (DER), so the same CA written with
//! other line endings, extra blank lines or trailing whitespace counts as unchanged and
//! does not cause a needless PATCH.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::{CertError, Result};
use crate::parse;

/// Base64 of the PEM bytes: the value of `caBundle` in JSON or YAML.
pub fn encode(pem: &str) -> String {
    STANDARD.encode(pem.as_bytes())
}

/// Decodes a base64 `caBundle` back to its PEM bytes.
pub fn decode(ca_bundle: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(ca_bundle.trim())
        .map_err(|e| CertError::Parse {
            what: "caBundle",
            reason: format!("not base64 ({e})"),
        })
}

/// The certificates (DER) in a PEM bundle, in order.
pub fn certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(parse::all_certificates(pem, "caBundle")?
        .into_iter()
        .map(|der| der.as_ref().to_vec())
        .collect())
}

/// True when both PEM bundles hold the same, non-empty set of certificates, whatever the
/// whitespace, line endings or order. A bundle that does not parse, or holds no
/// certificate, is never "the same": it has to be replaced.
pub fn same_certificates(a: &[u8], b: &[u8]) -> bool {
    match (certificates(a), certificates(b)) {
        (Ok(mut a), Ok(mut b)) if !a.is_empty() => {
            a.sort();
            a.dedup();
            b.sort();
            b.dedup();
            a == b
        }
        _ => false,
    }
}
