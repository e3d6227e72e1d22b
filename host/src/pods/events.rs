//! The Events a node records on its pods (and on their claims), posted by a task of the node's
//! own so that a reconcile never waits on one: a bounded queue, lanes that keep each object's
//! Events in the order they were recorded, and an Event dropped (and counted) when the queue is
//! full rather than a reconcile held up by it.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Events a node holds at most, queued or being posted; past that a new one is dropped. A node
/// of 200 pods records about two per pod as they start.
pub const CAPACITY: usize = 4096;
/// Events posted at once per node. An object's Events all go through one lane, one after the
/// other, so they reach the apiserver in the order they were recorded, and the `Recorder` folds a
/// repeated Warning into the Event it posted before instead of racing it.
const LANES: usize = 4;
/// The longest note an Event keeps (bytes; a longer one is cut at a character boundary and ends
/// with `…`): a provider's message or an error chain can be any length.
const MAX_NOTE: usize = 1000;
/// How long the Events still queued when the node stops are posted.
const FLUSH: Duration = Duration::from_secs(5);

/// One Event waiting to be posted.
struct Queued {
    regarding: ObjectReference,
    warning: bool,
    reason: String,
    action: String,
    note: String,
    /// When it was recorded: the time of a Normal Event (the `Recorder` stamps a Warning when it
    /// posts it, and folds repeats by that time).
    at: Timestamp,
    /// Its place in the queue, given back once it was posted.
    _room: OwnedSemaphorePermit,
}

/// The Event queue of one node and what posts it ([`Events::run`]).
pub struct Events {
    node: String,
    client: Client,
    /// Warnings go through kube-runtime's `Recorder`, which folds a repeated one (a retried
    /// failure) into one Event with a series count; it caches every Event it posts for six
    /// minutes to do so. Normal Events happen once per pod and transition (created, deleted,
    /// token renewed), so they are created directly: after a 1,000-pod burst the cache held
    /// 7 MiB of Events nothing would ever fold into.
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// One permit per Event queued or being posted.
    room: Arc<Semaphore>,
    lanes: Vec<mpsc::UnboundedSender<Queued>>,
    /// The lanes' receiving ends, until [`Events::run`] takes them.
    queues: Mutex<Option<Vec<mpsc::UnboundedReceiver<Queued>>>>,
    /// Told after each Event was posted (or failed to be).
    posted: Notify,
}

impl Events {
    /// A queue for `node`, posting with `client` (the node's identity, on its events lane: see
    /// `node::identity::NodeClients::events`).
    pub fn new(client: Client, node: String, metrics: Arc<Metrics>) -> Self {
        let recorder =
            Recorder::new(client.clone(), Reporter { controller: "vkhost".into(), instance: Some(node.clone()) });
        let (lanes, queues) = (0..LANES).map(|_| mpsc::unbounded_channel()).unzip();
        Self {
            node,
            client,
            recorder,
            metrics,
            room: Arc::new(Semaphore::new(CAPACITY)),
            lanes,
            queues: Mutex::new(Some(queues)),
            posted: Notify::new(),
        }
    }

    /// Queues an Event on `regarding`, stamped now, its note cut to [`MAX_NOTE`] bytes; when the
    /// queue is full it is dropped, counted
    /// (`vkhost_events_dropped_total`) and logged at debug level. Never waits.
    pub fn record(&self, regarding: ObjectReference, warning: bool, reason: &str, action: &str, note: String) {
        let Ok(room) = self.room.clone().try_acquire_owned() else {
            self.metrics.event_dropped(&self.node);
            let object = format!("{}/{}", regarding.namespace.unwrap_or_default(), regarding.name.unwrap_or_default());
            tracing::debug!(node = %self.node, %object, reason, "event queue full: event dropped");
            return;
        };
        let lane = lane_of(&regarding);
        let queued = Queued {
            regarding,
            warning,
            reason: reason.into(),
            action: action.into(),
            note: truncate(note, MAX_NOTE),
            at: Timestamp::now(),
            _room: room,
        };
        // Fails only once the node stopped posting: the Event goes with it.
        let _ = self.lanes[lane].send(queued);
    }

    /// Posts the queued Events until `stop`, then what is still queued for up to [`FLUSH`]. Runs
    /// once per queue (a second call returns at once).
    pub async fn run(&self, stop: CancellationToken) {
        let Some(queues) = self.queues.lock().unwrap().take() else {
            tracing::warn!(node = %self.node, "the node's events are posted already");
            return;
        };
        futures::future::join_all(queues.into_iter().map(|queue| self.lane(queue, &stop))).await;
    }

    /// Resolves once every Event queued so far was posted (or failed to be): while
    /// [`Events::run`] runs.
    pub async fn idle(&self) {
        loop {
            let posted = self.posted.notified();
            tokio::pin!(posted);
            posted.as_mut().enable();
            if self.room.available_permits() == CAPACITY {
                return;
            }
            posted.await;
        }
    }

