//! `holysheep-webhook certs --service S --namespace N --out DIR`: a new CA and a serving
//! certificate for `S.N.svc` (also `S.N.svc.cluster.local`, `S.N`, `S`), written as
//! `ca.crt`, `tls.crt` and `tls.key` for `serve --tls-cert/--tls-key` and the caBundle.
//!
//! What it does not do: talk to Kubernetes (that is `serve --self-signed`) or keep the CA
//! key: without it nothing can be re-issued, so re-run the command to rotate.

use std::path::PathBuf;

use crate::cli::CertsArgs;
use crate::error::WebhookError;

/// Generates the certificates and writes them; returns the paths of `ca.crt`, `tls.crt`
/// and `tls.key`.
pub fn run(args: &CertsArgs) -> Result<[PathBuf; 3], WebhookError> {
    let ca = holysheep_certs::generate_ca(
        holysheep_certs::DEFAULT_CA_COMMON_NAME,
        holysheep_certs::DEFAULT_CA_VALIDITY,
    )?;
    let serving = ca.issue_serving(
        &args.service,
        &args.namespace,
        holysheep_certs::DEFAULT_SERVING_VALIDITY,
    )?;
    let paths = holysheep_certs::write_to_dir(&args.out, ca.cert_pem(), &serving)?;
    tracing::info!(
        dir = %args.out.display(),
        dns_names = ?serving.dns_names(),
        not_after = %serving.not_after(),
        "wrote ca.crt, tls.crt and tls.key"
    );
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    #[test]
    fn writes_a_pair_that_the_server_loads_and_the_ca_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let args = CertsArgs {
            service: "holysheep-webhook".into(),
            namespace: "holysheep-system".into(),
            out: dir.path().join("certs"),
        };
        let [ca, cert, key] = run(&args).unwrap();
        let tls = crate::tls::ReloadingTls::load(
            crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            },
            None,
        );
        assert!(tls.is_ok(), "{:?}", tls.err());
        // The served chain verifies against ca.crt for the name kube-apiserver dials.
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(der.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            crate::tls::crypto_provider(),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_file(&cert).unwrap();
        let name = ServerName::try_from("holysheep-webhook.holysheep-system.svc").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .unwrap();
        let serving = holysheep_certs::ServingCert::from_pem(
            &std::fs::read_to_string(&cert).unwrap(),
            &std::fs::read_to_string(&key).unwrap(),
        )
        .unwrap();
        assert_eq!(
            serving.dns_names(),
            [
                "holysheep-webhook.holysheep-system.svc",
                "holysheep-webhook.holysheep-system.svc.cluster.local",
                "holysheep-webhook.holysheep-system",
                "holysheep-webhook"
            ]
        );
    }

    #[test]
    fn a_bad_service_name_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let args = CertsArgs {
            service: "Bad_Name".into(),
            namespace: "ns".into(),
            out: dir.path().to_path_buf(),
        };
        let err = run(&args).unwrap_err().to_string();
        assert!(err.contains("service"), "{err}");
    }
}
