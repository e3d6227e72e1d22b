//! Running the vkhost daemon in a test: built plugins, per-test configs (a fresh cluster id so
//! node names never collide), in-process daemons with crash-like abort.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams};
use vkhost::config::DaemonConfig;
use vkhost::daemon::Daemon;
use vkhost::plugin::PluginRuntime;

use crate::{Cluster, wait_for};

/// Where `plugins/build` put the plugins (`$VKCUBE_PLUGIN_DIR` overrides).
pub fn plugin_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("VKCUBE_PLUGIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("target"))
            .join("plugins")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `plugins/build` (or `make test`) first", path.display());
    path
}

/// A cluster id no other test uses.
pub fn fresh_cluster_id() -> String {
    let chars = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..8).map(|_| chars[rand::random_range(0..chars.len())] as char).collect();
    format!("uk8s-{tail}")
}

/// One plugin runtime for the whole test binary: daemons in one process then share the plugins'
/// key-value stores, as replicas share a real backend.
pub fn shared_runtime() -> Arc<PluginRuntime> {
    static RT: OnceLock<Arc<PluginRuntime>> = OnceLock::new();
    RT.get_or_init(|| PluginRuntime::new().expect("plugin runtime")).clone()
}

/// The TOML of a one-node test daemon: node `n1` labelled `vkcube-test=<label>`, tainted like the
/// guide's nodes (`virtual-kubelet.io/provider=cube`), short sync and lease periods, an admin
/// endpoint on a free port. `plugin` is the body of the `[plugin]` table, `provider` of
/// `[nodes.provider]` (none when empty); `extra` goes at the top level.
pub fn test_config(
    cluster: &Cluster,
    cluster_id: &str,
    label: &str,
    extra: &str,
    plugin: &str,
    provider: &str,
) -> String {
    let provider = if provider.is_empty() { String::new() } else { format!("[nodes.provider]\n{provider}") };
    format!(
        r#"
cluster_id = "{cluster_id}"
kubeconfig = "{kubeconfig}"
{extra}
[plugin]
{plugin}
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
{provider}
"#,
        kubeconfig = cluster.kubeconfig.display(),
    )
}

/// A daemon config for the example provider (see `test_config`).
pub fn example_config(cluster: &Cluster, cluster_id: &str, label: &str, extra: &str) -> String {
    let plugin = format!("path = \"{}\"", plugin_path("example").display());
    test_config(cluster, cluster_id, label, extra, &plugin, "")
}

/// `config` (from [`test_config`]) with `kubeconfig` as the daemon's bootstrap identity and its
/// election Leases in `ha_namespace`.
pub fn with_bootstrap(cluster: &Cluster, config: &str, kubeconfig: &std::path::Path, ha_namespace: &str) -> String {
    let admin = format!("kubeconfig = \"{}\"", cluster.kubeconfig.display());
    assert!(config.contains(&admin), "not a test_config: {config}");
    config
        .replace(&admin, &format!("kubeconfig = \"{}\"", kubeconfig.display()))
        .replace("[ha]\n", &format!("[ha]\nnamespace = \"{ha_namespace}\"\n"))
}

/// Starts a daemon in this process.
pub async fn start(config: &str) -> Daemon {
    let cfg = DaemonConfig::parse(config, std::path::Path::new("test.toml")).expect("test config");
    Daemon::start(cfg, Some(shared_runtime())).await.expect("daemon start")
}

/// [`start`] with a plugin runtime of its own: for a test whose daemon must not share what the
/// runtime keeps per plugin (the plugin's counters, its `[plugin.egress]` budget) with the other
/// daemons of the test binary running in parallel.
pub async fn start_alone(config: &str) -> Daemon {
    let cfg = DaemonConfig::parse(config, std::path::Path::new("test.toml")).expect("test config");
    Daemon::start(cfg, None).await.expect("daemon start")
}

/// The node a daemon registered for config node `n1` of `cluster_id`, once it is Ready.
pub async fn node_of(client: &Client, cluster_id: &str) -> Node {
    let nodes: Api<Node> = Api::all(client.clone());
    let selector = format!("vkcube.io/cluster-id={cluster_id},vkcube.io/node-id=n1");
    wait_for(Duration::from_secs(60), "virtual node Ready", || async {
        let list = nodes.list(&ListParams::default().labels(&selector)).await.ok()?;
        list.items.into_iter().find(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await
}
