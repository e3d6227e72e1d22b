//! Durable obligations, on the real control plane with cube.wasm against a simulator whose
//! deletes take a while (`lifecycle.deleting_ms`): a `vkhost node delete` stopped after the
//! instance's deletion began is finished by the next run, UDisks included, even with the Node
//! object already gone; a pod deletion in progress when the daemon crashes is seen through by
//! the next daemon. What must still be done lives in the node's records ConfigMap, and a burst
//! of deletions shares its writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use vkcube_e2e::cube::{CubeEnv, mounting_claim, pod_on_node};
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start};
use vkcube_e2e::{cluster, running_ready, wait_for};
use vkhost::config::DaemonConfig;
use vkhost::plugin::{DeleteReason, PodRef};
use vkhost::records::{KubePersist, NodeRecords, Owner, PendingDeletion, Persist, PersistError, configmap_name};

/// Long enough that a test sees the instance Terminating and acts before it is gone.
const DELETING_MS: u64 = 4000;

async fn instance_state(env: &CubeEnv, uid: &str) -> String {
    let all = env.inspect("instances").await;
    let inst = all.iter().find(|i| i["uid"] == uid).expect("the pod's instance");
    inst["state"].as_str().unwrap_or_default().to_string()
}

async fn disk_status(env: &CubeEnv, disk_id: &str) -> String {
    let disks = env.inspect("disks").await;
    let disk = disks.iter().find(|d| d["udisk_id"] == disk_id).expect("the disk");
    disk["status"].as_str().unwrap_or_default().to_string()
}

