//! Byte-level JSON helpers that avoid a full parse on the hot path: find a `usage`
//! member and what it holds, cut a balanced object out of a tail window, and remove a
//! top-level `"usage":null` member. They never allocate unless they rewrite.
//!
//! They rely on one JSON property: inside a string every `"` is escaped, so the raw bytes
//! `"usage"` can only be a member name or a whole string value, never part of text.

/// What the first non-trivial `"usage"` member of a JSON text holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UsageMember {
    /// No `"usage":` member at all.
    Absent,
    /// Only `"usage": null` members.
    Null,
    /// At least one `"usage": {` member; worth a full parse.
    Object,
}

const KEY: &[u8] = b"\"usage\"";

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(haystack.get(from..)?, needle).map(|p| p + from)
}

/// Position of the value after `"usage"` `:` at `key_at`, if it is a member.
fn member_value(bytes: &[u8], key_at: usize) -> Option<usize> {
    let i = skip_ws(bytes, key_at + KEY.len());
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    Some(skip_ws(bytes, i + 1))
}

/// Classifies the `usage` members of `json` without parsing it.
pub(crate) fn usage_member(json: &[u8]) -> UsageMember {
    let mut found = UsageMember::Absent;
    let mut from = 0;
    while let Some(at) = find(json, KEY, from) {
        from = at + KEY.len();
        match member_value(json, at).and_then(|v| json.get(v)) {
            Some(b'{') => return UsageMember::Object,
            Some(b'n') => found = UsageMember::Null,
            _ => {}
        }
    }
    found
}

/// Index one past the end of the JSON value (object, array or string) starting at
/// `start`, stepping over strings so braces inside text do not count.
fn value_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                i = string_end(bytes, i)?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// How far [`next_quote_or_backslash`] looks a word at a time before handing over to
/// memchr: most keys and values in a JSON head are shorter, and a memchr call costs more
/// than a few word compares.
const SHORT_STRING: usize = 32;

/// Index one past the closing quote of the string whose opening quote is at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i = next_quote_or_backslash(bytes, i)?;
        if bytes[i] == b'"' {
            return Some(i + 1);
        }
        // A backslash: the byte after it is escaped, whatever it is.
        i += 2;
    }
}

/// Position of the first `"` or `\` at or after `from`: eight bytes at a time for the
/// first [`SHORT_STRING`] bytes, then memchr for long text.
fn next_quote_or_backslash(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // The lowest flagged byte of `x` is its lowest zero byte (flags above it may be
    // false, so only the lowest is read).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = from;
    let short_end = bytes.len().min(from.saturating_add(SHORT_STRING));
    while let Some(word) = bytes.get(i..i + 8).filter(|_| i + 8 <= short_end) {
        let word = u64::from_le_bytes(word.try_into().ok()?);
        let hits = zero_bytes(word ^ (ONES * u64::from(b'"')))
            | zero_bytes(word ^ (ONES * u64::from(b'\\')));
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    memchr::memchr2(b'"', b'\\', bytes.get(i..)?).map(|p| p + i)
}

/// The text of the JSON string `raw` (quotes included) when it needs no decoding: no
/// escape, no raw control character (JSON has none), valid UTF-8. `None` sends it to a
/// full JSON string reader, which decodes escapes or refuses it.
pub(crate) fn plain_string(raw: &[u8]) -> Option<&str> {
    match raw {
        [b'"', inner @ .., b'"'] if !inner.iter().any(|&b| b == b'\\' || b < 0x20) => {
            std::str::from_utf8(inner).ok()
        }
        _ => None,
    }
}

/// Calls `visit` with each member of the JSON object `json`: the key's bytes (without
/// its quotes) and the value's bytes. `None` when `json` is not an object this walk can
/// follow: an escaped key, a missing `:` or `,`, an unbalanced value, bytes after the
/// object, or `visit` returning `None`. Values are delimited, not validated: an object,
/// array or string by its balanced end, a number or literal by the next delimiter.
pub(crate) fn each_member<'a>(
    json: &'a [u8],
    mut visit: impl FnMut(&'a [u8], &'a [u8]) -> Option<()>,
) -> Option<()> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(json, i + 1);
    if json.get(i) == Some(&b'}') {
        return (skip_ws(json, i + 1) == json.len()).then_some(());
    }
    loop {
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let key_start = i + 1;
        let key_end = next_quote_or_backslash(json, key_start)?;
        if json[key_end] != b'"' {
            // An escaped key: serde's to decode.
            return None;
        }
        i = skip_ws(json, key_end + 1);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(json, i + 1);
        let end = match json.get(start)? {
            b'{' | b'[' | b'"' => value_end(json, start)?,
            _ => scalar_end(json, start),
        };
        if end == start {
            return None;
        }
        visit(&json[key_start..key_end], &json[start..end])?;
        i = skip_ws(json, end);
        match json.get(i)? {
            b',' => i = skip_ws(json, i + 1),
            b'}' => return (skip_ws(json, i + 1) == json.len()).then_some(()),
            _ => return None,
        }
    }
}

