//! Certificate rotation without restart: the files are replaced on disk the two ways it
//! happens in a cluster (a plain rewrite, as cert-manager's CSI driver or an operator does,
//! and the kubelet's `..data` symlink swap of a Secret volume). New connections must see
//! the new certificate, an open connection keeps working, and a broken file keeps the old
//! certificate. Every wait is on the reload counter, bounded, never a sleep.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers of a test binary: a failed step should fail the test loudly"
)]

mod tls_support;

use std::os::unix::fs::symlink;
use std::path::Path;

use holysheep_certs::Ca;
use holysheep_webhook::settings::Settings;
use holysheep_webhook::tls::TlsFiles;
use tls_support::{TestServer, issue, plain_files, start_with};

/// The leaf certificate a brand-new connection is served.
async fn fresh_leaf(server: &TestServer) -> Vec<u8> {
    let res = server
        .client()
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    tls_support::peer_leaf(&res)
}

fn leaf_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn plain_rewrite_is_picked_up_and_open_connections_keep_working() {
    let server = start_with(Settings::default(), plain_files, true).await;
    let first = fresh_leaf(&server).await;
    assert_eq!(first, server.tls.current_leaf().unwrap().to_vec());

    // A connection opened before the rotation (HTTP/2, kept in the client's pool).
    let open = server.client_alpn(&[b"h2"]);
    let res = open.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(tls_support::peer_leaf(&res), first);

    // Rewrite both files in place, certificate first: the debounce folds the two writes.
    // A longer validity than the first certificate, so the expiry gauge must move.
    let next = server
        .ca
        .issue_serving(
            tls_support::SERVICE,
            tls_support::NAMESPACE,
            std::time::Duration::from_secs(7200),
        )
        .unwrap();
    std::fs::write(&server.files.cert, next.cert_pem()).unwrap();
    std::fs::write(&server.files.key, next.key_pem()).unwrap();
    let status = server.wait_reload(|s| s.successes >= 1).await;
    assert!(status.successes >= 1);

    let second = fresh_leaf(&server).await;
    assert_eq!(
        second,
        leaf_der(next.cert_pem()),
        "new connections get the new cert"
    );
    assert_ne!(second, first);

    // The pre-rotation connection is still up and still serves requests.
    let res = open.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        tls_support::peer_leaf(&res),
        first,
        "same connection as before"
    );

    // The reload shows in the metrics.
    let text = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("holysheep_webhook_cert_reloads_total{result=\"success\"}"),
        "{text}"
    );
    let expected = holysheep_certs::ServingCert::from_pem(next.cert_pem(), next.key_pem())
        .unwrap()
        .not_after()
        .unix_timestamp();
    assert!(
        text.contains(&format!(
            "holysheep_webhook_cert_not_after_timestamp_seconds {expected}"
        )),
        "expiry gauge follows the reloaded certificate: {text}"
    );
    server.stop().await;
}

/// The kubelet's atomic writer: files live in a timestamped dir, `..data` points at it,
/// and `tls.crt`/`tls.key` are symlinks through `..data`. An update writes a new dir and
/// renames a new `..data` symlink over the old one.
fn secret_volume(dir: &Path, ca: &Ca) -> TlsFiles {
    write_generation(dir, ca, "..2026_11_26_15_00_00.000000001");
    symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    TlsFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

/// Writes a new generation and swaps `..data` to it; returns the new certificate PEM.
fn write_generation(dir: &Path, ca: &Ca, name: &str) -> String {
    let serving = issue(ca);
    let generation = dir.join(name);
    std::fs::create_dir(&generation).unwrap();
    std::fs::write(generation.join("tls.crt"), serving.cert_pem()).unwrap();
    std::fs::write(generation.join("tls.key"), serving.key_pem()).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(name, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    serving.cert_pem().to_owned()
}

#[tokio::test]
async fn secret_volume_symlink_swap_is_picked_up() {
    let server = start_with(Settings::default(), secret_volume, true).await;
    let first = fresh_leaf(&server).await;

    let new_pem = write_generation(
        server.dir.path(),
        &server.ca,
        "..2026_11_26_16_00_00.000000002",
    );
    // The kubelet then deletes the old generation; the server must not care.
    std::fs::remove_dir_all(server.dir.path().join("..2026_11_26_15_00_00.000000001")).unwrap();
    let status = server.wait_reload(|s| s.successes >= 1).await;
    assert_eq!(
        status.failures, 0,
        "an atomic swap never shows a half state"
    );

    let second = fresh_leaf(&server).await;
    assert_ne!(second, first);
    assert_eq!(second, leaf_der(&new_pem));
    server.stop().await;
}

#[tokio::test]
async fn a_broken_file_keeps_the_old_certificate() {
    let server = start_with(Settings::default(), plain_files, true).await;
    let first = fresh_leaf(&server).await;

    std::fs::write(
        &server.files.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    )
    .unwrap();
    server.wait_reload(|s| s.failures >= 1).await;
    assert_eq!(
        fresh_leaf(&server).await,
        first,
        "still serving the old certificate"
    );

    // A key that belongs to another certificate is refused the same way.
    let other = issue(&server.ca);
    let failures = server.tls.subscribe().borrow().failures;
    std::fs::write(&server.files.cert, other.cert_pem()).unwrap();
    server.wait_reload(|s| s.failures > failures).await;
    assert_eq!(fresh_leaf(&server).await, first);

    // Once the key matches again, the new certificate goes live.
    std::fs::write(&server.files.key, other.key_pem()).unwrap();
    server.wait_reload(|s| s.successes >= 1).await;
    assert_eq!(fresh_leaf(&server).await, leaf_der(other.cert_pem()));

    let text = server
        .client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("holysheep_webhook_cert_reloads_total{result=\"error\"}"),
        "{text}"
    );
    server.stop().await;
}
