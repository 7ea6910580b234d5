//! `admission.k8s.io/v1` AdmissionReview in and out, and the decision around the pure
//! mutation: which reviews are looked at, how a pod is decoded, how a patch or a refusal
//! is answered.
//!
//! The response type is our own (not kube-core's) so that `patch` goes out as base64 of the
//! JSON patch and `patchType` appears only together with a patch.
//!
//! The body is read in place: the request and its object stay borrowed raw JSON until they
//! are needed, and the object is decoded only into the facts the mutation reads
//! (`mutation::PodFacts`), so the memory a review takes is about the size of its body.
//!
//! What it does not do: HTTP (that is `server`) or decide what to inject (`mutation`).
//! Everything here is pure and synchronous, so it is tested without a server.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::events::RefusalEvent;
use crate::metrics::AdmissionResult;
use crate::mutation::{MutationError, PodFacts, plan};
use crate::settings::Settings;

/// The only AdmissionReview version served. v1beta1 was removed in Kubernetes 1.22.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The `kind` of both the request and the response.
pub const KIND: &str = "AdmissionReview";

/// An AdmissionReview as kube-apiserver sends it, borrowing from the body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview<'a> {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// Must be [`KIND`].
    pub kind: String,
    /// The request as raw JSON, decoded only after the envelope is checked, so that a
    /// v1beta1 review is answered with the version problem rather than a field-level one.
    #[serde(borrow, default)]
    pub request: Option<&'a RawValue>,
}

/// Group, version and kind of the reviewed object.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    /// API group, empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Kind, e.g. `Pod`.
    #[serde(default)]
    pub kind: String,
}

/// Group, version and resource of the reviewed object.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionResource {
    /// API group, empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    #[serde(default)]
    pub version: String,
    /// Resource, e.g. `pods`.
    #[serde(default)]
    pub resource: String,
}

/// The requesting user; only the name is kept, for the log line.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    /// User name, e.g. `system:serviceaccount:kube-system:replicaset-controller`.
    #[serde(default)]
    pub username: String,
}

/// The `request` of an AdmissionReview, borrowing the object from the body. Fields the
/// webhook does not use (`oldObject`, `options`, `requestKind`...) are skipped unread.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest<'a> {
    /// Echoed back in the response; kube-apiserver matches on it.
    pub uid: String,
    /// Kind of the object, after conversion to the version the webhook asked for.
    pub kind: GroupVersionKind,
    /// Resource being admitted.
    pub resource: GroupVersionResource,
    /// Subresource (`status`, `ephemeralcontainers`, `binding`...), absent for the object.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Object name; empty for a pod created from `generateName`.
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace of the object.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// Who is asking.
    #[serde(default)]
    pub user_info: UserInfo,
    /// The object being admitted, as raw JSON.
    #[serde(borrow, default)]
    pub object: Option<&'a RawValue>,
    /// True when the request will not be persisted. The mutation has no side effects, so
    /// the answer is the same.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not an object with the AdmissionReview fields.
    #[error("not an AdmissionReview: {0}")]
    Malformed(String),
    /// Another `apiVersion`.
    #[error(
        "unsupported apiVersion {0:?}: only admission.k8s.io/v1 is served; set admissionReviewVersions: [\"v1\"] in the webhook configuration"
    )]
    ApiVersion(String),
    /// Another `kind`.
    #[error("unsupported kind {0:?}: expected AdmissionReview")]
    Kind(String),
    /// No `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// Empty `request.uid`.
    #[error("AdmissionReview request.uid is empty")]
    NoUid,
    /// `request` does not have the AdmissionRequest shape.
    #[error("invalid AdmissionReview request: {0}")]
    Request(String),
}

