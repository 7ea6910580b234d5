use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};

use super::*;

#[test]
fn parses_every_response_shape() {
    type Case<'a> = (&'a str, &'a [u8], Option<Usage>, Option<&'a str>);
    let cases: [Case<'_>; 6] = [
        (
            "chat completion",
            br#"{"model":"gpt-4.1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
            Some(Usage { input_tokens: 12, output_tokens: 3 }),
            Some("gpt-4.1"),
        ),
        (
            "embeddings: prompt and total only",
            br#"{"object":"list","data":[{"embedding":[0.1]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
            Some(Usage { input_tokens: 8, output_tokens: 0 }),
            Some("text-embedding-3-small"),
        ),
        (
            "responses API",
            br#"{"object":"response","model":"gpt-4.1","output":[],"usage":{"input_tokens":20,"output_tokens":9,"total_tokens":29}}"#,
            Some(Usage { input_tokens: 20, output_tokens: 9 }),
            Some("gpt-4.1"),
        ),
        (
            "responses API completed event",
            br#"{"type":"response.completed","response":{"model":"m2","usage":{"input_tokens":1,"output_tokens":2}}}"#,
            Some(Usage { input_tokens: 1, output_tokens: 2 }),
            Some("m2"),
        ),
        (
            "chunk with null usage",
            br#"{"model":"gpt-4.1","choices":[{"delta":{}}],"usage":null}"#,
            None,
            Some("gpt-4.1"),
        ),
        ("models list", br#"{"object":"list","data":[]}"#, None, None),
    ];
    for (name, json, usage, model) in cases {
        let parsed = parse_usage(json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parsed.usage, usage, "{name}");
        assert_eq!(parsed.model.as_deref(), model, "{name}");
        assert!(!parsed.usage_only_chunk, "{name}");
    }
    let only = parse_usage(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#).unwrap();
    assert!(only.usage_only_chunk);
    assert!(parse_usage(b"[1,2]").is_err());
}

#[test]
fn a_string_member_read_directly_agrees_with_serde() {
    let values: [&[u8]; 14] = [
        br#""gpt-4.1""#,
        br#""""#,
        br#""mod\u00e8le""#,
        br#""a\"b""#,
        br#""a\\""#,
        "\"modèle 模型\"".as_bytes(),
        b"\"\xff\xfe\"",
        b"\"tab\there\"",
        b"\"nul\x00\"",
        b"null",
        b"42",
        b"\"",
        br#""unterminated"#,
        br#"{"a":1}"#,
    ];
    for value in values {
        let direct = parse_string_member(Some(value));
        let serde = parse_member::<String>(Some(value));
        assert_eq!(direct, serde, "{}", String::from_utf8_lossy(value));
    }
    assert_eq!(parse_string_member(None), Some(None));
}

#[test]
fn the_member_walk_agrees_with_the_full_parse() {
    let docs: &[&[u8]] = &[
        br#"{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"say \"usage\": {\"prompt_tokens\": 9} }]"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#,
        br#" { "model" : "m" , "usage" : { "input_tokens" : 1 } , "choices" : [ ] } "#,
        br#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
        br#"{"choices":[ {"delta":{}} ],"usage":{"prompt_tokens":1}}"#,
        br#"{"type":"response.completed","response":{"id":"r","model":"m2","output":[{"content":[{"text":"}"}]}],"usage":{"input_tokens":1,"output_tokens":2}}}"#,
        br#"{"model":"top","response":{"model":"nested","usage":{"input_tokens":4}}}"#,
        br#"{"model":null,"usage":null,"response":null,"choices":null}"#,
        br#"{"data":[{"embedding":[0.1,-2e-3,3E+2]}],"model":"e","usage":{"prompt_tokens":8,"total_tokens":8},"x":true,"y":false,"z":null}"#,
        br#"{"model":"caf\u00e9","usage":{"prompt_tokens":2,"completion_tokens":1}}"#,
        br#"{}"#,
        br#"{"usage":{"prompt_tokens":0,"completion_tokens":null,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":3}}}"#,
        br#"{"usage":{"input_tokens":18446744073709551615,"output_tokens":2}}"#,
        // Left to serde by the walk, with the same result.
        br#"{"usage":{"prompt_tokens":1.0}}"#,
        br#"{"usage":{"prompt_tokens":1e2}}"#,
        br#"{"usage":{"prompt_tokens":012}}"#,
        br#"{"usage":{"prompt_tokens":-0}}"#,
        br#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
        br#"{"usage":{"prompt_tokens":null,"prompt_tokens":4}}"#,
        br#"{"usage":{"prompt_tokens":"4"}}"#,
        // Errors: every one of these goes to the full parse and stays an error.
        br#"{"model":"a","model":"b"}"#,
        br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
        br#"{"model":5}"#,
        br#"{"usage":"many"}"#,
        br#"{"usage":{"prompt_tokens":-1}}"#,
        br#"{"choices":{}}"#,
        br#"{"response":[]}"#,
        br#"{"model":"m"} trailing"#,
        br#"{"model":"m""#,
        br#"[1,2]"#,
        br#""#,
    ];
    for doc in docs {
        let text = String::from_utf8_lossy(doc);
        let whole = parse_usage_whole(doc).ok();
        assert_eq!(parse_usage(doc).ok(), whole, "{text}");
        if let Some(walked) = walk_usage(doc) {
            assert_eq!(Some(walked), whole, "{text}");
        }
    }
    // The walk itself took the common shapes (not the full parse by another road).
    for doc in &docs[..12] {
        assert!(
            walk_usage(doc).is_some(),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
    // An escaped key is left to the full parse, which reads it as `model`.
    let escaped = br#"{"mod\u0065l":"m","usage":{"prompt_tokens":3}}"#;
    assert!(walk_usage(escaped).is_none());
    assert_eq!(parse_usage(escaped).unwrap().model.as_deref(), Some("m"));
}

#[test]
fn a_malformed_value_the_tap_never_reads_does_not_hide_the_usage() {
    let json = br#"{"id":x-not-json,"model":"m","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#;
    assert!(parse_usage_whole(json).is_err());
    let parsed = parse_usage(json).unwrap();
    assert_eq!(
        parsed.usage,
        Some(Usage {
            input_tokens: 5,
            output_tokens: 1
        })
    );
    assert_eq!(parsed.model.as_deref(), Some("m"));
}

#[test]
fn cost_from_price_per_million() {
    let usage = Usage {
        input_tokens: 1_000_000,
        output_tokens: 500_000,
    };
    let price = Price {
        input: 8.0,
        output: 2.5,
    };
    assert!((cost_usd(&usage, &price) - 9.25).abs() < 1e-9);
}

#[test]
fn tap_mode_from_response() {
    let headers = |ct: &str, enc: Option<&str>| {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(ct).unwrap(),
        );
        if let Some(enc) = enc {
            h.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_str(enc).unwrap(),
            );
        }
        h
    };
    let ok = StatusCode::OK;
    let na = StreamUsage::NotApplicable;
    let mode =
        |status, h: &HeaderMap, usage| TapMode::for_response(status, h, MediaKind::of(h), usage);
    let sse = headers("text/event-stream; charset=utf-8", None);
    assert_eq!(mode(ok, &sse, na), TapMode::Sse);
    assert_eq!(
        mode(ok, &sse, StreamUsage::Injected),
        TapMode::SseStripInjected
    );
    let json = headers("application/json", None);
    assert_eq!(mode(ok, &json, na), TapMode::Json);
    assert_eq!(
        mode(ok, &headers("application/problem+JSON", None), na),
        TapMode::Json
    );
    assert_eq!(mode(StatusCode::TOO_MANY_REQUESTS, &json, na), TapMode::Off);
    let gz = headers("application/json", Some("gzip"));
    assert_eq!(mode(ok, &gz, na), TapMode::Off);
    let audio = headers("audio/mpeg", None);
    assert_eq!(mode(ok, &audio, na), TapMode::Off);
}

type Reports = Arc<Mutex<Vec<UsageReport>>>;

fn collector() -> (Reports, ReportFn) {
    let reports: Reports = Arc::default();
    let sink = Arc::clone(&reports);
    (reports, Box::new(move |r| sink.lock().unwrap().push(r)))
}

fn frames_body(
    frames: Vec<Result<Bytes, std::io::Error>>,
) -> impl Body<Data = Bytes, Error = std::io::Error> {
    StreamBody::new(stream::iter(frames.into_iter().map(|f| f.map(Frame::data))))
}

const SSE_WITH_USAGE: &str = concat!(
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
    "data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
    "data: [DONE]\n\n",
);
const SSE_WITHOUT_USAGE: &str = concat!(
    "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
    "data: [DONE]\n\n",
);

#[tokio::test]
async fn body_forwards_frames_unchanged_and_reports_once() {
    let (reports, report) = collector();
    let frames: Vec<Result<Bytes, std::io::Error>> = SSE_WITH_USAGE
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut body = UsageBody::new(frames_body(frames), TapMode::Sse, report);
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        sizes.push(data.len());
        got.extend_from_slice(&data);
        assert!(
            reports.lock().unwrap().is_empty(),
            "no report before the end"
        );
    }
    assert!(body.is_end_stream());
    assert_eq!(got, SSE_WITH_USAGE.as_bytes());
    assert!(
        sizes.iter().all(|&s| s <= 7),
        "frames are not merged or re-buffered"
    );
    drop(body);
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.end, StreamEnd::Complete);
    assert_eq!(
        r.usage,
        Some(Usage {
            input_tokens: 3,
            output_tokens: 1
        })
    );
    assert_eq!(r.response_model.as_deref(), Some("m"));
    assert_eq!(r.bytes_sent, SSE_WITH_USAGE.len() as u64);
    assert!(r.first_byte_at.is_some_and(|t| t <= r.finished_at));
}

