//! `kubectl port-forward` through the real apiserver to pods on virtual nodes: a Cube pod running
//! nginx answers with its page (cube.wasm names the instance's pod address, the host connects to
//! it, the simulator serves it); a provider that cannot forward ports has kubectl say so.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use vkcube_e2e::cube::{CubeEnv, pod_on_node as pod};
use vkcube_e2e::daemon::{example_config, fresh_cluster_id, node_of, start};
use vkcube_e2e::port_forward::{PortForward, local_client};
use vkcube_e2e::{cluster, running_ready, wait_for};

async fn wait_running(pods: &Api<Pod>, name: &str) -> Pod {
    wait_for(Duration::from_secs(90), &format!("pod {name} Running"), || async {
        pods.get(name).await.ok().filter(running_ready)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_port_forward_gets_the_page_of_a_cube_pod_running_nginx() {
    let cluster = cluster();
    let ns = cluster.namespace("pfcube").await;
    let env = CubeEnv::start_serving(cluster).await;
    let cid = fresh_cluster_id();
    let daemon = start(&env.daemon_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("web", &node, json!({}))).await.unwrap();
    let running = wait_running(&pods, "web").await;
    let pod_ip = running.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("a pod IP");

    let http = local_client();
    let pf = PortForward::start(cluster, &ns.name, "pod/web", 80).await;
    for _ in 0..2 {
        let page = http.get(format!("{}/", pf.url())).send().await.unwrap().text().await.unwrap();
        assert!(page.contains("Welcome to nginx!"), "{page}");
        assert!(page.contains(&format!("Pod {}/web, container web", ns.name)), "the page names the pod: {page}");
        assert!(page.contains(&format!("serving on {pod_ip}:80")), "reached through the pod's address: {page}");
    }
    pf.stop().await;

    // Nothing listens on another port of the pod: kubectl shows the refusal.
    let mut pf = PortForward::start(cluster, &ns.name, "pod/web", 8080).await;
    assert!(http.get(pf.url()).send().await.is_err());
    let err = pf.stderr_until("error forwarding port 8080").await;
    assert!(err.contains(&format!("error forwarding port 8080 to pod {}/web", ns.name)), "{err}");
    assert!(err.contains("refused"), "{err}");
    pf.stop().await;

    daemon.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_without_port_forwarding_has_kubectl_say_so() {
    let cluster = cluster();
    let ns = cluster.namespace("pfexample").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod("web", &node, json!({}))).await.unwrap();
    wait_running(&pods, "web").await;

    let mut pf = PortForward::start(cluster, &ns.name, "pod/web", 80).await;
    assert!(local_client().get(pf.url()).send().await.is_err());
    let err = pf.stderr_until("cannot forward ports").await;
    assert!(
        err.contains(&format!(
            "error forwarding port 80 to pod {}/web: the example provider cannot forward ports",
            ns.name
        )),
        "{err}"
    );
    pf.stop().await;
    daemon.stop().await;
}
