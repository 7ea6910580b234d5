//! [`UsageBody`]: wraps a response body, hands every frame to the client first and
//! inspects it on the side, then reports once at the end of the body, on error, or when
//! the body is dropped early.
//!
//! "First" is literal in pass-through modes: a frame is returned to the caller as is and
//! only inspected at the next poll (while the upstream produces the next frame), so
//! parsing never delays a byte. In strip mode complete events are the unit forwarded; an
//! event is only held until its own blank line arrives, which an SSE client waits for
//! anyway before it can use the event.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::json::JsonTap;
use super::sse::SseTap;
use super::{Seen, StreamEnd, TapMode, UsageReport};

/// Receives the report of a [`UsageBody`], exactly once.
pub type ReportFn = Box<dyn FnOnce(UsageReport) + Send + 'static>;

enum Inspector {
    Off,
    Json(JsonTap),
    Sse(SseTap),
}

/// The non-pinned state; its `Drop` reports a body dropped before its end.
struct Tap {
    mode: TapMode,
    inspector: Inspector,
    /// A pass-through frame already forwarded, inspected at the next poll.
    pending: Option<Bytes>,
    first_byte_at: Option<Instant>,
    bytes_sent: u64,
    report: Option<ReportFn>,
    /// The upstream's exact body length, if it announced one.
    exact_len: Option<u64>,
    done: bool,
}

impl Tap {
    fn inspect_pending(&mut self) {
        if let Some(frame) = self.pending.take() {
            match &mut self.inspector {
                Inspector::Off => {}
                Inspector::Json(tap) => tap.push(&frame),
                Inspector::Sse(tap) => {
                    // Pass-through mode: the frame was forwarded unchanged already.
                    let _ = tap.push(&frame);
                }
            }
        }
    }

    /// Takes a data frame from upstream, returns what goes to the client now.
    fn on_data(&mut self, data: Bytes) -> Bytes {
        match (&mut self.inspector, self.mode) {
            (Inspector::Sse(tap), TapMode::SseStripInjected) => tap.push(&data).unwrap_or(data),
            (Inspector::Off, _) => data,
            _ => {
                self.pending = Some(data.clone());
                data
            }
        }
    }

    /// End of the upstream body: finishes inspection, returns bytes still held back.
    fn on_end(&mut self) -> Option<Bytes> {
        self.inspect_pending();
        match &mut self.inspector {
            Inspector::Off => None,
            Inspector::Json(tap) => {
                tap.finish();
                None
            }
            Inspector::Sse(tap) => tap.finish().filter(|b| !b.is_empty()),
        }
    }

    fn sent(&mut self, data: &Bytes) {
        if !data.is_empty() {
            self.first_byte_at.get_or_insert_with(Instant::now);
            self.bytes_sent += data.len() as u64;
        }
    }

    fn finish(&mut self, end: StreamEnd) {
        self.done = true;
        let Some(report) = self.report.take() else {
            return;
        };
        if end != StreamEnd::Complete {
            // Whatever was seen still counts: tokens already spent are billed.
            self.inspect_pending();
        }
        let seen = match &mut self.inspector {
            Inspector::Off => Seen::default(),
            Inspector::Json(tap) => std::mem::take(&mut tap.seen),
            Inspector::Sse(tap) => std::mem::take(&mut tap.seen),
        };
        report(UsageReport {
            mode: self.mode,
            usage: seen.usage,
            response_model: seen.model,
            unparsed: seen.unparsed,
            first_byte_at: self.first_byte_at,
            finished_at: Instant::now(),
            bytes_sent: self.bytes_sent,
            end,
        });
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // A server may stop polling once a Content-Length body has all its bytes.
        let whole = self.exact_len.is_some_and(|len| len == self.bytes_sent);
        if whole {
            // Nothing is held back outside strip mode (which has no exact length).
            let _ = self.on_end();
        }
        self.finish(if whole {
            StreamEnd::Complete
        } else {
            StreamEnd::Dropped
        });
    }
}

pin_project! {
    /// A response body that forwards every frame and reports token usage once at its end.
    pub struct UsageBody<B> {
        #[pin]
        inner: B,
        tap: Tap,
    }
}

impl<B> UsageBody<B> {
    /// Wraps `inner`; `report` is called exactly once, when the body ends, fails or is
    /// dropped. In [`TapMode::SseStripInjected`] the body's length changes: the caller
    /// must not forward the upstream `Content-Length`.
    pub fn new(inner: B, mode: TapMode, report: ReportFn) -> Self
    where
        B: Body,
    {
        let exact_len = match mode {
            TapMode::SseStripInjected => None,
            TapMode::Off | TapMode::Json | TapMode::Sse => inner.size_hint().exact(),
        };
        let inspector = match mode {
            TapMode::Off => Inspector::Off,
            TapMode::Json => Inspector::Json(JsonTap::default()),
            TapMode::Sse => Inspector::Sse(SseTap::new(false)),
            TapMode::SseStripInjected => Inspector::Sse(SseTap::new(true)),
        };
        Self {
            inner,
            tap: Tap {
                mode,
                inspector,
                pending: None,
                first_byte_at: None,
                bytes_sent: 0,
                report: Some(report),
                exact_len,
                done: false,
            },
        }
    }
}

impl<B> Body for UsageBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        // The previous frame is with the client by now; look at it while we wait.
        this.tap.inspect_pending();
        loop {
            if this.tap.done {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let out = this.tap.on_data(data);
                            if out.is_empty() {
                                // Strip mode held or dropped everything: nothing to send.
                                continue;
                            }
                            this.tap.sent(&out);
                            Frame::data(out)
                        }
                        Err(other) => other,
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(err)) => {
                    this.tap.finish(StreamEnd::of_error(&err));
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    let tail = this.tap.on_end();
                    if let Some(tail) = &tail {
                        this.tap.sent(tail);
                    }
                    this.tap.finish(StreamEnd::Complete);
                    return Poll::Ready(tail.map(|t| Ok(Frame::data(t))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not `inner.is_end_stream()`: the final poll is where the report is made.
        self.tap.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.tap.mode {
            TapMode::SseStripInjected => SizeHint::default(),
            TapMode::Off | TapMode::Json | TapMode::Sse => self.inner.size_hint(),
        }
    }
}
