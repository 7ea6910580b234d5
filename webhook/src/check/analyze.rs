//! The pure part of `check`: from a [`Snapshot`] and the clock to a [`Report`].
//!
//! For every running pod (phase not Succeeded/Failed) in scope it asks:
//! - annotated `holysheep/inject: "true"` without the sidecar? Then why, in this order:
//!   namespace not labelled, namespace not selected by the webhook's namespaceSelector,
//!   pod excluded by its objectSelector, no webhook configuration, pod older than the
//!   configuration or the webhook Deployment (installed after it), Deployment not
//!   Available at the pod's creation (down at the time), else unknown;
//! - injected, but with other stamps than the webhook would write now for its
//!   annotations? Then its workload (pod -> ReplicaSet -> Deployment) gets a restart.
//!
//! It also flags Deployments, StatefulSets, DaemonSets and Jobs annotated
//! `holysheep/inject` on their own metadata but not on their pod template (`workloads`).
//!
//! What it does not do: I/O.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use time::OffsetDateTime;

use super::expected::{self, WebhookSettings};
use super::gather::Snapshot;
use super::report::{
    API_VERSION, ExpectedStamps, NamespaceSummary, NotInjected, Report, StalePod, StaleWorkload,
    Workload,
};
use super::{
    CheckOptions, INJECTION_ENABLED, INJECTION_LABEL, health, rfc3339, selector, workloads,
};
use crate::annotations;
use crate::sidecar;

