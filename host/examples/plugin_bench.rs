//! Benchmark of the plugin runtime: the cost of one call (fresh instance included) with a
//! realistic resolved pod, and the time from a new plugin file on disk to the swap.
//!
//!   plugins/build && cargo run --release -p vkhost --example plugin_bench [-- --calls 5000 --reloads 10]
//!
//! Plugins are found like the tests find them (`$VKCUBE_PLUGIN_DIR`, else
//! `${CARGO_TARGET_DIR:-target}/plugins`); `cube.wasm` is measured too when present.

#[path = "../tests/plugin_support.rs"]
mod support;
#[path = "support/timing.rs"]
mod timing;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{ctx, install, plugin, plugin_dir, pod_ref, resolved_pod, scratch_dir, settings, unique_copy};
use timing::{arg, row, time_calls};
use tokio_util::sync::CancellationToken;
use vkhost::plugin::{CreateAttempt, Plugin, PluginRuntime};

/// Waits for the background Cranelift build of the active version, so every measurement starts
/// on a quiet machine and calls run optimized code; returns how long it took.
async fn settle(p: &Plugin) -> Duration {
    let t = Instant::now();
    assert!(p.optimized_within(Duration::from_secs(120)).await, "the optimized build never arrived");
    t.elapsed()
}

async fn bench_reloads(label: &str, wasm: &Path, smoke: Vec<(String, String)>, reloads: usize) {
    let dir = scratch_dir("bench-reload");
    let live = dir.join("provider.wasm");
    install(wasm, &live);
    let p = Plugin::load(PluginRuntime::new().unwrap(), settings(&live), smoke).await.unwrap();
    settle(&p).await;

    // reload(): read + contract check + compile (baseline) + typecheck + info + smoke test + swap;
    // then the Cranelift build in the background until it is swapped in too.
    let (mut direct, mut optimized) = (Vec::new(), Vec::new());
    for i in 0..reloads {
        install(&unique_copy(wasm, &dir, i), &live);
        let t = Instant::now();
        p.reload().await.unwrap();
        direct.push(t.elapsed());
        settle(&p).await;
        optimized.push(t.elapsed());
    }
    row(&format!("{label}: reload(), new bytes (baseline compile)"), &mut direct);
    row(&format!("{label}: reload(), new bytes -> optimized build active"), &mut optimized);

    let mut cached = Vec::new();
    for i in 0..reloads {
        install(&dir.join(format!("candidate-{i}.wasm")), &live);
        let t = Instant::now();
        p.reload().await.unwrap();
        cached.push(t.elapsed());
        assert_eq!(p.origin(), vkhost::plugin::Origin::Cache);
    }
    row(&format!("{label}: reload(), known bytes (disk cache)"), &mut cached);

    // The watcher: rename of a new file -> ReloadEvent received (poll + settle + reload).
    let shutdown = CancellationToken::new();
    let watcher = p.spawn_watcher(shutdown.clone());
    let mut events = p.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut watched = Vec::new();
    for i in 0..reloads {
        let candidate = unique_copy(wasm, &dir, reloads + i);
        let t = Instant::now();
        install(&candidate, &live);
        let event = events.recv().await.unwrap();
        watched.push(t.elapsed());
        assert!(event.is_ok(), "{:?}", event.outcome);
        settle(&p).await;
        // Let the next change land in a later poll interval.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    row(&format!("{label}: new file on disk -> swapped (watcher)"), &mut watched);
    shutdown.cancel();
    let _ = watcher.await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {model}")
}

fn main() {
    let calls = arg("--calls", 5000);
    let reloads = arg("--reloads", 10);
    // One worker thread: measures the call path itself, not scheduling across threads.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        println!("plugin_bench: {} ; plugins from {}", machine(), plugin_dir().display());
        let example = plugin("example.wasm");
        let node_config = r#"{"max_pods": 200}"#;
        let p = Plugin::load(
            PluginRuntime::new().unwrap(),
            settings(&example),
            vec![("bench-node".into(), node_config.into())],
        )
        .await
        .unwrap();
        println!("optimized build active {:.0} ms after the load", settle(&p).await.as_secs_f64() * 1e3);
        let c = ctx("bench-node", node_config);
        let pod = resolved_pod("web-0", "6f1c7a7e-5b1d-4d3e-9a51-0c2f1e7d9a01");
        println!(
            "resolved pod: {} bytes of pod JSON, {} env vars, {} ConfigMap, {} Secret, {} token",
            pod.pod.len(),
            pod.env.iter().map(|e| e.vars.len()).sum::<usize>(),
            pod.config_maps.len(),
            pod.secrets.len(),
            pod.tokens.len()
        );
        p.create(&c, &pod, CreateAttempt { may_exist: true }).await.unwrap();
        let r = pod_ref("web-0", "6f1c7a7e-5b1d-4d3e-9a51-0c2f1e7d9a01");

        let mut s = time_calls(calls, || async {
            p.validate_config("bench-node", node_config).await.unwrap();
        })
        .await;
        row("example: metadata.validate-config (fresh instance)", &mut s);
        let mut s = time_calls(calls, || async {
            p.create(&c, &pod, CreateAttempt { may_exist: true }).await.unwrap();
        })
        .await;
        row("example: pods.create, resolved pod (fresh instance)", &mut s);
        let mut s = time_calls(calls, || async {
            p.status(&c, &r).await.unwrap();
        })
        .await;
        row("example: pods.status (fresh instance)", &mut s);
        let mut s = time_calls(calls, || async {
            p.describe_node(&c).await.unwrap();
        })
        .await;
        row("example: node.describe (fresh instance)", &mut s);

        bench_reloads("example", &example, vec![("bench-node".into(), node_config.into())], reloads).await;
        let cube = plugin_dir().join("cube.wasm");
        if cube.is_file() {
            // No smoke config: a Cube node config needs real credentials and endpoints.
            bench_reloads("cube", &cube, vec![], reloads).await;
        } else {
            println!("cube.wasm not built: skipped");
        }
    });
}
