//! Upstreams the scripted fake cannot play, written on raw TCP: one that never answers,
//! and one whose event stream breaks after its first chunk. Each logs when a request
//! arrived (the shared [`Log`]) and stops when dropped.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// When the upstream saw each request, next to what it saw.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<(Instant, Value)>>>);

impl Log {
    pub fn push(&self, body: Value) {
        self.0.lock().unwrap().push((Instant::now(), body));
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn models(&self) -> Vec<String> {
        let log = self.0.lock().unwrap();
        log.iter()
            .map(|(_, body)| body["model"].as_str().unwrap_or("").to_owned())
            .collect()
    }
    /// Nothing reached the upstream after `first_byte` (the client's first byte).
    pub fn nothing_after(&self, first_byte: Instant) {
        let log = self.0.lock().unwrap();
        let late = log.iter().filter(|(at, _)| *at > first_byte).count();
        assert_eq!(
            late, 0,
            "{late} upstream request(s) after the client got bytes"
        );
    }
}

/// A raw upstream on 127.0.0.1:0; aborted when dropped.
pub struct RawUpstream {
    /// The sidecar's `--upstream` for it.
    pub url: String,
    /// When each request (or, for [`RawUpstream::silent`], connection) arrived.
    pub log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    /// Accepts connections and never answers, holding them open.
    pub async fn silent() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let log = Log::default();
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                log2.push(Value::Null);
                held.push(stream);
            }
        });
        Self { url, log, task }
    }

    /// Answers each request with SSE headers and one event, then drops the connection
    /// in the middle of the chunked body.
    pub async fn breaking_stream() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let log = Log::default();
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log2.clone();
                tokio::spawn(async move {
                    if let Some((body, mut stream)) = read_request(stream).await {
                        log.push(body);
                        let event = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n";
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(chunk.as_bytes()).await;
                        let _ = stream.flush().await;
                        // Dropped here: the chunked body never gets its last chunk.
                    }
                });
            }
        });
        Self { url, log, task }
    }
}

/// Reads one HTTP/1.1 request (head and Content-Length body); returns the JSON body.
async fn read_request(mut stream: TcpStream) -> Option<(Value, TcpStream)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some((body, stream))
}
