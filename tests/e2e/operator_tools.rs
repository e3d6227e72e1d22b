//! What operators reach a kubelet with, through the real apiserver, on Cube virtual nodes
//! (cube.wasm against the simulator): `kubectl top` through a real metrics-server registered in
//! the aggregation layer, and the node proxy (`/runningpods/`, `/pods`, `/stats/summary`) from a
//! network namespace where the node has a routable address.
//!
//! Usage follows the simulator's GetCubeMetrics model (tests/cube-sim/README.md): a container
//! limited to C millicores and M bytes uses C/4 millicores of CPU and, at age A seconds,
//! min(32 MiB + A/60 · 256 KiB, 0.6 · M) of working set.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::Value;
use vkcube_e2e::cube::CubeEnv;
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start};
use vkcube_e2e::{TestNamespace, deployment, wait_for};

const MIB: u64 = 1024 * 1024;

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Runs `replicas` of the guide's Deployment on the node and waits for them to be Ready; returns
/// them with the CPU (millicores) and memory (bytes) limits of their Cube instances.
async fn running_pods(ns: &TestNamespace, env: &CubeEnv, label: &str, replicas: i32) -> Vec<(Pod, u64, u64)> {
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments.create(&PostParams::default(), &deployment("web", label, replicas)).await.expect("create Deployment");
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let running = wait_for(Duration::from_secs(120), "the Deployment's pods Ready", || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        let ok: Vec<Pod> = list.items.into_iter().filter(ready).collect();
        (ok.len() == replicas as usize).then_some(ok)
    })
    .await;
    let instances = env.live_instances().await;
    running
        .into_iter()
        .map(|p| {
            let uid = p.uid().unwrap();
            let i = instances.iter().find(|i| i["uid"] == uid.as_str()).expect("an instance per pod");
            let (cpu, mem) = (i["cpu_millis"].as_u64().unwrap(), i["memory_mib"].as_u64().unwrap() * MIB);
            (p, cpu, mem)
        })
        .collect()
}

/// The model's working set bounds for a container limited to `memory` bytes that is at most
/// `max_age` old: (at age 0, at `max_age`).
fn working_set_bounds(memory: u64, max_age: Duration) -> (u64, u64) {
    let cap = memory * 6 / 10;
    let at = |age: u64| (32 * MIB + age * 256 * 1024 / 60).min(cap);
    (at(0), at(max_age.as_secs() + 1))
}

/// How long ago the pod was created: at least its instance's age.
fn age(pod: &Pod) -> Duration {
    let created = pod.metadata.creation_timestamp.as_ref().expect("creationTimestamp").0;
    let now = k8s_openapi::jiff::Timestamp::now();
    Duration::from_secs(u64::try_from(now.as_second() - created.as_second()).unwrap_or(0))
}

/// `kubectl top` prints CPU as `125m` and memory as `32Mi`.
fn parse_top(cpu: &str, memory: &str) -> (u64, u64) {
    let cpu = cpu.strip_suffix('m').expect("CPU in millicores").parse().unwrap();
    let memory = memory.strip_suffix("Mi").expect("memory in Mi").parse::<u64>().unwrap();
    (cpu, memory * MIB)
}

