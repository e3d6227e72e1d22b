//! The reconcile paths against a mock apiserver and the real example plugin: create, retry,
//! recover, delete and the orphan sweep, each in milliseconds.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::plugin::Export;
use crate::pods::fixtures::{self, HOST_IP, TestNode, bound_pod, pod_path};

/// `pod` as the controller's cache hands it to reconcile.
fn cached(pod: Pod) -> Arc<CachedPod> {
    Arc::new(CachedPod::from(pod))
}

fn status_path(name: &str) -> String {
    format!("{}/status", pod_path(name))
}

async fn listed_ids(ctx: &NodeContext) -> Vec<String> {
    ctx.plugin.list(&ctx.call).await.unwrap().into_iter().map(|i| i.instance_id).collect()
}

fn calls(ctx: &NodeContext, export: Export) -> u64 {
    ctx.plugin.stats().calls(export, "ok")
}

/// The reasons of the Events posted once the node's event queue is empty.
async fn posted_events(api: &fixtures::ApiServer, ctx: &NodeContext) -> Vec<String> {
    ctx.events.idle().await;
    api.event_reasons()
}

/// Every request that writes a pod (its status, or the pod itself).
fn pod_writes(api: &fixtures::ApiServer) -> Vec<fixtures::Recorded> {
    api.requests().into_iter().filter(|r| r.method == "PATCH" && r.path.contains("/pods/")).collect()
}

/// `pod` through one reconcile, and its instance made: the pod as the apiserver now holds it.
async fn created(api: &fixtures::ApiServer, ctx: &Arc<NodeContext>, name: &str, uid: &str) -> Pod {
    let pod = bound_pod(api, name, uid);
    reconcile(cached(pod), ctx.clone()).await.unwrap();
    api.pod(&pod_path(name))
}

#[tokio::test]
async fn a_bound_pod_without_instance_gets_one_its_id_annotated_and_running_status_in_one_write_as_the_node() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = bound_pod(&api, "web", "uid-web-1");

    let action = reconcile(cached(pod), ctx.clone()).await.unwrap();

    // Running: the listing task hands it over when its status changes.
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(calls(&ctx, Export::Create), 1);
    let ids = listed_ids(&ctx).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    assert_eq!(ctx.instances.lock().unwrap()["uid-web-1"].instance_id, *id);
    // One write of the pod, to its status subresource, with the node's identity: the annotations
    // and the status together (NodeRestriction lets a node change its pods' annotations there).
    let writes = pod_writes(&api);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].path.as_str(), writes[0].identity), (status_path("web").as_str(), "node"));
    let annotations = &writes[0].body.as_ref().unwrap()["metadata"]["annotations"];
    assert_eq!(annotations[INSTANCE_ANNOTATION], json!(id));
    assert_eq!(annotations["example.vk.io/instance-id"], json!(id), "the provider's own annotations");
    let status = &writes[0].body.as_ref().unwrap()["status"];
    assert_eq!(status["phase"], "Running", "{status}");
    assert_eq!(status["hostIP"], HOST_IP, "{status}");
    assert!(status["podIP"].as_str().is_some_and(|ip| ip.starts_with("10.")), "{status}");
    assert_eq!(status["containerStatuses"][0]["name"], "app", "{status}");
    let stored = api.pod(&pod_path("web"));
    assert_eq!(stored.annotations()[INSTANCE_ANNOTATION], *id);
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Running"));
    // One Event: the provider's, naming the instance and the plugin build that made it.
    let events = posted_events(&api, &ctx).await;
    assert_eq!(events, ["InstanceCreated"]);
    let note = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/events"))
        .find_map(|r| Some(r.body?.get("note")?.as_str()?.to_owned()))
        .unwrap();
    assert!(note.starts_with("example instance") && note.contains(&format!("(instance {id} with example@")), "{note}");
    assert!(api.requests().iter().filter(|r| r.path.ends_with("/events")).all(|r| r.identity == "node"));
}

