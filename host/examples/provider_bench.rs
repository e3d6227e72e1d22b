//! What a provider costs the host, by the language it is written in: the Rust example against the
//! same provider in Python (componentize-py, CPython inside). File size, compile time (Cranelift
//! and the baseline compiler), the first call after a load, the smallest memory cap it runs
//! under, and the cost of one call (a fresh instance each, as always).
//!
//!   plugins/build example python && cargo run --release -p vkhost --example provider_bench [-- --calls 2000]
//!
//! Plugins are found like the tests find them (`$VKCUBE_PLUGIN_DIR`, else
//! `${CARGO_TARGET_DIR:-target}/plugins`).

#[path = "../tests/plugin_support.rs"]
mod support;
#[path = "support/timing.rs"]
mod timing;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{ctx, plugin, plugin_dir, pod_ref, resolved_pod, settings};
use timing::{arg, fmt, row, time_calls};
use vkhost::plugin::{CreateAttempt, Plugin, PluginRuntime, PluginSettings};

const NODE_CONFIG: &str = r#"{"max_pods": 200}"#;
const UID: &str = "6f1c7a7e-5b1d-4d3e-9a51-0c2f1e7d9a01";

fn smoke() -> Vec<(String, String)> {
    vec![("bench-node".into(), NODE_CONFIG.into())]
}

/// A load that compiles (a private, empty cache) with the given compiler, and the time of the
/// first call after it: the first instantiation of the component.
async fn cold_load(path: &Path, baseline: bool) -> (f64, Duration) {
    let mut s = settings(path);
    s.baseline_compile = baseline;
    let p = Plugin::load(PluginRuntime::new().unwrap(), s, smoke()).await.unwrap();
    let compile_ms = p.summary().load.compile_ms;
    let t = Instant::now();
    p.describe_node(&ctx("bench-node", NODE_CONFIG)).await.unwrap();
    (compile_ms, t.elapsed())
}

/// Whether the provider loads and serves a create and a status under `memory_mib`.
async fn runs_under(s: &PluginSettings, memory_mib: u64) -> bool {
    let mut s = s.clone();
    s.limits.memory_mib = memory_mib;
    let Ok(p) = Plugin::load(PluginRuntime::new().unwrap(), s, smoke()).await else { return false };
    let c = ctx("bench-node", NODE_CONFIG);
    p.create(&c, &resolved_pod("web-0", UID), CreateAttempt { may_exist: true }).await.is_ok()
        && p.status(&c, &pod_ref("web-0", UID)).await.is_ok()
}

/// The smallest memory cap, in MiB, under which the provider runs (bisection up to 1 GiB).
async fn smallest_cap(path: &Path) -> u64 {
    // One compile for all the probes: a shared cache, filled by the first load.
    let mut s = settings(path);
    s.baseline_compile = false;
    let (mut lo, mut hi) = (0, 1024);
    assert!(runs_under(&s, hi).await, "{} does not run under 1 GiB", path.display());
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if runs_under(&s, mid).await { hi = mid } else { lo = mid }
    }
    hi
}

async fn bench(label: &str, path: &Path, calls: usize) {
    let size = std::fs::metadata(path).unwrap().len();
    println!("--- {label}: {} ({:.2} MB)", path.display(), size as f64 / 1e6);
    let (cranelift_ms, first_call) = cold_load(path, false).await;
    println!(
        "{label:<12} compile, Cranelift (cold cache)        {cranelift_ms:>9.1} ms; first call after it {}",
        fmt(first_call)
    );
    let (winch_ms, first_call) = cold_load(path, true).await;
    println!(
        "{label:<12} compile, baseline/Winch (cold cache)   {winch_ms:>9.1} ms; first call after it {}",
        fmt(first_call)
    );
    println!("{label:<12} smallest memory cap it runs under      {:>6} MiB", smallest_cap(path).await);

    let mut s = settings(path);
    s.baseline_compile = false;
    let p = Plugin::load(PluginRuntime::new().unwrap(), s, smoke()).await.unwrap();
    let c = ctx("bench-node", NODE_CONFIG);
    let pod = resolved_pod("web-0", UID);
    let r = pod_ref("web-0", UID);
    let retry = CreateAttempt { may_exist: true };
    p.create(&c, &pod, retry).await.unwrap();

    let mut samples = time_calls(calls, || async {
        p.validate_config("bench-node", NODE_CONFIG).await.unwrap();
    })
    .await;
    row(&format!("{label}: metadata.validate-config"), &mut samples);
    let mut samples = time_calls(calls, || async {
        p.describe_node(&c).await.unwrap();
    })
    .await;
    row(&format!("{label}: node.describe"), &mut samples);
    let mut samples = time_calls(calls, || async {
        p.create(&c, &pod, retry).await.unwrap();
    })
    .await;
    row(&format!("{label}: pods.create, realistic pod, instance exists"), &mut samples);
    let mut samples = time_calls(calls, || async {
        p.status(&c, &r).await.unwrap();
    })
    .await;
    row(&format!("{label}: pods.status"), &mut samples);
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("{cores} cores, {model}; load average {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn main() {
    let calls = arg("--calls", 2000);
    // One worker thread: measures the call path itself, not scheduling across threads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        println!("provider_bench: {} ; plugins from {}", machine(), plugin_dir().display());
        bench("rust", &plugin("example.wasm"), calls).await;
        bench("python", &plugin("python-example.wasm"), calls).await;
        println!("provider_bench: done; {}", machine());
    });
}
