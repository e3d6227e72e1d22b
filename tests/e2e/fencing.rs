//! Fencing (issue 13): a replica paused (`SIGSTOP`) past its election lease while its writes are
//! in flight resumes (`SIGCONT`) to find every write for the node refused — nothing more reaches
//! the cloud or the apiserver from it — while the replica that took over converges the pods. Two
//! vkhost processes (the binary, `cargo build -p vkhost`) against the simulator and the control
//! plane; each replica calls the cloud with its own key, and the paused one reaches the apiserver
//! through a recording proxy, so every write is attributed to the replica that made it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use vkcube_e2e::apiproxy::ApiProxy;
use vkcube_e2e::bench::Proc;
use vkcube_e2e::cube::{CubeEnv, PRIVATE_KEY, PUBLIC_KEY, SECOND_PRIVATE_KEY, SECOND_PUBLIC_KEY};
use vkcube_e2e::daemon::{fresh_cluster_id, node_of};
use vkcube_e2e::{cluster, deployment, running_ready, wait_for};

/// The vkhost binary: `$VKCUBE_VKHOST`, else `$CARGO_TARGET_DIR/debug/vkhost`.
fn vkhost_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("VKCUBE_VKHOST") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| vkcube_e2e::repo_root().join("target"));
    let path = target.join("debug").join("vkhost");
    assert!(path.exists(), "{} is missing: run `cargo build -p vkhost` first", path.display());
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A vkhost process; continued (if paused) and stopped when dropped.
struct Replica {
    proc: Proc,
    admin: String,
    log: PathBuf,
}

