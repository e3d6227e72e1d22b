//! cube.wasm in the daemon against the simulator, on the real control plane: annotations become
//! exactly the expected instance, EIP and firewall binding; a wrong annotation fails the pod and
//! creates nothing; `vkhost node delete` leaves nothing billed; a daemon crash mid-burst and a
//! replica failover leave exactly one instance per pod; a vanished instance fails its pod and an
//! instance no pod owns is deleted. (How the node admits pods is in `cube_admission.rs`, the cloud
//! API's codes, lookups and budget in `cube_cloud_api.rs`: a binary's cluster holds at most 8
//! virtual nodes.)

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vkcube_e2e::cube::{CubeEnv, pod_on_node as pod};
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start};
use vkcube_e2e::{cluster, deployment, running_ready, wait_for};
use vkhost::config::DaemonConfig;

/// Waits until `n` pods of the app run, and returns their UIDs.
async fn wait_running(pods: &Api<Pod>, app: &str, n: usize) -> Vec<String> {
    wait_for(Duration::from_secs(120), &format!("{n} pods of {app} Running"), || async {
        let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await.ok()?;
        let live: Vec<&Pod> = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        (live.len() == n && live.iter().all(|p| running_ready(p)))
            .then(|| live.iter().map(|p| p.uid().unwrap()).collect())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_annotation_becomes_the_expected_instance_eip_and_firewall_binding() {
    let cluster = cluster();
    let ns = cluster.namespace("annot").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    let annotations = json!({
        "cube.ucloud.cn/cube-tag": "shop",
        "cube.ucloud.cn/cube-chargetype": "month",
        "cube.ucloud.cn/cube-quantity": "2",
        "cube.ucloud.cn/cube-eip": "true",
        "cube.ucloud.cn/cube-eip-paymode": "traffic",
        "cube.ucloud.cn/cube-eip-bandwidth": "5",
        "cube.ucloud.cn/cube-eip-chargetype": "month",
        "cube.ucloud.cn/cube-eip-quantity": "2",
        "cube.ucloud.cn/cube-eip-release": "true",
        "cube.ucloud.cn/cube-eip-security-group-id": "firewall-web01",
    });
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("shop", &node, annotations)).await.unwrap();
    let p = wait_for(Duration::from_secs(90), "annotated pod Running", || async {
        pods.get("shop").await.ok().filter(|p| running_ready(p))
    })
    .await;

    let instances = env.live_instances().await;
    assert_eq!(instances.len(), 1, "{instances:#?}");
    let inst = &instances[0];
    assert_eq!(inst["uid"], p.uid().unwrap().as_str());
    assert_eq!(inst["tag"], "shop");
    assert_eq!(inst["charge_type"], "Month");
    assert_eq!((inst["cpu_millis"].as_u64(), inst["memory_mib"].as_u64()), (Some(1000), Some(2048)));

    let eips: Vec<Value> = env.inspect("eips").await.into_iter().filter(|e| e["released"] == false).collect();
    assert_eq!(eips.len(), 1, "{eips:#?}");
    let eip = &eips[0];
    assert_eq!(eip["pay_mode"], "Traffic");
    assert_eq!(eip["bandwidth"].as_u64(), Some(5));
    assert_eq!(eip["charge_type"], "Month");
    assert_eq!(eip["bound_to"]["resource_type"], "cube");
    assert_eq!(eip["bound_to"]["resource_id"], inst["cube_id"]);
    assert_eq!(p.annotations().get("cube.ucloud.cn/eip-address").map(String::as_str), eip["ip"].as_str());

    let firewalls = env.inspect("firewalls").await;
    assert_eq!(firewalls.len(), 1, "{firewalls:#?}");
    assert_eq!(firewalls[0]["fw_id"], "firewall-web01");
    assert_eq!(firewalls[0]["resource_id"], inst["cube_id"]);

    // Deleting the pod deletes the instance and, per cube-eip-release, releases the EIP.
    pods.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_for(Duration::from_secs(60), "instance gone and EIP released", || async {
        let live = env.live_instances().await;
        let held = env.inspect("eips").await.into_iter().filter(|e| e["released"] == false).count();
        (live.is_empty() && held == 0).then_some(())
    })
    .await;
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_annotation_fails_the_pod_naming_it_and_creates_nothing_in_the_cloud() {
    let cluster = cluster();
    let ns = cluster.namespace("wrong").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    let annotations = json!({
        "cube.ucloud.cn/cube-eip": "true",
        "cube.ucloud.cn/cube-eip-paymode": "sharebandwidth",
        "cube.ucloud.cn/cube-eip-share-bandwidth-id": "bwshare-abc",
        "cube.ucloud.cn/cube-eip-bandwidth": "5",
    });
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("bad", &node, annotations)).await.unwrap();
    let status = wait_for(Duration::from_secs(60), "pod Failed", || async {
        let p = pods.get("bad").await.ok()?;
        let s = p.status?;
        (s.phase.as_deref() == Some("Failed")).then_some(s)
    })
    .await;
    let message = status.message.unwrap_or_default();
    assert!(message.contains("cube.ucloud.cn/cube-eip-bandwidth") && message.contains("sharebandwidth"), "{message}");
    assert_eq!(status.reason.as_deref(), Some("InvalidAnnotation"));

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(env.inspect("instances").await.is_empty(), "no instance created");
    assert!(env.inspect("eips").await.is_empty(), "no EIP allocated");
    let requests = serde_json::to_string(&env.inspect("requests").await).unwrap();
    assert!(!requests.contains("CreateCubePod") && !requests.contains("AllocateEIP"), "{requests}");
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_delete_leaves_no_instance_eip_or_udisk_behind() {
    let cluster = cluster();
    let ns = cluster.namespace("nodedel").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    // A pod with a UDisk (pre-provisioned, bound statically) and a pod with an EIP.
    env.disk_and_eip_pods(&ns, &node).await;
    assert_eq!(env.live_instances().await.len(), 2);

    let cfg = DaemonConfig::parse(&config, std::path::Path::new("t.toml")).unwrap();
    let report = vkhost::node::ops::delete(&ns.client, daemon.plugin(), &cfg, &node).await.unwrap();
    assert_eq!(report.instances_deleted, 2);

    assert!(env.live_instances().await.is_empty(), "no instance left");
    let eips = env.inspect("eips").await;
    assert!(eips.iter().all(|e| e["released"] == true), "EIP released: {eips:#?}");
    wait_for(Duration::from_secs(30), "UDisk deleted with the node", || async {
        let disks = env.inspect("disks").await;
        disks.iter().all(|d| d["status"] == "Deleted").then_some(())
    })
    .await;
    // The Node is gone and the daemon does not bring it back.
    let nodes: Api<Node> = Api::all(ns.client.clone());
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(nodes.get_opt(&node).await.unwrap().is_none(), "node stays deleted");
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_killed_mid_burst_and_restarted_leaves_exactly_one_instance_per_pod() {
    let cluster = cluster();
    let ns = cluster.namespace("crash").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    let daemon = start(&config).await;
    node_of(&ns.client, &cid).await;

    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments.create(&PostParams::default(), &deployment("burst", &ns.name, 30)).await.unwrap();
    // Kill the daemon once some, but not all, instances exist.
    wait_for(Duration::from_secs(60), "a few instances created", || async {
        let n = env.live_instances().await.len();
        (n >= 3).then_some(())
    })
    .await;
    daemon.abort();
    let at_kill = env.live_instances().await.len();

    let daemon = start(&config).await;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let uids = wait_running(&pods, "burst", 30).await;
    let by_uid = env.instances_by_uid().await;
    assert_eq!(by_uid.len(), 30, "instances: {by_uid:?} (at kill: {at_kill})");
    for uid in &uids {
        assert_eq!(by_uid.get(uid), Some(&1), "exactly one instance for pod {uid}");
    }
    // No orphans: every instance belongs to a live pod.
    assert!(by_uid.keys().all(|u| uids.contains(u)));
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_replica_takes_over_when_the_acting_one_dies_without_duplicates() {
    let cluster = cluster();
    let ns = cluster.namespace("failover").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let with_identity = |id: &str| {
        env.daemon_config(cluster, &cid, &ns.name, "").replace("[ha]\n", &format!("[ha]\nidentity = \"{id}\"\n"))
    };
    let a = start(&with_identity("replica-a")).await;
    node_of(&ns.client, &cid).await;
    let b = start(&with_identity("replica-b")).await;

    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments.create(&PostParams::default(), &deployment("ha", &ns.name, 5)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let before = wait_running(&pods, "ha", 5).await;

    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), "kube-node-lease");
    let lease_name = vkhost::naming::election_lease_name(&cid, "n1");
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert_eq!(holder(leases.get(&lease_name).await.unwrap()), "replica-a");

    let t0 = std::time::Instant::now();
    a.abort();
    wait_for(Duration::from_secs(30), "replica-b holds the election lease", || async {
        (holder(leases.get(&lease_name).await.ok()?) == "replica-b").then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(took <= Duration::from_secs(6 + 3), "takeover took {took:?}, lease is 6 s");

    // Pods kept their state and instances; new work is done by the new actor.
    let after = wait_running(&pods, "ha", 5).await;
    assert_eq!(before.iter().collect::<std::collections::BTreeSet<_>>(), after.iter().collect());
    deployments.patch("ha", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 7}}))).await.unwrap();
    let uids = wait_running(&pods, "ha", 7).await;
    let by_uid = env.instances_by_uid().await;
    assert_eq!(by_uid.len(), 7, "{by_uid:?}");
    assert!(uids.iter().all(|u| by_uid.get(u) == Some(&1)));
    b.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_instance_fails_its_pod_and_an_instance_no_pod_owns_is_deleted() {
    let cluster = cluster();
    let ns = cluster.namespace("lost").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    for name in ["lost", "orphan"] {
        pods.create(&PostParams::default(), &pod(name, &node, json!({}))).await.unwrap();
    }
    let mut uid = BTreeMap::new();
    for name in ["lost", "orphan"] {
        let p = wait_for(Duration::from_secs(60), &format!("{name} Running"), || async {
            pods.get(name).await.ok().filter(running_ready)
        })
        .await;
        uid.insert(name, p.uid().unwrap());
    }
    let instance_of = |name: &'static str| {
        let (env, uid) = (&env, &uid);
        async move {
            env.live_instances()
                .await
                .into_iter()
                .find(|i| i["uid"] == uid[name].as_str())
                .map(|i| i["cube_id"].clone())
        }
    };

    // Someone deletes "lost"'s instance in the console: the pod must not stay Running.
    let lost_id = instance_of("lost").await.expect("instance of lost");
    let api = cube_sim::client::ApiClient::new(
        env.url(),
        format!("{}:{}", vkcube_e2e::cube::PUBLIC_KEY, vkcube_e2e::cube::PRIVATE_KEY).parse().unwrap(),
        "cn-bj2",
    );
    api.call("DeleteCubePod", &[("Zone", "cn-bj2-05"), ("CubeId", lost_id.as_str().unwrap())]).await.unwrap();
    // And while the daemon is down, "orphan"'s pod object is force-deleted: its instance is billed
    // with no pod to answer for it.
    daemon.stop().await;
    pods.delete("orphan", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    let daemon = start(&config).await;

    let status = wait_for(Duration::from_secs(60), "lost Failed", || async {
        let s = pods.get("lost").await.ok()?.status?;
        (s.phase.as_deref() == Some("Failed")).then_some(s)
    })
    .await;
    assert_eq!(status.reason.as_deref(), Some("ProviderInstanceLost"), "{status:?}");
    assert!(status.message.unwrap_or_default().contains(lost_id.as_str().unwrap()));

    // Adopted instances get 30 s before a sweep may call them orphans (a pod may be in flight).
    wait_for(Duration::from_secs(90), "the orphaned instance deleted", || async {
        instance_of("orphan").await.is_none().then_some(())
    })
    .await;
    let admin = daemon.admin_addr.unwrap();
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("vkhost_orphans_deleted_total 1"), "{text}");
    daemon.stop().await;
    env.stop().await;
}