/// Index one past a number or literal starting at `start`.
fn scalar_end(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(bytes.len(), |n| start + n)
}

/// The last `"usage": {...}` object in `window` (e.g. the tail of a large body), as the
/// bytes of that object.
pub(crate) fn last_usage_object(window: &[u8]) -> Option<&[u8]> {
    let mut from = 0;
    let mut last = None;
    while let Some(at) = find(window, KEY, from) {
        from = at + KEY.len();
        if let Some(v) = member_value(window, at).filter(|&v| window.get(v) == Some(&b'{')) {
            if let Some(end) = value_end(window, v) {
                last = Some(&window[v..end]);
            }
        }
    }
    last
}

/// Removes a top-level `"usage": null` member from a JSON object text, as an upstream
/// asked for `include_usage` adds it to every chunk. `None` when there is none (the
/// usual case, checked without allocating).
pub(crate) fn remove_top_level_null_usage(json: &[u8]) -> Option<Vec<u8>> {
    let mut from = 0;
    let at = loop {
        let at = find(json, KEY, from)?;
        from = at + KEY.len();
        let Some(v) = member_value(json, at) else {
            continue;
        };
        if json.get(v..v + 4) == Some(b"null") && depth_at(json, at) == Some(1) {
            break (at, v + 4);
        }
    };
    let (key_at, null_end) = at;
    // Prefer removing the comma before the member; a first member takes the one after.
    let before = json[..key_at]
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    let (cut_start, cut_end) = if json[before] == b',' {
        (before, null_end)
    } else {
        let after = skip_ws(json, null_end);
        if json.get(after) == Some(&b',') {
            (key_at, skip_ws(json, after + 1))
        } else {
            (key_at, null_end)
        }
    };
    let mut out = Vec::with_capacity(json.len() - (cut_end - cut_start));
    out.extend_from_slice(&json[..cut_start]);
    out.extend_from_slice(&json[cut_end..]);
    Some(out)
}

