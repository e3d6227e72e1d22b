//! Where a pod's start goes on this node: from the node's first sight of the pod (bound to it) to
//! the status write that shows it Ready, the time of each stage of the reconciles between —
//! waiting for a worker, reading what it references, the provider's `create`, the host's writes,
//! waiting for a requeue (the events recorded after the status write are not part of it). Each started pod is one histogram sample per stage
//! (`vkhost_pod_start_seconds{stage}`) and one debug line (target `vkhost::pods::startup`), which
//! the burst benchmark reads for its per-stage breakdown.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;

use super::cached::PodView;
use super::timeline::{self, Timelines, unix_ms_now};
use crate::metrics::Metrics;

/// A stage of a pod's start; the time between two marks is the stage of the later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// First sight → the first reconcile starts: the controller's queue and its workers.
    Queue,
    /// The end of a step → the next reconcile or status sync: requeue delays, the instance
    /// starting in the backend.
    Requeue,
    /// Reading the objects the pod references (ConfigMaps, Secrets, Services, tokens).
    Fetch,
    /// The provider's `create`.
    Create,
    /// The provider's `status` (a poll of a starting instance).
    ProviderStatus,
    /// The status write (with the pod's annotations, after a create: the instance id, what it
    /// was given, the provider's own).
    StatusWrite,
}

impl timeline::Stage for Stage {
    const ALL: &'static [Self] =
        &[Stage::Queue, Stage::Requeue, Stage::Fetch, Stage::Create, Stage::ProviderStatus, Stage::StatusWrite];
    const QUEUE: Self = Stage::Queue;
    const REQUEUE: Self = Stage::Requeue;

    fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Requeue => "requeue",
            Stage::Fetch => "fetch",
            Stage::Create => "create",
            Stage::ProviderStatus => "provider_status",
            Stage::StatusWrite => "status_write",
        }
    }
}

/// How long after its first sight a starting pod keeps the status sync quick.
const QUICK_START: Duration = Duration::from_secs(60);

/// The starts in progress on one node, by pod UID; beside each start's times, whether the
/// provider made its instance (it is starting).
#[derive(Default)]
pub struct Startups {
    pods: Timelines<Stage, bool>,
    /// Told when an instance is made and not Ready at once.
    starting: tokio::sync::Notify,
}

impl Startups {
    /// A pod event from the node's watch: a pod not Ready yet, not finished and not being deleted
    /// is followed from its first sight; one being deleted or finished is let go.
    pub fn seen(&self, pod: &impl PodView) {
        let Some(uid) = pod.meta().uid.as_deref() else { return };
        if pod.meta().deletion_timestamp.is_some() || pod.finished() {
            self.pods.forget(uid);
            return;
        }
        // A pod with an instance (annotated) started before, or is being followed already: a
        // later event of it (its annotations written, say) is no new start.
        if self.pods.contains(uid)
            || pod.meta().annotations.as_ref().is_some_and(|a| a.contains_key(super::INSTANCE_ANNOTATION))
            || is_ready(pod.status_value().as_ref())
        {
            return;
        }
        self.pods.follow(uid);
    }

    /// A reconcile of the pod begins: the wait before it is `queue` for the first, `requeue` after.
    pub fn reconciling(&self, pod: &impl PodView) {
        if let Some(uid) = pod.meta().uid.as_deref() {
            self.pods.reconciling(uid);
        }
    }

    /// `stage` of the pod's start ended now.
    pub fn lap(&self, pod: &impl PodView, stage: Stage) {
        if let Some(uid) = pod.meta().uid.as_deref() {
            self.pods.lap(uid, stage, |t| t.extra |= stage == Stage::Create);
        }
    }

    /// Whether an instance of a pod not yet Ready is starting, made in the last [`QUICK_START`]
    /// (one that takes longer, say an image that does not pull, is left to the usual polls).
    pub fn instances_starting(&self) -> bool {
        self.pods.any(|t| t.extra && t.seen.elapsed() < QUICK_START)
    }

    /// Resolves when an instance was made whose pod is not Ready yet (see [`Startups::status_written`]).
    pub async fn instance_started(&self) {
        self.starting.notified().await
    }

