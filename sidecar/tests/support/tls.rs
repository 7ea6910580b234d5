//! A fake OpenAI upstream over HTTPS, on a private CA made by `holysheep-certs`.
//!
//! It serves `POST /v1/chat/completions` (JSON, or SSE when the body asks for
//! `"stream": true`) and answers anything else with the models list. Per request it records
//! the HTTP version, the `Authorization` header and the path, and it counts TCP
//! connections, so a test can tell "never connected" from "connected but sent nothing".
//! The CA certificate is written to a temp dir for `--upstream-ca-file` or `SSL_CERT_FILE`.
//!
//! It does not script replies (see `upstream.rs` for that) and stops when dropped.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use super::fixture;

/// The host name the upstream is reached by, and the one its good certificate names.
pub const HOST: &str = "localhost";
const LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Which name the serving certificate carries.
#[derive(Clone, Copy, Debug)]
pub enum CertName {
    /// [`HOST`]: a client dialing `localhost` accepts it (when it trusts the CA).
    Right,
    /// Names that are not [`HOST`]: a client dialing `localhost` must refuse it.
    Wrong,
}

/// Which protocols the upstream offers by ALPN.
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    /// `h2` then `http/1.1`.
    H2AndHttp1,
    /// `http/1.1` only.
    Http1Only,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct TlsSeen {
    pub version: Version,
    pub authorization: Option<String>,
    pub path: String,
}

/// The running upstream; see the module docs.
pub struct TlsUpstream {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `ca.crt` of the private CA, PEM.
    pub ca_file: PathBuf,
    seen: Arc<Mutex<Vec<TlsSeen>>>,
    connections: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    /// Starts on 127.0.0.1:0 with a fresh CA and a serving certificate for `name`.
    pub async fn start(name: CertName, alpn: Alpn) -> Self {
        let ca = holysheep_certs::generate_ca("holysheep-test-upstream-ca", LIFETIME).unwrap();
        // The certs crate names a certificate after a Service `S` in namespace `N`; its
        // SANs include the bare `S`, so `S = localhost` gives a certificate for localhost.
        let serving = match name {
            CertName::Right => ca.issue_serving(HOST, "test", LIFETIME),
            CertName::Wrong => ca.issue_serving("not-the-upstream", "test", LIFETIME),
        }
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join(holysheep_certs::CA_CERT_FILE);
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();

        let certs = CertificateDer::pem_slice_iter(serving.cert_pem().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(serving.key_pem().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = match alpn {
            Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Http1Only => vec![b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (seen, connections) = (Arc::clone(&seen), Arc::clone(&connections));
            async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
                    conns.spawn(async move {
                        // A client that refuses the certificate ends the handshake here.
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let seen = Arc::clone(&seen);
                            async move { Ok::<_, Infallible>(answer(req, &seen).await) }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    });
                }
            }
        });
        Self {
            port,
            ca_file,
            seen,
            connections,
            _dir: dir,
            task,
        }
    }

    /// The sidecar's `--upstream`: `https://localhost:PORT/v1`.
    pub fn url(&self) -> String {
        format!("https://{HOST}:{}/v1", self.port)
    }

    /// `localhost:PORT`, as a CONNECT request names it.
    pub fn authority(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<TlsSeen> {
        self.seen.lock().unwrap().clone()
    }

    /// TCP connections accepted so far (handshake completed or not).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Records `req` and answers it: a chat completion (JSON or SSE) or the models list.
async fn answer(req: Request<Incoming>, seen: &Mutex<Vec<TlsSeen>>) -> Response<Full<Bytes>> {
    let version = req.version();
    let path = req.uri().path().to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(TlsSeen {
        version,
        authorization,
        path: path.clone(),
    });
    let stream = serde_json::from_slice::<serde_json::Value>(&body)
        .is_ok_and(|v| v["stream"] == serde_json::Value::Bool(true));
    let (content_type, text) = match (path.as_str(), stream) {
        ("/v1/chat/completions", true) => (
            "text/event-stream",
            fixture("openai/chat_stream_1.sse") + &fixture("openai/chat_stream_2.sse"),
        ),
        ("/v1/chat/completions", false) => {
            ("application/json", fixture("openai/chat_completion.json"))
        }
        _ => ("application/json", fixture("openai/models.json")),
    };
    Response::builder()
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}
