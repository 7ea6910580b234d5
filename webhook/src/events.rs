//! Warning Events for refused pods: when the webhook refuses an opted-in pod, the pod is
//! never created, so the Event goes on its controller (the ReplicaSet, Job, StatefulSet
//! or DaemonSet named by the `ownerReferences` entry with `controller: true`), where
//! `kubectl describe` and `kubectl get events` show why no pod appears.
//!
//! Posting never delays or changes an admission answer: the server hands the Event to a
//! small queue and moves on; one background task posts them (events.k8s.io/v1) with a
//! timeout. A full queue drops the Event and counts it; the same refusal of the same owner
//! is posted once per [`REPEAT_WINDOW`], since a controller retries its pod creations.
//!
//! What it does not do: decide refusals (`admission`), or post anything outside `serve`
//! with a Kubernetes client (offline `inject` and the tests without a cluster have no sink).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;

use crate::metrics::{EventResult, Metrics};
use crate::mutation::OwnerRef;

/// `reason` of the Event.
pub const REASON: &str = "InjectionRefused";
/// `action` of the Event.
pub const ACTION: &str = "Inject";
/// `reportingController` of the Event, also the field manager.
pub const REPORTING_CONTROLLER: &str = "holysheep-webhook";
/// Events waiting to be posted at most; more are dropped and counted.
pub const QUEUE: usize = 64;
/// How long one post may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// The same refusal of the same owner is posted once per window.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Refusals remembered for [`REPEAT_WINDOW`] at most (older ones are forgotten first).
const MAX_REMEMBERED: usize = 512;
/// Kubernetes caps `note` at 1 kB.
const MAX_NOTE_BYTES: usize = 1024;

/// One refusal to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalEvent {
    /// Namespace of the pod (and of its owner).
    pub namespace: String,
    /// The pod's controller.
    pub regarding: OwnerRef,
    /// The admission message, as the user saw it.
    pub note: String,
}

/// The Event object for `refusal`, reported by `instance` (the webhook's pod) at `now`.
pub fn to_event(refusal: &RefusalEvent, instance: &str, now: MicroTime) -> Event {
    let owner = &refusal.regarding;
    // The apiserver completes the name; the owner's name keeps it readable. Cut, it must
    // still end in a letter or digit to stay a valid name.
    let prefix: String = owner.name.chars().take(200).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    let prefix = if prefix.is_empty() {
        "holysheep"
    } else {
        prefix
    };
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}.")),
            namespace: Some(refusal.namespace.clone()),
            ..ObjectMeta::default()
        },
        event_time: Some(now),
        type_: Some("Warning".to_owned()),
        reason: Some(REASON.to_owned()),
        action: Some(ACTION.to_owned()),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        reporting_instance: Some(instance.chars().take(128).collect()),
        note: Some(cut(&refusal.note, MAX_NOTE_BYTES)),
        regarding: Some(ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: Some(refusal.namespace.clone()),
            uid: Some(owner.uid.clone()).filter(|uid| !uid.is_empty()),
            ..ObjectReference::default()
        }),
        ..Event::default()
    }
}

/// Where the server hands refusals; cloning shares the queue.
#[derive(Clone, Debug)]
pub struct EventSink {
    queue: mpsc::Sender<RefusalEvent>,
    metrics: Metrics,
}

impl EventSink {
    /// Starts the posting task on the current runtime; it ends when every sink is gone.
    /// `instance` names this replica in the Events (its pod name).
    pub fn spawn(client: kube::Client, instance: String, metrics: Metrics) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(post_loop(receiver, client, instance, metrics.clone()));
        Self { queue, metrics }
    }

    /// Queues `refusal` without waiting; when the queue is full it is dropped and counted.
    pub fn post(&self, refusal: RefusalEvent) {
        if self.queue.try_send(refusal).is_err() {
            self.metrics.observe_event(EventResult::Dropped);
        }
    }
}

