//! Request side of stream usage: make a streamed chat/completions request ask the
//! upstream for usage when the client did not, and say so, so the response side can remove
//! what that added.
//!
//! Works like `models.rs`: on the raw request bytes, splicing only the `stream_options`
//! member and copying everything else byte for byte, so the body is never re-serialized.
//! A body without the bytes `"stream"` costs one substring scan and nothing else. Does not
//! touch the network or the response.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::metrics::Route;
use crate::models::ModelField;

/// What the request asked about stream usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamUsage {
    /// Not a streamed chat/completions request: nothing to do.
    NotApplicable,
    /// The client asked for `stream_options.include_usage` itself: forward everything.
    ClientAsked,
    /// The sidecar set `include_usage`: strip the usage-only chunk from the response.
    Injected,
}

/// A request body after [`prepare_stream_usage`].
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The body to send (the original bytes unless `Injected`).
    pub body: Bytes,
    /// The body's `model` field, its span moved if the splice came before it.
    pub model: Option<ModelField>,
    /// What was found or done.
    pub stream_usage: StreamUsage,
}

#[derive(Deserialize)]
struct StreamFields<'a> {
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    /// `Some` even for `null`, which plain `Option` would turn into `None`.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

const INCLUDE_USAGE: &str = "include_usage";

/// Sets `stream_options.include_usage: true` on a streamed chat/completions JSON body
/// that lacks it. `model` is the body's model field (from `models::remap`), kept valid.
pub fn prepare_stream_usage(route: Route, body: Bytes, model: Option<ModelField>) -> Prepared {
    let unchanged = |body, model, stream_usage| Prepared {
        body,
        model,
        stream_usage,
    };
    if !matches!(route, Route::ChatCompletions | Route::Completions)
        || !contains(&body, b"\"stream\"")
    {
        // The responses API always reports usage in `response.completed`.
        return unchanged(body, model, StreamUsage::NotApplicable);
    }
    let Some((at, remove, insert)) = plan(&body) else {
        return unchanged(body, model, StreamUsage::NotApplicable);
    };
    let Some(insert) = insert else {
        return unchanged(body, model, StreamUsage::ClientAsked);
    };
    let mut out = BytesMut::with_capacity(body.len() + insert.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&body[at + remove..]);
    let model = model.map(|mut field| {
        // Distinct top-level members never overlap: the field is either before or after.
        if field.span.start >= at {
            let shift = |i: usize| i - remove + insert.len();
            field.span = shift(field.span.start)..shift(field.span.end);
        }
        field
    });
    unchanged(out.freeze(), model, StreamUsage::Injected)
}

/// Where to splice: `(offset, bytes removed, text inserted)`, `None` for "not a streamed
/// JSON object", and `insert == None` when the client asked for usage already.
fn plan(body: &[u8]) -> Option<(usize, usize, Option<String>)> {
    let fields: StreamFields<'_> = serde_json::from_slice(body).ok()?;
    if fields.stream?.get() != "true" {
        return None;
    }
    let Some(raw) = fields.stream_options else {
        // Append a member before the closing brace of the top-level object.
        let close = body.trim_ascii_end().len().checked_sub(1)?;
        (body[close] == b'}').then_some(())?;
        let text = format!(",\"stream_options\":{{\"{INCLUDE_USAGE}\":true}}");
        return Some((close, 0, Some(text)));
    };
    let text = raw.get();
    // The raw value borrows from `body`, so its address gives its offset.
    let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let mut options = match serde_json::from_str::<Value>(text).ok()? {
        Value::Object(map) => map,
        // `null` (or anything else the upstream would reject anyway): ours only.
        _ => serde_json::Map::new(),
    };
    if options.get(INCLUDE_USAGE).and_then(Value::as_bool) == Some(true) {
        return Some((start, 0, None));
    }
    options.insert(INCLUDE_USAGE.to_owned(), Value::Bool(true));
    let new = serde_json::to_string(&options).ok()?;
    Some((start, text.len(), Some(new)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::find_model;

    #[test]
    fn cases() {
        let cases: [(&str, Route, &str, StreamUsage, &str); 9] = [
            (
                "non-streamed request is the same bytes",
                Route::ChatCompletions,
                r#"{"model":"m","messages":[]}"#,
                StreamUsage::NotApplicable,
                r#"{"model":"m","messages":[]}"#,
            ),
            (
                "stream false",
                Route::ChatCompletions,
                r#"{"model":"m","stream":false}"#,
                StreamUsage::NotApplicable,
                r#"{"model":"m","stream":false}"#,
            ),
            (
                "client already asked",
                Route::ChatCompletions,
                r#"{"stream":true,"stream_options":{"include_usage":true},"model":"m"}"#,
                StreamUsage::ClientAsked,
                r#"{"stream":true,"stream_options":{"include_usage":true},"model":"m"}"#,
            ),
            (
                "no stream_options: appended, the rest byte for byte",
                Route::ChatCompletions,
                "{ \"model\" : \"m\", \"stream\": true }\n",
                StreamUsage::Injected,
                "{ \"model\" : \"m\", \"stream\": true ,\"stream_options\":{\"include_usage\":true}}\n",
            ),
            (
                "explicit false before the model: overridden",
                Route::Completions,
                r#"{"stream_options":{"include_usage":false},"stream":true,"model":"m"}"#,
                StreamUsage::Injected,
                r#"{"stream_options":{"include_usage":true},"stream":true,"model":"m"}"#,
            ),
            (
                "null stream_options",
                Route::ChatCompletions,
                r#"{"model":"m","stream":true,"stream_options":null}"#,
                StreamUsage::Injected,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                "responses API reports usage anyway",
                Route::Responses,
                r#"{"stream":true}"#,
                StreamUsage::NotApplicable,
                r#"{"stream":true}"#,
            ),
            (
                "stream is not the boolean true",
                Route::ChatCompletions,
                r#"{"stream":"true"}"#,
                StreamUsage::NotApplicable,
                r#"{"stream":"true"}"#,
            ),
            (
                "not an object",
                Route::ChatCompletions,
                r#"["stream",true]"#,
                StreamUsage::NotApplicable,
                r#"["stream",true]"#,
            ),
        ];
        for (name, route, body, want, want_body) in cases {
            let model = find_model(body.as_bytes());
            let out = prepare_stream_usage(route, Bytes::from(body), model);
            assert_eq!(out.stream_usage, want, "{name}");
            assert_eq!(String::from_utf8_lossy(&out.body), want_body, "{name}");
            // The model span still points at the model in the new body.
            assert_eq!(out.model, find_model(&out.body), "{name}");
            if want == StreamUsage::Injected {
                let v: Value = serde_json::from_slice(&out.body).unwrap();
                assert_eq!(v["stream_options"]["include_usage"], true, "{name}");
            }
        }
    }

    #[test]
    fn unchanged_bodies_are_not_copied() {
        let body = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        let out = prepare_stream_usage(Route::ChatCompletions, body.clone(), None);
        assert_eq!(out.body.as_ptr(), body.as_ptr());
    }
}
