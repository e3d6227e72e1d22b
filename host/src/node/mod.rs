//! The virtual node: one runner per configured node. A runner first wins the node's election
//! Lease (so of several daemon replicas exactly one acts), then registers the Node, keeps its
//! heartbeat Lease and status fresh, serves the kubelet API and runs the pod controller; it stops
//! acting the moment it loses the election, and writes nothing once its claim may have lapsed
//! (the node's [`Fence`]).

pub mod identity;
pub mod lease;
pub mod ops;
pub mod registration;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{DaemonConfig, NodeSettings};
use crate::fence::Fence;
use crate::kubelet::KubeletServer;
use crate::metrics::Metrics;
use crate::naming::election_lease_name;
use crate::plugin::{CallContext, Plugin};
use crate::pods::{self, NodeBackend, NodeContext};
use crate::records::{self, NodeRecords};
use lease::Claim;
use registration::{DISABLED_ANNOTATION, NodeShape};

/// Annotation on an election Lease saying the node was deleted on purpose: do not recreate it.
pub const DELETED_ANNOTATION: &str = "vkcube.io/node-deleted";

/// Everything the node runners share.
pub struct Shared {
    /// The daemon's own (bootstrap) identity: election Leases, node discovery and metadata,
    /// certificate requests, the nodes' records; node work (pods, their status and annotations,
    /// Events) goes through each node's own identity.
    pub client: Client,
    /// The bootstrap connection settings, which node identities reuse (apiserver URL and CA).
    pub base: kube::Config,
    /// `[api] max_in_flight`, shared by `client` and every node's pod lane.
    pub api_in_flight: Arc<tokio::sync::Semaphore>,
    pub plugin: Arc<Plugin>,
    pub config: DaemonConfig,
    pub identity: String,
    pub metrics: Arc<Metrics>,
    /// The node identities in use, by node name (operators and tests look at their certificates).
    pub node_identities: std::sync::Mutex<std::collections::BTreeMap<String, Arc<identity::NodeIdentity>>>,
}

impl Shared {
    /// The identity node `name` acts with, when it has its own (`[api] node_credentials = "csr"`).
    pub fn node_identity(&self, name: &str) -> Option<Arc<identity::NodeIdentity>> {
        self.node_identities.lock().unwrap().get(name).cloned()
    }
}

/// First wait before acting for a node again after acting failed; it doubles up to the max.
const ACT_RETRY_FIRST: Duration = Duration::from_secs(1);
const ACT_RETRY_MAX: Duration = Duration::from_secs(60);

