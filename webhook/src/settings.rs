//! Webhook-level defaults for the injected sidecar, set once by flags (or their env twins)
//! on `serve` and `inject`, and overridden per pod by the `holysheep/*` annotations
//! (see `annotations`).
//!
//! Defaults and why:
//! - image `ghcr.io/holysheep/holysheep-sidecar:<this crate's version>`, pulled
//!   `IfNotPresent`: the webhook and the sidecar are released together, and a pinned tag
//!   needs no re-pull on every pod start.
//! - proxy port 8080 and admin port 9090, the ports the README and the examples use.
//! - native sidecar on: the proxy is up before the app starts and Jobs still complete.
//! - requests 10m CPU / 32Mi memory, a 128Mi memory limit and no CPU limit. Like Linkerd's
//!   defaults: a CPU limit on a proxy in every request's path turns CFS throttling into tail
//!   latency, while a memory limit keeps a leak from taking the node. Namespaces whose
//!   LimitRange or quota requires a CPU limit can set `--proxy-cpu-limit`.
//! - no egress proxy, `NO_PROXY` list or CA ConfigMap: most clusters reach the upstream
//!   directly. Their env twins are `HOLYSHEEP_SIDECAR_*`, not the sidecar's own
//!   `HOLYSHEEP_EGRESS_PROXY` or a plain `NO_PROXY`, which in the webhook's Deployment
//!   would read as settings of the webhook itself.
//!
//! This module only holds and validates values; `sidecar` turns them into pod objects.

mod quantity;
pub mod values;

pub use quantity::Quantity;
pub use values::PullPolicy;

/// Default sidecar image: same version as this webhook.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/holysheep/holysheep-sidecar:",
    env!("CARGO_PKG_VERSION")
);
/// Default loopback port of the proxy (`holysheep/port`).
pub const DEFAULT_PROXY_PORT: u16 = 8080;
/// Default admin port: `/metrics`, `/healthz`, `/readyz`.
pub const DEFAULT_ADMIN_PORT: u16 = 9090;
/// Default Secret holding the API key (`holysheep/secret`).
pub const DEFAULT_SECRET_NAME: &str = "holysheep-credentials";
/// Default key in that Secret (`holysheep/secret-key`).
pub const DEFAULT_SECRET_KEY: &str = "HOLYSHEEP_API_KEY";
/// Default CPU request of the sidecar.
pub const DEFAULT_CPU_REQUEST: &str = "10m";
/// Default memory request of the sidecar.
pub const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
/// Default memory limit of the sidecar.
pub const DEFAULT_MEMORY_LIMIT: &str = "128Mi";

/// Webhook-level defaults for every injected sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Sidecar image.
    pub image: String,
    /// Sidecar image pull policy.
    pub image_pull_policy: PullPolicy,
    /// Loopback port the proxy listens on and the apps call.
    pub proxy_port: u16,
    /// Admin port (`/metrics`, `/healthz`, `/readyz`), exposed on the pod IP.
    pub admin_port: u16,
    /// Native sidecar (first init container, `restartPolicy: Always`) or plain container.
    pub native_sidecar: bool,
    /// Upstream base URL; `None` keeps the sidecar's own default.
    pub upstream: Option<String>,
    /// Secret holding the API key.
    pub secret_name: String,
    /// Key of the API key in that Secret.
    pub secret_key: String,
    /// Requests and limits of the sidecar.
    pub resources: Resources,
    /// Egress proxy the sidecar reaches the upstream through; `None`: direct (or the
    /// sidecar's own `HTTPS_PROXY`-style env, which the webhook never sets).
    pub egress_proxy: Option<String>,
    /// `NO_PROXY` list given to the sidecar along with a proxy.
    pub no_proxy: Option<String>,
    /// ConfigMap with `ca.crt`, a PEM bundle the sidecar trusts besides the system roots.
    pub upstream_ca_config_map: Option<String>,
}

/// CPU and memory requests and limits of the sidecar; `None` leaves one unset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// CPU request.
    pub cpu_request: Option<Quantity>,
    /// Memory request.
    pub memory_request: Option<Quantity>,
    /// CPU limit.
    pub cpu_limit: Option<Quantity>,
    /// Memory limit.
    pub memory_limit: Option<Quantity>,
}

/// CPU or memory, to name which request exceeds its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
}

