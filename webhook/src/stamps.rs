//! The stamps written on every injected pod beside the marker, so a fleet report can tell
//! which pods run an old sidecar or were injected with other settings:
//! `holysheep/sidecar-version` (the injected image's version) and
//! `holysheep/injected-config` (a short hash of the injection inputs).
//!
//! The hash covers what the webhook decided for the sidecar (image, pull policy, ports,
//! native or not, upstream, Secret and key names, ConfigMap names, resources, egress proxy,
//! `NO_PROXY`, the budget annotations), never the pod's own content (nor the workload name
//! that is the default budget key), so two pods injected with the same settings
//! carry the same hash. What it does not do: read the stamps back (the fleet report does).

use ring::digest::{SHA256, digest};
use serde_json::Value;

use crate::settings::DEFAULT_IMAGE;
use crate::sidecar::SidecarSpec;

/// Hex characters of the SHA-256 kept in `holysheep/injected-config`.
pub const HASH_HEX_CHARS: usize = 12;

/// Version of the serialization below; part of the hashed text, so a change to what is
/// hashed changes every hash on purpose.
const FORMAT: &str = "holysheep-injected-config/v2";

/// The injected sidecar's version: this webhook's version for the default image, else the
/// image tag, else a short digest, else `latest` (what an untagged reference pulls).
pub fn sidecar_version(image: &str) -> String {
    if image == DEFAULT_IMAGE {
        return env!("CARGO_PKG_VERSION").to_owned();
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // A tag is after the last `:` of the last path segment (a registry port is not).
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    if let Some((_, tag)) = last_segment.rsplit_once(':')
        && !tag.is_empty()
    {
        return tag.to_owned();
    }
    match digest {
        Some(digest) => digest.chars().take(7 + HASH_HEX_CHARS).collect(),
        None => "latest".to_owned(),
    }
}

/// The first [`HASH_HEX_CHARS`] hex characters of the SHA-256 of the canonical text of
/// the injection inputs: a JSON array of `[name, value]` pairs in a fixed order, absent
/// values as `null`.
pub fn config_hash(spec: &SidecarSpec) -> String {
    let text = canonical(spec);
    let hash = digest(&SHA256, text.as_bytes());
    let mut hex = String::with_capacity(HASH_HEX_CHARS);
    for byte in hash.as_ref() {
        if hex.len() >= HASH_HEX_CHARS {
            break;
        }
        hex.push_str(&format!("{byte:02x}"));
    }
    hex.truncate(HASH_HEX_CHARS);
    hex
}

fn canonical(spec: &SidecarSpec) -> String {
    let text = |value: &str| Value::String(value.to_owned());
    let optional = |value: Option<&str>| value.map_or(Value::Null, text);
    let resources = &spec.resources;
    let pairs: Vec<(&str, Value)> = vec![
        ("format", text(FORMAT)),
        ("image", text(&spec.image)),
        ("imagePullPolicy", text(spec.pull_policy.as_str())),
        ("proxyPort", Value::from(spec.proxy_port)),
        ("adminPort", Value::from(spec.admin_port)),
        ("native", Value::Bool(spec.native)),
        ("upstream", optional(spec.upstream.as_deref())),
        ("secret", text(&spec.secret_name)),
        ("secretKey", text(&spec.secret_key)),
        ("configMap", optional(spec.config_map.as_deref())),
        (
            "cpuRequest",
            optional(resources.cpu_request.as_ref().map(|q| q.as_str())),
        ),
        (
            "memoryRequest",
            optional(resources.memory_request.as_ref().map(|q| q.as_str())),
        ),
        (
            "cpuLimit",
            optional(resources.cpu_limit.as_ref().map(|q| q.as_str())),
        ),
        (
            "memoryLimit",
            optional(resources.memory_limit.as_ref().map(|q| q.as_str())),
        ),
        ("egressProxy", optional(spec.egress_proxy.as_deref())),
        ("noProxy", optional(spec.no_proxy.as_deref())),
        ("upstreamCa", optional(spec.upstream_ca.as_deref())),
        (
            "budgetUsdPerDay",
            optional(spec.budget_usd_per_day.as_deref()),
        ),
        ("budgetKey", optional(spec.budget_key.as_deref())),
    ];
    let array: Vec<Value> = pairs
        .into_iter()
        .map(|(name, value)| Value::Array(vec![text(name), value]))
        .collect();
    Value::Array(array).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::Overrides;
    use crate::settings::Settings;
    use rstest::rstest;

    #[rstest]
    #[case::tag("ghcr.io/holysheep/holysheep-sidecar:0.2.0", "0.2.0")]
    #[case::registry_port("registry.local:5000/hs/sidecar:1.4", "1.4")]
    #[case::registry_port_no_tag("registry.local:5000/hs/sidecar", "latest")]
    #[case::tag_and_digest("r.io/hs:2@sha256:0123456789abcdef0123", "2")]
    #[case::digest_only("r.io/hs@sha256:0123456789abcdef0123", "sha256:0123456789ab")]
    #[case::default(DEFAULT_IMAGE, env!("CARGO_PKG_VERSION"))]
    fn version_of_image(#[case] image: &str, #[case] want: &str) {
        assert_eq!(sidecar_version(image), want);
    }

    #[test]
    fn hash_is_short_hex_stable_and_follows_each_input() {
        let base = SidecarSpec::resolve(&Settings::default(), Overrides::default());
        let hash = config_hash(&base);
        assert_eq!(hash.len(), HASH_HEX_CHARS);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
        assert_eq!(config_hash(&base.clone()), hash);
        let changes: Vec<fn(&mut SidecarSpec)> = vec![
            |s| s.image.push('x'),
            |s| s.proxy_port += 1,
            |s| s.admin_port += 1,
            |s| s.native = !s.native,
            |s| s.upstream = Some("https://gw/v1".into()),
            |s| s.secret_name.push('x'),
            |s| s.secret_key.push('x'),
            |s| s.config_map = Some("cfg".into()),
            |s| {
                std::mem::swap(
                    &mut s.resources.memory_request,
                    &mut s.resources.memory_limit,
                )
            },
            |s| s.egress_proxy = Some("http://p:3128".into()),
            |s| s.no_proxy = Some(".svc".into()),
            |s| s.upstream_ca = Some("ca".into()),
            |s| s.budget_usd_per_day = Some("50".into()),
            |s| s.budget_key = Some("shared".into()),
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut spec = base.clone();
            change(&mut spec);
            assert_ne!(config_hash(&spec), hash, "change {i} kept the hash");
        }
        let other_workload = SidecarSpec {
            workload: Some("web".into()),
            ..base
        };
        assert_eq!(config_hash(&other_workload), hash);
    }
}
