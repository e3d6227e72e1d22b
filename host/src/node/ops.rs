//! Operator actions on a virtual node (N6, N7): disable (cordon; no new instances, existing kept),
//! enable, and delete (every instance through the provider — with the volumes the provider
//! deletes with them — then the Node, which the daemon will not recreate). A delete records
//! each deletion in the node's durable records before asking for it, so a delete that was
//! stopped midway is finished by the next run, even when the Node object is already gone.
//! `kubectl delete node` of a running virtual node is the same delete, finished by the daemon
//! (see `node::heartbeat`).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::DELETED_ANNOTATION;
use super::registration::DISABLED_ANNOTATION;
use crate::config::DaemonConfig;
use crate::naming::{NODE_ID_LABEL, election_lease_name};
use crate::plugin::{CallContext, CallError, DeleteReason, Deletion, Plugin, ProviderError};
use crate::pods::deletions::{self, Progress, Retries};
use crate::records::{self, NodeRecords, Owner, PendingDeletion};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("node {0} does not exist")]
    NoSuchNode(String),
    #[error("node {node} has node-id {id:?}, which is not in this config: pass the config the daemon runs with")]
    NotConfigured { node: String, id: String },
    #[error("node {node}: {source}")]
    Kube { node: String, source: kube::Error },
    #[error("node {node}: provider: {source}")]
    Provider { node: String, source: CallError },
    #[error("node {node}: {message}")]
    Other { node: String, message: String },
}

/// Cordons the node and marks it disabled: the daemon creates no new instance through it.
pub async fn disable(client: &Client, name: &str) -> Result<(), OpsError> {
    set_disabled(client, name, true).await
}

/// Undoes [`disable`].
pub async fn enable(client: &Client, name: &str) -> Result<(), OpsError> {
    set_disabled(client, name, false).await
}

async fn set_disabled(client: &Client, name: &str, disabled: bool) -> Result<(), OpsError> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(name).await.map_err(|source| OpsError::Kube { node: name.into(), source })?.is_none() {
        return Err(OpsError::NoSuchNode(name.into()));
    }
    let patch = json!({
        "metadata": {"annotations": {DISABLED_ANNOTATION: if disabled { json!("true") } else { json!(null) }}},
        "spec": {"unschedulable": disabled},
    });
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| OpsError::Kube { node: name.into(), source })?;
    Ok(())
}

/// What `delete` did.
#[derive(Debug, Default)]
pub struct DeleteReport {
    pub instances_deleted: usize,
    /// Deletions a previous, interrupted run had started and this one saw through.
    pub deletions_resumed: usize,
}

/// The config node id whose durable records belong to Node `name`, for a Node already deleted.
async fn node_id_from_records(client: &Client, config: &DaemonConfig, name: &str) -> Result<Option<String>, OpsError> {
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &config.ha.namespace);
    for n in &config.nodes {
        let cm_name = records::configmap_name(&config.cluster_id, &n.id);
        let cm = configmaps.get_opt(&cm_name).await.map_err(|source| OpsError::Kube { node: name.into(), source })?;
        let owner =
            cm.and_then(|cm| cm.metadata.annotations).and_then(|a| a.get(records::NODE_NAME_ANNOTATION).cloned());
        if owner.as_deref() == Some(name) {
            return Ok(Some(n.id.clone()));
        }
    }
    Ok(None)
}

/// Deletes every instance of the node through the provider, waits until they are gone, marks
/// the node deleted for the daemon, then deletes the Node, its heartbeat Lease and its durable
/// records. Run again after an interruption, it finishes what the records say is left.
pub async fn delete(
    client: &Client,
    plugin: &Plugin,
    config: &DaemonConfig,
    name: &str,
) -> Result<DeleteReport, OpsError> {
    let err = |source| OpsError::Kube { node: name.into(), source };
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get_opt(name).await.map_err(err)?;
    let id = match &node {
        Some(node) => node.metadata.labels.clone().unwrap_or_default().get(NODE_ID_LABEL).cloned().unwrap_or_default(),
        // Deleted by an earlier run that stopped before its records were done.
        None => node_id_from_records(client, config, name).await?.ok_or_else(|| OpsError::NoSuchNode(name.into()))?,
    };
    let settings = config
        .nodes
        .iter()
        .find(|n| n.id == id)
        .ok_or_else(|| OpsError::NotConfigured { node: name.into(), id: id.clone() })?;
    let json = settings
        .provider_json()
        .map_err(|e| OpsError::Other { node: name.into(), message: e.to_string() })?
        .to_string();
    let normalised =
        plugin.validate_config(&id, &json).await.map_err(|source| OpsError::Provider { node: name.into(), source })?;
    let call = CallContext { node_name: name.into(), config: normalised };
    let recording = |e: records::RecordsError| OpsError::Other { node: name.into(), message: e.to_string() };

    // The node's durable records: the plugin's obligations and the deletions a stopped run left.
    let owner = Owner { cluster_id: config.cluster_id.clone(), node_id: id.clone(), node_name: name.into() };
    let records = NodeRecords::load_from_cluster(client, &config.ha.namespace, owner)
        .await
        .map_err(|message| OpsError::Other { node: name.into(), message })?;
    let _registered = plugin.stores().register(name, records.clone());
    let mut report = DeleteReport { deletions_resumed: records.pending_deletions().len(), ..DeleteReport::default() };

    // Stop the daemon from acting for (and recreating) the node first.
    mark_deleted(client, &config.ha.namespace, &election_lease_name(&config.cluster_id, &id)).await.map_err(err)?;
    if node.is_some() {
        set_disabled(client, name, true).await?;
    }
    report.instances_deleted = delete_instances(plugin, &call, &records).await?;
    match nodes.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(err(e)),
    }
    let node_leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let _ = node_leases.delete(name, &DeleteParams::default()).await;
    // Nothing is left to do for the node.
    records.remove_all().await.map_err(recording)?;
    Ok(report)
}

