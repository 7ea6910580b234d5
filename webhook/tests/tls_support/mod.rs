//! Shared by `admission_http.rs`, `hostile.rs` and `tls_reload.rs`: certificates from holysheep-certs in
//! a temp dir, the real server on 127.0.0.1:0, and reqwest clients that trust only the
//! generated CA and reach the server by the Service name kube-apiserver dials.

#![allow(dead_code, reason = "each test file uses a different subset")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failed setup step should fail the test loudly"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use holysheep_certs::{Ca, ServingCert};
use holysheep_webhook::server::{self, AppState, Limits};
use holysheep_webhook::settings::Settings;
use holysheep_webhook::tls::{ReloadStatus, ReloadingTls, TlsFiles};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SERVICE: &str = "holysheep-webhook";
pub const NAMESPACE: &str = "holysheep-system";
/// The name kube-apiserver dials for a webhook Service.
pub const HOST: &str = "holysheep-webhook.holysheep-system.svc";
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn new_ca() -> Ca {
    holysheep_certs::generate_ca("test-ca", Duration::from_secs(3600)).unwrap()
}

pub fn issue(ca: &Ca) -> ServingCert {
    ca.issue_serving(SERVICE, NAMESPACE, Duration::from_secs(3600))
        .unwrap()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub ca: Ca,
    pub tls: ReloadingTls,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    pub files: TlsFiles,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
}

/// Writes a fresh CA and serving certificate as plain files `tls.crt`/`tls.key`.
pub fn plain_files(dir: &Path, ca: &Ca) -> TlsFiles {
    let serving = issue(ca);
    let paths = holysheep_certs::write_to_dir(dir, ca.cert_pem(), &serving).unwrap();
    TlsFiles {
        cert: paths[1].clone(),
        key: paths[2].clone(),
    }
}

/// Starts the server with certificate files laid out by `layout` in a fresh temp dir,
/// and (when `watch`) the directory watcher.
pub async fn start_with(
    settings: Settings,
    layout: impl FnOnce(&Path, &Ca) -> TlsFiles,
    watch: bool,
) -> TestServer {
    start_state(AppState::new(settings), layout, watch).await
}

/// Starts the server with default settings and the given bounds.
pub async fn start_limited(limits: Limits) -> TestServer {
    start_state(
        AppState::with_limits(Settings::default(), limits),
        plain_files,
        false,
    )
    .await
}

async fn start_state(
    state: AppState,
    layout: impl FnOnce(&Path, &Ca) -> TlsFiles,
    watch: bool,
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca();
    let files = layout(dir.path(), &ca);
    let tls = ReloadingTls::load(files.clone(), Some(state.metrics().clone())).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (watch_stop_tx, watch_stop_rx) = oneshot::channel::<()>();
    let watcher = if watch {
        Some(tls.spawn_watcher(Duration::from_secs(3600), async move {
            let _ = watch_stop_rx.await;
        }))
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_state = state.clone();
    let server_tls = tls.clone();
    let task = tokio::spawn(async move {
        let _keep_watcher_running = watch_stop_tx;
        server::serve(listener, server_tls, server_state, async move {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    let server = TestServer {
        addr,
        ca,
        tls,
        state,
        dir,
        files,
        stop: Some(stop_tx),
        task: Some(task),
        watcher,
    };
    server.wait_ready().await;
    server
}

pub async fn start(settings: Settings) -> TestServer {
    start_with(settings, plain_files, false).await
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("https://{HOST}:{}{path}", self.addr.port())
    }

    /// A client trusting only this server's CA, offering `alpn` (e.g. `["h2"]`).
    pub fn client_alpn(&self, alpn: &[&[u8]]) -> reqwest::Client {
        client_for(&[self.ca.cert_pem()], self.addr, alpn)
    }

    /// A client offering h2 and http/1.1, like kube-apiserver.
    pub fn client(&self) -> reqwest::Client {
        self.client_alpn(&[b"h2", b"http/1.1"])
    }

    /// A raw TLS connection to the server, verified against its CA, offering `alpn`.
    pub async fn tls_connect(
        &self,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        self.tls_handshake(tcp, alpn).await.unwrap()
    }

    /// The TLS handshake on an open TCP connection to the server.
    pub async fn tls_handshake(
        &self,
        tcp: tokio::net::TcpStream,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let config = client_config(&[self.ca.cert_pem()], alpn);
        let name = rustls_pki_types::ServerName::try_from(HOST).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// Polls /readyz until it answers 200 (bounded).
    pub async fn wait_ready(&self) {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(res) = client.get(self.url("/readyz")).send().await {
                if res.status() == 200 {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never became ready"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Waits (bounded) until the reload counters satisfy `pred`.
    pub async fn wait_reload(&self, pred: impl Fn(&ReloadStatus) -> bool) -> ReloadStatus {
        let mut rx = self.tls.subscribe();
        let status = tokio::time::timeout(WAIT, rx.wait_for(|s| pred(s)))
            .await
            .expect("timed out waiting for a certificate reload")
            .unwrap();
        *status
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
        if let Some(watcher) = self.watcher.take() {
            tokio::time::timeout(WAIT, watcher).await.unwrap().unwrap();
        }
    }
}

pub fn client_for(ca_pems: &[&str], addr: SocketAddr, alpn: &[&[u8]]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(ca_pems, alpn))
        .resolve(HOST, addr)
        .tls_info(true)
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// A rustls client configuration trusting only `ca_pems`, offering `alpn`.
pub fn client_config(ca_pems: &[&str], alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The DER of the leaf certificate the server presented on `res`'s connection.
pub fn peer_leaf(res: &reqwest::Response) -> Vec<u8> {
    res.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("no TLS info on the response")
        .to_vec()
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}
