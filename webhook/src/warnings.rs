//! Warnings about a pod that is admitted anyway: one short line each, shown by `kubectl`
//! (the AdmissionReview `warnings`) and printed by `inject` on stderr. They cover what
//! would otherwise go silently wrong: a misspelt `holysheep/*` key, an app that keeps its
//! own OpenAI settings, a plain sidecar in a Job, an annotation on the wrong object.
//!
//! Kubernetes truncates long warnings and drops many: each line is kept under
//! [`MAX_CHARS`], names come shortened, and a list holds at most [`MAX_WARNINGS`] lines.
//! A warning never carries an annotation or env value, only keys and names.
//!
//! What it does not do: decide anything (`mutation` does, and asks for the lines here).

use std::collections::BTreeMap;

use crate::annotations::{self, KNOWN, PREFIX};

/// Lines per review at most; the last says how many more there were.
pub const MAX_WARNINGS: usize = 5;
/// Characters per line at most.
pub const MAX_CHARS: usize = 120;
/// Names quoted in a line are cut to this many characters.
const MAX_NAME_CHARS: usize = 40;
/// A key further than this from every known one gets no suggestion.
const MAX_DISTANCE: usize = 3;

/// The warnings of one review, in order, capped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Warnings(Vec<String>);

impl Warnings {
    /// Adds a line (cut to [`MAX_CHARS`]).
    pub fn push(&mut self, line: String) {
        self.0.push(cut(&line, MAX_CHARS));
    }

    /// The lines, at most [`MAX_WARNINGS`], the last one counting those left out.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.0.len() > MAX_WARNINGS {
            let more = self.0.len() - (MAX_WARNINGS - 1);
            self.0.truncate(MAX_WARNINGS - 1);
            self.0
                .push(format!("holysheep: {more} more warnings not shown"));
        }
        self.0
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One line per `holysheep/*` key that this webhook does not know, with the closest known
/// key when one is near.
pub fn unknown_annotations(annotations: &BTreeMap<String, String>, warnings: &mut Warnings) {
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        if KNOWN.contains(&key.as_str()) {
            continue;
        }
        let shown = cut(key, MAX_NAME_CHARS);
        warnings.push(match closest(key) {
            Some(known) => format!("unknown annotation {shown} is ignored: did you mean {known}?"),
            None => format!("unknown annotation {shown} is ignored: not a holysheep/* setting"),
        });
    }
}

/// An app container whose own base URL bypasses the sidecar (it keeps its key, if any,
/// and gets no placeholder).
pub fn own_base_url(container: &str, warnings: &mut Warnings) {
    let name = cut(container, MAX_NAME_CHARS);
    warnings.push(format!(
        "container {name:?} sets its own OPENAI_BASE_URL/OPENAI_API_BASE: it bypasses the sidecar"
    ));
}

/// An app container with its own key and the sidecar's base URL.
pub fn own_api_key(container: &str, warnings: &mut Warnings) {
    let name = cut(container, MAX_NAME_CHARS);
    warnings.push(format!(
        "container {name:?} sets OPENAI_API_KEY: unused, the sidecar sends the HolySheep key"
    ));
}

/// A plain (non-native) sidecar in a Job's pod, asked for by the annotation or by the
/// webhook's `--native-sidecar=false`.
pub fn plain_sidecar_in_job(from_annotation: bool, warnings: &mut Warnings) {
    warnings.push(if from_annotation {
        format!(
            "{}: \"false\" in a Job's pod: the plain sidecar never exits, so the Job never completes",
            annotations::NATIVE_SIDECAR
        )
    } else {
        format!(
            "--native-sidecar=false in a Job's pod: the plain sidecar never exits; set {}: \"true\"",
            annotations::NATIVE_SIDECAR
        )
    });
}

/// `holysheep/inject` on a workload's own metadata but not on its pod template (`inject`).
pub fn inject_on_workload(kind: &str, warnings: &mut Warnings) {
    let kind = cut(kind, MAX_NAME_CHARS);
    warnings.push(format!(
        "{} is on the {kind}'s metadata, not its pod template: move it to the template",
        annotations::INJECT
    ));
}

/// A `holysheep/*` annotation written as a YAML boolean or number (`inject`); `value` is
/// that scalar, as text.
pub fn unquoted(key: &str, value: &str, warnings: &mut Warnings) {
    let key = cut(key, MAX_NAME_CHARS);
    let value = cut(value, 20);
    warnings.push(format!(
        "{key}: {value} is not a string: quote it (\"{value}\"); kubectl apply refuses it unquoted"
    ));
}

/// The known key nearest to `key` by edit distance, if near enough.
pub fn closest(key: &str) -> Option<&'static str> {
    // Keys are short; a huge one is compared on its start only, so the cost stays bounded.
    let key: String = key.chars().take(64).collect();
    KNOWN
        .iter()
        .map(|known| (levenshtein(&key, known), *known))
        .filter(|(distance, _)| *distance <= MAX_DISTANCE)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// Edit distance (insertions, deletions, substitutions) between two strings, by chars.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// At most `max` characters of `text`, with `...` when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(3)) {
        Some((end, _)) if text.chars().count() > max => format!("{}...", &text[..end]),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::port("holysheep/prot", Some("holysheep/port"))]
    #[case::inject("holysheep/injct", Some("holysheep/inject"))]
    #[case::native("holysheep/native-sidecars", Some("holysheep/native-sidecar"))]
    #[case::secret_key("holysheep/secretkey", Some("holysheep/secret-key"))]
    #[case::far("holysheep/completely-different", None)]
    fn closest_known_key(#[case] key: &str, #[case] want: Option<&str>) {
        assert_eq!(closest(key), want);
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
        assert_eq!(levenshtein("é", "e"), 1);
    }

    #[test]
    fn unknown_keys_warn_and_known_or_foreign_ones_do_not() {
        let annotations: BTreeMap<String, String> = [
            ("holysheep/prot", "8081"),
            ("holysheep/port", "8081"),
            ("holysheep/status", "injected"),
            ("other/prot", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut warnings = Warnings::default();
        unknown_annotations(&annotations, &mut warnings);
        assert_eq!(
            warnings.into_lines(),
            ["unknown annotation holysheep/prot is ignored: did you mean holysheep/port?"]
        );
    }

    #[test]
    fn lines_are_short_and_few() {
        let mut warnings = Warnings::default();
        let long = format!("holysheep/{}", "é".repeat(500));
        for _ in 0..20 {
            unknown_annotations(&[(long.clone(), String::new())].into(), &mut warnings);
            own_base_url(&"c".repeat(300), &mut warnings);
        }
        plain_sidecar_in_job(true, &mut warnings);
        inject_on_workload("Deployment", &mut warnings);
        unquoted("holysheep/inject", "true", &mut warnings);
        let lines = warnings.into_lines();
        assert_eq!(lines.len(), MAX_WARNINGS);
        assert_eq!(
            lines[MAX_WARNINGS - 1],
            "holysheep: 39 more warnings not shown"
        );
        for line in &lines {
            assert!(line.chars().count() <= MAX_CHARS, "{line}");
        }
        let mut fixed = Warnings::default();
        plain_sidecar_in_job(true, &mut fixed);
        plain_sidecar_in_job(false, &mut fixed);
        inject_on_workload("CronJob", &mut fixed);
        unquoted("holysheep/native-sidecar", "false", &mut fixed);
        own_api_key(&"c".repeat(63), &mut fixed);
        for line in fixed.into_lines() {
            assert!(!line.ends_with("..."), "cut: {line}");
        }
    }
}