/// Within 2 % (metrics-server divides the counter's increase by the time between its scrapes).
fn near(got: u64, want: u64) -> bool {
    got.abs_diff(want) * 50 <= want.max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_top_shows_cube_pods_and_node_usage_through_metrics_server() {
    let cluster = vkcube_e2e::cluster_with_metrics_server();
    let ns = cluster.namespace("top").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, "top", "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods = running_pods(&ns, &env, "top", 2).await;

    // metrics-server needs two scrapes, 10 s apart, before it has a CPU rate.
    let top = wait_for(Duration::from_secs(90), "kubectl top pod listing both pods", || async {
        let (code, out, _) = cluster.kubectl(&["top", "pod", "-n", &ns.name, "--no-headers"]);
        (code == 0 && out.lines().count() == 2).then_some(out)
    })
    .await;
    eprintln!("kubectl top pod -n {}:\n{top}", ns.name);
    let mut node_cpu = 0;
    for (pod, cpu_limit, memory_limit) in &pods {
        let row: Vec<&str> = top
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r[0] == pod.name_any())
            .unwrap_or_else(|| panic!("{} in kubectl top: {top}", pod.name_any()));
        let (cpu, memory) = parse_top(row[1], row[2]);
        assert!(near(cpu, cpu_limit / 4), "{}: {cpu}m, the model gives {}m", pod.name_any(), cpu_limit / 4);
        let (low, high) = working_set_bounds(*memory_limit, age(pod));
        // kubectl rounds down to whole Mi.
        assert!(
            memory + MIB > low && memory <= high,
            "{}: {memory} bytes, the model gives {low}..={high}",
            pod.name_any()
        );
        node_cpu += cpu_limit / 4;
    }

    // The node's usage is its pods' sum.
    let row = wait_for(Duration::from_secs(60), "kubectl top node", || async {
        let (code, out, _) = cluster.kubectl(&["top", "node", &node, "--no-headers"]);
        (code == 0).then_some(out)
    })
    .await;
    eprintln!("kubectl top node {node}:\n{row}");
    let row: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(row[0], node);
    let (cpu, memory) = parse_top(row[1], row[3]);
    assert!(near(cpu, node_cpu), "node {node}: {cpu}m, its pods use {node_cpu}m");
    assert!(memory >= 2 * 32 * MIB - MIB, "node {node}: {memory} bytes for two pods of at least 32 MiB");

    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_proxy_serves_runningpods_pods_and_stats_from_a_network_namespace() {
    let name = "node_proxy_serves_runningpods_pods_and_stats_from_a_network_namespace";
    let Some(address) = vkcube_e2e::in_network_namespace(name) else { return };
    let cluster = vkcube_e2e::cluster();
    let ns = cluster.namespace("proxy").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let kubelet = format!("[kubelet]\nlisten = \"{address}:0\"\naddress = \"{address}\"");
    let daemon = start(&env.daemon_config(cluster, &cid, "proxy", &kubelet)).await;
    let node = node_of(&ns.client, &cid).await;
    let internal_ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone()));
    assert_eq!(internal_ip, Some(address.to_string()));
    let node = node.name_any();
    let pods = running_pods(&ns, &env, "proxy", 1).await;
    let (pod, cpu_limit, _) = &pods[0];

    let raw = |path: &str| -> Value {
        let url = format!("/api/v1/nodes/{node}/proxy/{path}");
        let (code, out, err) = cluster.kubectl(&["get", "--raw", &url]);
        assert_eq!(code, 0, "kubectl get --raw {url}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{url}: {e}: {out}"))
    };
    let uids = |list: &Value| -> Vec<String> {
        assert_eq!((&list["kind"], &list["apiVersion"]), (&"PodList".into(), &"v1".into()));
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["metadata"]["uid"].as_str().map(String::from))
            .collect()
    };
    let uid = pod.uid().unwrap();

    // What the provider runs: the pod's instance, with its containers and the instance's status.
    let running = raw("runningpods/");
    assert_eq!(uids(&running), [uid.as_str()], "{running:#}");
    let item = &running["items"][0];
    assert_eq!(
        (&item["metadata"]["name"], &item["metadata"]["namespace"]),
        (&pod.name_any().into(), &ns.name.clone().into())
    );
    assert_eq!(item["spec"]["containers"][0]["image"], "uhub.service.ucloud.cn/library/nginx:1.25");
    assert_eq!(item["status"]["phase"], "Running");

    // What the host holds for the node.
    assert_eq!(uids(&raw("pods")), [uid.as_str()]);

    // Stats: the pod at the model's CPU rate.
    let summary = raw("stats/summary");
    assert_eq!(summary["node"]["nodeName"], node.as_str());
    let stats = summary["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["uid"] == uid.as_str());
    let nano_cores = stats.and_then(|p| p["cpu"]["usageNanoCores"].as_u64());
    assert_eq!(nano_cores, Some(cpu_limit / 4 * 1_000_000), "{summary:#}");

    daemon.stop().await;
    env.stop().await;
}