    /// The pod's status was written as `status`: when it shows the pod Ready, its start is over
    /// and reported.
    pub fn status_written(&self, pod: &Pod, status: &Value, node: &str, metrics: &Metrics) {
        let Some(uid) = pod.metadata.uid.as_deref() else { return };
        if !is_ready(Some(status)) {
            if self.pods.lap(uid, Stage::StatusWrite, |t| t.extra) == Some(true) {
                self.starting.notify_one();
            }
            return;
        }
        let Some(trace) = self.pods.finish(uid, Stage::StatusWrite) else { return };
        let total = trace.total();
        metrics.observe_start(None, total);
        for &stage in <Stage as timeline::Stage>::ALL {
            metrics.observe_start(Some(timeline::Stage::label(stage)), trace.took(stage));
        }
        let ms = |s: Stage| trace.took(s).as_secs_f64() * 1000.0;
        // The wall clock of the write, so a reader of the line can place the node's first sight
        // and its write against what another watcher of the pod saw (the burst benchmark does).
        let written_unix_ms = unix_ms_now();
        tracing::debug!(
            node,
            pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
            uid,
            total_ms = total.as_secs_f64() * 1000.0,
            queue_ms = ms(Stage::Queue),
            requeue_ms = ms(Stage::Requeue),
            fetch_ms = ms(Stage::Fetch),
            create_ms = ms(Stage::Create),
            provider_status_ms = ms(Stage::ProviderStatus),
            status_write_ms = ms(Stage::StatusWrite),
            reconciles = trace.reconciles,
            written_unix_ms,
            "pod started"
        );
    }

    /// How many starts are followed now.
    pub fn followed(&self) -> usize {
        self.pods.followed()
    }
}

/// Whether a pod status (as JSON) shows the pod Running with Ready=True.
fn is_ready(status: Option<&Value>) -> bool {
    let Some(status) = status else { return false };
    status.get("phase").and_then(Value::as_str) == Some("Running")
        && status.get("conditions").and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": uid},
            "status": status,
        }))
        .unwrap()
    }

    fn ready() -> Value {
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
    }

    #[test]
    fn a_start_is_reported_once_the_status_written_shows_the_pod_ready() {
        let metrics = Metrics::new();
        let starts = Startups::default();
        let p = pod("u1", json!({"phase": "Pending"}));
        starts.seen(&p);
        starts.seen(&p);
        starts.reconciling(&p);
        assert!(!starts.instances_starting());
        starts.lap(&p, Stage::Create);
        starts.status_written(&p, &json!({"phase": "Pending"}), "vk-1", &metrics);
        assert_eq!(starts.followed(), 1, "not Ready yet: still followed");
        assert!(starts.instances_starting());
        // The status sync was told (the permit is kept for the next wait).
        futures::FutureExt::now_or_never(starts.instance_started()).expect("told an instance started");
        starts.reconciling(&p);
        starts.status_written(&p, &ready(), "vk-1", &metrics);
        assert_eq!(starts.followed(), 0);
        assert!(!starts.instances_starting());
        let text = metrics.render();
        assert!(text.contains(r#"vkhost_pod_start_seconds_count{stage="total"} 1"#), "{text}");
        assert!(text.contains(r#"vkhost_pod_start_seconds_count{stage="requeue"} 1"#), "{text}");
        // A second Ready write (the status sync, say) reports nothing more.
        starts.status_written(&p, &ready(), "vk-1", &metrics);
        assert!(metrics.render().contains(r#"vkhost_pod_start_seconds_count{stage="total"} 1"#));
    }

    #[test]
    fn pods_already_ready_started_being_deleted_or_finished_are_not_followed() {
        let starts = Startups::default();
        starts.seen(&pod("ready", ready()));
        let mut annotated = pod("annotated", json!({"phase": "Pending"}));
        annotated.metadata.annotations = Some([(super::super::INSTANCE_ANNOTATION.to_string(), "i-1".into())].into());
        starts.seen(&annotated);
        starts.seen(&pod("failed", json!({"phase": "Failed"})));
        assert_eq!(starts.followed(), 0);
        let pending = pod("u2", json!({"phase": "Pending"}));
        starts.seen(&pending);
        assert_eq!(starts.followed(), 1);
        let mut deleting = pending.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
        starts.seen(&deleting);
        assert_eq!(starts.followed(), 0);
    }
}