/// A failed write of a new instance's annotations and status leaves the instance unowned until
/// the retry's create, idempotent by UID, answers with it again and the write succeeds: without
/// the annotation a restart whose first `list` fails would find a pod with neither record nor
/// annotation.
#[tokio::test]
async fn a_failed_write_is_retried_with_growing_backoff_through_the_idempotent_create() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = cached(bound_pod(&api, "web", "uid-web-2"));
    api.fail("PATCH", &status_path("web"), 500, 2);

    // The instance is made, but the pod cannot be written: neither annotated nor cached.
    let err = reconcile(pod.clone(), ctx.clone()).await.unwrap_err();
    assert!(matches!(err, SyncError::Kube { .. }), "{err}");
    assert_ne!(error_policy(pod.clone(), &err, ctx.clone()), Action::await_change());
    assert_eq!(ctx.attempts.lock().unwrap()["uid-web-2"], 1, "first retry: retry_wait(1) = 0.25-0.5 s");
    let pod = cached(api.pod(&pod_path("web")));
    assert!(!pod.annotations().contains_key(INSTANCE_ANNOTATION));
    assert!(ctx.instances.lock().unwrap().is_empty(), "cached only once written");
    // The retry fails again: a longer wait.
    let err = reconcile(pod.clone(), ctx.clone()).await.unwrap_err();
    assert_ne!(error_policy(pod.clone(), &err, ctx.clone()), Action::await_change());
    assert_eq!(ctx.attempts.lock().unwrap()["uid-web-2"], 2, "second retry: retry_wait(2) = 1-2 s");

    // The third sync writes the pod; the backoff starts over.
    reconcile(pod.clone(), ctx.clone()).await.unwrap();
    let stored = api.pod(&pod_path("web"));
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Running"));
    let id = ctx.instances.lock().unwrap()["uid-web-2"].instance_id.clone();
    assert_eq!(stored.metadata.annotations.unwrap().get(INSTANCE_ANNOTATION), Some(&id));
    assert_eq!(api.requests_to("PATCH", &status_path("web")).len(), 3);
    // Create was asked each time (its answer carries the provider's annotations too) and, being
    // idempotent by UID, made no second instance.
    assert_eq!(calls(&ctx, Export::Create), 3);
    assert_eq!(listed_ids(&ctx).await, [id]);
    assert!(ctx.attempts.lock().unwrap().is_empty(), "backoff reset after the success");
    assert!(api.requests_to("PATCH", &pod_path("web")).is_empty(), "no write of the pod itself");
    // Told once, when the pod was written: by the provider's answer to that create (the example
    // tells only of the create that made the instance), else by the host.
    let told = posted_events(&api, &ctx).await;
    assert_eq!(told, ["ProviderCreateSuccess"], "told once, when the pod was written");
}

#[tokio::test]
async fn a_pod_annotated_with_an_instance_unknown_in_memory_is_adopted_without_a_create() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = created(&api, &ctx, "web", "uid-web-3").await;
    let id = pod.annotations()[INSTANCE_ANNOTATION].clone();
    // A restart: the instance map is empty, the provider's instance and the annotation remain.
    ctx.instances.lock().unwrap().clear();
    let before = api.requests().len();

    let action = reconcile(cached(pod), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(calls(&ctx, Export::Create), 1, "only the first sync created");
    assert_eq!(calls(&ctx, Export::Status), 1, "the provider was asked about the instance");
    assert_eq!(ctx.instances.lock().unwrap()["uid-web-3"].instance_id, id);
    assert_eq!(listed_ids(&ctx).await, vec![id]);
    let after = &api.requests()[before..];
    let annotated =
        after.iter().any(|r| r.method == "PATCH" && r.body.as_ref().is_some_and(|b| b.get("metadata").is_some()));
    assert!(!annotated, "no new annotations: {after:?}");
    let created_events = posted_events(&api, &ctx).await.iter().filter(|r| *r == "InstanceCreated").count();
    assert_eq!(created_events, 1, "the first sync's only");
}

#[tokio::test]
async fn a_pod_annotated_with_an_instance_the_provider_lost_is_failed_without_a_create() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let mut pod = bound_pod(&api, "web", "uid-web-4");
    pod.annotations_mut().insert(INSTANCE_ANNOTATION.into(), "example-gone".into());
    pod.status.as_mut().unwrap().phase = Some("Running".into());
    api.put(&pod_path("web"), serde_json::to_value(&pod).unwrap());

    let action = reconcile(cached(api.pod(&pod_path("web"))), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(calls(&ctx, Export::Create), 0);
    assert!(listed_ids(&ctx).await.is_empty());
    let status = api.pod(&pod_path("web")).status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(status.reason.as_deref(), Some("ProviderInstanceLost"));
    assert!(posted_events(&api, &ctx).await.contains(&"ProviderInstanceLost".to_string()));
    assert!(ctx.instances.lock().unwrap().is_empty());
}

/// The pod as the apiserver shows it once deleted: a deletionTimestamp, still there.
fn mark_deleted(api: &fixtures::ApiServer, name: &str) -> Pod {
    let mut pod = api.pod(&pod_path(name));
    pod.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    pod.metadata.deletion_grace_period_seconds = Some(30);
    api.put(&pod_path(name), serde_json::to_value(&pod).unwrap());
    api.pod(&pod_path(name))
}

