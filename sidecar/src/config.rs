//! Command-line flags and the optional `--config` YAML file, turned into one validated
//! [`Config`].
//!
//! What it does: parses the flags (each with its `HOLYSHEEP_*` env twin), validates
//! the upstream URL with the rules the webhook applies to `holysheep/upstream`
//! (`holysheep-common`), so a bad one stops the sidecar at start, reads the YAML file (every section optional,
//! unknown keys refused, humantime durations) and merges it over the built-in defaults.
//! Every error names the field path (`retry.max_attempts: must be at least 1`).
//!
//! What it does not do: watch the file (see `reload`) or hold the live value. The proxy
//! reads the live [`Config`] through an `ArcSwap<Config>` so a reload can swap it whole.
//!
//! Merge rules (the file REPLACES or EXTENDS the defaults):
//! - `aliases` and `prices` EXTEND the built-in tables: a key given in the file overrides
//!   the default entry of the same name, other defaults stay. To disable a default alias,
//!   map it to itself (`gpt-4: gpt-4`).
//! - `fallbacks` has no defaults, so the file's table is used as is.
//! - `retry`, `rate_limit` and `limits`: each field given overrides that one default; a
//!   field left out keeps its default.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use holysheep_common::{HttpUrl, UrlError};
use serde::Deserialize;

/// Default upstream base URL (HolySheep's OpenAI-compatible API).
pub const DEFAULT_UPSTREAM: &str = holysheep_common::DEFAULT_UPSTREAM;
/// The flag named in upstream errors (also set through `HOLYSHEEP_UPSTREAM`).
const UPSTREAM_FLAG: &str = "--upstream";
/// Default key file: where the webhook mounts the credential Secret.
pub const DEFAULT_API_KEY_FILE: &str = "/var/run/secrets/holysheep/api-key";
/// Env var holding the key itself, used only when the key file is absent.
pub const API_KEY_ENV: &str = "HOLYSHEEP_API_KEY";

/// The sidecar's flags, each also read from its environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "holysheep-sidecar", version, about)]
pub struct Args {
    /// Proxy listener; loopback only, so other pods cannot use this pod's key.
    #[arg(long, env = "HOLYSHEEP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listener serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HOLYSHEEP_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Upstream base URL; `/v1/<rest>` is forwarded to `<upstream>/<rest>`.
    #[arg(
        long,
        env = "HOLYSHEEP_UPSTREAM",
        default_value = DEFAULT_UPSTREAM,
        value_parser = UPSTREAM_PARSER
    )]
    pub upstream: UpstreamBase,
    /// File holding the API key (re-read when it changes); `HOLYSHEEP_API_KEY` is used
    /// when the file is absent.
    #[arg(long, env = "HOLYSHEEP_API_KEY_FILE", default_value = DEFAULT_API_KEY_FILE)]
    pub api_key_file: PathBuf,
    /// Optional YAML file: aliases, fallbacks, retry, rate limits, prices, limits.
    #[arg(long, env = "HOLYSHEEP_CONFIG")]
    pub config: Option<PathBuf>,
    /// PEM bundle of CA certificates the upstream's TLS trusts in addition to the system
    /// roots (and `SSL_CERT_FILE`/`SSL_CERT_DIR`); re-read when it changes.
    #[arg(long, env = "HOLYSHEEP_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Egress proxy `http://host:port` for the upstream (CONNECT tunnel); wins over
    /// `HTTPS_PROXY`/`HTTP_PROXY`. `NO_PROXY` still applies. Credentials go in the file
    /// `egress-proxy-auth` beside the API key file, never here.
    #[arg(long, env = "HOLYSHEEP_EGRESS_PROXY", value_parser = EGRESS_PROXY_PARSER)]
    pub egress_proxy: Option<HttpUrl>,
    /// Whose spend a shared `budgets_store` counts together; the webhook sets
    /// `<namespace>/<holysheep/budget-key, else the workload's name>`.
    #[arg(
        long,
        env = "HOLYSHEEP_BUDGET_KEY",
        default_value = crate::budget::DEFAULT_BUDGET_KEY,
        value_parser = crate::budget::BudgetKey::parse
    )]
    pub budget_key: crate::budget::BudgetKey,
    /// Adds a day budget (UTC, action reject) of this many USD to the config's budgets.
    #[arg(
        long,
        env = "HOLYSHEEP_BUDGET_USD_PER_DAY",
        value_name = "USD",
        // So `-5` is refused by the parser's message, not as an unknown flag.
        allow_negative_numbers = true,
        value_parser = crate::budget::parse_usd_per_day
    )]
    pub budget_usd_per_day: Option<f64>,
}

/// The validated upstream base URL (`https://api.holysheep.ai/v1` -> prefix `/v1`), as
/// the proxy uses it. Built only by [`UpstreamBase::parse`], so the port is always one
/// that was written in 1-65535 or the scheme's default. [`fmt::Display`] writes the full
/// URL with its port, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port; the port left out when it is the scheme's default.
    pub authority: http::uri::Authority,
    /// Path prefix, empty or starting with `/`, never ending with `/`.
    pub path_prefix: String,
    url: HttpUrl,
}

