//! Shared test support: the scripted fake upstream and an in-process sidecar; for the
//! HTTPS and egress-proxy cases, a TLS upstream on a private CA (`tls`), a real tinyproxy
//! (`tinyproxy`) and the sidecar binary as a child process (`process`).
//!
//! Every listener is bound on 127.0.0.1:0 and passed in; nothing sleeps to wait: readiness
//! and reloads are polled with a bounded timeout (`eventually`).
#![allow(
    dead_code,
    reason = "shared by several test crates; each uses a subset"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failed setup should panic with its message"
)]

pub mod daemon;
pub mod process;
pub mod redis;
pub mod tcp;
pub mod tinyproxy;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream, CompletionUsage,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;
use holysheep_sidecar::config::Config;
use holysheep_sidecar::keys::{KeySource, KeyStore};
use holysheep_sidecar::proxy::AppState;
use holysheep_sidecar::server::{self, ConnLimits, RunError, Settings};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The key tests configure the sidecar with.
pub const TEST_KEY: &str = "sk-holysheep-test-key";
/// The placeholder the webhook gives apps.
pub const PLACEHOLDER_KEY: &str = "injected-by-holysheep";

/// A chat request for the real SDK: one user message `content` to `model`.
pub fn chat_request(model: &str, content: &str) -> CreateChatCompletionRequest {
    let msg = ChatCompletionRequestUserMessageArgs::default()
        .content(content)
        .build()
        .unwrap();
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([msg.into()])
        .build()
        .unwrap()
}

/// Reads an SDK chat stream to its end, appending the deltas to `text`; returns the
/// usage of the last chunk that carried one.
pub async fn read_chat_stream(
    stream: &mut ChatCompletionResponseStream,
    text: &mut String,
) -> Option<CompletionUsage> {
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for choice in &chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
        usage = chunk.usage.or(usage);
    }
    usage
}

/// Reads a fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Polls `check` every 10ms until it is true, failing after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Settings for a test sidecar: env key `TEST_KEY`, no key file, defaults otherwise.
pub fn settings(upstream: &str) -> Settings {
    Settings {
        upstream: upstream.parse().unwrap(),
        key_source: KeySource {
            file: PathBuf::from("/nonexistent/holysheep-test/api-key"),
            env_key: Some(SecretString::from(TEST_KEY)),
        },
        config: Config::default(),
        config_path: None,
        shutdown_grace: Duration::from_secs(5),
        key_recheck: Duration::from_secs(3600),
        conn_limits: ConnLimits::default(),
        upstream_options: Default::default(),
        otlp: None,
        budget: Default::default(),
    }
}

/// A sidecar running in-process on ephemeral ports.
pub struct Sidecar {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), RunError>>>,
}

impl Sidecar {
    /// Starts with default settings against `upstream` and waits until healthy.
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(settings(upstream)).await
    }

    /// Starts with `settings` and waits until `/healthz` answers (not `/readyz`: some
    /// tests start without a key on purpose).
    pub async fn start_with(settings: Settings) -> Self {
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (proxy_addr, admin_addr) = (proxy.local_addr().unwrap(), admin.local_addr().unwrap());
        let app = server::build(settings).unwrap();
        let state = Arc::clone(&app.state);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(app, proxy, admin, async {
            let _ = rx.await;
        }));
        let sidecar = Self {
            proxy_addr,
            admin_addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        };
        let http = http_client();
        let url = sidecar.admin_url("/healthz");
        eventually(Duration::from_secs(5), "sidecar /healthz", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        sidecar
    }

    /// The key store (for reload counters).
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.state.keys
    }

    /// `http://127.0.0.1:PORT` + `path` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr)
    }

    /// `http://127.0.0.1:PORT` + `path` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// An OpenAI client pointed at the sidecar, holding only the placeholder key.
    pub fn openai(&self) -> Client<OpenAIConfig> {
        let config = OpenAIConfig::new()
            .with_api_base(self.url("/v1"))
            .with_api_key(PLACEHOLDER_KEY);
        Client::build(http_client(), config)
    }

    /// `/readyz` status code.
    pub async fn readyz(&self) -> u16 {
        http_client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Asks for shutdown and waits (bounded) for `serve` to return.
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.shutdown.take().map(|tx| tx.send(()));
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("sidecar stopped in time")
            .unwrap()
    }

    /// Asks for shutdown without waiting; returns the task to await.
    pub fn begin_stop(&mut self) -> tokio::task::JoinHandle<Result<(), RunError>> {
        self.shutdown.take().map(|tx| tx.send(()));
        self.task.take().unwrap()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `/metrics` at `url` (a sidecar's admin listener) as text and parsed; asserts 200.
pub async fn scrape_metrics(url: &str) -> (String, prometheus_parse::Scrape) {
    let resp = http_client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, parsed)
}

/// A plain HTTP client for loopback tests: TLS config built with the ring provider (the
/// workspace compiles no process-wide default), no proxy from the environment.
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .unwrap()
}

/// A port nothing listens on: bound, read, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Creates the Kubernetes Secret volume layout in `dir`:
/// `..<version>/api-key`, `..data -> ..<version>`, `api-key -> ..data/api-key`.
pub fn secret_volume(dir: &Path, version: &str, key: &str) -> PathBuf {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("api-key"), key).unwrap();
    std::os::unix::fs::symlink(format!("..{version}"), dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/api-key", dir.join("api-key")).unwrap();
    dir.join("api-key")
}

/// Rotates the Secret like the kubelet: new versioned dir, then an atomic rename of a
/// fresh `..data` symlink over the old one.
pub fn rotate_secret(dir: &Path, version: &str, key: &str) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("api-key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

/// Status and `{"error":{...}}` object of an SDK error. The SDK parses 4xx bodies but
/// keeps 5xx bodies as raw text in `message`, so those are parsed here.
pub fn sdk_error(err: &async_openai::error::OpenAIError) -> (u16, serde_json::Value) {
    let async_openai::error::OpenAIError::ApiError(e) = err else {
        panic!("expected an API error, got {err:?}");
    };
    let status = e.status_code.as_u16();
    if e.status_code.is_server_error() {
        let body: serde_json::Value = serde_json::from_str(&e.api_error.message)
            .unwrap_or_else(|_| panic!("5xx body is not JSON: {}", e.api_error.message));
        (status, body["error"].clone())
    } else {
        (status, serde_json::to_value(&e.api_error).unwrap())
    }
}
