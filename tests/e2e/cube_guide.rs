//! The guide's manifests, applied with the real kubectl, run on the Cube virtual node
//! (cube.wasm against the simulator) as the guide says — plus the nginx Pod without the
//! token workaround — and `kubectl logs` / `kubectl exec` reach the instances.
//! (Own test binary: the manifests select any virtual node, so this cluster has only one.)

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use vkcube_e2e::cube::CubeEnv;
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start};
use vkcube_e2e::{cluster, repo_root, wait_for};

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guide_manifests_run_on_cube_and_logs_and_exec_reach_them() {
    let cluster = cluster();
    let ns = cluster.namespace("guide").await;
    let env = CubeEnv::start(cluster, true).await;
    let cid = fresh_cluster_id();
    let started = std::time::Instant::now();
    let daemon = start(&env.daemon_config(cluster, &cid, "guide", "")).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    let manifests = repo_root().join("tests/demo/manifests");
    let (code, out, err) = cluster.kubectl(&["apply", "-n", &ns.name, "-f", manifests.to_str().unwrap()]);
    assert_eq!(code, 0, "kubectl apply: {out}{err}");

    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let running =
        wait_for(Duration::from_secs(120), "the guide's 5 pods Running and Ready on the Cube node", || async {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let ok: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| ready(p) && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
                .collect();
            (ok.len() == 5).then_some(ok)
        })
        .await;
    // The figure BENCHMARKS.md quotes (run with `--nocapture`).
    eprintln!("cube_guide: daemon start to the guide's 5 pods Running and Ready: {:.1?}", started.elapsed());

    // Exactly one instance per pod, sized as Cube sizes them.
    let instances = env.live_instances().await;
    assert_eq!(instances.len(), 5, "{instances:#?}");
    for p in &running {
        let uid = p.uid().unwrap();
        let found: Vec<_> = instances.iter().filter(|i| i["uid"] == uid.as_str()).collect();
        assert_eq!(found.len(), 1, "one instance for {}", p.name_any());
    }
    let nginx_uid = pods.get("nginx").await.unwrap().uid().unwrap();
    let nginx = instances.iter().find(|i| i["uid"] == nginx_uid.as_str()).unwrap();
    assert_eq!((nginx["cpu_millis"].as_u64(), nginx["memory_mib"].as_u64()), (Some(2000), Some(2048)));
    assert_eq!(
        pods.get("nginx").await.unwrap().annotations().get("cube.ucloud.cn/size").map(String::is_empty),
        Some(false)
    );

    // The PVC was provisioned as a UDisk and the disk is attached to the pod's instance.
    let udisk_uid = pods.get("nginx-udisk").await.unwrap().uid().unwrap();
    let udisk_instance = instances.iter().find(|i| i["uid"] == udisk_uid.as_str()).unwrap();
    let disks = env.inspect("disks").await;
    assert!(
        disks.iter().any(|d| d["status"] == "InUse" && d["attached_to"] == udisk_instance["cube_id"]),
        "disk attached: {disks:#?}"
    );

    // The pod without the workaround got a minted token, mounted where Kubernetes mounts it.
    let (code, out, err) = cluster.kubectl(&[
        "exec",
        "-n",
        &ns.name,
        "nginx-token",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    ]);
    assert_eq!(code, 0, "kubectl exec: {err}");
    assert_eq!(out.trim(), ns.name);
    let (code, out, _) = cluster.kubectl(&[
        "exec",
        "-n",
        &ns.name,
        "nginx-token",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.trim().split('.').count(), 3, "a JWT: {out}");

    // Exit codes come back through the apiserver.
    let (code, _, _) = cluster.kubectl(&["exec", "-n", &ns.name, "nginx", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, 3);

    // Logs of the guide's nginx: the simulator's server output is deterministic — a banner, the
    // environment's keys, then one tick a second, numbered from 1.
    let (code, out, err) = cluster.kubectl(&["logs", "-n", &ns.name, "nginx"]);
    assert_eq!(code, 0, "kubectl logs: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "cube-sim: container nginx started from image uhub.service.ucloud.cn/ucloud/nginx:latest");
    assert!(lines[1].starts_with("cube-sim: environment keys: "), "{out}");
    assert!(lines.len() > 2, "the instance has run for seconds, so it has ticked: {out}");
    for (n, line) in lines[2..].iter().enumerate() {
        assert_eq!(*line, format!("cube-sim: nginx tick {}", n + 1), "{out}");
    }
    let (code, tail, err) = cluster.kubectl(&["logs", "-n", &ns.name, "nginx", "--tail", "2"]);
    assert_eq!(code, 0, "kubectl logs --tail 2: {err}");
    // The last two lines of the same sequence, read a moment later: consecutive, and not before
    // where the full read ended.
    let position = |line: &str| match line.strip_prefix("cube-sim: nginx tick ") {
        Some(n) => n.parse::<usize>().expect("a tick number") + 1,
        None if line == lines[1] => 1,
        None => panic!("not a line of nginx's log: {line:?}"),
    };
    let tail: Vec<usize> = tail.lines().map(position).collect();
    assert_eq!(tail.len(), 2, "{tail:?}");
    assert_eq!(tail[1], tail[0] + 1, "{tail:?}");
    assert!(tail[1] >= lines.len() - 1, "tail {tail:?} ends before the full log's {} lines", lines.len());

    daemon.stop().await;
    env.stop().await;
}
