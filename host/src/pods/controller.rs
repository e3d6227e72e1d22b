//! The pod controller of one virtual node: a reconcile function over pods bound to the node
//! (kube-runtime's `Controller` runs it concurrently across pods and serially per pod), with an
//! explicit error policy — transient provider failures retried with capped exponential backoff
//! (upstream never retries), user errors shown on the pod and never retried.
//!
//! # Where "this pod has an instance" lives
//! - **The truth is the pod's `vkcube.io/instance-id` annotation** ([`INSTANCE_ANNOTATION`]),
//!   written by `create` once the provider made the instance, in one write with the status the
//!   instance reports. It is durable and travels with the pod, so a restart or another replica
//!   taking over the node knows every instance at once.
//! - **`NodeContext::instances` is a cache derived from it**, owned by reconcile: an entry is
//!   made when `create`'s write succeeded, or when reconcile first sees an annotated pod
//!   (after a restart or a failover: there is no separate adoption step, and no `recover`; the
//!   annotated pod's status is simply observed, and a `not-found` fails it as lost). The cache
//!   only adds what is this process's own: when the instance was made or first seen, when its
//!   status was last observed, when its tokens are due. Create is asked again when its write
//!   failed: it is idempotent by pod UID (`may_exist`), so no second instance.
//! - **The provider's `list` feeds orphan detection and observation only**: a periodic task
//!   lists the instances, keeps the answer as the last listing ([`Listing`]), deletes instances
//!   no pod owns (after a protection window) and hands the pods whose status it saw change, or
//!   whose instance it no longer saw, to the controller (`reconcile_on`). Reconcile reads the
//!   listing instead of asking `status` when the listing is newer than what it last observed.
//!   **Only reconcile writes pod status.**
//! - Deletions in progress are in the node's durable records (`records`); reconcile sees a
//!   deleted pod's deletion through with requeues (never waits inside a reconcile), the periodic
//!   task those whose pod is gone (orphans, finished pods, a previous run's).
//!
//! # Who writes what
//! Every write of a pod is the node's own identity (`NodeContext::client`), as a kubelet's: its
//! status, the annotations the host keeps on it (the instance id, a refusal and what it rested
//! on, what the instance was given, the provider's own such as an EIP address) and its deletion.
//! The annotations go through the status subresource, with the status when there is one to
//! write: NodeRestriction refuses a node any change of its pods through the pod itself, but
//! through `pods/status` only a change of their labels (and of resource-claim statuses), and the
//! status strategy keeps the metadata a merge patch brings there but for owner references and the
//! deletion timestamp. So a pod's start is one write. Events go through the node's event queue
//! (`events`), posted by a task of their own: a reconcile never waits on one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::cached::{CachedPod, PodView};
use super::deletions::{self, Progress};
use super::events::Events;
use super::references::{self, Change, ReferenceWatches};
use super::resolve::{self, Missing};
use super::startup::{Stage, Startups};
use super::status;
use crate::config::PodSettings;
use crate::metrics::Metrics;
use crate::plugin::{
    CallContext, CallError, DeleteReason, Deletion, EventKind, Instance, Plugin, PodChange, PodPhase, PodRef,
    PodStatus, ProviderError, ResolvedPod, UpdateOutcome,
};
use crate::records::{self, NodeRecords, PendingDeletion, RecordsError};

/// Annotation recording the backend instance of a pod.
pub const INSTANCE_ANNOTATION: &str = "vkcube.io/instance-id";

/// The pod annotations only the host writes: a change of them alone is not a reason to reconcile.
pub(super) const HOST_ANNOTATIONS: [&str; 4] =
    [INSTANCE_ANNOTATION, references::GIVEN_ANNOTATION, REJECTED_ANNOTATION, REJECTED_BY_ANNOTATION];

/// The cached record of one pod's instance, derived from the pod's [`INSTANCE_ANNOTATION`]
/// (see the module doc): the annotation's instance id and what this process adds to it.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub pod: PodRef,
    /// When this process created the instance or first saw the pod's annotation.
    pub seen_at: Instant,
    /// Whether this process created it: a `not-found` shortly after is not yet a lost instance.
    pub created_here: bool,
    /// When its status was last taken (from `create`, `status` or a listing that began then); a
    /// listing begun later is news.
    pub observed_at: Option<Instant>,
    /// When the pod's minted service-account tokens need renewing.
    pub refresh_at: Option<Instant>,
}

/// The provider's last `list` answer, kept by the periodic listing task and read by reconcile.
#[derive(Debug, Default)]
pub struct Listing {
    /// When the last successful `list` call began.
    pub at: Option<Instant>,
    /// The instances it listed, by pod UID.
    pub instances: HashMap<String, Listed>,
}

/// One instance of the last listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub instance: Instance,
    /// When a listing first showed it: an instance without a pod is an orphan only once it has
    /// been listed for [`ORPHAN_GRACE`].
    pub first_seen: Instant,
}

/// What reconcile learns of one instance from the last listing.
enum Seen {
    /// No listing newer than the last observation.
    Unknown,
    /// Listed, with this status, by a listing begun at that time.
    Listed(PodStatus, Instant),
    /// A newer listing did not show it.
    Absent,
}

/// How long an instance without a pod is left alone: its pod may be on the way to the cache.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// How long after this process learned of an instance a listing that does not show it is
/// believed (a provider's list may lag its create); a `status` answer is believed at once, but
/// for an instance this process made within this time.
const LOST_GRACE: Duration = Duration::from_secs(10);
/// How long a deletion the provider answered `in-progress` may stay in progress before `delete`
/// is asked again (idempotent): a backend that accepted a delete and dropped it must not keep
/// the instance, billed, and the pod Terminating for ever.
const DELETE_REASK: Duration = Duration::from_secs(30);
/// How long a status this node wrote stands in for the pod cache's, which has not shown the write
/// yet (see [`NodeContext::shown_status`]). The cache is normally a watch event behind: under a
/// burst a second or more.
const WRITTEN_TRUST: Duration = Duration::from_secs(5);

/// A status this node wrote to a pod, as the pod shows it after the write.
struct Written {
    status: Value,
    /// The pod's resourceVersion the write returned: once the cache holds it, the cache is right.
    resource_version: Option<String>,
    at: Instant,
}

/// A deletion this reconcile is seeing through, in memory: how often its instance was polled
/// (for the next requeue), and the provider's answer when the records had no room for it.
#[derive(Debug, Default)]
struct Deleting {
    polls: u32,
    unrecorded: Option<PendingDeletion>,
    /// When this process last asked `delete`, or first saw the deletion in progress.
    asked_at: Option<Instant>,
}

