//! The `--config` file as written (every field optional, unknown keys refused) and its
//! merge over the defaults, followed by range and consistency checks.
//!
//! What it does not do: read files (see `config::load_file`) or hold the live config.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError, Price};
use crate::budget::{Action, Budget, Window};
use crate::models_policy::{ModelPolicy, Rule};

/// The file as written: every field optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    aliases: Option<HashMap<String, String>>,
    #[serde(default)]
    fallbacks: Option<HashMap<String, Vec<String>>>,
    #[serde(default)]
    retry: Option<RetryFile>,
    #[serde(default)]
    rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    prices: Option<HashMap<String, Price>>,
    #[serde(default)]
    limits: Option<LimitsFile>,
    #[serde(default)]
    budgets: Option<Vec<BudgetFile>>,
    #[serde(default)]
    models: Option<ModelsFile>,
    #[serde(default)]
    budgets_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

fn rules(list: &str, patterns: Vec<String>) -> Result<Vec<Rule>, ConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Rule::new(p).map_err(|m| ConfigError::invalid(format!("models.{list}[{i}]"), m))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    window: Window,
    usd: f64,
    action: ActionFile,
    #[serde(default)]
    downgrade_to: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ActionFile {
    Reject,
    Downgrade,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFile {
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    base_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_retry_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    attempt_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    deadline: Option<Duration>,
    on_status: Option<Vec<u16>>,
    budget_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_body_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stream_idle_timeout: Option<Duration>,
    upstream_http1_connections: Option<usize>,
}

impl FileConfig {
    pub(super) fn merge_over(self, mut cfg: Config) -> Result<Config, ConfigError> {
        if let Some(aliases) = self.aliases {
            for (from, to) in aliases {
                check_model_name(&format!("aliases.{from}"), &from)?;
                check_model_name(&format!("aliases.{from}"), &to)?;
                cfg.aliases.insert(from, to);
            }
        }
        if let Some(fallbacks) = self.fallbacks {
            for (model, list) in &fallbacks {
                check_model_name(&format!("fallbacks.{model}"), model)?;
                for (i, fb) in list.iter().enumerate() {
                    let field = format!("fallbacks.{model}[{i}]");
                    check_model_name(&field, fb)?;
                    if fb == model {
                        return Err(ConfigError::invalid(
                            field,
                            "a model cannot be its own fallback; remove it from the list",
                        ));
                    }
                }
            }
            cfg.fallbacks = fallbacks.into_iter().collect();
        }
        if let Some(r) = self.retry {
            let d = &mut cfg.retry;
            merge(&mut d.max_attempts, r.max_attempts);
            merge(&mut d.base_backoff, r.base_backoff);
            merge(&mut d.max_backoff, r.max_backoff);
            merge(&mut d.max_retry_after, r.max_retry_after);
            merge(&mut d.attempt_timeout, r.attempt_timeout);
            merge(&mut d.deadline, r.deadline);
            merge(&mut d.on_status, r.on_status);
            merge(&mut d.budget_ratio, r.budget_ratio);
        }
        if let Some(rl) = self.rate_limit {
            cfg.rate_limit.requests_per_minute =
                positive("rate_limit.requests_per_minute", rl.requests_per_minute)?;
            cfg.rate_limit.tokens_per_minute =
                positive("rate_limit.tokens_per_minute", rl.tokens_per_minute)?;
        }
        if let Some(prices) = self.prices {
            for (model, price) in prices {
                check_model_name(&format!("prices.{model}"), &model)?;
                for (part, v) in [("input", price.input), ("output", price.output)] {
                    if !v.is_finite() || v < 0.0 {
                        return Err(ConfigError::invalid(
                            format!("prices.{model}.{part}"),
                            format!("{v} is not a price; use USD per 1M tokens, 0 or more"),
                        ));
                    }
                }
                cfg.prices.insert(model, price);
            }
        }
        if let Some(l) = self.limits {
            merge(&mut cfg.limits.max_body_bytes, l.max_body_bytes);
            merge(&mut cfg.limits.connect_timeout, l.connect_timeout);
            merge(&mut cfg.limits.stream_idle_timeout, l.stream_idle_timeout);
            merge(
                &mut cfg.limits.upstream_http1_connections,
                l.upstream_http1_connections,
            );
        }
        if let Some(budgets) = self.budgets {
            cfg.budgets = budgets
                .into_iter()
                .enumerate()
                .map(|(i, b)| b.check(i))
                .collect::<Result<_, _>>()?;
        }
        if let Some(url) = self.budgets_store {
            cfg.budgets_store = Some(
                crate::budget::StoreUrl::parse(&url)
                    .map_err(|m| ConfigError::invalid("budgets_store", m))?,
            );
        }
        if let Some(models) = self.models {
            cfg.models = ModelPolicy {
                allow: rules("allow", models.allow)?,
                deny: rules("deny", models.deny)?,
            };
        }
        validate(&cfg)?;
        Ok(cfg)
    }
}

impl BudgetFile {
    fn check(self, i: usize) -> Result<Budget, ConfigError> {
        if !self.usd.is_finite() || self.usd < 0.0 {
            return Err(ConfigError::invalid(
                format!("budgets[{i}].usd"),
                format!("{} is not an amount; use USD, 0 or more", self.usd),
            ));
        }
        let field = format!("budgets[{i}].downgrade_to");
        let action = match (self.action, self.downgrade_to) {
            (ActionFile::Reject, None) => Action::Reject,
            (ActionFile::Reject, Some(_)) => {
                return Err(ConfigError::invalid(
                    field,
                    "only applies to action: downgrade; remove it or change the action",
                ));
            }
            (ActionFile::Downgrade, Some(to)) => {
                check_model_name(&field, &to)?;
                Action::Downgrade(to)
            }
            (ActionFile::Downgrade, None) => {
                return Err(ConfigError::invalid(
                    field,
                    "is required with action: downgrade; name the model to send instead",
                ));
            }
        };
        Ok(Budget {
            window: self.window,
            usd: self.usd,
            action,
        })
    }
}

fn merge<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn positive(field: &str, v: Option<u32>) -> Result<Option<NonZeroU32>, ConfigError> {
    match v {
        None => Ok(None),
        Some(n) => NonZeroU32::new(n).map(Some).ok_or_else(|| {
            ConfigError::invalid(field, "must be at least 1; leave it out for no limit")
        }),
    }
}

fn check_model_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(ConfigError::invalid(field, "model name must not be empty"));
    }
    Ok(())
}

