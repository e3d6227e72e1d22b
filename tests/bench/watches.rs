//! What watching running pods' ConfigMaps costs: N pods that all mount one ConfigMap, then N pods
//! that each mount their own, on one virtual node (the example provider, in this process). For each
//! case: the watches open (the daemon's count and the apiserver's), the ConfigMap requests the
//! apiserver served by verb, every request the apiserver served per pod from bind to Ready by
//! resource and verb (apiserver_request_total, less the harness's own), the process's memory and
//! sockets; then one change of the shared ConfigMap fanned out to every pod (`update` calls and how
//! long until all were made).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use vkcube_e2e::bench::{metric_label, metric_value};
use vkcube_e2e::daemon::{example_config, fresh_cluster_id, node_of, start};

const USAGE: &str = "\
reference-watch benchmark: the cost of watching the ConfigMaps running pods mount

usage:
  plugins/build example
  cargo run -p vkcube-e2e --example watches -- [--pods N]

  --pods N   pods per case (default 200, the most one node takes)";

fn main() -> Result<()> {
    let mut pods = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods" => pods = args.next().context("--pods N")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?.block_on(run(pods))
}

async fn run(n: usize) -> Result<()> {
    let cluster = vkcube_e2e::cluster();
    let client = cluster.client().await;
    let ns = cluster.namespace("watches").await;
    let cid = fresh_cluster_id();
    let daemon = start(&example_config(cluster, &cid, &ns.name, "")).await;
    let admin = daemon.admin_addr.context("admin endpoint")?;
    let node = node_of(&client, &cid).await.name_any();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    println!("{n} pods per case on node {node}");
    let idle = Sample::take(&client, admin).await?;
    println!("idle: rss {} KiB, sockets {}", idle.rss_kib, idle.sockets);

    for case in ["shared", "own"] {
        let names: Vec<String> =
            (0..n).map(|i| if case == "shared" { "shared".to_string() } else { format!("own-{i}") }).collect();
        for name in names.iter().collect::<std::collections::BTreeSet<_>>() {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": name}, "data": {"app.conf": "v1"}}))?;
            cms.create(&PostParams::default(), &cm).await?;
        }
        let before = Sample::take(&client, admin).await?;
        let started = Instant::now();
        for (i, name) in names.iter().enumerate() {
            pods.create(&PostParams::default(), &pod(&format!("{case}-{i}"), &node, name)).await?;
        }
        let distinct = names.iter().collect::<std::collections::BTreeSet<_>>().len() as u64;
        let polls = std::sync::atomic::AtomicU64::new(0);
        wait(Duration::from_secs(600), "all Running and their ConfigMaps watched", || async {
            polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let list = pods.list(&ListParams::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == n && daemon_metric(admin, "vkhost_reference_watches{").await? == distinct as f64).then_some(())
        })
        .await?;
        let running_after = started.elapsed();
        let ready = Sample::take(&client, admin).await?;
        // The status sync and the watches' first answers settle.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = Sample::take(&client, admin).await?;
        println!(
            "\n{case}: {n} pods Running in {:.1}s; watches: daemon {}, apiserver {} (configmaps WATCH in flight)",
            running_after.as_secs_f64(),
            after.watches,
            after.apiserver_watches
        );
        println!(
            "  rss {} KiB (+{} KiB since before the pods), sockets {} (+{})",
            after.rss_kib,
            after.rss_kib as i64 - before.rss_kib as i64,
            after.sockets,
            after.sockets as i64 - before.sockets as i64
        );
        // The harness's own requests: the pods' creation and its polls while waiting.
        let mut harness = BTreeMap::new();
        harness.insert(("pods".to_string(), "POST".to_string()), n as u64);
        harness.insert(("pods".to_string(), "LIST".to_string()), polls.into_inner());
        let mut total = 0;
        println!("  every request the apiserver served from the pods' creation to all Ready, less the harness's:");
        for ((resource, verb), count) in ready.delta_all(&before) {
            let count = count.saturating_sub(harness.get(&(resource.clone(), verb.clone())).copied().unwrap_or(0));
            if count > 0 {
                total += count;
                println!("    {resource:<14} {verb:<6} {count:>6}  ({:.2} per pod)", count as f64 / n as f64);
            }
        }
        println!("    all            {total:>13}  ({:.2} per pod)", total as f64 / n as f64);
        println!("  configmap requests served by the apiserver while the pods started, by verb:");
        for (verb, count) in after.delta(&before) {
            println!("    {verb:<6} {count:>6}  ({:.2} per pod)", count as f64 / n as f64);
        }

        if case == "shared" {
            // One change of the shared ConfigMap: every pod is told, once.
            let updates = daemon_metric(admin, r#"vkhost_provider_calls{export="pods.update",outcome="ok"}"#)
                .await
                .unwrap_or(0.0);
            let t0 = Instant::now();
            cms.patch("shared", &PatchParams::default(), &Patch::Merge(json!({"data": {"app.conf": "v2"}}))).await?;
            wait(Duration::from_secs(600), "every pod updated", || async {
                let now = daemon_metric(admin, r#"vkhost_provider_calls{export="pods.update",outcome="ok"}"#).await?;
                (now - updates >= n as f64).then_some(())
            })
            .await?;
            println!(
                "  one change of the shared ConfigMap: {n} update calls made within {:.2}s",
                t0.elapsed().as_secs_f64()
            );
        }

        pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
        wait(Duration::from_secs(600), "pods gone and nothing watched", || async {
            let left = pods.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0 && daemon_metric(admin, "vkhost_reference_watches{").await? == 0.0).then_some(())
        })
        .await?;
        cms.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    }
    daemon.stop().await;
    Ok(())
}

fn pod(name: &str, node: &str, config_map: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "volumes": [{"name": "config", "configMap": {"name": config_map}}],
            "containers": [{"name": "web", "image": "nginx", "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}]
        }
    }))
    .unwrap()
}

