//! cube.wasm in the daemon against the simulator, on the real control plane, as a kubelet admits
//! pods: a setting that takes no effect only warns; a pod beyond `max_pods` fails `OutOfpods`; a
//! refused pod is judged again after a plugin reload or a config change; `kubectl delete node`
//! leaves nothing billed. (A binary of its own: one cluster holds at most 8 virtual nodes.)

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use vkcube_e2e::cube::{CubeEnv, pod_on_node as pod};
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start};
use vkcube_e2e::{cluster, deployment, running_ready, wait_for};

/// Warning Events on pod `name` with `reason`.
async fn pod_warnings(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let fields = format!("involvedObject.kind=Pod,involvedObject.name={name},reason={reason}");
    let list = events.list(&ListParams::default().fields(&fields)).await.map(|l| l.items).unwrap_or_default();
    list.into_iter().filter(|e| e.type_.as_deref() == Some("Warning")).filter_map(|e| e.message).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_the_guide_says_take_no_effect_are_ignored_with_a_warning_naming_them() {
    let cluster = cluster();
    let ns = cluster.namespace("noeffect").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);

    // cube-eip-id without cube-eip "true"; a purchase length of 0 billed by the second.
    let no_eip = json!({"cube.ucloud.cn/cube-eip-id": "eip-abc", "cube.ucloud.cn/cube-quantity": "0"});
    pods.create(&PostParams::default(), &pod("no-eip", &node, no_eip)).await.unwrap();
    // A shared-bandwidth id with the default pay mode (bandwidth).
    let shared =
        json!({"cube.ucloud.cn/cube-eip": "true", "cube.ucloud.cn/cube-eip-share-bandwidth-id": "bwshare-abc"});
    pods.create(&PostParams::default(), &pod("own-bandwidth", &node, shared)).await.unwrap();
    for name in ["no-eip", "own-bandwidth"] {
        wait_for(Duration::from_secs(90), &format!("{name} Running"), || async {
            pods.get(name).await.ok().filter(running_ready)
        })
        .await;
    }
    let expected = [
        ("no-eip", "cube.ucloud.cn/cube-eip-id", "cube-eip is not \"true\""),
        ("no-eip", "cube.ucloud.cn/cube-quantity", "cube-chargetype is postpay"),
        ("own-bandwidth", "cube.ucloud.cn/cube-eip-share-bandwidth-id", "not sharebandwidth"),
    ];
    for (pod_name, annotation, why) in expected {
        wait_for(Duration::from_secs(30), &format!("the warning about {annotation} on {pod_name}"), || async {
            let messages = pod_warnings(&ns.client, &ns.name, pod_name, "AnnotationHasNoEffect").await;
            messages.into_iter().find(|m| m.contains(annotation) && m.contains(why) && m.contains("ignored"))
        })
        .await;
    }
    // Ignored means ignored: one EIP, for the pod that asked for one, paid by its own bandwidth.
    let eips = env.inspect("eips").await;
    assert_eq!(eips.len(), 1, "{eips:#?}");
    assert_eq!(eips[0]["pay_mode"], "Bandwidth", "{eips:#?}");
    assert_eq!(env.live_instances().await.len(), 2);
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_bound_beyond_max_pods_fails_out_of_pods_and_gets_no_instance() {
    let cluster = cluster();
    let ns = cluster.namespace("outofpods").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    assert!(config.contains("taint_value = \"cube\"\n"));
    let daemon = start(&config.replace("taint_value = \"cube\"\n", "taint_value = \"cube\"\nmax_pods = 2\n")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    for name in ["one", "two"] {
        pods.create(&PostParams::default(), &pod(name, &node, json!({}))).await.unwrap();
        wait_for(Duration::from_secs(90), &format!("{name} Running"), || async {
            pods.get(name).await.ok().filter(running_ready)
        })
        .await;
    }
    // Placed with nodeName, the scheduler never counted it: the node refuses it as a kubelet does.
    pods.create(&PostParams::default(), &pod("three", &node, json!({}))).await.unwrap();
    let refused = wait_for(Duration::from_secs(60), "three Failed OutOfpods", || async {
        let p = pods.get("three").await.ok()?;
        (p.status.as_ref()?.reason.as_deref() == Some("OutOfpods")).then_some(p)
    })
    .await;
    let status = refused.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert!(status.message.as_deref().unwrap_or_default().contains("used: 2, capacity: 2"), "{status:?}");
    assert!(!refused.annotations().contains_key("vkcube.io/instance-id"));
    // Events are posted apart from the status write: the Warning may follow it.
    wait_for(Duration::from_secs(30), "the OutOfpods warning", || async {
        pod_warnings(&ns.client, &ns.name, "three", "OutOfpods").await.into_iter().next()
    })
    .await;
    let uid = refused.uid().unwrap();
    assert!(env.live_instances().await.iter().all(|i| i["uid"] != uid.as_str()), "no instance for the refused pod");
    assert_eq!(env.live_instances().await.len(), 2);

    // A place freed is a place taken by the next pod.
    pods.delete("one", &DeleteParams::default()).await.unwrap();
    wait_for(Duration::from_secs(60), "one gone", || async { pods.get_opt("one").await.ok()?.is_none().then_some(()) })
        .await;
    pods.create(&PostParams::default(), &pod("four", &node, json!({}))).await.unwrap();
    wait_for(Duration::from_secs(90), "four Running", || async { pods.get("four").await.ok().filter(running_ready) })
        .await;
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_pending_pod_is_judged_again_after_a_plugin_reload_and_runs_once_the_config_allows_it() {
    let cluster = cluster();
    let ns = cluster.namespace("rejudge").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    // The plugin from a file of the test's own, so a new build can replace it.
    let dir = std::env::temp_dir().join(format!("vkcube-rejudge-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("cube.wasm");
    std::fs::copy(vkcube_e2e::daemon::plugin_path("cube"), &wasm).unwrap();
    let allowing = env
        .daemon_config(cluster, &cid, &ns.name, "")
        .replace(&vkcube_e2e::daemon::plugin_path("cube").display().to_string(), &wasm.display().to_string());
    let registries = format!("registries = [\"{}\"]", vkcube_e2e::cube::PRIVATE_REGISTRY);
    assert!(allowing.contains(&registries) && allowing.contains(&wasm.display().to_string()));
    let refusing = allowing.replace(&registries, "registries = []");
    let daemon = start(&refusing).await;
    node_of(&ns.client, &cid).await;

    let mut app = deployment("private", &ns.name, 1);
    let spec = app.spec.template.spec.as_mut().unwrap();
    spec.containers[0].image = Some(format!("{}/team/app:1", vkcube_e2e::cube::PRIVATE_REGISTRY));
    Api::<Deployment>::namespaced(ns.client.clone(), &ns.name).create(&PostParams::default(), &app).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let basis = |p: &Pod| p.annotations().get("vkcube.io/rejected-by").cloned();
    let refused = wait_for(Duration::from_secs(90), "the pod refused, still Pending", || async {
        let list = pods.list(&ListParams::default().labels("app=private")).await.ok()?;
        let p = list.items.into_iter().next()?;
        let s = p.status.as_ref()?;
        (s.reason.as_deref() == Some("ImageRegistryNotAllowed")
            && s.phase.as_deref() == Some("Pending")
            && basis(&p).is_some())
        .then_some(p)
    })
    .await;
    let name = refused.name_any();

    // A new plugin build (the same code with a custom section appended): the pod is judged again,
    // and refused again, since the config did not change.
    let mut bytes = std::fs::read(&wasm).unwrap();
    let (section, payload) = (b"vkcube-test", b"rejudge");
    bytes.extend([0u8, (1 + section.len() + payload.len()) as u8, section.len() as u8]);
    bytes.extend(section.iter().chain(payload));
    std::fs::write(dir.join("next.wasm"), &bytes).unwrap();
    std::fs::rename(dir.join("next.wasm"), &wasm).unwrap();
    let _ = daemon.plugin().reload().await;
    wait_for(Duration::from_secs(90), "ProviderRefusalReevaluated", || async {
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
        let fields = format!("involvedObject.name={name},reason=ProviderRefusalReevaluated");
        events.list(&ListParams::default().fields(&fields)).await.ok()?.items.into_iter().next()
    })
    .await;
    wait_for(Duration::from_secs(60), "refused again, by the new build", || async {
        let p = pods.get(&name).await.ok()?;
        (basis(&p).is_some() && basis(&p) != basis(&refused)).then_some(())
    })
    .await;
    assert!(env.live_instances().await.is_empty());

    // The operator allows the registry: the daemon restarted with the new config runs the pod.
    daemon.stop().await;
    let daemon = start(&allowing).await;
    wait_for(Duration::from_secs(90), "the same pod Running", || async {
        pods.get(&name).await.ok().filter(running_ready)
    })
    .await;
    assert_eq!(env.live_instances().await.len(), 1);
    daemon.stop().await;
    env.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_delete_node_deletes_its_instances_and_disks_and_the_node_stays_deleted() {
    let cluster = cluster();
    let ns = cluster.namespace("kdelnode").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    // A pod with a UDisk (pre-provisioned, bound statically) and a pod with an EIP.
    env.disk_and_eip_pods(&ns, &node).await;

    // The operator deletes the node the Kubernetes way: as the guide's console delete.
    let (code, out, err) = cluster.kubectl(&["delete", "node", &node]);
    assert_eq!(code, 0, "kubectl delete node: {out}{err}");
    wait_for(Duration::from_secs(60), "instances deleted", || async {
        env.live_instances().await.is_empty().then_some(())
    })
    .await;
    wait_for(Duration::from_secs(30), "UDisk deleted with the node", || async {
        env.inspect("disks").await.iter().all(|d| d["status"] == "Deleted").then_some(())
    })
    .await;
    let eips = env.inspect("eips").await;
    assert!(eips.iter().all(|e| e["released"] == true), "EIP released: {eips:#?}");
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), "kube-node-lease");
    let election = vkhost::naming::election_lease_name(&cid, "n1");
    let marked = leases.get(&election).await.unwrap();
    assert!(marked.annotations().contains_key(vkhost::node::DELETED_ANNOTATION), "{marked:?}");

    // Not recreated, not even by a daemon started again: it claims the node's election, sees the
    // node deleted and stands down.
    daemon.stop().await;
    let restarted_at = k8s_openapi::jiff::Timestamp::now();
    let daemon = start(&config).await;
    wait_for(Duration::from_secs(60), "the election claimed again", || async {
        let renewed = leases.get(&election).await.ok()?.spec?.renew_time?;
        (renewed.0 > restarted_at).then_some(())
    })
    .await;
    let nodes: Api<Node> = Api::all(ns.client.clone());
    assert!(nodes.get_opt(&node).await.unwrap().is_none(), "node stays deleted");
    let mine = format!("vkcube.io/cluster-id={cid}");
    assert!(nodes.list(&ListParams::default().labels(&mine)).await.unwrap().items.is_empty(), "no new node either");
    daemon.stop().await;
    env.stop().await;
}
