//! The pod controller of one virtual node: a reconcile function over pods bound to the node
//! (kube-runtime's `Controller` runs it concurrently across pods and serially per pod), with an
//! explicit error policy — transient provider failures retried with capped exponential backoff
//! (upstream never retries), user errors shown on the pod and never retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::deletions::{self, Progress};
use super::references::{self, Change, ReferenceWatches};
use super::resolve::{self, Missing};
use super::startup::Stage;
use super::status;
use crate::config::PodSettings;
use crate::metrics::Metrics;
use crate::plugin::{
    CallContext, CallError, DeleteReason, Deletion, EventKind, Plugin, PodChange, PodPhase, PodRef, ProviderError,
    ResolvedPod, UpdateOutcome,
};
use crate::records::{self, NodeRecords, PendingDeletion, RecordsError};

/// Annotation recording the backend instance of a pod.
pub const INSTANCE_ANNOTATION: &str = "vkcube.io/instance-id";

/// The pod annotations only the host writes: a change of them alone is not a reason to reconcile.
pub(super) const HOST_ANNOTATIONS: [&str; 4] =
    [INSTANCE_ANNOTATION, references::GIVEN_ANNOTATION, REJECTED_ANNOTATION, REJECTED_BY_ANNOTATION];

/// What the daemon knows about one instance.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub pod: PodRef,
    /// When we created or first saw it (protects fresh instances from the orphan sweep).
    pub seen_at: Instant,
    /// When the pod's minted service-account tokens need renewing.
    pub refresh_at: Option<Instant>,
}

/// Everything the controller, the status sync and the kubelet API share for one node.
pub struct NodeContext {
    /// The node's own identity: pods bound to it, what they reference, their status, events.
    pub client: Client,
    /// The daemon's identity, for the one write NodeRestriction refuses a node: pod annotations
    /// (the instance id, a refusal, the provider's own annotations such as an EIP address).
    pub metadata_client: Client,
    pub plugin: Arc<Plugin>,
    pub node_name: String,
    pub call: CallContext,
    /// The node's InternalIP, shown as the pods' hostIP.
    pub host_ip: String,
    pub recorder: Recorder,
    pub settings: PodSettings,
    pub metrics: Arc<Metrics>,
    /// Instances by pod UID.
    pub instances: Mutex<HashMap<String, InstanceRecord>>,
    /// Set while the node is disabled (N6): no new instances.
    pub disabled: AtomicBool,
    /// The node's pod capacity: a pod bound beyond it is refused `OutOfpods`, as a kubelet does.
    pub max_pods: AtomicU32,
    /// Retry attempts by pod UID, for the backoff.
    attempts: Mutex<HashMap<String, u32>>,
    /// Pods already told about a missing object (one Event, not one per retry).
    told_missing: Mutex<HashMap<String, String>>,
    store: Mutex<Option<Store<Pod>>>,
    /// Services per namespace for service-link variables, shared by the pods' syncs.
    services: resolve::ServiceCache,
    /// The node's durable records: the deletions in progress are seen through from there.
    pub records: Arc<NodeRecords>,
    /// Backoff of the failed `finalize` calls of deletions in progress.
    finalize_retries: deletions::Retries,
    /// The ConfigMaps and Secrets the pods with an instance reference, watched for changes.
    pub references: ReferenceWatches,
    /// Where the time of each pod's start goes (`vkhost_pod_start_seconds`).
    pub startups: super::startup::Startups,
    /// The pods a create was sent for, for `create-attempt.may-exist`.
    create_attempts: super::attempts::CreateAttempts,
}

