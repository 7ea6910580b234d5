//! Retry policy for one client request: whether an upstream outcome goes back to the
//! client, is retried on the same model after a pause, or is abandoned for the next
//! fallback model, and when the sidecar gives up for good.
//!
//! The policy is pure: it never sleeps, sends or reads the clock; the proxy passes `now`
//! in and carries out the [`Decision`]. Rules, in order:
//! - nothing is retried once any byte of a response went to the client
//!   ([`RequestRetry::commit`]), and a body that cannot be replayed is never retried;
//! - only connect errors, per-attempt timeouts and the configured statuses retry;
//! - a `Retry-After` longer than `max_retry_after` gives up on the model at once
//!   (fallback) instead of waiting; a shorter one is waited exactly, otherwise the
//!   pause is exponential backoff with full jitter;
//! - after `max_attempts` on a model, 429/5xx and timeouts move to the next fallback
//!   model; connect errors do not (every model lives behind the same host);
//! - every retry and every fallback is paid from the shared [`RetryBudget`], and none
//!   starts if its pause would end past the overall deadline.
//!
//! Not here: sending (upstream.rs), rewriting the `model` field (models.rs), turning a
//! give-up into a response (proxy.rs, error.rs).

mod budget;
mod headers;

pub use budget::{RetryBudget, SharedRetryBudget};
pub use headers::{parse_retry_after, parse_should_retry};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use rand::Rng;
use tokio::time::Instant;

use crate::config::RetryConfig;

/// Stands in for a deadline beyond what `Instant` can hold (about 30 years).
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Full-jitter exponential backoff before retry number `retry` (1 for the first retry):
/// uniform in `[0, min(max_backoff, base_backoff * 2^(retry-1))]`, so that many clients
/// failing together spread their retries instead of coming back in waves.
pub fn backoff(policy: &RetryConfig, retry: u32, rng: &mut impl Rng) -> Duration {
    let exp = retry.saturating_sub(1).min(31);
    let ceiling = policy
        .base_backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ceiling_ms))
}

/// What one upstream attempt produced, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with response headers.
    Response {
        /// The upstream status.
        status: StatusCode,
        /// `Retry-After` / `retry-after-ms`, already parsed.
        retry_after: Option<Duration>,
        /// The upstream's own `x-should-retry`, if it sent one.
        should_retry: Option<bool>,
    },
    /// No response at all: the connection could not be made (DNS, TCP, TLS) or broke
    /// before response headers (reset, closed).
    ConnectError,
    /// No response headers within the attempt's timeout.
    AttemptTimeout,
}

impl Outcome {
    /// Reads what the policy needs from an upstream response's status and headers;
    /// `now` is the wall clock, for HTTP-date `Retry-After` values.
    pub fn from_response(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Self {
        Self::Response {
            status,
            retry_after: parse_retry_after(headers, now),
            should_retry: parse_should_retry(headers),
        }
    }
}

/// What the proxy does next with the outcome it just reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Hand the outcome to the client: a success, or an error retrying cannot fix.
    Return,
    /// Wait this long, then try the same model again.
    Retry {
        /// The pause before the next attempt.
        after: Duration,
    },
    /// Abandon the current model and try this one now.
    Fallback {
        /// The next model of the chain, to write into the request's `model` field.
        model: Arc<str>,
        /// Why the previous model was abandoned.
        reason: GiveUpReason,
    },
    /// Stop: hand the last outcome to the client, marked `x-should-retry: false`.
    GiveUp(GiveUpReason),
}

/// Why the sidecar stopped retrying a model or the whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `max_attempts` were spent on the model.
    AttemptsExhausted,
    /// The upstream asked for a longer pause than `max_retry_after`.
    RetryAfterTooLong,
    /// The upstream said `x-should-retry: false`.
    UpstreamSaidNo,
    /// The retry budget is spent: the upstream is failing too often.
    BudgetExhausted,
    /// The next attempt could not finish before the overall deadline.
    Deadline,
    /// The request body was streamed and cannot be sent again.
    NotReplayable,
    /// Part of the response already reached the client.
    AlreadySent,
}

impl GiveUpReason {
    /// A stable snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::RetryAfterTooLong => "retry_after_too_long",
            Self::UpstreamSaidNo => "upstream_said_no",
            Self::BudgetExhausted => "budget_exhausted",
            Self::Deadline => "deadline",
            Self::NotReplayable => "not_replayable",
            Self::AlreadySent => "already_sent",
        }
    }
}

/// The retry state of one client request, from the first attempt to the answer.
#[derive(Debug)]
pub struct RequestRetry<'a> {
    policy: &'a RetryConfig,
    budget: Arc<RetryBudget>,
    chain: Vec<Arc<str>>,
    model_index: usize,
    attempt: u32,
    deadline: Instant,
    replayable: bool,
    committed: bool,
}

impl<'a> RequestRetry<'a> {
    /// Starts a request that will try the models of `chain` in order (see
    /// [`fallback_chain`]); `replayable` says the body is buffered and can be resent.
    /// Counts the request into `budget`, which is what later retries are paid from.
    pub fn new(
        policy: &'a RetryConfig,
        budget: Arc<RetryBudget>,
        chain: Vec<Arc<str>>,
        replayable: bool,
        now: Instant,
    ) -> Self {
        budget.deposit();
        Self {
            // A deadline too far to represent is as good as none.
            deadline: now.checked_add(policy.deadline).unwrap_or(now + FAR_FUTURE),
            policy,
            budget,
            chain,
            model_index: 0,
            attempt: 1,
            replayable,
            committed: false,
        }
    }

