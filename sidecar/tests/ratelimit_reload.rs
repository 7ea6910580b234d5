//! Local rate limit and live config, end to end through the proxy; plus the shipped
//! example ConfigMap parses with the sidecar's own parser.

use holysheep_sidecar::config::Config;

/// `manifests/examples/sidecar-config.yaml` is a ConfigMap whose `config.yaml` the
/// sidecar must accept as it is, every section of it.
#[test]
fn example_configmap_parses_with_every_section() {
    let text = include_str!("../../manifests/examples/sidecar-config.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    assert_eq!(doc["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(doc["metadata"]["name"].as_str(), Some("holysheep-config"));
    let embedded = doc["data"]["config.yaml"].as_str().unwrap();
    let config = Config::from_yaml_str(embedded).unwrap();
    let default = Config::default();

    assert_eq!(config.aliases["fast"], "gemini-2.5-flash");
    assert_eq!(
        config.aliases["claude"], default.aliases["claude"],
        "built-ins kept"
    );
    assert_eq!(
        config.fallbacks["gpt-4.1"],
        ["deepseek-chat-v3-0324", "gemini-2.5-flash"]
    );
    assert_eq!(config.retry.max_attempts, 3);
    assert_eq!(config.retry.on_status, [429, 500, 502, 503, 504]);
    assert_eq!(
        config.rate_limit.requests_per_minute.map(|n| n.get()),
        Some(600)
    );
    assert_eq!(
        config.rate_limit.tokens_per_minute.map(|n| n.get()),
        Some(200_000)
    );
    assert_eq!(config.prices["my-finetune"].output, 12.0);
    assert_eq!(config.limits.max_body_bytes, 20_971_520);
    // Every top-level section of the file is present, so the example documents them all.
    let mapping: serde_yaml_ng::Mapping = serde_yaml_ng::from_str(embedded).unwrap();
    let sections: Vec<&str> = mapping.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(
        sections,
        [
            "aliases",
            "fallbacks",
            "retry",
            "rate_limit",
            "prices",
            "limits"
        ]
    );
}
