//! Unit tests for `config`: flags, defaults, merge rules and field-path errors.

use super::*;
use clap::Parser;
use rstest::rstest;

fn err_of(yaml: &str) -> String {
    match Config::from_yaml_str(yaml) {
        Ok(cfg) => panic!("expected an error for {yaml:?}, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn flags_have_design_defaults() {
    let a = Args::try_parse_from(["holysheep-sidecar"]).unwrap();
    assert_eq!(a.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(a.admin_listen, "0.0.0.0:9090".parse().unwrap());
    assert_eq!(a.upstream.authority.as_str(), "api.holysheep.ai");
    assert_eq!(a.upstream.path_prefix, "/v1");
    assert!(a.upstream.is_https());
    assert_eq!(a.api_key_file, PathBuf::from(DEFAULT_API_KEY_FILE));
    assert!(a.config.is_none());
    assert!(a.upstream_ca_file.is_none());
    assert!(a.egress_proxy.is_none());
}

#[test]
fn ca_file_and_egress_proxy_flags_parse() {
    let a = Args::try_parse_from([
        "holysheep-sidecar",
        "--upstream-ca-file",
        "/etc/holysheep/ca/ca.crt",
        "--egress-proxy",
        "http://proxy.corp.internal:3128/",
    ])
    .unwrap();
    assert_eq!(
        a.upstream_ca_file,
        Some(PathBuf::from("/etc/holysheep/ca/ca.crt"))
    );
    let proxy = a.egress_proxy.unwrap();
    assert_eq!(proxy.host(), "proxy.corp.internal");
    assert_eq!(proxy.port(), 3128);
}

#[rstest]
#[case::https("https://proxy:443")]
#[case::credentials("http://user:pw@proxy:3128")]
#[case::path("http://proxy:3128/some/path")]
#[case::scheme("socks5://proxy:1080")]
fn egress_proxy_flag_refusals_name_the_flag_and_hide_credentials(#[case] value: &str) {
    let e = Args::try_parse_from(["holysheep-sidecar", "--egress-proxy", value]).unwrap_err();
    let message = e.to_string();
    assert!(message.contains("--egress-proxy: `"), "{value}: {message}");
    assert!(!message.contains("pw@"), "credentials echoed: {message}");
}

#[test]
fn flags_parse_given_values() {
    let a = Args::try_parse_from([
        "holysheep-sidecar",
        "--listen",
        "127.0.0.1:18080",
        "--admin-listen",
        "127.0.0.1:19090",
        "--upstream",
        "http://127.0.0.1:4000/v1/",
        "--api-key-file",
        "/tmp/k",
        "--config",
        "/tmp/c.yaml",
    ])
    .unwrap();
    assert_eq!(a.listen.port(), 18080);
    assert_eq!(a.admin_listen.port(), 19090);
    assert!(!a.upstream.is_https());
    assert_eq!(a.upstream.authority.as_str(), "127.0.0.1:4000");
    assert_eq!(a.upstream.path_prefix, "/v1", "trailing slash trimmed");
    assert_eq!(a.config, Some(PathBuf::from("/tmp/c.yaml")));
}

#[test]
fn bad_upstream_is_refused_with_a_hint() {
    for bad in ["ftp://x/v1", "not a url", "/v1", "http://x/v1?a=b"] {
        let e = Args::try_parse_from(["holysheep-sidecar", "--upstream", bad]).unwrap_err();
        assert!(e.to_string().contains("upstream"), "{bad}: {e}");
    }
}

/// Each refusal names the flag, echoes the value and says what is wrong; the first ones
/// started the sidecar and sent the key to port 80 (or logged the credentials).
#[rstest]
#[case::port_65616(
    "http://127.0.0.1:65616/v1",
    "`http://127.0.0.1:65616/v1` has port 65616, outside 1-65535"
)]
#[case::port_99999(
    "http://a:99999/v1",
    "`http://a:99999/v1` has port 99999, outside 1-65535"
)]
#[case::empty_port("http://h:/v1", "`http://h:/v1` has an empty port")]
#[case::port_zero("http://h:0/v1", "has port 0, outside 1-65535")]
#[case::port_plus("http://h:+80/v1", "has port `+80`, not a decimal number")]
#[case::port_leading_zero("http://h:080/v1", "has port 080 with a leading zero")]
#[case::credentials(
    "https://user:pw@api.holysheep.ai/v1",
    "`https://***@api.holysheep.ai/v1` carries credentials"
)]
#[case::fragment("https://api.holysheep.ai/v1#frag", "carries a fragment")]
#[case::query("http://x/v1?a=b", "carries a query string")]
#[case::scheme("ftp://x/v1", "must start with http:// or https://")]
#[case::no_host("http:///v1", "has no host")]
fn upstream_flag_refusals(#[case] value: &str, #[case] problem: &str) {
    let e = Args::try_parse_from(["holysheep-sidecar", "--upstream", value]).unwrap_err();
    let message = e.to_string();
    assert!(message.contains("--upstream: `"), "{value}: {message}");
    assert!(message.contains(problem), "{value}: {message}");
    assert!(
        message.contains("use e.g. https://api.holysheep.ai/v1"),
        "{message}"
    );
    assert!(!message.contains("pw@"), "credentials echoed: {message}");
}