#[tokio::test]
async fn a_deleted_pod_has_its_instance_deleted_then_goes_at_once_with_grace_zero() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    created(&api, &ctx, "web", "uid-web-5").await;
    let pod = mark_deleted(&api, "web");

    let action = reconcile(cached(pod), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(calls(&ctx, Export::Delete), 1);
    assert!(listed_ids(&ctx).await.is_empty(), "the instance is gone");
    let deletes = api.requests_to("DELETE", &pod_path("web"));
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].identity, "node");
    let params = deletes[0].body.as_ref().unwrap();
    assert_eq!(params["gracePeriodSeconds"], 0, "{params}");
    assert_eq!(params["preconditions"]["uid"], "uid-web-5", "{params}");
    assert!(api.get(&pod_path("web")).is_none(), "the pod object is gone");
    assert!(ctx.instances.lock().unwrap().is_empty());
    assert!(posted_events(&api, &ctx).await.contains(&"ProviderDeleteSuccess".to_string()));
    assert!(ctx.records.pending_deletions().is_empty(), "nothing left to see through");
}

/// The node's DELETE (grace 0) of a pod already deleting updates the pod before it goes, and the
/// watch shows that update: it is no second deletion (no provider call, Event or DELETE).
#[tokio::test]
async fn the_update_the_nodes_own_delete_makes_is_not_deleted_again() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    created(&api, &ctx, "web", "uid-web-31").await;
    let pod = mark_deleted(&api, "web");
    reconcile(cached(pod.clone()), ctx.clone()).await.unwrap();
    assert!(api.get(&pod_path("web")).is_none(), "the pod object is gone");

    let mut shortened = pod;
    shortened.metadata.deletion_grace_period_seconds = Some(0);
    shortened.metadata.resource_version = Some("999".into());
    let action = reconcile(cached(shortened), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(calls(&ctx, Export::Delete), 1, "the instance was deleted once");
    assert_eq!(api.requests_to("DELETE", &pod_path("web")).len(), 1, "the pod object was deleted once");
    let events = posted_events(&api, &ctx).await;
    assert_eq!(events.iter().filter(|r| *r == "ProviderDeleteSuccess").count(), 1, "{events:?}");
}

#[tokio::test]
async fn a_deletion_recorded_in_progress_is_not_asked_again_before_due_and_the_pod_waits() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = created(&api, &ctx, "web", "uid-web-6").await;
    let id = pod.annotations()[INSTANCE_ANNOTATION].clone();
    // An earlier sync (or run, or replica) asked for the deletion; the provider said to look
    // again in a minute.
    let mut pending = PendingDeletion::new(NodeContext::pod_ref(&pod), DeleteReason::PodDeleted, id.clone());
    pending.poll_after_unix_ms = records::unix_ms_now() + 60_000;
    ctx.records.record_deletion(pending).await.unwrap();
    let records_path = "/api/v1/namespaces/kube-system/configmaps/vkcube-c1-n1-records";
    let stored = api.get(records_path).expect("the records ConfigMap");
    assert!(stored.to_string().contains("uid-web-6"), "the deletion is recorded: {stored}");
    let pod = mark_deleted(&api, "web");

    let action = reconcile(cached(pod), ctx.clone()).await.unwrap();

    assert_ne!(action, Action::await_change(), "looked at again later");
    assert_eq!(calls(&ctx, Export::Delete), 0, "not asked again before due");
    assert!(api.requests_to("DELETE", &pod_path("web")).is_empty());
    assert!(api.get(&pod_path("web")).is_some(), "the pod waits for its instance");
    assert_eq!(listed_ids(&ctx).await, vec![id]);
    assert!(ctx.records.is_deleting("uid-web-6"));
}

/// A listing's channel to the controller, and what it was sent.
struct Triggers {
    tx: UnboundedSender<ObjectRef<CachedPod>>,
    rx: futures::channel::mpsc::UnboundedReceiver<ObjectRef<CachedPod>>,
}

impl Triggers {
    fn new() -> Self {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        Self { tx, rx }
    }

    /// The names of the pods handed to the controller since the last call.
    fn sent(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).map(|r| r.name).collect()
    }
}

/// Every request that writes a pod's status.
fn status_writes(api: &fixtures::ApiServer) -> usize {
    api.requests().iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/status")).count()
}