/// Everything the controller, its listing task and the kubelet API share for one node.
pub struct NodeContext {
    /// The node's own identity: pods bound to it, what they reference, their status and
    /// annotations. Its Events go through their own lane of the same identity ([`Events`]).
    pub client: Client,
    pub plugin: Arc<Plugin>,
    pub node_name: String,
    pub call: CallContext,
    /// The node's InternalIP, shown as the pods' hostIP.
    pub host_ip: String,
    /// The Events recorded on the node's pods, posted by [`run`]'s event task.
    pub events: Events,
    pub settings: PodSettings,
    pub metrics: Arc<Metrics>,
    /// Instances by pod UID: the cache derived from the pods' annotation (see the module doc).
    pub instances: Mutex<HashMap<String, InstanceRecord>>,
    /// The provider's last `list` answer (see the module doc).
    pub listing: Mutex<Listing>,
    /// Set while the node is disabled (N6): no new instances.
    pub disabled: AtomicBool,
    /// The node's pod capacity: a pod bound beyond it is refused `OutOfpods`, as a kubelet does.
    pub max_pods: AtomicU32,
    /// Retry attempts by pod UID, for the backoff.
    attempts: Mutex<HashMap<String, u32>>,
    /// Pods already told about a missing object (one Event, not one per retry).
    told_missing: Mutex<HashMap<String, String>>,
    /// The pods bound to the node, as the controller's watch keeps them.
    store: Store<CachedPod>,
    /// Deletions in progress reconcile is seeing through, by pod UID.
    deleting: Mutex<HashMap<String, Deleting>>,
    /// The pods whose final DELETE the apiserver took lately: the update that DELETE makes is no
    /// reason to delete them again.
    deleted: super::teardown::DeletedLately,
    /// The node's durable records: the deletions in progress are seen through from there.
    pub records: Arc<NodeRecords>,
    /// Backoff of the failed `finalize` calls of deletions in progress.
    finalize_retries: deletions::Retries,
    /// The ConfigMaps and Secrets the pods with an instance reference, watched for changes, and
    /// the Services their service-link variables read.
    pub references: ReferenceWatches,
    /// Where the time of each pod's start goes (`vkhost_pod_start_seconds`).
    pub startups: Startups,
    /// Where the time of each pod's deletion goes (`vkhost_pod_delete_seconds`).
    teardowns: super::teardown::Teardowns,
    /// The pods a create was sent for, for `create-attempt.may-exist`.
    create_attempts: super::attempts::CreateAttempts,
    /// The last status written to each pod, by UID, while the pod cache may not show it yet.
    written: Mutex<HashMap<String, Written>>,
    /// The annotations a provider asked for on a create, as the host wrote them, by pod UID: the
    /// watch event of that write is not another reconcile ([`super::own_writes`]).
    provider_annotations: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl NodeContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        events_client: Client,
        plugin: Arc<Plugin>,
        node_name: String,
        config_json: String,
        host_ip: String,
        settings: PodSettings,
        metrics: Arc<Metrics>,
        records: Arc<NodeRecords>,
        store: Store<CachedPod>,
    ) -> Arc<Self> {
        let events = Events::new(events_client, node_name.clone(), metrics.clone());
        // Watched with the node's identity, which reads them to resolve its pods.
        let references = ReferenceWatches::new(client.clone(), &node_name);
        Arc::new(Self {
            call: CallContext { node_name: node_name.clone(), config: config_json },
            client,
            plugin,
            node_name,
            host_ip,
            events,
            settings,
            metrics,
            instances: Mutex::new(HashMap::new()),
            listing: Mutex::new(Listing::default()),
            disabled: AtomicBool::new(false),
            max_pods: AtomicU32::new(crate::config::MAX_PODS_PER_NODE),
            attempts: Mutex::new(HashMap::new()),
            told_missing: Mutex::new(HashMap::new()),
            store,
            deleting: Mutex::new(HashMap::new()),
            deleted: Default::default(),
            records,
            finalize_retries: deletions::Retries::default(),
            references,
            startups: Default::default(),
            teardowns: Default::default(),
            create_attempts: Default::default(),
            written: Mutex::new(HashMap::new()),
            provider_annotations: Mutex::new(HashMap::new()),
        })
    }

    /// Pods bound to this node, as the controller's cache holds them.
    pub fn pods(&self) -> Vec<Arc<CachedPod>> {
        self.store.state()
    }

    /// Pod `namespace/name` as the node's cache holds it.
    pub fn cached_pod(&self, namespace: &str, name: &str) -> Option<Arc<CachedPod>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Records an Event on a pod: queued for the node's event task, never waited for (see
    /// `events`); a failure to post it is logged there, never fatal.
    pub fn event(&self, pod: &impl Resource<DynamicType = ()>, warning: bool, reason: &str, note: String) {
        self.events.record(pod.object_ref(&()), warning, reason, reason, note);
    }

    /// Answers a volume expansion the node cannot do, on the claim and on the pod.
    fn refuse_expansion(&self, refusal: super::expansion::Refusal) {
        self.events.record(
            refusal.claim.object_ref(&()),
            true,
            super::expansion::REASON,
            "Expand",
            refusal.note.clone(),
        );
        self.event(refusal.pod.as_ref(), true, super::expansion::REASON, refusal.note);
    }

    /// What a provider's verdict on a pod rests on besides the pod: the plugin build and the
    /// node's config. A refusal stamped with another is judged again.
    pub fn verdict_basis(&self) -> String {
        use sha2::Digest;
        let summary = self.plugin.summary_for(&self.node_name);
        let config = hex::encode(sha2::Sha256::digest(self.call.config.as_bytes()));
        let build: String = summary.load.sha256.chars().take(12).collect();
        format!("{}@{} {build} config {}", summary.info.name, summary.info.version, &config[..12])
    }

    fn pod_ref(pod: &impl ResourceExt) -> PodRef {
        PodRef {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }

    /// What the pod's status shows: the cache's, or this node's last write to it while the cache
    /// does not hold that write yet (for [`WRITTEN_TRUST`] at most). Without it, a listing every
    /// 250 ms that compares an instance's status with a cache a second behind found the same
    /// news again and again, and wrote it again each time: 6 status writes per Cube start under
    /// a burst, where 2 say everything, and the extra writes slowed the apiserver further.
    fn shown_status(&self, pod: &impl PodView) -> Option<Value> {
        let uid = pod.meta().uid.clone().unwrap_or_default();
        let mut written = self.written.lock().unwrap();
        if let Some(w) = written.get(&uid) {
            // The cache is behind the write when its resourceVersion is older (comparable since
            // Kubernetes 1.35, KEP-5504); an apiserver whose versions do not compare is trusted to
            // be behind while the version differs.
            let rv = &pod.meta().resource_version;
            let behind = match compare_versions(rv.as_deref(), w.resource_version.as_deref()) {
                Some(order) => order.is_lt(),
                None => *rv != w.resource_version,
            };
            if behind && w.at.elapsed() < WRITTEN_TRUST {
                return Some(w.status.clone());
            }
            written.remove(&uid);
        }
        pod.status_value()
    }

    /// The provider's annotations the host wrote on `pod`'s create (empty when none or unknown).
    fn provider_written(&self, pod: &impl PodView) -> Vec<(String, String)> {
        let uid = pod.meta().uid.as_deref().unwrap_or_default();
        self.provider_annotations.lock().unwrap().get(uid).cloned().unwrap_or_default()
    }

    /// Forgets what is kept of pod `uid` once its instance is gone or let go.
    fn forget_instance(&self, uid: &str) {
        self.instances.lock().unwrap().remove(uid);
        self.provider_annotations.lock().unwrap().remove(uid);
    }

    /// Remembers the status a write to `pod` left it with (`before` merged with `patch`, as the
    /// apiserver merges it) and the resourceVersion the write returned.
    fn wrote_status(&self, pod: &Pod, before: Option<Value>, patch: &Value, resource_version: Option<String>) {
        let mut status = before.unwrap_or_else(|| json!({}));
        if let (Some(status), Some(patch)) = (status.as_object_mut(), patch.as_object()) {
            for (k, v) in patch {
                if v.is_null() {
                    status.remove(k);
                } else {
                    status.insert(k.clone(), v.clone());
                }
            }
        }
        let mut written = self.written.lock().unwrap();
        written.retain(|_, w| w.at.elapsed() < WRITTEN_TRUST);
        written.insert(pod.uid().unwrap_or_default(), Written { status, resource_version, at: Instant::now() });
    }

    fn backoff(&self, uid: &str) -> Duration {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(uid.to_string()).or_insert(0);
        *n += 1;
        retry_wait(*n, self.settings.max_backoff_seconds, rand::random())
    }

    fn reset_backoff(&self, uid: &str) {
        self.attempts.lock().unwrap().remove(uid);
    }

    /// The cached record of `pod`'s instance, made from its annotation when not cached yet (a
    /// pod annotated by an earlier run or another replica); `None` when the pod has no instance.
    fn record_of(&self, pod: &Pod) -> Option<InstanceRecord> {
        let uid = pod.uid().unwrap_or_default();
        let Some(id) = pod.annotations().get(INSTANCE_ANNOTATION) else {
            // A record is made once the annotation is written: the pod in the watch's cache
            // may not show that write yet.
            return self.instances.lock().unwrap().get(&uid).cloned();
        };
        let mut instances = self.instances.lock().unwrap();
        let record = instances.entry(uid).or_insert_with(|| InstanceRecord {
            instance_id: id.clone(),
            pod: Self::pod_ref(pod),
            seen_at: Instant::now(),
            created_here: false,
            observed_at: None,
            refresh_at: None,
        });
        if record.instance_id != *id {
            record.instance_id = id.clone();
            record.observed_at = None;
        }
        Some(record.clone())
    }

    /// What the last listing says of the instance of pod `uid`, if it began after `since`.
    fn seen(&self, uid: &str, since: Option<Instant>) -> Seen {
        let listing = self.listing.lock().unwrap();
        match listing.at {
            Some(at) if since.is_none_or(|since| at > since) => match listing.instances.get(uid) {
                Some(listed) => Seen::Listed(listed.instance.status.clone(), at),
                None => Seen::Absent,
            },
            _ => Seen::Unknown,
        }
    }

    /// Whether `delete` is to be asked again for the deletion in progress of `uid`: once it has
    /// been in progress [`DELETE_REASK`] since this process asked or first saw it.
    fn reask_due(&self, uid: &str) -> bool {
        let mut deleting = self.deleting.lock().unwrap();
        let asked_at = &mut deleting.entry(uid.to_owned()).or_default().asked_at;
        match asked_at {
            Some(at) if at.elapsed() < DELETE_REASK => false,
            Some(at) => {
                *at = Instant::now();
                true
            }
            None => {
                *asked_at = Some(Instant::now());
                false
            }
        }
    }

    /// The wait before looking again at a deletion whose instance still exists: 50 ms, doubling
    /// up to 1 s.
    fn deletion_poll(&self, uid: &str) -> Duration {
        let mut deleting = self.deleting.lock().unwrap();
        let d = deleting.entry(uid.to_owned()).or_default();
        d.polls += 1;
        Duration::from_millis(50u64.saturating_mul(1 << (d.polls - 1).min(5))).min(Duration::from_secs(1))
    }
}

