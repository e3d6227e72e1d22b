//! The floor of a burst on this control plane: the least any node agent can do for a pod. It
//! registers the nodes as the daemons do (labels, taint, capacity, a lease renewed every 10 s),
//! writes each pod its watch shows bound Running and Ready in one merge PATCH of `pods/status` —
//! the status write vkhost makes — at once, and deletes (grace 0) each pod it sees being deleted. No
//! provider, no cache, no Events, no client limits, no queue: what the burst measures of it is the
//! apiserver's, the watches' and the scheduler's part alone, the least a daemon can reach here.
//!
//! Run by the burst harness as its own child (`burst floor-agent KUBECONFIG NODE=LABEL...`, with
//! `--daemon floor`), so its process is measured as the daemons' are.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

/// `floor-agent KUBECONFIG NODE=LABEL...`: serves the nodes until killed.
pub fn main(args: &[String]) -> Result<()> {
    let (kubeconfig, nodes) = args.split_first().context("floor-agent KUBECONFIG NODE=LABEL...")?;
    let nodes: Vec<(String, String)> = nodes
        .iter()
        .map(|n| n.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())).context("NODE=LABEL"))
        .collect::<Result<_>>()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(Path::new(kubeconfig), nodes))
}

async fn serve(kubeconfig: &Path, nodes: Vec<(String, String)>) -> Result<()> {
    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(kubeconfig)?, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let mut tasks = Vec::new();
    for (name, label) in nodes {
        register(&client, &name, &label).await.with_context(|| format!("register node {name}"))?;
        tasks.push(tokio::spawn(leases(client.clone(), name.clone())));
        tasks.push(tokio::spawn(pods(client.clone(), name)));
    }
    eprintln!("floor agent: nodes registered");
    for t in tasks {
        t.await?;
    }
    Ok(())
}

async fn register(client: &Client, name: &str, label: &str) -> Result<()> {
    let now = Timestamp::now().to_string();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"type": "virtual-kubelet", "vkcube-bench": label,
                                              "kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": "cube", "effect": "NoSchedule"}]},
        "status": {
            "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "1000"},
            "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "1000"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "FloorAgentReady",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        },
    }))?;
    let api: Api<Node> = Api::all(client.clone());
    let created = api.create(&PostParams::default(), &node).await?;
    // The create keeps the status a kubelet registers with; written again in case it did not.
    let status = json!({"status": node.status});
    api.patch_status(&created.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

/// The node's lease, renewed every 10 s (40 s long), so the node lifecycle controller keeps the
/// node Ready.
async fn leases(client: Client, node: String) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let now = || serde_json::to_value(MicroTime(Timestamp::now())).expect("a time serializes");
    let lease = json!({"metadata": {"name": node},
                       "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now()}});
    let lease: Lease = serde_json::from_value(lease).expect("static lease");
    if let Err(e) = api.create(&PostParams::default(), &lease).await {
        eprintln!("floor agent: lease of {node}: {e}");
    }
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let patch = json!({"spec": {"renewTime": now()}});
        if let Err(e) = api.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)).await {
            eprintln!("floor agent: renew the lease of {node}: {e}");
        }
    }
}

/// Follows the node's pods: a bound pod not Ready is written Ready, a deleting one deleted, each
/// once, every write in a task of its own.
async fn pods(client: Client, node: String) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let written: Arc<Mutex<HashSet<String>>> = Arc::default();
    let deleted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut events = watcher(api.clone(), config).boxed();
    loop {
        let pod = match events.try_next().await {
            Ok(Some(Event::Apply(pod) | Event::InitApply(pod))) => pod,
            Ok(Some(Event::Delete(pod))) => {
                let uid = pod.uid().unwrap_or_default();
                written.lock().unwrap().remove(&uid);
                deleted.lock().unwrap().remove(&uid);
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => return,
            Err(e) => {
                eprintln!("floor agent: watch of {node}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = pod.uid().unwrap_or_default();
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(api.clone().into_client(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            if deleted.lock().unwrap().insert(uid.clone()) {
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                    ..DeleteParams::default()
                };
                let seen = Instant::now();
                tokio::spawn(async move {
                    match api.delete(&pod.name_any(), &params).await {
                        Ok(_) => trace("pod deleted", &pod, seen, "api_delete_ms", "done_unix_ms"),
                        Err(e) => eprintln!("floor agent: delete {}: {e}", pod.name_any()),
                    }
                });
            }
        } else if !is_ready(&pod) && written.lock().unwrap().insert(uid) {
            let patch = json!({"status": ready_status(&pod)});
            let seen = Instant::now();
            tokio::spawn(async move {
                match api.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    Ok(_) => trace("pod started", &pod, seen, "status_write_ms", "written_unix_ms"),
                    Err(e) => eprintln!("floor agent: status of {}: {e}", pod.name_any()),
                }
            });
        }
    }
}

/// The line vkhost logs for a pod's start or deletion (`pods/startup.rs`, `pods/teardown.rs`), so
/// the harness places the floor's first sight and write beside its own watch as it does vkhost's:
/// the whole of it is the one write, `stage`; `done` is its wall clock.
fn trace(message: &str, pod: &Pod, seen: Instant, stage: &str, done: &str) {
    let ms = seen.elapsed().as_secs_f64() * 1000.0;
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let fields = json!({"uid": pod.uid(), "total_ms": ms, stage: ms, done: wall.as_secs_f64() * 1000.0});
    eprintln!("{}", json!({"message": message, "fields": fields}));
}

fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Running and Ready, every container running: what a node writes once a pod has started.
fn ready_status(pod: &Pod) -> Value {
    let now = Timestamp::now().to_string();
    let condition = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                   "restartCount": 0, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"].map(condition);
    json!({
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "startTime": now,
        "conditions": conditions,
        "containerStatuses": containers,
    })
}
