//! `serve --self-signed` bootstrap against a fake kube-apiserver on 127.0.0.1:0: first
//! start creates the Secret, later starts reuse it, racing replicas share one CA, the
//! caBundle patch carries the CA, expiry and mismatches renew, API errors are clear.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns may unwrap"
)]

#[path = "bootstrap_mock/fake_apiserver.rs"]
mod fake_apiserver;
#[path = "bootstrap_mock/helpers.rs"]
mod helpers;
#[path = "bootstrap_mock/serve_binary.rs"]
mod serve_binary;

use std::time::Duration;

use fake_apiserver::FakeApiServer;
use holysheep_certs::{ServingCert, bundle, generate_ca};
use holysheep_webhook::bootstrap::{
    BootstrapError, CaBundleStatus, SecretAction, bootstrap_once, run_renewal_loop,
};
use time::OffsetDateTime;

use helpers::*;

#[tokio::test]
async fn first_start_creates_the_secret_writes_files_and_patches_every_ca_bundle() {
    let server = FakeApiServer::start(None).await;
    server.insert_webhook_config(webhook_config(None));
    let dir = tempfile::tempdir().unwrap();

    let outcome = bootstrap_once(server.client(), &opts(&dir)).await.unwrap();

    assert_eq!(outcome.secret, SecretAction::Created);
    assert_eq!(outcome.ca_bundle, CaBundleStatus::Patched { webhooks: 2 });
    assert!(outcome.files_written);
    let secret = server.secret(NS, SECRET).expect("Secret created");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let mut keys: Vec<_> = secret["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);
    assert_eq!(file(&dir, "ca.crt"), data(&secret, "ca.crt"));
    assert_eq!(file(&dir, "tls.crt"), data(&secret, "tls.crt"));
    assert_eq!(file(&dir, "tls.key"), data(&secret, "tls.key"));
    assert_files_valid(&dir, &secret);
    // The caBundle patch carries the CA, on both webhooks, and leaves the rest alone.
    for ca_bundle in ca_bundles(&server) {
        assert!(bundle::same_certificates(
            ca_bundle.as_bytes(),
            data(&secret, "ca.crt").as_bytes()
        ));
    }
    let config = server.webhook_config(MWC).unwrap();
    assert_eq!(config["webhooks"][0]["name"], "inject.holysheep.ai");
    assert_eq!(config["webhooks"][0]["rules"][0]["resources"][0], "pods");
    assert_eq!(
        config["webhooks"][0]["clientConfig"]["service"]["path"],
        "/mutate"
    );
    assert!(outcome.serving_not_after > OffsetDateTime::now_utc() + time::Duration::days(300));
    // Every write names its field manager.
    let writes: Vec<_> = server
        .lock()
        .queries
        .iter()
        .filter(|(method, _)| method != http::Method::GET)
        .map(|(method, query)| format!("{method} ?{query}"))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    assert!(
        writes
            .iter()
            .all(|w| w.contains("fieldManager=holysheep-webhook")),
        "{writes:?}"
    );
}

#[tokio::test]
async fn second_start_reuses_the_secret_without_writing_anything() {
    let server = FakeApiServer::start(None).await;
    server.insert_webhook_config(webhook_config(None));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    bootstrap_once(server.client(), &opts(&dir_a))
        .await
        .unwrap();
    let before = server.secret(NS, SECRET).unwrap();
    server.clear_log();

    let outcome = bootstrap_once(server.client(), &opts(&dir_b))
        .await
        .unwrap();

    assert_eq!(outcome.secret, SecretAction::Reused);
    assert_eq!(outcome.ca_bundle, CaBundleStatus::Unchanged);
    assert_eq!(
        server.secret(NS, SECRET).unwrap(),
        before,
        "Secret untouched"
    );
    for name in ["ca.crt", "tls.crt", "tls.key"] {
        assert_eq!(
            file(&dir_a, name),
            file(&dir_b, name),
            "{name} differs between replicas"
        );
    }
    let writes: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET"))
        .collect();
    assert!(
        writes.is_empty(),
        "a reusing start must only read: {writes:?}"
    );

    // Same directory again: files are already right, so they are not rewritten.
    let again = bootstrap_once(server.client(), &opts(&dir_b))
        .await
        .unwrap();
    assert!(!again.files_written);
}

#[tokio::test]
async fn two_concurrent_starts_end_with_one_shared_ca() {
    // Both creates are held until both have arrived: both replicas saw 404 first.
    let server = FakeApiServer::start(Some(2)).await;
    server.insert_webhook_config(webhook_config(None));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (opts_a, opts_b) = (opts(&dir_a), opts(&dir_b));

    let (a, b) = tokio::join!(
        bootstrap_once(server.client(), &opts_a),
        bootstrap_once(server.client(), &opts_b)
    );
    let (a, b) = (a.unwrap(), b.unwrap());

    let mut actions = [a.secret, b.secret];
    actions.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(
        actions,
        [SecretAction::AdoptedWinner, SecretAction::Created]
    );
    let creates: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST"))
        .collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert_eq!(
        creates.iter().filter(|r| r.ends_with(" 409")).count(),
        1,
        "{creates:?}"
    );
    let secret = server.secret(NS, SECRET).unwrap();
    for dir in [&dir_a, &dir_b] {
        assert_eq!(file(dir, "ca.crt"), data(&secret, "ca.crt"));
        assert_eq!(file(dir, "tls.crt"), data(&secret, "tls.crt"));
        assert_files_valid(dir, &secret);
    }
    for ca_bundle in ca_bundles(&server) {
        assert!(bundle::same_certificates(
            ca_bundle.as_bytes(),
            data(&secret, "ca.crt").as_bytes()
        ));
    }
}

#[tokio::test]
async fn a_serving_cert_expiring_within_the_margin_is_renewed_under_the_same_ca() {
    let server = FakeApiServer::start(None).await;
    let ca = generate_ca("holysheep-webhook-ca", 3650 * DAY).unwrap();
    let expiring = ca
        .issue_serving("holysheep-webhook", NS, Duration::from_secs(3600))
        .unwrap();
    server.insert_secret(NS, SECRET, secret_value(&ca, ca.cert_pem(), &expiring));
    server.insert_webhook_config(webhook_config(Some(ca.cert_pem())));
    let rv_before = server.secret(NS, SECRET).unwrap()["metadata"]["resourceVersion"].clone();
    // The first update loses an optimistic-concurrency race: re-read and retry.
    server
        .lock()
        .fail_next
        .push((http::Method::PUT, "/secrets/", 409, "Conflict"));
    let dir = tempfile::tempdir().unwrap();

    let outcome = bootstrap_once(server.client(), &opts(&dir)).await.unwrap();

    assert_eq!(outcome.secret, SecretAction::RenewedServing);
    assert_eq!(
        outcome.ca_bundle,
        CaBundleStatus::Unchanged,
        "same CA: no caBundle change"
    );
    let secret = server.secret(NS, SECRET).unwrap();
    assert_ne!(secret["metadata"]["resourceVersion"], rv_before);
    assert_eq!(
        secret["metadata"]["labels"]["keep"], "me",
        "metadata kept on update"
    );
    assert_eq!(data(&secret, "ca.key"), ca.key_pem(), "CA kept");
    assert!(bundle::same_certificates(
        data(&secret, "ca.crt").as_bytes(),
        ca.cert_pem().as_bytes()
    ));
    assert_ne!(data(&secret, "tls.crt"), expiring.cert_pem());
    let renewed =
        ServingCert::from_pem(&data(&secret, "tls.crt"), &data(&secret, "tls.key")).unwrap();
    assert!(renewed.not_after() > OffsetDateTime::now_utc() + time::Duration::days(300));
    assert_eq!(file(&dir, "tls.crt"), renewed.cert_pem());
    let puts: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PUT"))
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "one conflicted update, one good one: {puts:?}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_service_is_reissued() {
    let server = FakeApiServer::start(None).await;
    server.insert_webhook_config(webhook_config(None));
    let ca = generate_ca("holysheep-webhook-ca", 3650 * DAY).unwrap();
    let wrong = ca.issue_serving("other-service", NS, 365 * DAY).unwrap();
    server.insert_secret(NS, SECRET, secret_value(&ca, ca.cert_pem(), &wrong));
    let dir = tempfile::tempdir().unwrap();

    let outcome = bootstrap_once(server.client(), &opts(&dir)).await.unwrap();

    assert_eq!(outcome.secret, SecretAction::RenewedServing);
    assert_files_valid(&dir, &server.secret(NS, SECRET).unwrap());
}

#[tokio::test]
async fn an_expiring_ca_is_rotated_and_stays_trusted_until_it_expires() {
    let server = FakeApiServer::start(None).await;
    let old_ca = generate_ca("holysheep-webhook-ca", 10 * DAY).unwrap();
    let serving = old_ca
        .issue_serving("holysheep-webhook", NS, 5 * DAY)
        .unwrap();
    server.insert_secret(
        NS,
        SECRET,
        secret_value(&old_ca, old_ca.cert_pem(), &serving),
    );
    server.insert_webhook_config(webhook_config(Some(old_ca.cert_pem())));
    let dir = tempfile::tempdir().unwrap();

    let outcome = bootstrap_once(server.client(), &opts(&dir)).await.unwrap();

    assert_eq!(outcome.secret, SecretAction::RotatedCa);
    assert_eq!(outcome.ca_bundle, CaBundleStatus::Patched { webhooks: 2 });
    let secret = server.secret(NS, SECRET).unwrap();
    assert_ne!(data(&secret, "ca.key"), old_ca.key_pem());
    let trusted = bundle::certificates(data(&secret, "ca.crt").as_bytes()).unwrap();
    assert_eq!(trusted.len(), 2, "new CA first, old CA still trusted");
    let old_der = bundle::certificates(old_ca.cert_pem().as_bytes())
        .unwrap()
        .remove(0);
    assert_eq!(trusted[1], old_der);
    for ca_bundle in ca_bundles(&server) {
        assert!(bundle::same_certificates(
            ca_bundle.as_bytes(),
            data(&secret, "ca.crt").as_bytes()
        ));
    }
    assert_files_valid(&dir, &secret);
}

#[tokio::test]
async fn api_errors_are_clear_errors_not_panics() {
    let server = FakeApiServer::start(None).await;
    server.insert_webhook_config(webhook_config(None));
    server
        .lock()
        .fail_next
        .push((http::Method::GET, "/secrets/", 403, "Forbidden"));
    let dir = tempfile::tempdir().unwrap();

    let err = bootstrap_once(server.client(), &opts(&dir))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BootstrapError::Api { .. }), "{msg}");
    assert!(
        msg.contains("get Secret holysheep-system/holysheep-webhook-tls"),
        "{msg}"
    );
    assert!(msg.contains("403") && msg.contains("Forbidden"), "{msg}");
    assert!(
        msg.contains("get on secrets") && msg.contains("Role"),
        "{msg}"
    );

    server.lock().fail_next.push((
        http::Method::PATCH,
        "/mutatingwebhookconfigurations/",
        500,
        "InternalError",
    ));
    let err = bootstrap_once(server.client(), &opts(&dir))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "patch the caBundle of MutatingWebhookConfiguration holysheep-sidecar-injector"
        ),
        "{msg}"
    );
    assert!(msg.contains("500"), "{msg}");
    assert!(!msg.contains("PRIVATE KEY"), "no key material in errors");

    let mut bad = opts(&dir);
    bad.namespace = "Not_A_Namespace".to_owned();
    let err = bootstrap_once(server.client(), &bad).await.unwrap_err();
    assert!(err.to_string().contains("invalid namespace"), "{err}");
    let mut bad = opts(&dir);
    bad.serving_validity = bad.renewal_margin;
    let err = bootstrap_once(server.client(), &bad).await.unwrap_err();
    assert!(err.to_string().contains("serving validity"), "{err}");
}

