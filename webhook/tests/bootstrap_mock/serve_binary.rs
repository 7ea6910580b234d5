//! The real binary: `holysheep-webhook serve --self-signed` started as a process with a
//! kubeconfig pointing at the fake apiserver, as the Deployment runs it. It must create
//! the Secret, write the PEM files it serves and patch the caBundle, through the same
//! wiring (cli -> server -> bootstrap) the cluster uses.

use std::process::Stdio;
use std::time::Duration;

use holysheep_certs::bundle;

use super::fake_apiserver::FakeApiServer;
use super::helpers::{MWC, NS, SECRET, data, wait_until, webhook_config};

#[tokio::test]
async fn serve_self_signed_bootstraps_through_the_kube_api() {
    let server = FakeApiServer::start(None).await;
    server.insert_webhook_config(webhook_config(None));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: fake, user: {{token: not-a-real-token}}}}]\n\
             contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {NS}}}}}]\n",
            server.addr
        ),
    )
    .unwrap();
    let cert_dir = dir.path().join("certs");

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_holysheep-webhook"))
        .args(["serve", "--self-signed", "--listen", "127.0.0.1:0"])
        .arg("--cert-dir")
        .arg(&cert_dir)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", NS)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let ready = || {
        cert_dir.join("tls.crt").exists()
            && server.secret(NS, SECRET).is_some()
            && server
                .webhook_config(MWC)
                .is_some_and(|c| c["webhooks"][0]["clientConfig"]["caBundle"].is_string())
    };
    let exited_early = tokio::select! {
        () = wait_until(ready) => None,
        status = child.wait() => Some(status.unwrap()),
    };
    if let Some(status) = exited_early {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use tokio::io::AsyncReadExt as _;
            let _ = pipe.read_to_string(&mut stderr).await;
        }
        panic!("holysheep-webhook exited with {status} before bootstrapping:\n{stderr}");
    }

    let secret = server.secret(NS, SECRET).unwrap();
    let served = std::fs::read_to_string(cert_dir.join("tls.crt")).unwrap();
    assert_eq!(
        served,
        data(&secret, "tls.crt"),
        "serves the shared certificate"
    );
    let ca_bundle = server.webhook_config(MWC).unwrap()["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap()
        .to_owned();
    let ca_bundle = bundle::decode(&ca_bundle).unwrap();
    assert!(bundle::same_certificates(
        &ca_bundle,
        data(&secret, "ca.crt").as_bytes()
    ));

    child.start_kill().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}
