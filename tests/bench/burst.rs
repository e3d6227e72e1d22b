//! The pod-burst benchmark: one real control plane, `vkhost` (or the upstream Go virtual-kubelet,
//! the baseline) as a subprocess, `cube-sim` for the Cube provider, N replicas created at once and
//! every pod followed by a watch; prints startup latency percentiles, burst and teardown times, and
//! the daemon's memory and CPU; for vkhost, where each pod's start went (the daemon's per-pod
//! `pod started` lines, `host/src/pods/startup.rs`); for Cube, the daemon's share of each start
//! apart from the cloud's (its latency per call, the instance's own start).

// The run summary is one `json!` of some fifty fields.
#![recursion_limit = "256"]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::json;
use vkcube_e2e::bench::{Buckets, Proc, loadavg, metric_label, metric_value, percentile, release_binary};
use vkcube_e2e::daemon::{fresh_cluster_id, plugin_path};

mod floor;

const USAGE: &str = "\
pod-burst benchmark: vkhost (a subprocess) against a real control plane on loopback

usage:
  cargo build --release -p vkhost -p cube-sim && plugins/build example cube
  cargo run --release -p vkcube-e2e --example burst -- [--pods N] [--provider example|cube] [--nodes N]
                                                       [--timeout SECS] [--daemon vkhost|upstream|upstream-tuned|floor]
                                                       [--against-upstream] [--against-floor] [--max-in-flight N]
                                                       [--cloud-latency-ms MS] [--instance-start-ms MIN-MAX]

  --pods N        replicas in the burst (default 200; at most 200 per node)
  --provider P    example (instances in memory, Running at once) or cube (cube-sim, by default
                  answering at once with instances Running at once) (default example)
  --cloud-latency-ms MS  cube: the simulator waits MS before every answer (default 0)
  --instance-start-ms MIN-MAX  cube: each instance takes MIN to MAX ms (fixed per instance) from its
                  create to Running (default 0-0)
  --nodes N       virtual nodes (1..=8); one Deployment of pods/N replicas per node (default 1)
  --timeout SECS  bound on each phase: nodes Ready, all Running, all gone (default 600)
  --daemon D      vkhost (default), or upstream: the Go virtual-kubelet v1.14.1 with an in-memory
                  mock provider, the baseline (build it with tests/bench/upstream-vk/build;
                  binary ~/.cache/vkcube/upstream-vk/virtual-kubelet, or --upstream-bin PATH);
                  upstream implies --provider example semantics (pods Running at once); it keeps
                  the stock binary's client-go defaults (5 requests/s, burst 10, 10 workers);
                  upstream-tuned is the same with vkhost's defaults (500 requests/s, burst 1000,
                  64 pod sync workers per node)
  --max-in-flight N  the daemon's `[api] max_in_flight` (default: the daemon's own default, 256)
  --against-upstream  after the vkhost burst, the same burst with upstream stock and upstream tuned
                  on the same control plane, then the ratios (vkhost over each)
  --against-floor  after the vkhost burst, the same with the floor agent (`--daemon floor`: nodes
                  registered by this harness's own child, which writes each bound pod Running and
                  Ready in one status PATCH at once and deletes each deleting pod, with no provider
                  and no limits: the least any daemon can reach on this control plane), then the ratios

VKCUBE_BENCH_VKHOST=PATH measures another vkhost build, e.g. the shipped one:
  cargo build --profile dist -p vkhost && VKCUBE_BENCH_VKHOST=$CARGO_TARGET_DIR/dist/vkhost cargo run ...

Run with the same CARGO_TARGET_DIR as the builds. Binaries come from ${CARGO_TARGET_DIR:-<repo>/target}/release/{vkhost,cube-sim} and plugins from
${CARGO_TARGET_DIR:-<repo>/target}/plugins (override with VKCUBE_PLUGIN_DIR). The control plane is
built by tests/cluster/build on first use (make cluster-binaries).";

const APP: &str = "burst";
const SIM_PUBLIC: &str = "burst-public";
const SIM_PRIVATE: &str = "burst-private-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Provider {
    Example,
    Cube,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DaemonKind {
    Vkhost,
    /// The Go virtual-kubelet with the stock binary's budget.
    Upstream,
    /// The same with vkhost's API budget and workers.
    UpstreamTuned,
    /// The least any node agent can do (`floor.rs`): this harness's own child, one status write
    /// per pod at once, no provider, no limits.
    Floor,
}

