//! The token-storm harness (issue 12): one real control plane, `vkhost` as a subprocess with one
//! virtual node, and an open-loop flood of kubelet-API requests each bearing a new random token,
//! while the node's Lease renewals, its Ready condition and a legitimate caller are watched. Exits
//! non-zero when a renewal came late or the node left Ready.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};
use vkcube_e2e::bench::{Proc, loadavg, percentile, release_binary};
use vkcube_e2e::daemon::{fresh_cluster_id, node_of, plugin_path};

const USAGE: &str = "\
token-storm harness (issue 12): random-token requests against a vkhost's kubelet API while its
node Lease must keep renewing

usage:
  cargo build --release -p vkhost && plugins/build example
  cargo run --release -p vkcube-e2e --example storm -- [--seconds S] [--rate R] [--connections N]

  --seconds S      length of the storm (default 60)
  --rate R         requests per second offered, open loop: each is due at its own time whatever
                   the server's pace (default 2000)
  --connections N  HTTP/1.1 keep-alive connections at most (default 64)

Each request is GET https://127.0.0.1:<kubelet port>/pods with a new random bearer token (the
serving certificate is not verified). Meanwhile the node's Lease (kube-node-lease/<node>) and
Ready condition are read every 500 ms, and the apiserver's kubelet client certificate calls
GET /pods every second. Exits 1 when the largest gap between Lease renewals exceeds the renewal
period (10 s) + 5 s, or the node was seen not Ready.

Run with the same CARGO_TARGET_DIR as the builds. The binary comes from
${CARGO_TARGET_DIR:-<repo>/target}/release/vkhost (VKCUBE_BENCH_VKHOST=PATH for another build),
the plugin from ${CARGO_TARGET_DIR:-<repo>/target}/plugins (override with VKCUBE_PLUGIN_DIR).";