#[tokio::test]
async fn an_instance_no_pod_owns_is_deleted_as_orphaned_once_past_the_protection_window() {
    let mut node = fixtures::node().await;
    let (api, ctx) = (node.api.clone(), node.ctx.clone());
    let kept = created(&api, &ctx, "kept", "uid-kept").await;
    let orphan = created(&api, &ctx, "orphan", "uid-orphan").await;
    let orphan_id = orphan.annotations()[INSTANCE_ANNOTATION].clone();
    // The controller's cache holds `kept` only: `orphan` went behind its back.
    node.cache(&kept);
    let ids = listed_ids(&ctx).await;
    assert_eq!(ids.len(), 2);
    let mut triggers = Triggers::new();

    // Just listed for the first time: protected from the sweep.
    list_instances(&ctx, &triggers.tx, true).await.unwrap();
    assert_eq!(listed_ids(&ctx).await, ids);
    // Listed long enough, but no sweep is due: nothing is deleted.
    let long_ago = Instant::now() - ORPHAN_GRACE - Duration::from_secs(1);
    for listed in ctx.listing.lock().unwrap().instances.values_mut() {
        listed.first_seen = long_ago;
    }
    list_instances(&ctx, &triggers.tx, false).await.unwrap();
    assert_eq!(listed_ids(&ctx).await, ids);
    assert_eq!(calls(&ctx, Export::Delete), 0);

    // The sweep deletes the orphan, and only it, and writes no pod status.
    let writes = status_writes(&api);
    list_instances(&ctx, &triggers.tx, true).await.unwrap();
    let left = listed_ids(&ctx).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0], orphan_id);
    assert_eq!(calls(&ctx, Export::Delete), 1);
    assert_eq!(ctx.metrics.orphans_deleted.get(), 1);
    assert!(!ctx.instances.lock().unwrap().contains_key("uid-orphan"));
    assert!(ctx.instances.lock().unwrap().contains_key("uid-kept"));
    assert_eq!(status_writes(&api), writes);
    assert_eq!(triggers.sent(), Vec::<String>::new(), "`kept` shows what its instance reports");
}