impl<'a> AdmissionReview<'a> {
    /// Reads the envelope from a request body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ReviewError> {
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))
    }

    /// Checks the envelope and returns the request.
    pub fn into_request(self) -> Result<AdmissionRequest<'a>, ReviewError> {
        if self.api_version != API_VERSION {
            return Err(ReviewError::ApiVersion(self.api_version));
        }
        if self.kind != KIND {
            return Err(ReviewError::Kind(self.kind));
        }
        let request = self
            .request
            .filter(|r| r.get() != "null")
            .ok_or(ReviewError::NoRequest)?;
        let request: AdmissionRequest<'a> =
            serde_json::from_str(request.get()).map_err(|e| ReviewError::Request(e.to_string()))?;
        if request.uid.is_empty() {
            return Err(ReviewError::NoUid);
        }
        Ok(request)
    }
}

/// The AdmissionReview sent back.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    /// Always [`API_VERSION`].
    pub api_version: &'static str,
    /// Always [`KIND`].
    pub kind: &'static str,
    /// The answer.
    pub response: AdmissionResponse,
}

/// The only patch type kube-apiserver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PatchType {
    /// RFC 6902 JSON patch.
    #[serde(rename = "JSONPatch")]
    JsonPatch,
}

/// The `response` of an AdmissionReview.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the object is admitted.
    pub allowed: bool,
    /// Present only with `patch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<PatchType>,
    /// Base64 of the JSON patch bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Why the object was refused; present only when `allowed` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Short lines `kubectl` prints as `Warning: ...` (typos, env conflicts...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The subset of `metav1.Status` kube-apiserver shows to the user on a refusal.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    /// Always `Failure`.
    pub status: &'static str,
    /// HTTP-like code: 400 for an object or annotation that cannot be read, 403 for a
    /// refused pod, 500 for an internal error.
    pub code: u16,
    /// `BadRequest`, `Forbidden` or `InternalError`, matching `code`.
    pub reason: &'static str,
    /// The message `kubectl` prints after "admission webhook ... denied the request:".
    pub message: String,
}

impl AdmissionResponse {
    fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            patch_type: None,
            patch: None,
            status: None,
            warnings: Vec::new(),
        }
    }

    fn deny(uid: &str, code: u16, message: String) -> Self {
        let reason = if code == 400 {
            "BadRequest"
        } else {
            "Forbidden"
        };
        Self {
            uid: uid.to_owned(),
            allowed: false,
            patch_type: None,
            patch: None,
            status: Some(Status {
                status: "Failure",
                code,
                reason,
                message,
            }),
            warnings: Vec::new(),
        }
    }

    /// Wraps the response into the AdmissionReview envelope.
    pub fn into_review(self) -> AdmissionReviewResponse {
        AdmissionReviewResponse {
            api_version: API_VERSION,
            kind: KIND,
            response: self,
        }
    }
}

/// The answer to one request and how it is counted.
#[derive(Debug, Clone)]
pub struct Decision {
    /// What to send back.
    pub response: AdmissionResponse,
    /// The metric and log label.
    pub result: AdmissionResult,
    /// The Warning Event to post on the pod's owner, for a refused pod that has one.
    pub event: Option<RefusalEvent>,
}

impl Decision {
    fn new(response: AdmissionResponse, result: AdmissionResult) -> Self {
        Self {
            response,
            result,
            event: None,
        }
    }
}

impl AdmissionRequest<'_> {
    /// True for the Pod object itself in the core group (not a subresource such as
    /// `pods/ephemeralcontainers` or `pods/binding`, which carry other kinds or must not
    /// be mutated).
    pub fn is_pod(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.kind == "Pod"
            && self.resource.resource == "pods"
            && self.sub_resource.as_deref().unwrap_or("").is_empty()
    }
}

