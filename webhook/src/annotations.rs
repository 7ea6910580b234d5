//! The `holysheep/*` pod annotations: their keys, and a parser that reads a pod's
//! annotations once into a typed [`Overrides`]. An error names the annotation, the value
//! and the expected form, and is shown to the user as the admission message.
//!
//! It does not merge the overrides with the webhook defaults: `sidecar::SidecarSpec` does.

use std::collections::BTreeMap;

use crate::settings::{Quantity, values};

/// Opt-in: `"true"` injects, `"false"` or absent leaves the pod alone.
pub const INJECT: &str = "holysheep/inject";
/// Marker written on injection; `injected` means never inject again.
pub const STATUS: &str = "holysheep/status";
/// Value of [`STATUS`] on an injected pod.
pub const STATUS_INJECTED: &str = "injected";
/// Proxy port (default 8080).
pub const PORT: &str = "holysheep/port";
/// Admin port of the sidecar (default 9090), for apps that already use 9090.
pub const ADMIN_PORT: &str = "holysheep/admin-port";
/// Secret name (default `holysheep-credentials`).
pub const SECRET: &str = "holysheep/secret";
/// Key in the Secret (default `HOLYSHEEP_API_KEY`).
pub const SECRET_KEY: &str = "holysheep/secret-key";
/// ConfigMap holding the sidecar's `config.yaml`.
pub const CONFIG: &str = "holysheep/config";
/// Sidecar image.
pub const IMAGE: &str = "holysheep/image";
/// Upstream base URL.
pub const UPSTREAM: &str = "holysheep/upstream";
/// `"true"`: native sidecar; `"false"`: plain container.
pub const NATIVE_SIDECAR: &str = "holysheep/native-sidecar";
/// Sidecar CPU request.
pub const PROXY_CPU_REQUEST: &str = "holysheep/proxy-cpu-request";
/// Sidecar memory request.
pub const PROXY_MEMORY_REQUEST: &str = "holysheep/proxy-memory-request";
/// Sidecar CPU limit.
pub const PROXY_CPU_LIMIT: &str = "holysheep/proxy-cpu-limit";
/// Sidecar memory limit.
pub const PROXY_MEMORY_LIMIT: &str = "holysheep/proxy-memory-limit";

/// Egress proxy URL of the sidecar, or `none` to connect directly (default `--egress-proxy`).
pub const EGRESS_PROXY: &str = "holysheep/egress-proxy";
/// ConfigMap with `ca.crt` the sidecar trusts for the upstream (default
/// `--upstream-ca-configmap`).
pub const UPSTREAM_CA: &str = "holysheep/upstream-ca";

/// Daily spend limit in USD: the sidecar refuses calls (429) once the day's spend reaches
/// it, on top of any budgets in its config file.
pub const BUDGET_USD_PER_DAY: &str = "holysheep/budget-usd-per-day";
/// Name under which the replicas of a workload share their budgets (with `budgets_store`);
/// default: the owning workload's name. Always within the pod's namespace.
pub const BUDGET_KEY: &str = "holysheep/budget-key";

/// Stamp: the injected sidecar's version (its image tag).
pub const SIDECAR_VERSION: &str = "holysheep/sidecar-version";
/// Stamp: short hash of the injection inputs (`SidecarSpec::config_hash`).
pub const INJECTED_CONFIG: &str = "holysheep/injected-config";

/// Every `holysheep/*` annotation this webhook reads or writes; any other key with the
/// prefix is a typo or a leftover, and gets a warning naming the closest of these.
pub const KNOWN: [&str; 20] = [
    INJECT,
    STATUS,
    PORT,
    ADMIN_PORT,
    SECRET,
    SECRET_KEY,
    CONFIG,
    IMAGE,
    UPSTREAM,
    NATIVE_SIDECAR,
    PROXY_CPU_REQUEST,
    PROXY_MEMORY_REQUEST,
    PROXY_CPU_LIMIT,
    PROXY_MEMORY_LIMIT,
    EGRESS_PROXY,
    UPSTREAM_CA,
    BUDGET_USD_PER_DAY,
    BUDGET_KEY,
    SIDECAR_VERSION,
    INJECTED_CONFIG,
];

