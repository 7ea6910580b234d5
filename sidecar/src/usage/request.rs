//! Request side of stream usage: make a streamed chat/completions request ask the
//! upstream for usage when the client did not, and say so, so the response side can remove
//! what that added.
//!
//! Works on the request JSON that `models.rs` already parsed, so the body is parsed and
//! serialized once per request whatever the number of rewrites. Does not touch the
//! network or the response.

use serde_json::{Map, Value};

use crate::metrics::Route;

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

/// Sets `stream_options.include_usage: true` on a streamed chat/completions request that
/// lacks it and reports what was done; only [`StreamUsage::Injected`] modified `body`.
pub fn prepare_stream_usage(route: Route, body: &mut Value) -> StreamUsage {
    if !matches!(route, Route::ChatCompletions | Route::Completions) {
        // The responses API always reports usage in `response.completed`.
        return StreamUsage::NotApplicable;
    }
    let Some(obj) = body.as_object_mut() else {
        return StreamUsage::NotApplicable;
    };
    if obj.get("stream").and_then(Value::as_bool) != Some(true) {
        return StreamUsage::NotApplicable;
    }
    let asked = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    if asked {
        return StreamUsage::ClientAsked;
    }
    match obj.get_mut("stream_options") {
        Some(Value::Object(options)) => {
            options.insert("include_usage".to_owned(), Value::Bool(true));
        }
        _ => {
            // Absent or `null`: an object with just our flag.
            let mut options = Map::new();
            options.insert("include_usage".to_owned(), Value::Bool(true));
            obj.insert("stream_options".to_owned(), Value::Object(options));
        }
    }
    StreamUsage::Injected
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cases() {
        let cases = [
            (
                "non-streamed request is left alone",
                Route::ChatCompletions,
                json!({"model":"m","messages":[]}),
                StreamUsage::NotApplicable,
                json!({"model":"m","messages":[]}),
            ),
            (
                "client already asked",
                Route::ChatCompletions,
                json!({"stream":true,"stream_options":{"include_usage":true}}),
                StreamUsage::ClientAsked,
                json!({"stream":true,"stream_options":{"include_usage":true}}),
            ),
            (
                "no stream_options: added",
                Route::ChatCompletions,
                json!({"stream":true}),
                StreamUsage::Injected,
                json!({"stream":true,"stream_options":{"include_usage":true}}),
            ),
            (
                "explicit false: overridden and stripped later",
                Route::Completions,
                json!({"stream":true,"stream_options":{"include_usage":false,"x":1}}),
                StreamUsage::Injected,
                json!({"stream":true,"stream_options":{"include_usage":true,"x":1}}),
            ),
            (
                "null stream_options",
                Route::ChatCompletions,
                json!({"stream":true,"stream_options":null}),
                StreamUsage::Injected,
                json!({"stream":true,"stream_options":{"include_usage":true}}),
            ),
            (
                "responses API reports usage anyway",
                Route::Responses,
                json!({"stream":true}),
                StreamUsage::NotApplicable,
                json!({"stream":true}),
            ),
            (
                "stream is not the boolean true",
                Route::ChatCompletions,
                json!({"stream":"yes"}),
                StreamUsage::NotApplicable,
                json!({"stream":"yes"}),
            ),
        ];
        for (name, route, mut body, want, want_body) in cases {
            assert_eq!(prepare_stream_usage(route, &mut body), want, "{name}");
            assert_eq!(body, want_body, "{name}");
        }
        let mut not_object = json!([1, 2]);
        assert_eq!(
            prepare_stream_usage(Route::ChatCompletions, &mut not_object),
            StreamUsage::NotApplicable
        );
    }
}