impl NodeContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        metadata_client: Client,
        plugin: Arc<Plugin>,
        node_name: String,
        config_json: String,
        host_ip: String,
        settings: PodSettings,
        metrics: Arc<Metrics>,
        records: Arc<NodeRecords>,
    ) -> Arc<Self> {
        let recorder =
            Recorder::new(client.clone(), Reporter { controller: "vkhost".into(), instance: Some(node_name.clone()) });
        // Watched with the node's identity, which reads them to resolve its pods.
        let references = ReferenceWatches::new(client.clone(), &node_name);
        Arc::new(Self {
            call: CallContext { node_name: node_name.clone(), config: config_json },
            client,
            metadata_client,
            plugin,
            node_name,
            host_ip,
            recorder,
            settings,
            metrics,
            instances: Mutex::new(HashMap::new()),
            disabled: AtomicBool::new(false),
            max_pods: AtomicU32::new(crate::config::MAX_PODS_PER_NODE),
            attempts: Mutex::new(HashMap::new()),
            told_missing: Mutex::new(HashMap::new()),
            store: Mutex::new(None),
            services: resolve::ServiceCache::new(resolve::SERVICE_TTL),
            records,
            finalize_retries: deletions::Retries::default(),
            references,
            startups: Default::default(),
            create_attempts: Default::default(),
        })
    }

    /// Pods bound to this node, as the controller's cache holds them.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.store.lock().unwrap().as_ref().map(|s| s.state()).unwrap_or_default()
    }

    /// Records an Event on a pod; failures to record are logged, never fatal.
    ///
    /// Warnings go through kube-runtime's `Recorder`, which folds a repeated warning (a retried
    /// failure) into one Event with a series count; it caches every Event it sent for six
    /// minutes to do so. Normal events here happen once per pod and transition (created,
    /// deleted, token renewed), so they are created directly: after a 1,000-pod burst the cache
    /// held 7 MiB of Events nothing would ever fold into.
    pub async fn event(&self, pod: &Pod, warning: bool, reason: &str, note: String) {
        let note = truncate(&note, 1000);
        let result = if warning {
            let ev = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note),
                action: reason.into(),
                secondary: None,
            };
            self.recorder.publish(&ev, &pod.object_ref(&())).await
        } else {
            self.normal_event(pod, reason, note).await
        };
        if let Err(e) = result {
            tracing::debug!(pod = %key(pod), error = %e, "event not recorded");
        }
    }

    /// Answers a volume expansion the node cannot do, on the claim and on the pod.
    async fn refuse_expansion(&self, refusal: super::expansion::Refusal) {
        let event = Event {
            type_: EventType::Warning,
            reason: super::expansion::REASON.into(),
            note: Some(truncate(&refusal.note, 1000)),
            action: "Expand".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &refusal.claim.object_ref(&())).await {
            tracing::debug!(error = %e, "event on the claim not recorded");
        }
        self.event(&refusal.pod, true, super::expansion::REASON, refusal.note).await;
    }

    /// An events.k8s.io/v1 Event of type Normal, as the `Recorder` would make it, without caching.
    async fn normal_event(&self, pod: &Pod, reason: &str, note: String) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let now = k8s_openapi::jiff::Timestamp::now();
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let event = K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(ns.clone()),
                name: Some(format!("{}.{:x}", pod.name_any(), now.as_nanosecond())),
                ..Default::default()
            },
            action: Some(reason.into()),
            reason: Some(reason.into()),
            note: Some(note),
            type_: Some("Normal".into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(pod.object_ref(&())),
            reporting_controller: Some("vkhost".into()),
            reporting_instance: Some(self.node_name.clone()),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &ns).create(&PostParams::default(), &event).await.map(|_| ())
    }

    /// What a provider's verdict on a pod rests on besides the pod: the plugin build and the
    /// node's config. A refusal stamped with another is judged again.
    pub fn verdict_basis(&self) -> String {
        use sha2::Digest;
        let summary = self.plugin.summary();
        let config = hex::encode(sha2::Sha256::digest(self.call.config.as_bytes()));
        let build: String = summary.load.sha256.chars().take(12).collect();
        format!("{}@{} {build} config {}", summary.info.name, summary.info.version, &config[..12])
    }

    fn pod_ref(pod: &Pod) -> PodRef {
        PodRef {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }

    fn backoff(&self, uid: &str) -> Duration {
        let mut attempts = self.attempts.lock().unwrap();
        let n = attempts.entry(uid.to_string()).or_insert(0);
        *n += 1;
        let secs = 2u64.saturating_pow((*n).min(16) - 1).min(self.settings.max_backoff_seconds.max(1));
        Duration::from_millis(if *n == 1 { 500 } else { secs * 1000 })
    }

    fn reset_backoff(&self, uid: &str) {
        self.attempts.lock().unwrap().remove(uid);
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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

/// Runs the controller until `shutdown`; in-flight syncs finish first.
pub async fn run(ctx: Arc<NodeContext>, shutdown: CancellationToken) {
    adopt(&ctx).await;
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let (store, writer) = reflector::store();
    let seen = ctx.clone();
    let pods = watcher(pods, wc)
        .default_backoff()
        // managedFields are the apiserver's field-ownership bookkeeping, about a third of a pod
        // object; nothing here reads them. Dropping them before the cache keeps the daemon's
        // memory per pod (and the pod JSON handed to the plugin) small.
        .modify(move |pod| {
            pod.managed_fields_mut().clear();
            seen.startups.seen(pod);
        })
        .reflect(writer)
        .applied_objects()
        // The host's own writes (status, its annotations) are no reason to look at a pod again;
        // the cache above still has them, for the status sync and for the next reconcile.
        .predicate_filter(|p: &Pod| super::own_writes::others_writes(p, &HOST_ANNOTATIONS), PredicateConfig::default());
    // A new plugin build may judge refused pods differently: look at every pod again.
    let reloads = futures::stream::unfold(ctx.plugin.subscribe(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.is_ok() => return Some(((), rx)),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    let mut controller = Controller::for_stream(pods, store.clone())
        .reconcile_all_on(reloads)
        .with_config(ControllerConfig::default().concurrency(ctx.settings.workers));
    // A changed ConfigMap or Secret reconciles the pods referencing it (changes queued for them).
    if let Some(changed) = ctx.references.triggers() {
        controller = controller.reconcile_on(changed);
    }
    *ctx.store.lock().unwrap() = Some(store.clone());
    let sync_ctx = ctx.clone();
    let sync_shutdown = shutdown.clone();
    let sync = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        status_sync_loop(sync_ctx, store, sync_shutdown).await
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
    let ready_store = ctx.store.lock().unwrap().clone().expect("store set above");
    let deadline = async {
        shutdown.cancelled().await;
        let ready = futures::FutureExt::now_or_never(ready_store.wait_until_ready()).is_some();
        if ready {
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    };
    tokio::select! {
        _ = running => {}
        _ = deadline => tracing::info!(node = %ctx.node_name, "pod controller stopped without waiting for the rest of its syncs"),
    }
    let _ = sync.await;
    ctx.references.stop();
}

/// At start: learn the instances the provider already holds, so no pod gets a second one.
async fn adopt(ctx: &NodeContext) {
    match ctx.plugin.list(&ctx.call).await {
        Ok(list) => {
            let mut map = ctx.instances.lock().unwrap();
            for inst in list {
                map.insert(
                    inst.pod.uid.clone(),
                    InstanceRecord {
                        instance_id: inst.instance_id,
                        pod: inst.pod,
                        seen_at: Instant::now(),
                        refresh_at: None,
                    },
                );
            }
            tracing::info!(node = %ctx.node_name, instances = map.len(), "adopted existing instances");
        }
        Err(e) => {
            tracing::warn!(node = %ctx.node_name, error = %e, "listing instances at start failed; creates stay idempotent by pod UID")
        }
    }
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<NodeContext>) -> Result<Action, SyncError> {
    let started = Instant::now();
    ctx.metrics.reconciled(&ctx.node_name);
    ctx.startups.reconciling(&pod);
    let span = tracing::info_span!("pod_sync", pod = %key(&pod), node = %ctx.node_name);
    let result = tracing::Instrument::instrument(sync(&pod, &ctx), span).await;
    ctx.metrics.observe_sync(started.elapsed(), result.is_ok());
    result
}

async fn sync(pod: &Pod, ctx: &NodeContext) -> Result<Action, SyncError> {
    let uid = pod.uid().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        return delete(pod, ctx).await;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    let known = ctx.instances.lock().unwrap().get(&uid).cloned();
    if let Some(record) = known {
        if !pod.annotations().contains_key(INSTANCE_ANNOTATION) && phase != "Succeeded" && phase != "Failed" {
            // The instance exists but writing its annotations failed (or the status sync adopted
            // it first): ask create again, idempotent by UID, for the whole outcome to write.
            return create(pod, ctx).await;
        }
        if phase == "Succeeded" || phase == "Failed" {
            ctx.references.untrack(&uid);
        } else {
            // Adopted or recovered instances too: what they were given is taken from the watches.
            ctx.references.track(pod, None);
        }
        let token_due = record.refresh_at.is_some_and(|t| t <= Instant::now());
        let changed = ctx.references.pending(&uid);
        if token_due || !changed.is_empty() {
            return refresh(pod, ctx, token_due, changed).await;
        }
        return refresh_status(pod, ctx).await;
    }
    if let Some(instance) = pod.annotations().get(INSTANCE_ANNOTATION).cloned() {
        // We made an instance for this pod before (another replica, or before a restart) but
        // the provider's list did not show it: ask for it directly before deciding.
        return recover(pod, ctx, instance).await;
    }
    if phase == "Succeeded" || phase == "Failed" {
        return Ok(Action::await_change());
    }
    if is_rejected(pod) {
        // The provider refused this pod as invalid: nothing to retry until the pod changes, or
        // (while it is still Pending) the plugin or the node's config the verdict rested on.
        let basis = ctx.verdict_basis();
        if phase != "Pending" || pod.annotations().get(REJECTED_BY_ANNOTATION) == Some(&basis) {
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
        ctx.event(pod, true, "OutOfpods", message.clone()).await;
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
    let api: Api<Pod> = Api::namespaced(ctx.metadata_client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {REJECTED_ANNOTATION: null, REJECTED_BY_ANNOTATION: null}}});
    api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| SyncError::Kube { pod: key(pod), source })?;
    let note = format!(
        "refused before ({reason}) by another provider plugin build or node config; judging the pod again with {}",
        ctx.verdict_basis()
    );
    ctx.event(pod, false, "ProviderRefusalReevaluated", note).await;
    Ok(())
}

/// Whether admitting `pod` would put more than `max_pods` pods on the node; the kubelet's
/// message when so. Pods are admitted in creation order, as a kubelet admits them: those with an
/// instance, and older ones still waiting for theirs, count; finished and refused ones do not.
fn out_of_pods(pod: &Pod, ctx: &NodeContext) -> Option<String> {
    let capacity = ctx.max_pods.load(Ordering::Relaxed) as usize;
    let order = |p: &Pod| (p.metadata.creation_timestamp.clone().map(|t| t.0), p.uid().unwrap_or_default());
    let mine = order(pod);
    let uid = pod.uid().unwrap_or_default();
    let instances = ctx.instances.lock().unwrap().keys().cloned().collect::<std::collections::HashSet<_>>();
    let used = ctx
        .pods()
        .iter()
        .filter(|p| p.uid().unwrap_or_default() != uid)
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
            let done = phase == "Succeeded" || phase == "Failed";
            let admitted =
                instances.contains(&p.uid().unwrap_or_default()) || p.annotations().contains_key(INSTANCE_ANNOTATION);
            admitted || (!done && !is_rejected(p) && p.metadata.deletion_timestamp.is_none() && order(p) < mine)
        })
        .count();
    (used >= capacity).then(|| {
        format!(
            "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {capacity}"
        )
    })
}

fn is_rejected(pod: &Pod) -> bool {
    pod.annotations().contains_key(REJECTED_ANNOTATION)
}

async fn create(pod: &Pod, ctx: &NodeContext) -> Result<Action, SyncError> {
    let k = key(pod);
    let uid = pod.uid().unwrap_or_default();
    let refs = resolve::fetch(&ctx.client, &ctx.services, pod)
        .await
        .map_err(|source| SyncError::Fetch { pod: k.clone(), source })?;
    ctx.startups.lap(pod, Stage::Fetch);
    let resolution = match resolve::resolve(pod, &refs) {
        Ok(r) => r,
        Err(missing) => return wait_for_missing(pod, ctx, missing).await,
    };
    ctx.told_missing.lock().unwrap().remove(&uid);
    for (reason, note) in &resolution.warnings {
        ctx.event(pod, true, reason, note.clone()).await;
    }
    let attempt = ctx.create_attempts.begin(pod, ctx.plugin.fence_of(&ctx.node_name).as_ref());
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
            ctx.event(pod, true, reason, format!("{e}; retrying")).await;
            write_status(pod, ctx, status::waiting_status("Pending", phase_reason, &e.to_string())).await?;
            return Err(SyncError::Provider { pod: k, source: e });
        }
    };
    ctx.startups.lap(pod, Stage::Create);
    ctx.reset_backoff(&uid);
    let refresh_at = token_refresh_at(&resolution.pod.tokens);
    ctx.instances.lock().unwrap().insert(
        uid.clone(),
        InstanceRecord {
            instance_id: outcome.instance_id.clone(),
            pod: NodeContext::pod_ref(pod),
            seen_at: Instant::now(),
            refresh_at,
        },
    );
    // From now on a change of what the pod references is told to the provider.
    ctx.references.track(pod, Some(&refs));
    let mut annotations = serde_json::Map::new();
    annotations.insert(INSTANCE_ANNOTATION.into(), json!(outcome.instance_id));
    let given = references::annotation(&references::given(pod, Some(&refs)));
    if !given.is_empty() {
        annotations.insert(references::GIVEN_ANNOTATION.into(), json!(given));
    }
    for kv in &outcome.annotations {
        annotations.insert(kv.key.clone(), json!(kv.value));
    }
    let api: Api<Pod> = Api::namespaced(ctx.metadata_client.clone(), &pod.namespace().unwrap_or_default());
    let annotate = async {
        let patch = Patch::Merge(json!({"metadata": {"annotations": annotations}}));
        let written = api.patch(&pod.name_any(), &PatchParams::default(), &patch).await;
        ctx.startups.lap(pod, Stage::Annotate);
        written.map_err(|source| SyncError::Kube { pod: k.clone(), source })
    };
    // The annotations and the status at once, each finished whatever the other's outcome
    // (neither needs the other: annotations that fail are written by the next, idempotent,
    // create), then the events: the status makes the pod Ready, the events say how it got there.
    let next =
        status::pod_status_json(&outcome.status, &ctx.host_ip, &outcome.instance_id, pod_status_value(pod).as_ref());
    let (annotated, written) = tokio::join!(annotate, write_status(pod, ctx, next));
    annotated.and(written)?;
    ctx.event(
        pod,
        false,
        "ProviderCreateSuccess",
        format!("created instance {} with {}", outcome.instance_id, crate::plugin::label(&ctx.plugin.info())),
    )
    .await;
    for ev in &outcome.events {
        ctx.event(pod, ev.kind == EventKind::Warning, &ev.reason, ev.message.clone()).await;
    }
    Ok(next_poll(&outcome.status.phase, refresh_at))
}

