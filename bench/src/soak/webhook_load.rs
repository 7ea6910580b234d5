//! Admission traffic against the webhook over real TLS: ordinary reviews, and the hostile
//! shapes a misbehaving or malicious client can send (silent connections, a body that
//! trickles, reviews near and over the size limit, port collisions over thousands of
//! ports).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Connects to the webhook as the apiserver would: TLS to `<service>.<namespace>.svc`
/// trusting the CA that `holysheep-webhook certs` wrote.
#[derive(Clone)]
pub struct WebhookClient {
    addr: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl WebhookClient {
    /// A client for `addr`, trusting `ca` (PEM) for `server_name`.
    pub fn new(addr: SocketAddr, ca: &Path, server_name: &str) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).context("reading ca.crt")? {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            addr,
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(server_name.to_owned())?,
        })
    }

    /// A TLS connection that has finished its handshake.
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        self.connector.connect(self.name.clone(), tcp).await
    }

    /// One request on a fresh connection: status, latency and the response body.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Duration, Bytes)> {
        let started = Instant::now();
        let tls = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = path.parse()?;
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("webhook"),
        );
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, started.elapsed(), body))
    }

    /// `POST /mutate` with `review`: HTTP status, latency and, for a 200, whether the
    /// review's answer allowed the pod.
    pub async fn review(&self, review: Bytes) -> anyhow::Result<(u16, Duration, Option<bool>)> {
        let (status, took, body) = self.send(http::Method::POST, "/mutate", review).await?;
        let allowed = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.pointer("/response/allowed")
                    .and_then(serde_json::Value::as_bool)
            });
        Ok((status, took, allowed))
    }

    /// `GET /healthz`: status and latency.
    pub async fn healthz(&self) -> anyhow::Result<(u16, Duration)> {
        let (status, took, _) = self
            .send(http::Method::GET, "/healthz", Bytes::new())
            .await?;
        Ok((status, took))
    }

    /// `n` TCP connections that never even start TLS.
    pub async fn silent_tcp(&self, n: usize) -> Vec<TcpStream> {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            if let Ok(tcp) = TcpStream::connect(self.addr).await {
                held.push(tcp);
            }
        }
        held
    }

    /// `n` connections that finish the TLS handshake and then send nothing.
    pub async fn silent_tls(&self, n: usize) -> Vec<TlsStream<TcpStream>> {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            if let Ok(tls) = self.connect().await {
                held.push(tls);
            }
        }
        held
    }

    /// A review whose body trickles in one byte every `every`; returns how long the server
    /// kept reading before it closed the connection (or `None` if it never did by `give_up`).
    pub async fn slow_body(&self, every: Duration, give_up: Duration) -> Option<Duration> {
        let mut tls = self.connect().await.ok()?;
        let head = "POST /mutate HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n";
        tls.write_all(head.as_bytes()).await.ok()?;
        let started = Instant::now();
        while started.elapsed() < give_up {
            if tls.write_all(b" ").await.is_err() || tls.flush().await.is_err() {
                return Some(started.elapsed());
            }
            let mut buf = [0u8; 512];
            // Any answer (408/400) or EOF means the server gave up on us.
            if let Ok(read) = tokio::time::timeout(every, tls.read(&mut buf)).await {
                if read.is_ok() {
                    return Some(started.elapsed());
                }
            }
        }
        None
    }
}

/// How many of `held` the server has closed: a read returns EOF or an error at once.
pub async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(held: &mut [S]) -> usize {
    let mut closed = 0;
    for stream in held {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            closed += 1;
        }
    }
    closed
}

/// An opted-in pod review, padded with env entries to about `bytes`, and with `ports`
/// container ports starting at 8000 (so 8080, the sidecar's port, collides when `ports`
/// exceeds 80: the webhook denies and suggests a free port).
pub fn review(uid: u64, bytes: usize, ports: u16) -> Bytes {
    let ports: Vec<serde_json::Value> = (0..ports)
        .map(|i| serde_json::json!({"containerPort": 8000 + u32::from(i), "protocol": "TCP"}))
        .collect();
    let mut env = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < bytes {
        let value = "v".repeat(1000);
        size += value.len() + 40;
        env.push(serde_json::json!({"name": format!("PAD_{i}"), "value": value}));
        i += 1;
    }
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{uid:012}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "soak-",
                    "namespace": "shop",
                    "annotations": {"holysheep/inject": "true"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "soak-6d5f7c9b8d", "uid": "6f1c1a2e-0000-4000-8000-000000000001",
                        "controller": true}]
                },
                "spec": {"containers": [{"name": "app", "image": "app:1", "ports": ports, "env": env}]}
            }
        }
    });
    Bytes::from(review.to_string())
}
