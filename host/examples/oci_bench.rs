//! Benchmark of OCI plugin sources: the time from a tag move (a signed push finished) to the new
//! version serving, through the daemon's own path (tag poll, pull, signature check, compile,
//! smoke test, swap), against the loopback registry the tests use.
//!
//!   plugins/build cube && cargo run --release -p vkhost --example oci_bench [-- --rounds 10 --poll-ms 1000]
//!
//! Each round pushes a new build of `cube.wasm` (a unique custom section: new bytes, a cache miss,
//! a real compile) to the polled tag and waits for the reload event. Rounds are measured with the
//! given poll interval and with a tenth of it.

#[path = "../tests/registry_support.rs"]
mod registry_support;
#[path = "../tests/plugin_support.rs"]
mod support;
#[path = "support/timing.rs"]
mod timing;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use registry_support::Registry;
use support::{plugin, scratch_dir, settings, unique_copy};
use timing::{arg, row};
use tokio_util::sync::CancellationToken;
use vkhost::plugin::source::publish::{KeygenArgs, PushArgs, run_keygen, run_push};
use vkhost::plugin::{Plugin, PluginRuntime, ReloadTrigger};

async fn push(file: &Path, reference: &str, key: &Path) {
    let args = PushArgs { file: file.into(), reference: reference.into(), key: Some(key.into()) };
    assert_eq!(run_push(args).await.unwrap(), 0);
}

/// `rounds` tag moves with polling every `poll`: (push, tag move → serving) per round.
async fn measure(registry: &Registry, dir: &Path, key: &Path, public: &Path, poll: Duration, rounds: usize) {
    let tag = registry.reference(&format!("vk/cube:poll{}", poll.as_millis()));
    let cube = plugin("cube.wasm");
    push(&unique_copy(&cube, dir, 0), &tag, key).await;
    let mut s = settings("");
    s.path = PathBuf::new();
    s.source = Some(tag.clone());
    s.public_key = Some(public.into());
    s.poll_interval_ms = poll.as_millis() as u64;
    let plugin = Plugin::load(PluginRuntime::new().unwrap(), s, vec![]).await.unwrap();
    let shutdown = CancellationToken::new();
    let watcher = plugin.spawn_watcher(shutdown.clone());
    let (mut pushes, mut serving) = (Vec::new(), Vec::new());
    for i in 1..=rounds {
        // Each round starts on the optimized build of the previous one, as a daemon would be.
        plugin.optimized_within(Duration::from_secs(60)).await;
        let candidate = unique_copy(&cube, dir, i);
        let mut events = plugin.subscribe();
        let started = Instant::now();
        push(&candidate, &tag, key).await;
        let pushed = Instant::now();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), events.recv()).await.unwrap().unwrap();
            if ev.trigger == ReloadTrigger::TagMoved {
                assert!(ev.is_ok(), "{ev:?}");
                break;
            }
        }
        serving.push(pushed.elapsed());
        pushes.push(pushed - started);
    }
    shutdown.cancel();
    watcher.await.unwrap();
    row(&format!("cube: signed push (poll {} ms)", poll.as_millis()), &mut pushes);
    row(&format!("cube: tag move → new version serving (poll {} ms)", poll.as_millis()), &mut serving);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = arg("--rounds", 10);
    let poll = Duration::from_millis(arg("--poll-ms", 1000) as u64);
    let registry = Registry::start();
    let dir = scratch_dir("oci-bench");
    let prefix = dir.join("author");
    run_keygen(KeygenArgs { prefix: prefix.clone() }).unwrap();
    let (key, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    measure(&registry, &dir, &key, &public, poll, rounds).await;
    measure(&registry, &dir, &key, &public, poll / 10, rounds).await;
    let _ = std::fs::remove_dir_all(&dir);
}