/// The provider refused the pod for good (`invalid`, `unsupported`): an Event, the refusal and
/// what it rested on in annotations, the pod failed with `reason` and `message`.
async fn refuse(pod: &Pod, ctx: &NodeContext, reason: &str, message: String) -> Result<Action, SyncError> {
    let k = key(pod);
    tracing::info!(pod = %k, %reason, %message, "provider refused the pod");
    ctx.event(pod, true, reason, message.clone()).await;
    let api: Api<Pod> = Api::namespaced(ctx.metadata_client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {
        REJECTED_ANNOTATION: reason,
        REJECTED_BY_ANNOTATION: ctx.verdict_basis(),
    }}});
    api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| SyncError::Kube { pod: k.clone(), source })?;
    write_status(pod, ctx, status::rejected_status(pod, reason, &message)).await?;
    Ok(Action::await_change())
}

/// A mandatory object is missing: say so once, create nothing, look again shortly.
async fn wait_for_missing(pod: &Pod, ctx: &NodeContext, missing: Missing) -> Result<Action, SyncError> {
    let uid = pod.uid().unwrap_or_default();
    let message = missing.to_string();
    let first = ctx.told_missing.lock().unwrap().insert(uid, message.clone()).as_ref() != Some(&message);
    if first {
        ctx.event(pod, true, &missing.reason(), message.clone()).await;
        write_status(pod, ctx, status::waiting_status("Pending", "CreateContainerConfigError", &message)).await?;
    }
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// The next look at a pod's status: soon while it is starting, rarely once it runs (the
/// periodic status sync covers running pods).
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
    let refs = resolve::fetch(&ctx.client, &ctx.services, pod)
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
    let outcome = match update(pod, ctx, &resolution.pod, &changes).await {
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
            ctx.event(pod, true, "ProviderUpdateUnsupported", format!("{}: {why}", what.join("; "))).await;
            None
        }
        // The provider refuses the pod as it is now (say, mounted data grew past a limit): a retry
        // would not do better; the pod says so and the changes go, as a not-applied answer would.
        Err(SyncError::Provider { source: CallError::Provider(ProviderError::Invalid(inv)), .. })
            if !changed.is_empty() =>
        {
            let message = format!("{}: {}: {}", describe(&changed), inv.field, inv.message);
            ctx.event(pod, true, &inv.reason, message).await;
            None
        }
        Err(e) => return Err(e),
    };
    ctx.references.applied(pod, &changed, &refs);
    if !changed.is_empty() {
        tracing::info!(pod = %k, changes = ?changed, applied = outcome.is_some(), "told the provider what changed");
        record_given(pod, ctx, &refs).await;
    }
    if token_due
        && outcome.is_some()
        && let Some(r) = ctx.instances.lock().unwrap().get_mut(&uid)
    {
        r.refresh_at = token_refresh_at(&resolution.pod.tokens);
    }
    if token_due && outcome.is_some() {
        ctx.event(pod, false, "TokenRefreshed", "service-account token renewed on the instance".into()).await;
    }
    let phase = outcome.map_or(PodPhase::Running, |o| o.outcome.status.phase);
    Ok(next_poll(&phase, ctx.instances.lock().unwrap().get(&uid).and_then(|r| r.refresh_at)))
}