#[rstest]
#[case::default(
    "https://api.holysheep.ai/v1",
    "https://api.holysheep.ai:443/v1",
    "api.holysheep.ai"
)]
#[case::http_default_port("http://127.0.0.1/v1/", "http://127.0.0.1:80/v1", "127.0.0.1")]
#[case::explicit_port(
    "http://gw.internal:8080/openai/v1",
    "http://gw.internal:8080/openai/v1",
    "gw.internal:8080"
)]
#[case::explicit_default_port(
    "https://api.holysheep.ai:443/v1",
    "https://api.holysheep.ai:443/v1",
    "api.holysheep.ai"
)]
fn upstream_shows_in_full_and_keeps_its_authority(
    #[case] value: &str,
    #[case] shown: &str,
    #[case] authority: &str,
) {
    let a = Args::try_parse_from(["holysheep-sidecar", "--upstream", value]).unwrap();
    assert_eq!(a.upstream.to_string(), shown);
    assert_eq!(a.upstream.authority.as_str(), authority);
    assert_eq!(a.upstream, value.parse::<UpstreamBase>().unwrap());
}

#[test]
fn defaults_match_design() {
    let c = Config::default();
    assert_eq!(c.aliases["gpt-4"], "gpt-4.1");
    assert_eq!(c.aliases["claude"], "claude-sonnet-4-20250514");
    assert_eq!(c.aliases["deepseek"], "deepseek-chat-v3-0324");
    assert_eq!(c.aliases["flash"], "gemini-2.0-flash");
    assert_eq!(c.aliases.len(), 4);
    assert!(c.fallbacks.is_empty());
    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.rate_limit, RateLimitConfig::default());
    assert_eq!(c.limits.max_body_bytes, 20_971_520);
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(5));
    // Every alias target has a price, so aliased requests are costed.
    for target in c.aliases.values() {
        assert!(c.prices.contains_key(target), "no price for {target}");
    }
    assert_eq!(c.prices["claude-sonnet-4.5"].output, 15.0);
    assert_eq!(c.prices["deepseek-v3.2"].input, 0.42);
}

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(Config::from_yaml_str("").unwrap(), Config::default());
    assert_eq!(
        Config::from_yaml_str("# only a comment\n").unwrap(),
        Config::default()
    );
    assert_eq!(Config::from_yaml_str("{}").unwrap(), Config::default());
}

#[test]
fn full_example_from_design_parses() {
    let c = Config::from_yaml_str(include_str!("../tests/fixtures/config/full.yaml")).unwrap();
    assert_eq!(c.aliases["gpt-4"], "gpt-4.1");
    assert_eq!(
        c.aliases["fast"], "gemini-2.5-flash",
        "file extends aliases"
    );
    assert_eq!(
        c.aliases["claude"], "claude-sonnet-4-20250514",
        "defaults kept"
    );
    assert_eq!(
        c.fallbacks["gpt-4.1"],
        vec!["deepseek-chat-v3-0324".to_owned()]
    );
    assert_eq!(c.retry.max_attempts, 4);
    assert_eq!(c.retry.base_backoff, Duration::from_millis(250));
    assert_eq!(c.retry.max_backoff, Duration::from_secs(5));
    assert_eq!(c.retry.max_retry_after, Duration::from_secs(30));
    assert_eq!(c.retry.attempt_timeout, Duration::from_secs(60));
    assert_eq!(c.retry.deadline, Duration::from_secs(120));
    assert_eq!(c.retry.on_status, vec![429, 500, 502, 503, 504]);
    assert_eq!(c.retry.budget_ratio, 0.2);
    assert_eq!(
        c.rate_limit.requests_per_minute.map(NonZeroU32::get),
        Some(1000)
    );
    assert_eq!(
        c.rate_limit.tokens_per_minute.map(NonZeroU32::get),
        Some(200_000)
    );
    assert_eq!(
        c.prices["gpt-4.1"],
        Price {
            input: 2.0,
            output: 8.0
        }
    );
    assert_eq!(c.prices["deepseek-v3.2"].input, 0.42, "default prices kept");
    assert_eq!(c.limits.max_body_bytes, 1_048_576);
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(2));
}

