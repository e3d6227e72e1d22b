//! The process-level fault harness shared by `tests/bench/chaos.rs` (the program) and
//! `tests/e2e/chaos.rs` (its bounded version in `make test`): vkhost replicas and cube-sim as
//! separate processes on a real control plane, the faults injected into them, a TCP relay between
//! the daemons and the apiserver that can be cut, and the invariants checked continuously.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::bench::Proc;
use crate::{Cluster, running_ready};

const SIM_PUBLIC: &str = "chaos-public";
const SIM_PRIVATE: &str = "chaos-private-0123456789abcdef";
/// Label of every pod the harness makes.
pub const APP: &str = "chaos";
/// How often the sampler looks at the pods and the cloud.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// What the daemon waits before sweeping an instance it has just seen (`pods/controller.rs`).
const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// Build profile of the binaries under test: `release` for the program, `debug` for `make test`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Profile {
    Debug,
    Release,
}

/// `$CARGO_TARGET_DIR/<profile>/<name>`, failing with the build command when missing;
/// `VKCUBE_CHAOS_BIN_DIR=DIR` takes both binaries from DIR instead (copies a parallel build
/// cannot overwrite mid-run).
pub fn binary(name: &str, profile: Profile) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("VKCUBE_CHAOS_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    match profile {
        Profile::Release => crate::bench::release_binary(name),
        Profile::Debug => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::repo_root().join("target"));
            let path = target.join("debug").join(name);
            if !path.exists() {
                bail!("{} is missing: run `cargo build -p {name}` first (same CARGO_TARGET_DIR)", path.display());
            }
            Ok(path)
        }
    }
}

/// The faults the harness injects. Each runs to its end (the process restarted, the relay
/// restored, the cloud's faults cleared) before the harness waits for convergence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// SIGKILL of the acting replica, restarted at once.
    Kill,
    /// SIGKILL of the acting replica while `vkhost node delete` runs.
    KillNodeDelete,
    /// SIGSTOP of the acting replica past its election lease (cloud latency, so writes are in
    /// flight), the standby takes over, then SIGCONT.
    Pause,
    ApiserverRestart,
    EtcdRestart,
    /// The daemons' TCP relay to the apiserver refuses and drops connections for a while.
    ApiserverCut,
    /// cube-sim SIGKILLed and started again from its state file on the same port.
    SimRestart,
    /// A burst of 150s, then 10% 153s on every action.
    CloudErrors,
    /// 5% of connections dropped unanswered.
    CloudDrops,
    /// Instances made but the create answer never arrives.
    CloudLostCreates,
    /// Instances made, the create answer 5 s late.
    CloudLateCreates,
    /// 1–5 s before every answer.
    CloudLatency,
    /// Half the creates answer 8203 (quota).
    CloudQuota,
    /// A new plugin version, a broken one (truncated), then the original again.
    Reload,
}

impl Fault {
    /// Every fault, in the order `--all` runs them (node delete last: the node is gone after).
    pub const ALL: [Fault; 14] = [
        Fault::Kill,
        Fault::Pause,
        Fault::ApiserverRestart,
        Fault::EtcdRestart,
        Fault::ApiserverCut,
        Fault::SimRestart,
        Fault::CloudErrors,
        Fault::CloudDrops,
        Fault::CloudLostCreates,
        Fault::CloudLateCreates,
        Fault::CloudLatency,
        Fault::CloudQuota,
        Fault::Reload,
        Fault::KillNodeDelete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillNodeDelete => "kill-node-delete",
            Fault::Pause => "pause",
            Fault::ApiserverRestart => "apiserver-restart",
            Fault::EtcdRestart => "etcd-restart",
            Fault::ApiserverCut => "apiserver-cut",
            Fault::SimRestart => "sim-restart",
            Fault::CloudErrors => "cloud-errors",
            Fault::CloudDrops => "cloud-drops",
            Fault::CloudLostCreates => "cloud-lost-creates",
            Fault::CloudLateCreates => "cloud-late-creates",
            Fault::CloudLatency => "cloud-latency",
            Fault::CloudQuota => "cloud-quota",
            Fault::Reload => "reload",
        }
    }

    pub fn parse(name: &str) -> Result<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name).with_context(|| {
            format!("no fault {name:?}; one of: {}", Fault::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "))
        })
    }
}

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub profile: Profile,
    /// How long the apiserver stays unreachable (`apiserver-cut`).
    pub cut: Duration,
    /// How long cloud faults stay on.
    pub cloud_window: Duration,
    /// `[ha] lease_duration_seconds` of the replicas.
    pub lease_seconds: u64,
    /// `[pods] orphan_sweep_seconds`.
    pub sweep_seconds: u64,
    /// Bound on each convergence wait.
    pub timeout: Duration,
    /// Every this many pods one carries `cube.ucloud.cn/cube-eip: "true"` (its own Deployment).
    pub eip_every: usize,
}

