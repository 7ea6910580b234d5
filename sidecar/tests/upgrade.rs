//! Protocol upgrades through the sidecar (WebSocket, as used by the Realtime API): the
//! upgrade request reaches the upstream with our key, the `101` comes back, and bytes
//! flow both ways; a refused upgrade is an ordinary response.

#![allow(clippy::unwrap_used, reason = "tests: a failure should panic")]

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::{Sidecar, TEST_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that accepts upgrades on `/v1/realtime` and echoes every byte back, and
/// refuses them elsewhere with a JSON 400. Records the request line and headers.
async fn echo_upstream() -> (
    String,
    Arc<Mutex<Vec<(String, HeaderMap)>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = Arc::clone(&seen2);
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                seen.lock()
                    .unwrap()
                    .push((req.uri().to_string(), req.headers().clone()));
                let resp = if req.uri().path() == "/v1/realtime" {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(on_upgrade.await.unwrap());
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
                            }
                        }
                    });
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                } else {
                    Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(
                            b"{\"error\":{\"message\":\"no websocket here\"}}",
                        )))
                        .unwrap()
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            conns.spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
    (url, seen, task)
}

/// Sends a raw WebSocket handshake for `path` and returns the stream and response head.
async fn handshake(sidecar: &Sidecar, path: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(sidecar.proxy_addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer injected-by-holysheep\r\nOpenAI-Beta: realtime=v1\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (tcp, String::from_utf8(head).unwrap().to_ascii_lowercase())
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_with_our_key() {
    let (url, seen, _upstream) = echo_upstream().await;
    let sidecar = Sidecar::start(&url).await;

    let (mut tcp, head) = handshake(&sidecar, "/v1/realtime?model=gpt-4o-realtime-preview").await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    // Bytes flow both ways through the tunnel (binary, including a zero byte).
    for msg in [&b"\x81\x05hello"[..], &b"\x82\x03\x00\x01\x02"[..]] {
        tcp.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (uri, headers) = &seen[0];
    assert_eq!(uri, "/v1/realtime?model=gpt-4o-realtime-preview");
    assert_eq!(
        headers["authorization"],
        format!("Bearer {TEST_KEY}").as_str()
    );
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(headers["openai-beta"], "realtime=v1");
}

#[tokio::test]
async fn refused_upgrade_is_an_ordinary_response() {
    let (url, _seen, _upstream) = echo_upstream().await;
    let sidecar = Sidecar::start(&url).await;

    let (mut tcp, head) = handshake(&sidecar, "/v1/chat/completions").await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    // The connection stays open (keep-alive): read until the body has arrived.
    let mut rest = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&rest).contains("no websocket here") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before the body: {}",
            String::from_utf8_lossy(&rest)
        );
        rest.extend_from_slice(&buf[..n]);
    }
}