/// Records on the pod what its instance now has of the objects it references, so a restart or a
/// failover compares the watches' first answers with that. A failure is logged: the next change
/// records it again, and until then a restart misses at most the changes made meanwhile.
async fn record_given(pod: &Pod, ctx: &NodeContext, fetched: &resolve::References) {
    let given = references::annotation(&references::given(pod, Some(fetched)));
    let api: Api<Pod> = Api::namespaced(ctx.metadata_client.clone(), &pod.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"annotations": {references::GIVEN_ANNOTATION: given}}});
    if let Err(e) = api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
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
/// events are recorded and the status it reports is written. A failed call is the caller's to
/// retry with the same changes.
pub async fn update(
    pod: &Pod,
    ctx: &NodeContext,
    resolved: &ResolvedPod,
    changes: &[PodChange],
) -> Result<UpdateOutcome, SyncError> {
    let outcome = ctx
        .plugin
        .update(&ctx.call, resolved, changes)
        .await
        .map_err(|source| SyncError::Provider { pod: key(pod), source })?;
    for not_applied in &outcome.not_applied {
        tracing::info!(pod = %key(pod), change = ?not_applied.change, reason = %not_applied.reason, "provider did not apply a change");
        ctx.event(pod, true, &not_applied.reason, not_applied.message.clone()).await;
    }
    for ev in &outcome.outcome.events {
        ctx.event(pod, ev.kind == EventKind::Warning, &ev.reason, ev.message.clone()).await;
    }
    let o = &outcome.outcome;
    let next = status::pod_status_json(&o.status, &ctx.host_ip, &o.instance_id, pod_status_value(pod).as_ref());
    write_status(pod, ctx, next).await?;
    Ok(outcome)
}

