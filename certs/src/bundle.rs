//! The `caBundle` of a webhook configuration: encoding and comparison.
//!
//! In the Kubernetes API `caBundle` is PEM bytes, which JSON and YAML carry as base64.
//! Comparison looks at the certificates themselves (DER), so the same CA written with
//! other line endings, extra blank lines or trailing whitespace counts as unchanged and
//! does not cause a needless PATCH.
//!
//! A trust bundle may hold more than one CA: while a CA is being replaced, the previous
//! one stays trusted until it expires ([`rotate`]), so replicas still serving a
//! certificate of the old CA keep working until they pick up the new one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;

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

/// The trust bundle after `new_ca_pem` becomes the signing CA: `new_ca_pem` first, then
/// every certificate of `previous_bundle` that is still valid at `now` and is not the new
/// CA. Unparseable parts of `previous_bundle` are dropped: the result must always parse.
pub fn rotate(new_ca_pem: &str, previous_bundle: &[u8], now: OffsetDateTime) -> String {
    let new_der = parse::first_certificate(new_ca_pem, "ca.crt").map(|info| info.der);
    let mut out = new_ca_pem.trim_end().to_owned();
    out.push('\n');
    let previous = parse::all_certificates(previous_bundle, "caBundle").unwrap_or_default();
    for der in previous {
        if new_der.as_ref().is_ok_and(|new| *new == der) {
            continue;
        }
        let still_valid = parse::inspect(der.clone(), "caBundle")
            .is_ok_and(|info| info.not_after > now && !out.contains(&to_pem(der.as_ref())));
        if still_valid {
            out.push_str(&to_pem(der.as_ref()));
        }
    }
    out
}

/// PEM text of one DER certificate, 64 columns, LF line endings.
pub fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
