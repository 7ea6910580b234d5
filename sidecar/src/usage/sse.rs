//! Incremental Server-Sent Events inspection: splits frames into events across frame
//! boundaries, keeping at most one incomplete event, and reads usage from the few events
//! that can hold one.
//!
//! Two modes. Pass-through: the caller forwards each frame unchanged and the tap only
//! looks. Strip: the sidecar asked the upstream for usage itself, so the tap hands back
//! only complete events, minus the usage-only chunk and the `"usage":null` members that
//! the request caused; the concatenated output is byte for byte what the upstream would
//! have sent without `include_usage`. Lines end in `\n` or `\r\n` (a bare `\r` line end,
//! legal in SSE but unused by OpenAI-compatible servers, makes events look unterminated:
//! they are then passed through uninspected).

use std::ops::Range;

use bytes::Bytes;

use super::scan::{UsageMember, remove_top_level_null_usage, usage_member};
use super::{Seen, parse_usage};

/// Largest event kept for inspection; a longer one is forwarded uninspected and counted
/// as unparsed (bounds the memory one stream can hold).
pub(super) const MAX_EVENT_BYTES: usize = 4 << 20;

/// What to do with one complete event in strip mode.
enum Verdict {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// Builds the bytes to forward for one frame without copying in the common case where
/// everything kept is one contiguous run of the frame.
struct Out<'f> {
    frame: &'f Bytes,
    run: Option<Range<usize>>,
    owned: Option<Vec<u8>>,
}

impl<'f> Out<'f> {
    fn new(frame: &'f Bytes) -> Self {
        Self {
            frame,
            run: None,
            owned: None,
        }
    }

    fn owned(&mut self) -> &mut Vec<u8> {
        let frame = self.frame;
        let run = self.run.take();
        self.owned.get_or_insert_with(|| match run {
            Some(r) => frame[r].to_vec(),
            None => Vec::new(),
        })
    }

    fn push_range(&mut self, r: Range<usize>) {
        if r.is_empty() {
            return;
        }
        if self.owned.is_none() {
            match &mut self.run {
                None => {
                    self.run = Some(r);
                    return;
                }
                Some(run) if run.end == r.start => {
                    run.end = r.end;
                    return;
                }
                Some(_) => {}
            }
        }
        let frame = self.frame;
        self.owned().extend_from_slice(&frame[r]);
    }

    fn push_bytes(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.owned().extend_from_slice(bytes);
        }
    }

    fn finish(self) -> Bytes {
        match (self.owned, self.run) {
            (Some(owned), _) => Bytes::from(owned),
            (None, Some(run)) => self.frame.slice(run),
            (None, None) => Bytes::new(),
        }
    }
}

/// The SSE inspector; see the module docs.
#[derive(Debug, Default)]
pub(super) struct SseTap {
    strip: bool,
    /// Bytes of the current incomplete event seen in earlier frames (in strip mode also
    /// not yet forwarded).
    carry: Vec<u8>,
    /// Length of the current incomplete line, and whether it is exactly `\r`: enough to
    /// spot a blank line split across frames.
    line_len: usize,
    line_is_cr: bool,
    /// The current event outgrew [`MAX_EVENT_BYTES`]: pass it through to its end.
    skipping: bool,
    /// Joins multi-line `data:` fields (rare).
    scratch: Vec<u8>,
    pub(super) seen: Seen,
}

impl SseTap {
    pub(super) fn new(strip: bool) -> Self {
        Self {
            strip,
            ..Self::default()
        }
    }

    /// Inspects one frame. In strip mode returns the bytes to forward now (possibly
    /// empty); in pass-through mode returns `None`: forward the frame as it is.
    pub(super) fn push(&mut self, frame: &Bytes) -> Option<Bytes> {
        let mut out = self.strip.then(|| Out::new(frame));
        let bytes = &frame[..];
        let mut pos = 0;
        let mut event_start = 0;
        while let Some(off) = bytes[pos..].iter().position(|&b| b == b'\n') {
            let nl = pos + off;
            let seg = &bytes[pos..nl];
            let blank = if seg.is_empty() {
                self.line_len == 0 || (self.line_len == 1 && self.line_is_cr)
            } else {
                self.line_len == 0 && seg == b"\r"
            };
            self.line_len = 0;
            self.line_is_cr = false;
            pos = nl + 1;
            if blank {
                self.complete_event(frame, event_start..pos, out.as_mut());
                event_start = pos;
            }
        }
        let rest = &bytes[pos..];
        if !rest.is_empty() {
            self.line_is_cr = self.line_len == 0 && rest == b"\r";
            self.line_len += rest.len();
        }
        self.hold(frame, event_start..bytes.len(), out.as_mut());
        out.map(Out::finish)
    }

    /// End of stream: inspects a trailing unterminated event; in strip mode returns what
    /// is still held back.
    pub(super) fn finish(&mut self) -> Option<Bytes> {
        let carry = std::mem::take(&mut self.carry);
        let empty = Bytes::new();
        let mut out = self.strip.then(|| Out::new(&empty));
        if self.skipping {
            if let Some(out) = out.as_mut() {
                out.push_bytes(&carry);
            }
        } else if !carry.is_empty() {
            let verdict = self.inspect(&carry);
            if let Some(out) = out.as_mut() {
                match verdict {
                    Verdict::Keep => out.push_bytes(&carry),
                    Verdict::Drop => {}
                    Verdict::Replace(new) => out.push_bytes(&new),
                }
            }
        }
        out.map(Out::finish)
    }