#[test]
fn partial_sections_keep_other_defaults() {
    let c = Config::from_yaml_str("retry:\n  max_attempts: 1\n").unwrap();
    assert_eq!(c.retry.max_attempts, 1);
    assert_eq!(c.retry.deadline, RetryConfig::default().deadline);
    assert_eq!(c.aliases, Config::default().aliases);
}

#[test]
fn alias_to_itself_disables_a_default() {
    let c = Config::from_yaml_str("aliases:\n  gpt-4: gpt-4\n").unwrap();
    assert_eq!(c.aliases["gpt-4"], "gpt-4");
}

#[test]
fn errors_name_the_field_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "zero attempts",
            "retry:\n  max_attempts: 0\n",
            "retry.max_attempts: must be at least 1",
        ),
        (
            "unknown top key",
            "retries: {}\n",
            "unknown field `retries`",
        ),
        (
            "unknown nested key",
            "retry:\n  max_attemps: 2\n",
            "retry: unknown field `max_attemps`",
        ),
        (
            "bad duration",
            "retry:\n  base_backoff: soon\n",
            "retry.base_backoff:",
        ),
        (
            "wrong type",
            "limits:\n  max_body_bytes: lots\n",
            "limits.max_body_bytes:",
        ),
        (
            "backoff order",
            "retry:\n  base_backoff: 10s\n",
            "retry.base_backoff: must not exceed",
        ),
        (
            "status range",
            "retry:\n  on_status: [429, 200]\n",
            "retry.on_status[1]: 200",
        ),
        (
            "ratio range",
            "retry:\n  budget_ratio: 1.5\n",
            "retry.budget_ratio: must be between",
        ),
        (
            "zero rpm",
            "rate_limit:\n  requests_per_minute: 0\n",
            "rate_limit.requests_per_minute:",
        ),
        (
            "negative price",
            "prices:\n  m: {input: -1, output: 1}\n",
            "prices.m.input:",
        ),
        (
            "price unknown key",
            "prices:\n  m: {input: 1, outptu: 1}\n",
            "unknown field `outptu`",
        ),
        (
            "zero body",
            "limits:\n  max_body_bytes: 0\n",
            "limits.max_body_bytes: must be",
        ),
        (
            "zero connect",
            "limits:\n  connect_timeout: 0s\n",
            "limits.connect_timeout:",
        ),
        (
            "self fallback",
            "fallbacks:\n  a: [b, a]\n",
            "fallbacks.a[1]: a model cannot",
        ),
        (
            "empty alias",
            "aliases:\n  x: ''\n",
            "aliases.x: model name must not be empty",
        ),
        (
            "zero deadline",
            "retry:\n  deadline: 0s\n",
            "retry.deadline:",
        ),
    ];
    for (name, yaml, want) in cases {
        let got = err_of(yaml);
        assert!(got.contains(want), "{name}: want {want:?} in {got:?}");
    }
}

#[test]
fn load_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, "retry:\n  max_attempts: 0\n").unwrap();
    let msg = load_file(&path).unwrap_err().to_string();
    assert!(msg.contains("config.yaml"), "{msg}");
    assert!(msg.contains("retry.max_attempts"), "{msg}");

    let missing = dir.path().join("nope.yaml");
    let msg = load_file(&missing).unwrap_err().to_string();
    assert!(
        msg.contains("failed to read config file") && msg.contains("nope.yaml"),
        "{msg}"
    );
}

#[test]
fn the_example_configmap_manifest_is_refused_with_the_way_to_its_file() {
    let manifest = include_str!("../../manifests/examples/sidecar-config.yaml");
    let err = load_err_with_path(manifest);
    assert!(
        err.contains("this is a Kubernetes ConfigMap manifest"),
        "{err}"
    );
    assert!(err.contains("config.yaml inside it"), "{err}");
    assert!(err.contains("file /cm.yaml"), "{err}");
    // Any other Kubernetes object is named by its kind.
    let err = err_of("apiVersion: v1\nkind: Secret\nstringData: {a: b}\n");
    assert!(err.contains("Kubernetes Secret manifest"), "{err}");
    // A config with a typo keeps its field-path message.
    assert!(err_of("retry: {max_attemps: 2}\n").contains("unknown field"));
}

fn load_err_with_path(yaml: &str) -> String {
    match Config::from_yaml_str(yaml) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e.with_path(Path::new("/cm.yaml")).to_string(),
    }
}

#[test]
fn a_missing_config_file_starts_on_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("config.yaml");
    assert_eq!(load_startup(&missing).unwrap(), Config::default());
    // Anything else that is wrong with the file still stops the start.
    std::fs::write(&missing, "retry: {max_attempts: 0}\n").unwrap();
    assert!(load_startup(&missing).is_err());
    assert!(
        load_startup(dir.path()).is_err(),
        "a directory is not a config file"
    );
}
