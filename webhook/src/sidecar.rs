//! Pure builders for what injection adds to a pod: the `holysheep-sidecar` container
//! (native or plain), its volumes, and the env given to app containers. Hardening, probes
//! and resources live here and nowhere else.
//!
//! It does not decide whether or where to inject (that is `mutation`), and builds
//! k8s-openapi types so the output is schema-correct by construction.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretProjection, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::annotations::Overrides;
use crate::settings::{PullPolicy, Quantity, Resources, Settings};

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "holysheep-sidecar";
/// Name of the credential volume (from the Secret), mounted in the sidecar only.
pub const CREDENTIALS_VOLUME: &str = "holysheep-credentials";
/// Name of the optional config volume (from the `holysheep/config` ConfigMap).
pub const CONFIG_VOLUME: &str = "holysheep-config";
/// Where the credential volume is mounted in the sidecar.
pub const CREDENTIALS_DIR: &str = "/var/run/secrets/holysheep";
/// File name of the API key in the credential volume.
pub const API_KEY_FILE: &str = "api-key";
/// Where the config volume is mounted in the sidecar.
pub const CONFIG_DIR: &str = "/etc/holysheep";
/// Key in the ConfigMap, and file name in the config volume.
pub const CONFIG_FILE: &str = "config.yaml";
/// File name of the egress proxy's `user:password` in the credential volume, from the
/// Secret key of the same name; the sidecar looks for it beside the API key.
pub const EGRESS_PROXY_AUTH: &str = "egress-proxy-auth";
/// Name of the upstream CA volume (from the `holysheep/upstream-ca` ConfigMap).
pub const UPSTREAM_CA_VOLUME: &str = "holysheep-upstream-ca";
/// Where the upstream CA volume is mounted in the sidecar: apart from the Secret's mount,
/// since it is not a secret.
pub const UPSTREAM_CA_DIR: &str = "/var/run/holysheep/upstream-ca";
/// Key in the CA ConfigMap, and file name in the volume.
pub const UPSTREAM_CA_FILE: &str = "ca.crt";
/// Name of the admin container port (at most 15 characters, as Kubernetes requires).
pub const ADMIN_PORT_NAME: &str = "hs-metrics";
/// The env name of the app's key, given the placeholder.
pub const API_KEY_ENV: &str = "OPENAI_API_KEY";
/// `OPENAI_API_KEY` given to apps: SDKs refuse to start without one; the sidecar replaces it.
pub const API_KEY_PLACEHOLDER: &str = "injected-by-holysheep";
/// uid and gid of the sidecar (the distroless `nonroot` user).
pub const SIDECAR_UID: i64 = 65532;
/// Mode of the mounted files: readable by uid 65532 although Secret files belong to root;
/// still private, since no other container mounts the volume.
pub const FILE_MODE: i32 = 0o444;

/// Everything needed to build the sidecar for one pod: webhook defaults merged with the
/// pod's annotation overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct SidecarSpec {
    /// Image.
    pub image: String,
    /// Image pull policy.
    pub pull_policy: PullPolicy,
    /// Loopback proxy port.
    pub proxy_port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// Native sidecar (init container with `restartPolicy: Always`) or plain container.
    pub native: bool,
    /// Upstream override.
    pub upstream: Option<String>,
    /// Secret holding the API key.
    pub secret_name: String,
    /// Key in that Secret.
    pub secret_key: String,
    /// ConfigMap with `config.yaml`, if any.
    pub config_map: Option<String>,
    /// Requests and limits.
    pub resources: Resources,
    /// Egress proxy URL, if the sidecar goes through one.
    pub egress_proxy: Option<String>,
    /// `NO_PROXY` list; only ever set along with `egress_proxy`.
    pub no_proxy: Option<String>,
    /// ConfigMap with `ca.crt`, if any.
    pub upstream_ca: Option<String>,
    /// Daily spend limit in USD, as written in `holysheep/budget-usd-per-day`.
    pub budget_usd_per_day: Option<String>,
    /// `holysheep/budget-key`; when absent the budget key is [`Self::workload`].
    pub budget_key: Option<String>,
    /// The pod's workload name (`PodFacts::workload_name`), set by the mutation: the
    /// default budget key. Not an injection setting, so not in the config hash.
    pub workload: Option<String>,
}

