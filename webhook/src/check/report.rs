//! The fleet report: its types (the `-o json` shape, versioned by `apiVersion`) and the
//! human tables.
//!
//! JSON field names are camelCase like Kubernetes objects; `code`/`reason` values are
//! stable kebab-case words scripts can match on; `detail`, `message` and `fix` are prose
//! for people and may change wording.
//!
//! What it does not do: decide anything (`analyze`) or print (`text`).

use serde::Serialize;

/// `apiVersion` of the JSON document; bumped on any incompatible change of the shape.
pub const API_VERSION: &str = "holysheep.ai/check/v1";

/// Everything `check` found.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// [`API_VERSION`].
    pub api_version: &'static str,
    /// Namespaces looked at: `None` for all of them.
    pub namespace: Option<String>,
    /// The webhook's own health.
    pub webhook: WebhookHealth,
    /// Namespaces labelled `holysheep-injection=enabled`, with pod counts.
    pub namespaces: Vec<NamespaceSummary>,
    /// Pods annotated `holysheep/inject: "true"` running without the sidecar.
    pub not_injected: Vec<NotInjected>,
    /// Workloads with `holysheep/inject` on their own metadata but not on the pod template.
    pub workload_only: Vec<WorkloadOnly>,
    /// Workloads whose pods carry other stamps than the webhook would write now.
    pub stale: Vec<StaleWorkload>,
    /// Things `check` could not judge (no action counted for them).
    pub notes: Vec<String>,
    /// True when anything above needs action: the exit code is then 1.
    pub needs_action: bool,
}

/// The webhook Deployment, its MutatingWebhookConfiguration and its TLS Secret.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookHealth {
    /// Namespace of the Deployment and the Secret.
    pub namespace: String,
    /// `None` when the Deployment does not exist.
    pub deployment: Option<DeploymentStatus>,
    /// `None` when the MutatingWebhookConfiguration does not exist.
    pub configuration: Option<ConfigurationStatus>,
    /// `None` when the Secret does not exist.
    pub tls_secret: Option<SecretStatus>,
    /// The stamps a pod without overrides would get now; `None` when the settings could
    /// not be read (then no pod is judged stale).
    pub expected: Option<ExpectedStamps>,
    /// What is wrong with the webhook itself; empty when healthy.
    pub problems: Vec<Problem>,
}

/// Replicas of the webhook Deployment.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// Deployment name.
    pub name: String,
    /// `spec.replicas`.
    pub desired_replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `metadata.creationTimestamp`, RFC 3339.
    pub created_at: Option<String>,
}

/// The MutatingWebhookConfiguration.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    /// Its name.
    pub name: String,
    /// `metadata.creationTimestamp`, RFC 3339.
    pub created_at: Option<String>,
    /// `matches`, `differs`, `missing` (a webhook without caBundle) or `unknown` (no
    /// readable CA in the Secret to compare with).
    pub ca_bundle: &'static str,
}

/// The webhook's TLS Secret.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretStatus {
    /// Its name.
    pub name: String,
    /// Whole days until `tls.crt` expires (negative once expired); `None` if unreadable.
    pub serving_days_left: Option<i64>,
    /// `notAfter` of `tls.crt`, RFC 3339.
    pub serving_not_after: Option<String>,
    /// Whole days until the first certificate of `ca.crt` expires.
    pub ca_days_left: Option<i64>,
}

/// What the webhook injects now, for a pod without `holysheep/*` overrides.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedStamps {
    /// Where the settings were read from.
    pub settings_from: String,
    /// The default sidecar image.
    pub sidecar_image: String,
    /// `holysheep/sidecar-version`.
    pub sidecar_version: String,
    /// `holysheep/injected-config`.
    pub injected_config: String,
}

