//! Evaluates a Kubernetes `LabelSelector` (the webhook configuration's
//! `namespaceSelector` and `objectSelector`) against a label map, as kube-apiserver does
//! when it decides whether to call the webhook.
//!
//! What it does not do: parse the string form (`a=b,c in (d)`): only the structured form
//! appears in webhook configurations.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector`. An absent or empty selector matches everything; an
/// unknown operator matches nothing (kube-apiserver refuses such a configuration).
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_manifest_selectors() {
        let ns: LabelSelector = serde_json::from_value(json!({"matchExpressions": [
            {"key": "holysheep-injection", "operator": "In", "values": ["enabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["holysheep-system", "kube-system"]}
        ]}))
        .unwrap();
        let shop = labels(&[
            ("holysheep-injection", "enabled"),
            ("kubernetes.io/metadata.name", "shop"),
        ]);
        assert!(matches(Some(&ns), &shop));
        let system = labels(&[
            ("holysheep-injection", "enabled"),
            ("kubernetes.io/metadata.name", "kube-system"),
        ]);
        assert!(!matches(Some(&ns), &system));
        assert!(!matches(Some(&ns), &labels(&[])));
        let obj: LabelSelector = serde_json::from_value(json!({"matchExpressions": [
            {"key": "holysheep-injection", "operator": "NotIn", "values": ["disabled"]}
        ]}))
        .unwrap();
        assert!(matches(Some(&obj), &labels(&[])));
        assert!(!matches(
            Some(&obj),
            &labels(&[("holysheep-injection", "disabled")])
        ));
        assert!(matches(None, &labels(&[])));
        let exists: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"a": "b"},
            "matchExpressions": [{"key": "c", "operator": "Exists"}, {"key": "d", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert!(matches(Some(&exists), &labels(&[("a", "b"), ("c", "")])));
        assert!(!matches(
            Some(&exists),
            &labels(&[("a", "b"), ("c", ""), ("d", "")])
        ));
        assert!(!matches(Some(&exists), &labels(&[("a", "x"), ("c", "")])));
    }
}
