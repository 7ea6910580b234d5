//! Model names as label values: [`ModelLabels`] lets through the names the operator
//! configured plus a small capped set of well-formed ids seen at run time, and folds
//! everything else into one value, so a client cannot create series or put text in a
//! label. It does not register or record metrics.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Label value for a model name that is neither configured nor among the first
/// [`EXTRA_MODEL_CAP`] well-formed names seen.
pub const OTHER_MODEL: &str = "other";
/// Label value when a request carries no model (e.g. `GET /v1/models`).
pub const NO_MODEL: &str = "none";
/// How many model names not known to the config may keep their own label value.
///
/// Client-chosen names are bounded so a client looping over random names cannot blow up
/// the number of series; past the cap they all fold into [`OTHER_MODEL`].
pub const EXTRA_MODEL_CAP: usize = 32;
/// Longest model name kept as a label value; longer names fold into [`OTHER_MODEL`].
pub const MAX_MODEL_LABEL_LEN: usize = 64;

/// A bounded model label value; obtain one from [`ModelLabels::label`].
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ModelName(Arc<str>);

impl ModelName {
    /// The label value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for ModelName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(&self.0)
    }
}

/// Turns client-supplied model names into bounded label values.
///
/// Configured names (aliases, their targets, fallbacks, prices) always keep their name;
/// the first [`EXTRA_MODEL_CAP`] other well-formed names too; everything else is
/// [`OTHER_MODEL`]. Well-formed means a short id of ASCII letters, digits and `.-_:/@`,
/// so a prompt pasted into the `model` field never becomes a label. The sets hash with
/// foldhash (seeded per process): they are read for every request.
#[derive(Debug)]
pub struct ModelLabels {
    known: ArcSwap<foldhash::HashSet<Arc<str>>>,
    extra: Mutex<foldhash::HashSet<Arc<str>>>,
    other: ModelName,
    none: ModelName,
}

impl Default for ModelLabels {
    fn default() -> Self {
        Self {
            known: ArcSwap::from_pointee(foldhash::HashSet::default()),
            extra: Mutex::new(foldhash::HashSet::default()),
            other: ModelName(Arc::from(OTHER_MODEL)),
            none: ModelName(Arc::from(NO_MODEL)),
        }
    }
}

impl ModelLabels {
    /// Replaces the configured model names (call on start and on every config reload).
    /// Names that are not well-formed are skipped.
    pub fn set_known<I, S>(&self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let set: foldhash::HashSet<Arc<str>> = names
            .into_iter()
            .filter(|name| is_well_formed(name.as_ref()))
            .map(|name| Arc::from(name.as_ref()))
            .collect();
        self.known.store(Arc::new(set));
    }

    /// The label value for a model name as found in a request or response.
    pub fn label(&self, model: Option<&str>) -> ModelName {
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return self.none.clone();
        };
        if let Some(name) = self.known.load().get(model) {
            return ModelName(Arc::clone(name));
        }
        if !is_well_formed(model) {
            return self.other.clone();
        }
        // A poisoned lock only means another thread panicked mid-insert; the set is
        // still a valid set, so keep using it rather than losing metrics.
        let mut extra = self.extra.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = extra.get(model) {
            return ModelName(Arc::clone(name));
        }
        if extra.len() >= EXTRA_MODEL_CAP {
            return self.other.clone();
        }
        let name: Arc<str> = Arc::from(model);
        extra.insert(Arc::clone(&name));
        ModelName(name)
    }
}

/// `model` itself when it is a well-formed model id, else `"<invalid>"`: what logs may
/// print of a client-supplied model name.
pub fn log_safe_model(model: &str) -> &str {
    if is_well_formed(model) {
        model
    } else {
        "<invalid>"
    }
}

fn is_well_formed(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= MAX_MODEL_LABEL_LEN
        && model.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/' | b'@')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_keep_their_name_and_junk_folds_into_other() {
        let labels = ModelLabels::default();
        labels.set_known(["gpt-4.1", "gpt-4"]);
        assert_eq!(labels.label(Some("gpt-4.1")).as_str(), "gpt-4.1");
        assert_eq!(labels.label(None).as_str(), NO_MODEL);
        assert_eq!(labels.label(Some("")).as_str(), NO_MODEL);
        assert_eq!(
            labels
                .label(Some("please summarise this contract"))
                .as_str(),
            OTHER_MODEL
        );
        assert_eq!(labels.label(Some(&"x".repeat(65))).as_str(), OTHER_MODEL);
        assert_eq!(labels.label(Some("a\"b")).as_str(), OTHER_MODEL);
    }

    #[test]
    fn unknown_model_names_are_capped() {
        let labels = ModelLabels::default();
        labels.set_known(["gpt-4.1"]);
        for i in 0..EXTRA_MODEL_CAP {
            let name = format!("model-{i}");
            assert_eq!(labels.label(Some(&name)).as_str(), name);
        }
        assert_eq!(labels.label(Some("model-0")).as_str(), "model-0");
        assert_eq!(labels.label(Some("one-too-many")).as_str(), OTHER_MODEL);
        // Configured names are never crowded out by the cap.
        assert_eq!(labels.label(Some("gpt-4.1")).as_str(), "gpt-4.1");
        labels.set_known(["late-addition"]);
        assert_eq!(
            labels.label(Some("late-addition")).as_str(),
            "late-addition"
        );
    }
}