#[tokio::test]
async fn strip_mode_body_removes_what_the_sidecar_added() {
    let (reports, report) = collector();
    let frames = SSE_WITH_USAGE
        .as_bytes()
        .chunks(5)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = UsageBody::new(frames_body(frames), TapMode::SseStripInjected, report);
    assert_eq!(body.size_hint().exact(), None);
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&got),
        SSE_WITHOUT_USAGE,
        "the client sees what it would have seen"
    );
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].usage.map(|u| u.input_tokens), Some(3));
    assert_eq!(reports[0].bytes_sent, SSE_WITHOUT_USAGE.len() as u64);
}

#[tokio::test]
async fn json_body_keeps_its_length_and_reports_usage() {
    let (reports, report) = collector();
    let json = r#"{"model":"e","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    let body = UsageBody::new(Full::new(Bytes::from(json)), TapMode::Json, report);
    assert_eq!(body.size_hint().exact(), Some(json.len() as u64));
    let got = body.collect().await.unwrap().to_bytes();
    assert_eq!(got, json.as_bytes());
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].usage.map(|u| u.input_tokens), Some(8));
    assert_eq!(reports[0].end, StreamEnd::Complete);
}

#[tokio::test]
async fn a_server_that_stops_at_content_length_still_gets_a_complete_report() {
    let (reports, report) = collector();
    let json = r#"{"usage":{"prompt_tokens":2,"completion_tokens":2}}"#;
    let mut body = UsageBody::new(Full::new(Bytes::from(json)), TapMode::Json, report);
    // Read exactly the announced bytes, then drop without polling for the end.
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap().len(), json.len());
    drop(body);
    let reports = reports.lock().unwrap();
    assert_eq!(reports[0].end, StreamEnd::Complete);
    assert_eq!(reports[0].usage.map(|u| u.output_tokens), Some(2));
}

