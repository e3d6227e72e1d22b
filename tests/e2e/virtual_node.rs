//! The virtual node on a real control plane with the example provider: the guide's Deployment
//! scheduled and Running, scale to zero, prompt graceful deletes, missing Secrets/ConfigMaps,
//! stable names, the heartbeat Lease, NotReady after stop, disable. (A Node deleted with kubectl:
//! cube_plugin.rs.)

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vkcube_e2e::daemon::{example_config, fresh_cluster_id, node_of, start};
use vkcube_e2e::{cluster, deployment, running_ready, wait_for};
use vkhost::plugin::CallContext;

fn bare_pod(name: &str, node: &str, extra_spec: serde_json::Value) -> Pod {
    let mut spec = json!({
        "nodeName": node,
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
        "automountServiceAccountToken": false,
        "containers": [{"name": "app", "image": "uhub.service.ucloud.cn/library/busybox"}]
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// Waits (by polling the node's Lease, generously) until its `renewTime` has advanced `count` times
/// past `after`.
async fn wait_for_renewals_after(client: &kube::Client, node: &str, after: k8s_openapi::jiff::Timestamp, count: usize) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while seen.len() < count {
        assert!(Instant::now() < deadline, "node {node}: only {} Lease renewals after {after} in 120 s", seen.len());
        let renewed = leases.get(node).await.ok().and_then(|l| l.spec?.renew_time).map(|t| t.0);
        if let Some(renewed) = renewed.filter(|r| *r > after && !seen.contains(r)) {
            seen.push(renewed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn events_for(client: &kube::Client, ns: &str, pod: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guide_deployment_runs_on_the_virtual_node_and_scales_to_zero() {
    let cluster = cluster();
    let ns = cluster.namespace("deploy").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await;
    let node_name = node.name_any();

    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments.create(&PostParams::default(), &deployment("web", &ns.name, 3)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    wait_for(Duration::from_secs(90), "3 pods Running and Ready on the virtual node", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        let ok = list
            .items
            .iter()
            .filter(|p| running_ready(p) && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node_name))
            .count();
        (ok == 3).then_some(())
    })
    .await;
    let ctx = CallContext { node_name: node_name.clone(), config: "{}".into() };
    assert_eq!(daemon.plugin().list(&ctx).await.unwrap().len(), 3, "one instance per pod");

    deployments.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}}))).await.unwrap();
    wait_for(Duration::from_secs(90), "every pod object gone", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
    assert!(daemon.plugin().list(&ctx).await.unwrap().is_empty(), "every instance gone");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_delete_with_30s_grace_finishes_in_under_2s() {
    let cluster = cluster();
    let ns = cluster.namespace("grace").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "")).await;
    let node_name = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &bare_pod("slowstop", &node_name, json!({"terminationGracePeriodSeconds": 30})),
    )
    .await
    .unwrap();
    wait_for(Duration::from_secs(60), "pod Running", || async {
        pods.get("slowstop").await.ok().filter(|p| running_ready(p))
    })
    .await;

    let t0 = Instant::now();
    pods.delete("slowstop", &DeleteParams::default()).await.unwrap();
    wait_for(Duration::from_secs(30), "pod object gone", || async {
        matches!(pods.get_opt("slowstop").await, Ok(None)).then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "graceful delete took {took:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_mandatory_secret_creates_nothing_until_it_appears_and_optional_one_only_warns() {
    let cluster = cluster();
    let ns = cluster.namespace("missing").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "")).await;
    let node_name = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let with_secret = bare_pod(
        "needs-secret",
        &node_name,
        json!({
            "volumes": [{"name": "creds", "secret": {"secretName": "db-creds"}}],
            "containers": [{"name": "app", "image": "uhub.service.ucloud.cn/library/busybox",
                            "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}]
        }),
    );
    pods.create(&PostParams::default(), &with_secret).await.unwrap();
    let optional = bare_pod(
        "optional-cm",
        &node_name,
        json!({
            "containers": [{"name": "app", "image": "uhub.service.ucloud.cn/library/busybox",
                            "envFrom": [{"configMapRef": {"name": "nowhere", "optional": true}}]}]
        }),
    );
    pods.create(&PostParams::default(), &optional).await.unwrap();

    wait_for(Duration::from_secs(60), "MandatorySecretNotFound event", || async {
        events_for(&ns.client, &ns.name, "needs-secret").await.into_iter().find(|(r, _)| r == "MandatorySecretNotFound")
    })
    .await;
    wait_for(Duration::from_secs(60), "optional pod Running with a warning", || async {
        let running = pods.get("optional-cm").await.ok().filter(|p| running_ready(p))?;
        let warned = events_for(&ns.client, &ns.name, "optional-cm")
            .await
            .into_iter()
            .any(|(r, _)| r == "OptionalConfigMapNotFound");
        warned.then_some(running)
    })
    .await;
    let p = pods.get("needs-secret").await.unwrap();
    assert_eq!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Pending"));
    assert!(!p.annotations().contains_key("vkcube.io/instance-id"), "no instance while the secret is missing");
    let ctx = CallContext { node_name: node_name.clone(), config: "{}".into() };
    let uid = p.uid().unwrap();
    assert!(daemon.plugin().list(&ctx).await.unwrap().iter().all(|i| i.pod.uid != uid));

    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "db-creds"}, "stringData": {"password": "pw"}})).unwrap();
    Api::<Secret>::namespaced(ns.client.clone(), &ns.name).create(&PostParams::default(), &secret).await.unwrap();
    wait_for(Duration::from_secs(60), "pod Running once the secret exists", || async {
        pods.get("needs-secret").await.ok().filter(|p| running_ready(p))
    })
    .await;
    // The provider's own Normal event for the create is recorded on the pod too.
    wait_for(Duration::from_secs(30), "the provider's InstanceCreated event", || async {
        events_for(&ns.client, &ns.name, "needs-secret")
            .await
            .into_iter()
            .find(|(r, m)| r == "InstanceCreated" && m.contains("example instance"))
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_keeps_its_name_renews_its_lease_and_goes_notready_when_stopped() {
    let cluster = cluster();
    let ns = cluster.namespace("node").await;
    let cid = fresh_cluster_id();
    let config = example_config(cluster, &cid, &ns.name, "");
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await;
    let name = node.name_any();
    assert!(name.starts_with(&format!("{cid}-vk-")) && name.len() == cid.len() + 9, "{name}");
    let labels = node.labels();
    assert_eq!(labels.get("type").map(String::as_str), Some("virtual-kubelet"));
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    assert!(taints.iter().any(|t| t.key == "virtual-kubelet.io/provider"
        && t.value.as_deref() == Some("cube")
        && t.effect == "NoSchedule"));
    let status = node.status.clone().unwrap();
    assert_eq!(status.addresses.unwrap()[0].type_, "InternalIP");
    assert!(status.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port > 0);
    assert!(node.annotations().get("vkcube.io/plugin").is_some_and(|v| v.starts_with("example@")));

    // The heartbeat Lease advances.
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), "kube-node-lease");
    let first = wait_for(Duration::from_secs(30), "node lease", || async {
        leases.get_opt(&name).await.ok().flatten().and_then(|l| l.spec.and_then(|s| s.renew_time))
    })
    .await;
    wait_for(Duration::from_secs(30), "lease renewed", || async {
        let now = leases.get(&name).await.ok()?.spec?.renew_time?;
        (now.0 > first.0).then_some(())
    })
    .await;

    // (`kubectl delete node` is the guide's "delete node": cube_plugin.rs shows it.)
    let nodes: Api<Node> = Api::all(ns.client.clone());

    // A restart finds the node again instead of minting a new name.
    daemon.stop().await;
    let daemon = start(&config).await;
    let again = node_of(&ns.client, &cid).await;
    assert_eq!(again.name_any(), name);
    daemon.stop().await;

    // Stopped for good: the real controller-manager marks it NotReady (Unknown).
    wait_for(Duration::from_secs(90), "node not ready", || async {
        let n = nodes.get(&name).await.ok()?;
        let ready = n.status?.conditions?.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status != "True").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabled_node_creates_no_instances_and_keeps_existing_ones() {
    let cluster = cluster();
    let ns = cluster.namespace("disable").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "")).await;
    let node_name = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &bare_pod("before", &node_name, json!({}))).await.unwrap();
    wait_for(Duration::from_secs(60), "first pod Running", || async {
        pods.get("before").await.ok().filter(|p| running_ready(p))
    })
    .await;

    vkhost::node::ops::disable(&ns.client, &node_name).await.unwrap();
    let nodes: Api<Node> = Api::all(ns.client.clone());
    assert_eq!(nodes.get(&node_name).await.unwrap().spec.unwrap().unschedulable, Some(true));
    // The daemon reads the node at each heartbeat, then renews the Lease, then acts on what it
    // read; the third renewal after the disable proves a beat that read the disabled node has
    // finished.
    let disabled_at = k8s_openapi::jiff::Timestamp::now();
    wait_for_renewals_after(&ns.client, &node_name, disabled_at, 3).await;
    pods.create(&PostParams::default(), &bare_pod("after", &node_name, json!({}))).await.unwrap();
    let p = wait_for(Duration::from_secs(30), "second pod refused", || async {
        let p = pods.get("after").await.ok()?;
        (p.status.as_ref()?.reason.as_deref() == Some("NodeDisabled")).then_some(p)
    })
    .await;
    assert!(!p.annotations().contains_key("vkcube.io/instance-id"));
    assert!(running_ready(&pods.get("before").await.unwrap()), "existing pod untouched");

    vkhost::node::ops::enable(&ns.client, &node_name).await.unwrap();
    wait_for(Duration::from_secs(40), "second pod Running after enable", || async {
        pods.get("after").await.ok().filter(|p| running_ready(p))
    })
    .await;
    daemon.stop().await;
}