/// Runs one configured node until `shutdown`: waits for leadership, acts while it holds it.
pub async fn run(shared: Arc<Shared>, settings: NodeSettings, shutdown: CancellationToken) {
    let ha = shared.config.ha.clone();
    let lease_name = election_lease_name(&shared.config.cluster_id, &settings.id);
    let renew = Duration::from_secs((ha.lease_duration_seconds / 3).max(1) as u64);
    let claim =
        || lease::try_claim(&shared.client, &ha.namespace, &lease_name, &shared.identity, ha.lease_duration_seconds);
    // Every write for the node, to the apiserver or through the plugin, passes this fence.
    let fence = Fence::new(&settings.id, Duration::from_secs(ha.lease_duration_seconds.into()), shared.metrics.clone());
    shared.plugin.fence_node(&settings.id, fence.clone());
    let mut waiting_logged = false;
    let mut failures = 0u32;
    loop {
        // Wait to become the actor for this node. A claim's instant is taken before the claim
        // stamps `renewTime`, so the fence never outlasts what a standby reads (see `fence`).
        let claimed = loop {
            let sent = tokio::time::Instant::now();
            match claim().await {
                Ok(Claim::Held) => break sent,
                Ok(Claim::HeldBy(holder)) => {
                    if !waiting_logged {
                        tracing::info!(node = %settings.id, %holder, "standing by: another replica acts for this node");
                        waiting_logged = true;
                    }
                }
                Err(e) => tracing::warn!(node = %settings.id, error = %e, "election lease"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(renew) => {}
            }
        };
        waiting_logged = false;
        if node_was_deleted(&shared, &lease_name).await {
            // Another replica (or `vkhost node delete`) deleted the node: it stays deleted.
            tracing::info!(node = %settings.id, "the node was deleted; not acting for it");
            return;
        }
        tracing::info!(node = %settings.id, identity = %shared.identity, "acting for node");
        let term = shutdown.child_token();
        fence.arm(claimed, term.clone());
        // Aborted with this runner, so a crashed (aborted) daemon stops acting at once.
        let mut acting =
            AbortOnDropHandle::new(tokio::spawn(act(shared.clone(), settings.clone(), fence.clone(), term.clone())));
        let acting_since = tokio::time::Instant::now();
        // Keep the claim; step down when it cannot be renewed before it lapses, or when acting
        // ended on its own (a failure: say, the node's certificate was not issued in time).
        let mut last_renewed = tokio::time::Instant::now();
        let mut ended = None;
        let lost = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break false,
                _ = term.cancelled() => break false,
                r = &mut acting => {
                    ended = Some(r);
                    break false;
                }
                _ = tokio::time::sleep(renew) => {}
            }
            if !fence.holds() {
                // Paused or starved past the fence: a standby may be acting already. Claim afresh
                // before acting again.
                tracing::warn!(node = %settings.id, "fenced: the election lease lapsed before it was renewed; stepping down");
                break true;
            }
            let sent = tokio::time::Instant::now();
            match claim().await {
                Ok(Claim::Held) => {
                    last_renewed = sent;
                    fence.renewed(sent);
                }
                Ok(Claim::HeldBy(holder)) => {
                    tracing::warn!(node = %settings.id, %holder, "lost the election lease; stepping down");
                    break true;
                }
                Err(e) => {
                    if last_renewed.elapsed() > Duration::from_secs(ha.lease_duration_seconds as u64) - renew {
                        tracing::warn!(node = %settings.id, error = %e, "cannot renew the election lease; stepping down");
                        break true;
                    }
                }
            }
        };
        if lost {
            // Nothing more goes out for the node, even while acting winds down.
            fence.disarm();
        }
        term.cancel();
        let outcome = match ended {
            Some(r) => r,
            None => (&mut acting).await,
        };
        fence.disarm();
        let failed = !matches!(outcome, Ok(Ok(())));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(node = %settings.id, error = %e, "node runner failed"),
            Err(e) => tracing::error!(node = %settings.id, error = %e, "node runner panicked"),
        }
        if failed && !shutdown.is_cancelled() {
            // Hand the node to another replica (it may fare better) and try again later, rather
            // than hold the election while nobody acts.
            failures = if acting_since.elapsed() > ACT_RETRY_MAX { 1 } else { failures + 1 };
            let backoff = ACT_RETRY_FIRST.saturating_mul(1 << failures.min(6)).min(ACT_RETRY_MAX);
            let _ = lease::release(&shared.client, &ha.namespace, &lease_name, &shared.identity).await;
            tracing::warn!(node = %settings.id, retry_in_s = backoff.as_secs(), "acting for the node failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            continue;
        }
        if shutdown.is_cancelled() {
            // Hand over at once instead of making a standby wait out the lease.
            let _ = lease::release(&shared.client, &ha.namespace, &lease_name, &shared.identity).await;
            return;
        }
        if !lost && node_was_deleted(&shared, &lease_name).await {
            tracing::info!(node = %settings.id, "node was deleted with `vkhost node delete`; not acting for it any more");
            return;
        }
    }
}

async fn node_was_deleted(shared: &Shared, lease_name: &str) -> bool {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(shared.client.clone(), &shared.config.ha.namespace);
    leases
        .get_opt(lease_name)
        .await
        .ok()
        .flatten()
        .is_some_and(|l| l.metadata.annotations.unwrap_or_default().contains_key(DELETED_ANNOTATION))
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: provider config: {message}")]
    Config { node: String, message: String },
    #[error("node {node}: provider: {source}")]
    Provider { node: String, source: crate::plugin::CallError },
    #[error(transparent)]
    Registration(#[from] registration::RegistrationError),
    #[error("node {node}: kubelet API: {message}")]
    Kubelet { node: String, message: String },
    #[error("node {node}: {source}")]
    Kube { node: String, source: kube::Error },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("node {node}: durable records: {message}")]
    Records { node: String, message: String },
}