/// Range and consistency checks on the merged values.
fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let r = &cfg.retry;
    let err = |f: &str, m: &str| Err(ConfigError::invalid(f, m));
    if r.max_attempts == 0 {
        return err(
            "retry.max_attempts",
            "must be at least 1 (1 means no retry)",
        );
    }
    if r.max_attempts > 20 {
        return err("retry.max_attempts", "must be at most 20");
    }
    if r.base_backoff > r.max_backoff {
        return err("retry.base_backoff", "must not exceed retry.max_backoff");
    }
    if r.attempt_timeout.is_zero() {
        return err("retry.attempt_timeout", "must be greater than 0, e.g. 60s");
    }
    if r.deadline.is_zero() {
        return err("retry.deadline", "must be greater than 0, e.g. 120s");
    }
    for (i, s) in r.on_status.iter().enumerate() {
        if !(400..=599).contains(s) {
            return Err(ConfigError::invalid(
                format!("retry.on_status[{i}]"),
                format!("{s} is not an error status; use codes 400-599"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&r.budget_ratio) {
        return err("retry.budget_ratio", "must be between 0 and 1, e.g. 0.2");
    }
    if cfg.limits.max_body_bytes == 0 {
        return err("limits.max_body_bytes", "must be at least 1, e.g. 20971520");
    }
    if cfg.limits.connect_timeout.is_zero() {
        return err("limits.connect_timeout", "must be greater than 0, e.g. 5s");
    }
    if cfg.limits.stream_idle_timeout.is_zero() {
        return err(
            "limits.stream_idle_timeout",
            "must be greater than 0, e.g. 300s",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError};

    #[test]
    fn upstream_http1_connections_defaults_to_64_and_takes_0() {
        assert_eq!(Config::default().limits.upstream_http1_connections, 64);
        let c = Config::from_yaml_str("limits:\n  upstream_http1_connections: 0\n").unwrap();
        assert_eq!(c.limits.upstream_http1_connections, 0);
        let err = Config::from_yaml_str("limits:\n  upstream_http1_connections: -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.upstream_http1_connections"), "{err}");
    }

    #[test]
    fn stream_idle_timeout_defaults_parses_and_must_be_positive() {
        let default = Config::default().limits.stream_idle_timeout;
        assert_eq!(default, Duration::from_secs(300));
        let c = Config::from_yaml_str("limits:\n  stream_idle_timeout: 250ms\n").unwrap();
        assert_eq!(c.limits.stream_idle_timeout, Duration::from_millis(250));
        // The other limits keep their defaults.
        assert_eq!(c.limits.connect_timeout, Duration::from_secs(5));
        for (yaml, want) in [
            (
                "limits:\n  stream_idle_timeout: 0s\n",
                "must be greater than 0",
            ),
            ("limits:\n  stream_idle_timeout: soon\n", ""),
        ] {
            let err = Config::from_yaml_str(yaml).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, ConfigError::Invalid { .. } | ConfigError::Parse { .. }),
                "{text}"
            );
            assert!(text.contains("limits.stream_idle_timeout"), "{text}");
            assert!(text.contains(want), "{text}");
        }
    }
}