/// The order of two resourceVersions of one resource, when both are what Kubernetes 1.35 made
/// comparable (KEP-5504): positive decimal integers without leading zeros, of any length.
fn compare_versions(a: Option<&str>, b: Option<&str>) -> Option<std::cmp::Ordering> {
    let valid = |v: &str| !v.is_empty() && !v.starts_with('0') && v.bytes().all(|c| c.is_ascii_digit());
    let (a, b) = (a.filter(|v| valid(v))?, b.filter(|v| valid(v))?);
    Some(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// The wait before a failed pod's `attempt`th retry (from 1): 0.5 s, then doubling from 2 s up to
/// `max_seconds`, less up to half of it by `jitter` (0..1). Without the jitter the pods of a burst
/// that one throttling gateway failed together come back together, and the same few win again
/// while the rest double their waits, up to minutes.
fn retry_wait(attempt: u32, max_seconds: u64, jitter: f64) -> Duration {
    let attempt = attempt.max(1);
    let full = if attempt == 1 {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2u64.saturating_pow(attempt.min(16) - 1).min(max_seconds.max(1)))
    };
    full.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

pub fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Why one sync of a pod did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("pod {pod}: provider: {source}")]
    Provider { pod: String, source: CallError },
    #[error("pod {pod}: {source}")]
    Kube { pod: String, source: kube::Error },
    #[error("pod {pod}: {source}")]
    Fetch { pod: String, source: resolve::FetchError },
    #[error("pod {pod}: recording the deletion in progress: {source}")]
    Records { pod: String, source: RecordsError },
}

/// Runs the controller until `shutdown`; in-flight syncs finish first, then the Events they
/// recorded are posted (for a few seconds at most). `writer` fills the store the context was made
/// with.
pub async fn run(ctx: Arc<NodeContext>, writer: Writer<CachedPod>, shutdown: CancellationToken) {
    // The node's Events: posted until the controller and its listing task are done.
    let events_stop = CancellationToken::new();
    let events_ctx = ctx.clone();
    let events_token = events_stop.clone();
    let events =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            async move { events_ctx.events.run(events_token).await },
        ));
    let pods: Api<CachedPod> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let seen = ctx.clone();
    let filter_ctx = ctx.clone();
    let pods = watcher(pods, wc)
        .default_backoff()
        // Each pod arrives as the cache keeps it (`CachedPod`: managedFields dropped, the spec
        // as JSON).
        .modify(move |pod| {
            seen.startups.seen(&*pod);
            seen.teardowns.seen(&*pod, &seen.deleted);
        })
        .reflect(writer)
        .applied_objects()
        // The host's own writes (status, its annotations) are no reason to look at a pod again;
        // the cache above still has them, for the listing task and for the next reconcile.
        .predicate_filter(
            move |p: &CachedPod| {
                super::own_writes::others_writes(p, &HOST_ANNOTATIONS, &filter_ctx.provider_written(p))
            },
            PredicateConfig::default(),
        );
    // A new plugin build on this node may judge refused pods differently: look at every pod again.
    let versions = (ctx.plugin.subscribe_versions(), ctx.node_name.clone());
    let reloads = futures::stream::unfold(versions, |(mut rx, node)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.concerns(&node) => return Some(((), (rx, node))),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    // The pods the listing task saw change (or lose their instance) are reconciled.
    let (listed_tx, listed_rx) = futures::channel::mpsc::unbounded();
    let mut controller = Controller::for_stream(pods, ctx.store.clone())
        .reconcile_all_on(reloads)
        .reconcile_on(listed_rx)
        .with_config(ControllerConfig::default().concurrency(ctx.settings.workers));
    // A changed ConfigMap or Secret reconciles the pods referencing it (changes queued for them).
    if let Some(changed) = ctx.references.triggers() {
        controller = controller.reconcile_on(changed);
    }
    let list_ctx = ctx.clone();
    let list_shutdown = shutdown.clone();
    let listing = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        listing_loop(list_ctx, listed_tx, list_shutdown).await
    }));
    let token = shutdown.clone();
    let running = controller
        .graceful_shutdown_on(async move { token.cancelled().await })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "pod controller");
            }
        });
    // Graceful shutdown lets in-flight syncs finish; but kube-runtime's controller never ends
    // when stopped before its cache is ready, so bound the wait.
    let deadline = async {
        shutdown.cancelled().await;
        let ready = futures::FutureExt::now_or_never(ctx.store.wait_until_ready()).is_some();
        if ready {
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    };
    tokio::select! {
        _ = running => {}
        _ = deadline => tracing::info!(node = %ctx.node_name, "pod controller stopped without waiting for the rest of its syncs"),
    }
    let _ = listing.await;
    ctx.references.stop();
    events_stop.cancel();
    let _ = events.await;
}

async fn reconcile(cached: Arc<CachedPod>, ctx: Arc<NodeContext>) -> Result<Action, SyncError> {
    let started = Instant::now();
    let pod = cached.pod();
    ctx.metrics.reconciled(&ctx.node_name);
    ctx.startups.reconciling(&pod);
    ctx.teardowns.reconciling(&pod);
    let span = tracing::info_span!("pod_sync", pod = %key(&pod), node = %ctx.node_name);
    let result = tracing::Instrument::instrument(sync(&pod, &ctx), span).await;
    ctx.metrics.observe_sync(started.elapsed(), result.is_ok());
    result
}

