//! `holysheep-webhook check`: the read-only fleet report. It answers "which pods should
//! have the sidecar and don't, and why", "which run an old sidecar or other injection
//! settings, and what to restart", and "is the webhook itself healthy".
//!
//! The steps: build a client from the kubeconfig like kubectl (`client`), read a
//! [`gather::Snapshot`] with GET requests only, read what the webhook injects now from
//! its own Deployment (`expected`), then [`analyze::analyze`] (pure) into a
//! [`Report`] (`report`), printed as tables (`text`) or JSON. The exit code says whether anything needs action: [`EXIT_OK`],
//! [`EXIT_FINDINGS`], [`EXIT_ERROR`].
//!
//! What it does not do: change anything in the cluster (no create, update, patch or
//! delete: the fixes are printed for a person to run).

pub mod analyze;
pub mod expected;
pub mod gather;
mod health;
pub mod report;
pub mod selector;
mod text;
mod workloads;

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::config::{KubeConfigOptions, Kubeconfig};
use time::OffsetDateTime;

use crate::bootstrap::error_chain;

pub use report::Report;
pub use text::write_text;

/// Nothing needs action.
pub const EXIT_OK: u8 = 0;
/// At least one finding needs action.
pub const EXIT_FINDINGS: u8 = 1;
/// The check could not run: no kubeconfig, cluster unreachable, RBAC refused a read.
pub const EXIT_ERROR: u8 = 2;

/// The namespace label the webhook's namespaceSelector looks for.
pub const INJECTION_LABEL: &str = "holysheep-injection";
/// Its value that enables injection.
pub const INJECTION_ENABLED: &str = "enabled";
/// Namespace of the webhook in the manifests.
pub const DEFAULT_WEBHOOK_NAMESPACE: &str = "holysheep-system";
/// Name of the webhook Deployment in the manifests.
pub const DEFAULT_WEBHOOK_DEPLOYMENT: &str = "holysheep-webhook";
/// A certificate with fewer days left is a finding: both the self-signed bootstrap (30
/// days) and the cert-manager overlay (15 days) renew well before this.
pub const CERT_WARN_DAYS: i64 = 14;

/// What to look at.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// One namespace, or `None` for all.
    pub namespace: Option<String>,
    /// Namespace of the webhook's Deployment and TLS Secret.
    pub webhook_namespace: String,
    /// The webhook's Deployment.
    pub webhook_deployment: String,
    /// The MutatingWebhookConfiguration.
    pub webhook_config: String,
    /// The TLS Secret.
    pub tls_secret: String,
}

impl CheckOptions {
    /// The manifests' names, all namespaces.
    pub fn new() -> Self {
        Self {
            namespace: None,
            webhook_namespace: DEFAULT_WEBHOOK_NAMESPACE.to_owned(),
            webhook_deployment: DEFAULT_WEBHOOK_DEPLOYMENT.to_owned(),
            webhook_config: crate::bootstrap::DEFAULT_WEBHOOK_CONFIG_NAME.to_owned(),
            tls_secret: crate::bootstrap::DEFAULT_SECRET_NAME.to_owned(),
        }
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the check could not run. Every variant maps to [`EXIT_ERROR`].
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No kubeconfig and not in a pod, or a kubeconfig that does not load.
    #[error(
        "cannot configure a Kubernetes client: {0} (set KUBECONFIG or pass --kubeconfig, \
         and --context to pick a context)"
    )]
    Config(String),
    /// The API refused a read.
    #[error(
        "forbidden: cannot {verb} {resource}{scope}: {message} (grant {verb} on {resource} \
         to this user, or narrow the check with -n NAMESPACE)"
    )]
    Forbidden {
        /// `get` or `list`.
        verb: &'static str,
        /// e.g. `pods`, `deployments.apps`.
        resource: &'static str,
        /// ` "name"`, ` in namespace X` or ` cluster-wide`.
        scope: String,
        /// The apiserver's message.
        message: String,
    },
    /// The credentials were refused.
    #[error(
        "unauthorized: the API server refused the credentials while trying to {verb} \
         {resource}: log in again or fix the kubeconfig's user"
    )]
    Unauthorized {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
    },
    /// Any other answer or no answer.
    #[error("cannot {verb} {resource}{scope}: {detail}")]
    Api {
        /// The verb.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// Where.
        scope: String,
        /// What went wrong, with its causes.
        detail: String,
    },
    /// `-n NS` names a namespace that does not exist.
    #[error("namespace {0:?} not found (kubectl get namespaces lists them)")]
    NoSuchNamespace(String),
}

impl CheckError {
    /// `name`: the object of a `get`; `namespace`: where (`None`: cluster-wide).
    fn from_kube(
        e: kube::Error,
        verb: &'static str,
        resource: &'static str,
        name: Option<&str>,
        namespace: Option<&str>,
    ) -> Self {
        let scope = match (name, namespace) {
            (None, None) => " cluster-wide".to_owned(),
            (None, Some(ns)) => format!(" in namespace {ns}"),
            (Some(name), None) => format!(" {name:?}"),
            (Some(name), Some(ns)) => format!(" {name:?} in namespace {ns}"),
        };
        match e {
            kube::Error::Api(status) if status.code == 403 => Self::Forbidden {
                verb,
                resource,
                scope,
                message: status.message,
            },
            kube::Error::Api(status) if status.code == 401 => Self::Unauthorized { verb, resource },
            kube::Error::Api(status) => Self::Api {
                verb,
                resource,
                scope,
                detail: format!("{} {}: {}", status.code, status.reason, status.message),
            },
            other => Self::Api {
                verb,
                resource,
                scope,
                detail: format!(
                    "the API server is unreachable ({}): check the kubeconfig's server and \
                     your network",
                    error_chain(&other)
                ),
            },
        }
    }
}

/// How to reach the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// A kubeconfig file instead of KUBECONFIG / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// A context of the kubeconfig instead of its current one.
    pub context: Option<String>,
}

/// A client configured like kubectl: `--kubeconfig`, else KUBECONFIG, else
/// `~/.kube/config`, else the in-cluster ServiceAccount; `--context` picks a context.
pub async fn client(opts: &ClientOptions) -> Result<kube::Client, CheckError> {
    let options = KubeConfigOptions {
        context: opts.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&opts.kubeconfig, &opts.context) {
        (Some(path), _) => {
            let file =
                Kubeconfig::read_from(path).map_err(|e| CheckError::Config(error_chain(&e)))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| CheckError::Config(error_chain(&e)))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| CheckError::Config(error_chain(&e)))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| CheckError::Config(error_chain(&e)))?,
    };
    kube::Client::try_from(config).map_err(|e| CheckError::Config(error_chain(&e)))
}

/// Reads the cluster and builds the report. Only GET requests are sent.
pub async fn run(client: &kube::Client, opts: &CheckOptions) -> Result<Report, CheckError> {
    let snap = gather::snapshot(client, opts).await?;
    let settings = match &snap.webhook_deployment {
        Some(d) => expected::from_deployment(d).map_err(|e| e.to_string()),
        None => Err(format!(
            "Deployment {}/{} not found",
            opts.webhook_namespace, opts.webhook_deployment
        )),
    };
    Ok(analyze::analyze(
        &snap,
        opts,
        settings,
        OffsetDateTime::now_utc(),
    ))
}

/// The exit code for a finished report.
pub fn exit_code(report: &Report) -> u8 {
    if report.needs_action {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    }
}

fn rfc3339(t: Option<&Time>) -> Option<String> {
    t.map(|t| t.0.to_string())
}
