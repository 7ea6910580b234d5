//! TLS for the fake upstreams: a fresh private CA from holysheep-certs and a serving
//! certificate for `localhost`, as the proxy's production path meets them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A new CA and a serving certificate for `localhost` (the certs crate names a Service
/// `S` in `N`; its SANs include the bare `S`), written to `dir`, as a TLS acceptor
/// offering `h2` (when `h2`) and `http/1.1`.
pub fn acceptor(dir: &Path, h2: bool) -> anyhow::Result<TlsAcceptor> {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);
    let ca = holysheep_certs::generate_ca("holysheep-bench-upstream-ca", YEAR)
        .context("failed to generate the --tls-dir CA")?;
    let serving = ca
        .issue_serving("localhost", "bench", YEAR)
        .context("failed to issue the --tls-dir serving certificate")?;
    holysheep_certs::write_to_dir(dir, ca.cert_pem(), &serving)
        .with_context(|| format!("failed to write --tls-dir {}", dir.display()))?;
    let certs = CertificateDer::pem_slice_iter(serving.cert_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("failed to read back the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem().as_bytes())
        .context("failed to read back the serving key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("failed to set the TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("failed to build the TLS server config")?;
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}