async fn recover(pod: &Pod, ctx: &NodeContext, instance_id: String) -> Result<Action, SyncError> {
    let k = key(pod);
    let uid = pod.uid().unwrap_or_default();
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    match ctx.plugin.status(&ctx.call, &NodeContext::pod_ref(pod)).await {
        Ok(report) => {
            ctx.instances.lock().unwrap().insert(
                uid,
                InstanceRecord {
                    instance_id: instance_id.clone(),
                    pod: NodeContext::pod_ref(pod),
                    seen_at: Instant::now(),
                    refresh_at: None,
                },
            );
            let next = status::pod_status_json(&report, &ctx.host_ip, &instance_id, pod_status_value(pod).as_ref());
            write_status(pod, ctx, next).await?;
            Ok(next_poll(&report.phase, None))
        }
        Err(CallError::Provider(ProviderError::NotFound(_))) => {
            if phase != "Succeeded" && phase != "Failed" {
                let message = format!("instance {instance_id} of this pod no longer exists in the provider");
                ctx.event(pod, true, "ProviderInstanceLost", message.clone()).await;
                write_status(pod, ctx, status::waiting_status("Failed", "ProviderInstanceLost", &message)).await?;
            }
            Ok(Action::await_change())
        }
        Err(source) => Err(SyncError::Provider { pod: k, source }),
    }
}