/// The node's records ConfigMap: (plugin records, the host's pending deletions), if it exists.
async fn records(cms: &Api<ConfigMap>, cfg: &DaemonConfig) -> Option<(Value, Value)> {
    let cm = cms.get_opt(&configmap_name(&cfg.cluster_id, "n1")).await.unwrap()?;
    let data = cm.data.unwrap_or_default();
    let parse = |k: &str| data.get(k).map(|t| serde_json::from_str(t).unwrap()).unwrap_or(json!({}));
    Some((parse("plugin.json"), parse("deletions.json")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_delete_stopped_midway_is_finished_by_the_next_run_udisks_included() {
    let cluster = cluster();
    let ns = cluster.namespace("durable-nodedel").await;
    let env = CubeEnv::start_with(cluster, false, |c| c.lifecycle.deleting_ms = DELETING_MS).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    let cfg = DaemonConfig::parse(&config, std::path::Path::new("t.toml")).unwrap();
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let disk_id = env.udisk_claim(&ns).await;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let with_disk = mounting_claim(pod_on_node("with-disk", &node, json!({})), "data");
    pods.create(&PostParams::default(), &with_disk).await.unwrap();
    let running = wait_for(Duration::from_secs(90), "with-disk Running", || async {
        pods.get("with-disk").await.ok().filter(running_ready)
    })
    .await;
    let uid = running.uid().unwrap();

    // `vkhost node delete`, stopped (with the daemon) once the instance's deletion has begun and
    // the provider's work to finish after it (deleting the disk) is recorded with it.
    let first_run = {
        let (client, plugin, cfg, node) = (ns.client.clone(), daemon.plugin().clone(), cfg.clone(), node.clone());
        tokio::spawn(async move { vkhost::node::ops::delete(&client, &plugin, &cfg, &node).await })
    };
    let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &cfg.ha.namespace);
    wait_for(Duration::from_secs(30), "the instance Terminating and its work to finalize recorded", || async {
        let (_, deletions) = records(&cms, &cfg).await?;
        let work = deletions[&uid]["finalize"].as_str().is_some_and(|w| !w.is_empty());
        (work && instance_state(&env, &uid).await == "Terminating").then_some(())
    })
    .await;
    first_run.abort();
    assert!(first_run.await.unwrap_err().is_cancelled());
    daemon.abort();

    // What is left to do is in the cluster, not in any process: the deletion and its work (the
    // disk), which the provider handed over instead of keeping it in its own records.
    let (plugin_records, deletions) = records(&cms, &cfg).await.expect("the node's records");
    assert!(
        !plugin_records.as_object().unwrap().keys().any(|k| k.starts_with("cube/disks-to-delete/")),
        "{plugin_records}"
    );
    assert_eq!(deletions[&uid]["reason"], "NodeDeleted", "{deletions}");
    // The instance goes on its own; its disk stays, billed, until someone deletes it.
    wait_for(Duration::from_secs(30), "the instance gone", || async {
        (instance_state(&env, &uid).await == "Deleted").then_some(())
    })
    .await;
    assert_ne!(disk_status(&env, &disk_id).await, "Deleted");
    // And the Node object is gone too, as if the stopped run had got that far.
    Api::<Node>::all(ns.client.clone()).delete(&node, &DeleteParams::default()).await.unwrap();

    // A new run, in a fresh plugin runtime (nothing in memory), finishes it.
    let plugin = vkhost::daemon::load_plugin(&cfg).await.unwrap();
    let report = vkhost::node::ops::delete(&ns.client, &plugin, &cfg, &node).await.unwrap();
    assert_eq!((report.instances_deleted, report.deletions_resumed), (0, 1));
    assert_eq!(disk_status(&env, &disk_id).await, "Deleted");
    assert!(records(&cms, &cfg).await.is_none(), "the records go with the node");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_deletion_in_progress_when_the_daemon_crashes_is_seen_through_by_the_next() {
    let cluster = cluster();
    let ns = cluster.namespace("durable-poddel").await;
    let env = CubeEnv::start_with(cluster, false, |c| c.lifecycle.deleting_ms = DELETING_MS).await;
    let cid = fresh_cluster_id();
    let config = env.daemon_config(cluster, &cid, &ns.name, "");
    let cfg = DaemonConfig::parse(&config, std::path::Path::new("t.toml")).unwrap();
    let daemon = start(&config).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod_on_node("web", &node, json!({}))).await.unwrap();
    let running =
        wait_for(Duration::from_secs(90), "web Running", || async { pods.get("web").await.ok().filter(running_ready) })
            .await;
    let uid = running.uid().unwrap();

    pods.delete("web", &DeleteParams::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(ns.client.clone(), &cfg.ha.namespace);
    wait_for(Duration::from_secs(30), "the deletion in progress recorded", || async {
        let (_, deletions) = records(&cms, &cfg).await?;
        (deletions[&uid]["reason"] == "PodDeleted").then_some(())
    })
    .await;
    daemon.abort();
    assert_eq!(instance_state(&env, &uid).await, "Terminating");

    let daemon = start(&config).await;
    wait_for(Duration::from_secs(60), "the pod deleted and its record dropped", || async {
        let gone = pods.get_opt("web").await.ok()?.is_none();
        let (_, deletions) = records(&cms, &cfg).await?;
        (gone && deletions.as_object()?.is_empty()).then_some(())
    })
    .await;
    assert_eq!(instance_state(&env, &uid).await, "Deleted");
    daemon.stop().await;
    env.stop().await;
}

/// The apiserver's ConfigMap, with its writes counted.
struct CountedWrites(KubePersist, Arc<AtomicU32>);

impl Persist for CountedWrites {
    fn get(&self) -> BoxFuture<'_, Result<Option<ConfigMap>, PersistError>> {
        self.0.get()
    }
    fn put(&self, cm: ConfigMap) -> BoxFuture<'_, Result<String, PersistError>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.put(cm)
    }
    fn delete(&self) -> BoxFuture<'_, Result<(), PersistError>> {
        self.0.delete()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_deletions_in_progress_is_recorded_in_a_few_shared_writes() {
    const PODS: usize = 1000;
    let cluster = cluster();
    let ns = cluster.namespace("durable-burst").await;
    let owner = Owner { cluster_id: "burst".into(), node_id: "n1".into(), node_name: "burst-vk-abcde".into() };
    let writes = Arc::new(AtomicU32::new(0));
    let persist =
        CountedWrites(KubePersist::new(ns.client.clone(), &ns.name, &configmap_name("burst", "n1")), writes.clone());
    let records = NodeRecords::load(owner.clone(), Box::new(persist)).await.unwrap();
    let deletion = |i: usize| {
        PendingDeletion::new(
            PodRef {
                namespace: ns.name.clone(),
                name: format!("web-{i}"),
                uid: format!("00000000-0000-4000-8000-{i:012}"),
            },
            DeleteReason::PodDeleted,
            format!("cube-{i:08}"),
        )
    };
    let started = Instant::now();
    let recorded = futures::future::join_all((0..PODS).map(|i| records.record_deletion(deletion(i)))).await;
    let record_took = started.elapsed();
    assert!(recorded.iter().all(Result::is_ok));
    let record_writes = writes.swap(0, Ordering::Relaxed);
    // All of them in the cluster, for the next process.
    let fresh = NodeRecords::load_from_cluster(&ns.client, &ns.name, owner).await.unwrap();
    assert_eq!(fresh.pending_deletions().len(), PODS);
    let size = Api::<ConfigMap>::namespaced(ns.client.clone(), &ns.name)
        .get(&configmap_name("burst", "n1"))
        .await
        .unwrap()
        .data
        .unwrap_or_default()
        .values()
        .map(String::len)
        .sum::<usize>();

    let started = Instant::now();
    let uids: Vec<String> = (0..PODS).map(|i| deletion(i).pod.uid).collect();
    let dropped = futures::future::join_all(uids.iter().map(|uid| records.drop_deletion(uid))).await;
    let drop_took = started.elapsed();
    assert!(dropped.iter().all(Result::is_ok));
    let drop_writes = writes.load(Ordering::Relaxed);
    assert!(records.pending_deletions().is_empty());
    println!(
        "{PODS} deletions: recorded in {record_writes} writes, {record_took:?}; ConfigMap {size} bytes; dropped in {drop_writes} writes, {drop_took:?}"
    );
    // Group commit: concurrent changes share writes instead of queueing one write each.
    assert!(
        record_writes < PODS as u32 / 10 && drop_writes < PODS as u32 / 10,
        "{record_writes} and {drop_writes} writes"
    );
}