/// The prefix of the annotations above.
pub const PREFIX: &str = "holysheep/";

/// Label added on injection, so monitors select injected pods (labels, unlike
/// annotations, are what PodMonitors and NetworkPolicies select by).
pub const INJECTED_LABEL: &str = "holysheep.ai/injected";

/// Prometheus scrape annotations, added when absent.
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// Prometheus port annotation.
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
/// Prometheus path annotation.
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
/// Container that `kubectl logs/exec` pick by default.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// An annotation whose value has the wrong form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid annotation {annotation}={value:?}: {reason}")]
pub struct AnnotationError {
    /// The annotation key.
    pub annotation: &'static str,
    /// The value found (truncated when huge, credentials in a URL redacted).
    pub value: String,
    /// What was wrong and the expected form.
    pub reason: String,
}

/// What the `holysheep/inject` annotation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// `"true"`.
    Requested,
    /// `"false"` or absent.
    NotRequested,
}

/// Reads `holysheep/inject`: `"true"`, `"false"` or absent; anything else is an error.
pub fn injection(annotations: &BTreeMap<String, String>) -> Result<Injection, AnnotationError> {
    match annotations.get(INJECT) {
        None => Ok(Injection::NotRequested),
        Some(value) => {
            let requested = parse(INJECT, value, values::boolean)?;
            Ok(if requested {
                Injection::Requested
            } else {
                Injection::NotRequested
            })
        }
    }
}

/// Whether the marker `holysheep/status: injected` is present.
pub fn is_marked_injected(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(STATUS)
        .is_some_and(|v| v == STATUS_INJECTED)
}

/// Per-pod overrides; `None` keeps the webhook default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `holysheep/port`.
    pub port: Option<u16>,
    /// `holysheep/admin-port`.
    pub admin_port: Option<u16>,
    /// `holysheep/secret`.
    pub secret: Option<String>,
    /// `holysheep/secret-key`.
    pub secret_key: Option<String>,
    /// `holysheep/config`.
    pub config: Option<String>,
    /// `holysheep/image`.
    pub image: Option<String>,
    /// `holysheep/upstream`.
    pub upstream: Option<String>,
    /// `holysheep/native-sidecar`.
    pub native_sidecar: Option<bool>,
    /// `holysheep/proxy-cpu-request`.
    pub cpu_request: Option<Quantity>,
    /// `holysheep/proxy-memory-request`.
    pub memory_request: Option<Quantity>,
    /// `holysheep/proxy-cpu-limit`.
    pub cpu_limit: Option<Quantity>,
    /// `holysheep/proxy-memory-limit`.
    pub memory_limit: Option<Quantity>,
    /// `holysheep/egress-proxy`: `Some(None)` is `none`, no proxy for this pod.
    pub egress_proxy: Option<Option<String>>,
    /// `holysheep/upstream-ca`.
    pub upstream_ca: Option<String>,
    /// `holysheep/budget-usd-per-day`, as written.
    pub budget_usd_per_day: Option<String>,
    /// `holysheep/budget-key`.
    pub budget_key: Option<String>,
}

