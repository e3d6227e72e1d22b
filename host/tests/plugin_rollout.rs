//! Rollouts on a real plugin runtime, without a cluster: a new version reaches the canary node
//! first and the other nodes after the healthy period; a version that blows its error budget on
//! the canary is rolled back while the other node's calls never touch it, and the same file is
//! refused afterwards; the same with the broken version pushed to the OCI tag the daemon polls
//! (a real registry on loopback); pins through the admin routes.

#[path = "registry_support.rs"]
mod registry_support;
#[path = "plugin_support.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use registry_support::Registry;
use support::{ctx, install, plugin, resolved_pod, scratch_dir, settings};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vkhost::plugin::source::publish::{KeygenArgs, PushArgs, run_keygen, run_push};
use vkhost::plugin::{Budget, CreateAttempt, Plugin, PluginRuntime, RolloutSettings, Step, VersionEvent};

const NODES: [&str; 2] = ["n1", "n2"];

async fn load(path: &std::path::Path, rollout: RolloutSettings) -> Arc<Plugin> {
    let mut s = settings(path);
    s.rollout = Some(rollout);
    let smoke = NODES.iter().map(|n| (n.to_string(), "{}".to_string())).collect();
    Plugin::load(PluginRuntime::new().unwrap(), s, smoke).await.unwrap()
}

/// The version that answers a create for `node`.
async fn answers(p: &Plugin, node: &str) -> String {
    let out = p
        .create(&ctx(node, "{}"), &resolved_pod("behave", &format!("uid-{node}")), CreateAttempt { may_exist: true })
        .await
        .unwrap_or_else(|e| panic!("create on {node}: {e}"));
    out.annotations.iter().find(|kv| kv.key == "faulty/answered-by").unwrap().value.clone()
}

