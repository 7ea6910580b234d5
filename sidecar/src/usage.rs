//! Token usage and cost of upstream responses, read on the side of the response stream.
//!
//! - [`parse_usage`]: the `usage` of one JSON document in every OpenAI shape (chat and
//!   completions, embeddings, the responses API and its `response.completed` event).
//! - [`UsageBody`]: an `http_body::Body` wrapper that forwards every frame first and
//!   inspects it after, for SSE streams (incremental, event by event) and JSON bodies
//!   (bounded), and reports once at the end (or when dropped).
//! - [`prepare_stream_usage`]: the request-side half of stream usage injection.
//! - [`cost_usd`]: tokens times the configured price.
//!
//! This module does not record metrics or log: the report callback does that.

mod body;
mod json;
pub mod request;
pub(crate) mod scan;
mod sse;

use std::borrow::Cow;
use std::time::Instant;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::Price;
use crate::error::{BoxError, ProxyError};

pub use body::{ReportFn, UsageBody};
pub use request::{Prepared, StreamUsage, prepare_stream_usage};

/// Token counts of one response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt / input tokens.
    pub input_tokens: u64,
    /// Completion / output tokens (0 for embeddings).
    pub output_tokens: u64,
}

/// What one JSON document (a body or an SSE event) said about usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The usage, if the document carried a non-null one.
    pub usage: Option<Usage>,
    /// The `model` the document named, if any.
    pub model: Option<String>,
    /// The document is a chat/completions chunk with `choices: []` and a usage: the extra
    /// chunk an upstream sends for `stream_options.include_usage`.
    pub usage_only_chunk: bool,
}

#[derive(Default, Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl RawUsage {
    fn into_usage(self) -> Usage {
        let input = self.prompt_tokens.or(self.input_tokens).unwrap_or(0);
        let output = self
            .completion_tokens
            .or(self.output_tokens)
            // Embeddings report only prompt and total tokens.
            .or_else(|| self.total_tokens.map(|t| t.saturating_sub(input)))
            .unwrap_or(0);
        Usage {
            input_tokens: input,
            output_tokens: output,
        }
    }
}

/// The responses API nests its result under `response` in stream events.
#[derive(Deserialize)]
struct Nested<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<RawUsage>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<RawUsage>,
    #[serde(borrow)]
    response: Option<Nested<'a>>,
    choices: Option<Vec<IgnoredAny>>,
}

/// Parses the usage out of one JSON document; `Err` when it is not a JSON object.
///
/// The members read (`model`, `usage`, `response`, `choices`) are found by a walk over
/// the object's members ([`scan::each_member`]), and only they are parsed (with serde):
/// the rest, the generated text or the embeddings, is stepped over, not parsed. Whatever
/// the walk cannot follow, or a member read that does not parse, goes to the full parse,
/// which also gives the error; so a malformed value the tap never reads does not make a
/// body unparsed. Why: the full parse was the largest part of the sidecar's own work per
/// request (callgrind: 6.5k of 75k instructions for a 281-byte chat completion).
pub fn parse_usage(json: &[u8]) -> Result<Parsed, serde_json::Error> {
    match walk_usage(json) {
        Some(parsed) => Ok(parsed),
        None => parse_usage_whole(json),
    }
}

/// The members [`parse_usage`] reads, as found by the walk.
#[derive(Default)]
struct Members<'a> {
    model: Option<&'a [u8]>,
    usage: Option<&'a [u8]>,
    response: Option<&'a [u8]>,
    choices: Option<&'a [u8]>,
}

impl<'a> Members<'a> {
    /// `None` when the walk fails or a member read appears twice (an error for serde).
    fn find(json: &'a [u8]) -> Option<Self> {
        let mut found = Self::default();
        scan::each_member(json, |key, value| {
            let slot = match key {
                b"model" => &mut found.model,
                b"usage" => &mut found.usage,
                b"response" => &mut found.response,
                b"choices" => &mut found.choices,
                _ => return Some(()),
            };
            slot.replace(value).is_none().then_some(())
        })?;
        Some(found)
    }
}

/// [`parse_usage`] by the walk; `None` sends the document to the full parse.
fn walk_usage(json: &[u8]) -> Option<Parsed> {
    let top = Members::find(json)?;
    let nested = match top.response {
        None | Some(b"null") => Members::default(),
        Some(object) if object.first() == Some(&b'{') => Members::find(object)?,
        Some(_) => return None,
    };
    let top_usage = parse_usage_member(top.usage)?;
    let has_top_usage = top_usage.is_some();
    let usage = match top_usage {
        Some(usage) => Some(usage),
        None => parse_usage_member(nested.usage)?,
    };
    let model = match parse_string_member(top.model)? {
        Some(model) => Some(model),
        None => parse_string_member(nested.model)?,
    };
    let choices_empty = match top.choices {
        None | Some(b"null") => false,
        Some(array) if array.first() == Some(&b'[') => {
            array[1..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b']')
        }
        Some(_) => return None,
    };
    Some(Parsed {
        usage: usage.map(RawUsage::into_usage),
        model,
        usage_only_chunk: has_top_usage && choices_empty,
    })
}

