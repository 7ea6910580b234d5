//! An upstream written on raw TCP, for what a well-behaved HTTP server cannot do: hold a
//! request without ever answering, hang up without a response, or cut a response body
//! in the middle of its bytes. It counts the requests it read whole and wakes waiters
//! on each one; it stops when dropped (held connections are closed with it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the upstream does with each request it read.
#[derive(Clone, Debug)]
pub enum RawReply {
    /// Never answer; keep the connection open until the upstream is dropped.
    Silent,
    /// Close the connection without a response.
    HangUp,
    /// Write these bytes (a response head and as much body as wanted), then close.
    Cut(Vec<u8>),
}

/// The raw upstream; see the module docs.
pub struct TcpUpstream {
    /// The sidecar's `--upstream` for it: `http://127.0.0.1:PORT/v1`.
    pub url: String,
    requests: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpUpstream {
    /// Binds 127.0.0.1:0 and answers every request with `reply`.
    pub async fn start(reply: RawReply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(Notify::new());
        let (count, wake) = (Arc::clone(&requests), Arc::clone(&arrived));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (reply, count, wake) = (reply.clone(), Arc::clone(&count), Arc::clone(&wake));
                conns.spawn(async move {
                    let Some(mut stream) = read_request(stream).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    wake.notify_waiters();
                    match reply {
                        RawReply::Silent => {
                            // Read until the peer goes away, answering nothing.
                            let mut sink = [0u8; 1024];
                            while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                        }
                        RawReply::HangUp => {}
                        RawReply::Cut(bytes) => {
                            let _ = stream.write_all(&bytes).await;
                            let _ = stream.flush().await;
                        }
                    }
                });
            }
        });
        Self {
            url,
            requests,
            arrived,
            task,
        }
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` requests were read.
    pub async fn wait_for_requests(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let notified = self.arrived.notified();
                if self.requests() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("upstream did not read {n} requests in time"));
    }
}

/// A response head for [`RawReply::Cut`]: status 200, `content_type`, chunked body.
pub fn chunked_head(content_type: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n")
        .into_bytes()
}

/// One chunk of a chunked body carrying `data`.
pub fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

/// Reads one HTTP/1.1 request: the head, then a `Content-Length` body.
async fn read_request(mut stream: TcpStream) -> Option<TcpStream> {
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
    Some(stream)
}