async fn sync(pod: &Pod, ctx: &NodeContext) -> Result<Action, SyncError> {
    let uid = pod.uid().unwrap_or_default();
    // With kube-runtime's span, this says why: `RUST_LOG=vkhost::pods::sync=debug`.
    tracing::debug!(target: "vkhost::pods::sync", resource_version = ?pod.metadata.resource_version, "reconcile");
    if pod.metadata.deletion_timestamp.is_some() {
        return delete(pod, ctx).await;
    }
    // An instance made before (by this process, an earlier run or another replica): observed.
    // Without its annotation, an instance whose annotation write failed is found again by the
    // create below, idempotent by UID.
    if let Some(record) = ctx.record_of(pod) {
        if pod.finished() {
            ctx.references.untrack(&uid);
        } else {
            // Instances of an earlier run too: what they were given is taken from the watches.
            ctx.references.track(pod, None);
        }
        let token_due = record.refresh_at.is_some_and(|t| t <= Instant::now());
        let changed = ctx.references.pending(&uid);
        if token_due || !changed.is_empty() {
            return refresh(pod, ctx, token_due, changed).await;
        }
        return observe(pod, ctx, &record).await;
    }
    if pod.finished() {
        return Ok(Action::await_change());
    }
    if is_rejected(pod) {
        // The provider refused this pod as invalid: nothing to retry until the pod changes, or
        // (while it is still Pending) the plugin or the node's config the verdict rested on.
        let basis = ctx.verdict_basis();
        if pod.phase() != Some("Pending") || pod.annotations().get(REJECTED_BY_ANNOTATION) == Some(&basis) {
            return Ok(Action::await_change());
        }
        reevaluate(pod, ctx).await?;
    }
    if ctx.disabled.load(Ordering::Relaxed) {
        let msg = format!(
            "node {} is disabled: no new instances are created through it (`vkhost node enable {}`)",
            ctx.node_name, ctx.node_name
        );
        write_status(pod, ctx, status::waiting_status("Pending", "NodeDisabled", &msg)).await?;
        return Ok(Action::requeue(Duration::from_secs(15)));
    }
    if let Some(message) = out_of_pods(pod, ctx) {
        // Admission as the kubelet does it: the pod is failed, no instance is made.
        tracing::info!(pod = %key(pod), %message, "pod refused: the node is full");
        ctx.event(pod, true, "OutOfpods", message.clone());
        write_status(pod, ctx, status::waiting_status("Failed", "OutOfpods", &message)).await?;
        return Ok(Action::await_change());
    }
    create(pod, ctx).await
}

/// Annotation marking a pod the provider refused (value: the reason).
pub(super) const REJECTED_ANNOTATION: &str = "vkcube.io/rejected";
/// Annotation recording what the refusal rested on ([`NodeContext::verdict_basis`]).
pub(super) const REJECTED_BY_ANNOTATION: &str = "vkcube.io/rejected-by";

/// Clears a refusal made by another plugin build or node config, so the pod is judged again.
async fn reevaluate(pod: &Pod, ctx: &NodeContext) -> Result<(), SyncError> {
    let reason = pod.annotations().get(REJECTED_ANNOTATION).cloned().unwrap_or_default();
    let cleared = Annotations::from_iter([
        (REJECTED_ANNOTATION.into(), Value::Null),
        (REJECTED_BY_ANNOTATION.into(), Value::Null),
    ]);
    write_pod(pod, ctx, cleared, None).await.map_err(|source| SyncError::Kube { pod: key(pod), source })?;
    let note = format!(
        "refused before ({reason}) by another provider plugin build or node config; judging the pod again with {}",
        ctx.verdict_basis()
    );
    ctx.event(pod, false, "ProviderRefusalReevaluated", note);
    Ok(())
}

/// Whether admitting `pod` would put more than `max_pods` pods on the node; the kubelet's
/// message when so. Pods are admitted in creation order, as a kubelet admits them: those with an
/// instance, and older ones still waiting for theirs, count; finished and refused ones do not.
fn out_of_pods(pod: &Pod, ctx: &NodeContext) -> Option<String> {
    let capacity = ctx.max_pods.load(Ordering::Relaxed) as usize;
    let order =
        |p: &dyn PodView| (p.meta().creation_timestamp.clone().map(|t| t.0), p.meta().uid.clone().unwrap_or_default());
    let mine = order(pod);
    let uid = pod.uid().unwrap_or_default();
    let instances = ctx.instances.lock().unwrap().keys().cloned().collect::<std::collections::HashSet<_>>();
    let used = ctx
        .pods()
        .iter()
        .filter(|p| p.uid().unwrap_or_default() != uid)
        .filter(|p| {
            let admitted =
                instances.contains(&p.uid().unwrap_or_default()) || p.annotations().contains_key(INSTANCE_ANNOTATION);
            admitted
                || (!p.finished()
                    && !is_rejected(p.as_ref())
                    && p.metadata.deletion_timestamp.is_none()
                    && order(p.as_ref()) < mine)
        })
        .count();
    (used >= capacity).then(|| {
        format!(
            "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {capacity}"
        )
    })
}

fn is_rejected(pod: &impl ResourceExt) -> bool {
    pod.annotations().contains_key(REJECTED_ANNOTATION)
}

async fn create(pod: &Pod, ctx: &NodeContext) -> Result<Action, SyncError> {
    let k = key(pod);
    let uid = pod.uid().unwrap_or_default();
    let refs = resolve::fetch(&ctx.client, &ctx.references, pod)
        .await
        .map_err(|source| SyncError::Fetch { pod: k.clone(), source })?;
    ctx.startups.lap(pod, Stage::Fetch);
    let resolution = match resolve::resolve(pod, &refs) {
        Ok(r) => r,
        Err(missing) => return wait_for_missing(pod, ctx, missing).await,
    };
    ctx.told_missing.lock().unwrap().remove(&uid);
    for (reason, note) in &resolution.warnings {
        ctx.event(pod, true, reason, note.clone());
    }
    let attempt = ctx.create_attempts.begin(pod, ctx.plugin.fence_of(&ctx.node_name).as_ref());
    let asked = Instant::now();
    let outcome = match ctx.plugin.create(&ctx.call, &resolution.pod, attempt).await {
        Ok(o) => o,
        Err(CallError::Provider(ProviderError::Invalid(inv))) => {
            let message = format!("{}: {}", inv.field, inv.message);
            return refuse(pod, ctx, &inv.reason, message).await;
        }
        // The provider cannot run this pod at all: failed like an invalid one, never retried
        // (until the plugin or the node's config changes).
        Err(CallError::Unsupported(message)) => return refuse(pod, ctx, "ProviderUnsupported", message).await,
        Err(e) => {
            let (reason, phase_reason) = match &e {
                CallError::Provider(ProviderError::QuotaExceeded(_)) => {
                    ("ProviderQuotaExceeded", "ProviderQuotaExceeded")
                }
                _ => ("ProviderCreateFailed", "ProviderFailed"),
            };
            ctx.event(pod, true, reason, format!("{e}; retrying"));
            write_status(pod, ctx, status::waiting_status("Pending", phase_reason, &e.to_string())).await?;
            return Err(SyncError::Provider { pod: k, source: e });
        }
    };
    ctx.startups.lap(pod, Stage::Create);
    let refresh_at = token_refresh_at(&resolution.pod.tokens);
    // From now on a change of what the pod references is told to the provider.
    ctx.references.track(pod, Some(&refs));
    let mut annotations = Annotations::new();
    annotations.insert(INSTANCE_ANNOTATION.into(), json!(outcome.instance_id));
    let given = references::annotation(&references::given(pod, Some(&refs)));
    if !given.is_empty() {
        annotations.insert(references::GIVEN_ANNOTATION.into(), json!(given));
    }
    for kv in &outcome.annotations {
        annotations.insert(kv.key.clone(), json!(kv.value));
    }
    // Known before the write is sent, so its watch event finds it.
    if !outcome.annotations.is_empty() {
        let written = outcome.annotations.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
        ctx.provider_annotations.lock().unwrap().insert(uid.clone(), written);
    }
    // The annotations and the status in one write (see the module doc), then the events, which
    // say how the pod got there. A failed write is the next, idempotent, create's to make again
    // (a pod gone meanwhile leaves an orphan, which the listing task deletes).
    let next =
        status::pod_status_json(&outcome.status, &ctx.host_ip, &outcome.instance_id, ctx.shown_status(pod).as_ref());
    write_pod(pod, ctx, annotations, Some(next)).await.map_err(|source| SyncError::Kube { pod: k, source })?;
    ctx.reset_backoff(&uid);
    // The annotation is written: the instance is the pod's, and cached as such.
    ctx.instances.lock().unwrap().insert(
        uid.clone(),
        InstanceRecord {
            instance_id: outcome.instance_id.clone(),
            pod: NodeContext::pod_ref(pod),
            seen_at: asked,
            created_here: true,
            observed_at: Some(asked),
            refresh_at,
        },
    );
    tell_created(pod, ctx, &outcome);
    Ok(next_poll(&outcome.status.phase, refresh_at))
}

