//! Workloads: the controller chain of a pod (pod -> ReplicaSet -> Deployment, or its Job,
//! StatefulSet or DaemonSet) and the workloads annotated `holysheep/inject` on their own
//! metadata instead of their pod template, where the webhook never sees it.
//!
//! What it does not do: judge pods (`analyze`).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::gather::Snapshot;
use super::report::{Workload, WorkloadOnly};
use crate::annotations;

/// The controller chain of pods: ReplicaSet -> Deployment, Job, StatefulSet, DaemonSet.
pub(super) struct Owners<'a> {
    replica_sets: HashMap<(&'a str, &'a str), Option<&'a OwnerReference>>,
}

impl<'a> Owners<'a> {
    pub(super) fn new(snap: &'a Snapshot) -> Self {
        let replica_sets = snap
            .replica_sets
            .iter()
            .filter_map(|rs| {
                let m = &rs.metadata;
                Some(((m.namespace.as_deref()?, m.name.as_deref()?), controller(m)))
            })
            .collect();
        Self { replica_sets }
    }

    pub(super) fn workload(&self, ns: &str, pod: &Pod) -> Workload {
        let Some(owner) = controller(&pod.metadata) else {
            return Workload {
                kind: "Pod".to_owned(),
                name: pod.metadata.name.clone().unwrap_or_default(),
            };
        };
        if owner.kind == "ReplicaSet"
            && let Some(Some(parent)) = self.replica_sets.get(&(ns, owner.name.as_str()))
            && parent.kind == "Deployment"
        {
            return Workload {
                kind: parent.kind.clone(),
                name: parent.name.clone(),
            };
        }
        Workload {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        }
    }
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// Workloads annotated on their own metadata, not on their pod template.
pub(super) fn annotated_on_workload_only(snap: &Snapshot) -> Vec<WorkloadOnly> {
    let mut found = Vec::new();
    let mut visit = |kind: &str, meta: &ObjectMeta, template: Option<&ObjectMeta>| {
        // Only an opt-in that went to the wrong place; "false" there asks for nothing.
        let on_self = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::INJECT))
            .is_some_and(|v| v == "true");
        let on_template = template
            .and_then(|t| t.annotations.as_ref())
            .is_some_and(|a| a.contains_key(annotations::INJECT));
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
            return;
        };
        if on_self && !on_template {
            let workload = Workload {
                kind: kind.to_owned(),
                name: name.to_owned(),
            };
            let fix = if kind == "Job" {
                format!(
                    "re-create job/{name} with the annotation under spec.template.metadata \
                     (a Job's template cannot change)"
                )
            } else {
                format!(
                    "kubectl patch {} -n {ns} --type merge -p \
                     '{{\"spec\":{{\"template\":{{\"metadata\":{{\"annotations\":{{\"{}\":\"true\"}}}}}}}}}}'",
                    workload.reference(),
                    annotations::INJECT
                )
            };
            found.push(WorkloadOnly {
                namespace: ns.to_owned(),
                workload,
                fix,
            });
        }
    };
    for d in &snap.deployments {
        let t = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
        visit("Deployment", &d.metadata, t);
    }
    for s in &snap.stateful_sets {
        let t = s.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
        visit("StatefulSet", &s.metadata, t);
    }
    for d in &snap.daemon_sets {
        let t = d.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
        visit("DaemonSet", &d.metadata, t);
    }
    for j in &snap.jobs {
        let t = j.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
        visit("Job", &j.metadata, t);
    }
    found
}
