//! The admission server against hostile and careless clients, over real TLS on loopback:
//! connections that never send a request or go quiet are closed, a slow body is cut off,
//! an oversized review is refused before it is read, reviews beyond the server's room get
//! 429 while `/healthz` answers, at the connection cap silent connections give way to new
//! clients while busy ones make new clients wait, and reviews that declare every port are
//! answered with little CPU.
//!
//! Deadlines are shortened through `Limits`. Where a test shows that something does *not*
//! happen early (a deadline not yet passed, a handshake held back), it checks elapsed
//! time against the configured bound, which cannot flake, or looks for a bounded moment.
//! The tests run one at a time (a shared lock) so the CPU figure is this file's alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "helpers of a test binary: a failed step should fail the test loudly"
)]

mod tls_support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tls_support::{HOST, WAIT, fixture, start_limited};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;
use tokio_stream::wrappers::ReceiverStream;

use holysheep_webhook::metrics::AdmissionResult;
use holysheep_webhook::server::{Limits, MAX_BODY_BYTES};

/// One test at a time: the CPU-time check reads the whole process's figure.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A short deadline for the tests that wait one out.
const SHORT: Duration = Duration::from_millis(300);

fn short_deadlines() -> Limits {
    Limits {
        head_timeout: SHORT,
        body_timeout: SHORT,
        idle_timeout: SHORT,
        close_grace: SHORT,
        ..Limits::default()
    }
}

/// Reads until the peer closes the connection (EOF or an error such as a missing TLS
/// close_notify), at most `WAIT`. Panics if the connection stays open.
async fn closed_by_peer(mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the server kept the connection open");
}

/// Reads an HTTP/1.1 response head and returns its status code.
async fn read_status(mut stream: impl AsyncRead + Unpin) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("no response from the server")
            .unwrap();
        assert_ne!(n, 0, "connection closed before a response");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

fn post_head(content_length: usize) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n\
         content-length: {content_length}\r\n\r\n"
    )
}

/// A review of an opted-in pod whose app container declares every port from 1024 up
/// (8080 among them: a collision), padded with an env value to `size` bytes.
fn port_collision_review(size: usize) -> Vec<u8> {
    let ports: Vec<Value> = (1024..=u16::MAX)
        .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
        .collect();
    let mut review = fixture("pod_bare_opted_in.json");
    review["request"]["object"]["spec"]["containers"] = json!([{
        "name": "app",
        "image": "app:1",
        "ports": ports,
        "env": [{"name": "PADDING", "value": ""}]
    }]);
    let unpadded = serde_json::to_vec(&review).unwrap().len();
    assert!(unpadded < size, "{unpadded} bytes before padding");
    review["request"]["object"]["spec"]["containers"][0]["env"][0]["value"] =
        json!("x".repeat(size - unpadded));
    let body = serde_json::to_vec(&review).unwrap();
    assert_eq!(body.len(), size);
    body
}

