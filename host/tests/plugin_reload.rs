//! Hot reload under load: while tasks call the plugin steadily, v1 is replaced by v2 and then by
//! a broken v3. No call fails, every call is answered by v1 or v2, v3 is refused with its reason,
//! and v2 stays active. Also the file watcher and the admin routes.

#[path = "plugin_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{ctx, install, plugin, resolved_pod, scratch_dir, settings};
use tokio_util::sync::CancellationToken;
use vkhost::plugin::{CreateAttempt, Plugin, PluginRuntime, ReloadTrigger};

const CALLERS: usize = 4;

fn answered_by(outcome: &vkhost::plugin::PodOutcome) -> String {
    outcome.annotations.iter().find(|kv| kv.key == "faulty/answered-by").unwrap().value.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_v1_v2_and_a_broken_v3_under_load_loses_no_call() {
    let dir = scratch_dir("reload");
    let path = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &path);
    let rt = PluginRuntime::new().unwrap();
    let p = Plugin::load(rt, settings(&path), vec![("node-a".into(), "{}".into())]).await.unwrap();
    assert_eq!(p.info().version, "1.0.0");
    let mut events = p.subscribe();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (p, stop, answered) = (p.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let mut answers: BTreeMap<String, u64> = BTreeMap::new();
                let mut failures = Vec::new();
                let pod = resolved_pod(&format!("steady-{i}"), &format!("uid-{i}"));
                while !stop.load(Ordering::Relaxed) {
                    match p.create(&ctx("node-a", "{}"), &pod, CreateAttempt { may_exist: true }).await {
                        Ok(out) => {
                            *answers.entry(answered_by(&out)).or_default() += 1;
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (answers, failures)
            })
        })
        .collect();

    // Each step waits for the callers to have been answered more times since the last one,
    // so every version serves under load however slow the machine is.
    let more_answers = async |n: u64| {
        let target = answered.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "callers got fewer than {n} answers in 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    more_answers(50).await;
    install(&plugin("faulty-v2.wasm"), &path);
    let info = p.reload().await.expect("v2 loads");
    assert_eq!(info.version, "2.0.0");

    more_answers(50).await;
    install(&plugin("faulty-broken.wasm"), &path);
    let refusal = p.reload().await.expect_err("the broken v3 must be refused").to_string();
    assert!(refusal.contains("plugin faulty version 3.0.0 rejects the config of node node-a"), "{refusal}");
    assert!(refusal.contains("trapped"), "{refusal}");

    more_answers(50).await;
    stop.store(true, Ordering::Relaxed);
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for caller in callers {
        let (answers, failures) = caller.await.unwrap();
        assert!(failures.is_empty(), "calls failed during reload: {failures:?}");
        for (version, n) in answers {
            *total.entry(version).or_default() += n;
        }
    }
    eprintln!("answers by version: {total:?}");
    assert_eq!(total.keys().cloned().collect::<Vec<_>>(), vec!["1.0.0".to_string(), "2.0.0".to_string()]);
    assert!(total.values().all(|n| *n > 0));
    assert_eq!(p.info().version, "2.0.0");

    let ok = events.recv().await.unwrap();
    assert_eq!((ok.old.version.as_str(), ok.outcome.as_ref().unwrap().version.as_str()), ("1.0.0", "2.0.0"));
    let refused = events.recv().await.unwrap();
    assert_eq!(refused.old.version, "2.0.0");
    assert!(refused.outcome.unwrap_err().contains("3.0.0"));
    let stats = p.stats().snapshot();
    assert_eq!((stats.reloads_ok, stats.reloads_failed), (1, 1));
}

#[tokio::test]
async fn the_watcher_swaps_in_a_new_file_and_keeps_the_old_version_for_a_bad_one() {
    let dir = scratch_dir("watch");
    let path = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &path);
    let p =
        Plugin::load(PluginRuntime::new().unwrap(), settings(&path), vec![("n".into(), "{}".into())]).await.unwrap();
    let mut events = p.subscribe();
    let shutdown = CancellationToken::new();
    let watcher = p.spawn_watcher(shutdown.clone());

    let started = Instant::now();
    install(&plugin("faulty-v2.wasm"), &path);
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    eprintln!("file to swap: {:?}", started.elapsed());
    assert_eq!(event.trigger, ReloadTrigger::FileChanged);
    assert_eq!(event.outcome.unwrap().version, "2.0.0");
    assert_eq!(p.info().version, "2.0.0");

    std::fs::write(dir.join("junk"), b"not wasm").unwrap();
    install(&dir.join("junk"), &path);
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap();
    assert!(event.outcome.unwrap_err().contains("not a WebAssembly component"));
    assert_eq!(p.info().version, "2.0.0");
    p.create(&ctx("n", "{}"), &resolved_pod("behave", "u"), CreateAttempt { may_exist: true }).await.unwrap();

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), watcher).await.expect("watcher stops on shutdown").unwrap();
}

