//! cube.wasm against the simulator's cloud API, on the real control plane: the cloud's error codes
//! reach the daemon's `/metrics`; a fresh pod's first create sends no lookup; a burst within the
//! plugin's egress budget earns no throttling code where one without it does. (A binary of its
//! own: a cluster holds at most 8 virtual nodes, and `cube_plugin.rs` uses most of its cluster's.)

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use vkcube_e2e::cube::{CubeEnv, pod_on_node as pod};
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start, start_alone};
use vkcube_e2e::{cluster, running_ready, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloud_api_errors_reach_the_metrics_endpoint_by_action_and_ret_code() {
    let cluster = cluster();
    let ns = cluster.namespace("retcode").await;
    let env = CubeEnv::start(cluster, false).await;
    // The next two CreateCubePod calls are throttled (RetCode 153): the plugin tries again at
    // once (the service did not act), so the pod still starts.
    env.set_faults(json!({"burst": {"ret_code": 153, "count": 2, "actions": ["CreateCubePod"]}})).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("throttled", &node, json!({}))).await.unwrap();
    wait_for(Duration::from_secs(60), "pod Running", || async {
        pods.get("throttled").await.ok().filter(running_ready).map(|_| ())
    })
    .await;

    let admin = daemon.admin_addr.expect("the test config enables the admin endpoint");
    let series =
        r#"vkhost_plugin_counter_total{plugin="cube",name="cloud_api_errors",action="CreateCubePod",ret_code="153"}"#;
    // Billed instances by phase come with the next status sync.
    let text = wait_for(Duration::from_secs(30), "the counter and the phases on /metrics", || async {
        let text = reqwest::get(format!("http://{admin}/metrics")).await.ok()?.text().await.ok()?;
        (text.contains(series) && text.contains(r#"vkhost_instances_by_phase{node=""#)).then_some(text)
    })
    .await;
    let line = text.lines().find(|l| l.starts_with(series)).unwrap();
    assert_eq!(line.rsplit(' ').next(), Some("2"), "{line}");
    assert!(text.contains(r#"vkhost_provider_calls{export="pods.create",outcome="ok"} 1"#), "{text}");
    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_pods_first_create_sends_no_lookup_so_failing_lookups_do_not_hold_it_up() {
    let cluster = cluster();
    let ns = cluster.namespace("nolookup").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    // The host vouches that no instance exists only for pods created after it began acting for
    // the node (before the node was Ready) by more than its fence's clock margin: 1.2 s for the
    // test config's 6 s lease, plus a second as creationTimestamp has whole seconds. This waits
    // for that time itself; no event stands for it.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Every lookup fails: a create that looked first would fail and be retried, looking again.
    env.set_faults(json!({"errors": {"GetCubePod": {"rate": 1.0, "ret_code": 150}}})).await;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("fresh", &node, json!({}))).await.unwrap();
    let annotated = wait_for(Duration::from_secs(60), "the pod's instance id annotation", || async {
        pods.get("fresh").await.ok().filter(|p| p.annotations().contains_key(vkhost::pods::INSTANCE_ANNOTATION))
    })
    .await;
    assert!(annotated.annotations()[vkhost::pods::INSTANCE_ANNOTATION].starts_with("cube-"), "{annotated:?}");
    let calls = env.requests_of(vkcube_e2e::cube::PUBLIC_KEY).await;
    assert_eq!(calls.get("CreateCubePod"), Some(&1), "{calls:?}");
    let admin = daemon.admin_addr.expect("the test config enables the admin endpoint");
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"vkhost_provider_calls{export="pods.create",outcome="ok"} 1"#), "{text}");
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(r#"vkhost_provider_calls{export="pods.create""#))
        .filter(|l| !l.contains(r#"outcome="ok""#) && !l.ends_with(" 0"))
        .collect();
    assert!(failed.is_empty(), "a create failed first: {failed:?}");
    daemon.stop().await;
    env.stop().await;
}

/// Starts `n` pods at once on a daemon whose `[plugin.egress]` is `budget` (empty: none) against a
/// simulator whose gateway throttles past 5 calls/s (burst 5); returns how many calls the
/// gateway throttled while they started, and the pods' Events.
async fn burst_against_the_throttle(env: &CubeEnv, label: &str, budget: &str, n: usize) -> (u64, Vec<String>) {
    let cluster = cluster();
    let ns = cluster.namespace(label).await;
    let cid = fresh_cluster_id();
    let mut config = env.daemon_config(cluster, &cid, &ns.name, "");
    if !budget.is_empty() {
        config.push_str(&format!("\n[plugin.egress]\n{budget}\n"));
    }
    // Its own runtime: the budget and the plugin's throttling counters are per plugin in a
    // runtime, and the other tests' daemons in this binary must neither wait for this budget nor
    // count these throttled calls.
    let daemon = start_alone(&config).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    env.set_faults(json!({"rate_limit": {"per_second": 5.0, "burst": 5}})).await;
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let t0 = std::time::Instant::now();
    for i in 0..n {
        pods.create(&PostParams::default(), &pod(&format!("burst-{i}"), &node, json!({}))).await.unwrap();
    }
    wait_for(Duration::from_secs(120), "every pod Running", || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        (list.items.iter().filter(|p| running_ready(p)).count() == n).then_some(())
    })
    .await;
    let took = t0.elapsed();
    let faults: Value = reqwest::get(format!("{}/_sim/faults", env.url())).await.unwrap().json().await.unwrap();
    let admin = daemon.admin_addr.expect("the test config enables the admin endpoint");
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    let waits: Vec<&str> = text.lines().filter(|l| l.starts_with("vkhost_plugin_egress_")).collect();
    // Figures for BENCHMARKS.md (not asserted).
    println!("{label}: {n} pods Running in {:.1}s, throttled {}, {waits:?}", took.as_secs_f64(), faults["throttled"]);
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(ns.client.clone(), &ns.name);
    let notes = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect();
    env.set_faults(json!({})).await;
    daemon.stop().await;
    (faults["throttled"].as_u64().unwrap(), notes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_within_the_egress_budget_earns_no_throttling_code() {
    let env = CubeEnv::start(cluster(), false).await;
    // Without a budget the burst outruns the gateway: some calls are throttled (the plugin tries
    // them again, so the pods still start).
    let (throttled, _) = burst_against_the_throttle(&env, "nobudget", "", 10).await;
    assert!(throttled > 0, "the burst was expected to outrun the throttle");
    // With a budget under the gateway's rate, the same burst queues in the host instead.
    let (throttled, notes) = burst_against_the_throttle(&env, "budget", "requests_per_second = 4\nburst = 2", 10).await;
    assert_eq!(throttled, 0, "calls throttled despite the budget");
    assert!(notes.iter().all(|n| !n.contains("153")), "a throttling code reached a pod: {notes:?}");
    env.stop().await;
}
