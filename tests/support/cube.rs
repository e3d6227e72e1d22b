//! The Cube environment of a test: the Cube simulator in this process, the UDisk provisioner
//! stand-in, a daemon config for `cube.wasm`, and reads of the simulator's inspection endpoint.

use std::time::Duration;

use cube_sim::provisioner::{Provisioner, ProvisionerArgs};
use cube_sim::{Config as SimConfig, SimHandle, Simulator};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::daemon::{plugin_path, test_config};
use crate::{Cluster, TestNamespace};

pub const PUBLIC_KEY: &str = "vkcube-test-public";
pub const PRIVATE_KEY: &str = "vkcube-test-private";
/// A second accepted key pair, for a second replica whose calls the simulator tells apart
/// (`GET /_sim/requests?by=key`).
pub const SECOND_PUBLIC_KEY: &str = "vkcube-test-public-2";
pub const SECOND_PRIVATE_KEY: &str = "vkcube-test-private-2";
/// The self-hosted registry the simulator and the nodes allow besides UHub.
pub const PRIVATE_REGISTRY: &str = "myhub.example.com";

/// Pod addresses of a simulator that serves containers ([`CubeEnv::start_serving`]): loopback,
/// which Linux routes to `lo` whole.
pub const SERVED_POD_CIDR: &str = "127.77.0.0/16";

/// A simulator (zero provisioning delay) and, optionally, the UDisk provisioner.
pub struct CubeEnv {
    pub sim: SimHandle,
    stop: CancellationToken,
}

impl CubeEnv {
    pub async fn start(cluster: &Cluster, provisioner: bool) -> CubeEnv {
        CubeEnv::start_with(cluster, provisioner, |_| {}).await
    }

    /// [`CubeEnv::start`] with more registries the simulator pulls from (the guide's
    /// `uhub.an-link.com`, say) besides UHub and [`PRIVATE_REGISTRY`].
    pub async fn start_with_registries(cluster: &Cluster, provisioner: bool, registries: &[&str]) -> CubeEnv {
        CubeEnv::start_with(cluster, provisioner, |cfg| cfg.registries.extend(registries.iter().map(|r| r.to_string())))
            .await
    }

    /// [`CubeEnv::start`] with the simulator serving its nginx containers on pod addresses of
    /// [`SERVED_POD_CIDR`], and the daemon config granting them as port-forward targets.
    pub async fn start_serving(cluster: &Cluster) -> CubeEnv {
        CubeEnv::start_with(cluster, false, |cfg| {
            cfg.network.pod_cidr = SERVED_POD_CIDR.into();
            cfg.network.serve = true;
        })
        .await
    }

    /// `start` with the simulator's config adjusted by `configure` (say, `lifecycle.deleting_ms`).
    pub async fn start_with(cluster: &Cluster, provisioner: bool, configure: impl FnOnce(&mut SimConfig)) -> CubeEnv {
        let mut cfg = SimConfig::default()
            .with_key(PUBLIC_KEY, PRIVATE_KEY)
            .with_key(SECOND_PUBLIC_KEY, SECOND_PRIVATE_KEY)
            .without_delays();
        cfg.registries.push(PRIVATE_REGISTRY.into());
        configure(&mut cfg);
        let sim = Simulator::start(cfg).await.expect("start cube-sim");
        let stop = CancellationToken::new();
        if provisioner {
            let args = ProvisionerArgs {
                kubeconfig: cluster.kubeconfig.clone(),
                sim: sim.url().to_string(),
                key: format!("{PUBLIC_KEY}:{PRIVATE_KEY}").parse().expect("key pair"),
                region: "cn-bj2".into(),
                zone: "cn-bj2-05".into(),
                interval_ms: 500,
            };
            let p = Provisioner::connect(&args).await.expect("provisioner");
            let token = stop.clone();
            tokio::spawn(async move { p.run_until(Duration::from_millis(500), token).await });
        }
        CubeEnv { sim, stop }
    }

    pub fn url(&self) -> &str {
        self.sim.url()
    }

