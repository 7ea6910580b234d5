//! The fake upstream and the TTFB probe against each other on an ephemeral port: the probe
//! must see complete streams, the fake must count every request, and a closed port or a
//! wrong route must be an error, not a hang.

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
