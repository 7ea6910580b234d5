//! What the mutation reads of a pod, and nothing else: the namespace, name and
//! generateName, annotations, whether it has labels (and the `pod-template-hash` one), its
//! controller owner, `hostNetwork`, each container's name, the app env
//! names it sets that the injection would also set (with the value of a base URL), its
//! ports, and whether a volume already uses a name the injection needs.
//!
//! Decoded straight from the AdmissionReview JSON, so a review costs memory in proportion
//! to what the mutation needs rather than to the object: in k8s-openapi a `Container` takes
//! about 2 KiB and a `Volume` 3 KiB, so 3 MiB of minimal entries would decode into hundreds
//! of MiB as a typed `Pod`. Every part kept is bounded: container lists keep their first
//! [`MAX_CONTAINERS`] entries and count the rest, annotations above the Kubernetes size
//! limit are refused, env entries and volumes are reduced to the names the injection cares
//! about while they are read. The offline `inject` command builds the same facts from a
//! typed `Pod` ([`PodFacts::from_pod`]).
//!
//! What it does not do: validate the pod (kube-apiserver does that after admission) or
//! decide anything (`mutation`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::sidecar;

/// Containers kept per list (`containers`, `initContainers`); longer lists are counted,
/// and the injection refuses pods with more containers than this in all (every app
/// container gets its own env operations, so the patch grows with the count).
pub const MAX_CONTAINERS: usize = 1000;

/// Kubernetes refuses a pod whose annotation keys and values add up to more than this
/// (256 KiB), so a larger map is refused while it is read instead of being held.
pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;

/// The env names the injection gives app containers (`SidecarSpec::app_env`). Only these
/// are kept of a container's env: whether a container sets them decides what is added.
pub const APP_ENV_NAMES: [&str; 4] = [
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "HOLYSHEEP_BASE_URL",
    "OPENAI_API_KEY",
];

/// The env names through which an app picks its own OpenAI base URL.
pub const BASE_URL_NAMES: [&str; 2] = ["OPENAI_BASE_URL", "OPENAI_API_BASE"];

/// Base URL values are kept up to this many bytes: enough to compare with the sidecar's
/// `http://127.0.0.1:<port>/v1`, which a longer value cannot be.
const MAX_BASE_URL_BYTES: usize = 64;

/// Base URL entries kept per container (a list may repeat a name).
const MAX_BASE_URLS: usize = 4;

/// Volume names the injection adds; a pod already using one is refused.
pub const RESERVED_VOLUMES: [&str; 3] = [
    sidecar::CREDENTIALS_VOLUME,
    sidecar::CONFIG_VOLUME,
    sidecar::UPSTREAM_CA_VOLUME,
];

/// The parts of a pod the mutation reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WirePod")]
pub struct PodFacts {
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `metadata.name`; pods made by controllers have none yet at admission.
    pub name: Option<String>,
    /// `metadata.generateName`.
    pub generate_name: Option<String>,
    /// The `pod-template-hash` label a Deployment's ReplicaSet puts on its pods.
    pub template_hash: Option<String>,
    /// `metadata.annotations`; `None` when absent or null.
    pub annotations: Option<BTreeMap<String, String>>,
    /// Whether `metadata.labels` is present (the patch then adds one label instead of the
    /// whole map).
    pub has_labels: bool,
    /// The `ownerReferences` entry with `controller: true` (the ReplicaSet, Job...).
    pub owner: Option<OwnerRef>,
    /// `spec`; `None` when absent or null.
    pub spec: Option<SpecFacts>,
}

/// Label a Deployment's ReplicaSets put on their pods: the suffix of the ReplicaSet name.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Digits a CronJob appends to the names of its Jobs (the scheduled time in minutes since
/// the Unix epoch, eight digits until the year 2160); shorter digit suffixes are taken as
/// part of a Job's own name.
const CRONJOB_SUFFIX_DIGITS: usize = 8;

