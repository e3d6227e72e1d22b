//! The Cube environment of a test: the Cube simulator in this process, the UDisk provisioner
//! stand-in, a daemon config for `cube.wasm`, and reads of the simulator's inspection endpoint.

use std::time::Duration;

use cube_sim::provisioner::{Provisioner, ProvisionerArgs};
use cube_sim::{Config as SimConfig, SimHandle, Simulator};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::Cluster;
use crate::daemon::plugin_path;

pub const PUBLIC_KEY: &str = "vkcube-test-public";
pub const PRIVATE_KEY: &str = "vkcube-test-private";
/// The self-hosted registry the simulator and the nodes allow besides UHub.
pub const PRIVATE_REGISTRY: &str = "myhub.example.com";

/// A simulator (zero provisioning delay) and, optionally, the UDisk provisioner.
pub struct CubeEnv {
    pub sim: SimHandle,
    stop: CancellationToken,
}

impl CubeEnv {
    pub async fn start(cluster: &Cluster, provisioner: bool) -> CubeEnv {
        let mut cfg = SimConfig::default().with_key(PUBLIC_KEY, PRIVATE_KEY).without_delays();
        cfg.registries.push(PRIVATE_REGISTRY.into());
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

    /// Live (not deleted) instances.
    pub async fn live_instances(&self) -> Vec<Value> {
        self.inspect("instances").await.into_iter().filter(|i| i["deleted"] == false).collect()
    }

    /// A daemon config for `cube.wasm` against this simulator: one node labelled
    /// `vkcube-test=<label>`, tainted `virtual-kubelet.io/provider=cube`.
    pub fn daemon_config(&self, cluster: &Cluster, cluster_id: &str, label: &str, extra: &str) -> String {
        let url = self.url();
        let ws = url.replacen("http://", "ws://", 1);
        format!(
            r#"
cluster_id = "{cluster_id}"
kubeconfig = "{kubeconfig}"
{extra}
[plugin]
path = "{plugin}"
allowed_urls = ["{url}/", "{ws}/"]
[pods]
status_sync_seconds = 2
orphan_sweep_seconds = 5
[ha]
lease_duration_seconds = 6
[admin]
listen = "127.0.0.1:0"
[[nodes]]
id = "n1"
taint_value = "cube"
labels = {{ "vkcube-test" = "{label}" }}
[nodes.provider]
api_url = "{url}"
region = "cn-bj2"
zone = "cn-bj2-05"
vpc_id = "uvnet-test0001"
subnet_id = "subnet-test0001"
registries = ["{PRIVATE_REGISTRY}"]
public_key = "{PUBLIC_KEY}"
private_key = "{PRIVATE_KEY}"
"#,
            kubeconfig = cluster.kubeconfig.display(),
            plugin = plugin_path("cube").display(),
        )
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.sim.shutdown().await;
    }
}