#[derive(Debug, Clone)]
struct Args {
    daemon: DaemonKind,
    /// Then the same burst with the upstream daemon on the same control plane, and the ratios.
    against_upstream: bool,
    /// Then the same burst with the floor agent, and the ratios.
    against_floor: bool,
    upstream_bin: Option<PathBuf>,
    pods: usize,
    nodes: usize,
    provider: Provider,
    timeout: Duration,
    /// `[api] max_in_flight` for the daemon; its default when unset.
    max_in_flight: Option<usize>,
    /// Cube: the simulator's latency per call, and each instance's start (min, max).
    cloud_latency_ms: u64,
    instance_start_ms: (u64, u64),
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        daemon: DaemonKind::Vkhost,
        against_upstream: false,
        against_floor: false,
        upstream_bin: None,
        pods: 200,
        nodes: 1,
        provider: Provider::Example,
        timeout: Duration::from_secs(600),
        max_in_flight: None,
        cloud_latency_ms: 0,
        instance_start_ms: (0, 0),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n\n{USAGE}"));
        match flag.as_str() {
            "--pods" => args.pods = value("--pods")?.parse().context("--pods must be a positive integer")?,
            "--nodes" => args.nodes = value("--nodes")?.parse().context("--nodes must be an integer from 1 to 8")?,
            "--timeout" => {
                args.timeout = Duration::from_secs(value("--timeout")?.parse().context("--timeout must be seconds")?)
            }
            "--provider" => {
                args.provider = match value("--provider")?.as_str() {
                    "example" => Provider::Example,
                    "cube" => Provider::Cube,
                    other => bail!("--provider is {other:?}, but must be example or cube"),
                }
            }
            "--daemon" => {
                args.daemon = match value("--daemon")?.as_str() {
                    "vkhost" => DaemonKind::Vkhost,
                    "upstream" => DaemonKind::Upstream,
                    "upstream-tuned" => DaemonKind::UpstreamTuned,
                    "floor" => DaemonKind::Floor,
                    other => bail!("--daemon is {other:?}, but must be vkhost, upstream, upstream-tuned or floor"),
                }
            }
            "--max-in-flight" => {
                args.max_in_flight =
                    Some(value("--max-in-flight")?.parse().context("--max-in-flight must be a positive integer")?)
            }
            "--cloud-latency-ms" => {
                args.cloud_latency_ms = value("--cloud-latency-ms")?.parse().context("--cloud-latency-ms must be ms")?
            }
            "--instance-start-ms" => {
                let v = value("--instance-start-ms")?;
                let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
                let ms = |s: &str| s.parse::<u64>().with_context(|| format!("--instance-start-ms {v}: MIN-MAX in ms"));
                args.instance_start_ms = (ms(lo)?, ms(hi)?);
                if args.instance_start_ms.0 > args.instance_start_ms.1 {
                    bail!("--instance-start-ms {v}: MIN is above MAX");
                }
            }
            "--against-upstream" => args.against_upstream = true,
            "--against-floor" => args.against_floor = true,
            "--upstream-bin" => args.upstream_bin = Some(PathBuf::from(value("--upstream-bin")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if !(1..=8).contains(&args.nodes) {
        bail!("--nodes is {}, but must be from 1 to 8 (a daemon serves at most 8 virtual nodes)", args.nodes);
    }
    if args.pods == 0 || args.pods > 200 * args.nodes {
        bail!(
            "--pods is {}, but must be from 1 to {} (200 per node with --nodes {})",
            args.pods,
            200 * args.nodes,
            args.nodes
        );
    }
    if args.daemon != DaemonKind::Vkhost && args.provider == Provider::Cube {
        bail!("--daemon upstream and floor have no provider (pods Running at once); leave out --provider cube");
    }
    Ok(args)
}

fn upstream_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.upstream_bin {
        Some(p) => p.clone(),
        None => {
            let cache = std::env::var_os("VKCUBE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/vkcube"));
            cache.join("upstream-vk/virtual-kubelet")
        }
    };
    if !path.exists() {
        bail!("{} is missing: run tests/bench/upstream-vk/build first", path.display());
    }
    Ok(path)
}

/// Starts cube-sim with instances starting in `args.instance_start_ms` (zero: at once); returns
/// it and its URL (`http://127.0.0.1:PORT`). The latency is set once it listens.
fn start_sim(run_dir: &Path, args: &Args) -> Result<(Proc, String)> {
    let (start_min, start_max) = args.instance_start_ms;
    let bin = release_binary("cube-sim")?;
    let log = std::fs::File::create(run_dir.join("cube-sim.log"))?;
    let mut child = Command::new(&bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--key",
            &format!("{SIM_PUBLIC}:{SIM_PRIVATE}"),
            "--pending-ms",
            "0",
            "--creating-ms",
            &start_min.to_string(),
            "--creating-jitter-ms",
            &(start_max - start_min).to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let proc = Proc { name: "cube-sim", child };
    let first = lines.next().context("cube-sim printed nothing")??;
    let url = first
        .strip_prefix("listening on ")
        .with_context(|| format!("cube-sim's first line is {first:?}, expected `listening on http://127.0.0.1:PORT`"))?
        .trim()
        .to_string();
    // Keep draining stdout so the simulator never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((proc, url))
}

/// The daemon config: `nodes` virtual nodes labelled `vkcube-bench=<run>-<i>`, tainted like the
/// guide's nodes; settings left at their defaults except the admin port (any free one).
fn daemon_config(args: &Args, kubeconfig: &Path, cluster_id: &str, run: &str, sim_url: Option<&str>) -> Result<String> {
    let plugin = plugin_path(match args.provider {
        Provider::Example => "example",
        Provider::Cube => "cube",
    });
    let mut cfg = format!(
        "cluster_id = \"{cluster_id}\"\nkubeconfig = \"{}\"\n\n[plugin]\npath = \"{}\"\n",
        kubeconfig.display(),
        plugin.display()
    );
    if let Some(url) = sim_url {
        let ws = url.replacen("http://", "ws://", 1);
        cfg.push_str(&format!("allowed_urls = [\"{url}/\", \"{ws}/\"]\n"));
    }
    if let Some(n) = args.max_in_flight {
        cfg.push_str(&format!("\n[api]\nmax_in_flight = {n}\n"));
    }
    // JSON lines, with each pod's start and deletion (`pod started`, `pod deleted`, debug) for the
    // per-stage breakdowns.
    cfg.push_str(
        "\n[log]\nformat = \"json\"\nlevel = \"info,vkhost::pods::startup=debug,vkhost::pods::teardown=debug\"\n",
    );
    cfg.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    for i in 0..args.nodes {
        let share = pods_on_node(args, i);
        cfg.push_str(&format!(
            "\n[[nodes]]\nid = \"n{}\"\nmax_pods = {}\ntaint_value = \"cube\"\nlabels = {{ \"vkcube-bench\" = \"{run}-{i}\" }}\n",
            i + 1,
            share.max(1)
        ));
        if let Some(url) = sim_url {
            cfg.push_str(&format!(
                "[nodes.provider]\napi_url = \"{url}\"\nregion = \"cn-bj2\"\nzone = \"cn-bj2-05\"\n\
                 vpc_id = \"uvnet-burst\"\nsubnet_id = \"subnet-burst\"\nmax_pods = {}\n\
                 [nodes.secrets]\npublic_key = {{ env = \"CUBE_PUBLIC_KEY\" }}\nprivate_key = {{ env = \"CUBE_PRIVATE_KEY\" }}\n",
                share.max(1)
            ));
        }
    }
    Ok(cfg)
}

/// Replicas of the Deployment pinned to node `i`: the pods split as evenly as possible.
fn pods_on_node(args: &Args, i: usize) -> usize {
    args.pods / args.nodes + usize::from(i < args.pods % args.nodes)
}

fn deployment(name: &str, node_label: &str, replicas: usize) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": APP, "deployment": name}},
            "template": {
                "metadata": {"labels": {"app": APP, "deployment": name}},
                "spec": {
                    "nodeSelector": {"type": "virtual-kubelet", "vkcube-bench": node_label},
                    "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Equal", "value": "cube", "effect": "NoSchedule"}],
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "nginx", "image": "uhub.service.ucloud.cn/library/nginx:1.25",
                                    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}]
                }
            }
        }
    }))
    .expect("static deployment")
}

/// What the watch saw of one pod, in monotonic time (`Instant`) and in the server's timestamps
/// (milliseconds since the epoch; whole seconds, the API's resolution).
#[derive(Debug, Default)]
struct PodTimes {
    seen: Option<Instant>,
    bound: Option<Instant>,
    ready: Option<Instant>,
    deleting: Option<Instant>,
    gone: Option<Instant>,
    created_ms: Option<i64>,
    ready_transition_ms: Option<i64>,
}

#[derive(Default)]
struct Observed {
    pods: HashMap<String, PodTimes>,
    live: HashSet<String>,
}