impl UpstreamBase {
    /// Validates `text` with the rules shared with the webhook's `holysheep/upstream`.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let url = HttpUrl::upstream(text)?;
        Ok(Self {
            scheme: url.scheme().into(),
            authority: url.authority().clone(),
            path_prefix: url.path_prefix().to_owned(),
            url,
        })
    }

    /// Whether the upstream is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.url.is_https()
    }
}

impl fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.url.fmt(f)
    }
}

impl std::str::FromStr for UpstreamBase {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The clap parser of `--upstream`.
const UPSTREAM_PARSER: UrlParser<UpstreamBase> = UrlParser {
    flag: UPSTREAM_FLAG,
    example: DEFAULT_UPSTREAM,
    parse: UpstreamBase::parse,
};

/// The clap parser of `--egress-proxy`.
const EGRESS_PROXY_PARSER: UrlParser<HttpUrl> = UrlParser {
    flag: "--egress-proxy",
    example: "http://proxy.corp.internal:3128",
    parse: HttpUrl::egress_proxy,
};

/// A clap parser of a URL flag. Its message names the flag and echoes the value with any
/// credentials redacted (clap's own message would print them as given).
#[derive(Clone, Copy, Debug)]
struct UrlParser<T> {
    flag: &'static str,
    example: &'static str,
    parse: fn(&str) -> Result<T, UrlError>,
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for UrlParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let refuse = |message: String| {
            cmd.clone()
                .error(clap::error::ErrorKind::ValueValidation, message)
        };
        let Some(text) = value.to_str() else {
            return Err(refuse(format!(
                "{}: the value is not UTF-8; use e.g. {}",
                self.flag, self.example
            )));
        };
        (self.parse)(text).map_err(|e| {
            refuse(format!(
                "{}: `{}` {e}",
                self.flag,
                holysheep_common::redact_userinfo(text)
            ))
        })
    }
}

/// A map keyed by model name. These are looked up on every request, so they hash with
/// foldhash (seeded per process, like the metrics' label sets) rather than SipHash.
pub type ModelMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// The validated runtime configuration. Swapped whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Requested model -> model sent upstream (exact names, one step, no chains).
    pub aliases: ModelMap<String>,
    /// Model -> models tried in order once its retries are exhausted.
    pub fallbacks: ModelMap<Vec<String>>,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Local rate limit; `None` fields mean no limit.
    pub rate_limit: RateLimitConfig,
    /// USD per 1M tokens, keyed by model name.
    pub prices: ModelMap<Price>,
    /// Request size and connection limits.
    pub limits: Limits,
    /// Spend budgets, in file order (empty: no budget).
    pub budgets: Vec<crate::budget::Budget>,
    /// Model allow and deny lists (empty: every model passes).
    pub models: crate::models_policy::ModelPolicy,
    /// Redis holding the spend shared by every sidecar with the same budget key
    /// (`None`: each sidecar counts its own).
    pub budgets_store: Option<crate::budget::StoreUrl>,
}

/// Retry policy knobs (the `retry` section).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts per model, the first one included; at least 1.
    pub max_attempts: u32,
    /// First backoff before jitter.
    pub base_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
    /// A longer `Retry-After` gives up on this model instead of waiting.
    pub max_retry_after: Duration,
    /// Per attempt, until response headers.
    pub attempt_timeout: Duration,
    /// Whole request: all attempts and fallbacks.
    pub deadline: Duration,
    /// Upstream statuses that are retried.
    pub on_status: Vec<u16>,
    /// Retries are at most this share of recent requests (0..=1).
    pub budget_ratio: f64,
}

/// Local rate limit; absent means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitConfig {
    /// Requests per minute.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Tokens per minute.
    pub tokens_per_minute: Option<NonZeroU32>,
}

/// Price of a model in USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Prompt (input) tokens.
    pub input: f64,
    /// Completion (output) tokens.
    pub output: f64,
}

/// Request size and connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Upstream TCP+TLS connect timeout. Read when the upstream client is built.
    pub connect_timeout: Duration,
    /// Once response headers arrived, the longest the upstream body may send nothing
    /// before the sidecar ends it.
    pub stream_idle_timeout: Duration,
    /// HTTP/1.1 connections the pool opens to an https upstream before a new one offers
    /// HTTP/2 (ALPN `h2`) for the requests past them; 0 offers it from the first one.
    /// Read when the upstream client is built.
    pub upstream_http1_connections: usize,
}

/// The built-in aliases (from the HolySheep guide).
pub const DEFAULT_ALIASES: [(&str, &str); 4] = [
    ("gpt-4", "gpt-4.1"),
    ("claude", "claude-sonnet-4-20250514"),
    ("deepseek", "deepseek-chat-v3-0324"),
    ("flash", "gemini-2.0-flash"),
];