impl SidecarSpec {
    /// Merges the pod's overrides over the webhook defaults (an override wins field by
    /// field, so a pod can raise its memory limit and keep the default request).
    pub fn resolve(settings: &Settings, overrides: Overrides) -> Self {
        let defaults = &settings.resources;
        let mut spec = Self {
            image: overrides.image.unwrap_or_else(|| settings.image.clone()),
            pull_policy: settings.image_pull_policy,
            proxy_port: overrides.port.unwrap_or(settings.proxy_port),
            admin_port: overrides.admin_port.unwrap_or(settings.admin_port),
            native: overrides.native_sidecar.unwrap_or(settings.native_sidecar),
            upstream: overrides.upstream.or_else(|| settings.upstream.clone()),
            secret_name: overrides
                .secret
                .unwrap_or_else(|| settings.secret_name.clone()),
            secret_key: overrides
                .secret_key
                .unwrap_or_else(|| settings.secret_key.clone()),
            config_map: overrides.config,
            egress_proxy: overrides
                .egress_proxy
                .unwrap_or_else(|| settings.egress_proxy.clone()),
            no_proxy: None,
            upstream_ca: overrides
                .upstream_ca
                .or_else(|| settings.upstream_ca_config_map.clone()),
            budget_usd_per_day: overrides.budget_usd_per_day,
            budget_key: overrides.budget_key,
            workload: None,
            resources: Resources {
                cpu_request: overrides
                    .cpu_request
                    .or_else(|| defaults.cpu_request.clone()),
                memory_request: overrides
                    .memory_request
                    .or_else(|| defaults.memory_request.clone()),
                cpu_limit: overrides.cpu_limit.or_else(|| defaults.cpu_limit.clone()),
                memory_limit: overrides
                    .memory_limit
                    .or_else(|| defaults.memory_limit.clone()),
            },
        };
        // Without a proxy there is nothing to bypass.
        if spec.egress_proxy.is_some() {
            spec.no_proxy.clone_from(&settings.no_proxy);
        }
        spec
    }

    /// `http://127.0.0.1:<port>/v1`: what the apps' SDKs call.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.proxy_port)
    }

    /// The sidecar container; with `restartPolicy: Always` when native.
    pub fn container(&self) -> Container {
        let mut env = vec![
            value_env("HOLYSHEEP_LISTEN", format!("127.0.0.1:{}", self.proxy_port)),
            value_env(
                "HOLYSHEEP_ADMIN_LISTEN",
                format!("0.0.0.0:{}", self.admin_port),
            ),
            value_env(
                "HOLYSHEEP_API_KEY_FILE",
                format!("{CREDENTIALS_DIR}/{API_KEY_FILE}"),
            ),
        ];
        if let Some(upstream) = &self.upstream {
            env.push(value_env("HOLYSHEEP_UPSTREAM", upstream.clone()));
        }
        if self.config_map.is_some() {
            env.push(value_env(
                "HOLYSHEEP_CONFIG",
                format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            ));
        }
        if let Some(proxy) = &self.egress_proxy {
            env.push(value_env("HOLYSHEEP_EGRESS_PROXY", proxy.clone()));
            if let Some(no_proxy) = &self.no_proxy {
                env.push(value_env("NO_PROXY", no_proxy.clone()));
            }
        }
        if self.upstream_ca.is_some() {
            env.push(value_env(
                "HOLYSHEEP_UPSTREAM_CA_FILE",
                format!("{UPSTREAM_CA_DIR}/{UPSTREAM_CA_FILE}"),
            ));
        }
        if let Some(usd) = &self.budget_usd_per_day {
            env.push(value_env("HOLYSHEEP_BUDGET_USD_PER_DAY", usd.clone()));
        }
        env.push(field_env("POD_NAME", "metadata.name"));
        env.push(field_env("POD_NAMESPACE", "metadata.namespace"));
        // After POD_NAMESPACE, which the kubelet then expands in it: the namespace is
        // known at run time even when `inject` saw a manifest without one.
        if let Some(key) = self.budget_key.as_ref().or(self.workload.as_ref()) {
            env.push(value_env(
                "HOLYSHEEP_BUDGET_KEY",
                format!("$(POD_NAMESPACE)/{key}"),
            ));
        }

        let mut mounts = vec![VolumeMount {
            name: CREDENTIALS_VOLUME.to_owned(),
            mount_path: CREDENTIALS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }];
        if self.config_map.is_some() {
            mounts.push(VolumeMount {
                name: CONFIG_VOLUME.to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        if self.upstream_ca.is_some() {
            mounts.push(VolumeMount {
                name: UPSTREAM_CA_VOLUME.to_owned(),
                mount_path: UPSTREAM_CA_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }

        Container {
            name: CONTAINER_NAME.to_owned(),
            image: Some(self.image.clone()),
            image_pull_policy: Some(self.pull_policy.as_str().to_owned()),
            // A restartable init container is what makes it a native sidecar: started
            // before the app, kept running, and not holding a Job open when the app exits.
            restart_policy: self.native.then(|| "Always".to_owned()),
            env: Some(env),
            ports: Some(vec![ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_owned()),
                container_port: i32::from(self.admin_port),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            }]),
            // Startup gates the app containers (native mode): generous, fast polling.
            startup_probe: Some(self.probe("/readyz", 1, 120)),
            readiness_probe: Some(self.probe("/readyz", 5, 3)),
            liveness_probe: Some(self.probe("/healthz", 10, 3)),
            resources: resource_requirements(&self.resources),
            security_context: Some(hardened_security_context()),
            volume_mounts: Some(mounts),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Container::default()
        }
    }

    /// The credential volume, the config volume when `holysheep/config` is set and the
    /// upstream CA volume when a CA ConfigMap applies. The ConfigMaps are optional: a
    /// missing one leaves an empty directory and the sidecar runs on its defaults (system
    /// roots, built-in config) instead of the pod being stuck in ContainerCreating.
    pub fn volumes(&self) -> Vec<Volume> {
        let mut volumes = vec![self.credentials_volume()];
        if let Some(config_map) = &self.config_map {
            volumes.push(config_map_volume(CONFIG_VOLUME, config_map, CONFIG_FILE));
        }
        if let Some(config_map) = &self.upstream_ca {
            volumes.push(config_map_volume(
                UPSTREAM_CA_VOLUME,
                config_map,
                UPSTREAM_CA_FILE,
            ));
        }
        volumes
    }

    /// The Secret's API key as `api-key`, required (the pod waits for it, as before). With
    /// an egress proxy, also its `egress-proxy-auth` key, optional: a proxy without
    /// authentication needs none. One secret volume cannot mix the two (its `optional`
    /// covers the Secret and every item alike), so that case is a projected volume with
    /// two sources from the same Secret, the second one optional.
    fn credentials_volume(&self) -> Volume {
        let api_key = vec![key_to_path(&self.secret_key, API_KEY_FILE)];
        if self.egress_proxy.is_none() {
            return Volume {
                name: CREDENTIALS_VOLUME.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(self.secret_name.clone()),
                    items: Some(api_key),
                    default_mode: Some(FILE_MODE),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            };
        }
        let source = |items, optional| VolumeProjection {
            secret: Some(SecretProjection {
                name: self.secret_name.clone(),
                items: Some(items),
                optional,
            }),
            ..VolumeProjection::default()
        };
        Volume {
            name: CREDENTIALS_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    source(api_key, None),
                    source(
                        vec![key_to_path(EGRESS_PROXY_AUTH, EGRESS_PROXY_AUTH)],
                        Some(true),
                    ),
                ]),
                default_mode: Some(FILE_MODE),
            }),
            ..Volume::default()
        }
    }

    /// Env for app containers: the SDK base URLs and the placeholder key. The caller adds
    /// only the names a container does not set already.
    pub fn app_env(&self) -> Vec<EnvVar> {
        let base = self.base_url();
        vec![
            value_env("OPENAI_BASE_URL", base.clone()),
            value_env("OPENAI_API_BASE", base.clone()),
            value_env("HOLYSHEEP_BASE_URL", base),
            value_env(API_KEY_ENV, API_KEY_PLACEHOLDER.to_owned()),
        ]
    }

    fn probe(&self, path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::Int(i32::from(self.admin_port)),
                scheme: Some("HTTP".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period_seconds),
            failure_threshold: Some(failure_threshold),
            timeout_seconds: Some(1),
            ..Probe::default()
        }
    }
}

