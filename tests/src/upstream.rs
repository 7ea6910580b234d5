//! A fake OpenAI-compatible upstream on `127.0.0.1:0`: it records every request (method,
//! path, headers, body) and answers chat completions with the model it was asked for and
//! fixed usage numbers ([`PROMPT_TOKENS`], [`COMPLETION_TOKENS`]), so token counters can
//! be checked exactly. It stops when dropped.
//!
//! It does not stream, fail or rate-limit: the sidecar's own tests cover that.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Prompt tokens reported for every chat completion.
pub const PROMPT_TOKENS: u64 = 21;
/// Completion tokens reported for every chat completion.
pub const COMPLETION_TOKENS: u64 = 8;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Path, without query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Seen {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("upstream body is not JSON: {e}"))
    }

    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// The running fake upstream.
pub struct FakeOpenAi {
    addr: SocketAddr,
    seen: Log,
    task: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind fake upstream: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake upstream address: {e}"));
        let seen = Log::default();
        let app = Router::new().fallback(answer).with_state(Arc::clone(&seen));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT/v1`: the base URL the sidecar forwards to.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(seen): State<Log>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let record = Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    };
    let reply = reply_to(&record);
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(record);
    reply
}

fn reply_to(seen: &Seen) -> Response {
    match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", "/v1/chat/completions") => {
            let model = serde_json::from_slice::<Value>(&seen.body)
                .ok()
                .and_then(|v| v["model"].as_str().map(str::to_owned))
                .unwrap_or_default();
            json_response(
                StatusCode::OK,
                json!({
                    "id": "chatcmpl-e2e-1",
                    "object": "chat.completion",
                    "created": 1_764_000_000,
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": "A teapot that pours joy."},
                        "logprobs": null,
                        "finish_reason": "stop",
                    }],
                    "usage": {
                        "prompt_tokens": PROMPT_TOKENS,
                        "completion_tokens": COMPLETION_TOKENS,
                        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
                    },
                }),
            )
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {
                "message": format!("fake upstream: no route {} {}", seen.method, seen.path),
                "type": "invalid_request_error",
                "code": "not_found",
            }}),
        ),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Body::from(body.to_string())).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