impl Overrides {
    /// Parses every override annotation present; the first invalid one is the error.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, AnnotationError> {
        let a = annotations;
        Ok(Self {
            port: optional(a, PORT, values::port)?,
            admin_port: optional(a, ADMIN_PORT, values::port)?,
            secret: optional(a, SECRET, values::object_name)?,
            secret_key: optional(a, SECRET_KEY, values::data_key)?,
            config: optional(a, CONFIG, values::object_name)?,
            image: optional(a, IMAGE, values::image)?,
            upstream: optional(a, UPSTREAM, values::upstream)?,
            native_sidecar: optional(a, NATIVE_SIDECAR, values::boolean)?,
            cpu_request: optional(a, PROXY_CPU_REQUEST, Quantity::cpu)?,
            memory_request: optional(a, PROXY_MEMORY_REQUEST, Quantity::memory)?,
            cpu_limit: optional(a, PROXY_CPU_LIMIT, Quantity::cpu)?,
            memory_limit: optional(a, PROXY_MEMORY_LIMIT, Quantity::memory)?,
            egress_proxy: optional(a, EGRESS_PROXY, values::egress_proxy_choice)?,
            upstream_ca: optional(a, UPSTREAM_CA, values::object_name)?,
            budget_usd_per_day: optional(a, BUDGET_USD_PER_DAY, values::budget_usd)?,
            budget_key: optional(a, BUDGET_KEY, values::budget_key)?,
        })
    }
}

