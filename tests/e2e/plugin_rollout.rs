//! A plugin rollout on a real control plane: one daemon, two virtual nodes, `n1` the canary. A
//! release that passes every load check but traps in its node and pod exports replaces the
//! plugin file: it reaches n1 only, blows its error budget there and is rolled back
//! automatically, with a `PluginRolledBack` Event naming the reason; n2 never runs it, and every
//! pod operation on n2 meanwhile succeeds. The same file is then refused.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vkcube_e2e::daemon::{fresh_cluster_id, plugin_path, start, test_config};
use vkcube_e2e::{cluster, running_ready, wait_for};

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "uhub.service.ucloud.cn/library/busybox"}]
        }
    }))
    .unwrap()
}

/// The name of config node `id`, once it is Ready.
async fn ready_node(client: &Client, cluster_id: &str, id: &str) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let selector = format!("vkcube.io/cluster-id={cluster_id},vkcube.io/node-id={id}");
    wait_for(Duration::from_secs(90), &format!("node {id} Ready"), || async {
        let list = nodes.list(&ListParams::default().labels(&selector)).await.ok()?;
        list.items
            .into_iter()
            .find(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|n| n.name_any())
    })
    .await
}

/// The Events about Node `node` (recorded in `default`): (reason, note).
async fn node_events(client: &Client, node: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let fields = format!("involvedObject.name={node}");
    events
        .list(&ListParams::default().fields(&fields))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Creates `name` on `node` and waits until it is Running and Ready.
async fn run_pod(pods: &Api<Pod>, name: &str, node: &str) {
    pods.create(&PostParams::default(), &pod(name, node)).await.unwrap();
    wait_for(Duration::from_secs(60), &format!("pod {name} Running"), || async {
        pods.get(name).await.ok().filter(running_ready).map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_version_on_the_canary_is_rolled_back_and_the_other_node_never_fails_a_pod() {
    let cluster = cluster();
    let ns = cluster.namespace("rollout").await;
    let cid = fresh_cluster_id();
    let dir = std::env::temp_dir().join(format!("vkcube-rollout-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("provider.wasm");
    std::fs::copy(plugin_path("example"), &wasm).unwrap();
    // n1 is the canary; nothing is promoted during the test; two traps in six calls roll back.
    let plugin = format!(
        r#"path = "{}"
[plugin.rollout]
canary_nodes = ["n1"]
healthy_seconds = 3600
min_calls = 1
[plugin.rollout.budget]
window_calls = 6
max_failures = 1
outcomes = ["trap"]"#,
        wasm.display()
    );
    let config = format!(
        "{}\n[[nodes]]\nid = \"n2\"\ntaint_value = \"cube\"\nlabels = {{ \"vkcube-test\" = \"{}\" }}\n",
        test_config(cluster, &cid, &ns.name, "", &plugin, ""),
        ns.name
    );
    let daemon = start(&config).await;
    let (n1, n2) = (ready_node(&ns.client, &cid, "n1").await, ready_node(&ns.client, &cid, "n2").await);
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    run_pod(&pods, "before", &n2).await;
    let mut versions = daemon.plugin().subscribe_versions();

    // The broken release: validate-config passes (every load check), its calls trap.
    std::fs::copy(plugin_path("faulty-broken-pods"), dir.join("next.wasm")).unwrap();
    std::fs::rename(dir.join("next.wasm"), &wasm).unwrap();
    let canary = tokio::time::timeout(Duration::from_secs(60), versions.recv()).await.unwrap().unwrap();
    assert!(canary.concerns(&n1) && canary.to.name == "faulty", "{canary:?}");

    // Pod work on n2 while n1 runs the broken release.
    run_pod(&pods, "during", &n2).await;
    pods.delete("before", &DeleteParams::default()).await.unwrap();

    let back = wait_for(Duration::from_secs(90), "the canary rolled back", || async {
        node_events(&ns.client, &n1).await.into_iter().find(|(reason, _)| reason == "PluginRolledBack")
    })
    .await;
    assert!(back.1.contains("faulty@4.0.0") && back.1.contains("rolled back to example@"), "{}", back.1);
    assert!(back.1.contains("error budget exceeded on node n1") && back.1.contains("trap"), "{}", back.1);
    assert!(node_events(&ns.client, &n1).await.iter().any(|(reason, _)| reason == "PluginCanary"));
    let view = daemon.plugin().versions();
    assert!(view.nodes.iter().all(|n| n.version == daemon.plugin().info().version), "{view:?}");
    assert!(view.rolled_back.as_ref().is_some_and(|r| r.node == "n1"), "{view:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.admin_addr.unwrap())).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains(&format!("vkhost_plugin_rollbacks_total{{node=\"{n1}\"}} 1")), "{metrics}");

    // The same file is refused; n1 serves pods on the stable version again.
    let refused = daemon.plugin().reload().await.unwrap_err().to_string();
    assert!(refused.contains("rolled back"), "{refused}");
    run_pod(&pods, "after-on-n1", &n1).await;
    run_pod(&pods, "after", &n2).await;
    wait_for(Duration::from_secs(60), "pod before deleted", || async {
        pods.get_opt("before").await.ok().and_then(|p| p.is_none().then_some(()))
    })
    .await;

    // n2 never ran the broken release, and none of its pods saw a failure.
    // (The refused reload is reported on every node; a version change only where it happened.)
    let n2_events = node_events(&ns.client, &n2).await;
    let changes = ["PluginCanary", "PluginReloaded", "PluginRolledBack"];
    assert!(!n2_events.iter().any(|(reason, _)| changes.contains(&reason.as_str())), "n2 changed: {n2_events:?}");
    assert!(n2_events.iter().any(|(reason, _)| reason == "PluginReloadRefused"), "{n2_events:?}");
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let warnings: Vec<(String, String, String)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| ["before", "during", "after"].contains(&e.involved_object.name.as_deref().unwrap_or_default()))
        .map(|e| {
            (e.involved_object.name.unwrap_or_default(), e.reason.unwrap_or_default(), e.message.unwrap_or_default())
        })
        .collect();
    assert!(warnings.is_empty(), "pod operations on n2 failed: {warnings:?}");
    for name in ["during", "after"] {
        let p = pods.get(name).await.unwrap();
        assert!(running_ready(&p), "{name}: {:?}", p.status);
    }

    daemon.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