#[tokio::test]
async fn a_status_change_the_listing_sees_reaches_the_pod_through_reconcile_without_a_status_call() {
    let mut node = fixtures::node().await;
    let (api, ctx) = (node.api.clone(), node.ctx.clone());
    let running = created(&api, &ctx, "web", "uid-web-8").await;
    let settled = created(&api, &ctx, "db", "uid-db-8").await;
    // `web` shows something else than its instance reports (say, a write of it was lost).
    let mut stale = running.clone();
    stale.status = Some(serde_json::from_value(json!({"phase": "Pending"})).unwrap());
    api.put(&pod_path("web"), serde_json::to_value(&stale).unwrap());
    let stale = api.pod(&pod_path("web"));
    node.cache(&stale);
    node.cache(&settled);
    let mut triggers = Triggers::new();
    let (writes, status_calls) = (status_writes(&api), calls(&ctx, Export::Status));

    list_instances(&ctx, &triggers.tx, false).await.unwrap();

    // The listing writes nothing itself: it hands the pod to the controller.
    assert_eq!(status_writes(&api), writes);
    assert_eq!(triggers.sent(), ["web"]);
    let action = reconcile(cached(stale), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(api.pod(&pod_path("web")).status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(status_writes(&api), writes + 1);
    assert_eq!(calls(&ctx, Export::Status), status_calls, "the listing's status was used");
    // Once the watch shows the write, the next listing has no news.
    node.cache(&api.pod(&pod_path("web")));
    list_instances(&ctx, &triggers.tx, false).await.unwrap();
    assert_eq!(triggers.sent(), Vec::<String>::new());
}

#[tokio::test]
async fn an_instance_the_listing_no_longer_shows_fails_its_pod_through_reconcile() {
    let mut node = fixtures::node().await;
    let (api, ctx) = (node.api.clone(), node.ctx.clone());
    let pod = created(&api, &ctx, "web", "uid-web-9").await;
    node.cache(&pod);
    let mut triggers = Triggers::new();
    // The instance vanishes from the provider.
    ctx.plugin.delete(&ctx.call, &NodeContext::pod_ref(&pod), DeleteReason::Orphaned).await.unwrap();

    // Made moments ago: a listing may lag the create, so it is not lost yet.
    list_instances(&ctx, &triggers.tx, false).await.unwrap();
    assert_eq!(triggers.sent(), Vec::<String>::new());
    let long_ago = Instant::now() - LOST_GRACE - Duration::from_secs(1);
    {
        let mut instances = ctx.instances.lock().unwrap();
        let record = instances.get_mut("uid-web-9").unwrap();
        (record.seen_at, record.observed_at) = (long_ago, Some(long_ago));
    }
    let writes = status_writes(&api);
    list_instances(&ctx, &triggers.tx, false).await.unwrap();
    assert_eq!(triggers.sent(), ["web"]);
    assert_eq!(status_writes(&api), writes, "the listing writes no status");

    let status_calls = calls(&ctx, Export::Status);
    let action = reconcile(cached(pod), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(calls(&ctx, Export::Status), status_calls, "the listing said so");
    let status = api.pod(&pod_path("web")).status.unwrap();
    assert_eq!((status.phase.as_deref(), status.reason.as_deref()), (Some("Failed"), Some("ProviderInstanceLost")));
    assert!(posted_events(&api, &ctx).await.contains(&"ProviderInstanceLost".to_string()));
    assert_eq!(calls(&ctx, Export::Create), 1, "nothing made again");
}

/// After a restart every record is new: a listing that lags the provider's creates must not fail
/// the pods of instances made just before; `status` is asked instead.
#[tokio::test]
async fn a_listing_without_the_instance_of_a_pod_just_learned_of_is_checked_with_status() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = created(&api, &ctx, "web", "uid-web-11").await;
    ctx.instances.lock().unwrap().clear();
    *ctx.listing.lock().unwrap() = Listing { at: Some(Instant::now()), instances: HashMap::new() };

    let action = reconcile(cached(pod), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(calls(&ctx, Export::Status), 1);
    assert_eq!(api.pod(&pod_path("web")).status.unwrap().phase.as_deref(), Some("Running"));
    assert!(!posted_events(&api, &ctx).await.contains(&"ProviderInstanceLost".to_string()));
}

#[tokio::test]
async fn a_deletion_in_progress_requeues_the_pod_and_a_later_reconcile_finishes_it() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = created(&api, &ctx, "web", "uid-web-10").await;
    let id = pod.annotations()[INSTANCE_ANNOTATION].clone();
    // Asked before; the provider's first poll is due, but the instance is still there.
    let pending = PendingDeletion::new(NodeContext::pod_ref(&pod), DeleteReason::PodDeleted, id);
    ctx.records.record_deletion(pending).await.unwrap();
    let pod = cached(mark_deleted(&api, "web"));

    let mut waits = Vec::new();
    for _ in 0..3 {
        let action = reconcile(pod.clone(), ctx.clone()).await.unwrap();
        assert_ne!(action, Action::await_change());
        waits.push(action);
    }

    // Each reconcile looked once and came back with a requeue, sooner first.
    assert_eq!(waits, [50, 100, 200].map(|ms| Action::requeue(Duration::from_millis(ms))), "polls back off from 50 ms");
    assert_eq!(calls(&ctx, Export::Status), 3);
    assert_eq!(calls(&ctx, Export::Delete), 0, "not asked again");
    assert!(api.get(&pod_path("web")).is_some(), "the pod waits for its instance");
    assert!(ctx.records.is_deleting("uid-web-10"));

    // The provider finishes; the next reconcile sees it and lets the pod go.
    ctx.plugin.delete(&ctx.call, &NodeContext::pod_ref(pod.as_ref()), DeleteReason::PodDeleted).await.unwrap();
    assert_eq!(reconcile(pod.clone(), ctx.clone()).await.unwrap(), Action::await_change());
    assert!(api.get(&pod_path("web")).is_none(), "the pod object is gone");
    assert!(!ctx.records.is_deleting("uid-web-10"), "the record went");
    assert!(posted_events(&api, &ctx).await.contains(&"ProviderDeleteSuccess".to_string()));
    assert!(ctx.deleting.lock().unwrap().is_empty() && ctx.instances.lock().unwrap().is_empty());
}

/// A backend that accepted a delete and dropped it is asked again once the deletion has been in
/// progress for a while, not on every poll.
#[tokio::test]
async fn a_deletion_in_progress_too_long_is_asked_again() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = created(&api, &ctx, "web", "uid-web-11").await;
    let id = pod.annotations()[INSTANCE_ANNOTATION].clone();
    let pending = PendingDeletion::new(NodeContext::pod_ref(&pod), DeleteReason::PodDeleted, id);
    ctx.records.record_deletion(pending).await.unwrap();
    let pod = cached(mark_deleted(&api, "web"));

    reconcile(pod.clone(), ctx.clone()).await.unwrap();
    reconcile(pod.clone(), ctx.clone()).await.unwrap();
    assert_eq!(calls(&ctx, Export::Delete), 0, "first seen now: not asked again yet");

    // The deletion has been in progress since long ago; the instance is still there.
    ctx.deleting.lock().unwrap().get_mut("uid-web-11").unwrap().asked_at = Some(Instant::now() - DELETE_REASK);
    reconcile(pod.clone(), ctx.clone()).await.unwrap();
    assert_eq!(calls(&ctx, Export::Delete), 1, "asked again");

    // That delete went through: the next reconcile sees the instance gone and lets the pod go.
    assert_eq!(reconcile(pod.clone(), ctx.clone()).await.unwrap(), Action::await_change());
    assert!(api.get(&pod_path("web")).is_none());
}

#[test]
fn the_listing_is_quick_while_instances_start_and_less_so_while_the_plugins_budget_has_waiters() {
    let period = Duration::from_secs(10);
    assert_eq!(next_listing(period, false, false, 0), period);
    assert_eq!(next_listing(period, false, true, 0), period);
    assert_eq!(next_listing(period, true, false, 0), STARTING_SYNC);
    assert_eq!(next_listing(period, true, true, 0), STARTING_SYNC_UNDER_BUDGET);
    // Never slower than the configured period.
    assert_eq!(next_listing(Duration::from_millis(100), true, true, 0), Duration::from_millis(100));
}

/// With a cloud that takes 100 ms per page, the listings while instances start come every
/// [`STARTING_SYNC`] from one's start to the next, not 100 ms later each; one that takes longer
/// than that is followed at once.
#[tokio::test(start_paused = true)]
async fn the_quick_listing_is_counted_from_one_listings_start_to_the_next() {
    let (startups, shutdown) = (Startups::default(), CancellationToken::new());
    let period = Duration::from_secs(10);
    let mut began = Vec::new();

    for took_ms in [100, 100, 100, 400, 100] {
        let listing = async {
            began.push(tokio::time::Instant::now());
            tokio::time::sleep(Duration::from_millis(took_ms)).await;
            next_listing(period, true, false, 0)
        };
        assert!(listing_round(listing, period, &startups, &shutdown).await);
    }

    let gaps: Vec<Duration> = began.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [250, 250, 250, 400].map(Duration::from_millis), "with STARTING_SYNC = {STARTING_SYNC:?}");
}

