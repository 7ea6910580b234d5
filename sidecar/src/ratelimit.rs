//! The pod-local rate limit: requests per minute and tokens per minute from the config's
//! `rate_limit` section, checked before any upstream call. Over the limit the request
//! fails with [`RateLimited`], which error.rs answers as an OpenAI-shaped 429 with
//! `Retry-After`.
//!
//! Both limits are GCRA buckets from the `governor` crate (`N per minute`, bursting up to
//! N). Tokens are not known before the call, so the check takes an estimate
//! ([`estimate_tokens`]: prompt text / 4 plus `max_tokens`) and [`TokenReservation::settle`]
//! charges the difference once the real usage is known. governor cannot give tokens
//! back, so an over-estimate is not refunded: the limit errs on the safe side.
//!
//! Not here: counting usage (usage.rs), the response (error.rs). The limiters follow the
//! live config: a reload that changes `rate_limit` starts fresh buckets.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde_json::Value;

use crate::config::RateLimitConfig;

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Which local limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// `rate_limit.requests_per_minute`.
    Requests,
    /// `rate_limit.tokens_per_minute`.
    Tokens,
}

impl LimitKind {
    /// The config field that sets this limit.
    pub fn field(self) -> &'static str {
        match self {
            Self::Requests => "rate_limit.requests_per_minute",
            Self::Tokens => "rate_limit.tokens_per_minute",
        }
    }
}

/// A request refused by the local rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "local rate limit reached ({limit} per minute, set by {}); retry after {}s",
    kind.field(),
    self.retry_after_secs()
)]
pub struct RateLimited {
    /// The limit that refused the request.
    pub kind: LimitKind,
    /// The configured value of that limit.
    pub limit: u32,
    /// How long until the request would be let through.
    pub retry_after: Duration,
}

impl From<RateLimited> for crate::error::ProxyError {
    fn from(limited: RateLimited) -> Self {
        Self::RateLimited {
            limit: limited.kind.field(),
            retry_after: limited.retry_after,
        }
    }
}

impl RateLimited {
    /// `retry_after` rounded up to whole seconds, at least 1: the `Retry-After` value.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let secs = if self.retry_after.subsec_nanos() > 0 {
            secs.saturating_add(1)
        } else {
            secs
        };
        secs.max(1)
    }
}

struct Buckets<C: Clock> {
    config: RateLimitConfig,
    clock: C,
    requests: Option<Bucket<C>>,
    tokens: Option<Bucket<C>>,
}

impl<C: Clock + Clone> Buckets<C> {
    fn new(config: RateLimitConfig, clock: &C) -> Self {
        let bucket = |n: Option<NonZeroU32>| {
            n.map(|n| RateLimiter::direct_with_clock(Quota::per_minute(n), clock.clone()))
        };
        Self {
            config,
            clock: clock.clone(),
            requests: bucket(config.requests_per_minute),
            tokens: bucket(config.tokens_per_minute),
        }
    }

    /// Takes `n` tokens from the token bucket, clamped to its size (a request larger
    /// than a whole minute's worth still passes when the bucket is full).
    fn take_tokens(&self, n: u32) -> Result<(), RateLimited> {
        let (Some(bucket), Some(limit)) = (&self.tokens, self.config.tokens_per_minute) else {
            return Ok(());
        };
        let Some(n) = NonZeroU32::new(n.min(limit.get())) else {
            return Ok(());
        };
        match bucket.check_n(n) {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(not_until)) => Err(RateLimited {
                kind: LimitKind::Tokens,
                limit: limit.get(),
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }
}

/// The local limit shared by all requests of the process.
pub struct LocalRateLimit<C: Clock = DefaultClock> {
    clock: C,
    current: ArcSwapOption<Buckets<C>>,
}

impl<C: Clock> std::fmt::Debug for LocalRateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = self.current.load().as_ref().map(|b| b.config);
        f.debug_struct("LocalRateLimit")
            .field("config", &config)
            .finish()
    }
}