/// One thing wrong with the webhook.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// Stable word: `deployment-missing`, `replicas-not-ready`, `configuration-missing`,
    /// `ca-bundle-mismatch`, `tls-secret-missing`, `certificate-unreadable`,
    /// `certificate-expiring`, `settings-unreadable`.
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// A labelled namespace.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSummary {
    /// Name.
    pub name: String,
    /// Whether the webhook's namespaceSelector selects it (false for an excluded name).
    pub selected: bool,
    /// Running pods annotated `holysheep/inject: "true"`.
    pub annotated_pods: usize,
    /// Running pods with the sidecar.
    pub injected_pods: usize,
    /// Injected pods whose stamps differ from what the webhook would write now.
    pub stale_pods: usize,
}

/// The workload a pod belongs to, following pod -> ReplicaSet -> Deployment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet` or `Pod`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

impl Workload {
    /// `deployment/name`, as kubectl spells it.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }

    /// The command that re-creates the pods of this workload.
    pub fn restart(&self, namespace: &str, pods: &[&str]) -> String {
        match self.kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" => {
                format!(
                    "kubectl rollout restart {} -n {namespace}",
                    self.reference()
                )
            }
            "Job" => format!(
                "re-create job/{} in {namespace} (Jobs cannot be restarted; a CronJob's \
                 next run is injected anew)",
                self.name
            ),
            // Its controller re-creates what is deleted.
            "ReplicaSet" | "ReplicationController" => {
                format!("kubectl delete pod {} -n {namespace}", pods.join(" "))
            }
            // A bare pod, or an owner check does not know: nothing re-creates it for us.
            _ => format!(
                "re-create pod {} in {namespace} (delete it and apply its manifest again)",
                pods.join(" ")
            ),
        }
    }
}

/// An annotated pod without the sidecar.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotInjected {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Its workload.
    pub workload: Workload,
    /// `metadata.creationTimestamp`, RFC 3339.
    pub created_at: Option<String>,
    /// Stable word: `namespace-not-labelled`, `namespace-not-selected`,
    /// `opted-out-by-label`, `webhook-not-installed`, `created-before-webhook`,
    /// `created-while-webhook-unavailable`, `unknown`.
    pub reason: &'static str,
    /// The reason in words.
    pub detail: String,
    /// The timestamps the reason rests on, when it is a time comparison.
    pub evidence: Option<String>,
    /// What to do.
    pub fix: String,
}

/// A workload annotated on its own metadata only.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadOnly {
    /// Namespace.
    pub namespace: String,
    /// The workload.
    pub workload: Workload,
    /// What to do.
    pub fix: String,
}

/// A workload with pods on other stamps than the webhook's current ones.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleWorkload {
    /// Namespace.
    pub namespace: String,
    /// The workload.
    pub workload: Workload,
    /// Its stale pods.
    pub pods: Vec<StalePod>,
    /// The command to run.
    pub fix: String,
}

/// One pod with other stamps.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StalePod {
    /// Pod name.
    pub name: String,
    /// Its `holysheep/sidecar-version` (`None`: absent, injected before stamps existed).
    pub sidecar_version: Option<String>,
    /// Its `holysheep/injected-config`.
    pub injected_config: Option<String>,
    /// What the webhook would write now for this pod's annotations.
    pub expected_sidecar_version: String,
    /// Likewise.
    pub expected_injected_config: String,
}

impl Report {
    /// The findings that need action, counted as the human summary does.
    pub fn action_count(&self) -> usize {
        self.webhook.problems.len()
            + self.not_injected.len()
            + self.workload_only.len()
            + self.stale.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_commands_per_kind() {
        let w = |kind: &str| Workload {
            kind: kind.to_owned(),
            name: "x".to_owned(),
        };
        assert_eq!(
            w("Deployment").restart("shop", &["x-1"]),
            "kubectl rollout restart deployment/x -n shop"
        );
        assert_eq!(
            w("DaemonSet").restart("shop", &["x-1"]),
            "kubectl rollout restart daemonset/x -n shop"
        );
        assert_eq!(
            w("ReplicaSet").restart("shop", &["x-1", "x-2"]),
            "kubectl delete pod x-1 x-2 -n shop"
        );
        assert!(
            w("Job")
                .restart("shop", &["x-1"])
                .starts_with("re-create job/x")
        );
        assert!(
            w("Pod")
                .restart("shop", &["x"])
                .starts_with("re-create pod x in shop")
        );
    }
}
