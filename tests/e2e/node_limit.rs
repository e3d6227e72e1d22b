//! The cluster-wide limit of 8 virtual nodes: with 8 present, a daemon refuses to register a 9th
//! and says which nodes exist. (Own test binary: it fills the cluster with nodes.)

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use serde_json::json;
use vkcube_e2e::cluster;
use vkcube_e2e::daemon::{example_config, fresh_cluster_id, shared_runtime};
use vkhost::config::DaemonConfig;
use vkhost::node::registration::{self, NodeShape, RegistrationError};

#[tokio::test]
async fn ninth_virtual_node_is_refused_naming_the_existing_ones() {
    let cluster = cluster();
    let client = cluster.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..8 {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": format!("uk8s-other000-vk-fill{i}"), "labels": {"type": "virtual-kubelet"}}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    let cid = fresh_cluster_id();
    let cfg = DaemonConfig::parse(&example_config(cluster, &cid, "limit", ""), std::path::Path::new("t.toml")).unwrap();
    let plugin = vkhost::plugin::Plugin::load(shared_runtime(), cfg.plugin.clone(), vec![]).await.unwrap();
    let ctx = vkhost::plugin::CallContext { node_name: "n1".into(), config: "{}".into() };
    let shape = NodeShape {
        cluster_id: cid.clone(),
        node_id: "n1".into(),
        labels: Default::default(),
        taint_value: "cube".into(),
        max_pods: 10,
        address: "127.0.0.1".into(),
        kubelet_port: 10250,
        plugin: plugin.info(),
        plugin_source: plugin.provenance(),
        offer: plugin.describe_node(&ctx).await.unwrap(),
    };
    let err = registration::find_or_name(&client, &shape).await.unwrap_err();
    assert!(matches!(err, RegistrationError::TooManyNodes { existing: 8, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("at most 8") && msg.contains("uk8s-other000-vk-fill0"), "{msg}");
}