/// Marks a node's election Lease deleted on purpose: no replica acts for (or recreates) it again.
pub async fn mark_deleted(client: &Client, namespace: &str, lease_name: &str) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let mark = json!({"metadata": {"annotations": {DELETED_ANNOTATION: "true"}}});
    match leases.patch(lease_name, &PatchParams::default(), &Patch::Merge(&mark)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease: Lease = serde_json::from_value(
                json!({"metadata": {"name": lease_name, "annotations": {DELETED_ANNOTATION: "true"}}, "spec": {}}),
            )
            .expect("a Lease");
            leases.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Deletes every instance the provider holds for the node (reason `node-deleted`: the provider
/// deletes the disks with them unless told to keep them), recording each deletion in the node's
/// durable records before asking for it, and waits until they are gone and every recorded
/// deletion is finished; returns how many instances there were.
pub async fn delete_instances(plugin: &Plugin, call: &CallContext, records: &NodeRecords) -> Result<usize, OpsError> {
    let name = call.node_name.as_str();
    let provider = |source| OpsError::Provider { node: name.into(), source };
    let recording = |e: records::RecordsError| OpsError::Other { node: name.into(), message: e.to_string() };
    let mut deleted = 0;
    for inst in &plugin.list(call).await.map_err(provider)? {
        // Recorded before it is asked for: a run stopped from here on is finished by the next.
        let pending = PendingDeletion::new(inst.pod.clone(), DeleteReason::NodeDeleted, inst.instance_id.clone());
        records.record_deletion(pending.clone()).await.map_err(recording)?;
        match plugin.delete(call, &inst.pod, DeleteReason::NodeDeleted).await {
            // The work to finish once the instance is gone joins the record.
            Ok(Deletion::InProgress(answer)) => {
                records.record_deletion(pending.with_pending(&answer)).await.map_err(recording)?;
                deleted += 1;
            }
            Ok(Deletion::Gone) | Err(CallError::Provider(ProviderError::NotFound(_))) => deleted += 1,
            Err(source) => return Err(provider(source)),
        }
    }
    // Done when the provider lists nothing and every recorded deletion is finished: `status`
    // says `not-found` and the work handed over (say, volumes to delete) is finalized.
    let deadline = Instant::now() + Duration::from_secs(120);
    let retries = Retries::default();
    loop {
        for pending in records.pending_deletions() {
            match deletions::step(&deletions::Calls { plugin, call }, records, &retries, &pending).await {
                Progress::Waiting | Progress::Finished => {}
                Progress::StatusFailed(source) => return Err(provider(source)),
                Progress::FinalizeFailed(e) => {
                    tracing::warn!(node = %name, instance = %pending.instance_id, error = %e, "finalizing a deletion failed; retrying")
                }
                Progress::FinalizeAbandoned(e) => {
                    tracing::warn!(node = %name, instance = %pending.instance_id, error = %e, "finalizing a deletion failed for good; its work is abandoned")
                }
            }
        }
        let left = plugin.list(call).await.map_err(provider)?;
        let pending = records.pending_deletions().len();
        if left.is_empty() && pending == 0 {
            return Ok(deleted);
        }
        if Instant::now() > deadline {
            return Err(OpsError::Other {
                node: name.into(),
                message: format!(
                    "{} instances still exist and {pending} deletions are unfinished after 120 s; run the delete again",
                    left.len()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