impl Observed {
    fn apply(&mut self, pod: &Pod, now: Instant) {
        let uid = pod.uid().unwrap_or_default();
        self.live.insert(uid.clone());
        let t = self.pods.entry(uid).or_default();
        t.seen.get_or_insert(now);
        if t.created_ms.is_none() {
            t.created_ms = pod.metadata.creation_timestamp.as_ref().map(|c| c.0.as_millisecond());
        }
        if pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            t.bound.get_or_insert(now);
        }
        if pod.metadata.deletion_timestamp.is_some() {
            t.deleting.get_or_insert(now);
        }
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"));
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if let (Some(c), true) = (ready, running) {
            if t.ready.is_none() {
                t.ready = Some(now);
                t.ready_transition_ms = c.last_transition_time.as_ref().map(|l| l.0.as_millisecond());
            }
        }
    }

    fn gone(&mut self, uid: &str, now: Instant) {
        self.live.remove(uid);
        if let Some(t) = self.pods.get_mut(uid) {
            t.gone.get_or_insert(now);
        }
    }

    fn ready_count(&self) -> usize {
        self.live.iter().filter(|u| self.pods[*u].ready.is_some()).count()
    }
}

/// Follows the watch until `done` holds; the watch restarting (relist) is handled: pods missing
/// from the relist count as gone when it completes.
async fn watch_until<S>(
    stream: &mut S,
    seen: &mut Observed,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Observed) -> bool,
) -> Result<Instant>
where
    S: futures::Stream<Item = Result<Event<Pod>, watcher::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut relisted: Option<HashSet<String>> = None;
    while !done(seen) {
        let event = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => bail!(
                "timed out after {timeout:?} waiting for {what} ({} pods live, {} Ready)",
                seen.live.len(),
                seen.ready_count()
            ),
            Ok(None) => bail!("the pod watch ended"),
            Ok(Some(e)) => e.context("pod watch")?,
        };
        let now = Instant::now();
        match event {
            Event::Apply(p) => seen.apply(&p, now),
            Event::Delete(p) => seen.gone(&p.uid().unwrap_or_default(), now),
            Event::Init => relisted = Some(HashSet::new()),
            Event::InitApply(p) => {
                if let Some(r) = relisted.as_mut() {
                    r.insert(p.uid().unwrap_or_default());
                }
                seen.apply(&p, now);
            }
            Event::InitDone => {
                if let Some(r) = relisted.take() {
                    let vanished: Vec<String> = seen.live.difference(&r).cloned().collect();
                    for uid in vanished {
                        seen.gone(&uid, now);
                    }
                }
            }
        }
    }
    Ok(Instant::now())
}

/// The daemon's resident memory, sampled every 200 ms by a task this struct owns.
struct RssSampler {
    peak_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(kib) = proc_status_kib(pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        RssSampler { peak_kib, task }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        self.peak_kib.load(Ordering::Relaxed)
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Where a process's resident memory is, from `/proc/PID/smaps`: RSS in KiB per mapping kind
/// (the file mapped, `[heap]`, `[stack]`, or `anonymous`), largest first.
fn rss_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else { return Vec::new() };
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            // "start-end perms offset dev inode [path]"; anonymous mappings are told apart by
            // size (malloc arenas, thread stacks and the wasm instance pool differ by orders).
            let path = line.split_whitespace().nth(5).unwrap_or("");
            current = if path.is_empty() {
                let (start, end) = first.split_once('-').unwrap_or(("0", "0"));
                let size = u64::from_str_radix(end, 16)
                    .unwrap_or(0)
                    .saturating_sub(u64::from_str_radix(start, 16).unwrap_or(0));
                let class = match size >> 20 {
                    0 => "< 1 MiB".to_owned(),
                    m if m < 1024 => format!("{}–{} MiB", m.next_power_of_two() / 2, m.next_power_of_two()),
                    m => format!("{} GiB+", (m >> 10).next_power_of_two() / 2),
                };
                format!("anonymous mappings of {class}")
            } else {
                path.to_owned()
            };
        } else if first == "Rss:" {
            *by.entry(current.clone()).or_default() += words.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, kib)| *kib > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1));
    v
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32, clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clk_tck)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Dist {
    label: String,
    unit: &'static str,
    values: Vec<f64>,
}

impl Dist {
    fn new(label: impl Into<String>, unit: &'static str, mut values: Vec<f64>) -> Self {
        values.sort_by(|a, b| a.total_cmp(b));
        Dist { label: label.into(), unit, values }
    }
    fn p(&self, p: f64) -> f64 {
        percentile(&self.values, p)
    }
}

/// The daemon's admin address, from its log line `admin endpoint (/metrics, …)` (the port is any
/// free one); `None` for a daemon without one (upstream).
fn admin_addr(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("admin endpoint"))?;
    let at = line.find("127.0.0.1:")? + "127.0.0.1:".len();
    let port: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
    Some(format!("127.0.0.1:{port}"))
}

/// The sum of the samples of `metric` (every label set) whose line contains all of `with`, from
/// the daemon's `/metrics`; `None` when it cannot be read.
async fn scrape(addr: Option<&str>, metric: &str, with: &[&str]) -> Option<f64> {
    let text = reqwest::get(format!("http://{}/metrics", addr?)).await.ok()?.text().await.ok()?;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
        if name == metric && with.iter().all(|w| line.contains(w)) {
            sum += line.rsplit(' ').next()?.parse::<f64>().ok()?;
        }
    }
    Some(sum)
}

/// Reconciles and provider `status` calls so far, as the daemon counts them.
async fn counts(addr: Option<&str>) -> (Option<f64>, Option<f64>) {
    (
        scrape(addr, "vkhost_pod_reconciles_total", &[]).await,
        scrape(addr, "vkhost_provider_calls", &["export=\"pods.status\""]).await,
    )
}

/// The apiserver's own count of what it served, from its `/metrics` (read with the harness's
/// admin credentials).
#[derive(Default)]
struct ApiserverRequests {
    /// `apiserver_request_total` by (resource[/subresource], verb), every client together.
    by_resource: std::collections::BTreeMap<(String, String), f64>,
    /// Requests dispatched for the node identities (`system:nodes`: the flow schemas
    /// `system-nodes` and `system-node-high`), which is vkhost's pod and node work and nothing
    /// else in this harness: the controllers, the scheduler and the harness use other identities.
    by_nodes: f64,
    /// `apiserver_request_duration_seconds` of `PATCH pods/status` (the nodes' status writes):
    /// cumulative count by bucket bound, every other label summed.
    status_patch: Buckets,
    /// The same of `DELETE pods`: the controller-manager's (graceful) and the nodes' (final).
    pod_delete: Buckets,
    /// `apiserver_flowcontrol_request_wait_duration_seconds` of the node identities' requests
    /// that ran: how long they queued in API Priority and Fairness before the apiserver took them.
    node_queue_wait: Buckets,
}