    /// GET `/_sim/<what>` (instances, eips, disks, firewalls, requests).
    pub async fn inspect(&self, what: &str) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/_sim/{what}", self.url())).await.unwrap().json().await.unwrap();
        body.as_array().cloned().unwrap_or_default()
    }

    /// Requests per action the simulator received with public key `key`.
    pub async fn requests_of(&self, key: &str) -> std::collections::BTreeMap<String, u64> {
        let url = format!("{}/_sim/requests?by=key", self.url());
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        serde_json::from_value(body[key].clone()).unwrap_or_default()
    }

    /// Live (not deleted) instances.
    pub async fn live_instances(&self) -> Vec<Value> {
        self.inspect("instances").await.into_iter().filter(|i| i["deleted"] == false).collect()
    }

    /// A daemon config for `cube.wasm` against this simulator (see `daemon::test_config`).
    pub fn daemon_config(&self, cluster: &Cluster, cluster_id: &str, label: &str, extra: &str) -> String {
        let url = self.url();
        let ws = url.replacen("http://", "ws://", 1);
        // A serving simulator's pod addresses are where port forwarding connects.
        let network = &self.sim.sim().cfg.network;
        let tcp = if network.serve { format!(", \"tcp://{}\"", network.pod_cidr) } else { String::new() };
        let plugin =
            format!("path = \"{}\"\nallowed_urls = [\"{url}/\", \"{ws}/\"{tcp}]", plugin_path("cube").display());
        let provider = format!(
            r#"api_url = "{url}"
region = "cn-bj2"
zone = "cn-bj2-05"
vpc_id = "uvnet-test0001"
subnet_id = "subnet-test0001"
registries = ["{PRIVATE_REGISTRY}"]
public_key = "{PUBLIC_KEY}"
private_key = "{PRIVATE_KEY}"
"#
        );
        test_config(cluster, cluster_id, label, extra, &plugin, &provider)
    }

    /// A pre-provisioned UDisk bound statically to PVC `data`; its id.
    pub async fn udisk_claim(&self, ns: &TestNamespace) -> String {
        let disk: Value = reqwest::Client::new()
            .post(format!("{}/_sim/disks", self.url()))
            .json(&json!({"size_gb": 20, "name": "data", "zone": "cn-bj2-05"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let disk_id = disk["udisk_id"].as_str().expect("udisk id").to_string();
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("pv-{}", ns.name)},
            "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                     "storageClassName": "", "csi": {"driver": "udisk.csi.ucloud.cn", "volumeHandle": disk_id, "fsType": "ext4"},
                     "claimRef": {"namespace": ns.name, "name": "data"}}
        }))
        .unwrap();
        Api::<PersistentVolume>::all(ns.client.clone()).create(&PostParams::default(), &pv).await.unwrap();
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": format!("pv-{}", ns.name),
                     "resources": {"requests": {"storage": "20Gi"}}}
        }))
        .unwrap();
        Api::<PersistentVolumeClaim>::namespaced(ns.client.clone(), &ns.name)
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap();
        disk_id
    }

    /// UID → number of live instances the simulator holds for it.
    pub async fn instances_by_uid(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for i in self.live_instances().await {
            *m.entry(i["uid"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        m
    }

    /// Two pods Running on `node`: `with-disk` mounting a pre-provisioned UDisk bound statically to
    /// claim `data`, and `with-eip` with an EIP; the pods' API.
    pub async fn disk_and_eip_pods(&self, ns: &TestNamespace, node: &str) -> Api<Pod> {
        self.udisk_claim(ns).await;
        let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
        let with_disk = mounting_claim(pod_on_node("with-disk", node, json!({})), "data");
        pods.create(&PostParams::default(), &with_disk).await.unwrap();
        let with_eip = pod_on_node("with-eip", node, json!({"cube.ucloud.cn/cube-eip": "true"}));
        pods.create(&PostParams::default(), &with_eip).await.unwrap();
        for name in ["with-disk", "with-eip"] {
            crate::wait_for(Duration::from_secs(90), &format!("{name} Running"), || async {
                pods.get(name).await.ok().filter(crate::running_ready)
            })
            .await;
        }
        pods
    }

    /// Replaces the simulator's faults (`POST /_sim/faults`).
    pub async fn set_faults(&self, faults: Value) {
        let resp =
            reqwest::Client::new().post(format!("{}/_sim/faults", self.url())).json(&faults).send().await.unwrap();
        assert!(resp.status().is_success(), "set faults: {}", resp.status());
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.sim.shutdown().await;
    }
}

/// A pod bound to `node` with `nodeName` (no scheduler), tolerating the provider taint, one
/// `web` container of 1 CPU / 2Gi with the given annotations.
pub fn pod_on_node(name: &str, node: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "containers": [{"name": "web", "image": "uhub.service.ucloud.cn/library/nginx:1.25",
                            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]
        }
    }))
    .unwrap()
}

/// `pod` with PVC `claim` as volume `data`, mounted at `/data` in its first container.
pub fn mounting_claim(mut pod: Pod, claim: &str) -> Pod {
    let spec = pod.spec.as_mut().expect("a pod spec");
    spec.volumes = Some(vec![
        serde_json::from_value(json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}})).unwrap(),
    ]);
    spec.containers[0].volume_mounts =
        Some(vec![serde_json::from_value(json!({"name": "data", "mountPath": "/data"})).unwrap()]);
    pod
}
