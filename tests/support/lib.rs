//! Test support: one real control plane per test binary (started by `tests/cluster/up`, stopped by
//! its watchdog when the binary exits, even on a panic or a kill), a fresh namespace per test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A running control plane, shared by every test of one test binary.
pub struct Cluster {
    /// Folder holding the cluster's state, certificates and logs.
    pub dir: PathBuf,
    /// Admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The `kubectl` built from the same Kubernetes release as the server.
    pub kubectl: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub apiserver: String,
    /// Everything `up` wrote to `cluster.env` (CA and kubelet-client certificate paths, versions).
    pub env: HashMap<String, String>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The control plane of this test binary, started on first use. Extra apiserver flags may be
/// given through `VKCUBE_APISERVER_FLAGS` before the first call.
pub fn cluster() -> &'static Cluster {
    init_tracing();
    CLUSTER.get_or_init(|| start_cluster(&[], false))
}

/// Like [`cluster`], but the first caller decides extra kube-apiserver flags (for example a
/// feature gate); later callers get the same cluster.
pub fn cluster_with_apiserver_flags(flags: &[&str]) -> &'static Cluster {
    CLUSTER.get_or_init(|| start_cluster(flags, false))
}

/// Like [`cluster`], with metrics-server registered as `metrics.k8s.io` (`kubectl top`) when this
/// is the binary's first call; only the tests that need it pay for it.
pub fn cluster_with_metrics_server() -> &'static Cluster {
    init_tracing();
    CLUSTER.get_or_init(|| start_cluster(&[], true))
}

/// The routable address of the network namespace this test process runs in (see
/// [`in_network_namespace`]), `None` on the host's network.
pub fn network_namespace_address() -> Option<std::net::IpAddr> {
    std::env::var("VKCUBE_NETNS_ADDRESS").ok().and_then(|a| a.parse().ok())
}

/// Runs test `name` of this binary again inside a network namespace of its own
/// (`tests/cluster/netns`: a routable address on its loopback device, no traffic leaving it),
/// where it starts its own control plane. Inside that run it returns the address and the test
/// goes on; outside it waits for that run, fails if it failed, and returns `None`: the test
/// returns at once. (A process cannot move its threads into a namespace mid-run, so the test
/// runs again in a process started inside.)
pub fn in_network_namespace(name: &str) -> Option<std::net::IpAddr> {
    if let Some(address) = network_namespace_address() {
        return Some(address);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(repo_root().join("tests/cluster/netns"));
    cmd.arg(&exe).args(["--exact", name, "--nocapture", "--test-threads=1"]);
    let out = cmd.output().expect("run tests/cluster/netns");
    assert!(
        out.status.success(),
        "{name} in a network namespace failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    None
}

/// Daemon logs in test output, filtered by `RUST_LOG` (quiet by default).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter(filter).try_init();
}

fn start_cluster(apiserver_flags: &[&str], metrics_server: bool) -> Cluster {
    let dir = std::env::temp_dir().join(format!("vkcube-cluster-{}", std::process::id()));
    let up = repo_root().join("tests/cluster/up");
    let started = Instant::now();
    let mut cmd = Command::new(&up);
    cmd.arg(&dir).env("VKCUBE_OWNER_PID", std::process::id().to_string());
    if metrics_server {
        cmd.env("VKCUBE_METRICS_SERVER", "1");
    }
    if !apiserver_flags.is_empty() {
        let mut flags = std::env::var("VKCUBE_APISERVER_FLAGS").unwrap_or_default();
        for f in apiserver_flags {
            flags.push(' ');
            flags.push_str(f);
        }
        cmd.env("VKCUBE_APISERVER_FLAGS", flags);
    }
    let out = cmd.output().expect("run tests/cluster/up");
    if !out.status.success() {
        panic!("tests/cluster/up failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("control plane up in {:.1}s at {}", started.elapsed().as_secs_f64(), dir.display());
    let env: HashMap<String, String> = std::fs::read_to_string(dir.join("cluster.env"))
        .expect("cluster.env written by up")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Cluster {
        kubeconfig: PathBuf::from(&env["KUBECONFIG"]),
        kubectl: PathBuf::from(&env["KUBECTL"]),
        apiserver: env["APISERVER"].clone(),
        dir,
        env,
    }
}

impl Cluster {
    /// An admin client.
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// Runs the real `kubectl` against this cluster; returns (exit code, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.kubectl_command(args).output().expect("run kubectl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A `kubectl` command with the cluster's kubeconfig set, for tests that need stdin or
    /// streaming.
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }

    /// A kubeconfig (written to a temporary file the caller removes) for ServiceAccount
    /// `namespace/name`, with a token from the TokenRequest API: a test daemon's bootstrap
    /// identity with just that account's rights.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let (code, token, err) = self.kubectl(&["create", "token", name, "-n", namespace, "--duration", "1h"]);
        assert_eq!(code, 0, "token for ServiceAccount {namespace}/{name}: {err}");
        let path = std::env::temp_dir().join(format!("vkcube-sa-{}-{namespace}-{name}", std::process::id()));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
                 users: [{{name: u, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
                 current-context: x\n",
                self.apiserver,
                self.env["CA_CRT"],
                token.trim()
            ),
        )
        .expect("write ServiceAccount kubeconfig");
        path
    }

    /// A new namespace for one test, with its `default` ServiceAccount in place (pods cannot be
    /// created before the controller-manager makes it).
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let client = self.client().await;
        let suffix: String = (0..5)
            .map(|_| {
                let chars = b"abcdefghijklmnopqrstuvwxyz0123456789";
                chars[rand::random_range(0..chars.len())] as char
            })
            .collect();
        let name = format!("{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(Duration::from_secs(60), "default ServiceAccount", || async {
            sas.get_opt("default").await.ok().flatten().map(|_| ())
        })
        .await;
        TestNamespace { name, client }
    }
}

/// A namespace owned by one test.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

/// Polls `probe` every 100 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub mod apiproxy;
pub mod bench;
pub mod chaos;
pub mod cube;
pub mod daemon;
pub mod port_forward;

/// The guide's Deployment shape (nodeSelector `type: virtual-kubelet` plus the test's
/// `vkcube-test` label, the `virtual-kubelet.io/provider=cube` toleration, 500m / 512Mi).
pub fn deployment(name: &str, label: &str, replicas: i32) -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"type": "virtual-kubelet", "vkcube-test": label},
                    "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "cube", "effect": "NoSchedule"}],
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "nginx", "image": "uhub.service.ucloud.cn/library/nginx:1.25",
                                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]
                }
            }
        }
    }))
    .unwrap()
}

/// Phase Running and condition Ready=True.
pub fn running_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