/// One Normal Event tells of a create: the provider's first Normal one (its words for what it
/// made, such as a Cube's size) with the instance and the plugin build that made it added, or
/// `ProviderCreateSuccess` when the provider said nothing; the provider's other Events follow as
/// they are. An Event is a write to the apiserver as costly as the pod's status: at 1,600 pods
/// over 8 nodes the two Events every start used to post were half of the daemon's writes.
fn tell_created(pod: &Pod, ctx: &NodeContext, outcome: &crate::plugin::PodOutcome) {
    let made =
        format!("instance {} with {}", outcome.instance_id, crate::plugin::label(&ctx.plugin.info_for(&ctx.node_name)));
    let first_normal = outcome.events.iter().position(|ev| ev.kind == EventKind::Normal);
    if first_normal.is_none() {
        ctx.event(pod, false, "ProviderCreateSuccess", format!("created {made}"));
    }
    for (i, ev) in outcome.events.iter().enumerate() {
        let note = if Some(i) == first_normal { format!("{} ({made})", ev.message) } else { ev.message.clone() };
        ctx.event(pod, ev.kind == EventKind::Warning, &ev.reason, note);
    }
}

/// The provider refused the pod for good (`invalid`, `unsupported`): an Event, and in one write
/// the refusal and what it rested on in annotations and the pod failed with `reason` and
/// `message`.
async fn refuse(pod: &Pod, ctx: &NodeContext, reason: &str, message: String) -> Result<Action, SyncError> {
    tracing::info!(pod = %key(pod), %reason, %message, "provider refused the pod");
    ctx.event(pod, true, reason, message.clone());
    let annotations = Annotations::from_iter([
        (REJECTED_ANNOTATION.into(), json!(reason)),
        (REJECTED_BY_ANNOTATION.into(), json!(ctx.verdict_basis())),
    ]);
    unless_gone(pod, write_pod(pod, ctx, annotations, Some(status::rejected_status(pod, reason, &message))).await)?;
    Ok(Action::await_change())
}

