//! The webhook's own health, from the snapshot: Deployment replicas ready vs desired, the
//! caBundle of every webhook in the MutatingWebhookConfiguration vs the CA in the TLS
//! Secret (compared as certificates, whatever the PEM whitespace), and the days left on
//! the serving certificate and the CA.
//!
//! What it does not do: read the cluster, or judge pods (`analyze`).

use holysheep_certs::bundle;
use k8s_openapi::api::core::v1::Secret;
use time::OffsetDateTime;

use super::gather::Snapshot;
use super::report::{ConfigurationStatus, DeploymentStatus, Problem, SecretStatus, WebhookHealth};
use super::{CERT_WARN_DAYS, CheckOptions, rfc3339};

/// Health of the Deployment, the configuration and the Secret; `expected` is filled in
/// by the caller.
pub fn webhook_health(snap: &Snapshot, opts: &CheckOptions, now: OffsetDateTime) -> WebhookHealth {
    let ns = &opts.webhook_namespace;
    let mut problems = Vec::new();
    let mut problem = |code, message: String| problems.push(Problem { code, message });

    let deployment = snap.webhook_deployment.as_ref().map(|d| DeploymentStatus {
        name: opts.webhook_deployment.clone(),
        desired_replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready_replicas: d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        created_at: rfc3339(d.metadata.creation_timestamp.as_ref()),
    });
    match &deployment {
        None => problem(
            "deployment-missing",
            format!(
                "Deployment {ns}/{} not found: install the webhook (kubectl apply -k \
                 manifests/) or pass --webhook-namespace/--webhook-deployment",
                opts.webhook_deployment
            ),
        ),
        Some(d) if d.ready_replicas < d.desired_replicas || d.desired_replicas == 0 => problem(
            "replicas-not-ready",
            format!(
                "{}/{} replicas of Deployment {ns}/{} are ready: with failurePolicy Fail, \
                 pod creation in labelled namespaces fails while none is; see kubectl -n \
                 {ns} describe deployment {}",
                d.ready_replicas, d.desired_replicas, d.name, d.name
            ),
        ),
        Some(_) => {}
    }

    let ca_pem = snap.tls_secret.as_ref().and_then(|s| data(s, "ca.crt"));
    let configuration = snap.webhook_config.as_ref().map(|c| {
        let bundles: Vec<Option<&[u8]>> = c
            .webhooks
            .iter()
            .flatten()
            .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()))
            .collect();
        let state = match &ca_pem {
            _ if bundles.is_empty() || bundles.iter().any(Option::is_none) => "missing",
            None => "unknown",
            Some(ca) => {
                if bundles
                    .iter()
                    .flatten()
                    .all(|b| bundle::same_certificates(b, ca))
                {
                    "matches"
                } else {
                    "differs"
                }
            }
        };
        ConfigurationStatus {
            name: opts.webhook_config.clone(),
            created_at: rfc3339(c.metadata.creation_timestamp.as_ref()),
            ca_bundle: state,
        }
    });
    match configuration.as_ref().map(|c| c.ca_bundle) {
        None => problem(
            "configuration-missing",
            format!(
                "MutatingWebhookConfiguration {} not found: no pod is injected; install the \
                 webhook (kubectl apply -k manifests/) or pass --webhook-config",
                opts.webhook_config
            ),
        ),
        Some("missing" | "differs") => problem(
            "ca-bundle-mismatch",
            format!(
                "the caBundle of MutatingWebhookConfiguration {} is not the ca.crt of Secret \
                 {ns}/{}: kube-apiserver rejects the webhook's certificate and pod creation \
                 fails; the self-signed webhook restores it within its retry delay (check \
                 its logs), with cert-manager check cainjector",
                opts.webhook_config, opts.tls_secret
            ),
        ),
        Some(_) => {}
    }

    let tls_secret = snap.tls_secret.as_ref().map(|s| {
        let serving = data(s, "tls.crt").and_then(|pem| first_not_after(&pem));
        let ca = ca_pem.as_deref().and_then(first_not_after);
        let days = |t: Option<OffsetDateTime>| t.map(|t| (t - now).whole_days());
        SecretStatus {
            name: opts.tls_secret.clone(),
            serving_days_left: days(serving),
            serving_not_after: serving.and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
            ca_days_left: days(ca),
        }
    });
    match &tls_secret {
        None => problem(
            "tls-secret-missing",
            format!(
                "Secret {ns}/{} not found: the self-signed webhook creates it at start (check \
                 its logs), with cert-manager check the Certificate; or pass --tls-secret",
                opts.tls_secret
            ),
        ),
        Some(s) => {
            let readable = s.serving_days_left.zip(s.ca_days_left);
            match readable {
                None => problem(
                    "certificate-unreadable",
                    format!(
                        "Secret {ns}/{} has no readable PEM certificate in tls.crt or ca.crt",
                        opts.tls_secret
                    ),
                ),
                Some((serving, ca)) if serving.min(ca) < CERT_WARN_DAYS => problem(
                    "certificate-expiring",
                    format!(
                        "Secret {ns}/{}: serving certificate {serving} days left, CA {ca} \
                         days left (renewal should have happened {} or more days before \
                         expiry): check the webhook's logs for the bootstrap pass, or the \
                         cert-manager Certificate",
                        opts.tls_secret, CERT_WARN_DAYS
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    WebhookHealth {
        namespace: ns.clone(),
        deployment,
        configuration,
        tls_secret,
        expected: None,
        problems,
    }
}

fn data(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
}

/// `notAfter` of the first certificate of a PEM bundle.
fn first_not_after(pem: &[u8]) -> Option<OffsetDateTime> {
    let certificates = bundle::certificates(pem).ok()?;
    let der = certificates.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}