/// Parses the annotation `key` when present.
fn optional<T>(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, AnnotationError> {
    annotations
        .get(key)
        .map(|value| parse(key, value, check))
        .transpose()
}

/// Applies `check` to an annotation value, naming the annotation on failure
/// (the shape of linkerd2-proxy's `env::parse`).
fn parse<T>(
    annotation: &'static str,
    value: &str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, AnnotationError> {
    check(value).map_err(|reason| AnnotationError {
        annotation,
        // Admission messages reach events and logs: a refused URL goes without credentials.
        value: shorten(&holysheep_common::redact_userinfo(value)),
        reason,
    })
}

/// Keeps admission messages short when a value is huge (the apiserver caps them).
fn shorten(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        None => value.to_owned(),
        Some((cut, _)) => format!("{}...", &value[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[rstest]
    #[case::absent(&[], Ok(Injection::NotRequested))]
    #[case::true_(&[(INJECT, "true")], Ok(Injection::Requested))]
    #[case::false_(&[(INJECT, "false")], Ok(Injection::NotRequested))]
    #[case::enabled(&[(INJECT, "enabled")], Err(()))]
    #[case::capital(&[(INJECT, "True")], Err(()))]
    #[case::empty(&[(INJECT, "")], Err(()))]
    fn injection_annotation(
        #[case] pairs: &[(&str, &str)],
        #[case] expected: Result<Injection, ()>,
    ) {
        let got = injection(&map(pairs));
        match expected {
            Ok(want) => assert_eq!(got, Ok(want)),
            Err(()) => {
                let message = got.unwrap_err().to_string();
                assert!(
                    message.contains(INJECT) && message.contains("\"true\" or \"false\""),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn marker_must_say_injected() {
        assert!(is_marked_injected(&map(&[(STATUS, "injected")])));
        assert!(!is_marked_injected(&map(&[(STATUS, "skipped")])));
        assert!(!is_marked_injected(&map(&[])));
    }

    #[test]
    fn parses_every_override() {
        let overrides = Overrides::parse(&map(&[
            (PORT, "18080"),
            (ADMIN_PORT, "19090"),
            (SECRET, "team-key"),
            (SECRET_KEY, "api-key"),
            (CONFIG, "hs-config"),
            (IMAGE, "r.io/hs:2"),
            (UPSTREAM, "http://gw:8080/v1"),
            (NATIVE_SIDECAR, "false"),
            (PROXY_CPU_REQUEST, "50m"),
            (PROXY_MEMORY_REQUEST, "64Mi"),
            (PROXY_CPU_LIMIT, "1"),
            (PROXY_MEMORY_LIMIT, "256Mi"),
            (EGRESS_PROXY, "http://proxy.corp.internal:3128"),
            (UPSTREAM_CA, "corp-ca"),
            (BUDGET_USD_PER_DAY, "12.50"),
            (BUDGET_KEY, "checkout_v2"),
            ("unrelated/annotation", "whatever"),
        ]))
        .unwrap();
        assert_eq!(overrides.port, Some(18080));
        assert_eq!(overrides.admin_port, Some(19090));
        assert_eq!(overrides.secret.as_deref(), Some("team-key"));
        assert_eq!(overrides.secret_key.as_deref(), Some("api-key"));
        assert_eq!(overrides.config.as_deref(), Some("hs-config"));
        assert_eq!(overrides.image.as_deref(), Some("r.io/hs:2"));
        assert_eq!(overrides.upstream.as_deref(), Some("http://gw:8080/v1"));
        assert_eq!(overrides.native_sidecar, Some(false));
        assert_eq!(overrides.cpu_request.unwrap().as_str(), "50m");
        assert_eq!(overrides.memory_request.unwrap().as_str(), "64Mi");
        assert_eq!(overrides.cpu_limit.unwrap().as_str(), "1");
        assert_eq!(overrides.memory_limit.unwrap().as_str(), "256Mi");
        assert_eq!(
            overrides.egress_proxy,
            Some(Some("http://proxy.corp.internal:3128".to_owned()))
        );
        assert_eq!(overrides.upstream_ca.as_deref(), Some("corp-ca"));
        assert_eq!(overrides.budget_usd_per_day.as_deref(), Some("12.50"));
        assert_eq!(overrides.budget_key.as_deref(), Some("checkout_v2"));
        assert_eq!(Overrides::parse(&map(&[])).unwrap(), Overrides::default());
        let off = Overrides::parse(&map(&[(EGRESS_PROXY, "none")])).unwrap();
        assert_eq!(off.egress_proxy, Some(None));
    }

    #[rstest]
    #[case::port_word(PORT, "http", "1 to 65535")]
    #[case::port_zero(PORT, "0", "1 to 65535")]
    #[case::admin_port(ADMIN_PORT, "99999", "1 to 65535")]
    #[case::secret_upper(SECRET, "MySecret", "object name")]
    #[case::secret_key_slash(SECRET_KEY, "a/b", "Secret key")]
    #[case::config_empty(CONFIG, "", "object name")]
    #[case::image_space(IMAGE, "a b", "image reference")]
    #[case::upstream_scheme(UPSTREAM, "api.holysheep.ai", "https://")]
    #[case::upstream_port_99999(UPSTREAM, "http://a:99999/v1", "has port 99999, outside 1-65535")]
    #[case::upstream_port_65616(
        UPSTREAM,
        "http://127.0.0.1:65616/v1",
        "has port 65616, outside 1-65535"
    )]
    #[case::upstream_empty_port(UPSTREAM, "http://h:/v1", "has an empty port")]
    #[case::upstream_fragment(UPSTREAM, "https://api.holysheep.ai/v1#x", "fragment")]
    #[case::port_plus(PORT, "+80", "1 to 65535")]
    #[case::port_leading_zero(PORT, "080", "1 to 65535")]
    #[case::port_too_high(PORT, "65536", "1 to 65535")]
    #[case::port_leading_space(PORT, " 80", "1 to 65535")]
    #[case::admin_port_plus(ADMIN_PORT, "+9090", "1 to 65535")]
    #[case::cpu_absurd(PROXY_CPU_LIMIT, "1e100", "more than 64 cores")]
    #[case::cpu_above_bound(PROXY_CPU_REQUEST, "65", "more than 64 cores")]
    #[case::cpu_negative(PROXY_CPU_REQUEST, "-1", "negative")]
    #[case::cpu_below_bound(PROXY_CPU_REQUEST, "0.1m", "less than 1m")]
    #[case::cpu_zero(PROXY_CPU_LIMIT, "0", "less than 1m")]
    #[case::memory_absurd(PROXY_MEMORY_LIMIT, "1e100", "more than 64Gi")]
    #[case::memory_above_bound(PROXY_MEMORY_REQUEST, "65Gi", "more than 64Gi")]
    #[case::memory_negative(PROXY_MEMORY_LIMIT, "-128Mi", "negative")]
    #[case::memory_millis(PROXY_MEMORY_LIMIT, "128m", "less than 1Mi")]
    #[case::native_yes(NATIVE_SIDECAR, "yes", "\"true\" or \"false\"")]
    #[case::cpu(PROXY_CPU_REQUEST, "lots", "quantity")]
    #[case::memory(PROXY_MEMORY_LIMIT, "128MB", "quantity")]
    #[case::egress_https(EGRESS_PROXY, "https://proxy:3128", "http://proxy.corp.internal:3128")]
    #[case::egress_empty(EGRESS_PROXY, "", "\"none\"")]
    #[case::egress_credentials(EGRESS_PROXY, "http://u:pw@proxy:3128", "\"none\"")]
    #[case::upstream_ca_upper(UPSTREAM_CA, "Corp-CA", "object name")]
    #[case::budget_zero(BUDGET_USD_PER_DAY, "0", "above 0")]
    #[case::budget_zero_fraction(BUDGET_USD_PER_DAY, "0.000", "above 0")]
    #[case::budget_negative(BUDGET_USD_PER_DAY, "-5", "plain decimal")]
    #[case::budget_plus(BUDGET_USD_PER_DAY, "+5", "plain decimal")]
    #[case::budget_exponent(BUDGET_USD_PER_DAY, "1e3", "plain decimal")]
    #[case::budget_inf(BUDGET_USD_PER_DAY, "inf", "plain decimal")]
    #[case::budget_nan(BUDGET_USD_PER_DAY, "NaN", "plain decimal")]
    #[case::budget_dollar(BUDGET_USD_PER_DAY, "$50", "plain decimal")]
    #[case::budget_trailing_dot(BUDGET_USD_PER_DAY, "50.", "plain decimal")]
    #[case::budget_leading_dot(BUDGET_USD_PER_DAY, ".5", "plain decimal")]
    #[case::budget_nano(BUDGET_USD_PER_DAY, "0.0000001", "plain decimal")]
    #[case::budget_huge(BUDGET_USD_PER_DAY, "1000000.01", "at most 1000000")]
    #[case::budget_empty(BUDGET_USD_PER_DAY, "", "plain decimal")]
    #[case::budget_key_slash(BUDGET_KEY, "shop/web", "budget key")]
    #[case::budget_key_dollar(BUDGET_KEY, "$(HOME)", "budget key")]
    #[case::budget_key_empty(BUDGET_KEY, "", "budget key")]
    #[case::budget_key_long(BUDGET_KEY, &"k".repeat(64), "at most 63")]
    fn invalid_overrides_name_the_annotation(
        #[case] key: &'static str,
        #[case] value: &str,
        #[case] form: &str,
    ) {
        let err = Overrides::parse(&map(&[(key, value)])).unwrap_err();
        assert_eq!(err.annotation, key);
        let message = err.to_string();
        assert!(message.contains(key) && message.contains(form), "{message}");
    }

    #[test]
    fn huge_values_are_shortened_in_messages() {
        let huge = "é".repeat(10_000);
        let keys = [
            INJECT,
            PORT,
            ADMIN_PORT,
            SECRET,
            SECRET_KEY,
            CONFIG,
            IMAGE,
            UPSTREAM,
            NATIVE_SIDECAR,
            PROXY_CPU_REQUEST,
            PROXY_MEMORY_REQUEST,
            PROXY_CPU_LIMIT,
            PROXY_MEMORY_LIMIT,
            EGRESS_PROXY,
            UPSTREAM_CA,
            BUDGET_USD_PER_DAY,
            BUDGET_KEY,
        ];
        for key in keys {
            let annotations = map(&[(key, &huge)]);
            let err = if key == INJECT {
                injection(&annotations).unwrap_err()
            } else {
                Overrides::parse(&annotations).unwrap_err()
            };
            let message = err.to_string();
            assert!(message.len() < 400, "{key}: {} bytes", message.len());
        }
    }
}
