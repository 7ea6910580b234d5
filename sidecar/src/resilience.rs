//! Carries out the retry policy around single upstream attempts: the local rate limit
//! before the first one, then attempts, pauses and fallback models until the policy says
//! to hand an answer to the client; and marks what the client gets (`x-holysheep-model`,
//! `x-should-retry: false` once the sidecar gave up, an SSE `error` event when a stream
//! breaks after its first byte, the end of a body whose upstream went idle).
//!
//! Attempts are counted as they are sent: a retry shows in
//! `holysheep_upstream_retries_total` and in the request's `attempts` only once it goes
//! upstream, never when it is merely planned (the client may leave, or the deadline pass,
//! during the pause before it).
//!
//! The decisions themselves are made by the pure policy in retry.rs; this module only
//! performs them (sleeps, re-sends, rewrites the `model` field). Nothing is retried once
//! a response was handed on: a response leaves [`Resilience::send`] only as the final answer, so a
//! stream that breaks later is never sent upstream again.
//!
//! Not here: one attempt (upstream.rs), the policy (retry.rs), the limits (ratelimit.rs).

mod give_up;
mod stream_error;
mod stream_idle;

pub use stream_error::SseErrorTail;
pub use stream_idle::IdleTimeout;

use std::sync::Arc;

use crate::upstream::UpstreamIncoming;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use http_body::Body as _;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ProxyError;
use crate::metrics::{AttemptOutcome, RequestMeter, RetryReason};
use crate::models::{self, ModelField};
use crate::proxy::{OutBody, Outgoing};
use crate::ratelimit::{LocalRateLimit, TokenReservation, estimate_tokens};
use crate::retry::{
    Decision, GiveUpReason, Outcome, RequestRetry, SharedRetryBudget, fallback_chain,
};
use crate::upstream::{self, Upstream};
use give_up::{deadline, gave_up};

/// The response header naming the model that produced the answer.
pub const X_HOLYSHEEP_MODEL: &str = "x-holysheep-model";
/// The header the OpenAI SDKs obey; `false` stops their own retries.
pub const X_SHOULD_RETRY: &str = "x-should-retry";

/// Process-wide state of the resilience layer: the retry budget and the local limits.
#[derive(Debug, Default)]
pub struct Resilience {
    /// Retries and fallbacks as a share of recent requests.
    pub budget: SharedRetryBudget,
    /// The pod-local RPM/TPM limits.
    pub rate_limit: LocalRateLimit,
}

/// The answer the attempt loop settled on.
#[derive(Debug)]
pub struct Answer {
    /// The upstream response, body not yet read.
    pub response: Response<UpstreamIncoming>,
    /// The model this response came from (after aliases and fallbacks), when the request
    /// named one.
    pub model: Option<Arc<str>>,
    /// True when the sidecar stopped retrying (the answer is a failure it gave up on).
    pub gave_up: bool,
}

impl Answer {
    /// Sets `x-holysheep-model` and, after a give-up, `x-should-retry: false` on the
    /// response going to the client.
    pub fn mark<B>(model: Option<&str>, gave_up: bool, response: &mut Response<B>) {
        let headers = response.headers_mut();
        // Names built at compile time: a `&str` name would be copied into an allocation,
        // and `from_static` outside a const checks its bytes on every call.
        static MODEL: HeaderName = HeaderName::from_static(X_HOLYSHEEP_MODEL);
        static SHOULD_RETRY: HeaderName = HeaderName::from_static(X_SHOULD_RETRY);
        if let Some(value) = model.and_then(|m| HeaderValue::from_str(m).ok()) {
            headers.insert(MODEL.clone(), value);
        }
        if gave_up {
            headers.insert(SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
        }
    }
}

impl Resilience {
    /// Admits the request under the local rate limit, before any upstream call. The
    /// token estimate is only computed when a token limit is configured.
    pub fn admit(&self, config: &Config, body: &OutBody) -> Result<TokenReservation, ProxyError> {
        let limits = &config.rate_limit;
        let estimated = match body {
            OutBody::Buffered(bytes) if limits.tokens_per_minute.is_some() => {
                serde_json::from_slice(bytes).map_or(0, |json| estimate_tokens(&json))
            }
            _ => 0,
        };
        Ok(self.rate_limit.check(limits, estimated)?)
    }