/// The report for `snap`. `settings` is what the webhook injects now, or why that is
/// unknown (then no pod is judged stale).
pub fn analyze(
    snap: &Snapshot,
    opts: &CheckOptions,
    settings: Result<WebhookSettings, String>,
    now: OffsetDateTime,
) -> Report {
    let mut webhook = health::webhook_health(snap, opts, now);
    let mut notes = Vec::new();
    let settings = match settings {
        Ok(found) => {
            for env in &found.unresolved_env {
                notes.push(format!(
                    "the webhook Deployment sets {env} from a ConfigMap or Secret, which \
                     check cannot read: the expected stamps assume its default"
                ));
            }
            if let Ok(stamps) = expected::stamps_for(&BTreeMap::new(), &found.settings) {
                webhook.expected = Some(ExpectedStamps {
                    settings_from: format!("deployment/{} args and env", opts.webhook_deployment),
                    sidecar_image: found.settings.image.clone(),
                    sidecar_version: stamps.sidecar_version,
                    injected_config: stamps.injected_config,
                });
            }
            Some(found.settings)
        }
        Err(message) => {
            if snap.webhook_deployment.is_some() {
                webhook.problems.push(super::report::Problem {
                    code: "settings-unreadable",
                    message: format!("{message}; stale sidecars cannot be judged"),
                });
            }
            None
        }
    };

    let namespace_labels: HashMap<&str, BTreeMap<String, String>> = snap
        .namespaces
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, labels(&n.metadata))))
        .collect();
    let hook = snap
        .webhook_config
        .as_ref()
        .and_then(|c| c.webhooks.as_ref()?.first());
    let mut summaries: BTreeMap<String, NamespaceSummary> = BTreeMap::new();
    for (name, labels) in &namespace_labels {
        if labels.get(INJECTION_LABEL).map(String::as_str) == Some(INJECTION_ENABLED) {
            summaries.insert(
                (*name).to_owned(),
                NamespaceSummary {
                    name: (*name).to_owned(),
                    selected: hook
                        .is_none_or(|h| selector::matches(h.namespace_selector.as_ref(), labels)),
                    annotated_pods: 0,
                    injected_pods: 0,
                    stale_pods: 0,
                },
            );
        }
    }

    let owners = workloads::Owners::new(snap);
    let mut not_injected = Vec::new();
    let mut stale: BTreeMap<(String, Workload), Vec<StalePod>> = BTreeMap::new();
    for pod in snap.pods.iter().filter(|p| running(p)) {
        let meta = &pod.metadata;
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
            continue;
        };
        let pod_annotations = meta.annotations.clone().unwrap_or_default();
        let requested = annotations::injection(&pod_annotations)
            .is_ok_and(|i| i == annotations::Injection::Requested);
        let injected = annotations::is_marked_injected(&pod_annotations) || has_sidecar(pod);
        let summary = summaries.get_mut(ns);
        if let Some(s) = summary {
            s.annotated_pods += usize::from(requested);
            s.injected_pods += usize::from(injected);
        }
        if requested && !injected {
            let workload = owners.workload(ns, pod);
            let ns_labels = namespace_labels.get(ns).cloned().unwrap_or_default();
            not_injected.push(why_not(snap, opts, pod, ns, name, workload, &ns_labels));
        }
        let Some(settings) = settings.as_ref().filter(|_| injected) else {
            continue;
        };
        match expected::stamps_for(&pod_annotations, settings) {
            Ok(want) => {
                let have_version = pod_annotations.get(annotations::SIDECAR_VERSION);
                let have_config = pod_annotations.get(annotations::INJECTED_CONFIG);
                if have_version != Some(&want.sidecar_version)
                    || have_config != Some(&want.injected_config)
                {
                    if let Some(s) = summaries.get_mut(ns) {
                        s.stale_pods += 1;
                    }
                    stale
                        .entry((ns.to_owned(), owners.workload(ns, pod)))
                        .or_default()
                        .push(StalePod {
                            name: name.to_owned(),
                            sidecar_version: have_version.cloned(),
                            injected_config: have_config.cloned(),
                            expected_sidecar_version: want.sidecar_version,
                            expected_injected_config: want.injected_config,
                        });
                }
            }
            Err(e) => notes.push(format!(
                "pod {ns}/{name}: cannot compute its expected stamps ({e})"
            )),
        }
    }

    let stale: Vec<StaleWorkload> = stale
        .into_iter()
        .map(|((namespace, workload), mut pods)| {
            pods.sort_by(|a, b| a.name.cmp(&b.name));
            let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
            let fix = workload.restart(&namespace, &names);
            StaleWorkload {
                namespace,
                workload,
                pods,
                fix,
            }
        })
        .collect();
    let mut workload_only = workloads::annotated_on_workload_only(snap);
    // Stable output: sorted by namespace, then pod or workload.
    not_injected.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    workload_only.sort_by(|a, b| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)));
    let mut report = Report {
        api_version: API_VERSION,
        namespace: opts.namespace.clone(),
        webhook,
        namespaces: summaries.into_values().collect(),
        not_injected,
        workload_only,
        stale,
        notes,
        needs_action: false,
    };
    report.needs_action = report.action_count() > 0;
    report
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == sidecar::CONTAINER_NAME)
    })
}

fn created(meta: &ObjectMeta) -> Option<OffsetDateTime> {
    meta.creation_timestamp.as_ref().map(time_of)
}

