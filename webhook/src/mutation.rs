//! The heart of the webhook: a pure function from a pod and the webhook defaults to an
//! optional RFC 6902 JSON patch that injects the `holysheep-sidecar`.
//!
//! It holds the skip rules (not opted in, already injected), the refusals (invalid
//! annotation, hostNetwork, port collision, request above limit, reserved volume name) and
//! builds every path from tokens, so keys are escaped per RFC 6901
//! (`holysheep/status` is `holysheep~1status`). Patches work on every pod shape: a missing
//! `annotations`, `volumes`, `initContainers` or `env` is created whole, never appended to.
//!
//! It works on [`PodFacts`], the few parts of a pod it reads, so an admission review is
//! never decoded whole (`facts`), and every step is linear in the size of the pod (`ports`).
//!
//! [`plan`] also collects the warnings for the user (`warnings`): unknown `holysheep/*`
//! keys, app containers with their own OpenAI settings, a plain sidecar in a Job's pod.
//!
//! No I/O here; `admission` and `inject_cli` are the shells around it.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use serde_json::Value;

use crate::annotations::{self, AnnotationError, Injection, Overrides};
use crate::settings::{Settings, resource_flag_word};
use crate::sidecar::{self, SidecarSpec};
use crate::warnings::{self, Warnings};

mod app_env;
mod facts;
mod metadata;
mod ports;
use app_env::{AppEnv, add_env};
pub use facts::{
    APP_ENV_NAMES, BASE_URL_NAMES, ContainerFacts, Containers, FactsError, MAX_ANNOTATION_BYTES,
    MAX_CONTAINERS, OwnerRef, PodFacts, RESERVED_VOLUMES, SpecFacts, Volumes,
};
use metadata::{annotate, label};
use ports::{PortSet, free_port};

/// Why a pod cannot be injected. Its `Display` is the admission message shown to the user:
/// it names the annotation or field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    /// A `holysheep/*` annotation with a value of the wrong form.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// `hostNetwork: true`: a loopback proxy would be reachable by every host-network pod.
    #[error(
        "holysheep/inject is \"true\" but the pod sets spec.hostNetwork: true; the sidecar's \
         loopback proxy would share the node's network, and with it the API key, with every \
         host-network pod on the node: remove hostNetwork or set holysheep/inject: \"false\""
    )]
    HostNetwork,
    /// A sidecar port that an app container already declares.
    #[error(
        "the sidecar's {role} port {port} ({annotation}) collides with containerPort {port} \
         of container {container:?}: set the annotation {annotation}: \"{suggestion}\" \
         (or another free port)"
    )]
    PortCollision {
        /// `proxy` or `admin`.
        role: &'static str,
        /// The port.
        port: u16,
        /// The annotation that moves it.
        annotation: &'static str,
        /// The app container declaring it.
        container: String,
        /// A port free in this pod.
        suggestion: u16,
    },
    /// Proxy and admin port are the same.
    #[error(
        "the sidecar's proxy port ({}) and admin port ({}) are both {port}: give them \
         different ports",
        annotations::PORT,
        annotations::ADMIN_PORT
    )]
    SamePorts {
        /// The port.
        port: u16,
    },
    /// A request above its limit, which the apiserver would refuse.
    #[error(
        "the sidecar's {resource} request {request} is larger than its {resource} limit \
         {limit}: raise holysheep/proxy-{resource}-limit or lower \
         holysheep/proxy-{resource}-request"
    )]
    RequestAboveLimit {
        /// `cpu` or `memory`.
        resource: &'static str,
        /// The request.
        request: String,
        /// The limit.
        limit: String,
    },
    /// The pod already has a volume with a name the injection needs.
    #[error(
        "the pod already has a volume named {name:?}, a name reserved for the injected \
         sidecar: rename that volume"
    )]
    VolumeNameTaken {
        /// The volume name.
        name: &'static str,
    },
    /// An opted-in pod without a spec.
    #[error("the pod has no spec: there is nothing to inject into")]
    MissingSpec,
    /// More containers than the injection handles (each app container gets its own
    /// patch operations).
    #[error(
        "the pod has {count} containers and init containers, more than the {max} the sidecar \
         injection handles: set holysheep/inject: \"false\" or split the pod"
    )]
    TooManyContainers {
        /// Containers and init containers in the pod.
        count: usize,
        /// [`MAX_CONTAINERS`].
        max: usize,
    },
    /// Building the patch value failed (a bug, not a user error).
    #[error("internal error: failed to build the sidecar patch")]
    Internal(#[source] serde_json::Error),
}

