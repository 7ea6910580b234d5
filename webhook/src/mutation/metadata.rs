//! What injection writes in the pod's metadata: the marker, the stamps, the Prometheus
//! scrape hints, the default container and the `holysheep.ai/injected` label.
//!
//! It does not decide whether to inject (`mutation`).

use std::collections::BTreeMap;

use json_patch::PatchOperation;
use serde_json::Value;

use super::{SpecFacts, add};
use crate::annotations;
use crate::sidecar::SidecarSpec;
use crate::stamps;

/// The marker, stamps, Prometheus scrape hints and default container, each only when
/// absent (the marker and the stamps are always written).
pub(super) fn annotate(
    ops: &mut Vec<PatchOperation>,
    existing: Option<&BTreeMap<String, String>>,
    spec: &SpecFacts,
    sidecar: &SidecarSpec,
) {
    let mut wanted = vec![
        (annotations::STATUS, annotations::STATUS_INJECTED.to_owned()),
        (
            annotations::SIDECAR_VERSION,
            stamps::sidecar_version(&sidecar.image),
        ),
        (annotations::INJECTED_CONFIG, stamps::config_hash(sidecar)),
        (annotations::PROMETHEUS_SCRAPE, "true".to_owned()),
        (annotations::PROMETHEUS_PORT, sidecar.admin_port.to_string()),
        (annotations::PROMETHEUS_PATH, "/metrics".to_owned()),
    ];
    if let Some(first_app) = spec.containers.kept.first() {
        wanted.push((annotations::DEFAULT_CONTAINER, first_app.name.clone()));
    }
    match existing {
        None => {
            let map: serde_json::Map<String, Value> = wanted
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect();
            ops.push(add(&["metadata", "annotations"], Value::Object(map)));
        }
        Some(existing) => {
            for (key, value) in wanted {
                let always = matches!(
                    key,
                    annotations::STATUS
                        | annotations::SIDECAR_VERSION
                        | annotations::INJECTED_CONFIG
                );
                if always || !existing.contains_key(key) {
                    ops.push(add(&["metadata", "annotations", key], Value::String(value)));
                }
            }
        }
    }
}

/// The label monitors select injected pods by: the whole map when the pod has none.
pub(super) fn label(ops: &mut Vec<PatchOperation>, has_labels: bool) {
    let value = Value::String("true".to_owned());
    if has_labels {
        ops.push(add(
            &["metadata", "labels", annotations::INJECTED_LABEL],
            value,
        ));
    } else {
        let map = serde_json::Map::from_iter([(annotations::INJECTED_LABEL.to_owned(), value)]);
        ops.push(add(&["metadata", "labels"], Value::Object(map)));
    }
}