impl Default for LocalRateLimit {
    fn default() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl LocalRateLimit {
    /// A limiter on the real clock; its buckets are made on first use.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C: Clock + Clone> LocalRateLimit<C> {
    /// A limiter on `clock` (tests pass governor's `FakeRelativeClock`).
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            current: ArcSwapOption::empty(),
        }
    }

    /// Admits one request estimated at `estimated_tokens`, or says how long to wait.
    /// `config` is the live `rate_limit` section; when it differs from the one the
    /// buckets were made for, fresh buckets replace them.
    ///
    /// The request bucket is checked first: a request refused for tokens has still
    /// used its request slot, which keeps the check a single pass without locks.
    pub fn check(
        &self,
        config: &RateLimitConfig,
        estimated_tokens: u32,
    ) -> Result<TokenReservation<C>, RateLimited> {
        let buckets = self.buckets(config);
        if let (Some(bucket), Some(limit)) = (&buckets.requests, config.requests_per_minute)
            && let Err(not_until) = bucket.check()
        {
            return Err(RateLimited {
                kind: LimitKind::Requests,
                limit: limit.get(),
                retry_after: not_until.wait_time_from(buckets.clock.now()),
            });
        }
        buckets.take_tokens(estimated_tokens)?;
        Ok(TokenReservation {
            buckets,
            estimated: estimated_tokens,
        })
    }

    fn buckets(&self, config: &RateLimitConfig) -> Arc<Buckets<C>> {
        if let Some(current) = self.current.load_full()
            && current.config == *config
        {
            return current;
        }
        let fresh = Arc::new(Buckets::new(*config, &self.clock));
        self.current.store(Some(Arc::clone(&fresh)));
        fresh
    }
}

/// The tokens a request was admitted with; settle it with the real usage when known.
pub struct TokenReservation<C: Clock = DefaultClock> {
    buckets: Arc<Buckets<C>>,
    estimated: u32,
}

impl<C: Clock> std::fmt::Debug for TokenReservation<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReservation")
            .field("estimated", &self.estimated)
            .finish()
    }
}

impl<C: Clock + Clone> TokenReservation<C> {
    /// The estimate the request was admitted with.
    pub fn estimated(&self) -> u32 {
        self.estimated
    }

    /// Whether settling charges anything: false when no token limit was in force.
    pub fn counts_tokens(&self) -> bool {
        self.buckets.tokens.is_some()
    }

    /// Charges the tokens used beyond the estimate (input + output as reported by the
    /// upstream). The request already ran, so a bucket that cannot take them all is
    /// not an error: later requests simply wait longer.
    pub fn settle(self, actual_tokens: u64) {
        let extra = actual_tokens.saturating_sub(u64::from(self.estimated));
        let extra = u32::try_from(extra).unwrap_or(u32::MAX);
        // Ignoring the refusal is the point: the usage happened, charge what fits.
        let _ = self.buckets.take_tokens(extra);
    }
}

/// Request fields whose text is sent to the model as the prompt.
const PROMPT_FIELDS: [&str; 5] = ["messages", "prompt", "input", "instructions", "system"];
/// Request fields capping the completion, newest name first.
const MAX_OUTPUT_FIELDS: [&str; 3] = ["max_completion_tokens", "max_output_tokens", "max_tokens"];
/// Parts of a message that are not text tokens (images, audio, files): skipped, so a
/// base64 image does not count as hundreds of thousands of tokens.
const NON_TEXT_KEYS: [&str; 4] = ["image_url", "input_audio", "file", "audio"];

/// Estimates the tokens a request will use before it is sent: the prompt's text at
/// ~4 characters per token, plus the completion cap (`max_completion_tokens`,
/// `max_output_tokens` or `max_tokens`) when the client set one. Without a cap only the
/// prompt is reserved and the rest is charged by [`TokenReservation::settle`].
pub fn estimate_tokens(body: &Value) -> u32 {
    let chars: u64 = PROMPT_FIELDS
        .iter()
        .filter_map(|field| body.get(field))
        .map(text_chars)
        .sum();
    let prompt = chars.div_ceil(4);
    let output = MAX_OUTPUT_FIELDS
        .iter()
        .find_map(|field| body.get(field).and_then(Value::as_u64))
        .unwrap_or(0);
    u32::try_from(prompt.saturating_add(output)).unwrap_or(u32::MAX)
}

fn text_chars(value: &Value) -> u64 {
    match value {
        Value::String(s) => u64::try_from(s.chars().count()).unwrap_or(u64::MAX),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| !NON_TEXT_KEYS.contains(&key.as_str()))
            .map(|(_, v)| text_chars(v))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

#[cfg(test)]
#[path = "ratelimit_tests.rs"]
mod tests;