/// A mandatory object is missing: say so once, create nothing, look again shortly.
async fn wait_for_missing(pod: &Pod, ctx: &NodeContext, missing: Missing) -> Result<Action, SyncError> {
    let uid = pod.uid().unwrap_or_default();
    let message = missing.to_string();
    let first = ctx.told_missing.lock().unwrap().insert(uid, message.clone()).as_ref() != Some(&message);
    if first {
        ctx.event(pod, true, &missing.reason(), message.clone());
        write_status(pod, ctx, status::waiting_status("Pending", "CreateContainerConfigError", &message)).await?;
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// The next look at a pod's status: soon while it is starting, rarely once it runs (the
/// listing task hands over running pods whose status changed).
fn next_poll(phase: &PodPhase, refresh_at: Option<Instant>) -> Action {
    let base = if *phase == PodPhase::Pending { Duration::from_millis(1000) } else { Duration::from_secs(300) };
    match refresh_at {
        Some(t) => Action::requeue(base.min(t.saturating_duration_since(Instant::now()))),
        None => Action::requeue(base),
    }
}

fn token_refresh_at(tokens: &[crate::plugin::ServiceAccountToken]) -> Option<Instant> {
    tokens
        .iter()
        .filter_map(|t| t.expires_at.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|exp| {
            let left = exp.as_second() - k8s_openapi::jiff::Timestamp::now().as_second();
            // Renew at 80% of the remaining lifetime, as the kubelet does.
            Instant::now() + Duration::from_secs((left.max(0) as u64) * 4 / 5)
        })
        .min()
}

/// What changed pushed to the instance through `update`: fresh tokens when they are due
/// (`token_due`), and the `changed` ConfigMaps and Secrets the pod references. The changes stay
/// queued until `update` succeeds (a failure is retried as any other).
async fn refresh(pod: &Pod, ctx: &NodeContext, token_due: bool, changed: Vec<Change>) -> Result<Action, SyncError> {
    let k = key(pod);
    let uid = pod.uid().unwrap_or_default();
    let refs = resolve::fetch(&ctx.client, &ctx.references, pod)
        .await
        .map_err(|source| SyncError::Fetch { pod: k.clone(), source })?;
    let Ok(resolution) = resolve::resolve(pod, &refs) else {
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let mut changes: Vec<PodChange> = Vec::new();
    if token_due {
        for token in &resolution.pod.tokens {
            let change = PodChange::Token(token.volume_name.clone());
            if !changes.contains(&change) {
                changes.push(change);
            }
        }
    }
    changes.extend(changed.iter().map(PodChange::from));
    // What the instance is given of the changed objects goes on the pod with the status the
    // update answers, in one write.
    let given = if changed.is_empty() { Annotations::new() } else { given_annotation(pod, &refs) };
    let outcome = match update(pod, ctx, &resolution.pod, &changes, given.clone()).await {
        Ok(outcome) => Some(outcome),
        // The provider cannot update instances at all: said once, never asked again for this
        // pod's token (its instance keeps the one it has) nor these changes.
        Err(SyncError::Provider { source: CallError::Unsupported(why), .. }) => {
            if token_due && let Some(r) = ctx.instances.lock().unwrap().get_mut(&uid) {
                r.refresh_at = None;
            }
            let mut what = Vec::new();
            if token_due {
                what.push("service-account token not renewed".to_string());
            }
            if !changed.is_empty() {
                what.push(describe(&changed));
            }
            ctx.event(pod, true, "ProviderUpdateUnsupported", format!("{}: {why}", what.join("; ")));
            None
        }
        // The provider refuses the pod as it is now (say, mounted data grew past a limit): a retry
        // would not do better; the pod says so and the changes go, as a not-applied answer would.
        Err(SyncError::Provider { source: CallError::Provider(ProviderError::Invalid(inv)), .. })
            if !changed.is_empty() =>
        {
            let message = format!("{}: {}: {}", describe(&changed), inv.field, inv.message);
            ctx.event(pod, true, &inv.reason, message);
            None
        }
        Err(e) => return Err(e),
    };
    ctx.references.applied(pod, &changed, &refs);
    if !changed.is_empty() {
        tracing::info!(pod = %k, changes = ?changed, applied = outcome.is_some(), "told the provider what changed");
        if outcome.is_none() {
            record_given(pod, ctx, given).await;
        }
    }
    if token_due
        && outcome.is_some()
        && let Some(r) = ctx.instances.lock().unwrap().get_mut(&uid)
    {
        r.refresh_at = token_refresh_at(&resolution.pod.tokens);
    }
    if token_due && outcome.is_some() {
        ctx.event(pod, false, "TokenRefreshed", "service-account token renewed on the instance".into());
    }
    let phase = outcome.map_or(PodPhase::Running, |o| o.outcome.status.phase);
    Ok(next_poll(&phase, ctx.instances.lock().unwrap().get(&uid).and_then(|r| r.refresh_at)))
}

/// The annotation that records on the pod what its instance now has of the objects it references,
/// so a restart or a failover compares the watches' first answers with that.
fn given_annotation(pod: &Pod, fetched: &resolve::References) -> Annotations {
    let given = references::annotation(&references::given(pod, Some(fetched)));
    Annotations::from_iter([(references::GIVEN_ANNOTATION.into(), json!(given))])
}

/// Writes [`given_annotation`] alone, when no update answer carries it. A failure is logged: the
/// next change records it again, and until then a restart misses at most the changes made
/// meanwhile.
async fn record_given(pod: &Pod, ctx: &NodeContext, annotations: Annotations) {
    if let Err(e) = write_pod(pod, ctx, annotations, None).await {
        tracing::warn!(pod = %key(pod), error = %e, "could not record what the instance was given");
    }
}

/// The changed objects, for a message: `ConfigMap app-config, Secret creds`.
fn describe(changed: &[Change]) -> String {
    let names: Vec<String> = changed
        .iter()
        .map(|c| match c {
            Change::ConfigMap(n) => format!("ConfigMap {n}"),
            Change::Secret(n) => format!("Secret {n}"),
        })
        .collect();
    format!("the change of {} was not applied to the running instance", names.join(", "))
}

/// Tells the provider what changed in a running pod (`resolved` is the pod as it is now): each
/// change it could not apply becomes a Warning Event on the pod with its reason and message, its
/// events are recorded and the status it reports is written, with `annotations` in the same
/// write. A failed call is the caller's to retry with the same changes.
async fn update(
    pod: &Pod,
    ctx: &NodeContext,
    resolved: &ResolvedPod,
    changes: &[PodChange],
    annotations: Annotations,
) -> Result<UpdateOutcome, SyncError> {
    let outcome = ctx
        .plugin
        .update(&ctx.call, resolved, changes)
        .await
        .map_err(|source| SyncError::Provider { pod: key(pod), source })?;
    for not_applied in &outcome.not_applied {
        tracing::info!(pod = %key(pod), change = ?not_applied.change, reason = %not_applied.reason, "provider did not apply a change");
        ctx.event(pod, true, &not_applied.reason, not_applied.message.clone());
    }
    for ev in &outcome.outcome.events {
        ctx.event(pod, ev.kind == EventKind::Warning, &ev.reason, ev.message.clone());
    }
    let o = &outcome.outcome;
    let next = status::pod_status_json(&o.status, &ctx.host_ip, &o.instance_id, ctx.shown_status(pod).as_ref());
    unless_gone(pod, write_pod(pod, ctx, annotations, Some(next)).await)?;
    Ok(outcome)
}

/// Brings the pod's status up to date with its instance: from the last listing when it is newer
/// than what was last observed, else from the provider's `status`. An instance the provider no
/// longer has is lost: when `status` says so, or a listing did not show it for [`LOST_GRACE`]
/// after this process learned of it (a provider's list may lag its create); an instance this
/// process made moments ago is asked about again later.
async fn observe(pod: &Pod, ctx: &NodeContext, record: &InstanceRecord) -> Result<Action, SyncError> {
    let uid = pod.uid().unwrap_or_default();
    let known_long = record.seen_at.elapsed() >= LOST_GRACE;
    let young = record.created_here && !known_long;
    let not_found = || Err(CallError::Provider(ProviderError::NotFound(record.instance_id.clone())));
    let (report, at) = match ctx.seen(&uid, record.observed_at) {
        Seen::Listed(status, at) => (Ok(status), at),
        Seen::Absent if known_long => (not_found(), Instant::now()),
        Seen::Absent | Seen::Unknown => {
            let at = Instant::now();
            let report = ctx.plugin.status(&ctx.call, &NodeContext::pod_ref(pod)).await;
            ctx.startups.lap(pod, Stage::ProviderStatus);
            (report, at)
        }
    };
    match report {
        Ok(report) => {
            let next =
                status::pod_status_json(&report, &ctx.host_ip, &record.instance_id, ctx.shown_status(pod).as_ref());
            write_status(pod, ctx, next).await?;
            ctx.reset_backoff(&uid);
            let mut instances = ctx.instances.lock().unwrap();
            let refresh_at = instances.get_mut(&uid).and_then(|r| {
                r.observed_at = Some(at);
                r.refresh_at
            });
            Ok(next_poll(&report.phase, refresh_at))
        }
        // Made moments ago: looked at again once the listing has had time to show it.
        Err(CallError::Provider(ProviderError::NotFound(_))) if young => {
            Ok(Action::requeue(Duration::from_secs(ctx.settings.status_sync_seconds.max(1))))
        }
        Err(CallError::Provider(ProviderError::NotFound(_))) => lost(pod, ctx, record).await,
        Err(source) => Err(SyncError::Provider { pod: key(pod), source }),
    }
}

/// The provider no longer has the pod's instance: a pod not finished yet is failed (as a kubelet
/// fails a pod whose sandbox vanished); nothing is made again for it.
async fn lost(pod: &Pod, ctx: &NodeContext, record: &InstanceRecord) -> Result<Action, SyncError> {
    let uid = pod.uid().unwrap_or_default();
    ctx.forget_instance(&uid);
    ctx.references.untrack(&uid);
    if !pod.finished() {
        let message = format!("instance {} of this pod no longer exists in the provider", record.instance_id);
        ctx.event(pod, true, "ProviderInstanceLost", message.clone());
        write_status(pod, ctx, status::waiting_status("Failed", "ProviderInstanceLost", &message)).await?;
    }
    Ok(Action::await_change())
}

/// Deletes the instance, then the pod object (grace 0, UID precondition) as soon as the provider
/// says the instance is gone — not after the whole grace period. A deletion in progress is
/// recorded first, with the work the provider hands over to finish once the instance is gone;
/// reconcile never waits for it: it requeues the pod and looks again (`status`) when the provider
/// said to, then sooner and sooner up to every second. Once the instance is gone the handed-over
/// work is tried at once, and on failure left to the listing task (the pod object goes
/// regardless: what is left concerns the backend, not the pod).
async fn delete(pod: &Pod, ctx: &NodeContext) -> Result<Action, SyncError> {
    let k = key(pod);
    let uid = pod.uid().unwrap_or_default();
    if ctx.deleted.contains(&uid) {
        // Its instance and the pod object are deleted already: another provider call, Event
        // and DELETE would each be for nothing (0.4 per pod of a 1,600-pod teardown were).
        return Ok(Action::await_change());
    }
    // The listing too: an instance whose annotation was never written is still this pod's.
    let had_instance = ctx.record_of(pod).is_some() || ctx.listing.lock().unwrap().instances.contains_key(&uid);
    if had_instance {
        let pref = NodeContext::pod_ref(pod);
        // A deletion asked before (by an earlier sync, run or replica) is not asked again: its
        // instance is looked at once due.
        let asked = ctx
            .records
            .pending_deletions()
            .into_iter()
            .find(|d| d.pod.uid == uid)
            .or_else(|| ctx.deleting.lock().unwrap().get(&uid).and_then(|d| d.unrecorded.clone()));
        match asked {
            Some(pending) if !pending.due() => {
                let wait = pending.poll_after_unix_ms.saturating_sub(records::unix_ms_now());
                return Ok(Action::requeue(Duration::from_millis(wait)));
            }
            Some(pending) => {
                if !deletion_finished(ctx, &pending).await {
                    if ctx.reask_due(&uid) {
                        match ctx.plugin.delete(&ctx.call, &pref, DeleteReason::PodDeleted).await {
                            Ok(_) | Err(CallError::Provider(ProviderError::NotFound(_))) => {}
                            Err(e) => tracing::debug!(pod = %k, error = %e, "delete asked again"),
                        }
                    }
                    return Ok(Action::requeue(ctx.deletion_poll(&uid)));
                }
            }
            None => match ctx.plugin.delete(&ctx.call, &pref, DeleteReason::PodDeleted).await {
                Ok(Deletion::Gone) | Err(CallError::Provider(ProviderError::NotFound(_))) => {}
                Ok(Deletion::InProgress(answer)) => {
                    let instance_id = ctx.record_of(pod).map(|r| r.instance_id).unwrap_or_default();
                    let pending =
                        PendingDeletion::new(pref.clone(), DeleteReason::PodDeleted, instance_id).with_pending(&answer);
                    // Recorded before waiting: a restart or a failover sees it through.
                    match ctx.records.record_deletion(pending.clone()).await {
                        Ok(()) => {}
                        // Too many at once: this one is seen through from memory only.
                        Err(RecordsError::OverLimit(why)) => {
                            tracing::warn!(pod = %k, %why, "deletion in progress not recorded");
                            ctx.deleting.lock().unwrap().entry(uid.clone()).or_default().unrecorded = Some(pending);
                        }
                        Err(source) => return Err(SyncError::Records { pod: k, source }),
                    }
                    ctx.deleting.lock().unwrap().entry(uid.clone()).or_default().asked_at = Some(Instant::now());
                    let wait = u64::from(answer.poll_after_ms).max(ctx.deletion_poll(&uid).as_millis() as u64);
                    return Ok(Action::requeue(Duration::from_millis(wait)));
                }
                Err(e) => {
                    ctx.event(pod, true, "ProviderDeleteFailed", format!("{e}; retrying"));
                    return Err(SyncError::Provider { pod: k, source: e });
                }
            },
        }
        ctx.event(pod, false, "ProviderDeleteSuccess", "instance deleted".into());
    }
    ctx.forget_instance(&uid);
    ctx.deleting.lock().unwrap().remove(&uid);
    ctx.create_attempts.forget(&uid);
    ctx.references.untrack(&uid);
    ctx.reset_backoff(&uid);
    ctx.told_missing.lock().unwrap().remove(&uid);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
        ..DeleteParams::default()
    };
    ctx.teardowns.lap(pod, super::teardown::Stage::Provider);
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(source) => return Err(SyncError::Kube { pod: k, source }),
    }
    // Remembered before the trace ends, so no watch event between sees an untimed deletion.
    ctx.deleted.insert(&uid);
    ctx.teardowns.deleted(pod, &ctx.node_name, &ctx.metrics);
    Ok(Action::await_change())
}

/// One look at a deletion in progress that is due: whether its instance is gone (and its
/// handed-over work tried). A recorded one is stepped as `deletions` does; one kept in memory
/// only (the records were full) is finalized from there, once.
async fn deletion_finished(ctx: &NodeContext, pending: &PendingDeletion) -> bool {
    if ctx.records.is_deleting(&pending.pod.uid) {
        return match finish_deletion(ctx, pending).await {
            Progress::Waiting | Progress::StatusFailed(_) => false,
            Progress::Finished | Progress::FinalizeFailed(_) | Progress::FinalizeAbandoned(_) => true,
        };
    }
    match ctx.plugin.status(&ctx.call, &pending.pod).await {
        Err(CallError::Provider(ProviderError::NotFound(_))) => {}
        _ => return false,
    }
    if !pending.finalize.is_empty()
        && let Err(e) = ctx.plugin.finalize(&ctx.call, &pending.pod, &pending.finalize).await
    {
        finalize_failed(ctx, pending, &e, true).await;
    }
    true
}

/// One step of a recorded deletion (see `deletions`), with its outcome logged and, when the
/// provider's work is abandoned, a Warning Event on the pod.
async fn finish_deletion(ctx: &NodeContext, pending: &PendingDeletion) -> Progress {
    let calls = deletions::Calls { plugin: &ctx.plugin, call: &ctx.call };
    let progress = deletions::step(&calls, &ctx.records, &ctx.finalize_retries, pending).await;
    let pod = format!("{}/{}", pending.pod.namespace, pending.pod.name);
    match &progress {
        Progress::Waiting => {}
        Progress::StatusFailed(e) => {
            tracing::debug!(node = %ctx.node_name, instance = %pending.instance_id, error = %e, "recorded deletion: status")
        }
        Progress::Finished => {
            tracing::info!(node = %ctx.node_name, %pod, instance = %pending.instance_id, finalized = !pending.finalize.is_empty(), "recorded deletion finished")
        }
        Progress::FinalizeFailed(e) => finalize_failed(ctx, pending, e, false).await,
        Progress::FinalizeAbandoned(e) => finalize_failed(ctx, pending, e, true).await,
    }
    progress
}

/// Reports a failed `finalize`: a warning in the log, and when the work is abandoned (the
/// provider refused it for good) a Warning Event on the pod, which may be gone by then.
async fn finalize_failed(ctx: &NodeContext, pending: &PendingDeletion, e: &CallError, abandoned: bool) {
    let pod = format!("{}/{}", pending.pod.namespace, pending.pod.name);
    if !abandoned {
        tracing::warn!(node = %ctx.node_name, %pod, instance = %pending.instance_id, error = %e, "finalizing a deletion failed; retrying with backoff");
        return;
    }
    tracing::warn!(node = %ctx.node_name, %pod, instance = %pending.instance_id, error = %e, "finalizing a deletion failed for good; its work is abandoned");
    let stub = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pending.pod.name.clone()),
            namespace: Some(pending.pod.namespace.clone()),
            uid: Some(pending.pod.uid.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let note = format!(
        "the provider could not finish deleting instance {} and gave up, which may leave resources behind: {e}",
        pending.instance_id
    );
    ctx.event(&stub, true, "ProviderFinalizeFailed", note);
}

/// Sees the recorded deletions through whose pod is not in the cache (reconcile sees the others
/// through): orphans', and those a previous run or another replica left, or whose `finalize`
/// failed after the pod went. A record goes once the provider's `status` says `not-found` and
/// its `finalize`, if it handed over work, succeeded.
async fn finish_deletions(ctx: &NodeContext) {
    let pods: std::collections::HashSet<String> = ctx.pods().iter().filter_map(|p| p.uid()).collect();
    for pending in ctx.records.pending_deletions() {
        if !pods.contains(&pending.pod.uid) {
            finish_deletion(ctx, &pending).await;
        }
    }
}

fn error_policy(pod: Arc<CachedPod>, err: &SyncError, ctx: Arc<NodeContext>) -> Action {
    let wait = ctx.backoff(&pod.uid().unwrap_or_default());
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "pod sync failed");
    Action::requeue(wait)
}