/// Object/array nesting depth at byte `pos` (outside strings), `None` if `pos` is inside
/// a string. Steps over strings like [`value_end`]: it runs for every SSE event that
/// carries a `"usage": null`.
fn depth_at(bytes: &[u8], pos: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < pos {
        match bytes[i] {
            b'"' => {
                i = string_end(bytes, i)?;
                if i > pos {
                    return None;
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_usage_members() {
        assert_eq!(usage_member(br#"{"id":"x"}"#), UsageMember::Absent);
        assert_eq!(usage_member(br#"{"usage":null}"#), UsageMember::Null);
        assert_eq!(usage_member(br#"{"usage" : {"a":1}}"#), UsageMember::Object);
        assert_eq!(
            usage_member(br#"{"object":"usage","x":1}"#),
            UsageMember::Absent
        );
        // Text that mentions usage is escaped inside a string and never matches.
        let text = br#"{"content":"say \"usage\": {1}","usage":null}"#;
        assert_eq!(usage_member(text), UsageMember::Null);
    }

    #[test]
    fn string_end_agrees_with_a_byte_walk_at_every_length_and_escape() {
        fn walk(bytes: &[u8], start: usize) -> Option<usize> {
            let mut i = start + 1;
            loop {
                match bytes.get(i)? {
                    b'"' => return Some(i + 1),
                    b'\\' => i += 2,
                    _ => i += 1,
                }
            }
        }
        // 0xa2 and 0xdc are `"` and `\` with the high bit set (UTF-8 continuation and
        // lead bytes): never a match.
        for (len, fill) in (0..60).flat_map(|len| [(len, b'a'), (len, 0xa2), (len, 0xdc)]) {
            for escape_at in 0..=len {
                for escaped in [b'"', b'\\', b'n'] {
                    let mut text = vec![fill; len];
                    text.insert(escape_at, escaped);
                    text.insert(escape_at, b'\\');
                    let mut json = b"x\"".to_vec();
                    json.extend_from_slice(&text);
                    json.extend_from_slice(b"\"y\"");
                    assert_eq!(string_end(&json, 1), walk(&json, 1), "{json:?}");
                    assert_eq!(string_end(&json, 1), Some(json.len() - 2));
                    let unterminated = &json[..json.len() - 3];
                    assert_eq!(string_end(unterminated, 1), None, "{unterminated:?}");
                }
            }
        }
    }

    #[test]
    fn value_end_counts_brackets_outside_strings_only() {
        let json = br#"{"a":[{"b":"]}\"["},[1,{"c":[]}]],"d":"x\\","e":{}} tail"#;
        let end = value_end(json, 0).unwrap();
        assert_eq!(&json[end..], b" tail");
        serde_json::from_slice::<serde_json::Value>(&json[..end]).unwrap();
        let array_at = json.iter().position(|&b| b == b'[').unwrap();
        let array = &json[array_at..value_end(json, array_at).unwrap()];
        assert_eq!(array, br#"[{"b":"]}\"["},[1,{"c":[]}]]"#);
        let string_at = json.windows(3).position(|w| w == br#""x\"#).unwrap();
        assert_eq!(
            &json[string_at..value_end(json, string_at).unwrap()],
            br#""x\\""#
        );
        assert_eq!(value_end(br#"[1,[2]"#, 0), None);
        assert_eq!(value_end(br#"{"a":"}"#, 0), None);
        assert_eq!(value_end(b"12", 0), None);
    }

    #[test]
    fn cuts_the_last_usage_object_from_a_tail() {
        let tail = br#".5,0.25]}],"model":"m","usage":{"prompt_tokens":8,"nested":{"a":"}"}}}"#;
        assert_eq!(
            last_usage_object(tail),
            Some(&br#"{"prompt_tokens":8,"nested":{"a":"}"}}"#[..])
        );
        assert_eq!(last_usage_object(br#""usage":{"unterminated":1"#), None);
    }

    #[test]
    fn removes_only_a_top_level_null_usage() {
        let cases: [(&[u8], Option<&[u8]>); 8] = [
            (br#"{"id":"a","usage":null}"#, Some(br#"{"id":"a"}"#)),
            (br#"{"usage":null,"id":"a"}"#, Some(br#"{"id":"a"}"#)),
            (br#"{"id":"a", "usage": null }"#, Some(br#"{"id":"a" }"#)),
            (br#"{"id":"a","usage":{"prompt_tokens":1}}"#, None),
            (br#"{"choices":[{"usage":null}]}"#, None),
            (br#"{"content":"\"usage\":null"}"#, None),
            // An escaped backslash ends the string; an escaped quote does not.
            (
                br#"{"content":"a\\","usage":null}"#,
                Some(br#"{"content":"a\\"}"#),
            ),
            (br#"{"content":"a\",\"usage\":null}"}"#, None),
        ];
        for (input, want) in cases {
            let got = remove_top_level_null_usage(input);
            assert_eq!(
                got.as_deref(),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