impl Resources {
    /// The first request that is larger than its limit, which the apiserver would refuse.
    pub fn request_above_limit(&self) -> Option<(Resource, &Quantity, &Quantity)> {
        let pairs = [
            (Resource::Cpu, &self.cpu_request, &self.cpu_limit),
            (Resource::Memory, &self.memory_request, &self.memory_limit),
        ];
        pairs.into_iter().find_map(|(resource, request, limit)| {
            let (request, limit) = (request.as_ref()?, limit.as_ref()?);
            (request.value() > limit.value()).then_some((resource, request, limit))
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        let known = |resource, text: &str| Quantity::bounded(resource, text).ok();
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            image_pull_policy: PullPolicy::IfNotPresent,
            proxy_port: DEFAULT_PROXY_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            native_sidecar: true,
            upstream: None,
            secret_name: DEFAULT_SECRET_NAME.to_owned(),
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            resources: Resources {
                cpu_request: known(Resource::Cpu, DEFAULT_CPU_REQUEST),
                memory_request: known(Resource::Memory, DEFAULT_MEMORY_REQUEST),
                cpu_limit: None,
                memory_limit: known(Resource::Memory, DEFAULT_MEMORY_LIMIT),
            },
            egress_proxy: None,
            no_proxy: None,
            upstream_ca_config_map: None,
        }
    }
}

/// A flag value that failed validation.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value of the wrong form.
    #[error("invalid value {value:?} for {flag}: {reason}")]
    Invalid {
        /// The flag, e.g. `--proxy-port`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What was wrong and the expected form.
        reason: String,
    },
    /// Two flags that contradict each other.
    #[error("{0}")]
    Conflict(String),
}