#[tokio::test]
async fn renewal_loop_waits_for_the_webhook_config_and_restores_a_wiped_ca_bundle() {
    let server = FakeApiServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = opts(&dir);
    opts.check_interval = Duration::from_millis(50);
    opts.retry_delay = Duration::from_millis(20);

    let first = bootstrap_once(server.client(), &opts).await.unwrap();
    assert_eq!(first.ca_bundle, CaBundleStatus::ConfigNotFound);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let looping = tokio::spawn(run_renewal_loop(server.client(), opts, async {
        let _ = stop_rx.await;
    }));
    let ca_pem = data(&server.secret(NS, SECRET).unwrap(), "ca.crt");
    let patched = |server: &FakeApiServer| {
        server.webhook_config(MWC).is_some()
            && ca_bundles(server)
                .iter()
                .all(|b| bundle::same_certificates(b.as_bytes(), ca_pem.as_bytes()))
    };

    // The configuration appears later (kubectl apply order): the loop patches it.
    server.insert_webhook_config(webhook_config(None));
    wait_until(|| patched(&server)).await;
    // A re-apply of the manifests wipes the caBundle: the loop restores it.
    server.insert_webhook_config(webhook_config(None));
    wait_until(|| patched(&server)).await;

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), looping)
        .await
        .expect("loop stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn bootstrap_works_over_https_verified_with_the_cluster_ca() {
    // As in a pod: HTTPS to the apiserver, verified against the cluster CA (the
    // ServiceAccount's ca.crt), through kube's own rustls setup with only ring built in.
    let cluster_ca = generate_ca("cluster-ca", DAY).unwrap();
    let apiserver_cert = cluster_ca
        .issue_serving("kubernetes", "default", DAY)
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![
                rustls_pki_types::pem::PemObject::from_pem_slice(
                    apiserver_cert.cert_pem().as_bytes(),
                )
                .unwrap(),
            ],
            rustls_pki_types::pem::PemObject::from_pem_slice(apiserver_cert.key_pem().as_bytes())
                .unwrap(),
        )
        .unwrap();
    let server = FakeApiServer::start_tls(std::sync::Arc::new(tls)).await;
    server.insert_webhook_config(webhook_config(None));
    let url = format!("https://{}", server.addr).parse().unwrap();
    let mut config = kube::Config::new(url);
    config.root_cert = Some(bundle::certificates(cluster_ca.cert_pem().as_bytes()).unwrap());
    config.tls_server_name = Some("kubernetes.default.svc".to_owned());
    let client = kube::Client::try_from(config).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let outcome = bootstrap_once(client, &opts(&dir)).await.unwrap();

    assert_eq!(outcome.secret, SecretAction::Created);
    assert_eq!(outcome.ca_bundle, CaBundleStatus::Patched { webhooks: 2 });

    // The wrong cluster CA: a clear error that names the TLS failure.
    let url = format!("https://{}", server.addr).parse().unwrap();
    let mut config = kube::Config::new(url);
    let wrong_ca = generate_ca("not-the-cluster-ca", DAY).unwrap();
    config.root_cert = Some(bundle::certificates(wrong_ca.cert_pem().as_bytes()).unwrap());
    config.tls_server_name = Some("kubernetes.default.svc".to_owned());
    let client = kube::Client::try_from(config).unwrap();
    let err = bootstrap_once(client, &opts(&dir)).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot talk to the Kubernetes API"), "{msg}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}
