//! Clients that speak odd or broken HTTP to the proxy listener, over real sockets: an
//! `Upgrade: h2c` offer (what `curl --http2` sends to an http:// URL), `CONNECT`,
//! dot-segment paths, malformed body framing. Each is either served as plain HTTP/1.1 or
//! refused by the sidecar itself, and refused requests never reach the upstream.
//!
//! Then clients that hold connections: silent or half-sent heads, idle keep-alive
//! (HTTP/1 and HTTP/2), more connections than the cap. Timeouts are set short through
//! `Settings::conn_limits`; every wait is bounded by `READ_BOUND`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure should panic"
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use holysheep_sidecar::server::ConnLimits;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::upstream::FakeUpstream;
use support::{Sidecar, TEST_KEY, settings};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on any single read in these tests; a hang is a failure, not a wait.
const READ_BOUND: Duration = Duration::from_secs(10);

/// One HTTP/1.1 response read off a raw socket.
struct RawResponse {
    status: u16,
    /// The head, lowercased (status line and headers).
    head: String,
    body: Vec<u8>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// Reads one byte; `None` at end of stream.
async fn read_byte(io: &mut (impl AsyncRead + Unpin)) -> Option<u8> {
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(READ_BOUND, io.read(&mut byte))
        .await
        .expect("the sidecar answered in time")
        .unwrap();
    (n == 1).then_some(byte[0])
}

async fn read_line(io: &mut (impl AsyncRead + Unpin)) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        let byte = read_byte(io).await.expect("line before end of stream");
        line.push(byte);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).unwrap()
}