/// The sidecar defaults as flags, each with an env twin; flattened into `serve` and
/// `inject`. Turn into [`Settings`] with [`SettingsArgs::into_settings`].
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Sidecar defaults (overridable per pod by holysheep/* annotations)")]
pub struct SettingsArgs {
    /// Sidecar image (holysheep/image overrides it per pod).
    #[arg(long, env = "HOLYSHEEP_SIDECAR_IMAGE", default_value = DEFAULT_IMAGE)]
    pub sidecar_image: String,
    /// Image pull policy of the sidecar: Always, IfNotPresent or Never.
    #[arg(
        long,
        env = "HOLYSHEEP_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_image_pull_policy: String,
    /// Loopback port of the proxy that apps call (holysheep/port overrides it).
    #[arg(long, env = "HOLYSHEEP_PROXY_PORT", default_value = "8080")]
    pub proxy_port: String,
    /// Admin port of the sidecar: /metrics, /healthz, /readyz (holysheep/admin-port).
    #[arg(long, env = "HOLYSHEEP_ADMIN_PORT", default_value = "9090")]
    pub admin_port: String,
    /// Inject a native sidecar (init container with restartPolicy Always); false for a
    /// plain container (holysheep/native-sidecar overrides it).
    #[arg(long, env = "HOLYSHEEP_NATIVE_SIDECAR", default_value = "true")]
    pub native_sidecar: String,
    /// Upstream base URL for the sidecar; unset keeps the sidecar's default
    /// (holysheep/upstream overrides it).
    #[arg(long, env = "HOLYSHEEP_SIDECAR_UPSTREAM")]
    pub sidecar_upstream: Option<String>,
    /// Secret holding the API key (holysheep/secret overrides it).
    #[arg(long, env = "HOLYSHEEP_SECRET_NAME", default_value = DEFAULT_SECRET_NAME)]
    pub secret_name: String,
    /// Key of the API key in that Secret (holysheep/secret-key overrides it).
    #[arg(long, env = "HOLYSHEEP_SECRET_KEY_NAME", default_value = DEFAULT_SECRET_KEY)]
    pub secret_key_name: String,
    /// CPU request of the sidecar (1m to 64); empty for none.
    #[arg(long, env = "HOLYSHEEP_PROXY_CPU_REQUEST", default_value = DEFAULT_CPU_REQUEST)]
    pub proxy_cpu_request: String,
    /// Memory request of the sidecar (1Mi to 64Gi); empty for none.
    #[arg(long, env = "HOLYSHEEP_PROXY_MEMORY_REQUEST", default_value = DEFAULT_MEMORY_REQUEST)]
    pub proxy_memory_request: String,
    /// CPU limit of the sidecar (1m to 64); empty (the default) for none.
    #[arg(long, env = "HOLYSHEEP_PROXY_CPU_LIMIT", default_value = "")]
    pub proxy_cpu_limit: String,
    /// Memory limit of the sidecar (1Mi to 64Gi); empty for none.
    #[arg(long, env = "HOLYSHEEP_PROXY_MEMORY_LIMIT", default_value = DEFAULT_MEMORY_LIMIT)]
    pub proxy_memory_limit: String,
    /// Egress proxy for the sidecars, http://host:port without credentials (a Secret's
    /// egress-proxy-auth key holds them); unset or empty: none (holysheep/egress-proxy
    /// overrides it, "none" turns it off for a pod).
    #[arg(long, env = "HOLYSHEEP_SIDECAR_EGRESS_PROXY")]
    pub egress_proxy: Option<String>,
    /// Hosts, domains, IPs or CIDRs the sidecars reach without the egress proxy,
    /// comma-separated (given to them as NO_PROXY along with a proxy); empty: none.
    #[arg(long, env = "HOLYSHEEP_SIDECAR_NO_PROXY")]
    pub no_proxy: Option<String>,
    /// ConfigMap with ca.crt, a PEM bundle the sidecars trust besides the system roots
    /// (a private upstream or a TLS-inspecting proxy); empty: none (holysheep/upstream-ca
    /// overrides it).
    #[arg(long, env = "HOLYSHEEP_SIDECAR_UPSTREAM_CA_CONFIGMAP")]
    pub upstream_ca_configmap: Option<String>,
}

impl SettingsArgs {
    /// Validates every flag into [`Settings`]; the error names the flag and the form.
    pub fn into_settings(self) -> Result<Settings, SettingsError> {
        let settings = Settings {
            image: check("--sidecar-image", &self.sidecar_image, values::image)?,
            image_pull_policy: check(
                "--sidecar-image-pull-policy",
                &self.sidecar_image_pull_policy,
                values::pull_policy,
            )?,
            proxy_port: check("--proxy-port", &self.proxy_port, values::port)?,
            admin_port: check("--admin-port", &self.admin_port, values::port)?,
            native_sidecar: check("--native-sidecar", &self.native_sidecar, values::boolean)?,
            upstream: self
                .sidecar_upstream
                .as_deref()
                .filter(|text| !text.is_empty())
                .map(|text| check("--sidecar-upstream", text, values::upstream))
                .transpose()?,
            secret_name: check("--secret-name", &self.secret_name, values::object_name)?,
            secret_key: check("--secret-key-name", &self.secret_key_name, values::data_key)?,
            resources: Resources {
                cpu_request: optional_quantity(
                    "--proxy-cpu-request",
                    Resource::Cpu,
                    &self.proxy_cpu_request,
                )?,
                memory_request: optional_quantity(
                    "--proxy-memory-request",
                    Resource::Memory,
                    &self.proxy_memory_request,
                )?,
                cpu_limit: optional_quantity(
                    "--proxy-cpu-limit",
                    Resource::Cpu,
                    &self.proxy_cpu_limit,
                )?,
                memory_limit: optional_quantity(
                    "--proxy-memory-limit",
                    Resource::Memory,
                    &self.proxy_memory_limit,
                )?,
            },
            egress_proxy: optional_text("--egress-proxy", self.egress_proxy, values::egress_proxy)?,
            no_proxy: optional_text("--no-proxy", self.no_proxy, values::no_proxy)?,
            upstream_ca_config_map: optional_text(
                "--upstream-ca-configmap",
                self.upstream_ca_configmap,
                values::object_name,
            )?,
        };
        if settings.proxy_port == settings.admin_port {
            return Err(SettingsError::Conflict(format!(
                "--proxy-port and --admin-port are both {}: give them different ports",
                settings.proxy_port
            )));
        }
        if let Some((resource, request, limit)) = settings.resources.request_above_limit() {
            let name = resource_flag_word(resource);
            return Err(SettingsError::Conflict(format!(
                "--proxy-{name}-request ({request}) is larger than --proxy-{name}-limit \
                 ({limit}): raise the limit or lower the request"
            )));
        }
        Ok(settings)
    }
}

/// `cpu` or `memory`, as in the flag and annotation names.
pub(crate) fn resource_flag_word(resource: Resource) -> &'static str {
    match resource {
        Resource::Cpu => "cpu",
        Resource::Memory => "memory",
    }
}

fn check<T>(
    flag: &'static str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, SettingsError> {
    parse(value).map_err(|reason| SettingsError::Invalid {
        flag,
        // A refused URL is echoed without its credentials.
        value: holysheep_common::redact_userinfo(value).into_owned(),
        reason,
    })
}

/// An optional flag whose empty value means unset (so an env twin can be left empty).
fn optional_text(
    flag: &'static str,
    value: Option<String>,
    parse: impl FnOnce(&str) -> Result<String, String>,
) -> Result<Option<String>, SettingsError> {
    value
        .filter(|text| !text.is_empty())
        .map(|text| check(flag, &text, parse))
        .transpose()
}

fn optional_quantity(
    flag: &'static str,
    resource: Resource,
    value: &str,
) -> Result<Option<Quantity>, SettingsError> {
    if value.is_empty() {
        return Ok(None);
    }
    check(flag, value, |text| Quantity::bounded(resource, text)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        settings: SettingsArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings, SettingsError> {
        let argv = std::iter::once("holysheep-webhook").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().settings.into_settings()
    }

    #[test]
    fn flag_defaults_match_settings_default() {
        // Only meaningful when none of the env twins is set in the test environment.
        if std::env::vars()
            .any(|(k, _)| k.starts_with("HOLYSHEEP_") && !k.starts_with("HOLYSHEEP_TEST"))
        {
            return;
        }
        assert_eq!(parse(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn flags_set_every_field() {
        let settings = parse(&[
            "--sidecar-image=r.io/hs:1",
            "--sidecar-image-pull-policy=Always",
            "--proxy-port=18080",
            "--admin-port=19090",
            "--native-sidecar=false",
            "--sidecar-upstream=https://gw.example/v1",
            "--secret-name=other",
            "--secret-key-name=key",
            "--proxy-cpu-request=",
            "--proxy-memory-request=16Mi",
            "--proxy-cpu-limit=1",
            "--proxy-memory-limit=",
            "--egress-proxy=http://proxy.corp.internal:3128",
            "--no-proxy=.corp.internal,10.0.0.0/8",
            "--upstream-ca-configmap=corp-ca",
        ])
        .unwrap();
        assert_eq!(settings.image, "r.io/hs:1");
        assert_eq!(settings.image_pull_policy, PullPolicy::Always);
        assert_eq!((settings.proxy_port, settings.admin_port), (18080, 19090));
        assert!(!settings.native_sidecar);
        assert_eq!(settings.upstream.as_deref(), Some("https://gw.example/v1"));
        assert_eq!(
            (settings.secret_name.as_str(), settings.secret_key.as_str()),
            ("other", "key")
        );
        assert_eq!(settings.resources.cpu_request, None);
        assert_eq!(settings.resources.memory_limit, None);
        assert_eq!(settings.resources.cpu_limit.unwrap().as_str(), "1");
        assert_eq!(
            settings.egress_proxy.as_deref(),
            Some("http://proxy.corp.internal:3128")
        );
        assert_eq!(
            settings.no_proxy.as_deref(),
            Some(".corp.internal,10.0.0.0/8")
        );
        assert_eq!(settings.upstream_ca_config_map.as_deref(), Some("corp-ca"));
        // Empty values (an env twin left empty) mean unset.
        let settings =
            parse(&["--egress-proxy=", "--no-proxy=", "--upstream-ca-configmap="]).unwrap();
        assert_eq!(
            (
                settings.egress_proxy,
                settings.no_proxy,
                settings.upstream_ca_config_map
            ),
            (None, None, None)
        );
    }

    #[test]
    fn bad_values_name_the_flag_and_the_form() {
        let cases = [
            (&["--proxy-port=0"][..], "--proxy-port", "1 to 65535"),
            (&["--admin-port=x"][..], "--admin-port", "1 to 65535"),
            (
                &["--native-sidecar=yes"][..],
                "--native-sidecar",
                "\"true\" or \"false\"",
            ),
            (
                &["--proxy-memory-limit=12XB"][..],
                "--proxy-memory-limit",
                "quantity",
            ),
            (
                &["--sidecar-upstream=ftp://x"][..],
                "--sidecar-upstream",
                "https://",
            ),
            (
                &["--sidecar-upstream=http://a:99999/v1"][..],
                "--sidecar-upstream",
                "has port 99999, outside 1-65535",
            ),
            (&["--proxy-port=+8080"][..], "--proxy-port", "1 to 65535"),
            (
                &["--proxy-cpu-limit=1e100"][..],
                "--proxy-cpu-limit",
                "more than 64 cores",
            ),
            (
                &["--proxy-memory-request=128m"][..],
                "--proxy-memory-request",
                "less than 1Mi",
            ),
            (
                &["--secret-name=Bad_Name"][..],
                "--secret-name",
                "object name",
            ),
            (
                &["--sidecar-image-pull-policy=sometimes"][..],
                "--sidecar-image-pull-policy",
                "IfNotPresent",
            ),
            (
                &["--proxy-port=9090"][..],
                "--admin-port",
                "different ports",
            ),
            (
                &["--proxy-memory-request=1Gi"][..],
                "--proxy-memory-limit",
                "raise the limit",
            ),
            (
                &["--egress-proxy=https://proxy:3128"][..],
                "--egress-proxy",
                "http://proxy.corp.internal:3128",
            ),
            (
                &["--egress-proxy=http://u:secretpw@proxy:3128"][..],
                "--egress-proxy",
                "http://",
            ),
            (&["--no-proxy=a, b"][..], "--no-proxy", "without spaces"),
            (&["--no-proxy=a,,b"][..], "--no-proxy", "comma-separated"),
            (
                &["--upstream-ca-configmap=Corp_CA"][..],
                "--upstream-ca-configmap",
                "object name",
            ),
        ];
        for (args, flag, form) in cases {
            let message = parse(args).unwrap_err().to_string();
            assert!(
                message.contains(flag) && message.contains(form),
                "{args:?}: {message}"
            );
            assert!(!message.contains("secretpw"), "{message}");
        }
    }
}
