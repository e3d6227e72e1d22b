//! Registering the virtual node: find it by identity (or mint a name, within the cluster's limit
//! of 8), and bring its labels, taints and status in line with the config and the provider on
//! every start — not only at creation, which is where upstream stops.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::config::MAX_VIRTUAL_NODES;
use crate::naming::{self, CLUSTER_LABEL, NODE_ID_LABEL, PROVIDER_TAINT, TYPE_LABEL};
use crate::plugin::{NodeOffer, PluginInfo, Provenance};

/// Annotation on the Node naming the active provider plugin and its version.
pub const PLUGIN_ANNOTATION: &str = "vkcube.io/plugin";
/// Annotation on the Node naming what the active plugin version was loaded from, pinned: the OCI
/// `oci://registry/repository@sha256:…` (or the file), and the key that verified it.
pub const PLUGIN_SOURCE_ANNOTATION: &str = "vkcube.io/plugin-source";
/// Annotation set while the node is disabled (N6): no new instances are created through it.
pub const DISABLED_ANNOTATION: &str = "vkcube.io/disabled";
/// The feature that lets a 1.36+ apiserver pass exec/attach WebSockets straight through.
pub const WEBSOCKET_FEATURE: &str = "ExtendWebSocketsToKubelet";

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(
        "cluster already has {existing} virtual nodes ({names}); at most {MAX_VIRTUAL_NODES} are allowed: delete one with `vkhost node delete NAME` first"
    )]
    TooManyNodes { existing: usize, names: String },
    #[error("node {node}: {source}")]
    Api { node: String, source: kube::Error },
}

/// What the node should look like, from the config, the kubelet API and the provider.
#[derive(Debug, Clone)]
pub struct NodeShape {
    pub cluster_id: String,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub taint_value: String,
    pub max_pods: u32,
    /// Address the apiserver dials for the kubelet API (published as InternalIP).
    pub address: String,
    pub kubelet_port: u16,
    pub plugin: PluginInfo,
    /// Where the plugin version came from (`GET /plugin` shows the same).
    pub plugin_source: Option<Provenance>,
    pub offer: NodeOffer,
}

/// Finds this config node's Node by its identity labels (`true`), or mints a fresh name for it
/// (`false`) once the cluster's limit of virtual nodes allows one more.
pub async fn find_or_name(client: &Client, shape: &NodeShape) -> Result<(String, bool), RegistrationError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let api_err = |node: &str| {
        let node = node.to_string();
        move |source| RegistrationError::Api { node: node.clone(), source }
    };
    let selector = naming::identity_selector(&shape.cluster_id, &shape.node_id);
    let mut mine = nodes.list(&ListParams::default().labels(&selector)).await.map_err(api_err(&selector))?.items;
    mine.sort_by_key(|n| n.metadata.creation_timestamp.clone().map(|t| t.0));
    if let Some(existing) = mine.into_iter().next() {
        return Ok((existing.metadata.name.unwrap_or_default(), true));
    }
    let virtual_nodes = nodes
        .list(&ListParams::default().labels(&format!("{}={}", TYPE_LABEL.0, TYPE_LABEL.1)))
        .await
        .map_err(api_err("virtual nodes"))?
        .items;
    if virtual_nodes.len() >= MAX_VIRTUAL_NODES {
        let names: Vec<String> = virtual_nodes.iter().filter_map(|n| n.metadata.name.clone()).collect();
        return Err(RegistrationError::TooManyNodes { existing: names.len(), names: names.join(", ") });
    }
    Ok((naming::new_node_name(&shape.cluster_id), false))
}

/// Creates the Node object (metadata, spec and status) under `name`.
pub async fn create(client: &Client, name: &str, shape: &NodeShape) -> Result<(), RegistrationError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": desired_labels(name, shape),
            "annotations": plugin_annotations(&shape.plugin, shape.plugin_source.as_ref()),
        },
        "spec": {"taints": desired_taints(shape, &[])},
    }))
    .expect("node object");
    node.status = serde_json::from_value(status_json(shape)).ok();
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(source) => return Err(RegistrationError::Api { node: name.into(), source }),
    }
    Ok(())
}

/// Brings labels, taints and the plugin annotation of an existing node in line with `shape`,
/// keeping labels and taints that others added.
pub async fn reconcile_metadata(client: &Client, name: &str, shape: &NodeShape) -> Result<(), RegistrationError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let err = |source| RegistrationError::Api { node: name.into(), source };
    let current = nodes.get(name).await.map_err(err)?;
    let existing_taints: Vec<Value> = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|t| serde_json::to_value(t).unwrap())
        .collect();
    let patch = json!({
        "metadata": {
            "labels": desired_labels(name, shape),
            "annotations": plugin_annotations(&shape.plugin, shape.plugin_source.as_ref()),
        },
        "spec": {"taints": desired_taints(shape, &existing_taints)},
    });
    nodes.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(err)?;
    Ok(())
}