    /// Sends `outgoing` with retries and fallbacks (see the module doc). `model` is the
    /// request's `model` field after aliasing, `requested` the name the client sent;
    /// `meter` is told of each attempt as it goes out (and holds the metrics).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds `outgoing` twice in every request's future"
    )]
    pub fn send(
        &self,
        upstream: &Upstream,
        config: &Config,
        mut outgoing: Outgoing,
        model: Option<&ModelField>,
        requested: Option<&str>,
        meter: &mut RequestMeter,
    ) -> impl Future<Output = Result<Answer, ProxyError>> {
        // See `proxy::handle` for why the request future's size matters.
        async move {
            let mut chain = model.map_or_else(Vec::new, |field| {
                fallback_chain(
                    requested.unwrap_or(&field.name),
                    &field.name,
                    |m| config.fallbacks.get(m).map(Vec::as_slice),
                    |m| models::resolve_alias(&config.aliases, m).unwrap_or(m),
                )
            });
            // A fallback to a model the `models` lists refuse is skipped, never sent.
            chain.retain(|m| config.models.allows(m));
            match &outgoing.body {
                // No body at all (GET /v1/models): as replayable as a buffered one.
                OutBody::Streamed(body) if body.is_end_stream() => {
                    outgoing.body = OutBody::Buffered(Bytes::new());
                }
                OutBody::Streamed(_) => {
                    // Boxed: an upload is rare, and its state would size every request's.
                    return Box::pin(send_streamed(upstream, config, outgoing, meter)).await;
                }
                OutBody::Buffered(_) => {}
            }
            let budget = self.budget.get(config.retry.budget_ratio);
            let start = Instant::now();
            let mut plan = RequestRetry::new(&config.retry, budget, chain, true, start);
            // The first attempt starts on the clock read above; each later one reads its own.
            let mut first = Some(start);
            let mut field = model.cloned();
            let mut attempts = 0;
            // A retry decided on and waited for; counted once it is sent.
            let mut retry_due: Option<RetryReason> = None;
            // The previous attempt's failure, for the message if the deadline ends the loop.
            let mut last_error: Option<ProxyError> = None;
            loop {
                let now = first.take().unwrap_or_else(Instant::now);
                let timeout = plan.attempt_timeout(now);
                if timeout.is_zero() {
                    let last = last_error.map(Box::new);
                    return Err(deadline(config, &outgoing.uri, attempts, last));
                }
                let request = outgoing.try_clone_request().ok_or_else(not_replayable)?;
                let attempt = plan.attempt();
                attempts += 1;
                meter.set_attempts(attempts);
                if let Some(reason) = retry_due.take() {
                    let model = plan.model().unwrap_or("");
                    meter.metrics().record_retry(model, reason);
                }
                let limit = config.limits.max_body_bytes;
                let result = upstream::send_once(upstream, request, timeout, now, limit).await;
                let outcome = match result {
                    Ok(ref resp) => plan.response_outcome(resp.status(), resp.headers()),
                    Err(ProxyError::UpstreamTimeout { .. }) => Outcome::AttemptTimeout,
                    // No response: refused, reset or closed before headers.
                    Err(
                        ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamFailed { .. },
                    ) => Outcome::ConnectError,
                    // Our own request is at fault (e.g. body over the limit): no retry helps,
                    // and it never went out.
                    Err(other) => {
                        meter.set_attempts(attempts - 1);
                        return Err(other);
                    }
                };
                // The model this attempt went to (a fallback decision moves the plan on).
                let tried = plan.model_index();
                meter
                    .metrics()
                    .record_attempt(plan.model_at(tried).unwrap_or(""), attempt_outcome(outcome));
                // The common case, a response returned as it is, needs no clock and no dice.
                let decision = if plan.returns_as_is(outcome) {
                    Decision::Return
                } else {
                    plan.decide(outcome, Instant::now(), &mut rand::rng())
                };
                match decision {
                    Decision::Return => {
                        plan.commit();
                        return result.map(|response| Answer {
                            response,
                            model: plan.shared_model(tried),
                            gave_up: false,
                        });
                    }
                    Decision::Retry { after } => {
                        retry_due = Some(retry_reason(outcome));
                        tracing::info!(
                            model = plan.model_at(tried).unwrap_or(""),
                            attempt,
                            outcome = outcome_name(outcome),
                            wait_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                            "retrying upstream request"
                        );
                        // Drop a failed response (and its connection) before waiting; keep an
                        // error for the message should the deadline end the request.
                        last_error = result.err();
                        tokio::time::sleep(after).await;
                    }
                    Decision::Fallback {
                        model: next,
                        reason,
                    } => {
                        let from = plan.model_at(tried).unwrap_or("");
                        meter.metrics().record_fallback(from, &next);
                        meter.set_upstream_model(&next);
                        tracing::info!(
                            from,
                            to = %next,
                            reason = reason.as_str(),
                            "falling back to the next model"
                        );
                        last_error = result.err();
                        if let (OutBody::Buffered(body), Some(current)) = (&outgoing.body, &field) {
                            let (body, moved) = models::set_model(body, current, &next);
                            outgoing.replace_body(body);
                            field = Some(moved);
                        }
                    }
                    Decision::GiveUp(reason) => {
                        tracing::warn!(
                            model = plan.model_at(tried).unwrap_or(""),
                            attempts,
                            outcome = outcome_name(outcome),
                            reason = reason.as_str(),
                            "giving up on the upstream request"
                        );
                        plan.commit();
                        return match result {
                            Ok(response) => Ok(Answer {
                                response,
                                model: plan.shared_model(tried),
                                gave_up: true,
                            }),
                            Err(last) => {
                                Err(gave_up(reason, config, &outgoing.uri, attempts, last))
                            }
                        };
                    }
                }
            }
        }
    }
}