/// A `usage` object's counts by the member walk: each a plain unsigned integer or `null`
/// (members it does not read are stepped over); `None` for anything else, which then
/// goes to serde.
fn walk_raw_usage(object: &[u8]) -> Option<RawUsage> {
    let mut usage = RawUsage::default();
    let mut seen = 0_u8;
    scan::each_member(object, |key, value| {
        let (bit, slot) = match key {
            b"prompt_tokens" => (1, &mut usage.prompt_tokens),
            b"completion_tokens" => (2, &mut usage.completion_tokens),
            b"input_tokens" => (4, &mut usage.input_tokens),
            b"output_tokens" => (8, &mut usage.output_tokens),
            b"total_tokens" => (16, &mut usage.total_tokens),
            _ => return Some(()),
        };
        // A repeated member is an error for serde: let it say so.
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        let count = match value {
            b"null" => None,
            // JSON allows no leading zero; anything but digits is left to serde.
            // Folded digit by digit (no UTF-8 check, no generic parse); past u64 it is
            // serde's to refuse.
            [b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => {
                Some(value.iter().try_fold(0_u64, |n, d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })?)
            }
            b"0" => Some(0),
            _ => return None,
        };
        *slot = count;
        Some(())
    })?;
    Some(usage)
}

/// The `usage` member's value: by the walk when it can, else by serde.
fn parse_usage_member(value: Option<&[u8]>) -> Option<Option<RawUsage>> {
    match value {
        Some(object) if object.first() == Some(&b'{') => match walk_raw_usage(object) {
            Some(usage) => Some(Some(usage)),
            None => parse_member(value),
        },
        _ => parse_member(value),
    }
}

/// A string member's value as [`parse_member`] reads it, taken as it is when it needs
/// no decoding (a model name always): serde's string reader is code the request path
/// would otherwise run for one short string per response.
fn parse_string_member(value: Option<&[u8]>) -> Option<Option<String>> {
    match value.and_then(scan::plain_string) {
        Some(text) => Some(Some(text.to_owned())),
        None => parse_member(value),
    }
}

/// A member's value as `Option<T>` (absent or `null`: `None`); `None` when it does not
/// parse as that.
fn parse_member<'de, T: Deserialize<'de>>(value: Option<&'de [u8]>) -> Option<Option<T>> {
    match value {
        None => Some(None),
        Some(value) => serde_json::from_slice::<Option<T>>(value).ok(),
    }
}

/// [`parse_usage`] by serde over the whole document.
fn parse_usage_whole(json: &[u8]) -> Result<Parsed, serde_json::Error> {
    let env: Envelope<'_> = serde_json::from_slice(json)?;
    let (nested_model, nested_usage) = match env.response {
        Some(n) => (n.model, n.usage),
        None => (None, None),
    };
    let has_top_usage = env.usage.is_some();
    let usage = env.usage.or(nested_usage).map(RawUsage::into_usage);
    Ok(Parsed {
        usage,
        model: env.model.or(nested_model).map(Cow::into_owned),
        usage_only_chunk: has_top_usage && env.choices.is_some_and(|c| c.is_empty()),
    })
}

/// Parses a bare usage object, e.g. cut from the tail of a large body.
fn parse_usage_object(json: &[u8]) -> Result<Usage, serde_json::Error> {
    serde_json::from_slice::<RawUsage>(json).map(RawUsage::into_usage)
}

/// Cost in USD of `usage` at `price` (USD per 1M tokens).
pub fn cost_usd(usage: &Usage, price: &Price) -> f64 {
    // u64 -> f64 is exact below 2^53 tokens, far beyond any single response.
    (usage.input_tokens as f64 * price.input + usage.output_tokens as f64 * price.output) / 1e6
}

/// How a response body is inspected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapMode {
    /// Not inspected (errors, compressed or non-JSON bodies); still timed.
    Off,
    /// A JSON body: accumulated up to a bound and parsed at the end.
    Json,
    /// An SSE stream forwarded frame by frame, unchanged.
    Sse,
    /// An SSE stream where the sidecar itself asked for usage: the usage-only chunk and
    /// the `"usage":null` members it caused are removed from what the client gets.
    SseStripInjected,
}

