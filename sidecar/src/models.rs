//! Model aliases and fallbacks: pure lookups, plus the rewrite of the JSON `model` field.
//!
//! What it does: finds the top-level `model` string of a JSON request body (its exact
//! byte span, via `serde_json::value::RawValue`), resolves it through the alias table
//! (one step, exact names), and splices a new value into that span. Everything outside
//! the span is copied byte for byte; when no alias applies the ORIGINAL `Bytes` are
//! returned untouched (no copy at all).
//!
//! What it does not do: I/O, or any change other than the `model` value. A body that is
//! not a JSON object, has no `model` string, or repeats the `model` key is left alone:
//! the upstream decides what to answer.

use crate::config::ModelMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The `model` field found in a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelField {
    /// The decoded model name, shared by the steps that follow it (metrics, retries,
    /// fallbacks) without a copy each.
    pub name: Arc<str>,
    /// Byte range of the JSON string (quotes included) in the body.
    pub span: Range<usize>,
}

/// A JSON body after alias resolution.
#[derive(Debug, Clone)]
pub struct Remapped {
    /// The body to send (the original bytes when unchanged).
    pub body: Bytes,
    /// The model the client asked for, when the body names one.
    pub requested: Option<Arc<str>>,
    /// The model sent upstream (equal to `requested` when no alias applied).
    pub sent: Option<ModelField>,
}

#[derive(Deserialize)]
struct TopLevel<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
}

/// Finds the top-level `"model": "<string>"` of a JSON object body.
///
/// By a walk over the body's members first ([`crate::usage::scan::each_member`]): only
/// the `model` value is parsed, the messages are stepped over (the full parse was a
/// third of the request side's own work, callgrind). What the walk cannot follow goes
/// to the full parse. So a body whose `model` is fine but whose other values are not
/// valid JSON is still remapped; the upstream answers it as it would have.
pub fn find_model(body: &[u8]) -> Option<ModelField> {
    let mut value = None;
    let walked = crate::usage::scan::each_member(body, |key, v| {
        if key == b"model" {
            // A repeated key: the full parse refuses the body.
            return value.replace(v).is_none().then_some(());
        }
        Some(())
    });
    match (walked, value) {
        (Some(()), None) => None,
        (Some(()), Some(raw)) => model_field(body, raw),
        (None, _) => find_model_whole(body),
    }
}

/// The model named by `raw`, a value inside `body`, and its span; `None` when it is not
/// a string.
fn model_field(body: &[u8], raw: &[u8]) -> Option<ModelField> {
    // Taken as it is when it needs no decoding (one allocation, for the `Arc`; no serde
    // string reader on the request path), decoded otherwise.
    let name: Arc<str> = match crate::usage::scan::plain_string(raw) {
        Some(name) => name.into(),
        None => serde_json::from_slice::<String>(raw).ok()?.into(),
    };
    // `raw` borrows from `body`, so its address gives its offset in the body.
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let span = start..start + raw.len();
    (span.end <= body.len()).then_some(ModelField { name, span })
}

/// [`find_model`] by serde over the whole body.
fn find_model_whole(body: &[u8]) -> Option<ModelField> {
    let top: TopLevel<'_> = serde_json::from_slice(body).ok()?;
    model_field(body, top.model?.get().as_bytes())
}

/// The alias target for `model`, if the table has one that changes it.
pub fn resolve_alias<'a>(aliases: &'a ModelMap<String>, model: &str) -> Option<&'a str> {
    aliases
        .get(model)
        .map(String::as_str)
        .filter(|to| *to != model)
}

/// The fallback models for `model`, in order (empty when none are configured).
pub fn fallbacks_for<'a>(fallbacks: &'a ModelMap<Vec<String>>, model: &str) -> &'a [String] {
    fallbacks.get(model).map(Vec::as_slice).unwrap_or(&[])
}