/// Writes the node status (capacity, addresses, kubelet endpoint, node info, conditions).
pub async fn patch_status(client: &Client, name: &str, shape: &NodeShape) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status_json(shape)}))).await?;
    Ok(())
}

/// Sets the plugin annotations alone (after a hot reload).
pub async fn annotate_plugin(
    client: &Client,
    name: &str,
    plugin: &PluginInfo,
    source: Option<&Provenance>,
) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"metadata": {"annotations": plugin_annotations(plugin, source)}});
    nodes.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// The plugin's label and, when known, its pinned source (`oci://…@sha256:…, verified by KEY`).
fn plugin_annotations(plugin: &PluginInfo, source: Option<&Provenance>) -> Value {
    let source = source.map(|s| match &s.verified_by {
        Some(key) => format!("{}, verified by {key}", s.pinned),
        None => s.pinned.clone(),
    });
    json!({PLUGIN_ANNOTATION: crate::plugin::label(plugin), PLUGIN_SOURCE_ANNOTATION: source})
}

fn desired_labels(name: &str, shape: &NodeShape) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> =
        shape.offer.labels.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
    labels.extend(shape.labels.clone());
    labels.insert(TYPE_LABEL.0.into(), TYPE_LABEL.1.into());
    labels.insert("kubernetes.io/role".into(), "agent".into());
    labels.insert("kubernetes.io/hostname".into(), name.into());
    labels.insert("kubernetes.io/os".into(), shape.offer.operating_system.clone());
    labels.insert("kubernetes.io/arch".into(), shape.offer.architecture.clone());
    labels.insert(CLUSTER_LABEL.into(), shape.cluster_id.clone());
    labels.insert(NODE_ID_LABEL.into(), shape.node_id.clone());
    labels
}

/// Our provider taint with the configured value, the provider's own taints, and every taint
/// someone else put on the node; a stale provider taint (old value) is replaced.
fn desired_taints(shape: &NodeShape, existing: &[Value]) -> Vec<Value> {
    let mut taints = vec![json!({"key": PROVIDER_TAINT, "value": shape.taint_value, "effect": "NoSchedule"})];
    for t in &shape.offer.taints {
        taints.push(json!({"key": t.key, "value": t.value, "effect": t.effect.as_str()}));
    }
    for t in existing {
        let key = t["key"].as_str().unwrap_or_default();
        let same = |d: &Value| d["key"] == t["key"] && d["effect"] == t["effect"];
        if key != PROVIDER_TAINT && !taints.iter().any(same) {
            taints.push(t.clone());
        }
    }
    taints
}

fn status_json(shape: &NodeShape) -> Value {
    let now = crate::pods::status::now_rfc3339();
    let quantities = |list: &[crate::plugin::KeyValue]| {
        let mut map: BTreeMap<String, String> = list.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
        map.insert("pods".into(), shape.max_pods.to_string());
        map
    };
    let mut conditions: Vec<Value> = shape
        .offer
        .conditions
        .iter()
        .map(|c| {
            json!({"type": c.kind, "status": c.status, "reason": c.reason, "message": c.message,
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
        })
        .collect();
    let standard = [
        ("Ready", "True", "KubeletReady", "vkhost is ready and its provider plugin is loaded"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "serverless: no node memory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "serverless: no node disk"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "serverless: no node processes"),
        ("NetworkUnavailable", "False", "RouteCreated", "instances are networked by the provider"),
    ];
    for (kind, status, reason, message) in standard {
        if !conditions.iter().any(|c| c["type"] == kind) {
            conditions.push(json!({"type": kind, "status": status, "reason": reason, "message": message,
                                   "lastHeartbeatTime": now, "lastTransitionTime": now}));
        }
    }
    json!({
        "capacity": quantities(&shape.offer.capacity),
        "allocatable": quantities(&shape.offer.allocatable),
        "addresses": [
            {"type": "InternalIP", "address": shape.address},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": shape.kubelet_port}},
        "nodeInfo": {
            "architecture": shape.offer.architecture,
            "operatingSystem": shape.offer.operating_system,
            "kubeletVersion": format!("v{}-vkhost", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "containerRuntimeVersion": format!("wasm://{}/{}", shape.plugin.name, shape.plugin.version),
            "kernelVersion": "",
            "osImage": "serverless",
            "bootID": "",
            "machineID": "",
            "systemUUID": "",
        },
        "conditions": conditions,
        "declaredFeatures": [WEBSOCKET_FEATURE],
    })
}