/// CPU time (user + system) of this whole process so far. `/proc` counts it in clock
/// ticks of 1/100 s on Linux.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let _serial = SERIAL.lock().await;
    let server = start_limited(short_deadlines()).await;
    // Whatever protocol the client negotiated, or none.
    for alpn in [&[b"h2".as_slice()][..], &[b"http/1.1"], &[]] {
        let started = Instant::now();
        let tls = server.tls_connect(alpn).await;
        closed_by_peer(tls).await;
        assert!(
            started.elapsed() >= SHORT,
            "closed before the head deadline"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let server = start_limited(short_deadlines()).await;
    let tls = server.tls_connect(&[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(conn);
    // The server's quiet time starts after it answers the last request, so after it was
    // sent: the close cannot come sooner than the timeout after `last_sent`.
    let mut last_sent = Instant::now();
    for _ in 0..2 {
        let request = http::Request::get(format!("https://{HOST}/healthz"))
            .body(Empty::new())
            .unwrap();
        last_sent = Instant::now();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    tokio::time::timeout(WAIT, driver)
        .await
        .expect("the idle HTTP/2 connection stayed open")
        .unwrap()
        .unwrap();
    assert!(
        last_sent.elapsed() >= SHORT,
        "closed before the idle timeout"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed() {
    let _serial = SERIAL.lock().await;
    let server = start_limited(short_deadlines()).await;
    let mut tls = server.tls_connect(&[b"http/1.1"]).await;
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    let sent = Instant::now();
    tls.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_status(&mut tls).await, 200);
    closed_by_peer(tls).await;
    assert!(sent.elapsed() >= SHORT, "closed before the deadline");
    server.stop().await;
}

#[tokio::test]
async fn a_trickling_body_is_cut_off_at_the_body_deadline() {
    let _serial = SERIAL.lock().await;
    let server = start_limited(short_deadlines()).await;
    let tls = server.tls_connect(&[b"http/1.1"]).await;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let length = 1000;
    // One byte every 20 ms: the whole body would take 20 s, each byte arrives well
    // within any per-read timeout.
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        writer.write_all(post_head(length).as_bytes()).await?;
        for _ in 0..length {
            writer.write_all(b" ").await?;
            writer.flush().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::io::Result::Ok(())
    });
    assert_eq!(read_status(&mut reader).await, 408);
    assert!(
        started.elapsed() >= SHORT,
        "cut off before the body deadline"
    );
    trickle.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_http2_body_is_cut_off_at_the_body_deadline() {
    let _serial = SERIAL.lock().await;
    let server = start_limited(short_deadlines()).await;
    let tls = server.tls_connect(&[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // One chunk of the body, then nothing (the channel stays open).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"{\"apiVersion\":"))))
        .await
        .unwrap();
    let body = StreamBody::new(ReceiverStream::new(rx));
    let request = http::Request::post(format!("https://{HOST}/mutate"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("the stalled body was waited for without end")
        .unwrap();
    assert_eq!(response.status(), 408);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("did not arrive"),
        "{body}"
    );
    drop(tx);
    assert_eq!(
        server.state.metrics().admissions(AdmissionResult::TimedOut),
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_review_is_413_before_its_body_is_read() {
    let _serial = SERIAL.lock().await;
    // A long body deadline: the answer must not wait for a body at all.
    let server = start_limited(Limits {
        body_timeout: WAIT * 2,
        ..Limits::default()
    })
    .await;
    let mut tls = server.tls_connect(&[b"http/1.1"]).await;
    tls.write_all(post_head(MAX_BODY_BYTES + 1).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_status(&mut tls).await, 413);
    // A body without a declared length is cut off at the limit while it streams in.
    let chunks = (0..MAX_BODY_BYTES / (64 * 1024) + 2)
        .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 * 1024])));
    let response = server
        .client()
        .post(server.url("/mutate"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(tokio_stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
    // A review of exactly the limit is read and answered.
    let review = port_collision_review(MAX_BODY_BYTES);
    let response = server
        .client()
        .post(server.url("/mutate"))
        .header("content-type", "application/json")
        .body(review)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn reviews_beyond_the_servers_room_get_429_while_healthz_answers() {
    let _serial = SERIAL.lock().await;
    let room = 64 * 1024;
    let server = start_limited(Limits {
        max_body_bytes: room,
        review_bytes_budget: room,
        queue_timeout: Duration::from_millis(100),
        body_timeout: WAIT * 2,
        ..Limits::default()
    })
    .await;
    // A review whose body takes all the room, sent slowly: its first byte, then nothing.
    let mut review = serde_json::to_vec(&fixture("pod_deployment_opted_in.json")).unwrap();
    review.resize(room, b' ');
    let mut slow = server.tls_connect(&[b"http/1.1"]).await;
    slow.write_all(post_head(room).as_bytes()).await.unwrap();
    slow.write_all(&review[..1]).await.unwrap();
    slow.flush().await.unwrap();
    // Another review now finds no room: 429 once the slow one holds it (its head is
    // handled concurrently, hence the bounded retry).
    let client = server.client();
    let small = fixture("pod_deployment_opted_in.json");
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let response = client
            .post(server.url("/mutate"))
            .json(&small)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            break response;
        }
        assert!(Instant::now() < deadline, "never refused for lack of room");
        tokio::task::yield_now().await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("busy"), "{body}");
    // The server itself is fine.
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // The slow review completes and is answered; its room comes back.
    slow.write_all(&review[1..]).await.unwrap();
    assert_eq!(read_status(&mut slow).await, 200);
    let response = client
        .post(server.url("/mutate"))
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(server.state.metrics().admissions(AdmissionResult::Busy) >= 1);
    server.stop().await;
}

#[tokio::test]
async fn port_collision_reviews_in_parallel_are_answered_with_little_cpu() {
    let _serial = SERIAL.lock().await;
    let server = start_limited(Limits::default()).await;
    let review = Bytes::from(port_collision_review(MAX_BODY_BYTES * 29 / 30));
    let client = server.client();
    let send = |review: Bytes| {
        let client = client.clone();
        let url = server.url("/mutate");
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(review)
                .send()
                .await
                .unwrap()
        }
    };

    // One review: linear work, a small fraction of a second even unoptimized. The
    // quadratic suggestion took tens of seconds here.
    let cpu_before = process_cpu();
    let response = send(review.clone()).await;
    let cpu = process_cpu() - cpu_before;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let message = body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("collides with containerPort 8080"),
        "{message}"
    );
    assert!(
        cpu < Duration::from_secs(2),
        "one review took {cpu:?} of CPU"
    );

    // More reviews than workers at once, and the health check among them.
    let mut reviews = tokio::task::JoinSet::new();
    for _ in 0..6 {
        reviews.spawn(send(review.clone()));
    }
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    while let Some(response) = reviews.join_next().await {
        let status = response.unwrap().status();
        assert!(status == 200 || status == 429, "{status}");
    }
    server.stop().await;
}

/// Opens a review whose body never completes and returns once the server handles it (its
/// handler asked for the body: `100 Continue`), so the connection has a request in flight.
async fn review_in_flight(
    server: &tls_support::TestServer,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = server.tls_connect(&[b"http/1.1"]).await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\ncontent-length: 100\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_status(&mut tls).await, 100);
    tls
}

#[tokio::test]
async fn new_clients_wait_while_every_connection_slot_has_a_request_in_flight() {
    let _serial = SERIAL.lock().await;
    let server = start_limited(Limits {
        max_connections: 2,
        head_timeout: WAIT * 2,
        body_timeout: WAIT * 2,
        ..Limits::default()
    })
    .await;
    // wait_ready's client may still hold a slot: wait until only ours are counted.
    let first = review_in_flight(&server).await;
    let second = review_in_flight(&server).await;
    let metrics = server.state.metrics().clone();
    let deadline = Instant::now() + WAIT;
    while metrics.open_connections() != 2 {
        assert!(Instant::now() < deadline, "slots not released");
        tokio::task::yield_now().await;
    }
    // Connections doing work are never shed: a third client is queued in the backlog,
    // its TCP connect succeeds, its handshake does not progress while both are busy.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut third = Box::pin(server.tls_handshake(tcp, &[b"h2"]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third connection was served beyond the cap"
    );
    assert_eq!(metrics.open_connections(), 2);
    assert_eq!(metrics.shed_connections(), 0);
    // One slot frees up: the waiting client is served.
    drop(first);
    let third = tokio::time::timeout(WAIT, third)
        .await
        .expect("the waiting client was never accepted")
        .unwrap();
    drop((second, third));
    server.stop().await;
}

#[tokio::test]
async fn silent_connections_at_the_cap_give_way_to_reviews_and_healthz() {
    let _serial = SERIAL.lock().await;
    let cap = 8;
    // Deadlines far beyond the bound below: only shedding can let the clients in.
    let server = start_limited(Limits {
        max_connections: cap,
        handshake_timeout: WAIT * 2,
        head_timeout: WAIT * 2,
        ..Limits::default()
    })
    .await;
    let metrics = server.state.metrics().clone();
    // Every slot: TCP connections that never send a byte, and TLS ones that never send
    // a request.
    let mut silent_tcp = Vec::new();
    for _ in 0..cap / 2 {
        silent_tcp.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut silent_tls = Vec::new();
    for _ in 0..cap / 2 {
        silent_tls.push(server.tls_connect(&[b"h2", b"http/1.1"]).await);
    }
    let deadline = Instant::now() + WAIT;
    while metrics.open_connections() != i64::try_from(cap).unwrap() {
        assert!(Instant::now() < deadline, "the slots never filled");
        tokio::task::yield_now().await;
    }

    // New clients, as kube-apiserver and the kubelet would come: answered well within
    // the 10 s production deadlines (the bound is loose for a loaded machine).
    let bound = Duration::from_secs(3);
    let started = Instant::now();
    let review = fixture("pod_deployment_opted_in.json");
    let response = tokio::time::timeout(
        bound,
        server
            .client()
            .post(server.url("/mutate"))
            .json(&review)
            .send(),
    )
    .await
    .expect("the review waited behind silent connections")
    .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["response"]["allowed"], true, "{body}");
    let health = tokio::time::timeout(
        bound,
        server
            .client_alpn(&[b"http/1.1"])
            .get(server.url("/healthz"))
            .send(),
    )
    .await
    .expect("/healthz waited behind silent connections")
    .unwrap();
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < bound * 2);
    assert!(
        metrics.shed_connections() >= 2,
        "{}",
        metrics.shed_connections()
    );
    assert!(metrics.open_connections() <= i64::try_from(cap).unwrap());
    drop((silent_tcp, silent_tls));
    server.stop().await;
}