    /// The model the next attempt goes to (`None` when the chain was empty, which
    /// means "leave the request's model alone").
    pub fn model(&self) -> Option<&str> {
        self.chain.get(self.model_index).map(AsRef::as_ref)
    }

    /// Where [`Self::model`] is in the chain: the model of the attempt about to be made,
    /// for [`Self::model_at`] after [`Self::decide`] moved on.
    pub fn model_index(&self) -> usize {
        self.model_index
    }

    /// The model at `index` of the chain.
    pub fn model_at(&self, index: usize) -> Option<&str> {
        self.chain.get(index).map(AsRef::as_ref)
    }

    /// The model at `index`, shared (the answer names it).
    pub fn shared_model(&self, index: usize) -> Option<Arc<str>> {
        self.chain.get(index).cloned()
    }

    /// The outcome of a response under this plan's policy. Its retry hints are read only
    /// when the policy retries its status: [`Self::decide`] returns any other status as
    /// it is, so on a 200 they would go unread (three header lookups and a clock read).
    pub fn response_outcome(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        if self.policy.on_status.contains(&status.as_u16()) {
            Outcome::from_response(status, headers, SystemTime::now())
        } else {
            Outcome::Response {
                status,
                retry_after: None,
                should_retry: None,
            }
        }
    }

    /// True once the request moved to a fallback model.
    pub fn fell_back(&self) -> bool {
        self.model_index > 0
    }

    /// The 1-based number of the attempt about to be made on the current model.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How long the next attempt may wait for response headers: the per-attempt
    /// timeout cut to what is left of the deadline (zero once it passed).
    pub fn attempt_timeout(&self, now: Instant) -> Duration {
        self.policy
            .attempt_timeout
            .min(self.deadline.saturating_duration_since(now))
    }

    /// What is left of the overall deadline.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }

    /// Records that the response is being handed to the client: from now on every
    /// decision is [`GiveUpReason::AlreadySent`].
    pub fn commit(&mut self) {
        self.committed = true;
    }

    /// True when [`Self::decide`] returns `outcome` as it is: a response whose status the
    /// policy does not retry.
    pub fn returns_as_is(&self, outcome: Outcome) -> bool {
        matches!(outcome, Outcome::Response { status, .. }
            if !self.policy.on_status.contains(&status.as_u16()))
    }

    /// Decides what follows `outcome`, the result of the attempt just made.
    pub fn decide(&mut self, outcome: Outcome, now: Instant, rng: &mut impl Rng) -> Decision {
        if self.returns_as_is(outcome) {
            return Decision::Return;
        }
        if self.committed {
            return Decision::GiveUp(GiveUpReason::AlreadySent);
        }
        if !self.replayable {
            return Decision::GiveUp(GiveUpReason::NotReplayable);
        }
        if let Some(reason) = self.model_done(outcome) {
            return self.next_model(outcome, reason, now);
        }
        let after = match outcome {
            Outcome::Response {
                retry_after: Some(after),
                ..
            } => after,
            _ => backoff(self.policy, self.attempt, rng),
        };
        // A pause that ends at the deadline leaves no time for the attempt itself.
        // Another model answering right away may still make it.
        if after >= self.remaining(now) {
            return self.next_model(outcome, GiveUpReason::Deadline, now);
        }
        if !self.budget.withdraw() {
            return Decision::GiveUp(GiveUpReason::BudgetExhausted);
        }
        self.attempt += 1;
        Decision::Retry { after }
    }

    /// Why the current model must not be tried again, if so.
    fn model_done(&self, outcome: Outcome) -> Option<GiveUpReason> {
        if let Outcome::Response {
            retry_after,
            should_retry,
            ..
        } = outcome
        {
            if should_retry == Some(false) {
                return Some(GiveUpReason::UpstreamSaidNo);
            }
            if retry_after.is_some_and(|after| after > self.policy.max_retry_after) {
                return Some(GiveUpReason::RetryAfterTooLong);
            }
        }
        (self.attempt >= self.policy.max_attempts.max(1)).then_some(GiveUpReason::AttemptsExhausted)
    }

    /// Moves to the next model of the chain, or gives up with `reason`.
    fn next_model(&mut self, outcome: Outcome, reason: GiveUpReason, now: Instant) -> Decision {
        // Every model is served by the same host: a connect error is not model-specific.
        if outcome == Outcome::ConnectError {
            return Decision::GiveUp(reason);
        }
        let Some(model) = self.chain.get(self.model_index + 1).cloned() else {
            return Decision::GiveUp(reason);
        };
        if self.remaining(now).is_zero() {
            return Decision::GiveUp(GiveUpReason::Deadline);
        }
        if !self.budget.withdraw() {
            return Decision::GiveUp(GiveUpReason::BudgetExhausted);
        }
        self.model_index += 1;
        self.attempt = 1;
        Decision::Fallback { model, reason }
    }
}

/// The models one request may go to, in order: `model` (already alias-resolved), then
/// its configured fallbacks, each alias-resolved through `resolve`, without repeats.
/// Fallbacks are looked up for the resolved model first, then for `requested` (the name
/// the client sent), so either spelling may be used as the key in the config.
pub fn fallback_chain<'a>(
    requested: &str,
    model: &Arc<str>,
    fallbacks_of: impl Fn(&str) -> Option<&'a [String]>,
    resolve: impl Fn(&'a str) -> &'a str,
) -> Vec<Arc<str>> {
    let mut chain = vec![Arc::clone(model)];
    let listed = fallbacks_of(model).or_else(|| fallbacks_of(requested));
    for next in listed.unwrap_or_default() {
        let next = resolve(next);
        if !chain.iter().any(|m| **m == *next) {
            chain.push(next.into());
        }
    }
    chain
}

#[cfg(test)]
mod tests;