/// The guide's prices (USD per 1M tokens, input and output alike), keyed by the model
/// names of the guide and by the default alias targets.
pub const DEFAULT_PRICES: [(&str, f64); 7] = [
    ("gpt-4.1", 8.0),
    ("claude-sonnet-4.5", 15.0),
    ("gemini-2.5-flash", 2.5),
    ("deepseek-v3.2", 0.42),
    ("claude-sonnet-4-20250514", 15.0),
    ("gemini-2.0-flash", 2.5),
    ("deepseek-chat-v3-0324", 0.42),
];

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(120),
            on_status: vec![429, 500, 502, 503, 504],
            budget_ratio: 0.2,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 20 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            // Long enough for a reasoning model thinking before its next token.
            stream_idle_timeout: Duration::from_secs(300),
            // HTTP/1.1 costs less per request than hyper's HTTP/2 client; past this many
            // requests in flight, streams share HTTP/2 connections (100 each), so a burst of
            // 1,000 long streams holds 74 upstream connections instead of 1,000.
            upstream_http1_connections: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let own = |(a, b): (&str, &str)| (a.to_owned(), b.to_owned());
        Self {
            aliases: DEFAULT_ALIASES.into_iter().map(own).collect(),
            fallbacks: ModelMap::default(),
            retry: RetryConfig::default(),
            rate_limit: RateLimitConfig::default(),
            prices: DEFAULT_PRICES
                .into_iter()
                .map(|(m, p)| {
                    (
                        m.to_owned(),
                        Price {
                            input: p,
                            output: p,
                        },
                    )
                })
                .collect(),
            limits: Limits::default(),
            budgets: Vec::new(),
            models: crate::models_policy::ModelPolicy::default(),
            budgets_store: None,
        }
    }
}

/// Why a config file could not be used. Messages name the file and the field path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a value of the wrong type.
    #[error("invalid config{}: {field}: {message}", in_file(.path.as_deref()))]
    Parse {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// Field path, e.g. `retry.base_backoff` (`.` for the document root).
        field: String,
        /// What was wrong.
        message: String,
    },
    /// The file is a Kubernetes object (`apiVersion` and `kind`), e.g. the ConfigMap that
    /// holds the config rather than the config itself.
    #[error(
        "invalid config{}: this is a Kubernetes {kind} manifest, not a sidecar config; {MANIFEST_HINT}",
        in_file(.path.as_deref())
    )]
    Manifest {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// Its `kind`.
        kind: String,
    },
    /// A value parsed but is out of range or inconsistent.
    #[error("invalid config{}: {field}: {message}", in_file(.path.as_deref()))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// Field path, e.g. `retry.max_attempts`.
        field: String,
        /// What was wrong and how to fix it.
        message: String,
    },
}

/// The hint for a Kubernetes object passed where the sidecar's own file is expected.
const MANIFEST_HINT: &str = "pass the config.yaml inside it to --config, e.g. \
`yq '.data[\"config.yaml\"]' manifests/examples/sidecar-config.yaml > config.yaml`";

fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!(" file {}", p.display()))
        .unwrap_or_default()
}

/// The first load at startup: as [`load_file`], except that a file that does not exist
/// (an optional ConfigMap that is absent) gives the built-in defaults and one warning;
/// the reload watcher applies the file once it appears.
pub fn load_startup(path: &Path) -> Result<Config, ConfigError> {
    match load_file(path) {
        Err(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                path = %path.display(),
                "config file not found; running on the built-in defaults until it appears"
            );
            Ok(Config::default())
        }
        other => other,
    }
}

/// Reads, parses and validates a `--config` file, merged over the defaults.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Config::from_yaml_str(&text).map_err(|e| e.with_path(path))
}

impl ConfigError {
    fn with_path(self, file: &Path) -> Self {
        match self {
            Self::Parse { field, message, .. } => Self::Parse {
                path: Some(file.to_owned()),
                field,
                message,
            },
            Self::Invalid { field, message, .. } => Self::Invalid {
                path: Some(file.to_owned()),
                field,
                message,
            },
            Self::Manifest { kind, .. } => Self::Manifest {
                path: Some(file.to_owned()),
                kind,
            },
            read @ Self::Read { .. } => read,
        }
    }

    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Parses and validates YAML text (an empty document gives the defaults).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                manifest_kind(text).map_or_else(
                    || ConfigError::Parse {
                        path: None,
                        field: e.path().to_string(),
                        message: e.into_inner().to_string(),
                    },
                    |kind| ConfigError::Manifest { path: None, kind },
                )
            })?
        };
        file.merge_over(Self::default())
    }
}

/// The `kind` of a YAML document that has the two fields of every Kubernetes object.
/// Asked only once the text failed as a config, so it costs nothing on the good path.
fn manifest_kind(text: &str) -> Option<String> {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    doc.get("apiVersion")?.as_str()?;
    Some(doc.get("kind")?.as_str()?.to_owned())
}

mod file;
use file::FileConfig;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
