//! JSON response bodies: accumulated up to a bound and parsed once at the end; past the
//! bound only a tail window is kept and the last `usage` object is cut from it (OpenAI
//! puts `usage` last, and a large body is a large embeddings batch).

use bytes::Bytes;

use super::scan::last_usage_object;
use super::{Parsed, Seen, parse_usage, parse_usage_object};
use crate::joined::Joined;

/// Bodies up to this size are parsed whole.
pub(super) const FULL_PARSE_LIMIT: usize = 1 << 20;
/// Past [`FULL_PARSE_LIMIT`], the size of the tail window searched for `usage`.
pub(super) const TAIL_WINDOW: usize = 64 << 10;

/// The JSON body inspector.
#[derive(Debug, Default)]
pub(super) struct JsonTap {
    buf: Joined,
    /// The body outgrew [`FULL_PARSE_LIMIT`]: `buf` holds (at least) its tail.
    tail_only: bool,
    pub(super) seen: Seen,
}

impl JsonTap {
    pub(super) fn push(&mut self, frame: &Bytes) {
        self.buf.push(frame.clone());
        if !self.tail_only && self.buf.len() > FULL_PARSE_LIMIT {
            self.tail_only = true;
        }
        if self.tail_only && self.buf.len() > 2 * TAIL_WINDOW {
            // Amortised: trim only once the buffer holds two windows.
            self.buf.keep_last(TAIL_WINDOW);
        }
    }

    pub(super) fn finish(&mut self) {
        let joined = std::mem::take(&mut self.buf);
        let buf = joined.as_slice();
        if buf.trim_ascii().is_empty() {
            return;
        }
        if !self.tail_only {
            match parse_usage(buf) {
                Ok(parsed) => self.seen.absorb(parsed),
                Err(_) => self.seen.unparsed += 1,
            }
            return;
        }
        if let Some(object) = last_usage_object(buf) {
            match parse_usage_object(object) {
                Ok(usage) => self.seen.absorb(Parsed {
                    usage: Some(usage),
                    model: None,
                    usage_only_chunk: false,
                }),
                Err(_) => self.seen.unparsed += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Usage;

    fn run(frames: &[&[u8]]) -> Seen {
        let mut tap = JsonTap::default();
        for f in frames {
            tap.push(&Bytes::copy_from_slice(f));
        }
        tap.finish();
        tap.seen
    }

    #[test]
    fn small_body_split_across_frames() {
        let seen = run(&[
            br#"{"id":"x","model":"gpt-4.1","choices":[],"#,
            br#""usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        ]);
        assert_eq!(
            seen.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4
            })
        );
        assert_eq!(seen.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(seen.unparsed, 0);
    }

    #[test]
    fn large_body_reads_usage_from_the_tail() {
        let mut body = br#"{"object":"list","data":[{"embedding":["#.to_vec();
        while body.len() < FULL_PARSE_LIMIT * 2 {
            body.extend_from_slice(b"0.0123456789,");
        }
        body.extend_from_slice(
            br#"0.1]}],"model":"m","usage":{"prompt_tokens":9,"total_tokens":9}}"#,
        );
        let frames: Vec<&[u8]> = body.chunks(16 << 10).collect();
        let mut tap = JsonTap::default();
        for f in &frames {
            tap.push(&Bytes::copy_from_slice(f));
            assert!(tap.buf.len() <= FULL_PARSE_LIMIT + (16 << 10));
        }
        tap.finish();
        assert_eq!(
            tap.seen.usage,
            Some(Usage {
                input_tokens: 9,
                output_tokens: 0
            })
        );
    }

    #[test]
    fn one_frame_or_many_read_the_same() {
        let body: &[u8] = br#"{"model":"gpt-4.1","choices":[{"index":0}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let whole = run(&[body]);
        assert_eq!(whole.usage.map(|u| u.output_tokens), Some(4));
        assert_eq!(whole.model.as_deref(), Some("gpt-4.1"));
        for cut in [1, 17, body.len() - 1] {
            let (a, b) = body.split_at(cut);
            let split = run(&[a, b]);
            assert_eq!(
                (split.usage, split.model.as_deref(), split.unparsed),
                (whole.usage, whole.model.as_deref(), whole.unparsed),
                "cut at {cut}"
            );
        }
        assert_eq!(run(&[b"", body]).usage, whole.usage);
    }

    #[test]
    fn one_large_frame_reads_usage_from_its_tail() {
        let mut body = br#"{"object":"list","data":[{"embedding":["#.to_vec();
        while body.len() < FULL_PARSE_LIMIT + 1 {
            body.extend_from_slice(b"0.0123456789,");
        }
        body.extend_from_slice(br#"0.1]}],"usage":{"prompt_tokens":7,"total_tokens":7}}"#);
        let seen = run(&[&body]);
        assert_eq!(seen.usage.map(|u| u.input_tokens), Some(7));
        assert_eq!(seen.unparsed, 0);
    }

    #[test]
    fn garbage_is_counted_unparsed_and_empty_is_not() {
        assert_eq!(run(&[b"<html>oops</html>"]).unparsed, 1);
        assert_eq!(run(&[b""]).unparsed, 0);
        assert_eq!(run(&[br#"{"data":[]}"#]).usage, None);
    }
}