impl ApiserverRequests {
    async fn take(client: &kube::Client) -> Result<Self> {
        let text = client.request_text(http::Request::get("/metrics").body(vec![])?).await?;
        let label = |line: &str, name: &str| metric_label(line, name).unwrap_or_default();
        let mut sample = ApiserverRequests::default();
        for line in text.lines() {
            if line.starts_with("apiserver_request_total{") {
                let (resource, sub) = (label(line, "resource"), label(line, "subresource"));
                let resource = if sub.is_empty() { resource } else { format!("{resource}/{sub}") };
                *sample.by_resource.entry((resource, label(line, "verb"))).or_default() += metric_value(line);
            } else if line.starts_with("apiserver_flowcontrol_dispatched_requests_total{") {
                let flow = label(line, "flow_schema");
                if flow == "system-nodes" || flow == "system-node-high" {
                    sample.by_nodes += metric_value(line);
                }
            } else if line.starts_with("apiserver_request_duration_seconds_bucket{") {
                match (
                    label(line, "resource").as_str(),
                    label(line, "subresource").as_str(),
                    label(line, "verb").as_str(),
                ) {
                    ("pods", "status", "PATCH") => sample.status_patch.add(line),
                    ("pods", "", "DELETE") => sample.pod_delete.add(line),
                    _ => {}
                }
            } else if line.starts_with("apiserver_flowcontrol_request_wait_duration_seconds_bucket{") {
                let flow = label(line, "flow_schema");
                if (flow == "system-nodes" || flow == "system-node-high") && label(line, "execute") == "true" {
                    sample.node_queue_wait.add(line);
                }
            }
        }
        Ok(sample)
    }

    /// What was served between `before` and `self`, by resource and verb, largest first.
    fn since(&self, before: &ApiserverRequests) -> Vec<((String, String), f64)> {
        let mut d: Vec<_> = self
            .by_resource
            .iter()
            .map(|(k, n)| (k.clone(), n - before.by_resource.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, n)| *n > 0.0)
            .collect();
        d.sort_by(|a, b| b.1.total_cmp(&a.1));
        d
    }
}

/// The stages of a pod's start in the daemon's `pod started` lines, and how they are shown.
const STAGE_FIELDS: [(&str, &str); 8] = [
    ("total_ms", "daemon's own log: first sight -> Ready written"),
    ("queue_ms", "  queue: first sight -> first reconcile"),
    ("fetch_ms", "  fetch: referenced objects"),
    ("create_ms", "  provider create"),
    ("status_write_ms", "  status PATCH(es), the first with the annotations"),
    ("requeue_ms", "  waiting for a requeue"),
    ("provider_status_ms", "  provider status (polls)"),
    ("reconciles", "  reconciles (count)"),
];

/// The stages of a pod's deletion in the daemon's `pod deleted` lines, and how they are shown.
const TEARDOWN_FIELDS: [(&str, &str); 6] = [
    ("total_ms", "daemon's own log: first sight of the deletion -> its DELETE done"),
    ("queue_ms", "  queue: first sight -> first reconcile"),
    ("provider_ms", "  provider delete (and its polls)"),
    ("requeue_ms", "  waiting for a requeue"),
    ("api_delete_ms", "  DELETE of the pod object"),
    ("reconciles", "  reconciles (count)"),
];

/// One pod's start or deletion as the daemon logged it (JSON lines).
struct Traced {
    uid: String,
    /// Stage field → milliseconds (or the count of reconciles).
    stages: HashMap<&'static str, f64>,
    /// The wall clock of the node's first sight and of its last write (the status showing the
    /// pod Ready, or the DELETE).
    seen_unix_ms: Option<f64>,
    done_unix_ms: Option<f64>,
}

/// The daemon's `message` lines (`pod started`, `pod deleted`): each pod's `fields`, and the
/// wall clock of its end in `done_field`.
fn traced(log: &Path, message: &str, fields: &[(&'static str, &str)], done_field: &str) -> Vec<Traced> {
    let Ok(text) = std::fs::read_to_string(log) else { return Vec::new() };
    let quoted = format!("\"{message}\"");
    text.lines()
        .filter(|l| l.contains(&quoted))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let f = &v["fields"];
            let done = f[done_field].as_f64();
            Traced {
                uid: f["uid"].as_str().unwrap_or_default().to_string(),
                stages: fields.iter().filter_map(|(k, _)| Some((*k, f[*k].as_f64()?))).collect(),
                seen_unix_ms: done.zip(f["total_ms"].as_f64()).map(|(d, total)| d - total),
                done_unix_ms: done,
            }
        })
        .collect()
}

