//! Client traffic through the sidecar: a mix of ordinary calls, streams and misbehaving
//! clients, and a burst of many concurrent long streams.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What the mixed traffic saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Responses by status code.
    pub statuses: Mutex<BTreeMap<u16, u64>>,
    /// Requests that failed below HTTP (connection refused, reset, client timeout).
    pub transport_errors: AtomicU64,
    /// Streams read to their end.
    pub streams_completed: AtomicU64,
    /// Streams whose last event was an `event: error` added by the sidecar.
    pub streams_with_error_event: AtomicU64,
    /// Streams dropped by the client after the first bytes.
    pub streams_abandoned: AtomicU64,
    /// Requests abandoned before response headers.
    pub gone_before_headers: AtomicU64,
}

impl Tally {
    async fn status(&self, code: u16) {
        *self.statuses.lock().await.entry(code).or_default() += 1;
    }

    /// Total responses with a status.
    pub async fn responses(&self) -> u64 {
        self.statuses.lock().await.values().sum()
    }
}

/// A client for the sidecar's proxy listener.
pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

fn post(base: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body.into()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = format!("{base}{path}").parse().unwrap_or_default();
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    req
}

/// One worker's loop of mixed calls until `stop` is set; `seed` staggers the mix.
pub async fn mixed_worker(
    client: HttpClient,
    base: String,
    seed: u64,
    tally: Arc<Tally>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let step = match n % 20 {
            0..=7 => call(&client, post(&base, "/chat/completions", CHAT), &tally).await,
            8..=11 => stream(&client, &base, &tally, false).await,
            12 => stream(&client, &base, &tally, true).await,
            13 | 14 => call(&client, post(&base, "/embeddings", EMBED), &tally).await,
            15 => {
                let mut req = post(&base, "/models", Bytes::new());
                *req.method_mut() = Method::GET;
                call(&client, req, &tally).await
            }
            // Larger than the soak config's body limit: 413 without reaching upstream.
            16 => {
                call(
                    &client,
                    post(&base, "/chat/completions", oversized()),
                    &tally,
                )
                .await
            }
            17 => gone_before_headers(&client, &base, &tally).await,
            _ => {
                call(
                    &client,
                    post(&base, "/chat/completions", CHAT_ALIAS),
                    &tally,
                )
                .await
            }
        };
        if step.is_err() {
            tally.transport_errors.fetch_add(1, Ordering::Relaxed);
            // The sidecar may be restarting a connection; don't spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const CHAT: &str = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"Say hello."}]}"#;
const CHAT_ALIAS: &str = r#"{"model":"gpt-4","messages":[{"role":"user","content":"Say hello."}]}"#;
const EMBED: &str = r#"{"model":"text-embedding-3-small","input":"hello"}"#;

fn oversized() -> Bytes {
    let filler = "x".repeat(80 * 1024);
    Bytes::from(format!(
        r#"{{"model":"gpt-4.1","messages":[{{"role":"user","content":"{filler}"}}]}}"#
    ))
}

async fn call(client: &HttpClient, req: Request<Full<Bytes>>, tally: &Tally) -> Result<(), ()> {
    let resp = client.request(req).await.map_err(|_| ())?;
    tally.status(resp.status().as_u16()).await;
    resp.into_body().collect().await.map(|_| ()).map_err(|_| ())
}

async fn stream(client: &HttpClient, base: &str, tally: &Tally, abandon: bool) -> Result<(), ()> {
    let body =
        r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"Say hello."}]}"#;
    let resp = client
        .request(post(base, "/chat/completions", body))
        .await
        .map_err(|_| ())?;
    tally.status(resp.status().as_u16()).await;
    let mut body = resp.into_body();
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // A non-SSE body aborted by the sidecar, or the stream cut: counted, not fatal.
            return Err(());
        };
        if let Some(data) = frame.data_ref() {
            if abandon {
                tally.streams_abandoned.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            tail = data.to_vec();
        }
    }
    if String::from_utf8_lossy(&tail).contains("event: error") {
        tally
            .streams_with_error_event
            .fetch_add(1, Ordering::Relaxed);
    }
    tally.streams_completed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn gone_before_headers(client: &HttpClient, base: &str, tally: &Tally) -> Result<(), ()> {
    let body =
        r#"{"model":"gpt-4.1","soak_delay_ms":400,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = client.request(post(base, "/chat/completions", body));
    if tokio::time::timeout(Duration::from_millis(50), req)
        .await
        .is_err()
    {
        tally.gone_before_headers.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The concurrent-streams burst: `n` slow streams opened at once.
#[derive(Debug)]
pub struct Burst {
    /// Streams whose headers arrived.
    pub open: Arc<AtomicUsize>,
    /// Streams read to the end.
    pub completed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Burst {
    /// Opens `n` streams of `events` events `pace` apart, each on its own connection.
    pub fn start(base: &str, n: usize, events: usize, pace: Duration) -> Self {
        let open = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let body = format!(
            r#"{{"model":"gpt-4.1","stream":true,"soak_events":{events},"soak_pace_ms":{},"messages":[{{"role":"user","content":"Tell me a story."}}]}}"#,
            pace.as_millis()
        );
        let tasks = (0..n)
            .map(|_| {
                // One client per stream: a connection each, as many pods' apps would.
                let client = client();
                let req = post(base, "/chat/completions", body.clone());
                let (open, completed) = (Arc::clone(&open), Arc::clone(&completed));
                tokio::spawn(async move {
                    let Ok(resp) = client.request(req).await else {
                        return;
                    };
                    open.fetch_add(1, Ordering::Relaxed);
                    if resp.into_body().collect().await.is_ok() {
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            open,
            completed,
            tasks,
        }
    }

    /// Waits for every stream to end (or fail).
    pub async fn finish(self) -> usize {
        for task in self.tasks {
            let _ = task.await;
        }
        self.completed.load(Ordering::Relaxed)
    }
}