/// Computes the patch that injects the sidecar into `pod`, or `None` when the pod is not
/// opted in (`holysheep/inject` absent or `"false"`) or already injected (marker
/// annotation, or a container named `holysheep-sidecar`: safe under
/// `reinvocationPolicy: IfNeeded`).
pub fn mutate(pod: &Pod, settings: &Settings) -> Result<Option<Patch>, MutationError> {
    mutate_facts(&PodFacts::from_pod(pod), settings)
}

/// [`mutate`] on the facts of a pod, without the warnings.
pub fn mutate_facts(pod: &PodFacts, settings: &Settings) -> Result<Option<Patch>, MutationError> {
    decide(pod, settings, &mut Warnings::default())
}

/// What the mutation decided for one pod, and the warnings to show whatever it decided.
#[derive(Debug)]
pub struct Plan {
    /// The patch, `None` when the pod is left alone, or why it is refused.
    pub outcome: Result<Option<Patch>, MutationError>,
    /// Short lines for the user (at most a handful), empty when all is well.
    pub warnings: Vec<String>,
}

/// [`mutate_facts`] with the warnings: what the admission server and `inject` call.
/// Unknown `holysheep/*` keys are reported on every pod (a misspelt `holysheep/inject`
/// is precisely a pod that is not opted in); the rest only on pods being injected.
pub fn plan(pod: &PodFacts, settings: &Settings) -> Plan {
    let mut warnings = Warnings::default();
    if let Some(annotations) = &pod.annotations {
        warnings::unknown_annotations(annotations, &mut warnings);
    }
    let outcome = decide(pod, settings, &mut warnings);
    Plan {
        outcome,
        warnings: warnings.into_lines(),
    }
}

fn decide(
    pod: &PodFacts,
    settings: &Settings,
    warnings: &mut Warnings,
) -> Result<Option<Patch>, MutationError> {
    let no_annotations = BTreeMap::new();
    let pod_annotations = pod.annotations.as_ref().unwrap_or(&no_annotations);
    if annotations::injection(pod_annotations)? == Injection::NotRequested {
        return Ok(None);
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Err(MutationError::MissingSpec);
    };
    if annotations::is_marked_injected(pod_annotations) || has_sidecar(spec) {
        return Ok(None);
    }
    if spec.host_network {
        return Err(MutationError::HostNetwork);
    }
    let count = spec
        .containers
        .len
        .saturating_add(spec.init_containers.as_ref().map_or(0, |c| c.len));
    if count > MAX_CONTAINERS {
        return Err(MutationError::TooManyContainers {
            count,
            max: MAX_CONTAINERS,
        });
    }
    let overrides = Overrides::parse(pod_annotations)?;
    let native_from_annotation = overrides.native_sidecar.is_some();
    let mut sidecar = SidecarSpec::resolve(settings, overrides);
    sidecar.workload = pod.workload_name();
    check(spec, &sidecar)?;
    if !sidecar.native && pod.owner.as_ref().is_some_and(OwnerRef::is_job) {
        warnings::plain_sidecar_in_job(native_from_annotation, warnings);
    }

    let mut ops = Vec::new();
    annotate(&mut ops, pod.annotations.as_ref(), spec, &sidecar);
    label(&mut ops, pod.has_labels);
    add_to_list(
        &mut ops,
        &["spec", "volumes"],
        spec.volumes.is_some(),
        &sidecar.volumes(),
    )?;
    let app_env = AppEnv {
        vars: sidecar.app_env(),
        base_url: sidecar.base_url(),
    };
    for (index, container) in spec.containers.iter().enumerate() {
        add_env(&mut ops, "containers", index, container, &app_env, warnings)?;
    }
    // Init containers see the proxy only when it is a native sidecar started before them;
    // in plain mode the proxy starts after every init container has finished, so pointing
    // them at it would only turn their calls into connection errors.
    if sidecar.native {
        for (index, container) in spec
            .init_containers
            .iter()
            .flat_map(|c| c.iter())
            .enumerate()
        {
            add_env(
                &mut ops,
                "initContainers",
                index,
                container,
                &app_env,
                warnings,
            )?;
        }
    }
    // Last, so the env operations above still use the original init container indices.
    insert_sidecar(&mut ops, spec, &sidecar)?;
    Ok(Some(Patch(ops)))
}

/// App and init containers, in that order.
fn all_containers(spec: &SpecFacts) -> impl Iterator<Item = &ContainerFacts> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flat_map(|c| c.iter()))
}

