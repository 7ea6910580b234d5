//! Keeps the caBundle of every webhook in the MutatingWebhookConfiguration
//! `holysheep-sidecar-injector` equal to the CA bundle kube-apiserver must trust.
//!
//! Read, compare (same certificates, whatever the whitespace: no needless write), and only
//! when something differs send a JSON merge patch that carries the `resourceVersion` that
//! was read. The apiserver treats that as a precondition, so a concurrent change (another
//! replica, `kubectl apply`) answers 409 Conflict instead of being overwritten; we then
//! read again. A merge patch replaces the whole `webhooks` list, which is why the
//! precondition matters: the list we send is exactly the one we read, caBundle aside.

use holysheep_certs::bundle;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};

use super::secret::has_code;
use super::{BootstrapError, BootstrapOptions, FIELD_MANAGER, MAX_ATTEMPTS};

/// What happened to the caBundle during a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaBundleStatus {
    /// Every webhook already trusted exactly this bundle.
    Unchanged,
    /// This many webhooks had another (or no) caBundle and were patched.
    Patched {
        /// Number of webhooks whose caBundle changed.
        webhooks: usize,
    },
    /// The MutatingWebhookConfiguration does not exist (yet): nothing to patch.
    ConfigNotFound,
}

/// Makes every webhook of the configuration trust `bundle_pem`.
pub(super) async fn sync(
    client: &kube::Client,
    opts: &BootstrapOptions,
    bundle_pem: &str,
) -> Result<CaBundleStatus, BootstrapError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = &opts.webhook_config_name;
    let what = format!("MutatingWebhookConfiguration {name}");
    for _ in 0..MAX_ATTEMPTS {
        let found = api.get_opt(name).await.map_err(|e| {
            BootstrapError::api(
                format!("get {what}"),
                "get on mutatingwebhookconfigurations",
                e,
            )
        })?;
        let Some(config) = found else {
            tracing::warn!(config = %name, "webhook configuration not found; will retry");
            return Ok(CaBundleStatus::ConfigNotFound);
        };
        let mut webhooks = config.webhooks.unwrap_or_default();
        let mut changed = 0;
        for webhook in &mut webhooks {
            let current = webhook.client_config.ca_bundle.as_ref();
            if !current.is_some_and(|b| bundle::same_certificates(&b.0, bundle_pem.as_bytes())) {
                webhook.client_config.ca_bundle = Some(ByteString(bundle_pem.as_bytes().to_vec()));
                changed += 1;
            }
        }
        if changed == 0 {
            return Ok(CaBundleStatus::Unchanged);
        }
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": config.metadata.resource_version },
            "webhooks": webhooks,
        });
        match api
            .patch(
                name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(config = %name, webhooks = changed, "patched caBundle");
                return Ok(CaBundleStatus::Patched { webhooks: changed });
            }
            Err(e) if has_code(&e, 409) => {
                tracing::info!(config = %name, "webhook configuration changed meanwhile; reading it again");
            }
            Err(e) => {
                return Err(BootstrapError::api(
                    format!("patch the caBundle of {what}"),
                    "patch on mutatingwebhookconfigurations",
                    e,
                ));
            }
        }
    }
    Err(BootstrapError::Contention {
        action: format!("patching the caBundle of {what}"),
        attempts: MAX_ATTEMPTS,
    })
}