async fn post_loop(
    mut receiver: mpsc::Receiver<RefusalEvent>,
    client: kube::Client,
    instance: String,
    metrics: Metrics,
) {
    let mut recent = Recent::default();
    let params = PostParams {
        field_manager: Some(REPORTING_CONTROLLER.to_owned()),
        ..PostParams::default()
    };
    while let Some(refusal) = receiver.recv().await {
        if recent.seen(&refusal, Instant::now()) {
            metrics.observe_event(EventResult::Repeated);
            continue;
        }
        let event = to_event(
            &refusal,
            &instance,
            MicroTime(k8s_openapi::jiff::Timestamp::now()),
        );
        let api: Api<Event> = Api::namespaced(client.clone(), &refusal.namespace);
        let result = match tokio::time::timeout(POST_TIMEOUT, api.create(&params, &event)).await {
            Ok(Ok(_)) => EventResult::Posted,
            Ok(Err(error)) => {
                tracing::warn!(
                    namespace = %refusal.namespace,
                    kind = %refusal.regarding.kind,
                    name = %refusal.regarding.name,
                    error = %error,
                    "failed to post the refusal Event"
                );
                EventResult::Failed
            }
            Err(_) => {
                tracing::warn!(
                    namespace = %refusal.namespace,
                    timeout_ms = u64::try_from(POST_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
                    "posting the refusal Event timed out"
                );
                EventResult::Failed
            }
        };
        metrics.observe_event(result);
    }
}

/// Refusals posted lately, by owner and message.
#[derive(Default)]
struct Recent(HashMap<(String, String, String), Instant>);

impl Recent {
    /// Whether the same refusal was posted within [`REPEAT_WINDOW`]; remembers it if not.
    fn seen(&mut self, refusal: &RefusalEvent, now: Instant) -> bool {
        let owner = &refusal.regarding;
        let key = (
            refusal.namespace.clone(),
            format!("{}/{}/{}", owner.kind, owner.name, owner.uid),
            refusal.note.clone(),
        );
        if self
            .0
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REPEAT_WINDOW)
        {
            return true;
        }
        if self.0.len() >= MAX_REMEMBERED {
            self.0
                .retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
            if self.0.len() >= MAX_REMEMBERED {
                self.0.clear();
            }
        }
        self.0.insert(key, now);
        false
    }
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(note: &str) -> RefusalEvent {
        RefusalEvent {
            namespace: "shop".into(),
            regarding: OwnerRef {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "web-5d4f".into(),
                uid: "u-1".into(),
            },
            note: note.into(),
        }
    }

    #[test]
    fn event_regards_the_owner_and_says_why() {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let event = to_event(&refusal("refused: hostNetwork"), "webhook-0", now.clone());
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["type"], "Warning");
        assert_eq!(value["reason"], REASON);
        assert_eq!(value["action"], ACTION);
        assert_eq!(value["reportingController"], REPORTING_CONTROLLER);
        assert_eq!(value["reportingInstance"], "webhook-0");
        assert_eq!(value["note"], "refused: hostNetwork");
        assert_eq!(value["metadata"]["generateName"], "web-5d4f.");
        assert_eq!(
            value["regarding"],
            serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-5d4f", "namespace": "shop", "uid": "u-1"})
        );
        assert_eq!(event.event_time, Some(now.clone()));
        let cut_name = RefusalEvent {
            regarding: OwnerRef {
                name: format!("{}-x", "a".repeat(199)),
                ..refusal("").regarding
            },
            ..refusal("")
        };
        let name = to_event(&cut_name, "w", now.clone()).metadata.generate_name;
        assert_eq!(name, Some(format!("{}.", "a".repeat(199))));
        let long = to_event(
            &refusal(&"é".repeat(2000)),
            "w",
            MicroTime(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        );
        assert!(long.note.unwrap().len() <= MAX_NOTE_BYTES);
    }

    #[test]
    fn the_same_refusal_is_posted_once_per_window() {
        let mut recent = Recent::default();
        let start = Instant::now();
        assert!(!recent.seen(&refusal("a"), start));
        assert!(recent.seen(&refusal("a"), start + Duration::from_secs(1)));
        assert!(!recent.seen(&refusal("b"), start + Duration::from_secs(1)));
        assert!(!recent.seen(&refusal("a"), start + REPEAT_WINDOW));
        for i in 0..(MAX_REMEMBERED * 2) {
            recent.seen(&refusal(&i.to_string()), start + REPEAT_WINDOW);
        }
        assert!(recent.0.len() <= MAX_REMEMBERED);
    }
}