/// Acting for a node while we hold its election: registration, heartbeats, kubelet API, pods.
/// Every client it writes with carries `fence`; so do the plugin calls made for the node.
async fn act(
    shared: Arc<Shared>,
    settings: NodeSettings,
    fence: Fence,
    term: CancellationToken,
) -> Result<(), NodeError> {
    // The daemon's identity for the node's metadata and records, fenced as the node.
    let client =
        crate::apiclient::fenced_within(shared.base.clone(), &shared.config.api, &shared.api_in_flight, &fence)
            .map_err(|source| identity::IdentityError::Client { node: settings.id.clone(), source })?;
    let config_json = settings
        .provider_json()
        .map_err(|e| NodeError::Config { node: settings.id.clone(), message: e.to_string() })?
        .to_string();
    let normalised = shared
        .plugin
        .validate_config(&settings.id, &config_json)
        .await
        .map_err(|source| NodeError::Provider { node: settings.id.clone(), source })?;
    let plugin_info = shared.plugin.info_for(&settings.id);

    // The name is needed for the call context, but the offer is needed to create the node: ask
    // the provider with the config id first, then with the real name.
    let probe = CallContext { node_name: settings.id.clone(), config: normalised.clone() };
    let offer = shared
        .plugin
        .describe_node(&probe)
        .await
        .map_err(|source| NodeError::Provider { node: settings.id.clone(), source })?;
    let kubelet_cfg = shared.config.kubelet.clone();
    let mut shape = NodeShape {
        cluster_id: shared.config.cluster_id.clone(),
        node_id: settings.id.clone(),
        labels: settings.labels.clone(),
        taint_value: settings.taint_value.clone().unwrap_or_else(|| plugin_info.name.clone()),
        max_pods: settings.max_pods,
        address: kubelet_cfg.address.to_string(),
        kubelet_port: 0,
        plugin: plugin_info.clone(),
        plugin_source: shared.plugin.provenance(),
        offer,
    };
    let (name, exists) = registration::find_or_name(&client, &shape).await?;
    // What must still be done for the node (the plugin's obligations, deletions in progress),
    // as the last replica to act left it; the plugin's `store` reaches it from here on.
    let owner = records::Owner {
        cluster_id: shared.config.cluster_id.clone(),
        node_id: settings.id.clone(),
        node_name: name.clone(),
    };
    let records = NodeRecords::load_from_cluster(&client, &shared.config.ha.namespace, owner)
        .await
        .map_err(|message| NodeError::Records { node: name.clone(), message })?;
    let _registered = shared.plugin.stores().register(&name, records.clone());
    fence.name(&name);
    shared.plugin.fence_node(&name, fence.clone());
    shared.plugin.name_node(&settings.id, &name);
    // From here on the node acts as itself where the Node authorizer and NodeRestriction let it.
    let lanes = identity::LaneLimits {
        pods: shared.config.api.clone(),
        pods_in_flight: shared.api_in_flight.clone(),
        reviews: shared.config.kubelet.review_api_limits(),
        fence: Some(fence.clone()),
    };
    let (clients, identity) = identity::node_clients(&client, &shared.base, &name, &lanes).await?;
    let _rotation = identity.map(|id| {
        let listed = Listed::new(&shared, &name, id.clone());
        (listed, AbortOnDropHandle::new(tokio::spawn(id.keep_fresh(client.clone(), term.clone()))))
    });
    // The pod cache exists before the context that reads it; `pods::run` fills it.
    let (pod_store, pod_writer) = kube::runtime::reflector::store();
    let ctx = NodeContext::new(
        clients.pods.clone(),
        clients.events.clone(),
        shared.plugin.clone(),
        name.clone(),
        normalised.clone(),
        shape.address.clone(),
        shared.config.pods.clone(),
        shared.metrics.clone(),
        records,
        pod_store,
    );
    ctx.max_pods.store(settings.max_pods, Ordering::Relaxed);
    let backend = Arc::new(NodeBackend(ctx.clone()));
    let server = KubeletServer::start(kubelet_cfg, backend, client.clone(), clients.reviews.clone(), term.clone())
        .await
        .map_err(|e| NodeError::Kubelet { node: name.clone(), message: e.to_string() })?;
    shape.kubelet_port = server.port();
    let _server = AbortOnDropHandle::new(server.into_join_handle());
    // Node metadata stays with the daemon: NodeRestriction forbids a node the
    // `kubernetes.io/role` label and any change of its taints, both of which this reconciles.
    if !exists {
        registration::create(&client, &name, &shape).await?;
    }
    registration::reconcile_metadata(&client, &name, &shape).await?;
    registration::patch_status(&clients.heartbeat, &name, &shape)
        .await
        .map_err(|source| NodeError::Kube { node: name.clone(), source })?;
    tracing::info!(node = %name, kubelet_port = shape.kubelet_port, plugin = %crate::plugin::label(&plugin_info), "virtual node registered");

    let heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(
        shared.clone(),
        client.clone(),
        ctx.clone(),
        shape.clone(),
        clients.heartbeat.clone(),
        term.clone(),
    )));
    let reloads = AbortOnDropHandle::new(tokio::spawn(report_reloads(
        shared.clone(),
        client.clone(),
        name.clone(),
        clients.pods.clone(),
        term.clone(),
    )));
    pods::run(ctx, pod_writer, term.clone()).await;
    term.cancel();
    let _ = heartbeat.await;
    let _ = reloads.await;
    Ok(())
}

