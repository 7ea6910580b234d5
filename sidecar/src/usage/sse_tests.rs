use super::*;
use crate::usage::Usage;

/// What an OpenAI-compatible upstream streams for a chat completion, without and with
/// `stream_options.include_usage`.
fn chat_stream(include_usage: bool) -> Vec<u8> {
    let null = if include_usage {
        r#","usage":null"#
    } else {
        ""
    };
    let mut s = String::new();
    for (i, piece) in ["Hel", "lo \\\"usage\\\": {}", "!"].iter().enumerate() {
        s.push_str(&format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1-2025\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}},\"finish_reason\":null}}]{null}}}\n\n"
        ));
        if i == 0 {
            s.push_str(": keep-alive comment\n\n");
        }
    }
    if include_usage {
        s.push_str("data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4.1-2025\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7,\"total_tokens\":18}}\n\n");
    }
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

const WANT: Usage = Usage {
    input_tokens: 11,
    output_tokens: 7,
};

/// Feeds `frames` through a tap; returns what went to the client and the tap.
fn run(strip: bool, frames: &[&[u8]]) -> (Vec<u8>, SseTap) {
    let mut tap = SseTap::new(strip);
    let mut client = Vec::new();
    for f in frames {
        let frame = Bytes::copy_from_slice(f);
        match tap.push(&frame) {
            Some(out) => client.extend_from_slice(&out),
            None => client.extend_from_slice(&frame),
        }
    }
    if let Some(out) = tap.finish() {
        client.extend_from_slice(&out);
    }
    (client, tap)
}

/// Every split of `stream` into two frames, plus one byte per frame, plus a few
/// pseudo-random multi-way splits.
fn splits(stream: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all: Vec<Vec<&[u8]>> = (0..=stream.len())
        .map(|i| vec![&stream[..i], &stream[i..]])
        .collect();
    all.push(stream.chunks(1).collect());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..50 {
        let mut frames = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = 1 + (seed >> 33) as usize % 97;
            let end = (at + len).min(stream.len());
            frames.push(&stream[at..end]);
            at = end;
        }
        all.push(frames);
    }
    all
}

#[test]
fn pass_through_counts_usage_under_every_split() {
    let stream = chat_stream(true);
    for frames in splits(&stream) {
        let (client, tap) = run(false, &frames);
        assert_eq!(client, stream);
        assert_eq!(tap.seen.usage, Some(WANT), "frames {frames:?}");
        assert_eq!(tap.seen.model.as_deref(), Some("gpt-4.1-2025"));
        assert_eq!(tap.seen.unparsed, 0);
    }
}

#[test]
fn strip_mode_gives_the_client_the_stream_it_would_have_had() {
    let with_usage = chat_stream(true);
    let without = chat_stream(false);
    for frames in splits(&with_usage) {
        let (client, tap) = run(true, &frames);
        assert_eq!(
            String::from_utf8_lossy(&client),
            String::from_utf8_lossy(&without),
            "frames {frames:?}"
        );
        assert_eq!(tap.seen.usage, Some(WANT));
        assert_eq!(tap.seen.unparsed, 0);
    }
}

#[test]
fn strip_mode_forwards_whole_frames_without_copying() {
    let stream = chat_stream(false);
    let frame = Bytes::from(stream.clone());
    let mut tap = SseTap::new(true);
    let out = tap.push(&frame).unwrap();
    assert_eq!(out, frame);
    assert_eq!(
        out.as_ptr(),
        frame.as_ptr(),
        "a kept frame is a slice, not a copy"
    );
}

#[test]
fn crlf_line_endings() {
    let stream = String::from_utf8(chat_stream(true))
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    let want = String::from_utf8(chat_stream(false))
        .unwrap()
        .replace('\n', "\r\n");
    for frames in splits(&stream) {
        let (client, tap) = run(true, &frames);
        assert_eq!(String::from_utf8_lossy(&client), want);
        assert_eq!(tap.seen.usage, Some(WANT));
    }
}

#[test]
fn responses_api_completed_event() {
    let stream = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"model\":\"gpt-4.1\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"model\":\"gpt-4.1-2025\",",
        "\"usage\":{\"input_tokens\":5,\"output_tokens\":2,\"total_tokens\":7}}}\n\n",
    )
    .as_bytes();
    let (client, tap) = run(false, &[stream]);
    assert_eq!(client, stream);
    assert_eq!(
        tap.seen.usage,
        Some(Usage {
            input_tokens: 5,
            output_tokens: 2
        })
    );
    assert_eq!(tap.seen.model.as_deref(), Some("gpt-4.1-2025"));
}

#[test]
fn unparsable_events_are_forwarded_and_counted() {
    let stream = concat!(
        "data: not json at all\n\n",
        "data: {\"usage\":{\"prompt_tokens\":\"many\"}}\n\n",
        "data: {\"choices\":[]}\n\n",
        "data: [DONE]\n\n",
    )
    .as_bytes();
    for strip in [false, true] {
        let (client, tap) = run(strip, &[stream]);
        assert_eq!(client, stream, "strip={strip}");
        assert_eq!(tap.seen.unparsed, 2, "strip={strip}");
        assert_eq!(tap.seen.usage, None);
    }
}

#[test]
fn multi_line_data_event_is_joined() {
    let stream = b"data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
    let (client, tap) = run(false, &[stream]);
    assert_eq!(client, stream);
    assert_eq!(
        tap.seen.usage,
        Some(Usage {
            input_tokens: 1,
            output_tokens: 2
        })
    );
}

#[test]
fn oversized_event_passes_through_uninspected() {
    let mut stream = b"data: {\"x\":\"".to_vec();
    stream.resize(MAX_EVENT_BYTES + 100, b'a');
    stream.extend_from_slice(b"\"}\n\n");
    let tail = chat_stream(true);
    stream.extend_from_slice(&tail);
    let frames: Vec<&[u8]> = stream.chunks(64 << 10).collect();
    for strip in [false, true] {
        let (client, tap) = run(strip, &frames);
        let overhead = if strip {
            tail.len() - chat_stream(false).len()
        } else {
            0
        };
        assert_eq!(client.len(), stream.len() - overhead, "strip={strip}");
        assert_eq!(tap.seen.unparsed, 1);
        assert_eq!(tap.seen.usage, Some(WANT), "events after it are still read");
        assert!(tap.carry.capacity() <= MAX_EVENT_BYTES + (64 << 10));
    }
}

#[test]
fn unterminated_last_event_is_still_read() {
    let stream = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":0}}";
    let (client, tap) = run(false, &[stream]);
    assert_eq!(client, stream);
    assert_eq!(tap.seen.usage.map(|u| u.input_tokens), Some(4));
}