#[tokio::test]
async fn dropped_and_failed_bodies_report_what_they_saw() {
    let (reports, report) = collector();
    let frames = vec![
        Ok(Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":0}}\n\n",
        )),
        Ok(Bytes::from_static(b"data: {\"choices\":[{}]}\n\n")),
    ];
    let mut body = UsageBody::new(frames_body(frames), TapMode::Sse, report);
    let _ = body.frame().await.unwrap().unwrap();
    drop(body);
    {
        let reports = reports.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].end, StreamEnd::Dropped);
        assert_eq!(reports[0].usage.map(|u| u.input_tokens), Some(5));
    }

    let (reports, report) = collector();
    let frames = vec![
        Ok(Bytes::from_static(b"data: {}\n\n")),
        Err(std::io::Error::other("upstream reset")),
    ];
    let body = UsageBody::new(frames_body(frames), TapMode::Sse, report);
    assert!(body.collect().await.is_err());
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].end, StreamEnd::Error);
}

#[tokio::test]
async fn off_mode_still_times_and_counts_bytes() {
    let (reports, report) = collector();
    let body = UsageBody::new(
        Full::new(Bytes::from_static(b"<binary>")),
        TapMode::Off,
        report,
    );
    let _ = body.collect().await.map_err(|e: Infallible| e).unwrap();
    let reports = reports.lock().unwrap();
    assert_eq!(reports[0].usage, None);
    assert_eq!(reports[0].bytes_sent, 8);
    assert_eq!(reports[0].unparsed, 0);
}