fn time_of(t: &Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.0.as_second()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn why_not(
    snap: &Snapshot,
    opts: &CheckOptions,
    pod: &Pod,
    ns: &str,
    name: &str,
    workload: Workload,
    ns_labels: &BTreeMap<String, String>,
) -> NotInjected {
    let restart = workload.restart(ns, &[name]);
    let mut finding = NotInjected {
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        workload,
        created_at: rfc3339(pod.metadata.creation_timestamp.as_ref()),
        reason: "unknown",
        detail: String::new(),
        evidence: None,
        fix: format!("then {restart}"),
    };
    let fixed_by = |finding: &mut NotInjected, reason, detail: String, first: String| {
        finding.reason = reason;
        finding.detail = detail;
        finding.fix = format!("{first}, then {restart}");
    };
    let hook = snap
        .webhook_config
        .as_ref()
        .and_then(|c| c.webhooks.as_ref()?.first());
    if ns_labels.get(INJECTION_LABEL).map(String::as_str) != Some(INJECTION_ENABLED) {
        fixed_by(
            &mut finding,
            "namespace-not-labelled",
            format!("namespace {ns} is not labelled {INJECTION_LABEL}={INJECTION_ENABLED}"),
            format!("kubectl label namespace {ns} {INJECTION_LABEL}={INJECTION_ENABLED}"),
        );
        return finding;
    }
    if let Some(h) = hook
        && !selector::matches(h.namespace_selector.as_ref(), ns_labels)
    {
        fixed_by(
            &mut finding,
            "namespace-not-selected",
            format!(
                "the namespaceSelector of MutatingWebhookConfiguration {} excludes namespace \
                 {ns} (the webhook's own namespace and kube-system are never injected)",
                opts.webhook_config
            ),
            "run the workload in another namespace".to_owned(),
        );
        return finding;
    }
    if let Some(h) = hook
        && !selector::matches(h.object_selector.as_ref(), &labels(&pod.metadata))
    {
        fixed_by(
            &mut finding,
            "opted-out-by-label",
            format!(
                "the pod's labels are excluded by the objectSelector of \
                 MutatingWebhookConfiguration {} (label {INJECTION_LABEL}=disabled?)",
                opts.webhook_config
            ),
            format!("remove the label {INJECTION_LABEL} from the pod template"),
        );
        return finding;
    }
    let Some(config) = snap.webhook_config.as_ref() else {
        fixed_by(
            &mut finding,
            "webhook-not-installed",
            format!(
                "MutatingWebhookConfiguration {} does not exist",
                opts.webhook_config
            ),
            "install the webhook: kubectl apply -k manifests/".to_owned(),
        );
        return finding;
    };
    let pod_created = created(&pod.metadata);
    let restart_only = format!("the webhook is up now: {restart}");
    let older_than = |what: String, at: Option<OffsetDateTime>| {
        let (pod_at, at) = (pod_created?, at?);
        (pod_at < at).then(|| format!("pod created {}, {what} created {}", fmt(pod_at), fmt(at)))
    };
    let evidence = older_than(
        format!("MutatingWebhookConfiguration {}", opts.webhook_config),
        created(&config.metadata),
    )
    .or_else(|| {
        let deployment = snap.webhook_deployment.as_ref()?;
        older_than(
            format!(
                "Deployment {}/{}",
                opts.webhook_namespace, opts.webhook_deployment
            ),
            created(&deployment.metadata),
        )
    });
    if let Some(evidence) = evidence {
        finding.reason = "created-before-webhook";
        finding.detail = "created before the webhook was installed".to_owned();
        finding.evidence = Some(evidence);
        finding.fix = restart_only;
        return finding;
    }
    let available = snap
        .webhook_deployment
        .as_ref()
        .and_then(|d| d.status.as_ref()?.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Available"));
    if let (Some(condition), Some(pod_at)) = (available, pod_created) {
        let since = condition.last_transition_time.as_ref().map(time_of);
        let down_then = condition.status != "True" || since.is_some_and(|s| s > pod_at);
        if down_then {
            finding.reason = "created-while-webhook-unavailable";
            finding.detail = "created while the webhook was unavailable".to_owned();
            finding.evidence = Some(format!(
                "pod created {}, Deployment {}/{} Available={} since {}",
                fmt(pod_at),
                opts.webhook_namespace,
                opts.webhook_deployment,
                condition.status,
                since.map_or("unknown".to_owned(), fmt)
            ));
            finding.fix = if condition.status == "True" {
                restart_only
            } else {
                format!(
                    "bring the webhook back (kubectl -n {} describe deployment {}), then {restart}",
                    opts.webhook_namespace, opts.webhook_deployment
                )
            };
            return finding;
        }
    }
    finding.detail = "the webhook was installed and available when the pod was created; a \
                      failurePolicy Ignore or a webhook error may have let it through: check \
                      the webhook's logs for the pod"
        .to_owned();
    finding.fix = restart_only;
    finding
}

fn fmt(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests;