impl Replica {
    fn spawn(name: &'static str, config: &str, dir: &Path, admin_port: u16) -> Replica {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(vkhost_binary())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start vkhost");
        eprintln!("{name}: pid {}, log {}", child.id(), log.display());
        Replica { proc: Proc { name, child }, admin: format!("http://127.0.0.1:{admin_port}"), log }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `vkhost_fenced_writes_total` by target, from the admin endpoint.
    async fn fenced_writes(&self) -> Option<BTreeMap<String, u64>> {
        let text = reqwest::get(format!("{}/metrics", self.admin)).await.ok()?.text().await.ok()?;
        let mut by_target = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("vkhost_fenced_writes_total{")) {
            let target = line.split("target=\"").nth(1)?.split('"').next()?.to_string();
            let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
            *by_target.entry(target).or_default() += n as u64;
        }
        Some(by_target)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid().to_string()]).status();
        self.proc.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_paused_past_its_lease_with_writes_in_flight_writes_nothing_once_resumed() {
    let cluster = cluster();
    let ns = cluster.namespace("fence").await;
    let env = CubeEnv::start(cluster, false).await;
    let cid = fresh_cluster_id();
    let dir = std::env::temp_dir().join(format!("vkcube-fence-{}-{cid}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Replica A reaches the apiserver through the recording proxy, B directly; both act with the
    // daemon's credentials (a client certificate could not pass the proxy).
    let proxy = ApiProxy::start(cluster.client().await).await;
    let proxied = dir.join("a.kubeconfig");
    proxy.kubeconfig(&proxied);
    let base = env.daemon_config(cluster, &cid, &ns.name, "[api]\nnode_credentials = \"shared\"\n");
    let config = |identity: &str, admin: u16, kubeconfig: &Path, (public, private): (&str, &str)| {
        base.replace("[ha]\n", &format!("[ha]\nidentity = \"{identity}\"\n"))
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin}\""))
            .replace(
                &format!("kubeconfig = \"{}\"", cluster.kubeconfig.display()),
                &format!("kubeconfig = \"{}\"", kubeconfig.display()),
            )
            .replace(&format!("public_key = \"{PUBLIC_KEY}\""), &format!("public_key = \"{public}\""))
            .replace(&format!("private_key = \"{PRIVATE_KEY}\""), &format!("private_key = \"{private}\""))
    };
    let (admin_a, admin_b) = (free_port(), free_port());
    let a =
        Replica::spawn("replica-a", &config("replica-a", admin_a, &proxied, (PUBLIC_KEY, PRIVATE_KEY)), &dir, admin_a);
    node_of(&ns.client, &cid).await;
    let b = Replica::spawn(
        "replica-b",
        &config("replica-b", admin_b, &cluster.kubeconfig, (SECOND_PUBLIC_KEY, SECOND_PRIVATE_KEY)),
        &dir,
        admin_b,
    );
    wait_for(Duration::from_secs(60), "replica-b's admin endpoint", || async {
        reqwest::get(format!("{}/healthz", b.admin)).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), "kube-node-lease");
    let lease_name = vkhost::naming::election_lease_name(&cid, "n1");
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert_eq!(holder(leases.get(&lease_name).await.unwrap()), "replica-a");

    // Every cloud call takes 3 s. A create looks the pod's instance up (GetCubePod), then makes
    // it (CreateCubePod): A is paused while its lookups are in flight, so it resumes believing
    // the instances are still to be made, after B made them.
    env.set_faults(json!({"latency_ms": 3000})).await;
    let deployments: Api<Deployment> = Api::namespaced(ns.client.clone(), &ns.name);
    deployments.create(&PostParams::default(), &deployment("fenced", &ns.name, 6)).await.unwrap();
    wait_for(Duration::from_secs(60), "replica-a's first instance lookup at the cloud", || async {
        (env.requests_of(PUBLIC_KEY).await.get("GetCubePod").copied().unwrap_or(0) > 0).then_some(())
    })
    .await;
    signal(a.pid(), "STOP");
    let paused = Instant::now();
    // B takes over only once A's claim expired; A's fence lapsed a margin before that.
    wait_for(Duration::from_secs(30), "replica-b holds the election lease", || async {
        (holder(leases.get(&lease_name).await.ok()?) == "replica-b").then_some(())
    })
    .await;
    let took_over = paused.elapsed();
    let cloud_before = env.requests_of(PUBLIC_KEY).await;
    let count = |m: &BTreeMap<String, u64>, action: &str| m.get(action).copied().unwrap_or(0);
    // Lookups not yet followed by a create: each resumes into a CreateCubePod.
    let lookups = count(&cloud_before, "GetCubePod").saturating_sub(count(&cloud_before, "CreateCubePod"));
    let resumed = Instant::now();
    signal(a.pid(), "CONT");
    env.set_faults(json!({})).await;

    // B converges the pods: one instance each, none left over.
    let pods: Api<Pod> = Api::namespaced(ns.client.clone(), &ns.name);
    let uids = wait_for(Duration::from_secs(120), "6 pods of fenced Running", || async {
        let list = pods.list(&ListParams::default().labels("app=fenced")).await.ok()?;
        let live: Vec<&Pod> = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        (live.len() == 6 && live.iter().all(|p| running_ready(p)))
            .then(|| live.iter().map(|p| p.uid().unwrap()).collect::<Vec<_>>())
    })
    .await;
    let by_uid = wait_for(Duration::from_secs(30), "one instance per pod and no other", || async {
        let by_uid = env.instances_by_uid().await;
        (by_uid.len() == uids.len() && uids.iter().all(|u| by_uid.get(u) == Some(&1))).then_some(by_uid)
    })
    .await;
    assert_eq!(holder(leases.get(&lease_name).await.unwrap()), "replica-b");

    // Nothing A sent after it resumed reached the cloud or (but the election itself) the apiserver.
    let election = format!("/leases/{lease_name}");
    let wrote_nothing_since_resumed = || async {
        let cloud_after = env.requests_of(PUBLIC_KEY).await;
        assert_eq!(cloud_after, cloud_before, "replica-a called the cloud after its lease lapsed");
        let late: Vec<_> = proxy
            .recorded()
            .into_iter()
            .filter(|r| r.at >= resumed && r.mutating() && !r.path.ends_with(&election))
            .collect();
        assert!(late.is_empty(), "replica-a wrote to the apiserver after its lease lapsed: {late:?}");
    };
    wrote_nothing_since_resumed().await;
    // A's in-flight syncs finished into its fence: their writes were refused, not sent.
    let fenced = wait_for(Duration::from_secs(60), "replica-a's fenced writes", || async {
        a.fenced_writes().await.filter(|m| m.values().sum::<u64>() > 0)
    })
    .await;
    wrote_nothing_since_resumed().await;

    if lookups > 0 {
        assert!(fenced.get("cloud").copied().unwrap_or(0) > 0, "lookups in flight, but no create refused: {fenced:?}");
    }
    let before: usize = proxy.recorded().iter().filter(|r| r.at < paused && r.mutating()).count();
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(log.contains("fenced"), "replica-a's log says nothing of the fence:\n{log}");
    eprintln!(
        "replica-a: {cloud_before:?} at the cloud and {before} apiserver writes before the pause ({lookups} lookups in flight); \
         replica-b took over {took_over:?} after the pause; replica-a refused {fenced:?} once resumed; \
         instances: {}",
        by_uid.len()
    );
    drop(a);
    drop(b);
    env.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
