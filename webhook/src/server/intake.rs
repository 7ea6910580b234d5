//! What a review goes through before it is decided, and the room its response takes after:
//! the body is checked against the size limit before it is read (its declared length) and
//! while it is read (chunked bodies), read within one whole-body deadline, and counted in a
//! byte budget shared by every review; deciding it takes one of a few worker slots. A
//! review that finds no room within the queue timeout is refused with 429.
//!
//! Every refusal of a review request is a [`Refusal`], answered as
//! `{"code": ..., "message": ...}` with its status (400, 408, 413, 429, 500).
//!
//! What it does not do: decide the review (`admission`) or own the connection (`conn`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, HttpBody};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::Limits;
use crate::admission::AnswerError;
use crate::metrics::AdmissionResult;

/// The budget counts in units of this many bytes (a semaphore permit each).
const UNIT: usize = 1024;

/// Why a review request is answered with an HTTP error instead of an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Not `application/json`.
    #[error(
        "expected request with `Content-Type: application/json`: kube-apiserver sends \
         AdmissionReviews as JSON"
    )]
    ContentType,
    /// Larger than the review size limit (declared, or counted while reading).
    #[error(
        "the AdmissionReview is larger than {limit} bytes, more than a review of a pod can \
         be: refused without reading it"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body did not arrive in time.
    #[error(
        "the request body did not arrive within {}s: send the whole AdmissionReview at once",
        .0.as_secs_f32()
    )]
    BodyTimeout(Duration),
    /// The body could not be read (the client reset the stream...).
    #[error("failed to read the request body: {0}")]
    BodyRead(String),
    /// No room for the review within the queue timeout.
    #[error(
        "holysheep-webhook is busy: no room for this review within {}s; retry it",
        .0.as_secs_f32()
    )]
    Busy(Duration),
    /// The body is not a review we can answer, or the answer failed.
    #[error(transparent)]
    Answer(#[from] AnswerError),
    /// The task deciding the review did not finish (the runtime is shutting down).
    #[error("internal error: the review was not decided; see the webhook's logs")]
    Internal,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ContentType | Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Answer(AnswerError::Review(_)) => StatusCode::BAD_REQUEST,
            Self::Answer(AnswerError::Encode(_)) | Self::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// How the refusal is counted.
    pub fn result(&self) -> AdmissionResult {
        match self {
            Self::ContentType
            | Self::BodyRead(_)
            | Self::TooLarge { .. }
            | Self::Answer(AnswerError::Review(_)) => AdmissionResult::InvalidRequest,
            Self::BodyTimeout(_) => AdmissionResult::TimedOut,
            Self::Busy(_) => AdmissionResult::Busy,
            Self::Answer(AnswerError::Encode(_)) | Self::Internal => AdmissionResult::Error,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({"code": status.as_u16(), "message": self.to_string()});
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Refuses a body that is not declared as JSON (axum's `Json` rule: `application/json` or
/// an `application/*+json` type).
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(Refusal::ContentType)
    }
}

/// The review budget and worker slots, shared by every connection.
#[derive(Debug)]
pub(crate) struct Intake {
    budget: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    max_body_bytes: usize,
    body_timeout: Duration,
    queue_timeout: Duration,
}

/// Room held in the review budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    permit: OwnedSemaphorePermit,
}

/// A worker slot: held while one review is decided.
#[derive(Debug)]
pub(crate) struct Worker {
    _permit: OwnedSemaphorePermit,
}

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT).max(1)
}

impl Intake {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(units(limits.review_bytes_budget))),
            workers: Arc::new(Semaphore::new(limits.concurrent_reviews)),
            max_body_bytes: limits.max_body_bytes,
            body_timeout: limits.body_timeout,
            queue_timeout: limits.queue_timeout,
        }
    }

    /// Reads a review body: refused unread when its declared length is over the limit,
    /// counted in the budget from the start (its declared length, or the limit when it
    /// declares none), cut off at the limit and at the body deadline.
    pub(crate) async fn receive(&self, body: Body) -> Result<(Vec<u8>, Held), Refusal> {
        let max = self.max_body_bytes;
        let hint = HttpBody::size_hint(&body);
        if usize::try_from(hint.lower()).map_or(true, |lower| lower > max) {
            return Err(Refusal::TooLarge { limit: max });
        }
        let expected = hint
            .upper()
            .and_then(|upper| usize::try_from(upper).ok())
            .map_or(max, |upper| upper.min(max));
        let mut held = self.reserve(expected).await?;
        let mut buf = Vec::with_capacity(expected);
        let read = read_into(body, &mut buf, max);
        match tokio::time::timeout(self.body_timeout, read).await {
            Err(_) => return Err(Refusal::BodyTimeout(self.body_timeout)),
            Ok(result) => result?,
        }
        held.shrink_to(buf.len());
        Ok((buf, held))
    }

    /// A worker slot, waiting at most the queue timeout.
    pub(crate) async fn worker(&self) -> Result<Worker, Refusal> {
        let acquire = self.workers.clone().acquire_owned();
        match tokio::time::timeout(self.queue_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(Worker { _permit: permit }),
            Ok(Err(_)) | Err(_) => Err(Refusal::Busy(self.queue_timeout)),
        }
    }

    /// Makes `held` cover exactly `bytes`: gives back the excess, or waits (at most the
    /// queue timeout) for more.
    pub(crate) async fn resize(&self, held: &mut Held, bytes: usize) -> Result<(), Refusal> {
        let have = held.permit.num_permits();
        let want = units(bytes);
        if want <= have {
            held.shrink_to(bytes);
            return Ok(());
        }
        let extra = self.reserve_units(want - have).await?;
        held.permit.merge(extra.permit);
        Ok(())
    }

    async fn reserve(&self, bytes: usize) -> Result<Held, Refusal> {
        self.reserve_units(units(bytes)).await
    }

    async fn reserve_units(&self, units: usize) -> Result<Held, Refusal> {
        // More than the whole budget can never be granted: waiting would only delay the 429.
        let units = u32::try_from(units).map_err(|_| Refusal::Busy(self.queue_timeout))?;
        let acquire = self.budget.clone().acquire_many_owned(units);
        match tokio::time::timeout(self.queue_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(Held { permit }),
            Ok(Err(_)) | Err(_) => Err(Refusal::Busy(self.queue_timeout)),
        }
    }
}

impl Held {
    fn shrink_to(&mut self, bytes: usize) {
        let have = self.permit.num_permits();
        let keep = units(bytes);
        if have > keep {
            drop(self.permit.split(have - keep));
        }
    }

    /// `data` as response bytes that keep this room held until the last copy of them is
    /// dropped, that is until the response has been written out, however slowly the
    /// client reads.
    pub(crate) fn into_bytes(self, data: Vec<u8>) -> Bytes {
        Bytes::from_owner(HeldBytes { data, _held: self })
    }
}

struct HeldBytes {
    data: Vec<u8>,
    _held: Held,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

async fn read_into(body: Body, buf: &mut Vec<u8>, max: usize) -> Result<(), Refusal> {
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::BodyRead(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len().saturating_add(data.len()) > max {
                return Err(Refusal::TooLarge { limit: max });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
