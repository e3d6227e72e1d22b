//! Operator actions on a virtual node (N6, N7): disable (cordon; no new instances, existing kept),
//! enable, and delete (every instance through the provider — with the volumes the provider
//! deletes with them — then the Node, which the daemon will not recreate). `kubectl delete node`
//! of a running virtual node is the same delete, finished by the daemon (see `node::heartbeat`).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::naming::NODE_ID_LABEL;
use super::registration::DISABLED_ANNOTATION;
use super::{DELETED_ANNOTATION, election_lease_name};
use crate::config::DaemonConfig;
use crate::plugin::{CallContext, CallError, DeleteReason, Plugin, ProviderError};

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
}

/// Deletes every instance of the node through the provider, waits until they are gone, marks
/// the node deleted for the daemon, then deletes the Node and its heartbeat Lease.
pub async fn delete(
    client: &Client,
    plugin: &Plugin,
    config: &DaemonConfig,
    name: &str,
) -> Result<DeleteReport, OpsError> {
    let err = |source| OpsError::Kube { node: name.into(), source };
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get_opt(name).await.map_err(err)?.ok_or_else(|| OpsError::NoSuchNode(name.into()))?;
    let id = node.metadata.labels.clone().unwrap_or_default().get(NODE_ID_LABEL).cloned().unwrap_or_default();
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

    // Stop the daemon from acting for (and recreating) the node first.
    mark_deleted(client, &config.ha.namespace, &election_lease_name(&config.cluster_id, &id)).await.map_err(err)?;
    set_disabled(client, name, true).await?;
    let report = DeleteReport { instances_deleted: delete_instances(plugin, &call).await? };
    nodes.delete(name, &DeleteParams::default()).await.map_err(err)?;
    let node_leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let _ = node_leases.delete(name, &DeleteParams::default()).await;
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
/// deletes the disks with them unless told to keep them) and waits until they are gone; returns
/// how many there were.
pub async fn delete_instances(plugin: &Plugin, call: &CallContext) -> Result<usize, OpsError> {
    let name = call.node_name.as_str();
    let provider = |source| OpsError::Provider { node: name.into(), source };
    let mut deleted = 0;
    for inst in &plugin.list(call).await.map_err(provider)? {
        match plugin.delete(call, &inst.pod, DeleteReason::NodeDeleted).await {
            Ok(_) | Err(CallError::Provider(ProviderError::NotFound(_))) => deleted += 1,
            Err(source) => return Err(provider(source)),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = plugin.list(call).await.map_err(provider)?;
        if left.is_empty() {
            return Ok(deleted);
        }
        if Instant::now() > deadline {
            return Err(OpsError::Other {
                node: name.into(),
                message: format!("{} instances still exist after 120 s", left.len()),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