impl PodFacts {
    /// The name of the workload the pod belongs to, stable across rollouts and restarts:
    /// a Deployment's name (its ReplicaSet's name without the template hash), a CronJob's
    /// name (its Job's name without the schedule suffix), the owner's name for other
    /// controllers, else the pod's name or `generateName` prefix.
    pub fn workload_name(&self) -> Option<String> {
        let Some(owner) = &self.owner else {
            return self
                .name
                .clone()
                .or_else(|| {
                    let prefix = self.generate_name.as_deref()?.trim_end_matches('-');
                    Some(prefix.to_owned())
                })
                .filter(|name| !name.is_empty());
        };
        let name = owner.name.as_str();
        let base = match owner.kind.as_str() {
            "ReplicaSet" => self
                .template_hash
                .as_deref()
                .and_then(|hash| name.strip_suffix(hash)?.strip_suffix('-')),
            _ if owner.is_job() => name.rsplit_once('-').and_then(|(base, suffix)| {
                let schedule = suffix.len() >= CRONJOB_SUFFIX_DIGITS
                    && suffix.chars().all(|c| c.is_ascii_digit());
                schedule.then_some(base)
            }),
            _ => None,
        };
        Some(base.unwrap_or(name).to_owned()).filter(|name| !name.is_empty())
    }
}

/// The controller of a pod: where a refusal's Event goes, and whether it is a Job's pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerRef {
    /// `apiVersion`, e.g. `apps/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `kind`, e.g. `ReplicaSet`.
    #[serde(default)]
    pub kind: String,
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `uid`.
    #[serde(default)]
    pub uid: String,
}

impl OwnerRef {
    /// A `batch` Job (a CronJob's pods are owned by its Jobs): the pod must end.
    pub fn is_job(&self) -> bool {
        self.kind == "Job" && self.api_version.starts_with("batch/")
    }
}

/// The parts of a pod spec the mutation reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecFacts {
    /// `hostNetwork: true`.
    pub host_network: bool,
    /// `containers` (absent or null: empty).
    pub containers: Containers,
    /// `initContainers`; `None` when absent or null.
    pub init_containers: Option<Containers>,
    /// `volumes`; `None` when absent or null.
    pub volumes: Option<Volumes>,
}

/// A container list: its first [`MAX_CONTAINERS`] entries and its whole length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Containers {
    /// The entries kept, in order.
    pub kept: Vec<ContainerFacts>,
    /// How many entries the list has, kept or not.
    pub len: usize,
}

/// The parts of a container the mutation reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    /// `name`.
    pub name: String,
    /// `env`, reduced to the names in [`APP_ENV_NAMES`]; `None` when absent or null (the
    /// patch then creates the list instead of appending to it).
    pub env: Option<Vec<String>>,
    /// Every `ports[].containerPort` that is a valid port number.
    pub ports: Vec<u16>,
    /// The values of the [`BASE_URL_NAMES`] entries of `env` (at most a few, each cut to
    /// a few dozen bytes); `None` for one set through `valueFrom`.
    pub base_urls: Vec<Option<String>>,
}

/// What the mutation needs of `volumes`: that the list exists, and the first reserved name
/// in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volumes {
    /// The first volume (in list order) whose name is one of [`RESERVED_VOLUMES`].
    pub reserved: Option<&'static str>,
}

impl PodFacts {
    /// The facts of a typed pod (the offline `inject` path and tests).
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref().map(|spec| SpecFacts {
            host_network: spec.host_network == Some(true),
            containers: Containers::from_typed(&spec.containers),
            init_containers: spec.init_containers.as_deref().map(Containers::from_typed),
            volumes: spec.volumes.as_ref().map(|volumes| Volumes {
                reserved: volumes.iter().find_map(|v| reserved_volume(&v.name)),
            }),
        });
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| OwnerRef {
                api_version: o.api_version.clone(),
                kind: o.kind.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
            });
        Self {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            generate_name: pod.metadata.generate_name.clone(),
            template_hash: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(TEMPLATE_HASH_LABEL).cloned()),
            annotations: pod.metadata.annotations.clone(),
            has_labels: pod.metadata.labels.is_some(),
            owner,
            spec,
        }
    }
}

