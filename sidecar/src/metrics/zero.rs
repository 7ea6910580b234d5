//! Counter series known in advance, created at 0 when a config comes into force (start
//! and every reload), so `increase()` and `rate()` see a series' first event and a pod
//! that exits early still shows what it counted.
//!
//! The set, for a config with upstream models `U` (alias targets, fallback models,
//! priced models, budget downgrade targets), priced models `P`, aliases `A` and
//! fallback steps `F`:
//! - `holysheep_tokens_total{model∈U, type}` (2 per model), `holysheep_cost_usd_total{model∈P}`,
//!   `holysheep_unpriced_tokens_total{model∈U∖P, type}`;
//! - `holysheep_requests_total{route, model, requested_model, status="200"}` for the four
//!   token routes and the pairs alias → target and m → m (m in `U`): `4 × (A + U)`;
//! - `holysheep_upstream_attempts_total{model∈U, outcome}` (6 per model),
//!   `holysheep_upstream_retries_total{model∈U, reason}` (4 per model),
//!   `holysheep_fallbacks_total{from_model, to_model}` per step of each fallback chain;
//! - every value of the closed label sets: config reloads (2), rate-limited requests (2),
//!   unparsed usage (2), usage missing per token route (4).
//!
//! So at most `≈ 16·U + P + 4·A + F + 10` series, all from the operator's config. Not
//! here: histograms and error statuses (not knowable without inventing label values),
//! budget series (`budget.rs` owns them), and series of a config that was replaced:
//! counters never go away, so they stay at what they counted.

use std::collections::BTreeSet;

use super::labels::{AttemptOutcome, RateLimitKind, ReloadResult, RetryReason, Route, TokenType};
use super::models::{ModelName, OTHER_MODEL};
use super::sets::{
    AttemptLabels, FallbackLabels, ModelLabelSet, RateLimitLabels, ReloadLabels, RequestLabels,
    RetryLabels, RouteLabels, TokenLabels, UnparsedLabels,
};
use super::{Families, UnparsedKind};
use crate::budget::Action;
use crate::config::Config;

/// Model names of `config` that can be sent upstream (so can carry tokens): alias targets,
/// fallback models, priced models and budget downgrade targets. Alias names themselves
/// are rewritten before they go upstream, so they are not in it.
pub(super) fn upstream_models(config: &Config) -> BTreeSet<&str> {
    let targets = config.aliases.values();
    let fallbacks = config
        .fallbacks
        .iter()
        .flat_map(|(k, v)| std::iter::once(k).chain(v));
    let downgrades = config.budgets.iter().filter_map(|b| match &b.action {
        Action::Downgrade(to) => Some(to),
        Action::Reject => None,
    });
    targets
        .chain(fallbacks)
        .chain(config.prices.keys())
        .chain(downgrades)
        .map(String::as_str)
        .collect()
}

/// Creates the series listed in the module docs (existing ones keep their value). Call
/// after the config's names went into `f.models`, so they keep their own label value.
pub(super) fn create(f: &Families, config: &Config) {
    // A configured name that is not a well-formed id folds into "other": no series for it.
    let label = |name: &str| Some(f.models.label(Some(name))).filter(|m| m.as_str() != OTHER_MODEL);
    let upstream: Vec<ModelName> = upstream_models(config)
        .into_iter()
        .filter_map(label)
        .collect();
    for model in &upstream {
        let priced = config.prices.contains_key(model.as_str());
        for ty in TokenType::ALL {
            let labels = TokenLabels {
                model: model.clone(),
                r#type: ty,
            };
            let _ = f.tokens.get_or_create(&labels);
            if !priced {
                let _ = f.unpriced_tokens.get_or_create(&labels);
            }
        }
        if priced {
            let _ = f.cost.get_or_create(&ModelLabelSet {
                model: model.clone(),
            });
        }
        for outcome in AttemptOutcome::ALL {
            let _ = f.attempts.get_or_create(&AttemptLabels {
                model: model.clone(),
                outcome,
            });
        }
        for reason in RetryReason::ALL {
            let _ = f.retries.get_or_create(&RetryLabels {
                model: model.clone(),
                reason,
            });
        }
    }

    let aliased = config
        .aliases
        .iter()
        .filter_map(|(from, to)| Some((label(from)?, label(to)?)));
    let direct = upstream.iter().map(|m| (m.clone(), m.clone()));
    let pairs: Vec<(ModelName, ModelName)> = aliased.chain(direct).collect();
    for route in Route::WITH_TOKENS {
        for (requested, model) in &pairs {
            let _ = f.requests.get_or_create(&RequestLabels {
                route,
                model: model.clone(),
                requested_model: requested.clone(),
                status: 200,
            });
        }
        let _ = f.usage_missing.get_or_create(&RouteLabels { route });
    }

    for (first, chain) in &config.fallbacks {
        // Each fallback is counted from the model tried just before it.
        let steps = std::iter::once(first).chain(chain).zip(chain);
        for (from, to) in steps {
            if let (Some(from_model), Some(to_model)) = (label(from), label(to)) {
                let _ = f.fallbacks.get_or_create(&FallbackLabels {
                    from_model,
                    to_model,
                });
            }
        }
    }

    for result in ReloadResult::ALL {
        let _ = f.config_reloads.get_or_create(&ReloadLabels { result });
    }
    for limit in RateLimitKind::ALL {
        let _ = f.rate_limited.get_or_create(&RateLimitLabels { limit });
    }
    for kind in UnparsedKind::ALL {
        let _ = f.unparsed.get_or_create(&UnparsedLabels { kind });
    }
}
