//! The guide's manifests as printed (`tests/e2e/guide/`, only the toleration value changed), applied
//! with the real kubectl, run on a Cube virtual node configured as a guide reader would (taint
//! `anlianyun`, UHub at `uhub.an-link.com`, the zone left to its default, the self-hosted registry
//! allowed by its pull secret alone), cube.wasm against the simulator; `kubectl logs` / `exec`
//! reach the instances; expanding the guide's claim is refused with an Event; a StatefulSet with a
//! UDisk claim template scales up and down.
//! (Own test binary, and its tests take turns: the guide's pods select any virtual node, so the
//! cluster holds one at a time.)

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use vkcube_e2e::cube::CubeEnv;
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, start};
use vkcube_e2e::{Cluster, cluster, repo_root, running_ready, wait_for};

/// One test of this binary at a time (see the module doc).
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the guide's images come from, besides the simulator's own registries.
const GUIDE_REGISTRIES: &[&str] = &["uhub.an-link.com", "myhub.an-link.com"];

/// The daemon config of a guide reader: the brand as taint value in Latin letters, the brand's
/// UHub host, no zone (the region's Cube zone), no self-hosted registry listed.
fn guide_config(env: &CubeEnv, cluster: &Cluster, cid: &str, label: &str) -> String {
    let config = env.daemon_config(cluster, cid, label, "");
    for line in ["taint_value = \"cube\"", "zone = \"cn-bj2-05\"\n", "registries = [\"myhub.example.com\"]"] {
        assert!(config.contains(line), "the test config changed: {config}");
    }
    config
        .replace("taint_value = \"cube\"", "taint_value = \"anlianyun\"")
        .replace("zone = \"cn-bj2-05\"\n", "")
        .replace("registries = [\"myhub.example.com\"]", "uhub_hosts = [\"uhub.an-link.com\"]")
}

fn apply(cluster: &Cluster, ns: &str, file: &str) {
    let path = repo_root().join("tests/e2e/guide").join(file);
    let (code, out, err) = cluster.kubectl(&["apply", "-n", ns, "-f", path.to_str().unwrap()]);
    assert_eq!(code, 0, "kubectl apply {file}: {out}{err}");
}