impl Containers {
    fn from_typed(containers: &[Container]) -> Self {
        let kept = containers
            .iter()
            .take(MAX_CONTAINERS)
            .map(|c| ContainerFacts {
                name: c.name.clone(),
                env: c.env.as_ref().map(|env| {
                    env.iter()
                        .filter_map(|var| app_env_name(&var.name).map(str::to_owned))
                        .collect()
                }),
                ports: c
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| u16::try_from(p.container_port).ok())
                    .collect(),
                base_urls: c
                    .env
                    .iter()
                    .flatten()
                    .filter(|var| BASE_URL_NAMES.contains(&var.name.as_str()))
                    .take(MAX_BASE_URLS)
                    .map(|var| var.value.as_deref().map(cut_base_url))
                    .collect(),
            })
            .collect();
        Self {
            kept,
            len: containers.len(),
        }
    }

    /// The containers kept, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, ContainerFacts> {
        self.kept.iter()
    }
}

fn app_env_name(name: &str) -> Option<&'static str> {
    APP_ENV_NAMES.into_iter().find(|n| *n == name)
}

/// At most [`MAX_BASE_URL_BYTES`] of a value, cut on a character boundary.
fn cut_base_url(value: &str) -> String {
    let mut end = value.len().min(MAX_BASE_URL_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

fn reserved_volume(name: &str) -> Option<&'static str> {
    RESERVED_VOLUMES.into_iter().find(|n| *n == name)
}

// The wire shapes: what serde reads from the JSON. Unknown fields are skipped without
// being stored.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePod {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<WireMetadata>,
    #[serde(default)]
    spec: Option<WireSpec>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMetadata {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    annotations: Option<Annotations>,
    #[serde(default)]
    labels: Option<TemplateHash>,
    #[serde(default)]
    owner_references: Option<Owners>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default)]
    containers: Option<Containers>,
    #[serde(default)]
    init_containers: Option<Containers>,
    #[serde(default)]
    volumes: Option<Volumes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    env: Option<EnvNames>,
    #[serde(default)]
    ports: Option<Ports>,
}

#[derive(Deserialize)]
struct WireNamed<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireEnv<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireOwner {
    #[serde(flatten)]
    reference: OwnerRef,
    #[serde(default)]
    controller: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePort {
    #[serde(default)]
    container_port: Option<i32>,
}

/// Why an object is not read as a Pod (a typed `Pod` refuses the same `apiVersion`/`kind`).
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// `apiVersion` other than `v1`.
    #[error("apiVersion is {0:?}, expected \"v1\"")]
    ApiVersion(String),
    /// `kind` other than `Pod`.
    #[error("kind is {0:?}, expected \"Pod\"")]
    Kind(String),
}

impl TryFrom<WirePod> for PodFacts {
    type Error = FactsError;

    fn try_from(pod: WirePod) -> Result<Self, Self::Error> {
        if let Some(version) = pod.api_version.filter(|v| v != "v1") {
            return Err(FactsError::ApiVersion(version));
        }
        if let Some(kind) = pod.kind.filter(|k| k != "Pod") {
            return Err(FactsError::Kind(kind));
        }
        let metadata = pod.metadata.unwrap_or_default();
        let has_labels = metadata.labels.is_some();
        let spec = pod.spec.map(|spec| SpecFacts {
            host_network: spec.host_network == Some(true),
            containers: spec.containers.unwrap_or_default(),
            init_containers: spec.init_containers,
            volumes: spec.volumes,
        });
        Ok(Self {
            namespace: metadata.namespace,
            name: metadata.name,
            generate_name: metadata.generate_name,
            template_hash: metadata.labels.and_then(|l| l.0),
            annotations: metadata.annotations.map(|a| a.0),
            has_labels,
            owner: metadata.owner_references.and_then(|o| o.0),
            spec,
        })
    }
}