/// A streamed (non-JSON) body cannot be replayed: one attempt, answered as it comes,
/// and no `x-should-retry` verdict, so the client may retry it itself.
async fn send_streamed(
    upstream: &Upstream,
    config: &Config,
    outgoing: Outgoing,
    meter: &mut RequestMeter,
) -> Result<Answer, ProxyError> {
    let timeout = config.retry.attempt_timeout.min(config.retry.deadline);
    meter.set_attempts(1);
    let uri = outgoing.uri.clone();
    let result = upstream::send_once(
        upstream,
        outgoing.into_request(),
        timeout,
        Instant::now(),
        config.limits.max_body_bytes,
    )
    .await;
    let outcome = match &result {
        Ok(resp) => Some(AttemptOutcome::from_status(resp.status().as_u16())),
        Err(ProxyError::UpstreamTimeout { .. }) => Some(AttemptOutcome::Timeout),
        Err(ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamFailed { .. }) => {
            Some(AttemptOutcome::ConnectError)
        }
        // Refused before it went out (e.g. body over the limit): not an attempt.
        Err(_) => None,
    };
    match outcome {
        Some(outcome) => meter.metrics().record_attempt("", outcome),
        None => meter.set_attempts(0),
    }
    let response = result.map_err(|e| match outcome {
        Some(_) => gave_up(GiveUpReason::NotReplayable, config, &uri, 1, e),
        None => e,
    })?;
    Ok(Answer {
        response,
        model: None,
        gave_up: false,
    })
}

fn not_replayable() -> ProxyError {
    // Only buffered bodies reach the loop; reaching this is a logic error, answered as a
    // failed exchange rather than a panic.
    ProxyError::UpstreamFailed {
        source: "internal: a streamed request body cannot be sent twice".into(),
    }
}

/// `holysheep_upstream_attempts_total{outcome}` of one attempt.
fn attempt_outcome(outcome: Outcome) -> AttemptOutcome {
    match outcome {
        Outcome::Response { status, .. } => AttemptOutcome::from_status(status.as_u16()),
        Outcome::ConnectError => AttemptOutcome::ConnectError,
        Outcome::AttemptTimeout => AttemptOutcome::Timeout,
    }
}

/// `holysheep_upstream_retries_total{reason}` of an attempt that is retried.
fn retry_reason(outcome: Outcome) -> RetryReason {
    match outcome {
        Outcome::Response { status, .. } if status.as_u16() == 429 => RetryReason::RateLimited,
        Outcome::Response { .. } => RetryReason::ServerError,
        Outcome::ConnectError => RetryReason::Connect,
        Outcome::AttemptTimeout => RetryReason::Timeout,
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Response { .. } => "status",
        Outcome::ConnectError => "connect_error",
        Outcome::AttemptTimeout => "timeout",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_name_the_model_and_stop_sdk_retries_only_after_giving_up() {
        let mut resp = Response::new(());
        Answer::mark(Some("deepseek-chat-v3-0324"), false, &mut resp);
        assert_eq!(resp.headers()[X_HOLYSHEEP_MODEL], "deepseek-chat-v3-0324");
        assert!(!resp.headers().contains_key(X_SHOULD_RETRY));
        resp.headers_mut()
            .insert(X_SHOULD_RETRY, HeaderValue::from_static("true"));
        Answer::mark(None, true, &mut resp);
        assert_eq!(
            resp.headers()[X_SHOULD_RETRY],
            "false",
            "upstream's verdict replaced"
        );
    }
}
