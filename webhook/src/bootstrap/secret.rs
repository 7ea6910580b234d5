//! The Secret `holysheep-webhook-tls` shared by all replicas: read it, create it when
//! absent, renew what is about to expire, and always end with one CA for everybody.
//!
//! Concurrency: creation is first-writer-wins (a 409 AlreadyExists means another replica
//! created it first: re-read and use theirs); updates carry the `resourceVersion` that was
//! read (a 409 Conflict means somebody else changed it: re-read and decide again). The
//! decision itself ([`plan`]) is a pure function of the Secret's data and the clock.
//!
//! Besides the `kubernetes.io/tls` keys the Secret holds `ca.key`, so a later renewal can
//! re-issue the serving certificate under the same CA without touching the caBundle. Only
//! the webhook's ServiceAccount may read it (manifests/rbac).

use std::collections::BTreeMap;

use holysheep_certs::{
    CA_CERT_FILE, Ca, CertError, ServingCert, TLS_CERT_FILE, TLS_KEY_FILE, bundle,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use time::OffsetDateTime;

use super::{BootstrapError, BootstrapOptions, FIELD_MANAGER, MAX_ATTEMPTS};

/// Key of the CA private key in the Secret.
pub(super) const CA_KEY: &str = "ca.key";
const SECRET_TYPE: &str = "kubernetes.io/tls";

/// What happened to the shared Secret during a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretAction {
    /// It was absent; this replica generated a CA and a serving certificate and created it.
    Created,
    /// It was absent, but another replica created it first; its certificates are used.
    AdoptedWinner,
    /// It held a valid CA and serving certificate; nothing changed.
    Reused,
    /// The serving certificate was expiring, invalid or for another Service; it was
    /// re-issued under the same CA.
    RenewedServing,
    /// The CA was expiring or unusable; a new CA and serving certificate were generated.
    /// The previous CA stays in the trust bundle until it expires.
    RotatedCa,
}

/// The certificates in force after [`ensure`].
pub(super) struct Material {
    pub(super) action: SecretAction,
    /// `ca.crt`: the signing CA first, then older CAs still trusted.
    pub(super) bundle_pem: String,
    pub(super) ca_not_after: OffsetDateTime,
    pub(super) serving: ServingCert,
}

/// What to do with the Secret as found.
#[derive(Debug)]
pub(super) enum Plan {
    /// Everything is valid for longer than the margin.
    Reuse { ca: Ca, serving: ServingCert },
    /// Keep the CA, issue a new serving certificate.
    RenewServing { ca: Ca, reason: String },
    /// New CA and serving certificate; `previous_bundle` stays trusted until it expires.
    RotateCa {
        previous_bundle: Vec<u8>,
        reason: String,
    },
}

