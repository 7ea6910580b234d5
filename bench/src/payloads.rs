//! The fixed OpenAI-shaped bodies the fake upstream answers with and the request body the
//! load generators send.
//!
//! Everything here is a constant or a pure function, so the upstream spends its time on
//! HTTP and not on building JSON: the benchmark measures the proxy, not the fake.
//! It does not describe the OpenAI API beyond what the benchmark needs.

use bytes::Bytes;

/// Request body of the non-streamed benchmark calls (also what `oha -d` sends).
pub const CHAT_REQUEST: &str =
    r#"{"model":"gpt-4.1","messages":[{"role":"user","content":"Say hello."}]}"#;

/// Request body of the streamed calls made by the time-to-first-byte probe.
pub const CHAT_STREAM_REQUEST: &str =
    r#"{"model":"gpt-4.1","stream":true,"messages":[{"role":"user","content":"Say hello."}]}"#;

/// Non-streamed chat completion answer, usage included.
pub const CHAT_RESPONSE: &str = concat!(
    r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"#,
    r#""model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","#,
    r#""content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"#,
    r#""usage":{"prompt_tokens":11,"completion_tokens":9,"total_tokens":20}}"#
);

/// `GET /v1/models` answer.
pub const MODELS_RESPONSE: &str = concat!(
    r#"{"object":"list","data":[{"id":"gpt-4.1","object":"model","created":1700000000,"#,
    r#""owned_by":"bench"}]}"#
);

/// Last event of every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// The usage-only event sent when the client asked for `stream_options.include_usage`.
pub const SSE_USAGE: &str = concat!(
    r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"#,
    r#""model":"gpt-4.1","choices":[],"#,
    r#""usage":{"prompt_tokens":11,"completion_tokens":9,"total_tokens":20}}"#,
    "\n\n"
);

/// Words streamed one event each after the role event.
const STREAM_WORDS: [&str; 8] = ["Hello", "!", " How", " can", " I", " help", " you", "?"];

/// The content events of a stream: a role event, `words` content events (cycling through a
/// fixed sentence) and a finish event. `[DONE]` and the usage event are added by the caller.
pub fn stream_events(words: usize) -> Vec<Bytes> {
    let mut events = Vec::with_capacity(words + 2);
    events.push(chunk_event(r#"{"role":"assistant","content":""}"#, "null"));
    for word in STREAM_WORDS.iter().cycle().take(words) {
        events.push(chunk_event(&format!(r#"{{"content":"{word}"}}"#), "null"));
    }
    events.push(chunk_event("{}", r#""stop""#));
    events
}

fn chunk_event(delta: &str, finish_reason: &str) -> Bytes {
    Bytes::from(format!(
        concat!(
            r#"data: {{"id":"chatcmpl-bench","object":"chat.completion.chunk","#,
            r#""created":1700000000,"model":"gpt-4.1","choices":[{{"index":0,"#,
            r#""delta":{delta},"finish_reason":{finish}}}]}}"#,
            "\n\n"
        ),
        delta = delta,
        finish = finish_reason
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(event: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(event).unwrap();
        let data = text.strip_prefix("data: ").unwrap().trim_end();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn fixed_bodies_are_valid_json() {
        for body in [
            CHAT_REQUEST,
            CHAT_STREAM_REQUEST,
            CHAT_RESPONSE,
            MODELS_RESPONSE,
        ] {
            serde_json::from_str::<serde_json::Value>(body).unwrap();
        }
        let usage = json_of(SSE_USAGE.as_bytes());
        assert_eq!(usage["usage"]["total_tokens"], 20);
    }

    #[test]
    fn stream_events_are_role_words_then_stop() {
        let events = stream_events(3);
        assert_eq!(events.len(), 5);
        assert_eq!(
            json_of(&events[0])["choices"][0]["delta"]["role"],
            "assistant"
        );
        let words: String = events[1..4]
            .iter()
            .map(|e| {
                json_of(e)["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(words, "Hello! How");
        assert_eq!(json_of(&events[4])["choices"][0]["finish_reason"], "stop");
    }
}
