//! Model allow and deny lists (`models.allow`, `models.deny`): glob patterns checked
//! against the model sent upstream, after aliases, and against fallback and downgrade
//! targets. A deny match wins; a non-empty allow list admits only what it matches.
//!
//! Not here: the 403 body (error.rs), filtering `/v1/models` answers (proxy.rs calls
//! [`ModelPolicy::filter_list`]).

use bytes::Bytes;
use glob::Pattern;
use serde_json::Value;

/// One pattern as written, with its compiled form.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The pattern as written in the config.
    pub text: String,
    pattern: Pattern,
}

impl Rule {
    /// Compiles `text`; the error says why it is not a glob.
    pub fn new(text: &str) -> Result<Self, String> {
        Pattern::new(text)
            .map(|pattern| Self {
                text: text.to_owned(),
                pattern,
            })
            .map_err(|e| format!("{text:?} is not a glob pattern ({e}); use *, ? and [...]"))
    }

    fn matches(&self, model: &str) -> bool {
        self.pattern.matches(model)
    }
}

/// The `models` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPolicy {
    /// Only these models (when not empty).
    pub allow: Vec<Rule>,
    /// Never these models.
    pub deny: Vec<Rule>,
}

/// A model the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "model {model:?} is not allowed by {rule}; send an allowed model or edit the models section of the config"
)]
pub struct ModelNotAllowed {
    /// The model refused (as it would have been sent upstream).
    pub model: String,
    /// The rule that refused it, e.g. `models.deny[0] "gpt-4*"`.
    pub rule: String,
}

impl ModelPolicy {
    /// Whether any list is set (else everything passes untouched).
    pub fn is_active(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// Admits or refuses `model`, naming the rule that refused it.
    pub fn check(&self, model: &str) -> Result<(), ModelNotAllowed> {
        if let Some((i, rule)) = self.deny.iter().enumerate().find(|(_, r)| r.matches(model)) {
            return Err(ModelNotAllowed {
                model: model.to_owned(),
                rule: format!("models.deny[{i}] {:?}", rule.text),
            });
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.matches(model)) {
            return Err(ModelNotAllowed {
                model: model.to_owned(),
                rule: "models.allow (no pattern matches it)".to_owned(),
            });
        }
        Ok(())
    }

    /// Whether `model` passes.
    pub fn allows(&self, model: &str) -> bool {
        self.check(model).is_ok()
    }

    /// A `/v1/models` list body with the refused models taken out of `data`; `None` when
    /// the body is not such a list (it is then passed on as it came).
    pub fn filter_list(&self, body: &[u8]) -> Option<Bytes> {
        let mut json: Value = serde_json::from_slice(body).ok()?;
        let data = json.get_mut("data")?.as_array_mut()?;
        data.retain(|entry| {
            entry
                .get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| self.allows(id))
        });
        serde_json::to_vec(&json).ok().map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> ModelPolicy {
        let rules = |list: &[&str]| list.iter().map(|t| Rule::new(t).unwrap()).collect();
        ModelPolicy {
            allow: rules(allow),
            deny: rules(deny),
        }
    }

    #[test]
    fn deny_wins_and_allow_limits() {
        let p = policy(&["gpt-4.1*", "deepseek-*"], &["deepseek-r1*"]);
        assert!(p.allows("gpt-4.1"));
        assert!(p.allows("gpt-4.1-mini"));
        assert!(p.allows("deepseek-chat-v3-0324"));
        let err = p.check("deepseek-r1-0528").unwrap_err();
        assert_eq!(err.rule, "models.deny[0] \"deepseek-r1*\"");
        let err = p.check("claude-sonnet-4.5").unwrap_err();
        assert!(err.rule.starts_with("models.allow"), "{err}");
        assert!(policy(&[], &[]).allows("anything"));
        assert!(!policy(&[], &[]).is_active());
    }

    #[test]
    fn model_lists_keep_only_allowed_ids() {
        let p = policy(&["gpt-*"], &[]);
        let body = br#"{"object":"list","data":[{"id":"gpt-4.1"},{"id":"o3"},{"x":1}]}"#;
        let out: Value = serde_json::from_slice(&p.filter_list(body).unwrap()).unwrap();
        assert_eq!(out["data"], serde_json::json!([{"id": "gpt-4.1"}]));
        assert_eq!(out["object"], "list");
        assert!(p.filter_list(b"not json").is_none());
    }
}