/// Distributions of `traced`'s stages as `fields` labels them, after the two `deliveries` (a label
/// and when this harness's watch saw the pod's change): from that change to the node's first
/// sight, and from the node's last write to that change, each placed by the wall clock.
fn breakdown(
    traced: &[Traced],
    fields: &[(&'static str, &str)],
    seen: &Observed,
    deliveries: [(&str, fn(&PodTimes) -> Option<Instant>); 2],
) -> Vec<Dist> {
    let [(first_label, first), (last_label, last)] = deliveries;
    let delivered = |f: &dyn Fn(&Traced, &PodTimes) -> Option<f64>| -> Vec<f64> {
        traced.iter().filter_map(|p| f(p, seen.pods.get(&p.uid)?)).collect()
    };
    let mut dists = vec![
        Dist::new(first_label, "ms", delivered(&|p, t| Some(p.seen_unix_ms? - unix_ms(first(t)?)))),
        Dist::new(last_label, "ms", delivered(&|p, t| Some(unix_ms(last(t)?) - p.done_unix_ms?))),
    ];
    dists.extend(fields.iter().map(|(field, label)| {
        Dist::new(format!("  {label}"), "ms", traced.iter().filter_map(|p| p.stages.get(*field).copied()).collect())
    }));
    dists
}

/// The wall clock (ms since the epoch) at `at`, to set the harness's watch beside the daemon's log
/// (one machine, one clock).
fn unix_ms(at: Instant) -> f64 {
    static ANCHOR: std::sync::OnceLock<(Instant, f64)> = std::sync::OnceLock::new();
    let (i0, w0) = *ANCHOR.get_or_init(|| {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
        (Instant::now(), wall.as_secs_f64() * 1000.0)
    });
    match at.checked_duration_since(i0) {
        Some(d) => w0 + d.as_secs_f64() * 1000.0,
        None => w0 - i0.duration_since(at).as_secs_f64() * 1000.0,
    }
}

/// What the simulator saw: calls by action, and each instance's start (ms to Running) by pod UID.
struct CloudView {
    requests: std::collections::BTreeMap<String, u64>,
    start_ms: HashMap<String, u64>,
}

async fn cloud_view(url: &str) -> Result<CloudView> {
    let http = reqwest::Client::new();
    let requests = http.get(format!("{url}/_sim/requests")).send().await?.error_for_status()?.json().await?;
    let instances: Vec<serde_json::Value> =
        http.get(format!("{url}/_sim/instances")).send().await?.error_for_status()?.json().await?;
    let start_ms =
        instances.iter().filter_map(|i| Some((i["uid"].as_str()?.to_string(), i["start_ms"].as_u64()?))).collect();
    Ok(CloudView { requests, start_ms })
}

fn ms_between(a: Option<Instant>, b: Option<Instant>) -> Option<f64> {
    Some(b?.saturating_duration_since(a?).as_secs_f64() * 1000.0)
}

fn main() -> Result<()> {
    // The harness's own child for `--daemon floor`.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("floor-agent") {
        return floor::main(&argv[2..]);
    }
    let args = parse_args()?;
    let daemon_bin = match args.daemon {
        DaemonKind::Vkhost => {
            // Fail before the control plane starts when a plugin is missing.
            let _ = plugin_path(if args.provider == Provider::Cube { "cube" } else { "example" });
            release_binary("vkhost")?
        }
        DaemonKind::Upstream | DaemonKind::UpstreamTuned => upstream_binary(&args)?,
        DaemonKind::Floor => std::env::current_exe()?,
    };
    if args.provider == Provider::Cube {
        release_binary("cube-sim")?;
    }
    let baseline = match args.against_upstream && args.daemon == DaemonKind::Vkhost {
        true => Some(upstream_binary(&args)?),
        false => None,
    };
    let floor = args.against_floor && args.daemon == DaemonKind::Vkhost;
    eprintln!("starting the control plane (tests/cluster/up)…");
    let cluster = vkcube_e2e::cluster();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let ours = run(args.clone(), daemon_bin, cluster).await?;
        let mut theirs = Vec::new();
        if let Some(upstream_bin) = baseline {
            for daemon in [DaemonKind::Upstream, DaemonKind::UpstreamTuned] {
                let upstream_args = Args { daemon, provider: Provider::Example, ..args.clone() };
                theirs.push(run(upstream_args, upstream_bin.clone(), cluster).await?);
            }
        }
        if floor {
            let floor_args = Args { daemon: DaemonKind::Floor, provider: Provider::Example, ..args.clone() };
            theirs.push(run(floor_args, std::env::current_exe()?, cluster).await?);
        }
        if !theirs.is_empty() {
            print_ratios(&ours, &theirs);
        }
        Ok(())
    })
}

/// vkhost against each other run (upstream stock and tuned, the floor) from the run summaries,
/// same control plane.
fn print_ratios(ours: &serde_json::Value, theirs: &[serde_json::Value]) {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let pods = f(ours, "pods");
    for t in theirs {
        println!("vkhost ({}) against {} ({}), same control plane:", ours["provider"], t["daemon"], t["budget"]);
        println!(
            "{:<66} {:>9.1} / {:.1} pods/s = {:.1}x",
            "  pods/s to all Running+Ready",
            pods / f(ours, "all_running_s"),
            pods / f(t, "all_running_s"),
            f(t, "all_running_s") / f(ours, "all_running_s")
        );
        println!(
            "{:<66} {:>9.2} / {:.2} s = {:.1}x faster",
            "  scale to 0 -> all gone",
            f(ours, "all_gone_s"),
            f(t, "all_gone_s"),
            f(t, "all_gone_s") / f(ours, "all_gone_s")
        );
        for (label, key) in [
            ("  startup p99 (watch, scheduling included)", "startup_p99_ms"),
            ("  the daemon's part, bound -> Ready, p50", "bound_ready_p50_ms"),
            ("  the daemon's part, bound -> Ready, p99", "bound_ready_p99_ms"),
        ] {
            println!(
                "{label:<66} {:>9.0} / {:.0} ms = {:.1}x lower",
                f(ours, key),
                f(t, key),
                f(t, key) / f(ours, key)
            );
        }
        println!(
            "{:<66} {:>9.1} / {:.1} MiB = {:.2}x",
            "  peak RSS",
            f(ours, "peak_rss_mib"),
            f(t, "peak_rss_mib"),
            f(ours, "peak_rss_mib") / f(t, "peak_rss_mib")
        );
    }
    println!("{}", serde_json::json!({"bench": "burst-ratio", "vkhost": ours, "others": theirs}));
}