    /// Keeps the incomplete event tail of a frame, or gives up on an oversized event.
    fn hold(&mut self, frame: &Bytes, tail: Range<usize>, out: Option<&mut Out<'_>>) {
        if self.skipping {
            if let Some(out) = out {
                out.push_range(tail);
            }
            return;
        }
        if self.carry.len() + tail.len() > MAX_EVENT_BYTES {
            self.skipping = true;
            self.seen.unparsed += 1;
            let carry = std::mem::take(&mut self.carry);
            if let Some(out) = out {
                out.push_bytes(&carry);
                out.push_range(tail);
            }
            return;
        }
        self.carry.extend_from_slice(&frame[tail]);
    }

    fn complete_event(&mut self, frame: &Bytes, range: Range<usize>, out: Option<&mut Out<'_>>) {
        if self.skipping {
            self.skipping = false;
            if let Some(out) = out {
                out.push_range(range);
            }
            return;
        }
        if self.carry.is_empty() {
            let verdict = self.inspect(&frame[range.clone()]);
            if let Some(out) = out {
                match verdict {
                    Verdict::Keep => out.push_range(range),
                    Verdict::Drop => {}
                    Verdict::Replace(new) => out.push_bytes(&new),
                }
            }
            return;
        }
        if self.carry.len() + range.len() > MAX_EVENT_BYTES {
            // Same rule as in `hold`: too long to inspect, forward as is.
            self.seen.unparsed += 1;
            let carry = std::mem::take(&mut self.carry);
            if let Some(out) = out {
                out.push_bytes(&carry);
                out.push_range(range);
            }
            return;
        }
        let mut event = std::mem::take(&mut self.carry);
        event.extend_from_slice(&frame[range]);
        let verdict = self.inspect(&event);
        if let Some(out) = out {
            match verdict {
                Verdict::Keep => out.push_bytes(&event),
                Verdict::Drop => {}
                Verdict::Replace(new) => out.push_bytes(&new),
            }
        }
        // Reuse the allocation for the next carried event.
        event.clear();
        self.carry = event;
    }

    /// Looks at one raw event (its lines and the blank line ending it).
    fn inspect(&mut self, raw: &[u8]) -> Verdict {
        let mut data: Option<Range<usize>> = None;
        let mut data_lines = 0usize;
        let mut at = 0;
        for line in raw.split(|&b| b == b'\n') {
            let start = at;
            at += line.len() + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(value) = line.strip_prefix(b"data:") else {
                continue;
            };
            let skip = usize::from(value.first() == Some(&b' '));
            let value_start = start + 5 + skip;
            let value_end = start + line.len();
            data_lines += 1;
            if data_lines == 1 {
                data = Some(value_start..value_end);
                self.scratch.clear();
            } else {
                if data_lines == 2 {
                    if let Some(first) = data.clone() {
                        self.scratch.extend_from_slice(&raw[first]);
                    }
                }
                self.scratch.push(b'\n');
                self.scratch.extend_from_slice(&raw[value_start..value_end]);
            }
        }
        let Some(data) = data else {
            return Verdict::Keep;
        };
        let single = data_lines == 1;
        let scratch = std::mem::take(&mut self.scratch);
        let payload: &[u8] = if single { &raw[data.clone()] } else { &scratch };
        let verdict = self.judge(payload, single.then_some((raw, data)));
        self.scratch = scratch;
        verdict
    }

    /// Decides on one event's data; `rewritable` is the raw event and the data range when
    /// the data sits on one line (so a rewrite can splice it back).
    fn judge(&mut self, payload: &[u8], rewritable: Option<(&[u8], Range<usize>)>) -> Verdict {
        let trimmed = payload.trim_ascii();
        if trimmed.is_empty() || trimmed == b"[DONE]" {
            return Verdict::Keep;
        }
        match usage_member(payload) {
            UsageMember::Object => match parse_usage(payload) {
                Ok(parsed) => {
                    let usage_only = parsed.usage_only_chunk;
                    self.seen.absorb(parsed);
                    if self.strip && usage_only {
                        Verdict::Drop
                    } else {
                        Verdict::Keep
                    }
                }
                Err(_) => {
                    self.seen.unparsed += 1;
                    Verdict::Keep
                }
            },
            UsageMember::Null if self.strip => {
                let Some((raw, range)) = rewritable else {
                    return Verdict::Keep;
                };
                match remove_top_level_null_usage(payload) {
                    Some(new_payload) => {
                        let mut event = Vec::with_capacity(raw.len());
                        event.extend_from_slice(&raw[..range.start]);
                        event.extend_from_slice(&new_payload);
                        event.extend_from_slice(&raw[range.end..]);
                        Verdict::Replace(event)
                    }
                    None => Verdict::Keep,
                }
            }
            UsageMember::Null | UsageMember::Absent => {
                // Not parsed (hot path); a payload that cannot be a JSON object is
                // still noticed.
                if trimmed.first() != Some(&b'{') {
                    self.seen.unparsed += 1;
                }
                Verdict::Keep
            }
        }
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