/// Decides what to do with the Secret's `data` at `now`.
pub(super) fn plan(
    data: Option<&BTreeMap<String, ByteString>>,
    opts: &BootstrapOptions,
    now: OffsetDateTime,
) -> Plan {
    let get = |key: &str| {
        data.and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    let previous_bundle = get(CA_CERT_FILE).unwrap_or_default().into_bytes();
    let rotate = |reason: String| Plan::RotateCa {
        previous_bundle: previous_bundle.clone(),
        reason,
    };
    let (Some(ca_crt), Some(ca_key)) = (get(CA_CERT_FILE), get(CA_KEY)) else {
        return rotate(format!("{CA_CERT_FILE} or {CA_KEY} is missing"));
    };
    let ca = match Ca::from_pem(&ca_crt, &ca_key) {
        Ok(ca) => ca,
        Err(e) => return rotate(format!("the CA is unusable: {e}")),
    };
    if ca.needs_renewal(now, opts.renewal_margin) {
        return rotate("the CA expires within the renewal margin".to_owned());
    }
    let serving = match (get(TLS_CERT_FILE), get(TLS_KEY_FILE)) {
        (Some(cert), Some(key)) => ServingCert::from_pem(&cert, &key),
        _ => {
            let reason = format!("{TLS_CERT_FILE} or {TLS_KEY_FILE} is missing");
            return Plan::RenewServing { ca, reason };
        }
    };
    let serving = match serving {
        Ok(serving) => serving,
        Err(e) => {
            let reason = format!("the serving certificate is unusable: {e}");
            return Plan::RenewServing { ca, reason };
        }
    };
    // Chain, validity and the SANs of *this* Service: a Secret copied from another install
    // or left from a renamed Service is renewed, not served.
    if let Err(e) = ca.verify_serving(&serving, &opts.service, &opts.namespace, now) {
        let reason = e.to_string();
        return Plan::RenewServing { ca, reason };
    }
    if serving.needs_renewal(now, opts.renewal_margin) {
        let reason = "the serving certificate expires within the renewal margin".to_owned();
        return Plan::RenewServing { ca, reason };
    }
    Plan::Reuse { ca, serving }
}

/// Gets, creates or renews the Secret until every replica agrees on its content.
pub(super) async fn ensure(
    client: &kube::Client,
    opts: &BootstrapOptions,
    now: OffsetDateTime,
) -> Result<Material, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let what = format!("Secret {}/{}", opts.namespace, opts.secret_name);
    let mut lost_race = false;
    for _ in 0..MAX_ATTEMPTS {
        let found = api
            .get_opt(&opts.secret_name)
            .await
            .map_err(|e| BootstrapError::api(format!("get {what}"), "get on secrets", e))?;
        let Some(existing) = found else {
            let (material, data) = generate(opts, SecretAction::Created, Vec::new(), now)?;
            let secret = new_secret(opts, data);
            match api.create(&post_params(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = %what, "created the webhook TLS Secret");
                    return Ok(material);
                }
                Err(e) if has_code(&e, 409) => {
                    tracing::info!(secret = %what, "another replica created the Secret first; using its certificates");
                    lost_race = true;
                    continue;
                }
                Err(e) => {
                    return Err(BootstrapError::api(
                        format!("create {what}"),
                        "create on secrets",
                        e,
                    ));
                }
            }
        };
        let (material, data) = match plan(existing.data.as_ref(), opts, now) {
            Plan::Reuse { ca, serving } => {
                let action = if lost_race {
                    SecretAction::AdoptedWinner
                } else {
                    SecretAction::Reused
                };
                return Ok(Material {
                    action,
                    bundle_pem: ca.cert_pem().to_owned(),
                    ca_not_after: ca.not_after(),
                    serving,
                });
            }
            Plan::RenewServing { ca, reason } => {
                tracing::info!(secret = %what, %reason, "renewing the serving certificate");
                let serving =
                    ca.issue_serving(&opts.service, &opts.namespace, opts.serving_validity)?;
                // Drop CAs of the bundle that have expired meanwhile.
                let bundle_pem =
                    bundle::rotate(&ca.signing_cert_pem(), ca.cert_pem().as_bytes(), now);
                let data = secret_data(&bundle_pem, ca.key_pem(), &serving);
                let material = Material {
                    action: SecretAction::RenewedServing,
                    bundle_pem,
                    ca_not_after: ca.not_after(),
                    serving,
                };
                (material, data)
            }
            Plan::RotateCa {
                previous_bundle,
                reason,
            } => {
                tracing::warn!(secret = %what, %reason, "generating a new CA");
                generate(opts, SecretAction::RotatedCa, previous_bundle, now)?
            }
        };
        // Keep its metadata (labels, annotations, and resourceVersion for the optimistic
        // lock) and its type (immutable in the API).
        let mut updated = existing;
        updated.data = Some(data);
        match api
            .replace(&opts.secret_name, &post_params(), &updated)
            .await
        {
            Ok(_) => return Ok(material),
            Err(e) if has_code(&e, 409) => {
                tracing::info!(secret = %what, "the Secret changed meanwhile; reading it again");
                continue;
            }
            Err(e) => {
                return Err(BootstrapError::api(
                    format!("update {what}"),
                    "update on secrets",
                    e,
                ));
            }
        }
    }
    Err(BootstrapError::Contention {
        action: format!("get-or-create {what}"),
        attempts: MAX_ATTEMPTS,
    })
}

