//! A scripted fake upstream on a listener the test binds (127.0.0.1:0).
//!
//! It records every request it saw (method, path, query, headers, body) and answers from
//! a handler the test supplies: a full body, or a stream whose chunks the test pushes
//! through a channel at its own pace (for SSE pacing and cancellation tests). It stops
//! when dropped.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream body is JSON")
    }

    /// A header as text (panics when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header"))
    }
}

/// What the upstream answers.
pub enum Reply {
    /// Status, extra headers and a whole body.
    Full {
        status: StatusCode,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Status, headers, then chunks as the test sends them; the body ends when the
    /// sender is dropped.
    Stream {
        status: StatusCode,
        headers: Vec<(String, String)>,
        chunks: mpsc::Receiver<Bytes>,
    },
}

impl Reply {
    /// 200-or-other JSON.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Reply::Full {
            status: StatusCode::from_u16(status).unwrap(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        match &mut self {
            Reply::Full { headers, .. } | Reply::Stream { headers, .. } => {
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        self
    }

    /// A paced stream with this content type; push chunks through the returned sender.
    pub fn stream(content_type: &str) -> (Self, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel(16);
        let reply = Reply::Stream {
            status: StatusCode::OK,
            headers: vec![("content-type".into(), content_type.into())],
            chunks: rx,
        };
        (reply, tx)
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// The fake upstream server.
pub struct FakeUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Binds 127.0.0.1:0 and serves `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(handler))
    }

    /// Answers requests with `replies` in order (500 once they run out).
    pub async fn scripted(replies: Vec<Reply>) -> Self {
        let queue = Mutex::new(VecDeque::from(replies));
        Self::start(move |_| {
            queue
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Reply::json(500, "{\"error\":\"script exhausted\"}"))
        })
        .await
    }

    /// Always answers with the same JSON body.
    pub async fn always_json(status: u16, body: &'static str) -> Self {
        Self::start(move |_| Reply::json(status, body)).await
    }

    /// Serves on a listener the test bound.
    pub fn serve(listener: TcpListener, handler: Arc<Handler>) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (seen2, arrived2) = (Arc::clone(&seen), Arc::clone(&arrived));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, seen, arrived) = (
                    Arc::clone(&handler),
                    Arc::clone(&seen2),
                    Arc::clone(&arrived2),
                );
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (handler, seen, arrived) = (
                        Arc::clone(&handler),
                        Arc::clone(&seen),
                        Arc::clone(&arrived),
                    );
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let record = Seen {
                            method: parts.method,
                            path: parts.uri.path().to_owned(),
                            query: parts.uri.query().map(str::to_owned),
                            headers: parts.headers,
                            body,
                        };
                        let reply = handler(&record);
                        seen.lock().unwrap().push(record);
                        arrived.notify_waiters();
                        Ok::<_, Infallible>(respond(reply))
                    }
                });
                // Connection tasks live in the JoinSet, so they stop with the server.
                conns.spawn(async move {
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            arrived,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the sidecar's `--upstream`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request seen (panics unless exactly one).
    pub fn only(&self) -> Seen {
        let all = self.requests();
        assert_eq!(
            all.len(),
            1,
            "expected exactly one upstream request, got {all:#?}"
        );
        all.into_iter().next().unwrap()
    }

    /// Waits (bounded) until `n` requests were seen.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Seen> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let notified = self.arrived.notified();
                if self.seen.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("upstream did not see {n} requests in time"));
        self.requests()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn respond(reply: Reply) -> Response<BoxBody> {
    let (status, headers, body) = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => (status, headers, Full::new(body).boxed_unsync()),
        Reply::Stream {
            status,
            headers,
            chunks,
        } => (status, headers, ChannelBody { rx: chunks }.boxed_unsync()),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    for (name, value) in headers {
        resp.headers_mut().append(
            http::HeaderName::try_from(name).unwrap(),
            http::HeaderValue::try_from(value).unwrap(),
        );
    }
    resp
}

/// A body fed by the test; dropping it (connection gone) closes the channel, which the
/// test observes with `Sender::closed()`.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
