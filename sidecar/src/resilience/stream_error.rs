//! Ends a broken event stream cleanly: when an SSE response body fails after the
//! response started (the upstream reset or closed mid-stream), the client gets one
//! `event: error` with an OpenAI-shaped error JSON and then the end of the stream,
//! instead of a truncated chunked body. The OpenAI SDKs raise that event as an
//! `APIError`. Such a stream is never retried: part of it already reached the client.
//!
//! Bodies that are not event streams pass errors through unchanged (the connection is
//! then cut, which is all HTTP allows once a body started).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::BoxError;

/// True when the response is `text/event-stream`.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
}

pin_project! {
    /// A response body that turns a mid-stream failure of an SSE body into a final
    /// `event: error`.
    pub struct SseErrorTail<B> {
        #[pin]
        inner: B,
        sse: bool,
        done: bool,
    }
}

impl<B> SseErrorTail<B> {
    /// Wraps `inner`; only acts when `sse` (see [`is_event_stream`]).
    pub fn new(inner: B, sse: bool) -> Self {
        Self {
            inner,
            sse,
            done: false,
        }
    }
}

/// The event sent in place of the failure.
fn error_event(error: &BoxError) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "message": format!(
                "the upstream stream broke after it started ({error}); \
                 the holysheep sidecar does not retry a started stream"
            ),
            "type": "server_error",
            "param": null,
            "code": "upstream_stream_broken",
        }
    });
    Bytes::from(format!("event: error\ndata: {body}\n\n"))
}

impl<B> Body for SseErrorTail<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Err(error)) if *this.sse => {
                *this.done = true;
                tracing::warn!(%error, "upstream event stream broke; ending it with an error event");
                Poll::Ready(Some(Ok(Frame::data(error_event(&error)))))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse {
            // The error event may add bytes the upstream never announced.
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    fn body(
        items: Vec<Result<&'static str, &'static str>>,
    ) -> impl Body<Data = Bytes, Error = BoxError> {
        StreamBody::new(stream::iter(items.into_iter().map(|item| {
            item.map(|s| Frame::data(Bytes::from(s)))
                .map_err(BoxError::from)
        })))
    }

    #[tokio::test]
    async fn a_broken_sse_stream_ends_with_one_error_event() {
        let inner = body(vec![
            Ok("data: {\"a\":1}\n\n"),
            Err("connection reset"),
            Ok("never"),
        ]);
        let out = SseErrorTail::new(inner, true)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let text = std::str::from_utf8(&out).unwrap();
        let (first, rest) = text.split_once("\n\n").unwrap();
        assert_eq!(first, "data: {\"a\":1}");
        let event = rest.strip_prefix("event: error\ndata: ").unwrap();
        let json: serde_json::Value = serde_json::from_str(event.trim_end()).unwrap();
        assert_eq!(json["error"]["code"], "upstream_stream_broken");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("connection reset")
        );
        assert!(!text.contains("never"), "nothing after the error event");
    }

    #[tokio::test]
    async fn other_bodies_keep_their_errors() {
        let inner = body(vec![Ok("{\"a\""), Err("reset")]);
        assert!(SseErrorTail::new(inner, false).collect().await.is_err());
    }

    #[tokio::test]
    async fn a_clean_stream_is_untouched() {
        let inner = body(vec![Ok("data: 1\n\n"), Ok("data: [DONE]\n\n")]);
        let out = SseErrorTail::new(inner, true)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(out, "data: 1\n\ndata: [DONE]\n\n");
    }

    #[test]
    fn event_stream_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_event_stream(&h));
        h.insert(
            "content-type",
            "text/event-stream; charset=utf-8".parse().unwrap(),
        );
        assert!(is_event_stream(&h));
        h.insert("content-type", "application/json".parse().unwrap());
        assert!(!is_event_stream(&h));
    }
}
