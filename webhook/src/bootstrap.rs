//! `serve --self-signed`: the webhook bootstraps its own TLS. This is the only module that
//! talks to the Kubernetes API.
//!
//! One pass ([`bootstrap_once`]):
//! 1. get or create the Secret `holysheep-webhook-tls` holding the CA and the serving
//!    certificate, so every replica serves a certificate of the same CA (submodule `secret`);
//!    a lost creation race (409 AlreadyExists) adopts the winner's, an expiring or
//!    mismatched certificate is renewed with an optimistic-concurrency update;
//! 2. write `ca.crt`, `tls.crt`, `tls.key` into the local directory the TLS server reads
//!    (`tls.rs` notices the change and swaps the certificate), only when they differ;
//! 3. make the caBundle of every webhook of the MutatingWebhookConfiguration
//!    `holysheep-sidecar-injector` equal to the CA bundle (submodule `ca_bundle`).
//!
//! [`run_renewal_loop`] repeats that pass periodically so certificates are renewed before
//! they expire and a caBundle wiped by a re-apply of the manifests is restored.
//!
//! What it does not do: serve TLS (`tls.rs`, `server.rs`) or create certificates itself
//! (`holysheep-certs`).

mod ca_bundle;
mod secret;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use holysheep_certs::{CA_CERT_FILE, CertError, TLS_CERT_FILE, TLS_KEY_FILE};
use time::OffsetDateTime;

pub use ca_bundle::CaBundleStatus;
pub use secret::SecretAction;

/// Name of the Secret shared by all replicas.
pub const DEFAULT_SECRET_NAME: &str = "holysheep-webhook-tls";
/// Name of the MutatingWebhookConfiguration whose caBundle is kept in sync.
pub const DEFAULT_WEBHOOK_CONFIG_NAME: &str = "holysheep-sidecar-injector";
/// Name of the webhook's Service; the serving certificate is for `<service>.<ns>.svc`.
pub const DEFAULT_SERVICE_NAME: &str = "holysheep-webhook";
/// How often the renewal loop re-checks the Secret and the caBundle.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Delay before retrying after a failed pass or while the webhook configuration is missing.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(15);

/// Everything a bootstrap pass needs to know. Build with [`BootstrapOptions::new`] and
/// override fields as needed.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    /// Namespace of the Secret and the Service (from `POD_NAMESPACE`).
    pub namespace: String,
    /// Service name; certificate SANs are derived from it and `namespace`.
    pub service: String,
    /// Secret holding `ca.crt`, `ca.key`, `tls.crt`, `tls.key`.
    pub secret_name: String,
    /// MutatingWebhookConfiguration whose webhooks get the caBundle.
    pub webhook_config_name: String,
    /// Directory the TLS server reads `ca.crt`, `tls.crt`, `tls.key` from.
    pub cert_dir: PathBuf,
    /// Lifetime of a newly generated CA.
    pub ca_validity: Duration,
    /// Lifetime of a newly issued serving certificate.
    pub serving_validity: Duration,
    /// Renew a certificate when less than this is left before it expires.
    pub renewal_margin: Duration,
    /// Period of [`run_renewal_loop`].
    pub check_interval: Duration,
    /// Delay before retrying a failed or incomplete pass in [`run_renewal_loop`].
    pub retry_delay: Duration,
}

impl BootstrapOptions {
    /// Options with the documented names and the `holysheep-certs` default lifetimes.
    pub fn new(namespace: impl Into<String>, cert_dir: impl Into<PathBuf>) -> Self {
        Self {
            namespace: namespace.into(),
            service: DEFAULT_SERVICE_NAME.to_owned(),
            secret_name: DEFAULT_SECRET_NAME.to_owned(),
            webhook_config_name: DEFAULT_WEBHOOK_CONFIG_NAME.to_owned(),
            cert_dir: cert_dir.into(),
            ca_validity: holysheep_certs::DEFAULT_CA_VALIDITY,
            serving_validity: holysheep_certs::DEFAULT_SERVING_VALIDITY,
            renewal_margin: holysheep_certs::DEFAULT_RENEWAL_MARGIN,
            check_interval: DEFAULT_CHECK_INTERVAL,
            retry_delay: DEFAULT_RETRY_DELAY,
        }
    }
}

