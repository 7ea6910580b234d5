//! Shared fixtures of the bootstrap tests: options, a webhook configuration, Secret
//! bodies, file and Secret readers, and a bounded poll.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use holysheep_certs::{Ca, ServingCert, bundle};
use holysheep_webhook::bootstrap::BootstrapOptions;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::fake_apiserver::FakeApiServer;

pub const NS: &str = "holysheep-system";
pub const SECRET: &str = "holysheep-webhook-tls";
pub const MWC: &str = "holysheep-sidecar-injector";
pub const DAY: Duration = Duration::from_secs(86_400);

pub fn opts(dir: &tempfile::TempDir) -> BootstrapOptions {
    BootstrapOptions::new(NS, dir.path().join("certs"))
}

pub fn webhook_config(ca_bundle: Option<&str>) -> Value {
    let client_config = |path: &str| {
        let mut cc = json!({"service": {"name": "holysheep-webhook", "namespace": NS, "path": path, "port": 443}});
        if let Some(pem) = ca_bundle {
            cc["caBundle"] = json!(bundle::encode(pem));
        }
        cc
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MWC},
        "webhooks": [
            {"name": "inject.holysheep.ai", "clientConfig": client_config("/mutate"),
             "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]},
            {"name": "inject-b.holysheep.ai", "clientConfig": client_config("/mutate"),
             "admissionReviewVersions": ["v1"], "sideEffects": "None"}
        ]
    })
}

pub fn data(secret: &Value, key: &str) -> String {
    let b64 = secret["data"][key].as_str().unwrap_or_default();
    String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
}

/// The caBundle of every webhook, decoded.
pub fn ca_bundles(server: &FakeApiServer) -> Vec<String> {
    let config = server.webhook_config(MWC).unwrap();
    config["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let b64 = w["clientConfig"]["caBundle"].as_str().unwrap_or_default();
            String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap()
        })
        .collect()
}

pub fn secret_value(ca: &Ca, bundle_pem: &str, serving: &ServingCert) -> Value {
    let e = |s: &str| STANDARD.encode(s);
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "namespace": NS, "labels": {"keep": "me"}},
        "data": {"ca.crt": e(bundle_pem), "ca.key": e(ca.key_pem()),
                 "tls.crt": e(serving.cert_pem()), "tls.key": e(serving.key_pem())}
    })
}

pub fn file(dir: &tempfile::TempDir, name: &str) -> String {
    std::fs::read_to_string(dir.path().join("certs").join(name)).unwrap()
}

/// Checks that the files a replica wrote form a CA + serving cert valid for the Service.
pub fn assert_files_valid(dir: &tempfile::TempDir, secret: &Value) {
    let ca = Ca::from_pem(&file(dir, "ca.crt"), &data(secret, "ca.key")).unwrap();
    let serving = ServingCert::from_pem(&file(dir, "tls.crt"), &file(dir, "tls.key")).unwrap();
    ca.verify_serving(&serving, "holysheep-webhook", NS, OffsetDateTime::now_utc())
        .unwrap();
}

/// Polls `cond` every 10 ms for at most 10 s.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