/// A listing that fails (a throttling gateway, a cloud down) is not repeated four times a second:
/// those calls would take the gateway's rate from the creates that are waiting.
#[test]
fn failed_listings_in_a_row_slow_the_listing_down_to_the_period() {
    let period = Duration::from_secs(10);
    let waits: Vec<Duration> = (0..8).map(|n| next_listing(period, true, false, n)).collect();
    assert_eq!(waits[0], STARTING_SYNC);
    assert_eq!(waits[1], STARTING_SYNC * 2);
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    assert_eq!(*waits.last().unwrap(), period, "capped at the period");
    // Under a budget the slower cadence stays until the backoff passes it.
    assert_eq!(next_listing(period, true, true, 1), STARTING_SYNC_UNDER_BUDGET);
    // Without instances starting a failure does not list any sooner than the period.
    assert_eq!(next_listing(period, false, false, 1), period);
    assert_eq!(next_listing(period, true, false, u32::MAX), period);
}

/// A pod the provider refuses for good is one write: the refusal and what it rested on, with the
/// status that shows it, through the status subresource as the node.
#[tokio::test]
async fn a_refused_pod_gets_its_refusal_annotated_and_shown_in_one_write() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    // The example provider refuses a pod without a UID as invalid.
    let pod = bound_pod(&api, "bad", "");

    let action = reconcile(cached(pod), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::await_change(), "not tried again until the pod changes");
    assert!(listed_ids(&ctx).await.is_empty());
    let writes = pod_writes(&api);
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].path.as_str(), writes[0].identity), (status_path("bad").as_str(), "node"));
    let body = writes[0].body.as_ref().unwrap();
    assert_eq!(body["metadata"]["annotations"][REJECTED_ANNOTATION], "InvalidPod", "{body}");
    assert_eq!(body["metadata"]["annotations"][REJECTED_BY_ANNOTATION], json!(ctx.verdict_basis()), "{body}");
    assert_eq!((&body["status"]["phase"], &body["status"]["reason"]), (&json!("Failed"), &json!("InvalidPod")));
    let stored = api.pod(&pod_path("bad"));
    assert_eq!(stored.annotations().get(REJECTED_BY_ANNOTATION), Some(&ctx.verdict_basis()));
    assert_eq!(stored.status.unwrap().reason.as_deref(), Some("InvalidPod"));
    assert_eq!(posted_events(&api, &ctx).await, ["InvalidPod"]);
}

/// A refusal made by another plugin build or node config is cleared (annotations only, through
/// the status subresource as the node) and the pod judged again.
#[tokio::test]
async fn a_refusal_resting_on_another_plugin_build_is_cleared_and_the_pod_created() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let mut pod = bound_pod(&api, "web", "uid-web-14");
    pod.annotations_mut().insert(REJECTED_ANNOTATION.into(), "ImageRegistryNotAllowed".into());
    pod.annotations_mut()
        .insert(REJECTED_BY_ANNOTATION.into(), "example@0.0.1 000000000000 config 000000000000".into());
    api.put(&pod_path("web"), serde_json::to_value(&pod).unwrap());

    reconcile(cached(api.pod(&pod_path("web"))), ctx.clone()).await.unwrap();

    let writes = pod_writes(&api);
    assert_eq!(writes.len(), 2, "the refusal cleared, then the create's one write: {writes:?}");
    assert!(writes.iter().all(|w| w.path == status_path("web") && w.identity == "node"), "{writes:?}");
    let cleared = writes[0].body.as_ref().unwrap();
    assert_eq!(cleared["metadata"]["annotations"][REJECTED_ANNOTATION], Value::Null, "{cleared}");
    assert!(cleared.get("status").is_none(), "{cleared}");
    let stored = api.pod(&pod_path("web"));
    assert!(!is_rejected(&stored) && !stored.annotations().contains_key(REJECTED_BY_ANNOTATION));
    assert!(stored.annotations().contains_key(INSTANCE_ANNOTATION));
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Running"));
    let events = posted_events(&api, &ctx).await;
    assert_eq!(events, ["ProviderRefusalReevaluated", "InstanceCreated"]);
}

