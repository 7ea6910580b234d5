//! The fake OpenAI upstream: a plain hyper 1 HTTP/1.1 keep-alive server that answers
//! `POST /v1/chat/completions` with a fixed body, or with Server-Sent Events paced by a
//! fixed inter-chunk delay when the request says `"stream": true`.
//!
//! Over TLS ([`Upstream::serve_tls`]) it speaks HTTP/2 or HTTP/1.1, whichever ALPN picked,
//! as a production upstream does; the plain listener stays HTTP/1.1 only.
//!
//! It is built to be cheap per request (constant bodies, no router, no logging) so that in
//! the benchmark the proxy in front of it is what costs. It checks no key and keeps no
//! state beyond a request counter; it is not a mock for functional tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::payloads;

/// Largest request body the fake reads; the benchmark sends well under 1 KiB.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// How the fake upstream answers.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Pause between two SSE events of a streamed answer (none before the first one, so
    /// time to first byte is the proxy's cost, not the fake's).
    pub chunk_delay: Duration,
    /// Content events per streamed answer (between the role and the finish event).
    pub stream_words: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            chunk_delay: Duration::from_millis(2),
            stream_words: 6,
        }
    }
}

/// Shared state of a running fake upstream.
#[derive(Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    /// Pre-rendered content events of a streamed answer.
    events: Vec<Bytes>,
    requests: AtomicU64,
}

type Body = BoxBody<Bytes, Infallible>;

/// The part of a chat request the fake looks at.
#[derive(Debug, Default, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Upstream {
    /// A fake upstream answering as `config` says.
    pub fn new(config: UpstreamConfig) -> Arc<Self> {
        let events = payloads::stream_events(config.stream_words);
        Arc::new(Self {
            config,
            events,
            requests: AtomicU64::new(0),
        })
    }

    /// Requests answered so far (any route).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Accepts connections on `listener` until the task is dropped or aborted. Accept
    /// errors (for example too many open files under load) are skipped, not fatal.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _peer)) = listener.accept().await else {
                continue;
            };
            // Small SSE events must leave at once, not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let upstream = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let upstream = Arc::clone(&upstream);
                    async move { Ok::<_, Infallible>(upstream.answer(req).await) }
                });
                // A client that goes away mid-request is normal under load: nothing to do.
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Like [`Upstream::serve`], over TLS: HTTP/2 when the client picked `h2` by ALPN,
    /// HTTP/1.1 otherwise. Failed handshakes are dropped, not fatal.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, acceptor: TlsAcceptor) {
        loop {
            let Ok((stream, _peer)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (upstream, acceptor) = (Arc::clone(&self), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let service = service_fn(move |req| {
                    let upstream = Arc::clone(&upstream);
                    async move { Ok::<_, Infallible>(upstream.answer(req).await) }
                });
                let io = TokioIo::new(tls);
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/chat/completions") => self.chat(req).await,
            (&Method::GET, "/v1/models") => json(StatusCode::OK, payloads::MODELS_RESPONSE),
            (&Method::GET, "/healthz") => json(StatusCode::OK, "{}"),
            _ => error(StatusCode::NOT_FOUND, "no such route on the fake upstream"),
        }
    }

    async fn chat(&self, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "request body unreadable"),
        };
        let Ok(chat) = serde_json::from_slice::<ChatRequest>(&body) else {
            return error(StatusCode::BAD_REQUEST, "request body is not chat JSON");
        };
        if !chat.stream {
            return json(StatusCode::OK, payloads::CHAT_RESPONSE);
        }
        let include_usage = chat.stream_options.is_some_and(|o| o.include_usage);
        self.stream(include_usage)
    }

    fn stream(&self, include_usage: bool) -> Response<Body> {
        let mut events = self.events.clone();
        if include_usage {
            events.push(Bytes::from_static(payloads::SSE_USAGE.as_bytes()));
        }
        events.push(Bytes::from_static(payloads::SSE_DONE.as_bytes()));
        let delay = self.config.chunk_delay;
        let frames = futures_util::stream::iter(events.into_iter().enumerate()).then(
            move |(index, event)| async move {
                if index > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, Infallible>(Frame::data(event))
            },
        );
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        response
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "code": null}
    })
    .to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Binds `addr`, starts the fake upstream on the current runtime and returns the bound
/// address and the shared state.
pub async fn spawn(
    addr: SocketAddr,
    config: UpstreamConfig,
) -> std::io::Result<(SocketAddr, Arc<Upstream>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let upstream = Upstream::new(config);
    tokio::spawn(Arc::clone(&upstream).serve(listener));
    Ok((local, upstream))
}

/// Like [`spawn`], over TLS with `acceptor`.
pub async fn spawn_tls(
    addr: SocketAddr,
    upstream: Arc<Upstream>,
    acceptor: TlsAcceptor,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(upstream.serve_tls(listener, acceptor));
    Ok(local)
}