/// Annotations to merge into a pod's: a null value removes the key.
type Annotations = serde_json::Map<String, Value>;

/// Writes to the pod as the node, in one merge patch of its status subresource (see the module
/// doc): `annotations`, and `status` unless it shows nothing new; nothing when neither has
/// anything to write.
async fn write_pod(
    pod: &Pod,
    ctx: &NodeContext,
    annotations: Annotations,
    status: Option<Value>,
) -> Result<(), kube::Error> {
    let shown = ctx.shown_status(pod);
    let status = status.filter(|next| status::differs(shown.as_ref(), next));
    let mut patch = serde_json::Map::new();
    if !annotations.is_empty() {
        patch.insert("metadata".into(), json!({"annotations": annotations}));
    }
    if let Some(next) = status {
        patch.insert("status".into(), next);
    }
    if patch.is_empty() {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = Value::Object(patch);
    let stored = api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    if let Some(next) = patch.get("status") {
        ctx.wrote_status(pod, shown, next, stored.metadata.resource_version);
        ctx.startups.status_written(pod, next, &ctx.node_name, &ctx.metrics);
    }
    Ok(())
}

/// Writes `next` to the pod's status unless it shows nothing new.
async fn write_status(pod: &Pod, ctx: &NodeContext, next: Value) -> Result<(), SyncError> {
    unless_gone(pod, write_pod(pod, ctx, Annotations::new(), Some(next)).await)
}

/// A write's outcome, where a pod gone meanwhile has nothing left to write.
fn unless_gone(pod: &Pod, written: Result<(), kube::Error>) -> Result<(), SyncError> {
    match written {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        written => written.map_err(|source| SyncError::Kube { pod: key(pod), source }),
    }
}

/// How often the instances are listed while some are starting (from one listing's start to the
/// next).
const STARTING_SYNC: Duration = Duration::from_millis(250);
/// The same while the plugin's calls wait for its cloud-API budget (`[plugin.egress]`): every
/// node listing four times a second would spend a small budget on listings and leave creates
/// waiting behind them.
const STARTING_SYNC_UNDER_BUDGET: Duration = Duration::from_secs(1);

/// The wait before the next listing: `period`, quicker while instances start (`starting`), less
/// quick while calls waited for the plugin's budget since the last listing (`budget_waited`), and
/// slower with each listing in a row that failed (`failures`: doubling from [`STARTING_SYNC`]), so
/// a cloud that throttles or fails is not asked four times a second by listings that take the
/// calls its creates need; never slower than `period`.
fn next_listing(period: Duration, starting: bool, budget_waited: bool, failures: u32) -> Duration {
    let wait = match (starting, budget_waited) {
        (false, _) => period,
        (true, false) => STARTING_SYNC,
        (true, true) => STARTING_SYNC_UNDER_BUDGET,
    };
    let backoff = if failures == 0 { Duration::ZERO } else { STARTING_SYNC.saturating_mul(1 << failures.min(16)) };
    wait.max(backoff).min(period)
}

/// Every few seconds (every [`STARTING_SYNC`] while instances start: one call per page of
/// instances, where polling each pod would be a call per pod): one `list` call, kept as the last
/// listing for reconcile; the pods it shows a change for are handed to the controller
/// (`reconcile_on`); instances no pod owns are deleted (less often) — they cost money. Writes no
/// pod status.
async fn listing_loop(
    ctx: Arc<NodeContext>,
    triggers: UnboundedSender<ObjectRef<CachedPod>>,
    shutdown: CancellationToken,
) {
    if !cache_ready(&ctx.store, &shutdown).await {
        return;
    }
    let mut last_sweep: Option<Instant> = None;
    let period = Duration::from_secs(ctx.settings.status_sync_seconds.max(1));
    let expansions = super::expansion::Answered::default();
    let mut budget_waits = ctx.plugin.budget_stats().map(|b| b.waited);
    let mut failures = 0u32;
    loop {
        finish_deletions(&ctx).await;
        let sweep_due =
            last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(ctx.settings.orphan_sweep_seconds));
        if sweep_due {
            // Claims are read one by one (a node may not watch them): at the sweep's pace.
            for refusal in super::expansion::check(&ctx.client, &ctx.node_name, &ctx.pods(), &expansions).await {
                ctx.refuse_expansion(refusal);
            }
        }
        let listing = async {
            match list_instances(&ctx, &triggers, sweep_due).await {
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(node = %ctx.node_name, error = %e, failures, "listing instances failed");
                }
                Ok(()) => {
                    failures = 0;
                    if sweep_due {
                        last_sweep = Some(Instant::now());
                    }
                }
            }
            let waits = ctx.plugin.budget_stats().map(|b| b.waited);
            let wait = next_listing(period, ctx.startups.instances_starting(), waits > budget_waits, failures);
            budget_waits = waits;
            wait
        };
        if !listing_round(listing, period, &ctx.startups, &shutdown).await {
            return;
        }
    }
}

