//! Ends a broken event stream cleanly: when an SSE response body fails after the
//! response started (the upstream reset or closed mid-stream, or went idle past
//! `limits.stream_idle_timeout`), the client gets one `event: error` with an
//! OpenAI-shaped error JSON and then the end of the stream, instead of a truncated
//! chunked body. The OpenAI SDKs raise that event as an `APIError`. Such a stream is
//! never retried: part of it already reached the client.
//!
//! The error event always starts on an event boundary: when the upstream stopped inside
//! an event, a blank line first ends what was forwarded of it (SSE parsers then dispatch
//! that partial event, as they would at any cut), so the error event parses on its own.
//!
//! Bodies that are not event streams pass errors through unchanged (the connection is
//! then cut, which is all HTTP allows once a body started).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::{BoxError, ErrorChain, ProxyError};

pin_project! {
    /// A response body that turns a mid-stream failure of an SSE body into a final
    /// `event: error`.
    pub struct SseErrorTail<B> {
        #[pin]
        inner: B,
        sse: bool,
        done: bool,
        tail: Tail,
    }
}

impl<B> SseErrorTail<B> {
    /// Wraps `inner`; only acts when `sse` (the response is `text/event-stream`).
    pub fn new(inner: B, sse: bool) -> Self {
        Self {
            inner,
            sse,
            done: false,
            tail: Tail::default(),
        }
    }
}

/// The last bytes forwarded: enough to tell whether the stream is between events.
#[derive(Debug, Default)]
struct Tail {
    last: [u8; 3],
    len: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        for &b in data.iter().rev().take(3).rev() {
            self.last = [self.last[1], self.last[2], b];
        }
        self.len = self.len.saturating_add(data.len());
    }

    /// The forwarded bytes as a slice (the last three at most).
    fn bytes(&self) -> &[u8] {
        &self.last[3 - self.len.min(3)..]
    }

    /// True when nothing was forwarded or the last line forwarded was blank, i.e. the
    /// last event was dispatched. Lines end in CRLF, LF or CR (a CR right before an LF
    /// is one line end with it).
    fn at_event_boundary(&self) -> bool {
        let b = self.bytes();
        let rest = match b {
            [] => return true,
            [rest @ .., b'\r', b'\n'] | [rest @ .., b'\n'] | [rest @ .., b'\r'] => rest,
            _ => return false,
        };
        // Another line end right before (or none at all): the line just ended was empty.
        match rest {
            [] => true,
            [.., last] => matches!(last, b'\r' | b'\n'),
        }
    }
}

/// The event sent in place of the failure. The sidecar's own errors (an idle upstream)
/// keep their OpenAI type and code; anything else is a broken upstream stream.
fn error_event(error: &BoxError, at_boundary: bool) -> Bytes {
    let (message, kind, code) = match error.downcast_ref::<ProxyError>() {
        Some(own) => {
            let (_, kind, code) = own.status_and_kind();
            (own.to_string(), kind, code)
        }
        None => (
            format!(
                "the upstream stream broke after it started ({}); \
                 the holysheep sidecar does not retry a started stream",
                ErrorChain(&**error)
            ),
            "server_error",
            "upstream_stream_broken",
        ),
    };
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
        }
    });
    // A CR, LF, or both end the cut line; the second LF is the blank line that ends
    // the event (an extra blank line is a no-op to SSE parsers).
    let boundary = if at_boundary { "" } else { "\n\n" };
    Bytes::from(format!("{boundary}event: error\ndata: {body}\n\n"))
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
                tracing::warn!(
                    error = %ErrorChain(&*error),
                    "upstream event stream broke; ending it with an error event"
                );
                let event = error_event(&error, this.tail.at_event_boundary());
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            Some(Ok(frame)) if *this.sse => {
                if let Some(data) = frame.data_ref() {
                    this.tail.push(data);
                }
                Poll::Ready(Some(Ok(frame)))
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

    /// The last event a transcript dispatches by the SSE rules: lines end in CRLF, LF or
    /// CR; a blank line dispatches the event if it has data.
    fn last_dispatched(text: &str) -> Option<(String, String)> {
        let mut last = None;
        let (mut event, mut data) = (String::new(), None::<String>);
        let mut rest = text;
        while let Some(end) = rest.find(['\r', '\n']) {
            let line = &rest[..end];
            let skip = if rest[end..].starts_with("\r\n") {
                2
            } else {
                1
            };
            rest = &rest[end + skip..];
            if line.is_empty() {
                if let Some(d) = data.take() {
                    let name = if event.is_empty() { "message" } else { &event };
                    last = Some((name.to_owned(), d));
                }
                event.clear();
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_owned(),
                "data" => {
                    let d = data.get_or_insert_with(String::new);
                    if !d.is_empty() {
                        d.push('\n');
                    }
                    d.push_str(value);
                }
                _ => {}
            }
        }
        last
    }

    #[tokio::test]
    async fn the_error_event_starts_on_an_event_boundary_wherever_the_stream_broke() {
        // What the upstream sent before breaking, split into two frames at every point.
        let cases = [
            "",
            "data: {\"a\":1}\n\n",
            "data: {\"a\":1}\n\ndata: {\"id\":",
            "data: {\"a\":1}\n",
            "data: {\"a\":1}\r",
            "data: {\"a\":1}\r\n",
            "data: {\"a\":1}\r\n\r\n",
            "data: {\"a\":1}\r\r",
            "data: {\"a\":1}\n\r",
            ": comment\n",
            "\n",
            "\r\n",
            "event: x\ndata",
        ];
        for sent in cases {
            for split in 0..=sent.len() {
                let (a, b) = sent.split_at(split);
                let inner = body(vec![Ok(a), Ok(b), Err("connection reset")]);
                let out = SseErrorTail::new(inner, true)
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes();
                let text = std::str::from_utf8(&out).unwrap();
                assert!(text.starts_with(sent), "{sent:?}: forwarded as is");
                let (event, data) = last_dispatched(text).unwrap_or_else(|| panic!("{text:?}"));
                assert_eq!(event, "error", "{sent:?} split at {split}: {text:?}");
                let json: serde_json::Value = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("{sent:?} split at {split}: {e}: {text:?}"));
                assert_eq!(json["error"]["code"], "upstream_stream_broken");
            }
            // Already between events: nothing is added before the error event.
            let inner = body(vec![Ok(sent), Err("reset")]);
            let out = SseErrorTail::new(inner, true).collect().await.unwrap();
            let text = String::from_utf8(out.to_bytes().to_vec()).unwrap();
            let blank_first = text[sent.len()..].starts_with('\n');
            let boundary = sent.is_empty()
                || ["\n\n", "\r\r", "\n\r", "\r\n\r\n"]
                    .iter()
                    .any(|end| sent.ends_with(end))
                || sent == "\n"
                || sent == "\r\n";
            assert_eq!(blank_first, !boundary, "{sent:?}: {text:?}");
        }
    }

    #[tokio::test]
    async fn an_idle_upstream_ends_the_stream_with_a_timeout_error_event() {
        let idle: BoxError = Box::new(ProxyError::StreamIdle {
            after: std::time::Duration::from_millis(300),
        });
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))),
            Err(idle),
        ];
        let inner = StreamBody::new(stream::iter(frames));
        let out = SseErrorTail::new(inner, true).collect().await.unwrap();
        let text = String::from_utf8(out.to_bytes().to_vec()).unwrap();
        let (event, data) = last_dispatched(&text).unwrap();
        assert_eq!(event, "error");
        let json: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(json["error"]["type"], "timeout_error");
        assert_eq!(json["error"]["code"], "stream_idle_timeout");
    }
}
