//! Where a pod's deletion goes on this node: from the node's first sight of the pod being deleted
//! (its deletionTimestamp) to the node's final DELETE of the pod object, the time of each stage
//! between — waiting for a worker, the provider's delete and its polls, waiting for a requeue, the
//! DELETE itself. Each deleted pod is one histogram sample per stage
//! (`vkhost_pod_delete_seconds{stage}`) and one debug line (target `vkhost::pods::teardown`), which
//! the burst benchmark reads for its teardown breakdown. The twin of `startup.rs` for the other
//! end of a pod's life.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cached::PodView;
use super::timeline::{self, Timelines, unix_ms_now};
use crate::metrics::Metrics;

/// A stage of a pod's deletion; the time between two marks is the stage of the later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// First sight of the deletion → the first reconcile of it starts.
    Queue,
    /// The end of a reconcile → the next: the provider's `poll-after`, the polls' backoff.
    Requeue,
    /// The provider's `delete`, its `status` polls and `finalize`: the reconcile up to the DELETE.
    Provider,
    /// The DELETE of the pod object (grace 0).
    ApiDelete,
}

impl timeline::Stage for Stage {
    const ALL: &'static [Self] = &[Stage::Queue, Stage::Requeue, Stage::Provider, Stage::ApiDelete];
    const QUEUE: Self = Stage::Queue;
    const REQUEUE: Self = Stage::Requeue;

    fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Requeue => "requeue",
            Stage::Provider => "provider",
            Stage::ApiDelete => "api_delete",
        }
    }
}

/// How long a pod whose final DELETE the apiserver took is remembered: its last watch events
/// come well within it, and a pod object that outlives it (a finalizer another controller keeps)
/// is looked at again as any other.
const DELETED_MEMORY: Duration = Duration::from_secs(60);

/// The pods whose final DELETE this node made lately, by UID. That DELETE (grace 0 on a pod
/// already deleting) first updates the pod, and the watch shows the update before the pod is gone:
/// no reason to delete it again, nor a new deletion to time.
#[derive(Default)]
pub struct DeletedLately(Mutex<HashMap<String, Instant>>);

impl DeletedLately {
    pub fn contains(&self, uid: &str) -> bool {
        self.0.lock().unwrap().get(uid).is_some_and(|at| at.elapsed() < DELETED_MEMORY)
    }

    pub fn insert(&self, uid: &str) {
        let mut deleted = self.0.lock().unwrap();
        deleted.retain(|_, at| at.elapsed() < DELETED_MEMORY);
        deleted.insert(uid.to_owned(), Instant::now());
    }
}

/// The deletions in progress on one node, by pod UID.
#[derive(Default)]
pub struct Teardowns {
    pods: Timelines<Stage, ()>,
}

impl Teardowns {
    /// A pod event from the node's watch: a pod being deleted is followed from its first sight,
    /// unless the node deleted it already (`deleted`).
    pub fn seen(&self, pod: &impl PodView, deleted: &DeletedLately) {
        if pod.meta().deletion_timestamp.is_none() {
            return;
        }
        let Some(uid) = pod.meta().uid.as_deref() else { return };
        if deleted.contains(uid) {
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

    /// `stage` of the pod's deletion ended now.
    pub fn lap(&self, pod: &impl PodView, stage: Stage) {
        if let Some(uid) = pod.meta().uid.as_deref() {
            self.pods.lap(uid, stage, |_| ());
        }
    }

    /// The node's DELETE of the pod object was taken: its deletion is over and reported.
    pub fn deleted(&self, pod: &impl PodView, node: &str, metrics: &Metrics) {
        let Some(uid) = pod.meta().uid.as_deref() else { return };
        let Some(trace) = self.pods.finish(uid, Stage::ApiDelete) else { return };
        let total = trace.total();
        metrics.observe_delete(None, total);
        for &stage in <Stage as timeline::Stage>::ALL {
            metrics.observe_delete(Some(timeline::Stage::label(stage)), trace.took(stage));
        }
        let ms = |s: Stage| trace.took(s).as_secs_f64() * 1000.0;
        tracing::debug!(
            node,
            pod = %format!("{}/{}", pod.meta().namespace.as_deref().unwrap_or_default(), pod.meta().name.as_deref().unwrap_or_default()),
            uid,
            total_ms = total.as_secs_f64() * 1000.0,
            queue_ms = ms(Stage::Queue),
            requeue_ms = ms(Stage::Requeue),
            provider_ms = ms(Stage::Provider),
            api_delete_ms = ms(Stage::ApiDelete),
            reconciles = trace.reconciles,
            done_unix_ms = unix_ms_now(),
            "pod deleted"
        );
    }

    /// How many deletions are followed now.
    pub fn followed(&self) -> usize {
        self.pods.followed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn pod(uid: &str, deleting: bool) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": uid},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        p
    }

    #[test]
    fn a_deletion_is_followed_from_its_first_sight_and_reported_once_at_the_delete() {
        let metrics = Metrics::new();
        let teardowns = Teardowns::default();
        let deleted = DeletedLately::default();
        // A pod not being deleted is no deletion to follow, even when reconciled.
        let running = pod("u1", false);
        teardowns.seen(&running, &deleted);
        teardowns.reconciling(&running);
        assert_eq!(teardowns.followed(), 0);
        let deleting = pod("u1", true);
        teardowns.seen(&deleting, &deleted);
        teardowns.seen(&deleting, &deleted);
        assert_eq!(teardowns.followed(), 1);
        teardowns.reconciling(&deleting);
        teardowns.lap(&deleting, Stage::Provider);
        teardowns.reconciling(&deleting);
        teardowns.lap(&deleting, Stage::Provider);
        // As the controller does it: remembered as deleted, then reported.
        deleted.insert("u1");
        teardowns.deleted(&deleting, "vk-1", &metrics);
        assert_eq!(teardowns.followed(), 0);
        let text = metrics.render();
        assert!(text.contains(r#"vkhost_pod_delete_seconds_count{stage="total"} 1"#), "{text}");
        assert!(text.contains(r#"vkhost_pod_delete_seconds_count{stage="requeue"} 1"#), "{text}");
        // The update the DELETE itself makes, and a second DELETE, report nothing more.
        teardowns.seen(&deleting, &deleted);
        assert_eq!(teardowns.followed(), 0, "the node's own DELETE's update is no new deletion");
        teardowns.deleted(&deleting, "vk-1", &metrics);
        teardowns.deleted(&pod("u2", true), "vk-1", &metrics);
        assert!(metrics.render().contains(r#"vkhost_pod_delete_seconds_count{stage="total"} 1"#));
    }
}
