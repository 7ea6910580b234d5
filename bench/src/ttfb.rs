//! The streamed time-to-first-byte probe: N sequential `stream: true` chat requests over
//! one keep-alive HTTP/1.1 connection, timing each from just before the request is written
//! to the first body byte, and to the end of the stream.
//!
//! Sequential on purpose: with one request in flight the figure is the latency a single
//! client sees, free of queueing. It checks that every stream is complete (`[DONE]`) so a
//! proxy that cuts or buffers streams cannot pass unnoticed. It is not a load generator.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::payloads;

/// What went wrong while probing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL has no usable `http://host:port`.
    #[error("--url must be http://HOST:PORT/PATH, got {0}")]
    BadUrl(String),
    /// Connecting or talking HTTP failed.
    #[error("failed to connect to {addr}")]
    Connect {
        /// `host:port` dialled.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// HTTP-level failure on an established connection.
    #[error("HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// The server answered something other than 200.
    #[error("request {index} answered {status}: {body}")]
    Status {
        /// Which request (0-based, warm-up included).
        index: usize,
        /// The status received.
        status: StatusCode,
        /// Start of the body, for diagnosis.
        body: String,
    },
    /// The stream ended without `data: [DONE]`, or had no body at all.
    #[error("request {index}: stream incomplete ({bytes} bytes, no final [DONE] event)")]
    Incomplete {
        /// Which request.
        index: usize,
        /// Body bytes received.
        bytes: usize,
    },
}

/// Timings of one streamed request.
#[derive(Debug, Clone, Copy)]
pub struct StreamTiming {
    /// Request start to first body byte.
    pub first_byte: Duration,
    /// Request start to end of the stream.
    pub total: Duration,
}

/// One keep-alive connection to the server under test.
struct Connection {
    addr: String,
    authority: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(addr: &str, authority: &str) -> Result<Self, ProbeError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ProbeError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends when the server closes or the sender is dropped.
        tokio::spawn(conn);
        Ok(Self {
            addr: addr.to_owned(),
            authority: authority.to_owned(),
            sender,
        })
    }

    /// Reopens the connection if the server closed it (a proxy may cap requests per
    /// connection); the reconnect happens before the timer starts.
    async fn ensure_open(&mut self) -> Result<(), ProbeError> {
        if self.sender.is_closed() || self.sender.ready().await.is_err() {
            *self = Self::open(&self.addr, &self.authority).await?;
            self.sender.ready().await?;
        }
        Ok(())
    }
}

/// Sends `warmup + requests` streamed chat requests one after another to `url` and returns
/// the timings of the last `requests` of them.
pub async fn probe(
    url: &str,
    warmup: usize,
    requests: usize,
) -> Result<Vec<StreamTiming>, ProbeError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ProbeError::BadUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(ProbeError::BadUrl(url.to_owned()));
    }
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return Err(ProbeError::BadUrl(url.to_owned()));
    };
    let authority = format!("{host}:{port}");
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut conn = Connection::open(&authority, &authority).await?;
    let mut timings = Vec::with_capacity(requests);
    for index in 0..warmup + requests {
        conn.ensure_open().await?;
        let timing = one_request(&mut conn, &path, index).await?;
        if index >= warmup {
            timings.push(timing);
        }
    }
    Ok(timings)
}

async fn one_request(
    conn: &mut Connection,
    path: &str,
    index: usize,
) -> Result<StreamTiming, ProbeError> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, conn.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "text/event-stream")
        .header(header::AUTHORIZATION, "Bearer placeholder-key")
        .body(Full::new(Bytes::from_static(
            payloads::CHAT_STREAM_REQUEST.as_bytes(),
        )));
    let Ok(request) = request else {
        return Err(ProbeError::BadUrl(path.to_owned()));
    };
    let start = Instant::now();
    let response = conn.sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut received = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if first_byte.is_none() && !data.is_empty() {
                first_byte = Some(start.elapsed());
            }
            received.extend_from_slice(&data);
        }
    }
    let total = start.elapsed();
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&received[..received.len().min(200)]).into_owned();
        return Err(ProbeError::Status {
            index,
            status,
            body: text,
        });
    }
    match first_byte {
        Some(first_byte) if received.ends_with(payloads::SSE_DONE.as_bytes()) => {
            Ok(StreamTiming { first_byte, total })
        }
        _ => Err(ProbeError::Incomplete {
            index,
            bytes: received.len(),
        }),
    }
}
