//! The env given to app containers, and the rule for what they already set: an app
//! keeps its own values; one whose own base URL bypasses the sidecar gets no placeholder
//! key. Both cases are warned.
//!
//! It does not build the env values (`sidecar::SidecarSpec::app_env`).

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::EnvVar;

use super::{ContainerFacts, MutationError, add_to_list};
use crate::sidecar;
use crate::warnings::{self, Warnings};

/// The env given to app containers, and the base URL in it.
pub(super) struct AppEnv {
    pub(super) vars: Vec<EnvVar>,
    pub(super) base_url: String,
}

/// Adds the app env vars a container does not set itself in `env`. A value that comes
/// only through `envFrom` cannot be seen here, and Kubernetes lets `env` win over
/// `envFrom`: an app that must keep its own `OPENAI_BASE_URL` sets it in `env`.
///
/// The rule for what an app already sets: it always keeps it. An app whose own base URL
/// (`OPENAI_BASE_URL` or `OPENAI_API_BASE`, other than the sidecar's) bypasses the sidecar,
/// so it does not get the placeholder key either: the placeholder must never reach a
/// real provider. An app with its own key and the sidecar's base URL keeps the key, which
/// the sidecar replaces. Both get a warning.
pub(super) fn add_env(
    ops: &mut Vec<PatchOperation>,
    list: &str,
    index: usize,
    container: &ContainerFacts,
    app_env: &AppEnv,
    warnings: &mut Warnings,
) -> Result<(), MutationError> {
    let sets = |name: &str| container.env.iter().flatten().any(|set| set == name);
    let own_base_url = container
        .base_urls
        .iter()
        .any(|value| value.as_deref() != Some(app_env.base_url.as_str()));
    if own_base_url {
        warnings::own_base_url(&container.name, warnings);
    } else if sets(sidecar::API_KEY_ENV) {
        warnings::own_api_key(&container.name, warnings);
    }
    let missing: Vec<_> = app_env
        .vars
        .iter()
        .filter(|var| !sets(&var.name))
        .filter(|var| !(own_base_url && var.name == sidecar::API_KEY_ENV))
        .cloned()
        .collect();
    let index = index.to_string();
    add_to_list(
        ops,
        &["spec", list, &index, "env"],
        container.env.is_some(),
        &missing,
    )
}