/// runAsNonRoot as uid/gid 65532, read-only root filesystem, no privilege escalation, no
/// capabilities, RuntimeDefault seccomp: passes the `restricted` Pod Security Standard.
pub fn hardened_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn resource_requirements(resources: &Resources) -> Option<ResourceRequirements> {
    let map = |pairs: [(&str, &Option<Quantity>); 2]| {
        let map: BTreeMap<String, K8sQuantity> = pairs
            .into_iter()
            .filter_map(|(name, q)| {
                let q = q.as_ref()?;
                Some((name.to_owned(), K8sQuantity(q.as_str().to_owned())))
            })
            .collect();
        (!map.is_empty()).then_some(map)
    };
    let requests = map([
        ("cpu", &resources.cpu_request),
        ("memory", &resources.memory_request),
    ]);
    let limits = map([
        ("cpu", &resources.cpu_limit),
        ("memory", &resources.memory_limit),
    ]);
    (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
        requests,
        limits,
        ..ResourceRequirements::default()
    })
}

/// A Secret key as a file readable by the sidecar's uid (see [`FILE_MODE`]).
fn key_to_path(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        mode: Some(FILE_MODE),
    }
}

/// A ConfigMap's `key` as the one file of a volume, optional (see `volumes`).
fn config_map_volume(volume: &str, config_map: &str, key: &str) -> Volume {
    Volume {
        name: volume.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            items: Some(vec![KeyToPath {
                key: key.to_owned(),
                path: key.to_owned(),
                mode: None,
            }]),
            default_mode: Some(FILE_MODE),
            optional: Some(true),
        }),
        ..Volume::default()
    }
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}
