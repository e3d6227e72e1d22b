//! `cube-sim bench`: N signed GetCubePod calls with C in flight against a simulator (a running
//! one via --sim, or one started in-process), printing calls/s, p50 and p99.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::task::JoinSet;

use crate::client::ApiClient;
use crate::config::{Config, KeyPair};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Simulator to measure (e.g. http://127.0.0.1:8080). Without it, one is started in-process.
    #[arg(long, value_name = "URL")]
    pub sim: Option<String>,
    /// Key pair the simulator accepts (required with --sim).
    #[arg(long, value_name = "PUBLIC:PRIVATE")]
    pub key: Option<KeyPair>,
    /// Total GetCubePod calls.
    #[arg(long, default_value_t = 20_000)]
    pub calls: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Region of the benchmark instance.
    #[arg(long, default_value = "cn-bj2")]
    pub region: String,
    /// Zone of the benchmark instance.
    #[arg(long, default_value = "cn-bj2-05")]
    pub zone: String,
}

pub struct Report {
    pub calls: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Report {
    pub fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

const BENCH_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bench\n  namespace: default\n  uid: cube-sim-bench\n  annotations:\n    vk.cube.ucloud.cn/node: bench\nspec:\n  containers:\n  - name: app\n    image: uhub.service.ucloud.cn/library/nginx:1.27\n    env:\n    - name: MODE\n      value: bench\n    resources:\n      limits:\n        cpu: \"1\"\n        memory: 2Gi\n";

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (url, key, local) = match &args.sim {
        Some(url) => (url.clone(), args.key.clone().context("--key is required with --sim")?, None),
        None => {
            let key = KeyPair { public: "bench-public".into(), private: "bench-private".into() };
            let mut cfg = Config::default();
            cfg.keys.push(key.clone());
            let handle = crate::Simulator::start(cfg).await?;
            (handle.url().to_string(), key, Some(handle))
        }
    };
    let report = measure(&url, key, &args).await?;
    println!(
        "GetCubePod: {} calls, concurrency {}, {} errors, {:.2}s, {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
        report.calls,
        args.concurrency,
        report.errors,
        report.elapsed.as_secs_f64(),
        report.calls_per_sec(),
        report.p50.as_secs_f64() * 1000.0,
        report.p99.as_secs_f64() * 1000.0
    );
    if let Some(h) = local {
        h.shutdown().await;
    }
    if report.errors > 0 {
        anyhow::bail!("{} calls failed", report.errors);
    }
    Ok(())
}

pub async fn measure(url: &str, key: KeyPair, args: &BenchArgs) -> anyhow::Result<Report> {
    let client = ApiClient::new(url, key, &args.region);
    let pod = B64.encode(BENCH_POD);
    let created = client
        .call(
            "CreateCubePod",
            &[("Zone", &args.zone), ("VPCId", "uvnet-bench"), ("SubnetId", "subnet-bench"), ("Pod", &pod)],
        )
        .await
        .context("creating the benchmark instance")?;
    let cube_id = created["CubeId"].as_str().context("CreateCubePod answered no CubeId")?.to_string();

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next, cube_id, zone, total) =
            (client.clone(), next.clone(), cube_id.clone(), args.zone.clone(), args.calls);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let ok = client.call("GetCubePod", &[("Zone", &zone), ("CubeId", &cube_id)]).await.is_ok();
                latencies.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(args.calls);
    let mut errors = 0;
    while let Some(done) = workers.join_next().await {
        let (l, e) = done?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    let _ = client.call("DeleteCubePod", &[("Zone", &args.zone), ("CubeId", &cube_id)]).await;
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Report { calls: latencies.len(), errors, elapsed, p50: pick(0.50), p99: pick(0.99) })
}
