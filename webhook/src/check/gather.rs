//! Reads what the report needs from the Kubernetes API, with GET requests only: lists of
//! namespaces, pods and workloads in the scope, and the webhook's Deployment,
//! MutatingWebhookConfiguration and TLS Secret.
//!
//! Lists are paged (500 objects a page). A refused call (401, 403) stops the check with an
//! error naming the verb and the resource, so the user knows which RBAC rule is missing.
//!
//! What it does not do: interpret anything (`analyze`), or write.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;

use super::{CheckError, CheckOptions};

/// Objects per list page.
const PAGE: u32 = 500;

/// Everything read from the cluster, as it was read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The namespaces in scope (one with `-n`).
    pub namespaces: Vec<Namespace>,
    /// Pods in scope.
    pub pods: Vec<Pod>,
    /// ReplicaSets in scope, to find a pod's Deployment.
    pub replica_sets: Vec<ReplicaSet>,
    /// Deployments in scope.
    pub deployments: Vec<Deployment>,
    /// StatefulSets in scope.
    pub stateful_sets: Vec<StatefulSet>,
    /// DaemonSets in scope.
    pub daemon_sets: Vec<DaemonSet>,
    /// Jobs in scope.
    pub jobs: Vec<Job>,
    /// The webhook's Deployment, if it exists.
    pub webhook_deployment: Option<Deployment>,
    /// The MutatingWebhookConfiguration, if it exists.
    pub webhook_config: Option<MutatingWebhookConfiguration>,
    /// The TLS Secret, if it exists.
    pub tls_secret: Option<Secret>,
}

/// Reads the snapshot for `opts.namespace` (`None`: all namespaces).
pub async fn snapshot(client: &kube::Client, opts: &CheckOptions) -> Result<Snapshot, CheckError> {
    let scope = opts.namespace.as_deref();
    let namespaces = match scope {
        Some(ns) => {
            let api: Api<Namespace> = Api::all(client.clone());
            let found = api
                .get_opt(ns)
                .await
                .map_err(|e| CheckError::from_kube(e, "get", "namespaces", Some(ns), None))?;
            match found {
                Some(namespace) => vec![namespace],
                None => return Err(CheckError::NoSuchNamespace(ns.to_owned())),
            }
        }
        None => list_all(Api::all(client.clone()), "namespaces", None).await?,
    };
    let webhook_ns = opts.webhook_namespace.as_str();
    let deployments_api: Api<Deployment> = Api::namespaced(client.clone(), webhook_ns);
    let webhook_deployment = deployments_api
        .get_opt(&opts.webhook_deployment)
        .await
        .map_err(|e| {
            CheckError::from_kube(
                e,
                "get",
                "deployments.apps",
                Some(&opts.webhook_deployment),
                Some(webhook_ns),
            )
        })?;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let webhook_config = configs.get_opt(&opts.webhook_config).await.map_err(|e| {
        CheckError::from_kube(
            e,
            "get",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            Some(&opts.webhook_config),
            None,
        )
    })?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), webhook_ns);
    let tls_secret = secrets.get_opt(&opts.tls_secret).await.map_err(|e| {
        CheckError::from_kube(
            e,
            "get",
            "secrets",
            Some(&opts.tls_secret),
            Some(webhook_ns),
        )
    })?;
    Ok(Snapshot {
        namespaces,
        pods: list_scoped(client, scope, "pods").await?,
        replica_sets: list_scoped(client, scope, "replicasets.apps").await?,
        deployments: list_scoped(client, scope, "deployments.apps").await?,
        stateful_sets: list_scoped(client, scope, "statefulsets.apps").await?,
        daemon_sets: list_scoped(client, scope, "daemonsets.apps").await?,
        jobs: list_scoped(client, scope, "jobs.batch").await?,
        webhook_deployment,
        webhook_config,
        tls_secret,
    })
}

async fn list_scoped<K>(
    client: &kube::Client,
    scope: Option<&str>,
    resource: &'static str,
) -> Result<Vec<K>, CheckError>
where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    list_all(api, resource, scope).await
}

async fn list_all<K>(
    api: Api<K>,
    resource: &'static str,
    scope: Option<&str>,
) -> Result<Vec<K>, CheckError>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|e| CheckError::from_kube(e, "list", resource, None, scope))?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}