/// Events are posted by the node's event task: a reconcile whose Events the apiserver does not
/// answer yet still writes the pod and finishes, and its Events follow, in order.
#[tokio::test]
async fn a_reconcile_finishes_without_waiting_for_its_events_which_follow_in_order() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    api.hold("POST", "/events");
    let pod = bound_pod(&api, "web", "uid-web-12");

    // Bounded only so that a reconcile that does wait fails instead of hanging the test.
    let reconciled = tokio::time::timeout(Duration::from_secs(60), reconcile(cached(pod), ctx.clone())).await;

    let action = reconciled.expect("the reconcile waited for its Events").unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let stored = api.pod(&pod_path("web"));
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Running"));
    assert!(stored.metadata.annotations.unwrap().contains_key(INSTANCE_ANNOTATION));
    assert!(api.event_reasons().is_empty(), "none answered yet");
    api.release();
    assert_eq!(posted_events(&api, &ctx).await, ["InstanceCreated"]);
}

/// A node's event queue is bounded: an Event recorded while it is full is dropped and counted,
/// and once the queue has been posted it takes Events again.
#[tokio::test]
async fn an_event_recorded_while_the_queue_is_full_is_dropped_and_counted() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    api.hold("POST", "/events");
    let pod = bound_pod(&api, "web", "uid-web-13");
    let dropped = |n: usize| format!("vkhost_events_dropped_total{{node=\"{}\"}} {n}\n", fixtures::NODE);

    for i in 0..crate::pods::events::CAPACITY + 3 {
        ctx.event(&pod, false, "Tick", format!("tick {i}"));
    }

    assert!(ctx.metrics.render().contains(&dropped(3)), "{}", ctx.metrics.render());
    api.release();
    ctx.events.idle().await;
    ctx.event(&pod, true, "Tock", "once posted, room again".into());
    assert_eq!(posted_events(&api, &ctx).await.len(), crate::pods::events::CAPACITY + 1);
    assert!(ctx.metrics.render().contains(&dropped(3)), "{}", ctx.metrics.render());
}

/// A provider that tells nothing of its create gets the host's `ProviderCreateSuccess`; its
/// Warnings are posted as they are, after it.
#[tokio::test]
async fn a_create_the_provider_tells_nothing_of_gets_the_hosts_event_and_its_warnings_follow() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let pod = bound_pod(&api, "web", "uid-web-told");
    let outcome = crate::plugin::PodOutcome {
        instance_id: "inst-1".into(),
        status: PodStatus {
            phase: PodPhase::Pending,
            reason: "ContainerCreating".into(),
            message: String::new(),
            pod_ip: None,
            start_time: None,
            init_container_statuses: vec![],
            container_statuses: vec![],
        },
        annotations: vec![],
        events: vec![crate::plugin::Event {
            kind: EventKind::Warning,
            reason: "AnnotationHasNoEffect".into(),
            message: "ignored".into(),
        }],
    };

    tell_created(&pod, &ctx, &outcome);

    assert_eq!(posted_events(&api, &ctx).await, ["ProviderCreateSuccess", "AnnotationHasNoEffect"]);
    let notes: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/events"))
        .filter_map(|r| Some(r.body?.get("note")?.as_str()?.to_owned()))
        .collect();
    assert!(notes[0].starts_with("created instance inst-1 with example@"), "{notes:?}");
    assert_eq!(notes[1], "ignored", "a Warning is the provider's words alone");
}

/// Retries double up to the configured maximum, and pods failed together do not all come back
/// together: the jitter takes up to half of each wait off.
#[test]
fn retries_double_up_to_the_maximum_and_are_spread_by_the_jitter() {
    let full: Vec<Duration> = (1..=9).map(|n| retry_wait(n, 60, 0.0)).collect();
    assert_eq!(full[0], Duration::from_millis(500));
    assert_eq!(full[1], Duration::from_secs(2));
    assert_eq!(full[2], Duration::from_secs(4));
    assert_eq!(full[8], Duration::from_secs(60), "capped at max_backoff_seconds");
    assert_eq!(retry_wait(3, 60, 1.0), Duration::from_secs(2), "the jitter takes at most half");
    assert_eq!(retry_wait(3, 60, 0.5), Duration::from_secs(3));
    assert_eq!(retry_wait(u32::MAX, 60, 0.0), Duration::from_secs(60));
}

