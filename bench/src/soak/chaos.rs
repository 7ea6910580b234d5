//! A fake OpenAI upstream that misbehaves on a fixed schedule, for the soak run.
//!
//! Request number `n` (counted over all chat requests) decides the answer, so a run is
//! repeatable and every fault recurs every few dozen requests:
//! - non-streamed chat: `n % 20 == 7` answers 500, `n % 29 == 3` answers 429 with
//!   `Retry-After: 0`, the rest 200 with usage;
//! - streamed chat: `n % 25 == 11` is cut in the middle of an event (the body fails, so
//!   the connection is reset), `n % 40 == 13` stalls after its first event for
//!   [`ChaosConfig::stall`] (longer than the sidecar's stream idle timeout), the rest
//!   stream normally with usage.
//!
//! A chat body may carry `soak_events` and `soak_pace_ms` to make a long, slow stream (the
//! concurrent-streams burst), and `soak_delay_ms` to hold the response headers back; the
//! sidecar forwards unknown fields untouched.
//!
//! Not a mock for functional tests: it checks no key and asserts nothing.

use std::convert::Infallible;
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Largest request body read.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// How the chaos upstream paces itself.
#[derive(Debug, Clone, Copy)]
pub struct ChaosConfig {
    /// Pause between SSE events of an ordinary stream.
    pub chunk_delay: Duration,
    /// How long a stalling stream sends nothing.
    pub stall: Duration,
}

/// Counts of what was answered, for the report.
#[derive(Debug, Default)]
pub struct ChaosCounts {
    /// Chat requests seen (attempts, retries included).
    pub chat: AtomicU64,
    /// 500 and 429 answers.
    pub errors: AtomicU64,
    /// Streams cut mid-event.
    pub cuts: AtomicU64,
    /// Streams that stalled.
    pub stalls: AtomicU64,
    /// Embedding requests.
    pub embeddings: AtomicU64,
}

#[derive(Debug, Default, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    soak_events: Option<usize>,
    #[serde(default)]
    soak_pace_ms: Option<u64>,
    #[serde(default)]
    soak_delay_ms: Option<u64>,
}

/// Binds 127.0.0.1:0 and serves until the runtime stops; returns the address and counts.
pub async fn spawn(
    config: ChaosConfig,
) -> std::io::Result<(std::net::SocketAddr, Arc<ChaosCounts>)> {
    spawn_with(config, None).await
}

/// Like [`spawn`]; with `tls`, over TLS, speaking HTTP/2 when the client picked `h2` by
/// ALPN (as a production upstream does), else HTTP/1.1.
pub async fn spawn_with(
    config: ChaosConfig,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<(std::net::SocketAddr, Arc<ChaosCounts>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counts = Arc::new(ChaosCounts::default());
    let served = Arc::clone(&counts);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors during the burst: try again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let counts = Arc::clone(&served);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let counts = Arc::clone(&counts);
                    async move { Ok::<_, Infallible>(answer(req, &counts, config).await) }
                });
                let Some(acceptor) = tls else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    return;
                };
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    Ok((addr, counts))
}

/// Starts the chaos upstream for a sidecar and returns the sidecar flags that reach it:
/// plain http, or with `tls_dir` HTTPS offering `h2` (the production path) on a fresh
/// private CA written to that directory and trusted through `--upstream-ca-file`.
pub async fn spawn_for_sidecar(
    config: ChaosConfig,
    tls_dir: Option<&std::path::Path>,
) -> anyhow::Result<(Arc<ChaosCounts>, Vec<String>)> {
    let Some(dir) = tls_dir else {
        let (addr, counts) = spawn(config).await?;
        return Ok((counts, vec![format!("--upstream=http://{addr}/v1")]));
    };
    let acceptor = crate::tls::acceptor(dir, true)?;
    let (addr, counts) = spawn_with(config, Some(acceptor)).await?;
    let ca = dir.join(holysheep_certs::CA_CERT_FILE);
    Ok((
        counts,
        vec![
            format!("--upstream=https://localhost:{}/v1", addr.port()),
            format!("--upstream-ca-file={}", ca.display()),
        ],
    ))
}

async fn answer(
    req: Request<Incoming>,
    counts: &ChaosCounts,
    config: ChaosConfig,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => chat(req, counts, config).await,
        (&Method::POST, "/v1/embeddings") => {
            counts.embeddings.fetch_add(1, Ordering::Relaxed);
            json(
                StatusCode::OK,
                r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#,
            )
        }
        (&Method::GET, "/v1/models") => json(StatusCode::OK, payloads::MODELS_RESPONSE),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"message":"no such route","type":"invalid_request_error","code":null}}"#,
        ),
    }
}

async fn chat(req: Request<Incoming>, counts: &ChaosCounts, config: ChaosConfig) -> Response<Body> {
    let n = counts.chat.fetch_add(1, Ordering::Relaxed);
    let Ok(body) = Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    else {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"message":"unreadable body","type":"invalid_request_error","code":null}}"#,
        );
    };
    let chat: ChatRequest = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
    if let Some(delay) = chat.soak_delay_ms {
        // Slow response headers: the client gives up first (a client gone before headers).
        tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
    }
    if !chat.stream {
        if n % 20 == 7 {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":{"message":"chaos: internal error","type":"server_error","code":null}}"#,
            );
        }
        if n % 29 == 3 {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            let mut resp = json(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"error":{"message":"chaos: rate limited","type":"rate_limit_error","code":null}}"#,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("0"));
            return resp;
        }
        return json(StatusCode::OK, payloads::CHAT_RESPONSE);
    }
    let words = chat.soak_events.unwrap_or(6).min(10_000);
    let pace = chat
        .soak_pace_ms
        .map_or(config.chunk_delay, Duration::from_millis);
    let mut events: Vec<Bytes> = payloads::stream_events(words);
    let plan = if chat.soak_events.is_some() {
        Plan::Normal
    } else if n % 25 == 11 {
        counts.cuts.fetch_add(1, Ordering::Relaxed);
        Plan::Cut
    } else if n % 40 == 13 {
        counts.stalls.fetch_add(1, Ordering::Relaxed);
        Plan::Stall(config.stall)
    } else {
        Plan::Normal
    };
    match plan {
        Plan::Cut => {
            events.truncate(1);
            events.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-cut\",\"cho"));
        }
        Plan::Normal | Plan::Stall(_) => {
            events.push(Bytes::from_static(payloads::SSE_USAGE.as_bytes()));
            events.push(Bytes::from_static(payloads::SSE_DONE.as_bytes()));
        }
    }
    let frames = futures_util::stream::iter(events.into_iter().enumerate()).then(
        move |(index, event)| async move {
            match plan {
                Plan::Stall(stall) if index == 1 => tokio::time::sleep(stall).await,
                _ if index > 0 && !pace.is_zero() => tokio::time::sleep(pace).await,
                _ => {}
            }
            Ok::<_, BoxError>(Frame::data(event))
        },
    );
    // A cut stream ends with an error after its half event: hyper resets the connection.
    let frames = frames
        .chain(futures_util::stream::iter(matches!(plan, Plan::Cut).then(
            || Err::<Frame<Bytes>, BoxError>("chaos: connection cut".into()),
        )));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Normal,
    Cut,
    Stall(Duration),
}

fn json(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