async fn refresh_status(pod: &Pod, ctx: &NodeContext) -> Result<Action, SyncError> {
    let k = key(pod);
    let uid = pod.uid().unwrap_or_default();
    let record = ctx.instances.lock().unwrap().get(&uid).cloned();
    let report = ctx.plugin.status(&ctx.call, &NodeContext::pod_ref(pod)).await;
    ctx.startups.lap(pod, Stage::ProviderStatus);
    match report {
        Ok(report) => {
            let instance = record.map(|r| r.instance_id).unwrap_or_default();
            let next = status::pod_status_json(&report, &ctx.host_ip, &instance, pod_status_value(pod).as_ref());
            write_status(pod, ctx, next).await?;
            ctx.reset_backoff(&uid);
            Ok(next_poll(&report.phase, ctx.instances.lock().unwrap().get(&uid).and_then(|r| r.refresh_at)))
        }
        Err(CallError::Provider(ProviderError::NotFound(_))) => {
            // The status sync decides about vanished instances (it sees the whole list at once).
            Ok(Action::requeue(Duration::from_secs(ctx.settings.status_sync_seconds)))
        }
        Err(source) => Err(SyncError::Provider { pod: k, source }),
    }
}

/// Deletes the instance, then the pod object (grace 0, UID precondition) as soon as the provider
/// says the instance is gone — not after the whole grace period. A deletion in progress is
/// recorded first, with the work the provider hands over to finish once the instance is gone;
/// once it is gone that work is tried at once, and on failure left to `finish_deletions` (the pod
/// object goes regardless: what is left concerns the backend, not the pod).
async fn delete(pod: &Pod, ctx: &NodeContext) -> Result<Action, SyncError> {
    let k = key(pod);
    let uid = pod.uid().unwrap_or_default();
    let had_instance =
        ctx.instances.lock().unwrap().contains_key(&uid) || pod.annotations().contains_key(INSTANCE_ANNOTATION);
    if had_instance {
        let pref = NodeContext::pod_ref(pod);
        // A deletion recorded before (by an earlier sync, run or replica) is asked again only once
        // its first poll is due, and keeps that time and its work unless the new answer has some.
        let recorded = ctx.records.pending_deletions().into_iter().find(|d| d.pod.uid == uid);
        let pending = match recorded {
            Some(pending) if !pending.due() => Some(pending),
            recorded => match ctx.plugin.delete(&ctx.call, &pref, DeleteReason::PodDeleted).await {
                Ok(Deletion::Gone) | Err(CallError::Provider(ProviderError::NotFound(_))) => recorded,
                Ok(Deletion::InProgress(answer)) => {
                    let instance_id = ctx
                        .instances
                        .lock()
                        .unwrap()
                        .get(&uid)
                        .map(|r| r.instance_id.clone())
                        .or_else(|| pod.annotations().get(INSTANCE_ANNOTATION).cloned())
                        .unwrap_or_default();
                    let mut pending =
                        PendingDeletion::new(pref.clone(), DeleteReason::PodDeleted, instance_id).with_pending(&answer);
                    if let Some(before) = recorded {
                        pending.poll_after_unix_ms = before.poll_after_unix_ms;
                        if pending.finalize.is_empty() {
                            pending.finalize = before.finalize;
                        }
                    }
                    // Recorded before waiting: a restart or a failover sees it through.
                    match ctx.records.record_deletion(pending.clone()).await {
                        Ok(()) => {}
                        // Too many at once: this one is seen through from memory only.
                        Err(RecordsError::OverLimit(why)) => {
                            tracing::warn!(pod = %k, %why, "deletion in progress not recorded")
                        }
                        Err(source) => return Err(SyncError::Records { pod: k, source }),
                    }
                    Some(pending)
                }
                Err(e) => {
                    ctx.event(pod, true, "ProviderDeleteFailed", format!("{e}; retrying")).await;
                    return Err(SyncError::Provider { pod: k, source: e });
                }
            },
        };
        if let Some(pending) = pending {
            // Polled here for a while so the pod goes as soon as its instance does.
            let deadline = Instant::now() + Duration::from_secs(10);
            let first = Duration::from_millis(pending.poll_after_unix_ms.saturating_sub(records::unix_ms_now()));
            if Instant::now() + first > deadline {
                return Ok(Action::requeue(first));
            }
            tokio::time::sleep(first).await;
            let mut wait = Duration::from_millis(50);
            loop {
                match ctx.plugin.status(&ctx.call, &pref).await {
                    Err(CallError::Provider(ProviderError::NotFound(_))) => break,
                    _ if Instant::now() > deadline => return Ok(Action::requeue(Duration::from_secs(1))),
                    _ => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(1));
                    }
                }
            }
            if ctx.records.is_deleting(&uid) {
                finish_deletion(ctx, &pending).await;
            } else if !pending.finalize.is_empty() {
                // Not recorded (over the cap): finalized from memory, once.
                if let Err(e) = ctx.plugin.finalize(&ctx.call, &pref, &pending.finalize).await {
                    finalize_failed(ctx, &pending, &e, true).await;
                }
            }
        }
        ctx.event(pod, false, "ProviderDeleteSuccess", "instance deleted".into()).await;
    }
    ctx.instances.lock().unwrap().remove(&uid);
    ctx.create_attempts.forget(&uid);
    ctx.references.untrack(&uid);
    ctx.reset_backoff(&uid);
    ctx.told_missing.lock().unwrap().remove(&uid);
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
        ..DeleteParams::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(source) => return Err(SyncError::Kube { pod: k, source }),
    }
    Ok(Action::await_change())
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
    ctx.event(&stub, true, "ProviderFinalizeFailed", note).await;
}