/// A new CA and serving certificate; `previous_bundle` stays trusted until it expires.
fn generate(
    opts: &BootstrapOptions,
    action: SecretAction,
    previous_bundle: Vec<u8>,
    now: OffsetDateTime,
) -> Result<(Material, BTreeMap<String, ByteString>), CertError> {
    let ca =
        holysheep_certs::generate_ca(holysheep_certs::DEFAULT_CA_COMMON_NAME, opts.ca_validity)?;
    let serving = ca.issue_serving(&opts.service, &opts.namespace, opts.serving_validity)?;
    let bundle_pem = bundle::rotate(ca.cert_pem(), &previous_bundle, now);
    let data = secret_data(&bundle_pem, ca.key_pem(), &serving);
    let material = Material {
        action,
        bundle_pem,
        ca_not_after: ca.not_after(),
        serving,
    };
    Ok((material, data))
}

fn secret_data(
    bundle_pem: &str,
    ca_key_pem: &str,
    serving: &ServingCert,
) -> BTreeMap<String, ByteString> {
    [
        (CA_CERT_FILE, bundle_pem),
        (CA_KEY, ca_key_pem),
        (TLS_CERT_FILE, serving.cert_pem()),
        (TLS_KEY_FILE, serving.key_pem()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect()
}

fn new_secret(opts: &BootstrapOptions, data: BTreeMap<String, ByteString>) -> Secret {
    let labels = [
        ("app.kubernetes.io/name", "holysheep-webhook"),
        ("app.kubernetes.io/component", "webhook-tls"),
        ("app.kubernetes.io/managed-by", "holysheep-webhook"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(opts.secret_name.clone()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// True when `e` is an API Status with HTTP code `code`.
pub(super) fn has_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn plan_decides_from_what_the_secret_holds() {
        let opts = BootstrapOptions::new("ns", "/unused");
        let now = OffsetDateTime::now_utc();
        let ca = holysheep_certs::generate_ca("ca", opts.ca_validity).unwrap();
        let good = ca
            .issue_serving(&opts.service, "ns", opts.serving_validity)
            .unwrap();
        let full = |cert: &str, key: &str| {
            data(&[
                (CA_CERT_FILE, ca.cert_pem()),
                (CA_KEY, ca.key_pem()),
                (TLS_CERT_FILE, cert),
                (TLS_KEY_FILE, key),
            ])
        };

        let reuse = plan(Some(&full(good.cert_pem(), good.key_pem())), &opts, now);
        assert!(matches!(reuse, Plan::Reuse { .. }), "{reuse:?}");

        let empty = plan(None, &opts, now);
        assert!(matches!(empty, Plan::RotateCa { .. }), "{empty:?}");
        let no_key = plan(Some(&data(&[(CA_CERT_FILE, ca.cert_pem())])), &opts, now);
        assert!(
            matches!(&no_key, Plan::RotateCa { previous_bundle, .. } if !previous_bundle.is_empty()),
            "{no_key:?}"
        );
        let garbage = plan(Some(&full("garbage", good.key_pem())), &opts, now);
        assert!(
            matches!(&garbage, Plan::RenewServing { reason, .. } if reason.contains("tls.crt")),
            "{garbage:?}"
        );
        let ca_only = data(&[(CA_CERT_FILE, ca.cert_pem()), (CA_KEY, ca.key_pem())]);
        assert!(matches!(
            plan(Some(&ca_only), &opts, now),
            Plan::RenewServing { .. }
        ));
        // Near the end of the serving certificate's life: renew, keep the CA.
        let late = good.not_after() - time::Duration::days(1);
        let due = plan(Some(&full(good.cert_pem(), good.key_pem())), &opts, late);
        assert!(matches!(due, Plan::RenewServing { .. }), "{due:?}");
        // Near the end of the CA's life: rotate.
        let very_late = ca.not_after() - time::Duration::days(1);
        let rotate = plan(
            Some(&full(good.cert_pem(), good.key_pem())),
            &opts,
            very_late,
        );
        assert!(matches!(rotate, Plan::RotateCa { .. }), "{rotate:?}");
    }
}