impl BootstrapOptions {
    /// Refuses option combinations that would fail or renew on every pass.
    pub fn validate(&self) -> Result<(), BootstrapError> {
        let invalid = |field, reason: &str| {
            Err(BootstrapError::InvalidOptions {
                field,
                reason: reason.to_owned(),
            })
        };
        holysheep_certs::serving_dns_names(&self.service, &self.namespace)?;
        if self.serving_validity <= self.renewal_margin {
            return invalid(
                "serving validity",
                "must be longer than the renewal margin, or every check would renew it",
            );
        }
        if self.ca_validity <= self.renewal_margin {
            return invalid(
                "CA validity",
                "must be longer than the renewal margin, or every check would replace the CA",
            );
        }
        if self.check_interval.is_zero() || self.retry_delay.is_zero() {
            return invalid(
                "check interval",
                "check interval and retry delay must be > 0",
            );
        }
        Ok(())
    }
}

/// What one bootstrap pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened to the Secret.
    pub secret: SecretAction,
    /// What happened to the caBundle of the webhook configuration.
    pub ca_bundle: CaBundleStatus,
    /// True when the local certificate files were (re)written.
    pub files_written: bool,
    /// `notAfter` of the serving certificate now in use.
    pub serving_not_after: OffsetDateTime,
    /// `notAfter` of the signing CA now in use.
    pub ca_not_after: OffsetDateTime,
}

/// Why a bootstrap pass failed. Messages say which API call failed and what to check.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A Kubernetes API call failed.
    #[error("failed to {action}: {detail}")]
    Api {
        /// The call, e.g. `get Secret holysheep-system/holysheep-webhook-tls`.
        action: String,
        /// Status code, reason and message, plus a hint for the usual causes.
        detail: String,
        /// The kube error.
        #[source]
        source: kube::Error,
    },
    /// Other writers kept changing the object between our read and our write.
    #[error(
        "gave up on {action} after {attempts} attempts: the object changed between every read \
         and write (another replica or controller keeps modifying it)"
    )]
    Contention {
        /// What was being done.
        action: String,
        /// How many read-modify-write rounds were tried.
        attempts: u32,
    },
    /// The options contradict each other or name an invalid Service or namespace.
    #[error("invalid bootstrap option {field}: {reason}")]
    InvalidOptions {
        /// The option, e.g. `serving validity`.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Generating, parsing or writing certificates failed.
    #[error(transparent)]
    Certs(#[from] CertError),
}

/// Read-modify-write rounds before [`BootstrapError::Contention`].
const MAX_ATTEMPTS: u32 = 5;

/// Our name in `managedFields`, so `kubectl get -o yaml --show-managed-fields` says who
/// wrote the Secret and the caBundle.
const FIELD_MANAGER: &str = "holysheep-webhook";

impl BootstrapError {
    fn api(action: String, verb_hint: &str, source: kube::Error) -> Self {
        let detail = match &source {
            kube::Error::Api(status) => {
                let mut detail = format!("{} {}: {}", status.code, status.reason, status.message);
                if status.is_forbidden() || status.code == 401 {
                    detail.push_str(&format!(
                        " (the webhook's ServiceAccount needs {verb_hint}: check the Role and \
                         ClusterRole in manifests/rbac*.yaml)"
                    ));
                }
                detail
            }
            other => format!(
                "cannot talk to the Kubernetes API ({}); check that the pod can reach the \
                 API server and that its ServiceAccount token and CA are mounted",
                error_chain(other)
            ),
        };
        Self::Api {
            action,
            detail,
            source,
        }
    }
}

/// `e: cause: cause...`, because kube's top-level message for a TLS or connect failure
/// ("client error (Connect)") hides the useful part (e.g. `UnknownIssuer`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// One bootstrap pass: ensure the shared Secret, write the local files, sync the caBundle.
///
/// A missing MutatingWebhookConfiguration is not an error (`kubectl apply -k` may create
/// the Deployment first): the outcome says [`CaBundleStatus::ConfigNotFound`] and the
/// renewal loop retries after `retry_delay`.
pub async fn bootstrap_once(
    client: kube::Client,
    opts: &BootstrapOptions,
) -> Result<Outcome, BootstrapError> {
    opts.validate()?;
    let now = OffsetDateTime::now_utc();
    let material = secret::ensure(&client, opts, now).await?;
    let files_written = write_if_changed(&opts.cert_dir, &material.bundle_pem, &material.serving)?;
    let ca_bundle = ca_bundle::sync(&client, opts, &material.bundle_pem).await?;
    let outcome = Outcome {
        secret: material.action,
        ca_bundle,
        files_written,
        serving_not_after: material.serving.not_after(),
        ca_not_after: material.ca_not_after,
    };
    tracing::info!(
        secret = ?outcome.secret,
        ca_bundle = ?outcome.ca_bundle,
        files_written,
        serving_not_after = %outcome.serving_not_after,
        "certificate bootstrap pass done"
    );
    Ok(outcome)
}

/// Repeats [`bootstrap_once`] until `shutdown` completes: every `check_interval`, or after
/// `retry_delay` when a pass failed or the webhook configuration was missing, and never
/// later than the moment the serving certificate enters its renewal margin.
///
/// Failures are logged and retried, never fatal: the certificates already on disk stay in
/// use meanwhile.
pub async fn run_renewal_loop(
    client: kube::Client,
    opts: BootstrapOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut delay = opts.check_interval;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = match bootstrap_once(client.clone(), &opts).await {
            Ok(outcome) => next_delay(&outcome, &opts, OffsetDateTime::now_utc()),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?opts.retry_delay, "certificate bootstrap pass failed");
                opts.retry_delay
            }
        };
    }
}

