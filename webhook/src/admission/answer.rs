//! The whole admission step on a request body, as the server runs it: read the review in
//! place, decide it, serialize the response, and keep what the log line needs.
//!
//! What it does not do: HTTP, limits or logging (`server`).

use std::panic::AssertUnwindSafe;

use super::{AdmissionReview, ReviewError, internal_error, review};
use crate::events::RefusalEvent;
use crate::metrics::AdmissionResult;
use crate::settings::Settings;

/// What the admission log line says about one review. Never the object: a pod's env may
/// hold secrets of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewSummary {
    /// `request.uid`.
    pub uid: String,
    /// `request.kind.kind`.
    pub kind: String,
    /// `request.namespace`.
    pub namespace: String,
    /// `request.name`.
    pub name: String,
    /// `request.operation`.
    pub operation: String,
    /// `request.userInfo.username`.
    pub user: String,
    /// `request.dryRun`.
    pub dry_run: bool,
    /// The refusal message, empty when allowed.
    pub message: String,
}

/// A review answered: the response body and what to count and log.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The AdmissionReview response, serialized.
    pub body: Vec<u8>,
    /// The metric and log label.
    pub result: AdmissionResult,
    /// For the log line.
    pub summary: ReviewSummary,
    /// The Warning Event to post for a refused pod (never for a dry run: the webhook
    /// declares no side effects on dry run).
    pub event: Option<RefusalEvent>,
}

/// Why a review body could not be answered with an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The body is not an AdmissionReview we can answer (HTTP 400).
    #[error(transparent)]
    Review(#[from] ReviewError),
    /// The response could not be serialized (a bug, HTTP 500).
    #[error("failed to encode the AdmissionReview response: {0}")]
    Encode(#[source] serde_json::Error),
}

/// The whole admission step on a request body: reads the review, decides it and serializes
/// the response. Synchronous and CPU-bound; the server runs it off the async workers.
pub fn answer(body: &[u8], settings: &Settings) -> Result<Answer, AnswerError> {
    let request = AdmissionReview::parse(body)?.into_request()?;
    // Backstop only: the mutation is written not to panic, and property-tested for it. If
    // it ever does, this review gets a clear refusal instead of a reset stream, and the
    // error is counted.
    let decision = std::panic::catch_unwind(AssertUnwindSafe(|| review(&request, settings)))
        .unwrap_or_else(|_| internal_error(&request.uid));
    let summary = ReviewSummary {
        uid: request.uid.clone(),
        kind: request.kind.kind.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name: request.name.clone().unwrap_or_default(),
        operation: request.operation.clone(),
        user: request.user_info.username.clone(),
        dry_run: request.dry_run.unwrap_or(false),
        message: decision
            .response
            .status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default(),
    };
    let event = decision.event.filter(|_| !summary.dry_run);
    let body = serde_json::to_vec(&decision.response.into_review()).map_err(AnswerError::Encode)?;
    Ok(Answer {
        body,
        result: decision.result,
        summary,
        event,
    })
}