/// Decides one admission request. Pure: the same request always gets the same answer,
/// which is also why `dryRun` needs no special case.
pub fn review(request: &AdmissionRequest<'_>, settings: &Settings) -> Decision {
    let uid = request.uid.as_str();
    if !request.is_pod() {
        return Decision::new(AdmissionResponse::allow(uid), AdmissionResult::NotPod);
    }
    if request.operation != "CREATE" {
        return Decision::new(AdmissionResponse::allow(uid), AdmissionResult::NotCreate);
    }
    let pod = match decode_pod(request) {
        Ok(pod) => pod,
        Err(message) => {
            return Decision::new(
                AdmissionResponse::deny(uid, 400, message),
                AdmissionResult::Error,
            );
        }
    };
    let plan = plan(&pod, settings);
    let PodFacts {
        namespace, owner, ..
    } = pod;
    let mut decision = match plan.outcome {
        Ok(None) => Decision::new(AdmissionResponse::allow(uid), AdmissionResult::Skipped),
        Ok(Some(patch)) => match encode_patch(&patch) {
            Ok(patch) => {
                let mut response = AdmissionResponse::allow(uid);
                response.patch_type = Some(PatchType::JsonPatch);
                response.patch = Some(patch);
                Decision::new(response, AdmissionResult::Injected)
            }
            // Serializing a patch of JSON values cannot really fail; if it ever does, the
            // pod is refused rather than admitted without the sidecar it asked for.
            Err(e) => Decision::new(
                AdmissionResponse::deny(
                    uid,
                    500,
                    format!("holysheep: failed to encode the injection patch: {e}"),
                ),
                AdmissionResult::Error,
            ),
        },
        Err(error) => {
            let message = denial_message(&error);
            // The pod is never created, so its controller is where `kubectl describe`
            // and `kubectl get events` show why its pods do not appear.
            let event = match (namespace, owner) {
                (Some(namespace), Some(regarding)) => Some(RefusalEvent {
                    namespace,
                    regarding,
                    note: message.clone(),
                }),
                _ => None,
            };
            Decision {
                response: AdmissionResponse::deny(uid, denial_code(&error), message),
                result: AdmissionResult::Denied,
                event,
            }
        }
    };
    decision.response.warnings = plan.warnings;
    decision
}

/// 400 when the pod's own annotations are malformed, 500 for our bug, 403 for a
/// well-formed pod the injection refuses (hostNetwork, port collision...). kube-apiserver
/// turns the code into the error class `kubectl` prints (`BadRequest`, `Forbidden`...).
fn denial_code(error: &MutationError) -> u16 {
    match error {
        MutationError::Annotation(_) => 400,
        MutationError::Internal(_) => 500,
        // A wildcard on purpose: a refusal added to the mutation later is a policy
        // refusal until said otherwise, and must not break this crate's build.
        _ => 403,
    }
}

/// The answer when evaluating a review failed unexpectedly (a bug): refused with 500, so
/// an opted-in pod never starts without the sidecar it asked for.
pub fn internal_error(uid: &str) -> Decision {
    Decision::new(
        AdmissionResponse::deny(
            uid,
            500,
            "holysheep: internal error while evaluating the pod; see the webhook's logs".into(),
        ),
        AdmissionResult::Error,
    )
}

fn denial_message(error: &MutationError) -> String {
    format!("holysheep sidecar injection refused: {error}")
}

/// The patch as base64 of its JSON, written straight into the base64 text (the JSON is
/// never held on its own).
fn encode_patch(patch: &json_patch::Patch) -> Result<String, serde_json::Error> {
    let mut encoder =
        base64::write::EncoderStringWriter::new(&base64::engine::general_purpose::STANDARD);
    serde_json::to_writer(&mut encoder, patch)?;
    Ok(encoder.into_inner())
}

/// Decodes the facts the mutation reads from `request.object`. Pods created from
/// `generateName` have no name and often no namespace in their metadata yet: the request's
/// namespace is filled in so the mutation sees where the pod is going.
fn decode_pod(request: &AdmissionRequest<'_>) -> Result<PodFacts, String> {
    let object = request
        .object
        .filter(|o| o.get() != "null")
        .ok_or_else(|| "holysheep: the AdmissionReview request has no object".to_owned())?;
    let mut pod: PodFacts = serde_json::from_str(object.get())
        .map_err(|e| format!("holysheep: request.object is not a valid Pod: {e}"))?;
    if pod.namespace.as_deref().unwrap_or("").is_empty() {
        pod.namespace = request.namespace.clone().filter(|ns| !ns.is_empty());
    }
    Ok(pod)
}

mod answer;
pub use answer::{Answer, AnswerError, ReviewSummary, answer};

#[cfg(test)]
mod tests;
