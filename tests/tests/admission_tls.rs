//! The webhook over real TLS, as the apiserver calls it: a CA and serving certificate from
//! holysheep-certs for `holysheep-webhook.holysheep-system.svc`, the webhook's own server
//! on `127.0.0.1:0`, and a client that trusts only that CA (the caBundle) and dials the
//! Service name. The AdmissionReview answer carries the request's uid and a base64 JSON
//! patch equal to `mutation::mutate`'s, which, applied, gives a sidecar that the sidecar's
//! own flag parser accepts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use holysheep_e2e::pod;
use holysheep_e2e::sidecar;
use holysheep_webhook::mutation;
use holysheep_webhook::server::{self, AppState};
use holysheep_webhook::settings::Settings;
use holysheep_webhook::tls::{ReloadingTls, TlsFiles};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SERVICE: &str = "holysheep-webhook";
const NAMESPACE: &str = "holysheep-system";
const UID: &str = "0df28fbd-5f5f-11e8-bc74-36e6bb280816";

/// A client that trusts only `ca_pem` and resolves the Service name to `addr`.
fn apiserver_client(ca_pem: &str, host: &str, addr: std::net::SocketAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for der in holysheep_certs::bundle::certificates(ca_pem.as_bytes()).unwrap() {
        roots.add(der.into()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve(host, addr)
        .no_proxy()
        .build()
        .unwrap()
}

fn review(pod: &Pod) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false,
        },
    })
}

#[tokio::test]
async fn admission_review_over_tls_gives_the_mutate_patch() {
    let ca =
        holysheep_certs::generate_ca("holysheep-webhook-ca", Duration::from_secs(3600)).unwrap();
    let serving = ca
        .issue_serving(SERVICE, NAMESPACE, Duration::from_secs(3600))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let [_, cert, key] =
        holysheep_certs::write_to_dir(dir.path(), ca.cert_pem(), &serving).unwrap();
    let tls = ReloadingTls::load(TlsFiles { cert, key }, None).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = AppState::new(Settings::default());
    let task = tokio::spawn(server::serve(listener, tls, state, async {
        let _ = stopped.await;
    }));

    let host = format!("{SERVICE}.{NAMESPACE}.svc");
    let client = apiserver_client(ca.cert_pem(), &host, addr);
    let url = |path: &str| format!("https://{host}:{}{path}", addr.port());
    // The probe paths of manifests/base/deployment.yaml (see install_manifests).
    for path in ["/readyz", "/healthz"] {
        let response = client.get(url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
    }

    let pod = pod::opted_in_pod(&[("holysheep/port", "8081")]);
    let response = client
        .post(url("/mutate"))
        .json(&review(&pod))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    let expected = mutation::mutate(&pod, &Settings::default())
        .unwrap()
        .unwrap();
    assert_eq!(patch, serde_json::to_value(&expected).unwrap());

    // Applied as the apiserver would, it is a pod the sidecar accepts.
    let mut doc = serde_json::to_value(&pod).unwrap();
    let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    let injected: Pod = serde_json::from_value(doc).unwrap();
    let (container, _) = pod::sidecar(&injected);
    assert_eq!(sidecar::args_of(container).listen.port(), 8081);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the webhook stopped in time")
        .unwrap()
        .unwrap();
}