/// A node identity listed in [`Shared::node_identities`] while its node is acted for, however
/// acting ends.
struct Listed<'a> {
    shared: &'a Shared,
    node: String,
}

impl<'a> Listed<'a> {
    fn new(shared: &'a Shared, node: &str, identity: Arc<identity::NodeIdentity>) -> Self {
        shared.node_identities.lock().unwrap().insert(node.to_string(), identity);
        Listed { shared, node: node.to_string() }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.shared.node_identities.lock().unwrap().remove(&self.node);
    }
}

/// Every 10 s: renew the node Lease, refresh the status from the provider, notice a disabled
/// or deleted node (and finish the deletion of a Node someone deleted). `beat` is the node's
/// heartbeat lane, `daemon` the daemon's identity fenced as the node.
async fn heartbeat(
    shared: Arc<Shared>,
    daemon: Client,
    ctx: Arc<NodeContext>,
    mut shape: NodeShape,
    beat: Client,
    term: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(beat.clone());
    let lease_name = election_lease_name(&shared.config.cluster_id, &shape.node_id);
    loop {
        match nodes.get_opt(&ctx.node_name).await {
            Ok(Some(node)) => {
                let uid = node.metadata.uid.clone().unwrap_or_default();
                if let Err(e) = lease::renew_node_lease(&beat, &ctx.node_name, &uid).await {
                    tracing::warn!(node = %ctx.node_name, error = %e, "node lease renewal failed");
                }
                let disabled = node
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.get(DISABLED_ANNOTATION).map(String::as_str) == Some("true"));
                ctx.disabled.store(disabled, Ordering::Relaxed);
                if let Ok(offer) = shared.plugin.describe_node(&ctx.call).await {
                    shape.offer = offer;
                }
                shape.plugin = shared.plugin.info_for(&ctx.node_name);
                // Status on every beat is cheap for at most 8 nodes and keeps the conditions'
                // heartbeat times honest; the Lease is what liveness rests on.
                if let Err(e) = registration::patch_status(&beat, &ctx.node_name, &shape).await {
                    tracing::warn!(node = %ctx.node_name, error = %e, "node status update failed");
                }
            }
            Ok(None) => {
                if node_was_deleted(&shared, &lease_name).await {
                    tracing::info!(node = %ctx.node_name, "node deleted on purpose; stopping");
                    term.cancel();
                    return;
                }
                // Someone deleted the Node (`kubectl delete node`): that is the guide's "delete
                // node" (N7), so finish it as `vkhost node delete` does — no new instances, every
                // instance deleted with its disks (unless the provider keeps them), never
                // recreated. Pods bound to the node go the way of any deleted node's (PodGC).
                ctx.disabled.store(true, Ordering::Relaxed);
                match node_deleted_by_someone(&shared, &daemon, &ctx, &lease_name).await {
                    Ok(n) => {
                        tracing::warn!(node = %ctx.node_name, instances_deleted = n, "the Node was deleted (kubectl delete node): its instances were deleted and the node will not be recreated");
                        term.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(node = %ctx.node_name, error = %e, "finishing the deletion of the node failed; retrying")
                    }
                }
            }
            Err(e) => tracing::warn!(node = %ctx.node_name, error = %e, "reading the node failed"),
        }
        tokio::select! {
            _ = term.cancelled() => return,
            _ = tokio::time::sleep(lease::NODE_LEASE_RENEW) => {}
        }
    }
}