/// Reads one response: head, then a Content-Length or chunked body.
async fn read_response(io: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    let mut head = String::new();
    loop {
        let line = read_line(io).await;
        if line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
        head.push('\n');
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let mut resp = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    if let Some(len) = resp.header("content-length") {
        let mut body = vec![0u8; len.parse().unwrap()];
        tokio::time::timeout(READ_BOUND, io.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        resp.body = body;
    } else if resp.header("transfer-encoding") == Some("chunked") {
        loop {
            let size = usize::from_str_radix(read_line(io).await.trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            tokio::time::timeout(READ_BOUND, io.read_exact(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            if size == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..size]);
        }
    }
    resp
}

/// Sends `raw` on a fresh connection and reads one response.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> RawResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    read_response(&mut tcp).await
}

fn assert_openai_error(resp: &RawResponse, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn h2c_upgrade_offer_is_ignored_and_the_post_is_served_as_http1() {
    let up = FakeUpstream::always_json(200, "{\"id\":\"chatcmpl-1\",\"object\":\"x\"}").await;
    let mut s = settings(&up.url());
    // Bounds the old failure mode (body never forwarded, answered with a timeout).
    s.config.retry.attempt_timeout = Duration::from_secs(3);
    let sidecar = Sidecar::start_with(s).await;

    let body = r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}"#;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\n\
         Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nAuthorization: Bearer injected-by-holysheep\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = exchange(sidecar.proxy_addr, raw.as_bytes()).await;

    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.head.starts_with("http/1.1 200"), "{}", resp.head);
    assert_eq!(resp.json()["id"], "chatcmpl-1");
    let seen = up.only();
    assert_eq!(seen.json()["messages"][0]["content"], "hi");
    assert_eq!(seen.header("authorization"), format!("Bearer {TEST_KEY}"));
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert!(!seen.headers.contains_key(hop), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn connect_is_405_with_allow_and_never_forwarded() {
    let up = FakeUpstream::always_json(200, "{}").await;
    let sidecar = Sidecar::start(&up.url()).await;

    for target in ["api.holysheep.ai:443", "127.0.0.1:80"] {
        let raw = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let resp = exchange(sidecar.proxy_addr, raw.as_bytes()).await;
        assert_openai_error(&resp, 405, "method_not_allowed");
        let allow = resp.header("allow").unwrap_or_else(|| panic!("{resp:?}"));
        assert!(
            allow.contains("post") && !allow.contains("connect"),
            "{allow}"
        );
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());
}

#[tokio::test]
async fn dot_segment_targets_are_400_and_never_forwarded() {
    let up = FakeUpstream::always_json(200, "{\"data\":[]}").await;
    let sidecar = Sidecar::start(&up.url()).await;

    for path in [
        "/v1/../admin",
        "/v1/./models",
        "/v1/models/..",
        "/v1/models/.",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/%2E./admin",
        "/v1/.%2e/admin",
        "/v1/%2e/models",
        "/v1/x/..?limit=1",
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let resp = exchange(sidecar.proxy_addr, raw.as_bytes()).await;
        assert_openai_error(&resp, 400, "invalid_path");
    }
    assert!(up.requests().is_empty(), "{:?}", up.requests());

    // Dots inside a segment are ordinary characters.
    for path in ["/v1/a..b/models", "/v1/files/file-1.jsonl", "/v1/...x"] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let resp = exchange(sidecar.proxy_addr, raw.as_bytes()).await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
    }
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/v1/a..b/models", "/v1/files/file-1.jsonl", "/v1/...x"]
    );
}

#[tokio::test]
async fn malformed_chunked_bodies_are_400_not_502() {
    let up = FakeUpstream::always_json(200, "{}").await;
    let sidecar = Sidecar::start(&up.url()).await;

    // A JSON body is read whole before forwarding; any other body streams upstream, so
    // its framing error shows up mid-send.
    for content_type in [
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "application/json",
    ] {
        for broken in [
            // A chunk-size line that is not hex.
            "5\r\nhello\r\nzz\r\n",
            // A chunk longer than its declared size.
            "2\r\nhello\r\n0\r\n\r\n",
        ] {
            let raw = format!(
                "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n{broken}"
            );
            let resp = exchange(sidecar.proxy_addr, raw.as_bytes()).await;
            assert_eq!(resp.status, 400, "{content_type} {broken:?}: {resp:?}");
            assert_openai_error(&resp, 400, "invalid_request_body");
            let message = resp.json()["error"]["message"].to_string();
            assert!(message.contains("chunk"), "{message}");
        }
    }
    // Whatever reached the upstream was cut off: no request there completed with a body.
    assert!(
        up.requests().iter().all(|r| r.body.is_empty()),
        "{:?}",
        up.requests()
    );
}

#[tokio::test]
async fn body_shorter_than_content_length_then_close_is_400_not_502() {
    let up = FakeUpstream::always_json(200, "{}").await;
    let sidecar = Sidecar::start(&up.url()).await;

    for content_type in ["application/octet-stream", "application/json"] {
        let raw = format!(
            "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: {content_type}\r\nContent-Length: 100\r\n\r\nonly 17 bytes ...",
        );
        let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
        tcp.write_all(raw.as_bytes()).await.unwrap();
        // Half-close: the body ends early, but the answer can still be read.
        tcp.shutdown().await.unwrap();
        let resp = read_response(&mut tcp).await;
        assert_eq!(resp.status, 400, "{content_type}: {resp:?}");
        assert_openai_error(&resp, 400, "invalid_request_body");
    }
    assert!(
        up.requests().iter().all(|r| r.body.is_empty()),
        "{:?}",
        up.requests()
    );
}

// ---- listener hygiene: deadlines, idle timeout, connection cap ----

/// Test limits: `head` and `idle` short or long as the case needs, generous cap.
fn limits(head: Duration, idle: Duration, cap: u32) -> ConnLimits {
    ConnLimits {
        head_timeout: head,
        idle_timeout: idle,
        max_connections: cap,
    }
}

const SHORT: Duration = Duration::from_millis(200);
/// Longer than any bounded wait here, so a close within READ_BOUND is not due to it.
const LONG: Duration = Duration::from_secs(60);

async fn sidecar_with(up: &FakeUpstream, conn_limits: ConnLimits) -> Sidecar {
    let mut s = settings(&up.url());
    s.conn_limits = conn_limits;
    Sidecar::start_with(s).await
}

/// Reads until the sidecar closes the connection (data such as an HTTP/2 GOAWAY is
/// skipped); fails when it is still open after `READ_BOUND`.
async fn assert_closed_by_sidecar(tcp: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(READ_BOUND, tcp.read(&mut buf)).await {
            Err(_elapsed) => panic!("{what}: the sidecar kept the connection open"),
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

const GET_MODELS: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

#[tokio::test]
async fn silent_or_half_sent_first_heads_are_closed_after_the_head_timeout() {
    let up = FakeUpstream::always_json(200, "{\"data\":[]}").await;
    let sidecar = sidecar_with(&up, limits(SHORT, LONG, 64)).await;

    let cases: [(&str, &[u8]); 4] = [
        ("nothing sent", b""),
        (
            "half an HTTP/1 head",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        ),
        ("a request line only", b"GET /v1/models HTTP/1.1\r\n"),
        (
            "an HTTP/2 preface, no request",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
    ];
    for (what, sent) in cases {
        let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        assert_closed_by_sidecar(&mut tcp, what).await;
    }
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn the_admin_listener_closes_silent_connections_too() {
    let up = FakeUpstream::always_json(200, "{}").await;
    let sidecar = sidecar_with(&up, limits(SHORT, LONG, 64)).await;

    let mut tcp = TcpStream::connect(sidecar.admin_addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    assert_closed_by_sidecar(&mut tcp, "admin, half a head").await;
}

#[tokio::test]
async fn idle_http1_keep_alive_is_closed_after_the_idle_timeout() {
    let up = FakeUpstream::always_json(200, "{\"data\":[]}").await;
    let sidecar = sidecar_with(&up, limits(LONG, SHORT, 64)).await;

    let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    tcp.write_all(GET_MODELS).await.unwrap();
    assert_eq!(read_response(&mut tcp).await.status, 200);
    assert_closed_by_sidecar(&mut tcp, "idle HTTP/1 keep-alive").await;
}

#[tokio::test]
async fn half_a_head_after_keep_alive_is_cut_at_the_head_timeout() {
    let up = FakeUpstream::always_json(200, "{\"data\":[]}").await;
    let sidecar = sidecar_with(&up, limits(SHORT, LONG, 64)).await;

    let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    tcp.write_all(GET_MODELS).await.unwrap();
    assert_eq!(read_response(&mut tcp).await.status, 200);
    tcp.write_all(b"GET /v1/models HTTP/1.1\r\nHost: 1")
        .await
        .unwrap();
    // Closed well before the (long) idle timeout could explain it.
    assert_closed_by_sidecar(&mut tcp, "second head, half sent").await;
}

#[tokio::test]
async fn keep_alive_outlives_the_head_timeout() {
    let up = FakeUpstream::always_json(200, "{\"data\":[]}").await;
    let sidecar = sidecar_with(&up, limits(SHORT, LONG, 64)).await;

    let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    tcp.write_all(GET_MODELS).await.unwrap();
    assert_eq!(read_response(&mut tcp).await.status, 200);
    // Idle between requests for several head timeouts: that is keep-alive, not a slow head.
    tokio::time::sleep(SHORT * 4).await;
    tcp.write_all(GET_MODELS).await.unwrap();
    assert_eq!(read_response(&mut tcp).await.status, 200);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn a_request_in_flight_is_not_cut_by_the_head_or_idle_timeout() {
    let (reply, chunks) = support::upstream::Reply::stream("text/event-stream");
    let up = FakeUpstream::scripted(vec![reply]).await;
    let sidecar = sidecar_with(&up, limits(SHORT, SHORT, 64)).await;

    let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    tcp.write_all(GET_MODELS).await.unwrap();
    chunks.send("data: 1\n\n".into()).await.unwrap();
    // The response is under way; stay in flight for several timeouts.
    let mut head = Vec::new();
    while !head.ends_with(b"data: 1\n\n\r\n") {
        head.push(read_byte(&mut tcp).await.expect("response under way"));
    }
    tokio::time::sleep(SHORT * 4).await;
    chunks.send("data: 2\n\n".into()).await.unwrap();
    drop(chunks);
    let mut rest = Vec::new();
    while !rest.ends_with(b"0\r\n\r\n") {
        rest.push(read_byte(&mut tcp).await.expect("rest of the response"));
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("data: 2"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let up = FakeUpstream::always_json(200, "{\"data\":[]}").await;
    let sidecar = sidecar_with(&up, limits(LONG, SHORT, 64)).await;

    let tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(sidecar.url("/v1/models"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    resp.into_body().collect().await.unwrap();
    // The client keeps its side open (`sender` lives on); the sidecar ends it.
    let ended = tokio::time::timeout(READ_BOUND, conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "HTTP/2 connection still open or broken: {ended:?}"
    );
    drop(sender);
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let up = FakeUpstream::always_json(200, "{\"data\":[]}").await;
    let sidecar = sidecar_with(&up, limits(LONG, LONG, 2)).await;

    // Two kept-alive connections fill the cap.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
        tcp.write_all(GET_MODELS).await.unwrap();
        assert_eq!(read_response(&mut tcp).await.status, 200);
        open.push(tcp);
    }
    // A third one is queued by the kernel, not served...
    let mut third = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    third.write_all(GET_MODELS).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(early.is_err(), "served over the cap: {early:?}");
    assert_eq!(up.requests().len(), 2);
    // ...until one of the two closes.
    drop(open.remove(0));
    assert_eq!(read_response(&mut third).await.status, 200);
    assert_eq!(up.requests().len(), 3);
}