async fn next_for(events: &mut broadcast::Receiver<VersionEvent>, node: &str) -> VersionEvent {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.concerns(node) {
                return ev;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no version change on {node} within 60 s"))
}

/// Calls `node` steadily until the flag is set, each call answered by version 1.0.0 (a failed or
/// other answer fails the test); the task returns how many calls were answered.
fn steady_on_v1(p: &Arc<Plugin>, node: &'static str) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (p, flag) = (p.clone(), stop.clone());
    let steady = tokio::spawn(async move {
        let mut answered = 0u64;
        while !flag.load(Ordering::Relaxed) {
            assert_eq!(answers(&p, node).await, "1.0.0");
            answered += 1;
            // A pause, so the steady caller leaves the runtime to the rollout and the tag poll.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answered
    });
    (stop, steady)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_reaches_the_canary_first_and_the_other_nodes_after_the_healthy_period() {
    let dir = scratch_dir("rollout-promote");
    let path = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &path);
    let policy = RolloutSettings {
        canary_nodes: vec!["n1".into()],
        healthy_seconds: 1,
        min_calls: 3,
        budget: Budget::default(),
    };
    let p = load(&path, policy).await;
    let shutdown = CancellationToken::new();
    let driver = p.spawn_rollout(shutdown.clone()).expect("a rollout is configured");
    let mut events = p.subscribe_versions();
    p.name_node("n2", "uk8s-test-vk-n2");

    install(&plugin("faulty-v2.wasm"), &path);
    assert_eq!(p.reload().await.unwrap().version, "2.0.0");
    let canary = next_for(&mut events, "n1").await;
    assert_eq!(
        (canary.step, canary.from.version.as_str(), canary.to.version.as_str()),
        (Step::Canary, "1.0.0", "2.0.0")
    );
    assert_eq!(answers(&p, "n1").await, "2.0.0");
    // n2 stays on v1, by config id and by its node name; unknown callers get the stable version.
    assert_eq!(answers(&p, "n2").await, "1.0.0");
    assert_eq!(answers(&p, "uk8s-test-vk-n2").await, "1.0.0");
    assert_eq!(p.info().version, "1.0.0");
    let view = p.versions();
    assert_eq!(view.versions.len(), 2, "one compiled version per build, shared by its nodes");
    assert_eq!(view.candidate.as_ref().unwrap().version.version, "2.0.0");

    // The canary answers calls on v2 for the healthy period: then n2 gets it.
    answers(&p, "n1").await;
    answers(&p, "n1").await;
    let promoted = next_for(&mut events, "uk8s-test-vk-n2").await;
    assert_eq!((promoted.step, promoted.to.version.as_str()), (Step::Promoted, "2.0.0"));
    assert_eq!(answers(&p, "uk8s-test-vk-n2").await, "2.0.0");

    // A healthy period after the promotion, v2 is the stable version.
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.versions().candidate.is_some() {
        assert!(Instant::now() < deadline, "the rollout never completed: {:?}", p.versions());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.info().version, "2.0.0");
    assert_eq!(p.versions().previous.unwrap().version, "1.0.0");
    shutdown.cancel();
    driver.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_over_its_error_budget_on_the_canary_is_rolled_back_and_the_same_file_is_refused() {
    let dir = scratch_dir("rollout-back");
    let path = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &path);
    let policy = RolloutSettings {
        canary_nodes: vec!["n1".into()],
        healthy_seconds: 3600,
        min_calls: 1,
        budget: Budget { window_calls: 10, max_failures: 2, outcomes: vec!["trap".into()] },
    };
    let p = load(&path, policy).await;
    let shutdown = CancellationToken::new();
    let driver = p.spawn_rollout(shutdown.clone()).unwrap();
    let mut events = p.subscribe_versions();

    // n2 is called steadily throughout: none of its calls may fail.
    let (stop, steady) = steady_on_v1(&p, "n2");

    // A release whose validate-config passes but whose node and pod exports trap.
    install(&plugin("faulty-broken-pods.wasm"), &path);
    assert_eq!(p.reload().await.unwrap().version, "4.0.0");
    assert_eq!(next_for(&mut events, "n1").await.step, Step::Canary);
    for _ in 0..3 {
        let e = p.describe_node(&ctx("n1", "{}")).await.unwrap_err();
        assert_eq!(e.outcome(), "trap", "{e}");
    }
    let back = next_for(&mut events, "n1").await;
    let Step::RolledBack { reason } = &back.step else { panic!("{back:?}") };
    assert!(
        reason.contains("node n1") && reason.contains("3 of the last 3 calls") && reason.contains("trap 3"),
        "{reason}"
    );
    assert_eq!((back.from.version.as_str(), back.to.version.as_str()), ("4.0.0", "1.0.0"));
    assert_eq!(answers(&p, "n1").await, "1.0.0");
    assert_eq!(p.stats().snapshot().rollbacks, 1);

    // The same file again is refused before it reaches any node.
    let refused = p.reload().await.unwrap_err().to_string();
    assert!(refused.contains("was rolled back") && refused.contains("until a different file appears"), "{refused}");
    assert_eq!(answers(&p, "n1").await, "1.0.0");
    // A different file is rolled out again, canary first.
    install(&plugin("faulty-v2.wasm"), &path);
    assert_eq!(p.reload().await.unwrap().version, "2.0.0");
    assert_eq!(next_for(&mut events, "n1").await.step, Step::Canary);

    stop.store(true, Ordering::Relaxed);
    assert!(steady.await.unwrap() > 0);
    shutdown.cancel();
    driver.await.unwrap();
}

/// The rollout gate behind an OCI source: a signed but broken release pushed to the polled tag
/// reaches the canary only, is rolled back there by its error budget, and the other node keeps
/// answering on the version it had, pinned by digest, throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_release_pushed_to_the_tag_is_rolled_back_on_the_canary_and_never_reaches_the_other_node() {
    let registry = Registry::start();
    let dir = scratch_dir("rollout-oci");
    let prefix = dir.join("author");
    assert_eq!(run_keygen(KeygenArgs { prefix: prefix.clone() }).unwrap(), 0);
    let (key, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    let tag = registry.reference("vk/faulty:stable");
    let push = |file: &'static str| {
        let args = PushArgs { file: plugin(file), reference: tag.clone(), key: Some(key.clone()) };
        async move { assert_eq!(run_push(args).await.unwrap(), 0, "push {file}") }
    };
    push("faulty-v1.wasm").await;

    let mut s = settings("");
    s.path = std::path::PathBuf::new();
    s.source = Some(tag.clone());
    s.public_key = Some(public);
    s.cache_dir = Some(dir.join("cache"));
    s.poll_interval_ms = 50;
    s.rollout = Some(RolloutSettings {
        canary_nodes: vec!["n1".into()],
        healthy_seconds: 3600,
        min_calls: 1,
        budget: Budget { window_calls: 10, max_failures: 2, outcomes: vec!["trap".into()] },
    });
    let smoke = NODES.iter().map(|n| (n.to_string(), "{}".to_string())).collect();
    let p = Plugin::load(PluginRuntime::new().unwrap(), s, smoke).await.unwrap();
    let v1 = p.provenance_for("n2").and_then(|s| s.digest).expect("an OCI version has a digest");
    let shutdown = CancellationToken::new();
    let watcher = p.spawn_watcher(shutdown.clone());
    let driver = p.spawn_rollout(shutdown.clone()).unwrap();
    let mut events = p.subscribe_versions();

    let (stop, steady) = steady_on_v1(&p, "n2");

    push("faulty-broken-pods.wasm").await;
    let canary = next_for(&mut events, "n1").await;
    assert_eq!((canary.step, canary.to.version.as_str()), (Step::Canary, "4.0.0"));
    assert_ne!(p.provenance_for("n1").and_then(|s| s.digest), Some(v1.clone()), "the canary pulled the new digest");
    for _ in 0..3 {
        let e = p.describe_node(&ctx("n1", "{}")).await.unwrap_err();
        assert_eq!(e.outcome(), "trap", "{e}");
    }
    let back = next_for(&mut events, "n1").await;
    assert!(matches!(back.step, Step::RolledBack { .. }), "{back:?}");
    assert_eq!(answers(&p, "n1").await, "1.0.0");
    assert_eq!(p.provenance_for("n1").and_then(|s| s.digest), Some(v1.clone()), "back on the pinned digest");

    stop.store(true, Ordering::Relaxed);
    assert!(steady.await.unwrap() > 0);
    assert_eq!(p.provenance_for("n2").and_then(|s| s.digest), Some(v1), "n2 never left its version");
    shutdown.cancel();
    let _ = watcher.await;
    driver.await.unwrap();
}

const ADMIN_TOKEN: &str = "admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_and_commands_show_every_nodes_version_and_pin_a_node() {
    let dir = scratch_dir("rollout-pin");
    let path = dir.join("provider.wasm");
    install(&plugin("faulty-v1.wasm"), &path);
    let policy = RolloutSettings {
        canary_nodes: vec!["n1".into()],
        healthy_seconds: 3600,
        min_calls: 1,
        budget: Budget::default(),
    };
    let p = load(&path, policy).await;
    install(&plugin("faulty-v2.wasm"), &path);
    p.reload().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = vkhost::plugin::admin_router(p.clone(), Some(vkhost::plugin::AdminToken::new(ADMIN_TOKEN)));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    let view: serde_json::Value =
        http.get(format!("{base}/plugin/versions")).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["candidate"]["version"], "2.0.0");
    assert_eq!(view["candidate"]["phase"], "canary");
    let version_of = |view: &serde_json::Value, node: &str| {
        view["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()["version"].clone()
    };
    assert_eq!((version_of(&view, "n1"), version_of(&view, "n2")), ("2.0.0".into(), "1.0.0".into()));

    let pin = |body: serde_json::Value| http.post(format!("{base}/plugin/pin")).bearer_auth(ADMIN_TOKEN).json(&body);
    let resp = pin(serde_json::json!({"node": "n2", "version": "2.0.0"})).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!((body["node"]["version"].as_str(), body["node"]["pinned"].as_bool()), (Some("2.0.0"), Some(true)));
    assert_eq!(answers(&p, "n2").await, "2.0.0");

    let resp = pin(serde_json::json!({"node": "n2", "version": "9.9.9"})).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let err = resp.json::<serde_json::Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(err.contains("9.9.9") && err.contains("1.0.0") && err.contains("2.0.0"), "{err}");
    let resp = pin(serde_json::json!({"node": "n7", "version": "1.0.0"})).send().await.unwrap();
    assert_eq!(resp.status(), 422);
    let no_token = http.post(format!("{base}/plugin/pin")).json(&serde_json::json!({"node": "n2", "version": "1.0.0"}));
    assert_eq!(no_token.send().await.unwrap().status(), 401);

    let resp = http
        .post(format!("{base}/plugin/unpin"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"node": "n2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(answers(&p, "n2").await, "1.0.0");

    // The same through the operator's commands.
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let vkhost = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vkhost"))
            .args(args)
            .args(["--admin", &base, "--token-file", token_file.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = tokio::task::block_in_place(|| vkhost(&["plugin", "pin", "n2", "2.0.0"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("node n2 pinned to 2.0.0"), "{out}");
    let (code, out, err) = tokio::task::block_in_place(|| vkhost(&["plugin", "versions"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("in rollout  faulty@2.0.0") && out.contains("(canary for"), "{out}");
    let n2 = out.lines().find(|l| l.starts_with("n2 ")).unwrap_or_else(|| panic!("{out}"));
    assert!(n2.contains("2.0.0") && n2.contains("pinned"), "{out}");
    let (code, _, err) = tokio::task::block_in_place(|| vkhost(&["plugin", "pin", "n2", "7.7.7"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("no version 7.7.7 is held"), "{err}");
    let (code, out, _) = tokio::task::block_in_place(|| vkhost(&["plugin", "unpin", "n2"]));
    assert_eq!(code, Some(0));
    assert!(out.contains("node n2 runs 1.0.0"), "{out}");
}
