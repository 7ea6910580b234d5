//! The reasons that depend on the webhook Deployment's Available condition, on a
//! snapshot built in memory.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::*;

fn at(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

/// Webhook installed a day ago; a labelled namespace `shop` with one annotated pod
/// created 30 minutes ago; `available` is the Deployment's Available condition.
fn snapshot(now: OffsetDateTime, available: Option<Value>) -> Snapshot {
    let day_ago = at(now - time::Duration::days(1));
    let mut deployment = json!({
        "metadata": {"name": "holysheep-webhook", "namespace": "holysheep-system",
                     "creationTimestamp": day_ago},
        "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [
            {"name": "webhook", "image": "w", "args": ["serve", "--self-signed"]}]}}},
        "status": {"readyReplicas": 0}
    });
    if let Some(condition) = available {
        deployment["status"]["conditions"] = json!([condition]);
    }
    Snapshot {
        namespaces: vec![
            serde_json::from_value(json!({"metadata": {"name": "shop",
                "labels": {"holysheep-injection": "enabled"}}}))
            .unwrap(),
        ],
        pods: vec![
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "shop",
                             "creationTimestamp": at(now - time::Duration::minutes(30)),
                             "annotations": {"holysheep/inject": "true"}},
                "spec": {"containers": [{"name": "app"}]}
            }))
            .unwrap(),
        ],
        webhook_config: Some(
            serde_json::from_value(json!({"metadata": {"name": "holysheep-sidecar-injector",
                "creationTimestamp": day_ago}}))
            .unwrap(),
        ),
        webhook_deployment: Some(serde_json::from_value(deployment).unwrap()),
        ..Snapshot::default()
    }
}

fn reason(snap: &Snapshot, now: OffsetDateTime) -> NotInjected {
    let settings = Err("not needed here".to_owned());
    let report = analyze(snap, &CheckOptions::new(), settings, now);
    assert!(report.needs_action);
    report.not_injected.into_iter().next().unwrap()
}

#[test]
fn a_webhook_down_now_is_the_reason_and_the_fix_is_to_bring_it_back() {
    let now = OffsetDateTime::now_utc();
    let since = at(now - time::Duration::hours(1));
    let down = json!({"type": "Available", "status": "False", "lastTransitionTime": since});
    let finding = reason(&snapshot(now, Some(down)), now);
    assert_eq!(finding.reason, "created-while-webhook-unavailable");
    assert!(
        finding
            .evidence
            .as_deref()
            .unwrap()
            .contains("Available=False since"),
        "{finding:?}"
    );
    assert!(
        finding.fix.starts_with("bring the webhook back"),
        "{}",
        finding.fix
    );
}

#[test]
fn without_evidence_the_reason_is_unknown() {
    let now = OffsetDateTime::now_utc();
    let finding = reason(&snapshot(now, None), now);
    assert_eq!(finding.reason, "unknown");
    assert!(finding.evidence.is_none());
    let up = json!({"type": "Available", "status": "True",
                    "lastTransitionTime": at(now - time::Duration::hours(2))});
    assert_eq!(reason(&snapshot(now, Some(up)), now).reason, "unknown");
}