/// Sees the recorded deletions through: those this process started and those a previous run
/// or another replica left. A record goes once the provider's `status` says `not-found` and its
/// `finalize`, if it handed over work, succeeded.
async fn finish_deletions(ctx: &NodeContext) {
    for pending in ctx.records.pending_deletions() {
        finish_deletion(ctx, &pending).await;
    }
}

fn error_policy(pod: Arc<Pod>, err: &SyncError, ctx: Arc<NodeContext>) -> Action {
    let wait = ctx.backoff(&pod.uid().unwrap_or_default());
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "pod sync failed");
    Action::requeue(wait)
}

fn pod_status_value(pod: &Pod) -> Option<Value> {
    pod.status.as_ref().and_then(|s| serde_json::to_value(s).ok())
}

/// Writes `next` to the pod's status subresource unless it shows nothing new.
async fn write_status(pod: &Pod, ctx: &NodeContext, next: Value) -> Result<(), SyncError> {
    let current = pod_status_value(pod);
    if !status::differs(current.as_ref(), &next) {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": &next}))).await {
        Ok(_) => {
            ctx.startups.status_written(pod, &next, &ctx.node_name, &ctx.metrics);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(SyncError::Kube { pod: key(pod), source }),
    }
}

/// How often the status sync lists the instances while some are starting.
const STARTING_SYNC: Duration = Duration::from_millis(250);

/// Every few seconds: one `list` call brings every pod's status up to date, marks pods whose
/// instance vanished, and (less often) deletes instances no pod owns — they cost money.
async fn status_sync_loop(ctx: Arc<NodeContext>, store: Store<Pod>, shutdown: CancellationToken) {
    if !cache_ready(&store, &shutdown).await {
        return;
    }
    let mut last_sweep: Option<Instant> = None;
    let period = Duration::from_secs(ctx.settings.status_sync_seconds.max(1));
    let expansions = super::expansion::Answered::default();
    loop {
        finish_deletions(&ctx).await;
        let sweep_due =
            last_sweep.is_none_or(|t| t.elapsed() >= Duration::from_secs(ctx.settings.orphan_sweep_seconds));
        if sweep_due {
            // Claims are read one by one (a node may not watch them): at the sweep's pace.
            for refusal in super::expansion::check(&ctx.client, &ctx.node_name, &store.state(), &expansions).await {
                ctx.refuse_expansion(refusal).await;
            }
        }
        if let Err(e) = sync_all(&ctx, &store, sweep_due).await {
            tracing::warn!(node = %ctx.node_name, error = %e, "status sync failed");
        } else if sweep_due {
            last_sweep = Some(Instant::now());
        }
        // While instances start, their statuses come from the list every STARTING_SYNC: one
        // call per page of instances, where polling each pod would be a call per pod.
        let wait = if ctx.startups.instances_starting() { STARTING_SYNC } else { period };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ctx.startups.instance_started(), if wait == period => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Waits until the pod cache has its first full list; false on shutdown. Polled rather than
/// awaited: kube-runtime's readiness signal is a oneshot channel underneath, which keeps one
/// waker, and the controller is already waiting on it, so a second waiter may never be woken
/// (which is how this loop once never ran at all).
async fn cache_ready(store: &Store<Pod>, shutdown: &CancellationToken) -> bool {
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

async fn sync_all(ctx: &NodeContext, store: &Store<Pod>, sweep: bool) -> Result<(), CallError> {
    let listed_at = Instant::now();
    let instances = ctx.plugin.list(&ctx.call).await?;
    let pods = store.state();
    let by_uid: HashMap<String, Arc<Pod>> = pods.iter().map(|p| (p.uid().unwrap_or_default(), p.clone())).collect();
    let mut seen = std::collections::HashSet::new();
    let mut phases: HashMap<String, u64> = HashMap::new();
    for inst in &instances {
        seen.insert(inst.pod.uid.clone());
        *phases.entry(inst.status.phase.as_str().to_owned()).or_default() += 1;
        match by_uid.get(&inst.pod.uid) {
            Some(pod) if pod.metadata.deletion_timestamp.is_none() => {
                ctx.instances.lock().unwrap().entry(inst.pod.uid.clone()).or_insert_with(|| InstanceRecord {
                    instance_id: inst.instance_id.clone(),
                    pod: inst.pod.clone(),
                    seen_at: Instant::now(),
                    refresh_at: None,
                });
                let next = status::pod_status_json(
                    &inst.status,
                    &ctx.host_ip,
                    &inst.instance_id,
                    pod_status_value(pod).as_ref(),
                );
                ctx.startups.lap(pod, Stage::Requeue);
                if let Err(e) = write_status(pod, ctx, next).await {
                    tracing::debug!(error = %e, "status write");
                }
            }
            Some(_) => {}
            None if sweep => {
                let fresh = ctx
                    .instances
                    .lock()
                    .unwrap()
                    .get(&inst.pod.uid)
                    .is_some_and(|r| r.seen_at.elapsed() < Duration::from_secs(30));
                if fresh {
                    continue;
                }
                tracing::warn!(node = %ctx.node_name, instance = %inst.instance_id, pod = %format!("{}/{}", inst.pod.namespace, inst.pod.name), "deleting orphaned instance: no pod owns it");
                let deleted = ctx.plugin.delete(&ctx.call, &inst.pod, DeleteReason::Orphaned).await;
                if let Ok(Deletion::InProgress(answer)) = &deleted {
                    let pending =
                        PendingDeletion::new(inst.pod.clone(), DeleteReason::Orphaned, inst.instance_id.clone())
                            .with_pending(answer);
                    if let Err(e) = ctx.records.record_deletion(pending).await {
                        tracing::warn!(instance = %inst.instance_id, error = %e, "orphan deletion in progress not recorded; the next sweep sees it again");
                    }
                }
                match deleted {
                    Ok(_) | Err(CallError::Provider(ProviderError::NotFound(_))) => {
                        ctx.instances.lock().unwrap().remove(&inst.pod.uid);
                        ctx.metrics.orphans_deleted.inc();
                    }
                    Err(e) => {
                        tracing::warn!(instance = %inst.instance_id, error = %e, "orphan delete failed; next sweep retries")
                    }
                }
            }
            None => {}
        }
    }
    ctx.metrics.set_phases(&ctx.node_name, &phases);
    // Pods whose instance vanished from the backend.
    for pod in pods {
        let uid = pod.uid().unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if seen.contains(&uid) || pod.metadata.deletion_timestamp.is_some() || phase == "Succeeded" || phase == "Failed"
        {
            continue;
        }
        let record = ctx.instances.lock().unwrap().get(&uid).cloned();
        let Some(record) = record else { continue };
        if record.seen_at >= listed_at || record.seen_at.elapsed() < Duration::from_secs(10) {
            continue;
        }
        ctx.instances.lock().unwrap().remove(&uid);
        ctx.references.untrack(&uid);
        let message = format!("instance {} of this pod no longer exists in the provider", record.instance_id);
        ctx.event(&pod, true, "ProviderInstanceLost", message.clone()).await;
        let _ = write_status(&pod, ctx, status::waiting_status("Failed", "ProviderInstanceLost", &message)).await;
    }
    // Watches are for running pods with an instance: let go of pods gone from the cache (deleted
    // without a sync seeing it), finished, or without an instance any more.
    let running: std::collections::HashSet<String> = {
        let instances = ctx.instances.lock().unwrap();
        store
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default();
                phase != "Succeeded" && phase != "Failed"
            })
            .filter_map(|p| p.uid())
            .filter(|uid| instances.contains_key(uid))
            .collect()
    };
    ctx.references.retain(|uid| running.contains(uid));
    ctx.metrics.set_reference_watches(&ctx.node_name, ctx.references.watches());
    Ok(())
}

#[cfg(test)]
mod tests;