async fn run(args: Args, daemon_bin: PathBuf, cluster: &vkcube_e2e::Cluster) -> Result<serde_json::Value> {
    let load_before = loadavg();
    let run_dir = std::env::temp_dir().join(format!("vkcube-burst-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let ns = cluster.namespace("burst").await;
    let client = ns.client.clone();
    let cluster_id = fresh_cluster_id();
    let run_label = ns.name.clone();

    let mut sim = None;
    let sim_url = if args.provider == Provider::Cube {
        let (proc, url) = start_sim(&run_dir, &args)?;
        eprintln!("cube-sim at {url} (pid {})", proc.pid());
        if args.cloud_latency_ms > 0 {
            let faults = json!({"latency_ms": args.cloud_latency_ms});
            reqwest::Client::new()
                .post(format!("{url}/_sim/faults"))
                .json(&faults)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .context("set the simulator's latency")?;
        }
        sim = Some(proc);
        Some(url)
    } else {
        None
    };

    let daemon_log = run_dir.join("daemon.log");
    let log = std::fs::File::create(&daemon_log)?;
    let mut cmd = Command::new(&daemon_bin);
    match args.daemon {
        DaemonKind::Vkhost => {
            let config = daemon_config(&args, &cluster.kubeconfig, &cluster_id, &run_label, sim_url.as_deref())?;
            let config_path = run_dir.join("vkhost.toml");
            std::fs::write(&config_path, &config)?;
            cmd.arg("run").arg("--config").arg(&config_path);
            cmd.env("CUBE_PUBLIC_KEY", SIM_PUBLIC).env("CUBE_PRIVATE_KEY", SIM_PRIVATE);
            eprintln!("vkhost config {}", config_path.display());
        }
        DaemonKind::Floor => {
            cmd.arg("floor-agent").arg(&cluster.kubeconfig);
            cmd.args((0..args.nodes).map(|i| format!("{cluster_id}-floor-{i}={run_label}-{i}")));
        }
        DaemonKind::Upstream | DaemonKind::UpstreamTuned => {
            cmd.arg("--kubeconfig").arg(&cluster.kubeconfig);
            if args.daemon == DaemonKind::UpstreamTuned {
                // vkhost's defaults: `[api] qps`, `burst` and `[pods] workers`.
                let api = vkhost::apiclient::ApiLimits::default();
                let pods = vkhost::config::PodSettings::default();
                cmd.args(["--qps", &api.qps.to_string(), "--burst", &api.burst.to_string()]);
                cmd.args(["--pod-sync-workers", &pods.workers.to_string()]);
            }
            cmd.args((0..args.nodes).map(|i| format!("{cluster_id}-up-{i}={run_label}-{i}")));
        }
    }
    let daemon_name = match args.daemon {
        DaemonKind::Vkhost => "vkhost",
        DaemonKind::Upstream => "virtual-kubelet (upstream, stock budget)",
        DaemonKind::UpstreamTuned => "virtual-kubelet (upstream, vkhost's budget)",
        DaemonKind::Floor => "floor agent (one status write per pod, no limits)",
    };
    let mut daemon = Proc {
        name: daemon_name,
        child: cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", daemon_bin.display()))?,
    };
    let pid = daemon.pid();
    eprintln!("{daemon_name} pid {pid}, log {}", daemon_log.display());

    // Every configured node registered and Ready.
    let nodes: Api<Node> = Api::all(client.clone());
    let node_labels: Vec<String> = (0..args.nodes).map(|i| format!("{run_label}-{i}")).collect();
    let selector = format!("vkcube-bench in ({})", node_labels.join(","));
    let started = Instant::now();
    loop {
        daemon.ensure_alive(&daemon_log)?;
        let ready = nodes
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    })
                    .count()
            })
            .unwrap_or(0);
        if ready == args.nodes {
            break;
        }
        if started.elapsed() > args.timeout.min(Duration::from_secs(120)) {
            bail!(
                "{ready} of {} virtual nodes Ready after {:?}; see {}",
                args.nodes,
                started.elapsed(),
                daemon_log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{} virtual node(s) Ready {:.1}s after the daemon started", args.nodes, started.elapsed().as_secs_f64());
    // The burst measures a daemon in its stride: a pod created within the fence's clock margin of
    // the daemon's start (3 s for the default 15 s lease, plus a second for creationTimestamp's
    // whole seconds) may have an instance from an earlier actor, so its create looks first.
    let stride = Duration::from_secs(5).saturating_sub(started.elapsed());
    tokio::time::sleep(stride).await;

    let admin = admin_addr(&daemon_log);
    let counts_before = counts(admin.as_deref()).await;
    let requests_before = ApiserverRequests::take(&client).await.context("read the apiserver's /metrics")?;
    let tck = clk_tck();
    let idle_rss_kib = proc_status_kib(pid, "VmRSS").unwrap_or(0);
    let cpu_before = cpu_seconds(pid, tck).unwrap_or(0.0);
    let sampler = RssSampler::start(pid);

    // The watch runs before anything is created, so every pod is seen as it is added.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut stream = watcher(pods, watcher::Config::default().labels(&format!("app={APP}"))).boxed();
    let mut seen = Observed::default();
    // Prime the watch: read until its first list is done (the namespace is still empty).
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.try_next()).await {
            Ok(Ok(Some(Event::InitDone))) => break,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => bail!("the pod watch ended before listing"),
            Ok(Err(e)) => return Err(e).context("pod watch"),
            Err(_) => bail!("the pod watch did not list within 30 s"),
        }
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let names: Vec<String> = (0..args.nodes).map(|i| format!("{APP}-{i}")).collect();
    let t_create = Instant::now();
    for (i, name) in names.iter().enumerate() {
        deployments
            .create(&PostParams::default(), &deployment(name, &format!("{run_label}-{i}"), pods_on_node(&args, i)))
            .await
            .with_context(|| format!("create Deployment {name}"))?;
    }
    let want = args.pods;
    let t_all_ready =
        watch_until(&mut stream, &mut seen, args.timeout, "every pod Running and Ready", |s| s.ready_count() >= want)
            .await;
    daemon.ensure_alive(&daemon_log)?;
    let t_all_ready = t_all_ready.with_context(|| format!("daemon log: {}", daemon_log.display()))?;
    let cpu_ready = cpu_seconds(pid, tck).unwrap_or(0.0);
    let counts_ready = counts(admin.as_deref()).await;
    let requests_ready = ApiserverRequests::take(&client).await.context("read the apiserver's /metrics")?;
    let rss_at_ready = rss_by_mapping(pid);
    // The cloud's side of the starts: its calls by action, each instance's start.
    let cloud = match &sim_url {
        Some(url) => Some(cloud_view(url).await.context("read the simulator's requests and instances")?),
        None => None,
    };
    eprintln!("all {want} pods Running+Ready after {:.2}s; scaling to 0", (t_all_ready - t_create).as_secs_f64());

    let t_scale = Instant::now();
    for name in &names {
        deployments
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 0}})))
            .await
            .with_context(|| format!("scale Deployment {name} to 0"))?;
    }
    let t_all_gone =
        watch_until(&mut stream, &mut seen, args.timeout, "every pod object gone", |s| s.live.is_empty()).await;
    daemon.ensure_alive(&daemon_log)?;
    let t_all_gone = t_all_gone.with_context(|| format!("daemon log: {}", daemon_log.display()))?;

    let cpu_end = cpu_seconds(pid, tck).unwrap_or(0.0);
    let counts_end = counts(admin.as_deref()).await;
    let requests_gone = ApiserverRequests::take(&client).await.context("read the apiserver's /metrics")?;
    let hwm_kib = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let sampled_peak_kib = sampler.stop();
    let load_after = loadavg();
    drop(stream);
    daemon.stop();
    if let Some(mut s) = sim.take() {
        s.stop();
    }

    // Only pods of the burst itself (a replacement created later would skew the figures).
    let times: Vec<&PodTimes> = seen.pods.values().filter(|t| t.ready.is_some()).collect();
    let startup = Dist::new(
        "startup, watch: added -> Running+Ready",
        "ms",
        times.iter().filter_map(|t| ms_between(t.seen, t.ready)).collect(),
    );
    let scheduling = Dist::new(
        "  scheduling: added -> bound to node",
        "ms",
        times.iter().filter_map(|t| ms_between(t.seen, t.bound)).collect(),
    );
    let on_node = Dist::new(
        "  daemon: bound -> Running+Ready",
        "ms",
        times.iter().filter_map(|t| ms_between(t.bound, t.ready)).collect(),
    );
    let from_create = Dist::new(
        "startup, from Deployment create -> Ready",
        "ms",
        times.iter().filter_map(|t| ms_between(Some(t_create), t.ready)).collect(),
    );
    let server = Dist::new(
        "startup, creationTimestamp -> Ready.lastTransitionTime (1 s res.)",
        "s",
        times.iter().filter_map(|t| Some((t.ready_transition_ms? - t.created_ms?) as f64 / 1000.0)).collect(),
    );
    let deletes = Dist::new(
        "delete, watch: deletionTimestamp -> gone",
        "ms",
        seen.pods.values().filter_map(|t| ms_between(t.deleting, t.gone)).collect(),
    );
    // Where the daemon's part went, as the daemon saw it (vkhost only). bound -> Ready is the
    // binding's delivery to the node, the node's own part, and the Ready write's delivery to this
    // watch; deletionTimestamp -> gone likewise.
    let stage_dists = breakdown(
        &traced(&daemon_log, "pod started", &STAGE_FIELDS, "written_unix_ms"),
        &STAGE_FIELDS,
        &seen,
        [
            ("  binding to the node: harness saw bound -> node's first sight", |t: &PodTimes| t.bound),
            ("  Ready to the harness: node's write done -> harness saw Ready", |t: &PodTimes| t.ready),
        ],
    );
    let teardown_dists = breakdown(
        &traced(&daemon_log, "pod deleted", &TEARDOWN_FIELDS, "done_unix_ms"),
        &TEARDOWN_FIELDS,
        &seen,
        [
            ("  deletion to the node: harness saw deletionTimestamp -> node's first sight", |t: &PodTimes| t.deleting),
            ("  gone to the harness: node's DELETE done -> harness saw it gone", |t: &PodTimes| t.gone),
        ],
    );
    // Cube: the cloud's part of each start is its latency on the create and on the status call
    // that finds the instance Running, and the instance's own start; the rest is the daemon's.
    let daemon_share = cloud.as_ref().map(|c| {
        let latency = args.cloud_latency_ms as f64;
        Dist::new(
            "  daemon's share of bound -> Ready (less 2 x latency + instance start)",
            "ms",
            seen.pods
                .iter()
                .filter_map(|(uid, t)| {
                    Some(ms_between(t.bound, t.ready)? - 2.0 * latency - *c.start_ms.get(uid)? as f64)
                })
                .collect(),
        )
    });
    // Lookups before create: GetCubePod calls that were not `status` polls (the rest of them).
    let lookups_per_pod = cloud.as_ref().and_then(|c| {
        let gets = *c.requests.get("GetCubePod").unwrap_or(&0) as f64;
        Some((gets - (counts_ready.1? - counts_before.1?)) / want as f64)
    });
    let burst_s = (t_all_ready - t_create).as_secs_f64();
    let provider = match (args.daemon, args.provider) {
        (DaemonKind::Upstream | DaemonKind::UpstreamTuned, _) => "mock",
        (DaemonKind::Floor, _) => "none",
        (_, Provider::Cube) => "cube",
        (_, Provider::Example) => "example",
    };
    let teardown_s = (t_all_gone - t_scale).as_secs_f64();
    // The controller-manager deletes the pods at its own client rate (`--kube-api-qps` 200 in the
    // harness, burst 400: 6 s or more for 1,600 pods); what follows its last deletion is the nodes' part.
    let last_deleting = seen.pods.values().filter_map(|t: &PodTimes| t.deleting).max();
    let deleting_s = last_deleting.map(|t| (t - t_scale).as_secs_f64());
    let gone_after_s = last_deleting.map(|t| (t_all_gone - t).as_secs_f64());
    let mib = |kib: u64| kib as f64 / 1024.0;

    println!();
    println!(
        "vkcube pod burst: daemon={daemon_name} provider={provider} pods={} nodes={} cpus={} ({})",
        args.pods,
        args.nodes,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        daemon_bin.display()
    );
    println!("load average (1/5/15 min): before {load_before}, after {load_after}");
    println!();
    println!("{:<66} {:>9} {:>9} {:>9} {:>9}  {}", "per pod", "p50", "p90", "p99", "max", "n");
    let mut shown = vec![&startup, &scheduling, &on_node];
    if let Some(d) = &daemon_share {
        shown.push(d);
    }
    shown.extend(stage_dists.iter().filter(|d| !d.values.is_empty()));
    shown.extend([&from_create, &server, &deletes]);
    shown.extend(teardown_dists.iter().filter(|d| !d.values.is_empty()));
    for d in shown {
        let f = |v: f64| if d.unit == "s" { format!("{v:.0} s") } else { format!("{v:.0} ms") };
        println!(
            "{:<66} {:>9} {:>9} {:>9} {:>9}  {}",
            d.label,
            f(d.p(50.0)),
            f(d.p(90.0)),
            f(d.p(99.0)),
            f(d.p(100.0)),
            d.values.len()
        );
    }
    println!();
    println!("{:<66} {:>9.2} s", "Deployment create -> all Running+Ready", burst_s);
    println!("{:<66} {:>9.2} s", "scale to 0 -> all pod objects gone", teardown_s);
    if let (Some(asked), Some(after)) = (deleting_s, gone_after_s) {
        println!("{:<66} {:>9.2} s", "  scale to 0 -> the last pod's deletion seen (controller-manager)", asked);
        println!("{:<66} {:>9.2} s", "  the last pod's deletion seen -> all gone (the nodes)", after);
    }
    println!("{:<66} {:>9.1} MiB", "daemon peak RSS (VmHWM, whole life)", mib(hwm_kib));
    println!(
        "{:<66} {:>9.1} MiB",
        "daemon peak RSS (VmRSS sampled every 200 ms during the burst)",
        mib(sampled_peak_kib)
    );
    println!("{:<66} {:>9.1} MiB", "daemon RSS with nodes Ready, before the burst", mib(idle_rss_kib));
    for (mapping, kib) in rss_at_ready.iter().take(8) {
        println!("{:<66} {:>9.1} MiB", format!("  RSS with every pod Ready: {mapping}"), mib(*kib));
    }
    println!("{:<66} {:>9.2} s", "daemon CPU (user+sys), start -> nodes Ready", cpu_before);
    println!("{:<66} {:>9.2} s", "daemon CPU during create -> all Ready", cpu_ready - cpu_before);
    println!("{:<66} {:>9.2} s", "daemon CPU during scale to 0 -> all gone", cpu_end - cpu_ready);
    println!("{:<66} {:>9.2} s", "daemon CPU total", cpu_end);
    // Per pod of the burst: from Deployment create to all Ready, and from scale to 0 to all gone.
    let per_pod = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / want as f64);
    let reconciles_up = per_pod(counts_before.0, counts_ready.0);
    let reconciles_down = per_pod(counts_ready.0, counts_end.0);
    let status_up = per_pod(counts_before.1, counts_ready.1);
    let status_down = per_pod(counts_ready.1, counts_end.1);
    if let Some(c) = &cloud {
        println!("{:<66} {:>9}", "cloud calls, create -> all Ready", format!("{:?}", c.requests));
    }
    for (label, v) in [
        ("simulator lookups before create per pod (GetCubePod less status polls)", lookups_per_pod),
        ("reconciles per pod, create -> all Ready", reconciles_up),
        ("reconciles per pod, scale to 0 -> all gone", reconciles_down),
        ("provider status calls per pod, create -> all Ready", status_up),
        ("provider status calls per pod, scale to 0 -> all gone", status_down),
    ] {
        if let Some(v) = v {
            println!("{label:<66} {v:>9.2}");
        }
    }
    // The apiserver's count, create -> all Ready: every client's requests by resource (the
    // controllers', the scheduler's and the harness's too), and those of the node identities.
    let node_requests =
        (args.daemon == DaemonKind::Vkhost).then(|| (requests_ready.by_nodes - requests_before.by_nodes) / want as f64);
    let node_requests_down =
        (args.daemon == DaemonKind::Vkhost).then(|| (requests_gone.by_nodes - requests_ready.by_nodes) / want as f64);
    if let (Some(up), Some(down)) = (node_requests, node_requests_down) {
        println!("{:<66} {up:>9.2}", "apiserver requests per pod by the nodes' identities, create -> all Ready");
        println!("{:<66} {down:>9.2}", "apiserver requests per pod by the nodes' identities, scale to 0 -> all gone");
    }
    // Where a status write's time goes on the apiserver's side: queued in API Priority and
    // Fairness, then served (the daemon's own figure for the write adds its client's limits and
    // the connection).
    let status_patch = requests_ready.status_patch.since(&requests_before.status_patch);
    let queue_wait = requests_ready.node_queue_wait.since(&requests_before.node_queue_wait);
    let pod_delete = requests_gone.pod_delete.since(&requests_ready.pod_delete);
    for (label, h) in [
        ("apiserver's own time, PATCH pods/status (its histogram)", &status_patch),
        ("  of which queued in priority and fairness, node identities", &queue_wait),
        ("apiserver's own time, DELETE pods, scale to 0 -> all gone (all clients)", &pod_delete),
    ] {
        if let (Some(p50), Some(p99)) = (h.quantile_ms(0.5), h.quantile_ms(0.99)) {
            println!("{label:<66} p50 {p50:>6.0} ms  p99 {p99:>6.0} ms  n {:.0}", h.count());
        }
    }
    println!("apiserver requests per pod, create -> all Ready, every client (the ten largest):");
    for ((resource, verb), n) in requests_ready.since(&requests_before).into_iter().take(10) {
        println!("{:<66} {:>9.2}", format!("  {verb} {resource}"), n / want as f64);
    }
    println!();
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let summary = json!({
        "bench": "burst",
        "daemon": match args.daemon {
            DaemonKind::Vkhost => "vkhost",
            DaemonKind::Upstream | DaemonKind::UpstreamTuned => "upstream-vk-v1.14.1",
            DaemonKind::Floor => "floor",
        },
        "provider": provider,
        "pods": args.pods,
        "nodes": args.nodes,
        "startup_p50_ms": round(startup.p(50.0)),
        "startup_p99_ms": round(startup.p(99.0)),
        "startup_server_p50_s": server.p(50.0),
        "startup_server_p99_s": server.p(99.0),
        "all_running_s": round2(burst_s),
        "all_gone_s": round2(teardown_s),
        "last_deletion_s": deleting_s.map(round2),
        "gone_after_last_deletion_s": gone_after_s.map(round2),
        "peak_rss_mib": round(mib(hwm_kib)),
        "sampled_peak_rss_mib": round(mib(sampled_peak_kib)),
        "cpu_s": round2(cpu_end),
        "cpu_burst_s": round2(cpu_end - cpu_before),
        "reconciles_per_pod_up": reconciles_up.map(round2),
        "reconciles_per_pod_down": reconciles_down.map(round2),
        "status_calls_per_pod_up": status_up.map(round2),
        "status_calls_per_pod_down": status_down.map(round2),
        "node_requests_per_pod_up": node_requests.map(round2),
        "node_requests_per_pod_down": node_requests_down.map(round2),
        "apiserver_status_patch_p99_ms": status_patch.quantile_ms(0.99).map(round),
        "apiserver_node_queue_wait_p99_ms": queue_wait.quantile_ms(0.99).map(round),
        "apiserver_pod_delete_p50_ms": pod_delete.quantile_ms(0.5).map(round),
        "apiserver_pod_delete_p99_ms": pod_delete.quantile_ms(0.99).map(round),
        "budget": match args.daemon {
            DaemonKind::Upstream => "stock: 5 requests/s, burst 10, 10 workers",
            DaemonKind::UpstreamTuned => "tuned: 500 requests/s, burst 1000, 64 workers",
            DaemonKind::Vkhost => "vkhost defaults",
            DaemonKind::Floor => "no limits, no workers: a write per pod at once",
        },
        "scheduling_p99_ms": round(scheduling.p(99.0)),
        "bound_ready_p50_ms": round(on_node.p(50.0)),
        "bound_ready_p90_ms": round(on_node.p(90.0)),
        "bound_ready_p99_ms": round(on_node.p(99.0)),
        "bound_ready_max_ms": round(on_node.p(100.0)),
        "stages_p99_ms": stage_dists.iter().filter(|d| !d.values.is_empty())
            .map(|d| (d.label.trim().to_string(), json!(round(d.p(99.0))))).collect::<serde_json::Map<_, _>>(),
        "teardown_stages_p99_ms": teardown_dists.iter().filter(|d| !d.values.is_empty())
            .map(|d| (d.label.trim().to_string(), json!(round(d.p(99.0))))).collect::<serde_json::Map<_, _>>(),
        "daemon_share_p50_ms": daemon_share.as_ref().map(|d| round(d.p(50.0))),
        "daemon_share_p99_ms": daemon_share.as_ref().map(|d| round(d.p(99.0))),
        "cloud_latency_ms": args.cloud_latency_ms,
        "instance_start_ms": [args.instance_start_ms.0, args.instance_start_ms.1],
        "cloud_requests": cloud.as_ref().map(|c| json!(c.requests)),
        "lookups_before_create_per_pod": lookups_per_pod.map(round2),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    });
    println!("{summary}");
    Ok(summary)
}
