//! The harness itself: a Deployment written as in the guide needs all four control-plane
//! processes — the controller-manager makes its ReplicaSet and pods, the scheduler reports
//! FailedScheduling and later binds the pods to a node labelled and tainted like a virtual node.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vkcube_e2e::{cluster, wait_for};

fn guide_deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"type": "virtual-kubelet"},
                    "tolerations": [{
                        "key": "virtual-kubelet.io/provider",
                        "operator": "Equal",
                        "value": "cube",
                        "effect": "NoSchedule"
                    }],
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "nginx",
                        "image": "uhub.service.ucloud.cn/library/nginx:1.25",
                        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}
                    }]
                }
            }
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn deployment_waits_unscheduled_until_a_virtual_node_appears_then_binds_to_it() {
    let cluster = cluster();
    let ns = cluster.namespace("cp").await;
    let client = ns.client.clone();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments.create(&PostParams::default(), &guide_deployment("web", 3)).await.expect("create deployment");

    // The controller-manager turns the Deployment into a ReplicaSet and three pods.
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
    wait_for(Duration::from_secs(60), "ReplicaSet of web", || async {
        let list = replicasets.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().next()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_for(Duration::from_secs(60), "3 pods of web", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        (list.items.len() == 3).then_some(())
    })
    .await;

    // With no matching node the scheduler says so.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let message = wait_for(Duration::from_secs(60), "FailedScheduling event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("FailedScheduling")).and_then(|e| e.message)
    })
    .await;
    assert!(message.contains("node"), "scheduler message: {message}");

    // A bare Node shaped like a virtual node: the scheduler binds the pods to it.
    let node_name = format!("vk-bare-{}", ns.name);
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": node_name, "labels": {"type": "virtual-kubelet"}},
        "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": "cube", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.expect("create node");
    let now = chrono_now();
    nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "capacity": {"cpu": "100", "memory": "100Gi", "pods": "110"},
                "allocatable": {"cpu": "100", "memory": "100Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Test",
                                "lastHeartbeatTime": now, "lastTransitionTime": now}]
            }})),
        )
        .await
        .expect("node status");

    wait_for(Duration::from_secs(60), "3 pods bound to the node", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str()))
            .count();
        (bound == 3).then_some(())
    })
    .await;

    nodes.delete(&node_name, &DeleteParams::default()).await.ok();
}

#[test]
fn kubectl_reports_the_built_kubernetes_version() {
    let cluster = cluster();
    let (code, out, err) = cluster.kubectl(&["version", "-o", "json"]);
    assert_eq!(code, 0, "kubectl version failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want = &cluster.env["K8S_VERSION"];
    assert_eq!(v["serverVersion"]["gitVersion"], json!(want), "{out}");
    assert_eq!(v["clientVersion"]["gitVersion"], json!(want), "{out}");
}

fn chrono_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    k8s_openapi::jiff::Timestamp::from_second(secs).unwrap().to_string()
}