/// The daemon renews its node Leases this often (`host/src/node/lease.rs`, NODE_LEASE_RENEW).
const RENEW_PERIOD: Duration = Duration::from_secs(10);
/// How late a renewal may come before the harness fails.
const RENEW_SLACK: Duration = Duration::from_secs(5);
/// A storm request not answered by then counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Args {
    seconds: u64,
    rate: u64,
    connections: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { seconds: 60, rate: 2000, connections: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value\n\n{USAGE}"));
        match flag.as_str() {
            "--seconds" => {
                args.seconds = value("--seconds")?.parse().context("--seconds must be a positive integer")?
            }
            "--rate" => args.rate = value("--rate")?.parse().context("--rate must be a positive integer")?,
            "--connections" => {
                args.connections =
                    value("--connections")?.parse().context("--connections must be a positive integer")?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if args.seconds == 0 || args.rate == 0 || args.connections == 0 {
        bail!("--seconds, --rate and --connections must be above 0 (got {args:?})");
    }
    Ok(args)
}

/// A new 32-byte random token, hex: never seen by the daemon, so never in its caches.
fn random_token() -> String {
    rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers of the storm, by outcome.
#[derive(Default)]
struct StormStats {
    by_status: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    /// From the time the request was due (open loop: waiting for a free connection counts).
    latency_ms: Vec<f64>,
    /// The slowest answer: (latency, when it was due after the storm began), ms.
    slowest: (f64, f64),
}

/// What the legitimate caller saw.
struct Legit {
    ok: u64,
    /// Answers other than 200, by status code (or `timeout`, `error`).
    failed: BTreeMap<String, u64>,
    /// Sorted, ms.
    latency: Vec<f64>,
    /// (latency, when after the caller started), ms: the first call also opens the connection.
    slowest: (f64, f64),
}

impl Legit {
    fn print(&self, what: &str) {
        println!(
            "{what}: {} ok, failed {:?}; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({:.1} s after the first call)",
            self.ok,
            self.failed,
            percentile(&self.latency, 50.0),
            percentile(&self.latency, 99.0),
            percentile(&self.latency, 100.0),
            self.slowest.1 / 1000.0
        );
    }
}

/// What the Lease and Node sampler saw.
#[derive(Default)]
struct Heartbeat {
    /// Distinct renewTimes, milliseconds since the epoch, in order seen.
    renewals: Vec<i64>,
    samples: u64,
    not_ready: u64,
    first_not_ready: Option<String>,
    read_errors: u64,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn is_ready(node: &Node) -> Option<String> {
    let cond = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    Some(cond.status.clone())
}

/// Samples the Lease and the Node every 500 ms until `stop`.
async fn sample_heartbeat(leases: Api<Lease>, nodes: Api<Node>, node: String, stop: Arc<AtomicBool>) -> Heartbeat {
    let mut hb = Heartbeat::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        hb.samples += 1;
        match leases.get(&node).await {
            Ok(lease) => {
                if let Some(t) = lease.spec.and_then(|s| s.renew_time) {
                    let ms = t.0.as_millisecond();
                    if hb.renewals.last() != Some(&ms) {
                        hb.renewals.push(ms);
                    }
                }
            }
            Err(_) => hb.read_errors += 1,
        }
        match nodes.get(&node).await {
            Ok(n) => {
                let status = is_ready(&n);
                if status.as_deref() != Some("True") {
                    hb.not_ready += 1;
                    hb.first_not_ready.get_or_insert(format!("Ready={status:?} at {} ms", now_ms()));
                }
            }
            Err(_) => hb.read_errors += 1,
        }
    }
    hb
}

/// The apiserver's kubelet client certificate (system:masters): authenticated by the TLS
/// handshake, authorized by a cached SubjectAccessReview.
fn certificate_client(cluster: &vkcube_e2e::Cluster) -> Result<reqwest::Client> {
    let mut pem = std::fs::read(&cluster.env["KUBELET_CLIENT_CRT"]).context("read KUBELET_CLIENT_CRT")?;
    pem.extend(std::fs::read(&cluster.env["KUBELET_CLIENT_KEY"]).context("read KUBELET_CLIENT_KEY")?);
    Ok(reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .identity(reqwest::Identity::from_pem(&pem)?)
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// A token of ServiceAccount `<ns>/storm-caller`, granted `nodes/proxy` (as a monitoring agent
/// would be): its TokenReview goes through the same lane as the storm's.
async fn service_account_token(cluster: &vkcube_e2e::Cluster) -> Result<String> {
    let ns = cluster.namespace("storm").await;
    let role = format!("{}-caller", ns.name);
    let sa = format!("{}:storm-caller", ns.name);
    for args in [
        vec!["create", "serviceaccount", "storm-caller", "-n", &ns.name],
        vec!["create", "clusterrole", &role, "--verb=get,create", "--resource=nodes/proxy"],
        vec!["create", "clusterrolebinding", &role, "--clusterrole", &role, "--serviceaccount", &sa],
    ] {
        let (code, _, err) = cluster.kubectl(&args);
        if code != 0 {
            bail!("kubectl {}: {err}", args.join(" "));
        }
    }
    let (code, token, err) = cluster.kubectl(&["create", "token", "storm-caller", "-n", &ns.name, "--duration", "1h"]);
    if code != 0 {
        bail!("kubectl create token storm-caller -n {}: {err}", ns.name);
    }
    Ok(token.trim().to_string())
}

/// A legitimate caller: GET /pods every second with `client` (and `token` when given).
async fn legit_caller(client: reqwest::Client, token: Option<String>, base: String, stop: Arc<AtomicBool>) -> Legit {
    let (mut ok, mut latency) = (0u64, Vec::new());
    let mut failed = BTreeMap::<String, u64>::new();
    let mut slowest = (0.0f64, 0.0f64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = Instant::now();
        let mut req = client.get(format!("{base}/pods"));
        if let Some(token) = &token {
            req = req.bearer_auth(token);
        }
        let res = match req.send().await {
            Ok(r) => {
                let status = r.status();
                r.bytes().await.map(|_| status)
            }
            Err(e) => Err(e),
        };
        match res {
            Ok(status) if status == 200 => {
                ok += 1;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if ms > slowest.0 {
                    slowest = (ms, (t - started).as_secs_f64() * 1000.0);
                }
                latency.push(ms);
            }
            Ok(status) => *failed.entry(status.as_u16().to_string()).or_default() += 1,
            Err(e) => *failed.entry(if e.is_timeout() { "timeout" } else { "error" }.to_string()).or_default() += 1,
        }
    }
    latency.sort_by(|a, b| a.total_cmp(b));
    Legit { ok, failed, latency, slowest }
}

/// Offers `rate` requests/s for `seconds`, each due at its own time; at most `connections` are in
/// flight (so on as many keep-alive connections), later ones wait for a free one.
async fn storm(args: &Args, base: &str) -> Result<(StormStats, u64, Duration)> {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .pool_max_idle_per_host(args.connections)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let slots = Arc::new(Semaphore::new(args.connections));
    let stats = Arc::new(Mutex::new(StormStats::default()));
    let url = format!("{base}/pods");
    let total = args.rate * args.seconds;
    let offered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        // Open loop: everything due by now goes out, whatever the answers' pace.
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            let due_at = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
            sent += 1;
            offered.fetch_add(1, Ordering::Relaxed);
            let (client, slots, stats, url) = (client.clone(), slots.clone(), stats.clone(), url.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore open");
                let res = client.get(&url).bearer_auth(random_token()).send().await;
                let res = match res {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        r.bytes().await.map(|_| status)
                    }
                    Err(e) => Err(e),
                };
                let latency = due_at.elapsed().as_secs_f64() * 1000.0;
                let due_ms = (due_at - start).as_secs_f64() * 1000.0;
                let mut s = stats.lock().await;
                match res {
                    Ok(status) => {
                        *s.by_status.entry(status).or_default() += 1;
                        s.latency_ms.push(latency);
                        if latency > s.slowest.0 {
                            s.slowest = (latency, due_ms);
                        }
                    }
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert_with(|| format!("{e:?}"));
                    }
                }
            });
        }
        // Reap finished tasks so the set does not grow with the whole run.
        while tasks.try_join_next().is_some() {}
    }
    let offer_time = start.elapsed();
    while tasks.join_next().await.is_some() {}
    let stats = Arc::try_unwrap(stats).map_err(|_| anyhow::anyhow!("storm tasks still hold the stats"))?.into_inner();
    Ok((stats, offered.load(Ordering::Relaxed), offer_time))
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let tck: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    Some(ticks as f64 / tck)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let _ = plugin_path("example");
    let daemon_bin = release_binary("vkhost")?;
    eprintln!("starting the control plane (tests/cluster/up)…");
    let cluster = vkcube_e2e::cluster();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let passed = rt.block_on(run(&args, daemon_bin, cluster))?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: &Args, daemon_bin: std::path::PathBuf, cluster: &'static vkcube_e2e::Cluster) -> Result<bool> {
    let run_dir = std::env::temp_dir().join(format!("vkcube-storm-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let client = cluster.client().await;
    let cluster_id = fresh_cluster_id();
    // Defaults everywhere (the kubelet API on a free loopback port) but the admin port.
    let config = format!(
        "cluster_id = \"{cluster_id}\"\nkubeconfig = \"{}\"\n\n[plugin]\npath = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[nodes]]\nid = \"n1\"\ntaint_value = \"example\"\n",
        cluster.kubeconfig.display(),
        plugin_path("example").display()
    );
    let config_path = run_dir.join("vkhost.toml");
    std::fs::write(&config_path, &config)?;
    let daemon_log = run_dir.join("daemon.log");
    let log = std::fs::File::create(&daemon_log)?;
    let mut daemon = Proc {
        name: "vkhost",
        child: Command::new(&daemon_bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", daemon_bin.display()))?,
    };
    let pid = daemon.pid();
    eprintln!("vkhost pid {pid}, config {}, log {}", config_path.display(), daemon_log.display());
    let node = tokio::select! {
        n = node_of(&client, &cluster_id) => n,
        _ = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if daemon.ensure_alive(&daemon_log).is_err() { break; }
            }
        } => bail!("vkhost exited before its node was Ready; see {}", daemon_log.display()),
    };
    let node_name = node.metadata.name.clone().context("node without a name")?;
    let port = node
        .status
        .as_ref()
        .and_then(|s| s.daemon_endpoints.as_ref())
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .map(|e| e.port)
        .context("node.status.daemonEndpoints.kubeletEndpoint.port is not set")?;
    let base = format!("https://127.0.0.1:{port}");
    eprintln!("node {node_name} Ready, kubelet API at {base}");

    let sa_token = service_account_token(cluster).await?;
    let load_before = loadavg();
    let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_heartbeat(
        Api::namespaced(client.clone(), "kube-node-lease"),
        Api::all(client.clone()),
        node_name.clone(),
        stop.clone(),
    ));
    let cert = tokio::spawn(legit_caller(certificate_client(cluster)?, None, base.clone(), stop.clone()));
    let plain = reqwest::Client::builder().danger_accept_invalid_certs(true).timeout(REQUEST_TIMEOUT).build()?;
    let token = tokio::spawn(legit_caller(plain, Some(sa_token), base.clone(), stop.clone()));
    // A first Lease sample before the storm, so the first gap counts from a renewal before it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let storm_start_ms = now_ms();
    eprintln!("storm: {} requests/s for {} s over at most {} connections", args.rate, args.seconds, args.connections);
    let (stats, offered, offer_time) = storm(args, &base).await?;
    let storm_end_ms = now_ms();
    stop.store(true, Ordering::Relaxed);
    let hb = sampler.await?;
    let (cert, token) = (cert.await?, token.await?);
    let cpu_storm = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let hwm_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    let alive = daemon.ensure_alive(&daemon_log).is_ok();
    daemon.stop();
    let load_after = loadavg();

    // Gaps between consecutive renewals, and from the last one to the end of the storm (a
    // heartbeat that stopped for good shows there).
    let mut gaps: Vec<i64> = hb.renewals.windows(2).map(|w| w[1] - w[0]).collect();
    if let Some(last) = hb.renewals.last() {
        gaps.push(storm_end_ms - last);
    }
    let max_gap_ms = gaps.iter().copied().max().unwrap_or(i64::MAX);
    let renewals_in_storm = hb.renewals.iter().filter(|&&t| t >= storm_start_ms && t <= storm_end_ms).count();
    let mut latency = stats.latency_ms.clone();
    latency.sort_by(|a, b| a.total_cmp(b));
    let answered: u64 = stats.by_status.values().sum();
    let count = |code: u16| stats.by_status.get(&code).copied().unwrap_or(0);
    let other: u64 = answered - count(401) - count(429);
    let limit_ms = (RENEW_PERIOD + RENEW_SLACK).as_millis() as i64;
    let lease_ok = !hb.renewals.is_empty() && max_gap_ms <= limit_ms;
    let ready_ok = hb.not_ready == 0;
    let passed = lease_ok && ready_ok && alive;

    println!();
    println!(
        "vkcube token storm: rate={}/s seconds={} connections={} cpus={} ({})",
        args.rate,
        args.seconds,
        args.connections,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        daemon_bin.display()
    );
    println!("load average (1/5/15 min): before {load_before}, after {load_after}");
    println!(
        "offered {offered} requests in {:.1} s ({:.0}/s); answered {answered} ({:.0}/s over the offer time)",
        offer_time.as_secs_f64(),
        offered as f64 / offer_time.as_secs_f64(),
        answered as f64 / offer_time.as_secs_f64()
    );
    println!(
        "  401: {}  429: {}  other: {other} {:?}  errors: {}{}",
        count(401),
        count(429),
        stats.by_status.iter().filter(|(c, _)| **c != 401 && **c != 429).collect::<Vec<_>>(),
        stats.errors,
        stats.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    let p = |v: &[f64], q: f64| percentile(v, q);
    println!(
        "  latency from due time: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (due {:.1} s into the storm)",
        p(&latency, 50.0),
        p(&latency, 90.0),
        p(&latency, 99.0),
        p(&latency, 100.0),
        stats.slowest.1 / 1000.0
    );
    println!(
        "Lease kube-node-lease/{node_name}: {} renewals seen ({renewals_in_storm} during the storm), largest gap {:.1} s \
         (limit {:.0} s); {} samples, {} read errors",
        hb.renewals.len(),
        max_gap_ms as f64 / 1000.0,
        limit_ms as f64 / 1000.0,
        hb.samples,
        hb.read_errors
    );
    println!(
        "Node Ready throughout: {}{}",
        if ready_ok { "yes" } else { "NO" },
        hb.first_not_ready.as_deref().map(|s| format!(" (first: {s}, {} samples)", hb.not_ready)).unwrap_or_default()
    );
    cert.print("legitimate caller, kubelet client certificate, GET /pods each second");
    token.print("legitimate caller, ServiceAccount token with nodes/proxy, GET /pods each second");
    println!(
        "daemon: CPU {cpu_storm:.1} s during the storm, peak RSS {:.1} MiB, {}",
        hwm_kib as f64 / 1024.0,
        if alive { "alive at the end" } else { "EXITED" }
    );
    let round = |v: f64| (v * 10.0).round() / 10.0;
    println!(
        "{}",
        json!({
            "bench": "storm",
            "rate": args.rate,
            "seconds": args.seconds,
            "connections": args.connections,
            "offered": offered,
            "answered": answered,
            "status_401": count(401),
            "status_429": count(429),
            "status_other": other,
            "errors": stats.errors,
            "latency_p50_ms": round(p(&latency, 50.0)),
            "latency_p99_ms": round(p(&latency, 99.0)),
            "lease_renewals": hb.renewals.len(),
            "lease_max_gap_s": round(max_gap_ms as f64 / 1000.0),
            "node_ready_throughout": ready_ok,
            "cert_ok": cert.ok,
            "cert_failed": cert.failed,
            "cert_max_ms": round(p(&cert.latency, 100.0)),
            "token_ok": token.ok,
            "token_failed": token.failed,
            "token_max_ms": round(p(&token.latency, 100.0)),
            "daemon_cpu_s": round(cpu_storm),
            "daemon_peak_rss_mib": round(hwm_kib as f64 / 1024.0),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "passed": passed,
        })
    );
    if !passed {
        eprintln!(
            "FAILED: {}{}{}; daemon log {}",
            if lease_ok { "" } else { "a Lease renewal came late or none was seen; " },
            if ready_ok { "" } else { "the node left Ready; " },
            if alive { "" } else { "the daemon exited" },
            daemon_log.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(passed)
}