/// Removes a stopped daemon's Node, so the next test's pods cannot be scheduled onto it.
async fn retire(client: &kube::Client, node: &str) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let _ = nodes.delete(node, &Default::default()).await;
    wait_for(Duration::from_secs(30), "the node removed", || async {
        nodes.get_opt(node).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Warning Events about `kind` `name` in `ns` with `reason`.
async fn warnings(api: &Api<Event>, kind: &str, name: &str, reason: &str) -> Vec<Event> {
    let fields = format!("involvedObject.kind={kind},involvedObject.name={name},reason={reason}");
    api.list(&ListParams::default().fields(&fields)).await.map(|l| l.items).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guide_manifests_as_printed_run_on_cube_and_logs_exec_and_expansion_behave_as_the_guide_says() {
    let _turn = TURNS.lock().await;
    let cluster = cluster();
    // The guide names two pods `nginx` (the first example and the UDisk one): two namespaces.
    let ns = cluster.namespace("guide").await;
    let ns2 = cluster.namespace("guide-udisk").await;
    let env = CubeEnv::start_with_registries(cluster, true, GUIDE_REGISTRIES).await;
    let cid = fresh_cluster_id();
    let started = std::time::Instant::now();
    let daemon = start(&guide_config(&env, cluster, &cid, "guide")).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    for file in ["01-pod-nginx.yaml", "02-secret-default-token.yaml", "03-deployment-sa-token.yaml"] {
        apply(cluster, &ns.name, file);
    }
    // The guide's `kubectl create secret docker-registry myhub --from-file=.dockerconfigjson`.
    let config = repo_root().join("tests/e2e/guide/myhub.dockerconfigjson");
    let from_file = format!(".dockerconfigjson={}", config.display());
    let (code, out, err) =
        cluster.kubectl(&["create", "secret", "docker-registry", "myhub", "-n", &ns2.name, "--from-file", &from_file]);
    assert_eq!(code, 0, "kubectl create secret: {out}{err}");
    for file in ["04-udisk.yaml", "05-deployment-myhub.yaml"] {
        apply(cluster, &ns2.name, file);
    }

    let on_node = |p: &Pod| running_ready(p) && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node);
    let mut running = Vec::new();
    for namespace in [&ns.name, &ns2.name] {
        let pods: Api<Pod> = Api::namespaced(ns.client.clone(), namespace);
        running.extend(
            wait_for(Duration::from_secs(120), &format!("the guide's 2 pods of {namespace} Running"), || async {
                let list = pods.list(&ListParams::default()).await.ok()?;
                let ok: Vec<Pod> = list.items.into_iter().filter(|p| on_node(p)).collect();
                (ok.len() == 2).then_some(ok)
            })
            .await,
        );
    }
    // The figure BENCHMARKS.md quotes (run with `--nocapture`).
    eprintln!("cube_guide: daemon start to the guide's 4 pods Running and Ready: {:.1?}", started.elapsed());

    // Exactly one instance per pod, sized as Cube sizes them, in the zone the config left out.
    let instances = env.live_instances().await;
    assert_eq!(instances.len(), 4, "{instances:#?}");
    for p in &running {
        let uid = p.uid().unwrap();
        assert_eq!(
            instances.iter().filter(|i| i["uid"] == uid.as_str()).count(),
            1,
            "one instance for {}",
            p.name_any()
        );
    }
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let pods2: Api<Pod> = Api::namespaced(ns.client.clone(), &ns2.name);
    let nginx_uid = pods.get("nginx").await.unwrap().uid().unwrap();
    let nginx = instances.iter().find(|i| i["uid"] == nginx_uid.as_str()).unwrap();
    assert_eq!((nginx["cpu_millis"].as_u64(), nginx["memory_mib"].as_u64()), (Some(2000), Some(2048)));
    assert_eq!(
        pods.get("nginx").await.unwrap().annotations().get("cube.ucloud.cn/size").map(String::as_str),
        Some("2-2Gi")
    );
    assert_eq!(nginx["zone"], "cn-bj2-05", "the region's Cube zone, the config naming none");

    // The PVC was provisioned as a UDisk and the disk is attached to the pod's instance.
    let udisk_uid = pods2.get("nginx").await.unwrap().uid().unwrap();
    let udisk_instance = instances.iter().find(|i| i["uid"] == udisk_uid.as_str()).unwrap();
    let disks = env.inspect("disks").await;
    assert!(
        disks.iter().any(|d| d["status"] == "InUse" && d["attached_to"] == udisk_instance["cube_id"]),
        "disk attached: {disks:#?}"
    );

    // The UDisk pod kept the automatic token mount (it does not opt out): a minted token.
    let (code, out, err) = cluster.kubectl(&[
        "exec",
        "-n",
        &ns2.name,
        "nginx",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
    ]);
    assert_eq!(code, 0, "kubectl exec: {err}");
    assert_eq!(out.trim(), ns2.name);

    // Exit codes come back through the apiserver.
    let (code, _, _) = cluster.kubectl(&["exec", "-n", &ns.name, "nginx", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, 3);

    // Logs of the guide's nginx: the simulator's banner names the image as printed.
    let (code, out, err) = cluster.kubectl(&["logs", "-n", &ns.name, "nginx"]);
    assert_eq!(code, 0, "kubectl logs: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "cube-sim: container nginx started from image uhub.an-link.com/ucloud/nginx:latest");
    assert!(lines[1].starts_with("cube-sim: environment keys: "), "{out}");

    // 不支持 Volume Expansion: the StorageClass allows it, so the apiserver takes the new size, and
    // the virtual node answers on the claim (and the pod) that the disk stays as it is.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ns.client.clone(), &ns2.name);
    let grow = json!({"spec": {"resources": {"requests": {"storage": "30Gi"}}}});
    claims.patch("logdisk-claim", &PatchParams::default(), &Patch::Merge(&grow)).await.unwrap();
    let events: Api<Event> = Api::namespaced(ns.client.clone(), &ns2.name);
    let refused = wait_for(Duration::from_secs(60), "VolumeResizeFailed on the claim", || async {
        warnings(&events, "PersistentVolumeClaim", "logdisk-claim", "VolumeResizeFailed").await.into_iter().next()
    })
    .await;
    let message = refused.message.unwrap_or_default();
    assert!(
        message.contains("30Gi") && message.contains("stays 20Gi") && message.contains("not supported"),
        "{message}"
    );
    wait_for(Duration::from_secs(30), "VolumeResizeFailed on the pod", || async {
        warnings(&events, "Pod", "nginx", "VolumeResizeFailed").await.into_iter().next()
    })
    .await;
    let disk = env.inspect("disks").await.into_iter().find(|d| d["attached_to"] == udisk_instance["cube_id"]).unwrap();
    assert_eq!(disk["size_gb"], 20, "{disk}");

    daemon.stop().await;
    retire(&ns.client, &node).await;
    env.stop().await;
}

fn statefulset(replicas: i32) -> StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "serviceName": "web",
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "nodeSelector": {"type": "virtual-kubelet"},
                    "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "anlianyun", "effect": "NoSchedule"}],
                    "containers": [{"name": "web", "image": "uhub.an-link.com/ucloud/nginx:latest",
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]
                }
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "ssd-csi-udisk",
                         "resources": {"requests": {"storage": "20Gi"}}}
            }]
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statefulset_with_a_udisk_claim_template_scales_up_and_down_keeping_each_replicas_disk() {
    let _turn = TURNS.lock().await;
    let cluster = cluster();
    let ns = cluster.namespace("sts").await;
    let env = CubeEnv::start_with_registries(cluster, true, GUIDE_REGISTRIES).await;
    let cid = fresh_cluster_id();
    let daemon = start(&guide_config(&env, cluster, &cid, &ns.name)).await;
    let node = node_of(&ns.client, &cid).await.name_any();

    // The guide's StorageClass (cluster-wide; the other test of this binary may have made it).
    let sc: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "ssd-csi-udisk"}, "provisioner": "udisk.csi.ucloud.cn",
        "parameters": {"type": "ssd", "fsType": "ext4"}, "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": true,
    }))
    .unwrap();
    match Api::<StorageClass>::all(ns.client.clone()).create(&PostParams::default(), &sc).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("StorageClass: {e}"),
    }

    let sets: Api<StatefulSet> = Api::namespaced(ns.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    sets.create(&PostParams::default(), &statefulset(1)).await.unwrap();
    let scale = |n: i32| {
        let sets = sets.clone();
        async move {
            let patch = json!({"spec": {"replicas": n}});
            sets.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
    };
    // Running replicas by name → (pod uid, the UDisk its instance mounts).
    let replicas = |n: usize| {
        let (pods, env) = (pods.clone(), &env);
        async move {
            wait_for(Duration::from_secs(180), &format!("{n} replicas Running, each with its disk"), || async {
                let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
                let live: Vec<&Pod> = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
                if live.len() != n || !live.iter().all(|p| running_ready(p)) {
                    return None;
                }
                let instances = env.live_instances().await;
                if instances.len() != n {
                    return None;
                }
                let disks = env.inspect("disks").await;
                let mut out = std::collections::BTreeMap::new();
                for p in live {
                    let uid = p.uid()?;
                    let cube_id = instances.iter().find(|i| i["uid"] == uid.as_str())?["cube_id"].clone();
                    let disk = disks.iter().find(|d| d["status"] == "InUse" && d["attached_to"] == cube_id)?;
                    out.insert(p.name_any(), disk["udisk_id"].as_str()?.to_string());
                }
                Some(out)
            })
            .await
        }
    };

    let one = replicas(1).await;
    scale(3).await;
    let three = replicas(3).await;
    assert_eq!(three["web-0"], one["web-0"], "web-0 keeps its disk");
    let distinct: std::collections::BTreeSet<&String> = three.values().collect();
    assert_eq!(distinct.len(), 3, "a disk per replica: {three:?}");

    // Scaled down: the instances go, the claims (and their disks) stay for the replicas' return.
    scale(1).await;
    let down = replicas(1).await;
    assert_eq!(down["web-0"], one["web-0"]);
    let disks = env.inspect("disks").await;
    for name in ["web-1", "web-2"] {
        let d = disks.iter().find(|d| d["udisk_id"] == three[name].as_str()).unwrap();
        assert_eq!(d["status"], "Available", "{name}'s disk detached and kept: {d}");
    }
    scale(2).await;
    let back = replicas(2).await;
    assert_eq!(back["web-1"], three["web-1"], "web-1 comes back to its own disk");

    daemon.stop().await;
    retire(&ns.client, &node).await;
    env.stop().await;
}