/// When to run the next pass after a successful one.
fn next_delay(outcome: &Outcome, opts: &BootstrapOptions, now: OffsetDateTime) -> Duration {
    if outcome.ca_bundle == CaBundleStatus::ConfigNotFound {
        return opts.retry_delay;
    }
    let margin = time::Duration::try_from(opts.renewal_margin).unwrap_or(time::Duration::MAX);
    let due_in = outcome
        .serving_not_after
        .checked_sub(margin)
        .map_or(time::Duration::ZERO, |due| due - now);
    let due_in = Duration::try_from(due_in).unwrap_or(Duration::ZERO);
    due_in.clamp(
        opts.retry_delay.min(opts.check_interval),
        opts.check_interval,
    )
}

/// Writes the three files unless the directory already holds exactly these contents, so a
/// no-op pass does not make the TLS server reload.
fn write_if_changed(
    dir: &Path,
    bundle_pem: &str,
    serving: &holysheep_certs::ServingCert,
) -> Result<bool, CertError> {
    let same = |name: &str, want: &str| {
        std::fs::read_to_string(dir.join(name)).is_ok_and(|have| have == want)
    };
    if same(CA_CERT_FILE, bundle_pem)
        && same(TLS_CERT_FILE, serving.cert_pem())
        && same(TLS_KEY_FILE, serving.key_pem())
    {
        return Ok(false);
    }
    holysheep_certs::write_to_dir(dir, bundle_pem, serving)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(serving_not_after: OffsetDateTime, ca_bundle: CaBundleStatus) -> Outcome {
        Outcome {
            secret: SecretAction::Reused,
            ca_bundle,
            files_written: false,
            serving_not_after,
            ca_not_after: serving_not_after,
        }
    }

    #[test]
    fn next_delay_is_the_interval_capped_by_the_renewal_due_time() {
        let mut opts = BootstrapOptions::new("ns", "/tmp/x");
        opts.check_interval = Duration::from_secs(3600);
        opts.retry_delay = Duration::from_secs(15);
        opts.renewal_margin = Duration::from_secs(86_400);
        let now = OffsetDateTime::now_utc();
        let far = now + time::Duration::days(300);
        assert_eq!(
            next_delay(&outcome(far, CaBundleStatus::Unchanged), &opts, now),
            opts.check_interval
        );
        // Due in 10 minutes: wake up then, not in an hour.
        let soon = now + time::Duration::days(1) + time::Duration::minutes(10);
        assert_eq!(
            next_delay(&outcome(soon, CaBundleStatus::Unchanged), &opts, now),
            Duration::from_secs(600)
        );
        // Already due (or expired): no busy loop, retry_delay at least.
        assert_eq!(
            next_delay(&outcome(now, CaBundleStatus::Unchanged), &opts, now),
            opts.retry_delay
        );
        assert_eq!(
            next_delay(&outcome(far, CaBundleStatus::ConfigNotFound), &opts, now),
            opts.retry_delay
        );
    }
}