    async fn lane(&self, mut queue: mpsc::UnboundedReceiver<Queued>, stop: &CancellationToken) {
        loop {
            let next = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                next = queue.recv() => next,
            };
            let Some(event) = next else { return };
            self.post(event).await;
        }
        let deadline = tokio::time::Instant::now() + FLUSH;
        while let Ok(event) = queue.try_recv() {
            if tokio::time::timeout_at(deadline, self.post(event)).await.is_err() {
                tracing::debug!(node = %self.node, "node stopped: events still queued are dropped");
                return;
            }
        }
    }

    async fn post(&self, event: Queued) {
        let result = if event.warning {
            let ev = Event {
                type_: EventType::Warning,
                reason: event.reason.clone(),
                note: Some(event.note.clone()),
                action: event.action.clone(),
                secondary: None,
            };
            self.recorder.publish(&ev, &event.regarding).await
        } else {
            self.normal(&event).await
        };
        if let Err(e) = result {
            let object = format!(
                "{}/{}",
                event.regarding.namespace.as_deref().unwrap_or_default(),
                event.regarding.name.as_deref().unwrap_or_default()
            );
            tracing::debug!(node = %self.node, %object, reason = %event.reason, error = %e, "event not recorded");
        }
        drop(event);
        self.posted.notify_waiters();
    }

    /// An events.k8s.io/v1 Event of type Normal, as the `Recorder` would make it, without caching.
    async fn normal(&self, event: &Queued) -> Result<(), kube::Error> {
        let ns = event.regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let name = event.regarding.name.as_deref().unwrap_or("vkhost");
        let posted = K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(ns.clone()),
                name: Some(format!("{name}.{:x}", event.at.as_nanosecond())),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: Some(event.note.clone()),
            type_: Some("Normal".into()),
            event_time: Some(MicroTime(event.at)),
            regarding: Some(event.regarding.clone()),
            reporting_controller: Some("vkhost".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &posted).await.map(|_| ())
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    s.truncate(s.floor_char_boundary(max));
    s.push('…');
    s
}

/// The lane of an object's Events: by its UID (by namespace and name without one).
fn lane_of(regarding: &ObjectReference) -> usize {
    let mut hasher = DefaultHasher::new();
    match &regarding.uid {
        Some(uid) => uid.hash(&mut hasher),
        None => (&regarding.namespace, &regarding.name).hash(&mut hasher),
    }
    (hasher.finish() % LANES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::fixtures::ApiServer;

    fn regarding(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    /// The object and reason of each Event posted, in the order the apiserver answered them.
    fn posted(api: &ApiServer) -> Vec<(String, String)> {
        api.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
            .filter_map(|r| {
                let body = r.body?;
                Some((body["regarding"]["name"].as_str()?.to_owned(), body["reason"].as_str()?.to_owned()))
            })
            .collect()
    }

    fn queue(api: &Arc<ApiServer>) -> Arc<Events> {
        Arc::new(Events::new(api.client("node"), "vk-1".into(), Arc::new(Metrics::new())))
    }

    /// A queue for `api` with its posting task running until the token is cancelled.
    fn posting(api: &Arc<ApiServer>) -> (Arc<Events>, CancellationToken, tokio::task::JoinHandle<()>) {
        let events = queue(api);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (events, stop) = (events.clone(), stop.clone());
            async move { events.run(stop).await }
        });
        (events, stop, task)
    }

    #[tokio::test]
    async fn a_long_note_is_cut_at_a_character_boundary_for_pods_and_claims_alike() {
        let api = ApiServer::new();
        let (events, stop, posting) = posting(&api);
        // 999 ASCII bytes then two-byte characters: byte 1,000 falls inside one.
        let long = format!("{}{}", "a".repeat(999), "é".repeat(600));
        events.record(regarding("web"), false, "Created", "Created", long.clone());
        let mut claim = regarding("data");
        claim.kind = Some("PersistentVolumeClaim".into());
        events.record(claim, true, "VolumeResizeFailed", "Expand", long);
        events.idle().await;
        let notes: Vec<String> = api
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
            .filter_map(|r| Some(r.body?["note"].as_str()?.to_owned()))
            .collect();
        assert_eq!(notes.len(), 2, "{notes:?}");
        for note in notes {
            assert_eq!(note, format!("{}…", "a".repeat(999)));
        }
        stop.cancel();
        posting.await.unwrap();
    }

    #[tokio::test]
    async fn each_objects_events_are_posted_in_the_order_they_were_recorded() {
        let api = ApiServer::new();
        let (events, stop, posting) = posting(&api);
        let pods: Vec<String> = (0..16).map(|i| format!("pod-{i}")).collect();
        let steps: Vec<String> = (0..5).map(|i| format!("Step{i}")).collect();
        for (i, step) in steps.iter().enumerate() {
            for pod in &pods {
                // Warnings (through the Recorder) and Normal Events (posted directly) alike.
                events.record(regarding(pod), i % 2 == 1, step, "Test", format!("{pod}: {step}"));
            }
        }

        events.idle().await;

        let posted = posted(&api);
        assert_eq!(posted.len(), pods.len() * steps.len(), "{posted:?}");
        for pod in &pods {
            let of_pod: Vec<&String> = posted.iter().filter(|(p, _)| p == pod).map(|(_, reason)| reason).collect();
            assert_eq!(of_pod, steps.iter().collect::<Vec<_>>(), "{pod}");
        }
        stop.cancel();
        posting.await.unwrap();
    }

    #[tokio::test]
    async fn a_stopped_queue_posts_what_it_holds_then_ends_and_takes_no_more() {
        let api = ApiServer::new();
        let events = queue(&api);
        for reason in ["First", "Second", "Third"] {
            events.record(regarding("web"), false, reason, "Test", String::new());
        }
        let stop = CancellationToken::new();
        stop.cancel();

        events.run(stop.clone()).await;

        let reasons: Vec<String> = posted(&api).into_iter().map(|(_, reason)| reason).collect();
        assert_eq!(reasons, ["First", "Second", "Third"]);
        // Recording after the end is no error, and posts nothing; nor does a second run.
        events.record(regarding("web"), true, "Late", "Test", String::new());
        events.run(stop).await;
        assert_eq!(posted(&api).len(), 3);
        assert_eq!(events.room.available_permits(), CAPACITY, "the late one gave its place back");
    }
}
