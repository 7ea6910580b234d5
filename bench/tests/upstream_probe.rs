//! The fake upstream and the TTFB probe against each other on an ephemeral port: the probe
//! must see complete streams, the fake must count every request, and a closed port or a
//! wrong route must be an error, not a hang; plain and `include_usage` answers have the
//! promised shape.

use std::time::Duration;

use holysheep_bench::ttfb::{self, ProbeError};
use holysheep_bench::upstream::{self, UpstreamConfig};

fn config() -> UpstreamConfig {
    UpstreamConfig {
        chunk_delay: Duration::from_millis(1),
        stream_words: 3,
    }
}

#[tokio::test]
async fn probe_times_complete_streams_and_upstream_counts_them() {
    let (addr, state) = upstream::spawn("127.0.0.1:0".parse().unwrap(), config())
        .await
        .unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let timings = ttfb::probe(&url, 2, 5).await.unwrap();
    assert_eq!(timings.len(), 5);
    assert_eq!(state.requests(), 7);
    for t in &timings {
        // Four paced events after the first one: the whole stream takes at least 4 delays,
        // the first byte comes before any of them.
        assert!(t.total >= Duration::from_millis(4), "{t:?}");
        assert!(t.first_byte < t.total, "{t:?}");
    }
}

#[tokio::test]
async fn probe_reports_wrong_route_status() {
    let (addr, _state) = upstream::spawn("127.0.0.1:0".parse().unwrap(), config())
        .await
        .unwrap();
    let url = format!("http://{addr}/v1/nowhere");
    let err = ttfb::probe(&url, 0, 1).await.unwrap_err();
    assert!(
        matches!(err, ProbeError::Status { status, .. } if status == 404),
        "{err}"
    );
}

#[tokio::test]
async fn probe_rejects_bad_url_and_closed_port() {
    assert!(matches!(
        ttfb::probe("https://127.0.0.1:1/v1/chat/completions", 0, 1).await,
        Err(ProbeError::BadUrl(_))
    ));
    // Bind then drop: the port is closed while we still know its number.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/v1/chat/completions");
    let result = tokio::time::timeout(Duration::from_secs(5), ttfb::probe(&url, 0, 1)).await;
    assert!(matches!(result, Ok(Err(ProbeError::Connect { .. }))));
}

/// One plain POST over a fresh connection; returns status and body.
#[expect(
    clippy::unwrap_used,
    reason = "test helper: a failure here should fail the test"
)]
async fn post(addr: std::net::SocketAddr, body: &'static str) -> (http::StatusCode, String) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/chat/completions")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn plain_chat_gets_the_fixed_completion_and_bad_json_a_400() {
    let (addr, state) = upstream::spawn("127.0.0.1:0".parse().unwrap(), config())
        .await
        .unwrap();
    let (status, body) = post(addr, holysheep_bench::payloads::CHAT_REQUEST).await;
    assert_eq!(status, 200);
    assert_eq!(body, holysheep_bench::payloads::CHAT_RESPONSE);
    let (status, body) = post(addr, "not json").await;
    assert_eq!(status, 400);
    assert!(body.contains("not chat JSON"), "{body}");
    assert_eq!(state.requests(), 2);
}

#[tokio::test]
async fn include_usage_adds_the_usage_event_before_done() {
    let (addr, _state) = upstream::spawn("127.0.0.1:0".parse().unwrap(), config())
        .await
        .unwrap();
    let (status, body) = post(
        addr,
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let expected_tail = format!(
        "{}{}",
        holysheep_bench::payloads::SSE_USAGE,
        holysheep_bench::payloads::SSE_DONE
    );
    assert!(body.ends_with(&expected_tail), "{body}");
    let (_, plain_stream) = post(addr, holysheep_bench::payloads::CHAT_STREAM_REQUEST).await;
    assert!(!plain_stream.contains("\"usage\""), "{plain_stream}");
}