/// A reconcile or listing that reads a cache not showing this node's last status write yet (the
/// watch is a second behind under a burst) does not write the same status again; once the cache
/// has moved past the write (another writer changed the status) the cache is what counts.
#[tokio::test]
async fn a_status_the_cache_does_not_show_yet_is_not_written_again() {
    let mut node = fixtures::node().await;
    let (api, ctx) = (node.api.clone(), node.ctx.clone());
    let before = bound_pod(&api, "web", "uid-web-20");
    reconcile(cached(before.clone()), ctx.clone()).await.unwrap();
    let writes = status_writes(&api);
    // The cache still holds the pod as it was before the create's write.
    node.cache(&before);
    let mut triggers = Triggers::new();
    list_instances(&ctx, &triggers.tx, false).await.unwrap();
    assert_eq!(triggers.sent(), Vec::<String>::new(), "the listing shows what was written");
    reconcile(cached(before.clone()), ctx.clone()).await.unwrap();
    assert_eq!(status_writes(&api), writes, "written once");

    // Another writer's change after it (a newer resourceVersion) is news again.
    let mut changed = api.pod(&pod_path("web"));
    changed.status = Some(serde_json::from_value(json!({"phase": "Pending"})).unwrap());
    api.put(&pod_path("web"), serde_json::to_value(&changed).unwrap());
    let changed = api.pod(&pod_path("web"));
    node.cache(&changed);
    list_instances(&ctx, &triggers.tx, false).await.unwrap();
    assert_eq!(triggers.sent(), ["web"]);
    reconcile(cached(changed), ctx.clone()).await.unwrap();
    assert_eq!(status_writes(&api), writes + 1);
    assert_eq!(api.pod(&pod_path("web")).status.unwrap().phase.as_deref(), Some("Running"));
}

#[test]
fn resource_versions_compare_as_kubernetes_defines_them() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_versions(Some("99"), Some("100")), Some(Less));
    assert_eq!(compare_versions(Some("100"), Some("99")), Some(Greater));
    assert_eq!(compare_versions(Some("123"), Some("123")), Some(Equal));
    assert_eq!(compare_versions(Some("0"), Some("1")), None, "zero is not a live version");
    assert_eq!(compare_versions(Some("012"), Some("12")), None);
    assert_eq!(compare_versions(Some("abc"), Some("12")), None);
    assert_eq!(compare_versions(None, Some("12")), None);
}

/// A running pod whose mounted ConfigMap changed is told through `update`: what its instance was
/// given now goes on the pod with the status the update answers, in one write of its status
/// subresource as the node (not the status, then the annotation).
#[tokio::test]
async fn a_refresh_writes_what_the_instance_was_given_with_the_updates_status_in_one_write() {
    let TestNode { api, ctx, .. } = fixtures::node().await;
    let config_map = |value: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "app-config", "namespace": "default"}, "data": {"app.conf": value}})
    };
    let cm_path = "/api/v1/namespaces/default/configmaps/app-config";
    api.put(cm_path, config_map("v1"));
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web-30",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": fixtures::NODE, "enableServiceLinks": false,
                 "volumes": [{"name": "conf", "configMap": {"name": "app-config"}}],
                 "containers": [{"name": "app", "image": "nginx:1.27",
                                 "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}]}]},
        "status": {"phase": "Pending"}
    });
    api.put(&pod_path("web"), pod);
    let mut changed = ctx.references.triggers().unwrap();
    reconcile(cached(api.pod(&pod_path("web"))), ctx.clone()).await.unwrap();
    let given_at_create = api.pod(&pod_path("web")).annotations()[references::GIVEN_ANNOTATION].clone();

    api.put(cm_path, config_map("v2"));
    // Bounded only so that a watch that never tells fails instead of hanging the test.
    let told = tokio::time::timeout(Duration::from_secs(10), changed.next()).await.unwrap().unwrap();
    assert_eq!(told.name, "web");
    // The pod shows an older status than its instance reports (say, still starting): the
    // update's answer is news.
    let mut stale = api.pod(&pod_path("web"));
    stale.status = Some(serde_json::from_value(json!({"phase": "Pending"})).unwrap());
    api.put(&pod_path("web"), serde_json::to_value(&stale).unwrap());
    let before = pod_writes(&api).len();

    let action = reconcile(cached(api.pod(&pod_path("web"))), ctx.clone()).await.unwrap();

    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(calls(&ctx, Export::Update), 1);
    let writes = &pod_writes(&api)[before..];
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].path.as_str(), writes[0].identity), (status_path("web").as_str(), "node"));
    let body = writes[0].body.as_ref().unwrap();
    let v2: ConfigMap = serde_json::from_value(config_map("v2")).unwrap();
    let given = format!("ConfigMap/app-config={}", hex::encode(references::config_map_digest(&v2)));
    assert_ne!(given, given_at_create);
    assert_eq!(body["metadata"]["annotations"][references::GIVEN_ANNOTATION], json!(given), "{body}");
    assert_eq!(body["status"]["phase"], "Running", "{body}");
    let stored = api.pod(&pod_path("web"));
    assert_eq!(stored.annotations()[references::GIVEN_ANNOTATION], given);
    assert_eq!(stored.status.unwrap().phase.as_deref(), Some("Running"));
    assert!(ctx.references.pending("uid-web-30").is_empty(), "the change was told");
}