/// Returns a copy of `body` with the value at `field.span` replaced by `model` (as a JSON
/// string) and the new field's span.
pub fn set_model(body: &[u8], field: &ModelField, model: &str) -> (Bytes, ModelField) {
    // Model names are plain strings; serializing a &str cannot fail, but stay total.
    let value = serde_json::to_string(model).unwrap_or_else(|_| format!("\"{model}\""));
    let mut out = BytesMut::with_capacity(body.len() - field.span.len() + value.len());
    out.extend_from_slice(&body[..field.span.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[field.span.end..]);
    let span = field.span.start..field.span.start + value.len();
    (
        out.freeze(),
        ModelField {
            name: model.into(),
            span,
        },
    )
}

/// Applies the alias table to a JSON request body.
pub fn remap(body: Bytes, aliases: &ModelMap<String>) -> Remapped {
    let Some(field) = find_model(&body) else {
        return Remapped {
            body,
            requested: None,
            sent: None,
        };
    };
    match resolve_alias(aliases, &field.name) {
        None => Remapped {
            requested: Some(field.name.clone()),
            sent: Some(field),
            body,
        },
        Some(target) => {
            let (new_body, sent) = set_model(&body, &field, target);
            Remapped {
                body: new_body,
                requested: Some(field.name),
                sent: Some(sent),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn aliases() -> ModelMap<String> {
        Config::default().aliases
    }

    #[test]
    fn aliased_model_is_rewritten_and_nothing_else() {
        let body = br#"{ "messages":[{"role":"user","content":"model: gpt-4"}],  "model" : "gpt-4","n":1}"#;
        let out = remap(Bytes::from_static(body), &aliases());
        let want = br#"{ "messages":[{"role":"user","content":"model: gpt-4"}],  "model" : "gpt-4.1","n":1}"#;
        assert_eq!(&out.body[..], &want[..]);
        assert_eq!(out.requested.as_deref(), Some("gpt-4"));
        let sent = out.sent.unwrap();
        assert_eq!(&*sent.name, "gpt-4.1");
        assert_eq!(&out.body[sent.span], br#""gpt-4.1""#);
    }

    #[test]
    fn unaliased_body_is_the_same_allocation() {
        let body = Bytes::from_static(br#"{"model":"gpt-4.1","x":[1, 2 ,3]}"#);
        let out = remap(body.clone(), &aliases());
        assert_eq!(
            out.body.as_ptr(),
            body.as_ptr(),
            "no copy when nothing changes"
        );
        assert_eq!(out.requested.as_deref(), Some("gpt-4.1"));
    }

    #[test]
    fn only_the_top_level_model_counts() {
        let body = br#"{"tools":[{"model":"gpt-4"}],"input":"hi"}"#;
        assert_eq!(find_model(body), None);
        let out = remap(Bytes::from_static(body), &aliases());
        assert_eq!(&out.body[..], &body[..]);
    }

    #[test]
    fn odd_bodies_are_left_alone() {
        for body in [
            &b"not json"[..],
            br#"[{"model":"gpt-4"}]"#,
            br#"{"model":42}"#,
            br#"{"model":"gpt-4","model":"flash"}"#,
            br#"{"model":"gpt-4""#,
            b"",
        ] {
            let out = remap(Bytes::copy_from_slice(body), &aliases());
            assert_eq!(&out.body[..], body, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn escaped_names_are_decoded_and_targets_escaped() {
        let mut table = ModelMap::default();
        table.insert("a/b".to_owned(), "say \"hi\"".to_owned());
        let out = remap(Bytes::from_static(br#"{"model":"a\/b"}"#), &table);
        assert_eq!(&out.body[..], br#"{"model":"say \"hi\""}"#);
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["model"], "say \"hi\"");
    }

    #[test]
    fn the_member_walk_finds_what_the_full_parse_finds() {
        for body in [
            &br#"{"model":"gpt-4","messages":[{"role":"user","content":"\"model\":\"x\" {]"}]}"#[..],
            br#" { "stream" : true , "model" : "a\/b" } "#,
            br#"{"messages":[],"model":null}"#,
            br#"{"mod\u0065l":"escaped-key"}"#,
            br#"{"n":1.5e3,"t":true,"model":"m","x":[1,{"model":"inner"}]}"#,
            br#"{"model":"gpt-4"} trailing"#,
        ] {
            let text = String::from_utf8_lossy(body);
            assert_eq!(find_model(body), find_model_whole(body), "{text}");
        }
        assert_eq!(
            find_model(br#"{"mod\u0065l":"escaped-key"}"#).map(|f| f.name),
            Some("escaped-key".into())
        );
    }

    #[test]
    fn self_alias_means_no_rewrite() {
        let mut table = ModelMap::default();
        table.insert("gpt-4".to_owned(), "gpt-4".to_owned());
        assert_eq!(resolve_alias(&table, "gpt-4"), None);
    }

    #[test]
    fn set_model_for_fallbacks_updates_the_span() {
        let body = br#"{"model":"gpt-4.1","stream":true}"#;
        let field = find_model(body).unwrap();
        let (b2, f2) = set_model(body, &field, "deepseek-chat-v3-0324");
        let (b3, _) = set_model(&b2, &f2, "x");
        assert_eq!(&b3[..], br#"{"model":"x","stream":true}"#);
        let mut fb = ModelMap::default();
        fb.insert("gpt-4.1".to_owned(), vec!["d".to_owned()]);
        assert_eq!(fallbacks_for(&fb, "gpt-4.1"), ["d".to_owned()]);
        assert!(fallbacks_for(&fb, "other").is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                "[a-z \\\\\"é\n/]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn model() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("gpt-4".to_owned()),
                Just("claude".to_owned()),
                Just("gpt-4.1".to_owned()),
                "[a-zA-Z0-9./\\-\"\\\\]{0,16}",
            ]
        }

        proptest! {
            /// Only the top-level `model` value changes, to the alias target; every
            /// byte outside it is kept; without an alias the body is untouched.
            #[test]
            fn only_the_model_value_changes(
                fields in prop::collection::btree_map("[a-z_]{1,8}", json(), 0..6),
                name in model(),
                pretty in any::<bool>(),
            ) {
                let mut doc: serde_json::Map<String, Value> = fields.into_iter().collect();
                doc.insert("model".to_owned(), Value::from(name.clone()));
                let doc = Value::Object(doc);
                let input = if pretty {
                    serde_json::to_vec_pretty(&doc).unwrap()
                } else {
                    serde_json::to_vec(&doc).unwrap()
                };
                // The member walk and the full parse find the same field.
                prop_assert_eq!(find_model(&input), find_model_whole(&input));
                let table = aliases();
                let out = remap(Bytes::from(input.clone()), &table);
                prop_assert_eq!(out.requested.as_deref(), Some(name.as_str()));
                match resolve_alias(&table, &name) {
                    None => prop_assert_eq!(&out.body[..], &input[..]),
                    Some(target) => {
                        let mut want = doc.clone();
                        want["model"] = Value::from(target);
                        let got: Value = serde_json::from_slice(&out.body).unwrap();
                        prop_assert_eq!(got, want);
                        let old = find_model(&input).unwrap().span;
                        let new = out.sent.unwrap().span;
                        prop_assert_eq!(&out.body[..new.start], &input[..old.start]);
                        prop_assert_eq!(&out.body[new.end..], &input[old.end..]);
                    }
                }
            }
        }
    }
}