fn has_sidecar(spec: &SpecFacts) -> bool {
    all_containers(spec).any(|c| c.name == sidecar::CONTAINER_NAME)
}

/// The refusals that depend on the merged settings.
fn check(spec: &SpecFacts, sidecar: &SidecarSpec) -> Result<(), MutationError> {
    if sidecar.proxy_port == sidecar.admin_port {
        return Err(MutationError::SamePorts {
            port: sidecar.proxy_port,
        });
    }
    if let Some((resource, request, limit)) = sidecar.resources.request_above_limit() {
        return Err(MutationError::RequestAboveLimit {
            resource: resource_flag_word(resource),
            request: request.to_string(),
            limit: limit.to_string(),
        });
    }
    check_ports(spec, sidecar)?;
    if let Some(name) = spec.volumes.as_ref().and_then(|v| v.reserved) {
        return Err(MutationError::VolumeNameTaken { name });
    }
    Ok(())
}

/// Refuses a sidecar port that an app or init container declares, suggesting a free one.
/// One pass builds the set of declared ports; the suggestion then scans the port range
/// once at most.
fn check_ports(spec: &SpecFacts, sidecar: &SidecarSpec) -> Result<(), MutationError> {
    let mut taken: PortSet = all_containers(spec)
        .flat_map(|c| c.ports.iter().copied())
        .collect();
    let sidecar_ports = [
        ("proxy", sidecar.proxy_port, annotations::PORT),
        ("admin", sidecar.admin_port, annotations::ADMIN_PORT),
    ];
    for (role, port, annotation) in sidecar_ports {
        if !taken.contains(port) {
            continue;
        }
        let container = all_containers(spec)
            .find(|c| c.ports.contains(&port))
            .map(|c| c.name.clone())
            .unwrap_or_default();
        taken.insert(sidecar.proxy_port);
        taken.insert(sidecar.admin_port);
        return Err(MutationError::PortCollision {
            role,
            port,
            annotation,
            container,
            suggestion: free_port(&taken, port).unwrap_or(port),
        });
    }
    Ok(())
}

/// Adds `items` to the list at `path`: the whole list when it is missing, else one
/// append (`/-`) per item. Each item is written name-first.
fn add_to_list<T: Serialize>(
    ops: &mut Vec<PatchOperation>,
    path: &[&str],
    exists: bool,
    items: &[T],
) -> Result<(), MutationError> {
    if items.is_empty() {
        return Ok(());
    }
    let values = items
        .iter()
        .map(|item| to_value(item).map(name_first))
        .collect::<Result<Vec<_>, _>>()?;
    if !exists {
        ops.push(add(path, Value::Array(values)));
        return Ok(());
    }
    let mut append = path.to_vec();
    append.push("-");
    for value in values {
        ops.push(add(&append, value));
    }
    Ok(())
}

/// Native: first init container (so it starts before every other one). Plain: appended
/// to the containers, so the app stays first for tools that pick container 0.
fn insert_sidecar(
    ops: &mut Vec<PatchOperation>,
    spec: &SpecFacts,
    sidecar: &SidecarSpec,
) -> Result<(), MutationError> {
    let container = sidecar.container();
    if !sidecar.native {
        // An empty list may also be a missing one (k8s-openapi defaults it): add it whole.
        let exists = spec.containers.len > 0;
        return add_to_list(ops, &["spec", "containers"], exists, &[container]);
    }
    match spec.init_containers {
        None => add_to_list(ops, &["spec", "initContainers"], false, &[container]),
        Some(_) => {
            let value = name_first(to_value(container)?);
            ops.push(add(&["spec", "initContainers", "0"], value));
            Ok(())
        }
    }
}

/// k8s-openapi serializes fields alphabetically; put the identifying ones first so the
/// container reads well in `inject` output and `kubectl get -o yaml`.
fn name_first(value: Value) -> Value {
    const FIRST: [&str; 4] = ["name", "image", "imagePullPolicy", "restartPolicy"];
    let Value::Object(fields) = value else {
        return value;
    };
    let (mut first, rest): (Vec<_>, Vec<_>) = fields
        .into_iter()
        .partition(|(key, _)| FIRST.contains(&key.as_str()));
    first.sort_by_key(|(key, _)| FIRST.iter().position(|k| k == key));
    Value::Object(first.into_iter().chain(rest).collect())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

fn to_value(value: impl Serialize) -> Result<Value, MutationError> {
    serde_json::to_value(value).map_err(MutationError::Internal)
}

#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod tests;
