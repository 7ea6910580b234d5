//! The fleet report: its types (the `-o json` shape, versioned by `apiVersion`) and the
//! human tables.
//!
//! JSON field names are camelCase like Kubernetes objects; `code`/`reason` values are
//! stable kebab-case words scripts can match on; `detail`, `message` and `fix` are prose
//! for people and may change wording.
//!
//! What it does not do: decide anything (`analyze`).

use std::io::{self, Write};

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

/// Writes the human report: one short section per question, a table where there are
/// rows, and a last line with the verdict.
pub fn write_text(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let w = &report.webhook;
    writeln!(out, "Webhook (namespace {})", w.namespace)?;
    let mut rows = Vec::new();
    if let Some(d) = &w.deployment {
        rows.push(vec![
            mark(d.ready_replicas >= d.desired_replicas && d.desired_replicas > 0),
            format!("deployment/{}", d.name),
            format!("{}/{} replicas ready", d.ready_replicas, d.desired_replicas),
        ]);
    }
    if let Some(c) = &w.configuration {
        rows.push(vec![
            mark(c.ca_bundle == "matches"),
            format!("mutatingwebhookconfiguration/{}", c.name),
            format!("caBundle {} the Secret's ca.crt", ca_words(c.ca_bundle)),
        ]);
    }
    if let Some(s) = &w.tls_secret {
        let days = |d: Option<i64>| d.map_or("unreadable".to_owned(), |d| format!("{d} days left"));
        rows.push(vec![
            mark(
                s.serving_days_left
                    .is_some_and(|d| d >= super::CERT_WARN_DAYS),
            ),
            format!("secret/{}", s.name),
            format!(
                "serving certificate {}, CA {}",
                days(s.serving_days_left),
                days(s.ca_days_left)
            ),
        ]);
    }
    table(out, &[], &rows)?;
    for p in &w.problems {
        writeln!(out, "  ! {}: {}", p.code, p.message)?;
    }
    if let Some(e) = &w.expected {
        writeln!(
            out,
            "  injects {} (sidecar-version {}, injected-config {}), settings from {}",
            e.sidecar_image, e.sidecar_version, e.injected_config, e.settings_from
        )?;
    }

    writeln!(out, "\nNamespaces labelled holysheep-injection=enabled")?;
    let rows: Vec<Vec<String>> = report
        .namespaces
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                if n.selected { "yes" } else { "no (excluded)" }.to_owned(),
                n.annotated_pods.to_string(),
                n.injected_pods.to_string(),
                n.stale_pods.to_string(),
            ]
        })
        .collect();
    section(
        out,
        &["NAMESPACE", "SELECTED", "ANNOTATED", "INJECTED", "STALE"],
        &rows,
    )?;

    writeln!(out, "\nAnnotated pods running without the sidecar")?;
    let rows: Vec<Vec<String>> = report
        .not_injected
        .iter()
        .map(|f| {
            let mut why = f.detail.clone();
            if let Some(evidence) = &f.evidence {
                why.push_str(&format!(" [{evidence}]"));
            }
            vec![
                f.namespace.clone(),
                f.pod.clone(),
                f.workload.reference(),
                f.reason.to_owned(),
                why,
            ]
        })
        .collect();
    section(
        out,
        &["NAMESPACE", "POD", "WORKLOAD", "REASON", "DETAIL"],
        &rows,
    )?;
    for f in &report.not_injected {
        writeln!(out, "  fix {}/{}: {}", f.namespace, f.pod, f.fix)?;
    }

    writeln!(
        out,
        "\nWorkloads annotated holysheep/inject on their own metadata, not on the pod template"
    )?;
    let rows: Vec<Vec<String>> = report
        .workload_only
        .iter()
        .map(|f| vec![f.namespace.clone(), f.workload.reference(), f.fix.clone()])
        .collect();
    section(out, &["NAMESPACE", "WORKLOAD", "FIX"], &rows)?;

    writeln!(
        out,
        "\nPods on another sidecar version or injection config than the webhook's"
    )?;
    let rows: Vec<Vec<String>> = report
        .stale
        .iter()
        .map(|s| {
            let first = s.pods.first();
            let have = first.map_or(String::new(), |p| {
                format!(
                    "{} {}",
                    p.sidecar_version.as_deref().unwrap_or("-"),
                    p.injected_config.as_deref().unwrap_or("-")
                )
            });
            let want = first.map_or(String::new(), |p| {
                format!(
                    "{} {}",
                    p.expected_sidecar_version, p.expected_injected_config
                )
            });
            vec![
                s.namespace.clone(),
                s.workload.reference(),
                s.pods.len().to_string(),
                have,
                want,
                s.fix.clone(),
            ]
        })
        .collect();
    section(
        out,
        &["NAMESPACE", "WORKLOAD", "PODS", "HAVE", "WANT", "RUN"],
        &rows,
    )?;

    for note in &report.notes {
        writeln!(out, "\nnote: {note}")?;
    }
    let count = report.action_count();
    if count == 0 {
        writeln!(out, "\nAll good: nothing needs action.")
    } else {
        writeln!(out, "\n{count} finding(s) need action.")
    }
}

fn mark(ok: bool) -> String {
    if ok { "OK" } else { "FAIL" }.to_owned()
}

fn ca_words(state: &str) -> &'static str {
    match state {
        "matches" => "matches",
        "differs" => "differs from",
        "missing" => "is missing; cannot be compared with",
        _ => "cannot be compared with",
    }
}

fn section(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    if rows.is_empty() {
        writeln!(out, "  none")
    } else {
        table(out, header, rows)
    }
}

/// Left-aligned columns two spaces apart, indented by two; the last column is not padded.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header)
        .filter(|h| !h.is_empty())
        .chain(rows)
        .collect();
    let columns = all.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            all.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in all {
        let mut line = String::from(" ");
        for (i, cell) in row.iter().enumerate() {
            line.push(' ');
            line.push_str(cell);
            if i + 1 < row.len() {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + 1;
                line.push_str(&" ".repeat(pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
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
