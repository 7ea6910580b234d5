//! Checks that a serving certificate is what a client (kube-apiserver) would accept: it
//! chains to the CA, is inside its validity period at a given instant, is meant for
//! server authentication, and names every DNS name the webhook is reached by.
//!
//! It uses rustls' own webpki verifier with the ring provider, i.e. the same code path a
//! Rust TLS client takes, rather than re-implementing path validation.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

use crate::error::{CertError, Result};

/// Verifies `leaf` against the single trust anchor `ca` at `now` for every name in `names`
/// that is a valid TLS host name; the first name must be one.
pub(crate) fn verify_leaf(
    ca: &CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
    names: &[String],
    now: OffsetDateTime,
) -> Result<()> {
    let first = names.first().cloned().unwrap_or_default();
    let verify_err = |name: &str, reason: String| CertError::Verify {
        name: name.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| verify_err(&first, format!("CA rejected as trust anchor: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| verify_err(&first, format!("cannot build verifier: {e}")))?;
    // Before 1970 cannot happen with a real clock; clamp rather than fail.
    let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    for (i, name) in names.iter().enumerate() {
        let server_name = match ServerName::try_from(name.as_str()) {
            Ok(server_name) => server_name,
            // A name no TLS client accepts as a host name (e.g. `svc.7`, whose last label
            // is numeric) can never be dialled, so there is nothing to check for it; but
            // the first name (`S.N.svc`, what kube-apiserver dials) must always verify.
            Err(_) if i > 0 => continue,
            Err(e) => return Err(verify_err(name, format!("not a DNS name: {e}"))),
        };
        verifier
            .verify_server_cert(leaf, &[], &server_name, &[], at)
            .map_err(|e| verify_err(name, e.to_string()))?;
    }
    Ok(())
}