/// Runs one listing (`listing`, which answers the wait before the next) and waits until the next
/// is due, counted from when this one began: with a cloud that takes 100 ms per page, a listing
/// every 250 ms after the last one ended would be one every 350 ms or more. A wait of the whole
/// `period` also ends when an instance starts. False on shutdown.
async fn listing_round(
    listing: impl Future<Output = Duration>,
    period: Duration,
    startups: &Startups,
    shutdown: &CancellationToken,
) -> bool {
    let began = tokio::time::Instant::now();
    let wait = listing.await;
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = startups.instance_started(), if wait == period => true,
        _ = tokio::time::sleep_until(began + wait) => true,
    }
}

/// Waits until the pod cache has its first full list; false on shutdown. Polled rather than
/// awaited: kube-runtime's readiness signal is a oneshot channel underneath, which keeps one
/// waker, and the controller is already waiting on it, so a second waiter may never be woken
/// (which is how this loop once never ran at all).
async fn cache_ready(store: &Store<CachedPod>, shutdown: &CancellationToken) -> bool {
    loop {
        if let Some(ready) = futures::FutureExt::now_or_never(store.wait_until_ready()) {
            return ready.is_ok();
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// One listing: kept in [`NodeContext::listing`], the pods whose instance it shows changed or
/// gone sent to `triggers`, and with `sweep` the orphans deleted.
async fn list_instances(
    ctx: &NodeContext,
    triggers: &UnboundedSender<ObjectRef<CachedPod>>,
    sweep: bool,
) -> Result<(), CallError> {
    let listed_at = Instant::now();
    let instances = ctx.plugin.list(&ctx.call).await?;
    let mut phases: HashMap<String, u64> = HashMap::new();
    let listed: HashMap<String, Listed> = {
        let mut listing = ctx.listing.lock().unwrap();
        let listed: HashMap<String, Listed> = instances
            .into_iter()
            .map(|instance| {
                *phases.entry(instance.status.phase.as_str().to_owned()).or_default() += 1;
                let first_seen = listing.instances.get(&instance.pod.uid).map_or(listed_at, |l| l.first_seen);
                (instance.pod.uid.clone(), Listed { instance, first_seen })
            })
            .collect();
        listing.instances = listed.clone();
        listing.at = Some(listed_at);
        listed
    };
    ctx.metrics.set_phases(&ctx.node_name, &phases);
    let pods = ctx.pods();
    // The pods to look at: the controller observes them and writes what it finds.
    for pod in &pods {
        if pod.metadata.deletion_timestamp.is_some() || pod.finished() {
            continue;
        }
        let uid = pod.uid().unwrap_or_default();
        let Some(record) = ctx.instances.lock().unwrap().get(&uid).cloned() else { continue };
        let news = match listed.get(&uid) {
            Some(l) => {
                let shown = ctx.shown_status(pod);
                let next =
                    status::pod_status_json(&l.instance.status, &ctx.host_ip, &record.instance_id, shown.as_ref());
                status::differs(shown.as_ref(), &next)
            }
            // Gone, unless learned of moments ago or observed since this listing began.
            None => record.observed_at.is_none_or(|t| t < listed_at) && record.seen_at.elapsed() >= LOST_GRACE,
        };
        if news {
            ctx.startups.lap(pod, Stage::Requeue);
            let _ = triggers.unbounded_send(ObjectRef::from_obj(pod.as_ref()));
        }
    }
    if sweep {
        let owned: std::collections::HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        for l in listed.values().filter(|l| !owned.contains(&l.instance.pod.uid)) {
            if l.first_seen.elapsed() < ORPHAN_GRACE {
                continue;
            }
            delete_orphan(ctx, &l.instance).await;
        }
    }
    // Watches are for running pods with an instance: let go of pods gone from the cache (deleted
    // without a sync seeing it), finished, or without an instance any more.
    let running: std::collections::HashSet<String> = {
        let instances = ctx.instances.lock().unwrap();
        ctx.pods()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !p.finished())
            .filter_map(|p| p.uid())
            .filter(|uid| instances.contains_key(uid))
            .collect()
    };
    ctx.references.retain(|uid| running.contains(uid));
    ctx.provider_annotations.lock().unwrap().retain(|uid, _| running.contains(uid));
    ctx.metrics.set_reference_watches(&ctx.node_name, ctx.references.watches());
    ctx.metrics.set_service_watches(&ctx.node_name, ctx.references.service_watches());
    Ok(())
}

/// Deletes an instance no pod owns; a deletion in progress is recorded and seen through by
/// [`finish_deletions`].
async fn delete_orphan(ctx: &NodeContext, inst: &Instance) {
    let pod = format!("{}/{}", inst.pod.namespace, inst.pod.name);
    tracing::warn!(node = %ctx.node_name, instance = %inst.instance_id, %pod, "deleting orphaned instance: no pod owns it");
    let deleted = ctx.plugin.delete(&ctx.call, &inst.pod, DeleteReason::Orphaned).await;
    if let Ok(Deletion::InProgress(answer)) = &deleted {
        let pending = PendingDeletion::new(inst.pod.clone(), DeleteReason::Orphaned, inst.instance_id.clone())
            .with_pending(answer);
        if let Err(e) = ctx.records.record_deletion(pending).await {
            tracing::warn!(instance = %inst.instance_id, error = %e, "orphan deletion in progress not recorded; the next sweep sees it again");
        }
    }
    match deleted {
        Ok(_) | Err(CallError::Provider(ProviderError::NotFound(_))) => {
            ctx.forget_instance(&inst.pod.uid);
            ctx.listing.lock().unwrap().instances.remove(&inst.pod.uid);
            ctx.metrics.orphans_deleted.inc();
        }
        Err(e) => tracing::warn!(instance = %inst.instance_id, error = %e, "orphan delete failed; next sweep retries"),
    }
}

#[cfg(test)]
mod tests;