impl Options {
    pub fn new(profile: Profile) -> Options {
        Options {
            profile,
            cut: Duration::from_secs(60),
            cloud_window: Duration::from_secs(15),
            lease_seconds: 6,
            sweep_seconds: 5,
            timeout: Duration::from_secs(300),
            eip_every: 10,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator process.

/// cube-sim as a process with `--state`, so it can be killed and started again where it was.
pub struct Sim {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    proc: Option<Proc>,
    http: reqwest::Client,
}

impl Sim {
    pub fn start(bin: PathBuf, dir: &Path) -> Result<Sim> {
        let mut sim = Sim {
            bin,
            dir: dir.to_path_buf(),
            port: 0,
            proc: None,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        };
        sim.spawn()?;
        Ok(sim)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("cube-sim.log"))?;
        let mut child = Command::new(&self.bin)
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--key", &format!("{SIM_PUBLIC}:{SIM_PRIVATE}")])
            .arg("--state")
            .arg(self.dir.join("cube-sim-state.json"))
            .args(["--pending-ms", "200", "--creating-ms", "800"])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let proc = Proc { name: "cube-sim", child };
        let first = lines.next().context("cube-sim printed nothing")??;
        let url = first.strip_prefix("listening on ").with_context(|| format!("cube-sim said {first:?}"))?.trim();
        self.port = url.rsplit(':').next().and_then(|p| p.parse().ok()).context("cube-sim's port")?;
        std::thread::spawn(move || for _ in lines {});
        self.proc = Some(proc);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// SIGKILL, then the same binary on the same port from the state file.
    pub async fn restart(&mut self, down_for: Duration) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        tokio::time::sleep(down_for).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The port may be held a moment longer.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "cube-sim restart");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// GET `/_sim/<what>`.
    pub async fn inspect(&self, what: &str) -> Result<Vec<Value>> {
        let body: Value = self.http.get(format!("{}/_sim/{what}", self.url())).send().await?.json().await?;
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    /// Replaces the simulator's faults (`{}` clears them).
    pub async fn set_faults(&self, faults: Value) -> Result<()> {
        let resp = self.http.post(format!("{}/_sim/faults", self.url())).json(&faults).send().await?;
        if !resp.status().is_success() {
            bail!("POST /_sim/faults {faults}: {}", resp.status());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The relay between the daemons and the apiserver.

/// A TCP relay on loopback to the apiserver that can be cut (new connections refused, open ones
/// dropped) and restored on the same port.
pub struct Relay {
    pub port: u16,
    target: SocketAddr,
    running: Mutex<Option<CancellationToken>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Result<Arc<Relay>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let relay = Arc::new(Relay { port: listener.local_addr()?.port(), target, running: Mutex::new(None) });
        relay.serve(listener);
        Ok(relay)
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.running.lock().unwrap() = Some(token.clone());
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    /// Refuses new connections and drops the open ones.
    pub fn cut(&self) {
        if let Some(token) = self.running.lock().unwrap().take() {
            token.cancel();
        }
    }

    pub async fn restore(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "relay rebind");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("rebind the apiserver relay"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon replicas.

/// One vkhost replica: its own config (identity, admin port), started, killed, paused.
pub struct Replica {
    pub identity: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub admin_port: u16,
    bin: PathBuf,
    proc: Option<Proc>,
    http: reqwest::Client,
    /// `vkhost_fenced_writes_total` of this replica's earlier (killed) processes: a restarted
    /// process counts from 0 again.
    fenced_before: f64,
}

impl Replica {
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("CUBE_PUBLIC_KEY", SIM_PUBLIC)
            .env("CUBE_PRIVATE_KEY", SIM_PRIVATE)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.proc = Some(Proc { name: "vkhost", child });
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid())
    }

    /// SIGKILL and reap, keeping what the process had counted of fenced writes.
    pub async fn kill(&mut self) {
        self.fenced_before = self.fenced_writes().await;
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
        }
    }

    pub fn ensure_alive(&mut self) -> Result<()> {
        match &mut self.proc {
            Some(p) => p.ensure_alive(&self.log),
            None => Ok(()),
        }
    }

    /// The admin endpoint's `/metrics` text (empty when unreachable).
    pub async fn metrics(&self) -> String {
        match self.http.get(format!("http://127.0.0.1:{}/metrics", self.admin_port)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// `vkhost_fenced_writes_total` over this replica's processes (0 where absent).
    pub async fn fenced_writes(&self) -> f64 {
        self.fenced_before + counter(&self.metrics().await, "vkhost_fenced_writes_total")
    }

    /// `GET /plugin`.
    pub async fn plugin(&self) -> Option<Value> {
        self.http.get(format!("http://127.0.0.1:{}/plugin", self.admin_port)).send().await.ok()?.json().await.ok()
    }
}

/// Sum of a Prometheus counter over its label sets; 0 when absent.
pub fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// The control plane's own processes.

/// Stops `name` (etcd, kube-apiserver) of the cluster in `dir` and starts it again with the same
/// command line, as `tests/cluster/up` did (`setsid`, log appended, pid file rewritten so
/// `tests/cluster/down` still stops it).
pub async fn restart_component(dir: &Path, name: &str, down_for: Duration) -> Result<()> {
    let pid_file = dir.join("pids").join(format!("{name}.pid"));
    let pid: u32 = std::fs::read_to_string(&pid_file)?.trim().parse().context("pid file")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).with_context(|| format!("{name} (pid {pid})"))?;
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(down_for).await;
    let log = dir.join("logs").join(format!("{name}.log"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"log="$1"; shift; setsid "$@" >>"$log" 2>&1 </dev/null & echo $!"#)
        .arg("sh")
        .arg(&log)
        .args(&args)
        .output()?;
    let new_pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::write(&pid_file, format!("{new_pid}\n"))?;
    Ok(())
}

/// Waits until the apiserver answers `/readyz` with `ok`.
pub async fn wait_apiserver_ready(client: &Client, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let req = http::Request::get("/readyz").body(Vec::new()).expect("request");
        if let Ok(text) = client.request_text(req).await
            && text.trim() == "ok"
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("kube-apiserver not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Invariants.

/// What the invariant checks counted; every field but `samples`, `max_live`,
/// `unreachable_samples` and `fenced_writes` must stay 0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub samples: u64,
    /// Samples where the simulator or the apiserver did not answer (restarts).
    pub unreachable_samples: u64,
    pub max_live: usize,
    /// Pods that never reached Running nor a named failure with an Event.
    pub lost: usize,
    /// Samples with two live instances for one pod UID.
    pub duplicated: u64,
    /// Live instances without a pod after one orphan sweep.
    pub orphaned: usize,
    /// Pods still Terminating at the end.
    pub stuck: usize,
    /// EIPs neither released nor bound at the end, or bound to a deleted instance at any sample.
    pub eip_leaked: usize,
    /// Disks attached to a deleted instance at any sample, or InUse at the end.
    pub disk_leaked: usize,
    /// Pods that failed with a named reason and an Event (allowed).
    pub named_failures: usize,
    /// `vkhost_fenced_writes_total` summed over the replicas (0 when the metric is absent).
    pub fenced_writes: f64,
}

impl Counts {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.orphaned == 0
            && self.stuck == 0
            && self.eip_leaked == 0
            && self.disk_leaked == 0
    }
}

#[derive(Default)]
struct CheckState {
    counts: Counts,
    recent: VecDeque<String>,
    violation: Option<String>,
}

/// The continuous checker: every [`SAMPLE_EVERY`] it lists the namespace's pods and the
/// simulator's instances, EIPs and disks; the first violation is kept with its evidence.
#[derive(Clone)]
pub struct Checker {
    state: Arc<Mutex<CheckState>>,
    stop: CancellationToken,
}

impl Checker {
    pub fn start(client: Client, ns: String, sim_url: String) -> Checker {
        let checker = Checker { state: Arc::default(), stop: CancellationToken::new() };
        let c = checker.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client");
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = Instant::now();
            loop {
                tokio::select! {
                    _ = c.stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let get = |what: &'static str| {
                    let (http, url) = (http.clone(), sim_url.clone());
                    async move {
                        let v: Value = http.get(format!("{url}/_sim/{what}")).send().await?.json().await?;
                        anyhow::Ok(v.as_array().cloned().unwrap_or_default())
                    }
                };
                // Instances first, then EIPs and disks: an instance seen deleted had its EIP
                // and disks let go in the same step, so a later read must not show them held.
                let lp = ListParams::default();
                let (p, i) = tokio::join!(pods.list(&lp), get("instances"));
                let (e, d) = tokio::join!(get("eips"), get("disks"));
                match (p, i, e, d) {
                    (Ok(p), Ok(i), Ok(e), Ok(d)) => c.sample(started.elapsed(), &p.items, &i, &e, &d),
                    _ => c.state.lock().unwrap().counts.unreachable_samples += 1,
                }
            }
        });
        checker
    }

    fn sample(&self, at: Duration, pods: &[Pod], instances: &[Value], eips: &[Value], disks: &[Value]) {
        let live: Vec<&Value> = instances.iter().filter(|i| i["deleted"] != true).collect();
        // Instances made after the instance read are in neither set.
        let dead_ids: HashSet<&str> =
            instances.iter().filter(|i| i["deleted"] == true).filter_map(|i| i["cube_id"].as_str()).collect();
        let mut by_uid: HashMap<&str, Vec<&Value>> = HashMap::new();
        for i in &live {
            by_uid.entry(i["uid"].as_str().unwrap_or("")).or_default().push(i);
        }
        let ready = pods.iter().filter(|p| running_ready(p)).count();
        let deleting = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).count();
        let summary = format!(
            "t={:.2}s pods={} ready={ready} deleting={deleting} live_instances={} eips_bound={}",
            at.as_secs_f64(),
            pods.len(),
            live.len(),
            eips.iter().filter(|e| !e["bound_to"].is_null()).count()
        );
        let mut st = self.state.lock().unwrap();
        st.counts.samples += 1;
        st.counts.max_live = st.counts.max_live.max(live.len());
        st.recent.push_back(summary);
        if st.recent.len() > 12 {
            st.recent.pop_front();
        }
        let pod_of = |uid: &str| {
            pods.iter()
                .find(|p| p.uid().as_deref() == Some(uid))
                .map(|p| {
                    format!(
                        "{}/{} on {:?}",
                        p.namespace().unwrap_or_default(),
                        p.name_any(),
                        p.spec.as_ref().and_then(|s| s.node_name.clone())
                    )
                })
                .unwrap_or_else(|| "no pod".into())
        };
        let mut evidence = Vec::new();
        for (uid, is) in &by_uid {
            if is.len() > 1 {
                st.counts.duplicated += 1;
                let ids: Vec<String> = is
                    .iter()
                    .map(|i| format!("{} ({}, created {})", i["cube_id"], i["state"], i["created_at"]))
                    .collect();
                evidence.push(format!("two live instances for pod uid {uid} ({}): {}", pod_of(uid), ids.join(", ")));
            }
        }
        for e in eips {
            if let Some(id) = e["bound_to"]["resource_id"].as_str()
                && dead_ids.contains(id)
                && e["released"] != true
            {
                st.counts.eip_leaked += 1;
                evidence.push(format!("EIP {} bound to {id}, which is deleted", e["eip_id"]));
            }
        }
        for d in disks {
            if let Some(id) = d["attached_to"].as_str()
                && dead_ids.contains(id)
            {
                st.counts.disk_leaked += 1;
                evidence.push(format!("UDisk {} attached to {id}, which is deleted", d["udisk_id"]));
            }
        }
        if !evidence.is_empty() && st.violation.is_none() {
            let recent: Vec<String> = st.recent.iter().cloned().collect();
            st.violation = Some(format!("{}\nlast samples:\n  {}", evidence.join("\n"), recent.join("\n  ")));
        }
    }

    /// Fails with the evidence once a violation was seen.
    pub fn ensure_ok(&self) -> Result<()> {
        match &self.state.lock().unwrap().violation {
            Some(v) => bail!("invariant violated:\n{v}"),
            None => Ok(()),
        }
    }

    /// Records a violation found by a final check.
    pub fn violate(&self, what: String) -> anyhow::Error {
        let mut st = self.state.lock().unwrap();
        let recent: Vec<String> = st.recent.iter().cloned().collect();
        let text = format!("{what}\nlast samples:\n  {}", recent.join("\n  "));
        st.violation.get_or_insert(text.clone());
        anyhow::anyhow!("invariant violated:\n{text}")
    }

    pub fn counts(&self) -> Counts {
        self.state.lock().unwrap().counts.clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.state.lock().unwrap().counts)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// The world: control plane, relay, simulator, two replicas, a namespace.

/// Everything one run uses.
pub struct World {
    pub cluster: &'static Cluster,
    pub client: Client,
    pub ns: String,
    pub dir: PathBuf,
    pub sim: Sim,
    pub relay: Arc<Relay>,
    pub replicas: Vec<Replica>,
    pub cluster_id: String,
    /// The plugin file the replicas watch (a copy of cube.wasm the harness swaps).
    pub plugin: PathBuf,
    pub plugin_original: Vec<u8>,
    pub opts: Options,
    pub checker: Checker,
    /// How many plugin versions the harness has written (each new one differs).
    reloads: usize,
}

/// What one fault cycle measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub fault: String,
    pub pods: usize,
    /// Deployment create -> every pod Running+Ready (or a named failure).
    pub burst_s: f64,
    /// End of the burst fault -> converged.
    pub converge_after_fault_s: f64,
    /// Scale to 0 -> every pod gone.
    pub teardown_s: f64,
    pub counts: Counts,
    pub notes: Vec<String>,
}

impl World {
    pub async fn start(cluster: &'static Cluster, opts: Options, tag: &str) -> Result<World> {
        let vkhost = binary("vkhost", opts.profile)?;
        let sim_bin = binary("cube-sim", opts.profile)?;
        let cube = crate::daemon::plugin_path("cube");
        let dir = std::env::temp_dir().join(format!("vkcube-chaos-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let client = cluster.client().await;
        let ns = cluster.namespace("chaos").await.name;
        let cluster_id = crate::daemon::fresh_cluster_id();

        let sim = Sim::start(sim_bin, &dir)?;
        let api: SocketAddr = cluster.apiserver.trim_start_matches("https://").parse().context("apiserver address")?;
        let relay = Relay::start(api).await?;
        let kubeconfig = dir.join("kubeconfig-relay");
        let kc = std::fs::read_to_string(&cluster.kubeconfig)?
            .replace(&format!("server: {}", cluster.apiserver), &format!("server: https://127.0.0.1:{}", relay.port));
        std::fs::write(&kubeconfig, kc)?;
        let plugin = dir.join("cube.wasm");
        let plugin_original = std::fs::read(&cube)?;
        std::fs::write(&plugin, &plugin_original)?;

        let mut replicas = Vec::new();
        for name in ["a", "b"] {
            let admin_port = free_port()?;
            let identity = format!("chaos-{name}");
            let config = dir.join(format!("vkhost-{name}.toml"));
            std::fs::write(
                &config,
                daemon_config(&opts, &cluster_id, &ns, &kubeconfig, &plugin, &sim.url(), &identity, admin_port),
            )?;
            let mut r = Replica {
                identity,
                log: dir.join(format!("vkhost-{name}.log")),
                config,
                admin_port,
                bin: vkhost.clone(),
                proc: None,
                http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
                fenced_before: 0.0,
            };
            r.start()?;
            replicas.push(r);
        }
        let checker = Checker::start(client.clone(), ns.clone(), sim.url());
        let world = World {
            cluster,
            client,
            ns,
            dir,
            sim,
            relay,
            replicas,
            cluster_id,
            plugin,
            plugin_original,
            opts,
            checker,
            reloads: 0,
        };
        for id in ["n1", "n2"] {
            world.node_name(id).await?;
        }
        Ok(world)
    }

    /// Name of config node `id` once it is Ready.
    pub async fn node_name(&self, id: &str) -> Result<String> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let selector = format!("vkcube.io/cluster-id={},vkcube.io/node-id={id}", self.cluster_id);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(list) = nodes.list(&ListParams::default().labels(&selector)).await
                && let Some(n) = list.items.iter().find(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
            {
                return Ok(n.name_any());
            }
            if Instant::now() > deadline {
                bail!("node {id} not Ready within 120 s; see {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Index of the replica holding node `id`'s election Lease.
    pub async fn acting(&self, id: &str) -> Result<usize> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let name = crate::chaos::election_lease(&self.cluster_id, id);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(l)) = leases.get_opt(&name).await
                && let Some(holder) = l.spec.and_then(|s| s.holder_identity)
                && let Some(i) = self.replicas.iter().position(|r| r.identity == holder)
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no replica holds {name}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn ensure(&mut self) -> Result<()> {
        self.checker.ensure_ok()?;
        for r in &mut self.replicas {
            r.ensure_alive()?;
        }
        Ok(())
    }

    async fn pods(&self) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(pods.list(&ListParams::default().labels(&format!("app={APP}"))).await?.items)
    }

    /// Creates or scales the cycle's Deployments: `pods` in all on node `id`, every
    /// `eip_every`-th with an EIP.
    pub async fn scale(&self, name: &str, node_id: &str, pods: usize) -> Result<()> {
        let eip = pods.checked_div(self.opts.eip_every).unwrap_or(0);
        for (suffix, replicas, with_eip) in [("", pods - eip, false), ("-eip", eip, true)] {
            let d = format!("{name}{suffix}");
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
            if api.get_opt(&d).await?.is_some() {
                api.patch(&d, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await?;
            } else {
                api.create(&PostParams::default(), &deployment(&d, &node_label(&self.ns, node_id), replicas, with_eip))
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn delete_deployments(&self, name: &str) -> Result<()> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        for d in [name.to_string(), format!("{name}-eip")] {
            let _ = api.delete(&d, &DeleteParams::default()).await;
        }
        Ok(())
    }

    /// Waits until `want` pods of Deployment `name` (and its `-eip` twin) are Running+Ready and
    /// every other is a named failure with an Event; counts the rest as lost on timeout.
    pub async fn converge(&mut self, name: &str, want: usize) -> Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            self.ensure()?;
            if let Ok(pods) = self.pods().await {
                let mine: Vec<&Pod> = pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter(|p| p.labels().get("deployment").is_some_and(|d| d == name || *d == format!("{name}-eip")))
                    .collect();
                let ready = mine.iter().filter(|p| running_ready(p)).count();
                let unsettled: Vec<&&Pod> = mine.iter().filter(|p| !running_ready(p) && !named_failure(p)).collect();
                if ready >= want && unsettled.is_empty() {
                    let failed: Vec<&&Pod> = mine.iter().filter(|p| named_failure(p)).collect();
                    for p in &failed {
                        if !self.has_event(p).await {
                            return Err(self.checker.violate(format!("pod {} failed without an Event", p.name_any())));
                        }
                    }
                    self.checker.update(|c| c.named_failures += failed.len());
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let lost = want.saturating_sub(ready).max(unsettled.len());
                    self.checker.update(|c| c.lost += lost);
                    let list: Vec<String> = unsettled.iter().take(10).map(|p| describe(p)).collect();
                    return Err(self.checker.violate(format!(
                        "{ready} of {want} pods of {name} Running+Ready after {:?}; unsettled: {}",
                        self.opts.timeout,
                        list.join("; ")
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn has_event(&self, pod: &Pod) -> bool {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let uid = pod.uid().unwrap_or_default();
        events
            .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
            .await
            .is_ok_and(|l| !l.items.is_empty())
    }

    /// Waits until no pod of `name` is left but named failures (then deletes those, and waits
    /// again); pods still Terminating at the timeout are stuck.
    pub async fn drained(&mut self, name: &str) -> Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        loop {
            self.ensure()?;
            if let Ok(pods) = self.pods().await {
                let mine: Vec<&Pod> = pods
                    .iter()
                    .filter(|p| p.labels().get("deployment").is_some_and(|d| d == name || *d == format!("{name}-eip")))
                    .collect();
                if mine.is_empty() {
                    return Ok(());
                }
                for p in mine.iter().filter(|p| p.metadata.deletion_timestamp.is_none() && named_failure(p)) {
                    let _ = api.delete(&p.name_any(), &DeleteParams::default()).await;
                }
                if Instant::now() > deadline {
                    let stuck: Vec<&&Pod> = mine.iter().filter(|p| p.metadata.deletion_timestamp.is_some()).collect();
                    self.checker.update(|c| c.stuck += stuck.len().max(1));
                    let list: Vec<String> = mine.iter().take(10).map(|p| describe(p)).collect();
                    return Err(self.checker.violate(format!(
                        "{} pods of {name} left after {:?} ({} Terminating): {}",
                        mine.len(),
                        self.opts.timeout,
                        stuck.len(),
                        list.join("; ")
                    )));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// After the orphan grace and one sweep: no live instance without a pod, no EIP left
    /// unreleased or bound, no disk in use by a pod that is gone.
    pub async fn swept(&mut self) -> Result<()> {
        let deadline = Instant::now() + ORPHAN_GRACE + Duration::from_secs(self.opts.sweep_seconds * 2 + 10);
        loop {
            self.ensure()?;
            let pods = self.pods().await.unwrap_or_default();
            let uids: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
            let (Ok(instances), Ok(eips), Ok(disks)) =
                (self.sim.inspect("instances").await, self.sim.inspect("eips").await, self.sim.inspect("disks").await)
            else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let orphans: Vec<&Value> = instances
                .iter()
                .filter(|i| i["deleted"] != true && !i["uid"].as_str().is_some_and(|u| uids.contains(u)))
                .collect();
            let eips_left: Vec<&Value> = eips.iter().filter(|e| e["released"] != true).collect();
            let disks_used: Vec<&Value> = disks.iter().filter(|d| !d["attached_to"].is_null()).collect();
            let pods_left = pods.iter().any(|p| p.metadata.deletion_timestamp.is_none());
            if orphans.is_empty() && (pods_left || (eips_left.is_empty() && disks_used.is_empty())) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.checker.update(|c| {
                    c.orphaned += orphans.len();
                    if !pods_left {
                        c.eip_leaked += eips_left.len();
                        c.disk_leaked += disks_used.len();
                    }
                });
                let show = |v: &[&Value], key: &str| {
                    v.iter().take(10).map(|i| i[key].to_string()).collect::<Vec<_>>().join(", ")
                };
                return Err(self.checker.violate(format!(
                    "after one orphan sweep: {} live instances without a pod [{}], {} EIPs unreleased [{}], {} disks in use [{}]",
                    orphans.len(),
                    show(&orphans, "cube_id"),
                    eips_left.len(),
                    show(&eips_left, "eip_id"),
                    disks_used.len(),
                    show(&disks_used, "udisk_id")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until `n` pods of `name` are Running+Ready (the trigger of a mid-burst fault).
    pub async fn until_ready(&mut self, name: &str, n: usize) -> Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        while Instant::now() < deadline {
            self.ensure()?;
            let pods = self.pods().await.unwrap_or_default();
            if pods
                .iter()
                .filter(|p| p.labels().get("deployment").is_some_and(|d| d.starts_with(name)) && running_ready(p))
                .count()
                >= n
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Waits until at most `n` pods of `name` are left undeleted (the trigger of a
    /// mid-scale-down fault).
    pub async fn until_at_most(&mut self, name: &str, n: usize) -> Result<()> {
        let deadline = Instant::now() + self.opts.timeout;
        while Instant::now() < deadline {
            self.ensure()?;
            let pods = self.pods().await.unwrap_or_default();
            let left = pods
                .iter()
                .filter(|p| p.labels().get("deployment").is_some_and(|d| d.starts_with(name)))
                .filter(|p| p.metadata.deletion_timestamp.is_none() || running_ready(p))
                .count();
            if left <= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Injects `fault` and returns once it is over (processes back, relay restored, faults
    /// cleared). `notes` gets what happened.
    pub async fn inject(&mut self, fault: Fault, rng_latency_ms: u64, notes: &mut Vec<String>) -> Result<()> {
        let window = self.opts.cloud_window;
        match fault {
            Fault::Kill => {
                let i = self.acting("n1").await?;
                notes.push(format!("SIGKILL {} (pid {:?})", self.replicas[i].identity, self.replicas[i].pid()));
                self.replicas[i].kill().await;
                self.replicas[i].start()?;
            }
            Fault::Pause => {
                let i = self.acting("n1").await?;
                let other = 1 - i;
                self.sim.set_faults(json!({"latency_ms": rng_latency_ms})).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let before: f64 = self.fenced_writes().await;
                self.replicas[i].signal("STOP");
                let stopped = Instant::now();
                let deadline = stopped + Duration::from_secs(self.opts.lease_seconds * 4 + 30);
                while self.acting("n1").await? != other {
                    if Instant::now() > deadline {
                        self.replicas[i].signal("CONT");
                        bail!("the standby did not take over within {:?}", deadline - stopped);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let took_over = stopped.elapsed();
                // Let the new holder act for a while with the old one's writes still pending.
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.replicas[i].signal("CONT");
                notes.push(format!(
                    "SIGSTOP {} with {rng_latency_ms} ms cloud latency; {} took over after {:.1}s; SIGCONT after {:.1}s",
                    self.replicas[i].identity,
                    self.replicas[other].identity,
                    took_over.as_secs_f64(),
                    stopped.elapsed().as_secs_f64()
                ));
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.sim.set_faults(json!({})).await?;
                let fenced = self.fenced_writes().await - before;
                notes.push(format!("vkhost_fenced_writes_total +{fenced} (0 when the metric is absent)"));
            }
            Fault::ApiserverRestart | Fault::EtcdRestart => {
                let name = if fault == Fault::EtcdRestart { "etcd" } else { "kube-apiserver" };
                let t = Instant::now();
                restart_component(&self.cluster.dir, name, Duration::from_secs(1)).await?;
                wait_apiserver_ready(&self.client, Duration::from_secs(180)).await?;
                notes.push(format!("{name} restarted; apiserver ready again after {:.1}s", t.elapsed().as_secs_f64()));
            }
            Fault::ApiserverCut => {
                self.relay.cut();
                tokio::time::sleep(self.opts.cut).await;
                self.relay.restore().await?;
                notes.push(format!("apiserver unreachable for {}s", self.opts.cut.as_secs()));
            }
            Fault::SimRestart => {
                let old = self.sim.pid();
                self.sim.restart(Duration::from_secs(2)).await?;
                notes.push(format!("cube-sim (pid {old:?}) SIGKILLed, restarted from its state file 2 s later"));
            }
            Fault::CloudErrors
            | Fault::CloudDrops
            | Fault::CloudLostCreates
            | Fault::CloudLateCreates
            | Fault::CloudLatency
            | Fault::CloudQuota => {
                let faults = cloud_faults(fault, rng_latency_ms);
                self.sim.set_faults(faults.clone()).await?;
                let t = Instant::now();
                while t.elapsed() < window {
                    self.ensure()?;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let seen = self.sim.http.get(format!("{}/_sim/faults", self.sim.url())).send().await?.text().await?;
                self.sim.set_faults(json!({})).await?;
                notes.push(format!("cloud faults {faults} for {}s; counters {seen}", window.as_secs()));
            }
            Fault::Reload => {
                let acting = self.acting("n1").await?;
                let start = self.active_sha(acting).await;
                self.reloads += 1;
                let mut newer = self.plugin_original.clone();
                newer.extend(custom_section("vkcube-chaos", format!("version {}", self.reloads).as_bytes()));
                let new_sha = self.swap_plugin(&newer, acting, start.as_deref(), true).await?;
                let broken = self.plugin_original[..self.plugin_original.len() / 2].to_vec();
                let kept = self.swap_plugin(&broken, acting, new_sha.as_deref(), false).await?;
                let original = self.plugin_original.clone();
                let back = self.swap_plugin(&original, acting, kept.as_deref(), true).await?;
                notes.push(format!(
                    "plugin {start:?} -> new {new_sha:?} -> truncated (refused, kept {kept:?}) -> rolled back {back:?}"
                ));
                if kept != new_sha {
                    bail!("the truncated plugin was not refused: active {kept:?}, expected {new_sha:?}");
                }
            }
            Fault::KillNodeDelete => bail!("kill-node-delete runs as its own cycle (World::node_delete_cycle)"),
        }
        Ok(())
    }

    /// Writes the plugin file (temporary file, rename) and waits for the acting replica's
    /// active sha256 to change (`expect_change`) or to stay.
    async fn swap_plugin(
        &self,
        bytes: &[u8],
        acting: usize,
        before: Option<&str>,
        expect_change: bool,
    ) -> Result<Option<String>> {
        let tmp = self.dir.join("cube.wasm.new");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.plugin)?;
        let deadline = Instant::now() + Duration::from_secs(if expect_change { 60 } else { 5 });
        loop {
            let now = self.active_sha(acting).await;
            if expect_change && now.is_some() && now.as_deref() != before {
                return Ok(now);
            }
            if Instant::now() > deadline {
                if expect_change {
                    bail!("the plugin was not reloaded within 60 s (active {now:?})");
                }
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn active_sha(&self, replica: usize) -> Option<String> {
        let v = self.replicas[replica].plugin().await?;
        find_key(&v, "sha256").and_then(|s| s.as_str().map(str::to_string))
    }

    /// `vkhost_fenced_writes_total` over both replicas (0 where absent).
    pub async fn fenced_writes(&self) -> f64 {
        let mut total = 0.0;
        for r in &self.replicas {
            total += r.fenced_writes().await;
        }
        total
    }

    /// One fault cycle: `pods` created at once on n1 with the fault injected mid-burst, then a
    /// scale to 0 with the fault injected again, then the final checks.
    pub async fn cycle(&mut self, fault: Fault, pods: usize, latency_ms: u64) -> Result<Report> {
        if fault == Fault::KillNodeDelete {
            return self.node_delete_cycle(pods).await;
        }
        let name = format!("{APP}-{}", fault.name());
        let mut notes = Vec::new();
        let before = self.checker.counts();
        let fenced_before = self.fenced_writes().await;
        let t0 = Instant::now();
        self.scale(&name, "n1", pods).await?;
        self.until_ready(&name, pods / 4).await?;
        self.inject(fault, latency_ms, &mut notes).await?;
        let fault_end = Instant::now();
        self.converge(&name, pods).await?;
        let burst_s = t0.elapsed().as_secs_f64();
        let converge_after_fault_s = fault_end.elapsed().as_secs_f64();

        let t1 = Instant::now();
        self.scale(&name, "n1", 0).await?;
        self.until_at_most(&name, pods * 3 / 4).await?;
        self.inject(fault, latency_ms, &mut notes).await?;
        self.drained(&name).await?;
        let teardown_s = t1.elapsed().as_secs_f64();
        self.swept().await?;
        self.delete_deployments(&name).await?;
        let fenced = self.fenced_writes().await - fenced_before;
        let mut counts = diff(&before, &self.checker.counts());
        counts.fenced_writes = fenced;
        Ok(Report { fault: fault.name().into(), pods, burst_s, converge_after_fault_s, teardown_s, counts, notes })
    }

    /// `pods` on node n2, then `vkhost node delete` with the acting replica SIGKILLed while it
    /// runs: afterwards the Node is gone, every instance of its pods deleted, the pods gone.
    pub async fn node_delete_cycle(&mut self, pods: usize) -> Result<Report> {
        let name = format!("{APP}-node-delete");
        let mut notes = Vec::new();
        let before = self.checker.counts();
        let t0 = Instant::now();
        self.scale(&name, "n2", pods).await?;
        self.converge(&name, pods).await?;
        let burst_s = t0.elapsed().as_secs_f64();
        let node = self.node_name("n2").await?;
        let t1 = Instant::now();
        let log = std::fs::File::create(self.dir.join("node-delete.log"))?;
        let mut cli = Command::new(binary("vkhost", self.opts.profile)?)
            .args(["node", "delete", &node, "--config"])
            .arg(&self.replicas[0].config)
            .env("CUBE_PUBLIC_KEY", SIM_PUBLIC)
            .env("CUBE_PRIVATE_KEY", SIM_PRIVATE)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        // Kill the acting replica once the delete has begun taking instances away.
        let live_n2 = |v: &[Value]| v.iter().filter(|i| i["deleted"] != true && i["group"] == node.as_str()).count();
        let start_live = live_n2(&self.sim.inspect("instances").await?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while live_n2(&self.sim.inspect("instances").await.unwrap_or_default()) + pods / 4 > start_live
            && Instant::now() < deadline
            && cli.try_wait()?.is_none()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let i = self.acting("n2").await.unwrap_or(0);
        notes.push(format!("SIGKILL {} during `vkhost node delete {node}`", self.replicas[i].identity));
        self.replicas[i].kill().await;
        self.replicas[i].start()?;
        let status = tokio::task::spawn_blocking(move || cli.wait()).await??;
        notes.push(format!("`vkhost node delete` exited {status}"));
        if !status.success() {
            bail!("vkhost node delete failed ({status}); see {}", self.dir.join("node-delete.log").display());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        if nodes.get_opt(&node).await?.is_some() {
            return Err(self.checker.violate(format!("node {node} still exists after `vkhost node delete`")));
        }
        let left = live_n2(&self.sim.inspect("instances").await?);
        if left > 0 {
            self.checker.update(|c| c.orphaned += left);
            return Err(self.checker.violate(format!("{left} live instances of deleted node {node}")));
        }
        // The Deployment goes; the pods bound to the deleted node are collected by the control
        // plane's pod GC.
        self.delete_deployments(&name).await?;
        self.drained(&name).await?;
        let teardown_s = t1.elapsed().as_secs_f64();
        self.swept().await?;
        let counts = diff(&before, &self.checker.counts());
        Ok(Report {
            fault: Fault::KillNodeDelete.name().into(),
            pods,
            burst_s,
            converge_after_fault_s: 0.0,
            teardown_s,
            counts,
            notes,
        })
    }

    /// `minutes` of mixed churn on node n1 — scale up and down, pod deletes, node disable and
    /// enable, plugin reloads, random faults — from `seed`; every tenth step the faults are
    /// cleared and the pods must converge; at the end everything is scaled to 0 and swept.
    /// `say` gets one line per step.
    pub async fn soak(&mut self, minutes: f64, max_pods: usize, seed: u64, say: &dyn Fn(String)) -> Result<SoakReport> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let name = format!("{APP}-soak");
        let node = self.node_name("n1").await?;
        let started = Instant::now();
        let end = started + Duration::from_secs_f64(minutes * 60.0);
        let mut actions: BTreeMap<String, usize> = BTreeMap::new();
        let mut target = 0usize;
        let mut checkpoints = Vec::new();
        let faults: Vec<Fault> =
            Fault::ALL.into_iter().filter(|f| !matches!(f, Fault::KillNodeDelete | Fault::Reload)).collect();
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let mut step = 0usize;
        while Instant::now() < end {
            self.ensure()?;
            step += 1;
            let roll = rng.random_range(0..100);
            let mut notes = Vec::new();
            let action = if roll < 30 {
                target = rng.random_range(0..=max_pods);
                self.scale(&name, "n1", target).await?;
                ("scale".to_string(), format!("scale to {target}"))
            } else if roll < 45 {
                let pods = self.pods().await.unwrap_or_default();
                let live: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
                let k = rng.random_range(1..=5).min(live.len());
                for _ in 0..k {
                    let p = live[rng.random_range(0..live.len())];
                    let _ = pods_api.delete(&p.name_any(), &DeleteParams::default()).await;
                }
                ("delete-pods".to_string(), format!("delete {k} pods"))
            } else if roll < 55 {
                let secs = rng.random_range(3..=15);
                vkctl(self, &["disable", &node])?;
                tokio::time::sleep(Duration::from_secs(secs)).await;
                vkctl(self, &["enable", &node])?;
                ("node-disable".to_string(), format!("node disable for {secs}s, enable"))
            } else if roll < 65 {
                self.inject(Fault::Reload, 0, &mut notes).await?;
                ("reload".to_string(), "reload".to_string())
            } else {
                let f = faults[rng.random_range(0..faults.len())];
                let latency = rng.random_range(1000..=5000);
                self.inject(f, latency, &mut notes).await?;
                (f.name().to_string(), format!("fault {}", f.name()))
            };
            let (kind, action) = action;
            *actions.entry(kind).or_default() += 1;
            say(format!("[{:>6.1}s] step {step}: {action} {}", started.elapsed().as_secs_f64(), notes.join("; ")));
            if step.is_multiple_of(10) {
                self.sim.set_faults(json!({})).await?;
                let t = Instant::now();
                self.converge(&name, target).await?;
                checkpoints.push(t.elapsed().as_secs_f64());
                say(format!(
                    "[{:>6.1}s] checkpoint: {target} pods converged in {:.1}s",
                    started.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64()
                ));
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(1000..=5000))).await;
        }
        self.sim.set_faults(json!({})).await?;
        vkctl(self, &["enable", &node])?;
        let t = Instant::now();
        self.converge(&name, target).await?;
        let final_converge_s = t.elapsed().as_secs_f64();
        self.scale(&name, "n1", 0).await?;
        self.drained(&name).await?;
        self.swept().await?;
        self.delete_deployments(&name).await?;
        let mut counts = self.checker.counts();
        counts.fenced_writes = self.fenced_writes().await;
        Ok(SoakReport { minutes, seed, steps: step, actions, checkpoints_s: checkpoints, final_converge_s, counts })
    }

    /// Stops the checker and every process the world started (the control plane stops with the
    /// test binary).
    pub fn stop(&mut self) {
        self.checker.stop();
        for r in &mut self.replicas {
            r.signal("CONT");
            if let Some(mut p) = r.proc.take() {
                p.stop();
            }
        }
        if let Some(mut p) = self.sim.proc.take() {
            p.stop();
        }
        self.relay.cut();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a soak did and counted.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub minutes: f64,
    pub seed: u64,
    pub steps: usize,
    pub actions: BTreeMap<String, usize>,
    /// Convergence time at each checkpoint (faults cleared, every pod Running).
    pub checkpoints_s: Vec<f64>,
    pub final_converge_s: f64,
    pub counts: Counts,
}

/// `vkhost node <args> --config <replica a's config>`.
fn vkctl(world: &World, args: &[&str]) -> Result<()> {
    let out = Command::new(binary("vkhost", world.opts.profile)?)
        .arg("node")
        .args(args)
        .arg("--config")
        .arg(&world.replicas[0].config)
        .output()?;
    if !out.status.success() {
        bail!("vkhost node {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Name of node `id`'s election Lease (as `vkhost::naming::election_lease_name`).
pub fn election_lease(cluster_id: &str, id: &str) -> String {
    format!("vkcube-{cluster_id}-{id}")
}

fn node_label(ns: &str, id: &str) -> String {
    format!("{ns}-{id}")
}

/// The faults of one cloud fault, as `POST /_sim/faults` takes them.
pub fn cloud_faults(fault: Fault, latency_ms: u64) -> Value {
    match fault {
        Fault::CloudErrors => json!({
            "burst": {"ret_code": 150, "count": 100},
            "errors": {"*": {"rate": 0.1, "ret_code": 153}}
        }),
        Fault::CloudDrops => json!({"drop_rate": {"*": 0.05}}),
        Fault::CloudLostCreates => json!({"create_timeouts": {"count": 20, "mode": "drop", "delay_ms": 0}}),
        Fault::CloudLateCreates => json!({"create_timeouts": {"count": 20, "mode": "delay", "delay_ms": 5000}}),
        Fault::CloudLatency => json!({"latency_ms": latency_ms}),
        Fault::CloudQuota => json!({"errors": {"CreateCubePod": {"rate": 0.5, "ret_code": 8203}}}),
        _ => json!({}),
    }
}

fn diff(before: &Counts, after: &Counts) -> Counts {
    Counts {
        samples: after.samples - before.samples,
        unreachable_samples: after.unreachable_samples - before.unreachable_samples,
        max_live: after.max_live,
        lost: after.lost - before.lost,
        duplicated: after.duplicated - before.duplicated,
        orphaned: after.orphaned - before.orphaned,
        stuck: after.stuck - before.stuck,
        eip_leaked: after.eip_leaked - before.eip_leaked,
        disk_leaked: after.disk_leaked - before.disk_leaked,
        named_failures: after.named_failures - before.named_failures,
        fenced_writes: after.fenced_writes,
    }
}

/// A wasm custom section (valid anywhere in a component): a new file, the same code.
fn custom_section(name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = vec![0u8];
    leb(body.len(), &mut out);
    out.extend(body);
    out
}

fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|v| find_key(v, key))),
        Value::Array(a) => a.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// Failed with a reason, or refused by the provider (the rejected annotation).
fn named_failure(p: &Pod) -> bool {
    let s = p.status.as_ref();
    (s.and_then(|s| s.phase.as_deref()) == Some("Failed")
        && s.and_then(|s| s.reason.as_deref()).is_some_and(|r| !r.is_empty()))
        || p.annotations().contains_key("vkcube.io/rejected")
}

fn describe(p: &Pod) -> String {
    let s = p.status.as_ref();
    format!(
        "{} uid {} node {:?} phase {:?} reason {:?} deleting {}",
        p.name_any(),
        p.uid().unwrap_or_default(),
        p.spec.as_ref().and_then(|s| s.node_name.clone()),
        s.and_then(|s| s.phase.clone()),
        s.and_then(|s| s.reason.clone()),
        p.metadata.deletion_timestamp.is_some()
    )
}

#[allow(clippy::too_many_arguments)]
fn daemon_config(
    opts: &Options,
    cluster_id: &str,
    ns: &str,
    kubeconfig: &Path,
    plugin: &Path,
    sim_url: &str,
    identity: &str,
    admin_port: u16,
) -> String {
    let ws = sim_url.replacen("http://", "ws://", 1);
    let mut cfg = format!(
        "cluster_id = \"{cluster_id}\"\nkubeconfig = \"{}\"\n\n[plugin]\npath = \"{}\"\n\
         allowed_urls = [\"{sim_url}/\", \"{ws}/\"]\n\n[pods]\nstatus_sync_seconds = 2\norphan_sweep_seconds = {}\n\n\
         [ha]\nlease_duration_seconds = {}\nidentity = \"{identity}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        kubeconfig.display(),
        plugin.display(),
        opts.sweep_seconds,
        opts.lease_seconds,
    );
    for id in ["n1", "n2"] {
        cfg.push_str(&format!(
            "\n[[nodes]]\nid = \"{id}\"\nmax_pods = 200\ntaint_value = \"cube\"\nlabels = {{ \"vkcube-chaos\" = \"{}\" }}\n\
             [nodes.provider]\napi_url = \"{sim_url}\"\nregion = \"cn-bj2\"\nzone = \"cn-bj2-05\"\n\
             vpc_id = \"uvnet-chaos\"\nsubnet_id = \"subnet-chaos\"\nmax_pods = 200\n\
             [nodes.secrets]\npublic_key = {{ env = \"CUBE_PUBLIC_KEY\" }}\nprivate_key = {{ env = \"CUBE_PRIVATE_KEY\" }}\n",
            node_label(ns, id)
        ));
    }
    cfg
}

/// A Deployment of the guide's shape pinned to one chaos node; `eip` adds
/// `cube.ucloud.cn/cube-eip: "true"` (released with the instance, the default).
pub fn deployment(name: &str, node_label: &str, replicas: usize, eip: bool) -> Deployment {
    let annotations: BTreeMap<&str, &str> =
        if eip { [("cube.ucloud.cn/cube-eip", "true")].into_iter().collect() } else { BTreeMap::new() };
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": APP, "deployment": name}},
            "template": {
                "metadata": {"labels": {"app": APP, "deployment": name}, "annotations": annotations},
                "spec": {
                    "nodeSelector": {"type": "virtual-kubelet", "vkcube-chaos": node_label},
                    "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "cube", "effect": "NoSchedule"}],
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "nginx", "image": "uhub.service.ucloud.cn/library/nginx:1.25",
                                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]
                }
            }
        }
    }))
    .expect("static deployment")
}