/// What is measured at one instant.
struct Sample {
    /// apiserver_request_total for configmaps, by verb.
    requests: BTreeMap<String, f64>,
    /// apiserver_request_total by resource and verb.
    all: BTreeMap<(String, String), f64>,
    apiserver_watches: f64,
    watches: f64,
    rss_kib: u64,
    sockets: usize,
}

impl Sample {
    async fn take(client: &Client, admin: std::net::SocketAddr) -> Result<Sample> {
        let text = client.request_text(http::Request::get("/metrics").body(vec![])?).await?;
        let mut requests = BTreeMap::new();
        let mut all = BTreeMap::new();
        let mut apiserver_watches = 0.0;
        for line in text.lines() {
            if line.starts_with("apiserver_request_total{") {
                let resource = metric_label(line, "resource").unwrap_or_default();
                let subresource = metric_label(line, "subresource").unwrap_or_default();
                let resource = if subresource.is_empty() { resource } else { format!("{resource}/{subresource}") };
                *all.entry((resource, metric_label(line, "verb").unwrap_or_default())).or_default() +=
                    metric_value(line);
            }
            if line.starts_with("apiserver_request_total{") && line.contains(r#"resource="configmaps""#) {
                let verb = metric_label(line, "verb").unwrap_or_default();
                *requests.entry(verb).or_default() += metric_value(line);
            }
            if line.starts_with("apiserver_longrunning_requests{")
                && line.contains(r#"resource="configmaps""#)
                && line.contains(r#"verb="WATCH""#)
            {
                apiserver_watches += metric_value(line);
            }
        }
        let status = std::fs::read_to_string("/proc/self/status")?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0);
        let sockets = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p.to_string_lossy().starts_with("socket:"))
            .count();
        let watches = daemon_metric(admin, "vkhost_reference_watches{").await.unwrap_or(0.0);
        Ok(Sample { requests, all, apiserver_watches, watches, rss_kib, sockets })
    }

    fn delta_all(&self, before: &Sample) -> Vec<((String, String), u64)> {
        self.all
            .iter()
            .map(|(k, n)| (k.clone(), (n - before.all.get(k).copied().unwrap_or(0.0)) as u64))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn delta(&self, before: &Sample) -> Vec<(String, u64)> {
        self.requests
            .iter()
            .map(|(verb, n)| (verb.clone(), (n - before.requests.get(verb).copied().unwrap_or(0.0)) as u64))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// The value of the first series of the daemon's /metrics starting with `prefix`.
async fn daemon_metric(admin: std::net::SocketAddr, prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find(|l| l.starts_with(prefix)).map(metric_value)
}

async fn wait<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