#[tokio::test]
async fn an_idle_upstream_is_reported_as_a_timeout() {
    let (reports, report) = collector();
    let frames = stream::iter([
        Ok(Frame::data(Bytes::from_static(b"data: {}\n\n"))),
        Err::<Frame<Bytes>, crate::error::BoxError>(Box::new(
            crate::error::ProxyError::StreamIdle {
                after: std::time::Duration::from_secs(1),
            },
        )),
    ]);
    let body = UsageBody::new(StreamBody::new(frames), TapMode::Sse, report);
    assert!(body.collect().await.is_err());
    assert_eq!(reports.lock().unwrap()[0].end, StreamEnd::Timeout);
}

#[test]
fn stream_end_of_an_error() {
    let idle = crate::error::ProxyError::StreamIdle {
        after: std::time::Duration::from_secs(1),
    };
    assert_eq!(StreamEnd::of_error(&idle), StreamEnd::Timeout);
    let boxed: crate::error::BoxError = Box::new(idle);
    assert_eq!(StreamEnd::of_error(&boxed), StreamEnd::Timeout);
    let other: crate::error::BoxError = "reset".into();
    assert_eq!(StreamEnd::of_error(&other), StreamEnd::Error);
    assert_eq!(
        StreamEnd::of_error(&std::io::Error::other("reset")),
        StreamEnd::Error
    );
}

#[test]
fn media_type_is_the_content_type_before_its_parameters() {
    let of = |value: Option<&[u8]>| match value {
        Some(v) => media_type(&HeaderValue::from_bytes(v).unwrap()).to_owned(),
        None => String::new(),
    };
    assert_eq!(of(Some(b"application/json")), "application/json");
    assert_eq!(
        of(Some(b" text/event-stream ; charset=utf-8")),
        "text/event-stream"
    );
    assert_eq!(of(Some(b"Application/JSON;")), "Application/JSON");
    assert_eq!(of(Some(b";x=1")), "");
    assert_eq!(of(None), "");
    // Not visible ASCII: treated as no media type.
    assert_eq!(of(Some(b"text/\xe9vent")), "");
}

#[test]
fn media_kinds_by_content_type() {
    let of = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(value).unwrap(),
        );
        MediaKind::of(&headers)
    };
    assert_eq!(
        of("text/event-stream; charset=utf-8"),
        MediaKind::EventStream
    );
    assert_eq!(of("Text/Event-Stream"), MediaKind::EventStream);
    assert_eq!(of("application/json"), MediaKind::Json);
    assert_eq!(of("application/vnd.api+json; x=1"), MediaKind::Json);
    assert_eq!(of("+json"), MediaKind::Json);
    assert_eq!(of("json"), MediaKind::Other);
    assert_eq!(of("text/plain"), MediaKind::Other);
    assert_eq!(MediaKind::of(&HeaderMap::new()), MediaKind::Other);
}

/// The values compared whole (what APIs send) get the kind the parse gives them.
#[test]
fn media_kinds_of_the_common_values_are_the_parsed_ones() {
    for value in [
        "application/json",
        "application/json; charset=utf-8",
        "text/event-stream",
        "text/event-stream; charset=utf-8",
    ] {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_static(value);
        headers.insert(http::header::CONTENT_TYPE, value.clone());
        assert_eq!(MediaKind::of(&headers), MediaKind::of_value(&value));
        assert_ne!(MediaKind::of(&headers), MediaKind::Other);
    }
}