/// Finishes a deletion of the Node made in Kubernetes: marks the node deleted for every replica,
/// then deletes its instances through the provider (`daemon`: the daemon's identity, fenced as
/// the node).
async fn node_deleted_by_someone(
    shared: &Shared,
    daemon: &Client,
    ctx: &NodeContext,
    lease_name: &str,
) -> Result<usize, ops::OpsError> {
    ops::mark_deleted(daemon, &shared.config.ha.namespace, lease_name)
        .await
        .map_err(|source| ops::OpsError::Kube { node: ctx.node_name.clone(), source })?;
    ops::delete_instances(&shared.plugin, &ctx.call, &ctx.records).await
}

/// Turns plugin reload refusals and this node's version changes (a reload, a canary, a
/// promotion, a rollback, a pin) into Node Events (as the node), the plugin annotation (as the
/// daemon, fenced as the node: node metadata) and metrics.
async fn report_reloads(shared: Arc<Shared>, daemon: Client, node: String, as_node: Client, term: CancellationToken) {
    let mut reloads = shared.plugin.subscribe();
    let mut versions = shared.plugin.subscribe_versions();
    let recorder =
        Recorder::new(as_node.clone(), Reporter { controller: "vkhost".into(), instance: Some(node.clone()) });
    let nodes: Api<Node> = Api::all(as_node);
    loop {
        let (type_, reason, note, new) = tokio::select! {
            _ = term.cancelled() => return,
            ev = reloads.recv() => match ev {
                Ok(ev) => {
                    shared.metrics.reload(ev.is_ok());
                    // An admitted version is reported by the nodes it reaches, as it reaches them.
                    let Err(why) = &ev.outcome else { continue };
                    let note = format!("new provider plugin refused, {} keeps serving: {why}", crate::plugin::label(&ev.old));
                    let reason = if ev.signature_refused { "PluginSignatureRefused" } else { "PluginReloadRefused" };
                    (EventType::Warning, reason, note, None)
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
            ev = versions.recv() => match ev {
                Ok(ev) if ev.concerns(&node) => {
                    if matches!(ev.step, crate::plugin::Step::RolledBack { .. }) {
                        shared.metrics.rollback(&node);
                    }
                    let (warning, reason, note) = ev.node_event();
                    let type_ = if warning { EventType::Warning } else { EventType::Normal };
                    (type_, reason, note, Some(ev.to))
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
        };
        if let Ok(Some(n)) = nodes.get_opt(&node).await {
            let event =
                Event { type_, reason: reason.into(), note: Some(note), action: "Reload".into(), secondary: None };
            let _ = recorder.publish(&event, &n.object_ref(&())).await;
        }
        if let Some(new) = &new {
            let source = shared.plugin.provenance_for(&node);
            let _ = registration::annotate_plugin(&daemon, &node, new, source.as_ref()).await;
        }
    }
}