/// Of the labels, only the value of [`TEMPLATE_HASH_LABEL`]; the rest are skipped.
struct TemplateHash(Option<String>);

impl<'de> Deserialize<'de> for TemplateHash {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = TemplateHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of string labels")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut hash = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == TEMPLATE_HASH_LABEL {
                        hash = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(TemplateHash(hash))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// Annotations read with a running total of key and value bytes.
struct Annotations(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Annotations;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of string annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut annotations = BTreeMap::new();
                let mut bytes = 0usize;
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    bytes = bytes.saturating_add(key.len()).saturating_add(value.len());
                    if bytes > MAX_ANNOTATION_BYTES {
                        return Err(de::Error::custom(format_args!(
                            "metadata.annotations: keys and values add up to more than \
                             {MAX_ANNOTATION_BYTES} bytes, which Kubernetes refuses; \
                             shorten or remove annotations"
                        )));
                    }
                    annotations.insert(key, value);
                }
                Ok(Annotations(annotations))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = Containers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of containers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut containers = Containers::default();
                loop {
                    if containers.kept.len() < MAX_CONTAINERS {
                        let Some(c) = seq.next_element::<WireContainer>()? else {
                            break;
                        };
                        let (env, base_urls) =
                            c.env.map_or((None, Vec::new()), |e| (Some(e.0), e.1));
                        containers.kept.push(ContainerFacts {
                            name: c.name.unwrap_or_default(),
                            env,
                            ports: c.ports.map(|p| p.0).unwrap_or_default(),
                            base_urls,
                        });
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    containers.len += 1;
                }
                Ok(containers)
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
    }
}

/// A container's env, reduced to the names in [`APP_ENV_NAMES`], and the base URL values.
struct EnvNames(Vec<String>, Vec<Option<String>>);

impl<'de> Deserialize<'de> for EnvNames {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = EnvNames;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of env vars")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                let mut base_urls = Vec::new();
                while let Some(var) = seq.next_element::<WireEnv<'de>>()? {
                    let Some(name) = var.name.as_deref().and_then(app_env_name) else {
                        continue;
                    };
                    if BASE_URL_NAMES.contains(&name) && base_urls.len() < MAX_BASE_URLS {
                        base_urls.push(var.value.as_deref().map(cut_base_url));
                    }
                    names.push(name.to_owned());
                }
                Ok(EnvNames(names, base_urls))
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
    }
}

/// `ownerReferences`, reduced to the controller's entry.
struct Owners(Option<OwnerRef>);

impl<'de> Deserialize<'de> for Owners {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = Owners;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of owner references")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut controller = None;
                while let Some(owner) = seq.next_element::<WireOwner>()? {
                    if controller.is_none() && owner.controller == Some(true) {
                        controller = Some(owner.reference);
                    }
                }
                Ok(Owners(controller))
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
    }
}

/// A container's port numbers.
struct Ports(Vec<u16>);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of container ports")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut ports = Vec::new();
                while let Some(port) = seq.next_element::<WirePort>()? {
                    // A typed Pod reads a missing containerPort as 0; out-of-range numbers
                    // cannot collide with a sidecar port.
                    if let Ok(port) = u16::try_from(port.container_port.unwrap_or_default()) {
                        ports.push(port);
                    }
                }
                Ok(Ports(ports))
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
    }
}

impl<'de> Deserialize<'de> for Volumes {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = Volumes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of volumes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut volumes = Volumes::default();
                while let Some(volume) = seq.next_element::<WireNamed<'de>>()? {
                    if volumes.reserved.is_none() {
                        volumes.reserved = volume.name.as_deref().and_then(reserved_volume);
                    }
                }
                Ok(volumes)
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
    }
}