async fn serve_admin(p: Arc<Plugin>, token: Option<vkhost::plugin::AdminToken>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = vkhost::plugin::admin_router(p, token);
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

const ADMIN_TOKEN: &str = "admin-token-0123456789";

#[tokio::test]
async fn the_admin_routes_show_and_reload_the_plugin() {
    let dir = scratch_dir("admin");
    let path = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &path);
    let p = Plugin::load(PluginRuntime::new().unwrap(), settings(&path), vec![]).await.unwrap();
    let base = serve_admin(p.clone(), Some(vkhost::plugin::AdminToken::new(ADMIN_TOKEN))).await;
    let http = reqwest::Client::new();
    let reload = || http.post(format!("{base}/plugin/reload")).bearer_auth(ADMIN_TOKEN);

    let active: serde_json::Value = http.get(format!("{base}/plugin")).send().await.unwrap().json().await.unwrap();
    assert_eq!(active["info"]["version"], "1.0.0");

    install(&plugin("faulty-v2.wasm"), &path);
    let resp = reload().send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["active"]["version"], "2.0.0");

    std::fs::write(&path, b"garbage").unwrap();
    let resp = reload().send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reloaded"], false);
    assert!(body["error"].as_str().unwrap().contains("not a WebAssembly component"));
    assert_eq!(body["active"]["version"], "2.0.0");
}

#[tokio::test]
async fn reload_without_the_admin_token_is_refused_and_reloads_nothing() {
    let dir = scratch_dir("admin-auth");
    let path = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &path);
    let p = Plugin::load(PluginRuntime::new().unwrap(), settings(&path), vec![]).await.unwrap();
    install(&plugin("faulty-v2.wasm"), &path);
    let http = reqwest::Client::new();

    let base = serve_admin(p.clone(), Some(vkhost::plugin::AdminToken::new(ADMIN_TOKEN))).await;
    let url = format!("{base}/plugin/reload");
    assert_eq!(http.post(&url).send().await.unwrap().status(), 401);
    assert_eq!(http.post(&url).bearer_auth("admin-token-012345678").send().await.unwrap().status(), 401);
    assert_eq!(http.post(&url).basic_auth("admin", Some(ADMIN_TOKEN)).send().await.unwrap().status(), 401);
    assert_eq!(p.info().version, "1.0.0", "an unauthenticated request reloaded the plugin");
    // Reading stays open.
    assert_eq!(http.get(format!("{base}/plugin")).send().await.unwrap().status(), 200);

    // No token configured: the route is off, whatever the request carries.
    let open = serve_admin(p.clone(), None).await;
    let resp = http.post(format!("{open}/plugin/reload")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("token_file"), "{body}");
    assert_eq!(p.info().version, "1.0.0");

    assert_eq!(http.post(&url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(p.info().version, "2.0.0");
}

#[tokio::test]
async fn an_optimized_build_never_replaces_a_newer_version() {
    let dir = scratch_dir("tier-race");
    let live = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &live);
    let p = Plugin::load(PluginRuntime::new().unwrap(), settings(&live), vec![]).await.unwrap();
    // v2 arrives while v1's Cranelift build is still running (it takes far longer than a copy).
    install(&plugin("faulty-v2.wasm"), &live);
    assert_eq!(p.reload().await.unwrap().version, "2.0.0");
    assert!(p.optimized_within(Duration::from_secs(120)).await, "no optimized build");
    // The race happened: v1's late build finished and found itself superseded.
    let deadline = Instant::now() + Duration::from_secs(120);
    while p.stats().snapshot().optimized_superseded == 0 {
        assert!(Instant::now() < deadline, "v1's optimized build never finished: {:?}", p.stats().snapshot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(p.info().version, "2.0.0");
    let outcome = p
        .create(&ctx("n1", "{}"), &resolved_pod("after", "uid-after"), CreateAttempt { may_exist: true })
        .await
        .unwrap();
    assert_eq!(answered_by(&outcome), "2.0.0");
    let stats = p.stats().snapshot();
    assert_eq!((stats.optimized_swaps, stats.optimized_superseded), (1, 1), "only v2's build was swapped in");
}