/// The media type of the `Content-Type` header: before any `;` parameters, trimmed;
/// empty when there is none or it is not visible ASCII.
fn media_type(value: &http::HeaderValue) -> &str {
    let value = value.to_str().unwrap_or("");
    // A byte loop: `split(';')` makes a memchr call, dearer on a value this short.
    let end = value.bytes().position(|b| b == b';').unwrap_or(value.len());
    value[..end].trim()
}

/// What a message's `Content-Type` says it is, read once per response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    /// `text/event-stream`.
    EventStream,
    /// `application/json` or any `+json` type.
    Json,
    /// Anything else, or no `Content-Type`.
    Other,
}

impl MediaKind {
    /// The kind of `headers`' media type (case-insensitive, parameters ignored).
    pub fn of(headers: &http::HeaderMap) -> Self {
        let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
            return Self::Other;
        };
        // The values APIs and SDKs send, as they send them: one compare instead of the
        // parse below (its two calls per request took 826 instructions, callgrind).
        match value.as_bytes() {
            b"application/json" | b"application/json; charset=utf-8" => Self::Json,
            b"text/event-stream" | b"text/event-stream; charset=utf-8" => Self::EventStream,
            _ => Self::of_value(value),
        }
    }

    /// [`Self::of`] by parsing the value.
    fn of_value(value: &http::HeaderValue) -> Self {
        let mime = media_type(value);
        if mime.eq_ignore_ascii_case("text/event-stream") {
            Self::EventStream
        } else if mime.eq_ignore_ascii_case("application/json")
            || mime
                .len()
                .checked_sub(5)
                .and_then(|at| mime.get(at..))
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
        {
            Self::Json
        } else {
            Self::Other
        }
    }
}

impl TapMode {
    /// Picks the mode from the upstream response (its status, `Content-Encoding` and
    /// media kind) and what the request side did.
    pub fn for_response(
        status: http::StatusCode,
        headers: &http::HeaderMap,
        media: MediaKind,
        stream_usage: StreamUsage,
    ) -> Self {
        if !status.is_success() {
            return Self::Off;
        }
        let encoded = headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            // Compressed bytes cannot be inspected without decompressing: leave them.
            return Self::Off;
        }
        match media {
            MediaKind::EventStream if stream_usage == StreamUsage::Injected => {
                Self::SseStripInjected
            }
            MediaKind::EventStream => Self::Sse,
            MediaKind::Json => Self::Json,
            MediaKind::Other => Self::Off,
        }
    }
}

/// How the response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished the body.
    Complete,
    /// The upstream body failed mid-way.
    Error,
    /// The upstream body sent nothing for `limits.stream_idle_timeout`; the sidecar
    /// ended it.
    Timeout,
    /// The body was dropped before its end (client went away).
    Dropped,
}

impl StreamEnd {
    /// How a body that failed with `error` ended: [`StreamEnd::Timeout`] for the
    /// sidecar's own idle limit, [`StreamEnd::Error`] for anything else. Takes any error
    /// type, so bodies with other error types still classify (as `Error`).
    pub fn of_error<E: 'static>(error: &E) -> Self {
        let any: &dyn std::any::Any = error;
        let own = any.downcast_ref::<ProxyError>().or_else(|| {
            any.downcast_ref::<BoxError>()
                .and_then(|boxed| boxed.downcast_ref::<ProxyError>())
        });
        match own {
            Some(ProxyError::StreamIdle { .. }) => Self::Timeout,
            _ => Self::Error,
        }
    }
}

/// What [`UsageBody`] saw, handed once to its callback.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageReport {
    /// The inspection mode used.
    pub mode: TapMode,
    /// The last usage seen (streams may repeat a cumulative one), if any.
    pub usage: Option<Usage>,
    /// The `model` named next to that usage, if any.
    pub response_model: Option<String>,
    /// SSE events or JSON bodies forwarded untouched that did not parse.
    pub unparsed: u64,
    /// When the first body byte went to the client.
    pub first_byte_at: Option<Instant>,
    /// When the body ended or was dropped.
    pub finished_at: Instant,
    /// Body bytes handed to the client.
    pub bytes_sent: u64,
    /// How the body ended.
    pub end: StreamEnd,
}

/// Accumulates what the inspectors saw.
#[derive(Debug, Default)]
struct Seen {
    usage: Option<Usage>,
    model: Option<String>,
    unparsed: u64,
}

impl Seen {
    fn absorb(&mut self, parsed: Parsed) {
        if let Some(usage) = parsed.usage {
            self.usage = Some(usage);
            if parsed.model.is_some() {
                self.model = parsed.model;
            }
        } else if self.model.is_none() {
            self.model = parsed.model;
        }
    }
}

#[cfg(test)]
mod tests;
